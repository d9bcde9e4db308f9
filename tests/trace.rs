//! The trace against real servers: sampling every 100 ms opens no connection per sample. Each
//! server's own connection counter (MariaDB's `Connections`, PostgreSQL's
//! `pg_stat_database.sessions`) is read around a run traced at 100 ms and around the same run
//! with the trace off: the two runs open the same number of connections, however many
//! samples the first took.

mod common;

use std::path::Path;

use common::{config_with, experiment_dir, lab_section, run_system, text};
use dedup_lab::model::{TraceItem, TraceLine};
use mysql_async::prelude::Queryable;

/// Runs `system` on `namespace` with the trace at `interval_ms` (0 = off) and returns the
/// native samples the trace holds.
fn traced_run(system: &str, key: &str, namespace: &str, interval_ms: u64, dir: &Path) -> usize {
    let config = config_with(dir, system, &[(key, namespace.into())]);
    let mut text_cfg = std::fs::read_to_string(&config).unwrap();
    text_cfg.push_str(&format!(
        "\n[trace]\ninterval_ms = {interval_ms}\n[dataset]\nfile_size = \"16KiB\"\n"
    ));
    std::fs::write(&config, text_cfg).unwrap();
    let results = dir.join("results");
    let out = run_system(&config, system, "random_binary", "0", 2000, &results);
    assert!(out.status.success(), "{}", text(&out));
    let trace = experiment_dir(&results).join("trace.jsonl");
    if interval_ms == 0 {
        assert!(!trace.exists(), "the trace is off");
        return 0;
    }
    std::fs::read_to_string(trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<TraceLine>(l).unwrap())
        .filter(|l| matches!(&l.item, TraceItem::Sample { probe, .. } if probe == "native"))
        .count()
}

/// Connections opened by a traced run and by an untraced one, and the traced run's samples.
async fn opened<F, Fut>(system: &str, key: &str, namespace: &str, mut counter: F) -> [u64; 3]
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let mut out = [0; 3];
    for (i, interval) in [100, 0].into_iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let before = counter().await;
        let (system, key, namespace, dir) = (
            system.to_string(),
            key.to_string(),
            namespace.to_string(),
            tmp.path().to_path_buf(),
        );
        let samples = tokio::task::spawn_blocking(move || {
            traced_run(&system, &key, &namespace, interval, &dir)
        })
        .await
        .unwrap();
        // PostgreSQL counts a session when its backend reports, at the latest when it exits.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        out[i] = counter().await - before;
        if interval > 0 {
            out[2] = samples as u64;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_sees_no_connection_per_sample() {
    let s = lab_section("mariadb");
    let password = std::fs::read_to_string(s["password_file"].as_str().unwrap()).unwrap();
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(s["host"].as_str().unwrap())
        .tcp_port(s["port"].as_integer().unwrap() as u16)
        .user(Some(s["user"].as_str().unwrap()))
        .pass(Some(password.trim()))
        .prefer_socket(false);
    let conn = std::sync::Arc::new(tokio::sync::Mutex::new(
        mysql_async::Conn::new(opts).await.unwrap(),
    ));
    let counter = || {
        let conn = std::sync::Arc::clone(&conn);
        async move {
            let row: Option<(String, u64)> = conn
                .lock()
                .await
                .query_first("SHOW GLOBAL STATUS LIKE 'Connections'")
                .await
                .unwrap();
            row.unwrap().1
        }
    };
    let [traced, untraced, samples] =
        opened("mariadb", "database", "dedup_lab_t_trace", counter).await;
    assert!(
        samples >= 10,
        "only {samples} samples: the stages were too short"
    );
    assert_eq!(
        traced, untraced,
        "{samples} samples at 100 ms opened {traced} connections, the untraced run {untraced}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sees_no_session_per_sample() {
    let s = lab_section("postgres");
    let password = std::fs::read_to_string(s["password_file"].as_str().unwrap()).unwrap();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(s["host"].as_str().unwrap())
        .port(s["port"].as_integer().unwrap() as u16)
        .user(s["user"].as_str().unwrap())
        .dbname(s["database"].as_str().unwrap())
        .password(password.trim());
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let client = std::sync::Arc::new(client);
    let counter = || {
        let client = std::sync::Arc::clone(&client);
        async move {
            // A fresh statistics snapshot each time: the counter as it is now.
            client
                .batch_execute("SELECT pg_stat_clear_snapshot()")
                .await
                .unwrap();
            let n: i64 = client
                .query_one(
                    "SELECT sessions FROM pg_stat_database WHERE datname = current_database()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            n as u64
        }
    };
    let [traced, untraced, samples] =
        opened("postgres", "schema", "dedup_lab_t_trace", counter).await;
    assert!(
        samples >= 10,
        "only {samples} samples: the stages were too short"
    );
    assert_eq!(
        traced, untraced,
        "{samples} samples at 100 ms opened {traced} sessions, the untraced run {untraced}"
    );
}
