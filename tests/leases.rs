//! Leases against every lab server: a run holds the namespaces it resets. A second run with the
//! same config is refused at each one, naming the holder, while the first completes without a
//! failed attempt; a run killed with SIGKILL leaves leases that the next run takes over and
//! journals. The engine's own lease logic is tested on the fake system (src/experiment).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, experiment_dir, journal, lab_config, text};
use dedup_lab::model::{ErrorKind, Record};

/// Every lab instance, small data sets: 8 files of 16 KiB of random data per cell.
fn run_command(results: &Path, grades: &str) -> Command {
    let mut c = bin();
    c.args(["run", "--config"])
        .arg(lab_config())
        .args(["--systems", "all", "--payloads", "random_binary"])
        .args(["--grades", grades, "--runs", "1", "--files", "8"])
        .args(["--file-size", "16KiB", "--no-progress", "--results-dir"])
        .arg(results);
    c
}

/// Spawns `c` with its output in a file beside its results, so that nothing blocks on a pipe.
fn spawn(mut c: Command, results: &Path) -> Child {
    let log = std::fs::File::create(results.with_extension("log")).unwrap();
    c.stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("dedup-lab")
}

/// What a spawned run wrote to stderr.
fn log(results: &Path) -> String {
    std::fs::read_to_string(results.with_extension("log")).unwrap_or_default()
}

/// The records of the one experiment under `results`, or none yet.
fn records(results: &Path) -> Vec<Record> {
    let dir = std::fs::read_dir(results)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok());
    match dir {
        Some(d) if d.path().join("journal.jsonl").exists() => journal(&d.path()),
        _ => Vec::new(),
    }
}

/// Waits until `done` holds for the run's records; kills the run and fails if it never does.
fn wait_for(child: &mut Child, results: &Path, what: &str, done: impl Fn(&[Record]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done(&records(results)) {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("never saw {what}; the run printed:\n{}", log(results));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn instances() -> usize {
    let doc: toml::Table = toml::from_str(&std::fs::read_to_string(lab_config()).unwrap()).unwrap();
    doc["systems"].as_table().unwrap().len()
}

fn cells_done(records: &[Record]) -> usize {
    records
        .iter()
        .filter(|r| matches!(r, Record::CellDone { .. }))
        .count()
}

#[test]
fn a_second_run_is_refused_at_every_leased_namespace_and_a_killed_runs_leases_are_taken_over() {
    let n = instances();
    let tmp = tempfile::tempdir().unwrap();

    // The first run leases every namespace with its first cells, then keeps going.
    let first_results = tmp.path().join("first");
    let mut first = spawn(run_command(&first_results, "0,50,90"), &first_results);
    wait_for(&mut first, &first_results, "a cell of every system", |r| {
        cells_done(r) >= n
    });
    let second = run_command(&tmp.path().join("second"), "0")
        .output()
        .unwrap();
    let t = text(&second);
    assert_eq!(second.status.code(), Some(1), "{t}");
    let holder = format!("pid {} on host", first.id());
    assert!(t.matches("is leased by experiment").count() >= n, "{t}");
    assert!(t.contains(&holder), "the holder is named: {t}");
    let refused = records(&tmp.path().join("second"));
    assert!(refused.iter().all(|r| !matches!(r, Record::Stage(_))));
    assert!(
        refused
            .iter()
            .filter_map(|r| match r {
                Record::AttemptFailed { kind, .. } => Some(kind),
                _ => None,
            })
            .all(|k| *k == ErrorKind::Unsafe)
    );
    let status = first.wait().unwrap();
    assert!(status.success(), "{}", log(&first_results));
    let done = records(&first_results);
    assert_eq!(cells_done(&done), 3 * n);
    assert!(
        !done
            .iter()
            .any(|r| matches!(r, Record::AttemptFailed { .. })),
        "the first run had no failed attempt"
    );

    // A run killed in the middle leaves its leases; the next run takes them over.
    let killed_results = tmp.path().join("killed");
    let mut killed = spawn(run_command(&killed_results, "0,50"), &killed_results);
    let killed_pid = killed.id();
    wait_for(
        &mut killed,
        &killed_results,
        "a cell of every system",
        |r| cells_done(r) >= n,
    );
    killed.kill().unwrap();
    killed.wait().unwrap();
    let next_results = tmp.path().join("next");
    let out = run_command(&next_results, "0").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let taken: Vec<u32> = journal(&experiment_dir(&next_results))
        .iter()
        .filter_map(|r| match r {
            Record::LeaseTaken { previous, .. } => Some(previous.pid),
            _ => None,
        })
        .collect();
    assert_eq!(taken.len(), n, "every namespace is taken over: {taken:?}");
    assert!(taken.iter().all(|&pid| pid == killed_pid), "{taken:?}");
}
