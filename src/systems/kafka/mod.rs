//! `kafka`: any broker speaking the Kafka protocol (Apache Kafka, Redpanda, tansu, …), through
//! librdkafka. Namespace: one-partition topics `<prefix>-<n>`, a fresh one per reset, each
//! listed in the registry topic `<prefix>-registry` whose marker record says dedup-lab created
//! it. A container of the layout is a topic: with N > 1 containers a reset makes N topics
//! `<prefix>-<n>-c<k>`, all registered, all retired or deleted by the next reset. Bulk path:
//! batched `acks=all` production (linger and batch size are knobs), every delivery awaited, no
//! hidden resends. Per file: one record, done when the broker acknowledged it; deleted by a
//! tombstone under compaction or by DeleteRecords (`delete_mode`). Maintenance: wait (bounded)
//! for the log cleaner. Native size: DescribeLogDirs, where the broker offers it. The `fs`
//! probe reads a local broker's log directory; a broker that stores its log in SQLite (tansu)
//! is measured with the `sqlite` probe as well, which sees pages in use where the file reuses
//! freed ones.
//!
//! Record keys are the layout's: the file name, or the content's BLAKE3. Content keys need
//! compacted topics (`delete_mode = "tombstone"`; the other mode is refused): a repeated
//! content is another record of the same key, which the log cleaner removes once a later one
//! supersedes it, so the bytes stay about L until compaction runs (tansu compacts every
//! topic at each of its maintenance ticks, active segment included; Apache Kafka only closed
//! segments). The count is the live keys (the latest record of the key holds a value), which
//! is the distinct contents of each topic before compaction as after; the delete of a
//! content is one tombstone of its key, sent by the engine with the content's last file.

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
use crate::model::{KeyMode, Layout, Meter, ServerInfo, SysError, SysResult};
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
        layout: ctx.layout,
        clients: None,
        topics: Vec::new(),
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
    /// Topic prefix: topics are `<prefix>-<n>` (`<prefix>-<n>-c<k>` with several containers),
    /// the registry `<prefix>-registry`.
    prefix: String,
    settings: Settings,
    /// Record keys and topics per reset.
    layout: Layout,
    clients: Option<Clients>,
    /// The topics of the current reset, by container; empty before the first reset.
    topics: Vec<Topic>,
    /// What the last inspection of the prefix found, for the reset that follows it.
    found: Option<Found>,
    /// The topics' names and leaders, shared with the meter.
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

    /// The topics of the current reset, by container.
    fn topics(&self) -> SysResult<&[Topic]> {
        if self.topics.is_empty() {
            return Err(no_topic());
        }
        Ok(&self.topics)
    }

    /// The index of `file`'s topic in [`Kafka::topics`].
    fn container(&self, file: &FileEntry) -> SysResult<usize> {
        let k = self.layout.container_of(file) as usize;
        self.topics()?.get(k).ok_or_else(no_topic)?;
        Ok(k)
    }

    /// The topics' names for notes: the one name, or the first and last of several.
    fn label(&self) -> String {
        match &self.topics[..] {
            [one] => one.name.clone(),
            [first, .., last] => format!(
                "{} … {} ({} topics)",
                first.name,
                last.name,
                self.topics.len()
            ),
            [] => "no topic".into(),
        }
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

    /// The entries of topic `k`. With file-name keys, while every record is a file of its own
    /// (DeleteRecords removes whole records; no tombstone yet), the records between the log
    /// start and the high watermark: files have distinct keys, so a record the broker lost or
    /// stored twice shows. Otherwise the live keys, read from the log as far as it is not
    /// known yet (see [`LogRead::acknowledged`]): with content keys, the distinct contents the
    /// topic holds, whether the broker has compacted their repeated records yet or not.
    async fn count_topic(&mut self, k: usize) -> SysResult<u64> {
        let records_only = self.settings.delete_mode == DeleteMode::DeleteRecords;
        if records_only || !self.topics[k].tombstoned {
            let (low, high) = self.watermarks(&self.topics[k].name).await?;
            let records = (high - low).max(0) as u64;
            if records_only {
                return Ok(records);
            }
            let t = &mut self.topics[k];
            t.read = LogRead::acknowledged(&t.live, low, high);
            match (self.layout.keys, &t.read) {
                (KeyMode::Name, _) => return Ok(records),
                (KeyMode::Content, Some(read)) => return Ok(read.state.live_keys()),
                (KeyMode::Content, None) => {}
            }
        }
        let t = &mut self.topics[k];
        let (name, earlier) = (t.name.clone(), t.read.take());
        let read = self.read(&name, earlier, None).await?;
        let live = read.state.live_keys();
        self.topics[k].read = Some(read);
        Ok(live)
    }

    fn check_size(&self, file: &FileEntry, len: usize) -> SysResult<()> {
        let max = self.settings.max_message_bytes;
        if self.layout.key_of(file).len() + len > max as usize {
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
            "{} topics {}-* (delete_mode {}, compression {}, record key = file {}, {} topic{} \
             per reset)",
            s.bootstrap,
            self.prefix,
            s.delete_mode.name(),
            s.compression.name(),
            self.layout.keys.name(),
            self.layout.containers,
            if self.layout.containers == 1 { "" } else { "s" }
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
        let names: Vec<String> = self.topics()?.iter().map(|t| t.name.clone()).collect();
        let producer = &self.clients()?.bulk;
        let layout = self.layout;
        let mut files = ds.stream();
        let mut window = Window::new(WINDOW_RECORDS, WINDOW_BYTES);
        let mut acked = Vec::new();
        while let Some(item) = files.next().await {
            let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
            self.check_size(&f, content.len())?;
            let k = self.container(&f)?;
            let key = layout.key_of(&f).to_string();
            let send = || {
                let record = FutureRecord::to(&names[k]).key(&key).payload(&content[..]);
                let future = producer
                    .send_result(record)
                    .map_err(|(e, _)| classify("producing", &e))?;
                Ok(async move { Ok((k, deliver(future, "producing").await?.offset, key)) })
            };
            acked.extend(window.push(f.size, send).await?);
        }
        acked.extend(window.finish().await?);
        for (k, offset, key) in acked {
            self.topics[k].live.insert(offset, key);
        }
        Ok(())
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        self.check_size(file, content.len())?;
        let k = self.container(file)?;
        let key = self.layout.key_of(file);
        let d = self
            .send_one(&self.topics[k].name, key, Some(&content))
            .await?;
        self.topics[k].live.insert(d.offset, key.to_string());
        Ok(())
    }

    /// Deletes the entry of `file`'s key in its topic: a tombstone of the key (which
    /// supersedes every record of it), or DeleteRecords up to its record.
    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        let k = self.container(file)?;
        let key = self.layout.key_of(file);
        let t = &self.topics[k];
        let Some(offset) = t
            .live
            .iter()
            .rev()
            .find_map(|(&o, held)| (held == key).then_some(o))
        else {
            let what = match self.layout.keys {
                KeyMode::Name => format!("file {key}"),
                KeyMode::Content => format!("content {key} (of file {})", file.name),
            };
            return Err(SysError::failed(format!(
                "kafka: {what} is not in topic {}",
                t.name
            )));
        };
        let topic = t.name.clone();
        match self.settings.delete_mode {
            DeleteMode::Tombstone => {
                self.send_one(&topic, key, None).await?;
                self.topics[k].tombstoned = true;
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
        self.topics[k].live.retain(|_, held| held != key);
        Ok(())
    }

    async fn maintenance(&mut self) -> SysResult<String> {
        if self.settings.delete_mode == DeleteMode::DeleteRecords {
            let mut starts = Vec::new();
            for t in self.topics()? {
                let (low, high) = self.watermarks(&t.name).await?;
                starts.push(format!("{} to {low} (high watermark {high})", t.name));
            }
            return Ok(format!(
                "nothing to wait for: DeleteRecords moved the log start of {}; the broker \
                 removes segment files below it at its own retention check, which the protocol \
                 does not report",
                starts.join(", ")
            ));
        }
        // Poll each topic's log until each key has one record left, with pauses up to 2 s:
        // every poll reads the whole topic, as only a whole read sees what compaction removed.
        // Polls start from the log as the count after the deletes knew it.
        let start = Instant::now();
        let limit = Duration::from_secs(self.settings.maintenance_timeout_s);
        let mut pacer = Pacer::new(limit).cap(Duration::from_secs(2));
        let mut reads = Vec::new();
        for k in 0..self.topics()?.len() {
            reads.push(match self.topics[k].read.take() {
                Some(known) => known,
                None => self.read(&self.topics[k].name, None, None).await?,
            });
        }
        let before: u64 = reads.iter().map(|r| r.state.records).sum();
        let compacted = |r: &LogRead| r.state.records == r.state.latest.len() as u64;
        let finished = loop {
            if reads.iter().all(compacted) {
                break true;
            }
            if !pacer.pause().await {
                break false;
            }
            for (k, read) in reads.iter_mut().enumerate() {
                if !compacted(read) {
                    *read = self.read(&self.topics[k].name, None, None).await?;
                }
            }
        };
        let records: u64 = reads.iter().map(|r| r.state.records).sum();
        let keys: u64 = reads.iter().map(|r| r.state.latest.len() as u64).sum();
        let live: u64 = reads.iter().map(|r| r.state.live_keys()).sum();
        let what = self.label();
        let note = if finished {
            format!(
                "log compaction of {what}: {before} records before, {records} after {:.1} s: one \
                 per key ({} tombstones)",
                start.elapsed().as_secs_f64(),
                keys - live
            )
        } else {
            format!(
                "log compaction of {what} did not finish within {} s: {records} records remain \
                 for {keys} keys ({before} before); brokers compact closed segments on their \
                 own schedule",
                limit.as_secs()
            )
        };
        // The next count goes on from these reads.
        for (t, read) in self.topics.iter_mut().zip(reads) {
            t.read = Some(read);
        }
        Ok(note)
    }

    /// Acknowledged records are durable as far as the protocol can tell: nothing to flush.
    async fn settle(&mut self) -> SysResult<()> {
        Ok(())
    }

    /// The entries of every topic (see [`Kafka::count_topic`]).
    async fn count(&mut self) -> SysResult<u64> {
        let mut total = 0;
        for k in 0..self.topics()?.len() {
            total += self.count_topic(k).await?;
        }
        Ok(total)
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
