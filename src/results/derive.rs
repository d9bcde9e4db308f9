//! Derived metrics (DESIGN.md §6) from the completed stage records of a journal.
//!
//! A ratio whose inputs are missing (a failed probe, a missing U0 cell, a zero denominator)
//! is absent, never 0.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::model::{CellKey, Record, Stage, StageRecord};

/// The stage records that count: those of the latest completed attempt of each cell.
pub fn completed(records: &[Record]) -> Vec<&StageRecord> {
    let mut done: HashMap<&CellKey, u32> = HashMap::new();
    for r in records {
        if let Record::CellDone { cell, attempt, .. } = r {
            let a = done.entry(cell).or_insert(*attempt);
            *a = (*a).max(*attempt);
        }
    }
    let mut out: Vec<&StageRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Stage(s) if done.get(&s.cell) == Some(&s.attempt) => Some(s.as_ref()),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| (&a.cell, a.stage).cmp(&(&b.cell, b.stage)));
    out
}

/// One stage of one cell as seen by one probe, with every derived metric: a CSV line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// System.
    pub system: String,
    /// Payload type.
    pub payload: String,
    /// Grade in percent.
    pub grade: u8,
    /// Run number.
    pub run: u32,
    /// Stage.
    pub stage: Stage,
    /// Probe name.
    pub probe: String,
    /// Files written or deleted.
    pub files: u64,
    /// L.
    pub logical_bytes: u64,
    /// U.
    pub unique_bytes: u64,
    /// Files present after the stage.
    pub rows_after: u64,
    /// P before.
    pub before_bytes: Option<u64>,
    /// P after.
    pub after_bytes: Option<u64>,
    /// ΔP = after − before.
    pub delta_bytes: Option<i64>,
    /// Why a reading is missing.
    pub probe_error: Option<String>,
    /// R: copies the probe counts.
    pub copies: u32,
    /// EDR = L / ΔP (insert stages).
    pub edr: Option<f64>,
    /// EDR_replica = L / (ΔP / R).
    pub edr_replica: Option<f64>,
    /// Share of duplicate bytes not stored, compression separated out (grades > 0).
    pub dedup_capture: Option<f64>,
    /// Share of the per-file insert's growth given back (delete and maintenance stages).
    pub reclaim: Option<f64>,
    /// Why the reading looks wrong, e.g. growth too small for incompressible data.
    pub flag: Option<String>,
    /// Stage duration without settling.
    pub duration_s: f64,
    /// Settle time.
    pub settle_s: f64,
    /// L / duration.
    pub throughput_bps: Option<f64>,
    /// Fastest per-file request, µs.
    pub min_us: Option<f64>,
    /// Median per-file latency, µs.
    pub p50_us: Option<f64>,
    /// 90th percentile per-file latency, µs.
    pub p90_us: Option<f64>,
    /// 95th percentile per-file latency, µs.
    pub p95_us: Option<f64>,
    /// 99th percentile per-file latency, µs.
    pub p99_us: Option<f64>,
    /// Slowest per-file request, µs.
    pub max_us: Option<f64>,
}

/// Derives one row per (completed stage record, probe).
pub fn rows(records: &[Record]) -> Vec<Row> {
    let done = completed(records);
    let index: HashMap<(&CellKey, Stage), &StageRecord> =
        done.iter().map(|s| ((&s.cell, s.stage), *s)).collect();
    let lookup = |cell: &CellKey, stage: Stage| index.get(&(cell, stage)).copied();
    done.iter().flat_map(|s| stage_rows(s, &lookup)).collect()
}

/// The rows of one stage record, one per probe. `lookup` finds the records the ratios refer
/// to (the U0 cell of the same stage, the per-file insert of the same cell): a ratio whose
/// record it does not find is absent. [`rows`] looks among completed cells; a sink that sees
/// records as they come looks among those it has seen.
pub fn stage_rows<'a>(
    s: &StageRecord,
    lookup: &dyn Fn(&CellKey, Stage) -> Option<&'a StageRecord>,
) -> Vec<Row> {
    let mut out = Vec::new();
    for (probe, pr) in &s.probes {
        let before = pr.before.bytes();
        let after = pr.after.bytes();
        let delta = delta_of(before, after);
        let edr = if s.stage.inserts() {
            ratio(s.logical_bytes as f64, delta)
        } else {
            None
        };
        let probe_error = [&pr.before, &pr.after].iter().find_map(|r| match r {
            crate::model::Reading::Error { error } => Some(error.clone()),
            _ => None,
        });
        out.push(Row {
            system: s.cell.system.clone(),
            payload: s.cell.payload.name().to_string(),
            grade: s.cell.grade,
            run: s.cell.run,
            stage: s.stage,
            probe: probe.clone(),
            files: s.files,
            logical_bytes: s.logical_bytes,
            unique_bytes: s.unique_bytes,
            rows_after: s.rows_after,
            before_bytes: before,
            after_bytes: after,
            delta_bytes: delta,
            probe_error,
            copies: pr.copies,
            edr,
            edr_replica: edr.map(|e| e * f64::from(pr.copies)),
            dedup_capture: capture(s, probe, delta, lookup),
            reclaim: reclaim(s, probe, after, lookup),
            flag: partial_load(s, delta),
            duration_s: s.duration_s,
            settle_s: s.settle_s,
            throughput_bps: s.throughput_bps,
            min_us: s.latency_us.as_ref().map(|l| l.min),
            p50_us: s.latency_us.as_ref().map(|l| l.p50),
            p90_us: s.latency_us.as_ref().map(|l| l.p90),
            p95_us: s.latency_us.as_ref().map(|l| l.p95),
            p99_us: s.latency_us.as_ref().map(|l| l.p99),
            max_us: s.latency_us.as_ref().map(|l| l.max),
        });
    }
    out
}

fn delta_of(before: Option<u64>, after: Option<u64>) -> Option<i64> {
    Some(after? as i64 - before? as i64)
}

/// `num / den` when the denominator is a positive number.
fn ratio(num: f64, den: Option<i64>) -> Option<f64> {
    den.filter(|&d| d > 0).map(|d| num / d as f64)
}

/// Share of the unique bytes that incompressible data must at least occupy after an insert:
/// even perfect deduplication stores every unique byte once.
pub const PLAUSIBLE_SHARE: f64 = 0.5;

/// Flags an insert of incompressible data whose physical growth is below
/// [`PLAUSIBLE_SHARE`] × U: a partial load, a probe that lags behind the data, or content
/// matched against deleted data the system has not removed yet.
fn partial_load(s: &StageRecord, delta: Option<i64>) -> Option<String> {
    let delta = delta?;
    let incompressible = s.cell.payload == crate::dataset::PayloadType::RandomBinary;
    let floor = PLAUSIBLE_SHARE * s.unique_bytes as f64;
    (s.stage.inserts() && incompressible && (delta as f64) < floor).then(|| {
        format!(
            "implausibly small growth for incompressible data: ΔP = {delta} bytes for U = {} \
             bytes (a partial load, a probe lagging behind the data, or content deduplicated \
             against deleted data not yet removed)",
            s.unique_bytes
        )
    })
}

/// `dedup_capture = (c·L − ΔP) / (c·(L − U))` with `c = ΔP(U0) / L(U0)` of the same system,
/// payload, run, stage and probe.
fn capture<'a>(
    s: &StageRecord,
    probe: &str,
    delta: Option<i64>,
    lookup: &dyn Fn(&CellKey, Stage) -> Option<&'a StageRecord>,
) -> Option<f64> {
    if !s.stage.inserts() || s.cell.grade == 0 {
        return None;
    }
    let u0_key = CellKey {
        grade: 0,
        ..s.cell.clone()
    };
    let u0 = lookup(&u0_key, s.stage)?;
    let p0 = u0.probes.get(probe)?;
    let c = ratio(
        delta_of(p0.before.bytes(), p0.after.bytes())? as f64,
        Some(u0.logical_bytes as i64),
    )?;
    let (l, u) = (s.logical_bytes as f64, s.unique_bytes as f64);
    if c <= 0.0 || l <= u {
        return None;
    }
    Some((c * l - delta? as f64) / (c * (l - u)))
}

/// `reclaim = (P_full − P_after) / (P_full − P_empty)` with P_empty and P_full read around
/// the per-file insert of the same cell attempt.
fn reclaim<'a>(
    s: &StageRecord,
    probe: &str,
    after: Option<u64>,
    lookup: &dyn Fn(&CellKey, Stage) -> Option<&'a StageRecord>,
) -> Option<f64> {
    if !matches!(s.stage, Stage::PerfileDelete | Stage::Maintenance) {
        return None;
    }
    let ins = lookup(&s.cell, Stage::PerfileInsert)?;
    if ins.attempt != s.attempt {
        return None;
    }
    let p = ins.probes.get(probe)?;
    let (empty, full) = (p.before.bytes()? as f64, p.after.bytes()? as f64);
    if full <= empty {
        return None;
    }
    Some((full - after? as f64) / (full - empty))
}

/// Rows grouped by (system, payload, grade, stage, probe), runs in order.
pub fn group(rows: &[Row]) -> BTreeMap<(String, String, u8, Stage, String), Vec<&Row>> {
    let mut g: BTreeMap<_, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        g.entry((
            r.system.clone(),
            r.payload.clone(),
            r.grade,
            r.stage,
            r.probe.clone(),
        ))
        .or_default()
        .push(r);
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::PayloadType;
    use crate::model::ProbeRecord;
    use crate::model::Reading;

    fn rec(grade: u8, stage: Stage, l: u64, u: u64, before: u64, after: u64) -> Record {
        let mut probes = BTreeMap::new();
        probes.insert(
            "fs".to_string(),
            ProbeRecord {
                before: Reading::Bytes { bytes: before },
                after: Reading::Bytes { bytes: after },
                copies: 2,
            },
        );
        Record::Stage(Box::new(StageRecord {
            cell: CellKey {
                system: "x".into(),
                payload: PayloadType::RandomBinary,
                grade,
                run: 1,
            },
            attempt: 1,
            stage,
            started_at: chrono::Utc::now(),
            files: 10,
            logical_bytes: l,
            unique_bytes: u,
            rows_after: 0,
            duration_s: 1.0,
            settle_s: 0.0,
            throughput_bps: None,
            latency_us: None,
            probes,
            note: None,
            retried_requests: 0,
            potential: None,
            storage_dedupe: None,
            snapshot: None,
            layout: Default::default(),
        }))
    }

    fn done(grade: u8) -> Record {
        Record::CellDone {
            cell: CellKey {
                system: "x".into(),
                payload: PayloadType::RandomBinary,
                grade,
                run: 1,
            },
            attempt: 1,
            at: chrono::Utc::now(),
        }
    }

    #[test]
    fn formulas_match_design() {
        // U0: 1000 bytes stored as 500 (compression c = 0.5).
        // U90: L = 1000, U = 100; perfect dedup stores c·U = 50, no dedup stores c·L = 500.
        let recs = vec![
            rec(0, Stage::BulkInsert, 1000, 1000, 100, 600),
            rec(0, Stage::PerfileInsert, 1000, 1000, 100, 600),
            done(0),
            rec(90, Stage::BulkInsert, 1000, 100, 100, 150),
            rec(90, Stage::PerfileInsert, 1000, 100, 100, 600),
            rec(90, Stage::PerfileDelete, 1000, 100, 600, 500),
            rec(90, Stage::Maintenance, 0, 100, 500, 150),
            done(90),
        ];
        let rows = rows(&recs);
        let get = |g: u8, st: Stage| rows.iter().find(|r| r.grade == g && r.stage == st).unwrap();
        assert_eq!(get(0, Stage::BulkInsert).edr, Some(2.0));
        assert_eq!(get(0, Stage::BulkInsert).edr_replica, Some(4.0));
        assert_eq!(get(0, Stage::BulkInsert).dedup_capture, None);
        let bulk = get(90, Stage::BulkInsert);
        assert_eq!(bulk.edr, Some(20.0));
        assert!((bulk.dedup_capture.unwrap() - 1.0).abs() < 1e-12);
        let perfile = get(90, Stage::PerfileInsert);
        assert!(perfile.dedup_capture.unwrap().abs() < 1e-12);
        assert!((get(90, Stage::PerfileDelete).reclaim.unwrap() - 0.2).abs() < 1e-12);
        assert!((get(90, Stage::Maintenance).reclaim.unwrap() - 0.9).abs() < 1e-12);
        assert_eq!(get(90, Stage::Maintenance).edr, None);
    }

    #[test]
    fn small_growth_of_random_data_is_flagged() {
        // U = 1000 bytes of random data grew the probe by 100: flagged; by 600: plausible.
        let rows_ = rows(&[rec(0, Stage::BulkInsert, 1000, 1000, 0, 100), done(0)]);
        assert!(
            rows_[0]
                .flag
                .as_deref()
                .unwrap()
                .contains("implausibly small")
        );
        let rows_ = rows(&[rec(0, Stage::BulkInsert, 1000, 1000, 0, 600), done(0)]);
        assert_eq!(rows_[0].flag, None);
    }

    #[test]
    fn failed_readings_and_incomplete_cells_give_no_numbers() {
        let mut r = rec(0, Stage::BulkInsert, 1000, 1000, 100, 600);
        if let Record::Stage(s) = &mut r {
            s.probes.get_mut("fs").unwrap().after = Reading::Error {
                error: "boom".into(),
            };
        }
        let rows_ = rows(&[r.clone(), done(0)]);
        assert_eq!(rows_[0].delta_bytes, None);
        assert_eq!(rows_[0].edr, None);
        assert_eq!(rows_[0].probe_error.as_deref(), Some("boom"));
        assert!(
            rows(&[r]).is_empty(),
            "a cell without cell_done must not count"
        );
    }
}
