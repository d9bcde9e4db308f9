//! Redis against the lab server: counts, native size checked with redis-cli, deletes, keys
//! outside the lab namespace, and the prometheus probe on the lab's redis_exporter.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::{
    assert_fails_with, config_with, lab_section, run_in_namespace, run_system, stages, text,
};
use dedup_lab::model::Stage;
use dedup_lab::probe::prometheus::{Prometheus, PrometheusConfig};
use dedup_lab::systems;

/// Tests here change the server's memory, which the prometheus probe reads server-wide: they
/// take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// redis-cli against the lab server's db 15, authenticated through the environment.
fn cli(args: &[&str]) -> String {
    cli_in(15, args, None)
}

/// redis-cli against logical db `db`; with `input`, it becomes the last argument (`-x`), so
/// values of any size pass.
fn cli_in(db: u8, args: &[&str], input: Option<&[u8]>) -> String {
    let s = lab_section("redis");
    let password = std::fs::read_to_string(s["password_file"].as_str().unwrap()).unwrap();
    let mut child = Command::new("redis-cli")
        .env("REDISCLI_AUTH", password.trim())
        .args(["-h", "127.0.0.1", "-p"])
        .arg(s["port"].as_integer().unwrap().to_string())
        .args(["-n", &db.to_string(), "--no-raw"])
        .args(input.map(|_| "-x"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.unwrap_or_default())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn keys(pattern: &str) -> Vec<String> {
    cli(&["--scan", "--pattern", pattern])
        .lines()
        .map(|l| l.trim_matches('"').to_string())
        .collect()
}

fn memory_usage(key: &str) -> u64 {
    cli(&["MEMORY", "USAGE", key, "SAMPLES", "0"])
        .trim()
        .trim_start_matches("(integer) ")
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn native_size_is_memory_usage_deletes_remove_keys_and_resets_compact_the_aof() {
    let _turn = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut section = lab_section("redis");
    section.insert("prefix".into(), "dedup_lab_t_native".into());
    let mut sys = systems::build_from_section("redis", &section, tmp.path()).unwrap();
    assert_eq!(sys.connect().await.unwrap().product, "Redis");
    let ds = dedup_lab::dataset::DataSet::generate(
        &dedup_lab::dataset::DataSetSpec {
            payload: dedup_lab::dataset::PayloadType::TextDocument,
            grade: 50,
            files: 40,
            sizes: dedup_lab::dataset::SizeSpec::Range {
                min: 1000,
                max: 50_000,
            },
            seed: 3,
            ..Default::default()
        },
        &tmp.path().join("ds"),
    )
    .unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    let aof_before = info_number("persistence", "aof_current_size");
    sys.bulk_insert(&ds).await.unwrap();
    let stored = keys("dedup_lab_t_native:files:*");
    assert_eq!(stored.len(), 40);
    assert_eq!(sys.count().await.unwrap(), 40);
    let by_cli: u64 = stored.iter().map(|k| memory_usage(k)).sum();
    assert_eq!(common::native_size(sys.as_mut()).await, by_cli);
    // The snapshot's figures are INFO's: the AOF's size is stable once the load is written
    // (the lab server keeps one), so it must equal what redis-cli reads now.
    let snap = sys.meter().await.unwrap().snapshot().await.unwrap();
    assert_eq!(
        snap["aof_current_size"],
        info_number("persistence", "aof_current_size") as f64
    );
    assert!(snap["aof_current_size"] > aof_before as f64 + ds.manifest.logical_bytes as f64 * 0.9);
    assert!(
        snap["used_memory_dataset"] > by_cli as f64 * 0.5,
        "{snap:?}"
    );
    for f in &ds.manifest.files[..15] {
        sys.delete_one(f).await.unwrap();
    }
    assert_eq!(keys("dedup_lab_t_native:files:*").len(), 25);
    common::reset(sys.as_mut()).await.unwrap();
    assert!(keys("dedup_lab_t_native:files:*").is_empty());
    // The reset rewrote the log: what the deleted keys took there is gone, so the server's
    // automatic rewrite cannot reclaim it in the middle of a later cell.
    let aof = info_number("persistence", "aof_current_size");
    assert!(
        aof < aof_before + ds.manifest.logical_bytes / 10,
        "AOF grew from {aof_before} to {aof} bytes over a reset of {} logical bytes",
        ds.manifest.logical_bytes
    );
}

#[test]
fn run_records_counts_and_incompressible_growth() {
    let _turn = SERIAL.blocking_lock();
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(tmp.path(), "redis", &[("prefix", "dedup_lab_t_run".into())]);
    let results = tmp.path().join("results");
    let out = run_system(&config, "redis", "random_binary", "0,90", 40, &results);
    assert!(out.status.success(), "{}", text(&out));
    let stages = stages(&results);
    assert_eq!(stages.len(), 8);
    for s in &stages {
        let want = if s.stage.inserts() { 40 } else { 0 };
        assert_eq!(s.rows_after, want, "{} {}", s.cell, s.stage);
        if s.stage == Stage::BulkInsert {
            for probe in ["native", "fs", "prometheus"] {
                let p = &s.probes[probe];
                let grown = p.after.bytes().unwrap() - p.before.bytes().unwrap();
                assert!(
                    grown as f64 >= 0.9 * s.logical_bytes as f64,
                    "{probe}: grew {grown} for L {}",
                    s.logical_bytes
                );
            }
        }
    }
    assert!(
        keys("dedup_lab_t_run:files:*").is_empty(),
        "final reset empties"
    );
}

#[test]
fn keys_outside_the_lab_namespace_survive_and_unmarked_lab_keys_are_refused() {
    let _turn = SERIAL.blocking_lock();
    cli(&["SET", "precious:key", "42"]);
    cli(&["SET", "dedup_lab_t_foreign:files:x", "not ours"]);
    let out = run_in_namespace("redis", "prefix", "dedup_lab_t_foreign");
    assert_fails_with(&out, 1, &["not created by dedup-lab"]);
    assert!(cli(&["GET", "dedup_lab_t_foreign:files:x"]).contains("not ours"));
    assert!(cli(&["GET", "precious:key"]).contains("42"));
    cli(&["DEL", "precious:key", "dedup_lab_t_foreign:files:x"]);
}

/// A number from an `INFO` section, read with redis-cli.
fn info_number(section: &str, field: &str) -> u64 {
    let info = cli(&["INFO", section]);
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{field} in INFO {section}"))
        .trim()
        .parse()
        .unwrap()
}

/// The lab config's prometheus probe reads the server's used memory through redis_exporter:
/// it agrees with `INFO memory` and grows by what is stored. A probe on `redis_db_keys` of one
/// logical db sees exactly the keys written there.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_probe_reads_used_memory_and_selects_samples_by_label() {
    let _turn = SERIAL.lock().await;
    let section = lab_section("redis");
    let config: PrometheusConfig = section["prometheus_probe"]
        .clone()
        .try_into()
        .expect("lab.toml gives redis a prometheus_probe");
    let memory = Prometheus::new("redis", &config).unwrap();
    let keys_in_13 = Prometheus::new(
        "redis",
        &PrometheusConfig {
            metric: "redis_db_keys".into(),
            labels: [("db".to_string(), "db13".to_string())].into(),
            ..config
        },
    )
    .unwrap();
    // Db 13 is this test's own: no adapter or other test uses it.
    let names: Vec<String> = (0..16).map(|i| format!("dedup_lab_t_prom:{i}")).collect();
    let before = memory.scrape().await.unwrap();
    // Redis stores values as given: any 1 MiB will do.
    let value: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    for name in &names {
        cli_in(13, &["SET", name], Some(&value));
    }
    let after = memory.scrape().await.unwrap();
    let by_cli = info_number("memory", "used_memory");
    let written = (names.len() << 20) as f64;
    assert!(
        (after - before) as f64 >= 0.9 * written,
        "used memory grew {} for {written} bytes stored",
        after - before
    );
    assert!(
        after.abs_diff(by_cli) < 1 << 20,
        "probe {after} vs INFO memory {by_cli}"
    );
    assert_eq!(keys_in_13.scrape().await.unwrap(), 16);
    let mut del = vec!["DEL"];
    del.extend(names.iter().map(String::as_str));
    cli_in(13, &del, None);
    assert_eq!(keys_in_13.scrape().await.unwrap(), 0);
}

/// `persistence` is applied at every reset: the server keeps no AOF after a reset with
/// `none`, and one again after a reset with `aof` (as the lab runs it).
#[tokio::test(flavor = "multi_thread")]
async fn persistence_is_set_at_each_reset() {
    let _turn = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let appendonly = || {
        cli(&["CONFIG", "GET", "appendonly"])
            .lines()
            .nth(1)
            .unwrap()
            .trim_matches('"')
            .to_string()
    };
    for (mode, want) in [("none", "no"), ("aof", "yes")] {
        let mut section = lab_section("redis");
        section.insert("prefix".into(), "dedup_lab_t_persist".into());
        section.insert("persistence".into(), mode.into());
        let mut sys = systems::build_from_section("redis", &section, tmp.path()).unwrap();
        sys.connect().await.unwrap();
        common::reset(sys.as_mut()).await.unwrap();
        assert!(appendonly().ends_with(want), "{mode}: {}", appendonly());
    }
}
