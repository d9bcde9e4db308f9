//! The trace: while a stage runs and settles, a task samples every probe of the system and its
//! own storage accounting through the system's meter at a fixed interval, and writes each
//! sample, with the engine's event markers, as a line of `trace.jsonl`
//! ([`crate::results::trace`] reads it). The meter's connection is opened once, not per
//! sample, and the task runs beside the stage rather than between its requests.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio::sync::oneshot;

use crate::model::{
    CellKey, Event, Meter, Reading, Snapshot, Stage, SysError, TraceItem, TraceLine,
};
use crate::probe::Probes;
use crate::results::trace::FILE;
use crate::secret::redact;
use crate::sinks::Sinks;

/// Where trace lines go: `trace.jsonl` and the sinks that take samples.
pub struct Tracer {
    /// The file, appended a whole line per write; `None` when the trace is off.
    file: Option<Arc<Mutex<File>>>,
    interval: Duration,
    sinks: Arc<Sinks>,
}

/// The stage a line belongs to, and when it started.
#[derive(Clone)]
pub struct At {
    /// The cell.
    pub cell: CellKey,
    /// Its attempt.
    pub attempt: u32,
    /// The stage.
    pub stage: Stage,
    /// Its start, from which `t_s` counts (tokio's clock, which the engine's tests pause).
    pub started: tokio::time::Instant,
}

impl At {
    fn line(&self, item: TraceItem) -> TraceLine {
        TraceLine {
            cell: self.cell.clone(),
            attempt: self.attempt,
            stage: self.stage,
            t_s: self.started.elapsed().as_secs_f64(),
            at: Utc::now(),
            item,
        }
    }
}

impl Tracer {
    /// A tracer writing to `dir`'s trace every `interval`, or one that writes nothing.
    pub fn open(dir: &Path, interval: Option<Duration>, sinks: Arc<Sinks>) -> anyhow::Result<Self> {
        let file = match interval {
            None => None,
            Some(_) => {
                let path = dir.join(FILE);
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                Some(Arc::new(Mutex::new(file)))
            }
        };
        Ok(Tracer {
            file,
            interval: interval.unwrap_or(Duration::MAX),
            sinks,
        })
    }

    /// Writes an event marker.
    pub fn event(&self, at: &At, event: Event) {
        if let Some(file) = &self.file {
            write(file, &self.sinks, &at.line(TraceItem::Event { event }));
        }
    }

    /// Writes the engine's own look before or after a stage (its readings and snapshot) as
    /// samples, so that every stage's line starts and ends where its record does.
    pub fn readings(&self, at: &At, readings: &BTreeMap<String, Reading>, snapshot: &Snapshot) {
        let Some(file) = &self.file else { return };
        for line in lines(at, readings.clone(), snapshot.clone()) {
            write(file, &self.sinks, &line);
        }
    }

    /// Starts sampling `meter` with `probes` for the stage at `at`; the meter comes back from
    /// [`Sampling::stop`]. With the trace off it is only held.
    pub fn start(&self, at: At, probes: Arc<Probes>, meter: Box<dyn Meter>) -> Sampling {
        let (stop, stopped) = oneshot::channel();
        let task = match &self.file {
            None => tokio::spawn(async move {
                let _ = stopped.await;
                meter
            }),
            Some(file) => tokio::spawn(sample(
                Arc::clone(file),
                Arc::clone(&self.sinks),
                self.interval,
                at,
                probes,
                meter,
                stopped,
            )),
        };
        Sampling {
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// A running sampler. Dropped without [`Sampling::stop`] (the attempt was abandoned), it
/// aborts the task and the meter is lost; the engine makes a new one.
pub struct Sampling {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Box<dyn Meter>>>,
}

impl Sampling {
    /// Stops sampling (a sample under way completes) and hands the meter back; `None` if
    /// the task died.
    pub async fn stop(mut self) -> Option<Box<dyn Meter>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take()?.await.ok()
    }
}

impl Drop for Sampling {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The sampler task: a sample one `interval` after the start and every `interval` after that
/// (the engine's own look is the one at the start) until stopped; a sample that takes longer
/// than the interval delays the next instead of bunching them.
async fn sample(
    file: Arc<Mutex<File>>,
    sinks: Arc<Sinks>,
    interval: Duration,
    at: At,
    probes: Arc<Probes>,
    mut meter: Box<dyn Meter>,
    mut stopped: oneshot::Receiver<()>,
) -> Box<dyn Meter> {
    let mut tick = tokio::time::interval_at(at.started + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return meter,
            _ = tick.tick() => {}
        }
        for line in look(&at, &probes, meter.as_mut()).await {
            write(&file, &sinks, &line);
        }
    }
}

/// One look through the meter: every probe and the snapshot, failures as failures.
async fn look(at: &At, probes: &Probes, meter: &mut dyn Meter) -> Vec<TraceLine> {
    let readings = probes.read_each(meter).await;
    lines(at, readings, snapshot_of(meter.snapshot().await))
}

/// The lines of one look: a sample per probe, then the snapshot.
fn lines(at: &At, readings: BTreeMap<String, Reading>, metrics: Snapshot) -> Vec<TraceLine> {
    let mut out: Vec<TraceLine> = readings
        .into_iter()
        .map(|(probe, reading)| at.line(TraceItem::Sample { probe, reading }))
        .collect();
    out.push(at.line(TraceItem::Metrics { metrics }));
    out
}

/// A snapshot result as recorded: values, or the error's message.
pub fn snapshot_of(result: Result<BTreeMap<String, f64>, SysError>) -> Snapshot {
    match result {
        Ok(values) => Snapshot::Values(values),
        Err(e) => Snapshot::Error { error: e.message },
    }
}

/// Appends one line (secrets redacted, as in the journal) and hands it to the sinks. A trace
/// that cannot be written is logged once, not fatal: the stage's own record is the
/// measurement.
fn write(file: &Mutex<File>, sinks: &Sinks, line: &TraceLine) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let mut text = redact(&serde_json::to_string(line).expect("trace line serializes"));
    text.push('\n');
    let written = file
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .write_all(text.as_bytes());
    if let Err(e) = written
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!("writing {FILE}: {e} (the trace goes on without the lines it cannot write)");
    }
    sinks.sample(line);
}
