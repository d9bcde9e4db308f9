//! One cell attempt: reset, the four stages with probes around each, reset.

use std::time::Instant;

use chrono::Utc;

use super::journal::Journal;
use crate::dataset::DataSet;
use crate::probe::{self, ProbeSet};
use crate::results::record::{CellKey, Latency, ProbeRecord, Record, Stage, StageRecord};
use crate::systems::{SysError, System};

/// Why a cell attempt stopped.
#[derive(Debug)]
pub enum CellError {
    /// The system failed; the attempt is recorded as failed and may be retried.
    System {
        /// Stage in progress, `None` during a reset.
        stage: Option<Stage>,
        /// The error.
        error: SysError,
    },
    /// The journal could not be written: the whole run must stop.
    Journal(anyhow::Error),
}

/// Everything one attempt works with.
pub struct Attempt<'a> {
    /// The system under test.
    pub sys: &'a mut dyn System,
    /// Its probes.
    pub probes: &'a ProbeSet,
    /// The data set of the cell.
    pub ds: &'a DataSet,
    /// The cell.
    pub key: &'a CellKey,
    /// Attempt number.
    pub attempt: u32,
    /// Where stage records go.
    pub journal: &'a mut Journal,
}

impl Attempt<'_> {
    /// Runs the whole cell sequence of DESIGN.md §3.
    pub async fn run(mut self) -> Result<(), CellError> {
        self.reset().await?;
        // From here on, any outage the client healed by itself fails the attempt (what came
        // before was the connect and the reset, whose own operations would have failed).
        let begun = Instant::now();
        self.stage(Stage::BulkInsert, begun).await?;
        self.reset().await?;
        for stage in [
            Stage::PerfileInsert,
            Stage::PerfileDelete,
            Stage::Maintenance,
        ] {
            self.stage(stage, begun).await?;
        }
        self.reset().await
    }

    async fn reset(&mut self) -> Result<(), CellError> {
        let at = |error| CellError::System { stage: None, error };
        self.sys.reset().await.map_err(at)?;
        self.sys.settle().await.map_err(at)
    }

    async fn stage(&mut self, stage: Stage, begun: Instant) -> Result<(), CellError> {
        let at = |error| CellError::System {
            stage: Some(stage),
            error,
        };
        let files = &self.ds.manifest.files;
        let before = probe::read_all(self.sys, self.probes).await.map_err(at)?;
        let started_at = Utc::now();
        let clock = Instant::now();
        let mut latency = None;
        let mut note = None;
        let (count, logical, expect_after) = match stage {
            Stage::BulkInsert => {
                self.sys.bulk_insert(self.ds).await.map_err(at)?;
                (files.len(), self.ds.manifest.logical_bytes, files.len())
            }
            Stage::PerfileInsert | Stage::PerfileDelete => {
                let insert = stage == Stage::PerfileInsert;
                latency = Some(self.per_file(insert).await.map_err(at)?);
                (
                    files.len(),
                    self.ds.manifest.logical_bytes,
                    if insert { files.len() } else { 0 },
                )
            }
            Stage::Maintenance => {
                note = Some(self.sys.maintenance().await.map_err(at)?);
                (0, 0, 0)
            }
        };
        let duration = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        self.sys.settle().await.map_err(at)?;
        let settle = clock.elapsed().as_secs_f64();
        let after = probe::read_all(self.sys, self.probes).await.map_err(at)?;
        let rows_after = self.sys.count().await.map_err(at)?;
        if rows_after != expect_after as u64 {
            return Err(at(SysError::failed(format!(
                "{stage} left {rows_after} files in {}, expected {expect_after}",
                self.sys.name()
            ))));
        }
        if let Some(why) = self.sys.interrupted_since(begun) {
            return Err(at(SysError::connection(why)));
        }
        let probes = before
            .into_iter()
            .filter_map(|(name, before)| {
                let record = ProbeRecord {
                    before,
                    after: after.get(&name)?.clone(),
                    copies: self.probes.copies(&name),
                };
                Some((name, record))
            })
            .collect();
        let record = StageRecord {
            cell: self.key.clone(),
            attempt: self.attempt,
            stage,
            started_at,
            files: count as u64,
            logical_bytes: logical,
            unique_bytes: self.ds.manifest.unique_bytes,
            rows_after,
            duration_s: duration,
            settle_s: settle,
            throughput_bps: (logical > 0 && duration > 0.0).then(|| logical as f64 / duration),
            latency_us: latency,
            probes,
            note,
        };
        self.journal
            .append(&Record::Stage(record))
            .map_err(CellError::Journal)
    }

    /// Inserts or deletes every file with one request each, timing each request. File
    /// contents are read before the clock starts.
    async fn per_file(&mut self, insert: bool) -> Result<Latency, SysError> {
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .expect("valid histogram bounds");
        for f in &self.ds.manifest.files {
            let content = if insert {
                Some(
                    self.ds
                        .read(f)
                        .map_err(|e| SysError::failed(format!("{e:#}")))?,
                )
            } else {
                None
            };
            let clock = Instant::now();
            match content {
                Some(bytes) => self.sys.insert_one(f, bytes).await?,
                None => self.sys.delete_one(f).await?,
            }
            hist.saturating_record(clock.elapsed().as_micros().max(1) as u64);
        }
        let q = |p: f64| hist.value_at_quantile(p) as f64;
        Ok(Latency {
            min: hist.min() as f64,
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            max: hist.max() as f64,
            mean: hist.mean(),
        })
    }
}
