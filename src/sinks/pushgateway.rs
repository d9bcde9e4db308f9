//! `[export.pushgateway]`: every stage record as metrics on a Prometheus Pushgateway.
//!
//! Each stage record replaces one group, whose grouping key is `job` plus the labels
//! `experiment`, `system`, `kind`, `payload`, `grade`, `run` and `stage`: a later attempt of
//! the same stage replaces an earlier one, and stages never replace each other. Per-probe
//! metrics carry a `probe` label. The ratios are those of `results.csv` ([`stage_rows`]),
//! computed from the records the sink has seen: dedup capture needs the U0 cell of the same
//! stage, reclaim the per-file insert of the same attempt, both of which come earlier in a
//! run. Metric names are listed in [`METRICS`]; `docs/grafana/dedup-lab.json` charts them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use serde::Deserialize;

use super::{Item, ItemKind, Sink, SinkContext, SinkDef, parse};
use crate::model::{CellKey, Stage, StageRecord};
use crate::probe::http::http_url;
use crate::results::derive::{Row, stage_rows};
use crate::secret::{Secret, SecretSource};

/// Registry entry.
pub const DEF: SinkDef = SinkDef {
    name: "pushgateway",
    build,
};

/// The keys of `[export.pushgateway]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The Pushgateway's base URL, `http(s)://host:port[/prefix]`, no credentials.
    pub url: String,
    /// The `job` label of every group.
    pub job: String,
    /// Environment variable holding a bearer token.
    pub token_env: Option<String>,
    /// File holding a bearer token.
    pub token_file: Option<std::path::PathBuf>,
    /// Seconds one request may take.
    pub timeout_s: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: "http://127.0.0.1:9091".into(),
            job: "dedup_lab".into(),
            token_env: None,
            token_file: None,
            timeout_s: 10,
        }
    }
}

/// A metric: name, help text, and whether it has a `probe` label (one sample per probe) or
/// a `stat` label (latency statistics).
pub struct Metric {
    /// Metric name.
    pub name: &'static str,
    /// HELP text.
    pub help: &'static str,
    /// Which label tells its samples apart.
    pub per: Per,
}

/// What a metric's samples are per.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Per {
    /// One sample per stage.
    Stage,
    /// One sample per probe (`probe` label).
    Probe,
    /// One sample per latency statistic (`stat` label: min, p50, p90, p95, p99, max, mean).
    Stat,
}

const fn metric(name: &'static str, help: &'static str, per: Per) -> Metric {
    Metric { name, help, per }
}

/// Every metric the sink pushes. The values of each come from [`samples`].
pub const METRICS: &[Metric] = &[
    metric(
        "dedup_lab_attempt",
        "Attempt of the cell the stage belongs to.",
        Per::Stage,
    ),
    metric(
        "dedup_lab_files",
        "Files written or deleted (L's files).",
        Per::Stage,
    ),
    metric(
        "dedup_lab_logical_bytes",
        "L: logical bytes written or deleted.",
        Per::Stage,
    ),
    metric(
        "dedup_lab_unique_bytes",
        "U: unique bytes of the data set.",
        Per::Stage,
    ),
    metric(
        "dedup_lab_rows_after",
        "Files present after the stage.",
        Per::Stage,
    ),
    metric(
        "dedup_lab_duration_seconds",
        "Stage time without settling.",
        Per::Stage,
    ),
    metric(
        "dedup_lab_settle_seconds",
        "Time the settle step took.",
        Per::Stage,
    ),
    metric(
        "dedup_lab_throughput_bytes_per_second",
        "L / stage time.",
        Per::Stage,
    ),
    metric(
        "dedup_lab_retried_requests",
        "Requests the adapter sent again during the stage.",
        Per::Stage,
    ),
    metric(
        "dedup_lab_stage_started_timestamp_seconds",
        "When the stage began, Unix time.",
        Per::Stage,
    ),
    metric(
        "dedup_lab_latency_seconds",
        "Per-file request latency of a per-file stage, by statistic.",
        Per::Stat,
    ),
    metric(
        "dedup_lab_before_bytes",
        "Physical bytes before the stage.",
        Per::Probe,
    ),
    metric(
        "dedup_lab_after_bytes",
        "Physical bytes after the stage and settling.",
        Per::Probe,
    ),
    metric(
        "dedup_lab_delta_bytes",
        "ΔP: change in physical bytes.",
        Per::Probe,
    ),
    metric(
        "dedup_lab_copies",
        "R: full copies of the data the probe counts.",
        Per::Probe,
    ),
    metric("dedup_lab_edr", "EDR = L / ΔP (insert stages).", Per::Probe),
    metric(
        "dedup_lab_edr_replica",
        "EDR_replica = L / (ΔP / R).",
        Per::Probe,
    ),
    metric(
        "dedup_lab_dedup_capture",
        "Share of duplicate bytes not stored, compression separated out.",
        Per::Probe,
    ),
    metric(
        "dedup_lab_reclaim",
        "Share of the per-file insert's growth given back.",
        Per::Probe,
    ),
    metric(
        "dedup_lab_probe_failed",
        "1 when a reading of the probe failed (its bytes are then absent), else 0.",
        Per::Probe,
    ),
];

/// One sample: metric name, its `probe` or `stat` label value (if any), value.
pub type Sample = (&'static str, Option<String>, f64);

/// The samples of one stage record and its rows (one per probe). Absent values (a failed
/// reading, a ratio without its inputs) have no sample, never 0.
pub fn samples(r: &StageRecord, rows: &[Row]) -> Vec<Sample> {
    let stage: [(&str, Option<f64>); 10] = [
        ("dedup_lab_attempt", Some(f64::from(r.attempt))),
        ("dedup_lab_files", Some(r.files as f64)),
        ("dedup_lab_logical_bytes", Some(r.logical_bytes as f64)),
        ("dedup_lab_unique_bytes", Some(r.unique_bytes as f64)),
        ("dedup_lab_rows_after", Some(r.rows_after as f64)),
        ("dedup_lab_duration_seconds", Some(r.duration_s)),
        ("dedup_lab_settle_seconds", Some(r.settle_s)),
        ("dedup_lab_throughput_bytes_per_second", r.throughput_bps),
        (
            "dedup_lab_retried_requests",
            Some(r.retried_requests as f64),
        ),
        (
            "dedup_lab_stage_started_timestamp_seconds",
            Some(r.started_at.timestamp_micros() as f64 / 1e6),
        ),
    ];
    let mut out: Vec<Sample> = stage
        .into_iter()
        .filter_map(|(name, v)| Some((name, None, v?)))
        .collect();
    if let Some(l) = &r.latency_us {
        for (stat, us) in [
            ("min", l.min),
            ("p50", l.p50),
            ("p90", l.p90),
            ("p95", l.p95),
            ("p99", l.p99),
            ("max", l.max),
            ("mean", l.mean),
        ] {
            out.push(("dedup_lab_latency_seconds", Some(stat.into()), us / 1e6));
        }
    }
    for row in rows {
        let failed = if row.probe_error.is_some() { 1.0 } else { 0.0 };
        let per_probe: [(&'static str, Option<f64>); 9] = [
            ("dedup_lab_before_bytes", row.before_bytes.map(|b| b as f64)),
            ("dedup_lab_after_bytes", row.after_bytes.map(|b| b as f64)),
            ("dedup_lab_delta_bytes", row.delta_bytes.map(|b| b as f64)),
            ("dedup_lab_copies", Some(f64::from(row.copies))),
            ("dedup_lab_edr", row.edr),
            ("dedup_lab_edr_replica", row.edr_replica),
            ("dedup_lab_dedup_capture", row.dedup_capture),
            ("dedup_lab_reclaim", row.reclaim),
            ("dedup_lab_probe_failed", Some(failed)),
        ];
        for (name, v) in per_probe {
            if let Some(v) = v {
                out.push((name, Some(row.probe.clone()), v));
            }
        }
    }
    out
}

/// The samples in the Prometheus text format, grouped by metric with HELP and TYPE lines.
pub fn render(samples: &[Sample]) -> String {
    let mut text = String::new();
    for m in METRICS {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.0 == m.name).collect();
        if mine.is_empty() {
            continue;
        }
        let _ = writeln!(text, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(text, "# TYPE {} gauge", m.name);
        let label = match m.per {
            Per::Stage => "",
            Per::Probe => "probe",
            Per::Stat => "stat",
        };
        for (name, value_label, v) in mine {
            match value_label {
                Some(l) => {
                    let _ = writeln!(text, "{name}{{{label}=\"{}\"}} {v}", escape(l));
                }
                None => {
                    let _ = writeln!(text, "{name} {v}");
                }
            }
        }
    }
    text
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The grouping labels of a stage record's group, after `job`, in URL order.
pub fn grouping(experiment: &str, kind: &str, r: &StageRecord) -> [(&'static str, String); 7] {
    [
        ("experiment", experiment.to_string()),
        ("system", r.cell.system.clone()),
        ("kind", kind.to_string()),
        ("payload", r.cell.payload.name().to_string()),
        ("grade", r.cell.grade.to_string()),
        ("run", r.cell.run.to_string()),
        ("stage", r.stage.name().to_string()),
    ]
}

fn build(section: &toml::Table, ctx: &SinkContext) -> anyhow::Result<Box<dyn Sink>> {
    let s: Settings = parse("pushgateway", section)?;
    let what = "config [export.pushgateway]";
    let url = http_url(what, &s.url, "http://host:9091")?;
    if s.job.is_empty()
        || !s
            .job
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
    {
        crate::bail_usage!(
            "{what} job = \"{}\": use letters, digits, '_', '-', '.' and ':'",
            s.job
        );
    }
    if s.timeout_s == 0 {
        crate::bail_usage!("{what} timeout_s must be at least 1");
    }
    let token = SecretSource::from_keys(s.token_env.clone(), s.token_file.clone())
        .resolve(&format!("{what} token"))?;
    crate::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(s.timeout_s))
        .build()
        .context("building the HTTP client of the Pushgateway sink")?;
    Ok(Box::new(Pushgateway {
        url,
        job: s.job,
        token,
        client,
        experiment: ctx.experiment.clone(),
        kinds: ctx.kinds.clone(),
        seen: HashMap::new(),
    }))
}

/// The Pushgateway sink.
struct Pushgateway {
    url: reqwest::Url,
    job: String,
    token: Option<Secret>,
    client: reqwest::Client,
    experiment: String,
    kinds: std::collections::BTreeMap<String, String>,
    /// The latest record of every (cell, stage) seen: what the ratios refer to.
    seen: HashMap<(CellKey, Stage), Arc<StageRecord>>,
}

impl Pushgateway {
    /// The base URL with `segments` appended.
    fn url_of<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> reqwest::Url {
        let mut url = self.url.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => request.bearer_auth(t.expose()),
            None => request,
        }
    }

    /// Replaces the group of one stage record with its metrics.
    async fn push(&self, r: &StageRecord) -> anyhow::Result<()> {
        let lookup = |cell: &CellKey, stage: Stage| {
            self.seen.get(&(cell.clone(), stage)).map(|r| r.as_ref())
        };
        let rows = stage_rows(r, &lookup);
        let body = render(&samples(r, &rows));
        let kind = self.kinds.get(&r.cell.system).map_or("", String::as_str);
        let labels = grouping(&self.experiment, kind, r);
        let mut segments = vec!["metrics", "job", self.job.as_str()];
        for (k, v) in &labels {
            segments.extend([*k, v.as_str()]);
        }
        let url = self.url_of(segments);
        let response = self
            .authorized(self.client.put(url.clone()))
            .header("content-type", "text/plain; version=0.0.4")
            .body(body)
            .send()
            .await
            .with_context(|| format!("pushing to {}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("pushing to {}: HTTP {status}: {}", self.url, text.trim());
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for Pushgateway {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn takes(&self) -> &'static [ItemKind] {
        &[ItemKind::Stage]
    }

    async fn healthcheck(&mut self) -> anyhow::Result<()> {
        let url = self.url_of(["-", "ready"]);
        let response = self
            .authorized(self.client.get(url))
            .send()
            .await
            .with_context(|| format!("{} is not reachable", self.url))?;
        if !response.status().is_success() {
            bail!("{} is not ready: HTTP {}", self.url, response.status());
        }
        Ok(())
    }

    async fn send(&mut self, items: &[Item]) -> anyhow::Result<()> {
        for item in items {
            if let Item::Stage(r) = item {
                self.seen.insert((r.cell.clone(), r.stage), Arc::clone(r));
                self.push(r).await?;
            }
        }
        Ok(())
    }
}
