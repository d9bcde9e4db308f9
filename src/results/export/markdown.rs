//! `summary.md`: the summary table and failures as Markdown.

use super::table::{Style, render};
use super::{Exporter, Report};

/// Markdown of [`Report::summary`].
pub struct Markdown;

impl Exporter for Markdown {
    fn file_name(&self) -> &'static str {
        "summary.md"
    }

    fn render(&self, report: &Report) -> anyhow::Result<Vec<u8>> {
        let s = &report.summary;
        Ok(format!(
            "# Experiment {}\n\n{}\n",
            s.experiment,
            render(s, Style::Markdown)
        )
        .into_bytes())
    }
}
