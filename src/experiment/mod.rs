//! The experiment: the cell loop over runs × payloads × grades × systems, with resume,
//! retries and reconnects; the journal records everything.

mod cell;
mod layers;
mod metadata;
pub mod progress;
mod shard;
#[cfg(test)]
mod tests;
mod trace;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backon::{BackoffBuilder as _, ExponentialBuilder};
use chrono::Utc;

use crate::config::{self, Resolved};
use crate::dataset::{self, DataSet, DataSetSpec, PayloadType, rng::derive_seed};
use crate::error::usage;
use crate::journal::{self, Journal};
use crate::model::{CellKey, ErrorKind, Meter, Offline, Record, ServerInfo, Stage, SysError};
use crate::probe::Probes;
use crate::sinks::{SinkContext, SinkStats, Sinks};
use crate::systems::toolkit::ownership::Claim;
use crate::systems::{Instance, System};
use cell::{Attempt, CellError};
use layers::Layers;
pub use metadata::{Metadata, peak_rss_bytes};
use progress::{Progress, Unit};
pub use shard::{ReportOutcome, ReportRequest, ShardMeta, report};
use trace::Tracer;

/// The config the experiment was started with, inside its directory.
pub const CONFIG: &str = "config.json";

/// How `run` behaves beyond the config.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Systems whose cells are redone even if complete.
    pub repeat: Vec<String>,
    /// Show progress: bars on a terminal, plain lines elsewhere.
    pub progress: bool,
}

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    /// The experiment directory.
    pub dir: PathBuf,
    /// Cells completed in this invocation.
    pub completed: usize,
    /// Cells skipped because the journal had them complete.
    pub skipped: usize,
    /// Cells that failed in this invocation, with the last error.
    pub failed: Vec<(CellKey, String)>,
    /// What each configured sink delivered and dropped.
    pub exports: BTreeMap<String, SinkStats>,
}

/// The seed of run `run` (from 1).
pub fn run_seed(config: &Resolved, run: u32) -> u64 {
    derive_seed(config.config.experiment.seed, "run", u64::from(run))
}

/// The data set spec of one (run, payload, grade).
pub fn dataset_spec(config: &Resolved, run: u32, payload: PayloadType, grade: u8) -> DataSetSpec {
    let seed = derive_seed(run_seed(config, run), payload.name(), u64::from(grade));
    config.dataset_spec(payload, grade, seed)
}

/// Where a data set lives inside an experiment directory (or a `generate` output directory).
pub fn dataset_dir(root: &Path, run: u32, payload: PayloadType, grade: u8) -> PathBuf {
    root.join(format!("run-{run}"))
        .join(format!("{}-U{grade}", payload.name()))
}

/// A system instance built from its config section, with its probes.
pub struct Subject {
    /// The instance.
    pub instance: Instance,
    /// The adapter.
    pub sys: Box<dyn System>,
    /// Its probes.
    pub probes: Probes,
}

/// Builds every selected instance from its config section (no connection yet).
/// A sharded run builds only the systems its shard has cells of: a pod talks to its own
/// servers and needs no other's secrets.
pub fn build_systems(config: &Resolved, experiment_dir: &Path) -> anyhow::Result<Vec<Subject>> {
    let owned = shard::owned(config);
    config
        .systems
        .iter()
        .filter(|i| {
            owned
                .as_ref()
                .is_none_or(|o| o.iter().any(|k| k.system == i.name))
        })
        .map(|instance| {
            let (sys, probes) = instance.build(experiment_dir)?;
            Ok(Subject {
                instance: instance.clone(),
                sys,
                probes,
            })
        })
        .collect()
}

/// Builds the systems for a run and refuses configured probe paths that do not exist.
fn build_for_run(config: &Resolved) -> anyhow::Result<Vec<Subject>> {
    let subjects = build_systems(config, &config.experiment_dir())?;
    for s in &subjects {
        s.probes.check_paths(&s.instance.name)?;
    }
    Ok(subjects)
}

/// The system's meter, or a stand-in that says why there is none (its server is away):
/// probes of configured paths and endpoints read through either.
pub async fn meter_or_offline(sys: &mut dyn System) -> Box<dyn Meter> {
    match sys.meter().await {
        Ok(m) => m,
        Err(e) => Box::new(Offline { why: e.message }),
    }
}

/// Prints what a run would do, touching nothing (no server is contacted).
pub async fn plan(config: &Resolved) -> anyhow::Result<String> {
    let dir = config.experiment_dir();
    let systems = build_for_run(config)?;
    let c = &config.config;
    let mut out = format!(
        "experiment {} -> {}\n{} runs x {} payloads x {} grades x {} systems = {} cells, {} stages each ({})\n\
         data sets: {} files of {} bytes each\n\nsystems:\n",
        config.id,
        dir.display(),
        c.experiment.runs,
        config.payloads.len(),
        config.grades.len(),
        systems.len(),
        c.experiment.runs as usize * config.payloads.len() * config.grades.len() * systems.len(),
        Stage::ALL.len(),
        Stage::ALL.map(|s| s.name()).join(", "),
        c.dataset.files,
        c.dataset.file_size,
    );
    if let Some(slice) = shard::describe(config) {
        out.insert_str(out.find("data sets:").unwrap_or(0), &slice);
    }
    let n_systems = systems.len() as u64;
    for mut s in systems {
        let kind = if s.instance.name == s.instance.def.kind {
            String::new()
        } else {
            format!(" ({})", s.instance.def.kind)
        };
        // An embedded system's meter needs no server; a server's native size function is
        // known only once connected.
        let (meter, later) = match s.instance.def.embedded {
            true => (meter_or_offline(s.sys.as_mut()).await, ""),
            false => (
                Box::new(Offline {
                    why: "dry run".into(),
                }) as Box<dyn Meter>,
                " (native: known once connected)",
            ),
        };
        let l = s.instance.layout;
        let layout = match l.is_default() {
            true => String::new(),
            false => format!("  keys: {}, {} containers", l.keys.name(), l.containers),
        };
        out.push_str(&format!(
            "  {:<12} {}{kind}  probes: {}{later}{layout}\n",
            s.instance.name,
            s.sys.target(),
            s.probes.names(meter.as_ref()).join(" ")
        ));
    }
    let mut total = 0u64;
    for run in 1..=c.experiment.runs {
        for &payload in &config.payloads {
            for &grade in &config.grades {
                let (logical, unique) = dataset_spec(config, run, payload, grade).byte_counts();
                // Per system: bulk insert, per-file insert and per-file delete each move L.
                total += 3 * logical * n_systems;
                if run == 1 {
                    out.push_str(&format!(
                        "\n  {payload:<16} U{grade:<2}  L = {logical} bytes, U = {unique} bytes"
                    ));
                }
            }
        }
    }
    out.push_str(&format!(
        "\n\n(data sets shown for run 1)\ntotal bytes moved: {total} ({:.1} MiB)\n\
         dry run: nothing was written to any system or disk.\n",
        total as f64 / (1024.0 * 1024.0)
    ));
    Ok(out)
}

/// Creates the experiment directory, or checks that an existing one was started with the same
/// measurement config; returns its path.
pub fn prepare_dir(config: &Resolved) -> anyhow::Result<PathBuf> {
    let dir = config.experiment_dir();
    let path = dir.join(CONFIG);
    let new = config.config.identity();
    if path.exists() {
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let old: config::Config =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
        let diff = config::diff(&old.identity(), &new);
        if !diff.is_empty() {
            return Err(usage(format!(
                "experiment {} in {} was started with a different config:\n  {}\n\
                 use the original settings to resume it, or choose a new --id",
                config.id,
                dir.display(),
                diff.join("\n  ")
            )));
        }
    } else {
        std::fs::create_dir_all(&dir).map_err(|e| {
            usage(format!(
                "cannot create results directory {}: {e}; choose a writable --results-dir",
                dir.display()
            ))
        })?;
        metadata::write_json(&path, &config.config)?;
    }
    Ok(dir)
}

/// A system with its state in this run.
struct Live {
    sys: Box<dyn System>,
    /// Its meter, made at its first stage and again after a lost connection.
    meter: Option<Box<dyn Meter>>,
    layout: crate::model::Layout,
    probes: Arc<Probes>,
    /// This run's claim on the system's namespace.
    claim: Claim,
    /// Set when the system is unusable for the rest of the run: the error that made it so
    /// (its kind is recorded for every cell it then fails).
    down: Option<(ErrorKind, String)>,
}

/// Runs (or resumes) the experiment.
pub async fn run(config: &Resolved, opts: &RunOptions) -> anyhow::Result<Outcome> {
    for name in &opts.repeat {
        if !config.systems.iter().any(|i| i.name == *name) {
            return Err(usage(format!(
                "--repeat {name}: '{name}' is not among the systems of this experiment ({})",
                config
                    .systems
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let systems = build_for_run(config)?;
    run_subjects(config, systems, opts).await
}

/// Runs (or resumes) the experiment on systems already built: the engine itself, which
/// knows no system.
pub async fn run_subjects(
    config: &Resolved,
    systems: Vec<Subject>,
    opts: &RunOptions,
) -> anyhow::Result<Outcome> {
    let sinks = Arc::new(Sinks::from_config(
        &config.config.export,
        &SinkContext {
            experiment: config.id.clone(),
            kinds: config
                .systems
                .iter()
                .map(|i| (i.name.clone(), i.def.kind.to_string()))
                .collect(),
        },
    )?);
    let dir = prepare_dir(config)?;
    let tracer = Tracer::open(&dir, config.trace, Arc::clone(&sinks))?;
    let (mut journal, records) = Journal::open(&dir.join(journal::FILE))?;
    let mut state = JournalState::new(&records);
    for name in &opts.repeat {
        state.forget(name);
    }
    journal.append(&Record::Session {
        started_at: Utc::now(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
    })?;

    let c = &config.config;
    let ttl = Duration::from_secs(c.experiment.lease_ttl_s);
    let mut live = Vec::new();
    let mut servers: BTreeMap<String, (String, Result<ServerInfo, String>)> = BTreeMap::new();
    for mut subject in systems {
        let connected = subject.sys.connect().await;
        let name = subject.instance.name.clone();
        servers.insert(
            name.clone(),
            (
                subject.instance.def.kind.to_string(),
                connected.clone().map_err(|e| e.message.clone()),
            ),
        );
        let down = match connected {
            Ok(_) => None,
            Err(e) => {
                tracing::error!("{name}: cannot connect: {}", e.message);
                Some((e.kind, format!("cannot connect: {}", e.message)))
            }
        };
        live.push(Live {
            claim: Claim::new(&config.id, &name, ttl),
            probes: Arc::new(subject.probes),
            layout: subject.instance.layout,
            sys: subject.sys,
            meter: None,
            down,
        });
    }
    let mut meta = Metadata::new(config, servers);
    meta.write(&dir)?;

    let layers = Layers::of(config);
    let owned = shard::owned(config);
    let mine = |k: &CellKey| owned.as_ref().is_none_or(|o| o.contains(k));
    let total = match &owned {
        Some(o) => o.len() as u64,
        None => {
            c.experiment.runs as u64
                * (config.payloads.len() * config.grades.len() * live.len()) as u64
        }
    };
    let progress = Progress::new(opts.progress);
    let cells = progress.task("starting", Unit::Cells, Some(total));
    let mut outcome = Outcome {
        dir: dir.clone(),
        completed: 0,
        skipped: 0,
        failed: Vec::new(),
        exports: BTreeMap::new(),
    };
    for run in 1..=c.experiment.runs {
        for &payload in &config.payloads {
            for &grade in &config.grades {
                let keys: Vec<CellKey> = live
                    .iter()
                    .map(|l| CellKey {
                        system: l.sys.name().to_string(),
                        payload,
                        grade,
                        run,
                    })
                    .filter(|k| mine(k))
                    .collect();
                if keys.iter().all(|k| state.complete(k)) {
                    outcome.skipped += keys.len();
                    cells.inc(keys.len() as u64);
                    continue;
                }
                let spec = dataset_spec(config, run, payload, grade);
                let ds_dir = dataset_dir(&dir.join("datasets"), run, payload, grade);
                let ds = {
                    let what = format!("generating {payload} U{grade} run {run}");
                    let task = progress.task(what, Unit::Bytes, Some(spec.byte_counts().0));
                    let (spec, ds_dir, written) = (spec.clone(), ds_dir.clone(), task.counter());
                    tokio::task::spawn_blocking(move || {
                        DataSet::ensure_with(&spec, &ds_dir, &written)
                    })
                    .await??
                };
                let what = format!("scanning {payload} U{grade} run {run}");
                let scan = progress.task(what, Unit::Bytes, Some(ds.manifest.logical_bytes));
                if !state.scanned.contains(&(run, payload, grade))
                    && let Some(potential) = layers.scan_data_set(&ds, scan.counter()).await
                {
                    journal.append(&Record::DataSetScan {
                        run,
                        payload,
                        grade,
                        potential,
                    })?;
                    state.scanned.insert((run, payload, grade));
                }
                drop(scan);
                for l in live.iter_mut() {
                    // A shard split by cell runs some systems' cells of this data set only.
                    let Some(key) = keys.iter().find(|k| k.system == l.sys.name()) else {
                        continue;
                    };
                    if state.complete(key) {
                        outcome.skipped += 1;
                        cells.inc(1);
                        continue;
                    }
                    cells.describe(key.to_string());
                    let result = run_cell(
                        l,
                        &ds,
                        key,
                        &mut state,
                        &mut journal,
                        &Steps {
                            retry: &c.retry,
                            layers: &layers,
                            progress: &progress,
                            sinks: &sinks,
                            tracer: &tracer,
                        },
                    )
                    .await?;
                    match result {
                        Ok(()) => {
                            outcome.completed += 1;
                            if !progress.is_bars() {
                                tracing::info!("{key} complete");
                            }
                        }
                        Err(e) => outcome.failed.push((key.clone(), e)),
                    }
                    cells.inc(1);
                }
                if !c.dataset.keep {
                    dataset::remove_files(&ds)?;
                }
            }
        }
    }
    drop(cells);
    // The directory's final files (metadata with the sinks' counts, exports, report) are
    // written before the sinks that take the directory (git) get it.
    drop(tracer);
    let sinks = Arc::try_unwrap(sinks)
        .map_err(|_| anyhow::anyhow!("a trace sampler outlived its stage (a bug)"))?;
    let exports = sinks
        .finish(&dir, |streamed| {
            meta.exports = streamed.clone();
            meta.finish(&dir)?;
            crate::results::report(&dir).map(drop)
        })
        .await?;
    // The sinks that took the directory (git) have counts now too.
    if exports != meta.exports {
        meta.exports = exports.clone();
        meta.write(&dir)?;
    }
    outcome.exports = exports;
    Ok(outcome)
}

/// How cells are run: retries, the storage layer's steps, progress.
#[derive(Clone, Copy)]
struct Steps<'a> {
    retry: &'a config::RetryConfig,
    layers: &'a Layers,
    progress: &'a Progress,
    sinks: &'a Sinks,
    tracer: &'a Tracer,
}

/// Runs one cell with bounded attempts; returns `Err(last error)` when it failed for good.
/// A journal failure is returned as the outer error: the run cannot go on without it.
async fn run_cell(
    l: &mut Live,
    ds: &DataSet,
    key: &CellKey,
    state: &mut JournalState,
    journal: &mut Journal,
    steps: &Steps<'_>,
) -> anyhow::Result<Result<(), String>> {
    let Steps {
        retry,
        layers,
        progress,
        sinks,
        tracer,
    } = *steps;
    let mut last = String::new();
    for _ in 0..retry.max_attempts {
        let attempt = state.next_attempt(key);
        if let Some((kind, why)) = &l.down {
            let error = format!("{} not attempted: {why}", key.system);
            journal.append(&Record::AttemptFailed {
                cell: key.clone(),
                attempt,
                stage: None,
                kind: *kind,
                error: error.clone(),
                at: Utc::now(),
            })?;
            return Ok(Err(error));
        }
        let result = Attempt {
            sys: l.sys.as_mut(),
            layout: l.layout,
            meter: &mut l.meter,
            probes: &l.probes,
            claim: &mut l.claim,
            layers,
            progress,
            ds,
            key,
            attempt,
            journal,
            sinks,
            tracer,
        }
        .run()
        .await;
        let (stage, error) = match result {
            Ok(()) => {
                journal.append(&Record::CellDone {
                    cell: key.clone(),
                    attempt,
                    at: Utc::now(),
                })?;
                state.done.insert(key.clone());
                return Ok(Ok(()));
            }
            Err(CellError::Journal(e)) => return Err(e),
            Err(CellError::System { stage, error }) => (stage, error),
        };
        tracing::warn!(
            "{key} attempt {attempt} failed{}: {}",
            stage.map(|s| format!(" in {s}")).unwrap_or_default(),
            error.message
        );
        journal.append(&Record::AttemptFailed {
            cell: key.clone(),
            attempt,
            stage,
            kind: error.kind,
            error: error.message.clone(),
            at: Utc::now(),
        })?;
        last = error.message.clone();
        match error.kind {
            ErrorKind::Unsafe => {
                l.down = Some((ErrorKind::Unsafe, format!("refused: {}", error.message)));
                return Ok(Err(last));
            }
            ErrorKind::ConnectionLost => {
                // The meter's connection went with the system's, or soon will.
                l.meter = None;
                if let Err(e) = reconnect(l.sys.as_mut(), retry).await {
                    l.down = Some((
                        ErrorKind::ConnectionLost,
                        format!("connection lost and not regained: {}", e.message),
                    ));
                }
            }
            ErrorKind::Failed => {}
        }
    }
    Ok(Err(last))
}

/// Reconnects with exponential backoff (initial, doubled, capped) for a bounded number of
/// tries, waiting before each try (the server has just gone); returns the last error if the
/// system stays away.
async fn reconnect(sys: &mut dyn System, retry: &config::RetryConfig) -> Result<(), SysError> {
    let delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs_f64(retry.backoff_initial_s))
        .with_max_delay(Duration::from_secs_f64(retry.backoff_max_s))
        .with_factor(2.0)
        .with_max_times(retry.reconnect_tries as usize)
        .build();
    let mut last = SysError::connection("no reconnect tries configured");
    for (n, delay) in delays.enumerate() {
        tokio::time::sleep(delay).await;
        match sys.connect().await {
            Ok(_) => {
                tracing::info!("{}: reconnected after {} tries", sys.name(), n + 1);
                return Ok(());
            }
            Err(e) => {
                tracing::warn!("{}: reconnect {} failed: {}", sys.name(), n + 1, e.message);
                last = e;
            }
        }
    }
    Err(last)
}

/// What the journal says about cells (which are complete, how many attempts each had) and
/// which data sets it holds a scan of.
struct JournalState {
    done: HashSet<CellKey>,
    attempts: HashMap<CellKey, u32>,
    scanned: HashSet<(u32, PayloadType, u8)>,
}

impl JournalState {
    fn new(records: &[Record]) -> Self {
        let mut done = HashSet::new();
        let mut attempts: HashMap<CellKey, u32> = HashMap::new();
        let mut scanned = HashSet::new();
        for r in records {
            let (cell, attempt) = match r {
                Record::Stage(s) => (&s.cell, s.attempt),
                Record::CellDone { cell, attempt, .. } => {
                    done.insert(cell.clone());
                    (cell, *attempt)
                }
                Record::AttemptFailed { cell, attempt, .. } => (cell, *attempt),
                Record::DataSetScan {
                    run,
                    payload,
                    grade,
                    ..
                } => {
                    scanned.insert((*run, *payload, *grade));
                    continue;
                }
                Record::Session { .. } | Record::LeaseTaken { .. } => continue,
            };
            let a = attempts.entry(cell.clone()).or_default();
            *a = (*a).max(attempt);
        }
        JournalState {
            done,
            attempts,
            scanned,
        }
    }

    fn complete(&self, key: &CellKey) -> bool {
        self.done.contains(key)
    }

    /// Makes a system's cells incomplete so they are measured again (`--repeat`).
    fn forget(&mut self, system: &str) {
        self.done.retain(|k| k.system != system);
    }

    fn next_attempt(&mut self, key: &CellKey) -> u32 {
        let a = self.attempts.entry(key.clone()).or_default();
        *a += 1;
        *a
    }
}
