//! One cell attempt: reset, the four stages with probes around each, reset.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use super::layers::Layers;
use super::progress::{Progress, Task, Unit};
use super::trace::{At, Tracer, snapshot_of};
use crate::dataset::DataSet;
use crate::journal::Journal;
use crate::model::{
    CellKey, Event, Latency, Layout, Meter, PotentialRecord, ProbeRecord, Record, STORAGE_DEDUPE,
    SnapshotRecord, Stage, StageRecord, SysError, SysResult,
};
use crate::probe::Probes;
use crate::sinks::Sinks;
use crate::systems::System;
use crate::systems::toolkit::ownership::{self, Claim};

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
    /// How it lays the data set out.
    pub layout: Layout,
    /// Its meter, once made (made again after it was lost).
    pub meter: &'a mut Option<Box<dyn Meter>>,
    /// Its probes.
    pub probes: &'a Arc<Probes>,
    /// This run's claim on its namespace.
    pub claim: &'a mut Claim,
    /// What the cell does at the storage layer.
    pub layers: &'a Layers,
    /// Where progress goes.
    pub progress: &'a Progress,
    /// The data set of the cell.
    pub ds: &'a DataSet,
    /// The cell.
    pub key: &'a CellKey,
    /// Attempt number.
    pub attempt: u32,
    /// Where stage records go.
    pub journal: &'a mut Journal,
    /// Where stage records go next, once the journal holds them.
    pub sinks: &'a Sinks,
    /// Where samples taken during stages go.
    pub tracer: &'a Tracer,
}

/// What a stage's own work did.
struct Work {
    files: u64,
    logical: u64,
    expect_after: u64,
    latency: Option<Latency>,
    note: Option<String>,
    duration_s: f64,
    settle_s: f64,
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
        let taken = ownership::reset(self.sys, self.claim).await.map_err(at)?;
        if let Some(previous) = taken {
            tracing::warn!(
                "{}: took over the namespace of a run that no longer runs ({})",
                self.sys.name(),
                previous.describe(Utc::now())
            );
            self.journal
                .append(&Record::LeaseTaken {
                    system: self.sys.name().to_string(),
                    previous,
                    at: Utc::now(),
                })
                .map_err(CellError::Journal)?;
        }
        self.sys.settle().await.map_err(at)
    }

    /// A task for work whose amount is unknown: `what` the cell is doing.
    fn waiting(&self, what: impl std::fmt::Display) -> Task {
        self.progress
            .task(format!("{} {what}", self.key), Unit::Wait, None)
    }

    /// The meter, made on first use and again after it was lost.
    async fn meter(&mut self) -> SysResult<&mut dyn Meter> {
        if self.meter.is_none() {
            *self.meter = Some(self.sys.meter().await?);
        }
        Ok(self.meter.as_deref_mut().expect("made above"))
    }

    async fn stage(&mut self, stage: Stage, begun: Instant) -> Result<(), CellError> {
        let at = |error| CellError::System {
            stage: Some(stage),
            error,
        };
        let (probes, layers) = (self.probes, self.layers);
        let meter = self.meter().await.map_err(at)?;
        let looking = tokio::time::Instant::now();
        let before = probes.read_all(meter).await.map_err(at)?;
        let snapshot_before = snapshot_of(meter.snapshot().await);
        let look = looking.elapsed();
        // The storage layer is looked at around the stages that write the data set.
        let scan_paths = match stage.inserts() {
            true => layers.scan_paths(probes, meter),
            false => Vec::new(),
        };
        let potential_before = match scan_paths.is_empty() {
            true => None,
            false => {
                let _task = self.waiting(format_args!("{stage}: scanning data directories"));
                self.layers.scan_paths_now(&scan_paths).await
            }
        };
        let retried = self.sys.retried_requests();
        let started_at = Utc::now();
        let here = At {
            cell: self.key.clone(),
            attempt: self.attempt,
            stage,
            started: tokio::time::Instant::now(),
        };
        self.tracer.event(&here, Event::StageStart);
        self.tracer.readings(&here, &before, &snapshot_before);
        let meter = self.meter.take().expect("made above");
        let sampling = self
            .tracer
            .start(here.clone(), look, Arc::clone(probes), meter);
        let work = self.work(stage, &here).await;
        *self.meter = sampling.stop().await;
        let work = work.map_err(at)?;
        let retried_requests = self.sys.retried_requests() - retried;
        let meter = self.meter().await.map_err(at)?;
        let after = probes.read_all(meter).await.map_err(at)?;
        let snapshot_after = snapshot_of(meter.snapshot().await);
        self.tracer.readings(&here, &after, &snapshot_after);
        let rows_after = self.sys.count().await.map_err(at)?;
        if rows_after != work.expect_after {
            return Err(at(SysError::failed(format!(
                "{stage} left {rows_after} files in {}, expected {}",
                self.sys.name(),
                work.expect_after
            ))));
        }
        if let Some(why) = self.sys.interrupted_since(begun) {
            return Err(at(SysError::connection(why)));
        }
        let mut potential = None;
        if let Some(before) = potential_before {
            let _task = self.waiting(format_args!("{stage}: scanning data directories"));
            let after = self.layers.scan_paths_now(&scan_paths).await;
            potential = after.map(|after| PotentialRecord { before, after });
        }
        let mut storage_dedupe = None;
        let mut deduped = None;
        if stage.inserts() {
            let (tracer, progress, key) = (self.tracer, self.progress, self.key);
            let started = || {
                tracer.event(&here, Event::StorageDedupe);
                progress.task(
                    format!("{key} {stage}: out-of-band dedup"),
                    Unit::Wait,
                    None,
                )
            };
            let meter = self.meter.as_deref_mut().expect("made above");
            if let Some((record, reading)) = layers.dedupe(probes, meter, started).await {
                storage_dedupe = Some(record);
                deduped = Some(reading);
            }
        }
        let meter = self.meter().await.map_err(at)?;
        let mut probes: BTreeMap<String, ProbeRecord> = before
            .into_iter()
            .filter_map(|(name, before)| {
                let record = ProbeRecord {
                    before,
                    after: after.get(&name)?.clone(),
                    copies: probes.copies(&name, meter),
                };
                Some((name, record))
            })
            .collect();
        // The storage probe's reading before the stage and after the dedup that followed it:
        // the same formulas then give what the deduplicating storage layer kept.
        if let (Some(after), Some(storage)) = (deduped, probes.get(crate::probe::storage::DEF.name))
        {
            let record = ProbeRecord {
                before: storage.before.clone(),
                after,
                copies: storage.copies,
            };
            probes.insert(STORAGE_DEDUPE.to_string(), record);
        }
        let Work {
            files: count,
            logical,
            latency,
            note,
            duration_s: duration,
            settle_s: settle,
            ..
        } = work;
        let record = StageRecord {
            cell: self.key.clone(),
            attempt: self.attempt,
            stage,
            started_at,
            files: count,
            logical_bytes: logical,
            unique_bytes: self.ds.manifest.unique_bytes,
            rows_after,
            duration_s: duration,
            settle_s: settle,
            throughput_bps: (logical > 0 && duration > 0.0).then(|| logical as f64 / duration),
            latency_us: latency,
            probes,
            note,
            retried_requests,
            potential,
            storage_dedupe,
            layout: self.layout,
            snapshot: Some(SnapshotRecord {
                before: snapshot_before,
                after: snapshot_after,
            }),
        };
        self.journal
            .append(&Record::Stage(Box::new(record.clone())))
            .map_err(CellError::Journal)?;
        self.sinks.stage(&record);
        Ok(())
    }

    /// The stage's own work, then the settle step, with their event markers.
    async fn work(&mut self, stage: Stage, here: &At) -> Result<Work, SysError> {
        let files = self.ds.manifest.files.len() as u64;
        let logical = self.ds.manifest.logical_bytes;
        let stored = self.layout.stored_entries(&self.ds.manifest.files);
        let clock = Instant::now();
        let mut latency = None;
        let mut note = None;
        let (files, logical, expect_after) = match stage {
            Stage::BulkInsert => {
                let _task = self.waiting(format_args!(
                    "bulk_insert of {:.1} MiB",
                    logical as f64 / (1024.0 * 1024.0)
                ));
                self.sys.bulk_insert(self.ds).await?;
                (files, logical, stored)
            }
            Stage::PerfileInsert | Stage::PerfileDelete => {
                let insert = stage == Stage::PerfileInsert;
                let task =
                    self.progress
                        .task(format!("{} {stage}", self.key), Unit::Files, Some(files));
                latency = Some(self.per_file(insert, &task).await?);
                (files, logical, if insert { stored } else { 0 })
            }
            Stage::Maintenance => {
                let _task = self.waiting(stage);
                self.tracer.event(here, Event::Maintenance);
                note = Some(self.sys.maintenance().await?);
                (0, 0, 0)
            }
        };
        let duration_s = clock.elapsed().as_secs_f64();
        self.tracer.event(here, Event::StageEnd);
        let clock = Instant::now();
        let task = self.waiting(format_args!("{stage}: settling"));
        self.tracer.event(here, Event::SettleStart);
        self.sys.settle().await?;
        self.tracer.event(here, Event::SettleEnd);
        drop(task);
        Ok(Work {
            files,
            logical,
            expect_after,
            latency,
            note,
            duration_s,
            settle_s: clock.elapsed().as_secs_f64(),
        })
    }

    /// Inserts or deletes every file with one request each, timing each request. File
    /// contents are read before the clock starts. With content keys a file is deleted only
    /// with the last file that shares its entry ([`Layout::deletes`]): the others send no
    /// request.
    async fn per_file(&mut self, insert: bool, task: &Task) -> Result<Latency, SysError> {
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .expect("valid histogram bounds");
        let files = &self.ds.manifest.files;
        let deletes = self.layout.deletes(files);
        for (f, deletes) in files.iter().zip(deletes) {
            if !insert && !deletes {
                task.inc(1);
                continue;
            }
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
            task.inc(1);
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
