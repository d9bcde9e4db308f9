//! The plain-file S3 server of the lab (instance `s3s`, kind `s3`, server s3s-fs) through the
//! S3 adapter, beside Garage (instance `garage`): s3s stores every copy (its `fs` probe grows by
//! about L) where Garage stores each distinct block once; objects land as plain files.
//!
//! The fs probe reads the whole s3s root, so the test that measures it holds [`QUIET`]
//! exclusively. Seeds are fresh per test run: Garage keeps deleted blocks for 600 s.

mod common;

use std::path::{Path, PathBuf};

use common::{config_with, lab_section, run, text};
use dedup_lab::dataset::{DataSet, DataSetSpec, PayloadType, SizeSpec};
use dedup_lab::model::Stage;
use dedup_lab::results::derive::{Row, rows};
use dedup_lab::systems;

static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A seed no earlier test run used.
fn fresh_seed() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string()
}

/// A run of instance `system` with `config` on random data at U0 and U90: its derived rows.
fn run_rows(system: &str, config: &Path, dir: &Path) -> Vec<Row> {
    let results = dir.join("results");
    let seed = fresh_seed();
    let out = run(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--systems",
        system,
        "--payloads",
        "random_binary",
        "--grades",
        "0,90",
        "--runs",
        "1",
        "--files",
        "40",
        "--seed",
        &seed,
        "--results-dir",
        results.to_str().unwrap(),
        "--no-progress",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    rows(&common::journal(&common::experiment_dir(&results)))
}

fn fs_row(rows: &[Row], stage: Stage) -> &Row {
    rows.iter()
        .find(|r| r.probe == "fs" && r.grade == 90 && r.stage == stage)
        .unwrap_or_else(|| panic!("no fs row for U90 {stage}"))
}

#[test]
fn plain_files_store_every_copy_where_garage_stores_each_block_once() {
    let _alone = QUIET.blocking_write();
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(
        tmp.path(),
        "s3s",
        &[("prefix", "dedup_lab_t_s3s_run".into())],
    );
    let plain = run_rows("s3s", &config, tmp.path());
    for stage in [Stage::BulkInsert, Stage::PerfileInsert] {
        let r = fs_row(&plain, stage);
        assert_eq!(r.rows_after, 40, "{stage}");
        let capture = r.dedup_capture.unwrap();
        assert!(capture <= 0.1, "s3s, {stage}: capture {capture}");
        let grown = r.delta_bytes.unwrap() as f64;
        assert!(
            grown >= 0.95 * r.logical_bytes as f64,
            "s3s, {stage}: grew {grown} for L {}",
            r.logical_bytes
        );
    }

    let garage_dir = tmp.path().join("garage");
    std::fs::create_dir(&garage_dir).unwrap();
    let garage = run_rows(
        "garage",
        &config_with(
            &garage_dir,
            "garage",
            &[("prefix", "dedup_lab_t_s3s_garage".into())],
        ),
        &garage_dir,
    );
    // The per-file insert follows the bulk insert of the same content, whose blocks Garage
    // still keeps: only the first load of a content measures its dedup.
    let capture = fs_row(&garage, Stage::BulkInsert).dedup_capture.unwrap();
    assert!(capture >= 0.8, "Garage: capture {capture}");
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_are_plain_files_under_the_bucket_directory() {
    let _shared = QUIET.read().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut section = lab_section("s3s");
    // The fs probe reads the bucket's directory.
    let bucket = PathBuf::from(section["fs_probe"][0].as_str().unwrap());
    section.insert("prefix".into(), "dedup_lab_t_s3s_files".into());
    let mut sys = systems::build_from_section("s3s", &section, tmp.path()).unwrap();
    sys.connect().await.unwrap();
    let ds = DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade: 50,
            files: 12,
            sizes: SizeSpec::Range {
                min: 1000,
                max: 100_000,
            },
            seed: 5,
            ..Default::default()
        },
        &tmp.path().join("ds"),
    )
    .unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    assert_eq!(sys.count().await.unwrap(), 12);
    let files = bucket.join("dedup_lab_t_s3s_files/files");
    for f in &ds.manifest.files {
        let stored = std::fs::read(files.join(&f.name)).unwrap();
        assert_eq!(
            blake3::hash(&stored).to_hex().as_str(),
            f.blake3,
            "{}",
            f.name
        );
    }
    for f in &ds.manifest.files[..5] {
        sys.delete_one(f).await.unwrap();
    }
    assert_eq!(std::fs::read_dir(&files).unwrap().count(), 7);
    common::reset(sys.as_mut()).await.unwrap();
    assert_eq!(std::fs::read_dir(&files).unwrap().count(), 0);
}
