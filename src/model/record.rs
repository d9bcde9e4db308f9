//! Journal records: what the engine writes, what reports and resume read.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ErrorKind, Layout, Lease, Reading};
use crate::dataset::PayloadType;
use crate::scan::ScanResult;

/// The four stages of a cell, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// All files with the fastest native path.
    BulkInsert,
    /// One request per file.
    PerfileInsert,
    /// One delete per file.
    PerfileDelete,
    /// The system's space-reclaiming operation.
    Maintenance,
}

impl Stage {
    /// All stages in cell order.
    pub const ALL: [Stage; 4] = [
        Stage::BulkInsert,
        Stage::PerfileInsert,
        Stage::PerfileDelete,
        Stage::Maintenance,
    ];

    /// Name in records and tables.
    pub fn name(self) -> &'static str {
        match self {
            Stage::BulkInsert => "bulk_insert",
            Stage::PerfileInsert => "perfile_insert",
            Stage::PerfileDelete => "perfile_delete",
            Stage::Maintenance => "maintenance",
        }
    }

    /// Whether the stage writes the data set (EDR and dedup capture apply).
    pub fn inserts(self) -> bool {
        matches!(self, Stage::BulkInsert | Stage::PerfileInsert)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One cell: the unit of work, resume and retry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CellKey {
    /// System name.
    pub system: String,
    /// Payload type.
    pub payload: PayloadType,
    /// Grade in percent.
    pub grade: u8,
    /// Run number, from 1.
    pub run: u32,
}

impl fmt::Display for CellKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/U{}/run{}",
            self.system, self.payload, self.grade, self.run
        )
    }
}

/// Latency distribution of a per-file stage, in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Fastest request.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest request.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// Readings of one probe around a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// Before the stage.
    pub before: Reading,
    /// After the stage and the settle step.
    pub after: Reading,
    /// Full copies of the data the probe counts (replicas); EDR_replica divides by it once.
    pub copies: u32,
}

/// Measurements of one stage of one cell attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The cell.
    pub cell: CellKey,
    /// Attempt number of the cell, from 1.
    pub attempt: u32,
    /// The stage.
    pub stage: Stage,
    /// When the stage began.
    pub started_at: DateTime<Utc>,
    /// Files written or deleted.
    pub files: u64,
    /// L: logical bytes written or deleted (sum of file sizes).
    pub logical_bytes: u64,
    /// U: unique bytes of the data set.
    pub unique_bytes: u64,
    /// Files present after the stage, as the system counts them.
    pub rows_after: u64,
    /// Time of the stage's own work, without settling.
    pub duration_s: f64,
    /// Time the settle step took.
    pub settle_s: f64,
    /// L / duration, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_bps: Option<f64>,
    /// Per-file latency distribution (per-file stages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Latency>,
    /// Probe readings by probe name.
    pub probes: BTreeMap<String, ProbeRecord>,
    /// What the stage did, when that is not obvious (maintenance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Requests the adapter sent again during the stage (e.g. after a server error): a
    /// retried per-file request is inside its timed latency, so the record says so.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retried_requests: u64,
    /// Dedup potential of the system's data directories before and after the stage (insert
    /// stages, when scanning is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub potential: Option<PotentialRecord>,
    /// The out-of-band block dedup of the storage layer run after the stage (insert stages,
    /// on btrfs lab storage); its readings are the `storage_dedupe` probe's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_dedupe: Option<DedupeRecord>,
    /// The system's own storage accounting before and after the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotRecord>,
    /// How the instance laid the data set out (keys and containers); absent: by name, in
    /// one container.
    #[serde(default, skip_serializing_if = "Layout::is_default")]
    pub layout: Layout,
}

/// A system's storage accounting at one moment, or why there is none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Snapshot {
    /// Values by name.
    Values(BTreeMap<String, f64>),
    /// It could not be read; the message says why.
    Error {
        /// What went wrong.
        error: String,
    },
}

/// The system's storage accounting around a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Before the stage.
    pub before: Snapshot,
    /// After the stage and the settle step.
    pub after: Snapshot,
}

/// A dedup-potential scan: what it found, or why there is nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scanned {
    /// The scan read everything.
    Scan(ScanResult),
    /// The scan failed; the message says why.
    Error {
        /// What went wrong.
        error: String,
    },
}

impl Scanned {
    /// Duplicate bytes the scan found with `method`, if it succeeded.
    pub fn duplicate_bytes(&self, method: &str) -> Option<u64> {
        match self {
            Scanned::Scan(r) => r.method(method).map(|m| m.duplicate_bytes),
            Scanned::Error { .. } => None,
        }
    }

    /// The methods of a successful scan, in order.
    pub fn methods(&self) -> Vec<String> {
        match self {
            Scanned::Scan(r) => r.methods.iter().map(|m| m.method.clone()).collect(),
            Scanned::Error { .. } => Vec::new(),
        }
    }
}

/// Dedup potential around a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PotentialRecord {
    /// Before the stage.
    pub before: Scanned,
    /// After the stage and the settle step.
    pub after: Scanned,
}

/// An out-of-band block dedup pass over the storage layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DedupeRecord {
    /// Its block size, bytes.
    pub block_size: u64,
    /// How long it took, seconds.
    pub duration_s: f64,
    /// Why it did not run or what failed, if so (the `storage_dedupe` readings then hold
    /// the error too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Name of the pseudo-probe whose readings are the storage probe's before a stage and after
/// the out-of-band dedup that follows it.
pub const STORAGE_DEDUPE: &str = "storage_dedupe";

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One line of the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A `run` invocation began.
    Session {
        /// When.
        started_at: DateTime<Utc>,
        /// dedup-lab version.
        tool_version: String,
        /// Process id.
        pid: u32,
    },
    /// A stage finished and was measured (boxed: it is by far the largest record).
    Stage(Box<StageRecord>),
    /// All stages of a cell attempt succeeded; only such attempts count in reports.
    CellDone {
        /// The cell.
        cell: CellKey,
        /// The attempt that completed.
        attempt: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// The dedup potential of one data set's files: the upper bound of every system's.
    DataSetScan {
        /// Run number.
        run: u32,
        /// Payload type.
        payload: PayloadType,
        /// Grade.
        grade: u8,
        /// What the scan found.
        potential: Scanned,
    },
    /// This run took over a namespace whose lease's holder no longer runs.
    LeaseTaken {
        /// The system instance whose namespace it is.
        system: String,
        /// The lease that was found.
        previous: Lease,
        /// When.
        at: DateTime<Utc>,
    },
    /// A cell attempt failed; its stage records (if any) do not count.
    AttemptFailed {
        /// The cell.
        cell: CellKey,
        /// The attempt that failed.
        attempt: u32,
        /// The stage it failed in, if it got that far.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<Stage>,
        /// Kind of failure.
        kind: ErrorKind,
        /// The error.
        error: String,
        /// When.
        at: DateTime<Utc>,
    },
}
