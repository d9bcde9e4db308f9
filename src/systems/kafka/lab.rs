//! Lab Kafka: tansu, a Kafka-protocol broker, on 127.0.0.1:19092 with sqlite storage in
//! `kafka/data/`. It has no Debian package: `up` installs it with cargo when missing. tansu
//! reads `.env` files and many environment variables, so it runs with a cleared environment
//! and every flag given.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::settings::{DeleteMode, Settings};
use crate::probe;
use crate::systems::toolkit::section_of;

use crate::lab::process::{CargoTool, Daemon};
use crate::lab::{Lab, Recipe};

/// Loopback port of the lab broker.
pub const PORT: u16 = 19092;
/// Storage URL, relative to the broker's directory (tansu resolves even absolute paths against
/// its working directory). Maintenance (retention, compaction) runs every second instead of
/// every 10 min.
const STORAGE: &str = "sqlite://data/tansu.db?maintenance_interval=1s";

/// The Kafka lab server.
pub struct Kafka;

fn daemon(lab: &Lab) -> Daemon {
    Daemon {
        dir: lab.server_dir("kafka"),
        program: "tansu",
    }
}

/// tansu with only its SQLite storage engine (the default build adds an S3 engine the lab
/// does not use, and a few minutes of compiling).
const TANSU: CargoTool = CargoTool {
    program: "tansu",
    krate: "tansu",
    args: &[
        "--version",
        "0.6.0",
        "--no-default-features",
        "--features",
        "libsql",
    ],
};

/// tansu with a clean environment in the broker's directory.
fn tansu(path: &Path, dir: &Path) -> Command {
    let mut c = Command::new(path);
    c.env_clear().env("RUST_LOG", "error").current_dir(dir);
    c
}

impl Recipe for Kafka {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn packages(&self) -> &'static [&'static str] {
        &[]
    }

    fn installed(&self) -> bool {
        true
    }

    fn cargo_tools(&self) -> &'static [CargoTool] {
        &[TANSU]
    }

    fn up(&self, lab: &Lab) -> anyhow::Result<toml::Table> {
        let path = TANSU.path()?;
        let d = daemon(lab);
        let data = d.dir.join("data");
        // tansu does not create the directory of its sqlite file.
        std::fs::create_dir_all(&data)?;
        let url = format!("tcp://127.0.0.1:{PORT}");
        let mut cmd = tansu(&path, &d.dir);
        cmd.arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", STORAGE])
            // The default, given explicitly: the adapter recognises tansu by it.
            .args(["--cluster-id", "tansu_cluster"]);
        d.start(cmd)?;
        // `topic list` fails on a broker that accepts connections but no longer answers, which a
        // port check would miss.
        d.wait_ready(Duration::from_secs(60), || {
            d.pid().is_some()
                && tansu(&path, &d.dir)
                    .args(["topic", "list", "--broker", &url])
                    .output()
                    .is_ok_and(|o| o.status.success())
        })
        .context("tansu")?;
        let settings = Settings {
            bootstrap: format!("127.0.0.1:{PORT}"),
            delete_mode: DeleteMode::Tombstone,
            delete_topics: false,
            ..Default::default()
        };
        let mut t = section_of(&[&settings]);
        // tansu keeps its log in SQLite and reuses freed pages: the sqlite probe sees the
        // pages in use where the file size (fs) does not grow.
        t.extend([
            probe::setting(probe::fs::KEY, &[&data]),
            probe::setting(probe::sqlite::KEY, &[data.join("tansu.db")]),
        ]);
        Ok(t)
    }

    fn down(&self, lab: &Lab) -> anyhow::Result<()> {
        daemon(lab).stop(Duration::from_secs(30))
    }

    fn status(&self, lab: &Lab) -> anyhow::Result<String> {
        Ok(format!("{} on 127.0.0.1:{PORT}", daemon(lab).status()))
    }
}
