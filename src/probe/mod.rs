//! Probes: ways to read physical size before and after a stage.
//!
//! `native` asks the system itself ([`System::native_size`]); `fs` sums the allocated bytes
//! of directories on local disk; `sqlite` sums the pages in use of SQLite database files that
//! a server keeps its data in (free pages a server reuses would hide growth from `fs`);
//! `prometheus` sums a size metric a server publishes. A probe that fails gives an error
//! reading, never a number. Where `fs`, `sqlite` and `prometheus` look is configured per
//! system with the same keys for every system ([`ProbeConfig`]).

pub mod extents;
pub mod fs;
pub mod prometheus;
pub mod sqlite;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::usage;
use crate::systems::{ErrorKind, SysError, System};

/// One probe reading: bytes, or why there are none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reading {
    /// The probe answered.
    Bytes {
        /// Physical size in bytes.
        bytes: u64,
    },
    /// The probe failed; the message says why.
    Error {
        /// What went wrong.
        error: String,
    },
}

impl Reading {
    /// The bytes, if the probe answered.
    pub fn bytes(&self) -> Option<u64> {
        match self {
            Reading::Bytes { bytes } => Some(*bytes),
            Reading::Error { .. } => None,
        }
    }

    fn of(result: anyhow::Result<u64>) -> Reading {
        match result {
            Ok(bytes) => Reading::Bytes { bytes },
            Err(e) => Reading::Error {
                error: format!("{e:#}"),
            },
        }
    }
}

/// Name of the native probe in records.
pub const NATIVE: &str = "native";
/// Name of the filesystem probe in records.
pub const FS: &str = "fs";
/// Name of the SQLite used-pages probe in records.
pub const SQLITE: &str = "sqlite";
/// Name of the Prometheus metric probe in records.
pub const PROMETHEUS: &str = "prometheus";

/// The probe keys of a `[systems.<name>]` section as written.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ProbeKeys {
    fs_probe: Vec<PathBuf>,
    sqlite_probe: Vec<PathBuf>,
    prometheus_probe: Option<prometheus::PrometheusConfig>,
}

/// The probe keys of a `[systems.<name>]` section, which every system accepts, checked.
#[derive(Clone, Debug, Default)]
pub struct ProbeConfig {
    /// Directories or files whose allocated bytes the `fs` probe sums; default: an embedded
    /// system's own files.
    pub fs_probe: Vec<PathBuf>,
    /// SQLite database files whose pages in use the `sqlite` probe sums.
    pub sqlite_probe: Vec<PathBuf>,
    /// The metric the `prometheus` probe sums.
    pub prometheus: Option<Arc<prometheus::Prometheus>>,
}

impl ProbeConfig {
    /// Takes the probe keys out of a system's section; the rest belongs to the adapter.
    pub fn take(
        system: &str,
        section: Option<&toml::Table>,
    ) -> anyhow::Result<(Option<toml::Table>, ProbeConfig)> {
        let Some(section) = section else {
            return Ok((None, ProbeConfig::default()));
        };
        let mut rest = section.clone();
        let mut keys = toml::Table::new();
        for key in ["fs_probe", "sqlite_probe", "prometheus_probe"] {
            if let Some(v) = rest.remove(key) {
                keys.insert(key.into(), v);
            }
        }
        let keys = ProbeKeys::deserialize(toml::Value::Table(keys)).map_err(|e| {
            usage(format!(
                "config [systems.{system}]: {}; fs_probe and sqlite_probe are lists of paths, \
                 prometheus_probe a table {{ url, metric, labels, copies, token_env or \
                 token_file, timeout_s }}",
                e.to_string().trim()
            ))
        })?;
        let prometheus = keys
            .prometheus_probe
            .map(|c| prometheus::Prometheus::new(system, &c).map(Arc::new))
            .transpose()?;
        let config = ProbeConfig {
            fs_probe: keys.fs_probe,
            sqlite_probe: keys.sqlite_probe,
            prometheus,
        };
        Ok((Some(rest), config))
    }

    /// Every configured path, for checks that they exist.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.fs_probe.iter().chain(&self.sqlite_probe)
    }
}

/// The probes a system is measured with.
#[derive(Clone, Debug, Default)]
pub struct ProbeSet {
    /// `Some(R)`: the native probe, counting R full copies of the data.
    pub native_copies: Option<u32>,
    /// Paths of the `fs` probe (one copy of the data).
    pub fs: Vec<PathBuf>,
    /// Database files of the `sqlite` probe (one copy of the data).
    pub sqlite: Vec<PathBuf>,
    /// The `prometheus` probe, which says how many copies its metric counts.
    pub prometheus: Option<Arc<prometheus::Prometheus>>,
}

impl ProbeSet {
    /// The probes of a connected system as configured.
    pub fn of(sys: &dyn System, config: &ProbeConfig) -> ProbeSet {
        ProbeSet {
            native_copies: sys.native_copies(),
            fs: if config.fs_probe.is_empty() {
                sys.default_fs_probe()
            } else {
                config.fs_probe.clone()
            },
            sqlite: config.sqlite_probe.clone(),
            prometheus: config.prometheus.clone(),
        }
    }

    /// Full copies of the data that probe `name` counts.
    pub fn copies(&self, name: &str) -> u32 {
        match name {
            NATIVE => self.native_copies.unwrap_or(1),
            PROMETHEUS => self.prometheus.as_ref().map_or(1, |p| p.copies()),
            _ => 1,
        }
    }

    /// The names of the probes in this set, in record order.
    pub fn names(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.native_copies.is_some() {
            out.push(NATIVE);
        }
        if !self.fs.is_empty() {
            out.push(FS);
        }
        if !self.sqlite.is_empty() {
            out.push(SQLITE);
        }
        if self.prometheus.is_some() {
            out.push(PROMETHEUS);
        }
        out
    }
}

/// Reads every probe of `set`. A lost connection to the system is returned as an error,
/// because nothing measured across an outage may be recorded; any other failure, including an
/// unreachable metrics endpoint, becomes an error reading.
pub async fn read_all(
    sys: &mut dyn System,
    set: &ProbeSet,
) -> Result<BTreeMap<String, Reading>, SysError> {
    let mut out = BTreeMap::new();
    if set.native_copies.is_some() {
        let r = match sys.native_size().await {
            Ok(bytes) => Reading::Bytes { bytes },
            Err(e) if e.kind == ErrorKind::ConnectionLost => return Err(e),
            Err(e) => Reading::Error { error: e.message },
        };
        out.insert(NATIVE.to_string(), r);
    }
    let (fs_paths, sqlite_paths) = (set.fs.clone(), set.sqlite.clone());
    let local = tokio::task::spawn_blocking(move || {
        let fs = (!fs_paths.is_empty()).then(|| Reading::of(fs::allocated_bytes(&fs_paths)));
        let sqlite =
            (!sqlite_paths.is_empty()).then(|| Reading::of(sqlite::used_bytes(&sqlite_paths)));
        (fs, sqlite)
    })
    .await
    .map_err(|e| SysError::failed(format!("probe task: {e}")))?;
    if let Some(r) = local.0 {
        out.insert(FS.to_string(), r);
    }
    if let Some(r) = local.1 {
        out.insert(SQLITE.to_string(), r);
    }
    if let Some(p) = &set.prometheus {
        out.insert(PROMETHEUS.to_string(), Reading::of(p.read().await));
    }
    Ok(out)
}
