//! The summary table, for the terminal and for Markdown: means over runs, one row per
//! system × payload × grade × stage; a value per probe, in the order the `probes` column
//! names them (`native/fs/sqlite`).

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{CellAlignment, ContentArrangement, Table};

use crate::results::stats::Stats;
use crate::results::summary::{Group, ProbeStats, Summary};

/// Where the table goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Box drawing for a terminal.
    Terminal,
    /// A Markdown table.
    Markdown,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Column titles of the summary table.
pub const HEADER: [&str; 14] = [
    "system", "payload", "grade", "stage", "runs", "L MiB", "probes", "ΔP MiB", "EDR", "capture",
    "reclaim", "MB/s", "p50 ms", "p99 ms",
];

/// What the table's marks mean.
pub const LEGEND: &str = "ΔP, EDR, capture and reclaim give one value per probe, in the order \
     of the probes column; – = not applicable or not measured; ! = runs disagree (CV > 10 %); \
     ? = growth implausibly small for incompressible data (partial load, lagging probe or dedup \
     against deleted data; see results.csv).";

/// The table's cells: one row per group, formatted, in [`HEADER`] order.
pub fn rows(s: &Summary) -> Vec<Vec<String>> {
    s.groups
        .iter()
        .map(|g| {
            vec![
                g.system.clone(),
                g.payload.clone(),
                format!("U{}", g.grade),
                g.stage.to_string(),
                g.runs.to_string(),
                num(g.logical_bytes.as_ref().map(|x| x.mean / MIB), 2),
                g.ordered_probes()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join("/"),
                per_probe(g, |p| p.delta_bytes.as_ref().map(|x| x.mean / MIB), 2),
                per_probe(g, |p| mean(&p.edr), 2),
                per_probe(g, |p| mean(&p.dedup_capture), 2),
                per_probe(g, |p| mean(&p.reclaim), 2),
                num(g.throughput_bps.as_ref().map(|x| x.mean / 1e6), 1),
                num(g.p50_us.as_ref().map(|x| x.mean / 1e3), 3),
                num(g.p99_us.as_ref().map(|x| x.mean / 1e3), 3),
            ]
        })
        .collect()
}

/// The cell count line and the failed cells, as text lines.
pub fn outcome(s: &Summary) -> Vec<String> {
    let mut out = vec![format!(
        "{} cells complete, {} failed attempts.",
        s.cells_done, s.failed_attempts
    )];
    if !s.failures.is_empty() {
        out.push(format!("FAILED cells ({}):", s.failures.len()));
        for f in &s.failures {
            out.push(format!(
                "- {} after {} attempt(s), {:?}: {}",
                f.cell, f.attempts, f.kind, f.error
            ));
        }
    }
    out
}

/// Renders the table, the legend, and the outcome as text.
pub fn render(s: &Summary, style: Style) -> String {
    let mut t = Table::new();
    t.load_style(match style {
        Style::Terminal => UTF8_FULL_CONDENSED,
        Style::Markdown => ASCII_MARKDOWN,
    });
    t.set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(HEADER.to_vec());
    for row in rows(s) {
        t.add_row(row);
    }
    for i in (4..HEADER.len()).filter(|&i| HEADER[i] != "probes") {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    format!("{t}\n{LEGEND}\n{}\n", outcome(s).join("\n"))
}

fn mean(s: &Option<Stats>) -> Option<f64> {
    s.as_ref().map(|x| x.mean)
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "–".to_string(),
    }
}

/// One value per probe of the group, `/`-separated, with its marks.
fn per_probe(g: &Group, f: impl Fn(&ProbeStats) -> Option<f64>, decimals: usize) -> String {
    g.ordered_probes()
        .map(|(_, p)| {
            let mut s = num(f(p), decimals);
            if p.noisy {
                s.push('!');
            }
            if p.flagged > 0 {
                s.push('?');
            }
            s
        })
        .collect::<Vec<_>>()
        .join("/")
}
