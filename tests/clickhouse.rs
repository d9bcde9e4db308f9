//! ClickHouse against the lab server: counts, the native probe checked with clickhouse-client,
//! deletes awaited, identical blocks all stored, foreign databases left alone, lost
//! connections classified, content keys (ReplacingMergeTree: counted once per content before
//! merges, stored once after OPTIMIZE FINAL; shared contents deleted with their last file) and
//! containers (tables `files_<k>`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use common::{
    assert_fails_with, config_with, lab_section, run_in_namespace, run_system, stages, text,
};
use dedup_lab::dataset::{DataSet, DataSetSpec, FileEntry, PayloadType, SizeSpec};
use dedup_lab::model::ErrorKind;
use dedup_lab::model::{KeyMode, Layout, Stage};
use dedup_lab::results::derive::{Row, rows as derived_rows};
use dedup_lab::systems::{self, System};

/// Native-protocol port of the lab server (the config section names only the HTTP port).
const LAB_TCP_PORT: u16 = 19000;

/// clickhouse-client against the lab server over the native protocol — independent of the
/// adapter's HTTP path. Credentials go in a mode-0600 client config, never on the command line.
fn cli(query: &str) -> String {
    let s = lab_section("clickhouse");
    let password = std::fs::read_to_string(s["password_file"].as_str().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.xml");
    std::fs::write(
        &config,
        format!(
            "<config><host>127.0.0.1</host><port>{LAB_TCP_PORT}</port><user>{}</user>\
             <password>{}</password></config>",
            s["user"].as_str().unwrap(),
            password.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new("clickhouse-client")
        .arg(format!("--config-file={}", config.display()))
        .arg("--query")
        .arg(query)
        .output()
        .expect("clickhouse-client");
    assert!(
        out.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn number(query: &str) -> u64 {
    cli(query).parse().unwrap()
}

fn rows(db: &str) -> u64 {
    number(&format!("SELECT count() FROM {db}.files"))
}

/// The adapter built from the lab section with `changes`.
async fn adapter(changes: &[(&str, toml::Value)]) -> Box<dyn System> {
    let mut section = lab_section("clickhouse");
    for (k, v) in changes {
        section.insert((*k).to_string(), v.clone());
    }
    let mut sys =
        systems::build_from_section("clickhouse", &section, std::path::Path::new(".")).unwrap();
    sys.connect().await.unwrap();
    sys
}

fn data_set(dir: &std::path::Path, payload: PayloadType, grade: u8, files: u32) -> DataSet {
    DataSet::generate(
        &DataSetSpec {
            payload,
            grade,
            files,
            sizes: SizeSpec::Range {
                min: 1000,
                max: 100_000,
            },
            seed: 5,
            ..Default::default()
        },
        &dir.join("ds"),
    )
    .unwrap()
}

/// The on-disk directory of one database in the lab server (18.16 keeps `data/<db>/`).
fn database_dir(db: &str) -> PathBuf {
    let s = lab_section("clickhouse");
    PathBuf::from(s["fs_probe"][0].as_str().unwrap())
        .join("data")
        .join(db)
}

#[test]
fn run_records_counts_incompressible_growth_and_reclaim() {
    let db = "dedup_lab_t_run";
    let tmp = tempfile::tempdir().unwrap();
    // The fs probe reads this test's database only, so parallel tests do not disturb it; the
    // database must exist for its directory to be a valid probe path (an empty database is
    // adopted by the first reset).
    cli(&format!("CREATE DATABASE IF NOT EXISTS {db}"));
    let probe = toml::Value::Array(vec![database_dir(db).display().to_string().into()]);
    let config = config_with(
        tmp.path(),
        "clickhouse",
        &[
            ("database", db.into()),
            ("fs_probe", probe),
            ("wait_for_part_cleanup", true.into()),
        ],
    );
    let results = tmp.path().join("results");
    let out = run_system(&config, "clickhouse", "random_binary", "0", 40, &results);
    assert!(out.status.success(), "{}", text(&out));
    let stages = stages(&results);
    assert_eq!(stages.len(), 4, "one record per stage per cell");
    {
        let grade = 0u8;
        let get = |st: Stage| {
            stages
                .iter()
                .find(|s| s.cell.grade == grade && s.stage == st)
                .unwrap()
        };
        let bytes = |st: Stage, probe: &str| {
            let p = &get(st).probes[probe];
            (p.before.bytes().unwrap(), p.after.bytes().unwrap())
        };
        let bulk = get(Stage::BulkInsert);
        assert_eq!(bulk.rows_after, 40);
        assert_eq!(bulk.logical_bytes, 40 * 64 * 1024);
        for probe in ["native", "fs"] {
            // Random content: LZ4 cannot shrink it and MergeTree stores every duplicate.
            let (before, after) = bytes(Stage::BulkInsert, probe);
            assert!(
                (after - before) as f64 >= 0.9 * bulk.logical_bytes as f64,
                "U{grade} {probe}: grew {} for L {}",
                after - before,
                bulk.logical_bytes
            );
        }
        assert_eq!(get(Stage::PerfileInsert).rows_after, 40);
        assert_eq!(get(Stage::PerfileDelete).rows_after, 0);
        assert_eq!(get(Stage::Maintenance).rows_after, 0);
        let (empty, full) = bytes(Stage::PerfileInsert, "native");
        assert!(full - empty >= 40 * 64 * 1024 * 9 / 10);
        // Each mutation rewrote the parts without the deleted row: the data is gone.
        let (_, after_delete) = bytes(Stage::PerfileDelete, "native");
        assert!(
            after_delete < 64 * 1024,
            "deletes give the space back: {after_delete} bytes left"
        );
        // Settling waited for the replaced parts, so the directory shrank as well.
        let (_, fs_full) = bytes(Stage::PerfileInsert, "fs");
        let (_, fs_after_delete) = bytes(Stage::PerfileDelete, "fs");
        assert!(
            fs_after_delete < fs_full / 4,
            "fs after deletes {fs_after_delete}, full {fs_full}"
        );
        assert!(get(Stage::PerfileDelete).latency_us.as_ref().unwrap().p50 > 0.0);
        assert!(
            get(Stage::Maintenance)
                .note
                .as_deref()
                .unwrap()
                .contains("OPTIMIZE TABLE dedup_lab_t_run.files FINAL")
        );
    }
    assert_eq!(rows(db), 0, "the final reset empties the table");
}

#[tokio::test(flavor = "multi_thread")]
async fn native_probe_and_counts_match_clickhouse_client_and_deletes_are_awaited() {
    let db = "dedup_lab_t_native";
    let tmp = tempfile::tempdir().unwrap();
    let mut sys = adapter(&[("database", db.into())]).await;
    let info = sys.connect().await.unwrap();
    assert_eq!(info.product, "ClickHouse");
    assert_eq!(info.version, cli("SELECT version()"));
    let ds = data_set(tmp.path(), PayloadType::StructuredJson, 50, 30);
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    sys.settle().await.unwrap();
    assert_eq!(rows(db), 30);
    assert_eq!(sys.count().await.unwrap(), 30);
    let by_hand = number(&format!(
        "SELECT sum(bytes_on_disk) FROM system.parts \
         WHERE active AND database = '{db}' AND table = 'files'"
    ));
    assert!(by_hand > 0);
    let mut meter = sys.meter().await.unwrap();
    assert_eq!(meter.native_size().await.unwrap(), by_hand);
    // The snapshot's figures are system.parts' and system.columns', as typed by hand.
    let snap = meter.snapshot().await.unwrap();
    assert_eq!(snap["bytes_on_disk"], by_hand as f64);
    assert_eq!(snap["rows"], 30.0);
    let content = number(&format!(
        "SELECT sum(data_uncompressed_bytes) FROM system.columns \
         WHERE database = '{db}' AND table = 'files' AND name = 'content'"
    ));
    assert_eq!(snap["content_uncompressed_bytes"], content as f64);
    assert!(content >= ds.manifest.logical_bytes, "{content}");
    // The stored bytes are the file's bytes.
    let f = &ds.manifest.files[7];
    let hex = cli(&format!(
        "SELECT hex(content) FROM {db}.files WHERE id = {}",
        f.id
    ));
    let content: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(blake3::hash(&content).to_hex().as_str(), f.blake3);
    let gone: Vec<String> = ds.manifest.files[..5]
        .iter()
        .map(|f| f.id.to_string())
        .collect();
    for f in &ds.manifest.files[..5] {
        sys.delete_one(f).await.unwrap();
        // delete_one returns only once its mutation is done.
        assert_eq!(
            number(&format!(
                "SELECT count() FROM system.mutations WHERE database = '{db}' AND NOT is_done"
            )),
            0
        );
    }
    assert_eq!(rows(db), 25);
    assert_eq!(
        number(&format!(
            "SELECT count() FROM {db}.files WHERE id IN ({})",
            gone.join(", ")
        )),
        0
    );
    common::reset(sys.as_mut()).await.unwrap();
    assert_eq!(rows(db), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_blocks_are_all_stored() {
    let db = "dedup_lab_t_dupes";
    let tmp = tempfile::tempdir().unwrap();
    // Blocks of 1 MiB: one bulk load is several INSERTs, and loading twice repeats each one.
    let mut sys = adapter(&[("database", db.into()), ("bulk_block_mib", 1.into())]).await;
    let ds = data_set(tmp.path(), PayloadType::RandomBinary, 0, 80);
    assert!(ds.manifest.logical_bytes > 3 << 20);
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    let f = &ds.manifest.files[3];
    for _ in 0..3 {
        sys.insert_one(f, ds.read(f).unwrap()).await.unwrap();
    }
    sys.settle().await.unwrap();
    assert_eq!(rows(db), 2 * 80 + 3);
    assert_eq!(
        number(&format!(
            "SELECT count() FROM {db}.files WHERE id = {}",
            f.id
        )),
        2 + 3
    );
    // MergeTree keeps duplicates through a full merge, too.
    sys.maintenance().await.unwrap();
    sys.settle().await.unwrap();
    assert_eq!(sys.count().await.unwrap(), 2 * 80 + 3);
    common::reset(sys.as_mut()).await.unwrap();
}

#[test]
fn foreign_databases_survive_and_an_unmarked_lab_database_is_refused() {
    // Leftovers of an earlier failed run would hold extra rows.
    cli("DROP DATABASE IF EXISTS precious_ch");
    cli("DROP DATABASE IF EXISTS dedup_lab_t_foreign");
    cli("CREATE DATABASE precious_ch");
    cli("CREATE TABLE precious_ch.keep (x UInt8) ENGINE = TinyLog");
    cli("INSERT INTO precious_ch.keep VALUES (42)");
    cli("CREATE DATABASE dedup_lab_t_foreign");
    cli("CREATE TABLE dedup_lab_t_foreign.files (x UInt8) ENGINE = TinyLog");
    cli("INSERT INTO dedup_lab_t_foreign.files VALUES (7)");
    let out = run_in_namespace("clickhouse", "database", "dedup_lab_t_foreign");
    assert_fails_with(&out, 1, &["not created by dedup-lab"]);
    let out = run_in_namespace("clickhouse", "database", "analytics");
    assert_fails_with(&out, 2, &["not a lab-owned name"]);
    let out = run_in_namespace("clickhouse", "database", "dedup_lab_t_ok");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(cli("SELECT x FROM dedup_lab_t_foreign.files"), "7");
    assert_eq!(cli("SELECT x FROM precious_ch.keep"), "42");
    cli("DROP DATABASE dedup_lab_t_foreign");
    cli("DROP DATABASE precious_ch");
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_connections_and_bad_passwords_are_told_apart() {
    let mut section = lab_section("clickhouse");
    // Nothing listens on port 1.
    section.insert("port".into(), 1.into());
    let mut sys =
        systems::build_from_section("clickhouse", &section, std::path::Path::new(".")).unwrap();
    let e = sys.connect().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ConnectionLost, "{}", e.message);
    assert!(e.message.contains("127.0.0.1:1"), "{}", e.message);

    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let mut section = lab_section("clickhouse");
    section.insert("password_file".into(), wrong.display().to_string().into());
    let mut sys =
        systems::build_from_section("clickhouse", &section, std::path::Path::new(".")).unwrap();
    let e = sys.connect().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Failed, "{}", e.message);
    assert!(e.message.contains("password"), "{}", e.message);
    assert!(!e.message.contains("not-the-password"), "{}", e.message);
}

/// `engine = "ReplacingMergeTree"` is the lab table's engine, as `system.tables` says; a codec
/// this old server does not know is refused by the server at the reset, with its message.
#[tokio::test(flavor = "multi_thread")]
async fn the_table_engine_is_a_setting_and_an_unknown_codec_is_the_servers_error() {
    let db = "dedup_lab_t_engine";
    let mut sys = adapter(&[
        ("database", db.into()),
        ("engine", "ReplacingMergeTree".into()),
    ])
    .await;
    common::reset(sys.as_mut()).await.unwrap();
    let engine = cli(&format!(
        "SELECT engine FROM system.tables WHERE database = '{db}' AND name = 'files'"
    ));
    assert_eq!(engine.trim(), "ReplacingMergeTree");
    let mut sys = adapter(&[("database", db.into()), ("codec", "ZSTD(3)".into())]).await;
    let e = common::reset(sys.as_mut()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Failed, "{}", e.message);
    assert!(e.message.contains("creating files"), "{}", e.message);
    cli(&format!("DROP DATABASE {db}"));
}

/// Random files of `kib` KiB at `grade`, from a fixed seed.
fn random_files(dir: &std::path::Path, kib: u64, grade: u8, files: u32) -> DataSet {
    DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade,
            files,
            sizes: SizeSpec::Fixed(kib << 10),
            seed: 11,
            ..Default::default()
        },
        dir,
    )
    .unwrap()
}

/// The adapter on database `db` with `layout`.
async fn layout_adapter(db: &str, layout: Layout) -> Box<dyn System> {
    adapter(&[
        ("database", db.into()),
        ("keys", layout.keys.name().into()),
        ("containers", layout.containers.into()),
    ])
    .await
}

const CONTENT: Layout = Layout {
    keys: KeyMode::Content,
    containers: 1,
};

/// Bytes on disk of the active parts of `db`'s tables, by hand.
fn bytes_on_disk(db: &str) -> u64 {
    number(&format!(
        "SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = '{db}'"
    ))
}

/// The hashes a content-keyed table holds as of FINAL, in order, each checked byte-exact: its
/// content hashes to it.
fn held_hashes(table: &str) -> Vec<String> {
    cli(&format!(
        "SELECT hash, hex(content) FROM {table} FINAL ORDER BY hash"
    ))
    .lines()
    .filter(|l| !l.is_empty())
    .map(|line| {
        let (hash, hex) = line.split_once('\t').unwrap();
        let content: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(blake3::hash(&content).to_hex().as_str(), hash);
        hash.to_string()
    })
    .collect()
}

/// `db.files` as of FINAL holds exactly `held` (hashes), each byte-exact; and no row of any
/// other hash is left, merged or not.
fn assert_holds(db: &str, held: &std::collections::BTreeSet<&str>) {
    let want: Vec<String> = held.iter().map(|h| h.to_string()).collect();
    assert_eq!(held_hashes(&format!("{db}.files")), want);
    assert_eq!(
        number(&format!("SELECT uniqExact(hash) FROM {db}.files")),
        held.len() as u64
    );
}

/// With content keys the table is a ReplacingMergeTree ordered by the hash: a load holds a row
/// per file until a merge, but counts (FINAL) one per content from the start; OPTIMIZE FINAL
/// then keeps one row per content and gives the copies' bytes back. The engine's delete plan
/// removes a hash with the last file holding it and leaves the other contents intact.
///
/// The files are 96 KiB: sorted by hash, copies lie next to each other in the content column,
/// and LZ4 (64 KiB window) would compress away the copies of smaller files before any merge.
#[tokio::test(flavor = "multi_thread")]
async fn content_keys_count_once_merge_to_u_and_deletes_spare_shared_contents() {
    let db = "dedup_lab_kkv_ch_del";
    let tmp = tempfile::tempdir().unwrap();
    let mut sys = layout_adapter(db, CONTENT).await;
    // 12 files, 4 contents held by 3 files each.
    let ds = random_files(&tmp.path().join("ds"), 96, 67, 12);
    let files = &ds.manifest.files;
    let all: std::collections::BTreeSet<&str> = files.iter().map(|f| f.blake3.as_str()).collect();
    assert_eq!(all.len(), 4);

    common::reset(sys.as_mut()).await.unwrap();
    assert_eq!(
        cli(&format!(
            "SELECT engine, sorting_key FROM system.tables WHERE database = '{db}' AND name = 'files'"
        )),
        "ReplacingMergeTree\thash"
    );
    sys.bulk_insert(&ds).await.unwrap();
    sys.settle().await.unwrap();
    // One INSERT, one part: nothing merged, every copy is a row on disk.
    assert_eq!(rows(db), 12);
    assert_holds(db, &all);
    assert_eq!(sys.count().await.unwrap(), 4);
    let loaded = bytes_on_disk(db);
    assert!(loaded >= ds.manifest.logical_bytes, "{loaded}");
    sys.maintenance().await.unwrap();
    sys.settle().await.unwrap();
    assert_eq!(rows(db), 4, "OPTIMIZE FINAL keeps a row per hash");
    assert_holds(db, &all);
    let merged = bytes_on_disk(db);
    assert!(
        (ds.manifest.unique_bytes..ds.manifest.unique_bytes * 11 / 10).contains(&merged),
        "after OPTIMIZE FINAL {merged} bytes for U {}",
        ds.manifest.unique_bytes
    );

    common::reset(sys.as_mut()).await.unwrap();
    for f in files {
        sys.insert_one(f, ds.read(f).unwrap()).await.unwrap();
    }
    sys.settle().await.unwrap();
    assert_holds(db, &all);
    let mut held = all.clone();
    for (f, deletes) in files.iter().zip(CONTENT.deletes(files)) {
        if deletes {
            sys.delete_one(f).await.unwrap();
            held.remove(f.blake3.as_str());
            assert_eq!(
                number(&format!(
                    "SELECT count() FROM {db}.files WHERE hash = '{}'",
                    f.blake3
                )),
                0,
                "every row of the hash is gone"
            );
        }
        assert_holds(db, &held);
        assert_eq!(sys.count().await.unwrap(), held.len() as u64);
    }
    assert!(held.is_empty());
    cli(&format!("DROP DATABASE {db}"));
}

/// The derived rows of a run of random data at U0 and U90 in `db` with `changes`, with the fs
/// probe on the database's directory.
fn run_rows(db: &str, changes: &[(&str, toml::Value)]) -> Vec<Row> {
    let tmp = tempfile::tempdir().unwrap();
    cli(&format!("CREATE DATABASE IF NOT EXISTS {db}"));
    let probe = toml::Value::Array(vec![database_dir(db).display().to_string().into()]);
    let mut all = vec![
        ("database", db.into()),
        ("fs_probe", probe),
        ("wait_for_part_cleanup", true.into()),
    ];
    all.extend(changes.iter().cloned());
    let config = config_with(tmp.path(), "clickhouse", &all);
    let results = tmp.path().join("results");
    let out = run_system(&config, "clickhouse", "random_binary", "0,90", 40, &results);
    assert!(out.status.success(), "{}", text(&out));
    derived_rows(&common::journal(&common::experiment_dir(&results)))
}

fn row<'a>(rows: &'a [Row], probe: &str, grade: u8, stage: Stage) -> &'a Row {
    rows.iter()
        .find(|r| r.probe == probe && r.grade == grade && r.stage == stage)
        .unwrap_or_else(|| panic!("no {probe} row for U{grade} {stage}"))
}

/// Content keys at U90 through the engine: the count is one per content after each insert
/// stage, but the bytes are not: 18.16 writes an inserted block as it is (no merge at insert),
/// so the bulk load's one part holds every copy (ΔP ≈ L); the per-file insert's parts are
/// merged by the server in the background as it pleases, so its growth lies between U and L.
#[test]
fn content_keys_count_u90_once_but_store_every_copy_until_merged() {
    let db = "dedup_lab_kkv_ch_run";
    let by_content = run_rows(db, &[("keys", "content".into())]);
    for stage in [Stage::BulkInsert, Stage::PerfileInsert] {
        assert_eq!(row(&by_content, "native", 0, stage).rows_after, 40);
        let r = row(&by_content, "native", 90, stage);
        assert_eq!(r.rows_after, 4, "{stage}: one row per content, as of FINAL");
        let grown = r.delta_bytes.unwrap() as f64;
        let (u, l) = (r.unique_bytes as f64, r.logical_bytes as f64);
        assert!(
            (u..1.05 * l).contains(&grown),
            "{stage}: grew {grown} for U {u}, L {l}"
        );
    }
    let bulk = row(&by_content, "native", 90, Stage::BulkInsert);
    assert!(
        bulk.delta_bytes.unwrap() as f64 >= 0.95 * bulk.logical_bytes as f64,
        "the bulk load's part holds every copy: {bulk:?}"
    );
    for grade in [0, 90] {
        // The mutations leave empty parts of a few hundred bytes.
        let r = row(&by_content, "native", grade, Stage::PerfileDelete);
        assert_eq!(r.rows_after, 0);
        assert!(r.after_bytes.unwrap() < 4096, "{r:?}");
    }
    assert_eq!(rows(db), 0);
    cli(&format!("DROP DATABASE {db}"));
}

/// Rows of each of `db`'s 4 container tables, as of FINAL with content keys.
fn per_container(db: &str, keys: KeyMode) -> Vec<u64> {
    let last = if keys == KeyMode::Content {
        " FINAL"
    } else {
        ""
    };
    (0..4)
        .map(|k| number(&format!("SELECT count() FROM {db}.files_{k}{last}")))
        .collect()
}

/// What each of 4 containers should hold: its files' entries under `layout`.
fn expected_per_container(layout: Layout, files: &[FileEntry]) -> Vec<u64> {
    (0..4)
        .map(|k| {
            let mine: Vec<FileEntry> = files
                .iter()
                .filter(|f| layout.container_of(f) == k)
                .cloned()
                .collect();
            layout.stored_entries(&mine)
        })
        .collect()
}

/// The lab tables of `db`, as system.tables lists them.
fn file_tables(db: &str) -> Vec<String> {
    cli(&format!(
        "SELECT name FROM system.tables WHERE database = '{db}' AND name LIKE 'files%' \
         ORDER BY name"
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

/// With 4 containers each file goes to the table `files_<id % 4>`, by name or content; runs
/// complete with either; and a reset with one container drops the 4 tables.
#[tokio::test(flavor = "multi_thread")]
async fn four_containers_are_tables_and_a_reset_drops_them_all() {
    let db = "dedup_lab_kkv_ch_c4";
    let tmp = tempfile::tempdir().unwrap();
    // 22 files, 4 contents, in shuffled positions: a content lands in several containers.
    let ds = random_files(&tmp.path().join("ds"), 32, 80, 22);
    for keys in [KeyMode::Name, KeyMode::Content] {
        let layout = Layout {
            keys,
            containers: 4,
        };
        let mut sys = layout_adapter(db, layout).await;
        common::reset(sys.as_mut()).await.unwrap();
        assert_eq!(
            file_tables(db),
            ["files_0", "files_1", "files_2", "files_3"]
        );
        sys.bulk_insert(&ds).await.unwrap();
        sys.settle().await.unwrap();
        let want = expected_per_container(layout, &ds.manifest.files);
        assert!(want.iter().sum::<u64>() > 4, "{want:?}");
        assert_eq!(per_container(db, keys), want, "{}", keys.name());
        assert_eq!(
            sys.count().await.unwrap(),
            layout.stored_entries(&ds.manifest.files)
        );
        let note = sys.maintenance().await.unwrap();
        assert!(
            note.contains(&format!("OPTIMIZE TABLE {db}.files_3 FINAL")),
            "{note}"
        );
        // A delete goes to the file's own table.
        let f = &ds.manifest.files[7];
        sys.delete_one(f).await.unwrap();
        let column = if keys == KeyMode::Name { "id" } else { "hash" };
        let value = if keys == KeyMode::Name {
            f.id.to_string()
        } else {
            format!("'{}'", f.blake3)
        };
        assert_eq!(
            number(&format!(
                "SELECT count() FROM {db}.files_3 WHERE {column} = {value}"
            )),
            0
        );
    }
    // The content-keyed tables are still there: a run with one container drops them.
    let tmp2 = tempfile::tempdir().unwrap();
    let config = config_with(tmp2.path(), "clickhouse", &[("database", db.into())]);
    let results = tmp2.path().join("results");
    let out = tokio::task::spawn_blocking(move || {
        run_system(&config, "clickhouse", "random_binary", "90", 20, &results)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(file_tables(db), ["files"]);
    for keys in ["name", "content"] {
        let rows = tokio::task::spawn_blocking(move || {
            let tmp = tempfile::tempdir().unwrap();
            let config = config_with(
                tmp.path(),
                "clickhouse",
                &[
                    ("database", db.into()),
                    ("keys", keys.into()),
                    ("containers", 4.into()),
                ],
            );
            let results = tmp.path().join("results");
            let out = run_system(&config, "clickhouse", "random_binary", "90", 40, &results);
            assert!(out.status.success(), "{}", text(&out));
            derived_rows(&common::journal(&common::experiment_dir(&results)))
        })
        .await
        .unwrap();
        // The engine checked each count against the layout's entries; content keys hold each
        // of the 4 contents once in every container that has a copy.
        let r = row(&rows, "native", 90, Stage::BulkInsert);
        if keys == "name" {
            assert_eq!(r.rows_after, 40);
        } else {
            assert!((4..=16).contains(&r.rows_after), "{}", r.rows_after);
        }
        // The final reset leaves the 4 tables, empty.
        assert_eq!(
            file_tables(db),
            ["files_0", "files_1", "files_2", "files_3"]
        );
        assert_eq!(per_container(db, KeyMode::Name), [0; 4]);
    }
    cli(&format!("DROP DATABASE {db}"));
}

/// The bulk path keeps an INSERT open per container and ends each at `bulk_block_mib`: with
/// 1 MiB blocks and 20 files of 64 KiB per container, every table gets two INSERTs (block
/// numbers count them, merged or not), and every content of every container is there, whole.
#[tokio::test(flavor = "multi_thread")]
async fn bulk_blocks_end_per_container_with_content_keys() {
    let db = "dedup_lab_kkv_ch_blocks";
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout {
        keys: KeyMode::Content,
        containers: 4,
    };
    let mut sys = adapter(&[
        ("database", db.into()),
        ("keys", "content".into()),
        ("containers", 4.into()),
        ("bulk_block_mib", 1.into()),
    ])
    .await;
    let ds = random_files(&tmp.path().join("ds"), 64, 50, 80);
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    sys.settle().await.unwrap();
    let mut found = std::collections::BTreeSet::new();
    for k in 0..4u32 {
        let inserts = number(&format!(
            "SELECT max(max_block_number) - min(min_block_number) + 1 FROM system.parts \
             WHERE active AND database = '{db}' AND table = 'files_{k}'"
        ));
        assert_eq!(inserts, 2, "files_{k}");
        found.extend(
            held_hashes(&format!("{db}.files_{k}"))
                .into_iter()
                .map(|h| (k, h)),
        );
    }
    let want: std::collections::BTreeSet<(u32, String)> = ds
        .manifest
        .files
        .iter()
        .map(|f| (layout.container_of(f), f.blake3.clone()))
        .collect();
    assert_eq!(found, want);
    assert_eq!(sys.count().await.unwrap(), want.len() as u64);
    cli(&format!("DROP DATABASE {db}"));
}
