//! Shards as separate processes against the lab: 3 concurrent `run --shard I/3` over four
//! systems (sqlite, fs, postgres, redis), merged by a `report --wait` started before them,
//! count exactly what one process counts; a missing shard is named and fails the report.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{bin, lab_section, text};

/// This test's own namespaces on the lab servers.
const NAMESPACE: &str = "dedup_lab_k8s_shards";

/// The systems: two embedded, two servers with namespaces of this test.
fn config(dir: &Path) -> PathBuf {
    let mut systems = toml::Table::new();
    for (name, key) in [("postgres", "schema"), ("redis", "prefix")] {
        let mut section = lab_section(name);
        section.insert(key.into(), NAMESPACE.into());
        systems.insert(name.into(), section.into());
    }
    let mut doc: toml::Table = toml::from_str(
        "[experiment]\nruns = 1\nsystems = [\"sqlite\", \"fs\", \"postgres\", \"redis\"]\n\
         payloads = [\"random_binary\", \"uuid_keys\"]\ngrades = [0, 50]\n\
         [dataset]\nfiles = 8\nfile_size = \"16KiB\"\n",
    )
    .unwrap();
    doc.insert("systems".into(), systems.into());
    let path = dir.join("config.toml");
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    path
}

fn command(args: &[&str], config: &Path, results: &Path) -> Command {
    let mut cmd = bin();
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .arg("--results-dir")
        .arg(results)
        .env_remove(dedup_lab::model::INDEX_ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A child process killed if the test ends before it does.
struct Running(Option<Child>);

impl Running {
    fn wait(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(mut cmd: Command) -> Running {
    Running(Some(cmd.spawn().unwrap()))
}

/// results.csv as what each row counts (files, L, U, rows after) by cell, stage and probe.
fn counted(dir: &Path) -> BTreeMap<String, String> {
    let mut reader = csv::Reader::from_path(dir.join("results.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let key = ["system", "payload", "grade", "run", "stage", "probe"].map(col);
    let value = ["files", "logical_bytes", "unique_bytes", "rows_after"].map(col);
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let join = |cols: &[usize]| cols.iter().map(|&c| &r[c]).collect::<Vec<_>>().join(" ");
            (join(&key), join(&value))
        })
        .collect()
}

#[test]
fn three_concurrent_shards_merge_into_the_single_process_report() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path());
    let single = tmp.path().join("single");
    let out = command(&["run", "--no-progress"], &config, &single)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let whole = common::experiment_dir(&single);

    // The report waits for the shards, which start after it.
    let split = tmp.path().join("split");
    let root = split.join(whole.file_name().unwrap());
    let report = start(command(
        &["report", "--shards", "3", "--wait", "600"],
        &config,
        &split,
    ));
    let shards: Vec<Running> = (1..=3)
        .map(|i| {
            start(command(
                &["run", "--no-progress", "--shard", &format!("{i}/3")],
                &config,
                &split,
            ))
        })
        .collect();
    for (i, s) in shards.into_iter().enumerate() {
        let out = s.wait();
        assert!(out.status.success(), "shard {}: {}", i + 1, text(&out));
    }
    let out = report.wait();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("merged 3 shards into {}", root.display())),
        "{}",
        text(&out)
    );

    // Each shard ran whole systems: the servers went to different shards.
    let systems_of = |i: u32| -> Vec<String> {
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.join(format!("shards/{i}-of-3/metadata.json"))).unwrap(),
        )
        .unwrap();
        let mut s: Vec<String> = meta["shard"]["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["system"].as_str().unwrap().to_string())
            .collect();
        s.sort();
        s.dedup();
        s
    };
    assert_eq!(systems_of(1), ["redis", "sqlite"]);
    assert_eq!(systems_of(2), ["fs"]);
    assert_eq!(systems_of(3), ["postgres"]);

    let merged = counted(&root);
    assert_eq!(merged.len(), counted(&whole).len());
    assert_eq!(merged, counted(&whole));
    let systems: std::collections::BTreeSet<&str> = merged
        .keys()
        .map(|k| k.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        systems.into_iter().collect::<Vec<_>>(),
        ["fs", "postgres", "redis", "sqlite"]
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["cells_done"], 16);
    // The merged report draws each shard's trace: a size-over-time chart per system.
    let html = std::fs::read_to_string(root.join("report.html")).unwrap();
    for system in ["fs", "postgres", "redis", "sqlite"] {
        assert!(
            html.contains(&format!("data-chart=\"trace:{system}\"")),
            "no trace chart of {system} in the merged report"
        );
    }

    // Without shard 2, the report says so and fails; what is there is still reported.
    let aside = tmp.path().join("aside");
    std::fs::rename(root.join("shards/2-of-3"), &aside).unwrap();
    let out = bin().arg("report").arg(&root).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("shard 2/3 is missing: no 2-of-3 directory; run it with --shard 2/3 (JOB_COMPLETION_INDEX=1)"),
        "{}",
        text(&out)
    );
    assert_eq!(counted(&root).len(), merged.len() - 4 * 4);
}
