//! Command-line arguments (clap). Parsing only: `main.rs` hands them to the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use dedup_lab::config::Overrides;
use dedup_lab::dataset::{DedupUnit, SizeSpec, parse_size};
use dedup_lab::lab::storage::Kind as StorageKind;
use dedup_lab::model::{KeyMode, ShardBy};
use dedup_lab::scan::{CdcParams, ScanConfig};

/// Where does deduplication happen — inside a data system, in the storage under it, or
/// nowhere? Loads seeded data sets with an exact share of duplicate files into data systems,
/// stage by stage, and measures their physical storage.
#[derive(Debug, Parser)]
#[command(name = "dedup-lab", version, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug). Logs go to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run (or resume) an experiment and print where deduplication happens.
    Run(RunArgs),
    /// Write data sets and their manifests without running anything.
    Generate(GenerateArgs),
    /// Reach every selected system; print its version and probes, or why not.
    Preflight(ConfigArgs),
    /// Summarize an experiment's journal (finished or partial) and rewrite its exports.
    Report(ReportArgs),
    /// List known systems, whether each is configured, and whether it is reachable.
    Systems(ConfigArgs),
    /// Start, stop or inspect the local lab servers used by the tests.
    Lab(LabArgs),
    /// Count the duplicate bytes a block-level or content-defined dedup could remove from
    /// files or directory trees.
    Scan(ScanArgs),
    /// Render the Kubernetes objects that run a config's experiment as shards in a cluster
    /// and merge them (docs/kubernetes.md).
    K8s(K8sArgs),
}

/// Config file and overrides shared by the commands.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML config file; without it the embedded default (sqlite + fs) is used.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Experiment id (names the results directory); default derived from the config.
    #[arg(long)]
    pub id: Option<String>,
    /// Directory for experiment directories.
    #[arg(long, value_name = "DIR")]
    pub results_dir: Option<PathBuf>,
    /// Repetitions of the whole matrix.
    #[arg(long)]
    pub runs: Option<u32>,
    /// Experiment seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Systems, comma-separated, or `all` (every configured system).
    #[arg(long, value_delimiter = ',')]
    pub systems: Option<Vec<String>>,
    /// Payload types, comma-separated, or `all`.
    #[arg(long, value_delimiter = ',')]
    pub payloads: Option<Vec<String>>,
    /// Grades in percent (0–99), comma-separated.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub grades: Option<Vec<i64>>,
    /// Files per data set.
    #[arg(long)]
    pub files: Option<u32>,
    /// File size, e.g. 64KiB, or a seeded range 4KiB..1MiB.
    #[arg(long, value_name = "SIZE")]
    pub file_size: Option<SizeSpec>,
    /// Granularity of duplicates: file (whole files), or a chunk size 4KiB … 1MiB.
    #[arg(long, value_name = "UNIT")]
    pub dedup_unit: Option<DedupUnit>,
    /// With a chunk unit: repeat (copy the most recent unique chunk) or working_set.
    #[arg(long, value_name = "MODE")]
    pub dedup_mode: Option<String>,
    /// With working_set: percent of the unique chunks that duplicates copy (default 5).
    #[arg(long, value_name = "PERCENT")]
    pub working_set: Option<i64>,
    /// With a chunk unit: bytes by which duplicates sit off the chunk grid (0 = aligned).
    #[arg(long, value_name = "BYTES")]
    pub shift: Option<i64>,
    /// Percent of each chunk (file, with the file unit) that is filler and compresses.
    #[arg(long, value_name = "PERCENT")]
    pub compress: Option<i64>,
    /// Directory of a preset payload type, e.g. gutenberg_text=/data/gutenberg (repeatable).
    #[arg(long, value_name = "PRESET=DIR", value_parser = parse_source)]
    pub source: Vec<(String, PathBuf)>,
    /// What every instance stores a file under: its name, or its content's hash; both
    /// (name,content) run each instance both ways (an instance's own `keys` wins).
    #[arg(long, value_enum, value_name = "KEYS", value_delimiter = ',')]
    pub keys: Option<Vec<KeyMode>>,
    /// Containers (tables, prefixes, topics, streams) every instance spreads files over,
    /// 1 to 64; several (1,4) run each instance once per number (an instance's own
    /// `containers` wins).
    #[arg(long, value_name = "N", value_delimiter = ',')]
    pub containers: Option<Vec<u32>>,
}

fn parse_source(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!(
            "'{s}' is not PRESET=DIR; write e.g. --source gutenberg_text=/data/gutenberg"
        )),
    }
}

impl ConfigArgs {
    /// The overrides these flags make to the config file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            id: self.id.clone(),
            results_dir: self.results_dir.clone(),
            runs: self.runs,
            seed: self.seed,
            systems: self.systems.clone(),
            payloads: self.payloads.clone(),
            grades: self.grades.clone(),
            files: self.files,
            file_size: self.file_size,
            dedup_unit: self.dedup_unit,
            dedup_mode: self.dedup_mode.clone(),
            working_set: self.working_set,
            shift: self.shift,
            compress: self.compress,
            sources: self.source.clone(),
            keys: self.keys.clone(),
            containers: self.containers.clone(),
        }
    }
}

/// `run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Show the plan (cells, stages, bytes) and write nothing anywhere.
    #[arg(long)]
    pub dry_run: bool,
    /// Measure this system's cells again even if the journal has them complete.
    #[arg(long, value_name = "SYSTEM")]
    pub repeat: Vec<String>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Run one shard of the cells: I/N (I from 1), or /N with I taken from
    /// JOB_COMPLETION_INDEX (from 0, as a Kubernetes Indexed Job sets it). Without it, a
    /// config with `[experiment] shards = N` takes I from JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// What a shard's slice is made of: whole systems (one shard talks to its own servers),
    /// or cells (each shard needs namespaces of its own).
    #[arg(long, value_enum, default_value_t = ShardBy::System)]
    pub shard_by: ShardBy,
    /// Print the per-stage table too (it is always in summary.md).
    #[arg(long)]
    pub details: bool,
}

/// `generate`
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Config and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Output directory; default `<results-dir>/<id>/datasets`.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `report`
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Experiment directory (one holding `shards/` is merged), or shard directories of one
    /// experiment; default: the experiment directory the config selects.
    #[arg(value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Where the merged report of shards goes; default: their experiment directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Shards the experiment was split into (default: the config's `shards`, else what the
    /// directories say), so that shards that never started are named.
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
    /// Wait up to this many seconds for every shard to finish before merging.
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<u64>,
    /// Print the per-stage table too (it is always in summary.md).
    #[arg(long)]
    pub details: bool,
    /// Config and overrides (to find the experiment directory).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `k8s`
#[derive(Debug, Args)]
pub struct K8sArgs {
    /// The config to run; the ConfigMap holds it as it is.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// Namespace of every object.
    #[arg(long, default_value = "dedup-lab")]
    pub namespace: String,
    /// Container image built from the Containerfile.
    #[arg(long, default_value = concat!("dedup-lab:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Shards (completions of the Indexed Job); default: the config's `shards`, else one per
    /// system instance.
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
    /// What a shard's slice is made of.
    #[arg(long, value_enum, default_value_t = ShardBy::System)]
    pub shard_by: ShardBy,
    /// Storage class of the results volume (ReadWriteMany); default: the cluster's.
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,
    /// Size of the results volume.
    #[arg(long, value_name = "SIZE", default_value = "20Gi")]
    pub results_size: String,
    /// CPU each shard requests.
    #[arg(long, default_value = "1")]
    pub cpu: String,
    /// Memory each shard requests and is limited to.
    #[arg(long, default_value = "2Gi")]
    pub memory: String,
    /// Seconds the report Job waits for every shard to finish.
    #[arg(long, value_name = "SECONDS", default_value_t = 86400)]
    pub wait: u64,
    /// Write the manifests to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `lab`
#[derive(Debug, Args)]
pub struct LabArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: LabAction,
    /// Lab directory: data directories, logs, secrets and the generated config.
    #[arg(long, default_value = ".lab", global = true)]
    pub dir: PathBuf,
    /// Servers, comma-separated (default: all); `embedded` selects the embedded systems'
    /// storage, which needs no server.
    #[arg(long, value_delimiter = ',', global = true)]
    pub systems: Option<Vec<String>>,
}

/// `lab` actions.
#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Install what is missing, mount each server's storage, start every server, write
    /// `<dir>/lab.toml`.
    Up(LabUpArgs),
    /// Stop what `up` started and unmount its storage.
    Down,
    /// Stop the servers and delete their data directories and storage images (secrets and
    /// installed programs stay), so the next `up` starts them empty.
    Wipe,
    /// Show which lab servers run and what storage is mounted.
    Status,
    /// Run out-of-band block dedup (duperemove) over the selected btrfs lab storage.
    Dedupe(LabDedupeArgs),
}

/// `lab up`
#[derive(Debug, Args)]
pub struct LabUpArgs {
    /// Where each server's directory lives: a plain directory, or its own btrfs file system
    /// in a loop image (btrfs-zstd: mounted with compress=zstd). Default: what the lab
    /// directory last used (plain at first).
    #[arg(long, value_enum)]
    pub storage: Option<StorageKind>,
    /// Size of each new loop image (sparse; all of it must be free), e.g. 2GiB.
    #[arg(long, value_name = "SIZE")]
    pub storage_size: Option<bytesize::ByteSize>,
}

/// `lab dedupe`
#[derive(Debug, Args)]
pub struct LabDedupeArgs {
    /// Block size duperemove hashes and compares at (4KiB to 1MiB).
    #[arg(long, value_name = "SIZE", default_value = "128KiB")]
    pub block_size: bytesize::ByteSize,
}

/// `scan`
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Files or directories (walked, symlinks not followed).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Fixed block sizes, comma-separated, or `none` [default: 4KiB,16KiB,128KiB].
    #[arg(long, value_name = "SIZES", value_parser = block_sizes)]
    pub block: Option<BlockSizes>,
    /// CDC average chunk size (minimum ¼, maximum 8×), MIN:AVG:MAX, or `none`
    /// [default: 8KiB].
    #[arg(long, value_name = "SIZE", value_parser = cdc)]
    pub cdc: Option<Cdc>,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Parsed `--block` (a newtype: clap would otherwise take a `Vec` as repeated flags).
#[derive(Clone, Debug)]
pub struct BlockSizes(pub Vec<u64>);

/// Parsed `--cdc`.
#[derive(Clone, Debug)]
pub struct Cdc(pub Option<CdcParams>);

impl ScanArgs {
    /// The scan these flags ask for.
    pub fn config(&self) -> ScanConfig {
        let default = ScanConfig::default();
        ScanConfig {
            block_sizes: self
                .block
                .as_ref()
                .map_or(default.block_sizes, |b| b.0.clone()),
            cdc: self.cdc.as_ref().map_or(default.cdc, |c| c.0),
        }
    }
}

fn block_sizes(s: &str) -> Result<BlockSizes, String> {
    if s.trim() == "none" {
        return Ok(BlockSizes(Vec::new()));
    }
    s.split(',')
        .map(parse_size)
        .collect::<Result<_, _>>()
        .map(BlockSizes)
}

fn cdc(s: &str) -> Result<Cdc, String> {
    if s.trim() == "none" {
        return Ok(Cdc(None));
    }
    s.parse().map(|p| Cdc(Some(p)))
}
