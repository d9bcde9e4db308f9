//! One sink's queue and task: a bounded queue that drops its oldest items when full,
//! batches, exponential backoff, throttled log lines, counts.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Item, ItemKind, Sink};
use crate::secret::redact;

/// A sink writes at most one log line per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(30);
/// First wait after a failed send; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between tries: short enough that a sink whose destination came back catches
/// up well within a flush deadline.
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// What a sink did with the items of a run, for the metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    /// Items handed to the sink.
    pub items: u64,
    /// Items it delivered.
    pub delivered: u64,
    /// Items it did not deliver: newer items pushed them out of its full queue, or they
    /// were still unsent at the flush deadline.
    pub dropped: u64,
    /// Its last failure, even if later sends succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Counts shared by the engine's side (offers) and the task (deliveries).
#[derive(Default)]
struct Counts {
    offered: AtomicU64,
    delivered: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counts {
    fn failed(&self, e: &anyhow::Error) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(redact(&format!("{e:#}")));
    }
}

/// A running sink: its queue's sending side and its task.
pub struct Worker {
    name: &'static str,
    takes: &'static [ItemKind],
    tx: broadcast::Sender<Item>,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
    flush: Duration,
}

impl Worker {
    /// Starts the task of `sink` with a queue of `queue` items (rounded up to a power of two)
    /// and a flush deadline.
    pub fn spawn(sink: Box<dyn Sink>, queue: usize, flush: Duration) -> Worker {
        // A broadcast channel with one receiver is a bounded queue that never makes the
        // sender wait and, when full, drops the oldest item, telling the receiver how many
        // it missed: after an outage the newest items are the ones sent.
        let (tx, rx) = broadcast::channel(queue);
        let counts = Arc::new(Counts::default());
        let (name, takes) = (sink.name(), sink.takes());
        let task = tokio::spawn(drive(sink, rx, Arc::clone(&counts), queue));
        Worker {
            name,
            takes,
            tx,
            counts,
            task,
            flush,
        }
    }

    /// Whether the sink takes items of `kind`.
    pub fn takes(&self, kind: ItemKind) -> bool {
        self.takes.contains(&kind)
    }

    /// Queues an item; when the queue is full, its oldest item is dropped. Never waits.
    pub fn offer(&self, item: Item) {
        self.counts.offered.fetch_add(1, Ordering::Relaxed);
        // An error means the task has ended (it cannot before the queue closes, unless it
        // panicked): the item is not delivered, which the counts show.
        let _ = self.tx.send(item);
    }

    /// Closes the queue and lets the task send what it holds until the flush deadline, then
    /// stops it; returns the sink's name and counts.
    pub async fn close(self) -> (String, SinkStats) {
        let Worker {
            name,
            tx,
            counts,
            mut task,
            flush,
            ..
        } = self;
        drop(tx);
        if tokio::time::timeout(flush, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
        let c = &counts;
        let offered = c.offered.load(Ordering::Relaxed);
        let delivered = c.delivered.load(Ordering::Relaxed);
        let stats = SinkStats {
            items: offered,
            delivered,
            dropped: offered - delivered,
            last_error: c
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        (name.to_string(), stats)
    }
}

/// The task: healthcheck, then batches from the queue until it closes, each sent until it
/// goes through.
async fn drive(
    mut sink: Box<dyn Sink>,
    mut rx: broadcast::Receiver<Item>,
    counts: Arc<Counts>,
    queue: usize,
) {
    let mut log = Throttle::new(sink.name());
    if let Err(e) = sink.healthcheck().await {
        counts.failed(&e);
        log.warn(format_args!(
            "healthcheck failed: {e:#}; sending anyway, with retries (when its queue of \
             {queue} is full, the oldest items are dropped)"
        ));
    }
    let mut batch = Vec::with_capacity(queue);
    loop {
        match rx.recv().await {
            Ok(item) => batch.push(item),
            // Missed items count as dropped: they are never delivered.
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => break,
        }
        while batch.len() < queue {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        let mut delays = backoff();
        let mut failures = 0u64;
        while let Err(e) = sink.send(&batch).await {
            counts.failed(&e);
            failures += 1;
            log.warn(format_args!(
                "{e:#}; retrying every {}..{} s (when its queue of {queue} is full, the oldest \
                 items are dropped)",
                BACKOFF_MIN.as_secs(),
                BACKOFF_MAX.as_secs()
            ));
            tokio::time::sleep(delays.next().unwrap_or(BACKOFF_MAX)).await;
        }
        if failures > 0 {
            log.info(format_args!(
                "delivering again after {failures} failed tries"
            ));
        }
        counts
            .delivered
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
    }
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// At most one log line per [`LOG_EVERY`] for one sink: a broken destination fails every
/// few seconds for as long as it is down, and the earlier testbed's sink flooded the log.
/// A line that is let through says how many were held back since the last one.
pub struct Throttle {
    sink: &'static str,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    /// A throttle for the lines of sink `sink`.
    pub fn new(sink: &'static str) -> Throttle {
        Throttle {
            sink,
            last: None,
            held: 0,
        }
    }

    /// The line to write now, or `None` when one was written less than [`LOG_EVERY`] ago.
    pub fn line(&mut self, message: impl Display) -> Option<String> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.held += 1;
            return None;
        }
        let held = std::mem::take(&mut self.held);
        self.last = Some(now);
        let more = if held > 0 {
            format!(" ({held} more since the last message)")
        } else {
            String::new()
        };
        Some(redact(&format!("sink {}: {message}{more}", self.sink)))
    }

    fn warn(&mut self, message: impl Display) {
        if let Some(line) = self.line(message) {
            tracing::warn!("{line}");
        }
    }

    fn info(&mut self, message: impl Display) {
        if let Some(line) = self.line(message) {
            tracing::info!("{line}");
        }
    }
}
