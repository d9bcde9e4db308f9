//! Faults against the lab servers: a server stopped in the middle of a stage and started
//! again, and a server that stays down. These tests stop shared lab servers, so they hold a
//! lock: cargo runs test binaries one after another, and this one runs its tests one at a time.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{bin, experiment_dir, journal, lab_config, lab_section};
use dedup_lab::model::ErrorKind;
use dedup_lab::model::{CellKey, Record};

static SERIAL: Mutex<()> = Mutex::new(());

/// `dedup-lab lab <action> --systems <system>` on the lab the tests use.
fn lab(action: &str, system: &str) {
    let dir = lab_config().parent().unwrap().to_path_buf();
    let out = bin()
        .args(["lab", action, "--systems", system, "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lab {action} {system}: {}",
        common::text(&out)
    );
}

/// Starts the server again when dropped, so a failing test leaves the lab usable.
struct Restart(&'static str);

impl Drop for Restart {
    fn drop(&mut self) {
        lab("up", self.0);
    }
}

/// A config with the lab section of `system` (namespace changed) and fast retry settings.
fn config(dir: &Path, system: &str, namespace: (&str, &str), retry: &str) -> PathBuf {
    let mut section = lab_section(system);
    section.insert(namespace.0.into(), namespace.1.into());
    let mut systems = toml::Table::new();
    systems.insert(system.into(), section.into());
    let mut doc: toml::Table = toml::from_str(retry).unwrap();
    doc.insert("systems".into(), systems.into());
    let path = dir.join("config.toml");
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    path
}

/// A run of one random_binary data set per grade: `files` files of `size`.
fn spawn_run(
    config: &Path,
    results: &Path,
    systems: &str,
    grades: &str,
    (files, size): (u32, &str),
) -> Child {
    bin()
        .args(["run", "--config"])
        .arg(config)
        .args([
            "--systems",
            systems,
            "--payloads",
            "random_binary",
            "--grades",
            grades,
        ])
        .args([
            "--runs",
            "1",
            "--files",
            &files.to_string(),
            "--file-size",
            size,
            "--no-progress",
        ])
        .arg("--results-dir")
        .arg(results)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the run's journal holds the bulk_insert record of `system`: the per-file
/// insert is then under way. If none comes, the run is stopped and the panic shows what it
/// printed.
fn wait_for_bulk_insert(child: &mut Child, results: &Path, system: &str) {
    let needle = format!("\"system\":\"{system}\"");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr);
            panic!("no bulk_insert record for {system}; the run printed:\n{stderr}");
        }
        let text = std::fs::read_dir(results)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_to_string(e.ok()?.path().join("journal.jsonl")).ok())
            .unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains(&needle) && l.contains("\"stage\":\"bulk_insert\""))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The usual data set of these tests: its per-file stages last long enough on every server for
/// a stop to land in them.
const FILES: (u32, &str) = (300, "16KiB");

/// Stops `system` during its per-file insert, starts it again a second later, and checks the
/// experiment completes with exactly one failed attempt (connection lost) and a retry.
/// `files` must make the per-file insert outlast the stop.
fn stopped_mid_stage_and_restarted(
    system: &'static str,
    namespace: (&str, &str),
    files: (u32, &str),
) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let config = config(
        tmp.path(),
        system,
        namespace,
        "[retry]\nbackoff_initial_s = 0.5\nbackoff_max_s = 2\nreconnect_tries = 40\n",
    );
    let results = tmp.path().join("results");
    let mut child = spawn_run(&config, &results, system, "0", files);
    wait_for_bulk_insert(&mut child, &results, system);
    std::thread::sleep(Duration::from_millis(150));
    {
        let _restart = Restart(system);
        lab("down", system);
        std::thread::sleep(Duration::from_secs(1));
    }
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");

    let records = journal(&experiment_dir(&results));
    let failed: Vec<(&CellKey, u32, ErrorKind, &str)> = records
        .iter()
        .filter_map(|r| match r {
            Record::AttemptFailed {
                cell,
                attempt,
                kind,
                error,
                ..
            } => Some((cell, *attempt, *kind, error.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "one failed attempt: {failed:?}");
    let (cell, attempt, kind, error) = failed[0];
    assert_eq!(kind, ErrorKind::ConnectionLost, "{error}");
    let done: Vec<u32> = records
        .iter()
        .filter_map(|r| match r {
            Record::CellDone {
                cell: c, attempt, ..
            } if c == cell => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(done, [attempt + 1], "the retry completed the cell");
    let counted = dedup_lab::results::derive::completed(&records);
    assert_eq!(counted.len(), 4);
    assert!(counted.iter().all(|s| s.attempt == attempt + 1));
}

#[test]
fn postgres_recovers_from_a_restart_mid_stage() {
    stopped_mid_stage_and_restarted("postgres", ("schema", "dedup_lab_t_fault"), FILES);
}

#[test]
fn clickhouse_recovers_from_a_restart_mid_stage() {
    stopped_mid_stage_and_restarted("clickhouse", ("database", "dedup_lab_t_fault"), FILES);
}

#[test]
fn kafka_recovers_from_a_restart_mid_stage() {
    stopped_mid_stage_and_restarted("kafka", ("prefix", "dedup_lab_t_fault"), FILES);
}

#[test]
fn mariadb_recovers_from_a_restart_mid_stage() {
    stopped_mid_stage_and_restarted("mariadb", ("database", "dedup_lab_t_fault"), FILES);
}

#[test]
fn redis_recovers_from_a_restart_mid_stage() {
    // Redis answers a SET in ~0.1 ms: 300 files would be done before the stop.
    stopped_mid_stage_and_restarted("redis", ("prefix", "dedup_lab_t_fault"), (20_000, "1KiB"));
}

#[test]
fn minio_recovers_from_a_restart_mid_stage() {
    stopped_mid_stage_and_restarted("minio", ("prefix", "dedup_lab_t_fault"), FILES);
}

/// A server that stays down fails its own cells, fast, and nobody else's; exit code 1.
#[test]
fn a_server_that_stays_down_fails_only_its_cells() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let config = config(
        tmp.path(),
        "postgres",
        ("schema", "dedup_lab_t_down"),
        "[retry]\nmax_attempts = 2\nbackoff_initial_s = 0.2\nbackoff_max_s = 0.5\nreconnect_tries = 3\n",
    );
    let results = tmp.path().join("results");
    let mut child = spawn_run(&config, &results, "sqlite,postgres", "0,90", FILES);
    wait_for_bulk_insert(&mut child, &results, "postgres");
    let _restart = Restart("postgres");
    lab("down", "postgres");
    let (code, stderr) = finish(child);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("FAILED"), "{stderr}");
    let records = journal(&experiment_dir(&results));
    for r in &records {
        match r {
            Record::CellDone { cell, .. } => assert_eq!(cell.system, "sqlite"),
            Record::AttemptFailed { cell, kind, .. } => {
                assert_eq!(cell.system, "postgres");
                assert_eq!(*kind, ErrorKind::ConnectionLost);
            }
            _ => {}
        }
    }
    let done = |sys: &str| {
        records
            .iter()
            .filter(|r| matches!(r, Record::CellDone { cell, .. } if cell.system == sys))
            .count()
    };
    assert_eq!(done("sqlite"), 2);
    assert_eq!(done("postgres"), 0);
    // The second postgres cell failed fast: one record, no new attempt against a dead server.
    let u90: Vec<_> = records
        .iter()
        .filter(|r| matches!(r, Record::AttemptFailed { cell, .. } if cell.grade == 90))
        .collect();
    assert_eq!(u90.len(), 1, "{u90:?}");
}
