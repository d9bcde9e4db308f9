//! The `promql` probe: a size that a Prometheus server knows, asked with a PromQL query on its
//! HTTP API (`/api/v1/query`) — where a cluster's storage reports what a volume holds. The
//! query is a template: `${name}` is replaced by the value of `name` in `vars` (and
//! `${instance}` by the instance's name), written as the contents of a PromQL string.
//!
//! The reading is the sum of the result's series. Whatever keeps the answer from being the
//! size now is an error reading with its reason, never a number: an HTTP or query error, an
//! empty result, more series than `max_series`, a value that is not a size, and a stale
//! sample. A sample is stale when it was scraped before the reading began (on the server's
//! clock): it may predate the stage, or the reset before it. The probe then asks again, with
//! pauses, until every series has a fresh sample or `fresh_timeout_s` has passed; so a
//! reading waits up to one scrape interval.
//!
//! Sample times come from `timestamp_query`; by default `timestamp(<query>)`, which gives
//! them only for a plain selector (`metric{label="…"}`): for any other query, the result's
//! samples are computed at evaluation time, so a query that is not a plain selector needs a
//! `timestamp_query` that applies `timestamp()` to the selector holding the size.
//!
//! Examples (README and docs/kubernetes.md): Longhorn's volume size found through the PVC,
//!
//! ```toml
//! [systems.pg.promql_probe]
//! url = "http://prometheus.monitoring:9090"
//! query = '''longhorn_volume_actual_size_bytes * on(volume) group_left()
//!   label_replace(kube_persistentvolumeclaim_info{namespace="${namespace}",
//!     persistentvolumeclaim="${pvc}"}, "volume", "$1", "volumename", "(.*)")'''
//! timestamp_query = '''timestamp(longhorn_volume_actual_size_bytes) * on(volume) group_left()
//!   label_replace(kube_persistentvolumeclaim_info{namespace="${namespace}",
//!     persistentvolumeclaim="${pvc}"}, "volume", "$1", "volumename", "(.*)")'''
//! vars = { namespace = "databases", pvc = "data-pg-0" }
//! max_series = 3   # one series per replica (node)
//! copies = 3       # so the sum counts 3 full copies
//! ```
//!
//! and MinIO's bucket usage: `query = 'minio_bucket_usage_total_bytes{bucket="${bucket}"}'`,
//! `vars = { bucket = "dedup-lab" }` (MinIO's scanner updates it late: the value lags).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use backon::{BackoffBuilder as _, ExponentialBuilder};
use serde::{Deserialize, Serialize};

use super::http::{Access, Endpoint};
use super::{Built, Probe, ProbeContext, ProbeDef};
use crate::error::usage;
use crate::model::{Measured, Reading, SysError};

/// Registry entry.
pub const DEF: ProbeDef = ProbeDef {
    name: "promql",
    key: Some(KEY),
    key_help: "a table { url, query, timestamp_query, vars, max_series, copies, token_env or \
               token_file, timeout_s, fresh_timeout_s }",
    about: "the sum of a PromQL query's series on a Prometheus server, fresh samples only",
    build,
};

/// The config key.
pub const KEY: &str = "promql_probe";

fn build(ctx: &ProbeContext<'_>) -> Built {
    ctx.build_with(&DEF, |instance, c: &PromqlConfig| Promql::new(instance, c))
}

/// `promql_probe = { … }` in a `[systems.<name>]` section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromqlConfig {
    /// The Prometheus server: `http(s)://host:port`, with a path prefix if it has one; no
    /// credentials.
    pub url: String,
    /// The query template: its result's series are summed.
    pub query: String,
    /// A query giving the sample time of each series of `query`, with the same labels;
    /// default `timestamp(<query>)` (for a plain selector only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_query: Option<String>,
    /// Values of the template's variables (`namespace`, `pvc`, `volume`, `bucket`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    /// Most series the result may have (a volume with 3 replicas reported per node: 3).
    #[serde(default = "one")]
    pub max_series: u32,
    /// Full copies of the data the sum counts.
    #[serde(default = "one")]
    pub copies: u32,
    /// Environment variable holding a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding a bearer token (a mounted Secret in Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Seconds to wait for one answer.
    #[serde(default = "ten")]
    pub timeout_s: u64,
    /// Seconds a reading waits for samples scraped after it began: at least the scrape
    /// interval.
    #[serde(default = "two_minutes")]
    pub fresh_timeout_s: u64,
}

fn one() -> u32 {
    1
}

fn ten() -> u64 {
    10
}

fn two_minutes() -> u64 {
    120
}

/// A checked `promql_probe`: queries filled in, token read.
#[derive(Clone, Debug)]
pub struct Promql {
    endpoint: Endpoint,
    query: String,
    timestamp_query: String,
    max_series: u32,
    copies: u32,
    fresh_timeout: Duration,
}

#[async_trait]
impl Probe for Promql {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn copies(&self, _: &dyn Measured) -> u32 {
        self.copies
    }

    async fn read(&self, _: &mut dyn Measured) -> Result<Reading, SysError> {
        Ok(Reading::of(self.size().await.with_context(|| {
            format!("promql probe: {} at {}", self.query, self.endpoint.url)
        })))
    }
}

impl Promql {
    /// Checks the settings of instance `instance` and reads the token; errors name the key
    /// and the fix.
    pub fn new(instance: &str, c: &PromqlConfig) -> anyhow::Result<Promql> {
        let what = format!("config [systems.{instance}] promql_probe");
        let bad = |why: String| usage(format!("{what}: {why}"));
        let access = Access {
            token_env: c.token_env.clone(),
            token_file: c.token_file.clone(),
            timeout_s: c.timeout_s,
        };
        let mut endpoint = Endpoint::new(&what, &c.url, &access, "http://prometheus:9090")?;
        if !endpoint.url.path().ends_with('/') {
            let path = format!("{}/", endpoint.url.path());
            endpoint.url.set_path(&path);
        }
        endpoint.url = endpoint
            .url
            .join("api/v1/query")
            .map_err(|e| bad(format!("url {}: {e}", endpoint.url)))?;
        let mut vars = c.vars.clone();
        vars.insert("instance".into(), instance.to_string());
        let fill = |key: &str, template: &str| {
            fill(template, &vars).map_err(|e| bad(format!("{key}: {e}")))
        };
        let query = fill("query", &c.query)?;
        let timestamp_query = match &c.timestamp_query {
            Some(t) => fill("timestamp_query", t)?,
            None if plain_selector(&query) => format!("timestamp({query})"),
            None => {
                return Err(bad(format!(
                    "query \"{query}\" is not a plain selector (metric{{label=\"…\"}}), so the \
                     times of its samples cannot be known: add timestamp_query, the query with \
                     timestamp() around the selector that holds the size (see \
                     docs/kubernetes.md)"
                )));
            }
        };
        if c.max_series == 0 || c.copies == 0 {
            return Err(bad(format!(
                "max_series = {} and copies = {} must both be at least 1",
                c.max_series, c.copies
            )));
        }
        Ok(Promql {
            endpoint,
            query,
            timestamp_query,
            max_series: c.max_series,
            copies: c.copies,
            fresh_timeout: Duration::from_secs(c.fresh_timeout_s),
        })
    }

    /// The query as sent, its variables filled in.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// The size: the sum of the query's series, once every series has a sample scraped
    /// after the first answer's evaluation time.
    pub async fn size(&self) -> anyhow::Result<u64> {
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_factor(2.0)
            .without_max_times()
            .with_total_delay(Some(self.fresh_timeout))
            .build();
        let mut began = None;
        loop {
            let (evaluated, series) = self.ask(&self.query).await?;
            let began = *began.get_or_insert(evaluated);
            if series.len() > self.max_series as usize {
                bail!(
                    "{} series, more than max_series = {}: {}; narrow the query or raise \
                     max_series",
                    series.len(),
                    self.max_series,
                    series
                        .keys()
                        .take(4)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let (_, times) = self.ask(&self.timestamp_query).await?;
            let mut oldest: Option<(f64, &String)> = None;
            for labels in series.keys() {
                let t = *times.get(labels).ok_or_else(|| {
                    anyhow::anyhow!(
                        "timestamp_query \"{}\" gives no time for series {labels}: it must \
                         give one series per series of the query, with the same labels",
                        self.timestamp_query
                    )
                })?;
                if oldest.is_none_or(|(o, _)| t < o) {
                    oldest = Some((t, labels));
                }
            }
            let (t, labels) = oldest.expect("a result has a series");
            if t >= began {
                let total: f64 = series.values().sum();
                return Ok(total.round() as u64);
            }
            match pauses.next() {
                Some(pause) => tokio::time::sleep(pause).await,
                None => bail!(
                    "stale: the sample of {labels} is from {}, {:.1} s before this reading \
                     began ({}), and none newer came within fresh_timeout_s = {} s (a scrape \
                     interval longer than that, or a target no longer scraped)",
                    utc(t),
                    began - t,
                    utc(began),
                    self.fresh_timeout.as_secs()
                ),
            }
        }
    }

    /// Runs one instant query: its evaluation time and each series' value by its labels
    /// (without the metric name, which `timestamp()` drops).
    async fn ask(&self, query: &str) -> anyhow::Result<(f64, BTreeMap<String, f64>)> {
        let mut url = self.endpoint.url.clone();
        url.query_pairs_mut().append_pair("query", query);
        let (status, body) = self.endpoint.get(url).await?;
        let answer: Answer = serde_json::from_str(&body).map_err(|e| {
            anyhow::anyhow!(
                "HTTP {status}: not a Prometheus API answer ({e}): {}",
                body.chars().take(200).collect::<String>()
            )
        })?;
        if answer.status != "success" || !status.is_success() {
            bail!(
                "HTTP {status}: {} {}",
                answer.error_type.unwrap_or_default(),
                answer.error.unwrap_or_default()
            );
        }
        let data = answer
            .data
            .ok_or_else(|| anyhow::anyhow!("the answer has no data"))?;
        if data.result_type != "vector" {
            bail!(
                "\"{query}\" gives a {}, not a vector of series; write a query whose result \
                 is series (the probe sums them itself)",
                data.result_type
            );
        }
        let series: Vec<Series> = serde_json::from_value(data.result)?;
        if series.is_empty() {
            bail!(
                "\"{query}\" matches no series (empty result): the metric is not scraped, or a label value is wrong"
            );
        }
        let mut evaluated = 0.0;
        let mut out = BTreeMap::new();
        for s in series {
            let (at, value) = s.value;
            evaluated = at;
            let mut labels = s.metric;
            labels.remove("__name__");
            let name = format!(
                "{{{}}}",
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let v: f64 = value
                .parse()
                .with_context(|| format!("{name} has the value \"{value}\""))?;
            if !v.is_finite() || v < 0.0 {
                bail!("{name} is {value}, not a size");
            }
            out.insert(name, v);
        }
        Ok((evaluated, out))
    }
}

/// An answer of `/api/v1/query`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    status: String,
    data: Option<Data>,
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

/// One series of an instant vector: its labels and `[time, "value"]`.
#[derive(Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

fn utc(seconds: f64) -> String {
    chrono::DateTime::from_timestamp_millis((seconds * 1000.0).round() as i64)
        .map(|t| t.format("%H:%M:%S%.3f UTC").to_string())
        .unwrap_or_else(|| format!("{seconds} s"))
}

/// Replaces every `${name}` in `template` by `vars[name]` escaped as the contents of a
/// double-quoted PromQL string; any other `$` stays (as in label_replace's `"$1"`).
fn fill(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("\"${{\" without a closing \"}}\" in \"{template}\""))?;
        let name = &after[..end];
        let value = vars.get(name).ok_or_else(|| {
            format!(
                "the variable ${{{name}}} has no value; set it in vars (known: {})",
                vars.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        for c in value.chars() {
            match c {
                '\\' | '"' => {
                    out.push('\\');
                    out.push(c);
                }
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `query` is one vector selector, `metric`, `metric{…}` or `{…}`: the only form whose
/// `timestamp()` gives the times samples were scraped at.
fn plain_selector(query: &str) -> bool {
    let q = query.trim();
    let name_len = q
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(q.len());
    let (name, rest) = q.split_at(name_len);
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return false;
    }
    let rest = rest.trim_start();
    if rest.is_empty() {
        return !name.is_empty();
    }
    let Some(inner) = rest.strip_prefix('{') else {
        return false;
    };
    // The matchers end at the first `}` outside a quoted value.
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '}') => return inner[i + 1..].trim().is_empty(),
            (None, '{' | '(' | ')') => return false,
            (None, _) => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn templates_fill_escaped_values_and_name_unknown_variables() {
        let v = vars(&[("ns", "db"), ("pvc", "a\"b\\c")]);
        assert_eq!(
            fill("x{namespace=\"${ns}\",pvc=\"${pvc}\"}", &v).unwrap(),
            "x{namespace=\"db\",pvc=\"a\\\"b\\\\c\"}"
        );
        assert_eq!(
            fill("label_replace(x, \"v\", \"$1\", \"l\", \"(.*)\")", &v).unwrap(),
            "label_replace(x, \"v\", \"$1\", \"l\", \"(.*)\")"
        );
        let e = fill("x{pvc=\"${volume}\"}", &v).unwrap_err();
        assert!(
            e.contains("${volume} has no value") && e.contains("known: ns, pvc"),
            "{e}"
        );
        assert!(
            fill("x + ${ns", &v)
                .unwrap_err()
                .contains("without a closing")
        );
    }

    #[test]
    fn only_plain_selectors_carry_their_sample_times() {
        for plain in [
            "up",
            "redis_memory_used_bytes{job=\"redis\"}",
            " m { a = \"}{)(\" , b=~'x|y' } ",
            "{__name__=\"m\"}",
            "ns:metric:sum{a=\"\\\"}\"}",
        ] {
            assert!(plain_selector(plain), "{plain}");
        }
        for not in [
            "",
            "sum(m)",
            "m * 2",
            "m{a=\"b\"} * on(v) group_left() k",
            "m[5m]",
            "m offset 5m",
            "1",
            "m{a=\"b\"",
            "rate(m{a=\"b\"}[1m])",
        ] {
            assert!(!plain_selector(not), "{not}");
        }
    }

    fn config(query: &str) -> PromqlConfig {
        PromqlConfig {
            url: "http://127.0.0.1:9/prom".into(),
            query: query.into(),
            timestamp_query: None,
            vars: vars(&[("namespace", "db")]),
            max_series: 1,
            copies: 1,
            token_env: None,
            token_file: None,
            timeout_s: 5,
            fresh_timeout_s: 5,
        }
    }

    #[test]
    fn settings_are_checked_when_built() {
        let p = Promql::new(
            "pg",
            &config("m{namespace=\"${namespace}\",i=\"${instance}\"}"),
        )
        .unwrap();
        assert_eq!(p.query(), "m{namespace=\"db\",i=\"pg\"}");
        assert_eq!(p.timestamp_query, "timestamp(m{namespace=\"db\",i=\"pg\"})");
        assert_eq!(
            p.endpoint.url.as_str(),
            "http://127.0.0.1:9/prom/api/v1/query"
        );
        let err = |c: PromqlConfig| {
            let e = Promql::new("pg", &c).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), 2);
            e.to_string()
        };
        assert!(err(config("sum(m)")).contains("add timestamp_query"));
        assert!(err(config("m{pvc=\"${pvc}\"}")).contains("${pvc} has no value"));
        assert!(
            err(PromqlConfig {
                max_series: 0,
                ..config("m")
            })
            .contains("at least 1")
        );
        assert!(
            err(PromqlConfig {
                url: "http://u:p@h:9".into(),
                ..config("m")
            })
            .contains("credentials")
        );
        let joined = PromqlConfig {
            timestamp_query: Some("timestamp(m) * on(v) k".into()),
            ..config("m * on(v) k")
        };
        assert_eq!(
            Promql::new("pg", &joined).unwrap().timestamp_query,
            "timestamp(m) * on(v) k"
        );
    }
}
