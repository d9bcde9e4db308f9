//! The `storage` probe: what the file system under a system allocates for its files after its
//! own compression and block sharing, each physical extent counted once ([`extents`]). On the
//! lab's btrfs storage it sees what a compressing, deduplicating storage layer keeps of what
//! the system wrote; the `fs` probe beside it counts each file's blocks as if unshared.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Built, Probe, ProbeContext, ProbeDef, extents};
use crate::model::{Measured, Reading, SysError};

/// Registry entry.
pub const DEF: ProbeDef = ProbeDef {
    name: "storage",
    key: Some(KEY),
    key_help: "a list of paths on the storage layer (the system's data directories)",
    about: "physical bytes at the storage layer: distinct extents after compression and sharing",
    build,
};

/// The config key.
pub const KEY: &str = "storage_probe";

fn build(ctx: &ProbeContext<'_>) -> Built {
    let paths: Option<Vec<PathBuf>> = ctx.parse(&DEF)?;
    Ok(paths
        .filter(|p| !p.is_empty())
        .map(|paths| Box::new(Storage { paths }) as Box<dyn Probe>))
}

struct Storage {
    paths: Vec<PathBuf>,
}

#[async_trait]
impl Probe for Storage {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn required_paths(&self) -> &[PathBuf] {
        &self.paths
    }

    fn data_paths(&self, _: &dyn Measured) -> Vec<PathBuf> {
        self.paths.clone()
    }

    async fn read(&self, _: &mut dyn Measured) -> Result<Reading, SysError> {
        let paths = self.paths.clone();
        Ok(super::blocking(move || Ok(extents::measure(&paths)?.physical_bytes)).await)
    }
}
