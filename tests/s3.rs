//! S3 against the lab's Garage (instance `garage` of kind `s3`): counts and logical bytes checked with rclone
//! as an independent client, pagination, multipart, deletes, Garage's block dedup seen by the
//! fs probe, the namespace marker, and bad endpoints and credentials.
//!
//! The fs probe reads the whole server, so the one test that measures it holds [`QUIET`]
//! exclusively; the others share it and run in parallel, each under its own key prefix. Seeds
//! are fresh per test run: Garage keeps deleted blocks for 600 s, and a rerun with the same
//! content would find them and store nothing new.

mod common;

use std::process::{Command, Output, Stdio};

use common::{assert_fails_with, config_with, lab_section, run, run_in_namespace, stages, text};
use dedup_lab::dataset::{DataSet, DataSetSpec, PayloadType, SizeSpec};
use dedup_lab::model::{Stage, StageRecord};
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
