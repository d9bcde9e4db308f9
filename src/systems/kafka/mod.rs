//! `kafka`: any broker speaking the Kafka protocol (Apache Kafka, Redpanda, tansu, …), through
//! librdkafka. Namespace: one-partition topics `<prefix>-<n>`, a fresh one per reset, each
//! listed in the registry topic `<prefix>-registry` whose marker record says dedup-lab created
//! it. Bulk path: batched `acks=all` production (linger and batch size are knobs), every
//! delivery awaited, no hidden resends. Per file: one record, done when the broker acknowledged it; deleted
//! by a tombstone under compaction or by DeleteRecords (`delete_mode`). Maintenance: wait
//! (bounded) for the log cleaner. Native size: DescribeLogDirs, where the broker offers it.
//! The `fs` probe reads a local broker's log directory; a broker that stores its log in SQLite
//! (tansu) is measured with the `sqlite` probe as well, which sees pages in use where the file
//! reuses freed ones.

mod client;
mod lab;
mod log;
mod meter;
mod native;
mod settings;
mod tansu;
mod topics;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiVersionsRequest, DescribeLogDirsRequest, IncrementalAlterConfigsRequest,
};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use rdkafka::producer::future_producer::Delivery;

use super::toolkit::{Holding, Marker, Pacer, Window};
use super::{System, SystemContext, SystemDef, TEST_HOOKS};
use crate::dataset::{DataSet, FileEntry};
use crate::model::{Meter, ServerInfo, SysError, SysResult};
use client::{Clients, MetaClient, blocking, classify, deliver, err};
use log::{LogRead, read_log};
use settings::DeleteMode;
// The quiet client context serves the Kafka sink too (see `crate::sinks::kafka`).
pub use client::{Link, Quiet};
pub use settings::{Settings, check_bootstrap};
use topics::{Found, Topic, no_topic};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    kind: "kafka",
    aliases: &[],
    embedded: false,
    about: "Kafka protocol: batched acks=all production, tombstone or DeleteRecords deletes",
    build,
    lab: &[&lab::Kafka],
    native_loader: Some(native::LOADER),
    tests: TEST_HOOKS,
};

/// Key of the registry's marker record; its value is the marker text.
const MARKER_KEY: &str = "dedup-lab";
/// Room for record batch framing above the largest record, in the topic's and producer's caps.
const FRAMING: u32 = 64 << 10;
/// Bulk path: bytes of records awaiting acknowledgement before the next file is sent.
const WINDOW_BYTES: u64 = 64 << 20;
/// Bulk path: records awaiting acknowledgement (below librdkafka's 100 000 queue limit).
const WINDOW_RECORDS: usize = 10_000;

fn build(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    let (settings, prefix) = settings::parse_section(ctx)?;
    Ok(Box::new(Kafka {
        name: ctx.instance.to_string(),
        prefix,
        settings,
        clients: None,
        topic: None,
        found: None,
        current: meter::Shared::default(),
        log_dirs: None,
        alter_configs: None,
        tansu: false,
    }))
}

/// The Kafka adapter.
struct Kafka {
    name: String,
    /// Topic prefix: topics are `<prefix>-<n>`, the registry `<prefix>-registry`.
    prefix: String,
    settings: Settings,
    clients: Option<Clients>,
    /// The topic of the current reset.
    topic: Option<Topic>,
    /// What the last inspection of the prefix found, for the reset that follows it.
    found: Option<Found>,
    /// The topic's name and leader, shared with the meter.
    current: meter::Shared,
    /// DescribeLogDirs version both sides speak, if the broker offers it: the native probe.
    log_dirs: Option<i16>,
    /// IncrementalAlterConfigs version both sides speak, if the broker offers it: how a
    /// compacted topic that stays is retired.
    alter_configs: Option<i16>,
    /// Whether the broker is tansu, which deletes a retired topic's records within a second.
    tansu: bool,
}

impl Kafka {
    fn clients(&self) -> SysResult<&Clients> {
        self.clients
            .as_ref()
            .ok_or_else(|| SysError::connection("kafka: not connected"))
    }

    fn topic(&self) -> SysResult<&Topic> {
        self.topic.as_ref().ok_or_else(no_topic)
    }

    fn topic_mut(&mut self) -> SysResult<&mut Topic> {
        self.topic.as_mut().ok_or_else(no_topic)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.settings.timeout_s)
    }

    /// Reads `topic`, going on from `earlier` where [`read_log`] can, keeping the values of
    /// key `keep`.
    async fn read(
        &self,
        topic: &str,
        earlier: Option<LogRead>,
        keep: Option<&[u8]>,
    ) -> SysResult<LogRead> {
        let ctx = Quiet(Arc::clone(&self.clients()?.link));
        let config = self.settings.reader_config();
        let (topic, timeout, keep) = (topic.to_string(), self.timeout(), keep.map(<[u8]>::to_vec));
        blocking(move || read_log(&config, ctx, &topic, earlier, keep.as_deref(), timeout)).await
    }

    async fn watermarks(&self, topic: &str) -> SysResult<(i64, i64)> {
        let meta = Arc::clone(&self.clients()?.meta);
        let (topic, timeout) = (topic.to_string(), self.timeout());
        blocking(move || {
            meta.fetch_watermarks(&topic, 0, timeout)
                .map_err(err("reading watermarks"))
        })
        .await
    }

    /// Produces one record through the per-file producer and waits for its acknowledgement.
    async fn send_one(&self, topic: &str, key: &str, value: Option<&[u8]>) -> SysResult<Delivery> {
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        let future = self
            .clients()?
            .single
            .send_result(record)
            .map_err(|(e, _)| classify("producing", &e))?;
        deliver(future, "producing").await
    }

    fn check_size(&self, file: &FileEntry, len: usize) -> SysResult<()> {
        let max = self.settings.max_message_bytes;
        if file.name.len() + len > max as usize {
            return Err(SysError::failed(format!(
                "kafka: file {} ({len} bytes) is larger than max_message_bytes = {max}; raise \
                 max_message_bytes to what the broker accepts (tansu cannot serve records of \
                 5 MiB or more)",
                file.name
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl System for Kafka {
    fn name(&self) -> &str {
        &self.name
    }

    fn target(&self) -> String {
        let s = &self.settings;
        format!(
            "{} topics {}-* (delete_mode {}, compression {})",
            s.bootstrap,
            self.prefix,
            s.delete_mode.name(),
            s.compression.name()
        )
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        let s = &self.settings;
        let link = Arc::new(Link::default());
        let ctx = Quiet(Arc::clone(&link));
        let meta: MetaClient = s
            .common_config()
            .create_with_context(ctx.clone())
            .map_err(err("creating a client"))?;
        let meta = Arc::new(meta);
        let clients = Clients {
            bulk: s.producer(&ctx, s.linger_ms, s.batch_bytes)?,
            single: s.producer(&ctx, 0, s.batch_bytes)?,
            admin: s
                .common_config()
                .create_with_context(ctx)
                .map_err(err("creating an admin client"))?,
            meta: Arc::clone(&meta),
            link,
        };
        let timeout = self.timeout();
        let bootstrap = s.bootstrap.clone();
        let (broker, cluster) = blocking(move || {
            let md = meta
                .fetch_metadata(None, timeout)
                .map_err(|e| classify(&format!("cannot reach the brokers at {bootstrap}"), &e))?;
            let broker = md
                .brokers()
                .first()
                .map(|b| format!("{}:{}", b.host(), b.port()))
                .ok_or_else(|| SysError::failed("kafka: the cluster lists no brokers"))?;
            Ok((broker, meta.client().fetch_cluster_id(timeout)))
        })
        .await?;
        let versions = wire::call(&broker, &ApiVersionsRequest::default(), 0, timeout).await?;
        if versions.error_code != 0 {
            return Err(SysError::failed(format!(
                "kafka: ApiVersions to {broker}: error code {}",
                versions.error_code
            )));
        }
        let cluster = cluster.unwrap_or_else(|| "unknown".into());
        self.tansu = tansu::check(&cluster, s)?;
        self.log_dirs = wire::shared_version::<DescribeLogDirsRequest>(&versions.api_keys);
        self.alter_configs =
            wire::shared_version::<IncrementalAlterConfigsRequest>(&versions.api_keys);
        if !s.delete_topics
            && s.delete_mode == DeleteMode::Tombstone
            && self.alter_configs.is_none()
        {
            tracing::warn!(
                "kafka: the broker does not offer IncrementalAlterConfigs, so topics of earlier \
                 resets keep their records (delete_topics = false)"
            );
        }
        self.clients = Some(clients);
        Ok(ServerInfo {
            product: "Kafka protocol broker".into(),
            version: format!(
                "cluster {cluster}; {}",
                wire::describe_apis(&versions.api_keys)
            ),
        })
    }

    async fn meter(&mut self) -> SysResult<Box<dyn Meter>> {
        let topic = std::sync::Arc::clone(&self.current);
        Ok(Box::new(meter::KafkaMeter::new(
            &self.settings,
            topic,
            self.log_dirs,
        )?))
    }

    async fn inspect(&mut self) -> SysResult<Holding> {
        self.inspect_prefix().await
    }

    async fn recreate(&mut self, marker: &Marker) -> SysResult<()> {
        self.recreate_topics(marker).await
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        let topic = self.topic()?.name.clone();
        let producer = &self.clients()?.bulk;
        let mut files = ds.stream();
        let mut window = Window::new(WINDOW_RECORDS, WINDOW_BYTES);
        let mut acked = Vec::new();
        while let Some(item) = files.next().await {
            let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
            self.check_size(&f, content.len())?;
            let send = || {
                let record = FutureRecord::to(&topic).key(&f.name).payload(&content[..]);
                let future = producer
                    .send_result(record)
                    .map_err(|(e, _)| classify("producing", &e))?;
                let name = f.name.clone();
                Ok(async move { Ok((deliver(future, "producing").await?.offset, name)) })
            };
            acked.extend(window.push(f.size, send).await?);
        }
        acked.extend(window.finish().await?);
        let topic = self.topic.as_mut().expect("checked above");
        topic.live.extend(acked);
        Ok(())
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        self.check_size(file, content.len())?;
        let topic = self.topic()?.name.clone();
        let d = self.send_one(&topic, &file.name, Some(&content)).await?;
        if let Some(t) = self.topic.as_mut() {
            t.live.insert(d.offset, file.name.clone());
        }
        Ok(())
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        let t = self.topic()?;
        let Some(offset) = t
            .live
            .iter()
            .find_map(|(&o, name)| (*name == file.name).then_some(o))
        else {
            return Err(SysError::failed(format!(
                "kafka: file {} is not in topic {}",
                file.name, t.name
            )));
        };
        let topic = t.name.clone();
        match self.settings.delete_mode {
            DeleteMode::Tombstone => {
                self.send_one(&topic, &file.name, None).await?;
                if let Some(t) = self.topic.as_mut() {
                    t.tombstoned = true;
                }
            }
            DeleteMode::DeleteRecords => {
                if let Some((&oldest, name)) = t.live.first_key_value()
                    && oldest != offset
                {
                    return Err(SysError::failed(format!(
                        "kafka: DeleteRecords deletes a log prefix: file {} is at offset \
                         {offset} but {name} at offset {oldest} is older; delete in insertion \
                         order or use delete_mode = \"tombstone\"",
                        file.name
                    )));
                }
                self.delete_before(&topic, offset + 1).await?;
            }
        }
        if let Some(t) = self.topic.as_mut() {
            t.live.remove(&offset);
        }
        Ok(())
    }

    async fn maintenance(&mut self) -> SysResult<String> {
        let topic = self.topic()?.name.clone();
        if self.settings.delete_mode == DeleteMode::DeleteRecords {
            let (low, high) = self.watermarks(&topic).await?;
            return Ok(format!(
                "nothing to wait for: DeleteRecords moved the log start of {topic} to {low} (high \
                 watermark {high}); the broker removes segment files below it at its own \
                 retention check, which the protocol does not report"
            ));
        }
        // Poll the log until each key has one record left, with pauses up to 2 s: every poll
        // reads the whole topic, as only a whole read sees what compaction removed. Polls
        // start from the log as the count after the deletes knew it.
        let start = Instant::now();
        let limit = Duration::from_secs(self.settings.maintenance_timeout_s);
        let mut pacer = Pacer::new(limit).cap(Duration::from_secs(2));
        let mut read = match self.topic_mut()?.read.take() {
            Some(known) => known,
            None => self.read(&topic, None, None).await?,
        };
        let before = read.state.records;
        loop {
            let state = &read.state;
            let keys = state.latest.len() as u64;
            let tombstones = keys - state.live_keys();
            let note = if state.records == keys {
                Some(format!(
                    "log compaction of {topic}: {before} records before, {} after {:.1} s: one \
                     per key ({tombstones} tombstones)",
                    state.records,
                    start.elapsed().as_secs_f64()
                ))
            } else if !pacer.pause().await {
                Some(format!(
                    "log compaction of {topic} did not finish within {} s: {} records remain for \
                     {keys} keys ({before} before); brokers compact closed segments on their own \
                     schedule",
                    limit.as_secs(),
                    state.records
                ))
            } else {
                None
            };
            if let Some(note) = note {
                // The next count goes on from this read.
                self.topic_mut()?.read = Some(read);
                return Ok(note);
            }
            read = self.read(&topic, None, None).await?;
        }
    }

    /// Acknowledged records are durable as far as the protocol can tell: nothing to flush.
    async fn settle(&mut self) -> SysResult<()> {
        Ok(())
    }

    /// The records between the log start and the high watermark, while every record is a
    /// file of its own (DeleteRecords removes whole records; no tombstone yet); else the live
    /// keys, read from the log as far as it is not known yet (see [`LogRead::acknowledged`]).
    /// Files have distinct keys, so a record the broker lost or stored twice shows in either
    /// count.
    async fn count(&mut self) -> SysResult<u64> {
        if self.settings.delete_mode == DeleteMode::DeleteRecords || !self.topic()?.tombstoned {
            let (low, high) = self.watermarks(&self.topic()?.name).await?;
            if self.settings.delete_mode == DeleteMode::Tombstone {
                let topic = self.topic_mut()?;
                topic.read = LogRead::acknowledged(&topic.live, low, high);
            }
            return Ok((high - low).max(0) as u64);
        }
        let topic = self.topic_mut()?;
        let (name, earlier) = (topic.name.clone(), topic.read.take());
        let read = self.read(&name, earlier, None).await?;
        let live = read.state.live_keys();
        self.topic_mut()?.read = Some(read);
        Ok(live)
    }

    fn interrupted_since(&self, since: Instant) -> Option<String> {
        let link = &self.clients.as_ref()?.link;
        let lost = link.lost.lock().unwrap_or_else(|p| p.into_inner());
        match &*lost {
            Some((at, e)) if *at >= since => {
                Some(format!("kafka: the broker was unreachable ({e})"))
            }
            _ => None,
        }
    }
}
