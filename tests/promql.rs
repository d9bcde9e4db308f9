//! The promql probe against a real Prometheus server (Debian's `prometheus`, a private one on
//! a free port and in a temporary directory) that scrapes the lab's redis_exporter: its
//! readings equal the exporter's value of the same metric, and every failure is an error
//! reading that says why.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{config_with, lab_section, run_system, stages, text};
use dedup_lab::lab::prometheus::Prometheus;
use dedup_lab::model::{Measured, Reading, SysResult};
use dedup_lab::probe::prometheus::{Prometheus as Scrape, PrometheusConfig};
use dedup_lab::probe::{ProbeKeys, Probes};

/// The lab's redis_exporter (src/systems/redis/lab.rs).
const EXPORTER: &str = "127.0.0.1:19121";
/// The logical db this test keeps its keys in, and their prefix.
const DB: u8 = 11;
const PREFIX: &str = "dedup_lab_k8s_promql";

/// A Prometheus server of the test's own, stopped when dropped.
struct Server(Prometheus);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An exporter of one sample carrying an explicit timestamp a minute in the past, as a
/// federated or pushed metric can: Prometheus stores it at that time, so it is stale.
fn stale_exporter() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let at = chrono::Utc::now().timestamp_millis() - 60_000;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body =
                format!("# TYPE dedup_lab_stale_bytes gauge\ndedup_lab_stale_bytes 4096 {at}\n");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// Starts the server scraping the lab's exporter (job `redis`) and the stale exporter (job
/// `stale`), and waits until both have been scraped.
async fn server(dir: &Path) -> Server {
    let _ = lab_section("redis"); // the lab runs (its exporter with it)
    dedup_lab::tls::install_crypto_provider();
    let server = Server(Prometheus {
        dir: dir.join("prometheus"),
        port: free_port(),
        targets: vec![
            ("redis".into(), EXPORTER.into()),
            ("stale".into(), stale_exporter()),
        ],
    });
    server.0.start().unwrap();
    let url = format!("{}/api/v1/query?query=count(up%3D%3D1)", server.0.url());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if body.contains("\"2\"]") {
            break;
        }
        assert!(Instant::now() < deadline, "targets not scraped: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
}

/// What a probe sees of a system; the promql probe asks the server, not the system.
struct NoSystem;

#[async_trait]
impl Measured for NoSystem {
    fn native_copies(&self) -> Option<u32> {
        None
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        unreachable!("not asked")
    }
}

/// The promql reading of `probe` (a `promql_probe` table), built as the engine builds it.
async fn read(probe: toml::Value) -> Reading {
    let mut section = toml::Table::new();
    section.insert("promql_probe".into(), probe);
    let probes = Probes::build("redis", &ProbeKeys::take(&mut section)).unwrap();
    let mut readings = probes.read_each(&mut NoSystem).await;
    readings.remove("promql").expect("a promql reading")
}

fn probe(url: &str, query: &str, extra: &[(&str, toml::Value)]) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("url".into(), url.into());
    t.insert("query".into(), query.into());
    t.insert("fresh_timeout_s".into(), 5.into());
    for (k, v) in extra {
        t.insert((*k).into(), v.clone());
    }
    toml::Value::Table(t)
}

/// redis-cli on the lab server's db [`DB`], authenticated through the environment.
fn cli(args: &[&str]) -> String {
    let s = lab_section("redis");
    let password = std::fs::read_to_string(s["password_file"].as_str().unwrap()).unwrap();
    let out = Command::new("redis-cli")
        .env("REDISCLI_AUTH", password.trim())
        .args(["-h", "127.0.0.1", "-p"])
        .arg(s["port"].as_integer().unwrap().to_string())
        .args(["-n", &DB.to_string()])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("redis-cli");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Keys this test wrote, deleted when dropped.
struct Keys(Vec<String>);

impl Drop for Keys {
    fn drop(&mut self) {
        let mut args = vec!["DEL"];
        args.extend(self.0.iter().map(String::as_str));
        cli(&args);
    }
}

/// The exporter's own value of one sample, scraped directly.
async fn exporter(metric: &str, labels: &[(&str, &str)]) -> u64 {
    Scrape::new(
        "redis",
        &PrometheusConfig {
            url: format!("http://{EXPORTER}/metrics"),
            metric: metric.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            copies: 1,
            token_env: None,
            token_file: None,
            timeout_s: 10,
        },
    )
    .unwrap()
    .scrape()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn readings_equal_the_exporters_value() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(tmp.path()).await;
    let url = server.0.url();

    // Keys of a db only this test writes: their count is known and holds still (unlike used
    // memory, which moves with every client, the exporters' scrapes included).
    let keys = Keys((0..7).map(|i| format!("{PREFIX}:{i}")).collect());
    for k in &keys.0 {
        cli(&["SET", k, "x"]);
    }
    let db = format!("db{DB}");
    let query = "redis_db_keys{job=\"${instance}\",db=\"${db}\"}";
    let vars = toml::Value::Table(
        [("db".to_string(), db.clone().into())]
            .into_iter()
            .collect(),
    );
    // The series exists once Prometheus has scraped the db with keys in it (before, the
    // query's result is empty: an error reading).
    let (series, deadline) = (
        format!("{url}/api/v1/query?query=redis_db_keys%7Bdb%3D%22{db}%22%7D"),
        Instant::now() + Duration::from_secs(30),
    );
    while !reqwest::get(&series)
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .contains(&db)
    {
        assert!(Instant::now() < deadline, "{db} never scraped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reading = read(probe(&url, query, &[("vars", vars)])).await;
    assert_eq!(reading, Reading::Bytes { bytes: 7 });
    assert_eq!(exporter("redis_db_keys", &[("db", &db)]).await, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_failure_is_an_error_reading_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(tmp.path()).await;
    let url = server.0.url();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let cases: Vec<(&str, toml::Value, &str)> = vec![
        (
            "wrong query",
            probe(
                &url,
                "redis_memory_used_bytes{",
                &[(
                    "timestamp_query",
                    "timestamp(redis_memory_used_bytes{)".into(),
                )],
            ),
            "bad_data",
        ),
        (
            "empty result",
            probe(&url, "redis_memory_used_bytes{job=\"nowhere\"}", &[]),
            "matches no series (empty result)",
        ),
        (
            "unreachable server",
            probe(&closed, "redis_memory_used_bytes", &[]),
            "error sending request",
        ),
        (
            "not the API",
            probe(&format!("{url}/nothing"), "redis_memory_used_bytes", &[]),
            "HTTP 404 Not Found",
        ),
        (
            "too many series",
            probe(&url, "up", &[]),
            "2 series, more than max_series = 1",
        ),
        (
            "stale sample",
            probe(
                &url,
                "dedup_lab_stale_bytes",
                &[("fresh_timeout_s", 2.into())],
            ),
            "stale: the sample of {instance=",
        ),
        (
            "not a vector",
            probe(
                &url,
                "scalar(redis_memory_used_bytes)",
                &[("timestamp_query", "time()".into())],
            ),
            "gives a scalar, not a vector",
        ),
    ];
    for (name, p, reason) in cases {
        match read(p).await {
            Reading::Error { error } => {
                assert!(error.contains(reason), "{name}: {error}");
                assert!(error.contains("promql probe: "), "{name}: {error}");
            }
            r => panic!("{name}: {r:?} is not an error reading"),
        }
    }
    // The stale sample is there, only old: with a long enough wait it is still refused, and
    // a reading of the same metric without the staleness rule would have been 4096.
    let sum = format!("{url}/api/v1/query?query=dedup_lab_stale_bytes");
    let body = reqwest::get(&sum).await.unwrap().text().await.unwrap();
    assert!(body.contains("\"4096\""), "{body}");
}

/// A run whose redis instance has a promql probe records its readings around every stage,
/// with the copies it counts.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_records_promql_readings() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(tmp.path()).await;
    let p = probe(
        &server.0.url(),
        "redis_memory_used_bytes{job=\"redis\"}",
        &[("copies", 2.into())],
    );
    let config = config_with(
        tmp.path(),
        "redis",
        &[("prefix", PREFIX.into()), ("promql_probe", p)],
    );
    let results = tmp.path().join("results");
    let out = tokio::task::spawn_blocking(move || {
        let out = run_system(&config, "redis", "random_binary", "0", 20, &results);
        (out, results)
    })
    .await
    .unwrap();
    assert!(out.0.status.success(), "{}", text(&out.0));
    let records = stages(&out.1);
    assert_eq!(records.len(), 4);
    for s in &records {
        let r = &s.probes["promql"];
        assert_eq!(r.copies, 2);
        let (before, after) = (r.before.bytes().unwrap(), r.after.bytes().unwrap());
        if s.stage == dedup_lab::model::Stage::BulkInsert {
            // Others' tests move the shared server's memory too: only the direction is sure.
            assert!(
                after > before,
                "{before} -> {after} for L {}",
                s.logical_bytes
            );
        }
    }
}
