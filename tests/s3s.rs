//! The plain-file S3 server of the lab (instance `s3s`, kind `s3`, server s3s-fs) through the
//! S3 adapter, beside Garage (instance `garage`): s3s stores every copy (its `fs` probe grows by
//! about L) where Garage stores each distinct block once; objects land as plain files. With
//! content keys a repeated content overwrites one file, so s3s stores U; containers are
//! directories of key prefixes.
//!
//! The fs probe reads the whole s3s root, so the test that measures it holds [`QUIET`]
//! exclusively. Seeds are fresh per test run: Garage keeps deleted blocks for 600 s.

mod common;

use std::path::{Path, PathBuf};

use common::{config_with, lab_section, run, text};
use dedup_lab::dataset::{DataSet, DataSetSpec, PayloadType, SizeSpec};
use dedup_lab::model::{KeyMode, Layout, Stage};
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

/// Content keys at U90: each repeated content overwrites the one file of its key, so the
/// bucket directory grows by U where names grow it by L (the first test).
#[test]
fn content_keys_overwrite_one_file_per_content_and_store_u() {
    let _alone = QUIET.blocking_write();
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(
        tmp.path(),
        "s3s",
        &[
            ("prefix", "dedup_lab_kkv_s3s_run".into()),
            ("keys", "content".into()),
        ],
    );
    let rows = run_rows("s3s", &config, tmp.path());
    for stage in [Stage::BulkInsert, Stage::PerfileInsert] {
        let r = fs_row(&rows, stage);
        assert_eq!(r.rows_after, 4, "{stage}: one object per content");
        let grown = r.delta_bytes.unwrap() as f64;
        let u = r.unique_bytes as f64;
        assert!(
            (0.99 * u..1.05 * u).contains(&grown),
            "{stage}: grew {grown} for U {u}"
        );
        assert!(r.dedup_capture.unwrap() >= 0.95, "{stage}: {r:?}");
    }
}

/// With content keys in 4 containers, each file's object is the file
/// `<prefix>/c<id % 4>/files/<hash>` under the bucket directory, whole; the engine's delete
/// plan removes a file with the last file of its content in its container; a reset leaves no
/// container's file behind.
#[tokio::test(flavor = "multi_thread")]
async fn content_keys_in_containers_are_plain_paths_deleted_with_their_last_file() {
    let _shared = QUIET.read().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut section = lab_section("s3s");
    let bucket = PathBuf::from(section["fs_probe"][0].as_str().unwrap());
    let layout = Layout {
        keys: KeyMode::Content,
        containers: 4,
    };
    section.insert("prefix".into(), "dedup_lab_kkv_s3s_c4".into());
    section.insert("keys".into(), "content".into());
    section.insert("containers".into(), 4.into());
    let mut sys = systems::build_from_section("s3s", &section, tmp.path()).unwrap();
    sys.connect().await.unwrap();
    // 22 files, 4 contents, in shuffled positions: a content lands in several containers.
    let ds = DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade: 80,
            files: 22,
            sizes: SizeSpec::Fixed(32 << 10),
            seed: 5,
            ..Default::default()
        },
        &tmp.path().join("ds"),
    )
    .unwrap();
    let files = &ds.manifest.files;
    let root = bucket.join("dedup_lab_kkv_s3s_c4");
    let path = |f: &dedup_lab::dataset::FileEntry| {
        root.join(format!("c{}/files/{}", layout.container_of(f), f.blake3))
    };
    // Regular files under the prefix, wherever they are.
    let stored = || {
        (0..4)
            .map(
                |k| match std::fs::read_dir(root.join(format!("c{k}/files"))) {
                    Ok(dir) => dir.count(),
                    Err(_) => 0,
                },
            )
            .sum::<usize>()
    };
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    let entries = layout.stored_entries(files) as usize;
    assert!(entries > 4, "{entries}");
    assert_eq!(stored(), entries);
    assert_eq!(sys.count().await.unwrap(), entries as u64);
    let intact = |f: &dedup_lab::dataset::FileEntry| {
        std::fs::read(path(f)).is_ok_and(|b| blake3::hash(&b).to_hex().as_str() == f.blake3)
    };
    assert!(files.iter().all(intact));
    let mut deleted = Vec::new();
    for (f, deletes) in files.iter().zip(layout.deletes(files)) {
        if deletes {
            sys.delete_one(f).await.unwrap();
            deleted.push(f.clone());
            assert!(!path(f).exists(), "{}", f.name);
            // Every file whose entry is not deleted yet still finds its content whole.
            for g in files {
                let gone = deleted.iter().any(|d| path(d) == path(g));
                assert_eq!(intact(g), !gone, "{}", g.name);
            }
        }
    }
    assert_eq!(deleted.len(), entries);
    assert_eq!(stored(), 0);
    sys.bulk_insert(&ds).await.unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    assert_eq!(stored(), 0, "a reset empties every container");
}
