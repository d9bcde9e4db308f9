//! Out-of-band block deduplication of a directory on btrfs: what a deduplicating storage
//! layer would give on a system's on-disk format.
//!
//! It runs `duperemove -dr -b <block> --dedupe-options=same,partial` (Debian package
//! `duperemove`). duperemove hashes the files' blocks and asks the kernel to share identical
//! ranges with `FIDEDUPERANGE`, which locks both ranges, compares their bytes and only then
//! points both at one extent: file content never changes, so it is safe under a live server.
//! `same` lets it share ranges inside one file, `partial` makes it compare blocks within
//! extents (without it duperemove 0.11 found nothing when whole extents did not match).
//! Its hash file goes into a temporary directory off the measured file system.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::bail_usage;
use crate::error::usage;
use crate::probe::extents::is_btrfs;

/// The Debian package and program.
const DUPEREMOVE: &str = "duperemove";
/// duperemove's bounds on its block size (`-b`).
const MIN_BLOCK: u64 = 4 << 10;
const MAX_BLOCK: u64 = 1 << 20;

/// What one pass did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeRun {
    /// Block size it hashed and compared at.
    pub block_size: u64,
    /// Wall time of the duperemove run.
    pub duration: Duration,
    /// duperemove's own summary (its quiet output: files, identical extents found, net
    /// change), in its words.
    pub summary: String,
    /// duperemove's "net change in shared extents" in bytes, if it printed one. It counts
    /// every file's newly shared bytes, not bytes freed: check the storage probe for those.
    pub shared_change_bytes: Option<i64>,
}

/// Refuses a block size duperemove does not take (usage error).
pub fn check_block(block_size: u64) -> anyhow::Result<()> {
    if !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) || !block_size.is_multiple_of(MIN_BLOCK) {
        bail_usage!(
            "dedupe block size {block_size} bytes is out of range: duperemove takes 4 KiB to \
             1 MiB in multiples of 4 KiB, e.g. 128KiB"
        );
    }
    Ok(())
}

/// Deduplicates the files under `dir` at `block_size` (4 KiB to 1 MiB, a multiple of 4 KiB).
/// `dir` must be on btrfs. The file system is flushed first, so that every block has its
/// extent. Usage errors: duperemove missing (names the package), `dir` not on btrfs, a bad
/// block size.
pub fn dedupe(dir: &Path, block_size: u64) -> anyhow::Result<DedupeRun> {
    check_block(block_size)?;
    if !super::process::on_path(DUPEREMOVE) {
        bail_usage!(
            "duperemove is not installed (not found on PATH): install the Debian package \
             {DUPEREMOVE} (`apt-get install {DUPEREMOVE}`); `dedup-lab lab up --storage btrfs` \
             installs it when run as root"
        );
    }
    let file = std::fs::File::open(dir).map_err(|e| {
        usage(format!(
            "cannot open {} to deduplicate it: {e}; check the path",
            dir.display()
        ))
    })?;
    if !is_btrfs(&file).with_context(|| dir.display().to_string())? {
        bail_usage!(
            "{} is not on btrfs: dedup-lab runs out-of-band dedupe only on its btrfs lab \
             storage, where FIDEDUPERANGE shares extents safely; start the lab with \
             `dedup-lab lab up --storage btrfs` (or btrfs-zstd)",
            dir.display()
        );
    }
    rustix::fs::syncfs(&file).with_context(|| format!("syncfs {}", dir.display()))?;
    let hashes = tempfile::tempdir().context("creating a directory for duperemove's hash file")?;
    let start = Instant::now();
    let out = super::run(
        Command::new(DUPEREMOVE)
            .args(["-q", "-d", "-r", "-b"])
            .arg(block_size.to_string())
            .arg("--dedupe-options=same,partial")
            .arg(format!(
                "--hashfile={}",
                hashes.path().join("hashes.db").display()
            ))
            .arg(dir),
    )
    .with_context(|| format!("duperemove over {}", dir.display()))?;
    let duration = start.elapsed();
    Ok(DedupeRun {
        block_size,
        duration,
        shared_change_bytes: shared_change(&out),
        summary: summary(&out),
    })
}

/// The summary lines of duperemove's quiet output: from "Total files:" on (before it, it
/// warns about its hash file format).
fn summary(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    let from = lines
        .iter()
        .position(|l| l.starts_with("Total files:"))
        .unwrap_or(0);
    lines[from..].join("\n").trim().to_string()
}

/// The number after "net change in shared extents of:".
fn shared_change(out: &str) -> Option<i64> {
    out.lines()
        .find_map(|l| l.split_once("net change in shared extents of:"))
        .and_then(|(_, n)| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// duperemove 0.11.2's quiet output, as it printed it deduplicating two 8 MiB copies.
    const OUTPUT: &str = "Warning: The hash file format in Duperemove master branch is under \
development and may change.\nIf the changes are not backwards compatible, you will have to \
re-create your hash file.\nTotal files:  2\nFound 2 identical extents.\nSimple read and \
compare of file data found 1 instances of extents that might benefit from deduplication.\n\
Comparison of extent info shows a net change in shared extents of: 16777216\n";

    #[test]
    fn summary_and_net_change_come_from_duperemoves_output() {
        let s = summary(OUTPUT);
        assert!(
            s.starts_with("Total files:  2\nFound 2 identical extents."),
            "{s}"
        );
        assert!(!s.contains("Warning"));
        assert_eq!(shared_change(OUTPUT), Some(16_777_216));
        assert_eq!(shared_change("nothing"), None);
    }

    #[test]
    fn block_size_out_of_range_is_a_usage_error() {
        for bad in [2048, 6144, 2 << 20] {
            let e = dedupe(Path::new("/"), bad).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), 2);
            assert!(e.to_string().contains("4 KiB to 1 MiB"), "{e}");
        }
    }
}
