//! MariaDB against the lab server: counts through the journal, the native size checked against
//! hand-typed queries and the tablespace file itself, bytes that round-trip, purge, lost
//! connections, and databases outside or unmarked in the lab namespace; content keys and
//! tables per container, read by hand. Every test uses its own database, so they run in
//! parallel.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use common::layout::{
    Peek, assert_content_run, blake3_hex, exercise, four_then_one, key_column, layout, layout_keys,
    run_u90, shared_contents, table,
};
use common::{
    assert_fails_with, config_with, lab_section, run_in_namespace, run_system, stages, text,
};
use dedup_lab::dataset::{DataSet, DataSetSpec, PayloadType, SizeSpec};
use dedup_lab::model::{ErrorKind, KeyMode, Layout, Stage};
use dedup_lab::systems::{self, System};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

/// An independent connection to the lab server, typed by hand from the lab config.
async fn independent() -> Conn {
    let s = lab_section("mariadb");
    let password = std::fs::read_to_string(s["password_file"].as_str().unwrap()).unwrap();
    let opts = OptsBuilder::default()
        .ip_or_hostname(s["host"].as_str().unwrap())
        .tcp_port(s["port"].as_integer().unwrap() as u16)
        .user(Some(s["user"].as_str().unwrap()))
        .pass(Some(password.trim()))
        .prefer_socket(false);
    Conn::new(opts).await.expect("connect to lab mariadb")
}

async fn count(c: &mut Conn, db: &str) -> u64 {
    c.query_first(format!("SELECT COUNT(*) FROM {db}.files"))
        .await
        .unwrap()
        .unwrap()
}

/// The adapter on the lab server with its own database.
fn adapter(database: &str) -> (Box<dyn System>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut section = lab_section("mariadb");
    section.insert("database".into(), database.into());
    let sys = systems::build_from_section("mariadb", &section, tmp.path()).unwrap();
    (sys, tmp)
}

fn random_files(dir: &std::path::Path, files: u32, seed: u64) -> DataSet {
    DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade: 50,
            files,
            sizes: SizeSpec::Range {
                min: 1,
                max: 100_000,
            },
            seed,
            ..Default::default()
        },
        &dir.join("ds"),
    )
    .unwrap()
}

/// The lab server's tablespace file of `db.files`, from its data directory (the fs probe).
fn ibd(db: &str) -> PathBuf {
    ibd_of(db, "files")
}

/// The lab server's tablespace file of `db.table`.
fn ibd_of(db: &str, table: &str) -> PathBuf {
    let s = lab_section("mariadb");
    PathBuf::from(s["fs_probe"].as_array().unwrap()[0].as_str().unwrap())
        .join(db)
        .join(format!("{table}.ibd"))
}

#[tokio::test(flavor = "multi_thread")]
async fn run_records_counts_growth_reclaim_and_leaves_the_table_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(
        tmp.path(),
        "mariadb",
        &[("database", "dedup_lab_t_run".into())],
    );
    let results = tmp.path().join("results");
    let out = run_system(&config, "mariadb", "random_binary", "0,90", 40, &results);
    assert!(out.status.success(), "{}", text(&out));
    let stages = stages(&results);
    assert_eq!(stages.len(), 8, "one record per stage per cell");
    for grade in [0u8, 90] {
        let get = |st: Stage| {
            stages
                .iter()
                .find(|s| s.cell.grade == grade && s.stage == st)
                .unwrap()
        };
        let native = |st: Stage| {
            let p = &get(st).probes["native"];
            (p.before.bytes().unwrap(), p.after.bytes().unwrap())
        };
        for st in [Stage::BulkInsert, Stage::PerfileInsert] {
            let s = get(st);
            assert_eq!(s.rows_after, 40, "{grade} {st}");
            assert_eq!(s.logical_bytes, 40 * 64 * 1024);
            // Only the native probe: the fs probe reads the whole data directory, which the
            // other tests change in parallel.
            let (before, after) = native(st);
            assert!(
                (after - before) as f64 >= 0.9 * s.logical_bytes as f64,
                "incompressible data must be stored: grew {} for L {}",
                after - before,
                s.logical_bytes
            );
        }
        assert_eq!(get(Stage::PerfileDelete).rows_after, 0);
        assert_eq!(get(Stage::Maintenance).rows_after, 0);
        let (empty, full) = native(Stage::PerfileInsert);
        let (_, after_delete) = native(Stage::PerfileDelete);
        let (_, after_maintenance) = native(Stage::Maintenance);
        assert!(
            after_delete >= full,
            "DELETE gives no space back to the file system: full {full}, after {after_delete}"
        );
        assert!(
            after_maintenance <= empty + 64 * 1024,
            "OPTIMIZE TABLE rebuilds the table to near empty: empty {empty}, after {after_maintenance}"
        );
        let note = get(Stage::Maintenance).note.clone().unwrap();
        assert!(
            note.starts_with("OPTIMIZE TABLE dedup_lab_t_run.files"),
            "{note}"
        );
        assert!(get(Stage::PerfileInsert).latency_us.as_ref().unwrap().p50 > 0.0);
    }
    let mut c = independent().await;
    assert_eq!(
        count(&mut c, "dedup_lab_t_run").await,
        0,
        "the final reset empties the table"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn native_size_is_the_tablespace_and_every_byte_round_trips() {
    let (mut sys, tmp) = adapter("dedup_lab_t_native");
    let info = sys.connect().await.unwrap();
    assert_eq!(info.product, "MariaDB");
    assert!(info.version.starts_with("10.") || info.version.starts_with("11."));
    // Sizes from 1 byte to 100 kB of random bytes: every byte value, including the ones the
    // bulk path escapes (\, TAB, LF, NUL), many times over.
    let ds = random_files(tmp.path(), 60, 5);
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    sys.settle().await.unwrap();
    let mut c = independent().await;
    assert_eq!(count(&mut c, "dedup_lab_t_native").await, 60);
    assert_eq!(sys.count().await.unwrap(), 60);

    let native = common::native_size(sys.as_mut()).await;
    let by_query: u64 = c
        .query_first(
            "SELECT ALLOCATED_SIZE FROM information_schema.INNODB_SYS_TABLESPACES \
             WHERE NAME = 'dedup_lab_t_native/files'",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(native, by_query);
    // The snapshot's figures are the tablespace's and the table's, as typed by hand.
    let snap = sys.meter().await.unwrap().snapshot().await.unwrap();
    let file_size: u64 = c
        .query_first(
            "SELECT FILE_SIZE FROM information_schema.INNODB_SYS_TABLESPACES \
             WHERE NAME = 'dedup_lab_t_native/files'",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap["allocated_size"], native as f64);
    assert_eq!(snap["file_size"], file_size as f64);
    // Commits write the redo log at once (data pages may still wait in the buffer pool).
    assert!(snap["innodb_os_log_written"] > 0.0, "{snap:?}");
    assert_eq!(
        native,
        std::fs::metadata(ibd("dedup_lab_t_native"))
            .unwrap()
            .blocks()
            * 512
    );
    assert!(
        native >= ds.manifest.logical_bytes,
        "{native} < L {}",
        ds.manifest.logical_bytes
    );

    let rows: Vec<(u32, String, Vec<u8>)> = c
        .query("SELECT id, name, content FROM dedup_lab_t_native.files ORDER BY id")
        .await
        .unwrap();
    assert_eq!(rows.len(), 60);
    for ((id, name, content), f) in rows.iter().zip(&ds.manifest.files) {
        assert_eq!((*id, name), (f.id, &f.name));
        assert_eq!(
            blake3::hash(content).to_hex().as_str(),
            f.blake3,
            "file {name}"
        );
    }

    for f in &ds.manifest.files[..15] {
        sys.delete_one(f).await.unwrap();
    }
    assert_eq!(count(&mut c, "dedup_lab_t_native").await, 45);
    let gone: u64 = c
        .query_first("SELECT COUNT(*) FROM dedup_lab_t_native.files WHERE id < 15")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone, 0);
    let err = sys.delete_one(&ds.manifest.files[0]).await.unwrap_err();
    assert!(err.message.contains("removed 0 rows"), "{}", err.message);
    common::reset(sys.as_mut()).await.unwrap();
    assert_eq!(count(&mut c, "dedup_lab_t_native").await, 0);
}

/// Purge frees the pages of deleted rows for reuse. Settling waits for it, so rows inserted
/// right after a settled delete fit into the freed pages; without the wait they would still
/// be occupied and the file would grow by about the size of the new rows.
#[tokio::test(flavor = "multi_thread")]
async fn settle_waits_for_purge_so_deleted_space_is_reused() {
    let (mut sys, tmp) = adapter("dedup_lab_t_purge");
    sys.connect().await.unwrap();
    let first = DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade: 0,
            files: 64,
            sizes: SizeSpec::Fixed(64 * 1024),
            seed: 6,
            ..Default::default()
        },
        &tmp.path().join("first"),
    )
    .unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&first).await.unwrap();
    for f in &first.manifest.files {
        sys.delete_one(f).await.unwrap();
    }
    sys.settle().await.unwrap();
    let purged = common::native_size(sys.as_mut()).await;
    // Same ids and sizes again: the rows were deleted, so the keys are free.
    sys.bulk_insert(&first).await.unwrap();
    let refilled = common::native_size(sys.as_mut()).await;
    assert!(
        refilled - purged < first.manifest.logical_bytes / 4,
        "rows after a settled delete reuse its space: grew {} for L {}",
        refilled - purged,
        first.manifest.logical_bytes
    );
    common::reset(sys.as_mut()).await.unwrap();
}

/// A connection the server kills is reported as lost (so the engine reconnects and retries
/// the cell), and `connect` recovers.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_connection_is_connection_lost_and_connect_recovers() {
    let (mut sys, _tmp) = adapter("dedup_lab_t_kill");
    sys.connect().await.unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    let mut c = independent().await;
    // Hold the table so that the adapter's query waits where we can find it, then kill it.
    c.query_drop("LOCK TABLES dedup_lab_t_kill.files WRITE")
        .await
        .unwrap();
    let counting = tokio::spawn(async move {
        let result = sys.count().await;
        (sys, result)
    });
    let id: u64 = loop {
        let found: Option<u64> = c
            .query_first(
                "SELECT ID FROM information_schema.PROCESSLIST \
                 WHERE INFO = 'SELECT (SELECT count(*) FROM dedup_lab_t_kill.files)'",
            )
            .await
            .unwrap();
        if let Some(id) = found {
            break id;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    c.query_drop(format!("KILL CONNECTION {id}")).await.unwrap();
    let (mut sys, result) = counting.await.unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ConnectionLost, "{}", err.message);
    c.query_drop("UNLOCK TABLES").await.unwrap();
    sys.connect().await.unwrap();
    assert_eq!(sys.count().await.unwrap(), 0);
    common::reset(sys.as_mut()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_fails_without_retry_and_names_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let mut section = lab_section("mariadb");
    section.insert("password_file".into(), wrong.display().to_string().into());
    let mut sys = systems::build_from_section("mariadb", &section, tmp.path()).unwrap();
    let err = sys.connect().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Failed, "{}", err.message);
    assert!(err.message.contains("Access denied"), "{}", err.message);
    assert!(!err.message.contains("not-the-password"));
}

/// Creates the database of `db_table` afresh with a one-row table (x = 42) in it.
async fn plant(c: &mut Conn, db_table: &str) {
    let db = db_table.split('.').next().unwrap();
    c.query_drop(format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db};
         CREATE TABLE {db_table} (x INT); INSERT INTO {db_table} VALUES (42);"
    ))
    .await
    .unwrap();
}

/// The planted row's x, then the database dropped.
async fn unplant(c: &mut Conn, db_table: &str) -> Option<i32> {
    let x = c
        .query_first(format!("SELECT x FROM {db_table}"))
        .await
        .unwrap();
    let db = db_table.split('.').next().unwrap();
    c.query_drop(format!("DROP DATABASE {db}")).await.unwrap();
    x
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_outside_the_lab_database_survive_a_run() {
    let mut c = independent().await;
    plant(&mut c, "dedup_lab_t_neighbour.precious").await;
    let out = run_in_namespace("mariadb", "database", "dedup_lab_t_survive");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        unplant(&mut c, "dedup_lab_t_neighbour.precious").await,
        Some(42)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmarked_database_with_the_lab_name_is_refused() {
    let mut c = independent().await;
    plant(&mut c, "dedup_lab_t_foreign.files").await;
    let out = run_in_namespace("mariadb", "database", "dedup_lab_t_foreign");
    assert_fails_with(&out, 1, &["not created by dedup-lab"]);
    assert_eq!(unplant(&mut c, "dedup_lab_t_foreign.files").await, Some(42));
}

/// `page_compressed = true` creates the lab table with InnoDB page compression, as the catalog
/// says, and compressible data then takes less of the tablespace than incompressible data
/// of the same size.
#[tokio::test(flavor = "multi_thread")]
async fn page_compression_is_a_table_option_that_shrinks_compressible_data() {
    let tmp = tempfile::tempdir().unwrap();
    let mut grown = Vec::new();
    for (db, payload) in [
        ("dedup_lab_t_pc_text", PayloadType::TextDocument),
        ("dedup_lab_t_pc_rand", PayloadType::RandomBinary),
    ] {
        let mut section = lab_section("mariadb");
        section.insert("database".into(), db.into());
        section.insert("page_compressed".into(), true.into());
        let mut sys = systems::build_from_section("mariadb", &section, tmp.path()).unwrap();
        sys.connect().await.unwrap();
        common::reset(sys.as_mut()).await.unwrap();
        let mut c = independent().await;
        let options: String = c
            .exec_first(
                "SELECT CREATE_OPTIONS FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'files'",
                (db,),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(options.contains("PAGE_COMPRESSED`=1"), "{options}");
        let ds = DataSet::generate(
            &DataSetSpec {
                payload,
                grade: 0,
                files: 32,
                sizes: SizeSpec::Fixed(64 * 1024),
                seed: 4,
                ..Default::default()
            },
            &tmp.path().join(db),
        )
        .unwrap();
        let before = common::native_size(sys.as_mut()).await;
        sys.bulk_insert(&ds).await.unwrap();
        sys.settle().await.unwrap();
        grown.push(common::native_size(sys.as_mut()).await - before);
        c.query_drop(format!("DROP DATABASE {db}")).await.unwrap();
    }
    // Pages compress one by one and only whole 4 KiB blocks are punched out: prose keeps
    // about half.
    assert!(
        grown[0] * 4 < grown[1] * 3,
        "text {} bytes vs random {} bytes",
        grown[0],
        grown[1]
    );
}

/// A lab database read by hand.
struct Hand {
    c: Conn,
    db: String,
    layout: Layout,
}

impl Peek for Hand {
    async fn entries(&mut self, k: u32) -> BTreeMap<String, String> {
        let rows: Vec<(String, Vec<u8>)> = self
            .c
            .query(format!(
                "SELECT {}, content FROM {}.{}",
                key_column(self.layout.keys),
                self.db,
                table(self.layout.containers, k)
            ))
            .await
            .unwrap();
        rows.into_iter()
            .map(|(key, content)| (key, blake3_hex(&content)))
            .collect()
    }

    async fn containers(&mut self) -> Vec<String> {
        self.c
            .exec(
                "SELECT TABLE_NAME FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME <> 'dedup_lab_owner' ORDER BY 1",
                (&self.db,),
            )
            .await
            .unwrap()
    }
}

/// The adapter in database `db` laid out as `l`, connected, and the database read by hand.
async fn laid_out(db: &str, l: Layout) -> (Box<dyn System>, Hand, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut section = lab_section("mariadb");
    section.insert("database".into(), db.into());
    section.extend(layout_keys(l).map(|(k, v)| (k.to_string(), v)));
    let mut sys = systems::build_from_section("mariadb", &section, tmp.path()).unwrap();
    sys.connect().await.unwrap();
    let hand = Hand {
        c: independent().await,
        db: db.into(),
        layout: l,
    };
    (sys, hand, tmp)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_layout_stores_deletes_and_keeps_survivors_byte_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = shared_contents(tmp.path());
    for l in [
        layout(KeyMode::Content, 1),
        layout(KeyMode::Content, 4),
        layout(KeyMode::Name, 4),
    ] {
        let (mut sys, mut hand, _tmp) = laid_out("dedup_lab_ksql_layouts", l).await;
        exercise(sys.as_mut(), &mut hand, l, &ds).await;
    }
}

#[test]
fn content_keys_store_each_content_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut changes = vec![("database", "dedup_lab_ksql_u90".into())];
    changes.extend(layout_keys(layout(KeyMode::Content, 1)));
    let cfg = config_with(tmp.path(), "mariadb", &changes);
    let (stages, manifest) = run_u90(&cfg, "mariadb", &tmp.path().join("results"));
    assert_content_run(&stages, &manifest, "native", 1.5);
}

/// With four tables the native size is the allocated bytes of all four tablespace files, the
/// snapshot sums them, and maintenance rebuilds each.
#[tokio::test(flavor = "multi_thread")]
async fn the_meter_and_maintenance_cover_every_table() {
    let db = "dedup_lab_ksql_meter";
    let l = layout(KeyMode::Content, 4);
    let (mut sys, _hand, tmp) = laid_out(db, l).await;
    let ds = random_files(tmp.path(), 40, 8);
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    sys.settle().await.unwrap();
    let files: Vec<u64> = (0..4)
        .map(|k| {
            std::fs::metadata(ibd_of(db, &table(4, k)))
                .unwrap()
                .blocks()
                * 512
        })
        .collect();
    let native = common::native_size(sys.as_mut()).await;
    assert_eq!(native, files.iter().sum::<u64>(), "{files:?}");
    let snap = sys.meter().await.unwrap().snapshot().await.unwrap();
    assert_eq!(snap["allocated_size"], native as f64);
    let note = sys.maintenance().await.unwrap();
    for k in 0..4 {
        assert!(note.contains(&format!("{db}.files_{k}")), "{note}");
    }
    common::reset(sys.as_mut()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn four_tables_then_one_in_the_same_database() {
    let db = "dedup_lab_ksql_four";
    let (_, mut hand, _) = laid_out(db, Layout::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    four_then_one("mariadb", tmp.path(), &mut hand, |l| {
        let mut changes = vec![("database", db.into())];
        changes.extend(layout_keys(l));
        config_with(tmp.path(), "mariadb", &changes)
    })
    .await;
    hand.c
        .query_drop(format!("DROP DATABASE {db}"))
        .await
        .unwrap();
}
