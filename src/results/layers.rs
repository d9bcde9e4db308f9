//! The layered answer to "where does deduplication happen?": per cell and insert stage, the
//! dedup capture at each layer — the system, the storage under it, the storage after
//! out-of-band block dedup — and the dedup potential of the bytes on disk; per system ×
//! payload × grade, a verdict naming the layer that removed the duplicates.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::derive::{Row, completed};
use super::stats::Stats;
use crate::model::{Record, STORAGE_DEDUPE, Scanned, Stage, StageRecord};

/// A layer removes the duplicates when its capture (or potential) reaches this share.
pub const VERDICT_THRESHOLD: f64 = 0.5;

/// A value at the system layer: the native probe's, else that of the files the system wrote
/// (`fs`) for systems without one. `at` gives a probe's value by probe name.
pub fn system_layer<T>(at: impl Fn(&str) -> Option<T>) -> Option<T> {
    at("native").or_else(|| at("fs"))
}

/// One insert stage of one cell, layer by layer: a line of `layers.csv`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerRow {
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
    /// L.
    pub logical_bytes: u64,
    /// U.
    pub unique_bytes: u64,
    /// Capture by the system's own accounting: the native probe, else the files it wrote
    /// (`fs`) for systems without one.
    pub capture_system: Option<f64>,
    /// Capture at the storage layer (`storage` probe): after its compression and sharing.
    pub capture_storage: Option<f64>,
    /// Capture at the storage layer after out-of-band block dedup.
    pub capture_storage_dedupe: Option<f64>,
    /// Share of the data set's duplicate bytes that a store with each method (fixed blocks,
    /// CDC) could remove from what the stage added to the system's data directories.
    pub potential: BTreeMap<String, f64>,
    /// The same for the data set's own files: the upper bound.
    pub dataset_potential: BTreeMap<String, f64>,
}

/// `num / den` for a positive denominator.
fn share(num: f64, den: u64) -> Option<f64> {
    (den > 0).then(|| num / den as f64)
}

/// Per method, the duplicate bytes of `after` minus those of `before`, over `duplicates`.
fn potential(before: &Scanned, after: &Scanned, duplicates: u64) -> BTreeMap<String, f64> {
    after
        .methods()
        .into_iter()
        .filter_map(|m| {
            let grown = after.duplicate_bytes(&m)? as f64 - before.duplicate_bytes(&m)? as f64;
            Some((m, share(grown, duplicates)?))
        })
        .collect()
}

/// A derived row's cell, stage and probe.
type RowKey<'a> = (&'a str, &'a str, u8, u32, Stage, &'a str);

/// The layer rows of the completed insert stages.
pub fn layer_rows(records: &[Record], rows: &[Row]) -> Vec<LayerRow> {
    let capture: HashMap<RowKey<'_>, Option<f64>> = rows
        .iter()
        .map(|r| {
            (
                (
                    r.system.as_str(),
                    r.payload.as_str(),
                    r.grade,
                    r.run,
                    r.stage,
                    r.probe.as_str(),
                ),
                r.dedup_capture,
            )
        })
        .collect();
    let sets: HashMap<(u32, String, u8), &Scanned> = records
        .iter()
        .filter_map(|r| match r {
            Record::DataSetScan {
                run,
                payload,
                grade,
                potential,
            } => Some(((*run, payload.name().to_string(), *grade), potential)),
            _ => None,
        })
        .collect();
    completed(records)
        .into_iter()
        .filter(|s| s.stage.inserts())
        .map(|s: &StageRecord| {
            let k = &s.cell;
            let payload = k.payload.name();
            let at = |probe: &str| {
                capture
                    .get(&(k.system.as_str(), payload, k.grade, k.run, s.stage, probe))
                    .copied()
                    .flatten()
            };
            let duplicates = s.logical_bytes.saturating_sub(s.unique_bytes);
            let none = Scanned::Error {
                error: String::new(),
            };
            LayerRow {
                system: k.system.clone(),
                payload: payload.to_string(),
                grade: k.grade,
                run: k.run,
                stage: s.stage,
                logical_bytes: s.logical_bytes,
                unique_bytes: s.unique_bytes,
                capture_system: system_layer(at),
                capture_storage: at("storage"),
                capture_storage_dedupe: at(STORAGE_DEDUPE),
                potential: s
                    .potential
                    .as_ref()
                    .map(|p| potential(&p.before, &p.after, duplicates))
                    .unwrap_or_default(),
                dataset_potential: sets
                    .get(&(k.run, payload.to_string(), k.grade))
                    .map(|set| potential(&none_like(set, &none), set, duplicates))
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// An empty "before" for a data set's own scan: its duplicates count from zero.
fn none_like<'a>(set: &Scanned, none: &'a Scanned) -> std::borrow::Cow<'a, Scanned> {
    match set {
        Scanned::Scan(r) => {
            let mut empty = r.clone();
            for m in &mut empty.methods {
                m.duplicate_bytes = 0;
            }
            std::borrow::Cow::Owned(Scanned::Scan(empty))
        }
        Scanned::Error { .. } => std::borrow::Cow::Borrowed(none),
    }
}

/// Which layer removed a system's duplicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The system itself: its own accounting shows the duplicates gone.
    System,
    /// The storage layer under it, as mounted (btrfs sharing or compression).
    Storage,
    /// The storage layer after out-of-band block dedup.
    StorageDedupe,
    /// No layer did, but a block-level or CDC store could, from what is on disk.
    PotentialOnly,
    /// Nothing removed them and nothing could.
    Nowhere,
    /// No layer was measured that could say.
    Unmeasured,
}

impl Layer {
    /// As the summary writes it.
    pub fn name(self) -> &'static str {
        match self {
            Layer::System => "system",
            Layer::Storage => "storage",
            Layer::StorageDedupe => "storage dedupe",
            Layer::PotentialOnly => "potential only",
            Layer::Nowhere => "nowhere",
            Layer::Unmeasured => "unmeasured",
        }
    }
}

/// The verdict of one system × payload × grade, from its bulk inserts (the first load of the
/// data set, which no earlier stage's leftovers disturb), means over runs.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// System instance.
    pub system: String,
    /// Payload type.
    pub payload: String,
    /// Grade.
    pub grade: u8,
    /// Runs.
    pub runs: usize,
    /// Capture by the system.
    pub system_capture: Option<Stats>,
    /// Capture at the storage layer.
    pub storage_capture: Option<Stats>,
    /// Capture at the storage layer after out-of-band dedup.
    pub storage_dedupe_capture: Option<Stats>,
    /// The method with the highest potential (mean over runs), and its potential.
    pub potential: Option<(String, Stats)>,
    /// The layer that removed the duplicates.
    pub layer: Layer,
}

/// Verdicts for every system × payload × grade above 0 (a grade 0 data set has no
/// duplicates to find).
pub fn verdicts(rows: &[LayerRow]) -> Vec<Verdict> {
    let mut groups: BTreeMap<(String, String, u8), Vec<&LayerRow>> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.stage == Stage::BulkInsert && r.grade > 0)
    {
        groups
            .entry((r.system.clone(), r.payload.clone(), r.grade))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|((system, payload, grade), rs)| {
            let stats = |f: fn(&LayerRow) -> Option<f64>| {
                Stats::of(&rs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            let system_capture = stats(|r| r.capture_system);
            let storage_capture = stats(|r| r.capture_storage);
            let storage_dedupe_capture = stats(|r| r.capture_storage_dedupe);
            let mut methods: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
            for r in &rs {
                for (m, v) in &r.potential {
                    methods.entry(m).or_default().push(*v);
                }
            }
            let potential = methods
                .into_iter()
                .filter_map(|(m, v)| Some((m.to_string(), Stats::of(&v)?)))
                .max_by(|a, b| a.1.mean.total_cmp(&b.1.mean));
            let reaches =
                |s: &Option<Stats>| s.as_ref().is_some_and(|s| s.mean >= VERDICT_THRESHOLD);
            let measured = system_capture.is_some()
                || storage_capture.is_some()
                || storage_dedupe_capture.is_some()
                || potential.is_some();
            let layer = if reaches(&system_capture) {
                Layer::System
            } else if reaches(&storage_capture) {
                Layer::Storage
            } else if reaches(&storage_dedupe_capture) {
                Layer::StorageDedupe
            } else if potential
                .as_ref()
                .is_some_and(|(_, p)| p.mean >= VERDICT_THRESHOLD)
            {
                Layer::PotentialOnly
            } else if measured {
                Layer::Nowhere
            } else {
                Layer::Unmeasured
            };
            Verdict {
                system,
                payload,
                grade,
                runs: rs.len(),
                system_capture,
                storage_capture,
                storage_dedupe_capture,
                potential,
                layer,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, grade: u8, capture: [Option<f64>; 3], potential: f64) -> LayerRow {
        LayerRow {
            system: system.into(),
            payload: "random_binary".into(),
            grade,
            run: 1,
            stage: Stage::BulkInsert,
            logical_bytes: 1000,
            unique_bytes: 100,
            capture_system: capture[0],
            capture_storage: capture[1],
            capture_storage_dedupe: capture[2],
            potential: [("fixed-4096".to_string(), potential)].into(),
            dataset_potential: BTreeMap::new(),
        }
    }

    #[test]
    fn the_verdict_names_the_lowest_layer_that_reaches_the_threshold() {
        let rows = [
            row("garage", 90, [Some(0.98), Some(0.98), Some(0.99)], 0.0),
            row("fs", 90, [Some(0.0), Some(0.01), Some(0.97)], 0.99),
            row("postgres", 90, [Some(0.02), Some(0.03), Some(0.2)], 0.7),
            row("sqlite", 90, [Some(0.0), None, None], 0.1),
            row("kafka", 90, [None, None, None], f64::NAN),
            row("fs", 0, [None, None, None], 0.0),
        ];
        let mut rows = rows.to_vec();
        rows[4].potential.clear();
        let v = verdicts(&rows);
        let layer = |s: &str| v.iter().find(|v| v.system == s).unwrap().layer;
        assert_eq!(layer("garage"), Layer::System);
        assert_eq!(layer("fs"), Layer::StorageDedupe);
        assert_eq!(layer("postgres"), Layer::PotentialOnly);
        assert_eq!(layer("sqlite"), Layer::Nowhere);
        assert_eq!(layer("kafka"), Layer::Unmeasured);
        assert_eq!(v.len(), 5, "grade 0 has no verdict");
    }

    #[test]
    fn potential_is_the_growth_of_duplicate_bytes_over_the_data_sets_duplicates() {
        let scan = |dup: u64| {
            Scanned::Scan(crate::scan::ScanResult {
                files: 1,
                bytes: 0,
                vanished_files: 0,
                skipped_entries: 0,
                duration_s: 0.0,
                methods: vec![crate::scan::MethodResult {
                    method: "fixed-4096".into(),
                    total_bytes: 0,
                    unique_bytes: 0,
                    duplicate_bytes: dup,
                    chunks: 0,
                    unique_chunks: 0,
                    zero_bytes: 0,
                }],
            })
        };
        let p = potential(&scan(100), &scan(550), 900);
        assert_eq!(p["fixed-4096"], 0.5);
        let failed = Scanned::Error {
            error: "gone".into(),
        };
        assert!(potential(&failed, &scan(550), 900).is_empty());
        assert!(
            potential(&scan(1), &scan(2), 0).is_empty(),
            "no duplicates: no share"
        );
    }
}
