//! Preflight: reach every selected system, read its probes once, and report its version, or
//! say exactly why not. Nothing is written.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::config::Resolved;
use crate::experiment::{Subject, build_systems};
use crate::probe::{self, ProbeSet, Reading};
use crate::systems::ServerInfo;

/// What preflight found for one system.
pub struct Check {
    /// System name.
    pub system: &'static str,
    /// Where its data goes.
    pub target: String,
    /// Version, or the reason it could not be reached.
    pub server: Result<ServerInfo, String>,
    /// Each probe's reading now, by probe name (local probes even when the server is down).
    pub readings: BTreeMap<String, Reading>,
    /// An embedded system creates its files on first use: missing probe paths are fine.
    pub embedded: bool,
}

/// Connects to every selected system and reads its probes.
pub async fn check(config: &Resolved) -> anyhow::Result<Vec<Check>> {
    let mut out = Vec::new();
    for subject in build_systems(config, &config.experiment_dir())? {
        out.push(check_one(subject).await);
    }
    Ok(out)
}

async fn check_one(mut s: Subject) -> Check {
    let server = s.sys.connect().await.map_err(|e| e.message);
    let mut probes = s.probes();
    if server.is_err() {
        // Only what can be read without the server.
        probes = ProbeSet {
            native_copies: None,
            ..probes
        };
    }
    let readings = probe::read_all(s.sys.as_mut(), &probes)
        .await
        .unwrap_or_else(|e| {
            BTreeMap::from([(
                probe::NATIVE.to_string(),
                Reading::Error { error: e.message },
            )])
        });
    Check {
        system: s.def.name,
        target: s.sys.target(),
        server,
        readings,
        embedded: s.def.embedded,
    }
}

/// Renders checks as text; the boolean is true when every system was reached and every
/// probe answered.
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
        let mut parts = Vec::new();
        for (name, r) in &c.readings {
            parts.push(match r {
                Reading::Bytes { bytes } => format!("{name} {bytes} bytes now"),
                Reading::Error { error } if c.embedded && error.contains("does not exist") => {
                    format!("{name} created on first run")
                }
                Reading::Error { error } => {
                    ok = false;
                    format!("{name} FAILED {error}")
                }
            });
        }
        if parts.is_empty() {
            parts.push("none".into());
        }
        let _ = writeln!(out, "{:<12}         probes: {}", "", parts.join("; "));
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
