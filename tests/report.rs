//! What a person deciding sees: the terminal's answer first, and `report.html` rendered by
//! headless Chromium (Debian's `chromium`; scripts/test installs it), with a trace.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{experiment_dir, journal, run, stage_records, text};
use dedup_lab::model::{Record, Stage};
use serde_json::Value;

/// `summary.json` of an experiment.
fn summary(exp: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(exp.join("summary.json")).unwrap()).unwrap()
}

/// Per system, the verdicts (layer names) of its payloads × grades in `summary.json`.
fn verdicts(summary: &Value) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for v in summary["verdicts"].as_array().unwrap() {
        let system = v["system"].as_str().unwrap().to_string();
        let layer = v["layer"].as_str().unwrap().replace('_', " ");
        match out.iter_mut().find(|(s, _)| *s == system) {
            Some((_, l)) => l.push(layer),
            None => out.push((system, vec![layer])),
        }
    }
    out
}

#[test]
fn the_default_run_answers_first_in_at_most_40_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let out = run(&["run", "--results-dir", results.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // stderr is not a terminal: progress comes as plain lines, the first at once, then at
    // most one every 5 s (by their own clock), with no bar drawing.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let progress: Vec<u64> = stderr
        .lines()
        .map(|l| {
            let stamp = l
                .strip_prefix('[')
                .and_then(|l| l.split_once(']'))
                .map(|s| s.0);
            let hms: Vec<u64> = stamp
                .unwrap_or_else(|| panic!("not a progress line: {l:?}"))
                .split(':')
                .map(|n| n.parse().unwrap())
                .collect();
            hms[0] * 3600 + hms[1] * 60 + hms[2]
        })
        .collect();
    assert!(
        stderr.starts_with("[0:00:00] starting: 0/108 cells (0 %)"),
        "{stderr}"
    );
    assert!(progress.windows(2).all(|w| w[1] >= w[0] + 5), "{stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() <= 40, "{} lines:\n{stdout}", lines.len());
    assert!(
        lines[0].starts_with("Where does deduplication happen?"),
        "{stdout}"
    );
    assert!(stdout.contains("108 cells measured"), "{stdout}");
    // No per-stage table without --details.
    assert!(!stdout.contains("perfile_insert"), "{stdout}");

    // Each system's line names its verdict, as the journal's summary has it: on the
    // embedded default every payload and grade agrees, so one verdict each.
    let exp = experiment_dir(&results);
    let s = summary(&exp);
    let verdicts = verdicts(&s);
    assert_eq!(verdicts.len(), 2, "{verdicts:?}");
    for (system, layers) in &verdicts {
        assert_eq!(layers.len(), 12, "6 payloads × 2 grades: {layers:?}");
        assert!(
            layers.iter().all(|l| *l == layers[0]),
            "{system}: {layers:?}"
        );
        let line = lines
            .iter()
            .find(|l| l.trim_start().starts_with(&format!("{system} ")))
            .unwrap_or_else(|| panic!("no line for {system}:\n{stdout}"));
        assert!(line.contains(&layers[0]), "{system}: {line}");
    }
    // A plain directory stores what it is given; a block-level store could remove every
    // duplicate (whole 64 KiB files are block-aligned). SQLite's page headers hide them.
    assert!(verdicts.contains(&("fs".to_string(), vec!["potential only".to_string(); 12])));
    assert!(verdicts.contains(&("sqlite".to_string(), vec!["nowhere".to_string(); 12])));
    // The six payloads agree, so each system's grades take one line each: 2 × 3.
    let table_rows = lines
        .iter()
        .filter(|l| l.starts_with('│') && l.contains(" U"))
        .count();
    assert_eq!(table_rows, 6, "{stdout}");

    // --details adds the per-stage table after the answer; summary.md always has both.
    let details = run(&["report", exp.to_str().unwrap(), "--details"]);
    assert!(details.status.success(), "{}", text(&details));
    let d = String::from_utf8_lossy(&details.stdout);
    let answer_at = d.find("Where does deduplication happen?").unwrap();
    let stages_at = d.find("perfile_insert").expect("per-stage table");
    assert!(answer_at < stages_at);
    // 2 systems × 6 payloads × 3 grades × 4 stages.
    let stage_rows = d
        .lines()
        .filter(|l| l.contains("perfile_delete ┆") && l.contains("┆ U"))
        .count();
    assert_eq!(stage_rows, 36, "{d}");
    // Then what the systems report: SQLite's pages and the fs store's files, per stage.
    assert!(d.contains("What each system reports"), "{d}");
    for metric in ["page_count", "freelist_count", "apparent_bytes", "files"] {
        assert!(
            d.lines()
                .any(|l| l.contains("perfile_insert ┆") && l.contains(metric)),
            "{metric}: {d}"
        );
    }
    let md = std::fs::read_to_string(exp.join("summary.md")).unwrap();
    let md_answer = md.find("Where does deduplication happen?").unwrap();
    assert!(md_answer < md.find("## Per stage").unwrap());
    assert!(md.contains("- **fs**: potential only"), "{md}");
    let md_stages = md
        .lines()
        .filter(|l| l.contains("| maintenance ") && l.contains(" U"))
        .count();
    assert_eq!(md_stages, 36, "{md}");
}

/// Checks the run's own trace (every completed stage's look before and after, with its
/// events) and adds one failed sample to it, as a probe that could not read writes one, so
/// that the chart's failure marks are drawn too. Returns the trace's lines.
fn check_trace_and_add_a_failure(exp: &Path, records: &[Record]) -> usize {
    let path = exp.join("trace.jsonl");
    let text = std::fs::read_to_string(&path).expect("the run writes a trace");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for s in stage_records(records) {
        let of_stage = |l: &&Value| {
            l["cell"] == serde_json::json!(s.cell)
                && l["attempt"] == s.attempt
                && l["stage"] == serde_json::json!(s.stage)
        };
        let events: Vec<&str> = lines
            .iter()
            .filter(of_stage)
            .filter_map(|l| l["event"].as_str())
            .collect();
        let mut want = vec!["stage_start"];
        if s.stage == Stage::Maintenance {
            want.push("maintenance");
        }
        want.extend(["stage_end", "settle_start", "settle_end"]);
        assert_eq!(events, want, "{}", s.cell);
        // The first and last samples of each probe are the stage record's readings.
        for (probe, p) in &s.probes {
            let bytes: Vec<u64> = lines
                .iter()
                .filter(of_stage)
                .filter(|l| l["probe"] == probe.as_str())
                .map(|l| l["bytes"].as_u64().unwrap())
                .collect();
            assert_eq!(
                bytes.first(),
                p.before.bytes().as_ref(),
                "{} {probe}",
                s.cell
            );
            assert_eq!(bytes.last(), p.after.bytes().as_ref(), "{} {probe}", s.cell);
        }
    }
    let mut failed = lines
        .iter()
        .find(|l| l["probe"] == "fs" && l["stage"] == "perfile_insert")
        .unwrap()
        .clone();
    let f = failed.as_object_mut().unwrap();
    f.remove("bytes");
    f.insert("error".into(), "No such file or directory".into());
    f.insert("t_s".into(), 0.001.into());
    std::fs::write(&path, format!("{text}{failed}\n")).unwrap();
    lines.len()
}

/// Headless Chromium with a profile of its own, removed on drop.
struct Chromium {
    profile: tempfile::TempDir,
}

impl Chromium {
    fn new() -> Chromium {
        let found = Command::new("chromium").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "chromium is not installed: apt-get install chromium (scripts/test does)"
        );
        Chromium {
            profile: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs Chromium offline on `page` with `args`, console messages on stderr.
    fn run(&self, page: &Path, args: &[&str]) -> Output {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(args)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("run chromium")
    }

    /// Loads a copy of `page` with `PROBE` added, and returns what the probe found and
    /// every console message (errors included) the page produced.
    fn probe(&self, page: &Path) -> (Value, Vec<String>) {
        let html = std::fs::read_to_string(page).unwrap();
        let at = html.rfind("</body>").expect("a body");
        let copy = self.profile.path().join("probed.html");
        std::fs::write(
            &copy,
            format!("{}<script>{PROBE}</script>{}", &html[..at], &html[at..]),
        )
        .unwrap();
        let out = self.run(&copy, &["--dump-dom"]);
        assert!(out.status.success(), "{}", text(&out));
        let dom = String::from_utf8_lossy(&out.stdout);
        let console: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .map(String::from)
            .collect();
        let tag = "<pre id=\"dedup-lab-probe\">";
        let start = dom.find(tag).map(|i| i + tag.len());
        let found = start.map(|s| {
            let end = s + dom[s..].find("</pre>").unwrap();
            let json = dom[s..end]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            serde_json::from_str(&json).unwrap()
        });
        (found.unwrap_or(Value::Null), console)
    }
}

/// Runs after the page has loaded: measures every chart's series as laid out, the verdict
/// grid's colours, clicks a legend entry, and counts the resources the page fetched.
const PROBE: &str = r#"
window.addEventListener('load', () => {
  const charts = [...document.querySelectorAll('figure.chart')].map(f => {
    const svg = f.querySelector('svg.plot');
    const box = svg.getBoundingClientRect();
    return {
      id: f.dataset.chart, width: box.width, height: box.height,
      series: [...svg.querySelectorAll('g.series')].map(g => {
        const b = g.getBBox();
        return {name: g.dataset.series, w: b.width, h: b.height,
                marks: g.querySelectorAll('.pt, .bar').length};
      }),
      legend: f.querySelectorAll('.legend .key').length,
      coincide: [...f.querySelectorAll('p.coincide')].map(p => p.textContent),
    };
  });
  const grid = [...document.querySelectorAll('table.grid tr[data-system]')].map(tr => {
    const v = tr.querySelector('td.v');
    return {system: tr.dataset.system, verdict: v.textContent,
            colour: getComputedStyle(v).backgroundColor, h: tr.getBoundingClientRect().height};
  });
  const headlines = [...document.querySelectorAll('ul.headlines li')].map(li =>
    ({system: li.dataset.system, text: li.textContent}));
  const key = document.querySelector('.legend .key');
  key?.click();
  const hidden = document.querySelectorAll('g.series.off').length;
  key?.click();
  const out = document.createElement('pre');
  out.id = 'dedup-lab-probe';
  out.textContent = JSON.stringify({charts, grid, headlines, hidden,
    shown: document.querySelectorAll('g.series.off').length,
    resources: performance.getEntriesByType('resource').length});
  document.body.appendChild(out);
});
"#;

/// Per payload, the number of (system, layer) lines with a value of `metric` in the bulk
/// insert groups of `summary.json`.
fn expected_lines(s: &Value, payload: &str, metric: &str) -> usize {
    let mut lines: Vec<(String, usize)> = Vec::new();
    for g in s["groups"].as_array().unwrap() {
        if g["stage"] != "bulk_insert" || g["payload"] != payload {
            continue;
        }
        let has = |p: &str| !g["probes"][p][metric].is_null();
        let layers = [
            has("native") || has("fs"),
            has("storage"),
            has("storage_dedupe"),
        ];
        for (i, _) in layers.iter().enumerate().filter(|(_, on)| **on) {
            let key = (g["system"].as_str().unwrap().to_string(), i);
            if !lines.contains(&key) {
                lines.push(key);
            }
        }
    }
    lines.len()
}

#[test]
fn report_html_renders_in_headless_chromium_without_errors() {
    let chromium = Chromium::new();
    // The harness sees a page's errors: a deliberately broken page reports them.
    let broken = chromium.profile.path().join("broken.html");
    std::fs::write(
        &broken,
        "<!doctype html><html><body><svg><circle r=\"4/\"/></svg></body></html>",
    )
    .unwrap();
    let (_, console) = chromium.probe(&broken);
    assert!(
        console.iter().any(|l| l.contains("attribute r")),
        "{console:?}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let out = run(&[
        "run",
        "--results-dir",
        results.to_str().unwrap(),
        "--payloads",
        "random_binary,text_document",
        "--runs",
        "2",
        "--files",
        "16",
        "--no-progress",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let exp = experiment_dir(&results);
    let records = journal(&exp);
    assert!(check_trace_and_add_a_failure(&exp, &records) > 0);
    let rep = run(&["report", exp.to_str().unwrap()]);
    assert!(rep.status.success(), "{}", text(&rep));
    let page = exp.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("://"), "the page must name no URL to load");

    let (found, console) = chromium.probe(&page);
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert_eq!(found["resources"], 0, "the page loaded something");
    let s = summary(&exp);

    // The verdict grid: every system's verdict rows, coloured by verdict.
    let grid = found["grid"].as_array().unwrap();
    for (system, layers) in verdicts(&s) {
        let rows: Vec<&Value> = grid.iter().filter(|r| r["system"] == system).collect();
        for layer in &layers {
            let row = rows
                .iter()
                .find(|r| r["verdict"] == *layer)
                .unwrap_or_else(|| panic!("{system}: no {layer} row in {grid:?}"));
            assert_ne!(row["colour"], "rgba(0, 0, 0, 0)", "{row}");
            assert!(row["h"].as_f64().unwrap() > 0.0);
        }
        let headline = found["headlines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["system"] == system)
            .unwrap();
        assert!(
            headline["text"].as_str().unwrap().contains(&layers[0]),
            "{headline}"
        );
    }
    let colours: std::collections::BTreeSet<(&str, &str)> = grid
        .iter()
        .filter(|r| r["verdict"] != "–")
        .map(|r| {
            (
                r["verdict"].as_str().unwrap(),
                r["colour"].as_str().unwrap(),
            )
        })
        .collect();
    let verdict_names: std::collections::BTreeSet<&str> = colours.iter().map(|c| c.0).collect();
    assert_eq!(
        colours.len(),
        verdict_names.len(),
        "one colour per verdict: {colours:?}"
    );
    assert!(verdict_names.len() >= 2, "{colours:?}");

    // Every chart: the series expected from the summary and the trace, each laid out.
    let mut expected: Vec<(String, usize)> = Vec::new();
    for p in ["random_binary", "text_document"] {
        expected.push((
            format!("capture:{p}"),
            expected_lines(&s, p, "dedup_capture"),
        ));
        expected.push((format!("edr:{p}"), expected_lines(&s, p, "edr")));
    }
    expected.push(("reclaim".into(), 2));
    expected.push(("latency:perfile_insert".into(), 2));
    expected.push(("latency:perfile_delete".into(), 2));
    // The trace: a line per probe of the system (sqlite: native and fs; fs: fs).
    let probes = |system: &str| {
        stage_records(&records)
            .iter()
            .find(|r| r.cell.system == system)
            .unwrap()
            .probes
            .len()
    };
    expected.push(("trace:fs".into(), probes("fs")));
    expected.push(("trace:sqlite".into(), probes("sqlite")));
    let charts = found["charts"].as_array().unwrap();
    let ids: Vec<&str> = charts.iter().map(|c| c["id"].as_str().unwrap()).collect();
    let mut want: Vec<&str> = expected.iter().map(|e| e.0.as_str()).collect();
    want.sort_unstable();
    let mut got = ids.clone();
    got.sort_unstable();
    assert_eq!(got, want);
    for (id, n) in &expected {
        let c = charts.iter().find(|c| c["id"] == id.as_str()).unwrap();
        let series = c["series"].as_array().unwrap();
        assert_eq!(series.len(), *n, "{id}: {c}");
        assert!(*n > 0, "{id}");
        assert_eq!(c["legend"].as_u64().unwrap() as usize, *n, "{id}");
        assert!(c["width"].as_f64().unwrap() > 100.0, "{c}");
        for line in series {
            assert!(
                line["w"].as_f64().unwrap() > 0.0 || line["h"].as_f64().unwrap() > 0.0,
                "{id}: empty series {line}"
            );
            assert!(line["marks"].as_u64().unwrap() > 0, "{id}: {line}");
        }
    }
    // fs and sqlite capture nothing (0.00 at both grades): their lines coincide, and the
    // chart says so; their EDRs (1.00, 0.99 on a 0 to 1 axis) coincide as well.
    for p in ["random_binary", "text_document"] {
        let c = charts
            .iter()
            .find(|c| c["id"] == format!("capture:{p}"))
            .unwrap();
        assert_eq!(
            c["coincide"],
            serde_json::json!(["fs and sqlite coincide: drawn side by side."]),
            "{c}"
        );
    }
    // Latency: a plain directory and a database differ; no note there.
    let lat = charts
        .iter()
        .find(|c| c["id"] == "latency:perfile_insert")
        .unwrap();
    assert_eq!(lat["coincide"], serde_json::json!([]), "{lat}");
    // The legend hides a line and shows it again.
    assert_eq!(
        (found["hidden"].as_u64(), found["shown"].as_u64()),
        (Some(1), Some(0))
    );
}

#[test]
fn on_a_terminal_progress_is_bars_with_rate_and_eta() {
    // `script` runs the binary on a pseudo-terminal and copies what it draws.
    let tmp = tempfile::tempdir().unwrap();
    let command = format!(
        "{} run --results-dir {} --runs 1 --payloads random_binary --files 200",
        env!("CARGO_BIN_EXE_dedup-lab"),
        tmp.path().join("results").display()
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .output()
        .expect("run script (util-linux)");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("\x1b["), "no terminal drawing: {shown:?}");
    // The cells bar and the per-file bars, each with its rate and ETA.
    assert!(shown.contains("/6 cells ·"), "{shown:?}");
    assert!(shown.contains("/200 files ·"), "{shown:?}");
    assert!(shown.contains("· ETA "), "{shown:?}");
    assert!(
        shown.contains("Where does deduplication happen?"),
        "{shown:?}"
    );
}
