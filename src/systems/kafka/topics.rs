//! The lab's topics: a registry topic per prefix whose marker record says dedup-lab created
//! it and whose other keys name every topic dedup-lab made there; a fresh topic per reset;
//! retiring, deleting and waiting for topics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::IncrementalAlterConfigsRequest;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::client::{blocking, classify, err, find_leader};
use super::log::LogRead;
use super::meter::Current;
use super::settings::DeleteMode;
use super::{FRAMING, Kafka, MARKER_KEY, wire};
use crate::model::{ErrorKind, SysError, SysResult};
use crate::systems::toolkit::{Holding, Marker, Pacer};

/// The topic of the current reset.
pub struct Topic {
    /// Its name.
    pub name: String,
    /// `host:port` of its partition's leader, where DescribeLogDirs goes.
    pub leader: String,
    /// Files in it by offset, from delivery reports: what `delete_one` may delete.
    pub live: BTreeMap<i64, String>,
    /// Its log as far as known (read by a count or by maintenance, or the acknowledged
    /// records the watermarks confirmed): the next count reads only what follows.
    pub read: Option<LogRead>,
    /// Whether a tombstone was produced to it; until then every record is a file of its own.
    pub tombstoned: bool,
}

/// The error of an operation that needs the topic a reset makes.
pub fn no_topic() -> SysError {
    SysError::failed("kafka: no lab topic: reset first")
}

/// What an inspection of the prefix found, for the reset that follows it.
pub struct Found {
    /// Whether the registry topic exists.
    registry: bool,
    /// Topics under the prefix.
    existing: BTreeSet<String>,
    /// Topics the registry names.
    registered: BTreeSet<String>,
}

impl Kafka {
    fn registry(&self) -> String {
        format!("{}-registry", self.prefix)
    }

    /// What the prefix holds: nothing; dedup-lab's registry with its marker record (whose
    /// value is the marker text) and only registered topics; or anything else. What it found
    /// is kept for [`Kafka::recreate_topics`].
    pub(super) async fn inspect_prefix(&mut self) -> SysResult<Holding> {
        let listed = format!("{}-", self.prefix);
        let meta = Arc::clone(&self.clients()?.meta);
        let timeout = self.timeout();
        let existing: BTreeSet<String> = blocking(move || {
            let md = meta
                .fetch_metadata(None, timeout)
                .map_err(err("metadata"))?;
            Ok(md
                .topics()
                .iter()
                .map(|t| t.name().to_string())
                .filter(|n| n.starts_with(&listed))
                .collect())
        })
        .await?;
        let registry = self.registry();
        self.found = None;
        if !existing.contains(&registry) {
            return Ok(match existing.first() {
                Some(t) => Holding::Foreign(format!(
                    "topic {t} is under the prefix {}- but there is no registry topic {registry}",
                    self.prefix
                )),
                None => {
                    self.found = Some(Found {
                        registry: false,
                        existing,
                        registered: BTreeSet::new(),
                    });
                    Holding::Absent
                }
            });
        }
        let log = self
            .read(&registry, None, Some(MARKER_KEY.as_bytes()))
            .await?
            .state;
        let Some(marker) = log.kept else {
            return Ok(Holding::Foreign(format!(
                "topic {registry} holds no dedup-lab marker record"
            )));
        };
        let registered: BTreeSet<String> = log
            .latest
            .iter()
            .filter(|&(k, &live)| live && k.as_slice() != MARKER_KEY.as_bytes())
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        if let Some(t) = existing
            .iter()
            .find(|t| **t != registry && !registered.contains(*t))
        {
            return Ok(Holding::Foreign(format!(
                "topic {t} is under the prefix but not in the registry {registry}"
            )));
        }
        self.found = Some(Found {
            registry: true,
            existing,
            registered,
        });
        Ok(Holding::Marked(
            String::from_utf8_lossy(&marker).into_owned(),
        ))
    }

    /// Makes a fresh topic for the next stages: writes the marker into the registry (creating
    /// it when the prefix was unused), deletes the earlier topics if `delete_topics`, else
    /// retires the one before.
    pub(super) async fn recreate_topics(&mut self, marker: &Marker) -> SysResult<()> {
        *self.current.lock().expect("topic lock") = None;
        if let Some(old) = self.topic.take()
            && !self.settings.delete_topics
        {
            // Housekeeping of a topic no cell needs any more: only a lost connection stops
            // the reset.
            match self.retire(&old).await {
                Err(e) if e.kind == ErrorKind::ConnectionLost => return Err(e),
                Err(e) => tracing::warn!("kafka: retiring {}: {}", old.name, e.message),
                Ok(()) => {}
            }
        }
        let Found {
            registry: registry_exists,
            existing,
            registered,
        } = self.found.take().ok_or_else(|| {
            SysError::failed("kafka: the prefix was not inspected before a reset")
        })?;
        let registry = self.registry();
        if !registry_exists {
            self.create_topic(&registry, Some("compact")).await?;
        }
        if marker.changed || !registry_exists {
            self.send_one(&registry, MARKER_KEY, Some(marker.text.as_bytes()))
                .await?;
        }
        if self.settings.delete_topics {
            self.delete_registered(&registered, &existing).await?;
        }
        // Names grow with time and past every earlier one, so a deleted name is never reused.
        let prefix = format!("{}-", self.prefix);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = registered
            .iter()
            .filter_map(|t| t.strip_prefix(&prefix)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let name = format!("{prefix}{}", now.max(last + 1));
        // Registered before it exists: a reset cut short leaves a name without a topic, never
        // a topic without a registration.
        self.send_one(&registry, &name, Some(b"created by dedup-lab"))
            .await?;
        let policy = match self.settings.delete_mode {
            DeleteMode::Tombstone => Some("compact"),
            DeleteMode::DeleteRecords => None,
        };
        if let Err(e) = self.create_topic(&name, policy).await {
            self.send_one(&registry, &name, None).await?;
            return Err(e);
        }
        let leader = self.wait_leader(&name).await?;
        *self.current.lock().expect("topic lock") = Some(Current {
            name: name.clone(),
            leader: leader.clone(),
        });
        self.topic = Some(Topic {
            name,
            leader,
            live: BTreeMap::new(),
            read: None,
            tombstoned: false,
        });
        Ok(())
    }

    /// Creates a one-partition topic; `cleanup_policy` `None` keeps the broker's default.
    async fn create_topic(&self, name: &str, cleanup_policy: Option<&str>) -> SysResult<()> {
        let s = &self.settings;
        let cap = (s.max_message_bytes + FRAMING).to_string();
        let mut topic = NewTopic::new(name, 1, TopicReplication::Fixed(s.replication_factor))
            .set("max.message.bytes", &cap);
        if let Some(policy) = cleanup_policy {
            topic = topic.set("cleanup.policy", policy);
        }
        let opts = self.admin_options();
        for r in self
            .clients()?
            .admin
            .create_topics([&topic], &opts)
            .await
            .map_err(err("CreateTopics"))?
        {
            r.map_err(|(t, code)| {
                classify(&format!("creating topic {t}"), &KafkaError::AdminOp(code))
            })?;
        }
        Ok(())
    }

    fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout()))
            .operation_timeout(Some(self.timeout()))
    }

    /// Deletes the registered topics and strikes them from the registry.
    async fn delete_registered(
        &self,
        registered: &BTreeSet<String>,
        existing: &BTreeSet<String>,
    ) -> SysResult<()> {
        let doomed: Vec<&str> = registered
            .intersection(existing)
            .map(String::as_str)
            .collect();
        if !doomed.is_empty() {
            let opts = self.admin_options();
            for r in self
                .clients()?
                .admin
                .delete_topics(&doomed, &opts)
                .await
                .map_err(err("DeleteTopics"))?
            {
                match r {
                    Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) | Ok(_) => {}
                    Err((t, code)) => {
                        return Err(classify(
                            &format!("deleting topic {t}"),
                            &KafkaError::AdminOp(code),
                        ));
                    }
                }
            }
        }
        let registry = self.registry();
        for t in registered {
            self.send_one(&registry, t, None).await?;
        }
        Ok(())
    }

    /// DeleteRecords: moves the log start of `topic` to `offset`.
    pub(super) async fn delete_before(&self, topic: &str, offset: i64) -> SysResult<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
            .map_err(err("DeleteRecords"))?;
        let result = self
            .clients()?
            .admin
            .delete_records(&tpl, &self.admin_options())
            .await
            .map_err(err("DeleteRecords"))?;
        let elem = result
            .find_partition(topic, 0)
            .ok_or_else(|| SysError::failed("kafka: DeleteRecords: no result"))?;
        elem.error().map_err(err("DeleteRecords"))?;
        if elem.offset() != Offset::Offset(offset) {
            return Err(SysError::failed(format!(
                "kafka: DeleteRecords left the log start of {topic} at {:?}, expected {offset}",
                elem.offset()
            )));
        }
        Ok(())
    }

    /// Retires a topic that stays on the broker (`delete_topics = false`) so that the broker
    /// can free its space: DeleteRecords up to its end, or, for a compacted topic, the
    /// policy `delete` with `retention.ms = 0`. Tombstones would not do: tansu's compaction
    /// reads every value of a topic once per tombstoned key, which outlasted any timeout for
    /// a few thousand keys. A store of topics never emptied only grows, and tansu's reads and
    /// its maintenance slow down as it does (BENCHMARKS.md has the figures).
    async fn retire(&self, topic: &Topic) -> SysResult<()> {
        if self.settings.delete_mode == DeleteMode::DeleteRecords {
            if let Some(&last) = topic.live.keys().next_back() {
                self.delete_before(&topic.name, last + 1).await?;
            }
            return Ok(());
        }
        let Some(version) = self.alter_configs else {
            return Ok(()); // said once at connect
        };
        let set = |name: &'static str, value: &'static str| {
            AlterableConfig::default()
                .with_name(StrBytes::from_static_str(name))
                .with_config_operation(0) // SET
                .with_value(Some(StrBytes::from_static_str(value)))
        };
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2) // TOPIC
                .with_resource_name(StrBytes::from_string(topic.name.clone()))
                .with_configs(vec![
                    set("cleanup.policy", "delete"),
                    set("retention.ms", "0"),
                ]),
        ]);
        let response = wire::call(&topic.leader, &request, version, self.timeout()).await?;
        for r in &response.responses {
            if r.error_code != 0 {
                return Err(SysError::failed(format!(
                    "kafka: IncrementalAlterConfigs of {}: error code {} {}",
                    topic.name,
                    r.error_code,
                    r.error_message.as_deref().unwrap_or("")
                )));
            }
        }
        if self.tansu {
            self.await_empty(&topic.name).await?;
        }
        Ok(())
    }

    /// Polls until `topic` holds no record, so that the broker frees a retired topic's space
    /// before the next stage rather than during it; bounded by `timeout_s`.
    async fn await_empty(&self, topic: &str) -> SysResult<()> {
        let mut pacer = Pacer::new(self.timeout());
        loop {
            let (low, high) = self.watermarks(topic).await?;
            if low >= high {
                return Ok(());
            }
            if !pacer.pause().await {
                return Err(SysError::failed(format!(
                    "kafka: {topic} still holds offsets {low}..{high} {} s after its retention \
                     was set to 0",
                    self.settings.timeout_s
                )));
            }
        }
    }

    /// The leader of `topic`'s partition, once the broker has elected one.
    async fn wait_leader(&self, topic: &str) -> SysResult<String> {
        let mut pacer = Pacer::new(self.timeout());
        loop {
            let meta = Arc::clone(&self.clients()?.meta);
            let (name, timeout) = (topic.to_string(), self.timeout());
            if let Some(leader) = blocking(move || find_leader(&meta, &name, timeout)).await? {
                return Ok(leader);
            }
            if !pacer.pause().await {
                return Err(SysError::failed(format!(
                    "kafka: topic {topic} has no partition leader after {} s",
                    self.settings.timeout_s
                )));
            }
        }
    }
}
