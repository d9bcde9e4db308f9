//! Results: journal records, derived metrics, statistics and exporters.

pub mod answer;
pub mod derive;
pub mod export;
pub mod layers;
pub mod snapshots;
pub mod stats;
pub mod summary;
pub mod trace;

use std::path::Path;

use anyhow::Context as _;

use crate::error::usage;
use crate::journal::{self, Journal};
use crate::model::{Record, TraceLine};
use export::Report;

/// Builds the report of an experiment directory from its journal and writes every export
/// into it. Works on finished and on partial experiments.
pub fn report(dir: &Path) -> anyhow::Result<Report> {
    let path = dir.join(journal::FILE);
    if !path.exists() {
        return Err(usage(format!(
            "{} has no journal ({}): it is not an experiment directory; \
             give the directory `dedup-lab run` printed",
            dir.display(),
            journal::FILE
        )));
    }
    let records = Journal::read(&path)?;
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_report(dir, &id, &records, trace::read(dir)?)
}

/// Builds the report of experiment `id` from its records and trace (one directory's, or the
/// merged ones of its shards) and writes every export into `dir`.
pub fn write_report(
    dir: &Path,
    id: &str,
    records: &[Record],
    trace: Vec<TraceLine>,
) -> anyhow::Result<Report> {
    let rows = derive::rows(records);
    let layers = layers::layer_rows(records, &rows);
    let snapshots = snapshots::snapshot_rows(records);
    let summary = summary::summarize(id, records, &rows, &layers, &snapshots);
    let report = Report {
        rows,
        layers,
        snapshots,
        summary,
        trace,
    };
    export::write_all(dir, &report)
        .with_context(|| format!("writing exports into {}", dir.display()))?;
    Ok(report)
}
