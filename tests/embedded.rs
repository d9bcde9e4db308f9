//! The embedded default (sqlite + fs) end to end through the binary, and bad input; fs with
//! content keys and containers, its directories read by hand.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::layout::{
    Peek, assert_content_run, blake3_hex, config_of, exercise, layout, layout_keys, run_u90,
    shared_contents,
};
use common::{experiment_dir, journal, run, stage_records, text};
use dedup_lab::dataset::{Manifest, PayloadType};
use dedup_lab::model::{KeyMode, Layout, Record, Stage};
use dedup_lab::systems;

#[test]
fn embedded_run_measures_every_stage_and_fs_stores_random_data_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let args = [
        "run",
        "--results-dir",
        results.to_str().unwrap(),
        "--payloads",
        "random_binary,structured_json",
        "--runs",
        "2",
        "--files",
        "24",
        "--no-progress",
        "--details",
    ];
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("perfile_delete") && stdout.contains("24 cells measured"),
        "{stdout}"
    );

    let exp = experiment_dir(&results);
    let records = journal(&exp);
    // 2 systems x 2 payloads x 3 grades x 2 runs = 24 cells, 4 stage records and 1 done each.
    let stages = stage_records(&records);
    let done = records
        .iter()
        .filter(|r| matches!(r, Record::CellDone { .. }))
        .count();
    assert_eq!((stages.len(), done), (96, 24));
    for s in &stages {
        let manifest = Manifest::read(
            &exp.join("datasets")
                .join(format!("run-{}", s.cell.run))
                .join(format!("{}-U{}", s.cell.payload, s.cell.grade)),
        )
        .unwrap();
        let expect_rows = match s.stage {
            Stage::BulkInsert | Stage::PerfileInsert => 24,
            _ => 0,
        };
        assert_eq!(s.rows_after, expect_rows, "{} {}", s.cell, s.stage);
        if s.stage != Stage::Maintenance {
            assert_eq!(
                s.logical_bytes, manifest.logical_bytes,
                "{} {}",
                s.cell, s.stage
            );
        }
        assert_eq!(s.unique_bytes, manifest.unique_bytes);
        assert!(
            s.probes["fs"].after.bytes().is_some(),
            "fs probe failed: {s:?}"
        );
        // EDR of random data on a plain directory: stored as written.
        if s.cell.system == "fs" && s.cell.payload == PayloadType::RandomBinary && s.stage.inserts()
        {
            let p = &s.probes["fs"];
            let delta = p.after.bytes().unwrap() as f64 - p.before.bytes().unwrap() as f64;
            let edr = s.logical_bytes as f64 / delta;
            assert!(
                (0.9..=1.1).contains(&edr),
                "{} {}: EDR {edr}",
                s.cell,
                s.stage
            );
        }
        // SQLite's own size function agrees with the file it reports on.
        if s.cell.system == "sqlite" {
            assert!(s.probes["native"].after.bytes().is_some());
        }
    }
    // Data set files were removed after use; manifests stay.
    let ds = exp.join("datasets/run-1/random_binary-U50");
    assert!(ds.join("manifest.json").exists());
    assert!(!ds.join("000000.bin").exists());
    for f in [
        "results.csv",
        "summary.json",
        "summary.md",
        "metadata.json",
        "config.json",
    ] {
        assert!(exp.join(f).exists(), "missing {f}");
    }
    let csv = std::fs::read_to_string(exp.join("results.csv")).unwrap();
    // One line per stage record and probe: sqlite has 2 probes, fs 1.
    assert_eq!(csv.lines().count() - 1, 48 * 2 + 48);

    // Running again resumes: nothing left to do, same journal measurements.
    let again = run(&args);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("0 cells measured, 24 already complete")
    );
    let stages_after = journal(&exp)
        .iter()
        .filter(|r| matches!(r, Record::Stage(_)))
        .count();
    assert_eq!(stages_after, 96);

    // --repeat measures one system's cells again; reports count the newest attempt only.
    let mut repeat: Vec<&str> = args.to_vec();
    repeat.extend(["--repeat", "fs"]);
    let again = run(&repeat);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("12 cells measured, 12 already complete"),
        "{}",
        text(&again)
    );
    let records = journal(&exp);
    let fs_done = records
        .iter()
        .filter(|r| matches!(r, Record::CellDone { cell, .. } if cell.system == "fs"))
        .count();
    assert_eq!(fs_done, 24);
    assert_eq!(dedup_lab::results::derive::completed(&records).len(), 96);

    // The same id with a different config is refused, naming what differs.
    let id = exp.file_name().unwrap().to_str().unwrap().to_string();
    let mut changed: Vec<&str> = args.to_vec();
    changed.extend(["--id", &id, "--seed", "99"]);
    let refused = run(&changed);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("experiment.seed: 1 -> 99"),
        "{}",
        text(&refused)
    );

    // report re-derives the same table from the journal.
    let rep = run(&["report", exp.to_str().unwrap()]);
    assert!(rep.status.success(), "{}", text(&rep));
    assert!(String::from_utf8_lossy(&rep.stdout).contains("24 cells complete"));
}

#[test]
fn dry_run_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let out = run(&[
        "run",
        "--dry-run",
        "--results-dir",
        results.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("108 cells") && t.contains("nothing was written"),
        "{t}"
    );
    assert!(!results.exists(), "dry run created {}", results.display());
}

#[test]
fn bad_input_exits_2_with_the_fix() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--systems", "postgress"],
            "system kinds: sqlite, fs, postgres",
        ),
        (&["run", "--payloads", "jpeg"], "valid names: random_binary"),
        (
            &["run", "--config", "/nonexistent/dedup.toml"],
            "/nonexistent/dedup.toml",
        ),
        (&["run", "--grades", "0,100"], "0 to 99"),
        (&["run", "--grades", "-5"], "0 to 99"),
        (&["run", "--files", "0"], "at least one file"),
        (&["run", "--file-size", "0"], "zero"),
        (&["run", "--systems", "postgres"], "[systems.postgres]"),
        (&["report", "/nonexistent"], "no journal"),
    ];
    for (args, want) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(want), "{args:?}: {}", text(&out));
        assert!(
            text(&out).lines().count() < 10,
            "one clear message: {}",
            text(&out)
        );
    }
}

#[test]
fn embedded_namespaces_not_created_by_dedup_lab_are_refused_and_survive() {
    let tmp = tempfile::tempdir().unwrap();
    // A directory that happens to have a lab-looking name, holding someone's file.
    let store = tmp.path().join("dedup_lab_store");
    std::fs::create_dir(&store).unwrap();
    std::fs::write(store.join("precious.txt"), "keep me").unwrap();
    // A SQLite database with the lab file name but someone else's table.
    let sqlite_dir = tmp.path().join("sqlite");
    std::fs::create_dir(&sqlite_dir).unwrap();
    let db = rusqlite::Connection::open(sqlite_dir.join("dedup_lab.sqlite")).unwrap();
    db.execute_batch("CREATE TABLE precious (x INTEGER); INSERT INTO precious VALUES (42);")
        .unwrap();
    drop(db);
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[systems.fs]\ndir = \"{}\"\n[systems.sqlite]\ndir = \"{}\"\n",
            store.display(),
            sqlite_dir.display()
        ),
    )
    .unwrap();
    let results = tmp.path().join("results");
    let out = run(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--payloads",
        "uuid_keys",
        "--grades",
        "0",
        "--runs",
        "1",
        "--files",
        "5",
        "--no-progress",
        "--results-dir",
        results.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("fs:") && t.contains("not created by dedup-lab"),
        "{t}"
    );
    assert!(
        t.contains("sqlite:") && t.contains("refusing to touch it"),
        "{t}"
    );
    assert_eq!(
        std::fs::read_to_string(store.join("precious.txt")).unwrap(),
        "keep me"
    );
    let db = rusqlite::Connection::open(sqlite_dir.join("dedup_lab.sqlite")).unwrap();
    let x: i64 = db
        .query_row("SELECT x FROM precious", [], |r| r.get(0))
        .unwrap();
    assert_eq!(x, 42);
    // Unsafe namespaces are not retried: one failed attempt per cell.
    let failed = journal(&experiment_dir(&results))
        .iter()
        .filter(|r| matches!(r, Record::AttemptFailed { .. }))
        .count();
    assert_eq!(failed, 2);
}

/// An fs store read by hand: the store directory is the one container unless it holds
/// container directories.
struct Store {
    dir: PathBuf,
    layout: Layout,
}

/// The names in `dir` other than the marker, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".dedup-lab-owned")
        .collect();
    names.sort();
    names
}

impl Peek for Store {
    async fn entries(&mut self, k: u32) -> BTreeMap<String, String> {
        let dir = match self.layout.containers {
            1 => self.dir.clone(),
            _ => self.dir.join(format!("files_{k}")),
        };
        listing(&dir)
            .into_iter()
            .map(|name| {
                let bytes = std::fs::read(dir.join(&name)).unwrap();
                (name, blake3_hex(&bytes))
            })
            .collect()
    }

    async fn containers(&mut self) -> Vec<String> {
        let dirs: Vec<String> = listing(&self.dir)
            .into_iter()
            .filter(|n| self.dir.join(n).is_dir())
            .collect();
        if dirs.is_empty() {
            vec![".".into()]
        } else {
            dirs
        }
    }
}

/// The section of an fs instance with its store under `dir`, laid out as `l`.
fn fs_section(dir: &Path, l: Layout) -> toml::Table {
    let mut s = toml::Table::new();
    s.insert(
        "dir".into(),
        dir.join("dedup_lab_store").to_str().unwrap().into(),
    );
    s.extend(layout_keys(l).map(|(k, v)| (k.to_string(), v)));
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn fs_every_layout_stores_deletes_and_keeps_survivors_byte_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = shared_contents(tmp.path());
    for l in [
        layout(KeyMode::Content, 1),
        layout(KeyMode::Content, 4),
        layout(KeyMode::Name, 4),
    ] {
        let section = fs_section(tmp.path(), l);
        let mut sys = systems::build_from_section("fs", &section, tmp.path()).unwrap();
        let mut store = Store {
            dir: tmp.path().join("dedup_lab_store"),
            layout: l,
        };
        exercise(sys.as_mut(), &mut store, l, &ds).await;
    }
}

#[test]
fn fs_content_keys_store_each_content_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_of(
        tmp.path(),
        "fs",
        fs_section(tmp.path(), layout(KeyMode::Content, 1)),
    );
    let (stages, manifest) = run_u90(&cfg, "fs", &tmp.path().join("results"));
    // A directory allocates the files' bytes, rounded up to blocks.
    assert_content_run(&stages, &manifest, "fs", 1.1);
}

#[test]
fn fs_four_directories_then_the_store_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let four = ["files_0", "files_1", "files_2", "files_3"];
    for (i, (l, want)) in [
        (layout(KeyMode::Name, 4), &four[..]),
        (layout(KeyMode::Content, 4), &four),
        (layout(KeyMode::Name, 1), &[]),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = config_of(tmp.path(), "fs", fs_section(tmp.path(), l));
        let results = tmp.path().join(format!("results-{i}"));
        let out = common::run_system(&cfg, "fs", "random_binary", "50", 24, &results);
        assert!(out.status.success(), "{l:?}: {}", text(&out));
        // The final reset leaves the layout's containers, empty, and none of an earlier one.
        let store = tmp.path().join("dedup_lab_store");
        assert_eq!(listing(&store), want, "{l:?}");
        for d in want {
            assert_eq!(listing(&store.join(d)), Vec::<String>::new());
        }
    }
}

/// `--keys name,content --containers 1,4` runs each embedded instance four ways, each its own
/// column of the report: content keys store each content once per container.
#[test]
fn layout_lists_put_each_variant_beside_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let out = run(&[
        "run",
        "--results-dir",
        results.to_str().unwrap(),
        "--keys",
        "name,content",
        "--containers",
        "1,4",
        "--payloads",
        "random_binary",
        "--grades",
        "0,90",
        "--runs",
        "1",
        "--files",
        "20",
        "--no-progress",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let exp = experiment_dir(&results);
    let stages = stage_records(&journal(&exp));
    let manifest = Manifest::read(&exp.join("datasets/run-1/random_binary-U90")).unwrap();
    let entries = |containers: u32| {
        manifest
            .files
            .iter()
            .map(|f| (f.id % containers, f.blake3.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64
    };
    for kind in ["sqlite", "fs"] {
        for (variant, expected) in [
            (kind.to_string(), 20),
            (format!("{kind}_c4"), 20),
            (format!("{kind}_content"), entries(1)),
            (format!("{kind}_content_c4"), entries(4)),
        ] {
            let bulk = stages
                .iter()
                .find(|s| {
                    s.cell.system == variant && s.cell.grade == 90 && s.stage == Stage::BulkInsert
                })
                .unwrap_or_else(|| panic!("no U90 bulk insert of {variant}"));
            assert_eq!(bulk.rows_after, expected, "{variant}");
        }
    }
    assert!(
        entries(1) < entries(4),
        "copies sit in other containers too"
    );
    // The answer names every variant.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in ["sqlite_content_c4", "fs_c4", "fs_content"] {
        assert!(stdout.contains(name), "{name}: {stdout}");
    }
}
