//! Lab NATS: Debian's nats-server (2.9) on 127.0.0.1:14222 with JetStream storing in
//! `nats/data/`, and its monitoring endpoint on 127.0.0.1:18222 (readiness: `/healthz`
//! answers 200 once JetStream is up). One user, `dedup_lab`, whose generated password reaches
//! the server through its environment: the config file names the variable, and nothing
//! holds the password on a command line.

use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::Settings;
use crate::lab::process::{Daemon, on_path};
use crate::lab::{Lab, Recipe, http_ok, path_value};
use crate::systems::toolkit::{ServerKeys, lab_section};

/// Loopback port of the client protocol.
pub const PORT: u16 = 14222;
/// Loopback port of the monitoring endpoint.
pub const MONITOR_PORT: u16 = 18222;
/// The lab's user.
pub const USER: &str = "dedup_lab";
/// The largest message the server accepts: 1 MiB files and their headers exceed the 1 MB
/// default. NATS advises against more than 8 MiB.
const MAX_PAYLOAD: u32 = 8 << 20;
/// The environment variable the config reads the password from.
const PASSWORD_ENV: &str = "DEDUP_LAB_NATS_PASSWORD";

/// The NATS lab server.
pub struct Nats;

fn daemon(lab: &Lab) -> Daemon {
    Daemon {
        dir: lab.server_dir("nats"),
        program: "nats-server",
    }
}

impl Recipe for Nats {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn packages(&self) -> &'static [&'static str] {
        &["nats-server"]
    }

    fn installed(&self) -> bool {
        on_path("nats-server")
    }

    fn up(&self, lab: &Lab) -> anyhow::Result<toml::Table> {
        let d = daemon(lab);
        let data = d.dir.join("data");
        std::fs::create_dir_all(&data)?;
        let conf = d.dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{PORT}\"\nhttp: \"127.0.0.1:{MONITOR_PORT}\"\n\
                 max_payload: {MAX_PAYLOAD}\n\
                 jetstream {{\n  store_dir: {}\n}}\n\
                 authorization {{\n  user: {USER}\n  password: ${PASSWORD_ENV}\n}}\n",
                path_value(&data)
            ),
        )?;
        let password_file = lab.secret("nats")?;
        let password = std::fs::read_to_string(&password_file)?;
        let mut cmd = Command::new("nats-server");
        cmd.arg("--config")
            .arg(&conf)
            .env(PASSWORD_ENV, password.trim());
        d.start(cmd)?;
        d.wait_ready(Duration::from_secs(30), || {
            http_ok(MONITOR_PORT, "/healthz")
        })
        .context("nats-server")?;
        let keys = ServerKeys {
            port: Some(PORT),
            user: Some(USER.into()),
            password_file: Some(password_file),
            ..Default::default()
        };
        Ok(lab_section(&keys, &Settings::default(), &[data]))
    }

    fn down(&self, lab: &Lab) -> anyhow::Result<()> {
        daemon(lab).stop(Duration::from_secs(30))
    }

    fn status(&self, lab: &Lab) -> anyhow::Result<String> {
        Ok(format!(
            "{} on 127.0.0.1:{PORT} (monitoring {MONITOR_PORT})",
            daemon(lab).status()
        ))
    }
}
