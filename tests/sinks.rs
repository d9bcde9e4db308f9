//! The sinks against real servers: a private tansu (Kafka protocol) that the test stops in
//! the middle of a run, a private Prometheus Pushgateway, and git repositories. Each server
//! runs on a free loopback port in a temporary directory and is stopped by a Drop guard; the
//! shared lab's servers are not touched.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{bin, experiment_dir, journal, stage_records, text};
use dedup_lab::dataset::PayloadType;
use dedup_lab::model::{CellKey, Reading, Stage, StageRecord, TraceItem, TraceLine};
use dedup_lab::results::derive;
use dedup_lab::sinks::{SinkContext, Sinks};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use rustix::process::{Pid, Signal, kill_process};

/// Stage records of [`RUN`]: 2 systems × 3 payloads × 3 grades × 4 stages.
const STAGE_RECORDS: usize = 72;

/// The run every test makes: both embedded systems, nine data sets of 200 files (enough
/// that a broker stopped after a few cells can start again before the last).
const RUN: &[&str] = &[
    "--runs",
    "1",
    "--payloads",
    "random_binary,text_document,uuid_keys",
    "--grades",
    "0,50,90",
    "--files",
    "200",
    "--file-size",
    "16KiB",
    "--no-progress",
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a child: SIGTERM, then SIGKILL after 10 s; reaps it.
fn stop(child: &mut Child) {
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process(pid, Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private tansu broker: its own port and SQLite directory, stopped when dropped.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn new() -> Broker {
        let mut b = Broker {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            child: None,
        };
        b.start();
        b
    }

    /// tansu's path (it runs with a cleared environment, so without PATH).
    fn program() -> PathBuf {
        let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([home.join(".cargo/bin")])
            .map(|dir| dir.join("tansu"))
            .find(|p| p.is_file())
            .expect(
                "tansu is not installed: run `dedup-lab lab up` (it builds tansu) or scripts/test",
            )
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts tansu on the same port and data as before and waits until it answers.
    fn start(&mut self) {
        std::fs::create_dir_all(self.dir.path().join("data")).unwrap();
        let child = Command::new(Self::program())
            .env_clear()
            .env("RUST_LOG", "error")
            .current_dir(self.dir.path())
            .args(["broker", "--listener-url", &self.url()])
            .args(["--advertised-listener-url", &self.url()])
            .args([
                "--storage-engine",
                "sqlite://data/tansu.db?maintenance_interval=1s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until("tansu to answer", Duration::from_secs(60), || {
            Command::new(Self::program())
                .env_clear()
                .args(["topic", "list", "--broker", &self.url()])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }

    /// Every record of partition 0 of `topic`: key and value.
    fn read(&self, topic: &str) -> Vec<(String, String)> {
        self.try_read(topic).unwrap()
    }

    /// [`Broker::read`], or the error of a topic that does not exist yet.
    fn try_read(&self, topic: &str) -> Result<Vec<(String, String)>, rdkafka::error::KafkaError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", "dedup-lab-sinks-test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let timeout = Duration::from_secs(30);
        let (low, high) = consumer.fetch_watermarks(topic, 0, timeout)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(low))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let mut next = low;
        let deadline = Instant::now() + timeout;
        while next < high {
            assert!(Instant::now() < deadline, "reading {topic} timed out");
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                if m.offset() >= next {
                    next = m.offset() + 1;
                    let s = |b: Option<&[u8]>| String::from_utf8(b.unwrap().to_vec()).unwrap();
                    out.push((s(m.key()), s(m.payload())));
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Prometheus Pushgateway (Debian's) with its own persistence file, stopped when
/// dropped; installed with apt-get (no service started) when missing.
struct Gateway {
    port: u16,
    child: Child,
    /// Its persistence file's directory (Debian's default file is shared).
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn new() -> Gateway {
        const PROGRAM: &str = "prometheus-pushgateway";
        if !dedup_lab::lab::process::on_path(PROGRAM) {
            dedup_lab::lab::install_packages(&[PROGRAM]).unwrap();
        }
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(PROGRAM)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--persistence.file={}",
                dir.path().join("pushgateway.data").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let g = Gateway {
            port,
            child,
            _dir: dir,
        };
        wait_until("the pushgateway", Duration::from_secs(30), || {
            dedup_lab::lab::http_ok(port, "/-/ready")
        });
        g
    }

    fn metrics(&self) -> prometheus_parse::Scrape {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1;
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Writes `config` into `dir` and runs the embedded systems with it into `dir/results`.
fn run(dir: &Path, config: &str) -> (Output, PathBuf) {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let results = dir.join("results");
    let out = bin()
        .arg("run")
        .arg("--config")
        .arg(&path)
        .arg("--results-dir")
        .arg(&results)
        .args(RUN)
        .output()
        .unwrap();
    (out, results)
}

/// The measured columns of results.csv (everything but times), line by line.
fn measured(exp: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(exp.join("results.csv")).unwrap();
    let headers = r.headers().unwrap().clone();
    let last = headers.iter().position(|h| h == "reclaim").unwrap();
    r.records()
        .map(|rec| {
            rec.unwrap()
                .iter()
                .take(last + 1)
                .map(String::from)
                .collect()
        })
        .collect()
}

fn metadata(exp: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(exp.join("metadata.json")).unwrap()).unwrap()
}

/// Stderr lines about sink `name`.
fn sink_lines(out: &Output, name: &str) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(&format!("sink {name}:")))
        .map(String::from)
        .collect()
}

fn stage_count(exp_parent: &Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(exp_parent) else {
        return 0;
    };
    dirs.filter_map(|d| std::fs::read_to_string(d.ok()?.path().join("journal.jsonl")).ok())
        .map(|t| t.matches("\"type\":\"stage\"").count())
        .sum()
}

#[test]
fn kafka_sink_survives_its_broker_stopping_mid_run() {
    let mut broker = Broker::new();
    let reference = tempfile::tempdir().unwrap();
    let (out, ref_results) = run(reference.path(), "");
    assert!(out.status.success(), "{}", text(&out));

    let tmp = tempfile::tempdir().unwrap();
    // Stage records only: the trace's samples go to the sink too, and have a test of their own.
    let config = format!(
        "[trace]\ninterval_ms = 0\n\
         [export.kafka]\nbootstrap = \"{}\"\ntopic_stages = \"dedup_lab_t_stages\"\n\
         topic_samples = \"dedup_lab_t_samples\"\ntimeout_s = 2\nqueue = 4\n\
         flush_timeout_s = 120\n",
        broker.bootstrap()
    );
    std::fs::write(tmp.path().join("config.toml"), &config).unwrap();
    let results = tmp.path().join("results");
    let started = Instant::now();
    let child = bin()
        .arg("run")
        .arg("--config")
        .arg(tmp.path().join("config.toml"))
        .arg("--results-dir")
        .arg(&results)
        .args(RUN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the broker once a few stage records went out; start it again once far more
    // records than the queue holds were made while it was away.
    wait_until("8 stage records", Duration::from_secs(300), || {
        stage_count(&results) >= 8
    });
    let stopped_at = stage_count(&results);
    broker.stop();
    let back_at = STAGE_RECORDS.min(stopped_at + 24);
    wait_until("24 more stage records", Duration::from_secs(300), || {
        stage_count(&results) >= back_at
    });
    broker.start();
    let out = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));

    let exp = experiment_dir(&results);
    assert_eq!(
        measured(&exp),
        measured(&experiment_dir(&ref_results)),
        "the sink's outage changed the results"
    );
    let records = stage_records(&journal(&exp));
    assert_eq!(records.len(), STAGE_RECORDS);
    let id = exp.file_name().unwrap().to_str().unwrap().to_string();
    let by_key: BTreeMap<String, &StageRecord> = records
        .iter()
        .map(|r| (dedup_lab::sinks::kafka::stage_key(&id, r), r))
        .collect();
    let got = broker.read("dedup_lab_t_stages");
    let mut keys = BTreeSet::new();
    for (key, value) in &got {
        let sent: StageRecord = serde_json::from_str(value).unwrap();
        assert_eq!(&&sent, by_key.get(key).expect("a journal record"), "{key}");
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(
            (v["experiment"].as_str(), v["kind"].as_str()),
            (Some(id.as_str()), Some(sent.cell.system.as_str()))
        );
        keys.insert(key.clone());
    }
    let stats = &metadata(&exp)["exports"]["kafka"];
    let (items, dropped) = (
        stats["items"].as_u64().unwrap(),
        stats["dropped"].as_u64().unwrap(),
    );
    assert_eq!(items, records.len() as u64, "{stats}");
    assert!(
        dropped > 0,
        "an outage of 24 records with a queue of 4 drops some: {stats}"
    );
    assert_eq!(
        keys.len() as u64,
        items - dropped,
        "every record not counted as dropped arrived: {stats}"
    );
    // The last record was made after the broker stopped; it arrived once it was back.
    let last = dedup_lab::sinks::kafka::stage_key(&id, records.last().unwrap());
    assert!(keys.contains(&last), "{last} did not arrive");
    let lines = sink_lines(&out, "kafka");
    println!(
        "broker stopped at {stopped_at} records, back at {back_at}; {stats}; {:.1} s; \
         stderr: {lines:#?}",
        elapsed.as_secs_f64()
    );
    assert!(
        !lines.is_empty(),
        "the outage was not reported: {}",
        text(&out)
    );
    assert!(
        lines.len() as u64 <= 1 + elapsed.as_secs() / 30,
        "more than one line per 30 s in {elapsed:?}: {lines:#?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "export kafka: {dropped} of {items} items not delivered"
        )),
        "{}",
        text(&out)
    );
}

fn sample(n: u32) -> TraceLine {
    TraceLine {
        cell: CellKey {
            system: "sqlite".into(),
            payload: PayloadType::RandomBinary,
            grade: 0,
            run: 1,
        },
        attempt: 1,
        stage: Stage::BulkInsert,
        t_s: f64::from(n) / 10.0,
        at: Utc::now(),
        item: TraceItem::Sample {
            probe: "fs".into(),
            reading: Reading::Bytes {
                bytes: u64::from(n),
            },
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_delivers_samples_again_after_its_broker_returns() {
    let mut broker = Broker::new();
    let mut export = BTreeMap::new();
    export.insert(
        "kafka".to_string(),
        toml::from_str::<toml::Table>(&format!(
            "bootstrap = \"{}\"\ntimeout_s = 2\nqueue = 4\nflush_timeout_s = 120\n\
             topic_samples = \"dedup_lab_t_samples\"\n",
            broker.bootstrap()
        ))
        .unwrap(),
    );
    let ctx = SinkContext {
        experiment: "sinks-test".into(),
        kinds: BTreeMap::new(),
    };
    let sinks = Sinks::from_config(&export, &ctx).unwrap();
    let count = |b: &Broker| b.try_read("dedup_lab_t_samples").map_or(0, |r| r.len());
    for n in 0..3 {
        sinks.sample(&sample(n));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&broker) < 3 {
        assert!(
            Instant::now() < deadline,
            "the first samples did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::block_in_place(|| broker.stop());
    // The sink holds at most a batch and a queue (4 + 4) of these 20: 12 or more are dropped.
    for n in 3..23 {
        sinks.sample(&sample(n));
    }
    tokio::task::block_in_place(|| broker.start());
    for n in 23..26 {
        sinks.sample(&sample(n));
    }
    let dir = tempfile::tempdir().unwrap();
    let stats = sinks.finish(dir.path(), |_| Ok(())).await.unwrap();
    let kafka = &stats["kafka"];
    let got: BTreeSet<u64> = tokio::task::block_in_place(|| broker.read("dedup_lab_t_samples"))
        .iter()
        .map(|(key, value)| {
            assert_eq!(key, "sinks-test/sqlite/fs");
            let s: TraceLine = serde_json::from_str(value).unwrap();
            let v: serde_json::Value = serde_json::from_str(value).unwrap();
            assert_eq!(v["experiment"], "sinks-test");
            match s.item {
                TraceItem::Sample { reading, .. } => reading.bytes().unwrap(),
                other => panic!("not a sample: {other:?}"),
            }
        })
        .collect();
    assert_eq!(kafka.items, 26);
    assert!(kafka.dropped >= 12, "{kafka:?}");
    assert_eq!(
        got.len() as u64,
        kafka.items - kafka.dropped,
        "{got:?} {kafka:?}"
    );
    for n in [0, 1, 2, 23, 24, 25] {
        assert!(got.contains(&n), "sample {n} is missing: {got:?}");
    }
}

#[test]
fn pushgateway_holds_the_stage_results_of_the_journal() {
    let gateway = Gateway::new();
    let tmp = tempfile::tempdir().unwrap();
    let (out, results) = run(
        tmp.path(),
        &format!(
            "[export.pushgateway]\nurl = \"http://127.0.0.1:{}\"\njob = \"dedup_lab_test\"\n",
            gateway.port
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let exp = experiment_dir(&results);
    let id = exp.file_name().unwrap().to_str().unwrap().to_string();
    let records = journal(&exp);
    let rows = derive::rows(&records);
    let stages = stage_records(&records);
    let scrape = gateway.metrics();
    let value = |name: &str, labels: &[(&str, String)]| -> Option<f64> {
        let found: Vec<f64> = scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(k) == Some(v.as_str()))
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: {other:?}"),
            })
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().copied()
    };
    let group = |system: &str, payload: &str, grade: u8, run: u32, stage: Stage| {
        let kind = system.to_string();
        vec![
            ("job", "dedup_lab_test".to_string()),
            ("experiment", id.clone()),
            ("system", system.to_string()),
            ("kind", kind),
            ("payload", payload.to_string()),
            ("grade", grade.to_string()),
            ("run", run.to_string()),
            ("stage", stage.name().to_string()),
        ]
    };
    for s in &stages {
        let g = group(
            &s.cell.system,
            s.cell.payload.name(),
            s.cell.grade,
            s.cell.run,
            s.stage,
        );
        assert_eq!(
            value("dedup_lab_logical_bytes", &g),
            Some(s.logical_bytes as f64)
        );
        assert_eq!(value("dedup_lab_rows_after", &g), Some(s.rows_after as f64));
        assert_eq!(value("dedup_lab_duration_seconds", &g), Some(s.duration_s));
        assert_eq!(value("dedup_lab_settle_seconds", &g), Some(s.settle_s));
        let p99 = s.latency_us.as_ref().map(|l| l.p99 / 1e6);
        let mut stat = g.clone();
        stat.push(("stat", "p99".into()));
        assert_eq!(value("dedup_lab_latency_seconds", &stat), p99);
    }
    let mut captured = 0;
    for r in &rows {
        let mut labels = group(&r.system, &r.payload, r.grade, r.run, r.stage);
        labels.push(("probe", r.probe.clone()));
        let what = format!("{labels:?}");
        assert_eq!(
            value("dedup_lab_before_bytes", &labels),
            r.before_bytes.map(|b| b as f64),
            "{what}"
        );
        assert_eq!(
            value("dedup_lab_after_bytes", &labels),
            r.after_bytes.map(|b| b as f64),
            "{what}"
        );
        assert_eq!(
            value("dedup_lab_delta_bytes", &labels),
            r.delta_bytes.map(|b| b as f64),
            "{what}"
        );
        assert_eq!(value("dedup_lab_edr", &labels), r.edr, "{what}");
        assert_eq!(
            value("dedup_lab_dedup_capture", &labels),
            r.dedup_capture,
            "{what}"
        );
        assert_eq!(value("dedup_lab_reclaim", &labels), r.reclaim, "{what}");
        captured += usize::from(r.dedup_capture.is_some());
    }
    assert!(captured > 0, "no dedup capture was compared");
    let groups: BTreeSet<String> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "dedup_lab_logical_bytes")
        .map(|s| {
            let sorted: BTreeMap<_, _> = s.labels.iter().collect();
            format!("{sorted:?}")
        })
        .collect();
    assert_eq!(
        groups.len(),
        stages.len(),
        "one group per stage record: {}",
        metadata(&exp)["exports"]
    );
    assert_eq!(metadata(&exp)["exports"]["pushgateway"]["dropped"], 0);
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg(format!("--git-dir={}", repo.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn git_export_commits_the_experiment_to_a_bare_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("results.git");
    let init = Command::new("git")
        .args(["init", "--bare", "--quiet"])
        .arg(&repo)
        .status()
        .unwrap();
    assert!(init.success());
    let (out, results) = run(
        tmp.path(),
        &format!(
            "[export.git]\nrepo = \"{}\"\nbranch = \"lab/results\"\n",
            repo.display()
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let exp = experiment_dir(&results);
    let id = exp.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        git(&repo, &["rev-list", "--count", "lab/results"]).trim(),
        "1"
    );
    let message = git(&repo, &["log", "-1", "--format=%B", "lab/results"]);
    assert!(message.contains(&format!("experiment {id}")), "{message}");
    let tree = git(&repo, &["ls-tree", "-r", "--name-only", "lab/results"]);
    let tree: BTreeSet<&str> = tree.lines().collect();
    for file in [
        "journal.jsonl",
        "report.html",
        "results.csv",
        "metadata.json",
        "config.json",
    ] {
        let path = format!("{id}/{file}");
        assert!(tree.contains(path.as_str()), "{path} not in {tree:?}");
    }
    assert_eq!(
        git(&repo, &["show", &format!("lab/results:{id}/journal.jsonl")]),
        std::fs::read_to_string(exp.join("journal.jsonl")).unwrap()
    );
    assert_eq!(
        git(&repo, &["show", &format!("lab/results:{id}/report.html")]),
        std::fs::read_to_string(exp.join("report.html")).unwrap()
    );
    assert_eq!(
        tree.iter().filter(|p| p.ends_with("manifest.json")).count(),
        9
    );
    assert!(
        tree.iter()
            .all(|p| !p.contains("/systems/") && !p.ends_with(".bin")),
        "data or stores committed: {tree:?}"
    );
    assert_eq!(metadata(&exp)["exports"]["git"]["delivered"], 1);
    assert!(sink_lines(&out, "git").is_empty(), "{}", text(&out));
}

#[test]
fn git_push_to_an_unreachable_remote_is_reported_once_and_the_run_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("local.git");
    let remote = format!("http://127.0.0.1:{}/results.git", free_port());
    let (out, results) = run(
        tmp.path(),
        &format!(
            "[export.git]\nrepo = \"{}\"\nremote = \"{remote}\"\nflush_timeout_s = 5\n",
            repo.display()
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let lines = sink_lines(&out, "git");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("pushing branch dedup-lab-results to"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("the commit stays in"), "{}", lines[0]);
    // The repository did not exist: it was created, and holds the commit.
    assert_eq!(
        git(&repo, &["rev-list", "--count", "dedup-lab-results"]).trim(),
        "1"
    );
    let exp = experiment_dir(&results);
    let stats = &metadata(&exp)["exports"]["git"];
    assert_eq!(
        (stats["items"].as_u64(), stats["dropped"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    assert!(
        stats["last_error"].as_str().unwrap().contains(&remote),
        "{stats}"
    );
}
