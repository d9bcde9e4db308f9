//! The engine's own logic on the scriptable fake system: retries, refusals, reconnect backoff,
//! count checks, outages a client healed, leases. The clock is paused: no test sleeps.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::journal::Journal;
use crate::model::{
    Event, KeyMode, Layout, Lease, Reading, Record, Snapshot, TraceItem, TraceLine,
};
use crate::systems::fake::{Fake, Op, Script};

/// One run of random_binary data sets of 8 files of 1 KiB at `grades`.
fn config(results: &Path, grades: &[i64], retry: config::RetryConfig) -> Resolved {
    let mut c = Config::default();
    c.experiment.results_dir = results.to_path_buf();
    c.experiment.runs = 1;
    c.experiment.payloads = vec!["random_binary".into()];
    c.experiment.grades = grades.to_vec();
    c.dataset.files = 8;
    c.dataset.file_size = crate::dataset::SizeSpec::Fixed(1024);
    c.retry = retry;
    c.resolve().unwrap()
}

/// Content keys in one container.
const CONTENT: Layout = Layout {
    keys: KeyMode::Content,
    containers: 1,
};

fn fast_retry() -> config::RetryConfig {
    config::RetryConfig {
        max_attempts: 3,
        backoff_initial_s: 1.0,
        backoff_max_s: 30.0,
        reconnect_tries: 6,
    }
}

fn script(s: Script) -> Arc<Mutex<Script>> {
    Arc::new(Mutex::new(s))
}

fn fake(name: &str, layout: Layout, s: &Arc<Mutex<Script>>) -> Subject {
    let (instance, sys, probes) = Fake::subject(name, layout, Arc::clone(s));
    Subject {
        instance,
        sys,
        probes,
    }
}

/// Runs the fakes and returns the outcome and the journal.
async fn run(config: &Resolved, subjects: Vec<Subject>) -> (Outcome, Vec<Record>) {
    let outcome = run_subjects(config, subjects, &RunOptions::default())
        .await
        .unwrap();
    let records = Journal::read(&outcome.dir.join(journal::FILE)).unwrap();
    (outcome, records)
}

/// (system, attempt, stage, kind) of every failed attempt.
fn failures(records: &[Record]) -> Vec<(String, u32, Option<Stage>, ErrorKind)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::AttemptFailed {
                cell,
                attempt,
                stage,
                kind,
                ..
            } => Some((cell.system.clone(), *attempt, *stage, *kind)),
            _ => None,
        })
        .collect()
}

/// (system, attempt) of every completed cell.
fn done(records: &[Record]) -> Vec<(String, u32)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::CellDone { cell, attempt, .. } => Some((cell.system.clone(), *attempt)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_reconnects_and_redoes_the_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let s = script(Script {
        fail: vec![(Op::Insert, 3, ErrorKind::ConnectionLost)],
        ..Default::default()
    });
    let (outcome, records) = run(
        &config(tmp.path(), &[0], fast_retry()),
        vec![fake("a", Layout::default(), &s)],
    )
    .await;
    assert_eq!(outcome.completed, 1);
    assert_eq!(
        failures(&records),
        [(
            "a".to_string(),
            1,
            Some(Stage::PerfileInsert),
            ErrorKind::ConnectionLost
        )]
    );
    assert_eq!(done(&records), [("a".to_string(), 2)]);
    // The first connect, then one reconnect after the first backoff delay.
    let connects = s.lock().unwrap().connects.clone();
    assert_eq!(connects.len(), 2);
    assert_eq!(connects[1] - connects[0], Duration::from_secs(1));
    // Only the second attempt's stages count.
    let counted = crate::results::derive::completed(&records);
    assert_eq!(counted.len(), 4);
    assert!(counted.iter().all(|r| r.attempt == 2));
    // The meter went with the lost connection and was made again once.
    assert_eq!(s.lock().unwrap().meters, 2);
}

#[tokio::test(start_paused = true)]
async fn a_foreign_namespace_is_refused_once_and_never_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let s = script(Script {
        foreign: true,
        ..Default::default()
    });
    let (outcome, records) = run(
        &config(tmp.path(), &[0, 50], fast_retry()),
        vec![fake("a", Layout::default(), &s)],
    )
    .await;
    assert_eq!(outcome.completed, 0);
    assert_eq!(outcome.failed.len(), 2);
    assert!(outcome.failed[0].1.contains("not created by dedup-lab"));
    // One inspection only: the first cell's attempt; the second cell is not attempted.
    assert_eq!(s.lock().unwrap().calls[&Op::Inspect], 1);
    assert_eq!(
        failures(&records),
        [
            ("a".to_string(), 1, None, ErrorKind::Unsafe),
            ("a".to_string(), 1, None, ErrorKind::Unsafe),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_system_that_stays_down_fails_only_its_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let up = script(Script::default());
    let gone = script(Script {
        down: true,
        ..Default::default()
    });
    let (outcome, records) = run(
        &config(tmp.path(), &[0, 50], fast_retry()),
        vec![
            fake("up", Layout::default(), &up),
            fake("gone", Layout::default(), &gone),
        ],
    )
    .await;
    assert_eq!(outcome.completed, 2);
    assert_eq!(
        done(&records),
        [("up".to_string(), 1), ("up".to_string(), 1)]
    );
    let failed = failures(&records);
    assert_eq!(failed.len(), 2);
    assert!(
        failed
            .iter()
            .all(|(sys, _, _, kind)| sys == "gone" && *kind == ErrorKind::ConnectionLost)
    );
    // Down from the start: it is connected to once and never attempted.
    assert_eq!(gone.lock().unwrap().connects.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn reconnects_back_off_doubling_up_to_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    // The server goes away for good when the bulk insert fails.
    let s = script(Script {
        fail: vec![(Op::Bulk, 1, ErrorKind::ConnectionLost)],
        outage: u32::MAX,
        ..Default::default()
    });
    let retry = config::RetryConfig {
        reconnect_tries: 7,
        backoff_max_s: 20.0,
        ..fast_retry()
    };
    let (outcome, records) = run(
        &config(tmp.path(), &[0], retry),
        vec![fake("a", Layout::default(), &s)],
    )
    .await;
    assert_eq!(outcome.failed.len(), 1);
    let connects = s.lock().unwrap().connects.clone();
    let gaps: Vec<u64> = connects
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    assert_eq!(gaps, [1, 2, 4, 8, 16, 20, 20]);
    // The attempt that lost the connection, then no other: the system is down.
    assert_eq!(
        failures(&records),
        [
            (
                "a".to_string(),
                1,
                Some(Stage::BulkInsert),
                ErrorKind::ConnectionLost
            ),
            ("a".to_string(), 2, None, ErrorKind::ConnectionLost),
        ]
    );
    assert_eq!(s.lock().unwrap().calls[&Op::Bulk], 1);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_returns_within_the_tries_is_used_again() {
    let tmp = tempfile::tempdir().unwrap();
    // Away for the first two reconnects after the second delete fails.
    let s = script(Script {
        fail: vec![(Op::Delete, 2, ErrorKind::ConnectionLost)],
        outage: 2,
        ..Default::default()
    });
    let (outcome, records) = run(
        &config(tmp.path(), &[0], fast_retry()),
        vec![fake("a", Layout::default(), &s)],
    )
    .await;
    assert_eq!(outcome.completed, 1);
    assert_eq!(done(&records), [("a".to_string(), 2)]);
    let connects = s.lock().unwrap().connects.clone();
    // First connect, two failed reconnects (after 1 s and 2 s), the third (after 4 s) works.
    assert_eq!(connects.len(), 4);
    assert_eq!(connects[3] - connects[1], Duration::from_secs(6));
}

#[tokio::test(start_paused = true)]
async fn a_count_that_disagrees_fails_the_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let s = script(Script {
        miscount: Some(1),
        ..Default::default()
    });
    let (outcome, records) = run(
        &config(tmp.path(), &[0], fast_retry()),
        vec![fake("a", Layout::default(), &s)],
    )
    .await;
    assert_eq!(outcome.completed, 1);
    assert_eq!(
        failures(&records),
        [(
            "a".to_string(),
            1,
            Some(Stage::BulkInsert),
            ErrorKind::Failed
        )]
    );
    let error = records
        .iter()
        .find_map(|r| match r {
            Record::AttemptFailed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .unwrap();
    assert!(error.contains("left 7 files in a, expected 8"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn an_outage_the_client_healed_fails_the_attempt_as_a_lost_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let s = script(Script {
        interrupted_in_stage: Some(2),
        ..Default::default()
    });
    let (outcome, records) = run(
        &config(tmp.path(), &[0], fast_retry()),
        vec![fake("a", Layout::default(), &s)],
    )
    .await;
    assert_eq!(outcome.completed, 1);
    assert_eq!(
        failures(&records),
        [(
            "a".to_string(),
            1,
            Some(Stage::PerfileInsert),
            ErrorKind::ConnectionLost
        )]
    );
    // Nothing from the interrupted stage was recorded as measured.
    let stages_of_attempt_1 = records
        .iter()
        .filter(|r| matches!(r, Record::Stage(st) if st.attempt == 1))
        .count();
    assert_eq!(
        stages_of_attempt_1, 1,
        "only bulk_insert, before the outage"
    );
}

#[tokio::test(start_paused = true)]
async fn content_keys_store_each_content_once_and_delete_it_with_its_last_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = script(Script::default());
    // 8 files at U50: 4 distinct contents, each twice.
    let (outcome, records) = run(
        &config(tmp.path(), &[50], fast_retry()),
        vec![fake("a", CONTENT, &s)],
    )
    .await;
    assert_eq!(outcome.completed, 1, "{:?}", outcome.failed);
    let stages = crate::results::derive::completed(&records);
    let get = |st: Stage| stages.iter().find(|r| r.stage == st).unwrap();
    assert_eq!(get(Stage::BulkInsert).rows_after, 4);
    assert_eq!(get(Stage::PerfileInsert).rows_after, 4);
    assert_eq!(get(Stage::PerfileDelete).rows_after, 0);
    assert_eq!(get(Stage::PerfileDelete).files, 8);
    // One delete per content, with its last file.
    assert_eq!(s.lock().unwrap().deletes, 4);
    assert_eq!(get(Stage::BulkInsert).layout, CONTENT);
}

#[tokio::test(start_paused = true)]
async fn content_keys_over_containers_hold_a_content_once_per_container() {
    let tmp = tempfile::tempdir().unwrap();
    let s = script(Script::default());
    let spread = Layout {
        keys: KeyMode::Content,
        containers: 3,
    };
    let (outcome, records) = run(
        &config(tmp.path(), &[50], fast_retry()),
        vec![fake("a", spread, &s)],
    )
    .await;
    assert_eq!(outcome.completed, 1, "{:?}", outcome.failed);
    // What the data set's files make of it, counted by hand: (container, content) pairs.
    let manifest = crate::dataset::Manifest::read(&dataset_dir(
        &outcome.dir.join("datasets"),
        1,
        PayloadType::RandomBinary,
        50,
    ))
    .unwrap();
    let pairs: HashSet<(u32, &str)> = manifest
        .files
        .iter()
        .map(|f| (f.id % 3, f.blake3.as_str()))
        .collect();
    let distinct: HashSet<&str> = manifest.files.iter().map(|f| f.blake3.as_str()).collect();
    // A content repeated in another container is another entry there.
    assert!(pairs.len() > distinct.len(), "{pairs:?}");
    let stages = crate::results::derive::completed(&records);
    let get = |st: Stage| stages.iter().find(|r| r.stage == st).unwrap();
    assert_eq!(get(Stage::PerfileInsert).rows_after, pairs.len() as u64);
    assert_eq!(get(Stage::PerfileDelete).rows_after, 0);
    assert_eq!(s.lock().unwrap().deletes, pairs.len() as u32);
    assert_eq!(get(Stage::PerfileInsert).layout, spread);
}

#[tokio::test(start_paused = true)]
async fn a_namespace_leased_by_a_live_run_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    // This process is alive: its lease for another experiment is a live holder's.
    let holder = Lease::mine("exp-other", "a");
    let s = script(Script {
        marker: Some(marker_with(&holder)),
        ..Default::default()
    });
    let (outcome, _) = run(
        &config(tmp.path(), &[0], fast_retry()),
        vec![fake("a", Layout::default(), &s)],
    )
    .await;
    assert_eq!(outcome.failed.len(), 1);
    let error = &outcome.failed[0].1;
    assert!(
        error.contains("leased by experiment exp-other") && error.contains(&holder.host),
        "{error}"
    );
    // Untouched: the holder's marker is still there.
    assert_eq!(s.lock().unwrap().marker, Some(marker_with(&holder)));
}

#[tokio::test(start_paused = true)]
async fn a_lease_whose_holder_died_is_taken_over_and_journaled() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = Lease {
        pid: child.id(),
        ..Lease::mine("exp-old", "a")
    };
    child.wait().unwrap();
    let s = script(Script {
        marker: Some(marker_with(&dead)),
        ..Default::default()
    });
    let (outcome, records) = run(
        &config(tmp.path(), &[0], fast_retry()),
        vec![fake("a", Layout::default(), &s)],
    )
    .await;
    assert_eq!(outcome.completed, 1);
    let taken: Vec<&Lease> = records
        .iter()
        .filter_map(|r| match r {
            Record::LeaseTaken { previous, .. } => Some(previous),
            _ => None,
        })
        .collect();
    assert_eq!(taken, [&dead]);
    // The marker now holds this run's lease.
    let marker = s.lock().unwrap().marker.clone().unwrap();
    assert!(
        marker.contains(&format!("\"pid\":{}", std::process::id())),
        "{marker}"
    );
}

/// A marker text holding `lease`, as the ownership toolkit writes it.
fn marker_with(lease: &Lease) -> String {
    serde_json::json!({"created_by": "dedup-lab", "note": "test", "lease": lease}).to_string()
}

fn traced(results: &Path, interval_ms: u64) -> Resolved {
    let mut c = config(results, &[0], fast_retry()).config;
    c.trace.interval_ms = interval_ms;
    c.resolve().unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_trace_samples_while_a_stage_runs_on_one_meter_and_keeps_failures_as_failures() {
    let tmp = tempfile::tempdir().unwrap();
    // Per-file inserts take 30 ms each: the per-file insert stage lasts 240 ms. The meter's
    // looks (a native size, then a snapshot) are counted from 1: the bulk stage's look
    // before and after take 1 to 4, the per-file insert's before 5 and 6, so the sampler's
    // first native sample (at 100 ms) is look 7.
    let s = script(Script {
        insert_time: Duration::from_millis(30),
        fail: vec![(Op::Measure, 7, ErrorKind::Failed)],
        ..Default::default()
    });
    let (outcome, records) = run(
        &traced(tmp.path(), 100),
        vec![fake("a", Layout::default(), &s)],
    )
    .await;
    assert_eq!(outcome.completed, 1);
    assert_eq!(s.lock().unwrap().meters, 1, "one meter for the whole run");
    let trace = crate::results::trace::read(&outcome.dir).unwrap();
    let insert: Vec<&TraceLine> = trace
        .iter()
        .filter(|l| l.stage == Stage::PerfileInsert)
        .collect();
    let samples: Vec<(f64, &Reading)> = insert
        .iter()
        .filter_map(|l| match &l.item {
            TraceItem::Sample { probe, reading } if probe == "native" => Some((l.t_s, reading)),
            _ => None,
        })
        .collect();
    // The engine's look before, the sampler's at 100 and 200 ms, the engine's look after.
    let times: Vec<f64> = samples.iter().map(|(t, _)| (t * 1000.0).round()).collect();
    assert_eq!(times, [0.0, 100.0, 200.0, 240.0], "{samples:?}");
    assert_eq!(samples[0].1, &Reading::Bytes { bytes: 0 });
    assert!(
        matches!(samples[1].1, Reading::Error { error } if error.contains("Measure call 7")),
        "a failed sample is recorded as failed, never as a number: {:?}",
        samples[1]
    );
    // At 200 ms six 1 KiB inserts are done; after the stage all eight.
    assert_eq!(samples[2].1, &Reading::Bytes { bytes: 6 * 1024 });
    assert_eq!(samples[3].1, &Reading::Bytes { bytes: 8 * 1024 });
    let metrics = insert
        .iter()
        .filter(|l| matches!(l.item, TraceItem::Metrics { .. }))
        .count();
    assert_eq!(metrics, samples.len());
    let events: Vec<Event> = insert
        .iter()
        .filter_map(|l| match l.item {
            TraceItem::Event { event } => Some(event),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [
            Event::StageStart,
            Event::StageEnd,
            Event::SettleStart,
            Event::SettleEnd
        ]
    );
    let maintenance: Vec<Event> = trace
        .iter()
        .filter_map(|l| match l.item {
            TraceItem::Event { event } if l.stage == Stage::Maintenance => Some(event),
            _ => None,
        })
        .collect();
    assert_eq!(maintenance[1], Event::Maintenance);
    // The stage record holds the snapshot around the stage.
    let record = crate::results::derive::completed(&records)
        .into_iter()
        .find(|r| r.stage == Stage::PerfileInsert)
        .unwrap();
    let snap = record.snapshot.as_ref().unwrap();
    let entries = |s: &Snapshot| match s {
        Snapshot::Values(v) => v["entries"],
        Snapshot::Error { error } => panic!("{error}"),
    };
    assert_eq!((entries(&snap.before), entries(&snap.after)), (0.0, 8.0));
}

#[tokio::test(start_paused = true)]
async fn with_the_trace_off_nothing_is_sampled() {
    let tmp = tempfile::tempdir().unwrap();
    let s = script(Script {
        insert_time: Duration::from_millis(50),
        ..Default::default()
    });
    let (outcome, _) = run(
        &traced(tmp.path(), 0),
        vec![fake("a", Layout::default(), &s)],
    )
    .await;
    assert_eq!(outcome.completed, 1);
    assert!(!outcome.dir.join(crate::results::trace::FILE).exists());
    // Four stages, a look before and after each: native size and snapshot.
    assert_eq!(s.lock().unwrap().calls[&Op::Measure], 4 * 2 * 2);
}
