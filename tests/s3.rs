//! S3 against the lab's Garage (instance `garage` of kind `s3`): counts and logical bytes checked with rclone
//! as an independent client, pagination, multipart, deletes, Garage's block dedup seen by the
//! fs probe, the namespace marker, bad endpoints and credentials, content keys (one object per
//! content, shared contents deleted with their last file) and containers (key prefixes).
//!
//! The fs probe reads the whole server, so the one test that measures it holds [`QUIET`]
//! exclusively; the others share it and run in parallel, each under its own key prefix. Seeds
//! are fresh per test run: Garage keeps deleted blocks for 600 s, and a rerun with the same
//! content would find them and store nothing new.

mod common;

use std::process::{Command, Output, Stdio};

use common::{assert_fails_with, config_with, lab_section, run, run_in_namespace, stages, text};
use dedup_lab::dataset::{DataSet, DataSetSpec, FileEntry, PayloadType, SizeSpec};
use dedup_lab::model::{KeyMode, Layout, Stage, StageRecord};
use dedup_lab::results::derive::{Row, rows};
use dedup_lab::systems::s3::{MARKER, S3};
use dedup_lab::systems::{Instance, System};

static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A seed no earlier test run used.
fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// rclone against the lab bucket, configured only through its environment (remote `lab:`).
fn rclone(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let s = lab_section("garage");
    let secret = |k: &str| std::fs::read_to_string(s[k].as_str().unwrap()).unwrap();
    let mut cmd = Command::new("rclone");
    cmd.env("RCLONE_CONFIG", "/dev/null")
        // rclone 1.60 cannot use a custom CA bundle over plain http and refuses to start.
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG_LAB_TYPE", "s3")
        .env("RCLONE_CONFIG_LAB_PROVIDER", "Other")
        .env("RCLONE_CONFIG_LAB_ENV_AUTH", "false")
        .env(
            "RCLONE_CONFIG_LAB_ACCESS_KEY_ID",
            secret("access_key_file").trim(),
        )
        .env(
            "RCLONE_CONFIG_LAB_SECRET_ACCESS_KEY",
            secret("secret_key_file").trim(),
        )
        .env(
            "RCLONE_CONFIG_LAB_ENDPOINT",
            s["endpoint"].as_str().unwrap(),
        )
        .env("RCLONE_CONFIG_LAB_REGION", s["region"].as_str().unwrap())
        .env("RCLONE_CONFIG_LAB_FORCE_PATH_STYLE", "true")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("rclone (the lab installs it: `dedup-lab lab up --systems garage`)");
    if let Some(data) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "rclone {args:?}: {}", text(&out));
    out
}

/// `lab:<bucket>/<path>`.
fn remote(path: &str) -> String {
    format!(
        "lab:{}/{path}",
        // The lab's section leaves the adapter's default bucket unsaid.
        lab_section("garage")
            .get("bucket")
            .map_or("dedup-lab", |b| b.as_str().unwrap())
    )
}

/// Object count and bytes under a path, as rclone lists them.
fn rclone_size(path: &str) -> (u64, u64) {
    let out = rclone(&["size", "--json", &remote(path)], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["count"].as_u64().unwrap(), v["bytes"].as_u64().unwrap())
}

/// Keys under a path, recursively, as rclone lists them.
fn rclone_keys(path: &str) -> Vec<String> {
    let out = rclone(&["lsf", "-R", "--files-only", &remote(path)], None);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn adapter(changes: &[(&str, toml::Value)]) -> S3 {
    let mut section = lab_section("garage");
    for (k, v) in changes {
        section.insert((*k).to_string(), v.clone());
    }
    let instance = Instance::new("garage", Some(&section), Default::default()).unwrap();
    S3::new(&instance.context(std::path::Path::new("."))).unwrap()
}

fn dataset(dir: &std::path::Path, files: u32, sizes: SizeSpec, grade: u8) -> DataSet {
    DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade,
            files,
            sizes,
            seed: fresh_seed(),
            ..Default::default()
        },
        dir,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_pages_counts_and_deletes_match_an_independent_client() {
    let _shared = QUIET.read().await;
    let tmp = tempfile::tempdir().unwrap();
    // A sibling whose name extends the lab prefix without its `/`: never the lab's.
    rclone(
        &["rcat", &remote("dedup_lab_t_list_sibling/keep")],
        Some(b"not ours"),
    );
    let mut sys = adapter(&[
        ("prefix", "dedup_lab_t_list".into()),
        ("list_page_size", 7.into()),
    ]);
    let info = sys.connect().await.unwrap();
    assert_eq!(
        (info.product.as_str(), info.version.as_str()),
        ("Garage", "cargo:2.5.0")
    );
    let ds = dataset(
        &tmp.path().join("ds"),
        40,
        SizeSpec::Range {
            min: 1000,
            max: 200_000,
        },
        50,
    );
    common::reset(&mut sys).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    sys.settle().await.unwrap();

    let listing = sys.listing().await.unwrap();
    assert_eq!(
        (listing.objects, listing.bytes),
        rclone_size("dedup_lab_t_list/files")
    );
    assert_eq!(
        (listing.objects, listing.bytes),
        (40, ds.manifest.logical_bytes)
    );
    assert_eq!(listing.pages, 6, "40 keys at 7 per page");
    assert_eq!(sys.count().await.unwrap(), 40);
    // The bytes stored are the files' bytes.
    let f = &ds.manifest.files[11];
    let got = rclone(
        &[
            "cat",
            &remote(&format!("dedup_lab_t_list/files/{}", f.name)),
        ],
        None,
    );
    assert_eq!(blake3::hash(&got.stdout).to_hex().as_str(), f.blake3);

    for f in &ds.manifest.files[..15] {
        sys.delete_one(f).await.unwrap();
    }
    let left = rclone_keys("dedup_lab_t_list/files");
    assert_eq!(left.len(), 25);
    assert!(!left.contains(&ds.manifest.files[0].name));
    assert!(left.contains(&ds.manifest.files[15].name));

    common::reset(&mut sys).await.unwrap();
    assert_eq!(rclone_keys("dedup_lab_t_list"), [MARKER]);
    assert_eq!(rclone_keys("dedup_lab_t_list_sibling"), ["keep"]);
    rclone(&["purge", &remote("dedup_lab_t_list_sibling")], None);
}

#[tokio::test(flavor = "multi_thread")]
async fn large_files_go_up_in_parts_and_arrive_whole() {
    let _shared = QUIET.read().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut sys = adapter(&[
        ("prefix", "dedup_lab_t_multipart".into()),
        ("multipart_threshold_mib", 1.into()),
        ("part_size_mib", 5.into()),
    ]);
    sys.connect().await.unwrap();
    common::reset(&mut sys).await.unwrap();
    // 6 MiB files: two parts each; 500 KiB files: one PUT each.
    let big = dataset(&tmp.path().join("big"), 3, SizeSpec::Fixed(6 << 20), 0);
    let small = dataset(&tmp.path().join("small"), 2, SizeSpec::Fixed(500 << 10), 0);
    sys.bulk_insert(&big).await.unwrap();
    for f in &small.manifest.files {
        let name = format!("small-{}", f.name);
        let entry = dedup_lab::dataset::FileEntry { name, ..f.clone() };
        sys.insert_one(&entry, small.read(f).unwrap())
            .await
            .unwrap();
    }
    // rclone knows an object's MD5 from its ETag only when it was not uploaded in parts.
    let out = rclone(
        &[
            "lsjson",
            "-R",
            "--files-only",
            "--hash",
            &remote("dedup_lab_t_multipart/files"),
        ],
        None,
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 5);
    for o in &list {
        let name = o["Name"].as_str().unwrap();
        let md5 = o["Hashes"]["md5"].as_str().unwrap_or("");
        assert_eq!(md5.is_empty(), !name.starts_with("small-"), "{o}");
    }
    for f in &big.manifest.files {
        let got = rclone(
            &[
                "cat",
                &remote(&format!("dedup_lab_t_multipart/files/{}", f.name)),
            ],
            None,
        );
        assert_eq!(got.stdout.len() as u64, f.size);
        assert_eq!(blake3::hash(&got.stdout).to_hex().as_str(), f.blake3);
    }
    common::reset(&mut sys).await.unwrap();
    assert_eq!(rclone_keys("dedup_lab_t_multipart"), [MARKER]);
}

/// The record of `grade`'s cell at stage `st`.
fn stage(stages: &[StageRecord], grade: u8, st: Stage) -> &StageRecord {
    stages
        .iter()
        .find(|s| s.cell.grade == grade && s.stage == st)
        .unwrap()
}

fn fs_delta(s: &StageRecord) -> i64 {
    let p = &s.probes["fs"];
    p.after.bytes().unwrap() as i64 - p.before.bytes().unwrap() as i64
}

#[test]
fn run_records_counts_and_garage_block_dedup() {
    let _alone = QUIET.blocking_write();
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(
        tmp.path(),
        "garage",
        &[("prefix", "dedup_lab_t_run".into())],
    );
    let results = tmp.path().join("results");
    let seed = fresh_seed().to_string();
    let out = run(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--systems",
        "garage",
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
    let stages = stages(&results);
    assert_eq!(stages.len(), 8);
    for s in &stages {
        let want = if s.stage.inserts() { 40 } else { 0 };
        assert_eq!(s.rows_after, want, "{} {}", s.cell, s.stage);
        assert!(!s.probes.contains_key("native"), "S3 has no native probe");
    }
    let (u0, u90) = (
        stage(&stages, 0, Stage::BulkInsert),
        stage(&stages, 90, Stage::BulkInsert),
    );
    let l = u0.logical_bytes as f64;
    // Random data: every byte is stored (zstd cannot shrink it).
    assert!(
        fs_delta(u0) as f64 >= 0.9 * l,
        "U0 grew {} for L {l}",
        fs_delta(u0)
    );
    // 90 % duplicates: Garage stores each distinct 1 MiB block once.
    assert!(
        (fs_delta(u90) as f64) < 0.3 * u90.logical_bytes as f64,
        "U90 grew {} for L {}",
        fs_delta(u90),
        u90.logical_bytes
    );
    let c = fs_delta(u0) as f64 / l;
    let (l90, unique) = (u90.logical_bytes as f64, u90.unique_bytes as f64);
    let capture = (c * l90 - fs_delta(u90) as f64) / (c * (l90 - unique));
    assert!(capture > 0.8, "dedup_capture {capture}");
    assert!(
        stage(&stages, 0, Stage::Maintenance)
            .note
            .as_deref()
            .unwrap()
            .contains("600 s")
    );
    assert_eq!(
        rclone_keys("dedup_lab_t_run"),
        [MARKER],
        "final reset empties"
    );
}

#[test]
fn unmarked_prefix_is_refused_and_foreign_objects_survive() {
    let _shared = QUIET.blocking_read();
    rclone(
        &["rcat", &remote("dedup_lab_t_foreign/files/x")],
        Some(b"not ours"),
    );
    rclone(&["rcat", &remote("precious/key")], Some(b"42"));
    let out = run_in_namespace("garage", "prefix", "dedup_lab_t_foreign");
    assert_fails_with(&out, 1, &["not created by dedup-lab"]);
    let x = rclone(&["cat", &remote("dedup_lab_t_foreign/files/x")], None);
    assert_eq!(x.stdout, b"not ours");
    assert_eq!(
        rclone(&["cat", &remote("precious/key")], None).stdout,
        b"42"
    );
    rclone(&["purge", &remote("dedup_lab_t_foreign")], None);
    rclone(&["purge", &remote("precious")], None);
}

fn preflight(changes: &[(&str, toml::Value)]) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(tmp.path(), "garage", changes);
    let out = run(&[
        "preflight",
        "--config",
        config.to_str().unwrap(),
        "--systems",
        "garage",
    ]);
    (out.status.code(), text(&out))
}

#[test]
fn bad_endpoint_credentials_and_bucket_are_named() {
    let (code, t) = preflight(&[("endpoint", "http://127.0.0.1:1".into())]);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("127.0.0.1:1") && t.contains("Connection refused"),
        "{t}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "not-the-secret-key-0000").unwrap();
    let (code, t) = preflight(&[("secret_key_file", wrong.display().to_string().into())]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("check the access key, the secret key"), "{t}");
    assert!(
        !t.contains("not-the-secret-key-0000"),
        "a secret leaked: {t}"
    );

    let (code, t) = preflight(&[("bucket", "dedup-lab-missing".into())]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("does the bucket exist"), "{t}");

    let (code, t) = preflight(&[("bucket", "dedup_lab".into())]);
    assert_eq!(code, Some(2), "{t}");
    assert!(t.contains("no _"), "{t}");
}

/// The adapter on `prefix` with `layout`, connected.
async fn layout_adapter(prefix: &str, layout: Layout) -> S3 {
    let mut sys = adapter(&[
        ("prefix", prefix.into()),
        ("keys", layout.keys.name().into()),
        ("containers", layout.containers.into()),
    ]);
    sys.connect().await.unwrap();
    sys
}

const CONTENT: Layout = Layout {
    keys: KeyMode::Content,
    containers: 1,
};

/// The objects under `<prefix>/files/` are exactly `held` (hashes), each byte-exact: its
/// content, read back with rclone, hashes to its key.
fn assert_holds(prefix: &str, held: &std::collections::BTreeSet<&str>) {
    let mut keys = rclone_keys(&format!("{prefix}/files"));
    keys.sort();
    let want: Vec<String> = held.iter().map(|h| h.to_string()).collect();
    assert_eq!(keys, want);
    for h in held {
        let got = rclone(&["cat", &remote(&format!("{prefix}/files/{h}"))], None);
        assert_eq!(blake3::hash(&got.stdout).to_hex().as_str(), *h);
    }
}

/// With content keys a repeated content is a PUT to the same key: both insert paths leave one
/// object per content (as rclone lists them), and the engine's delete plan removes an object
/// with the last file holding it, leaving the others whole.
#[tokio::test(flavor = "multi_thread")]
async fn content_keys_hold_one_object_per_content_and_deletes_spare_shared_ones() {
    let _shared = QUIET.read().await;
    let tmp = tempfile::tempdir().unwrap();
    let prefix = "dedup_lab_kkv_s3_del";
    let mut sys = layout_adapter(prefix, CONTENT).await;
    // 12 files, 4 contents held by 3 files each.
    let ds = dataset(&tmp.path().join("ds"), 12, SizeSpec::Fixed(32 << 10), 67);
    let files = &ds.manifest.files;
    let all: std::collections::BTreeSet<&str> = files.iter().map(|f| f.blake3.as_str()).collect();
    assert_eq!(all.len(), 4);

    common::reset(&mut sys).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    sys.settle().await.unwrap();
    assert_holds(prefix, &all);
    assert_eq!(sys.count().await.unwrap(), 4);

    common::reset(&mut sys).await.unwrap();
    assert_eq!(rclone_keys(prefix), [MARKER]);
    for f in files {
        sys.insert_one(f, ds.read(f).unwrap()).await.unwrap();
    }
    assert_holds(prefix, &all);
    let mut held = all.clone();
    for (f, deletes) in files.iter().zip(CONTENT.deletes(files)) {
        if deletes {
            sys.delete_one(f).await.unwrap();
            held.remove(f.blake3.as_str());
            assert_holds(prefix, &held);
        }
    }
    assert!(held.is_empty());
    assert_eq!(sys.count().await.unwrap(), 0);
    common::reset(&mut sys).await.unwrap();
}

/// The derived rows of a run of random data at U0 and U90 with `changes`, on a fresh seed.
fn run_rows(changes: &[(&str, toml::Value)]) -> Vec<Row> {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(tmp.path(), "garage", changes);
    let results = tmp.path().join("results");
    let seed = fresh_seed().to_string();
    let out = run(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--systems",
        "garage",
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

fn row(rows: &[Row], grade: u8, stage: Stage) -> &Row {
    rows.iter()
        .find(|r| r.probe == "fs" && r.grade == grade && r.stage == stage)
        .unwrap_or_else(|| panic!("no fs row for U{grade} {stage}"))
}

/// Content keys at U90 on Garage: one object per content after each insert stage, and the
/// bulk load grows the server by about U. By name, Garage's block dedup stores about U too:
/// the overwrite changes the count, not what Garage stores. (The per-file insert follows the
/// bulk load of the same content, whose blocks Garage still keeps: it is not compared.)
#[test]
fn content_keys_on_garage_count_u90_once_and_store_about_u_as_names_do() {
    let _alone = QUIET.blocking_write();
    let by_content = run_rows(&[
        ("prefix", "dedup_lab_kkv_s3_run".into()),
        ("keys", "content".into()),
    ]);
    for stage in [Stage::BulkInsert, Stage::PerfileInsert] {
        assert_eq!(row(&by_content, 0, stage).rows_after, 40);
        assert_eq!(row(&by_content, 90, stage).rows_after, 4, "{stage}");
        assert_eq!(row(&by_content, 90, Stage::PerfileDelete).rows_after, 0);
    }
    let by_name = run_rows(&[("prefix", "dedup_lab_kkv_s3_run".into())]);
    for (keys, rows) in [("content", &by_content), ("name", &by_name)] {
        let r = row(rows, 90, Stage::BulkInsert);
        let grown = r.delta_bytes.unwrap() as f64;
        assert!(
            grown < 0.3 * r.logical_bytes as f64 && grown >= 0.9 * r.unique_bytes as f64,
            "{keys}: grew {grown} for U {} and L {}",
            r.unique_bytes,
            r.logical_bytes
        );
    }
    assert_eq!(rclone_keys("dedup_lab_kkv_s3_run"), [MARKER]);
}

/// The objects under each of 4 containers of `prefix`, as rclone lists them.
fn per_container(prefix: &str) -> Vec<usize> {
    (0..4)
        .map(|k| rclone_keys(&format!("{prefix}/c{k}/files")).len())
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

/// With 4 containers each file goes to the key prefix `c<id % 4>/files/`, by name or content;
/// runs complete with either; and a reset with one container removes what 4 left.
#[tokio::test(flavor = "multi_thread")]
async fn four_containers_are_key_prefixes_and_a_reset_removes_them_all() {
    let _shared = QUIET.read().await;
    let tmp = tempfile::tempdir().unwrap();
    let prefix = "dedup_lab_kkv_s3_c4";
    // 22 files, 4 contents, in shuffled positions: a content lands in several containers.
    let ds = dataset(&tmp.path().join("ds"), 22, SizeSpec::Fixed(32 << 10), 80);
    for keys in [KeyMode::Name, KeyMode::Content] {
        let layout = Layout {
            keys,
            containers: 4,
        };
        let mut sys = layout_adapter(prefix, layout).await;
        common::reset(&mut sys).await.unwrap();
        sys.bulk_insert(&ds).await.unwrap();
        let want = expected_per_container(layout, &ds.manifest.files);
        assert!(want.iter().sum::<usize>() > 4, "{want:?}");
        assert_eq!(per_container(prefix), want, "{}", keys.name());
        assert!(rclone_keys(&format!("{prefix}/files")).is_empty());
        let listing = sys.listing().await.unwrap();
        assert_eq!(
            listing.objects,
            layout.stored_entries(&ds.manifest.files),
            "{listing:?}"
        );
        assert_eq!(listing.pages, 4, "one listing per container");
        // A file's key names its container and its name or content.
        let f = &ds.manifest.files[7];
        let path = format!("{prefix}/c3/files/{}", layout.key_of(f));
        let got = rclone(&["cat", &remote(&path)], None);
        assert_eq!(blake3::hash(&got.stdout).to_hex().as_str(), f.blake3);
    }
    // The content-keyed objects are still there: a run with one container resets them away.
    let out = tokio::task::spawn_blocking(move || run_in_namespace("garage", "prefix", prefix))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rclone_keys(prefix), [MARKER]);
    for keys in ["name", "content"] {
        let rows = tokio::task::spawn_blocking(move || {
            run_rows(&[
                ("prefix", prefix.into()),
                ("keys", keys.into()),
                ("containers", 4.into()),
            ])
        })
        .await
        .unwrap();
        // The engine checked each count against the layout's entries; content keys hold each
        // of the 4 contents once in every container that has a copy.
        let r = row(&rows, 90, Stage::BulkInsert);
        if keys == "name" {
            assert_eq!(r.rows_after, 40);
        } else {
            assert!((4..=16).contains(&r.rows_after), "{}", r.rows_after);
        }
        assert_eq!(rclone_keys(prefix), [MARKER], "the final reset empties");
    }
}
