//! The storage layer in the cell, end to end: every lab server on its own btrfs file system
//! (`lab up --storage btrfs` in a lab of the test's own), every cell of a run completed, the
//! capture at each layer and the dedup potential in the records, and nothing mounted after
//! `lab wipe`; then a compressing file system (`btrfs-zstd`), whose compression the capture
//! formula separates from deduplication.
//!
//! The lab servers listen on fixed ports, so the shared lab is stopped while this test's lab
//! runs and started again afterwards, also when the test fails. Cargo runs test binaries one
//! after another, so no other test uses the shared lab meanwhile. Needs root and loop devices.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, experiment_dir, lab_config, text};
use dedup_lab::journal::Journal;
use dedup_lab::results::derive::{Row, rows};
use dedup_lab::results::layers::{LayerRow, layer_rows};

/// `dedup-lab lab <args> --dir <dir>`, which must succeed.
fn lab(dir: &Path, args: &[&str]) {
    let out = bin()
        .arg("lab")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "lab {args:?}: {}", text(&out));
}

/// Starts the shared lab again when dropped; wipes this test's lab first.
struct Restore {
    shared: PathBuf,
    own: PathBuf,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = bin().args(["lab", "wipe", "--dir"]).arg(&self.own).status();
        let _ = bin()
            .args(["lab", "up", "--dir"])
            .arg(&self.shared)
            .status();
    }
}

/// A run of every instance of the lab config `config` on `payloads` at U0 and U90.
fn run(config: &Path, results: &Path, systems: &str, payloads: &str) -> (Vec<Row>, Vec<LayerRow>) {
    let out = bin()
        .args(["run", "--config"])
        .arg(config)
        .args([
            "--systems",
            systems,
            "--payloads",
            payloads,
            "--grades",
            "0,90",
        ])
        .args(["--runs", "1", "--files", "64", "--file-size", "128KiB"])
        .args(["--no-progress", "--results-dir"])
        .arg(results)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let records = Journal::read(&experiment_dir(results).join("journal.jsonl")).unwrap();
    let rows = rows(&records);
    let layers = layer_rows(&records, &rows);
    (rows, layers)
}

fn bulk_u90<'a>(layers: &'a [LayerRow], system: &str, payload: &str) -> &'a LayerRow {
    layers
        .iter()
        .find(|r| {
            r.system == system
                && r.payload == payload
                && r.grade == 90
                && r.stage == dedup_lab::model::Stage::BulkInsert
        })
        .unwrap_or_else(|| panic!("no bulk insert of {system} {payload} U90"))
}

/// Mounts and loop devices under `dir`, as findmnt and losetup list them.
fn leftovers(dir: &Path) -> String {
    let dir = dir.display().to_string();
    let list = |c: &mut Command| String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned();
    let mut found: Vec<String> = list(Command::new("findmnt").args(["-rn", "-o", "TARGET"]))
        .lines()
        .chain(list(Command::new("losetup").arg("-a")).lines())
        .filter(|l| l.contains(&dir))
        .map(String::from)
        .collect();
    found.dedup();
    found.join("\n")
}

#[test]
fn every_system_on_btrfs_then_compression_on_btrfs_zstd() {
    let shared = lab_config().parent().unwrap().to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    let own = tmp.path().join("lab");
    let _restore = Restore {
        shared: shared.clone(),
        own: own.clone(),
    };
    lab(&shared, &["down"]);
    lab(
        &own,
        &["up", "--storage", "btrfs", "--storage-size", "1GiB"],
    );
    let config = own.join("lab.toml");
    let (rows, layers) = run(&config, &tmp.path().join("r1"), "all", "random_binary");

    // Every instance completed both cells: four stages each.
    let instances: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    for name in instances["systems"].as_table().unwrap().keys() {
        let stages = rows
            .iter()
            .filter(|r| r.system == *name && r.probe == "storage")
            .count();
        assert_eq!(
            stages, 8,
            "{name}: a storage reading per stage of both cells"
        );
    }

    // A plain directory: nothing shared as written, all of it after out-of-band dedup, and
    // every duplicate byte in 128 KiB blocks on disk.
    let fs = bulk_u90(&layers, "fs", "random_binary");
    assert!(fs.capture_storage.unwrap() <= 0.1, "{fs:?}");
    assert!(fs.capture_storage_dedupe.unwrap() >= 0.8, "{fs:?}");
    assert!(fs.potential["fixed-131072"] >= 0.85, "{fs:?}");

    // PostgreSQL keeps every copy, and its on-disk format (TOAST chunks of about 2 KB with
    // their own headers) leaves whatever the storage layer and the scans find: recorded.
    let pg = bulk_u90(&layers, "postgres", "random_binary");
    assert!(pg.capture_system.unwrap() <= 0.1, "{pg:?}");
    assert!(pg.capture_storage_dedupe.is_some(), "{pg:?}");
    assert!(pg.potential.contains_key("fixed-4096") && pg.potential.contains_key("cdc-8192"));

    // Garage deduplicates blocks itself: what the storage layer's dedup removes on top of it
    // is a small share of the duplicate bytes. (Bytes, not captures: Garage's metadata
    // database grows in steps, which moves small captures above 1.)
    let garage = bulk_u90(&layers, "garage", "random_binary");
    assert!(garage.capture_system.unwrap() >= 0.8, "{garage:?}");
    let after = |probe: &str| {
        rows.iter()
            .find(|r| {
                r.system == "garage"
                    && r.grade == 90
                    && r.stage == dedup_lab::model::Stage::BulkInsert
                    && r.probe == probe
            })
            .and_then(|r| r.after_bytes)
            .unwrap_or_else(|| panic!("garage U90 bulk insert: no {probe} reading"))
    };
    let removed = after("storage").saturating_sub(after("storage_dedupe"));
    let duplicate = garage.logical_bytes - garage.unique_bytes;
    assert!(
        removed as f64 <= 0.15 * duplicate as f64,
        "out-of-band dedup removed {removed} of {duplicate} duplicate bytes Garage had stored: \
         {garage:?}"
    );

    lab(&own, &["wipe"]);
    assert_eq!(
        leftovers(&own),
        "",
        "lab wipe leaves no mount or loop device"
    );

    // A compressing storage layer: prose stored in clearly less than it is, and the capture
    // at U90 is not the compression ratio in disguise.
    lab(
        &own,
        &[
            "up",
            "--storage",
            "btrfs-zstd",
            "--storage-size",
            "512MiB",
            "--systems",
            "fs",
        ],
    );
    let (rows, layers) = run(&config, &tmp.path().join("r2"), "fs", "text_document");
    let u0 = rows
        .iter()
        .find(|r| r.grade == 0 && r.probe == "storage" && r.stage.inserts())
        .unwrap();
    assert!(
        (u0.delta_bytes.unwrap() as f64) < 0.7 * u0.logical_bytes as f64,
        "zstd stores prose in less: {u0:?}"
    );
    assert_eq!(u0.dedup_capture, None, "no duplicates at U0, no capture");
    let text = bulk_u90(&layers, "fs", "text_document");
    assert!(text.capture_storage.unwrap() <= 0.1, "{text:?}");
    lab(&own, &["wipe"]);
    assert_eq!(leftovers(&own), "");
}
