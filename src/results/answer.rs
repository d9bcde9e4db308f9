//! The answer first: per system and grade — per payload only where payloads differ — the
//! dedup capture at each measured layer, the verdict, the EDR and the reclaim after per-file
//! delete and after maintenance. Terminal, Markdown and HTML show it before anything else.

use std::collections::BTreeMap;

use super::layers::{Layer, Verdict, system_layer};
use super::stats::Stats;
use super::summary::{Group, ProbeStats, Summary};
use crate::model::Stage;

/// Payloads share a line when each share (capture, potential, reclaim) differs by at most
/// this: a difference no decision turns on.
pub const SHARE_TOLERANCE: f64 = 0.02;

/// Payloads share a line when their EDRs differ by at most this fraction.
pub const EDR_TOLERANCE: f64 = 0.02;

/// The layers a capture is measured at, lowest first: the order of [`Line::capture`].
pub const LAYERS: [Layer; 3] = [Layer::System, Layer::Storage, Layer::StorageDedupe];

/// A mean over runs and the half-width of its 95 % confidence interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Est {
    /// Mean.
    pub mean: f64,
    /// Half-width of the 95 % interval; absent for one run.
    pub ci95: Option<f64>,
    /// Runs.
    pub n: usize,
}

impl From<&Stats> for Est {
    fn from(s: &Stats) -> Est {
        Est {
            mean: s.mean,
            ci95: s.ci95,
            n: s.n,
        }
    }
}

impl Est {
    /// `0.52±0.08` with two decimals; the interval only where it shows at that precision.
    pub fn show(&self) -> String {
        match self.ci95.filter(|c| *c >= 0.005) {
            Some(ci) => format!("{:.2}±{ci:.2}", self.mean),
            None => format!("{:.2}", self.mean),
        }
    }

    /// The mean of several payloads' means, with the widest interval and the fewest runs.
    fn merge(all: &[&Est]) -> Est {
        Est {
            mean: all.iter().map(|e| e.mean).sum::<f64>() / all.len() as f64,
            ci95: all.iter().filter_map(|e| e.ci95).reduce(f64::max),
            n: all.iter().map(|e| e.n).min().unwrap_or(0),
        }
    }
}

/// [`Est::show`], or `–` when there is no value.
pub fn show(e: Option<&Est>) -> String {
    e.map_or_else(|| "–".to_string(), Est::show)
}

/// One system × payloads × grade: a line of the answer.
#[derive(Clone, Debug)]
pub struct Line {
    /// System instance.
    pub system: String,
    /// The payloads whose values this line shows (all values agree within the tolerances).
    pub payloads: Vec<String>,
    /// Grade.
    pub grade: u8,
    /// The layer that removed the duplicates; absent at grade 0 (no duplicates).
    pub verdict: Option<Layer>,
    /// Capture of the bulk insert at each layer of [`LAYERS`].
    pub capture: [Option<Est>; 3],
    /// The scan method with the highest potential, and its potential.
    pub potential: Option<(String, Est)>,
    /// EDR of the bulk insert at the system layer.
    pub edr: Option<Est>,
    /// Reclaim after the per-file delete at the system layer.
    pub reclaim_delete: Option<Est>,
    /// Reclaim after maintenance at the system layer.
    pub reclaim_maintenance: Option<Est>,
    /// Runs of the bulk insert (the fewest of the payloads).
    pub runs: usize,
}

impl Line {
    /// Whether two payloads' lines show the same thing within the tolerances.
    fn agrees(&self, o: &Line) -> bool {
        let share = |a: f64, b: f64| (a - b).abs() <= SHARE_TOLERANCE;
        let edr = |a: f64, b: f64| (a - b).abs() <= EDR_TOLERANCE * a.abs().max(b.abs());
        let both = |a: Option<&Est>, b: Option<&Est>, close: &dyn Fn(f64, f64) -> bool| match (a, b)
        {
            (None, None) => true,
            (Some(a), Some(b)) => close(a.mean, b.mean),
            _ => false,
        };
        self.grade == o.grade
            && self.verdict == o.verdict
            && (0..LAYERS.len())
                .all(|i| both(self.capture[i].as_ref(), o.capture[i].as_ref(), &share))
            && match (&self.potential, &o.potential) {
                (None, None) => true,
                (Some((m, a)), Some((n, b))) => m == n && share(a.mean, b.mean),
                _ => false,
            }
            && both(self.edr.as_ref(), o.edr.as_ref(), &edr)
            && both(
                self.reclaim_delete.as_ref(),
                o.reclaim_delete.as_ref(),
                &share,
            )
            && both(
                self.reclaim_maintenance.as_ref(),
                o.reclaim_maintenance.as_ref(),
                &share,
            )
    }

    /// One line for payloads whose lines agree: means of their values.
    fn merge(lines: &[&Line]) -> Line {
        let first = lines[0];
        let est = |f: &dyn Fn(&Line) -> Option<&Est>| {
            let all: Vec<&Est> = lines.iter().filter_map(|l| f(l)).collect();
            (all.len() == lines.len()).then(|| Est::merge(&all))
        };
        Line {
            system: first.system.clone(),
            payloads: lines.iter().flat_map(|l| l.payloads.clone()).collect(),
            grade: first.grade,
            verdict: first.verdict,
            capture: [0, 1, 2].map(|i| est(&|l| l.capture[i].as_ref())),
            potential: first.potential.as_ref().and_then(|(m, _)| {
                Some((m.clone(), est(&|l| l.potential.as_ref().map(|p| &p.1))?))
            }),
            edr: est(&|l| l.edr.as_ref()),
            reclaim_delete: est(&|l| l.reclaim_delete.as_ref()),
            reclaim_maintenance: est(&|l| l.reclaim_maintenance.as_ref()),
            runs: lines.iter().map(|l| l.runs).min().unwrap_or(0),
        }
    }
}

/// The answer of an experiment.
#[derive(Clone, Debug)]
pub struct Answer {
    /// Per system, per group of agreeing payloads, per grade.
    pub lines: Vec<Line>,
    /// Every payload of the experiment, to say "all" where a line covers them all.
    pub payloads: Vec<String>,
}

/// What one system's verdicts say, for a one-line answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Headline {
    /// System instance.
    pub system: String,
    /// Each verdict with where it holds (payload label and grades); one verdict with an
    /// empty `where` when it holds everywhere.
    pub verdicts: Vec<(Layer, Vec<String>)>,
    /// Whether a potential was measured for the system.
    pub potential_measured: bool,
}

impl Headline {
    /// The verdict in words: `potential only — nothing removes them; …`, or each verdict
    /// with where it holds.
    pub fn text(&self) -> String {
        match self.verdicts.as_slice() {
            [] => "no grade with duplicates measured".to_string(),
            [(layer, wh)] if wh.is_empty() => {
                format!(
                    "{} — {}",
                    layer.name(),
                    explain(*layer, self.potential_measured)
                )
            }
            many => many
                .iter()
                .map(|(layer, wh)| format!("{} at {}", layer.name(), wh.join("; ")))
                .collect::<Vec<_>>()
                .join(" · "),
        }
    }
}

/// What a verdict means, in a few words.
pub fn explain(layer: Layer, potential_measured: bool) -> &'static str {
    match layer {
        Layer::System => "its own accounting shows the duplicates not stored",
        Layer::Storage => "the storage under it does not store them, as mounted",
        Layer::StorageDedupe => "only out-of-band block dedup of its storage removes them",
        Layer::PotentialOnly => "nothing removes them; a block-level or CDC store could",
        Layer::Nowhere if potential_measured => {
            "nothing removes them, nor could a block-level or CDC store"
        }
        Layer::Nowhere => "no measured layer removes them",
        Layer::Unmeasured => "no layer was measured",
    }
}

/// A probe statistic of a group at the system layer.
fn at_system(g: Option<&Group>, f: fn(&ProbeStats) -> Option<&Stats>) -> Option<Est> {
    let g = g?;
    system_layer(|p| g.probes.get(p).and_then(f)).map(Est::from)
}

impl Answer {
    /// The answer of a summary: one line per system × payload × grade, then the payloads of
    /// a system merged where all their grades' lines agree.
    pub fn of(s: &Summary) -> Answer {
        let groups: BTreeMap<(&str, &str, u8, Stage), &Group> = s
            .groups
            .iter()
            .map(|g| ((g.system.as_str(), g.payload.as_str(), g.grade, g.stage), g))
            .collect();
        let verdicts: BTreeMap<(&str, &str, u8), &Verdict> = s
            .verdicts
            .iter()
            .map(|v| ((v.system.as_str(), v.payload.as_str(), v.grade), v))
            .collect();
        let mut payloads: Vec<String> = Vec::new();
        // Per system, per payload: its lines over the grades.
        let mut profiles: BTreeMap<&str, Vec<(&str, Vec<Line>)>> = BTreeMap::new();
        for (&(system, payload, grade, stage), bulk) in &groups {
            if stage != Stage::BulkInsert {
                continue;
            }
            if !payloads.iter().any(|p| p == payload) {
                payloads.push(payload.to_string());
            }
            let stage_group = |st: Stage| groups.get(&(system, payload, grade, st)).copied();
            let v = verdicts.get(&(system, payload, grade));
            let line = Line {
                system: system.to_string(),
                payloads: vec![payload.to_string()],
                grade,
                verdict: v.map(|v| v.layer),
                capture: [
                    v.and_then(|v| v.system_capture.as_ref()).map(Est::from),
                    v.and_then(|v| v.storage_capture.as_ref()).map(Est::from),
                    v.and_then(|v| v.storage_dedupe_capture.as_ref())
                        .map(Est::from),
                ],
                potential: v
                    .and_then(|v| v.potential.as_ref())
                    .map(|(m, p)| (m.clone(), Est::from(p))),
                edr: at_system(Some(bulk), |p| p.edr.as_ref()),
                reclaim_delete: at_system(stage_group(Stage::PerfileDelete), |p| {
                    p.reclaim.as_ref()
                }),
                reclaim_maintenance: at_system(stage_group(Stage::Maintenance), |p| {
                    p.reclaim.as_ref()
                }),
                runs: bulk.runs,
            };
            let per_payload = profiles.entry(system).or_default();
            match per_payload.iter_mut().find(|(p, _)| *p == payload) {
                Some((_, lines)) => lines.push(line),
                None => per_payload.push((payload, vec![line])),
            }
        }
        let mut lines = Vec::new();
        for per_payload in profiles.into_values() {
            // Greedy: a payload joins the first group whose first payload it agrees with.
            let mut merged: Vec<Vec<Vec<Line>>> = Vec::new();
            for (_, profile) in per_payload {
                let agrees = |g: &Vec<Vec<Line>>| {
                    g[0].len() == profile.len()
                        && g[0].iter().zip(&profile).all(|(a, b)| a.agrees(b))
                };
                match merged.iter_mut().find(|g| agrees(g)) {
                    Some(g) => g.push(profile),
                    None => merged.push(vec![profile]),
                }
            }
            for members in merged {
                for i in 0..members[0].len() {
                    let at: Vec<&Line> = members.iter().map(|m| &m[i]).collect();
                    lines.push(Line::merge(&at));
                }
            }
        }
        Answer { lines, payloads }
    }

    /// Whether any line has a capture at `LAYERS[i]`.
    pub fn measured(&self, i: usize) -> bool {
        self.lines.iter().any(|l| l.capture[i].is_some())
    }

    /// Whether any line has a potential.
    pub fn potential_measured(&self) -> bool {
        self.lines.iter().any(|l| l.potential.is_some())
    }

    /// The fewest and the most runs of any line.
    pub fn runs(&self) -> (usize, usize) {
        let runs = self.lines.iter().map(|l| l.runs);
        (runs.clone().min().unwrap_or(0), runs.max().unwrap_or(0))
    }

    /// The systems, in the order of the lines.
    pub fn systems(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for l in &self.lines {
            if out.last() != Some(&l.system.as_str()) {
                out.push(&l.system);
            }
        }
        out
    }

    /// `all 6 payloads` when `payloads` are all of the experiment's (and more than one),
    /// else their names.
    pub fn payload_label(&self, payloads: &[String]) -> String {
        if payloads.len() > 1 && payloads.len() == self.payloads.len() {
            format!("all {} payloads", payloads.len())
        } else {
            payloads.join(", ")
        }
    }

    /// One system's verdicts and where each holds.
    pub fn headline(&self, system: &str) -> Headline {
        let mine: Vec<&Line> = self.lines.iter().filter(|l| l.system == system).collect();
        let judged: Vec<&Line> = mine
            .iter()
            .copied()
            .filter(|l| l.verdict.is_some())
            .collect();
        let mut verdicts: Vec<(Layer, Vec<String>)> = Vec::new();
        for l in &judged {
            let layer = l.verdict.expect("judged lines have a verdict");
            let label = self.payload_label(&l.payloads);
            let wh = match verdicts.iter_mut().find(|(v, _)| *v == layer) {
                Some((_, wh)) => wh,
                None => {
                    verdicts.push((layer, Vec::new()));
                    &mut verdicts.last_mut().expect("just pushed").1
                }
            };
            // "random_binary U50, U90": grades of one payload label go together.
            match wh.iter_mut().find(|w| w.starts_with(&format!("{label} U"))) {
                Some(w) => w.push_str(&format!(", U{}", l.grade)),
                None => wh.push(format!("{label} U{}", l.grade)),
            }
        }
        if verdicts.len() == 1 {
            verdicts[0].1.clear();
        }
        Headline {
            system: system.to_string(),
            verdicts,
            potential_measured: judged.iter().any(|l| l.potential.is_some()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::layers::Layer;

    fn stats(v: &[f64]) -> Option<Stats> {
        Stats::of(v)
    }

    /// A bulk-insert group with one probe's EDR, and a verdict with a system capture.
    fn cell(
        system: &str,
        payload: &str,
        grade: u8,
        edr: f64,
        capture: f64,
    ) -> (Vec<Group>, Option<Verdict>) {
        let probe = |edr: Option<Stats>, reclaim: Option<Stats>| ProbeStats {
            delta_bytes: None,
            edr,
            edr_replica: None,
            dedup_capture: None,
            reclaim,
            errors: 0,
            flagged: 0,
            noisy: false,
        };
        let group = |stage: Stage, p: ProbeStats| Group {
            system: system.into(),
            payload: payload.into(),
            grade,
            stage,
            runs: 3,
            logical_bytes: None,
            throughput_bps: None,
            p50_us: None,
            p99_us: None,
            probes: [("fs".to_string(), p)].into(),
        };
        let groups = vec![
            group(Stage::BulkInsert, probe(stats(&[edr, edr, edr]), None)),
            group(Stage::PerfileDelete, probe(None, stats(&[1.0, 1.0, 1.0]))),
        ];
        let verdict = (grade > 0).then(|| Verdict {
            system: system.into(),
            payload: payload.into(),
            grade,
            runs: 3,
            system_capture: stats(&[capture - 0.01, capture, capture + 0.01]),
            storage_capture: None,
            storage_dedupe_capture: None,
            potential: None,
            layer: if capture >= 0.5 {
                Layer::System
            } else {
                Layer::Nowhere
            },
        });
        (groups, verdict)
    }

    fn summary(cells: Vec<(Vec<Group>, Option<Verdict>)>) -> Summary {
        let mut groups = Vec::new();
        let mut verdicts = Vec::new();
        for (g, v) in cells {
            groups.extend(g);
            verdicts.extend(v);
        }
        Summary {
            experiment: "t".into(),
            verdicts,
            groups,
            snapshots: Vec::new(),
            failures: Vec::new(),
            cells_done: 0,
            failed_attempts: 0,
        }
    }

    #[test]
    fn payloads_that_agree_share_a_line_and_those_that_differ_do_not() {
        let s = summary(vec![
            cell("a", "json", 0, 3.0, 0.0),
            cell("a", "json", 90, 9.0, 0.9),
            cell("a", "text", 0, 3.03, 0.0),
            cell("a", "text", 90, 9.1, 0.91),
            cell("a", "random", 0, 1.0, 0.0),
            cell("a", "random", 90, 1.0, 0.0),
            cell("b", "json", 90, 1.0, 0.0),
            cell("b", "random", 90, 1.0, 0.01),
            cell("b", "text", 90, 1.0, 0.0),
        ]);
        let a = Answer::of(&s);
        let of = |system: &str| -> Vec<(Vec<String>, u8)> {
            a.lines
                .iter()
                .filter(|l| l.system == system)
                .map(|l| (l.payloads.clone(), l.grade))
                .collect()
        };
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // json and text agree (EDR within 2 %, capture within 0.02); random differs.
        assert_eq!(
            of("a"),
            vec![
                (v(&["json", "text"]), 0),
                (v(&["json", "text"]), 90),
                (v(&["random"]), 0),
                (v(&["random"]), 90),
            ]
        );
        let merged = &a.lines[1];
        assert!((merged.edr.as_ref().unwrap().mean - 9.05).abs() < 1e-9);
        assert!((merged.capture[0].as_ref().unwrap().mean - 0.905).abs() < 1e-9);
        assert_eq!(merged.verdict, Some(Layer::System));
        assert_eq!(of("b"), vec![(v(&["json", "random", "text"]), 90)]);
        assert_eq!(a.payload_label(&a.lines[4].payloads), "all 3 payloads");

        let h = a.headline("a");
        assert_eq!(
            h.verdicts,
            vec![
                (Layer::System, v(&["json, text U90"])),
                (Layer::Nowhere, v(&["random U90"])),
            ]
        );
        assert_eq!(h.text(), "system at json, text U90 · nowhere at random U90");
        let h = a.headline("b");
        assert_eq!(h.verdicts, vec![(Layer::Nowhere, Vec::new())]);
        assert_eq!(h.text(), "nowhere — no measured layer removes them");
    }

    #[test]
    fn values_show_their_interval_where_it_shows_at_two_decimals() {
        let e = |mean, ci| Est {
            mean,
            ci95: ci,
            n: 3,
        };
        assert_eq!(e(0.5234, Some(0.081)).show(), "0.52±0.08");
        assert_eq!(e(0.5234, Some(0.004)).show(), "0.52");
        assert_eq!(e(1.0, None).show(), "1.00");
        assert_eq!(show(None), "–");
    }
}
