//! librdkafka as the adapter uses it: one quiet client context that notices outages, the
//! producers and readers, error classification, and off-thread calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{DeliveryFuture, FutureProducer};

use super::FRAMING;
use super::settings::Settings;
use crate::model::{SysError, SysResult};

/// The context of every librdkafka client. Logs and background errors go to `debug`: while a
/// broker is down librdkafka reports it from each client several times a second, which at
/// the default log level would flood the terminal. Background errors that mean the broker
/// was unreachable (a failed connect, all brokers down) are kept in [`Link`]: librdkafka
/// reconnects by itself and sends what was queued meanwhile, so no delivery fails, but the
/// stage ran across an outage. Idle connections closed by the broker raise no such error.
#[derive(Clone)]
pub struct Quiet(pub Arc<Link>);

/// The latest lost connection the clients of one `connect` reported, and when.
#[derive(Default)]
pub struct Link {
    /// When, and why.
    pub lost: std::sync::Mutex<Option<(Instant, String)>>,
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

/// A producer of the adapter.
pub type Producer = FutureProducer<Quiet>;
/// A client for metadata, watermarks and reads.
pub type MetaClient = BaseConsumer<Quiet>;

/// librdkafka handles, made at connect.
pub struct Clients {
    /// Bulk path: batches with the configured linger and batch size.
    pub bulk: Producer,
    /// Per-file path: no linger, so each record leaves at once and its latency is the ack's.
    pub single: Producer,
    /// Topics and records.
    pub admin: AdminClient<Quiet>,
    /// Metadata and watermarks; never assigned partitions.
    pub meta: Arc<MetaClient>,
    /// What these clients (and the readers made for counts) saw of lost connections.
    pub link: Arc<Link>,
}

/// librdkafka codes that mean the broker cannot be reached or stopped answering in time, or
/// answered that it cannot serve at all: `Unknown` (UNKNOWN_SERVER_ERROR) is what tansu
/// returns for every request once its storage has gone away, as it does while stopping.
pub fn lost(code: RDKafkaErrorCode) -> bool {
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
pub fn classify(context: &str, e: &KafkaError) -> SysError {
    let code = match e {
        KafkaError::AdminOp(code) => Some(*code),
        _ => e.rdkafka_error_code(),
    };
    let lost = matches!(e, KafkaError::Canceled) || code.is_some_and(lost);
    SysError::from_driver("kafka", context, e, lost)
}

/// Error mapper for librdkafka calls.
pub fn err(context: &str) -> impl FnOnce(KafkaError) -> SysError + '_ {
    move |e| classify(context, &e)
}

/// Runs blocking librdkafka or sqlite calls off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> SysResult<T> + Send + 'static,
) -> SysResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SysError::failed(format!("kafka: blocking task: {e}")))?
}

/// Awaits one delivery report.
pub async fn deliver(future: DeliveryFuture, what: &str) -> SysResult<Delivery> {
    match future.await {
        Ok(Ok(delivery)) => Ok(delivery),
        Ok(Err((e, _))) => Err(classify(what, &e)),
        Err(_) => Err(SysError::connection(format!(
            "kafka: {what}: the producer closed before the delivery report"
        ))),
    }
}

/// `host:port` of the leader of partition 0 of `topic`, if the broker has elected one.
pub fn find_leader(meta: &MetaClient, topic: &str, timeout: Duration) -> SysResult<Option<String>> {
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

impl Settings {
    /// The settings every client shares.
    pub fn common_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", "dedup-lab")
            .set("socket.timeout.ms", (self.timeout_s * 1000).to_string());
        c
    }

    /// A producer that sends each record once, acknowledged by all replicas.
    pub fn producer(&self, ctx: &Quiet, linger_ms: u32, batch_bytes: u32) -> SysResult<Producer> {
        let s = self;
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
    pub fn reader_config(&self) -> ClientConfig {
        let mut c = self.common_config();
        c.set("group.id", "dedup-lab-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // tansu holds every fetch this long even when it has records, and librdkafka
            // waits out the fetch in flight when a reader closes: a long wait makes every
            // short read slow (BENCHMARKS.md has the figures).
            .set("fetch.wait.max.ms", "10")
            .set(
                "max.partition.fetch.bytes",
                (self.max_message_bytes + FRAMING).to_string(),
            );
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ErrorKind;

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
