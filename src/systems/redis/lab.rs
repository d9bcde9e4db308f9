//! Lab Redis: a private instance on 127.0.0.1:16379 with an append-only file; the password
//! is in its config file (mode 0600), never on the command line. Next to it runs Debian's
//! redis_exporter on 127.0.0.1:19121 (password from its environment), the endpoint of the
//! lab's `prometheus` probe: the server's used memory as a Prometheus metric. A private
//! Prometheus server on 127.0.0.1:19090 scrapes the exporter, and the lab's `promql` probe
//! asks it for the same metric, as a probe asks a cluster's Prometheus.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::Settings;
use crate::probe::{self, prometheus::PrometheusConfig, promql::PromqlConfig};
use crate::systems::toolkit::{ServerKeys, lab_section};

use crate::lab::process::Daemon;
use crate::lab::prometheus::{self as server, Prometheus};
use crate::lab::{Lab, Recipe};

/// Loopback port of the lab server.
pub const PORT: u16 = 16379;
/// Loopback port of its Prometheus exporter.
pub const EXPORTER_PORT: u16 = 19121;
/// The exporter's program (Debian package prometheus-redis-exporter).
const EXPORTER: &str = "prometheus-redis-exporter";
/// Loopback port of the Prometheus server that scrapes the exporter.
pub const PROMETHEUS_PORT: u16 = 19090;

/// The Redis lab server.
pub struct Redis;

fn daemon(lab: &Lab) -> Daemon {
    Daemon {
        dir: lab.server_dir("redis"),
        program: "redis-server",
    }
}

fn exporter(lab: &Lab) -> Daemon {
    Daemon {
        dir: lab.server_dir("redis").join("exporter"),
        program: EXPORTER,
    }
}

/// The Prometheus server scraping the exporter as job `redis`.
fn prometheus(lab: &Lab) -> Prometheus {
    Prometheus {
        dir: lab.server_dir("redis").join("prometheus"),
        port: PROMETHEUS_PORT,
        targets: vec![("redis".into(), format!("127.0.0.1:{EXPORTER_PORT}"))],
    }
}

impl Recipe for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn packages(&self) -> &'static [&'static str] {
        &[
            "redis-server",
            "redis-tools",
            "prometheus-redis-exporter",
            server::PROGRAM,
        ]
    }

    fn installed(&self) -> bool {
        ["redis-server", "redis-cli", EXPORTER, server::PROGRAM]
            .into_iter()
            .all(crate::lab::process::on_path)
    }

    fn up(&self, lab: &Lab) -> anyhow::Result<toml::Table> {
        let d = daemon(lab);
        let data = d.dir.join("data");
        std::fs::create_dir_all(&data)?;
        let password = std::fs::read_to_string(lab.secret("redis")?)?;
        let conf = d.dir.join("redis.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {PORT}\nprotected-mode yes\ndaemonize no\n\
                 dir {}\nsave \"\"\nappendonly yes\nappendfsync everysec\n\
                 requirepass {password}\n",
                data.display()
            ),
        )?;
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600))?;
        let mut cmd = Command::new("redis-server");
        cmd.arg(&conf);
        d.start(cmd)?;
        d.wait_ready(Duration::from_secs(30), || crate::lab::port_open(PORT))
            .context("redis")?;
        let e = exporter(lab);
        let mut cmd = Command::new(EXPORTER);
        cmd.args(["-redis.addr", &format!("redis://127.0.0.1:{PORT}")])
            .args(["-web.listen-address", &format!("127.0.0.1:{EXPORTER_PORT}")])
            .arg("-redis-only-metrics")
            .env("REDIS_PASSWORD", password.trim_end());
        e.start(cmd)?;
        e.wait_ready(Duration::from_secs(30), || {
            crate::lab::port_open(EXPORTER_PORT)
        })
        .context("redis_exporter")?;
        let keys = ServerKeys {
            port: Some(PORT),
            password_file: Some(lab.secret("redis")?),
            ..Default::default()
        };
        let mut section = lab_section(&keys, &Settings::default(), &[data]);
        // INFO memory's used_memory: what the server holds, keys and overhead.
        let metric = PrometheusConfig {
            url: format!("http://127.0.0.1:{EXPORTER_PORT}/metrics"),
            metric: "redis_memory_used_bytes".into(),
            labels: Default::default(),
            copies: 1,
            token_env: None,
            token_file: None,
            timeout_s: 10,
        };
        let p = prometheus(lab);
        p.start()?;
        // The same metric through PromQL; the job is named after the instance.
        let query = PromqlConfig {
            url: p.url(),
            query: "redis_memory_used_bytes{job=\"${instance}\"}".into(),
            timestamp_query: None,
            vars: Default::default(),
            max_series: 1,
            copies: 1,
            token_env: None,
            token_file: None,
            timeout_s: 10,
            fresh_timeout_s: 10,
        };
        section.extend([
            probe::setting(probe::prometheus::KEY, &metric),
            probe::setting(probe::promql::KEY, &query),
        ]);
        Ok(section)
    }

    fn down(&self, lab: &Lab) -> anyhow::Result<()> {
        prometheus(lab).stop()?;
        exporter(lab).stop(Duration::from_secs(10))?;
        daemon(lab).stop(Duration::from_secs(30))
    }

    fn status(&self, lab: &Lab) -> anyhow::Result<String> {
        Ok(format!(
            "{} on 127.0.0.1:{PORT}; exporter {} on 127.0.0.1:{EXPORTER_PORT}; prometheus {}",
            daemon(lab).status(),
            exporter(lab).status(),
            prometheus(lab).status()
        ))
    }
}
