//! Redis against the lab server: counts, native size checked with redis-cli, deletes, and
//! keys outside the lab namespace.

mod common;

use std::process::Command;

use common::{
    assert_fails_with, config_with, lab_section, run_in_namespace, run_system, stages, text,
};
use dedup_lab::results::record::Stage;
use dedup_lab::systems;

/// redis-cli against the lab server, authenticated through the environment.
fn cli(args: &[&str]) -> String {
    let s = lab_section("redis");
    let password = std::fs::read_to_string(s["password_file"].as_str().unwrap()).unwrap();
    let out = Command::new("redis-cli")
        .env("REDISCLI_AUTH", password.trim())
        .args(["-h", "127.0.0.1", "-p"])
        .arg(s["port"].as_integer().unwrap().to_string())
        .args(["-n", "15", "--no-raw"])
        .args(args)
        .output()
        .expect("redis-cli");
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
async fn native_size_is_memory_usage_and_deletes_remove_keys() {
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
        },
        &tmp.path().join("ds"),
    )
    .unwrap();
    sys.reset().await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    let stored = keys("dedup_lab_t_native:files:*");
    assert_eq!(stored.len(), 40);
    assert_eq!(sys.count().await.unwrap(), 40);
    let by_cli: u64 = stored.iter().map(|k| memory_usage(k)).sum();
    assert_eq!(sys.native_size().await.unwrap(), by_cli);
    for f in &ds.manifest.files[..15] {
        sys.delete_one(f).await.unwrap();
    }
    assert_eq!(keys("dedup_lab_t_native:files:*").len(), 25);
    sys.reset().await.unwrap();
    assert!(keys("dedup_lab_t_native:files:*").is_empty());
}

#[test]
fn run_records_counts_and_incompressible_growth() {
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
            for probe in ["native", "fs"] {
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
    cli(&["SET", "precious:key", "42"]);
    cli(&["SET", "dedup_lab_t_foreign:files:x", "not ours"]);
    let out = run_in_namespace("redis", "prefix", "dedup_lab_t_foreign");
    assert_fails_with(&out, 1, &["not written by dedup-lab"]);
    assert!(cli(&["GET", "dedup_lab_t_foreign:files:x"]).contains("not ours"));
    assert!(cli(&["GET", "precious:key"]).contains("42"));
    cli(&["DEL", "precious:key", "dedup_lab_t_foreign:files:x"]);
}
