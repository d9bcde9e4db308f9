//! Faults against the lab servers: every lab server of every registered kind stopped in the
//! middle of a stage and started again, and a server that stays down. The trials come from the
//! registry (libtest-mimic), so a new system is covered by registering it. They stop shared lab
//! servers, so they run one at a time: cargo runs test binaries one after another.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{bin, experiment_dir, journal, lab_config, lab_section};
use dedup_lab::model::{CellKey, ErrorKind, Record};
use dedup_lab::systems::{self, TestHooks};
use libtest_mimic::{Arguments, Trial};

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let mut trials: Vec<Trial> = systems::lab_servers()
        .into_iter()
        .filter_map(|server| {
            let def = systems::lookup(server.kind)?;
            if def.embedded {
                return None;
            }
            let name = server.recipe.name();
            let hooks = def.tests;
            Some(Trial::test(
                format!("{name}_recovers_from_a_restart_mid_stage"),
                move || {
                    stopped_mid_stage_and_restarted(name, hooks);
                    Ok(())
                },
            ))
        })
        .collect();
    trials.push(Trial::test(
        "a_server_that_stays_down_fails_only_its_cells",
        || {
            a_server_that_stays_down_fails_only_its_cells();
            Ok(())
        },
    ));
    libtest_mimic::run(&args, trials).exit();
}

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

/// Stops `system` during its per-file insert, starts it again a second later, and checks the
/// experiment completes with exactly one failed attempt (connection lost) and a retry. The
/// kind's fault data set makes the per-file insert outlast the stop.
fn stopped_mid_stage_and_restarted(system: &'static str, hooks: TestHooks) {
    let (namespace, files) = (
        (hooks.namespace_key, "dedup_lab_t_fault"),
        hooks.fault_data_set,
    );
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

/// A server that stays down fails its own cells, fast, and nobody else's; exit code 1.
fn a_server_that_stays_down_fails_only_its_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(
        tmp.path(),
        "postgres",
        ("schema", "dedup_lab_t_down"),
        "[retry]\nmax_attempts = 2\nbackoff_initial_s = 0.2\nbackoff_max_s = 0.5\nreconnect_tries = 3\n",
    );
    let results = tmp.path().join("results");
    let mut child = spawn_run(
        &config,
        &results,
        "sqlite,postgres",
        "0,90",
        systems::TEST_HOOKS.fault_data_set,
    );
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
