//! Exporters: one per format behind one trait, all fed the same [`Report`].

mod csv;
mod html;
mod json;
mod markdown;
pub mod table;

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::derive::Row;
use super::layers::LayerRow;
use super::snapshots::SnapshotRow;
use super::summary::Summary;
use super::trace::TraceLine;

/// What every exporter renders.
pub struct Report {
    /// Per run, stage and probe.
    pub rows: Vec<Row>,
    /// Per run and insert stage, layer by layer.
    pub layers: Vec<LayerRow>,
    /// Per run, stage and metric of the systems' own accounting.
    pub snapshots: Vec<SnapshotRow>,
    /// Statistics over runs.
    pub summary: Summary,
    /// Size samples over time and event markers, when the experiment has a trace.
    pub trace: Vec<TraceLine>,
}

/// One output format.
pub trait Exporter {
    /// File name inside the experiment directory.
    fn file_name(&self) -> &'static str;
    /// Renders the report.
    fn render(&self, report: &Report) -> anyhow::Result<Vec<u8>>;
}

/// Every exporter.
pub fn all() -> Vec<Box<dyn Exporter>> {
    vec![
        Box::new(csv::Csv),
        Box::new(csv::Layers),
        Box::new(csv::Snapshots),
        Box::new(json::Json),
        Box::new(markdown::Markdown),
        Box::new(html::Html),
    ]
}

/// Writes every export into `dir`, each atomically (temporary file, then rename).
pub fn write_all(dir: &Path, report: &Report) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in all() {
        let path = dir.join(e.file_name());
        let tmp = dir.join(format!(".{}.tmp", e.file_name()));
        std::fs::write(&tmp, e.render(report)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}
