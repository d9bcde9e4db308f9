//! What the systems report about their own storage: each stage record's snapshot before and
//! after the stage, one row per metric (`snapshots.csv`), and per system × stage × metric
//! the mean change at each grade over payloads and runs (the report's table).

use std::collections::BTreeMap;

use serde::Serialize;

use super::derive::completed;
use super::stats::Stats;
use crate::model::{Record, Snapshot, Stage};

/// One metric of one stage of one cell: a line of `snapshots.csv`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SnapshotRow {
    /// System instance.
    pub system: String,
    /// Payload type.
    pub payload: String,
    /// Grade.
    pub grade: u8,
    /// Run.
    pub run: u32,
    /// Stage.
    pub stage: Stage,
    /// The system's name for it.
    pub metric: String,
    /// Before the stage (absent when that snapshot failed or lacked it).
    pub before: Option<f64>,
    /// After the stage and its settle step.
    pub after: Option<f64>,
    /// After − before, when both are there.
    pub delta: Option<f64>,
    /// Why a snapshot of this stage failed.
    pub error: Option<String>,
}

/// The rows of every completed stage record that has a snapshot; a failed snapshot is one
/// row with its error and no metric values.
pub fn snapshot_rows(records: &[Record]) -> Vec<SnapshotRow> {
    let mut out = Vec::new();
    for s in completed(records) {
        let Some(snap) = &s.snapshot else { continue };
        let row = |metric: &str, before: Option<f64>, after: Option<f64>, error| SnapshotRow {
            system: s.cell.system.clone(),
            payload: s.cell.payload.name().to_string(),
            grade: s.cell.grade,
            run: s.cell.run,
            stage: s.stage,
            metric: metric.to_string(),
            before,
            after,
            delta: before.zip(after).map(|(b, a)| a - b),
            error,
        };
        let error = [&snap.before, &snap.after].iter().find_map(|x| match x {
            Snapshot::Error { error } => Some(error.clone()),
            Snapshot::Values(_) => None,
        });
        let values = |x: &Snapshot| match x {
            Snapshot::Values(v) => v.clone(),
            Snapshot::Error { .. } => BTreeMap::new(),
        };
        let (before, after) = (values(&snap.before), values(&snap.after));
        let mut metrics: Vec<&String> = before.keys().chain(after.keys()).collect();
        metrics.sort();
        metrics.dedup();
        if metrics.is_empty() {
            out.push(row("", None, None, error));
            continue;
        }
        for m in metrics {
            let (b, a) = (before.get(m).copied(), after.get(m).copied());
            out.push(row(m, b, a, error.clone()));
        }
    }
    out
}

/// One system × stage × metric: the mean change at each grade, and the stage's value after.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotStats {
    /// System instance.
    pub system: String,
    /// Stage.
    pub stage: Stage,
    /// The system's name for it.
    pub metric: String,
    /// Change over the stage by grade, over every payload and run.
    pub delta: BTreeMap<u8, Stats>,
    /// Value after the stage by grade.
    pub after: BTreeMap<u8, Stats>,
    /// Stages whose snapshot failed.
    pub errors: usize,
}

/// Statistics of the rows, ordered by system, stage and metric.
pub fn snapshot_stats(rows: &[SnapshotRow]) -> Vec<SnapshotStats> {
    type Key<'a> = (&'a str, Stage, &'a str);
    let mut groups: BTreeMap<Key<'_>, Vec<&SnapshotRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.metric.is_empty()) {
        groups
            .entry((&r.system, r.stage, &r.metric))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|((system, stage, metric), rs)| {
            let by_grade = |f: fn(&SnapshotRow) -> Option<f64>| {
                let mut g: BTreeMap<u8, Vec<f64>> = BTreeMap::new();
                for r in &rs {
                    if let Some(v) = f(r) {
                        g.entry(r.grade).or_default().push(v);
                    }
                }
                g.into_iter()
                    .filter_map(|(grade, v)| Some((grade, Stats::of(&v)?)))
                    .collect()
            };
            SnapshotStats {
                system: system.to_string(),
                stage,
                metric: metric.to_string(),
                delta: by_grade(|r| r.delta),
                after: by_grade(|r| r.after),
                errors: rs.iter().filter(|r| r.error.is_some()).count(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::PayloadType;
    use crate::model::{CellKey, SnapshotRecord, StageRecord};

    fn record(grade: u8, run: u32, before: Snapshot, after: Snapshot) -> Vec<Record> {
        let cell = CellKey {
            system: "pg".into(),
            payload: PayloadType::RandomBinary,
            grade,
            run,
        };
        let stage: StageRecord = serde_json::from_value(serde_json::json!({
            "cell": cell, "attempt": 1, "stage": "bulk_insert",
            "started_at": "2025-01-01T00:00:00Z", "files": 1, "logical_bytes": 1,
            "unique_bytes": 1, "rows_after": 1, "duration_s": 1.0, "settle_s": 0.0,
            "throughput_bps": null, "latency_us": null, "probes": {}, "note": null,
        }))
        .unwrap();
        let stage = StageRecord {
            snapshot: Some(SnapshotRecord { before, after }),
            ..stage
        };
        vec![
            Record::Stage(Box::new(stage)),
            Record::CellDone {
                cell,
                attempt: 1,
                at: chrono::Utc::now(),
            },
        ]
    }

    fn values(pairs: &[(&str, f64)]) -> Snapshot {
        Snapshot::Values(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn rows_carry_each_metric_and_failures_carry_no_numbers() {
        let mut records = record(
            0,
            1,
            values(&[("heap", 10.0), ("wal", 100.0)]),
            values(&[("heap", 50.0), ("wal", 400.0), ("new", 1.0)]),
        );
        records.extend(record(
            0,
            2,
            values(&[("heap", 10.0)]),
            Snapshot::Error {
                error: "gone".into(),
            },
        ));
        records.extend(record(
            90,
            1,
            values(&[("heap", 0.0)]),
            values(&[("heap", 8.0)]),
        ));
        let rows = snapshot_rows(&records);
        let heap: Vec<_> = rows
            .iter()
            .filter(|r| r.metric == "heap")
            .map(|r| (r.grade, r.run, r.delta, r.error.as_deref()))
            .collect();
        assert_eq!(
            heap,
            [
                (0, 1, Some(40.0), None),
                (0, 2, None, Some("gone")),
                (90, 1, Some(8.0), None)
            ]
        );
        let new = rows.iter().find(|r| r.metric == "new").unwrap();
        assert_eq!((new.before, new.after, new.delta), (None, Some(1.0), None));
        let stats = snapshot_stats(&rows);
        let heap = stats.iter().find(|s| s.metric == "heap").unwrap();
        assert_eq!(heap.delta[&0].mean, 40.0);
        assert_eq!(heap.delta[&0].n, 1);
        assert_eq!(heap.delta[&90].mean, 8.0);
        assert_eq!(heap.errors, 1);
        let wal = stats.iter().find(|s| s.metric == "wal").unwrap();
        assert_eq!(wal.delta[&0].mean, 300.0);
        assert!(!wal.delta.contains_key(&90));
    }
}
