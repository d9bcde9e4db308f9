//! CockroachDB over the PostgreSQL wire, against a server given in DEDUP_LAB_COCKROACH_URL
//! (e.g. postgresql://root@127.0.0.1:26257/defaultdb). No CockroachDB server can be installed
//! in the lab, so without the variable these tests are reported as ignored, with the reason.

mod common;

use common::{run_system, stages, text};
use dedup_lab::dataset::{DataSet, DataSetSpec, PayloadType, SizeSpec};
use dedup_lab::model::Stage;
use dedup_lab::systems;

/// A `[systems.cockroachdb]` section from the URL; its password goes through an environment
/// variable, never into the config.
fn section(schema: &str) -> toml::Table {
    let url = std::env::var("DEDUP_LAB_COCKROACH_URL").expect("DEDUP_LAB_COCKROACH_URL");
    let cfg: tokio_postgres::Config = url.parse().expect("a postgresql:// URL");
    let mut t = toml::Table::new();
    if let Some(tokio_postgres::config::Host::Tcp(h)) = cfg.get_hosts().first() {
        t.insert("host".into(), h.clone().into());
    }
    if let Some(p) = cfg.get_ports().first() {
        t.insert("port".into(), i64::from(*p).into());
    }
    if let Some(u) = cfg.get_user() {
        t.insert("user".into(), u.into());
    }
    if let Some(d) = cfg.get_dbname() {
        t.insert("database".into(), d.into());
    }
    if let Some(pw) = cfg.get_password() {
        // SAFETY of set_var: tests in this binary set it to the same value.
        unsafe {
            std::env::set_var(
                "DEDUP_LAB_TEST_COCKROACH_PASSWORD",
                String::from_utf8_lossy(pw).as_ref(),
            )
        };
        t.insert(
            "password_env".into(),
            "DEDUP_LAB_TEST_COCKROACH_PASSWORD".into(),
        );
    }
    t.insert("schema".into(), schema.into());
    t
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(cockroach),
    ignore = "set DEDUP_LAB_COCKROACH_URL to run against CockroachDB"
)]
async fn adapter_loads_counts_and_deletes() {
    let tmp = tempfile::tempdir().unwrap();
    let section = section("dedup_lab_t_crdb");
    let mut sys = systems::build_from_section("cockroachdb", &section, tmp.path()).unwrap();
    let info = sys.connect().await.unwrap();
    assert_eq!(info.product, "CockroachDB");
    assert!(sys.meter().await.unwrap().native_copies().unwrap() >= 1);
    let ds = DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade: 50,
            files: 150,
            sizes: SizeSpec::Fixed(16 * 1024),
            seed: 2,
            ..Default::default()
        },
        &tmp.path().join("ds"),
    )
    .unwrap();
    common::reset(sys.as_mut()).await.unwrap();
    sys.bulk_insert(&ds).await.unwrap();
    assert_eq!(sys.count().await.unwrap(), 150);
    for f in &ds.manifest.files[..10] {
        sys.delete_one(f).await.unwrap();
    }
    assert_eq!(sys.count().await.unwrap(), 140);
    let mut meter = sys.meter().await.unwrap();
    meter.native_size().await.unwrap();
    assert!(meter.snapshot().await.unwrap()["ranges"] >= 1.0);
    assert!(sys.maintenance().await.unwrap().contains("gc.ttlseconds"));
    common::reset(sys.as_mut()).await.unwrap();
    assert_eq!(sys.count().await.unwrap(), 0);
}

#[test]
#[cfg_attr(
    not(cockroach),
    ignore = "set DEDUP_LAB_COCKROACH_URL to run against CockroachDB"
)]
fn run_records_every_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut systems = toml::Table::new();
    systems.insert("cockroachdb".into(), section("dedup_lab_t_crdb_run").into());
    let mut doc = toml::Table::new();
    doc.insert("systems".into(), systems.into());
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, toml::to_string(&doc).unwrap()).unwrap();
    let results = tmp.path().join("results");
    let out = run_system(&config, "cockroachdb", "random_binary", "0", 20, &results);
    assert!(out.status.success(), "{}", text(&out));
    let stages = stages(&results);
    assert_eq!(stages.len(), 4);
    assert_eq!(
        stages
            .iter()
            .find(|s| s.stage == Stage::BulkInsert)
            .unwrap()
            .rows_after,
        20
    );
}
