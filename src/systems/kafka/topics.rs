//! The lab's topics: a registry topic per prefix whose marker record says dedup-lab created
//! it and whose other keys name every topic dedup-lab made there; fresh topics per reset (one
//! per container of the layout); retiring, deleting and waiting for topics.

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

/// A topic of the current reset: one container of the layout.
pub struct Topic {
    /// Its name.
    pub name: String,
    /// `host:port` of its partition's leader, where DescribeLogDirs goes.
    pub leader: String,
    /// The record key of each record in it by offset, from delivery reports: what
    /// `delete_one` may delete. With content keys several records share a key until a
    /// tombstone supersedes them all.
    pub live: BTreeMap<i64, String>,
    /// Its log as far as known (read by a count or by maintenance, or the acknowledged
    /// records the watermarks confirmed): the next count reads only what follows.
    pub read: Option<LogRead>,
    /// Whether a tombstone was produced to it; until then every key holds a value.
    pub tombstoned: bool,
}

/// The error of an operation that needs the topics a reset makes.
pub fn no_topic() -> SysError {
    SysError::failed("kafka: no lab topic: reset first")
}

/// The names of the `containers` topics of a reset stamped `stamp` under `prefix`:
/// `<prefix>-<stamp>` alone, as before containers existed, or `<prefix>-<stamp>-c<k>`. A
/// prefix holds only `a-z0-9_`, so no other prefix's topics start with `<prefix>-`.
fn topic_names(prefix: &str, stamp: u64, containers: u32) -> Vec<String> {
    if containers <= 1 {
        return vec![format!("{prefix}-{stamp}")];
    }
    (0..containers)
        .map(|k| format!("{prefix}-{stamp}-c{k}"))
        .collect()
}

/// The stamp of a lab topic's name under `prefix`, with or without a container suffix.
fn stamp_of(prefix: &str, topic: &str) -> Option<u64> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('-')?;
    rest.split('-').next()?.parse().ok()
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

    /// Makes fresh topics for the next stages, one per container: writes the marker into the
    /// registry (creating it when the prefix was unused), deletes the earlier topics if
    /// `delete_topics`, else retires those of the reset before.
    pub(super) async fn recreate_topics(&mut self, marker: &Marker) -> SysResult<()> {
        self.current.lock().expect("topic lock").clear();
        let old = std::mem::take(&mut self.topics);
        if !self.settings.delete_topics {
            self.retire_all(&old).await?;
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
        // Stamps grow with time and past every earlier one, so a deleted name is never reused.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = registered
            .iter()
            .filter_map(|t| stamp_of(&self.prefix, t))
            .max()
            .unwrap_or(0);
        let policy = match self.settings.delete_mode {
            DeleteMode::Tombstone => Some("compact"),
            DeleteMode::DeleteRecords => None,
        };
        let mut made = Vec::new();
        for name in topic_names(&self.prefix, now.max(last + 1), self.layout.containers) {
            // Registered before it exists: a reset cut short leaves a name without a topic,
            // never a topic without a registration.
            self.send_one(&registry, &name, Some(b"created by dedup-lab"))
                .await?;
            if let Err(e) = self.create_topic(&name, policy).await {
                self.send_one(&registry, &name, None).await?;
                return Err(e);
            }
            let leader = self.wait_leader(&name).await?;
            made.push(Topic {
                name,
                leader,
                live: BTreeMap::new(),
                read: None,
                tombstoned: false,
            });
        }
        *self.current.lock().expect("topic lock") = made
            .iter()
            .map(|t| Current {
                name: t.name.clone(),
                leader: t.leader.clone(),
            })
            .collect();
        self.topics = made;
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

    /// Retires the topics of the reset before (see [`Kafka::retire`]) and, on tansu, waits
    /// until they are empty, so that the broker frees their space before the next stage
    /// rather than during it. Housekeeping of topics no cell needs any more: only a lost
    /// connection stops the reset.
    async fn retire_all(&self, old: &[Topic]) -> SysResult<()> {
        let noted = |t: &Topic, r: SysResult<()>| match r {
            Err(e) if e.kind == ErrorKind::ConnectionLost => Err(e),
            Err(e) => {
                tracing::warn!("kafka: retiring {}: {}", t.name, e.message);
                Ok(false)
            }
            Ok(()) => Ok(true),
        };
        let mut retired = Vec::new();
        for t in old {
            if noted(t, self.retire(t).await)? {
                retired.push(t);
            }
        }
        if self.tansu && self.alter_configs.is_some() {
            for t in retired {
                noted(t, self.await_empty(&t.name).await)?;
            }
        }
        Ok(())
    }

    /// Retires a topic that stays on the broker (`delete_topics = false`) so that the broker
    /// can free its space: DeleteRecords up to its end, or, for a compacted topic, the
    /// policy `delete` with `retention.ms = 0`. Tombstones would not do: tansu's compaction
    /// reads every value of a topic once per tombstoned key, which outlasted any timeout for
    /// a few thousand keys. A store of topics never emptied only grows, and tansu's reads and
    /// its maintenance slow down as it does (BENCHMARKS.md has the figures). tansu then
    /// deletes the records within a second: [`Kafka::retire_all`] waits for that.
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
        Ok(())
    }

    /// Polls until `topic` holds no record; bounded by `timeout_s`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_container_keeps_the_old_names_and_stamps_read_back_from_every_form() {
        assert_eq!(topic_names("dedup_lab_k", 17, 1), ["dedup_lab_k-17"]);
        assert_eq!(
            topic_names("dedup_lab_k", 17, 3),
            [
                "dedup_lab_k-17-c0",
                "dedup_lab_k-17-c1",
                "dedup_lab_k-17-c2"
            ]
        );
        assert_eq!(stamp_of("dedup_lab_k", "dedup_lab_k-17"), Some(17));
        assert_eq!(stamp_of("dedup_lab_k", "dedup_lab_k-18-c2"), Some(18));
        assert_eq!(stamp_of("dedup_lab_k", "dedup_lab_k-registry"), None);
        // Another prefix that starts like this one is not read as one of its topics.
        assert_eq!(stamp_of("dedup_lab_k", "dedup_lab_kx-19"), None);
    }
}
