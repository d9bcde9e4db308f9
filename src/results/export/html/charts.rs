//! The report's charts, from its data: capture and EDR over grade per payload (systems as
//! lines, one per measured layer), reclaim per system, per-file latency percentiles per
//! system, and size over time from the trace.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::svg::{Band, Bar, BarChart, BarSeries, LineChart, Point, Series, XAxis};
use crate::model::{Reading, STORAGE_DEDUPE, Stage};
use crate::results::derive::Row;
use crate::results::layers::system_layer;
use crate::results::stats::Stats;
use crate::results::summary::{Group, ProbeStats, Summary};
use crate::results::trace::{Event, TraceItem, TraceLine};

/// The layers' names in series names, in the order of `answer::LAYERS`.
const LAYER_NAMES: [&str; 3] = ["system", "storage", "+dedupe"];

/// A probe statistic of a group at layer `i`.
fn at_layer(g: &Group, i: usize, f: fn(&ProbeStats) -> Option<&Stats>) -> Option<&Stats> {
    let probe = |name: &str| g.probes.get(name).and_then(f);
    match i {
        0 => system_layer(probe),
        1 => probe(crate::probe::storage::DEF.name),
        _ => probe(STORAGE_DEDUPE),
    }
}

/// A point from statistics: the mean, its 95 % interval, and a tooltip.
fn point(x: f64, s: &Stats, what: &str) -> Point {
    let ci = s.ci95.map(|c| format!(" ± {c:.3}")).unwrap_or_default();
    Point {
        x,
        y: s.mean,
        interval: s.ci95.map(|c| (s.mean - c, s.mean + c)),
        tip: format!("{what}: {:.3}{ci} ({} runs)", s.mean, s.n),
    }
}

/// The systems of a summary, in order.
fn systems(s: &Summary) -> Vec<&str> {
    let mut out: Vec<&str> = s.groups.iter().map(|g| g.system.as_str()).collect();
    out.dedup();
    out
}

/// The grade axis with a tick at each grade of the experiment.
fn grade_axis(s: &Summary) -> XAxis {
    let mut grades: Vec<u8> = s.groups.iter().map(|g| g.grade).collect();
    grades.sort_unstable();
    grades.dedup();
    XAxis::Linear {
        label: "grade (% duplicate files)".into(),
        min: -6.0,
        max: 100.0,
        ticks: grades
            .into_iter()
            .map(|g| (f64::from(g), format!("U{g}")))
            .collect(),
    }
}

/// Per payload: the bulk insert's dedup capture and its EDR over grade, one line per system
/// and measured layer (colour: system; dash: layer).
pub fn capture_and_edr(s: &Summary) -> Vec<(String, LineChart, LineChart)> {
    let systems = systems(s);
    let bulk: Vec<&Group> = s
        .groups
        .iter()
        .filter(|g| g.stage == Stage::BulkInsert)
        .collect();
    let measured: Vec<usize> = (0..LAYER_NAMES.len())
        .filter(|&i| {
            bulk.iter().any(|g| {
                at_layer(g, i, |p| p.dedup_capture.as_ref()).is_some()
                    || at_layer(g, i, |p| p.edr.as_ref()).is_some()
            })
        })
        .collect();
    let mut payloads: Vec<&str> = Vec::new();
    for g in &bulk {
        if !payloads.contains(&g.payload.as_str()) {
            payloads.push(&g.payload);
        }
    }
    let chart = |id: &str, payload: &str, metric: &str, f: fn(&ProbeStats) -> Option<&Stats>| {
        let mut series = Vec::new();
        for (si, system) in systems.iter().enumerate() {
            for &li in &measured {
                let name = if measured == [0] {
                    system.to_string()
                } else {
                    format!("{system} · {}", LAYER_NAMES[li])
                };
                let points: Vec<Point> = bulk
                    .iter()
                    .filter(|g| g.system == *system && g.payload == payload)
                    .filter_map(|g| {
                        let st = at_layer(g, li, f)?;
                        Some(point(
                            f64::from(g.grade),
                            st,
                            &format!("{name} · U{} · {metric}", g.grade),
                        ))
                    })
                    .collect();
                if !points.is_empty() {
                    series.push(Series {
                        name,
                        color: si,
                        dash: li,
                        points,
                        failures: Vec::new(),
                    });
                }
            }
        }
        LineChart {
            id: format!("{id}:{payload}"),
            title: format!("{payload}: {metric}"),
            x: grade_axis(s),
            y_label: metric.to_string(),
            log_y: false,
            series,
            bands: Vec::new(),
            marks: Vec::new(),
            dodge: true,
            zero: true,
            size: (390.0, 250.0),
            caption: String::new(),
        }
    };
    payloads
        .into_iter()
        .map(|p| {
            let mut capture = chart("capture", p, "capture", |x| x.dedup_capture.as_ref());
            capture.caption = "Share of the duplicate bytes not stored (0 none, 1 all); \
                               whiskers: 95 % interval over runs."
                .into();
            let mut edr = chart("edr", p, "EDR", |x| x.edr.as_ref());
            edr.caption = "L / ΔP: bytes written per byte stored (1 = as written).".into();
            (p.to_string(), capture, edr)
        })
        .collect()
}

/// Reclaim per system after the per-file delete and after maintenance, at the system layer:
/// bars are means over payload × grade, dots each payload × grade.
pub fn reclaim(s: &Summary) -> Option<BarChart> {
    let systems = systems(s);
    let mut series = Vec::new();
    // Grey and black: colours of their own, not those of the systems elsewhere.
    for (stage, name, color) in [
        (Stage::PerfileDelete, "after per-file delete", 8),
        (Stage::Maintenance, "after maintenance", 7),
    ] {
        let bars = systems
            .iter()
            .map(|system| {
                let dots: Vec<(f64, String)> = s
                    .groups
                    .iter()
                    .filter(|g| g.system == *system && g.stage == stage)
                    .filter_map(|g| {
                        let st = at_layer(g, 0, |p| p.reclaim.as_ref())?;
                        Some((
                            st.mean,
                            format!(
                                "{system} · {} U{} · {name}: {:.3}",
                                g.payload, g.grade, st.mean
                            ),
                        ))
                    })
                    .collect();
                let st = Stats::of(&dots.iter().map(|d| d.0).collect::<Vec<_>>())?;
                Some(Bar {
                    value: st.mean,
                    interval: st.ci95.map(|c| (st.mean - c, st.mean + c)),
                    tip: format!(
                        "{system} · {name}: {:.3}{} over {} payload × grade",
                        st.mean,
                        st.ci95.map(|c| format!(" ± {c:.3}")).unwrap_or_default(),
                        st.n
                    ),
                    dots,
                })
            })
            .collect::<Vec<_>>();
        if bars.iter().any(Option::is_some) {
            series.push(BarSeries {
                name: name.to_string(),
                color,
                bars,
            });
        }
    }
    (!series.is_empty()).then(|| BarChart {
        id: "reclaim".into(),
        title: "Reclaim per system".into(),
        categories: systems.iter().map(|s| s.to_string()).collect(),
        y_label: "reclaim".into(),
        series,
        size: (390.0, 250.0),
        caption: "Share of the per-file insert's growth given back, at the system layer. Bar: \
                  mean over payload × grade; whisker: its 95 % interval; dots: each payload × \
                  grade (mean over runs)."
            .into(),
    })
}

/// A row's value of one percentile.
type Percentile = fn(&Row) -> Option<f64>;

/// The percentiles a per-file stage records, with their names.
const PERCENTILES: [(&str, Percentile); 6] = [
    ("min", |r| r.min_us),
    ("p50", |r| r.p50_us),
    ("p90", |r| r.p90_us),
    ("p95", |r| r.p95_us),
    ("p99", |r| r.p99_us),
    ("max", |r| r.max_us),
];

/// Per per-file stage: latency percentiles per system (log scale), means over the cells.
pub fn latency(rows: &[Row]) -> Vec<LineChart> {
    let mut charts = Vec::new();
    for stage in [Stage::PerfileInsert, Stage::PerfileDelete] {
        // One row per stage record: a record's latency repeats on each of its probe's rows.
        let mut cells: BTreeMap<(&str, &str, u8, u32), &Row> = BTreeMap::new();
        for r in rows
            .iter()
            .filter(|r| r.stage == stage && r.p50_us.is_some())
        {
            cells
                .entry((&r.system, &r.payload, r.grade, r.run))
                .or_insert(r);
        }
        let mut systems: Vec<&str> = cells.keys().map(|k| k.0).collect();
        systems.dedup();
        let series: Vec<Series> = systems
            .iter()
            .enumerate()
            .map(|(si, system)| {
                let mine: Vec<&Row> = cells
                    .iter()
                    .filter(|(k, _)| k.0 == *system)
                    .map(|(_, r)| *r)
                    .collect();
                let points = PERCENTILES
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (name, f))| {
                        let ms: Vec<f64> =
                            mine.iter().filter_map(|r| f(r)).map(|v| v / 1e3).collect();
                        let st = Stats::of(&ms)?;
                        let mut p = point(i as f64, &st, &format!("{system} · {name} ms"));
                        p.tip = format!(
                            "{system} · {name}: {:.3} ms{} (mean of {} cells)",
                            st.mean,
                            st.ci95.map(|c| format!(" ± {c:.3}")).unwrap_or_default(),
                            st.n
                        );
                        Some(p)
                    })
                    .collect();
                Series {
                    name: system.to_string(),
                    color: si,
                    dash: 0,
                    points,
                    failures: Vec::new(),
                }
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        charts.push(LineChart {
            id: format!("latency:{stage}"),
            title: format!("{stage}: per-file latency"),
            x: XAxis::Categories {
                label: "percentile of the requests of a cell".into(),
                names: PERCENTILES.iter().map(|p| p.0.to_string()).collect(),
            },
            y_label: "ms (log)".into(),
            log_y: true,
            series,
            bands: Vec::new(),
            marks: Vec::new(),
            dodge: true,
            zero: false,
            size: (390.0, 250.0),
            caption: "Each point: the mean over cells (payload × grade × run) of that \
                      percentile; whiskers: 95 % interval."
                .into(),
        });
    }
    charts
}

/// Per system, the size over time of one cell attempt from the trace — the highest grade,
/// the lowest run, the first payload traced, its last attempt — with its stages shaded,
/// settling hatched, maintenance and storage dedup marked.
pub fn trace(lines: &[TraceLine]) -> Vec<LineChart> {
    let mut systems: Vec<&str> = Vec::new();
    for l in lines {
        if !systems.contains(&l.cell.system.as_str()) {
            systems.push(&l.cell.system);
        }
    }
    let mut charts = Vec::new();
    for system in systems {
        let mine: Vec<&TraceLine> = lines.iter().filter(|l| l.cell.system == system).collect();
        let first_payload = mine[0].cell.payload;
        let Some(pick) = mine
            .iter()
            .map(|l| (&l.cell, l.attempt))
            .max_by_key(|(c, a)| {
                (
                    c.grade,
                    std::cmp::Reverse(c.run),
                    c.payload == first_payload,
                    *a,
                )
            })
        else {
            continue;
        };
        let mut cell_lines: Vec<&TraceLine> = mine
            .iter()
            .copied()
            .filter(|l| (&l.cell, l.attempt) == pick)
            .collect();
        cell_lines.sort_by_key(|l| l.at);
        let t0: DateTime<Utc> = cell_lines.iter().map(|l| l.at).min().expect("not empty");
        let x = |l: &TraceLine| (l.at - t0).as_seconds_f64();
        let end = cell_lines.iter().map(|l| x(l)).fold(1e-3, f64::max);
        let mut probes: BTreeMap<(usize, &str), (Series, Stage)> = BTreeMap::new();
        let mut bands = Vec::new();
        let mut open: BTreeMap<(Stage, bool), f64> = BTreeMap::new();
        let mut marks = Vec::new();
        for l in &cell_lines {
            match &l.item {
                TraceItem::Sample { probe, reading } => {
                    let rank = crate::probe::rank(probe);
                    let (s, last) = probes.entry((rank, probe)).or_insert_with(|| {
                        let s = Series {
                            name: probe.clone(),
                            color: 0,
                            dash: 0,
                            points: Vec::new(),
                            failures: Vec::new(),
                        };
                        (s, l.stage)
                    });
                    // No line across the resets between stages: nothing was sampled there.
                    if *last != l.stage {
                        s.points.push(gap(x(l)));
                        *last = l.stage;
                    }
                    match reading {
                        Reading::Bytes { bytes } => s.points.push(Point {
                            x: x(l),
                            y: *bytes as f64 / (1024.0 * 1024.0),
                            interval: None,
                            tip: format!("{probe} · {} t = {:.2} s: {bytes} bytes", l.stage, l.t_s),
                        }),
                        Reading::Error { error } => {
                            s.failures.push((x(l), error.clone()));
                            // The line does not join across a failed sample.
                            s.points.push(gap(x(l)));
                        }
                    }
                }
                TraceItem::Event { event } => match event {
                    Event::StageStart | Event::SettleStart => {
                        open.insert((l.stage, *event == Event::SettleStart), x(l));
                    }
                    Event::StageEnd | Event::SettleEnd => {
                        let settle = *event == Event::SettleEnd;
                        if let Some(from) = open.remove(&(l.stage, settle)) {
                            bands.push(band(l.stage, settle, from, x(l)));
                        }
                    }
                    Event::Maintenance | Event::StorageDedupe => {
                        marks.push((x(l), event.name().replace('_', " ")));
                    }
                },
                // The system's own accounting is in the snapshot table, not on this chart.
                TraceItem::Metrics { .. } => {}
            }
        }
        // A stage or settle without its end (a failed attempt) runs to the last line.
        for ((stage, settle), from) in open {
            bands.push(band(stage, settle, from, end));
        }
        let mut series: Vec<Series> = probes.into_values().map(|(s, _)| s).collect();
        for (i, s) in series.iter_mut().enumerate() {
            s.color = i;
        }
        let (cell, attempt) = pick;
        charts.push(LineChart {
            id: format!("trace:{system}"),
            title: format!("{cell} attempt {attempt}: size over time"),
            x: XAxis::Linear {
                label: "seconds since the cell's first sample".into(),
                min: 0.0,
                max: end,
                ticks: Vec::new(),
            },
            y_label: "MiB".into(),
            log_y: false,
            series,
            bands,
            marks,
            dodge: false,
            zero: false,
            size: (960.0, 300.0),
            caption: "Shaded: each stage's own work; hatched: settling; lines: maintenance and \
                      out-of-band dedup; × on the axis: a failed sample. trace.jsonl holds \
                      every cell."
                .into(),
        });
    }
    charts
}

/// A break in a line at x.
fn gap(x: f64) -> Point {
    Point {
        x,
        y: f64::NAN,
        interval: None,
        tip: String::new(),
    }
}

fn band(stage: Stage, settle: bool, from: f64, to: f64) -> Band {
    Band {
        from,
        to,
        label: if settle {
            format!("settle {stage}")
        } else {
            stage.to_string()
        },
        settle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::PayloadType;
    use crate::model::CellKey;

    fn probe(capture: Option<f64>, edr: f64) -> ProbeStats {
        ProbeStats {
            delta_bytes: None,
            edr: Stats::of(&[edr]),
            edr_replica: None,
            dedup_capture: capture.and_then(|c| Stats::of(&[c, c])),
            reclaim: None,
            errors: 0,
            flagged: 0,
            noisy: false,
        }
    }

    fn group(system: &str, grade: u8, probes: Vec<(&str, ProbeStats)>) -> Group {
        Group {
            system: system.into(),
            payload: "random_binary".into(),
            grade,
            stage: Stage::BulkInsert,
            runs: 2,
            logical_bytes: None,
            throughput_bps: None,
            p50_us: None,
            p99_us: None,
            probes: probes
                .into_iter()
                .map(|(n, p)| (n.to_string(), p))
                .collect(),
        }
    }

    #[test]
    fn each_measured_layer_is_a_line_in_the_systems_colour() {
        let summary = Summary {
            experiment: "t".into(),
            verdicts: Vec::new(),
            groups: vec![
                group(
                    "fs",
                    0,
                    vec![("fs", probe(None, 1.0)), ("storage", probe(None, 1.0))],
                ),
                group(
                    "fs",
                    90,
                    vec![
                        ("fs", probe(Some(0.0), 1.0)),
                        ("storage", probe(Some(0.9), 5.0)),
                    ],
                ),
                group("sqlite", 90, vec![("native", probe(Some(0.01), 1.0))]),
            ],
            snapshots: Vec::new(),
            failures: Vec::new(),
            cells_done: 0,
            failed_attempts: 0,
        };
        let charts = capture_and_edr(&summary);
        assert_eq!(charts.len(), 1);
        let (payload, capture, edr) = &charts[0];
        assert_eq!(
            (payload.as_str(), capture.id.as_str()),
            ("random_binary", "capture:random_binary")
        );
        let lines: Vec<(&str, usize, usize, usize)> = capture
            .series
            .iter()
            .map(|s| (s.name.as_str(), s.color, s.dash, s.points.len()))
            .collect();
        // sqlite has no storage probe: no line for it there.
        assert_eq!(
            lines,
            vec![
                ("fs · system", 0, 0, 1),
                ("fs · storage", 0, 1, 1),
                ("sqlite · system", 1, 0, 1)
            ]
        );
        assert_eq!(capture.series[1].points[0].y, 0.9);
        // EDR has grade 0 too.
        assert_eq!(edr.series[0].points.len(), 2);
        assert_eq!(edr.id, "edr:random_binary");
    }

    fn line(grade: u8, attempt: u32, stage: Stage, secs: f64, item: TraceItem) -> TraceLine {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap()
            + chrono::Duration::milliseconds((secs * 1000.0) as i64);
        TraceLine {
            cell: CellKey {
                system: "sqlite".into(),
                payload: PayloadType::RandomBinary,
                grade,
                run: 1,
            },
            attempt,
            stage,
            t_s: secs,
            at,
            item,
        }
    }

    fn bytes(probe: &str, b: u64) -> TraceItem {
        TraceItem::Sample {
            probe: probe.into(),
            reading: Reading::Bytes { bytes: b },
        }
    }

    #[test]
    fn the_trace_shows_the_last_attempt_of_the_highest_grade_with_its_events() {
        let ev = |event| TraceItem::Event { event };
        let (bulk, perfile) = (Stage::BulkInsert, Stage::PerfileInsert);
        let lines = vec![
            line(0, 1, bulk, 0.0, bytes("fs", 1)),
            line(90, 1, bulk, 0.0, bytes("fs", 1)),
            line(90, 2, bulk, 10.0, ev(Event::StageStart)),
            line(90, 2, bulk, 10.0, bytes("fs", 1 << 20)),
            line(90, 2, bulk, 11.0, bytes("fs", 2 << 20)),
            line(90, 2, bulk, 12.0, ev(Event::StageEnd)),
            line(90, 2, bulk, 12.0, ev(Event::SettleStart)),
            line(90, 2, bulk, 13.0, ev(Event::SettleEnd)),
            line(90, 2, perfile, 20.0, ev(Event::StageStart)),
            line(90, 2, perfile, 20.0, bytes("fs", 0)),
            line(
                90,
                2,
                perfile,
                21.0,
                TraceItem::Sample {
                    probe: "fs".into(),
                    reading: Reading::Error {
                        error: "gone".into(),
                    },
                },
            ),
            line(90, 2, perfile, 22.0, ev(Event::StorageDedupe)),
        ];
        let charts = trace(&lines);
        assert_eq!(charts.len(), 1);
        let c = &charts[0];
        assert_eq!(
            c.title,
            "sqlite/random_binary/U90/run1 attempt 2: size over time"
        );
        let fs = &c.series[0];
        let xs: Vec<f64> = fs.points.iter().map(|p| p.x).collect();
        let ys: Vec<String> = fs.points.iter().map(|p| format!("{}", p.y)).collect();
        // Seconds from the attempt's first line; a gap between the stages and at the failure.
        assert_eq!(xs, vec![0.0, 1.0, 10.0, 10.0, 11.0]);
        assert_eq!(ys, vec!["1", "2", "NaN", "0", "NaN"]);
        assert_eq!(fs.failures, vec![(11.0, "gone".to_string())]);
        let bands: Vec<(f64, f64, &str)> = c
            .bands
            .iter()
            .map(|b| (b.from, b.to, b.label.as_str()))
            .collect();
        // The perfile stage has no end in this trace: its band runs to the last line.
        assert_eq!(
            bands,
            vec![
                (0.0, 2.0, "bulk_insert"),
                (2.0, 3.0, "settle bulk_insert"),
                (10.0, 12.0, "perfile_insert")
            ]
        );
        assert_eq!(c.marks, vec![(12.0, "storage dedupe".to_string())]);
    }
}
