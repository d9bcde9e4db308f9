//! `[export.kafka]`: stage records and trace samples as JSON values to two topics of any
//! Kafka-protocol broker (PLAINTEXT, as the kafka system). The sink creates missing topics
//! (one partition, the broker's replication default). Its producer is the system adapter's
//! quiet librdkafka client with resends left to librdkafka within the delivery timeout;
//! idempotence stays off, because tansu served nothing more after an idempotent producer
//! outlived its restart. A batch that failed is sent again whole, so a record can arrive
//! twice: its key names the record (experiment, cell, attempt, stage; or experiment, system,
//! probe for samples), so a consumer can tell.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use super::{Item, ItemKind, Sink, SinkContext, SinkDef, parse};
use crate::error::usage;
use crate::model::{StageRecord, TraceItem, TraceLine};
use crate::secret::redact;
use crate::systems::kafka::{Link, Quiet, Settings as ClientSettings, check_bootstrap};

/// Registry entry.
pub const DEF: SinkDef = SinkDef {
    name: "kafka",
    build,
};

/// The keys of `[export.kafka]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub bootstrap: String,
    /// Topic of stage records.
    pub topic_stages: String,
    /// Topic of trace samples.
    pub topic_samples: String,
    /// Seconds one delivery or admin request may take before the send counts as failed.
    pub timeout_s: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bootstrap: "127.0.0.1:9092".into(),
            topic_stages: "dedup_lab_stages".into(),
            topic_samples: "dedup_lab_samples".into(),
            timeout_s: 10,
        }
    }
}

/// The value of a stage record or trace line on its topic: the item with the experiment and
/// the system's kind, which the item itself does not carry.
#[derive(Serialize)]
pub struct Message<'a, T: Serialize> {
    /// Experiment id.
    pub experiment: &'a str,
    /// Kind of the item's system instance.
    pub kind: &'a str,
    /// The item.
    #[serde(flatten)]
    pub item: &'a T,
}

/// Key of a stage record: unique per experiment, cell, attempt and stage.
pub fn stage_key(experiment: &str, r: &StageRecord) -> String {
    format!("{experiment}/{}/attempt{}/{}", r.cell, r.attempt, r.stage)
}

/// Key of a trace line: its cell's system and what it holds (a probe, `event`, `metrics`),
/// so that a compacted topic keeps the last of each.
pub fn sample_key(experiment: &str, t: &TraceLine) -> String {
    let what = match &t.item {
        TraceItem::Sample { probe, .. } => probe.as_str(),
        TraceItem::Event { .. } => "event",
        TraceItem::Metrics { .. } => "metrics",
    };
    format!("{experiment}/{}/{what}", t.cell.system)
}

/// Whether Kafka accepts `name` as a topic name.
fn valid_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn build(section: &toml::Table, ctx: &SinkContext) -> anyhow::Result<Box<dyn Sink>> {
    let s: Settings = parse("kafka", section)?;
    check_bootstrap("export.kafka", &s.bootstrap)?;
    for (key, topic) in [
        ("topic_stages", &s.topic_stages),
        ("topic_samples", &s.topic_samples),
    ] {
        if !valid_topic(topic) {
            return Err(usage(format!(
                "config [export.kafka] {key} = \"{topic}\" is not a Kafka topic name: use 1 to \
                 249 of a-z, A-Z, 0-9, '.', '_' and '-'"
            )));
        }
    }
    if s.timeout_s == 0 {
        crate::bail_usage!("config [export.kafka] timeout_s must be at least 1");
    }
    let client = ClientSettings {
        bootstrap: s.bootstrap.clone(),
        timeout_s: s.timeout_s,
        ..Default::default()
    };
    let quiet = Quiet(Arc::new(Link::default()));
    let ms = (s.timeout_s * 1000).to_string();
    let producer = client
        .common_config()
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", &ms)
        .set("request.timeout.ms", &ms)
        .create_with_context(quiet.clone())
        .context("creating the Kafka sink's producer")?;
    let admin = client
        .common_config()
        .create_with_context(quiet)
        .context("creating the Kafka sink's admin client")?;
    Ok(Box::new(Kafka {
        experiment: ctx.experiment.clone(),
        kinds: ctx.kinds.clone(),
        timeout: Duration::from_secs(s.timeout_s),
        settings: s,
        producer,
        admin,
        topics_ready: false,
    }))
}

/// The Kafka sink.
struct Kafka {
    experiment: String,
    kinds: std::collections::BTreeMap<String, String>,
    settings: Settings,
    timeout: Duration,
    producer: FutureProducer<Quiet>,
    admin: AdminClient<Quiet>,
    /// Set once both topics exist.
    topics_ready: bool,
}

impl Kafka {
    /// Creates the topics that do not exist yet.
    async fn ensure_topics(&mut self) -> anyhow::Result<()> {
        if self.topics_ready {
            return Ok(());
        }
        let s = &self.settings;
        let new: Vec<NewTopic> = [&s.topic_stages, &s.topic_samples]
            .into_iter()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(-1)))
            .collect();
        let options = AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_topics(&new, &options)
            .await
            .with_context(|| format!("broker {}: creating the topics", s.bootstrap))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => bail!(
                    "broker {}: creating topic {topic}: {code}; create it, or allow this \
                     client to",
                    s.bootstrap
                ),
            }
        }
        self.topics_ready = true;
        Ok(())
    }

    /// Topic, key and value of an item.
    fn message(&self, item: &Item) -> anyhow::Result<Option<(&str, String, String)>> {
        Ok(match item {
            Item::Stage(r) => {
                let kind = self.kinds.get(&r.cell.system).map_or("", String::as_str);
                let value = Message {
                    experiment: &self.experiment,
                    kind,
                    item: &**r,
                };
                Some((
                    self.settings.topic_stages.as_str(),
                    stage_key(&self.experiment, r),
                    json(&value)?,
                ))
            }
            Item::Sample(t) => {
                let kind = self.kinds.get(&t.cell.system).map_or("", String::as_str);
                let value = Message {
                    experiment: &self.experiment,
                    kind,
                    item: &**t,
                };
                Some((
                    self.settings.topic_samples.as_str(),
                    sample_key(&self.experiment, t),
                    json(&value)?,
                ))
            }
            Item::Directory(_) => None,
        })
    }
}

/// JSON text of a message value, secrets redacted (an error text in a record may quote one).
fn json(value: &impl Serialize) -> anyhow::Result<String> {
    Ok(redact(&serde_json::to_string(value)?))
}

#[async_trait]
impl Sink for Kafka {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn takes(&self) -> &'static [ItemKind] {
        &[ItemKind::Stage, ItemKind::Sample]
    }

    async fn healthcheck(&mut self) -> anyhow::Result<()> {
        self.ensure_topics().await
    }

    async fn send(&mut self, items: &[Item]) -> anyhow::Result<()> {
        self.ensure_topics().await?;
        let mut deliveries = Vec::with_capacity(items.len());
        for item in items {
            let Some((topic, key, value)) = self.message(item)? else {
                continue;
            };
            let record = FutureRecord::to(topic).key(&key).payload(&value);
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .with_context(|| {
                    format!("broker {}: queueing a record", self.settings.bootstrap)
                })?;
            deliveries.push(delivery);
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(e).with_context(|| {
                        format!("broker {}: delivering a record", self.settings.bootstrap)
                    });
                }
                Err(_) => bail!(
                    "broker {}: the producer closed before the delivery report",
                    self.settings.bootstrap
                ),
            }
        }
        Ok(())
    }
}
