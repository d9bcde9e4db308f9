//! Kafka against the lab broker (tansu): records read back byte-exact by an independent
//! consumer, counts after every stage, deletes seen by a consumer, acknowledged latency, fs
//! growth, foreign topics, tansu's refusals and an unreachable broker; content keys (the
//! record key is the content's hash) and four containers (four topics per reset).
//!
//! The `fs` and `sqlite` probes see the whole broker, so the test that checks them holds the
//! broker alone; the others run side by side with distinct prefixes.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{
    assert_fails_with, config_with, experiment_dir, journal, lab_section, run_in_namespace,
    run_system, stage_records, text,
};
use dedup_lab::dataset::{DataSet, DataSetSpec, Manifest, PayloadType, SizeSpec};
use dedup_lab::experiment::dataset_dir;
use dedup_lab::model::{ErrorKind, KeyMode, Layout, Record, Stage, StageRecord};
use dedup_lab::systems::{self, System};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Held exclusively by the test that reads the `fs` probe, shared by the others.
static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set(
        "bootstrap.servers",
        lab_section("kafka")["bootstrap"].as_str().unwrap(),
    );
    c
}

/// The lab section with its own prefix, without the storage hooks (see the module comment).
fn section(prefix: &str) -> toml::Table {
    let mut s = lab_section("kafka");
    s.insert("prefix".into(), prefix.into());
    s.remove("sqlite_probe");
    s.remove("fs_probe");
    s
}

fn build(section: &toml::Table) -> anyhow::Result<Box<dyn System>> {
    let tmp = std::env::temp_dir();
    systems::build_from_section("kafka", section, &tmp)
}

/// Every record of partition 0 from the log start to the high watermark, each offset once
/// (tansu re-delivers records after compaction gaps), by a consumer of the test's own.
fn read_topic(topic: &str) -> Vec<(i64, String, Option<Vec<u8>>)> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", "dedup-lab-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (low, high) = consumer.fetch_watermarks(topic, 0, TIMEOUT).unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out: Vec<(i64, String, Option<Vec<u8>>)> = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while out.last().map_or(low, |r| r.0 + 1) < high {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            if out.last().is_none_or(|r| m.offset() > r.0) {
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                out.push((m.offset(), key, m.payload().map(<[u8]>::to_vec)));
            }
        }
    }
    out
}

/// Latest record per key: `Some(value)` or `None` for a tombstone.
fn latest(topic: &str) -> HashMap<String, Option<Vec<u8>>> {
    read_topic(topic)
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .collect()
}

/// Rows of `topic` in tansu's SQLite file, read beside the broker.
fn stored_records(topic: &str) -> i64 {
    let section = lab_section("kafka");
    let path = section["sqlite_probe"][0].as_str().unwrap();
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    db.query_row(
        "SELECT count(*) FROM record r JOIN topition tp ON tp.id = r.topition \
         JOIN topic t ON t.id = tp.topic WHERE t.name = ?1",
        [topic],
        |row| row.get(0),
    )
    .unwrap()
}

fn topics(prefix: &str) -> Vec<String> {
    let consumer: BaseConsumer = client_config().create().unwrap();
    let md = consumer.fetch_metadata(None, TIMEOUT).unwrap();
    let mut names: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// The topic the last reset under `prefix` created.
fn newest(prefix: &str) -> String {
    topics(&format!("{prefix}-"))
        .into_iter()
        .rfind(|t| !t.ends_with("-registry"))
        .expect("a lab topic")
}

/// Creates a topic and writes `value` into it, as someone else's producer would; an existing
/// topic (from an earlier test run: tansu cannot delete one topic) is kept.
async fn foreign_topic(name: &str, value: &str) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().unwrap();
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    for r in results {
        if let Err((t, code)) = r {
            assert_eq!(
                code,
                rdkafka::error::RDKafkaErrorCode::TopicAlreadyExists,
                "{t}"
            );
        }
    }
    let producer: BaseProducer = client_config().set("acks", "all").create().unwrap();
    producer
        .send(BaseRecord::to(name).key("k").payload(value))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(TIMEOUT).unwrap();
}

fn dataset(dir: &std::path::Path, payload: PayloadType, grade: u8, files: u32) -> DataSet {
    DataSet::generate(
        &DataSetSpec {
            payload,
            grade,
            files,
            sizes: SizeSpec::Range {
                min: 1000,
                max: 60_000,
            },
            seed: 5,
            ..Default::default()
        },
        dir,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_read_back_byte_exact_and_deletes_reach_consumers() {
    let _broker = BROKER.read().await;
    let tmp = tempfile::tempdir().unwrap();
    let prefix = "dedup_lab_t_api";
    let mut s = section(prefix);
    // Compressed batches must come back byte-exact too.
    s.insert("compression".into(), "zstd".into());
    let mut sys = build(&s).unwrap();
    let info = sys.connect().await.unwrap();
    assert_eq!(info.product, "Kafka protocol broker");
    // ApiVersions decides the native probe: tansu does not offer DescribeLogDirs.
    assert!(
        info.version.contains("Produce v0-") && info.version.contains("DescribeLogDirs -"),
        "{}",
        info.version
    );
    assert_eq!(sys.meter().await.unwrap().native_copies(), None);

    let ds = dataset(&tmp.path().join("ds"), PayloadType::TextDocument, 50, 30);
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    assert_eq!(sys.count().await.unwrap(), 30);
    let bulk_topic = newest(prefix);
    let bulk = read_topic(&bulk_topic);
    assert_eq!(bulk.len(), 30);
    let stored: HashMap<String, Vec<u8>> = bulk
        .into_iter()
        .map(|(_, k, v)| (k, v.expect("a value")))
        .collect();
    for f in &ds.manifest.files {
        let value = &stored[&f.name];
        assert_eq!(
            blake3::hash(value).to_hex().as_str(),
            f.blake3,
            "{}",
            f.name
        );
    }

    // Per file: when insert_one returns, the broker has the record (its high watermark, asked
    // by another client, already counts it): the latency is until acknowledgement.
    common::reset(sys.as_mut()).await.unwrap();
    // tansu keeps the topic (delete_topics = false); the reset retired it, and the broker has
    // deleted its records before the reset returned: none to read, none in tansu's file.
    assert!(topics(prefix).contains(&bulk_topic));
    assert_eq!(read_topic(&bulk_topic), vec![]);
    assert_eq!(stored_records(&bulk_topic), 0);
    let topic = newest(prefix);
    let watcher: BaseConsumer = client_config().create().unwrap();
    for (i, f) in ds.manifest.files.iter().enumerate() {
        sys.insert_one(f, ds.read(f).unwrap()).await.unwrap();
        let (_, high) = watcher.fetch_watermarks(&topic, 0, TIMEOUT).unwrap();
        assert_eq!(high, i as i64 + 1, "after inserting {}", f.name);
    }
    for f in &ds.manifest.files[..10] {
        sys.delete_one(f).await.unwrap();
    }
    assert_eq!(sys.count().await.unwrap(), 20);
    let seen = latest(&topic);
    for (i, f) in ds.manifest.files.iter().enumerate() {
        match &seen[&f.name] {
            None => assert!(i < 10, "{} deleted", f.name),
            Some(v) => {
                assert!(i >= 10, "{} still there", f.name);
                assert_eq!(blake3::hash(v).to_hex().as_str(), f.blake3);
            }
        }
    }
    let err = sys.delete_one(&ds.manifest.files[0]).await.unwrap_err();
    assert!(err.message.contains("not in topic"), "{}", err.message);
    let note = sys.maintenance().await.unwrap();
    assert!(note.contains("one per key (10 tombstones)"), "{note}");
    assert_eq!(
        read_topic(&topic).len(),
        30,
        "compaction left one record per key"
    );
    assert_eq!(sys.count().await.unwrap(), 20);
}

/// Median time librdkafka takes to accept (enqueue, not deliver) a 64 KiB record.
fn enqueue_time() -> Duration {
    let producer: BaseProducer = client_config()
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let value = vec![7u8; 64 * 1024];
    let mut times: Vec<Duration> = (0..40)
        .map(|i| {
            let key = i.to_string();
            let clock = Instant::now();
            producer
                .send(
                    BaseRecord::to("dedup_lab_t_enqueue")
                        .key(&key)
                        .payload(&value),
                )
                .map_err(|(e, _)| e)
                .unwrap();
            clock.elapsed()
        })
        .collect();
    // Deliveries are not waited for: the topic need not exist.
    producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    times.sort();
    times[times.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
async fn run_records_counts_growth_and_acknowledged_latency() {
    let _broker = BROKER.write().await;
    foreign_topic("precious_events", "keep me").await;
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(tmp.path(), "kafka", &[("prefix", "dedup_lab_t_run".into())]);
    let results = tmp.path().join("results");
    let out = run_system(&config, "kafka", "random_binary", "0,90", 40, &results);
    assert!(out.status.success(), "{}", text(&out));
    let records = journal(&experiment_dir(&results));
    assert!(
        !records
            .iter()
            .any(|r| matches!(r, Record::AttemptFailed { .. })),
        "{records:?}"
    );
    let stages = stage_records(&records);
    assert_eq!(stages.len(), 8);
    let enqueue = enqueue_time();
    for s in &stages {
        let want = if s.stage.inserts() { 40 } else { 0 };
        assert_eq!(s.rows_after, want, "{} {}", s.cell, s.stage);
        match s.stage {
            Stage::BulkInsert => {
                // tansu's file reuses pages freed by earlier compactions, and its WAL keeps its
                // size: the file may not grow at all. The pages in use do.
                let p = &s.probes["sqlite"];
                let grown = p.after.bytes().unwrap() as i64 - p.before.bytes().unwrap() as i64;
                assert!(
                    grown as f64 >= 0.9 * s.logical_bytes as f64,
                    "pages in use grew {grown} for L {}",
                    s.logical_bytes
                );
                assert!(s.probes["fs"].after.bytes().is_some());
            }
            Stage::PerfileInsert => {
                let p50 = Duration::from_secs_f64(s.latency_us.as_ref().unwrap().p50 / 1e6);
                assert!(
                    p50 > 3 * enqueue,
                    "per-file p50 {p50:?} is not above enqueueing ({enqueue:?}): not acked?"
                );
            }
            Stage::Maintenance => {
                let note = s.note.as_deref().unwrap();
                assert!(note.contains("one per key (40 tombstones)"), "{note}");
            }
            Stage::PerfileDelete => {}
        }
    }
    assert!(
        read_topic("precious_events")
            .iter()
            .any(|r| r.2.as_deref() == Some(b"keep me".as_slice())),
        "a topic outside the prefix survives"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_topics_survive_and_unregistered_lab_topics_are_refused() {
    let _broker = BROKER.read().await;
    foreign_topic("precious_events", "keep me").await;
    foreign_topic("dedup_lab_t_foreign-1", "not ours").await;
    let out = run_in_namespace("kafka", "prefix", "dedup_lab_t_foreign");
    assert_fails_with(
        &out,
        1,
        &[
            "dedup_lab_t_foreign-1 is under the prefix",
            "not created by dedup-lab",
        ],
    );
    assert_eq!(
        topics("dedup_lab_t_foreign"),
        ["dedup_lab_t_foreign-1"],
        "nothing created under the prefix"
    );
    for (topic, value) in [
        ("dedup_lab_t_foreign-1", "not ours"),
        ("precious_events", "keep me"),
    ] {
        assert!(
            read_topic(topic)
                .iter()
                .any(|r| r.2.as_deref() == Some(value.as_bytes())),
            "{topic} keeps its records"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tansu_is_refused_the_deletes_that_break_it() {
    let _broker = BROKER.read().await;
    let mut s = section("dedup_lab_t_refuse");
    s.insert("delete_topics".into(), true.into());
    let err = build(&s).unwrap().connect().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsafe);
    assert!(
        err.message.contains("delete_topics = false"),
        "{}",
        err.message
    );

    let mut s = section("dedup_lab_t_refuse");
    s.insert("delete_mode".into(), "delete_records".into());
    let err = build(&s).unwrap().connect().await.unwrap_err();
    assert!(
        err.message.contains("delete_mode = \"tombstone\""),
        "{}",
        err.message
    );
    // The broker still answers: nothing reached its broken code paths.
    let mut sys = build(&section("dedup_lab_t_refuse")).unwrap();
    sys.connect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_is_a_lost_connection_and_bad_config_is_named() {
    let mut s = section("dedup_lab_t_down");
    s.insert("bootstrap".into(), "127.0.0.1:1".into());
    s.insert("timeout_s".into(), 3.into());
    let err = build(&s).unwrap().connect().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ConnectionLost, "{}", err.message);
    assert!(err.message.contains("127.0.0.1:1"), "{}", err.message);

    for (key, value, named) in [
        ("bootstrap", toml::Value::from("localhost"), "host:port"),
        ("prefix", "events".into(), "lab-owned"),
        ("delete_mode", "truncate".into(), "tombstone"),
        ("compression", "brotli".into(), "zstd"),
        ("batch_bytes", (64 << 20).into(), "batch_bytes"),
    ] {
        let mut s = section("dedup_lab_t_down");
        s.insert(key.into(), value);
        let e = build(&s).err().expect("refused").to_string();
        assert!(e.contains(named), "{key}: {e}");
    }
}

/// The lab section under `prefix` with `changes`, as [`section`] otherwise.
fn section_with(prefix: &str, changes: &[(&str, toml::Value)]) -> toml::Table {
    let mut s = section(prefix);
    for (k, v) in changes {
        s.insert((*k).to_string(), v.clone());
    }
    s
}

/// `files` random files of 16 KiB at `grade`: incompressible, so bytes stored are bytes kept.
fn random(dir: &std::path::Path, grade: u8, files: u32) -> DataSet {
    DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade,
            files,
            sizes: SizeSpec::Fixed(16 << 10),
            seed: 13,
            ..Default::default()
        },
        dir,
    )
    .unwrap()
}

/// The topics of the newest reset under `prefix` (those sharing its stamp), by container.
fn newest_reset(prefix: &str) -> Vec<String> {
    let stamp = |t: &str| -> Option<u64> { t[prefix.len() + 1..].split('-').next()?.parse().ok() };
    let all = topics(&format!("{prefix}-"));
    let newest = all
        .iter()
        .filter_map(|t| stamp(t))
        .max()
        .expect("a lab topic");
    let mut out: Vec<String> = all
        .into_iter()
        .filter(|t| stamp(t) == Some(newest))
        .collect();
    out.sort_by_key(|t| t.rsplit_once("-c").map(|(_, k)| k.parse::<u32>().unwrap()));
    out
}

/// The keys whose latest record in `topic` holds a value, with that value.
fn live(topic: &str) -> HashMap<String, Vec<u8>> {
    latest(topic)
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
}

/// Asserts that `topic` holds exactly the contents `expected` (BLAKE3 hex) as live keys, each
/// value the content its key names.
fn assert_contents(topic: &str, expected: &HashSet<&str>) {
    let held = live(topic);
    let keys: HashSet<&str> = held.keys().map(String::as_str).collect();
    assert_eq!(&keys, expected, "{topic}");
    for (key, value) in &held {
        assert_eq!(blake3::hash(value).to_hex().as_str(), key, "{topic}");
    }
}

/// Waits (bounded) until tansu's file holds `want` records of `topic`.
fn await_stored(topic: &str, want: i64) {
    let deadline = Instant::now() + TIMEOUT;
    while stored_records(topic) != want {
        assert!(
            Instant::now() < deadline,
            "{topic}: tansu holds {} records, not {want}",
            stored_records(topic)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bulk and per-file paths with content keys: the record key is the content's BLAKE3, the
/// topic holds each content once as a live key (read back by a consumer of the test's own),
/// and tansu removes the repeated records at its own maintenance tick, without a request.
#[tokio::test(flavor = "multi_thread")]
async fn content_keys_hold_each_content_once_and_tansu_compacts_repeats_by_itself() {
    let _broker = BROKER.read().await;
    let tmp = tempfile::tempdir().unwrap();
    let prefix = "dedup_lab_kst_content";
    let mut sys = build(&section_with(prefix, &[("keys", "content".into())])).unwrap();
    sys.connect().await.unwrap();
    let ds = random(&tmp.path().join("ds"), 90, 40);
    let files = &ds.manifest.files;
    let distinct: HashSet<&str> = files.iter().map(|f| f.blake3.as_str()).collect();
    assert_eq!(distinct.len(), 4);

    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    let topic = newest(prefix);
    assert_contents(&topic, &distinct);
    assert_eq!(sys.count().await.unwrap(), 4);
    // Every file was produced: tansu keeps a record per file until its maintenance tick
    // compacts the topic (every second in the lab), and then one per content.
    let stored = stored_records(&topic);
    assert!((4..=40).contains(&stored), "{stored}");
    await_stored(&topic, 4);
    assert_eq!(sys.count().await.unwrap(), 4, "compaction keeps the count");
    assert_contents(&topic, &distinct);

    common::reset(sys.as_mut()).await.unwrap();
    let topic = newest(prefix);
    for f in files {
        sys.insert_one(f, ds.read(f).unwrap()).await.unwrap();
    }
    assert_contents(&topic, &distinct);
    assert_eq!(sys.count().await.unwrap(), 4);
    assert_eq!(
        read_topic(&topic).last().unwrap().0,
        39,
        "one record per file"
    );
    common::reset(sys.as_mut()).await.unwrap();
}

/// Deletes with content keys, in the engine's plan: a content's tombstone goes with its last
/// file only. After each, a consumer sees the content gone and every other content intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_content_is_tombstoned_with_its_last_file_and_the_others_stay_intact() {
    let _broker = BROKER.read().await;
    let tmp = tempfile::tempdir().unwrap();
    let prefix = "dedup_lab_kst_deletes";
    let mut sys = build(&section_with(prefix, &[("keys", "content".into())])).unwrap();
    sys.connect().await.unwrap();
    // 16 files at U75: 4 contents, 4 files each.
    let ds = random(&tmp.path().join("ds"), 75, 16);
    let files = &ds.manifest.files;
    common::reset(sys.as_mut()).await.unwrap();
    let topic = newest(prefix);
    for f in files {
        sys.insert_one(f, ds.read(f).unwrap()).await.unwrap();
    }
    let layout = Layout {
        keys: KeyMode::Content,
        containers: 1,
    };
    let mut held: HashSet<&str> = files.iter().map(|f| f.blake3.as_str()).collect();
    assert_eq!(sys.count().await.unwrap(), 4);
    let plan = layout.deletes(files);
    assert_eq!(plan.iter().filter(|d| **d).count(), 4);
    for (f, _) in files.iter().zip(plan).filter(|(_, d)| *d) {
        sys.delete_one(f).await.unwrap();
        held.remove(f.blake3.as_str());
        assert_eq!(latest(&topic)[&f.blake3], None, "{} is tombstoned", f.name);
        assert_contents(&topic, &held);
        assert_eq!(sys.count().await.unwrap(), held.len() as u64);
    }
    let err = sys.delete_one(&files[0]).await.unwrap_err();
    assert!(err.message.contains("is not in topic"), "{}", err.message);
    let note = sys.maintenance().await.unwrap();
    assert!(note.contains("one per key (4 tombstones)"), "{note}");
    assert_eq!(
        read_topic(&topic).len(),
        4,
        "a tombstone per content is left"
    );
    assert_eq!(sys.count().await.unwrap(), 0);
    common::reset(sys.as_mut()).await.unwrap();
}

/// A run with content keys at U90: the count after each insert is the distinct contents;
/// tansu's pages grow by the records produced, one per file (L), less what a maintenance tick
/// of tansu compacted before the stage's probe, and the maintenance stage gives everything
/// back.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_with_content_keys_counts_contents_and_compaction_gives_back_the_repeats() {
    let _broker = BROKER.write().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(
        tmp.path(),
        "kafka",
        &[
            ("prefix", "dedup_lab_kst_run".into()),
            ("keys", "content".into()),
        ],
    );
    let results = tmp.path().join("results");
    let out = run_system(&config, "kafka", "random_binary", "0,90", 40, &results);
    assert!(out.status.success(), "{}", text(&out));
    let exp = experiment_dir(&results);
    let records = journal(&exp);
    assert!(
        !records
            .iter()
            .any(|r| matches!(r, Record::AttemptFailed { .. })),
        "{records:?}"
    );
    let stages = stage_records(&records);
    assert_eq!(stages.len(), 8);
    for grade in [0, 90] {
        let manifest = Manifest::read(&dataset_dir(
            &exp.join("datasets"),
            1,
            PayloadType::RandomBinary,
            grade,
        ))
        .unwrap();
        let distinct: HashSet<&str> = manifest.files.iter().map(|f| f.blake3.as_str()).collect();
        let of = |stage: Stage| {
            stages
                .iter()
                .find(|s| s.cell.grade == grade && s.stage == stage)
                .unwrap()
        };
        let pages = |s: &StageRecord, after: bool| {
            let p = &s.probes["sqlite"];
            let r = if after { &p.after } else { &p.before };
            r.bytes().unwrap() as f64
        };
        for stage in [Stage::BulkInsert, Stage::PerfileInsert] {
            let s = of(stage);
            assert_eq!(s.rows_after, distinct.len() as u64, "U{grade} {stage}");
            let grown = pages(s, true) - pages(s, false);
            let (l, u) = (s.logical_bytes as f64, s.unique_bytes as f64);
            assert!(
                grown >= 0.9 * u && grown <= 1.1 * l,
                "U{grade} {stage}: grew {grown} for U {u}, L {l}"
            );
        }
        assert_eq!(of(Stage::PerfileDelete).rows_after, 0);
        let note = of(Stage::Maintenance).note.clone().unwrap();
        assert!(
            note.contains(&format!("one per key ({} tombstones)", distinct.len())),
            "{note}"
        );
        // After compaction the topic holds a tombstone per content: its pages are back.
        let back = pages(of(Stage::Maintenance), true) - pages(of(Stage::PerfileInsert), false);
        let l = of(Stage::PerfileInsert).logical_bytes as f64;
        assert!(back.abs() < 0.05 * l, "U{grade}: {back} bytes left");
    }
}

/// Four containers are four topics per reset, files spread by id modulo 4; with content keys
/// a content repeated in another topic is stored there again. A reset retires every topic of
/// the reset before, and a later run with one container works in the same prefix.
#[tokio::test(flavor = "multi_thread")]
async fn four_containers_are_four_topics_and_resets_retire_them_all() {
    let _broker = BROKER.read().await;
    let tmp = tempfile::tempdir().unwrap();
    let prefix = "dedup_lab_kst_spread";
    let ds = random(&tmp.path().join("ds"), 50, 40);
    let files = &ds.manifest.files;

    let mut sys = build(&section_with(prefix, &[("containers", 4.into())])).unwrap();
    sys.connect().await.unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    let spread = newest_reset(prefix);
    let stamp = spread[0].strip_suffix("-c0").expect("container 0 first");
    assert_eq!(
        spread,
        (0..4).map(|k| format!("{stamp}-c{k}")).collect::<Vec<_>>()
    );
    for (k, topic) in spread.iter().enumerate() {
        let keys: HashSet<String> = live(topic).into_keys().collect();
        let want: HashSet<String> = files
            .iter()
            .filter(|f| f.id as usize % 4 == k)
            .map(|f| f.name.clone())
            .collect();
        assert_eq!(keys, want, "{topic}");
    }
    assert_eq!(sys.count().await.unwrap(), 40);
    let snap = sys.meter().await.unwrap().snapshot().await.unwrap();
    assert_eq!(snap["records"], 40.0, "the meter sums every topic");
    common::reset(sys.as_mut()).await.unwrap();
    for topic in &spread {
        assert_eq!(stored_records(topic), 0, "{topic} retired");
    }

    let changes = [("containers", 4.into()), ("keys", "content".into())];
    let mut sys = build(&section_with(prefix, &changes)).unwrap();
    sys.connect().await.unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    for f in files {
        sys.insert_one(f, ds.read(f).unwrap()).await.unwrap();
    }
    let spread = newest_reset(prefix);
    let mut entries = 0;
    for (k, topic) in spread.iter().enumerate() {
        let here: HashSet<&str> = files
            .iter()
            .filter(|f| f.id as usize % 4 == k)
            .map(|f| f.blake3.as_str())
            .collect();
        assert_contents(topic, &here);
        entries += here.len();
    }
    let distinct: HashSet<&str> = files.iter().map(|f| f.blake3.as_str()).collect();
    assert!(entries > distinct.len(), "contents repeat across topics");
    assert_eq!(sys.count().await.unwrap(), entries as u64);
    let layout = Layout {
        keys: KeyMode::Content,
        containers: 4,
    };
    for (f, _) in files.iter().zip(layout.deletes(files)).filter(|(_, d)| *d) {
        sys.delete_one(f).await.unwrap();
    }
    assert_eq!(sys.count().await.unwrap(), 0);
    let note = sys.maintenance().await.unwrap();
    assert!(
        note.contains(&format!("one per key ({entries} tombstones)"))
            && note.contains("(4 topics)"),
        "{note}"
    );
    common::reset(sys.as_mut()).await.unwrap();

    // Runs: four containers with name keys, with content keys, then one container.
    for (containers, keys) in [(4, "name"), (4, "content"), (1, "name")] {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with(
            dir.path(),
            "kafka",
            &[
                ("prefix", prefix.into()),
                ("containers", containers.into()),
                ("keys", keys.into()),
            ],
        );
        let results = dir.path().join("results");
        let out = run_system(&config, "kafka", "random_binary", "90", 40, &results);
        assert!(out.status.success(), "{}", text(&out));
        let exp = experiment_dir(&results);
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
        for s in stage_records(&journal(&exp)) {
            let want = if s.stage.inserts() { entries.len() } else { 0 };
            assert_eq!(s.rows_after, want as u64, "{containers} {keys} {}", s.stage);
        }
        // The final reset made the next topics, and retired every one before: no topic of the
        // prefix holds a record (tansu cannot delete one topic alone).
        let newest = newest_reset(prefix);
        assert_eq!(newest.len(), containers as usize);
        assert_eq!(newest[0].ends_with("-c0"), containers > 1, "{newest:?}");
        for topic in topics(&format!("{prefix}-")) {
            if !topic.ends_with("-registry") {
                assert_eq!(stored_records(&topic), 0, "{topic}");
            }
        }
    }
}
