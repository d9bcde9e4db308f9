//! Lab Redis: a private instance on 127.0.0.1:16379 with an append-only file; the password
//! is in its config file (mode 0600), never on the command line.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::process::Daemon;
use super::{Lab, Server};

/// Loopback port of the lab server.
pub const PORT: u16 = 16379;

/// The Redis lab server.
pub struct Redis;

fn daemon(lab: &Lab) -> Daemon {
    Daemon {
        dir: lab.server_dir("redis"),
        program: "redis-server",
    }
}

impl Server for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn packages(&self) -> &'static [&'static str] {
        &["redis-server", "redis-tools"]
    }

    fn installed(&self) -> bool {
        super::process::on_path("redis-server") && super::process::on_path("redis-cli")
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
        d.wait_ready(Duration::from_secs(30), || super::port_open(PORT))
            .context("redis")?;
        Ok(super::server_section(
            PORT,
            None,
            &lab.secret("redis")?,
            &data,
        ))
    }

    fn down(&self, lab: &Lab) -> anyhow::Result<()> {
        daemon(lab).stop(Duration::from_secs(30))
    }

    fn status(&self, lab: &Lab) -> anyhow::Result<String> {
        Ok(format!("{} on 127.0.0.1:{PORT}", daemon(lab).status()))
    }
}
