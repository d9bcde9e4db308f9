//! PostgreSQL against the lab server: counts, sizes checked by independent queries, reclaim,
//! the journal, and an unreachable server; content keys and containers, read by hand.

mod common;

use std::collections::BTreeMap;

use common::layout::{
    Peek, assert_content_run, blake3_hex, exercise, four_then_one, key_column, layout, layout_keys,
    run_u90, shared_contents, table,
};
use common::{
    assert_fails_with, config_with, experiment_dir, journal, lab_section, run, run_in_namespace,
    run_system, stage_records, text,
};
use dedup_lab::dataset::{DataSet, DataSetSpec, PayloadType, SizeSpec};
use dedup_lab::model::{KeyMode, Layout, Record, Stage};
use dedup_lab::systems::{self, System};
use tokio_postgres::NoTls;

/// An independent connection to the lab server, typed by hand from the lab config.
async fn independent() -> tokio_postgres::Client {
    let s = lab_section("postgres");
    let password = std::fs::read_to_string(s["password_file"].as_str().unwrap()).unwrap();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(s["host"].as_str().unwrap())
        .port(s["port"].as_integer().unwrap() as u16)
        .user(s["user"].as_str().unwrap())
        .dbname(s["database"].as_str().unwrap())
        .password(password.trim());
    let (client, conn) = cfg.connect(NoTls).await.expect("connect to lab postgres");
    tokio::spawn(conn);
    client
}

async fn total_relation_size(c: &tokio_postgres::Client, schema: &str) -> i64 {
    c.query_one(
        &format!("SELECT pg_total_relation_size('{schema}.files')"),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[test]
fn run_against_postgres_records_honest_stages() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(
        tmp.path(),
        "postgres",
        &[("schema", "dedup_lab_t_run".into())],
    );
    let results = tmp.path().join("results");
    let out = run_system(&config, "postgres", "random_binary", "0,90", 40, &results);
    assert!(out.status.success(), "{}", text(&out));
    let exp = experiment_dir(&results);
    let records = journal(&exp);
    let stages = stage_records(&records);
    assert_eq!(stages.len(), 8, "one record per stage per cell");
    assert_eq!(
        records
            .iter()
            .filter(|r| matches!(r, Record::CellDone { .. }))
            .count(),
        2
    );
    for grade in [0u8, 90] {
        let manifest = dedup_lab::dataset::Manifest::read(
            &exp.join(format!("datasets/run-1/random_binary-U{grade}")),
        )
        .unwrap();
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
        let bulk = get(Stage::BulkInsert);
        assert_eq!(bulk.rows_after, 40);
        assert_eq!(bulk.logical_bytes, manifest.logical_bytes);
        assert_eq!(bulk.logical_bytes, 40 * 64 * 1024);
        let (b0, b1) = native(Stage::BulkInsert);
        assert!(
            (b1 - b0) as f64 >= 0.9 * bulk.logical_bytes as f64,
            "incompressible data must be stored: grew {} for L {}",
            b1 - b0,
            bulk.logical_bytes
        );
        assert_eq!(get(Stage::PerfileInsert).rows_after, 40);
        assert_eq!(get(Stage::PerfileDelete).rows_after, 0);
        let (empty, full) = native(Stage::PerfileInsert);
        let (_, after_delete) = native(Stage::PerfileDelete);
        let (_, after_maintenance) = native(Stage::Maintenance);
        assert!(full - empty >= 40 * 64 * 1024 * 9 / 10);
        assert!(
            after_delete >= full * 9 / 10,
            "DELETE alone gives no space back"
        );
        assert!(
            after_maintenance <= empty + 64 * 1024,
            "VACUUM FULL returns to near empty: empty {empty}, after {after_maintenance}"
        );
        assert!(get(Stage::PerfileInsert).latency_us.as_ref().unwrap().p50 > 0.0);
        assert!(
            get(Stage::Maintenance)
                .note
                .as_deref()
                .unwrap()
                .contains("VACUUM FULL")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn native_probe_and_counts_match_independent_queries() {
    let tmp = tempfile::tempdir().unwrap();
    let mut section = lab_section("postgres");
    section.insert("schema".into(), "dedup_lab_t_native".into());
    let mut sys = systems::build_from_section("postgres", &section, tmp.path()).unwrap();
    let info = sys.connect().await.unwrap();
    assert_eq!(info.product, "PostgreSQL");
    let ds = DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::StructuredJson,
            grade: 50,
            files: 30,
            sizes: SizeSpec::Range {
                min: 10_000,
                max: 100_000,
            },
            seed: 4,
            ..Default::default()
        },
        &tmp.path().join("ds"),
    )
    .unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    sys.settle().await.unwrap();
    let c = independent().await;
    // The lab config asks for TLS: the adapter's sessions are encrypted.
    let tls: bool = c
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'dedup-lab'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tls);
    let n: i64 = c
        .query_one("SELECT count(*) FROM dedup_lab_t_native.files", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 30);
    assert_eq!(sys.count().await.unwrap(), 30);
    let native = common::native_size(sys.as_mut()).await;
    assert_eq!(
        native as i64,
        total_relation_size(&c, "dedup_lab_t_native").await
    );
    // The snapshot's figures are the catalog's, as typed by hand.
    let snap = sys.meter().await.unwrap().snapshot().await.unwrap();
    let row = c
        .query_one(
            "SELECT pg_relation_size(oid), \
                    pg_total_relation_size(reltoastrelid), pg_indexes_size(oid) \
             FROM pg_class WHERE oid = 'dedup_lab_t_native.files'::regclass",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(snap["heap_bytes"], row.get::<_, i64>(0) as f64);
    assert_eq!(snap["toast_bytes"], row.get::<_, i64>(1) as f64);
    assert_eq!(snap["index_bytes"], row.get::<_, i64>(2) as f64);
    assert_eq!(snap["total_relation_bytes"], native as f64);
    assert!(snap["wal_lsn_bytes"] > 0.0, "{snap:?}");
    // The bytes stored are the files' bytes.
    let row = c
        .query_one(
            "SELECT content FROM dedup_lab_t_native.files WHERE id = 7",
            &[],
        )
        .await
        .unwrap();
    let content: Vec<u8> = row.get(0);
    assert_eq!(
        blake3::hash(&content).to_hex().as_str(),
        ds.manifest.files[7].blake3
    );
    for f in &ds.manifest.files[..5] {
        sys.delete_one(f).await.unwrap();
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM dedup_lab_t_native.files", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 25);
    common::reset(sys.as_mut()).await.unwrap();
    assert_eq!(sys.count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_schema_is_never_dropped() {
    let c = independent().await;
    c.batch_execute(
        "DROP SCHEMA IF EXISTS dedup_lab_foreign CASCADE;
         CREATE SCHEMA dedup_lab_foreign;
         CREATE TABLE dedup_lab_foreign.precious (x int);
         INSERT INTO dedup_lab_foreign.precious VALUES (42);",
    )
    .await
    .unwrap();
    let out = run_in_namespace("postgres", "schema", "dedup_lab_foreign");
    assert_fails_with(&out, 1, &["not created by dedup-lab"]);
    let x: i32 = c
        .query_one("SELECT x FROM dedup_lab_foreign.precious", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 42);
    c.batch_execute("DROP SCHEMA dedup_lab_foreign CASCADE")
        .await
        .unwrap();
}

#[test]
fn unverifiable_tls_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // Without ca_file the lab's own CA is unknown: verification must fail, not be skipped.
    let mut section = lab_section("postgres");
    section.remove("ca_file");
    let mut systems = toml::Table::new();
    systems.insert("postgres".into(), section.into());
    let mut doc = toml::Table::new();
    doc.insert("systems".into(), systems.into());
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, toml::to_string(&doc).unwrap()).unwrap();
    let out = run(&[
        "preflight",
        "--config",
        config.to_str().unwrap(),
        "--systems",
        "postgres",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("certificate") && text(&out).contains("UnknownIssuer"),
        "{}",
        text(&out)
    );
}

#[test]
fn unreachable_server_is_named_and_recorded_as_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with(tmp.path(), "postgres", &[("port", 1.into())]);
    let out = run(&[
        "preflight",
        "--config",
        config.to_str().unwrap(),
        "--systems",
        "postgres",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("127.0.0.1:1") && t.contains("Connection refused"),
        "preflight must name host, port and the OS error: {t}"
    );

    let results = tmp.path().join("results");
    let out = run_system(&config, "postgres", "random_binary", "0,50,90", 5, &results);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let records = journal(&experiment_dir(&results));
    let failed = records
        .iter()
        .filter(|r| matches!(r, Record::AttemptFailed { .. }))
        .count();
    assert_eq!(failed, 3, "one failure per cell (3 grades)");
    assert!(
        !records
            .iter()
            .any(|r| matches!(r, Record::Stage(_) | Record::CellDone { .. })),
        "no successful-looking records"
    );
}

/// The batched multi-row INSERT path CockroachDB uses, run against a real PostgreSQL-wire
/// server: every row arrives intact across batch boundaries; with content keys over four
/// tables each table holds its files' distinct contents.
#[tokio::test(flavor = "multi_thread")]
async fn batched_insert_path_stores_every_row_intact() {
    use dedup_lab::systems::pgwire::{BATCH_ROWS, batched_insert};
    use dedup_lab::systems::postgres::Postgres;
    use dedup_lab::systems::toolkit::Tables;
    let tmp = tempfile::tempdir().unwrap();
    let mut section = lab_section("postgres");
    section.insert("schema".into(), "dedup_lab_t_batch".into());
    let mut sys = systems::build_from_section("postgres", &section, tmp.path()).unwrap();
    sys.connect().await.unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    let files = (BATCH_ROWS * 2 + 7) as u32;
    let ds = DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::Mixed,
            grade: 50,
            files,
            sizes: SizeSpec::Range {
                min: 100,
                max: 20_000,
            },
            seed: 9,
            ..Default::default()
        },
        &tmp.path().join("ds"),
    )
    .unwrap();
    let c = independent().await;
    let tables = Tables::new(Some("dedup_lab_t_batch"), Layout::default());
    batched_insert::<Postgres>(&c, &tables, &ds).await.unwrap();
    assert_eq!(sys.count().await.unwrap(), u64::from(files));
    for f in &ds.manifest.files {
        let row = c
            .query_one(
                "SELECT name, content FROM dedup_lab_t_batch.files WHERE id = $1",
                &[&(f.id as i32)],
            )
            .await
            .unwrap();
        let (name, content): (String, Vec<u8>) = (row.get(0), row.get(1));
        assert_eq!(name, f.name);
        assert_eq!(blake3::hash(&content).to_hex().as_str(), f.blake3);
    }
    common::reset(sys.as_mut()).await.unwrap();

    let spread = layout(KeyMode::Content, 4);
    let (mut sys, mut hand) = adapter("dedup_lab_ksql_batch", spread).await;
    common::reset(sys.as_mut()).await.unwrap();
    let tables = Tables::new(Some("dedup_lab_ksql_batch"), spread);
    batched_insert::<Postgres>(&c, &tables, &ds).await.unwrap();
    common::layout::assert_holds(&mut hand, &ds.manifest.files, spread, "after batches").await;
    common::reset(sys.as_mut()).await.unwrap();
}

/// Two instances of the kind in one config, on the same server: each its own schema, its own
/// column settings (checked in the catalog), its own column in the report.
#[test]
fn two_instances_of_one_kind_run_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let mut systems = toml::Table::new();
    for (name, compression) in [("pg_t_pglz", "pglz"), ("pg_t_lz4", "lz4")] {
        let mut s = lab_section("postgres");
        s.insert("kind".into(), "postgres".into());
        s.insert("compression".into(), compression.into());
        systems.insert(name.into(), s.into());
    }
    let mut doc = toml::Table::new();
    doc.insert("systems".into(), systems.into());
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, toml::to_string(&doc).unwrap()).unwrap();
    let results = tmp.path().join("results");
    let out = run_system(
        &config,
        "pg_t_pglz,pg_t_lz4",
        "text_document",
        "0",
        16,
        &results,
    );
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("pg_t_pglz") && t.contains("pg_t_lz4"), "{t}");
    let exp = experiment_dir(&results);
    let stages = stage_records(&journal(&exp));
    let growth = |system: &str| {
        let s = stages
            .iter()
            .find(|s| s.cell.system == system && s.stage == Stage::BulkInsert)
            .unwrap();
        let p = &s.probes["native"];
        (
            p.after.bytes().unwrap() - p.before.bytes().unwrap(),
            s.logical_bytes,
        )
    };
    let ((pglz, l), (lz4, _)) = (growth("pg_t_pglz"), growth("pg_t_lz4"));
    assert!(
        pglz < l && lz4 < l,
        "text compresses: pglz {pglz}, lz4 {lz4}, L {l}"
    );
    assert_ne!(pglz, lz4, "two codecs, two sizes");
    let report = std::fs::read_to_string(exp.join("summary.md")).unwrap();
    assert!(report.contains("pg_t_pglz") && report.contains("pg_t_lz4"));
    // Each schema's table has its instance's codec; metadata names the kind of each.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = independent().await;
        for (schema, code) in [("dedup_lab_pg_t_pglz", "p"), ("dedup_lab_pg_t_lz4", "l")] {
            let row = c
                .query_one(
                    "SELECT attcompression::text FROM pg_attribute \
                     WHERE attrelid = ($1 || '.files')::regclass AND attname = 'content'",
                    &[&schema],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), code, "{schema}");
            c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await
                .unwrap();
        }
    });
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["servers"]["pg_t_lz4"]["kind"], "postgres");
}

/// A schema read by hand.
struct Hand {
    c: tokio_postgres::Client,
    schema: String,
    layout: Layout,
}

impl Peek for Hand {
    async fn entries(&mut self, k: u32) -> BTreeMap<String, String> {
        let sql = format!(
            "SELECT {}, content FROM {}.{}",
            key_column(self.layout.keys),
            self.schema,
            table(self.layout.containers, k)
        );
        self.c
            .query(&sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), blake3_hex(r.get(1))))
            .collect()
    }

    async fn containers(&mut self) -> Vec<String> {
        self.c
            .query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = $1 AND table_name <> 'dedup_lab_owner' ORDER BY 1",
                &[&self.schema],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

/// The adapter on the lab server in `schema`, laid out as `l`, connected, and its schema read
/// by hand.
async fn adapter(schema: &str, l: Layout) -> (Box<dyn System>, Hand) {
    let mut section = lab_section("postgres");
    section.insert("schema".into(), schema.into());
    section.extend(layout_keys(l).map(|(k, v)| (k.to_string(), v)));
    let tmp = tempfile::tempdir().unwrap();
    let mut sys = systems::build_from_section("postgres", &section, tmp.path()).unwrap();
    sys.connect().await.unwrap();
    let hand = Hand {
        c: independent().await,
        schema: schema.into(),
        layout: l,
    };
    (sys, hand)
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
        let (mut sys, mut hand) = adapter("dedup_lab_ksql_layouts", l).await;
        exercise(sys.as_mut(), &mut hand, l, &ds).await;
    }
}

#[test]
fn content_keys_store_each_content_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut changes = vec![("schema", "dedup_lab_ksql_u90".into())];
    changes.extend(layout_keys(layout(KeyMode::Content, 1)));
    let cfg = config_with(tmp.path(), "postgres", &changes);
    let (stages, manifest) = run_u90(&cfg, "postgres", &tmp.path().join("results"));
    // TOAST chunks, the heap page and the two indexes' first pages come on top of U.
    assert_content_run(&stages, &manifest, "native", 1.5);
}

/// The staging table keeps values uncompressed, so the lab table's own compression setting
/// compresses them: with lz4 on the lab table every stored value is lz4, not the server's
/// default pglz that a compressing staging column would have passed through.
#[tokio::test(flavor = "multi_thread")]
async fn content_key_bulk_path_compresses_with_the_lab_tables_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::TextDocument,
            grade: 50,
            files: 12,
            sizes: SizeSpec::Fixed(32 * 1024),
            seed: 3,
            ..Default::default()
        },
        &tmp.path().join("ds"),
    )
    .unwrap();
    let mut section = lab_section("postgres");
    section.insert("schema".into(), "dedup_lab_ksql_lz4".into());
    section.insert("compression".into(), "lz4".into());
    section.extend(layout_keys(layout(KeyMode::Content, 2)).map(|(k, v)| (k.to_string(), v)));
    let mut sys = systems::build_from_section("postgres", &section, tmp.path()).unwrap();
    sys.connect().await.unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    let c = independent().await;
    for t in ["files_0", "files_1"] {
        let methods: Vec<Option<String>> = c
            .query(
                &format!(
                    "SELECT DISTINCT pg_column_compression(content) FROM dedup_lab_ksql_lz4.{t}"
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(methods, [Some("lz4".to_string())], "{t}");
    }
    common::reset(sys.as_mut()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn four_tables_then_one_in_the_same_schema() {
    let schema = "dedup_lab_ksql_four";
    let mut hand = adapter(schema, Layout::default()).await.1;
    let tmp = tempfile::tempdir().unwrap();
    four_then_one("postgres", tmp.path(), &mut hand, |l| {
        let mut changes = vec![("schema", schema.into())];
        changes.extend(layout_keys(l));
        config_with(tmp.path(), "postgres", &changes)
    })
    .await;
    hand.c
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
