//! What probes may ask of a system: its own size function and its own files.

use std::path::PathBuf;

use async_trait::async_trait;

use super::SysResult;

/// What a probe may ask of the system it measures. Every system implements it (as part of the
/// `System` trait); the probes see only this, so they do not depend on the systems.
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
