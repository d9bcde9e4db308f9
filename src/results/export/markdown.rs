//! `summary.md`: the answer, the outcome and the per-stage table as Markdown.

use super::table::{Style, outcome, render_answer, render_details};
use super::{Exporter, Report};
use crate::results::answer::Answer;

/// Markdown of [`Report::summary`].
pub struct Markdown;

impl Exporter for Markdown {
    fn file_name(&self) -> &'static str {
        "summary.md"
    }

    fn render(&self, report: &Report) -> anyhow::Result<Vec<u8>> {
        let s = &report.summary;
        Ok(format!(
            "# Experiment {}\n\n{}\n{}\n\n## Per stage\n\n{}",
            s.experiment,
            render_answer(&Answer::of(s), Style::Markdown),
            outcome(s).join("\n\n"),
            render_details(s, Style::Markdown)
        )
        .into_bytes())
    }
}
