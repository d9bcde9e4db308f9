//! What the trace costs: `cargo bench --bench trace` (after `dedup-lab lab up`). For each lab
//! instance, the same one-cell run (random_binary, grade 0) with the trace sampling every
//! 100 ms and with it off, alternating which goes first, `PAIRS` times; then per stage the
//! median duration of each and their ratio (traced / untraced; 1.02 = 2 % slower). Durations
//! are the journal's `duration_s`: the stage's own work, the settle step excluded.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use dedup_lab::journal::Journal;
use dedup_lab::model::{Record, Stage};

const PAIRS: usize = 7;
const FILES: u32 = 512;
const FILE_SIZE: &str = "64KiB";

fn main() {
    let config = std::env::var("DEDUP_LAB_LAB_CONFIG").unwrap_or_else(|_| ".lab/lab.toml".into());
    let Ok(text) = std::fs::read_to_string(&config) else {
        eprintln!("no lab config at {config}: run `dedup-lab lab up` first");
        std::process::exit(2);
    };
    let doc: toml::Table = toml::from_str(&text).expect("lab config parses");
    // `cargo bench --bench trace -- postgres redis` runs only the instances named.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut names: Vec<String> = doc
        .get("systems")
        .and_then(|s| s.as_table())
        .map(|s| s.keys().cloned().collect())
        .unwrap_or_default();
    for embedded in ["sqlite", "fs"] {
        if !names.iter().any(|n| n == embedded) {
            names.push(embedded.into());
        }
    }
    names.retain(|n| only.is_empty() || only.contains(n));
    let tmp = tempfile::tempdir().expect("temp dir");
    println!(
        "one cell of {FILES} files x {FILE_SIZE} random_binary U0 per run; median of {PAIRS} \
         alternating pairs; ratio = traced (100 ms) / untraced\n"
    );
    println!(
        "| system | samples per run | bulk_insert s | ratio | perfile_insert s | ratio | perfile_delete s | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for name in &names {
        let mut times: [BTreeMap<Stage, Vec<f64>>; 2] = Default::default();
        let mut samples = Vec::new();
        for pair in 0..PAIRS {
            let order = if pair % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for traced in order {
                let dir = tmp.path().join(format!("{name}-{pair}-{traced}"));
                let (durations, n) = run(&config, name, traced, &dir);
                for (stage, d) in durations {
                    times[usize::from(traced)].entry(stage).or_default().push(d);
                }
                if traced {
                    samples.push(n as f64);
                }
                std::fs::remove_dir_all(&dir).expect("remove the run");
            }
        }
        let mut line = format!("| {name} | {:.0} |", median(&mut samples));
        for stage in [
            Stage::BulkInsert,
            Stage::PerfileInsert,
            Stage::PerfileDelete,
        ] {
            let on = median(times[1].get_mut(&stage).expect("traced runs"));
            let off = median(times[0].get_mut(&stage).expect("untraced runs"));
            line.push_str(&format!(" {off:.3} | {:.3} |", on / off));
        }
        println!("{line}");
    }
}

/// One run; returns each stage's duration and the trace's native or fs samples.
fn run(config: &str, name: &str, traced: bool, dir: &Path) -> (Vec<(Stage, f64)>, usize) {
    std::fs::create_dir_all(dir).expect("run dir");
    let base = std::fs::read_to_string(config).expect("lab config");
    let interval = if traced { 100 } else { 0 };
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, format!("{base}\n[trace]\ninterval_ms = {interval}\n")).expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_dedup-lab"))
        .args(["run", "--config"])
        .arg(&cfg)
        .args([
            "--systems",
            name,
            "--payloads",
            "random_binary",
            "--grades",
            "0",
        ])
        .args(["--runs", "1", "--files", &FILES.to_string()])
        .args(["--file-size", FILE_SIZE, "--id", "bench", "--no-progress"])
        .arg("--results-dir")
        .arg(dir.join("results"))
        .output()
        .expect("run dedup-lab");
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exp = dir.join("results/bench");
    let records = Journal::read(&exp.join("journal.jsonl")).expect("journal");
    let durations = records
        .iter()
        .filter_map(|r| match r {
            Record::Stage(s) => Some((s.stage, s.duration_s)),
            _ => None,
        })
        .collect();
    let samples = std::fs::read_to_string(exp.join("trace.jsonl"))
        .map(|t| t.lines().filter(|l| l.contains("\"probe\"")).count())
        .unwrap_or(0);
    (durations, samples)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
