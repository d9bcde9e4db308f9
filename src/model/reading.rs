//! A probe reading and the product a system reports.

use serde::{Deserialize, Serialize};

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

    /// The error, if the probe failed.
    pub fn error(&self) -> Option<&str> {
        match self {
            Reading::Bytes { .. } => None,
            Reading::Error { error } => Some(error),
        }
    }

    /// A reading from a result: its bytes, or its error with all causes.
    pub fn of(result: anyhow::Result<u64>) -> Reading {
        match result {
            Ok(bytes) => Reading::Bytes { bytes },
            Err(e) => Reading::Error {
                error: format!("{e:#}"),
            },
        }
    }
}

/// Product and version a system reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Product name, e.g. "PostgreSQL", "SQLite".
    pub product: String,
    /// Version string as the server reports it.
    pub version: String,
}
