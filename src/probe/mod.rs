//! Probes: ways to read physical size before and after a stage. One trait ([`Probe`]), one
//! registry ([`REGISTRY`]); adding a probe means adding its file and one registry line.
//!
//! Each probe kind reads one config key of a system's section (`fs_probe`, …), the same key for
//! every system, and decides from it (and the system) whether it applies. A probe that fails
//! gives an error reading, never a number; only a lost connection to the system itself is an
//! error, because nothing measured across an outage may be recorded. Probes see a system only
//! through [`Measured`], so they do not depend on the systems.

pub mod extents;
pub mod fs;
pub mod http;
pub mod native;
pub mod prometheus;
pub mod promql;
pub mod sqlite;
pub mod storage;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::error::usage;
use crate::model::{Measured, Reading, SysError};

/// Every probe kind, in the order records and reports show them.
pub static REGISTRY: &[ProbeDef] = &[
    native::DEF,
    fs::DEF,
    storage::DEF,
    sqlite::DEF,
    prometheus::DEF,
    promql::DEF,
];

/// Where probe `name` stands in the registry, for ordering reports (unknown names last).
pub fn rank(name: &str) -> usize {
    REGISTRY
        .iter()
        .position(|d| d.name == name)
        .unwrap_or(usize::MAX)
}

/// What a probe kind's `build` gives: the probe, `None` where it does not apply, or a
/// usage error about its setting.
pub type Built = anyhow::Result<Option<Box<dyn Probe>>>;

/// A registry entry.
pub struct ProbeDef {
    /// Name in records and reports.
    pub name: &'static str,
    /// The key of a system's section that configures it; `None` for a probe without settings.
    pub key: Option<&'static str>,
    /// What the key's value looks like, for error messages.
    pub key_help: &'static str,
    /// One line for the README and `dedup-lab systems`.
    pub about: &'static str,
    /// Builds the probe for one instance, or `None` where it does not apply (no setting and
    /// no default). Checks the setting; does not read anything yet.
    pub build: fn(&ProbeContext<'_>) -> Built,
}

/// What a probe is built from.
pub struct ProbeContext<'a> {
    /// The system instance it measures.
    pub instance: &'a str,
    /// The value of the probe's key in the instance's section, if set.
    pub value: Option<&'a toml::Value>,
}

impl ProbeContext<'_> {
    /// Parses the value into the probe's settings type, naming the key and its form on error.
    pub fn parse<T: serde::de::DeserializeOwned>(
        &self,
        def: &ProbeDef,
    ) -> anyhow::Result<Option<T>> {
        let Some(value) = self.value else {
            return Ok(None);
        };
        T::deserialize(value.clone()).map(Some).map_err(|e| {
            usage(format!(
                "config [systems.{}] {}: {}; it takes {}",
                self.instance,
                def.key.unwrap_or(def.name),
                e.to_string().trim(),
                def.key_help
            ))
        })
    }

    /// Builds the probe of a configured table: parses it with [`ProbeContext::parse`] and
    /// makes the probe from it; nothing when the key is absent.
    pub fn build_with<T: serde::de::DeserializeOwned, P: Probe + 'static>(
        &self,
        def: &ProbeDef,
        make: impl FnOnce(&str, &T) -> anyhow::Result<P>,
    ) -> Built {
        self.parse::<T>(def)?
            .map(|c| Ok(Box::new(make(self.instance, &c)?) as Box<dyn Probe>))
            .transpose()
    }
}

/// One probe of one system instance.
#[async_trait]
pub trait Probe: Send + Sync {
    /// Its registry name.
    fn name(&self) -> &'static str;

    /// Whether it measures this (connected) system.
    fn applies(&self, _sys: &dyn Measured) -> bool {
        true
    }

    /// Full copies of the data it counts (replicas), for `EDR_replica`.
    fn copies(&self, _sys: &dyn Measured) -> u32 {
        1
    }

    /// Configured paths it reads, which must exist before a run starts.
    fn required_paths(&self) -> &[PathBuf] {
        &[]
    }

    /// The directories of the system's data it reads, if it reads files: where the engine
    /// looks for dedup potential and runs out-of-band dedupe.
    fn data_paths(&self, _sys: &dyn Measured) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Reads the size. `Err` only when the system's connection was lost.
    async fn read(&self, sys: &mut dyn Measured) -> Result<Reading, SysError>;
}

/// A config value for probe `key` as a lab recipe writes it.
pub fn setting(key: &str, value: &impl serde::Serialize) -> (String, toml::Value) {
    (
        key.to_string(),
        toml::Value::try_from(value).expect("probe setting serializes"),
    )
}

/// The probe keys of one section, taken out of it (the rest belongs to the adapter).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeKeys(BTreeMap<&'static str, toml::Value>);

impl ProbeKeys {
    /// Takes every registered probe key out of `section`.
    pub fn take(section: &mut toml::Table) -> ProbeKeys {
        ProbeKeys(
            REGISTRY
                .iter()
                .filter_map(|d| d.key)
                .filter_map(|k| Some((k, section.remove(k)?)))
                .collect(),
        )
    }
}

/// The probes of one system instance.
pub struct Probes(Vec<Box<dyn Probe>>);

impl Probes {
    /// Builds every registered probe that applies to `instance`.
    pub fn build(instance: &str, keys: &ProbeKeys) -> anyhow::Result<Probes> {
        let mut out = Vec::new();
        for def in REGISTRY {
            let ctx = ProbeContext {
                instance,
                value: def.key.and_then(|k| keys.0.get(k)),
            };
            out.extend((def.build)(&ctx)?);
        }
        Ok(Probes(out))
    }

    /// Refuses configured paths that do not exist, naming the first one.
    pub fn check_paths(&self, instance: &str) -> anyhow::Result<()> {
        for p in &self.0 {
            if let Some(path) = p.required_paths().iter().find(|p| !p.exists()) {
                return Err(usage(format!(
                    "config [systems.{instance}]: {} probe path {} does not exist; point it at \
                     the server's files on this machine, or remove it",
                    p.name(),
                    path.display()
                )));
            }
        }
        Ok(())
    }

    /// The probes that measure this system, in registry order.
    pub fn applicable<'a>(&'a self, sys: &'a dyn Measured) -> impl Iterator<Item = &'a dyn Probe> {
        self.0
            .iter()
            .map(|p| p.as_ref())
            .filter(move |p| p.applies(sys))
    }

    /// The data paths of probe `name` for this system (empty when it has none).
    pub fn data_paths(&self, name: &str, sys: &dyn Measured) -> Vec<PathBuf> {
        self.applicable(sys)
            .find(|p| p.name() == name)
            .map(|p| p.data_paths(sys))
            .unwrap_or_default()
    }

    /// Names of the probes that measure this system.
    pub fn names(&self, sys: &dyn Measured) -> Vec<&'static str> {
        self.applicable(sys).map(|p| p.name()).collect()
    }

    /// Copies counted by probe `name`.
    pub fn copies(&self, name: &str, sys: &dyn Measured) -> u32 {
        self.0
            .iter()
            .find(|p| p.name() == name)
            .map_or(1, |p| p.copies(sys))
    }

    /// Reads every applicable probe. A lost connection to the system is returned as an
    /// error; any other failure, including an unreachable metrics endpoint, is an error
    /// reading.
    pub async fn read_all(
        &self,
        sys: &mut dyn Measured,
    ) -> Result<BTreeMap<String, Reading>, SysError> {
        let mut out = BTreeMap::new();
        for p in &self.0 {
            if p.applies(sys) {
                out.insert(p.name().to_string(), p.read(sys).await?);
            }
        }
        Ok(out)
    }
}

impl Probes {
    /// Reads probe `name` if it applies, a lost connection included as an error reading.
    pub async fn read_one(&self, name: &str, sys: &mut dyn Measured) -> Option<Reading> {
        let p = self.0.iter().find(|p| p.name() == name && p.applies(sys))?;
        Some(
            p.read(sys)
                .await
                .unwrap_or_else(|e| Reading::Error { error: e.message }),
        )
    }

    /// Reads every applicable probe, a lost connection included as an error reading: for
    /// looking, not for recording a stage.
    pub async fn read_each(&self, sys: &mut dyn Measured) -> BTreeMap<String, Reading> {
        let mut out = BTreeMap::new();
        for p in &self.0 {
            if p.applies(sys) {
                let r = p
                    .read(sys)
                    .await
                    .unwrap_or_else(|e| Reading::Error { error: e.message });
                out.insert(p.name().to_string(), r);
            }
        }
        out
    }
}

/// Runs a blocking probe function on the blocking pool, as a reading.
pub async fn blocking(f: impl FnOnce() -> anyhow::Result<u64> + Send + 'static) -> Reading {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => Reading::of(result),
        Err(e) => Reading::Error {
            error: format!("probe task: {e}"),
        },
    }
}
