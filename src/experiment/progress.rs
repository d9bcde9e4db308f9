//! Progress of long work — generation, bulk loads, per-file stages, scans, settles — for
//! whoever watches a run. On a terminal: indicatif bars with rate and ETA. Elsewhere (a CI
//! log): one plain line for all running tasks, at most every [`LINE_EVERY`]. Or nothing.
//!
//! The engine opens a [`Task`] for a piece of work, advances it, and drops it when done:
//!
//! ```no_run
//! # use dedup_lab::experiment::progress::{Progress, Unit};
//! let progress = Progress::new(true);
//! let files = progress.task("sqlite/random_binary/U90/run1 perfile_insert", Unit::Files, Some(50));
//! files.inc(1);
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The shortest time between two plain lines.
pub const LINE_EVERY: Duration = Duration::from_secs(5);

/// What a task counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Cells of the experiment.
    Cells,
    /// Files.
    Files,
    /// Bytes.
    Bytes,
    /// Nothing countable (a bulk load, a settle): time spent.
    Wait,
}

/// Where progress goes. Clones share it.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

enum Mode {
    Bars(MultiProgress),
    Lines,
    Off,
}

struct Inner {
    mode: Mode,
    started: Instant,
    /// Running tasks, in the order they began.
    tasks: Mutex<Vec<Weak<State>>>,
    out: Mutex<Box<dyn Write + Send>>,
    last_line: Mutex<Option<Instant>>,
    /// Set when the last clone goes, to end the ticker.
    stop: Arc<(Mutex<bool>, Condvar)>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().expect("not poisoned") = true;
        wake.notify_all();
    }
}

struct State {
    what: Mutex<String>,
    unit: Unit,
    total: Option<u64>,
    pos: AtomicU64,
    started: Instant,
}

/// One piece of work; its bar or its part of the line goes when it is dropped.
pub struct Task {
    state: Arc<State>,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Bars on a terminal (stderr), plain lines elsewhere; nothing when `show` is false.
    pub fn new(show: bool) -> Progress {
        use std::io::IsTerminal;
        if !show {
            return Progress::with(Mode::Off, Box::new(std::io::sink()));
        }
        if std::io::stderr().is_terminal() {
            return Progress::with(Mode::Bars(MultiProgress::new()), Box::new(std::io::sink()));
        }
        let p = Progress::with(Mode::Lines, Box::new(std::io::stderr()));
        p.spawn_ticker(LINE_EVERY);
        p
    }

    /// Plain lines into `out`, written only when a task begins or [`Progress::tick`] is
    /// called: for tests, which call it with the times they choose.
    #[cfg(test)]
    fn lines_to(out: Box<dyn Write + Send>) -> Progress {
        Progress::with(Mode::Lines, out)
    }

    fn with(mode: Mode, out: Box<dyn Write + Send>) -> Progress {
        Progress {
            inner: Arc::new(Inner {
                mode,
                started: Instant::now(),
                tasks: Mutex::new(Vec::new()),
                out: Mutex::new(out),
                last_line: Mutex::new(None),
                stop: Arc::new((Mutex::new(false), Condvar::new())),
            }),
        }
    }

    /// A thread that writes a line every `every` while tasks run, until the last clone goes.
    fn spawn_ticker(&self, every: Duration) {
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.stop.clone();
        std::thread::spawn(move || {
            let (stopped, wake) = &*stop;
            let mut done = stopped.lock().expect("not poisoned");
            loop {
                done = wake.wait_timeout(done, every).expect("not poisoned").0;
                if *done {
                    return;
                }
                match weak.upgrade() {
                    Some(inner) => Progress { inner }.tick(Instant::now()),
                    None => return,
                }
            }
        });
    }

    /// Whether progress shows as bars (so that other output would disturb them).
    pub fn is_bars(&self) -> bool {
        matches!(self.inner.mode, Mode::Bars(_))
    }

    /// Begins a task: `what` it is, what it counts, and how many there are, if known.
    pub fn task(&self, what: impl Into<String>, unit: Unit, total: Option<u64>) -> Task {
        self.task_at(what.into(), unit, total, Instant::now())
    }

    fn task_at(&self, what: String, unit: Unit, total: Option<u64>, now: Instant) -> Task {
        let bar = match &self.inner.mode {
            Mode::Bars(multi) => Some(multi.add(bar(&what, unit, total))),
            Mode::Lines | Mode::Off => None,
        };
        let state = Arc::new(State {
            what: Mutex::new(what),
            unit,
            total,
            pos: AtomicU64::new(0),
            started: now,
        });
        if matches!(self.inner.mode, Mode::Lines) {
            let mut tasks = self.inner.tasks.lock().expect("not poisoned");
            tasks.retain(|t| t.strong_count() > 0);
            tasks.push(Arc::downgrade(&state));
            drop(tasks);
            self.tick(now);
        }
        Task { state, bar }
    }

    /// Writes a line of the running tasks if there are any and the last line is at least
    /// [`LINE_EVERY`] old.
    fn tick(&self, now: Instant) {
        let mut last = self.inner.last_line.lock().expect("not poisoned");
        if last.is_some_and(|l| now.saturating_duration_since(l) < LINE_EVERY) {
            return;
        }
        let Some(line) = self.line(now) else { return };
        *last = Some(now);
        let mut out = self.inner.out.lock().expect("not poisoned");
        // Progress is best effort: a closed stderr must not stop the run.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// `[0:01:05] cells 12/108 (11 %, 0.2/s, ETA 0:09:45) · …`: every running task.
    fn line(&self, now: Instant) -> Option<String> {
        let tasks: Vec<Arc<State>> = self
            .inner
            .tasks
            .lock()
            .expect("not poisoned")
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        if tasks.is_empty() {
            return None;
        }
        let parts: Vec<String> = tasks.iter().map(|t| t.describe(now)).collect();
        Some(format!(
            "[{}] {}",
            clock(now.saturating_duration_since(self.inner.started)),
            parts.join(" · ")
        ))
    }
}

/// `h:mm:ss`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// An amount in the task's unit.
fn amount(unit: Unit, n: f64) -> String {
    match unit {
        Unit::Bytes => format!("{:.1} MiB", n / (1024.0 * 1024.0)),
        Unit::Files | Unit::Cells | Unit::Wait => format!("{n:.0}"),
    }
}

impl State {
    /// `what: 25/50 files (50 %, 120 files/s, ETA 0:00:01)`, or `what: 12 s` for a wait.
    fn describe(&self, now: Instant) -> String {
        let what = self.what.lock().expect("not poisoned").clone();
        let elapsed = now.saturating_duration_since(self.started);
        let pos = self.pos.load(Ordering::Relaxed);
        let (Some(total), false) = (self.total, self.unit == Unit::Wait) else {
            return format!("{what}: {}", clock(elapsed));
        };
        let unit = match self.unit {
            Unit::Cells => " cells",
            Unit::Files => " files",
            Unit::Bytes | Unit::Wait => "",
        };
        let mut s = format!(
            "{what}: {}/{}{unit} ({:.0} %",
            amount(self.unit, pos as f64),
            amount(self.unit, total as f64),
            100.0 * pos as f64 / total.max(1) as f64
        );
        let secs = elapsed.as_secs_f64();
        if pos > 0 && secs > 0.0 {
            let rate = pos as f64 / secs;
            let left = total.saturating_sub(pos) as f64 / rate;
            s.push_str(&format!(
                ", {}{}/s, ETA {}",
                match self.unit {
                    Unit::Bytes => amount(self.unit, rate),
                    _ => format!("{rate:.1}"),
                },
                unit,
                clock(Duration::from_secs_f64(left))
            ));
        }
        s.push(')');
        s
    }
}

/// A bar in the style of its unit.
fn bar(what: &str, unit: Unit, total: Option<u64>) -> ProgressBar {
    let template = match (unit, total) {
        (Unit::Cells, Some(_)) => {
            "{elapsed_precise} [{bar:30}] {pos}/{len} cells · {rate} · ETA {eta}  {msg}"
        }
        (Unit::Files, Some(_)) => "  {msg} [{bar:24}] {pos}/{len} files · {rate} · ETA {eta}",
        (Unit::Bytes, Some(_)) => {
            "  {msg} [{bar:24}] {binary_bytes}/{binary_total_bytes} · {binary_bytes_per_sec} · \
             ETA {eta}"
        }
        _ => "  {spinner} {msg} · {elapsed}",
    };
    let b = match total {
        Some(n) if unit != Unit::Wait => ProgressBar::new(n),
        _ => ProgressBar::new_spinner(),
    };
    b.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}/s", s.per_sec());
                },
            )
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b.enable_steady_tick(Duration::from_millis(200));
    b
}

impl Task {
    /// Advances by `n`.
    pub fn inc(&self, n: u64) {
        self.state.pos.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Says what the task is doing now.
    pub fn describe(&self, what: impl Into<String>) {
        let what = what.into();
        if let Some(b) = &self.bar {
            b.set_message(what.clone());
        }
        *self.state.what.lock().expect("not poisoned") = what;
    }

    /// A function that advances this task, for work on another thread.
    pub fn counter(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let state = self.state.clone();
        let bar = self.bar.clone();
        move |n| {
            state.pos.fetch_add(n, Ordering::Relaxed);
            if let Some(b) = &bar {
                b.inc(n);
            }
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        }
    }

    #[test]
    fn plain_lines_come_at_most_every_few_seconds_with_rate_and_eta() {
        let buf = Buf::default();
        let p = Progress::lines_to(Box::new(buf.clone()));
        let t0 = p.inner.started;
        let at = |s: u64| t0 + Duration::from_secs(s);
        let cells = p.task_at("cells".into(), Unit::Cells, Some(108), at(0));
        // A task beginning writes the first line at once.
        assert_eq!(buf.lines(), vec!["[0:00:00] cells: 0/108 cells (0 %)"]);
        let files = p.task_at("sqlite perfile_insert".into(), Unit::Files, Some(50), at(1));
        p.tick(at(4));
        assert_eq!(buf.lines().len(), 1, "{:?}", buf.lines());
        cells.inc(12);
        files.inc(20);
        p.tick(at(5));
        assert_eq!(
            buf.lines()[1],
            "[0:00:05] cells: 12/108 cells (11 %, 2.4 cells/s, ETA 0:00:40) · \
             sqlite perfile_insert: 20/50 files (40 %, 5.0 files/s, ETA 0:00:06)"
        );
        // A finished task leaves the line; a wait shows its time; bytes show MiB.
        drop(files);
        let settle = p.task_at("settling".into(), Unit::Wait, None, at(6));
        let generating = p.task_at("generating".into(), Unit::Bytes, Some(4 << 20), at(6));
        generating.counter()(1 << 20);
        p.tick(at(8));
        assert_eq!(buf.lines().len(), 2);
        p.tick(at(10));
        assert_eq!(
            buf.lines()[2],
            "[0:00:10] cells: 12/108 cells (11 %, 1.2 cells/s, ETA 0:01:20) · settling: 0:00:04 \
             · generating: 1.0 MiB/4.0 MiB (25 %, 0.2 MiB/s, ETA 0:00:12)"
        );
        // Nothing running: no line.
        drop((cells, settle, generating));
        p.tick(at(60));
        assert_eq!(buf.lines().len(), 3);
    }

    #[test]
    fn off_writes_nothing_and_has_no_bars() {
        let p = Progress::new(false);
        assert!(!p.is_bars());
        let t = p.task("x", Unit::Files, Some(3));
        t.inc(3);
        assert!(p.line(Instant::now()).is_none(), "off keeps no tasks");
    }
}
