//! Data systems under test: one trait, one registry, a file or directory per system, and the
//! toolkit every adapter builds on.
//!
//! An adapter knows its namespace, its bulk path, its per-file operations, its maintenance,
//! its settle condition and its native size. The engine calls only the [`System`] trait. A
//! system is registered once, in [`REGISTRY`], with everything else that knows about it: its
//! lab servers, its native loader for the benchmarks, and what the generic tests need. Adding a
//! system means adding its file or directory, one line in [`REGISTRY`], and its tests.

pub mod clickhouse;
pub mod cockroachdb;
#[cfg(test)]
pub mod fake;
pub mod fs;
pub mod kafka;
pub mod mariadb;
pub mod nats;
pub mod pgwire;
pub mod postgres;
pub mod redis;
pub mod s3;
pub mod sqlite;
pub mod toolkit;

use std::path::{Path, PathBuf};
use std::process::Command;

use async_trait::async_trait;
use bytes::Bytes;

use crate::dataset::{DataSet, FileEntry};
use crate::error::usage;
use crate::lab::{Recipe, Server};
use crate::model::{KeyMode, Layout, MAX_CONTAINERS, Meter, ServerInfo, SysResult};
use crate::probe::{ProbeKeys, Probes};
pub use toolkit::{Holding, Marker};

/// Every known system kind, in report order.
pub static REGISTRY: &[SystemDef] = &[
    sqlite::DEF,
    fs::DEF,
    postgres::DEF,
    cockroachdb::DEF,
    mariadb::DEF,
    redis::DEF,
    clickhouse::DEF,
    kafka::DEF,
    s3::DEF,
    nats::DEF,
];

/// A registry entry: everything dedup-lab knows about one kind of system.
pub struct SystemDef {
    /// Kind name, used in configs (`kind = "…"`, or as the section name) and records.
    pub kind: &'static str,
    /// Other names configs may use for the kind.
    pub aliases: &'static [&'static str],
    /// Needs no server: an instance of the kind's name exists without a config section.
    pub embedded: bool,
    /// One line for `dedup-lab systems`.
    pub about: &'static str,
    /// Parses and validates an instance's config section; does not connect.
    pub build: fn(&SystemContext<'_>) -> anyhow::Result<Box<dyn System>>,
    /// Servers `dedup-lab lab up` runs for this kind, each giving one instance's section.
    pub lab: &'static [&'static dyn Recipe],
    /// The system's own bulk loader, for `cargo bench --bench loaders`.
    pub native_loader: Option<NativeLoader>,
    /// What the generic tests (faults, ownership) need to know.
    pub tests: TestHooks,
}

impl std::fmt::Debug for SystemDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind)
    }
}

/// A system's own bulk loader, run side by side with dedup-lab's bulk path.
pub struct NativeLoader {
    /// The tool, as BENCHMARKS.md names it.
    pub tool: &'static str,
    /// Writes the data set once in the tool's input format; returns the input's path.
    pub prepare: fn(&DataSet, &Path) -> anyhow::Result<PathBuf>,
    /// The command that loads the input into the instance's namespace. Secrets reach it
    /// through its environment or a private file.
    pub load: fn(&SystemContext<'_>, &Path) -> anyhow::Result<Command>,
}

/// What the generic tests need to know about a kind.
#[derive(Clone, Copy, Debug)]
pub struct TestHooks {
    /// The config key naming the namespace (`schema`, `database`, `prefix`, …), so that tests
    /// can give each run its own, and `[layout]` variants of an instance get theirs.
    pub namespace_key: &'static str,
    /// Files and file size of a data set whose per-file stages last long enough for a server
    /// stop to land in them.
    pub fault_data_set: (u32, &'static str),
}

/// The generic tests' defaults: 300 files of 16 KiB last long enough on most servers.
pub const TEST_HOOKS: TestHooks = TestHooks {
    namespace_key: "prefix",
    fault_data_set: (300, "16KiB"),
};

/// What an adapter is built from.
pub struct SystemContext<'a> {
    /// Instance name: the `[systems.<name>]` section, and the name in records.
    pub instance: &'a str,
    /// The section without the engine's keys (`kind`, probe keys), if the config has one.
    pub section: Option<&'a toml::Table>,
    /// The experiment directory: embedded systems keep their data under it by default.
    pub experiment_dir: &'a Path,
    /// What files are stored under and how many containers they are spread over.
    pub layout: Layout,
}

impl SystemContext<'_> {
    /// The namespace name an instance uses when its section names none: `dedup_lab` for the
    /// instance named after its kind, `dedup_lab_<instance>` for any other, so that several
    /// instances on one server keep apart.
    pub fn default_namespace(&self, kind: &str) -> String {
        if self.instance == kind {
            toolkit::LAB_PREFIX.to_string()
        } else {
            format!("{}_{}", toolkit::LAB_PREFIX, self.instance)
        }
    }
}

/// Every lab server of every kind, in registry order: what `dedup-lab lab` runs.
pub fn lab_servers() -> Vec<Server> {
    REGISTRY
        .iter()
        .flat_map(|d| {
            d.lab.iter().map(|&recipe| Server {
                kind: d.kind,
                recipe,
            })
        })
        .collect()
}

/// One configured system: a name, a kind, and its config section split into the adapter's
/// part and the probes' keys.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Instance name: the section's name, and the name in records and reports.
    pub name: String,
    /// Its kind.
    pub def: &'static SystemDef,
    /// The section without `kind` and the probe keys; `None` for an embedded instance that
    /// has no section.
    pub section: Option<toml::Table>,
    /// The probe keys of the section.
    pub probe_keys: ProbeKeys,
    /// Its layout: the section's `keys` and `containers`, else the experiment's.
    pub layout: Layout,
    /// Whether its section set `keys` or `containers` (then `[layout]` lists do not make
    /// variants of it).
    pub own_layout: bool,
}

impl Instance {
    /// Reads instance `name` from its section: its kind is the section's `kind` key, or the
    /// name itself when that is a kind; its layout the section's `keys` and `containers`,
    /// else `layout`. Refuses unknown kinds, names that are not plain identifiers, an instance
    /// named after another kind, and a layout out of range.
    pub fn new(
        name: &str,
        section: Option<&toml::Table>,
        layout: Layout,
    ) -> anyhow::Result<Instance> {
        let plain = !name.is_empty()
            && name.len() <= 40
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            crate::bail_usage!(
                "config [systems.{name}]: an instance name uses only a-z, 0-9 and _ (at most 40 \
                 characters); rename the section"
            );
        }
        let mut rest = section.cloned().unwrap_or_default();
        let kind = match rest.remove("kind") {
            None => None,
            Some(toml::Value::String(k)) => Some(k),
            Some(other) => crate::bail_usage!(
                "config [systems.{name}] kind = {other}: the kind is a name in quotes, one of: {}",
                names()
            ),
        };
        let named = lookup(name);
        let def = match (&kind, named) {
            (None, Some(def)) => def,
            (None, None) => crate::bail_usage!(
                "config has a section [systems.{name}] but there is no system kind '{name}'; \
                 valid names: {}; or give the instance its kind with kind = \"…\"",
                names()
            ),
            (Some(k), _) => {
                let def = lookup(k).ok_or_else(|| {
                    usage(format!(
                        "config [systems.{name}] kind = \"{k}\" is not a system kind; valid \
                         names: {}",
                        names()
                    ))
                })?;
                if let Some(other) = named.filter(|n| n.kind != def.kind) {
                    crate::bail_usage!(
                        "config [systems.{name}] kind = \"{k}\": the section is named after \
                         the kind {}; give this instance another name",
                        other.kind
                    );
                }
                def
            }
        };
        let probe_keys = ProbeKeys::take(&mut rest);
        let own_layout = rest.contains_key("keys") || rest.contains_key("containers");
        let layout = take_layout(name, &mut rest, layout)?;
        Ok(Instance {
            name: name.to_string(),
            def,
            section: section.map(|_| rest),
            probe_keys,
            layout,
            own_layout,
        })
    }

    /// This instance with `layout`; `renamed` makes it `<name>_<variant>` (`content`, `c4`,
    /// `content_c4`, `name`) with a namespace of its own: the configured one with the same
    /// suffix, or the default one of the new name.
    pub fn variant(&self, layout: Layout, renamed: bool) -> anyhow::Result<Instance> {
        let mut out = Instance {
            layout,
            ..self.clone()
        };
        if !renamed {
            return Ok(out);
        }
        let suffix = match (layout.keys, layout.containers) {
            (KeyMode::Name, 1) => "name".to_string(),
            (KeyMode::Name, n) => format!("c{n}"),
            (KeyMode::Content, 1) => "content".to_string(),
            (KeyMode::Content, n) => format!("content_c{n}"),
        };
        out.name = format!("{}_{suffix}", self.name);
        if out.name.len() > 40 {
            crate::bail_usage!(
                "config [systems.{}]: its [layout] variant would be named {}, longer than 40 \
                 characters; give the instance a shorter name",
                self.name,
                out.name
            );
        }
        // A configured namespace (a name, or a path whose last component is one) gets the
        // suffix before any extension: `dedup_lab.sqlite` → `dedup_lab_content.sqlite`.
        let key = self.def.tests.namespace_key;
        if let Some(toml::Value::String(ns)) = out.section.as_mut().and_then(|s| s.get_mut(key)) {
            let path = Path::new(ns.as_str());
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            let ext = path
                .extension()
                .map(|e| format!(".{}", e.to_string_lossy()));
            let renamed = format!(
                "{}_{suffix}{}",
                stem.unwrap_or_default(),
                ext.unwrap_or_default()
            );
            *ns = path.with_file_name(renamed).to_string_lossy().into_owned();
        }
        Ok(out)
    }

    /// What its adapter is built from.
    pub fn context<'a>(&'a self, experiment_dir: &'a Path) -> SystemContext<'a> {
        SystemContext {
            instance: &self.name,
            section: self.section.as_ref(),
            experiment_dir,
            layout: self.layout,
        }
    }

    /// Its probes and its adapter (not connected); the probe settings are checked first.
    pub fn build(&self, experiment_dir: &Path) -> anyhow::Result<(Box<dyn System>, Probes)> {
        let probes = Probes::build(&self.name, &self.probe_keys)?;
        let sys = (self.def.build)(&self.context(experiment_dir))?;
        Ok((sys, probes))
    }
}

/// Builds instance `name` from a whole section as a config file holds it (`kind` and probe
/// keys included), unconnected: for tools and tests that drive one adapter directly.
pub fn build_from_section(
    name: &str,
    section: &toml::Table,
    experiment_dir: &Path,
) -> anyhow::Result<Box<dyn System>> {
    Ok(Instance::new(name, Some(section), Layout::default())?
        .build(experiment_dir)?
        .0)
}

/// Takes `keys` and `containers` out of an instance's section, over `layout`, and checks
/// the result.
fn take_layout(name: &str, section: &mut toml::Table, layout: Layout) -> anyhow::Result<Layout> {
    let mut own = toml::Table::new();
    for key in ["keys", "containers"] {
        if let Some(v) = section.remove(key) {
            own.insert(key.into(), v);
        }
    }
    let mut merged = toml::Table::try_from(layout).expect("a layout serializes");
    merged.extend(own);
    let layout: Layout = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| {
            usage(format!(
                "config [systems.{name}]: {}; keys is \"name\" or \"content\", containers a \
             number from 1 to {MAX_CONTAINERS}",
                e.message()
            ))
        })?;
    check_layout(&format!("[systems.{name}]"), &layout)?;
    Ok(layout)
}

/// Refuses a number of containers out of range; `what` names the config section.
pub fn check_layout(what: &str, layout: &Layout) -> anyhow::Result<()> {
    if !(1..=MAX_CONTAINERS).contains(&layout.containers) {
        crate::bail_usage!(
            "config {what} containers = {}: spread files over 1 to {MAX_CONTAINERS} containers",
            layout.containers
        );
    }
    Ok(())
}

/// Looks a kind up by its name or an alias.
pub fn lookup(kind: &str) -> Option<&'static SystemDef> {
    REGISTRY
        .iter()
        .find(|d| d.kind == kind || d.aliases.contains(&kind))
}

/// All kind names, for error messages.
pub fn names() -> String {
    REGISTRY
        .iter()
        .map(|d| d.kind)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Looks a kind up, or fails with the valid names.
pub fn lookup_or_usage(kind: &str) -> anyhow::Result<&'static SystemDef> {
    lookup(kind).ok_or_else(|| {
        usage(format!(
            "unknown system kind '{kind}'; valid kinds: {}",
            names()
        ))
    })
}

/// A data system under test. Methods are called in the order of a cell (see DESIGN.md §3);
/// `connect` is called first and again after a connection was lost. What probes may ask of it
/// (its own size function, its files) and its storage accounting are its [`Meter`]'s: the
/// system loads, the meter looks.
#[async_trait]
pub trait System: Send {
    /// Instance name.
    fn name(&self) -> &str;

    /// One line describing where the data goes, for preflight and plans (no secrets).
    fn target(&self) -> String;

    /// Connects (or reconnects) and reports the server product and version.
    async fn connect(&mut self) -> SysResult<ServerInfo>;

    /// A meter on a connection of its own, made after a connect: the engine reads every probe
    /// and the system's storage accounting through it, around a stage and (the trace) while
    /// the stage runs, without waiting for the stage's requests or opening connections per
    /// look.
    async fn meter(&mut self) -> SysResult<Box<dyn Meter>>;

    /// What the namespace holds now (see [`toolkit::ownership`]).
    async fn inspect(&mut self) -> SysResult<Holding>;

    /// Empties the namespace, creating it if it is absent, so that it holds nothing but the
    /// marker with `marker`'s text. Called only after [`System::inspect`] found it absent or
    /// marked; an adapter that keeps its marker across resets may skip rewriting an unchanged
    /// one.
    async fn recreate(&mut self, marker: &Marker) -> SysResult<()>;

    /// Loads every file of the data set with the system's fastest native path.
    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()>;

    /// Stores one file with one request; returns when the system acknowledged it.
    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()>;

    /// Deletes one file with one request.
    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()>;

    /// Runs the space-reclaiming operation; returns what it did.
    async fn maintenance(&mut self) -> SysResult<String>;

    /// Makes the data durable and waits (bounded) for asynchronous work the system owes, so
    /// that probes read a settled state.
    async fn settle(&mut self) -> SysResult<()>;

    /// Number of entries (rows, objects, keys, records) stored in the namespace.
    async fn count(&mut self) -> SysResult<u64>;

    /// Requests sent again since the adapter was built (after a server error, say). The
    /// engine records the difference across each stage: a retried per-file request hides
    /// inside its latency otherwise.
    fn retried_requests(&self) -> u64 {
        0
    }

    /// Why the connection cannot be trusted since `since`, for clients that heal lost
    /// connections by themselves: a request queued while the server was away succeeds once it
    /// is back, so no operation fails although the stage ran across an outage. The engine asks
    /// before it records a stage; `Some` fails the attempt as a lost connection.
    fn interrupted_since(&self, _since: std::time::Instant) -> Option<String> {
        None
    }
}
