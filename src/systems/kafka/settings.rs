//! A Kafka instance's settings: brokers, topic prefix, delete mode, producer knobs.

use serde::{Deserialize, Serialize};

use crate::model::KeyMode;
use crate::systems::SystemContext;
use crate::systems::toolkit::{check_namespace, parse};

/// How a file is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// A null-value record for its key, in a topic created with `cleanup.policy=compact`.
    #[default]
    Tombstone,
    /// DeleteRecords up to and including its record: the log start moves past it.
    DeleteRecords,
}

/// Producer compression codec (`compression.type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// No compression (the default: what is measured is what the data system does).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl DeleteMode {
    /// Name in configs.
    pub fn name(self) -> &'static str {
        match self {
            DeleteMode::Tombstone => "tombstone",
            DeleteMode::DeleteRecords => "delete_records",
        }
    }
}

impl Compression {
    /// librdkafka's `compression.type`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// The keys of a Kafka instance's section.
#[derive(Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub bootstrap: String,
    /// Topic prefix; must start with `dedup_lab`. Topics are `<prefix>-<n>`. Default: see
    /// [`SystemContext::default_namespace`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// How a file is deleted; also the topics' cleanup policy (`tombstone`: compacted topics,
    /// `delete_records`: the broker's default policy).
    pub delete_mode: DeleteMode,
    /// Whether a reset deletes the topics of earlier resets (never with tansu: its
    /// DeleteTopics deletes every topic of the cluster). If not, a reset retires the topic
    /// before it (see `Kafka::retire`).
    pub delete_topics: bool,
    /// Producer compression.
    pub compression: Compression,
    /// Bulk path: how long the producer waits to fill a batch.
    pub linger_ms: u32,
    /// Bulk path: largest batch, bytes.
    pub batch_bytes: u32,
    /// Largest file (key + value) the lab topics accept.
    pub max_message_bytes: u32,
    /// Replicas of each lab topic.
    pub replication_factor: i32,
    /// Seconds one operation may take: metadata, admin request, delivery, reading a topic.
    pub timeout_s: u64,
    /// Seconds maintenance waits for the log cleaner.
    pub maintenance_timeout_s: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bootstrap: "127.0.0.1:9092".into(),
            prefix: None,
            delete_mode: DeleteMode::default(),
            delete_topics: true,
            compression: Compression::default(),
            linger_ms: 5,
            batch_bytes: 1 << 20,
            max_message_bytes: 4 << 20,
            replication_factor: 1,
            timeout_s: 30,
            maintenance_timeout_s: 120,
        }
    }
}

/// Parses and checks an instance's section; returns the settings and the topic prefix.
pub fn parse_section(ctx: &SystemContext<'_>) -> anyhow::Result<(Settings, String)> {
    let s: Settings = parse(ctx.instance, ctx.section)?;
    let prefix = s
        .prefix
        .clone()
        .unwrap_or_else(|| ctx.default_namespace(super::DEF.kind));
    check_namespace(ctx.instance, "prefix", &prefix)?;
    check_bootstrap(&format!("systems.{}", ctx.instance), &s.bootstrap)?;
    if ctx.layout.keys == KeyMode::Content && s.delete_mode == DeleteMode::DeleteRecords {
        // A topic with the delete policy keeps every record of a key, and DeleteRecords cuts
        // a log prefix rather than one key: neither keeps nor deletes a content once.
        crate::bail_usage!(
            "config [systems.{}]: keys = \"content\" needs compacted topics, where a later \
             record of a key supersedes the earlier ones and a tombstone deletes the key, but \
             delete_mode = \"delete_records\" makes topics that keep every record; set \
             delete_mode = \"tombstone\" (or keys = \"name\")",
            ctx.instance
        );
    }
    if !(1024..=512 << 20).contains(&s.max_message_bytes)
        || s.batch_bytes == 0
        || s.batch_bytes > s.max_message_bytes
        || s.linger_ms > 900_000
        || s.replication_factor < 1
        || s.timeout_s == 0
    {
        crate::bail_usage!(
            "config [systems.{}]: max_message_bytes must be 1024..=536870912, batch_bytes \
             1..=max_message_bytes, linger_ms at most 900000, replication_factor and timeout_s \
             at least 1",
            ctx.instance
        );
    }
    Ok((s, prefix))
}

/// Checks a `bootstrap` key of config section `[section]`: a list of `host:port`.
pub fn check_bootstrap(section: &str, bootstrap: &str) -> anyhow::Result<()> {
    let valid_broker = |b: &str| {
        b.trim()
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    };
    if !bootstrap.split(',').all(valid_broker) {
        crate::bail_usage!(
            "config [{section}] bootstrap = \"{bootstrap}\" is not a list of brokers: write \
             host:port[,host:port…]"
        );
    }
    Ok(())
}
