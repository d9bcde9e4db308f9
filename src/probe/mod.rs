//! Probes: ways to read physical size before and after a stage.
//!
//! `native` asks the system itself ([`System::native_size`]); `fs` sums the allocated bytes
//! of directories on local disk; `sqlite` sums the pages in use of SQLite database files that
//! a server keeps its data in (free pages a server reuses would hide growth from `fs`). A
//! probe that fails gives an error reading, never a number. Where `fs` and `sqlite` look is
//! configured per system with the same keys for every system ([`ProbePaths`]).

pub mod fs;
pub mod sqlite;

use std::collections::BTreeMap;
use std::path::PathBuf;

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

/// The probe keys of a `[systems.<name>]` section, which every system accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbePaths {
    /// Directories or files whose allocated bytes the `fs` probe sums; default: an embedded
    /// system's own files.
    pub fs_probe: Vec<PathBuf>,
    /// SQLite database files whose pages in use the `sqlite` probe sums.
    pub sqlite_probe: Vec<PathBuf>,
}

impl ProbePaths {
    /// Takes the probe keys out of a system's section; the rest belongs to the adapter.
    pub fn take(
        system: &str,
        section: Option<&toml::Table>,
    ) -> anyhow::Result<(Option<toml::Table>, ProbePaths)> {
        let Some(section) = section else {
            return Ok((None, ProbePaths::default()));
        };
        let mut rest = section.clone();
        let mut keys = toml::Table::new();
        for key in ["fs_probe", "sqlite_probe"] {
            if let Some(v) = rest.remove(key) {
                keys.insert(key.into(), v);
            }
        }
        let paths = ProbePaths::deserialize(toml::Value::Table(keys)).map_err(|e| {
            usage(format!(
                "config [systems.{system}]: {}; fs_probe and sqlite_probe are lists of paths",
                e.to_string().trim()
            ))
        })?;
        Ok((Some(rest), paths))
    }

    /// Every configured path, for checks that they exist.
    pub fn all(&self) -> impl Iterator<Item = &PathBuf> {
        self.fs_probe.iter().chain(&self.sqlite_probe)
    }
}

/// The probes a system is measured with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProbeSet {
    /// `Some(R)`: the native probe, counting R full copies of the data.
    pub native_copies: Option<u32>,
    /// Paths of the `fs` probe (one copy of the data).
    pub fs: Vec<PathBuf>,
    /// Database files of the `sqlite` probe (one copy of the data).
    pub sqlite: Vec<PathBuf>,
}

impl ProbeSet {
    /// The probes of a connected system with the configured paths.
    pub fn of(sys: &dyn System, paths: &ProbePaths) -> ProbeSet {
        ProbeSet {
            native_copies: sys.native_copies(),
            fs: if paths.fs_probe.is_empty() {
                sys.default_fs_probe()
            } else {
                paths.fs_probe.clone()
            },
            sqlite: paths.sqlite_probe.clone(),
        }
    }

    /// Full copies of the data that probe `name` counts.
    pub fn copies(&self, name: &str) -> u32 {
        match name {
            NATIVE => self.native_copies.unwrap_or(1),
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
        out
    }
}

/// Reads every probe of `set`. A lost connection is returned as an error, because nothing
/// measured across an outage may be recorded; any other failure becomes an error reading.
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
    Ok(out)
}
