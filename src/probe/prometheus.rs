//! The `prometheus` probe: a size metric that a server or its exporter publishes in the
//! Prometheus text format — MinIO's `minio_bucket_usage_total_bytes`, Longhorn's
//! `longhorn_volume_actual_size_bytes`, redis_exporter's `redis_memory_used_bytes`. The
//! reading is the sum of the metric's samples that carry the configured label values. Such
//! metrics can lag (MinIO's bucket usage is updated by its scanner); the probe reads what the
//! endpoint says at the moment it is asked.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::http::{Access, Endpoint};
use super::{Built, Probe, ProbeContext, ProbeDef};
use crate::error::usage;
use crate::model::{Measured, Reading, SysError};

/// Registry entry.
pub const DEF: ProbeDef = ProbeDef {
    name: "prometheus",
    key: Some(KEY),
    key_help: "a table { url, metric, labels, copies, token_env or token_file, timeout_s }",
    about: "the sum of one size metric's samples from a Prometheus text endpoint",
    build,
};

/// The config key.
pub const KEY: &str = "prometheus_probe";

fn build(ctx: &ProbeContext<'_>) -> Built {
    ctx.build_with(&DEF, |instance, c: &PrometheusConfig| {
        Prometheus::new(instance, c)
    })
}

#[async_trait]
impl Probe for Prometheus {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn copies(&self, _: &dyn Measured) -> u32 {
        self.copies
    }

    async fn read(&self, _: &mut dyn Measured) -> Result<Reading, SysError> {
        Ok(Reading::of(self.scrape().await))
    }
}

/// `prometheus_probe = { … }` in a `[systems.<name>]` section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Where the metrics are served: `http(s)://host:port/path`, no credentials.
    pub url: String,
    /// The metric whose samples are summed.
    pub metric: String,
    /// Label values a sample must carry to count; other labels do not matter.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Full copies of the data the metric counts (a volume metric summed over 3 replicas: 3).
    #[serde(default = "one")]
    pub copies: u32,
    /// Environment variable holding a bearer token (MinIO's metrics need one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Seconds to wait for the endpoint.
    #[serde(default = "ten")]
    pub timeout_s: u64,
}

fn one() -> u32 {
    1
}

fn ten() -> u64 {
    10
}

/// A checked `prometheus_probe`, its token read.
#[derive(Clone, Debug)]
pub struct Prometheus {
    endpoint: Endpoint,
    metric: String,
    labels: BTreeMap<String, String>,
    copies: u32,
}

impl Prometheus {
    /// Checks the settings of system `system` and reads the token; errors name the key and
    /// the fix.
    pub fn new(system: &str, c: &PrometheusConfig) -> anyhow::Result<Prometheus> {
        let what = format!("config [systems.{system}] prometheus_probe");
        let bad = |why: String| usage(format!("{what}: {why}"));
        let access = Access {
            token_env: c.token_env.clone(),
            token_file: c.token_file.clone(),
            timeout_s: c.timeout_s,
        };
        let endpoint = Endpoint::new(&what, &c.url, &access, "http://host:port/metrics")?;
        if !valid_metric_name(&c.metric) {
            return Err(bad(format!(
                "metric \"{}\" is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
                c.metric
            )));
        }
        if c.copies == 0 {
            return Err(bad(
                "copies must be at least 1 (the full copies of the data the metric counts)".into(),
            ));
        }
        Ok(Prometheus {
            endpoint,
            metric: c.metric.clone(),
            labels: c.labels.clone(),
            copies: c.copies,
        })
    }

    /// Scrapes the endpoint and sums the matching samples.
    pub async fn scrape(&self) -> anyhow::Result<u64> {
        let what = || format!("prometheus probe: {}", self.endpoint.url);
        let (status, text) = self
            .endpoint
            .get(self.endpoint.url.clone())
            .await
            .with_context(what)?;
        if !status.is_success() {
            bail!("{}: HTTP {status}", what());
        }
        sum(&text, &self.metric, &self.labels).with_context(what)
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The sum of the samples of `metric` in a scrape that carry every label in `labels`. No
/// such sample, or a value that is not a finite non-negative number, is an error: a size
/// that is not there is not zero.
fn sum(text: &str, metric: &str, labels: &BTreeMap<String, String>) -> anyhow::Result<u64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .context("reading the Prometheus text format")?;
    let mut total = 0.0;
    let mut matched = 0;
    let mut seen = 0;
    for s in scrape.samples.iter().filter(|s| s.metric == metric) {
        seen += 1;
        if !labels
            .iter()
            .all(|(k, v)| s.labels.get(k) == Some(v.as_str()))
        {
            continue;
        }
        let value = match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => bail!("{metric} is a histogram or summary, not a size"),
        };
        if !value.is_finite() || value < 0.0 {
            bail!("{metric}{{{}}} is {value}, not a size", s.labels);
        }
        total += value;
        matched += 1;
    }
    if matched == 0 {
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        bail!(
            "no sample of {metric}{{{}}} ({seen} samples of {metric} with other labels, {} \
             samples in all)",
            wanted.join(","),
            scrape.samples.len()
        );
    }
    Ok(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    const SCRAPE: &str = "\
# HELP minio_bucket_usage_total_bytes Total bucket size in bytes
# TYPE minio_bucket_usage_total_bytes gauge
minio_bucket_usage_total_bytes{bucket=\"dedup-lab\",server=\"a:9000\"} 1.048576e+06
minio_bucket_usage_total_bytes{bucket=\"dedup-lab\",server=\"b:9000\"} 2048
minio_bucket_usage_total_bytes{bucket=\"other\",server=\"a:9000\"} 7
minio_bucket_usage_object_total{bucket=\"dedup-lab\"} 3
bad_size NaN
";

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sums_the_samples_that_carry_the_labels() {
        let metric = "minio_bucket_usage_total_bytes";
        assert_eq!(
            sum(SCRAPE, metric, &labels(&[("bucket", "dedup-lab")])).unwrap(),
            1_048_576 + 2048
        );
        assert_eq!(
            sum(
                SCRAPE,
                metric,
                &labels(&[("bucket", "dedup-lab"), ("server", "b:9000")])
            )
            .unwrap(),
            2048
        );
        assert_eq!(
            sum(SCRAPE, metric, &BTreeMap::new()).unwrap(),
            1_048_576 + 2048 + 7
        );
        let none = sum(SCRAPE, metric, &labels(&[("bucket", "gone")])).unwrap_err();
        assert!(
            none.to_string().contains("3 samples of"),
            "{none}: names what was there"
        );
        assert!(sum(SCRAPE, "absent_metric", &BTreeMap::new()).is_err());
        let nan = sum(SCRAPE, "bad_size", &BTreeMap::new()).unwrap_err();
        assert!(nan.to_string().contains("not a size"), "{nan}");
    }

    fn config(url: &str) -> PrometheusConfig {
        PrometheusConfig {
            url: url.into(),
            metric: "minio_bucket_usage_total_bytes".into(),
            labels: labels(&[("bucket", "dedup-lab")]),
            copies: 1,
            token_env: None,
            token_file: None,
            timeout_s: 5,
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let err = |c: PrometheusConfig| Prometheus::new("minio", &c).unwrap_err().to_string();
        assert!(err(config("http://u:pw@h:1/m")).contains("credentials"));
        assert!(!err(config("http://u:pw@h:1/m")).contains("pw@"));
        assert!(err(config("ftp://h/m")).contains("http or https"));
        assert!(err(config("not a url")).contains("not a URL"));
        assert!(
            err(PrometheusConfig {
                metric: "1bad-name".into(),
                ..config("http://h:1/m")
            })
            .contains("metric name")
        );
        assert!(
            err(PrometheusConfig {
                copies: 0,
                ..config("http://h:1/m")
            })
            .contains("at least 1")
        );
    }

    /// The token goes in an Authorization header, not the URL; the reading is the scrape's
    /// sum. The endpoint is a one-request HTTP responder on loopback.
    #[tokio::test]
    async fn sends_the_token_as_a_bearer_header() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{SCRAPE}",
                SCRAPE.len()
            )
            .unwrap();
            String::from_utf8(request).unwrap()
        });
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "tok-prom-test-7f3\n").unwrap();
        let probe = Prometheus::new(
            "minio",
            &PrometheusConfig {
                token_file: Some(token_file),
                ..config(&format!("http://127.0.0.1:{port}/minio/v2/metrics/bucket"))
            },
        )
        .unwrap();
        assert_eq!(probe.scrape().await.unwrap(), 1_048_576 + 2048);
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /minio/v2/metrics/bucket HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer tok-prom-test-7f3\r\n"),
            "{request}"
        );
    }
}
