//! The trace: sizes sampled while a stage runs and settles, the system's own accounting,
//! and event markers, one [`TraceLine`] per line of `trace.jsonl`. The engine writes it, the
//! report draws it, sinks pass it on.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{CellKey, Reading, Snapshot, Stage};

/// An event marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The stage's own work began.
    StageStart,
    /// The stage's own work ended.
    StageEnd,
    /// Settling began.
    SettleStart,
    /// Settling ended.
    SettleEnd,
    /// The system's maintenance operation was started.
    Maintenance,
    /// Out-of-band block dedup of the storage layer was started.
    StorageDedupe,
}

impl Event {
    /// Name in the trace.
    pub fn name(self) -> &'static str {
        match self {
            Event::StageStart => "stage_start",
            Event::StageEnd => "stage_end",
            Event::SettleStart => "settle_start",
            Event::SettleEnd => "settle_end",
            Event::Maintenance => "maintenance",
            Event::StorageDedupe => "storage_dedupe",
        }
    }
}

/// What a trace line holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TraceItem {
    /// A probe's sample: its bytes or why there are none.
    Sample {
        /// Probe name.
        probe: String,
        /// The reading.
        #[serde(flatten)]
        reading: Reading,
    },
    /// An event marker.
    Event {
        /// Which.
        event: Event,
    },
    /// The system's own storage accounting at this moment (see [`super::Meter::snapshot`]).
    Metrics {
        /// Values by name, or why there are none.
        metrics: Snapshot,
    },
}

/// One line of the trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceLine {
    /// The cell.
    pub cell: CellKey,
    /// Its attempt.
    pub attempt: u32,
    /// The stage.
    pub stage: Stage,
    /// Seconds since the stage started.
    pub t_s: f64,
    /// Wall time.
    pub at: DateTime<Utc>,
    /// Sample or event.
    #[serde(flatten)]
    pub item: TraceItem,
}
