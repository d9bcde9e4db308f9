//! A private Prometheus server (Debian's `prometheus`) scraping lab exporters: what the
//! `promql` probe asks in the lab, as it would ask a cluster's Prometheus. It scrapes often
//! (every 250 ms), so a reading waits little for a sample newer than itself.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::process::Daemon;

/// The Debian package and program.
pub const PROGRAM: &str = "prometheus";

/// A Prometheus server in its own directory on a loopback port.
pub struct Prometheus {
    /// Its directory: config, data, pid file and log.
    pub dir: PathBuf,
    /// Loopback port of its HTTP API.
    pub port: u16,
    /// Scrape jobs: job name and `host:port` of the target's `/metrics`.
    pub targets: Vec<(String, String)>,
}

impl Prometheus {
    /// How often it scrapes its targets.
    pub const INTERVAL: Duration = Duration::from_millis(250);

    fn daemon(&self) -> Daemon {
        Daemon {
            dir: self.dir.clone(),
            program: PROGRAM,
        }
    }

    /// Its base URL, for the probe's `url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes its config and starts it unless it runs; returns when it answers `/-/ready`.
    pub fn start(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let interval = format!("{}ms", Self::INTERVAL.as_millis());
        let mut config = format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\nscrape_configs:\n"
        );
        for (job, target) in &self.targets {
            config.push_str(&format!(
                "  - job_name: {job:?}\n    static_configs:\n      - targets: [{target:?}]\n"
            ));
        }
        let path = self.dir.join("prometheus.yml");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let d = self.daemon();
        let mut cmd = Command::new(PROGRAM);
        cmd.arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.join("data").display()
            ))
            .arg("--storage.tsdb.retention.time=6h")
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port));
        d.start(cmd)?;
        d.wait_ready(Duration::from_secs(60), || {
            super::http_ok(self.port, "/-/ready")
        })
        .context("prometheus")
    }

    /// Stops it if it runs.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.daemon().stop(Duration::from_secs(10))
    }

    /// "running (pid N) on 127.0.0.1:PORT" or "stopped".
    pub fn status(&self) -> String {
        format!("{} on 127.0.0.1:{}", self.daemon().status(), self.port)
    }
}
