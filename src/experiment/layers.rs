//! The storage layer's steps of a cell: dedup-potential scans of a system's data directories
//! and of each data set, and the out-of-band block dedup of a system's btrfs storage after an
//! insert stage, with the storage probe read again after it.

use std::path::PathBuf;
use std::time::Instant;

use crate::config::Resolved;
use crate::dataset::DataSet;
use crate::model::{DedupeRecord, Measured, Reading, Scanned};
use crate::probe::{self, Probes, extents};
use crate::scan::{ScanConfig, Scanner};

/// What the cell does at the storage layer, from the config.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    /// Dedup-potential scans, when on.
    pub scan: Option<ScanConfig>,
    /// Block size of the out-of-band dedup, when on.
    pub dedupe_block: Option<u64>,
}

impl Layers {
    /// The layers' settings of an experiment.
    pub fn of(config: &Resolved) -> Layers {
        Layers {
            scan: config.scan.clone(),
            dedupe_block: config.dedupe_block,
        }
    }

    /// The data directories a system's potential is scanned in: what its `fs` probe reads,
    /// else what its `storage` probe reads; none when scanning is off.
    pub fn scan_paths(&self, probes: &Probes, sys: &dyn Measured) -> Vec<PathBuf> {
        if self.scan.is_none() {
            return Vec::new();
        }
        let fs = probes.data_paths(probe::fs::DEF.name, sys);
        if fs.is_empty() {
            probes.data_paths(probe::storage::DEF.name, sys)
        } else {
            fs
        }
    }

    /// Scans `paths` (on the blocking pool).
    pub async fn scan_paths_now(&self, paths: &[PathBuf]) -> Option<Scanned> {
        let config = self.scan.clone()?;
        let paths = paths.to_vec();
        Some(blocking(move || crate::scan::scan(&paths, &config)).await)
    }

    /// Scans a data set's files (not its manifest), in manifest order, calling `scanned`
    /// with each file's size (for progress).
    pub async fn scan_data_set(
        &self,
        ds: &DataSet,
        scanned: impl Fn(u64) + Send + 'static,
    ) -> Option<Scanned> {
        let config = self.scan.clone()?;
        let ds = ds.clone();
        Some(
            blocking(move || {
                let mut scanner = Scanner::new(&config)?;
                for f in &ds.manifest.files {
                    scanner.add_file(&ds.path(f))?;
                    scanned(f.size);
                }
                scanner.finish()
            })
            .await,
        )
    }

    /// Runs out-of-band dedup over the storage probe's paths when dedup is on and they are on
    /// btrfs, then reads the storage probe again. `None` where it does not apply. `started` is
    /// called as the dedup starts; what it returns is held until it ends (a progress task).
    pub async fn dedupe<T>(
        &self,
        probes: &Probes,
        sys: &mut dyn Measured,
        started: impl FnOnce() -> T,
    ) -> Option<(DedupeRecord, Reading)> {
        let block_size = self.dedupe_block?;
        let paths = probes.data_paths(probe::storage::DEF.name, sys);
        let on_btrfs = !paths.is_empty()
            && paths.iter().all(|p| {
                std::fs::File::open(p)
                    .and_then(|f| extents::is_btrfs(&f).map_err(std::io::Error::other))
                    .unwrap_or(false)
            });
        if !on_btrfs {
            return None;
        }
        let _started = started();
        let clock = Instant::now();
        let run = tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .try_for_each(|p| crate::lab::dedupe::dedupe(p, block_size).map(drop))
        })
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("dedupe task: {e}")));
        let record = DedupeRecord {
            block_size,
            duration_s: clock.elapsed().as_secs_f64(),
            error: run.as_ref().err().map(|e| format!("{e:#}")),
        };
        let reading = match run {
            Ok(()) => probes
                .read_one(probe::storage::DEF.name, sys)
                .await
                .unwrap_or_else(|| Reading::Error {
                    error: "the storage probe does not apply".into(),
                }),
            Err(e) => Reading::Error {
                error: format!("out-of-band dedupe failed: {e:#}"),
            },
        };
        Some((record, reading))
    }
}

/// Runs a scan on the blocking pool, as a scan or its error.
async fn blocking(
    f: impl FnOnce() -> anyhow::Result<crate::scan::ScanResult> + Send + 'static,
) -> Scanned {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(result)) => Scanned::Scan(result),
        Ok(Err(e)) => Scanned::Error {
            error: format!("{e:#}"),
        },
        Err(e) => Scanned::Error {
            error: format!("scan task: {e}"),
        },
    }
}
