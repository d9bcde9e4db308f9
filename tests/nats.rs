//! NATS JetStream (`nats`) against the lab server: content ids store each content once and
//! file-name ids every copy (dedup capture from the native probe, through the engine), counts
//! and sizes checked against `STREAM.INFO` requests typed here, deletes of shared content, a
//! foreign stream that is refused and survives, content keys read back message by message,
//! deletes in the engine's plan, and four containers (four streams).
//!
//! Each test uses its own stream. The `fs` probe reads the whole store directory, which the
//! tests share, so they assert the native probe only.

mod common;

use std::collections::HashSet;
use std::path::Path;

use async_nats::jetstream;
use common::{assert_fails_with, config_with, lab_section, run_in_namespace, run_system, text};
use dedup_lab::dataset::{DataSet, DataSetSpec, FileEntry, Manifest, PayloadType, SizeSpec};
use dedup_lab::experiment::dataset_dir;
use dedup_lab::model::{KeyMode, Layout, Stage};
use dedup_lab::results::derive::{Row, rows};
use dedup_lab::systems::{self, System};
use futures_util::TryStreamExt;

/// A client of its own on the lab server, with the lab's user and password.
async fn client() -> async_nats::Client {
    let s = lab_section("nats");
    let password = std::fs::read_to_string(s["password_file"].as_str().unwrap()).unwrap();
    async_nats::ConnectOptions::with_user_and_password(
        s["user"].as_str().unwrap().to_string(),
        password.trim().to_string(),
    )
    .connect(format!(
        "nats://{}:{}",
        s["host"].as_str().unwrap(),
        s["port"].as_integer().unwrap()
    ))
    .await
    .expect("the lab's nats-server (`dedup-lab lab up --systems nats`)")
}

/// `$JS.API.STREAM.INFO.<stream>` as a plain request: the stream's (messages, bytes).
async fn stream_info(c: &async_nats::Client, stream: &str) -> (u64, u64) {
    let answer = c
        .request(format!("$JS.API.STREAM.INFO.{stream}"), "".into())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    let state = &v["state"];
    assert!(state.is_object(), "no state in {v}");
    (
        state["messages"].as_u64().unwrap(),
        state["bytes"].as_u64().unwrap(),
    )
}

fn dataset(dir: &std::path::Path, grade: u8, files: u32) -> DataSet {
    DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade,
            files,
            sizes: SizeSpec::Fixed(32 << 10),
            seed: 7,
            ..Default::default()
        },
        dir,
    )
    .unwrap()
}

fn adapter(stream: &str, keys: &str, dir: &std::path::Path) -> Box<dyn System> {
    let mut section = lab_section("nats");
    section.insert("stream".into(), stream.into());
    section.insert("keys".into(), keys.into());
    systems::build_from_section("nats", &section, dir).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_and_sizes_match_stream_info_and_a_content_goes_with_its_last_file() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = "dedup_lab_t_shared";
    let mut sys = adapter(stream, "content", tmp.path());
    assert_eq!(sys.connect().await.unwrap().product, "NATS Server");
    // 20 files, 10 distinct contents, each held by two files.
    let ds = dataset(&tmp.path().join("ds"), 50, 20);
    let c = client().await;

    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    sys.settle().await.unwrap();
    let (messages, bytes) = stream_info(&c, stream).await;
    assert_eq!(messages, 10);
    assert_eq!(sys.count().await.unwrap(), messages);
    assert_eq!(common::native_size(sys.as_mut()).await, bytes);
    // The snapshot's figures are STREAM.INFO's.
    let snap = sys.meter().await.unwrap().snapshot().await.unwrap();
    assert_eq!(
        (snap["messages"], snap["bytes"]),
        (messages as f64, bytes as f64)
    );
    assert_eq!(snap["deleted"], 0.0);
    // Each message holds one 32 KiB content, a subject and a Nats-Msg-Id header.
    assert!(
        (10 * (32 << 10)..10 * (33 << 10)).contains(&bytes),
        "{bytes}"
    );

    common::reset(sys.as_mut()).await.unwrap();
    assert_eq!(stream_info(&c, stream).await, (0, 0), "a reset empties");
    for f in &ds.manifest.files {
        sys.insert_one(f, ds.read(f).unwrap()).await.unwrap();
    }
    assert_eq!(stream_info(&c, stream).await.0, 10);
    // A content's message is stored under the subject of its first file published (files go
    // in manifest order). The engine deletes a content with its last file only: that file's
    // delete removes the message the first one's publish stored.
    let files = &ds.manifest.files;
    let first = &files[0];
    let copy = files[1..]
        .iter()
        .find(|f| f.blake3 == first.blake3)
        .expect("every content is held by two files");
    let js = jetstream::new(c.clone());
    let held = js
        .get_stream(stream)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&format!("{stream}.files.{}", first.id))
        .await
        .unwrap();
    assert_eq!(blake3::hash(&held.payload).to_hex().as_str(), copy.blake3);
    sys.delete_one(copy).await.unwrap();
    assert_eq!(stream_info(&c, stream).await.0, 9, "its last file is gone");
    let last_of_each: std::collections::HashMap<&str, &dedup_lab::dataset::FileEntry> =
        files.iter().map(|f| (f.blake3.as_str(), f)).collect();
    for f in last_of_each.values() {
        if f.blake3 != copy.blake3 {
            sys.delete_one(f).await.unwrap();
        }
    }
    assert_eq!(stream_info(&c, stream).await, (0, 0));
    assert_eq!(sys.count().await.unwrap(), 0);
    let note = sys.maintenance().await.unwrap();
    assert!(note.contains("purged the empty stream"), "{note}");
    js.delete_stream(stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn name_ids_store_every_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = "dedup_lab_t_names";
    let mut sys = adapter(stream, "name", tmp.path());
    sys.connect().await.unwrap();
    let ds = dataset(&tmp.path().join("ds"), 90, 20);
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    let c = client().await;
    let (messages, bytes) = stream_info(&c, stream).await;
    assert_eq!((messages, sys.count().await.unwrap()), (20, 20));
    assert!(bytes >= ds.manifest.logical_bytes, "{bytes}");
    for f in &ds.manifest.files {
        sys.delete_one(f).await.unwrap();
    }
    assert_eq!(stream_info(&c, stream).await, (0, 0));
    jetstream::new(c).delete_stream(stream).await.unwrap();
}

/// The derived row of the native probe at `grade` and `stage`.
fn native(rows: &[Row], grade: u8, stage: Stage) -> &Row {
    rows.iter()
        .find(|r| r.probe == "native" && r.grade == grade && r.stage == stage)
        .unwrap_or_else(|| panic!("no native row for U{grade} {stage}"))
}

/// A run of random data at U0 and U90 with `keys`: its derived rows.
fn run_with(keys: &str, stream: &str) -> Vec<Row> {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(
        tmp.path(),
        "nats",
        &[("keys", keys.into()), ("stream", stream.into())],
    );
    let results = tmp.path().join("results");
    let out = run_system(&config, "nats", "random_binary", "0,90", 40, &results);
    assert!(out.status.success(), "{}", text(&out));
    rows(&common::journal(&common::experiment_dir(&results)))
}

#[test]
fn content_ids_store_about_u_and_name_ids_about_l() {
    let by_content = run_with("content", "dedup_lab_t_run_content");
    let by_name = run_with("name", "dedup_lab_t_run_name");
    for stage in [Stage::BulkInsert, Stage::PerfileInsert] {
        let r = native(&by_content, 90, stage);
        // 40 files at U90: 4 distinct contents are stored, once each.
        assert_eq!(r.rows_after, 4, "{stage}");
        let capture = r.dedup_capture.unwrap();
        assert!(capture >= 0.8, "content ids, {stage}: capture {capture}");
        let grown = r.delta_bytes.unwrap() as f64;
        assert!(
            grown < 1.1 * r.unique_bytes as f64,
            "content ids, {stage}: grew {grown} for U {}",
            r.unique_bytes
        );

        let r = native(&by_name, 90, stage);
        assert_eq!(r.rows_after, 40, "{stage}");
        let capture = r.dedup_capture.unwrap();
        assert!(capture <= 0.1, "name ids, {stage}: capture {capture}");
        assert!(r.delta_bytes.unwrap() as f64 >= 0.99 * r.logical_bytes as f64);
    }
    for rows in [&by_content, &by_name] {
        for grade in [0, 90] {
            let r = native(rows, grade, Stage::PerfileDelete);
            assert_eq!(r.rows_after, 0, "the per-file delete empties the stream");
            assert_eq!(r.after_bytes, Some(0));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_stream_is_refused_and_survives() {
    let stream = "dedup_lab_t_foreign";
    let c = client().await;
    let js = jetstream::new(c.clone());
    let _ = js.delete_stream(stream).await;
    js.create_stream(jetstream::stream::Config {
        name: stream.into(),
        subjects: vec![format!("{stream}.files.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish(format!("{stream}.files.precious"), "not ours".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(|| run_in_namespace("nats", "stream", stream))
        .await
        .unwrap();
    assert_fails_with(&out, 1, &["refusing", "not created by dedup-lab"]);
    assert_eq!(
        stream_info(&c, stream).await.0,
        1,
        "the foreign message survives"
    );
    js.delete_stream(stream).await.unwrap();
}

/// Allocated bytes of a directory's files.
fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

/// Deleted messages at the head of a block stay on disk until maintenance purges below the
/// first live message, which rewrites that block and keeps every live message. (nats-server
/// 2.9 cuts a stream into blocks of 8 MB: 31 messages of 256 KiB each.)
#[tokio::test(flavor = "multi_thread")]
async fn maintenance_drops_deleted_heads_and_keeps_live_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = "dedup_lab_t_maintenance";
    let mut sys = adapter(stream, "name", tmp.path());
    sys.connect().await.unwrap();
    let ds = DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade: 0,
            files: 80,
            sizes: SizeSpec::Fixed(256 << 10),
            seed: 8,
            ..Default::default()
        },
        &tmp.path().join("ds"),
    )
    .unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    let store = lab_section("nats")["fs_probe"][0]
        .as_str()
        .unwrap()
        .to_string();
    let msgs = std::path::Path::new(&store).join(format!("jetstream/$G/streams/{stream}/msgs"));
    // The first block and 19 of the second block's 31 messages, in insertion order.
    for f in &ds.manifest.files[..50] {
        sys.delete_one(f).await.unwrap();
    }
    sys.settle().await.unwrap();
    let before = allocated(&msgs);
    let note = sys.maintenance().await.unwrap();
    assert!(
        note.contains("purged below the first live message (51)"),
        "{note}"
    );
    let after = allocated(&msgs);
    assert!(
        before - after >= 19 * (256 << 10),
        "the store went from {before} to {after} bytes"
    );
    let c = client().await;
    assert_eq!(
        stream_info(&c, stream).await.0,
        30,
        "every live message stays"
    );
    jetstream::new(c).delete_stream(stream).await.unwrap();
}

#[test]
fn a_wrong_password_is_named_and_not_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "not-the-nats-password-0000").unwrap();
    let config = config_with(
        tmp.path(),
        "nats",
        &[("password_file", wrong.display().to_string().into())],
    );
    let out = common::run(&[
        "preflight",
        "--config",
        config.to_str().unwrap(),
        "--systems",
        "nats",
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("check user and password"), "{t}");
    assert!(
        !t.contains("not-the-nats-password-0000"),
        "a secret leaked: {t}"
    );
}

/// Deletes every stream of namespace `stream` (its containers' too) when dropped, so that a
/// failing test leaves none behind on the shared server.
struct Streams(&'static str);

impl Drop for Streams {
    fn drop(&mut self) {
        let ns = self.0;
        // Drop cannot await: a thread of its own runs the deletes on a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let js = jetstream::new(client().await);
                for name in namespace_streams(&js, ns).await {
                    let _ = js.delete_stream(&name).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// The streams of namespace `ns` on the server: `ns` and `ns-c<k>`, sorted.
async fn namespace_streams(js: &jetstream::Context, ns: &str) -> Vec<String> {
    let mut names: Vec<String> = js
        .stream_names()
        .try_collect::<Vec<String>>()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| {
            n == ns
                || n.strip_prefix(&format!("{ns}-c"))
                    .is_some_and(|k| k.parse::<u32>().is_ok())
        })
        .collect();
    names.sort();
    names
}

/// The BLAKE3 (hex) of every message `stream` holds, read by sequence.
async fn stored_contents(c: &async_nats::Client, stream: &str) -> Vec<String> {
    let js = jetstream::new(c.clone());
    let s = js.get_stream(stream).await.unwrap();
    let state = s.cached_info().state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(blake3::hash(&m.payload).to_hex().to_string());
        }
    }
    assert_eq!(out.len() as u64, state.messages, "{stream}");
    out.sort();
    out
}

/// The distinct contents of `files`, sorted.
fn contents<'a>(files: impl Iterator<Item = &'a FileEntry>) -> Vec<String> {
    let set: std::collections::BTreeSet<String> = files.map(|f| f.blake3.clone()).collect();
    set.into_iter().collect()
}

fn adapter_with(stream: &str, changes: &[(&str, toml::Value)], dir: &Path) -> Box<dyn System> {
    let mut section = lab_section("nats");
    section.insert("stream".into(), stream.into());
    for (k, v) in changes {
        section.insert((*k).to_string(), v.clone());
    }
    systems::build_from_section("nats", &section, dir).unwrap()
}

/// Content keys at U90 (40 incompressible files of 64 KiB), bulk and per file: the stream holds
/// each distinct content once, read back message by message, and about U bytes.
#[tokio::test(flavor = "multi_thread")]
async fn content_keys_at_u90_store_each_content_once_read_back_by_hand() {
    let stream = "dedup_lab_kst_u90";
    let _cleanup = Streams(stream);
    let tmp = tempfile::tempdir().unwrap();
    let mut sys = adapter(stream, "content", tmp.path());
    sys.connect().await.unwrap();
    let ds = DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade: 90,
            files: 40,
            sizes: SizeSpec::Fixed(64 << 10),
            seed: 9,
            ..Default::default()
        },
        &tmp.path().join("ds"),
    )
    .unwrap();
    let files = &ds.manifest.files;
    let want = contents(files.iter());
    assert_eq!(want.len(), 4);
    let c = client().await;
    for bulk in [true, false] {
        common::reset(sys.as_mut()).await.unwrap();
        if bulk {
            sys.bulk_insert(&ds).await.unwrap();
        } else {
            for f in files {
                sys.insert_one(f, ds.read(f).unwrap()).await.unwrap();
            }
        }
        assert_eq!(stored_contents(&c, stream).await, want, "bulk {bulk}");
        let (messages, bytes) = stream_info(&c, stream).await;
        assert_eq!((messages, sys.count().await.unwrap()), (4, 4));
        let u = ds.manifest.unique_bytes;
        assert!((u..u + u / 20).contains(&bytes), "{bytes} for U {u}");
    }
}

/// Deletes with content keys in the engine's plan: only a content's last file sends the
/// delete. After each, the content is gone and every other stays, byte-exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_content_goes_with_its_last_file_in_the_plan_and_the_others_stay_intact() {
    let stream = "dedup_lab_kst_deletes";
    let _cleanup = Streams(stream);
    let tmp = tempfile::tempdir().unwrap();
    let mut sys = adapter(stream, "content", tmp.path());
    sys.connect().await.unwrap();
    // 16 files at U75: 4 contents, 4 files each.
    let ds = dataset(&tmp.path().join("ds"), 75, 16);
    let files = &ds.manifest.files;
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    let c = client().await;
    let mut held = contents(files.iter());
    let layout = Layout {
        keys: KeyMode::Content,
        containers: 1,
    };
    let plan = layout.deletes(files);
    assert_eq!(plan.iter().filter(|d| **d).count(), 4);
    for (f, _) in files.iter().zip(plan).filter(|(_, d)| *d) {
        sys.delete_one(f).await.unwrap();
        held.retain(|h| *h != f.blake3);
        assert_eq!(stored_contents(&c, stream).await, held, "after {}", f.name);
        assert_eq!(sys.count().await.unwrap(), held.len() as u64);
    }
    assert!(held.is_empty());
    // An earlier holder of a content deleted with its last file has nothing left to delete.
    let err = sys.delete_one(&files[0]).await.unwrap_err();
    assert!(err.message.contains("deleted already"), "{}", err.message);
}

/// Four containers are four streams `<stream>-c<k>`, files spread by id modulo 4; each
/// stream's duplicate window is its own, so a content repeated in another stream is stored
/// there again. Runs with four containers and then one in the same namespace: each reset
/// removes every stream an earlier layout made.
#[tokio::test(flavor = "multi_thread")]
async fn four_containers_are_four_streams_and_a_reset_removes_any_earlier_layout() {
    let stream = "dedup_lab_kst_spread";
    let _cleanup = Streams(stream);
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("ds"), 50, 40);
    let files = &ds.manifest.files;
    let c = client().await;
    let js = jetstream::new(c.clone());
    let names: Vec<String> = (0..4).map(|k| format!("{stream}-c{k}")).collect();
    let of = |k: u32| files.iter().filter(move |f| f.id % 4 == k);

    let mut sys = adapter_with(stream, &[("containers", 4.into())], tmp.path());
    sys.connect().await.unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    assert_eq!(namespace_streams(&js, stream).await, names);
    sys.bulk_insert(&ds).await.unwrap();
    for (k, name) in (0..4).zip(&names) {
        assert_eq!(
            stream_info(&c, name).await.0,
            of(k).count() as u64,
            "{name}"
        );
    }
    assert_eq!(sys.count().await.unwrap(), 40);
    let snap = sys.meter().await.unwrap().snapshot().await.unwrap();
    assert_eq!(snap["messages"], 40.0, "the meter sums every stream");

    let changes = [("containers", 4.into()), ("keys", "content".into())];
    let mut sys = adapter_with(stream, &changes, tmp.path());
    sys.connect().await.unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    for f in files {
        sys.insert_one(f, ds.read(f).unwrap()).await.unwrap();
    }
    let mut entries = 0;
    for (k, name) in (0..4).zip(&names) {
        let here = contents(of(k));
        assert_eq!(stored_contents(&c, name).await, here, "{name}");
        entries += here.len();
    }
    assert!(
        entries > contents(files.iter()).len(),
        "contents repeat across streams"
    );
    assert_eq!(sys.count().await.unwrap(), entries as u64);
    let snap = sys.meter().await.unwrap().snapshot().await.unwrap();
    assert_eq!(snap["messages"], entries as f64);
    let layout = Layout {
        keys: KeyMode::Content,
        containers: 4,
    };
    for (f, _) in files.iter().zip(layout.deletes(files)).filter(|(_, d)| *d) {
        sys.delete_one(f).await.unwrap();
    }
    assert_eq!(sys.count().await.unwrap(), 0);
    let note = sys.maintenance().await.unwrap();
    for name in &names {
        assert!(
            note.contains(&format!("{name}: purged the empty stream")),
            "{note}"
        );
    }

    for (containers, keys) in [(4, "name"), (4, "content"), (1, "content")] {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with(
            dir.path(),
            "nats",
            &[
                ("stream", stream.into()),
                ("containers", containers.into()),
                ("keys", keys.into()),
            ],
        );
        let results = dir.path().join("results");
        let out = run_system(&config, "nats", "random_binary", "90", 40, &results);
        assert!(out.status.success(), "{}", text(&out));
        let exp = common::experiment_dir(&results);
        let manifest = Manifest::read(&dataset_dir(
            &exp.join("datasets"),
            1,
            PayloadType::RandomBinary,
            90,
        ))
        .unwrap();
        let entries: HashSet<(u32, &str)> = manifest
            .files
            .iter()
            .map(|f| {
                let key = if keys == "name" { &f.name } else { &f.blake3 };
                (f.id % containers, key.as_str())
            })
            .collect();
        for s in common::stage_records(&common::journal(&exp)) {
            let want = if s.stage.inserts() { entries.len() } else { 0 };
            assert_eq!(s.rows_after, want as u64, "{containers} {keys} {}", s.stage);
        }
        // The final reset left the layout's streams, empty, and nothing of an earlier one.
        let left = namespace_streams(&js, stream).await;
        let want: Vec<String> = match containers {
            1 => vec![stream.to_string()],
            _ => names.clone(),
        };
        assert_eq!(left, want);
        for name in &left {
            assert_eq!(stream_info(&c, name).await, (0, 0), "{name}");
        }
    }
}
