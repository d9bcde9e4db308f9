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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, DescribeLogDirsRequest, DescribeLogDirsResponse,
    IncrementalAlterConfigsRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Message as ProtocolMessage, Request, StrBytes,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::poll::Pacer;
use super::{
    ErrorKind, ServerInfo, SysError, SysResult, System, SystemContext, SystemDef, check_namespace,
    error_chain, parse_section,
};
use crate::dataset::{DataSet, FileEntry};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    name: "kafka",
    embedded: false,
    about: "Kafka protocol: batched acks=all production, tombstone or DeleteRecords deletes",
    build,
};

/// Key of the registry's marker record.
const MARKER_KEY: &str = "dedup-lab";
/// Value of the registry's marker record.
const MARKER_VALUE: &str = "registry of dedup-lab: every topic under this prefix that it created";
/// The cluster id tansu reports unless started with another `--cluster-id`.
const TANSU_CLUSTER_ID: &str = "tansu_cluster";
/// Room for record batch framing above the largest record, in the topic's and producer's caps.
const FRAMING: u32 = 64 << 10;
/// Bulk path: bytes of records awaiting acknowledgement before the next file is sent.
const WINDOW_BYTES: u64 = 64 << 20;
/// Bulk path: records awaiting acknowledgement (below librdkafka's 100 000 queue limit).
const WINDOW_RECORDS: usize = 10_000;

/// How a file is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DeleteMode {
    /// A null-value record for its key, in a topic created with `cleanup.policy=compact`.
    #[default]
    Tombstone,
    /// DeleteRecords up to and including its record: the log start moves past it.
    DeleteRecords,
}

/// Producer compression codec (`compression.type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl DeleteMode {
    fn name(self) -> &'static str {
        match self {
            DeleteMode::Tombstone => "tombstone",
            DeleteMode::DeleteRecords => "delete_records",
        }
    }
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// `[systems.kafka]`
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    bootstrap: String,
    /// Topic prefix; must start with `dedup_lab`. Topics are `<prefix>-<n>`.
    prefix: String,
    delete_mode: DeleteMode,
    /// Whether a reset deletes the topics of earlier resets (never with tansu: its
    /// DeleteTopics deletes every topic of the cluster). If not, a reset retires the topic
    /// before it: see [`Kafka::retire`].
    delete_topics: bool,
    compression: Compression,
    /// Bulk path: how long the producer waits to fill a batch.
    linger_ms: u32,
    /// Bulk path: largest batch, bytes.
    batch_bytes: u32,
    /// Largest file (key + value) the lab topics accept.
    max_message_bytes: u32,
    /// Replicas of each lab topic.
    replication_factor: i32,
    /// Seconds one operation may take: metadata, admin request, delivery, reading a topic.
    timeout_s: u64,
    /// Seconds maintenance waits for the log cleaner.
    maintenance_timeout_s: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bootstrap: "127.0.0.1:9092".into(),
            prefix: "dedup_lab".into(),
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

fn build(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    let s: Settings = parse_section(DEF.name, ctx.section)?;
    check_namespace(DEF.name, "prefix", &s.prefix)?;
    let valid_broker = |b: &str| {
        b.trim()
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    };
    if !s.bootstrap.split(',').all(valid_broker) {
        crate::bail_usage!(
            "config [systems.kafka] bootstrap = \"{}\" is not a list of brokers: write \
             host:port[,host:port…]",
            s.bootstrap
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
            "config [systems.kafka]: max_message_bytes must be 1024..=536870912, batch_bytes \
             1..=max_message_bytes, linger_ms at most 900000, replication_factor and timeout_s \
             at least 1"
        );
    }
    Ok(Box::new(Kafka {
        settings: s,
        clients: None,
        topic: None,
        log_dirs: None,
        alter_configs: None,
        tansu: false,
    }))
}

/// The Kafka adapter.
struct Kafka {
    settings: Settings,
    clients: Option<Clients>,
    /// The topic of the current reset.
    topic: Option<Topic>,
    /// DescribeLogDirs version both sides speak, if the broker offers it: the native probe.
    log_dirs: Option<i16>,
    /// IncrementalAlterConfigs version both sides speak, if the broker offers it: how a
    /// compacted topic that stays is retired.
    alter_configs: Option<i16>,
    /// Whether the broker is tansu, which deletes a retired topic's records within a second.
    tansu: bool,
}

/// The context of every librdkafka client. Logs and background errors go to `debug`: while a
/// broker is down librdkafka reports it from each client several times a second, which at
/// the default log level would flood the terminal. Background errors that mean the broker
/// was unreachable (a failed connect, all brokers down) are kept in [`Link`]: librdkafka
/// reconnects by itself and sends what was queued meanwhile, so no delivery fails, but the
/// stage ran across an outage. Idle connections closed by the broker raise no such error.
#[derive(Clone)]
struct Quiet(Arc<Link>);

/// The latest lost connection the clients of one `connect` reported, and when.
#[derive(Default)]
struct Link {
    lost: std::sync::Mutex<Option<(Instant, String)>>,
}

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "librdkafka", ?level, "{fac} {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        if error.rdkafka_error_code().is_some_and(lost) {
            let mut latest = self.0.lost.lock().unwrap_or_else(|p| p.into_inner());
            *latest = Some((Instant::now(), format!("{error}: {reason}")));
        }
    }
}

impl ConsumerContext for Quiet {}

type Producer = FutureProducer<Quiet>;
type MetaClient = BaseConsumer<Quiet>;

/// librdkafka handles, made at connect.
struct Clients {
    /// Bulk path: batches with the configured linger and batch size.
    bulk: Producer,
    /// Per-file path: no linger, so each record leaves at once and its latency is the ack's.
    single: Producer,
    admin: AdminClient<Quiet>,
    /// Metadata and watermarks; never assigned partitions.
    meta: Arc<MetaClient>,
    /// What these clients (and the readers made for counts) saw of lost connections.
    link: Arc<Link>,
}

/// The topic of the current reset.
struct Topic {
    name: String,
    /// `host:port` of its partition's leader, where DescribeLogDirs goes.
    leader: String,
    /// Files in it by offset, from delivery reports: what `delete_one` may delete.
    live: BTreeMap<i64, String>,
    /// Its log as far as known (read by a count or by maintenance, or the acknowledged
    /// records the watermarks confirmed): the next count reads only what follows.
    read: Option<LogRead>,
    /// Whether a tombstone was produced to it; until then every record is a file of its own.
    tombstoned: bool,
}

fn no_topic() -> SysError {
    SysError::failed("kafka: no lab topic: reset first")
}

/// A partition's log read from `low` (its log start then) up to `next`. A Kafka log only
/// grows at its end, and compaction removes only records a later one supersedes, so what a
/// read found stays true while the log start is unchanged: a later read need only go on from
/// `next`. Reading a 64 MiB topic takes tansu about 1.7 s.
#[derive(Debug, Default)]
struct LogRead {
    low: i64,
    next: i64,
    state: LogState,
}

/// What a topic holds, read from its log start to its high watermark.
#[derive(Debug, Default)]
struct LogState {
    /// Records read, each offset once.
    records: u64,
    /// Per key: whether its latest record holds a value (`false`: a tombstone).
    latest: HashMap<Vec<u8>, bool>,
}

impl LogRead {
    /// The log as the delivery reports describe it, when the broker's watermarks confirm
    /// that it holds exactly the acknowledged records: `live` spans `low..high`, one record
    /// per offset. The count after the tombstones then reads only the tombstones, and the
    /// values are read once, by maintenance: the broker compacts while a whole read of
    /// uncompacted values would take seconds, and that wait belongs to maintenance.
    fn acknowledged(live: &BTreeMap<i64, String>, low: i64, high: i64) -> Option<LogRead> {
        let spans = live.first_key_value().map(|(&o, _)| o) == Some(low)
            && live.last_key_value().map(|(&o, _)| o + 1) == Some(high)
            && live.len() as i64 == high - low;
        spans.then(|| LogRead {
            low,
            next: high,
            state: LogState {
                records: live.len() as u64,
                latest: live
                    .values()
                    .map(|k| (k.as_bytes().to_vec(), true))
                    .collect(),
            },
        })
    }
}

impl LogState {
    fn live_keys(&self) -> u64 {
        self.latest.values().filter(|&&v| v).count() as u64
    }
}

/// librdkafka codes that mean the broker cannot be reached or stopped answering in time, or
/// answered that it cannot serve at all: `Unknown` (UNKNOWN_SERVER_ERROR) is what tansu
/// returns for every request once its storage has gone away, as it does while stopping.
fn lost(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        Unknown
            | BrokerTransportFailure
            | AllBrokersDown
            | Resolve
            | MessageTimedOut
            | OperationTimedOut
            | TimedOutQueue
            | RequestTimedOut
            | NetworkException
            | BrokerNotAvailable
    )
}

/// A lost connection (transport failure, every broker down, a request or delivery timed out)
/// or any other failure.
fn classify(context: &str, e: &KafkaError) -> SysError {
    let code = match e {
        KafkaError::AdminOp(code) => Some(*code),
        _ => e.rdkafka_error_code(),
    };
    let msg = format!("kafka: {context}: {}", error_chain(e));
    if matches!(e, KafkaError::Canceled) || code.is_some_and(lost) {
        SysError::connection(msg)
    } else {
        SysError::failed(msg)
    }
}

fn err(context: &str) -> impl FnOnce(KafkaError) -> SysError + '_ {
    move |e| classify(context, &e)
}

/// Runs blocking librdkafka or sqlite calls off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> SysResult<T> + Send + 'static,
) -> SysResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SysError::failed(format!("kafka: blocking task: {e}")))?
}

/// Awaits one delivery report.
async fn deliver(future: DeliveryFuture, what: &str) -> SysResult<Delivery> {
    match future.await {
        Ok(Ok(delivery)) => Ok(delivery),
        Ok(Err((e, _))) => Err(classify(what, &e)),
        Err(_) => Err(SysError::connection(format!(
            "kafka: {what}: the producer closed before the delivery report"
        ))),
    }
}

/// A request frame: length, header, body.
fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
) -> anyhow::Result<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("dedup-lab")));
    let mut body = BytesMut::new();
    header.encode(&mut body, R::header_version(version))?;
    request.encode(&mut body, version)?;
    let mut frame = BytesMut::with_capacity(4 + body.len());
    frame.put_i32(i32::try_from(body.len())?);
    frame.put(body);
    Ok(frame.freeze())
}

/// Decodes the reply (after its length prefix) to a request of type `R` sent at `version`.
fn decode_response<R: Request>(
    mut reply: Bytes,
    version: i16,
    correlation_id: i32,
) -> anyhow::Result<R::Response> {
    let header = ResponseHeader::decode(&mut reply, R::Response::header_version(version))?;
    anyhow::ensure!(
        header.correlation_id == correlation_id,
        "reply to correlation id {}, expected {correlation_id}",
        header.correlation_id
    );
    R::Response::decode(&mut reply, version)
}

/// Sends one request on a fresh plain-TCP connection to `addr` and decodes the reply. For the
/// two calls librdkafka does not expose: ApiVersions (what the broker offers) and
/// DescribeLogDirs (partition sizes).
async fn call<R: Request>(
    addr: &str,
    request: &R,
    version: i16,
    timeout: Duration,
) -> SysResult<R::Response> {
    let api = ApiKey::try_from(R::KEY).map_or("request".to_string(), |k| format!("{k:?}"));
    let frame = encode_request(request, version, 1)
        .map_err(|e| SysError::failed(format!("kafka: encoding {api}: {e:#}")))?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(&frame).await?;
        let len = stream.read_i32().await?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= 64 << 20)
            .ok_or_else(|| std::io::Error::other(format!("reply length {len}")))?;
        let mut reply = vec![0; len];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(Bytes::from(reply))
    };
    let reply = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            SysError::connection(format!("kafka: {api} to {addr}: no reply in {timeout:?}"))
        })?
        .map_err(|e| SysError::connection(format!("kafka: {api} to {addr}: {e}")))?;
    decode_response::<R>(reply, version, 1)
        .map_err(|e| SysError::failed(format!("kafka: decoding the {api} reply: {e:#}")))
}

/// The version of request `R` to use: the highest both the broker and the codec speak.
fn shared_version<R: Request + ProtocolMessage>(apis: &[ApiVersion]) -> Option<i16> {
    let ours = R::VERSIONS;
    let theirs = apis.iter().find(|a| a.api_key == R::KEY)?;
    let max = theirs.max_version.min(ours.max);
    (max >= theirs.min_version.max(ours.min)).then_some(max)
}

/// The versions of the APIs the adapter relies on, for the server record.
fn describe_apis(apis: &[ApiVersion]) -> String {
    let used = [
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::DeleteRecords,
        ApiKey::DescribeLogDirs,
        ApiKey::IncrementalAlterConfigs,
    ];
    let list: Vec<String> = used
        .iter()
        .map(|&key| match apis.iter().find(|a| a.api_key == key as i16) {
            Some(a) => format!("{key:?} v{}-{}", a.min_version, a.max_version),
            None => format!("{key:?} -"),
        })
        .collect();
    format!("{} APIs ({})", apis.len(), list.join(", "))
}

/// Bytes of partition 0 of `topic` over the log dirs of a DescribeLogDirs response (future
/// logs of a move between dirs excluded: they are not the serving copy).
fn partition_bytes(response: &DescribeLogDirsResponse, topic: &str) -> Result<u64, String> {
    if response.error_code != 0 {
        return Err(format!("error code {}", response.error_code));
    }
    let mut total = None;
    for dir in &response.results {
        if dir.error_code != 0 {
            return Err(format!(
                "log dir {}: error code {}",
                dir.log_dir.as_str(),
                dir.error_code
            ));
        }
        for p in dir
            .topics
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| &t.partitions)
            .filter(|p| p.partition_index == 0 && !p.is_future_key)
        {
            *total.get_or_insert(0) += u64::try_from(p.partition_size).unwrap_or(0);
        }
    }
    total.ok_or_else(|| format!("no log dir of the leader holds {topic}"))
}

/// Reads partition 0 of `topic` up to its high watermark, keeping only what [`LogState`]
/// needs (values are dropped as they arrive): from where `earlier` stopped if the log still
/// starts where it did then, else from the log start. Fails when no new record arrives for
/// `timeout`.
fn read_log(
    config: &ClientConfig,
    ctx: Quiet,
    topic: &str,
    earlier: Option<LogRead>,
    timeout: Duration,
) -> SysResult<LogRead> {
    let consumer: MetaClient = config
        .create_with_context(ctx)
        .map_err(err("creating a consumer"))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, timeout)
        .map_err(err("reading watermarks"))?;
    let mut read = match earlier {
        Some(r) if r.low == low && r.next <= high => r,
        _ => LogRead {
            low,
            next: low,
            state: LogState::default(),
        },
    };
    if high <= read.next {
        return Ok(read);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(read.next))
        .map_err(err("assigning"))?;
    consumer.assign(&tpl).map_err(err("assigning"))?;
    let mut progress = Instant::now();
    let LogRead { next, state, .. } = &mut read;
    while *next < high {
        if progress.elapsed() > timeout {
            return Err(SysError::connection(format!(
                "kafka: reading {topic}: no record for {timeout:?} at offset {next} of {high} \
                 (the broker stopped serving it)"
            )));
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(e)) => return Err(classify(&format!("reading {topic}"), &e)),
            // tansu re-delivers records after the gaps compaction leaves: count each offset once.
            Some(Ok(m)) if m.offset() < *next => {}
            Some(Ok(m)) => {
                progress = Instant::now();
                *next = m.offset() + 1;
                state.records += 1;
                if let Some(key) = m.key() {
                    state.latest.insert(key.to_vec(), m.payload().is_some());
                }
            }
        }
    }
    Ok(read)
}

/// `host:port` of the leader of partition 0 of `topic`, if the broker has elected one.
fn find_leader(meta: &MetaClient, topic: &str, timeout: Duration) -> SysResult<Option<String>> {
    let md = meta
        .fetch_metadata(Some(topic), timeout)
        .map_err(err("metadata"))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions())
        .find(|p| p.id() == 0 && p.error().is_none() && p.leader() >= 0)
        .and_then(|p| md.brokers().iter().find(|b| b.id() == p.leader()))
        .map(|b| format!("{}:{}", b.host(), b.port())))
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

    fn registry(&self) -> String {
        format!("{}-registry", self.settings.prefix)
    }

    fn common_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.settings.bootstrap)
            .set("client.id", "dedup-lab")
            .set(
                "socket.timeout.ms",
                (self.settings.timeout_s * 1000).to_string(),
            );
        c
    }

    fn producer(&self, ctx: &Quiet, linger_ms: u32, batch_bytes: u32) -> SysResult<Producer> {
        let s = &self.settings;
        let ms = (s.timeout_s * 1000).to_string();
        // Each record is sent once: a request lost with a connection fails its delivery, so the
        // stage fails and the engine redoes the cell from a reset, rather than librdkafka
        // resending behind the measurement. Idempotence (which needs resends) stays off; it
        // also brought tansu down when a producer from before a broker restart came back.
        self.common_config()
            .set("acks", "all")
            .set("enable.idempotence", "false")
            .set("message.send.max.retries", "0")
            .set("compression.type", s.compression.name())
            .set("linger.ms", linger_ms.to_string())
            .set("batch.size", batch_bytes.to_string())
            .set(
                "message.max.bytes",
                (s.max_message_bytes + FRAMING).to_string(),
            )
            .set("message.timeout.ms", &ms)
            .set("request.timeout.ms", &ms)
            .create_with_context(ctx.clone())
            .map_err(err("creating a producer"))
    }

    /// A consumer that reads a partition from a given offset, committing nothing.
    fn reader_config(&self) -> ClientConfig {
        let mut c = self.common_config();
        c.set("group.id", "dedup-lab-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // tansu holds every fetch this long even when it has records, and librdkafka
            // waits out the fetch in flight when a reader closes: at 100 ms each read of a
            // few records took 200 ms, and a cell makes about six.
            .set("fetch.wait.max.ms", "10")
            .set(
                "max.partition.fetch.bytes",
                (self.settings.max_message_bytes + FRAMING).to_string(),
            );
        c
    }

    /// Reads `topic`, going on from `earlier` where [`read_log`] can.
    async fn read(&self, topic: &str, earlier: Option<LogRead>) -> SysResult<LogRead> {
        let ctx = Quiet(Arc::clone(&self.clients()?.link));
        let (config, topic, timeout) = (self.reader_config(), topic.to_string(), self.timeout());
        blocking(move || read_log(&config, ctx, &topic, earlier, timeout)).await
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

    /// DeleteRecords: moves the log start of `topic` to `offset`.
    async fn delete_before(&self, topic: &str, offset: i64) -> SysResult<()> {
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
    /// reads every value of a topic once per tombstoned key, which for 4096 keys of 64 KiB
    /// outlasted any timeout. A store of topics never emptied only grows (tansu's reads and
    /// its maintenance slowed tenfold at 3 GB).
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
        let response = call(&topic.leader, &request, version, self.timeout()).await?;
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

    /// The registered topics, after checking that everything under the prefix is dedup-lab's;
    /// creates the registry when the prefix is unused.
    async fn owned_topics(&self, existing: &BTreeSet<String>) -> SysResult<BTreeSet<String>> {
        let registry = self.registry();
        let refuse = |what: String| {
            SysError::unsafe_namespace(format!(
                "kafka: {what}: it was not created by dedup-lab; refusing to use the prefix {}- \
                 — configure another prefix",
                self.settings.prefix
            ))
        };
        if !existing.contains(&registry) {
            if let Some(t) = existing.first() {
                return Err(refuse(format!(
                    "topic {t} is under the prefix but there is no registry topic {registry}"
                )));
            }
            self.create_topic(&registry, Some("compact")).await?;
            self.send_one(&registry, MARKER_KEY, Some(MARKER_VALUE.as_bytes()))
                .await?;
            return Ok(BTreeSet::new());
        }
        let log = self.read(&registry, None).await?.state;
        if log.latest.get(MARKER_KEY.as_bytes()) != Some(&true) {
            return Err(refuse(format!(
                "topic {registry} holds no dedup-lab marker record"
            )));
        }
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
            return Err(refuse(format!(
                "topic {t} is under the prefix but not in the registry {registry}"
            )));
        }
        Ok(registered)
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
}

#[async_trait]
impl System for Kafka {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn native_copies(&self) -> Option<u32> {
        // DescribeLogDirs asks the partition leader: one copy.
        self.log_dirs.map(|_| 1)
    }

    fn target(&self) -> String {
        let s = &self.settings;
        format!(
            "{} topics {}-* (delete_mode {}, compression {})",
            s.bootstrap,
            s.prefix,
            s.delete_mode.name(),
            s.compression.name()
        )
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        let s = &self.settings;
        let link = Arc::new(Link::default());
        let ctx = Quiet(Arc::clone(&link));
        let meta: MetaClient = self
            .common_config()
            .create_with_context(ctx.clone())
            .map_err(err("creating a client"))?;
        let meta = Arc::new(meta);
        let clients = Clients {
            bulk: self.producer(&ctx, s.linger_ms, s.batch_bytes)?,
            single: self.producer(&ctx, 0, s.batch_bytes)?,
            admin: self
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
        let versions = call(&broker, &ApiVersionsRequest::default(), 0, timeout).await?;
        if versions.error_code != 0 {
            return Err(SysError::failed(format!(
                "kafka: ApiVersions to {broker}: error code {}",
                versions.error_code
            )));
        }
        let cluster = cluster.unwrap_or_else(|| "unknown".into());
        self.tansu = cluster == TANSU_CLUSTER_ID;
        if self.tansu {
            if s.delete_topics {
                return Err(SysError::unsafe_namespace(
                    "kafka: the broker is tansu (cluster id tansu_cluster), whose DeleteTopics \
                     deletes every topic of the cluster; set delete_topics = false",
                ));
            }
            if s.delete_mode == DeleteMode::DeleteRecords {
                return Err(SysError::failed(
                    "kafka: the broker is tansu (cluster id tansu_cluster), whose DeleteRecords \
                     is unimplemented and leaves the broker unable to answer; set delete_mode = \
                     \"tombstone\"",
                ));
            }
        }
        self.log_dirs = shared_version::<DescribeLogDirsRequest>(&versions.api_keys);
        self.alter_configs = shared_version::<IncrementalAlterConfigsRequest>(&versions.api_keys);
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
            version: format!("cluster {cluster}; {}", describe_apis(&versions.api_keys)),
        })
    }

    /// Makes a fresh topic (refusing if the prefix holds topics dedup-lab did not create),
    /// after deleting the earlier ones if `delete_topics`, else retiring the one before.
    async fn reset(&mut self) -> SysResult<()> {
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
        let prefix = format!("{}-", self.settings.prefix);
        let meta = Arc::clone(&self.clients()?.meta);
        let timeout = self.timeout();
        let listed = prefix.clone();
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
        let registered = self.owned_topics(&existing).await?;
        if self.settings.delete_topics {
            self.delete_registered(&registered, &existing).await?;
        }
        // Names grow with time and past every earlier one, so a deleted name is never reused.
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
        let registry = self.registry();
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
        self.topic = Some(Topic {
            name,
            leader,
            live: BTreeMap::new(),
            read: None,
            tombstoned: false,
        });
        Ok(())
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        let topic = self.topic()?.name.clone();
        let producer = &self.clients()?.bulk;
        let mut files = ds.stream();
        let mut pending = std::collections::VecDeque::new();
        let mut in_flight = 0u64;
        let mut acked = Vec::new();
        loop {
            let next = files.next().await;
            let done = next.is_none();
            // Await the oldest deliveries while the window is full, or all of them at the end.
            while pending.len() >= WINDOW_RECORDS
                || (in_flight > WINDOW_BYTES)
                || (done && !pending.is_empty())
            {
                let (future, name, size): (DeliveryFuture, String, u64) =
                    pending.pop_front().expect("non-empty");
                let d = deliver(future, "producing").await?;
                in_flight -= size;
                acked.push((d.offset, name));
            }
            let Some(item) = next else { break };
            let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
            self.check_size(&f, content.len())?;
            let record = FutureRecord::to(&topic).key(&f.name).payload(&content[..]);
            let future = producer
                .send_result(record)
                .map_err(|(e, _)| classify("producing", &e))?;
            in_flight += f.size;
            pending.push_back((future, f.name, f.size));
        }
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
            None => self.read(&topic, None).await?,
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
            read = self.read(&topic, None).await?;
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
        let read = self.read(&name, earlier).await?;
        let live = read.state.live_keys();
        self.topic_mut()?.read = Some(read);
        Ok(live)
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        let Some(version) = self.log_dirs else {
            return Err(SysError::failed(
                "kafka: the broker does not offer DescribeLogDirs",
            ));
        };
        let t = self.topic()?;
        let request = DescribeLogDirsRequest::default().with_topics(Some(vec![
            DescribableLogDirTopic::default()
                .with_topic(TopicName(StrBytes::from_string(t.name.clone())))
                .with_partitions(vec![0]),
        ]));
        let response = call(&t.leader, &request, version, self.timeout()).await?;
        partition_bytes(&response, &t.name)
            .map_err(|e| SysError::failed(format!("kafka: DescribeLogDirs: {e}")))
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

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::describe_log_dirs_response::{
        DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
    };
    use kafka_protocol::messages::{ApiVersionsResponse, ResponseHeader};
    use kafka_protocol::protocol::decode_request_header_from_buffer;

    use super::*;

    /// A reply as a broker writes it: response header and body, without the length prefix.
    fn reply<R: Encodable + HeaderVersion>(body: &R, version: i16, correlation_id: i32) -> Bytes {
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut buf, R::header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    fn partition(size: i64, future: bool) -> DescribeLogDirsPartition {
        DescribeLogDirsPartition::default()
            .with_partition_index(0)
            .with_partition_size(size)
            .with_is_future_key(future)
    }

    fn topic(name: &'static str, parts: Vec<DescribeLogDirsPartition>) -> DescribeLogDirsTopic {
        DescribeLogDirsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(name)))
            .with_partitions(parts)
    }

    fn log_dirs() -> DescribeLogDirsResponse {
        DescribeLogDirsResponse::default().with_results(vec![
            DescribeLogDirsResult::default()
                .with_log_dir(StrBytes::from_static_str("/data/a"))
                .with_topics(vec![
                    topic("dedup_lab-1", vec![partition(1000, false)]),
                    topic("other", vec![partition(7, false)]),
                ]),
            DescribeLogDirsResult::default()
                .with_log_dir(StrBytes::from_static_str("/data/b"))
                .with_topics(vec![topic(
                    "dedup_lab-1",
                    vec![partition(234, false), partition(99, true)],
                )]),
        ])
    }

    #[test]
    fn decodes_describe_log_dirs_replies_of_every_version() {
        for version in 1..=4 {
            let bytes = reply(&log_dirs(), version, 7);
            let decoded = decode_response::<DescribeLogDirsRequest>(bytes, version, 7).unwrap();
            assert_eq!(
                partition_bytes(&decoded, "dedup_lab-1"),
                Ok(1234),
                "v{version}"
            );
            assert!(partition_bytes(&decoded, "dedup_lab-2").is_err());
        }
        let wrong = reply(&log_dirs(), 2, 8);
        assert!(decode_response::<DescribeLogDirsRequest>(wrong, 2, 7).is_err());
    }

    #[test]
    fn a_failed_log_dir_is_an_error_not_a_smaller_size() {
        let mut r = log_dirs();
        r.results[1].error_code = 56; // KAFKA_STORAGE_ERROR
        assert!(partition_bytes(&r, "dedup_lab-1").is_err());
    }

    #[test]
    fn encodes_describe_log_dirs_requests_a_broker_can_read() {
        let request = DescribeLogDirsRequest::default().with_topics(Some(vec![
            DescribableLogDirTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("dedup_lab-1")))
                .with_partitions(vec![0]),
        ]));
        for version in 1..=4 {
            let mut frame = encode_request(&request, version, 3).unwrap();
            let len = bytes::Buf::get_i32(&mut frame);
            assert_eq!(len as usize, frame.len());
            let header = decode_request_header_from_buffer(&mut frame).unwrap();
            assert_eq!(header.request_api_key, ApiKey::DescribeLogDirs as i16);
            assert_eq!(header.request_api_version, version);
            assert_eq!(header.correlation_id, 3);
            let decoded = DescribeLogDirsRequest::decode(&mut frame, version).unwrap();
            assert_eq!(decoded, request);
        }
    }

    fn api(key: ApiKey, min: i16, max: i16) -> ApiVersion {
        ApiVersion::default()
            .with_api_key(key as i16)
            .with_min_version(min)
            .with_max_version(max)
    }

    #[test]
    fn uses_describe_log_dirs_only_in_a_version_both_sides_speak() {
        assert_eq!(
            shared_version::<DescribeLogDirsRequest>(&[api(ApiKey::Produce, 0, 11)]),
            None
        );
        assert_eq!(
            shared_version::<DescribeLogDirsRequest>(&[api(ApiKey::DescribeLogDirs, 0, 0)]),
            None
        );
        assert_eq!(
            shared_version::<DescribeLogDirsRequest>(&[api(ApiKey::DescribeLogDirs, 0, 2)]),
            Some(2)
        );
        assert_eq!(
            shared_version::<DescribeLogDirsRequest>(&[api(ApiKey::DescribeLogDirs, 1, 9)]),
            Some(4)
        );
        // Each request type is looked up by its own key.
        let apis = [
            api(ApiKey::DescribeLogDirs, 0, 4),
            api(ApiKey::IncrementalAlterConfigs, 0, 1),
        ];
        assert_eq!(
            shared_version::<IncrementalAlterConfigsRequest>(&apis),
            Some(1)
        );
        assert_eq!(
            shared_version::<IncrementalAlterConfigsRequest>(&apis[..1]),
            None
        );
    }

    #[test]
    fn acknowledged_records_stand_for_the_log_only_where_the_watermarks_confirm_them() {
        let live = |offsets: &[i64]| -> BTreeMap<i64, String> {
            offsets.iter().map(|&o| (o, format!("f{o}"))).collect()
        };
        let read = LogRead::acknowledged(&live(&[5, 6, 7]), 5, 8).expect("spans 5..8");
        assert_eq!((read.low, read.next, read.state.records), (5, 8, 3));
        assert_eq!(read.state.live_keys(), 3);
        assert_eq!(read.state.latest.get(b"f6".as_slice()), Some(&true));
        // A record the broker holds beyond the acknowledged ones, one missing from the
        // middle, or a log start moved past them: read the log instead.
        assert!(LogRead::acknowledged(&live(&[5, 6, 7]), 5, 9).is_none());
        assert!(LogRead::acknowledged(&live(&[5, 7]), 5, 8).is_none());
        assert!(LogRead::acknowledged(&live(&[5, 6, 7]), 6, 8).is_none());
        assert!(LogRead::acknowledged(&live(&[]), 0, 0).is_none());
    }

    #[test]
    fn decodes_api_versions_replies() {
        let body = ApiVersionsResponse::default().with_api_keys(vec![
            api(ApiKey::Produce, 0, 11),
            api(ApiKey::DescribeLogDirs, 1, 4),
        ]);
        let decoded = decode_response::<ApiVersionsRequest>(reply(&body, 0, 1), 0, 1).unwrap();
        assert_eq!(
            describe_apis(&decoded.api_keys),
            "2 APIs (Produce v0-11, Fetch -, ListOffsets -, CreateTopics -, DeleteTopics -, \
             DeleteRecords -, DescribeLogDirs v1-4, IncrementalAlterConfigs -)"
        );
    }

    #[test]
    fn timeouts_and_transport_failures_are_connection_losses() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(classify("x", &e).kind, ErrorKind::ConnectionLost);
        let e = KafkaError::AdminOp(RDKafkaErrorCode::BrokerTransportFailure);
        assert_eq!(classify("x", &e).kind, ErrorKind::ConnectionLost);
        let e = KafkaError::AdminOp(RDKafkaErrorCode::TopicAlreadyExists);
        assert_eq!(classify("x", &e).kind, ErrorKind::Failed);
    }
}
