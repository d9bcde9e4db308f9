//! `summary.json`: statistics over runs and failures.

use super::{Exporter, Report};

/// JSON of [`Report::summary`].
pub struct Json;

impl Exporter for Json {
    fn file_name(&self) -> &'static str {
        "summary.json"
    }

    fn render(&self, report: &Report) -> anyhow::Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(&report.summary)?;
        v.push(b'\n');
        Ok(v)
    }
}
