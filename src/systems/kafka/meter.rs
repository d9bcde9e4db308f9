//! The meter: the current topics' log size by DescribeLogDirs on a connection kept open, and
//! their watermarks from a metadata client of its own, summed over the topics (one per
//! container).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::{DescribeLogDirsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::Consumer;

use super::client::{Link, MetaClient, Quiet, blocking, err};
use super::settings::Settings;
use super::topics::no_topic;
use super::wire;
use crate::model::{Measured, Meter, SysError, SysResult};

/// A topic the adapter writes to now, as the meter needs it: set by each reset.
#[derive(Clone, Debug)]
pub struct Current {
    /// Topic name.
    pub name: String,
    /// `host:port` of its partition's leader.
    pub leader: String,
}

/// The adapter's current topics (none before the first reset), shared with its meter.
pub type Shared = Arc<Mutex<Vec<Current>>>;

/// The Kafka meter.
pub struct KafkaMeter {
    topic: Shared,
    conn: wire::Conn,
    /// DescribeLogDirs version both sides speak, if the broker offers it.
    log_dirs: Option<i16>,
    meta: Arc<MetaClient>,
    timeout: Duration,
}

impl KafkaMeter {
    /// A meter with a metadata client of its own.
    pub fn new(settings: &Settings, topic: Shared, log_dirs: Option<i16>) -> SysResult<Self> {
        let meta: MetaClient = settings
            .common_config()
            .create_with_context(Quiet(Arc::new(Link::default())))
            .map_err(err("creating the meter's client"))?;
        Ok(KafkaMeter {
            topic,
            conn: wire::Conn::default(),
            log_dirs,
            meta: Arc::new(meta),
            timeout: Duration::from_secs(settings.timeout_s),
        })
    }

    fn current(&self) -> SysResult<Vec<Current>> {
        let topics = self.topic.lock().expect("topic lock").clone();
        if topics.is_empty() {
            return Err(no_topic());
        }
        Ok(topics)
    }

    /// Bytes of partition 0 of the current topics on their leaders' disks: one
    /// DescribeLogDirs per leader, naming its topics.
    async fn log_bytes(&mut self, topics: &[Current]) -> SysResult<u64> {
        let Some(version) = self.log_dirs else {
            return Err(SysError::failed(
                "kafka: the broker does not offer DescribeLogDirs",
            ));
        };
        let mut by_leader: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for t in topics {
            by_leader.entry(&t.leader).or_default().push(&t.name);
        }
        let mut total = 0;
        for (leader, names) in by_leader {
            let request = DescribeLogDirsRequest::default().with_topics(Some(
                names
                    .iter()
                    .map(|name| {
                        DescribableLogDirTopic::default()
                            .with_topic(TopicName(StrBytes::from_string(name.to_string())))
                            .with_partitions(vec![0])
                    })
                    .collect(),
            ));
            let response = self
                .conn
                .call(leader, &request, version, self.timeout)
                .await?;
            for name in names {
                total += wire::partition_bytes(&response, name)
                    .map_err(|e| SysError::failed(format!("kafka: DescribeLogDirs: {e}")))?;
            }
        }
        Ok(total)
    }
}

#[async_trait]
impl Measured for KafkaMeter {
    fn native_copies(&self) -> Option<u32> {
        // DescribeLogDirs asks the partition leader: one copy.
        self.log_dirs.map(|_| 1)
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        let topics = self.current()?;
        self.log_bytes(&topics).await
    }
}

#[async_trait]
impl Meter for KafkaMeter {
    /// The partitions' log bytes (when the broker offers DescribeLogDirs), their low and high
    /// watermarks, and the records between them, each summed over the topics.
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>> {
        let topics = self.current()?;
        let (meta, timeout) = (Arc::clone(&self.meta), self.timeout);
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        let (low, high) = blocking(move || {
            names.iter().try_fold((0, 0), |(low, high), name| {
                let (l, h) = meta
                    .fetch_watermarks(name, 0, timeout)
                    .map_err(err("reading watermarks"))?;
                Ok((low + l, high + h))
            })
        })
        .await?;
        let mut out = BTreeMap::from([
            ("low_watermark".to_string(), low as f64),
            ("high_watermark".to_string(), high as f64),
            ("records".to_string(), (high - low) as f64),
        ]);
        if self.log_dirs.is_some() {
            out.insert(
                "log_bytes".to_string(),
                self.log_bytes(&topics).await? as f64,
            );
        }
        Ok(out)
    }
}
