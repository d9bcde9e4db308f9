//! Preflight: reach every selected system, read its probes once, and report its version, or
//! say exactly why not. Nothing is written.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::config::Resolved;
use crate::experiment::{Subject, build_systems, meter_or_offline};
use crate::model::{Offline, Reading, ServerInfo};

/// What preflight found for one system instance.
pub struct Check {
    /// Instance name.
    pub system: String,
    /// Its kind.
    pub kind: &'static str,
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
    let mut meter = match &server {
        Ok(_) => meter_or_offline(s.sys.as_mut()).await,
        Err(why) => Box::new(Offline { why: why.clone() }),
    };
    let readings = s.probes.read_each(meter.as_mut()).await;
    Check {
        system: s.instance.name.clone(),
        kind: s.instance.def.kind,
        target: s.sys.target(),
        server,
        readings,
        embedded: s.instance.def.embedded,
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

/// One line per registered kind (what it is) and, under it, one per configured instance of it
/// (whether it is reachable).
pub fn render_registry(checks: &[Check]) -> String {
    let mut out = String::new();
    for def in crate::systems::REGISTRY {
        let _ = writeln!(out, "{:<12} {}", def.kind, def.about);
        let instances: Vec<&Check> = checks.iter().filter(|c| c.kind == def.kind).collect();
        if instances.is_empty() {
            let _ = writeln!(out, "{:<12}   not configured", "");
        }
        for c in instances {
            let status = match &c.server {
                Ok(info) => format!("reachable: {} {}", info.product, info.version),
                Err(e) => format!("UNREACHABLE: {e}"),
            };
            let _ = writeln!(out, "{:<12}   {:<16} {status}", "", c.system);
        }
    }
    out
}
