//! Redis against the lab server: counts, native size checked with redis-cli, deletes, keys
//! outside the lab namespace, the prometheus probe on the lab's redis_exporter, content keys
//! (one key per content, shared contents deleted with their last file) and containers (key
//! prefixes).

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::{
    assert_fails_with, config_with, lab_section, run_in_namespace, run_system, stages, text,
};
use dedup_lab::dataset::{DataSet, DataSetSpec, FileEntry, PayloadType, SizeSpec};
use dedup_lab::model::{KeyMode, Layout, Stage};
use dedup_lab::probe::prometheus::{Prometheus, PrometheusConfig};
use dedup_lab::results::derive::{Row, rows};
use dedup_lab::systems::{self, System};

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

/// A value read with a client of its own (redis-cli cannot pass binary values back intact);
/// `None` when the key does not exist.
fn value(key: &str) -> Option<Vec<u8>> {
    let s = lab_section("redis");
    let password = std::fs::read_to_string(s["password_file"].as_str().unwrap()).unwrap();
    let settings = redis::RedisConnectionInfo::default()
        .set_db(15)
        .set_password(password.trim());
    let port = s["port"].as_integer().unwrap() as u16;
    let info = redis::IntoConnectionInfo::into_connection_info(("127.0.0.1", port))
        .unwrap()
        .set_redis_settings(settings);
    let mut conn = redis::Client::open(info).unwrap().get_connection().unwrap();
    redis::cmd("GET").arg(key).query(&mut conn).unwrap()
}

/// Random files of 32 KiB at `grade`, from a fixed seed.
fn random_files(dir: &std::path::Path, grade: u8, files: u32) -> DataSet {
    DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade,
            files,
            sizes: SizeSpec::Fixed(32 << 10),
            seed: 11,
            ..Default::default()
        },
        dir,
    )
    .unwrap()
}

/// The adapter on `prefix` with the lab section and `keys` and `containers`.
async fn layout_adapter(prefix: &str, layout: Layout, dir: &std::path::Path) -> Box<dyn System> {
    let mut section = lab_section("redis");
    section.insert("prefix".into(), prefix.into());
    section.insert("keys".into(), layout.keys.name().into());
    section.insert("containers".into(), layout.containers.into());
    let mut sys = systems::build_from_section("redis", &section, dir).unwrap();
    sys.connect().await.unwrap();
    sys
}

const CONTENT: Layout = Layout {
    keys: KeyMode::Content,
    containers: 1,
};

/// The content keys under `prefix` hold exactly `held` (hashes), each byte-exact: its value
/// hashes to its key.
fn assert_holds(prefix: &str, held: &std::collections::BTreeSet<&str>) {
    let mut stored = keys(&format!("{prefix}:files:*"));
    stored.sort();
    let want: Vec<String> = held.iter().map(|h| format!("{prefix}:files:{h}")).collect();
    assert_eq!(stored, want);
    for h in held {
        let v = value(&format!("{prefix}:files:{h}")).expect("held");
        assert_eq!(blake3::hash(&v).to_hex().as_str(), *h);
    }
}

/// With content keys, a repeated content is a SET of the same key: both insert paths store
/// one key per content (redis-cli's SCAN), and the engine's delete plan removes a key with
/// the last file holding it, leaving the others' values intact.
#[tokio::test(flavor = "multi_thread")]
async fn content_keys_hold_one_key_per_content_and_deletes_spare_shared_ones() {
    let _turn = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let prefix = "dedup_lab_kkv_redis_del";
    let mut sys = layout_adapter(prefix, CONTENT, tmp.path()).await;
    // 12 files, 4 contents held by 3 files each.
    let ds = random_files(&tmp.path().join("ds"), 67, 12);
    let files = &ds.manifest.files;
    let all: std::collections::BTreeSet<&str> = files.iter().map(|f| f.blake3.as_str()).collect();
    assert_eq!(all.len(), 4);

    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    assert_holds(prefix, &all);
    assert_eq!(sys.count().await.unwrap(), 4);

    common::reset(sys.as_mut()).await.unwrap();
    assert_holds(prefix, &Default::default());
    for f in files {
        sys.insert_one(f, ds.read(f).unwrap()).await.unwrap();
    }
    assert_holds(prefix, &all);

    let mut held = all.clone();
    for (f, deletes) in files.iter().zip(CONTENT.deletes(files)) {
        if deletes {
            sys.delete_one(f).await.unwrap();
            held.remove(f.blake3.as_str());
        }
        // Files before the last of their content send nothing: every content not yet deleted
        // is still there, whole.
        assert_holds(prefix, &held);
        assert_eq!(sys.count().await.unwrap(), held.len() as u64);
    }
    assert!(held.is_empty());
}

/// The derived rows of a run of random data at U0 and U90 with `changes`.
fn run_rows(prefix: &str, changes: &[(&str, toml::Value)]) -> Vec<Row> {
    let tmp = tempfile::tempdir().unwrap();
    let mut all = vec![("prefix", prefix.into())];
    all.extend(changes.iter().cloned());
    let config = config_with(tmp.path(), "redis", &all);
    let results = tmp.path().join("results");
    let out = run_system(&config, "redis", "random_binary", "0,90", 40, &results);
    assert!(out.status.success(), "{}", text(&out));
    rows(&common::journal(&common::experiment_dir(&results)))
}

fn row<'a>(rows: &'a [Row], probe: &str, grade: u8, stage: Stage) -> &'a Row {
    rows.iter()
        .find(|r| r.probe == probe && r.grade == grade && r.stage == stage)
        .unwrap_or_else(|| panic!("no {probe} row for U{grade} {stage}"))
}

/// Content keys at U90: 40 files of 64 KiB, 4 contents. Memory (the native probe, MEMORY
/// USAGE) grows by U at what a byte costs at U0 (the allocator rounds each 64 KiB value up),
/// not by L; the append-only file (the fs probe) logs every SET, so it grows by about L until
/// it is rewritten.
#[test]
fn content_keys_keep_u_in_memory_while_the_aof_logs_l() {
    let _turn = SERIAL.blocking_lock();
    let by_content = run_rows("dedup_lab_kkv_redis_run", &[("keys", "content".into())]);
    for stage in [Stage::BulkInsert, Stage::PerfileInsert] {
        let u0 = row(&by_content, "native", 0, stage);
        assert_eq!(u0.rows_after, 40);
        let per_byte = u0.delta_bytes.unwrap() as f64 / u0.logical_bytes as f64;
        let r = row(&by_content, "native", 90, stage);
        assert_eq!(r.rows_after, 4, "{stage}: one key per content");
        let grown = r.delta_bytes.unwrap() as f64;
        let want = per_byte * r.unique_bytes as f64;
        assert!(
            (grown - want).abs() < 0.02 * want,
            "{stage}: memory grew {grown}, U at {per_byte} per byte is {want}"
        );
        assert!(r.dedup_capture.unwrap() >= 0.98, "{stage}: {r:?}");
        let aof = row(&by_content, "fs", 90, stage);
        assert!(
            aof.delta_bytes.unwrap() as f64 >= 0.95 * aof.logical_bytes as f64,
            "{stage}: the AOF grew {:?} for L {}",
            aof.delta_bytes,
            aof.logical_bytes
        );
    }
    for grade in [0, 90] {
        let r = row(&by_content, "native", grade, Stage::PerfileDelete);
        assert_eq!((r.rows_after, r.after_bytes), (0, Some(0)));
    }
    assert!(keys("dedup_lab_kkv_redis_run:files:*").is_empty());
}

/// The keys of each of 4 containers, as redis-cli's SCAN finds them.
fn per_container(prefix: &str) -> Vec<usize> {
    (0..4)
        .map(|k| keys(&format!("{prefix}:c{k}:files:*")).len())
        .collect()
}

/// What each of 4 containers should hold: its files' entries under `layout`.
fn expected_per_container(layout: Layout, files: &[FileEntry]) -> Vec<usize> {
    (0..4)
        .map(|k| {
            let mine: Vec<FileEntry> = files
                .iter()
                .filter(|f| layout.container_of(f) == k)
                .cloned()
                .collect();
            layout.stored_entries(&mine) as usize
        })
        .collect()
}

/// With 4 containers each file goes to the key prefix `c<id % 4>`, by name or content; runs
/// complete with either; and a reset with one container removes what 4 left.
#[tokio::test(flavor = "multi_thread")]
async fn four_containers_are_key_prefixes_and_a_reset_removes_them_all() {
    let _turn = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let prefix = "dedup_lab_kkv_redis_c4";
    // 22 files, 4 contents, in shuffled positions: a content lands in several containers.
    let ds = random_files(&tmp.path().join("ds"), 80, 22);
    for keys in [KeyMode::Name, KeyMode::Content] {
        let layout = Layout {
            keys,
            containers: 4,
        };
        let mut sys = layout_adapter(prefix, layout, tmp.path()).await;
        common::reset(sys.as_mut()).await.unwrap();
        sys.bulk_insert(&ds).await.unwrap();
        let want = expected_per_container(layout, &ds.manifest.files);
        assert!(want.iter().sum::<usize>() > 4, "{want:?}");
        assert_eq!(per_container(prefix), want, "{}", keys.name());
        assert!(keys_of_one(prefix).is_empty());
        assert_eq!(
            sys.count().await.unwrap(),
            layout.stored_entries(&ds.manifest.files)
        );
        // A file's key names its container and its name or content.
        let f = &ds.manifest.files[7];
        let key = format!("{prefix}:c3:files:{}", layout.key_of(f));
        assert_eq!(
            blake3::hash(&value(&key).unwrap()).to_hex().as_str(),
            f.blake3
        );
    }
    // The content-keyed files are still there: a run with one container resets them away.
    let tmp2 = tempfile::tempdir().unwrap();
    let config = config_with(tmp2.path(), "redis", &[("prefix", prefix.into())]);
    let results = tmp2.path().join("results");
    let out = tokio::task::spawn_blocking(move || {
        run_system(&config, "redis", "random_binary", "90", 20, &results)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(keys(&format!("{prefix}:*")), [format!("{prefix}:owner")]);
    for keys in ["name", "content"] {
        let rows = tokio::task::spawn_blocking(move || {
            run_rows(prefix, &[("keys", keys.into()), ("containers", 4.into())])
        })
        .await
        .unwrap();
        // The engine checked each count against the layout's entries; content keys hold each
        // of the 4 contents once in every container that has a copy.
        let r = row(&rows, "native", 90, Stage::BulkInsert);
        if keys == "name" {
            assert_eq!(r.rows_after, 40);
        } else {
            assert!((4..=16).contains(&r.rows_after), "{}", r.rows_after);
        }
        assert_eq!(per_container(prefix), [0; 4], "the final reset empties");
    }
}

/// Keys of the single-container layout under `prefix`.
fn keys_of_one(prefix: &str) -> Vec<String> {
    keys(&format!("{prefix}:files:*"))
}
