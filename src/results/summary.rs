//! The summary: statistics over runs per system × payload × grade × stage, and failures.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::derive::{self, Row};
use super::layers::{LayerRow, Verdict, verdicts};
use super::snapshots::{SnapshotRow, SnapshotStats, snapshot_stats};
use super::stats::Stats;
use crate::model::{CellKey, ErrorKind, Record, Stage};

/// Everything a report shows.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Experiment id.
    pub experiment: String,
    /// The answer first: per system × payload × grade, the layer that removed the
    /// duplicates.
    pub verdicts: Vec<Verdict>,
    /// One group per system × payload × grade × stage.
    pub groups: Vec<Group>,
    /// What the systems report about their own storage, per system × stage × metric.
    pub snapshots: Vec<SnapshotStats>,
    /// Cells that have no completed attempt but at least one failed one.
    pub failures: Vec<Failure>,
    /// Cells completed.
    pub cells_done: usize,
    /// Failed attempts in the journal (including those later retried successfully).
    pub failed_attempts: usize,
}

/// Statistics of one system × payload × grade × stage over runs.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    /// System.
    pub system: String,
    /// Payload type.
    pub payload: String,
    /// Grade.
    pub grade: u8,
    /// Stage.
    pub stage: Stage,
    /// Runs that completed.
    pub runs: usize,
    /// L.
    pub logical_bytes: Option<Stats>,
    /// Throughput, bytes per second.
    pub throughput_bps: Option<Stats>,
    /// Median per-file latency, µs.
    pub p50_us: Option<Stats>,
    /// 99th percentile per-file latency, µs.
    pub p99_us: Option<Stats>,
    /// Per probe.
    pub probes: BTreeMap<String, ProbeStats>,
}

impl Group {
    /// The probes in the order of the probe registry (`native` first).
    pub fn ordered_probes(&self) -> impl Iterator<Item = (&String, &ProbeStats)> {
        let mut v: Vec<_> = self.probes.iter().collect();
        v.sort_by_key(|(name, _)| crate::probe::rank(name));
        v.into_iter()
    }
}

/// Statistics of the derived metrics of one probe.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeStats {
    /// ΔP.
    pub delta_bytes: Option<Stats>,
    /// EDR.
    pub edr: Option<Stats>,
    /// EDR_replica.
    pub edr_replica: Option<Stats>,
    /// Dedup capture.
    pub dedup_capture: Option<Stats>,
    /// Reclaim.
    pub reclaim: Option<Stats>,
    /// Runs whose probe failed.
    pub errors: usize,
    /// Runs whose reading was flagged as implausible (see the CSV's `flag` column).
    pub flagged: usize,
    /// ΔP varies across runs by more than the CV threshold.
    pub noisy: bool,
}

/// A cell with no completed attempt.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// The cell.
    pub cell: CellKey,
    /// Failed attempts.
    pub attempts: u32,
    /// Kind of the last failure.
    pub kind: ErrorKind,
    /// The last error.
    pub error: String,
}

fn stats(values: impl Iterator<Item = Option<f64>>) -> Option<Stats> {
    Stats::of(&values.flatten().collect::<Vec<_>>())
}

/// Builds the summary of a journal.
pub fn summarize(
    experiment: &str,
    records: &[Record],
    rows: &[Row],
    layers: &[LayerRow],
    snapshots: &[SnapshotRow],
) -> Summary {
    let mut groups: BTreeMap<(String, String, u8, Stage), Group> = BTreeMap::new();
    for ((system, payload, grade, stage, probe), rs) in derive::group(rows) {
        let g = groups
            .entry((system.clone(), payload.clone(), grade, stage))
            .or_insert_with(|| Group {
                system,
                payload,
                grade,
                stage,
                runs: rs.len(),
                logical_bytes: stats(rs.iter().map(|r| Some(r.logical_bytes as f64))),
                throughput_bps: stats(rs.iter().map(|r| r.throughput_bps)),
                p50_us: stats(rs.iter().map(|r| r.p50_us)),
                p99_us: stats(rs.iter().map(|r| r.p99_us)),
                probes: BTreeMap::new(),
            });
        let delta = stats(rs.iter().map(|r| r.delta_bytes.map(|d| d as f64)));
        g.probes.insert(
            probe,
            ProbeStats {
                noisy: delta.as_ref().is_some_and(Stats::noisy),
                delta_bytes: delta,
                edr: stats(rs.iter().map(|r| r.edr)),
                edr_replica: stats(rs.iter().map(|r| r.edr_replica)),
                dedup_capture: stats(rs.iter().map(|r| r.dedup_capture)),
                reclaim: stats(rs.iter().map(|r| r.reclaim)),
                errors: rs.iter().filter(|r| r.probe_error.is_some()).count(),
                flagged: rs.iter().filter(|r| r.flag.is_some()).count(),
            },
        );
    }
    let (failures, cells_done, failed_attempts) = failures(records);
    Summary {
        experiment: experiment.to_string(),
        verdicts: verdicts(layers),
        groups: groups.into_values().collect(),
        snapshots: snapshot_stats(snapshots),
        failures,
        cells_done,
        failed_attempts,
    }
}

/// Cells whose last event is a failure, the number of completed cells, and of failed attempts.
pub fn failures(records: &[Record]) -> (Vec<Failure>, usize, usize) {
    let mut last: HashMap<&CellKey, Option<Failure>> = HashMap::new();
    let mut counts: HashMap<&CellKey, u32> = HashMap::new();
    let mut failed_attempts = 0;
    for r in records {
        match r {
            Record::CellDone { cell, .. } => {
                last.insert(cell, None);
            }
            Record::AttemptFailed {
                cell, kind, error, ..
            } => {
                failed_attempts += 1;
                let n = counts.entry(cell).or_default();
                *n += 1;
                last.insert(
                    cell,
                    Some(Failure {
                        cell: cell.clone(),
                        attempts: *n,
                        kind: *kind,
                        error: error.clone(),
                    }),
                );
            }
            _ => {}
        }
    }
    let done = last.values().filter(|v| v.is_none()).count();
    let mut failed: Vec<Failure> = last.into_values().flatten().collect();
    failed.sort_by(|a, b| a.cell.cmp(&b.cell));
    (failed, done, failed_attempts)
}
