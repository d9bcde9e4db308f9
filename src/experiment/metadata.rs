//! `metadata.json`: what produced the results (tool, commit, host, config, seeds, servers).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::shard::ShardMeta;
use crate::config::{Config, Resolved};
use crate::model::ServerInfo;
use crate::secret::redact;
use crate::sinks::SinkStats;

/// Its file name inside the experiment (or shard) directory.
pub const FILE: &str = "metadata.json";

/// Run metadata, rewritten at the start and end of every `run` invocation.
#[derive(Debug, Serialize)]
pub struct Metadata {
    /// Experiment id.
    pub experiment: String,
    /// dedup-lab version.
    pub tool_version: &'static str,
    /// Git commit dedup-lab was built from, when known.
    pub git_commit: Option<&'static str>,
    /// When this invocation started.
    pub started_at: DateTime<Utc>,
    /// When it finished (absent while running or after a crash).
    pub finished_at: Option<DateTime<Utc>>,
    /// The machine.
    pub host: Host,
    /// The config (it holds no secrets, only where to read them).
    pub config: Config,
    /// Experiment seed and the seed of every run.
    pub seeds: Seeds,
    /// Kind, product and version of every system instance, or why it could not be reached.
    pub servers: BTreeMap<String, SystemMeta>,
    /// Peak resident memory of this invocation, bytes (at the end).
    pub peak_rss_bytes: Option<u64>,
    /// The shard this directory holds, with its cells, when the run was split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardMeta>,
    /// What each configured sink did with this invocation's items: delivered, dropped, its
    /// last error (at the end).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub exports: BTreeMap<String, SinkStats>,
}

/// The machine that ran the experiment.
#[derive(Debug, Serialize)]
pub struct Host {
    /// Host name.
    pub hostname: String,
    /// OS and architecture.
    pub os: String,
    /// CPUs available to the process.
    pub cpus: usize,
    /// Total memory, bytes.
    pub memory_bytes: Option<u64>,
}

/// Seeds of the experiment.
#[derive(Debug, Serialize)]
pub struct Seeds {
    /// The experiment seed.
    pub experiment: u64,
    /// Run number → run seed.
    pub runs: BTreeMap<u32, u64>,
}

/// A system instance: its kind and its server.
#[derive(Debug, Serialize)]
pub struct SystemMeta {
    /// The instance's kind.
    pub kind: String,
    /// Its server.
    #[serde(flatten)]
    pub server: ServerStatus,
}

/// A system's server as seen at connect time.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ServerStatus {
    /// Connected.
    Up(ServerInfo),
    /// Could not connect.
    Down {
        /// Why.
        error: String,
    },
}

impl Metadata {
    /// Metadata for a starting invocation.
    pub fn new(
        config: &Resolved,
        servers: BTreeMap<String, (String, Result<ServerInfo, String>)>,
    ) -> Self {
        let c = &config.config;
        Metadata {
            experiment: config.id.clone(),
            tool_version: env!("CARGO_PKG_VERSION"),
            git_commit: option_env!("DEDUP_LAB_GIT_COMMIT"),
            started_at: Utc::now(),
            finished_at: None,
            host: Host {
                hostname: gethostname::gethostname().to_string_lossy().into_owned(),
                os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                memory_bytes: proc_status_kib("/proc/meminfo", "MemTotal:"),
            },
            config: c.clone(),
            seeds: Seeds {
                experiment: c.experiment.seed,
                runs: (1..=c.experiment.runs)
                    .map(|r| (r, super::run_seed(config, r)))
                    .collect(),
            },
            servers: servers
                .into_iter()
                .map(|(name, (kind, v))| {
                    let server = match v {
                        Ok(info) => ServerStatus::Up(info),
                        Err(error) => ServerStatus::Down { error },
                    };
                    (name, SystemMeta { kind, server })
                })
                .collect(),
            peak_rss_bytes: None,
            shard: ShardMeta::of(config),
            exports: BTreeMap::new(),
        }
    }

    /// Writes `metadata.json` into the experiment directory.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        write_json(&dir.join(FILE), self)
    }

    /// Records the end time and peak memory and writes again.
    pub fn finish(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.finished_at = Some(Utc::now());
        self.peak_rss_bytes = peak_rss_bytes();
        self.write(dir)
    }
}

/// Peak resident set size of this process (`VmHWM`), bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("/proc/self/status", "VmHWM:")
}

fn proc_status_kib(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Writes pretty JSON atomically, with every known secret redacted.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = redact(&serde_json::to_string_pretty(value)?);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n").with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
