//! The sinks' own logic: the queue's accounting and backoff (on a scriptable sink, with a
//! paused clock: no test sleeps), the log throttle, the Pushgateway's text, the files git
//! commits, and bad sections. The sinks against real servers are in `tests/sinks.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use super::worker::{LOG_EVERY, Throttle, Worker};
use super::*;
use crate::dataset::PayloadType;
use crate::model::{CellKey, Latency, ProbeRecord, Reading, Stage};

/// A sink that fails while `down` is set and otherwise keeps what it is sent.
struct Scripted {
    down: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<u32>>>,
}

#[async_trait]
impl Sink for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn takes(&self) -> &'static [ItemKind] {
        &[ItemKind::Stage]
    }

    async fn healthcheck(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn send(&mut self, items: &[Item]) -> anyhow::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            anyhow::bail!("destination down");
        }
        let mut got = self.got.lock().unwrap();
        for item in items {
            if let Item::Stage(r) = item {
                got.push(r.attempt);
            }
        }
        Ok(())
    }
}

fn record(grade: u8, stage: Stage, attempt: u32, before: u64, after: u64) -> StageRecord {
    let mut probes = BTreeMap::new();
    probes.insert(
        "fs".to_string(),
        ProbeRecord {
            before: Reading::Bytes { bytes: before },
            after: Reading::Bytes { bytes: after },
            copies: 1,
        },
    );
    probes.insert(
        "native".to_string(),
        ProbeRecord {
            before: Reading::Bytes { bytes: before },
            after: Reading::Error {
                error: "gone".into(),
            },
            copies: 1,
        },
    );
    StageRecord {
        cell: CellKey {
            system: "sqlite".into(),
            payload: PayloadType::TextDocument,
            grade,
            run: 1,
        },
        attempt,
        stage,
        started_at: Utc::now(),
        files: 10,
        logical_bytes: 1000,
        unique_bytes: if grade == 0 { 1000 } else { 100 },
        rows_after: 10,
        duration_s: 0.25,
        settle_s: 0.125,
        throughput_bps: Some(4000.0),
        latency_us: (stage == Stage::PerfileInsert).then_some(Latency {
            min: 10.0,
            p50: 20.0,
            p90: 30.0,
            p95: 40.0,
            p99: 50.0,
            max: 60.0,
            mean: 25.0,
        }),
        probes,
        note: None,
        retried_requests: 0,
        potential: None,
        storage_dedupe: None,
        snapshot: None,
        layout: Default::default(),
    }
}

fn item(attempt: u32) -> Item {
    Item::Stage(Arc::new(record(0, Stage::BulkInsert, attempt, 0, 1)))
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_its_oldest_and_the_newest_arrive_once_the_destination_is_back() {
    let down = Arc::new(AtomicBool::new(true));
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Scripted {
        down: Arc::clone(&down),
        got: Arc::clone(&got),
    };
    let w = Worker::spawn(Box::new(sink), 2, Duration::from_secs(60));
    // The task has not run yet: the queue keeps the newest two of ten.
    for n in 1..=10 {
        w.offer(item(n));
    }
    // The task takes its batch (9, 10), fails and waits; the queue fills again and keeps
    // the newest two.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in 11..=15 {
        w.offer(item(n));
    }
    down.store(false, Ordering::SeqCst);
    let (name, stats) = w.close().await;
    assert_eq!(name, "scripted");
    assert_eq!(*got.lock().unwrap(), [9, 10, 14, 15]);
    assert_eq!(
        (stats.items, stats.delivered, stats.dropped),
        (15, 4, 11),
        "{stats:?}"
    );
    assert_eq!(
        stats.last_error.as_deref(),
        Some("destination down"),
        "the last failure is kept after the recovery"
    );
}

#[tokio::test(start_paused = true)]
async fn what_is_unsent_at_the_flush_deadline_counts_as_dropped() {
    let sink = Scripted {
        down: Arc::new(AtomicBool::new(true)),
        got: Arc::new(Mutex::new(Vec::new())),
    };
    let w = Worker::spawn(Box::new(sink), 8, Duration::from_secs(20));
    for n in 1..=5 {
        w.offer(item(n));
    }
    let started = tokio::time::Instant::now();
    let (_, stats) = w.close().await;
    // The paused clock advanced exactly to the deadline: close waited for it, not beyond.
    assert_eq!(started.elapsed(), Duration::from_secs(20));
    assert_eq!((stats.items, stats.delivered, stats.dropped), (5, 0, 5));
}

#[tokio::test(start_paused = true)]
async fn the_throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
    let mut t = Throttle::new("kafka");
    assert_eq!(t.line("down").as_deref(), Some("sink kafka: down"));
    for _ in 0..29 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.line("down"), None);
    }
    tokio::time::advance(LOG_EVERY - Duration::from_secs(29)).await;
    assert_eq!(
        t.line("down").as_deref(),
        Some("sink kafka: down (29 more since the last message)")
    );
    assert_eq!(t.line("down"), None);
}

#[test]
fn pushgateway_text_holds_the_record_and_its_ratios() {
    use super::pushgateway::{METRICS, render, samples};
    use crate::results::derive::stage_rows;
    // U0 stored at half its size (c = 0.5); U90 bulk insert grew by 50 = c·U: capture 1.
    let u0 = record(0, Stage::BulkInsert, 1, 100, 600);
    let u90 = record(90, Stage::BulkInsert, 2, 100, 150);
    let lookup = |cell: &CellKey, stage: Stage| {
        (cell.grade == 0 && stage == Stage::BulkInsert).then_some(&u0)
    };
    let rows = stage_rows(&u90, &lookup);
    let text = render(&samples(&u90, &rows));
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid text format");
    let value = |name: &str, probe: Option<&str>| -> Option<f64> {
        parsed
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("probe") == probe)
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                ref other => panic!("{name} is not a gauge: {other:?}"),
            })
    };
    assert_eq!(value("dedup_lab_logical_bytes", None), Some(1000.0));
    assert_eq!(value("dedup_lab_attempt", None), Some(2.0));
    assert_eq!(value("dedup_lab_duration_seconds", None), Some(0.25));
    assert_eq!(value("dedup_lab_delta_bytes", Some("fs")), Some(50.0));
    assert_eq!(value("dedup_lab_edr", Some("fs")), Some(20.0));
    assert_eq!(value("dedup_lab_dedup_capture", Some("fs")), Some(1.0));
    // A failed reading has no bytes and no ratios, and says it failed.
    assert_eq!(value("dedup_lab_after_bytes", Some("native")), None);
    assert_eq!(value("dedup_lab_edr", Some("native")), None);
    assert_eq!(value("dedup_lab_probe_failed", Some("native")), Some(1.0));
    assert_eq!(value("dedup_lab_probe_failed", Some("fs")), Some(0.0));
    // Latency only for per-file stages; every sample's metric is a listed one.
    assert_eq!(value("dedup_lab_latency_seconds", None), None);
    let perfile = record(0, Stage::PerfileInsert, 1, 0, 1);
    let text = render(&samples(&perfile, &[]));
    assert!(
        text.contains("dedup_lab_latency_seconds{stat=\"p99\"} 0.00005\n"),
        "{text}"
    );
    for s in &parsed.samples {
        assert!(METRICS.iter().any(|m| m.name == s.metric), "{}", s.metric);
    }
}

#[test]
fn git_commits_the_results_not_the_data_or_the_stores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for f in [
        "journal.jsonl",
        "metadata.json",
        "report.html",
        "metadata.json.tmp",
    ] {
        std::fs::write(d.join(f), "x").unwrap();
    }
    let ds = d.join("datasets/run-1/random_binary-U0");
    std::fs::create_dir_all(&ds).unwrap();
    std::fs::write(ds.join("manifest.json"), "{}").unwrap();
    std::fs::write(ds.join("f-000001.bin"), "data").unwrap();
    std::fs::create_dir_all(d.join("systems/sqlite")).unwrap();
    std::fs::write(d.join("systems/sqlite/dedup_lab.db"), "db").unwrap();
    let files: Vec<String> = git::result_files(d)
        .unwrap()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        files,
        [
            "datasets/run-1/random_binary-U0/manifest.json",
            "journal.jsonl",
            "metadata.json",
            "report.html"
        ]
    );
}

fn ctx() -> SinkContext {
    SinkContext {
        experiment: "e1".into(),
        kinds: BTreeMap::new(),
    }
}

fn export(toml_text: &str) -> BTreeMap<String, toml::Table> {
    let doc: toml::Table = toml::from_str(toml_text).unwrap();
    doc["export"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_table().unwrap().clone()))
        .collect()
}

#[tokio::test]
async fn bad_sections_are_usage_errors_naming_the_fix() {
    let cases = [
        (
            "[export.kafak]\n",
            "there is no sink 'kafak'; sinks: kafka, pushgateway, git",
        ),
        ("[export.kafka]\ntopc = 1\n", "unknown field `topc`"),
        ("[export.kafka]\nqueue = 0\n", "queue must be at least 1"),
        (
            "[export.kafka]\nbootstrap = \"nohost\"\n",
            "not a list of brokers",
        ),
        (
            "[export.kafka]\ntopic_stages = \"a b\"\n",
            "not a Kafka topic name",
        ),
        ("[export.pushgateway]\nurl = \"no url\"\n", "is not a URL"),
        (
            "[export.pushgateway]\nurl = \"http://u:pw@127.0.0.1:9091\"\n",
            "carries credentials",
        ),
        ("[export.git]\nrepo = \"/proc\"\n", "not a git repository"),
        (
            "[export.git]\nrepo = \"/nonexistent/r.git\"\nremote = \"https://u:tok@example.com/r.git\"\n",
            "carries credentials",
        ),
        (
            "[export.git]\nrepo = \"/nonexistent/r.git\"\nremote = \"origin\"\n",
            "is not a remote of /nonexistent/r.git",
        ),
        (
            "[export.git]\nrepo = \"/nonexistent/r.git\"\npush = true\n",
            "needs a remote",
        ),
        (
            "[export.git]\nrepo = \"/nonexistent/r.git\"\nbranch = \"a..b\"\n",
            "not a valid branch",
        ),
    ];
    for (text, want) in cases {
        let err = match Sinks::from_config(&export(text), &ctx()) {
            Ok(_) => panic!("{text} was accepted"),
            Err(e) => e,
        };
        assert_eq!(crate::error::exit_code(&err), 2, "{text}: {err}");
        assert!(err.to_string().contains(want), "{text}: {err} lacks {want}");
        assert!(
            !err.to_string().contains("tok@"),
            "a credential leaked: {err}"
        );
    }
}

#[test]
fn export_settings_are_not_part_of_the_experiment_identity() {
    let plain = crate::config::Config::default();
    let mut with = plain.clone();
    with.export = export("[export.pushgateway]\nurl = \"http://127.0.0.1:9091\"\n");
    assert_eq!(plain.fingerprint(), with.fingerprint());
    assert!(with.resolve().is_ok());
}

/// The labels the Pushgateway sink's metrics carry (grouping key, `probe`, `stat`), and
/// the `instance` label the Pushgateway adds.
const LABELS: &[&str] = &[
    "job",
    "instance",
    "experiment",
    "system",
    "kind",
    "payload",
    "grade",
    "run",
    "stage",
    "probe",
    "stat",
];

/// Metric names (`dedup_lab_…`) in a PromQL expression.
fn metric_names(expr: &str) -> Vec<&str> {
    expr.match_indices("dedup_lab_")
        .map(|(i, _)| {
            let rest = &expr[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// Label names in a PromQL expression: in `by (…)` lists and `{…}` matchers.
fn label_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in expr.split("by (").skip(1) {
        let list = &part[..part.find(')').unwrap()];
        out.extend(list.split(',').map(|l| l.trim().to_string()));
    }
    for part in expr.split('{').skip(1) {
        let body = &part[..part.find('}').unwrap()];
        for matcher in body.split(',') {
            let name = matcher.split(['=', '!']).next().unwrap().trim();
            out.push(name.to_string());
        }
    }
    out
}

#[test]
fn the_grafana_dashboard_charts_only_what_the_pushgateway_sink_emits() {
    use super::pushgateway::METRICS;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana/dedup-lab.json");
    let d: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // What Grafana 10's import needs: a schema version of its own, a title, a uid, and the
    // data source as an input that the panels name.
    assert!((36..=39).contains(&d["schemaVersion"].as_i64().unwrap()));
    assert_eq!(d["title"], "dedup-lab");
    assert!(d["id"].is_null(), "an exported dashboard has no id");
    assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut charted = std::collections::BTreeSet::new();
    let mut exprs = Vec::new();
    for v in d["templating"]["list"].as_array().unwrap() {
        exprs.push(v["definition"].as_str().unwrap().to_string());
    }
    let panels = d["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "duplicate panel id: {p}"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_i64().unwrap() + g["w"].as_i64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                !metric_names(expr).is_empty(),
                "{}: {expr} names no metric",
                p["title"]
            );
            exprs.push(expr.to_string());
        }
    }
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                METRICS.iter().any(|m| m.name == name),
                "{expr}: {name} is not emitted"
            );
            charted.insert(name.to_string());
        }
        for label in label_names(expr) {
            assert!(LABELS.contains(&label.as_str()), "{expr}: no label {label}");
        }
    }
    for name in [
        "dedup_lab_dedup_capture",
        "dedup_lab_edr",
        "dedup_lab_reclaim",
    ] {
        assert!(
            charted.contains(name),
            "the dashboard does not chart {name}"
        );
    }
}
