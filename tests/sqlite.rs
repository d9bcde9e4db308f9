//! SQLite with content keys and containers: what each table holds, read with a connection of
//! the test's own, after the bulk path, per-file inserts and every delete of the engine's
//! plan; content-key runs whose size grows by the unique bytes; runs over four tables and a
//! later run over one in the same file.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::layout::{
    Peek, assert_content_run, blake3_hex, config_of, exercise, four_then_one, key_column, layout,
    layout_keys, run_u90, shared_contents, table,
};
use dedup_lab::model::{KeyMode, Layout};
use dedup_lab::systems;
use rusqlite::{Connection, OpenFlags};

const FILE: &str = "dedup_lab_ksql.sqlite";

/// The database file, read by hand.
struct Hand {
    path: PathBuf,
    layout: Layout,
}

impl Hand {
    fn open(&self) -> Connection {
        Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
    }
}

impl Peek for Hand {
    async fn entries(&mut self, k: u32) -> BTreeMap<String, String> {
        let c = self.open();
        let sql = format!(
            "SELECT {}, content FROM {}",
            key_column(self.layout.keys),
            table(self.layout.containers, k)
        );
        let mut st = c.prepare(&sql).unwrap();
        st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .unwrap()
        .map(|r| {
            let (key, content) = r.unwrap();
            (key, blake3_hex(&content))
        })
        .collect()
    }

    async fn containers(&mut self) -> Vec<String> {
        let c = self.open();
        let mut st = c
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name <> 'dedup_lab_owner' ORDER BY name",
            )
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

/// The section of a sqlite instance with its database under `dir`, laid out as `l`.
fn section(dir: &Path, l: Layout) -> toml::Table {
    let mut s = toml::Table::new();
    s.insert("dir".into(), dir.join("db").to_str().unwrap().into());
    s.insert("file".into(), FILE.into());
    s.extend(layout_keys(l).map(|(k, v)| (k.to_string(), v)));
    s
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
        let section = section(tmp.path(), l);
        let mut sys = systems::build_from_section("sqlite", &section, tmp.path()).unwrap();
        let mut hand = Hand {
            path: tmp.path().join("db").join(FILE),
            layout: l,
        };
        exercise(sys.as_mut(), &mut hand, l, &ds).await;
    }
}

#[test]
fn content_keys_store_each_content_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_of(
        tmp.path(),
        "sqlite",
        section(tmp.path(), layout(KeyMode::Content, 1)),
    );
    let (stages, manifest) = run_u90(&cfg, "sqlite", &tmp.path().join("results"));
    // Overflow pages hold a little more than the bytes.
    assert_content_run(&stages, &manifest, "native", 1.2);
}

#[tokio::test(flavor = "multi_thread")]
async fn four_tables_then_one_in_the_same_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hand = Hand {
        path: tmp.path().join("db").join(FILE),
        layout: Layout::default(),
    };
    four_then_one("sqlite", tmp.path(), &mut hand, |l| {
        config_of(tmp.path(), "sqlite", section(tmp.path(), l))
    })
    .await;
}
