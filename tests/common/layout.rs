//! Content keys and containers, checked the same way on every adapter. What a container holds
//! is read by hand (each test file types its own queries into a [`Peek`]); what it should hold
//! is worked out here from the manifest (`file id % containers`, the file's BLAKE3), not by the
//! layout code under test.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use dedup_lab::dataset::{DataSet, DataSetSpec, FileEntry, Manifest, PayloadType, SizeSpec};
use dedup_lab::model::{KeyMode, Layout, Stage, StageRecord};
use dedup_lab::systems::System;

use super::{experiment_dir, run_system, stages, text};

/// A system's containers read by hand, beside the adapter.
pub trait Peek {
    /// What container `k` holds: each entry's key (file name or content hash) → the BLAKE3 of
    /// the bytes stored under it.
    async fn entries(&mut self, k: u32) -> BTreeMap<String, String>;

    /// The names of the namespace's containers (tables, directories), the marker excluded,
    /// sorted.
    async fn containers(&mut self) -> Vec<String>;
}

/// The layout of `keys` over `containers`.
pub fn layout(keys: KeyMode, containers: u32) -> Layout {
    Layout { keys, containers }
}

/// The table of container `k` of `n`: `files` alone, else `files_<k>`.
pub fn table(n: u32, k: u32) -> String {
    if n == 1 {
        "files".into()
    } else {
        format!("files_{k}")
    }
}

/// The column a SQL table keeps each entry's key in.
pub fn key_column(keys: KeyMode) -> &'static str {
    match keys {
        KeyMode::Name => "name",
        KeyMode::Content => "content_key",
    }
}

/// The BLAKE3 of `bytes`, hex.
pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// A section's `keys` and `containers`, for `config_with` and `build_from_section`.
pub fn layout_keys(l: Layout) -> [(&'static str, toml::Value); 2] {
    [
        ("keys", l.keys.name().into()),
        ("containers", i64::from(l.containers).into()),
    ]
}

/// What container `k` of `n` holds once `files` are stored: the entry of each of its files.
pub fn expected(files: &[FileEntry], keys: KeyMode, n: u32, k: u32) -> BTreeMap<String, String> {
    files
        .iter()
        .filter(|f| f.id % n == k)
        .map(|f| {
            let key = match keys {
                KeyMode::Name => f.name.clone(),
                KeyMode::Content => f.blake3.clone(),
            };
            (key, f.blake3.clone())
        })
        .collect()
}

/// Asserts that every container holds exactly the entries of `files`.
pub async fn assert_holds(peek: &mut impl Peek, files: &[FileEntry], l: Layout, when: &str) {
    for k in 0..l.containers {
        assert_eq!(
            peek.entries(k).await,
            expected(files, l.keys, l.containers, k),
            "container {k} of {l:?} {when}"
        );
    }
}

/// 18 random files of 4–16 KiB at U67: 6 contents, most held by files in several containers
/// and by several files of one container.
pub fn shared_contents(dir: &Path) -> DataSet {
    let ds = DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade: 67,
            files: 18,
            sizes: SizeSpec::Range {
                min: 4096,
                max: 16384,
            },
            seed: 12,
            ..Default::default()
        },
        &dir.join("shared"),
    )
    .unwrap();
    let files = &ds.manifest.files;
    // The data set is what the checks need: some content repeats inside a container of 4 and
    // some spreads over several.
    let pairs: HashSet<(u32, &str)> = files.iter().map(|f| (f.id % 4, &*f.blake3)).collect();
    let contents: HashSet<&str> = files.iter().map(|f| &*f.blake3).collect();
    assert_eq!(contents.len(), 6);
    assert!(pairs.len() > contents.len() && pairs.len() < files.len());
    ds
}

/// Drives `sys` (built with layout `l`) as the engine does and reads every container by hand
/// after each step: the bulk path stores each file's entry in its container; per-file inserts
/// do the same; then the engine's delete plan (only the last holder of an entry deletes it)
/// removes each entry with its last file and leaves every other entry intact, byte for byte.
pub async fn exercise(sys: &mut dyn System, peek: &mut impl Peek, l: Layout, ds: &DataSet) {
    let files = &ds.manifest.files;
    let entries = |from: usize| {
        (0..l.containers)
            .map(|k| expected(&files[from..], l.keys, l.containers, k).len() as u64)
            .sum::<u64>()
    };
    super::reset(sys).await.unwrap();
    assert_eq!(peek.containers().await.len(), l.containers as usize);
    sys.bulk_insert(ds).await.unwrap();
    assert_holds(peek, files, l, "after bulk_insert").await;
    assert_eq!(sys.count().await.unwrap(), entries(0));

    super::reset(sys).await.unwrap();
    assert_holds(peek, &[], l, "after a reset").await;
    for f in files {
        sys.insert_one(f, ds.read(f).unwrap()).await.unwrap();
    }
    assert_holds(peek, files, l, "after per-file inserts").await;
    assert_eq!(sys.count().await.unwrap(), entries(0));

    for (i, (f, deletes)) in files.iter().zip(l.deletes(files)).enumerate() {
        if deletes {
            sys.delete_one(f).await.unwrap();
        }
        // Held now: the entries of the files not yet deleted.
        assert_holds(
            peek,
            &files[i + 1..],
            l,
            &format!("after deleting {}", f.name),
        )
        .await;
    }
    assert_eq!(sys.count().await.unwrap(), 0);
    super::reset(sys).await.unwrap();
}

/// Runs `system` from `dir` with four containers, then four with content keys, then one (the
/// config of each written by `config`), and checks by hand after each run that the final reset
/// left the run's tables, empty, and none of an earlier layout's.
pub async fn four_then_one(
    system: &str,
    dir: &Path,
    peek: &mut impl Peek,
    config: impl Fn(Layout) -> PathBuf,
) {
    for (i, l) in [
        layout(KeyMode::Name, 4),
        layout(KeyMode::Content, 4),
        layout(KeyMode::Name, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = config(l);
        let results = dir.join(format!("results-{i}"));
        let out = run_system(&cfg, system, "random_binary", "50", 24, &results);
        assert!(out.status.success(), "{l:?}: {}", text(&out));
        let want: Vec<String> = (0..l.containers).map(|k| table(l.containers, k)).collect();
        assert_eq!(peek.containers().await, want, "{l:?}");
    }
}

/// Writes a config holding `[systems.<name>]` = `section` into `dir`: for embedded systems,
/// which need no lab config.
pub fn config_of(dir: &Path, name: &str, section: toml::Table) -> std::path::PathBuf {
    let mut systems = toml::Table::new();
    systems.insert(name.into(), section.into());
    let mut doc = toml::Table::new();
    doc.insert("systems".into(), systems.into());
    let path = dir.join("config.toml");
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    path
}

/// Appends `[dataset] file_size` to a config written by `config_with`.
pub fn with_file_size(config: &Path, size: &str) {
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(&format!("\n[dataset]\nfile_size = \"{size}\"\n"));
    std::fs::write(config, text).unwrap();
}

/// A run of `system` over `config`: `random_binary` at U90, 40 files, one run; it must
/// succeed. Returns its stage records and the data set's manifest.
pub fn run_u90(config: &Path, system: &str, results: &Path) -> (Vec<StageRecord>, Manifest) {
    let out = run_system(config, system, "random_binary", "90", 40, results);
    assert!(out.status.success(), "{}", text(&out));
    let manifest =
        Manifest::read(&experiment_dir(results).join("datasets/run-1/random_binary-U90")).unwrap();
    (stages(results), manifest)
}

/// Checks a content-key run at U90 on incompressible data: every insert stage leaves one
/// entry per distinct content (counted here from the manifest), the delete stage none, and
/// `probe` grew by about the unique bytes U, not the logical bytes L (the system overwrote or
/// dropped every repeated content), within `slack` of U for the system's allocation overhead.
/// Returns ΔP of each insert stage, for the caller's own checks.
pub fn assert_content_run(
    stages: &[StageRecord],
    manifest: &Manifest,
    probe: &str,
    slack: f64,
) -> Vec<u64> {
    let distinct: HashSet<&str> = manifest.files.iter().map(|f| &*f.blake3).collect();
    assert_eq!(distinct.len(), 4, "40 files at U90");
    let u = manifest.unique_bytes;
    assert_eq!(
        u,
        manifest
            .files
            .iter()
            .filter(|f| f.copy_of.is_none())
            .map(|f| f.size)
            .sum::<u64>()
    );
    let mut deltas = Vec::new();
    for s in stages {
        assert_eq!(
            s.layout.keys,
            KeyMode::Content,
            "the record says which mode ran"
        );
        match s.stage {
            Stage::BulkInsert | Stage::PerfileInsert => {
                assert_eq!(s.rows_after, distinct.len() as u64, "{}", s.stage);
                let p = &s.probes[probe];
                let dp = p.after.bytes().unwrap() - p.before.bytes().unwrap();
                assert!(
                    dp as f64 >= 0.9 * u as f64 && dp as f64 <= slack * u as f64,
                    "{}: ΔP {dp} for U {u}, L {}",
                    s.stage,
                    s.logical_bytes
                );
                assert!(dp < s.logical_bytes / 2, "{}: ΔP {dp} is near L", s.stage);
                deltas.push(dp);
            }
            Stage::PerfileDelete => assert_eq!(s.rows_after, 0),
            Stage::Maintenance => {}
        }
    }
    assert_eq!(deltas.len(), 2);
    deltas
}
