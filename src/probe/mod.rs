//! Probes: ways to read physical size before and after a stage.
//!
//! `native` asks the system itself ([`System::native_size`]); `fs` sums the allocated bytes
//! of directories on local disk. A probe that fails gives an error reading, never a number.

pub mod fs;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::systems::{ErrorKind, ProbeSet, SysError, System};

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
}

/// Name of the native probe in records.
pub const NATIVE: &str = "native";
/// Name of the filesystem probe in records.
pub const FS: &str = "fs";

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
    if !set.fs.is_empty() {
        let paths = set.fs.clone();
        let r = tokio::task::spawn_blocking(move || fs::allocated_bytes(&paths))
            .await
            .map_err(|e| SysError::failed(format!("fs probe task: {e}")))?;
        let r = match r {
            Ok(bytes) => Reading::Bytes { bytes },
            Err(e) => Reading::Error {
                error: format!("{e:#}"),
            },
        };
        out.insert(FS.to_string(), r);
    }
    Ok(out)
}
