//! Tables for the terminal and for Markdown: the answer first (see [`Answer`]), then the
//! per-stage table — means over runs, one row per system × payload × grade × stage; a value
//! per probe, in the order the `probes` column names them (`native/fs/sqlite`).

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{CellAlignment, ContentArrangement, Table};

use crate::results::answer::{self, Answer, Line};
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

/// A column of the answer table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Col {
    /// System instance.
    System,
    /// The payloads a line stands for.
    Payloads,
    /// Grade.
    Grade,
    /// The verdict.
    Verdict,
    /// Capture at `LAYERS[i]`.
    Capture(usize),
    /// The best scan method's potential.
    Potential,
    /// EDR at the system layer.
    Edr,
    /// Reclaim after the per-file delete.
    ReclaimDelete,
    /// Reclaim after maintenance.
    ReclaimMaintenance,
    /// Runs, where lines differ in them.
    Runs,
}

impl Col {
    /// Its title.
    pub fn title(self) -> &'static str {
        match self {
            Col::System => "system",
            Col::Payloads => "payloads",
            Col::Grade => "grade",
            Col::Verdict => "dedup happens",
            Col::Capture(0) => "capture: system",
            Col::Capture(1) => "storage",
            Col::Capture(_) => "+dedupe",
            Col::Potential => "potential",
            Col::Edr => "EDR",
            Col::ReclaimDelete => "reclaim: delete",
            Col::ReclaimMaintenance => "maintenance",
            Col::Runs => "runs",
        }
    }

    /// Its cell on line `l`.
    pub fn cell(self, a: &Answer, l: &Line) -> String {
        match self {
            Col::System => l.system.clone(),
            Col::Payloads => a.payload_label(&l.payloads),
            Col::Grade => format!("U{}", l.grade),
            Col::Verdict => l.verdict.map_or("–", |v| v.name()).to_string(),
            Col::Capture(i) => answer::show(l.capture[i].as_ref()),
            Col::Potential => l
                .potential
                .as_ref()
                .map_or("–".into(), |(m, p)| format!("{} {m}", p.show())),
            Col::Edr => answer::show(l.edr.as_ref()),
            Col::ReclaimDelete => answer::show(l.reclaim_delete.as_ref()),
            Col::ReclaimMaintenance => answer::show(l.reclaim_maintenance.as_ref()),
            Col::Runs => l.runs.to_string(),
        }
    }

    /// The share (0 to 1) the cell shows, for colouring it.
    pub fn share(self, l: &Line) -> Option<f64> {
        match self {
            Col::Capture(i) => l.capture[i].as_ref().map(|e| e.mean),
            Col::Potential => l.potential.as_ref().map(|p| p.1.mean),
            Col::ReclaimDelete => l.reclaim_delete.as_ref().map(|e| e.mean),
            Col::ReclaimMaintenance => l.reclaim_maintenance.as_ref().map(|e| e.mean),
            _ => None,
        }
    }
}

/// The answer table's columns: a layer's capture and the potential only where measured,
/// the runs only where lines differ in them.
pub fn columns(a: &Answer) -> Vec<Col> {
    let mut cols = vec![Col::System, Col::Payloads, Col::Grade, Col::Verdict];
    cols.extend(
        (0..answer::LAYERS.len())
            .filter(|&i| a.measured(i))
            .map(Col::Capture),
    );
    if a.potential_measured() {
        cols.push(Col::Potential);
    }
    cols.extend([Col::Edr, Col::ReclaimDelete, Col::ReclaimMaintenance]);
    let (fewest, most) = a.runs();
    if fewest != most {
        cols.push(Col::Runs);
    }
    cols
}

/// The question the answer answers.
pub const QUESTION: &str = "Where does deduplication happen?";

/// What the answer's values are.
pub fn answer_basis(a: &Answer) -> String {
    match a.runs() {
        (_, 0..=1) => "Bulk insert, 1 run: no intervals.".to_string(),
        (x, y) if x == y => format!("Bulk insert, mean of {x} runs, ± its 95 % interval."),
        (x, y) => format!("Bulk insert, mean of {x} to {y} runs, ± its 95 % interval."),
    }
}

/// What the answer's columns mean.
pub const ANSWER_LEGEND: &str = "dedup happens: the lowest layer whose capture reaches 0.50 — \
     system (its own size: the native probe, else its files), storage (the storage probe, as \
     mounted), +dedupe (after out-of-band block dedup) — else potential only (a scan finds \
     ≥ 0.50), else nowhere. capture: share of the duplicate bytes not stored, compression \
     separated out; potential: share a block-level or CDC store could remove from what the \
     insert wrote. EDR = L / ΔP; reclaim: share of the per-file insert's growth given back \
     after delete and after maintenance; both at the system layer. Payloads share a line \
     where all values agree within 0.02 (EDR within 2 %).";

/// Which layers the answer lacks, and how to measure them.
pub fn unmeasured(a: &Answer) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !a.measured(1) {
        out.push(
            "Storage layer not measured: no storage probe (run on the lab's btrfs storage, \
             `lab up --storage btrfs`, or set storage_probe).",
        );
    } else if !a.measured(2) {
        out.push("Out-of-band dedup not measured: set [storage] dedupe_block.");
    }
    if !a.potential_measured() {
        out.push("Potential not measured: turn on the [potential] scans.");
    }
    out
}

/// The answer as text: title, one line per system, the table, the legend.
pub fn render_answer(a: &Answer, style: Style) -> String {
    let systems = a.systems();
    let width = systems.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = format!("{QUESTION} {}\n", answer_basis(a));
    if style == Style::Markdown {
        out.push('\n');
    }
    for system in systems {
        let text = a.headline(system).text();
        out.push_str(&match style {
            Style::Terminal => format!("  {system:<width$}  {text}\n"),
            Style::Markdown => format!("- **{system}**: {text}\n"),
        });
    }
    let cols = columns(a);
    let mut rows = Vec::new();
    let mut previous: Option<(&str, &[String])> = None;
    for l in &a.lines {
        // A system's and its payloads' names only on their first line.
        let same = previous == Some((l.system.as_str(), l.payloads.as_slice()));
        previous = Some((l.system.as_str(), l.payloads.as_slice()));
        rows.push(
            cols.iter()
                .map(|c| match c {
                    Col::System | Col::Payloads if same => String::new(),
                    _ => c.cell(a, l),
                })
                .collect(),
        );
    }
    let header: Vec<&str> = cols.iter().map(|c| c.title()).collect();
    let t = table(style, &header, rows, 4);
    out.push_str(&format!(
        "{}{t}\n",
        if style == Style::Markdown { "\n" } else { "" }
    ));
    let mut legend = ANSWER_LEGEND.to_string();
    for note in unmeasured(a) {
        legend.push(' ');
        legend.push_str(note);
    }
    match style {
        Style::Terminal => out.push_str(&format!("{}\n", wrap(&legend, 100))),
        Style::Markdown => out.push_str(&format!("\n{legend}\n")),
    }
    out
}

/// What `run` and `report` print: the answer, the outcome, then the per-stage table when
/// `details`, else where to find it.
pub fn terminal(s: &Summary, dir: &std::path::Path, details: bool) -> String {
    let mut out = render_answer(&Answer::of(s), Style::Terminal);
    out.push_str(&format!("{}\n", outcome(s).join("\n")));
    if details {
        out.push_str(&format!("\n{}", render_details(s, Style::Terminal)));
    } else {
        out.push_str(&format!(
            "Per-stage table: {}, or add --details.\n",
            dir.join("summary.md").display()
        ));
    }
    out
}

/// Words of `text` in lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&line);
        out.push('\n');
    }
    out
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

/// The per-stage table and its legend as text, then what the systems report.
pub fn render_details(s: &Summary, style: Style) -> String {
    let t = table(style, &HEADER, rows(s), 4);
    let mut out = match style {
        Style::Terminal => format!("{t}\n{}", wrap(LEGEND, 100)),
        Style::Markdown => format!("{t}\n\n{LEGEND}\n"),
    };
    let (header, cells) = snapshot_table(s);
    if !cells.is_empty() {
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let t = table(style, &header, cells, 3);
        match style {
            Style::Terminal => {
                out.push_str(&format!("\n{t}\n{}", wrap(SNAPSHOT_LEGEND, 100)));
            }
            Style::Markdown => {
                out.push_str(&format!(
                    "\n## What the systems report\n\n{t}\n\n{SNAPSHOT_LEGEND}\n"
                ));
            }
        }
    }
    out
}

/// What the snapshot table shows.
pub const SNAPSHOT_LEGEND: &str = "What each system reports about its own storage (its snapshot \
     before and after every stage, in the system's own names and units): the mean change over \
     the stage at each grade, over payloads and runs, and the mean value after it at the \
     highest grade. k, M, G = 10³, 10⁶, 10⁹; – = not reported; ✗n = n snapshots failed. Every \
     value is in snapshots.csv.";

/// The snapshot table: its header and its cells, one row per system × stage × metric.
pub fn snapshot_table(s: &Summary) -> (Vec<String>, Vec<Vec<String>>) {
    let grades: Vec<u8> = {
        let mut g: Vec<u8> = s.groups.iter().map(|g| g.grade).collect();
        g.sort_unstable();
        g.dedup();
        g
    };
    let top = grades.last().copied().unwrap_or(0);
    let mut header: Vec<String> = ["system", "stage", "metric"].map(String::from).into();
    header.extend(grades.iter().map(|g| format!("Δ U{g}")));
    header.push(format!("after U{top}"));
    let cells = s
        .snapshots
        .iter()
        .map(|m| {
            let mut row = vec![m.system.clone(), m.stage.to_string(), m.metric.clone()];
            row.extend(
                grades
                    .iter()
                    .map(|g| m.delta.get(g).map_or("–".into(), |x| si(x.mean, true))),
            );
            row.push(m.after.get(&top).map_or("–".into(), |x| si(x.mean, false)));
            if m.errors > 0 {
                row[2].push_str(&format!(" ✗{}", m.errors));
            }
            row
        })
        .collect();
    (header, cells)
}

/// A number with an SI prefix (k, M, G, T) and three significant digits; `signed` shows a
/// plus sign on growth.
pub fn si(x: f64, signed: bool) -> String {
    let sign = if x < 0.0 {
        "-"
    } else if signed && x > 0.0 {
        "+"
    } else {
        ""
    };
    let a = x.abs();
    let (v, unit) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(scale, _)| a >= *scale)
        .map_or((a, ""), |(scale, unit)| (a / scale, unit));
    let digits = if v >= 100.0 || v.fract() == 0.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{sign}{v:.digits$}{unit}")
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
