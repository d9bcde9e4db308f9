//! The shared vocabulary every layer speaks: how a system operation failed, what a probe
//! read, which run holds a namespace, and the journal's records. It depends on nothing
//! above the data sets, so systems, probes, results and the engine can all use it without
//! depending on each other.

mod failure;
mod layout;
mod lease;
mod measured;
mod reading;
mod record;
mod shard;
mod trace;

pub use failure::{ErrorKind, SysError, SysResult, error_chain, failed};
pub use layout::{KeyMode, Layout, MAX_CONTAINERS};
pub use lease::{Lease, this_host};
pub use measured::{Measured, Meter, Offline};
pub use reading::{Reading, ServerInfo};
pub use record::{
    CellKey, DedupeRecord, Latency, PotentialRecord, ProbeRecord, Record, STORAGE_DEDUPE, Scanned,
    Snapshot, SnapshotRecord, Stage, StageRecord,
};
pub use shard::{INDEX_ENV, Shard, ShardBy};
pub use trace::{Event, TraceItem, TraceLine};
