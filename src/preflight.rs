//! Preflight: reach every selected system, report its version and probes, or say why not.

use std::fmt::Write as _;

use crate::config::Resolved;
use crate::experiment::build_systems;
use crate::probe;
use crate::systems::{ProbeSet, ServerInfo, System};

/// What preflight found for one system.
pub struct Check {
    /// System name.
    pub system: &'static str,
    /// Where its data goes.
    pub target: String,
    /// Version, or the reason it could not be reached.
    pub server: Result<ServerInfo, String>,
    /// Its probes.
    pub probes: ProbeSet,
    /// The fs probe's reading now, or why it fails.
    pub fs_probe: Option<Result<u64, String>>,
    /// An embedded system creates its directories on first use: a missing fs path is fine.
    pub embedded: bool,
}

/// Connects to every selected system (nothing is written).
pub async fn check(config: &Resolved) -> anyhow::Result<Vec<Check>> {
    let systems = build_systems(config, &config.experiment_dir())?;
    let mut out = Vec::new();
    for (sys, def) in systems.into_iter().zip(&config.systems) {
        out.push(check_one(sys, def.embedded).await);
    }
    Ok(out)
}

async fn check_one(mut sys: Box<dyn System>, embedded: bool) -> Check {
    let server = sys.connect().await.map_err(|e| e.message);
    let probes = sys.probes();
    let fs_probe = (!probes.fs.is_empty())
        .then(|| probe::fs::allocated_bytes(&probes.fs).map_err(|e| format!("{e:#}")));
    Check {
        system: sys.name(),
        target: sys.target(),
        server,
        probes,
        fs_probe,
        embedded,
    }
}

/// Renders checks as text; the boolean is true when every system was reached.
pub fn render(checks: &[Check]) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    for c in checks {
        match &c.server {
            Ok(info) => {
                let _ = writeln!(
                    out,
                    "{:<12} ok      {} {}  ({})",
                    c.system, info.product, info.version, c.target
                );
            }
            Err(why) => {
                ok = false;
                let _ = writeln!(out, "{:<12} FAILED  {why}", c.system);
            }
        }
        let native = if c.probes.native_copies.is_some() {
            "native: available"
        } else {
            "native: none"
        };
        let fs = match &c.fs_probe {
            None => "fs: not configured".to_string(),
            Some(Ok(b)) => format!("fs: {b} bytes now"),
            Some(Err(e)) if c.embedded && e.contains("does not exist") => {
                "fs: created on first run".to_string()
            }
            Some(Err(e)) => {
                ok = false;
                format!("fs: FAILED {e}")
            }
        };
        let _ = writeln!(out, "{:<12}         probes: {native}; {fs}", "");
    }
    (out, ok)
}

/// One line per registered system: what it is, and whether it is configured and reachable.
pub fn render_registry(checks: &[Check]) -> String {
    let mut out = String::new();
    for def in crate::systems::REGISTRY {
        let status = match checks.iter().find(|c| c.system == def.name) {
            None => "not configured".to_string(),
            Some(c) => match &c.server {
                Ok(info) => format!("reachable: {} {}", info.product, info.version),
                Err(e) => format!("UNREACHABLE: {e}"),
            },
        };
        let _ = writeln!(out, "{:<12} {:<60} {status}", def.name, def.about);
    }
    out
}
