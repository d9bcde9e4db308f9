//! Shards of an experiment: which cells a shard runs, and the merge of shard directories into
//! one report.
//!
//! A sharded run writes `<results>/<id>/shards/<I>-of-<N>/`, a complete experiment directory of
//! its own (journal, config, metadata naming the shard and its cells, data sets). `report` of
//! the experiment directory, or of shard directories, checks that every shard ran the same
//! measurement config, merges their journals and writes one report into the experiment
//! directory. Missing and unfinished shards are named; the report of what is there is written
//! all the same.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{self, Resolved, SHARDS};
use crate::error::usage;
use crate::journal::{self, Journal};
use crate::model::{CellKey, Record, Shard, ShardBy};
use crate::results::{self, export::Report};

/// Every cell of the experiment in the order the engine runs them: run, payload, grade,
/// system.
pub fn cells(config: &Resolved) -> Vec<CellKey> {
    let mut out = Vec::new();
    for run in 1..=config.config.experiment.runs {
        for &payload in &config.payloads {
            for &grade in &config.grades {
                for i in &config.systems {
                    out.push(CellKey {
                        system: i.name.clone(),
                        payload,
                        grade,
                        run,
                    });
                }
            }
        }
    }
    out
}

/// The cells this process runs: those of its shard, or `None` (all) when it is not sharded.
pub fn owned(config: &Resolved) -> Option<BTreeSet<CellKey>> {
    let shard = config.shard?;
    let systems: Vec<&str> = config.systems.iter().map(|i| i.name.as_str()).collect();
    Some(
        cells(config)
            .into_iter()
            .enumerate()
            .filter(|(position, key)| match shard.by {
                ShardBy::Cell => shard.owns(*position),
                ShardBy::System => systems
                    .iter()
                    .position(|s| *s == key.system)
                    .is_some_and(|p| shard.owns(p)),
            })
            .map(|(_, key)| key)
            .collect(),
    )
}

/// A shard as its metadata records it: which one, and the cells it owns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// The shard.
    #[serde(flatten)]
    pub shard: Shard,
    /// Its cells, in the engine's order.
    pub cells: Vec<CellKey>,
}

impl ShardMeta {
    /// The shard a run is, with its cells.
    pub fn of(config: &Resolved) -> Option<ShardMeta> {
        let shard = config.shard?;
        let owned = owned(config)?;
        Some(ShardMeta {
            shard,
            cells: cells(config)
                .into_iter()
                .filter(|k| owned.contains(k))
                .collect(),
        })
    }
}

/// What `report` is asked for.
#[derive(Clone, Debug, Default)]
pub struct ReportRequest {
    /// An experiment directory, shard directories of one experiment, or an experiment
    /// directory holding `shards/`.
    pub dirs: Vec<PathBuf>,
    /// Where the merged report goes; default: the experiment directory the shards are in.
    pub out: Option<PathBuf>,
    /// Shards the experiment was split into, when known: shards that never started are then
    /// named too.
    pub shards: Option<u32>,
    /// Wait up to this long for every shard to finish before merging.
    pub wait: Option<Duration>,
}

/// What `report` did.
pub struct ReportOutcome {
    /// The directory the exports were written to.
    pub dir: PathBuf,
    /// The report.
    pub report: Report,
    /// Shards merged.
    pub merged: usize,
    /// Missing and incomplete shards: the report covers less than the experiment.
    pub problems: Vec<String>,
}

/// Builds the report of one experiment directory, or merges shards into one.
pub fn report(req: &ReportRequest) -> anyhow::Result<ReportOutcome> {
    let start = Instant::now();
    let waiting = || req.wait.is_some_and(|limit| start.elapsed() < limit);
    loop {
        // A report that waits may start before any shard has created the directory.
        if waiting() && req.dirs.iter().any(|d| !d.exists()) {
            std::thread::sleep(POLL);
            continue;
        }
        let (parent, shards) = match Found::collect(&req.dirs)? {
            Found::Experiment(dir) => {
                return Ok(ReportOutcome {
                    report: results::report(&dir)?,
                    dir,
                    merged: 0,
                    problems: Vec::new(),
                });
            }
            Found::Shards { parent, shards } => (parent, shards),
        };
        if waiting() && shards.is_empty() {
            std::thread::sleep(POLL);
            continue;
        }
        let set = ShardSet::check(shards, req.shards)?;
        if waiting() && !set.finished() {
            std::thread::sleep(POLL);
        } else {
            return set.merge(req.out.as_deref().or(parent.as_deref()));
        }
    }
}

/// How often `report --wait` looks at the shards.
const POLL: Duration = Duration::from_secs(2);

/// What the directories given to `report` are.
enum Found {
    /// One experiment that is not sharded.
    Experiment(PathBuf),
    /// Shard directories, and the experiment directory they are in when they share one.
    Shards {
        parent: Option<PathBuf>,
        shards: Vec<ShardDir>,
    },
}

impl Found {
    fn collect(dirs: &[PathBuf]) -> anyhow::Result<Found> {
        let mut experiments = Vec::new();
        let mut shards = Vec::new();
        let mut parents = BTreeSet::new();
        for dir in dirs {
            let has_journal = dir.join(journal::FILE).exists();
            let nested = dir.join(SHARDS);
            if nested.is_dir() {
                if has_journal {
                    return Err(usage(format!(
                        "{} holds both a journal and shards ({}): it was run whole and split; \
                         move one of them aside and report the other",
                        dir.display(),
                        nested.display()
                    )));
                }
                parents.insert(dir.clone());
                for entry in std::fs::read_dir(&nested)
                    .with_context(|| format!("reading {}", nested.display()))?
                {
                    // Only directories can be shards; a stray file is not one.
                    let path = entry?.path();
                    if path.is_dir() {
                        shards.push(ShardDir::open(&path)?);
                    }
                }
            } else if let Some(shard) = ShardDir::recognize(dir)? {
                if let Some(p) = shard.experiment_dir() {
                    parents.insert(p);
                }
                shards.push(shard);
            } else if has_journal {
                experiments.push(dir.clone());
            } else {
                return Err(usage(format!(
                    "{} has no journal ({}) and no shards: it is not an experiment directory; \
                     give the directory `dedup-lab run` printed",
                    dir.display(),
                    journal::FILE
                )));
            }
        }
        match (experiments.len(), shards.is_empty()) {
            (1, true) => Ok(Found::Experiment(experiments.remove(0))),
            (0, _) => Ok(Found::Shards {
                parent: (parents.len() == 1).then(|| parents.pop_first()).flatten(),
                shards,
            }),
            _ => Err(usage(format!(
                "{} is a whole experiment, not a shard: give one experiment directory, or the \
                 shard directories of one experiment",
                experiments[0].display()
            ))),
        }
    }
}

/// What a shard's `metadata.json` says (the rest of it is not needed here).
#[derive(Deserialize)]
struct Written {
    experiment: String,
    finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    shard: Option<ShardMeta>,
}

/// One shard directory as found.
struct ShardDir {
    dir: PathBuf,
    index: u32,
    count: u32,
    /// Its metadata, once the run has written it.
    written: Option<Written>,
}

impl ShardDir {
    /// A directory inside `shards/`: its name must say which shard it is.
    fn open(dir: &Path) -> anyhow::Result<ShardDir> {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let Some((index, count)) = Shard::parse_dir_name(&name) else {
            return Err(usage(format!(
                "{} is not a shard directory (named I-of-N, e.g. 2-of-3); move it out of {}",
                dir.display(),
                dir.parent().unwrap_or(dir).display()
            )));
        };
        let written = read_metadata(dir)?;
        if let Some(meta) = written.as_ref().and_then(|w| w.shard.as_ref())
            && (meta.shard.index, meta.shard.count) != (index, count)
        {
            return Err(usage(format!(
                "{} holds shard {} but is named {name}: rename it {}",
                dir.display(),
                meta.shard,
                meta.shard.dir_name()
            )));
        }
        Ok(ShardDir {
            dir: dir.to_path_buf(),
            index,
            count,
            written,
        })
    }

    /// A directory given by itself: a shard when its metadata says so, or when it is named
    /// like one inside a `shards/` directory (a shard that has not written metadata yet).
    fn recognize(dir: &Path) -> anyhow::Result<Option<ShardDir>> {
        let named = dir.parent().and_then(Path::file_name) == Some(SHARDS.as_ref())
            && dir
                .file_name()
                .is_some_and(|n| Shard::parse_dir_name(&n.to_string_lossy()).is_some());
        let sharded = read_metadata(dir)?.is_some_and(|w| w.shard.is_some());
        if named || sharded {
            ShardDir::open(dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The experiment directory it is in, when it sits in one's `shards/`.
    fn experiment_dir(&self) -> Option<PathBuf> {
        let parent = self.dir.parent()?;
        (parent.file_name()? == SHARDS).then(|| parent.parent().map(Path::to_path_buf))?
    }

    fn name(&self) -> String {
        format!(
            "shard {}/{} ({})",
            self.index,
            self.count,
            self.dir.display()
        )
    }

    fn meta(&self) -> Option<&ShardMeta> {
        self.written.as_ref()?.shard.as_ref()
    }
}

fn read_metadata(dir: &Path) -> anyhow::Result<Option<Written>> {
    let path = dir.join(super::metadata::FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The shards of one experiment, checked to belong together.
struct ShardSet {
    count: u32,
    shards: Vec<ShardDir>,
}

impl ShardSet {
    /// Refuses shards of different splits, the same shard twice, and shards whose
    /// measurement config (seed included) or experiment differ.
    fn check(mut shards: Vec<ShardDir>, expected: Option<u32>) -> anyhow::Result<ShardSet> {
        shards.sort_by_key(|s| s.index);
        let counts: BTreeSet<u32> = shards.iter().map(|s| s.count).chain(expected).collect();
        let count = match counts.len() {
            0 => {
                return Err(usage(
                    "no shard directories found: run the shards first (`dedup-lab run --shard \
                     I/N`), or give their directories",
                ));
            }
            1 => counts.into_iter().next().expect("one count"),
            _ => {
                return Err(usage(format!(
                    "the shards belong to different splits ({}){}: merge the shards of one \
                     split; move the others aside",
                    shards
                        .iter()
                        .map(|s| format!("{}-of-{}", s.index, s.count))
                        .collect::<Vec<_>>()
                        .join(", "),
                    expected
                        .map(|n| format!(", and {n} shards were expected"))
                        .unwrap_or_default()
                )));
            }
        };
        for pair in shards.windows(2) {
            if pair[0].index == pair[1].index {
                return Err(usage(format!(
                    "shard {}/{count} is given twice: {} and {}; give each shard once",
                    pair[0].index,
                    pair[0].dir.display(),
                    pair[1].dir.display()
                )));
            }
        }
        let started: Vec<&ShardDir> = shards.iter().filter(|s| s.meta().is_some()).collect();
        if let Some(first) = started.first() {
            let config = |s: &ShardDir| -> anyhow::Result<config::Config> {
                let path = s.dir.join(super::CONFIG);
                let text =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
            };
            let identity = config(first)?.identity();
            let experiment = |s: &ShardDir| s.written.as_ref().map(|w| w.experiment.clone());
            let by = |s: &ShardDir| s.meta().map(|m| m.shard.by);
            for s in &started[1..] {
                let diff = config::diff(&identity, &config(s)?.identity());
                if !diff.is_empty() {
                    return Err(usage(format!(
                        "{} was run with another config than {}:\n  {}\nthey are not shards \
                         of one experiment; merge shards run with one config and seed",
                        s.name(),
                        first.name(),
                        diff.join("\n  ")
                    )));
                }
                if experiment(s) != experiment(first) || by(s) != by(first) {
                    return Err(usage(format!(
                        "{} is of experiment {} split by {}, {} of experiment {} split by {}; \
                         merge the shards of one experiment",
                        s.name(),
                        experiment(s).unwrap_or_default(),
                        by(s).unwrap_or_default(),
                        first.name(),
                        experiment(first).unwrap_or_default(),
                        by(first).unwrap_or_default()
                    )));
                }
            }
        }
        Ok(ShardSet { count, shards })
    }

    /// Whether every shard ran to its end (complete, or finished with failed cells).
    fn finished(&self) -> bool {
        self.shards.len() == self.count as usize
            && self.shards.iter().all(|s| {
                s.written.as_ref().is_some_and(|w| w.finished_at.is_some())
                    || s.meta().is_some_and(|m| {
                        journal_of(s).is_ok_and(|r| unfinished(&m.cells, &r).is_empty())
                    })
            })
    }

    /// Merges the journals into one report in `out`, naming what is missing.
    fn merge(self, out: Option<&Path>) -> anyhow::Result<ReportOutcome> {
        let out = out.ok_or_else(|| {
            usage(
                "the shards are not in one experiment directory's shards/: give --out DIR for \
                 the merged report",
            )
        })?;
        let mut problems = Vec::new();
        let present: HashSet<u32> = self.shards.iter().map(|s| s.index).collect();
        for index in (1..=self.count).filter(|i| !present.contains(i)) {
            problems.push(format!(
                "shard {index}/{} is missing: no {}-of-{} directory; run it with --shard \
                 {index}/{} ({}={})",
                self.count,
                index,
                self.count,
                self.count,
                crate::model::INDEX_ENV,
                index - 1
            ));
        }
        let mut records = Vec::new();
        let mut trace = Vec::new();
        let mut scanned = HashSet::new();
        let mut experiment = None;
        for s in &self.shards {
            let Some(meta) = s.meta() else {
                problems.push(format!(
                    "{} has not started: it has no metadata yet",
                    s.name()
                ));
                continue;
            };
            let journal = journal_of(s)?;
            trace.extend(results::trace::read(&s.dir)?);
            let owned: HashSet<&CellKey> = meta.cells.iter().collect();
            if let Some(stray) = journal
                .iter()
                .find_map(|r| cell_of(r).filter(|c| !owned.contains(c)))
            {
                return Err(usage(format!(
                    "{} holds cell {stray}, which is not among its own: its directory was \
                     written by another run; move it aside",
                    s.name()
                )));
            }
            let left = unfinished(&meta.cells, &journal);
            if !left.is_empty() {
                let failed = failed_cells(&journal);
                let n_failed = left.iter().filter(|c| failed.contains(*c)).count();
                problems.push(format!(
                    "{} is incomplete: {} of {} cells have no completed attempt ({n_failed} \
                     failed, {} not run{}), e.g. {}; run the shard again to resume it",
                    s.name(),
                    left.len(),
                    meta.cells.len(),
                    left.len() - n_failed,
                    match s.written.as_ref().and_then(|w| w.finished_at) {
                        Some(_) => "",
                        None => "; it has not finished",
                    },
                    left[0]
                ));
            }
            experiment.get_or_insert_with(|| {
                s.written
                    .as_ref()
                    .map(|w| w.experiment.clone())
                    .unwrap_or_default()
            });
            // Every shard scans the data sets it uses; the scans of one data set are equal.
            records.extend(journal.into_iter().filter(|r| match r {
                Record::DataSetScan {
                    run,
                    payload,
                    grade,
                    ..
                } => scanned.insert((*run, *payload, *grade)),
                _ => true,
            }));
        }
        std::fs::create_dir_all(out)
            .with_context(|| format!("creating the report directory {}", out.display()))?;
        let id = experiment.unwrap_or_else(|| {
            out.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let report = results::write_report(out, &id, &records, trace)?;
        Ok(ReportOutcome {
            dir: out.to_path_buf(),
            report,
            merged: self.shards.iter().filter(|s| s.meta().is_some()).count(),
            problems,
        })
    }
}

fn journal_of(s: &ShardDir) -> anyhow::Result<Vec<Record>> {
    let path = s.dir.join(journal::FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    Journal::read(&path)
}

/// The cell a record is about, if any.
fn cell_of(r: &Record) -> Option<&CellKey> {
    match r {
        Record::Stage(s) => Some(&s.cell),
        Record::CellDone { cell, .. } | Record::AttemptFailed { cell, .. } => Some(cell),
        _ => None,
    }
}

/// The cells among `cells` without a completed attempt in `records`.
fn unfinished<'a>(cells: &'a [CellKey], records: &[Record]) -> Vec<&'a CellKey> {
    let done: HashSet<&CellKey> = records
        .iter()
        .filter_map(|r| match r {
            Record::CellDone { cell, .. } => Some(cell),
            _ => None,
        })
        .collect();
    cells.iter().filter(|c| !done.contains(c)).collect()
}

/// The cells with at least one failed attempt.
fn failed_cells(records: &[Record]) -> HashSet<&CellKey> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::AttemptFailed { cell, .. } => Some(cell),
            _ => None,
        })
        .collect()
}

/// Cells per shard, for the plan: how many cells and which systems each shard runs.
pub fn describe(config: &Resolved) -> Option<String> {
    let shard = config.shard?;
    let owned = owned(config)?;
    let mut systems: BTreeMap<usize, &str> = BTreeMap::new();
    for k in &owned {
        if let Some(p) = config.systems.iter().position(|i| i.name == k.system) {
            systems.insert(p, &config.systems[p].name);
        }
    }
    Some(format!(
        "shard {shard} (by {}): {} of {} cells, systems {}\n",
        shard.by,
        owned.len(),
        cells(config).len(),
        systems.into_values().collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::experiment::{RunOptions, run};
    use crate::results::derive::Row;

    /// The embedded systems (sqlite, fs), 2 payloads × 2 grades × 2 runs of 4 files: 16 cells.
    fn config(results: &Path, seed: u64) -> Resolved {
        let mut c = Config::default();
        c.experiment.results_dir = results.to_path_buf();
        c.experiment.runs = 2;
        c.experiment.seed = seed;
        c.experiment.payloads = vec!["random_binary".into(), "uuid_keys".into()];
        c.experiment.grades = vec![0, 50];
        c.dataset.files = 4;
        c.dataset.file_size = crate::dataset::SizeSpec::Fixed(4096);
        c.resolve().unwrap()
    }

    async fn run_shard(config: &Resolved, index: u32, count: u32, by: ShardBy) {
        let config = Resolved {
            shard: Some(Shard { index, count, by }),
            ..config.clone()
        };
        let outcome = run(&config, &RunOptions::default()).await.unwrap();
        assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    }

    /// What each row counts, without what timing decides, sorted.
    fn counted(rows: &[Row]) -> Vec<String> {
        let mut v: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {} U{} run{} {} {}: files {} L {} U {} rows {}",
                    r.system,
                    r.payload,
                    r.grade,
                    r.run,
                    r.stage,
                    r.probe,
                    r.files,
                    r.logical_bytes,
                    r.unique_bytes,
                    r.rows_after
                )
            })
            .collect();
        v.sort();
        v
    }

    fn request(dirs: &[&Path]) -> ReportRequest {
        ReportRequest {
            dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn shards_are_disjoint_and_cover_every_cell() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path(), 1);
        for by in [ShardBy::System, ShardBy::Cell] {
            let mut seen = BTreeSet::new();
            for index in 1..=3 {
                let shard = Resolved {
                    shard: Some(Shard {
                        index,
                        count: 3,
                        by,
                    }),
                    ..c.clone()
                };
                let mine = owned(&shard).unwrap();
                if by == ShardBy::System {
                    let systems: BTreeSet<&str> = mine.iter().map(|k| k.system.as_str()).collect();
                    assert!(
                        systems.len() <= 1,
                        "{by}: one system per shard: {systems:?}"
                    );
                }
                for k in mine {
                    assert!(seen.insert(k.clone()), "{by}: {k} in two shards");
                }
            }
            assert_eq!(seen.into_iter().collect::<Vec<_>>().len(), cells(&c).len());
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn merged_shards_count_what_one_process_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let single = config(&tmp.path().join("single"), 1);
        let outcome = run(&single, &RunOptions::default()).await.unwrap();
        let whole = results::report(&outcome.dir).unwrap();
        assert_eq!(whole.summary.cells_done, 16);

        let split = config(&tmp.path().join("split"), 1);
        assert_eq!(split.id, single.id, "the shard count is not part of the id");
        for by in [ShardBy::Cell, ShardBy::System] {
            let root = split.experiment_root();
            let _ = std::fs::remove_dir_all(&root);
            run_shard(&split, 2, 2, by).await;
            run_shard(&split, 1, 2, by).await;
            let merged = report(&request(&[&root])).unwrap();
            assert!(merged.problems.is_empty(), "{:?}", merged.problems);
            assert_eq!(merged.merged, 2);
            assert_eq!(merged.dir, root);
            assert_eq!(merged.report.summary.cells_done, 16, "{by}");
            assert_eq!(counted(&merged.report.rows), counted(&whole.rows), "{by}");
            assert!(root.join("results.csv").exists());
            // The shard directories given one by one merge the same, into the same place.
            let dirs: Vec<PathBuf> = (1..=2)
                .map(|i| root.join(SHARDS).join(format!("{i}-of-2")))
                .collect();
            let again = report(&request(&[&dirs[0], &dirs[1]])).unwrap();
            assert_eq!(again.dir, root);
            assert_eq!(counted(&again.report.rows), counted(&whole.rows));
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn missing_and_foreign_shards_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let split = config(&tmp.path().join("a"), 1);
        run_shard(&split, 1, 3, ShardBy::System).await;
        let root = split.experiment_root();
        // The directory's name says there are 3.
        let partial = report(&request(&[&root])).unwrap();
        assert_eq!(partial.problems.len(), 2, "{:?}", partial.problems);
        assert!(partial.problems[0].contains("shard 2/3 is missing"));
        assert!(partial.problems[0].contains("JOB_COMPLETION_INDEX=1"));
        assert_eq!(partial.report.summary.cells_done, 8);

        // A shard of another seed, and one of another split, are refused.
        let other = config(&tmp.path().join("b"), 2);
        run_shard(&other, 2, 3, ShardBy::System).await;
        let mine = root.join(SHARDS).join("1-of-3");
        let theirs = other.experiment_root().join(SHARDS).join("2-of-3");
        let err = report(&request(&[&mine, &theirs])).err().unwrap();
        assert_eq!(crate::error::exit_code(&err), 2);
        assert!(err.to_string().contains("another config"), "{err}");
        assert!(err.to_string().contains("experiment.seed: 1 -> 2"), "{err}");
        let err = report(&ReportRequest {
            shards: Some(2),
            ..request(&[&mine])
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("different splits"), "{err}");
        let err = report(&request(&[&mine, &mine])).err().unwrap();
        assert!(err.to_string().contains("given twice"), "{err}");
    }
}
