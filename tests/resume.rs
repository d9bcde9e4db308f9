//! Crash safety: SIGKILL at many points of a run, resume each time, and the final journal
//! holds exactly what an uninterrupted run holds.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{bin, journal, run, text};
use dedup_lab::model::Record;
use dedup_lab::results::derive;

/// 2 systems × 2 payloads × 3 grades × 2 runs.
const CELLS: usize = 24;
/// Kills before letting the run finish: more than the cells they can complete.
const KILLS: usize = 24;
/// Further kills allowed while aiming at the points the first ones missed.
const MAX_KILLS: usize = 120;
/// The records of a cell, in order: a kill right after one lands in the step that follows it.
const KINDS: [&str; 5] = [
    "bulk_insert",
    "perfile_insert",
    "perfile_delete",
    "maintenance",
    "cell_done",
];

fn args(results: &Path) -> Vec<String> {
    let results = results.to_str().unwrap();
    #[rustfmt::skip]
    let args = [
        "run", "--results-dir", results, "--id", "killed",
        "--payloads", "random_binary,uuid_keys", "--grades", "0,50,90", "--runs", "2",
        "--files", "32", "--file-size", "16KiB", "--no-progress",
    ];
    args.map(String::from).to_vec()
}

/// Stage and cell-done lines in the journal, and the kind of the last one. Plain text
/// search: this runs in a tight polling loop.
fn progress(journal: &Path) -> (usize, Option<String>) {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    let mut n = 0;
    let mut last = None;
    for line in text.lines() {
        if line.starts_with("{\"type\":\"cell_done\"") {
            n += 1;
            last = Some("cell_done".to_string());
        } else if line.starts_with("{\"type\":\"stage\"") {
            n += 1;
            last = line
                .split("\"stage\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .map(String::from);
        }
    }
    (n, last)
}

#[test]
fn sigkill_at_many_points_then_resume_gives_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    let out = run(&args(&reference)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out));
    let ref_records = journal(&reference.join("killed"));
    let ref_counted: BTreeSet<_> = derive::completed(&ref_records)
        .iter()
        .map(|s| (s.cell.clone(), s.stage))
        .collect();
    assert_eq!(ref_counted.len(), CELLS * 4);

    let results = tmp.path().join("killed");
    let journal_path = results.join("killed").join("journal.jsonl");
    let mut kills = 0;
    let mut in_flight_after: BTreeSet<String> = BTreeSet::new();
    // After the first KILLS, aim at the points not yet hit: how far a run gets between the
    // journal line and the kill depends on the machine, so coverage is sought, not assumed.
    while kills < KILLS || (in_flight_after.len() < KINDS.len() && kills < MAX_KILLS) {
        let (start, _) = progress(&journal_path);
        let mut child = bin()
            .args(args(&results))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A resumed run starts a cell from a reset and writes its records in KINDS order:
        // waiting for n new records kills it right after the n-th kind. First kills after
        // 1, 2, 3, 1 or 5 records (one in five completes its cell) with a varying delay, so
        // that kills land inside stages too, not only on their boundaries.
        let (wait_for, delay) = match KINDS.iter().position(|k| !in_flight_after.contains(*k)) {
            Some(missing) if kills >= KILLS => (start + missing + 1, 0),
            _ => (
                start + [1, 2, 3, 1, 5][kills % 5],
                [0, 3, 9, 20, 1][kills % 5],
            ),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let finished = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            assert!(Instant::now() < deadline, "the run made no progress");
            if progress(&journal_path).0 >= wait_for {
                std::thread::sleep(Duration::from_millis(delay));
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if finished {
            assert!(kills >= KILLS, "the run finished after only {kills} kills");
            break;
        }
        let _ = child.kill();
        child.wait().unwrap();
        kills += 1;
        if let Some(last) = progress(&journal_path).1 {
            in_flight_after.insert(last);
        }
    }
    assert!(
        in_flight_after.len() >= KINDS.len() - 1,
        "kills should follow every kind of record, saw {in_flight_after:?} in {kills} kills"
    );

    // A resume without kills finishes the rest; one more finds nothing left to do.
    let args: Vec<String> = args(&results);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&args);
    assert!(
        text(&out).contains(&format!("0 cells measured, {CELLS} already complete")),
        "{}",
        text(&out)
    );

    let records = journal(&results.join("killed"));
    let mut done: HashMap<_, usize> = HashMap::new();
    for r in &records {
        if let Record::CellDone { cell, .. } = r {
            *done.entry(cell.clone()).or_default() += 1;
        }
    }
    assert_eq!(done.len(), CELLS);
    assert!(
        done.values().all(|&n| n == 1),
        "a cell completed twice: {done:?}"
    );
    let counted: BTreeSet<_> = derive::completed(&records)
        .iter()
        .map(|s| (s.cell.clone(), s.stage))
        .collect();
    assert_eq!(
        counted, ref_counted,
        "same measurements as the uninterrupted run"
    );
    assert_eq!(
        derive::rows(&records).len(),
        derive::rows(&ref_records).len()
    );
}
