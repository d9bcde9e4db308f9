//! Crash safety: SIGKILL at many points of a run, resume each time, and the final journal
//! holds exactly what an uninterrupted run holds.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{bin, journal, run, text};
use dedup_lab::results::derive;
use dedup_lab::results::record::Record;

fn args(results: &Path) -> Vec<String> {
    let results = results.to_str().unwrap();
    #[rustfmt::skip]
    let args = [
        "run", "--results-dir", results, "--id", "killed",
        "--payloads", "random_binary,uuid_keys", "--grades", "0,90", "--runs", "1",
        "--files", "12", "--file-size", "16KiB", "--no-progress",
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
    assert_eq!(ref_counted.len(), 2 * 2 * 2 * 4);

    let results = tmp.path().join("killed");
    let journal_path = results.join("killed").join("journal.jsonl");
    let mut kills = 0;
    let mut in_flight_after: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "the killed run did not finish");
        let (start, _) = progress(&journal_path);
        let mut child = bin()
            .args(args(&results))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill after 1 to 6 new records (a cell writes 5, so some attempts complete), plus a
        // varying delay so that kills land inside stages, not only on their boundaries.
        let wait_for = start + 1 + kills % 6;
        let delay = Duration::from_millis([0, 3, 9, 20, 40][kills % 5]);
        let finished = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            if progress(&journal_path).0 >= wait_for {
                std::thread::sleep(delay);
                break false;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if finished {
            break;
        }
        let _ = child.kill();
        child.wait().unwrap();
        kills += 1;
        if let Some(last) = progress(&journal_path).1 {
            in_flight_after.insert(last);
        }
    }
    assert!(kills >= 20, "only {kills} kills before the run finished");
    assert!(
        in_flight_after.len() >= 4,
        "kills should follow every kind of record, saw {in_flight_after:?}"
    );

    // One last resume finds nothing left to do.
    let out = run(&args(&results)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("0 cells measured, 8 already complete"),
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
    assert_eq!(done.len(), 8);
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
