//! Data systems under test: one trait, one file per system, one registry.
//!
//! An adapter knows its namespace, its bulk path, its per-file operations, its maintenance,
//! its settle condition and its probes. The engine calls only the [`System`] trait; adding a
//! system means adding a file and a line in [`REGISTRY`].

pub mod clickhouse;
pub mod cockroachdb;
pub mod fs;
pub mod kafka;
pub mod mariadb;
pub mod minio;
pub mod pgwire;
pub mod poll;
pub mod postgres;
pub mod redis;
pub mod sqlite;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::dataset::{DataSet, FileEntry};
use crate::error::usage;

/// Every known system, in report order.
pub static REGISTRY: &[SystemDef] = &[
    sqlite::DEF,
    fs::DEF,
    postgres::DEF,
    cockroachdb::DEF,
    mariadb::DEF,
    redis::DEF,
    clickhouse::DEF,
    kafka::DEF,
    minio::DEF,
];

/// Prefix every lab-owned namespace name starts with.
pub const LAB_PREFIX: &str = "dedup_lab";

/// Table whose presence marks a schema, database or file as created by dedup-lab (SQL
/// systems); other systems write their own kind of marker.
pub const MARKER_TABLE: &str = "dedup_lab_owner";

/// A registry entry: how to build a system from its config section.
pub struct SystemDef {
    /// Name used in configs and records.
    pub name: &'static str,
    /// Needs no server: available without a config section.
    pub embedded: bool,
    /// One line for `dedup-lab systems`.
    pub about: &'static str,
    /// Parses and validates the config section; does not connect.
    pub build: fn(&SystemContext<'_>) -> anyhow::Result<Box<dyn System>>,
}

impl std::fmt::Debug for SystemDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// What an adapter is built from.
pub struct SystemContext<'a> {
    /// The `[systems.<name>]` table, if the config has one.
    pub section: Option<&'a toml::Table>,
    /// The experiment directory: embedded systems keep their data under it by default.
    pub experiment_dir: &'a Path,
}

/// Looks a system up by name.
pub fn lookup(name: &str) -> Option<&'static SystemDef> {
    REGISTRY.iter().find(|d| d.name == name)
}

/// All system names, for error messages.
pub fn names() -> String {
    REGISTRY
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds system `name` from a whole `[systems.<name>]` table as a config file holds it. The
/// probe keys (`fs_probe`, `sqlite_probe`, `prometheus_probe`) belong to the engine and are
/// left out. For tools and tests that drive one adapter directly.
pub fn build_from_section(
    name: &str,
    section: &toml::Table,
    experiment_dir: &Path,
) -> anyhow::Result<Box<dyn System>> {
    let def = lookup(name)
        .ok_or_else(|| usage(format!("unknown system '{name}'; valid names: {}", names())))?;
    let (section, _) = crate::probe::ProbeConfig::take(name, Some(section))?;
    (def.build)(&SystemContext {
        section: section.as_ref(),
        experiment_dir,
    })
}

/// Parses a system's config section into its own settings type; unknown keys are errors.
pub fn parse_section<T: DeserializeOwned + Default>(
    name: &str,
    section: Option<&toml::Table>,
) -> anyhow::Result<T> {
    match section {
        None => Ok(T::default()),
        Some(t) => T::deserialize(toml::Value::Table(t.clone())).map_err(|e| {
            usage(format!(
                "config [systems.{name}]: {}; fix the section (see the README's config reference)",
                e.to_string().trim()
            ))
        }),
    }
}

/// Checks that a namespace name is lab-owned: it starts with [`LAB_PREFIX`] and is a plain
/// identifier, so it can be used in statements and paths without quoting surprises.
pub fn check_namespace(system: &str, key: &str, name: &str) -> anyhow::Result<()> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name.starts_with(LAB_PREFIX) || !plain || name.len() > 63 {
        return Err(usage(format!(
            "config [systems.{system}] {key} = \"{name}\" is not a lab-owned name: it must start \
             with \"{LAB_PREFIX}\" and use only a-z, 0-9 and _ (at most 63 characters)"
        )));
    }
    Ok(())
}

/// Product and version a system reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Product name, e.g. "PostgreSQL", "SQLite".
    pub product: String,
    /// Version string as the server reports it.
    pub version: String,
}

/// How an operation failed, which decides what the engine does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The connection broke or could not be made: reconnect, then retry the cell.
    ConnectionLost,
    /// dedup-lab refused to touch something it does not own: never retried.
    Unsafe,
    /// Anything else: the attempt failed.
    Failed,
}

/// An adapter error with its kind.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct SysError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, with the system's own message.
    pub message: String,
}

impl SysError {
    /// A failure that is not about the connection.
    pub fn failed(message: impl Into<String>) -> Self {
        SysError {
            kind: ErrorKind::Failed,
            message: message.into(),
        }
    }

    /// A broken or impossible connection.
    pub fn connection(message: impl Into<String>) -> Self {
        SysError {
            kind: ErrorKind::ConnectionLost,
            message: message.into(),
        }
    }

    /// A refusal to touch something dedup-lab does not own.
    pub fn unsafe_namespace(message: impl Into<String>) -> Self {
        SysError {
            kind: ErrorKind::Unsafe,
            message: message.into(),
        }
    }
}

/// Result of an adapter operation.
pub type SysResult<T> = Result<T, SysError>;

/// An error with all its causes, `outer: inner: innermost`, skipping causes the outer
/// message already contains (drivers differ in whether `Display` includes the source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Maps any displayable error to a [`ErrorKind::Failed`] error with context.
pub fn failed<E: std::fmt::Display>(context: &str) -> impl FnOnce(E) -> SysError + '_ {
    move |e| SysError::failed(format!("{context}: {e}"))
}

/// A data system under test. Methods are called in the order of a cell (see DESIGN.md §3);
/// `connect` is called first and again after a connection was lost.
#[async_trait]
pub trait System: Send {
    /// Registry name.
    fn name(&self) -> &'static str;

    /// `Some(R)` when the system has its own size function ([`System::native_size`]) that
    /// counts R full copies of the data (replicas); `None` when it has none. Asked after
    /// `connect`.
    fn native_copies(&self) -> Option<u32>;

    /// Where the `fs` probe looks when the config names no `fs_probe`: the files of an
    /// embedded system. A server's data directory is wherever its host keeps it: no default.
    fn default_fs_probe(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// One line describing where the data goes, for preflight and plans (no secrets).
    fn target(&self) -> String;

    /// Connects (or reconnects) and reports the server product and version.
    async fn connect(&mut self) -> SysResult<ServerInfo>;

    /// Drops and recreates the lab-owned namespace; refuses ([`ErrorKind::Unsafe`]) if the
    /// namespace exists but was not created by dedup-lab.
    async fn reset(&mut self) -> SysResult<()>;

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

    /// Number of files (rows, objects, keys) stored in the namespace.
    async fn count(&mut self) -> SysResult<u64>;

    /// The system's own measure of its physical size, in bytes (when [`System::native_copies`] is `Some`).
    async fn native_size(&mut self) -> SysResult<u64>;

    /// Why the connection cannot be trusted since `since`, for clients that heal lost
    /// connections by themselves: a request queued while the server was away succeeds once it
    /// is back, so no operation fails although the stage ran across an outage. The engine asks
    /// before it records a stage; `Some` fails the attempt as a lost connection.
    fn interrupted_since(&self, _since: std::time::Instant) -> Option<String> {
        None
    }
}
