//! Sinks: optional destinations for results, each configured in its own `[export.<sink>]`
//! section. A sink is a config section, a healthcheck and a writer ([`Sink`]), as in vector.
//! The engine hands items to [`Sinks`] and never waits for a sink: each sink has a bounded
//! queue drained by its own task, which retries failed sends with exponential backoff and logs
//! at most one line per 30 s. A full queue drops its oldest item for the new one, so that the
//! newest arrive once the destination is back; what is dropped so, or still unsent when the
//! run's flush deadline passes, is counted, and the counts go into the experiment's metadata.
//! A sink can therefore fail in any way without changing what is measured.
//!
//! - [`kafka`]: stage records and trace samples as JSON to two topics of any Kafka-protocol
//!   broker;
//! - [`pushgateway`]: stage results as metrics to a Prometheus Pushgateway;
//! - [`git`]: the experiment directory, committed to a branch of a repository at the end of a
//!   run and pushed where configured.

pub mod git;
pub mod kafka;
pub mod pushgateway;
mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::usage;
use crate::model::{StageRecord, TraceLine};
pub use worker::SinkStats;
use worker::Worker;

/// What a sink may receive.
#[derive(Clone, Debug)]
pub enum Item {
    /// A stage record, after the journal holds it.
    Stage(Arc<StageRecord>),
    /// A trace sample.
    Sample(Arc<TraceLine>),
    /// The experiment directory at the end of the run, its files final.
    Directory(Arc<Path>),
}

/// The kinds of [`Item`], for a sink to say which it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    /// [`Item::Stage`].
    Stage,
    /// [`Item::Sample`].
    Sample,
    /// [`Item::Directory`].
    Directory,
}

impl Item {
    /// Its kind.
    pub fn kind(&self) -> ItemKind {
        match self {
            Item::Stage(_) => ItemKind::Stage,
            Item::Sample(_) => ItemKind::Sample,
            Item::Directory(_) => ItemKind::Directory,
        }
    }
}

/// One destination. Its task owns it: calls never overlap.
#[async_trait]
pub trait Sink: Send {
    /// Its name: the key of its `[export.<name>]` section.
    fn name(&self) -> &'static str;

    /// The items it takes; it is never handed others.
    fn takes(&self) -> &'static [ItemKind];

    /// Whether the destination answers, making it ready where needed (Kafka creates its
    /// topics). Called once before the first send; a failure is logged and sending goes on.
    async fn healthcheck(&mut self) -> anyhow::Result<()>;

    /// Delivers a batch, all or nothing: after an error the same batch is sent again, so a
    /// send must be safe to repeat (at-least-once).
    async fn send(&mut self, items: &[Item]) -> anyhow::Result<()>;
}

/// What sinks are built with, besides their section.
#[derive(Clone, Debug)]
pub struct SinkContext {
    /// Experiment id.
    pub experiment: String,
    /// System instance name → its kind, for labels.
    pub kinds: BTreeMap<String, String>,
}

/// A registry entry: a sink's name and how to build it from its section.
pub struct SinkDef {
    /// Key of its `[export.<name>]` section.
    pub name: &'static str,
    /// Parses and checks its section (a usage error for bad input) and builds it; connects
    /// to nothing.
    pub build: fn(&toml::Table, &SinkContext) -> anyhow::Result<Box<dyn Sink>>,
}

/// Every sink.
pub const REGISTRY: &[SinkDef] = &[kafka::DEF, pushgateway::DEF, git::DEF];

/// The registry's names, comma-separated.
pub fn names() -> String {
    REGISTRY
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses `[export.<name>]` sections that name no sink.
pub fn check_names(export: &BTreeMap<String, toml::Table>) -> anyhow::Result<()> {
    for name in export.keys() {
        if !REGISTRY.iter().any(|d| d.name == name) {
            return Err(usage(format!(
                "config has a section [export.{name}] but there is no sink '{name}'; sinks: {}",
                names()
            )));
        }
    }
    Ok(())
}

/// Parses sink section `[export.<name>]` into its settings; errors name the section.
pub fn parse<T: DeserializeOwned>(name: &str, section: &toml::Table) -> anyhow::Result<T> {
    T::deserialize(toml::Value::Table(section.clone())).map_err(|e| {
        usage(format!(
            "config [export.{name}]: {}; fix the section (see the README's export reference)",
            e.to_string().trim()
        ))
    })
}

/// The keys every sink section accepts besides its own.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Common {
    /// Items waiting to be sent, at most, rounded up to a power of two (the batch being sent
    /// holds as many again).
    queue: usize,
    /// Seconds the sink may take at the end of a run to send what it holds.
    flush_timeout_s: f64,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            queue: 1024,
            flush_timeout_s: 15.0,
        }
    }
}

impl Common {
    const KEYS: [&str; 2] = ["queue", "flush_timeout_s"];

    /// Takes the common keys out of a section, leaving the sink's own.
    fn split(name: &str, section: &toml::Table) -> anyhow::Result<(Common, toml::Table)> {
        let mut own = section.clone();
        let mut common = toml::Table::new();
        for k in Common::KEYS {
            if let Some(v) = own.remove(k) {
                common.insert(k.into(), v);
            }
        }
        let c: Common = parse(name, &common)?;
        if c.queue == 0 || !(c.flush_timeout_s > 0.0 && c.flush_timeout_s <= 3600.0) {
            crate::bail_usage!(
                "config [export.{name}]: queue must be at least 1 and flush_timeout_s between 0 \
                 and 3600 seconds"
            );
        }
        Ok((c, own))
    }
}

/// The configured sinks of a run, each behind its queue and task.
#[derive(Default)]
pub struct Sinks {
    workers: Vec<Worker>,
}

impl Sinks {
    /// Builds every sink of `[export]` and starts its task; bad input is a usage error and
    /// starts nothing. Must be called inside a Tokio runtime.
    pub fn from_config(
        export: &BTreeMap<String, toml::Table>,
        ctx: &SinkContext,
    ) -> anyhow::Result<Sinks> {
        check_names(export)?;
        let mut built = Vec::new();
        for def in REGISTRY {
            if let Some(section) = export.get(def.name) {
                let (common, own) = Common::split(def.name, section)?;
                built.push(((def.build)(&own, ctx)?, common));
            }
        }
        Ok(Sinks {
            workers: built
                .into_iter()
                .map(|(sink, c)| {
                    Worker::spawn(sink, c.queue, Duration::from_secs_f64(c.flush_timeout_s))
                })
                .collect(),
        })
    }

    /// Hands a stage record to the sinks that take it; never waits.
    pub fn stage(&self, record: &StageRecord) {
        self.offer(|| Item::Stage(Arc::new(record.clone())), ItemKind::Stage);
    }

    /// Hands a trace sample to the sinks that take it; never waits.
    pub fn sample(&self, sample: &TraceLine) {
        self.offer(|| Item::Sample(Arc::new(sample.clone())), ItemKind::Sample);
    }

    /// Makes the item once, and only if some sink takes it.
    fn offer(&self, make: impl FnOnce() -> Item, kind: ItemKind) {
        let mut takers = self.workers.iter().filter(|w| w.takes(kind)).peekable();
        if takers.peek().is_some() {
            let item = make();
            for w in takers {
                w.offer(item.clone());
            }
        }
    }

    /// Ends the run's export. The sinks that take records and samples send what they hold,
    /// each within its flush deadline; then `seal` writes the directory's final files,
    /// knowing their counts (the engine puts them in the metadata); then the sinks that take
    /// the directory (git) get it, within their deadlines. Returns every sink's counts.
    /// Only an error of `seal` is returned: a sink's failure is in its counts.
    pub async fn finish(
        self,
        dir: &Path,
        seal: impl FnOnce(&BTreeMap<String, SinkStats>) -> anyhow::Result<()>,
    ) -> anyhow::Result<BTreeMap<String, SinkStats>> {
        let (at_end, streaming): (Vec<Worker>, Vec<Worker>) = self
            .workers
            .into_iter()
            .partition(|w| w.takes(ItemKind::Directory));
        let mut stats: BTreeMap<String, SinkStats> =
            futures_util::future::join_all(streaming.into_iter().map(Worker::close))
                .await
                .into_iter()
                .collect();
        seal(&stats)?;
        let item = Item::Directory(Arc::from(PathBuf::from(dir)));
        for w in &at_end {
            w.offer(item.clone());
        }
        stats.extend(futures_util::future::join_all(at_end.into_iter().map(Worker::close)).await);
        Ok(stats)
    }
}

#[cfg(test)]
mod tests;
