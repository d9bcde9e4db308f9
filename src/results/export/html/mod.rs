//! `report.html`: one self-contained page (inline CSS, SVG and a few lines of JavaScript; it
//! loads nothing). It opens with the answer as a colour-coded grid, then charts across
//! systems — capture and EDR over grade per payload, reclaim per system, per-file latency,
//! size over time from the trace — and ends with the per-stage table.
//!
//! The charts are SVG written by hand (`svg.rs`) rather than drawn by plotters: each series
//! is a group named after it, each point carries a hover title, and coinciding series are
//! offset and named — none of which plotters' SVG backend, which writes unnamed primitives,
//! can express.

mod charts;
mod svg;

use std::fmt::Write as _;

use super::table::{
    ANSWER_LEGEND, Col, HEADER, LEGEND, QUESTION, SNAPSHOT_LEGEND, answer_basis, columns, outcome,
    rows, snapshot_table, unmeasured,
};
use super::{Exporter, Report};
use crate::results::answer::{Answer, Line, explain};
use crate::results::layers::Layer;

/// HTML with charts of a [`Report`].
pub struct Html;

impl Exporter for Html {
    fn file_name(&self) -> &'static str {
        "report.html"
    }

    fn render(&self, report: &Report) -> anyhow::Result<Vec<u8>> {
        Ok(page(report).into_bytes())
    }
}

const STYLE: &str = "
:root{--fg:#1b1b1b;--muted:#5b5b5b;--line:#d9d9d9}
body{font-family:system-ui,-apple-system,'Segoe UI','DejaVu Sans',sans-serif;color:var(--fg);
 margin:1.2rem auto;max-width:1240px;padding:0 1rem;line-height:1.35}
h1{font-size:1.55rem;margin:.2rem 0}h2{font-size:1.15rem;margin:1.6rem 0 .4rem;
 border-bottom:1px solid var(--line);padding-bottom:.2rem}
.meta,.cap,.legend-text{color:var(--muted);font-size:.85rem}
nav{font-size:.9rem;margin:.8rem 0}nav a{margin-right:1rem}
ul.headlines{list-style:none;padding:0;margin:.6rem 0}
ul.headlines li{margin:.3rem 0;font-size:1.05rem;display:flex;align-items:center;gap:.5rem}
ul.headlines b{min-width:6rem}
.chip{display:inline-block;min-width:8.5rem;padding:.05rem .5rem;border-radius:.3rem;
 font-weight:600;font-size:.9rem;text-align:center;margin-right:.4rem}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
table.grid{font-size:.92rem;margin:.4rem 0}
table.grid th,table.grid td{border:1px solid var(--line);padding:.2rem .55rem}
table.grid th{background:#f4f4f4;font-weight:600;text-align:left}
table.grid td.num{text-align:right}
table.grid td.v{font-weight:600}
table.details{font-size:.78rem}table.details td,table.details th{border:1px solid var(--line);
 padding:1px 5px}table.details td{text-align:right}
table.details td:nth-child(-n+4),table.details td:nth-child(7){text-align:left}
.layer-system{background:#cfe3f3;border-left:4px solid #0072B2}
.layer-storage{background:#c9eadf;border-left:4px solid #009E73}
.layer-storage_dedupe{background:#d6ecf9;border-left:4px solid #56B4E9}
.layer-potential_only{background:#fbe6bd;border-left:4px solid #E69F00}
.layer-nowhere{background:#f6d2bf;border-left:4px solid #D55E00}
.layer-unmeasured{background:#e8e8e8;border-left:4px solid #999}
.charts{display:flex;flex-wrap:wrap;gap:.6rem 1.2rem}
figure.chart{margin:0;max-width:100%}
figure.chart figcaption{font-weight:600;font-size:.92rem;margin-bottom:.1rem}
figure.chart .cap{max-width:390px;margin:.1rem 0}
svg.plot{display:block;max-width:100%;height:auto;font-size:11px}
svg.plot .grid path{stroke:#ececec}svg.plot .grid text{fill:#555}
svg.plot text.yt{text-anchor:end}svg.plot text.xt{text-anchor:middle}
svg.plot text.xl{text-anchor:middle;fill:#333}svg.plot text.yl{text-anchor:middle;fill:#333}
svg.plot .axes path{stroke:#888;fill:none}
svg.plot .series .line{stroke-width:2}svg.plot .series .ci{stroke-width:1.3;fill:none}
svg.plot .series .pt{stroke:#fff;stroke-width:.8}
svg.plot .series .fail{stroke:#c00;stroke-width:2;fill:none}
svg.plot .series .bar{fill-opacity:.55;stroke:none}svg.plot .series .dot{stroke:#fff;stroke-width:.6}
svg.plot .band rect{fill:#eef3fa}svg.plot .band text{fill:#46698f;font-size:10px}
svg.plot .band.settle rect{fill:#ededed}svg.plot .band.settle text{fill:#777}
svg.plot .mark path{stroke:#b04;stroke-dasharray:3 2}svg.plot .mark text{fill:#b04;font-size:10px}
svg.plot .series.off{opacity:.1}
.legend{display:flex;flex-wrap:wrap;gap:.15rem .5rem;font-size:.82rem}
.legend .key{border:0;background:none;padding:0 .2rem;cursor:pointer;font:inherit;
 display:inline-flex;align-items:center;gap:.25rem;color:inherit}
.legend .key[aria-pressed=false]{opacity:.35}
p.coincide{font-size:.85rem;margin:.15rem 0;color:#7a4b00}
.failures{color:#a00}
";

/// Toggles a series when its legend entry is clicked, to see the lines under it.
const SCRIPT: &str = "
for (const key of document.querySelectorAll('.legend .key')) {
  key.addEventListener('click', () => {
    const on = key.getAttribute('aria-pressed') !== 'false';
    key.setAttribute('aria-pressed', on ? 'false' : 'true');
    const fig = key.closest('figure');
    for (const g of fig.querySelectorAll('g.series')) {
      if (g.dataset.series === key.dataset.series) g.classList.toggle('off', on);
    }
  });
}
";

/// A layer's CSS class suffix.
fn slug(layer: Layer) -> &'static str {
    match layer {
        Layer::System => "system",
        Layer::Storage => "storage",
        Layer::StorageDedupe => "storage_dedupe",
        Layer::PotentialOnly => "potential_only",
        Layer::Nowhere => "nowhere",
        Layer::Unmeasured => "unmeasured",
    }
}

/// The whole page.
fn page(r: &Report) -> String {
    let s = &r.summary;
    let a = Answer::of(s);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>dedup-lab {id}</title><style>{STYLE}</style></head><body>\n\
         <header><h1>{QUESTION}</h1><p class=\"meta\">Experiment {id} · {} · {}</p>\
         </header>\n",
        escape(&outcome(s)[0]),
        escape(&answer_basis(&a)),
        id = escape(&s.experiment),
    );
    answer_section(&mut out, &a);
    let failures = outcome(s);
    if failures.len() > 1 {
        out.push_str("<ul class=\"failures\">");
        for f in &failures[1..] {
            let _ = write!(out, "<li>{}</li>", escape(f));
        }
        out.push_str("</ul>\n");
    }
    out.push_str(
        "<nav><a href=\"#capture\">Capture</a><a href=\"#edr\">EDR</a><a href=\"#reclaim\">Reclaim</a>\
         <a href=\"#latency\">Latency</a><a href=\"#trace\">Size over time</a>\
         <a href=\"#stages\">All stages</a></nav>\n",
    );
    let pairs = charts::capture_and_edr(s);
    out.push_str(
        "<section id=\"capture\"><h2>Dedup capture over grade, per payload</h2>\
         <p class=\"cap\">Bulk insert. Colour: system; dash: layer (solid: system, dashed: \
         storage, dotted: after out-of-band dedup). Click a legend entry to hide its line.</p>\
         <div class=\"charts\">",
    );
    for (_, capture, _) in &pairs {
        out.push_str(&capture.render());
    }
    out.push_str(
        "</div></section>\n<section id=\"edr\"><h2>EDR over grade, per payload</h2>\
         <div class=\"charts\">",
    );
    for (_, _, edr) in &pairs {
        out.push_str(&edr.render());
    }
    out.push_str("</div>");
    out.push_str("</section>\n<section id=\"reclaim\"><h2>Reclaim</h2>\n");
    match charts::reclaim(s) {
        Some(c) => out.push_str(&c.render()),
        None => out.push_str("<p class=\"cap\">No delete or maintenance stage completed.</p>"),
    }
    out.push_str(
        "</section>\n<section id=\"latency\"><h2>Per-file latency</h2>\n<div class=\"charts\">",
    );
    let latency = charts::latency(&r.rows);
    if latency.is_empty() {
        out.push_str("<p class=\"cap\">No per-file stage completed.</p>");
    }
    for c in latency {
        out.push_str(&c.render());
    }
    out.push_str("</div></section>\n<section id=\"trace\"><h2>Size over time</h2>\n");
    let traced = charts::trace(&r.trace);
    if traced.is_empty() {
        out.push_str(
            "<p class=\"cap\">This experiment has no trace (trace.jsonl): nothing sampled \
             size during the stages.</p>",
        );
    }
    for c in traced {
        out.push_str(&c.render());
    }
    out.push_str("</section>\n");
    let (header, cells) = snapshot_table(s);
    if !cells.is_empty() {
        out.push_str("<section id=\"snapshots\"><h2>What the systems report</h2>\n");
        details_table(&mut out, &header, &cells);
        let _ = writeln!(
            out,
            "<p class=\"legend-text\">{}</p></section>",
            escape(SNAPSHOT_LEGEND)
        );
    }
    out.push_str("<section id=\"stages\"><h2>All stages</h2>\n");
    details_table(&mut out, &HEADER, &rows(s));
    let _ = write!(
        out,
        "<p class=\"legend-text\">{}</p></section>\n<script>{SCRIPT}</script>\n\
         </body></html>\n",
        escape(LEGEND)
    );
    out
}

/// A table of text cells under a header.
fn details_table(out: &mut String, header: &[impl AsRef<str>], rows: &[Vec<String>]) {
    out.push_str("<table class=\"details\"><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h.as_ref()));
    }
    out.push_str("</tr>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// The answer: one line per system with its verdict, then the grid, then its legend.
fn answer_section(out: &mut String, a: &Answer) {
    out.push_str("<section id=\"answer\"><ul class=\"headlines\">");
    for system in a.systems() {
        let h = a.headline(system);
        let _ = write!(out, "<li data-system=\"{}\">", escape(system));
        match h.verdicts.as_slice() {
            [(layer, wh)] if wh.is_empty() => {
                let _ = write!(
                    out,
                    "<b>{}</b><span class=\"chip layer-{}\">{}</span>{}",
                    escape(system),
                    slug(*layer),
                    layer.name(),
                    explain(*layer, h.potential_measured)
                );
            }
            many => {
                let _ = write!(out, "<b>{}</b>", escape(system));
                let parts: Vec<String> = many
                    .iter()
                    .map(|(layer, wh)| {
                        format!(
                            "<span class=\"chip layer-{}\">{}</span>at {}",
                            slug(*layer),
                            layer.name(),
                            escape(&wh.join("; "))
                        )
                    })
                    .collect();
                out.push_str(&parts.join(" "));
            }
        }
        out.push_str("</li>");
    }
    out.push_str("</ul>\n<table class=\"grid\"><tr>");
    let cols = columns(a);
    for c in &cols {
        let _ = write!(out, "<th>{}</th>", escape(c.title()));
    }
    out.push_str("</tr>\n");
    for (i, l) in a.lines.iter().enumerate() {
        let first_of = |same: &dyn Fn(&Line) -> bool| i == 0 || !same(&a.lines[i - 1]);
        let span =
            |same: &dyn Fn(&Line) -> bool| a.lines[i..].iter().take_while(|m| same(m)).count();
        let same_system = |m: &Line| m.system == l.system;
        let same_group = |m: &Line| m.system == l.system && m.payloads == l.payloads;
        let _ = write!(out, "<tr data-system=\"{}\">", escape(&l.system));
        for c in &cols {
            let text = escape(&c.cell(a, l));
            match c {
                Col::System if first_of(&same_system) => {
                    let _ = write!(out, "<th rowspan=\"{}\">{text}</th>", span(&same_system));
                }
                Col::Payloads if first_of(&same_group) => {
                    let _ = write!(out, "<td rowspan=\"{}\">{text}</td>", span(&same_group));
                }
                Col::System | Col::Payloads => {}
                Col::Grade => {
                    let _ = write!(out, "<td>{text}</td>");
                }
                Col::Verdict => {
                    let class = l
                        .verdict
                        .map_or("na".to_string(), |v| format!("layer-{}", slug(v)));
                    let _ = write!(out, "<td class=\"v {class}\">{text}</td>");
                }
                _ => match c.share(l) {
                    // A tint that deepens with the share: 0 white, 1 deep blue.
                    Some(v) => {
                        let light = 98.0 - 20.0 * v.clamp(0.0, 1.0);
                        let _ = write!(
                            out,
                            "<td class=\"num\" style=\"background:hsl(205 65% {light:.0}%)\">\
                             {text}</td>"
                        );
                    }
                    None => {
                        let _ = write!(out, "<td class=\"num\">{text}</td>");
                    }
                },
            }
        }
        out.push_str("</tr>\n");
    }
    let mut legend = ANSWER_LEGEND.to_string();
    for note in unmeasured(a) {
        legend.push(' ');
        legend.push_str(note);
    }
    let _ = write!(
        out,
        "</table>\n<p class=\"legend-text\">{}</p></section>\n",
        escape(&legend)
    );
}

/// Text for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
