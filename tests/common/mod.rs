//! Helpers shared by the integration tests: the binary, the lab config, journals.

#![allow(dead_code)] // each test binary uses a different subset

pub mod layout;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dedup_lab::journal::{self, Journal};
use dedup_lab::model::{Record, StageRecord, SysResult};
use dedup_lab::systems::System;
use dedup_lab::systems::toolkit::ownership::{self, Claim};

/// The `dedup-lab` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dedup-lab"))
}

/// Runs the binary with `args`, returning its output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run dedup-lab")
}

/// Stdout and stderr as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The lab config written by `dedup-lab lab up` (scripts/test starts the lab and exports
/// `DEDUP_LAB_LAB_CONFIG`). Tests that need servers fail with the fix when it is missing.
pub fn lab_config() -> PathBuf {
    let path = std::env::var_os("DEDUP_LAB_LAB_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".lab/lab.toml"));
    assert!(
        path.exists(),
        "no lab config at {}: run the tests with scripts/test (it starts the lab servers), \
         or run `dedup-lab lab up` first",
        path.display()
    );
    path
}

/// One `[systems.<name>]` table of the lab config.
pub fn lab_section(name: &str) -> toml::Table {
    let text = std::fs::read_to_string(lab_config()).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    doc["systems"][name]
        .as_table()
        .unwrap_or_else(|| panic!("lab config has no [systems.{name}]"))
        .clone()
}

/// Writes a config holding one system section (with `changes` applied) into `dir`, so that
/// tests running in parallel each use their own namespace.
pub fn config_with(dir: &Path, name: &str, changes: &[(&str, toml::Value)]) -> PathBuf {
    let mut section = lab_section(name);
    for (k, v) in changes {
        section.insert((*k).to_string(), v.clone());
    }
    let mut systems = toml::Table::new();
    systems.insert(name.to_string(), toml::Value::Table(section));
    let mut doc = toml::Table::new();
    doc.insert("systems".into(), toml::Value::Table(systems));
    let path = dir.join("config.toml");
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    path
}

/// A small run of `system` (uuid_keys, grade 0, 5 files) with its namespace key `key` set to
/// `namespace`, in a temporary directory: for the tests of what a namespace may hold.
pub fn run_in_namespace(system: &str, key: &str, namespace: &str) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(tmp.path(), system, &[(key, namespace.into())]);
    run_system(
        &config,
        system,
        "uuid_keys",
        "0",
        5,
        &tmp.path().join("results"),
    )
}

/// Asserts exit code `code` and every one of `words` in the output.
pub fn assert_fails_with(out: &Output, code: i32, words: &[&str]) {
    let t = text(out);
    assert_eq!(out.status.code(), Some(code), "{t}");
    assert!(
        words.iter().all(|w| t.contains(w)),
        "expected {words:?}: {t}"
    );
}

/// The single experiment directory under a results directory.
pub fn experiment_dir(results: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(results)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "expected one experiment in {}",
        results.display()
    );
    dirs[0].clone()
}

/// Every record of an experiment's journal.
pub fn journal(exp: &Path) -> Vec<Record> {
    Journal::read(&exp.join(journal::FILE)).expect("journal parses")
}

/// The stage records among `records` (of every attempt).
pub fn stage_records(records: &[Record]) -> Vec<StageRecord> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Stage(s) => Some(s.as_ref().clone()),
            _ => None,
        })
        .collect()
}

/// The stage records of the one experiment under `results`.
pub fn stages(results: &Path) -> Vec<StageRecord> {
    stage_records(&journal(&experiment_dir(results)))
}

/// `dedup-lab run` of one system for one run: `--config`, `--systems`, `--payloads`,
/// `--grades`, `--files` and `--results-dir` as given, no progress bar.
pub fn run_system(
    config: &Path,
    system: &str,
    payloads: &str,
    grades: &str,
    files: u32,
    results: &Path,
) -> Output {
    bin()
        .args(["run", "--config"])
        .arg(config)
        .args([
            "--systems",
            system,
            "--payloads",
            payloads,
            "--grades",
            grades,
        ])
        .args([
            "--runs",
            "1",
            "--files",
            &files.to_string(),
            "--no-progress",
        ])
        .arg("--results-dir")
        .arg(results)
        .output()
        .expect("run dedup-lab")
}

/// Resets an adapter's namespace as the engine does, under this test process's lease.
pub async fn reset(sys: &mut dyn System) -> SysResult<()> {
    let mut claim = Claim::new("test", sys.name(), std::time::Duration::from_secs(600));
    ownership::reset(sys, &mut claim).await.map(drop)
}

/// The system's native size, read through a meter of its own (as the engine reads it).
#[allow(dead_code)]
pub async fn native_size(sys: &mut dyn System) -> u64 {
    let mut meter = sys.meter().await.expect("a meter");
    meter.native_size().await.expect("a native size")
}
