//! Daemon processes of the lab: start detached with a pid file, check, stop.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustix::process::{Pid, Signal, kill_process};

/// A server process of the lab, identified by a pid file in its directory.
pub struct Daemon {
    /// The server's lab directory: pid file and log live here.
    pub dir: PathBuf,
    /// Program name as it appears in `/proc/<pid>/cmdline`, so a reused pid is never taken
    /// for the server.
    pub program: &'static str,
}

impl Daemon {
    fn pid_file(&self) -> PathBuf {
        self.dir.join("daemon.pid")
    }

    /// The log file the process writes its stdout and stderr to.
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The pid of the running server, if it runs (a zombie counts as stopped).
    pub fn pid(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(self.pid_file()).ok()?;
        let raw: i32 = text.trim().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{raw}/stat")).ok()?;
        // State is the field after the parenthesised command name.
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
        let cmdline = std::fs::read(format!("/proc/{raw}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(self.program);
        (state != "Z" && state != "X" && ours)
            .then(|| Pid::from_raw(raw))
            .flatten()
    }

    /// Starts `cmd` detached (own process group, stdin closed, output to [`Daemon::log`])
    /// unless the server already runs.
    pub fn start(&self, mut cmd: Command) -> anyhow::Result<()> {
        if self.pid().is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .with_context(|| format!("opening {}", self.log().display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        std::fs::write(self.pid_file(), child.id().to_string())?;
        Ok(())
    }

    /// Stops the server (SIGTERM, then SIGKILL after `grace`) and waits until it is gone.
    pub fn stop(&self, grace: Duration) -> anyhow::Result<()> {
        let Some(pid) = self.pid() else {
            let _ = std::fs::remove_file(self.pid_file());
            return Ok(());
        };
        let _ = kill_process(pid, Signal::TERM);
        if wait_until(grace, || self.pid().is_none()).is_err() {
            let _ = kill_process(pid, Signal::KILL);
            wait_until(Duration::from_secs(10), || self.pid().is_none())
                .with_context(|| format!("{} (pid {pid:?}) does not stop", self.program))?;
        }
        let _ = std::fs::remove_file(self.pid_file());
        Ok(())
    }

    /// Waits until `ready` holds; on timeout the error shows the end of the server log.
    pub fn wait_ready(&self, timeout: Duration, ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        wait_until(timeout, ready).map_err(|_| {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            anyhow::anyhow!(
                "{} not ready after {timeout:?}; end of {}:\n{}",
                self.program,
                self.log().display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
    }

    /// "running (pid N)" or "stopped".
    pub fn status(&self) -> String {
        match self.pid() {
            Some(pid) => format!("running (pid {})", pid.as_raw_nonzero()),
            None => "stopped".into(),
        }
    }
}

/// Polls `check` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if check() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `program` is found on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// A lab program built from crates.io with `cargo install`, for servers Debian does not ship.
pub struct CargoTool {
    /// The executable's name.
    pub program: &'static str,
    /// The crate.
    pub krate: &'static str,
    /// Extra `cargo install` arguments: the pinned version and the features the lab needs.
    pub args: &'static [&'static str],
}

impl CargoTool {
    /// The executable: on `PATH`, or in `$CARGO_HOME/bin` (where `cargo install` puts it).
    pub fn find(&self) -> Option<PathBuf> {
        let cargo_bin = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .map(|h| h.join("bin"));
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(cargo_bin)
            .map(|dir| dir.join(self.program))
            .find(|p| p.is_file())
    }

    /// Builds and installs it with a short release profile (no LTO, 16 codegen units,
    /// opt-level 1): a lab server needs to run, not to win benchmarks, and CI has a budget.
    pub fn install(&self) -> anyhow::Result<PathBuf> {
        eprintln!(
            "lab: building {} with cargo install (several minutes on 2 cores)",
            self.krate
        );
        super::run(
            std::process::Command::new("cargo")
                .args(["install", "--locked", self.krate])
                .args(self.args)
                .env("CARGO_PROFILE_RELEASE_LTO", "false")
                .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
                .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1")
                .env("CARGO_PROFILE_RELEASE_DEBUG", "0"),
        )
        .with_context(|| {
            format!(
                "cargo install {} (needs cargo and a C compiler)",
                self.krate
            )
        })?;
        self.find().with_context(|| {
            format!(
                "cargo install {} left no {} program",
                self.krate, self.program
            )
        })
    }

    /// The executable, or an error telling how to get it.
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        self.find().with_context(|| {
            format!(
                "{} is not installed; `dedup-lab lab up` builds it with cargo install",
                self.program
            )
        })
    }
}
