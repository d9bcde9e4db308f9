//! `results.csv`: one line per run × stage × probe with every measured and derived value.

use super::{Exporter, Report};

/// CSV of [`Report::rows`].
pub struct Csv;

impl Exporter for Csv {
    fn file_name(&self) -> &'static str {
        "results.csv"
    }

    fn render(&self, report: &Report) -> anyhow::Result<Vec<u8>> {
        let mut w = ::csv::Writer::from_writer(Vec::new());
        for r in &report.rows {
            w.serialize(r)?;
        }
        Ok(w.into_inner()?)
    }
}
