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

/// Column titles of the verdict table.
pub const VERDICT_HEADER: [&str; 8] = [
    "system",
    "payload",
    "grade",
    "dedup happens",
    "capture: system",
    "storage",
    "storage+dedupe",
    "potential",
];

/// The verdict table's cells: one row per system × payload × grade above 0.
pub fn verdict_rows(s: &Summary) -> Vec<Vec<String>> {
    s.verdicts
        .iter()
        .map(|v| {
            vec![
                v.system.clone(),
                v.payload.clone(),
                format!("U{}", v.grade),
                v.layer.name().to_string(),
                num(mean(&v.system_capture), 2),
                num(mean(&v.storage_capture), 2),
                num(mean(&v.storage_dedupe_capture), 2),
                v.potential
                    .as_ref()
                    .map_or("–".into(), |(m, p)| format!("{p:.2} {m}")),
            ]
        })
        .collect()
}

/// A table in `style` with `header`, its numeric columns from `first_number` on right-aligned.
fn table(style: Style, header: &[&str], rows: Vec<Vec<String>>, first_number: usize) -> Table {
    let mut t = Table::new();
    t.load_style(match style {
        Style::Terminal => UTF8_FULL_CONDENSED,
        Style::Markdown => ASCII_MARKDOWN,
    });
    t.set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    for i in (first_number..header.len()).filter(|&i| header[i] != "probes") {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// What the verdict table's values mean.
pub const VERDICT_LEGEND: &str = "The lowest layer whose dedup capture (of the bulk insert, mean \
     over runs) reaches 0.5 removed the duplicates: the system's own accounting, the storage \
     layer as mounted, the storage layer after out-of-band block dedup; else a block-level or \
     CDC store could (potential ≥ 0.5: the share of the data set's duplicate bytes found in \
     what the stage added on disk), or nowhere.";

/// Renders the verdicts (when any layer was measured), the table, the legend, and the
/// outcome as text.
pub fn render(s: &Summary, style: Style) -> String {
    let mut out = String::new();
    if !s.verdicts.is_empty() {
        let t = table(style, &VERDICT_HEADER, verdict_rows(s), 4);
        out.push_str(&format!("{t}\n{VERDICT_LEGEND}\n\n"));
    }
    let t = table(style, &HEADER, rows(s), 4);
    out.push_str(&format!("{t}\n{LEGEND}\n{}\n", outcome(s).join("\n")));
    out
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
