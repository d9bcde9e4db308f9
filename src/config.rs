//! The experiment config: a TOML file, overridden by flags, validated once.
//!
//! Secrets are never part of the config: system sections name an environment variable or a
//! file holding them. The config therefore can be written to the results as it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{
    ChunkDedup, DEFAULT_WORKING_SET, DataSetSpec, Dedup, DedupUnit, DupMode, MAX_SHIFT,
    PayloadType, SizeSpec, SourceSpec,
};
use crate::error::usage;
use crate::model::{KeyMode, Layout, Shard};
use crate::scan::{CdcParams, ScanConfig};
use crate::systems::{self, Instance};

/// The directory inside an experiment's directory that holds its shards' directories.
pub const SHARDS: &str = "shards";

/// The whole config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What to run.
    pub experiment: ExperimentConfig,
    /// How data sets look.
    pub dataset: DatasetConfig,
    /// How failures are retried.
    pub retry: RetryConfig,
    /// The out-of-band dedup of the storage layer after insert stages.
    #[serde(skip_serializing_if = "is_default")]
    pub storage: StorageConfig,
    /// The dedup-potential scans of data sets and data directories.
    #[serde(skip_serializing_if = "is_default")]
    pub potential: PotentialConfig,
    /// What files are stored under and how many containers they go to, for every instance
    /// whose section does not say; lists run each instance once per combination.
    #[serde(skip_serializing_if = "is_default")]
    pub layout: LayoutConfig,
    /// The trace of sizes while stages run. Not part of the experiment's identity: it looks,
    /// it does not change what is measured (BENCHMARKS.md has what it costs).
    #[serde(skip_serializing_if = "is_default")]
    pub trace: TraceConfig,
    /// One `[systems.<name>]` table per configured system instance, parsed by its adapter.
    pub systems: BTreeMap<String, toml::Table>,
    /// One `[export.<sink>]` table per configured sink, parsed by the sink
    /// ([`crate::sinks`]). Not part of the experiment's identity: where results also go does
    /// not change what is measured.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub export: BTreeMap<String, toml::Table>,
}

/// `[storage]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// After each insert stage, run out-of-band block dedup (duperemove) over the storage
    /// layer of every system whose `storage_probe` reads btrfs, and read it again.
    pub dedupe: bool,
    /// Its block size, e.g. "128KiB".
    pub dedupe_block: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            dedupe: true,
            dedupe_block: "128KiB".into(),
        }
    }
}

/// `[layout]`: a key mode and a number of containers, or lists of them. Each instance whose
/// section sets neither runs once per combination: the first under its own name, each other as
/// `<name>_<variant>` (`content`, `c4`, `content_c4`, `name`) in a namespace of its own, so that
/// the report shows them side by side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayoutConfig {
    /// `"name"`, `"content"`, or both.
    pub keys: OneOrMany<KeyMode>,
    /// 1 to 64, or several.
    pub containers: OneOrMany<u32>,
}

impl Default for LayoutConfig {
    fn default() -> Self {
        LayoutConfig {
            keys: OneOrMany(vec![KeyMode::Name]),
            containers: OneOrMany(vec![1]),
        }
    }
}

impl LayoutConfig {
    /// Every combination, the first one first.
    pub fn layouts(&self) -> Vec<Layout> {
        self.keys
            .0
            .iter()
            .flat_map(|&keys| {
                self.containers
                    .0
                    .iter()
                    .map(move |&containers| Layout { keys, containers })
            })
            .collect()
    }

    /// Refuses empty or repeated lists and containers out of range.
    fn check(&self) -> anyhow::Result<()> {
        let repeats = |n: usize, distinct: usize| n == 0 || distinct < n;
        let keys: std::collections::BTreeSet<_> = self.keys.0.iter().map(|k| k.name()).collect();
        let containers: std::collections::BTreeSet<_> = self.containers.0.iter().collect();
        if repeats(self.keys.0.len(), keys.len())
            || repeats(self.containers.0.len(), containers.len())
        {
            return Err(usage(
                "[layout] keys and containers each need at least one value and no value twice, \
                 e.g. keys = [\"name\", \"content\"], containers = [1, 4]",
            ));
        }
        self.layouts()
            .iter()
            .try_for_each(|l| systems::check_layout("[layout]", l))
    }
}

/// One value or a list of them, written back as it was given.
#[derive(Clone, Debug, PartialEq)]
pub struct OneOrMany<T: Clone>(pub Vec<T>);

impl<T: Clone + Serialize> Serialize for OneOrMany<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

// By hand rather than `#[serde(untagged)]`: an untagged enum replaces the element's own error
// ("unknown variant `hash`, expected one of ...") with "did not match any variant".
impl<'de, T: Clone + Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, IntoDeserializer};
        fn one<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<T>, D::Error> {
            T::deserialize(d).map(|one| vec![one])
        }
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for Visit<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("one value or a list of values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                one(v.into_deserializer())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                one(v.into_deserializer())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                one(v.into_deserializer())
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq))
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
            .map(OneOrMany)
    }
}

/// `[trace]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceConfig {
    /// How often every probe and the system's own accounting are sampled while a stage runs
    /// and settles, in milliseconds (100 to 60000); 0 turns the trace off.
    pub interval_ms: u64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig { interval_ms: 1000 }
    }
}

/// `[potential]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PotentialConfig {
    /// Scan each data set, and each system's data directories before and after each insert
    /// stage, for what block-level and content-defined dedup could remove.
    pub scan: bool,
    /// Fixed block sizes, e.g. ["4KiB", "16KiB", "128KiB"].
    pub blocks: Vec<String>,
    /// Average chunk size of content-defined chunking, "MIN:AVG:MAX", or "none".
    pub cdc: String,
}

impl Default for PotentialConfig {
    fn default() -> Self {
        PotentialConfig {
            scan: true,
            blocks: vec!["4KiB".into(), "16KiB".into(), "128KiB".into()],
            cdc: "8KiB".into(),
        }
    }
}

impl PotentialConfig {
    /// The scanner's settings, or `None` when scanning is off; bad sizes are usage errors.
    fn scan_config(&self) -> anyhow::Result<Option<ScanConfig>> {
        if !self.scan {
            return Ok(None);
        }
        let bad = |what: &str, e: String| {
            usage(format!(
                "[potential] {what}: {e}; write sizes such as \"4KiB\" (cdc: \"8KiB\", \
                 \"MIN:AVG:MAX\" or \"none\")"
            ))
        };
        let block_sizes = self
            .blocks
            .iter()
            .map(|b| crate::dataset::parse_size(b).map_err(|e| bad("blocks", e)))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        let cdc = match self.cdc.as_str() {
            "none" => None,
            text => Some(text.parse::<CdcParams>().map_err(|e| bad("cdc", e))?),
        };
        let config = ScanConfig { block_sizes, cdc };
        config.validate()?;
        Ok(Some(config))
    }
}

/// `[experiment]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Experiment id: names its results directory. Default: derived from the config, so the
    /// same config resumes the same experiment and a different one starts a new one.
    pub id: Option<String>,
    /// Where experiment directories go.
    pub results_dir: PathBuf,
    /// Repetitions of the whole matrix.
    pub runs: u32,
    /// Experiment seed; every run and data set derives its own seed from it.
    pub seed: u64,
    /// System instances to measure; `all` means every configured instance and the embedded
    /// ones.
    pub systems: Vec<String>,
    /// Payload types; `all` means every synthetic type. Presets are named one by one.
    pub payloads: Vec<String>,
    /// Grades in percent (0–99).
    pub grades: Vec<i64>,
    /// Seconds after which a namespace lease of a run on another host that stopped renewing
    /// it counts as abandoned (a run on this host is checked by its process instead).
    pub lease_ttl_s: u64,
    /// Shards the cells are split into, one process or pod each (`run --shard`); absent: one
    /// process runs them all. How the work is split, not what is measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig {
            id: None,
            results_dir: PathBuf::from("results"),
            runs: 3,
            seed: 1,
            // The embedded default: every registered system that needs no server.
            systems: crate::systems::REGISTRY
                .iter()
                .filter(|d| d.embedded)
                .map(|d| d.kind.to_string())
                .collect(),
            payloads: vec!["all".into()],
            grades: vec![0, 50, 90],
            lease_ttl_s: 600,
            shards: None,
        }
    }
}

/// `[dataset]`. Keys left at their default are not serialized, so adding a knob does not
/// change the derived experiment id of configs that do not use it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetConfig {
    /// Files per data set.
    pub files: u32,
    /// File size: `64KiB`, or a seeded range `4KiB..1MiB`.
    pub file_size: SizeSpec,
    /// Keep data set files after their cells are done (manifests are always kept).
    pub keep: bool,
    /// Granularity of duplicates: `file` (whole files), or a chunk size `4KiB` … `1MiB`.
    #[serde(skip_serializing_if = "is_default")]
    pub dedup_unit: DedupUnit,
    /// With a chunk unit, which earlier chunk a duplicate repeats: `repeat` (the most recent
    /// unique chunk; default) or `working_set` (a random one of a working set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedup_mode: Option<String>,
    /// With `working_set`: the working set, in percent of the unique chunks (default 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set: Option<i64>,
    /// With a chunk unit: bytes by which duplicates sit off the chunk grid (0 = aligned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shift: Option<i64>,
    /// Percent of every chunk (file, with the file unit) that is filler and compresses away.
    #[serde(skip_serializing_if = "is_default")]
    pub compress: i64,
    /// Directory sources: read `.gz`, `.bz2`, `.xz` and `.zst` files decompressed.
    #[serde(skip_serializing_if = "is_true")]
    pub decompress: bool,
    /// `[dataset.sources]`: the directory of each preset payload type.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, PathBuf>,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig {
            files: 50,
            file_size: SizeSpec::Fixed(64 * 1024),
            keep: false,
            dedup_unit: DedupUnit::File,
            dedup_mode: None,
            working_set: None,
            shift: None,
            compress: 0,
            decompress: true,
            sources: BTreeMap::new(),
        }
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_true(v: &bool) -> bool {
    *v
}

/// What every data set of an experiment shares beyond files and sizes, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataShape {
    /// Whole-file or chunk duplicates.
    pub dedup: Dedup,
    /// Percent filler.
    pub compress: u8,
    /// The directory of each selected preset.
    pub sources: BTreeMap<PayloadType, SourceSpec>,
}

impl DatasetConfig {
    /// Validates the duplication and source knobs for the selected payload types.
    fn shape(&self, payloads: &[PayloadType]) -> anyhow::Result<DataShape> {
        let percent = |key: &str, v: i64, max: i64, what: &str| -> anyhow::Result<u8> {
            if (0..=max).contains(&v) {
                Ok(v as u8)
            } else {
                Err(usage(format!(
                    "[dataset] {key} = {v} is out of range: use 0 to {max} ({what})"
                )))
            }
        };
        let compress = percent(
            "compress",
            self.compress,
            99,
            "percent of each chunk that is filler",
        )?;
        let dedup = match self.dedup_unit {
            DedupUnit::File => {
                for (key, set) in [
                    ("dedup_mode", self.dedup_mode.is_some()),
                    ("working_set", self.working_set.is_some()),
                    ("shift", self.shift.is_some()),
                ] {
                    if set {
                        return Err(usage(format!(
                            "[dataset] {key} applies to chunk duplicates only: set dedup_unit to \
                             a chunk size (e.g. \"4KiB\", --dedup-unit 4KiB) or remove {key}"
                        )));
                    }
                }
                Dedup::Files
            }
            DedupUnit::Chunk(unit) => {
                let mode = match self.dedup_mode.as_deref() {
                    None | Some("repeat") => {
                        if self.working_set.is_some() {
                            return Err(usage(
                                "[dataset] working_set applies to dedup_mode = \"working_set\" \
                                 only: set that mode or remove working_set",
                            ));
                        }
                        DupMode::Repeat
                    }
                    Some("working_set") => DupMode::WorkingSet(match self.working_set {
                        None => DEFAULT_WORKING_SET,
                        Some(w) if (1..=100).contains(&w) => w as u8,
                        Some(w) => {
                            return Err(usage(format!(
                                "[dataset] working_set = {w} is out of range: use 1 to 100 \
                                 (percent of the unique chunks)"
                            )));
                        }
                    }),
                    Some(other) => {
                        return Err(usage(format!(
                            "[dataset] dedup_mode '{other}' is unknown; use repeat or working_set"
                        )));
                    }
                };
                let shift = self.shift.unwrap_or(0);
                if !(0..=i64::from(MAX_SHIFT)).contains(&shift) {
                    return Err(usage(format!(
                        "[dataset] shift = {shift} is out of range: use 0 (aligned) or 1 to \
                         {MAX_SHIFT} bytes"
                    )));
                }
                Dedup::Chunks(ChunkDedup {
                    unit,
                    mode,
                    shift: shift as u16,
                })
            }
        };
        dedup
            .check(self.file_size)
            .map_err(|e| usage(format!("[dataset] {e}")))?;
        for name in self.sources.keys() {
            if !PayloadType::from_name(name).is_some_and(PayloadType::is_preset) {
                return Err(usage(format!(
                    "[dataset.sources] names '{name}', which is not a preset; presets: {}",
                    preset_names()
                )));
            }
        }
        let mut sources = BTreeMap::new();
        for &p in payloads.iter().filter(|p| p.is_preset()) {
            let Some(dir) = self.sources.get(p.name()) else {
                return Err(usage(format!(
                    "payload type {p} reads its files from a directory, and none is set: add \
                     [dataset.sources] {p} = \"/path/to/dir\" to the config, or pass \
                     --source {p}=/path/to/dir"
                )));
            };
            crate::dataset::check_dir(dir).map_err(|e| {
                usage(format!(
                    "[dataset.sources] {p}: {e}; point {p} at a directory of files"
                ))
            })?;
            sources.insert(
                p,
                SourceSpec {
                    dir: dir.clone(),
                    decompress: self.decompress,
                },
            );
        }
        Ok(DataShape {
            dedup,
            compress,
            sources,
        })
    }
}

fn preset_names() -> String {
    PayloadType::PRESETS.map(|p| p.name()).join(", ")
}

/// `[retry]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per cell before it is recorded as failed.
    pub max_attempts: u32,
    /// First reconnect delay, seconds; doubles each time.
    pub backoff_initial_s: f64,
    /// Largest reconnect delay, seconds.
    pub backoff_max_s: f64,
    /// Reconnect tries after a lost connection before the system counts as down.
    pub reconnect_tries: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            backoff_initial_s: 1.0,
            backoff_max_s: 30.0,
            reconnect_tries: 6,
        }
    }
}

/// Command-line overrides; `None` keeps the file's value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--id`
    pub id: Option<String>,
    /// `--results-dir`
    pub results_dir: Option<PathBuf>,
    /// `--runs`
    pub runs: Option<u32>,
    /// `--seed`
    pub seed: Option<u64>,
    /// `--systems`
    pub systems: Option<Vec<String>>,
    /// `--payloads`
    pub payloads: Option<Vec<String>>,
    /// `--grades`
    pub grades: Option<Vec<i64>>,
    /// `--files`
    pub files: Option<u32>,
    /// `--file-size`
    pub file_size: Option<SizeSpec>,
    /// `--dedup-unit`
    pub dedup_unit: Option<DedupUnit>,
    /// `--dedup-mode`
    pub dedup_mode: Option<String>,
    /// `--working-set`
    pub working_set: Option<i64>,
    /// `--shift`
    pub shift: Option<i64>,
    /// `--compress`
    pub compress: Option<i64>,
    /// `--source PRESET=DIR`, each replacing that preset's directory.
    pub sources: Vec<(String, PathBuf)>,
    /// `--keys`
    pub keys: Option<Vec<KeyMode>>,
    /// `--containers`
    pub containers: Option<Vec<u32>>,
}

/// The config after validation: names resolved, ranges checked.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The config as given (after flags), for the results' metadata.
    pub config: Config,
    /// Experiment id.
    pub id: String,
    /// System instances to measure, in registry order of their kinds, then by name.
    pub systems: Vec<Instance>,
    /// Payload types.
    pub payloads: Vec<PayloadType>,
    /// Grades.
    pub grades: Vec<u8>,
    /// Duplication, compression and sources of every data set.
    pub shape: DataShape,
    /// The dedup-potential scans' settings, when scanning is on.
    pub scan: Option<ScanConfig>,
    /// The block size of the storage layer's out-of-band dedup, when it is on.
    pub dedupe_block: Option<u64>,
    /// How often the trace samples, when it is on.
    pub trace: Option<std::time::Duration>,
    /// The shard this process runs, when the run is split (set by `run`, not by the file).
    pub shard: Option<Shard>,
}

impl Resolved {
    /// The directory this process writes: the experiment's, or its shard's inside it.
    pub fn experiment_dir(&self) -> PathBuf {
        match &self.shard {
            None => self.experiment_root(),
            Some(s) => self.experiment_root().join(SHARDS).join(s.dir_name()),
        }
    }

    /// The experiment's directory (the merged report of shards goes here).
    pub fn experiment_root(&self) -> PathBuf {
        self.config.experiment.results_dir.join(&self.id)
    }

    /// The data set of one payload type and grade, for a seed.
    pub fn dataset_spec(&self, payload: PayloadType, grade: u8, seed: u64) -> DataSetSpec {
        DataSetSpec {
            payload,
            grade,
            files: self.config.dataset.files,
            sizes: self.config.dataset.file_size,
            seed,
            dedup: self.shape.dedup,
            compress: self.shape.compress,
            source: self.shape.sources.get(&payload).cloned(),
        }
    }
}

impl Config {
    /// Reads a config file. A path that does not exist is an error, never a fallback.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            usage(format!(
                "cannot read config file {}: {e}; check the path given to --config",
                path.display()
            ))
        })?;
        toml::from_str(&text).map_err(|e| {
            usage(format!(
                "config file {} is invalid: {}",
                path.display(),
                e.to_string().trim()
            ))
        })
    }

    /// Loads the file (if any), applies the overrides and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Resolved> {
        let mut config = match path {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        config.apply(overrides);
        config.resolve()
    }

    fn apply(&mut self, o: &Overrides) {
        let e = &mut self.experiment;
        if let Some(v) = &o.id {
            e.id = Some(v.clone());
        }
        if let Some(v) = &o.results_dir {
            e.results_dir = v.clone();
        }
        if let Some(v) = o.runs {
            e.runs = v;
        }
        if let Some(v) = o.seed {
            e.seed = v;
        }
        if let Some(v) = &o.systems {
            e.systems = v.clone();
        }
        if let Some(v) = &o.payloads {
            e.payloads = v.clone();
        }
        if let Some(v) = &o.grades {
            e.grades = v.clone();
        }
        if let Some(v) = o.files {
            self.dataset.files = v;
        }
        let d = &mut self.dataset;
        if let Some(v) = o.file_size {
            d.file_size = v;
        }
        if let Some(v) = o.dedup_unit {
            d.dedup_unit = v;
        }
        if let Some(v) = &o.dedup_mode {
            d.dedup_mode = Some(v.clone());
        }
        if let Some(v) = o.working_set {
            d.working_set = Some(v);
        }
        if let Some(v) = o.shift {
            d.shift = Some(v);
        }
        if let Some(v) = o.compress {
            d.compress = v;
        }
        for (name, dir) in &o.sources {
            d.sources.insert(name.clone(), dir.clone());
        }
        if let Some(v) = &o.keys {
            self.layout.keys = OneOrMany(v.clone());
        }
        if let Some(v) = &o.containers {
            self.layout.containers = OneOrMany(v.clone());
        }
    }

    /// Validates everything and resolves names.
    pub fn resolve(self) -> anyhow::Result<Resolved> {
        let e = &self.experiment;
        if e.runs == 0 || e.runs > 1000 {
            return Err(usage(format!(
                "runs = {} is out of range; use 1 to 1000",
                e.runs
            )));
        }
        if self.dataset.files == 0 {
            return Err(usage(
                "dataset files = 0: a data set needs at least one file; set --files 1 or more",
            ));
        }
        let r = &self.retry;
        if r.max_attempts == 0
            || r.backoff_initial_s.is_nan()
            || r.backoff_initial_s <= 0.0
            || r.backoff_max_s.is_nan()
            || r.backoff_max_s < r.backoff_initial_s
        {
            return Err(usage(
                "[retry] needs max_attempts >= 1 and 0 < backoff_initial_s <= backoff_max_s",
            ));
        }
        if e.lease_ttl_s == 0 {
            return Err(usage(
                "[experiment] lease_ttl_s = 0: a lease must live at least a second; use e.g. 600",
            ));
        }
        if e.shards == Some(0) {
            return Err(usage(
                "[experiment] shards = 0: a run is split into at least 1 shard; remove the key \
                 to run every cell in one process",
            ));
        }
        self.layout.check()?;
        let systems = self.resolve_systems()?;
        crate::sinks::check_names(&self.export)?;
        let payloads = resolve_payloads(&e.payloads)?;
        let grades = resolve_grades(&e.grades)?;
        let shape = self.dataset.shape(&payloads)?;
        let scan = self.potential.scan_config()?;
        let dedupe_block = match self.storage.dedupe {
            false => None,
            true => {
                let block =
                    crate::dataset::parse_size(&self.storage.dedupe_block).map_err(|e| {
                        usage(format!(
                            "[storage] dedupe_block = \"{}\": {e}; write a size such as \"128KiB\"",
                            self.storage.dedupe_block
                        ))
                    })?;
                crate::lab::dedupe::check_block(block)?;
                Some(block)
            }
        };
        let trace = match self.trace.interval_ms {
            0 => None,
            ms @ 100..=60_000 => Some(std::time::Duration::from_millis(ms)),
            ms => {
                return Err(usage(format!(
                    "[trace] interval_ms = {ms}: sample every 100 to 60000 ms, or set 0 to turn \
                     the trace off"
                )));
            }
        };
        let id = match &e.id {
            Some(id) => {
                check_id(id)?;
                id.clone()
            }
            None => format!("exp-{}", &self.fingerprint()[..10]),
        };
        Ok(Resolved {
            config: self,
            id,
            systems,
            payloads,
            grades,
            shape,
            scan,
            dedupe_block,
            trace,
            shard: None,
        })
    }

    /// Every instance the config defines: one per section, and the embedded kinds that have
    /// none.
    pub fn instances(&self) -> anyhow::Result<Vec<Instance>> {
        let mut out = Vec::new();
        for (name, section) in &self.systems {
            out.push(Instance::new(
                name,
                Some(section),
                self.layout.layouts()[0],
            )?);
        }
        for def in systems::REGISTRY.iter().filter(|d| d.embedded) {
            if !self.systems.contains_key(def.kind) {
                out.push(Instance::new(def.kind, None, self.layout.layouts()[0])?);
            }
        }
        let rank = |i: &Instance| {
            systems::REGISTRY
                .iter()
                .position(|d| d.kind == i.def.kind)
                .unwrap_or(usize::MAX)
        };
        out.sort_by(|a, b| (rank(a), &a.name).cmp(&(rank(b), &b.name)));
        Ok(out)
    }

    fn resolve_systems(&self) -> anyhow::Result<Vec<Instance>> {
        let all = self.instances()?;
        let wanted = &self.experiment.systems;
        let names = || {
            all.iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if wanted.is_empty() {
            return Err(usage(format!(
                "no systems selected; name at least one of: {}, or all",
                names()
            )));
        }
        for name in wanted.iter().filter(|n| *n != "all") {
            if all.iter().any(|i| i.name == *name) {
                continue;
            }
            return Err(usage(match systems::lookup(name) {
                Some(def) => format!(
                    "system '{name}' is not configured: add a [systems.{}] section to the config \
                     file (see the README), or run `dedup-lab lab up` and use its config",
                    def.kind
                ),
                None => format!(
                    "unknown system '{name}'; valid names: {}, or all (the configured \
                     instances; system kinds: {})",
                    names(),
                    systems::names()
                ),
            }));
        }
        let every = wanted.iter().any(|n| n == "all");
        let layouts = self.layout.layouts();
        let mut out = Vec::new();
        for i in all
            .into_iter()
            .filter(|i| every || wanted.contains(&i.name))
        {
            match i.own_layout {
                true => out.push(i),
                false => {
                    for (n, layout) in layouts.iter().enumerate() {
                        out.push(i.variant(*layout, n > 0)?);
                    }
                }
            }
        }
        Ok(out)
    }

    /// A hash of everything that decides what is measured (not where results go, not how
    /// failures are retried): equal fingerprints mean comparable measurements.
    pub fn fingerprint(&self) -> String {
        let v = self.identity();
        blake3::hash(v.to_string().as_bytes()).to_hex().to_string()
    }

    /// The measurement-deciding part of the config as JSON (sorted keys).
    pub fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        if let Some(obj) = v.as_object_mut() {
            obj.remove("retry");
            obj.remove("export");
            obj.remove("trace");
            if let Some(e) = obj.get_mut("experiment").and_then(|e| e.as_object_mut()) {
                e.remove("results_dir");
                e.remove("id");
                e.remove("lease_ttl_s");
                e.remove("shards");
            }
            if let Some(d) = obj.get_mut("dataset").and_then(|d| d.as_object_mut()) {
                d.remove("keep");
            }
        }
        v
    }
}

fn resolve_payloads(names: &[String]) -> anyhow::Result<Vec<PayloadType>> {
    let valid = || {
        PayloadType::ALL
            .iter()
            .chain(&PayloadType::PRESETS)
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if names.is_empty() {
        return Err(usage(format!(
            "no payload types selected; name at least one of: {}, or all",
            valid()
        )));
    }
    let mut out = Vec::new();
    for n in names {
        if n == "all" {
            out.extend(PayloadType::ALL);
            continue;
        }
        out.push(PayloadType::from_name(n).ok_or_else(|| {
            usage(format!(
                "unknown payload type '{n}'; valid names: {}, or all",
                valid()
            ))
        })?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn resolve_grades(grades: &[i64]) -> anyhow::Result<Vec<u8>> {
    if grades.is_empty() {
        return Err(usage("no grades given; use e.g. --grades 0,50,90"));
    }
    let mut out = Vec::new();
    for &g in grades {
        if !(0..=99).contains(&g) {
            return Err(usage(format!(
                "grade {g} is out of range: a grade is the percent of duplicate files, 0 to 99"
            )));
        }
        out.push(g as u8);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn check_id(id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "experiment id '{id}' is not valid: use letters, digits, '-', '_' and '.', \
             starting with a letter or digit, at most 64 characters"
        )))
    }
}

/// Lists the dotted keys whose values differ between two JSON values, as `key: old -> new`.
pub fn diff(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    let null = serde_json::Value::Null;
                    walk(
                        &p,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{prefix}: {a} -> {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_lists_run_each_instance_once_per_combination_in_its_own_namespace() {
        let mut c: Config = toml::from_str(
            "[layout]\nkeys = [\"name\", \"content\"]\ncontainers = [1, 4]\n\
             [systems.pg]\nkind = \"postgres\"\nschema = \"dedup_lab_x\"\n\
             [systems.sqlite]\nfile = \"dedup_lab.sqlite\"\n\
             [systems.fixed]\nkind = \"fs\"\ndir = \"/tmp/dedup_lab_f\"\ncontainers = 2\n",
        )
        .unwrap();
        c.experiment.systems = vec!["all".into()];
        let r = c.resolve().unwrap();
        let got: Vec<(String, String, u32, Option<String>)> = r
            .systems
            .iter()
            .map(|i| {
                let key = i.def.tests.namespace_key;
                let ns = i
                    .section
                    .as_ref()
                    .and_then(|s| s.get(key))
                    .map(|v| v.as_str().unwrap().to_string());
                (
                    i.name.clone(),
                    i.layout.keys.name().into(),
                    i.layout.containers,
                    ns,
                )
            })
            .collect();
        let ns = |s: &str| Some(s.to_string());
        assert_eq!(
            got,
            [
                ("sqlite".into(), "name".into(), 1, ns("dedup_lab.sqlite")),
                (
                    "sqlite_c4".into(),
                    "name".into(),
                    4,
                    ns("dedup_lab_c4.sqlite")
                ),
                (
                    "sqlite_content".into(),
                    "content".into(),
                    1,
                    ns("dedup_lab_content.sqlite")
                ),
                (
                    "sqlite_content_c4".into(),
                    "content".into(),
                    4,
                    ns("dedup_lab_content_c4.sqlite")
                ),
                // Its own layout: no variants.
                ("fixed".into(), "name".into(), 2, ns("/tmp/dedup_lab_f")),
                ("fs".into(), "name".into(), 1, None),
                ("fs_c4".into(), "name".into(), 4, None),
                ("fs_content".into(), "content".into(), 1, None),
                ("fs_content_c4".into(), "content".into(), 4, None),
                ("pg".into(), "name".into(), 1, ns("dedup_lab_x")),
                ("pg_c4".into(), "name".into(), 4, ns("dedup_lab_x_c4")),
                (
                    "pg_content".into(),
                    "content".into(),
                    1,
                    ns("dedup_lab_x_content")
                ),
                (
                    "pg_content_c4".into(),
                    "content".into(),
                    4,
                    ns("dedup_lab_x_content_c4")
                ),
            ]
        );
        // A list with a value twice is refused.
        let mut c = Config::default();
        c.layout.containers = OneOrMany(vec![4, 4]);
        let e = c.resolve().unwrap_err().to_string();
        assert!(e.contains("no value twice"), "{e}");
    }

    #[test]
    fn defaults_resolve_to_embedded_matrix() {
        let r = Config::default().resolve().unwrap();
        assert_eq!(
            r.systems
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>(),
            ["sqlite", "fs"]
        );
        assert_eq!(r.payloads.len(), 6);
        assert_eq!(r.grades, [0, 50, 90]);
        assert!(r.id.starts_with("exp-"));
    }

    #[test]
    fn id_follows_measurement_config_only() {
        let a = Config::default().resolve().unwrap().id;
        let mut c = Config::default();
        c.experiment.results_dir = "elsewhere".into();
        c.retry.max_attempts = 9;
        assert_eq!(c.resolve().unwrap().id, a);
        let mut c = Config::default();
        c.experiment.runs = 5;
        assert_ne!(c.resolve().unwrap().id, a);
    }

    #[test]
    fn bad_values_are_usage_errors_with_the_fix() {
        let cases: Vec<(Overrides, &str)> = vec![
            (
                Overrides {
                    systems: Some(vec!["postgress".into()]),
                    ..Default::default()
                },
                "kinds: sqlite, fs, postgres",
            ),
            (
                Overrides {
                    systems: Some(vec!["postgres".into()]),
                    ..Default::default()
                },
                "[systems.postgres]",
            ),
            (
                Overrides {
                    payloads: Some(vec!["jpeg".into()]),
                    ..Default::default()
                },
                "random_binary",
            ),
            (
                Overrides {
                    grades: Some(vec![100]),
                    ..Default::default()
                },
                "0 to 99",
            ),
            (
                Overrides {
                    grades: Some(vec![-5]),
                    ..Default::default()
                },
                "0 to 99",
            ),
            (
                Overrides {
                    files: Some(0),
                    ..Default::default()
                },
                "at least one file",
            ),
            (
                Overrides {
                    id: Some("../x".into()),
                    ..Default::default()
                },
                "not valid",
            ),
            (
                Overrides {
                    dedup_mode: Some("repeat".into()),
                    ..Default::default()
                },
                "dedup_mode applies to chunk duplicates only",
            ),
            (
                Overrides {
                    dedup_unit: Some(DedupUnit::Chunk(4096)),
                    dedup_mode: Some("fancy".into()),
                    ..Default::default()
                },
                "use repeat or working_set",
            ),
            (
                Overrides {
                    dedup_unit: Some(DedupUnit::Chunk(4096)),
                    working_set: Some(20),
                    ..Default::default()
                },
                "working_set applies to dedup_mode",
            ),
            (
                Overrides {
                    dedup_unit: Some(DedupUnit::Chunk(4096)),
                    shift: Some(600),
                    ..Default::default()
                },
                "shift = 600 is out of range",
            ),
            (
                Overrides {
                    compress: Some(100),
                    ..Default::default()
                },
                "compress = 100 is out of range",
            ),
            (
                Overrides {
                    dedup_unit: Some(DedupUnit::Chunk(4096)),
                    file_size: Some(SizeSpec::Fixed(10_000)),
                    ..Default::default()
                },
                "not a multiple of dedup_unit 4096",
            ),
            (
                Overrides {
                    payloads: Some(vec!["gutenberg_text".into()]),
                    ..Default::default()
                },
                "[dataset.sources] gutenberg_text = ",
            ),
            (
                Overrides {
                    sources: vec![("random_binary".into(), "/tmp".into())],
                    ..Default::default()
                },
                "not a preset",
            ),
        ];
        for (o, want) in cases {
            let err = Config::load(None, &o).unwrap_err();
            assert_eq!(crate::error::exit_code(&err), 2, "{err}");
            assert!(err.to_string().contains(want), "{err} lacks {want}");
        }
    }

    #[test]
    fn chunk_knobs_resolve_and_defaults_keep_the_id() {
        // Knobs left at their defaults are not part of the identity: ids stay as they were.
        let v = Config::default().identity();
        let keys: Vec<&String> = v["dataset"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["file_size", "files"]);
        let o = Overrides {
            dedup_unit: Some(DedupUnit::Chunk(8192)),
            dedup_mode: Some("working_set".into()),
            shift: Some(7),
            compress: Some(50),
            ..Default::default()
        };
        let r = Config::load(None, &o).unwrap();
        let spec = r.dataset_spec(PayloadType::TextDocument, 50, 3);
        assert_eq!(
            spec.dedup,
            Dedup::Chunks(ChunkDedup {
                unit: 8192,
                mode: DupMode::WorkingSet(DEFAULT_WORKING_SET),
                shift: 7
            })
        );
        assert_eq!((spec.compress, spec.source), (50, None));
        assert_ne!(r.id, Config::default().resolve().unwrap().id);
    }

    #[test]
    fn diff_names_changed_keys() {
        let a = serde_json::json!({"experiment": {"runs": 3, "seed": 1}});
        let b = serde_json::json!({"experiment": {"runs": 5, "seed": 1}});
        assert_eq!(diff(&a, &b), ["experiment.runs: 3 -> 5"]);
    }
}
