//! The `fs` probe: allocated bytes (`st_blocks` × 512) of files and directories on disk, under
//! the paths in `fs_probe` (default: an embedded system's own files).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use async_trait::async_trait;

use super::{Built, Probe, ProbeContext, ProbeDef};
use crate::model::{Measured, Reading, SysError};

/// Registry entry.
pub const DEF: ProbeDef = ProbeDef {
    name: "fs",
    key: Some(KEY),
    key_help: "a list of paths",
    about: "allocated bytes (st_blocks) under directories or files on local disk",
    build,
};

/// The config key.
pub const KEY: &str = "fs_probe";

fn build(ctx: &ProbeContext<'_>) -> Built {
    let paths: Option<Vec<PathBuf>> = ctx.parse(&DEF)?;
    Ok(Some(Box::new(Fs {
        paths: paths.unwrap_or_default(),
    })))
}

/// The configured paths, or the system's own files when none are configured.
struct Fs {
    paths: Vec<PathBuf>,
}

impl Fs {
    fn paths(&self, sys: &dyn Measured) -> Vec<PathBuf> {
        if self.paths.is_empty() {
            sys.own_files()
        } else {
            self.paths.clone()
        }
    }
}

#[async_trait]
impl Probe for Fs {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn applies(&self, sys: &dyn Measured) -> bool {
        !self.paths(sys).is_empty()
    }

    /// The configured paths (an embedded system's own files appear at its first reset).
    fn required_paths(&self) -> &[PathBuf] {
        &self.paths
    }

    fn data_paths(&self, sys: &dyn Measured) -> Vec<PathBuf> {
        self.paths(sys)
    }

    async fn read(&self, sys: &mut dyn Measured) -> Result<Reading, SysError> {
        let paths = self.paths(sys);
        Ok(super::blocking(move || allocated_bytes(&paths)).await)
    }
}

/// Sums the allocated bytes of every path (recursively for directories), counting each inode
/// once and not following symbolic links. A missing or unreadable path is an error.
pub fn allocated_bytes(paths: &[PathBuf]) -> anyhow::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    for root in paths {
        total += allocated_under(root, &mut seen)?;
    }
    Ok(total)
}

fn allocated_under(root: &Path, seen: &mut HashSet<(u64, u64)>) -> anyhow::Result<u64> {
    if !root.exists() {
        bail!("fs probe: {} does not exist", root.display());
    }
    let mut total = 0u64;
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        // Files and directories can vanish while a live server runs (temporary files, parts
        // being removed); they hold no bytes.
        let entry = match entry {
            Ok(e) => e,
            Err(e) if vanished(&e) => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("fs probe: walking {}", root.display()));
            }
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if vanished(&e) => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("fs probe: {}", entry.path().display()));
            }
        };
        if seen.insert((meta.dev(), meta.ino())) {
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

/// Whether a walk error means the entry was deleted meanwhile (a live server's files).
pub(crate) fn vanished(e: &walkdir::Error) -> bool {
    e.io_error().map(|io| io.kind()) == Some(std::io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocated_blocks_once_per_inode() {
        let dir = tempfile::tempdir().unwrap();
        let before = allocated_bytes(&[dir.path().to_path_buf()]).unwrap();
        let data = vec![7u8; 1 << 20];
        std::fs::write(dir.path().join("a"), &data).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let file = std::fs::File::open(dir.path().join("a")).unwrap();
        file.sync_all().unwrap();
        let after = allocated_bytes(&[dir.path().to_path_buf()]).unwrap();
        let grown = after - before;
        assert!(
            (1 << 20..(1 << 20) + 64 * 1024).contains(&grown),
            "grew {grown}"
        );
    }

    #[test]
    fn missing_path_is_an_error_not_zero() {
        let err = allocated_bytes(&[PathBuf::from("/nonexistent/dedup-lab")]).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }
}
