//! The meter: the current topic's log size by DescribeLogDirs on a connection kept open, and
//! its watermarks from a metadata client of its own.

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

/// The topic the adapter writes to now, as the meter needs it: set by each reset.
#[derive(Clone, Debug)]
pub struct Current {
    /// Topic name.
    pub name: String,
    /// `host:port` of its partition's leader.
    pub leader: String,
}

/// The adapter's current topic, shared with its meter.
pub type Shared = Arc<Mutex<Option<Current>>>;

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

    fn current(&self) -> SysResult<Current> {
        self.topic
            .lock()
            .expect("topic lock")
            .clone()
            .ok_or_else(no_topic)
    }

    /// Bytes of partition 0 of the current topic on its leader's disk.
    async fn log_bytes(&mut self, t: &Current) -> SysResult<u64> {
        let Some(version) = self.log_dirs else {
            return Err(SysError::failed(
                "kafka: the broker does not offer DescribeLogDirs",
            ));
        };
        let request = DescribeLogDirsRequest::default().with_topics(Some(vec![
            DescribableLogDirTopic::default()
                .with_topic(TopicName(StrBytes::from_string(t.name.clone())))
                .with_partitions(vec![0]),
        ]));
        let response = self
            .conn
            .call(&t.leader, &request, version, self.timeout)
            .await?;
        wire::partition_bytes(&response, &t.name)
            .map_err(|e| SysError::failed(format!("kafka: DescribeLogDirs: {e}")))
    }
}

#[async_trait]
impl Measured for KafkaMeter {
    fn native_copies(&self) -> Option<u32> {
        // DescribeLogDirs asks the partition leader: one copy.
        self.log_dirs.map(|_| 1)
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        let t = self.current()?;
        self.log_bytes(&t).await
    }
}

#[async_trait]
impl Meter for KafkaMeter {
    /// The partition's log bytes (when the broker offers DescribeLogDirs), its low and high
    /// watermarks, and the records between them.
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>> {
        let t = self.current()?;
        let (meta, name, timeout) = (Arc::clone(&self.meta), t.name.clone(), self.timeout);
        let (low, high) = blocking(move || {
            meta.fetch_watermarks(&name, 0, timeout)
                .map_err(err("reading watermarks"))
        })
        .await?;
        let mut out = BTreeMap::from([
            ("low_watermark".to_string(), low as f64),
            ("high_watermark".to_string(), high as f64),
            ("records".to_string(), (high - low) as f64),
        ]);
        if self.log_dirs.is_some() {
            out.insert("log_bytes".to_string(), self.log_bytes(&t).await? as f64);
        }
        Ok(out)
    }
}
