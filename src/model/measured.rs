//! What probes may ask of a system (its own size function and its own files), and the meter:
//! a second view of a system, on a connection of its own, for looking at it while a stage
//! runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;

use super::SysResult;

/// What a probe may ask of the system it measures. Every system's meter implements it; the
/// probes see only this, so they do not depend on the systems.
#[async_trait]
pub trait Measured: Send {
    /// `Some(R)` when the system has a size function that counts R full copies of the data
    /// (replicas); `None` when it has none. Asked after connecting.
    fn native_copies(&self) -> Option<u32>;

    /// The size function's answer, in bytes (when [`Measured::native_copies`] is `Some`).
    async fn native_size(&mut self) -> SysResult<u64>;

    /// The files the system keeps its data in, where it owns them (an embedded system):
    /// where probes of paths look when the config names none. A server's data directory is
    /// wherever its host keeps it: no default.
    fn own_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// A system's meter: what probes may ask of it plus its own storage accounting, on a
/// connection of its own opened once (per connect), so that the trace can sample it while a
/// stage runs without opening connections and without waiting for the stage's requests.
#[async_trait]
pub trait Meter: Measured {
    /// The storage accounting the system offers, by name: the sizes of its parts (heap,
    /// TOAST, indexes, WAL; file and allocated size; compressed and uncompressed bytes;
    /// memory; log sizes), bytes written, work still pending. Names are the system's own.
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>>;
}

/// The meter of a system that could not make one (its server is away): no native size, no
/// files of its own, no accounting; probes of configured paths and endpoints still read.
pub struct Offline {
    /// Why there is no meter.
    pub why: String,
}

#[async_trait]
impl Measured for Offline {
    fn native_copies(&self) -> Option<u32> {
        None
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        Err(super::SysError::connection(self.why.clone()))
    }
}

#[async_trait]
impl Meter for Offline {
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>> {
        Err(super::SysError::connection(self.why.clone()))
    }
}
