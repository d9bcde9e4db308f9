//! A trace sample: one probe reading taken while a stage runs or settles.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Reading, Stage};

/// One probe reading during a stage, as the trace takes it and the sinks send it. The trace
/// fills it; the sinks only pass it on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceSample {
    /// Experiment id.
    pub experiment: String,
    /// System instance.
    pub system: String,
    /// The stage the sample was taken in.
    pub stage: Stage,
    /// Probe name.
    pub probe: String,
    /// Seconds since the stage started.
    pub t_s: f64,
    /// Wall time of the reading.
    pub at: DateTime<Utc>,
    /// Bytes, or why there are none.
    #[serde(flatten)]
    pub reading: Reading,
}
