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
    /// `None` when the trace is off.
    out: Option<Out>,
    interval: Duration,
}

/// The file, appended a whole line per write, and the sinks; shared with the sampler task.
#[derive(Clone)]
struct Out {
    file: Arc<Mutex<File>>,
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
        let out = match interval {
            None => None,
            Some(_) => {
                let path = dir.join(FILE);
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                Some(Out {
                    file: Arc::new(Mutex::new(file)),
                    sinks,
                })
            }
        };
        Ok(Tracer {
            out,
            interval: interval.unwrap_or(Duration::MAX),
        })
    }

    /// Writes an event marker.
    pub fn event(&self, at: &At, event: Event) {
        if let Some(out) = &self.out {
            out.write(&at.line(TraceItem::Event { event }));
        }
    }

    /// Writes the engine's own look before or after a stage (its readings and snapshot) as
    /// samples, so that every stage's line starts and ends where its record does.
    pub fn readings(&self, at: &At, readings: &BTreeMap<String, Reading>, snapshot: &Snapshot) {
        let Some(out) = &self.out else { return };
        for line in lines(at, readings.clone(), snapshot.clone()) {
            out.write(&line);
        }
    }

    /// Starts sampling `meter` with `probes` for the stage at `at`, the engine's own look
    /// before it having taken `look` (it spaces the first sample as a sample's would); the
    /// meter comes back from [`Sampling::stop`]. With the trace off it is only held.
    pub fn start(
        &self,
        at: At,
        look: Duration,
        probes: Arc<Probes>,
        meter: Box<dyn Meter>,
    ) -> Sampling {
        let (stop, stopped) = oneshot::channel();
        let task = match &self.out {
            None => tokio::spawn(async move {
                let _ = stopped.await;
                meter
            }),
            Some(out) => tokio::spawn(sample(
                out.clone(),
                self.interval,
                at,
                look,
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

/// At most this share of the wall time goes to looking: a look that takes `d` is followed by
/// the next no sooner than `d / MAX_DUTY` after its start. On a server whose snapshot grows
/// with the data (an S3 listing, ClickHouse's parts), sampling every 100 ms would otherwise
/// compete with the stage it measures.
const MAX_DUTY: f64 = 0.02;

/// The sampler task: a sample one `interval` after the start (the engine's look) and then
/// every `interval`, or later after a slow look (see [`MAX_DUTY`]), until stopped; a slow
/// look delays the next instead of bunching them.
async fn sample(
    out: Out,
    interval: Duration,
    at: At,
    first_look: Duration,
    probes: Arc<Probes>,
    mut meter: Box<dyn Meter>,
    mut stopped: oneshot::Receiver<()>,
) -> Box<dyn Meter> {
    let mut next = at.started + spacing(interval, first_look);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return meter,
            _ = tokio::time::sleep_until(next) => {}
        }
        let began = tokio::time::Instant::now();
        for line in look(&at, &probes, meter.as_mut()).await {
            out.write(&line);
        }
        next = began + spacing(interval, began.elapsed());
    }
}

/// The time from one look's start to the next: the interval, or longer for a slow look.
fn spacing(interval: Duration, look: Duration) -> Duration {
    interval.max(look.div_f64(MAX_DUTY))
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

impl Out {
    /// Appends one line (secrets redacted, as in the journal) and hands it to the sinks. A
    /// trace that cannot be written is logged once, not fatal: the stage's own record is the
    /// measurement.
    fn write(&self, line: &TraceLine) {
        static WARNED: AtomicBool = AtomicBool::new(false);
        let mut text = redact(&serde_json::to_string(line).expect("trace line serializes"));
        text.push('\n');
        let written = self
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(text.as_bytes());
        if let Err(e) = written
            && !WARNED.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "writing {FILE}: {e} (the trace goes on without the lines it cannot write)"
            );
        }
        self.sinks.sample(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_look_stretches_the_spacing_to_keep_looking_under_the_duty_cap() {
        let ms = Duration::from_millis;
        assert_eq!(spacing(ms(100), ms(0)), ms(100));
        assert_eq!(spacing(ms(100), ms(2)), ms(100));
        // 20 ms of looking every 100 ms would be 20 %: the next look comes 1 s after.
        assert_eq!(spacing(ms(100), ms(20)), ms(1000));
        assert_eq!(spacing(ms(5000), ms(20)), ms(5000));
    }
}
