//! `report.html`: one self-contained page with charts (SVG, drawn by plotters) and the summary
//! table. Per system and probe it plots, over the grades, the EDR and the dedup capture of the
//! bulk insert (one line per payload, 95 % confidence intervals as error bars) and the
//! reclaim after per-file deletes and after maintenance.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::prelude::*;

use super::table::{HEADER, LEGEND, outcome, rows};
use super::{Exporter, Report};
use crate::model::Stage;
use crate::results::stats::Stats;
use crate::results::summary::{ProbeStats, Summary};

/// HTML with charts of [`Report::summary`].
pub struct Html;

/// A line of one chart: label and (grade, statistics) points.
type Series = (String, Vec<(f64, Stats)>);

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

impl Exporter for Html {
    fn file_name(&self) -> &'static str {
        "report.html"
    }

    fn render(&self, report: &Report) -> anyhow::Result<Vec<u8>> {
        let s = &report.summary;
        let mut out = String::new();
        write!(
            out,
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>dedup-lab {id}</title>\
             <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;\
             font-size:0.85em}}td,th{{border:1px solid #ccc;padding:2px 6px}}td{{text-align:right}}\
             td:nth-child(-n+4){{text-align:left}}figure{{display:inline-block;margin:0.5em}}\
             </style></head><body>\n<h1>Experiment {id}</h1>\n",
            id = escape(&s.experiment)
        )?;
        for line in outcome(s) {
            writeln!(out, "<p>{}</p>", escape(&line))?;
        }
        for (system, probes) in by_system(s) {
            writeln!(out, "<h2>{}</h2>", escape(&system))?;
            for (probe, charts) in probes {
                for (title, y, series) in charts {
                    if series.iter().all(|(_, pts)| pts.is_empty()) {
                        continue;
                    }
                    let svg = chart(&format!("{system} · {probe} · {title}"), y, &series)?;
                    writeln!(out, "<figure>{svg}</figure>")?;
                }
            }
        }
        out.push_str("<h2>Summary</h2>\n<table><tr>");
        for h in HEADER {
            write!(out, "<th>{}</th>", escape(h))?;
        }
        out.push_str("</tr>\n");
        for row in rows(s) {
            out.push_str("<tr>");
            for cell in row {
                write!(out, "<td>{}</td>", escape(&cell))?;
            }
            out.push_str("</tr>\n");
        }
        writeln!(out, "</table>\n<p>{}</p>\n</body></html>", escape(LEGEND))?;
        Ok(out.into_bytes())
    }
}

/// Charts per system and probe: (title, y label, series).
type Charts = Vec<(&'static str, &'static str, Vec<Series>)>;

fn by_system(s: &Summary) -> BTreeMap<String, BTreeMap<String, Charts>> {
    type Metric = fn(&ProbeStats) -> Option<&Stats>;
    let charts: [(&str, &str, Stage, Metric); 4] = [
        (
            "EDR of bulk_insert",
            "EDR = L / ΔP",
            Stage::BulkInsert,
            |p| p.edr.as_ref(),
        ),
        (
            "dedup capture of bulk_insert",
            "dedup capture",
            Stage::BulkInsert,
            |p| p.dedup_capture.as_ref(),
        ),
        (
            "reclaim after perfile_delete",
            "reclaim",
            Stage::PerfileDelete,
            |p| p.reclaim.as_ref(),
        ),
        (
            "reclaim after maintenance",
            "reclaim",
            Stage::Maintenance,
            |p| p.reclaim.as_ref(),
        ),
    ];
    let mut out: BTreeMap<String, BTreeMap<String, Charts>> = BTreeMap::new();
    for g in &s.groups {
        for (probe, stats) in &g.probes {
            let per_probe = out
                .entry(g.system.clone())
                .or_default()
                .entry(probe.clone())
                .or_insert_with(|| {
                    charts
                        .iter()
                        .map(|(t, y, _, _)| (*t, *y, Vec::new()))
                        .collect()
                });
            for ((_, _, stage, metric), (_, _, series)) in charts.iter().zip(per_probe.iter_mut()) {
                let Some(v) = metric(stats).filter(|_| g.stage == *stage) else {
                    continue;
                };
                let point = (f64::from(g.grade), v.clone());
                match series.iter_mut().find(|(name, _)| *name == g.payload) {
                    Some((_, pts)) => pts.push(point),
                    None => series.push((g.payload.clone(), vec![point])),
                }
            }
        }
    }
    out
}

/// One line chart as an SVG string: x = grade, y = mean with its 95 % interval.
fn chart(title: &str, y_label: &str, series: &[Series]) -> anyhow::Result<String> {
    let top = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|(_, s)| s.mean + s.ci95.unwrap_or(0.0)))
        .fold(1.0f64, f64::max)
        * 1.1;
    let bottom = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|(_, s)| s.mean - s.ci95.unwrap_or(0.0)))
        .fold(0.0f64, f64::min);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (520, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(-2f64..100f64, bottom..top)
            .map_err(plot_err)?;
        c.configure_mesh()
            .x_desc("grade (% duplicate files)")
            .y_desc(y_label)
            .draw()
            .map_err(plot_err)?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            c.draw_series(LineSeries::new(
                pts.iter().map(|(x, s)| (*x, s.mean)),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            c.draw_series(pts.iter().map(|(x, s)| {
                let ci = s.ci95.unwrap_or(0.0);
                ErrorBar::new_vertical(*x, s.mean - ci, s.mean, s.mean + ci, color.filled(), 6)
            }))
            .map_err(plot_err)?;
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e:?}")
}

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
