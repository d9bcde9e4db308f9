//! `nats`: NATS JetStream (server 2.9 and later), through `async-nats`.
//!
//! Namespace: one stream (`stream`, default: see [`SystemContext::default_namespace`]) with the
//! subjects `<stream>.files.>`, file storage, one replica. A container of the layout is a
//! stream: with N > 1 containers the streams are `<stream>-c<k>` with the subjects
//! `<stream>-c<k>.files.>` (a namespace holds only `a-z0-9_`, so no other namespace's streams
//! look like these). Each description holds dedup-lab's marker text (2.9 has no stream
//! metadata); a stream of the namespace without it is foreign. A reset deletes every stream of
//! the namespace, whatever containers an earlier run used, and creates the layout's, which
//! also empties their duplicate windows.
//!
//! Bulk path: asynchronous publishes, at most `max_in_flight` messages and
//! `max_in_flight_bytes` of file content awaiting their acks. Per file: one publish, its ack
//! awaited; one `STREAM.MSG.DELETE` by sequence (with `no_erase`: erasing overwrites the
//! bytes with random ones first and frees nothing more). The adapter keeps each file's
//! sequence from its ack.
//!
//! The layout's keys decide each publish's `Nats-Msg-Id` header: the file name, or the BLAKE3
//! of the content. JetStream drops a message whose id it saw within the stream's duplicate
//! window (`duplicate_window_s`) and acks it as a duplicate with the original's sequence, so
//! with content keys the stream holds each distinct content once: a system that deduplicates
//! logically. Counts stay the server's: the messages the streams hold. The window is a
//! stream's own: a content repeated in another container is stored again there.
//! Several files then share one message; the engine deletes a content only with its last file,
//! and the adapter deletes the message that file's ack named. The window must outlast a stage:
//! content seen earlier than that is stored again.
//!
//! Maintenance: JetStream has no compaction request. In the file store (2.9), a deleted
//! message's bytes stay in its block file (8 MB blocks) until the block holds no live message
//! (the file is removed; the last block is truncated to 0), or until a delete out of
//! insertion order leaves a block that is not the last under a quarter live (above 2 MiB): the
//! server then rewrites it by itself. What a client can ask for is a purge, and only a purge
//! below the first live sequence deletes no live message: it drops the blocks before it and
//! rewrites the first block when more than half of it is deleted. Maintenance does that, a
//! full purge when the stream is empty, and nothing when message 1 is live (the server takes
//! a purge below 1 for a full purge), in each stream. Holes after the first live message stay.
//!
//! Settle: a stream's file store writes each message to its block file before the ack, and
//! answers a delete after updating the block, so the state is current at every ack. It
//! fsyncs every 2 minutes, fixed in 2.9 (2.10 adds `sync_interval`), and no request makes it
//! sync: settling is a round trip that proves the server answers. Native size: the streams'
//! states' `bytes`. The `fs` probe reads the server's store directory when it is local.

mod lab;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::context::{
    CreateStreamErrorKind, GetStreamErrorKind, PublishAckFuture, PublishError, PublishErrorKind,
    RequestError, RequestErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{Config, PurgeError, PurgeErrorKind, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::toolkit::{
    Holding, Marker, Namespaced, ServerDefaults, Target, Window, ownership::is_marker,
};
use super::{System, SystemContext, SystemDef, TEST_HOOKS, TestHooks};
use crate::dataset::{DataSet, FileEntry};
use crate::model::{Measured, Meter, ServerInfo, SysError, SysResult, error_chain};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    kind: "nats",
    aliases: &[],
    embedded: false,
    about: "NATS JetStream: async publish bulk load, per-message delete, Nats-Msg-Id dedup",
    build,
    lab: &[&lab::Nats],
    native_loader: None,
    tests: TestHooks {
        namespace_key: "stream",
        ..TEST_HOOKS
    },
};

const DEFAULTS: ServerDefaults = ServerDefaults {
    port: 4222,
    user: None,
};

/// The keys of a NATS instance's section beside the shared connection keys.
#[derive(Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Stream name; must start with `dedup_lab`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The stream's duplicate window: a publish whose id it saw this recently is dropped.
    pub duplicate_window_s: u64,
    /// Publishes of the bulk path awaiting their acks, at most.
    pub max_in_flight: usize,
    /// File bytes of the bulk path awaiting their acks, at most (at least one file).
    pub max_in_flight_bytes: u64,
    /// Seconds a request or an ack may take.
    pub timeout_s: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stream: None,
            duplicate_window_s: 600,
            max_in_flight: 256,
            max_in_flight_bytes: 64 << 20,
            timeout_s: 30,
        }
    }
}

impl Namespaced for Settings {
    const KEY: &'static str = "stream";

    fn namespace(&self) -> Option<&str> {
        self.stream.as_deref()
    }
}

fn build(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    let t: Target<Settings> = Target::of(ctx, DEF.kind, DEFAULTS)?;
    let s = &t.settings;
    if s.duplicate_window_s == 0
        || s.max_in_flight == 0
        || s.max_in_flight_bytes == 0
        || s.timeout_s == 0
    {
        crate::bail_usage!(
            "config [systems.{}]: duplicate_window_s, max_in_flight, max_in_flight_bytes and \
             timeout_s must be at least 1",
            ctx.instance
        );
    }
    if t.server.password.is_some() && t.server.user.is_none() {
        crate::bail_usage!(
            "config [systems.{}]: a password is set but no user; set user to the account's \
             user name",
            ctx.instance
        );
    }
    let streams = stream_names(&t.namespace, t.layout.containers);
    Ok(Box::new(Nats {
        name: ctx.instance.to_string(),
        files: streams.iter().map(|_| Holders::default()).collect(),
        streams,
        t,
        conn: None,
        found: None,
    }))
}

/// The streams of namespace `namespace` spread over `containers`: the namespace's own name
/// alone, as before containers existed, or `<namespace>-c<k>`.
fn stream_names(namespace: &str, containers: u32) -> Vec<String> {
    if containers <= 1 {
        return vec![namespace.to_string()];
    }
    (0..containers)
        .map(|k| format!("{namespace}-c{k}"))
        .collect()
}

/// Whether stream `name` is one of namespace `namespace`'s, for any number of containers.
fn in_namespace(namespace: &str, name: &str) -> bool {
    name == namespace
        || name
            .strip_prefix(namespace)
            .and_then(|rest| rest.strip_prefix("-c"))
            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
}

/// Which stored message holds each file, learnt from the acks since the last reset.
#[derive(Debug, Default)]
struct Holders {
    /// File name → the sequence of the message holding its content.
    seq_of: HashMap<String, u64>,
    /// Sequences of messages stored since the last reset and not deleted.
    live: HashSet<u64>,
}

impl Holders {
    /// Records the ack of file `name`'s publish. A duplicate ack names the message that holds
    /// the content already, which must be one stored since the reset and not deleted:
    /// otherwise the window remembers a deleted message, and the file is stored nowhere.
    fn acked(&mut self, name: &str, ack: &PublishAck) -> SysResult<()> {
        if self.seq_of.contains_key(name) {
            return Err(SysError::failed(format!(
                "nats: {name} was inserted twice since the last reset"
            )));
        }
        let seq = ack.sequence;
        if ack.duplicate && !self.live.contains(&seq) {
            return Err(SysError::failed(format!(
                "nats: the publish of {name} was dropped as a duplicate of message {seq}, which \
                 is not stored since the last reset: the duplicate window remembers a deleted \
                 message with the same Nats-Msg-Id, so the content is stored nowhere"
            )));
        }
        self.live.insert(seq);
        self.seq_of.insert(name.to_string(), seq);
        Ok(())
    }

    /// Forgets file `name`; returns the sequence of the message to delete. (With content ids
    /// the engine deletes a content only with its last file.)
    fn release(&mut self, name: &str) -> SysResult<u64> {
        let seq = *self.seq_of.get(name).ok_or_else(|| {
            SysError::failed(format!(
                "nats: {name} was not inserted since the last reset: its message is unknown"
            ))
        })?;
        if !self.live.remove(&seq) {
            return Err(SysError::failed(format!(
                "nats: message {seq}, which held the content of {name}, was deleted already \
                 (with content ids a content goes with the last file that holds it)"
            )));
        }
        self.seq_of.remove(name);
        Ok(seq)
    }
}

/// A connection: the client, its JetStream context, and when it last lost the server.
struct Conn {
    client: Client,
    js: jetstream::Context,
    dropped_at: Arc<Mutex<Option<Instant>>>,
}

/// The stream's info, `None` when it does not exist.
async fn stream_info(conn: &Conn, stream: &str) -> SysResult<Option<jetstream::stream::Info>> {
    match conn.js.get_stream(stream).await {
        Ok(s) => Ok(Some(s.cached_info().clone())),
        Err(e)
            if matches!(&e.kind(), GetStreamErrorKind::JetStream(api)
            if api.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(classify(
            Some(&conn.client),
            &format!("STREAM.INFO {stream}"),
            &e,
        )),
    }
}

/// The meter: a connection of its own.
struct NatsMeter {
    conn: Conn,
    /// The streams, by container.
    streams: Vec<String>,
}

impl NatsMeter {
    /// Each stream's state.
    async fn states(&self) -> SysResult<Vec<jetstream::stream::State>> {
        let mut out = Vec::with_capacity(self.streams.len());
        for stream in &self.streams {
            let info = stream_info(&self.conn, stream).await?;
            let state = info
                .map(|i| i.state)
                .ok_or_else(|| SysError::failed(format!("nats: no stream {stream} to look at")))?;
            out.push(state);
        }
        Ok(out)
    }
}

#[async_trait]
impl Measured for NatsMeter {
    fn native_copies(&self) -> Option<u32> {
        // The stream has one replica, and its state counts one copy.
        Some(1)
    }

    /// The bytes the streams' states count.
    async fn native_size(&mut self) -> SysResult<u64> {
        Ok(self.states().await?.iter().map(|st| st.bytes).sum())
    }
}

#[async_trait]
impl Meter for NatsMeter {
    /// The stream's messages and bytes, its first and last sequence, the deleted messages
    /// inside that range, and its consumers; each summed over the streams of the containers.
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>> {
        let mut out = BTreeMap::new();
        for st in self.states().await? {
            let deleted = (st.last_sequence + 1)
                .saturating_sub(st.first_sequence)
                .saturating_sub(st.messages);
            for (key, value) in [
                ("messages", st.messages),
                ("bytes", st.bytes),
                ("first_sequence", st.first_sequence),
                ("last_sequence", st.last_sequence),
                ("deleted", deleted),
                ("consumers", st.consumer_count as u64),
            ] {
                *out.entry(key.to_string()).or_insert(0.0) += value as f64;
            }
        }
        Ok(out)
    }
}

/// The NATS JetStream adapter.
struct Nats {
    name: String,
    t: Target<Settings>,
    conn: Option<Conn>,
    /// The streams, by container.
    streams: Vec<String>,
    /// Which message holds each file, by container.
    files: Vec<Holders>,
    /// The namespace's streams the last inspection found, for the reset that follows it.
    found: Option<Vec<String>>,
}

/// The answer to `STREAM.MSG.DELETE`.
#[derive(Deserialize)]
struct Deleted {
    success: bool,
}

/// Whether an error (or one of its causes) says the server did not answer in time or the
/// connection broke, as opposed to an answer that refused the request.
fn no_answer(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        let lost = if let Some(r) = s.downcast_ref::<RequestError>() {
            r.kind() == RequestErrorKind::TimedOut
        } else if let Some(p) = s.downcast_ref::<PublishError>() {
            matches!(
                p.kind(),
                PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
            )
        } else if let Some(p) = s.downcast_ref::<PurgeError>() {
            p.kind() == PurgeErrorKind::TimedOut
        } else if let Some(c) =
            s.downcast_ref::<async_nats::jetstream::context::CreateStreamError>()
        {
            c.kind() == CreateStreamErrorKind::TimedOut
        } else {
            s.is::<std::io::Error>()
        };
        if lost {
            return true;
        }
        source = s.source();
    }
    false
}

/// A lost connection (no answer in time, a broken pipe, or a client that is not connected) or
/// any other failure, with the server's own message.
fn classify(
    client: Option<&Client>,
    context: &str,
    e: &(dyn std::error::Error + 'static),
) -> SysError {
    let connected = client.is_some_and(|c| c.connection_state() == State::Connected);
    let mut se = SysError::from_driver("nats", context, e, !connected || no_answer(e));
    if e.downcast_ref::<PublishError>()
        .is_some_and(|p| p.kind() == PublishErrorKind::MaxPayloadExceeded)
    {
        se.message
            .push_str(" (raise the server's max_payload or use smaller files)");
    }
    se
}

/// What maintenance may purge without deleting a live message.
#[derive(Debug, PartialEq, Eq)]
enum PurgePlan {
    /// The stream holds nothing: a full purge.
    All,
    /// Everything below this first live sequence: only deleted messages.
    Below(u64),
    /// Nothing: no message before the first live one. (A purge "below 1" would be a full
    /// purge: the server treats sequence 0 and 1 alike.)
    Nothing,
}

fn purge_plan(messages: u64, first_sequence: u64) -> PurgePlan {
    match (messages, first_sequence) {
        (0, _) => PurgePlan::All,
        (_, first) if first > 1 => PurgePlan::Below(first),
        _ => PurgePlan::Nothing,
    }
}

impl Nats {
    fn conn(&self) -> SysResult<&Conn> {
        self.conn
            .as_ref()
            .ok_or_else(|| SysError::connection("nats: not connected"))
    }

    fn js(&self) -> SysResult<jetstream::Context> {
        Ok(self.conn()?.js.clone())
    }

    /// [`classify`] with this adapter's client.
    fn classify(&self, context: &str, e: &(dyn std::error::Error + 'static)) -> SysError {
        classify(self.conn.as_ref().map(|c| &c.client), context, e)
    }

    fn err<E: std::error::Error + 'static>(&self, context: &str) -> impl FnOnce(E) -> SysError {
        move |e| self.classify(context, &e)
    }

    /// The container of `f`: an index into `streams` and `files`.
    fn container(&self, f: &FileEntry) -> usize {
        self.t.layout.container_of(f) as usize
    }

    fn subject(&self, f: &FileEntry) -> String {
        format!("{}.files.{}", self.streams[self.container(f)], f.id)
    }

    /// Sends `f`'s publish to its container's stream; the returned future resolves to its ack.
    async fn publish(&self, f: &FileEntry, content: Bytes) -> SysResult<PublishAckFuture> {
        let id = self.t.layout.key_of(f);
        let message = PublishMessage::build().payload(content).message_id(id);
        self.js()?
            .send_publish(self.subject(f), message)
            .await
            .map_err(self.err("publish"))
    }

    /// Awaits the ack of `f`'s publish and records which message holds it.
    async fn confirm(&mut self, f: &FileEntry, ack: PublishAckFuture) -> SysResult<()> {
        let ack = ack.await.map_err(self.err("publish ack"))?;
        let k = self.container(f);
        self.files[k].acked(&f.name, &ack)
    }

    /// A new connection to the server, named `name` in its connection list.
    async fn open(&self, name: &str) -> SysResult<(Conn, String)> {
        let (s, timeout) = (&self.t.server, self.t.settings.timeout_s);
        let dropped_at = Arc::new(Mutex::new(None));
        let noted = dropped_at.clone();
        let mut options = ConnectOptions::new()
            .name(name)
            .connection_timeout(s.connect_timeout)
            .request_timeout(Some(Duration::from_secs(timeout)))
            .event_callback(move |event| {
                let noted = noted.clone();
                async move {
                    if matches!(event, Event::Disconnected) {
                        *noted.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    }
                }
            });
        if let (Some(user), Some(password)) = (&s.user, &s.password) {
            options = options.user_and_password(user.clone(), password.expose().to_string());
        }
        let address = format!("nats://{}", s.address());
        let client = options.connect(address.as_str()).await.map_err(|e| {
            let msg = format!(
                "nats: cannot connect to {}: {}",
                s.address(),
                error_chain(&e)
            );
            match e.kind() {
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    SysError::failed(format!("{msg} (check user and password)"))
                }
                ConnectErrorKind::ServerParse | ConnectErrorKind::Tls => SysError::failed(msg),
                _ => SysError::connection(msg),
            }
        })?;
        let server = client.server_info();
        if !server.jetstream {
            return Err(SysError::failed(format!(
                "nats: the server at {} runs without JetStream; start it with -js or a \
                 jetstream {{}} block in its config",
                s.address()
            )));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(timeout))
            .build(client.clone());
        let conn = Conn {
            client,
            js,
            dropped_at,
        };
        Ok((conn, server.version))
    }

    /// The info of container `k`'s stream, or `None` when it does not exist.
    async fn info(&self, k: usize) -> SysResult<Option<jetstream::stream::Info>> {
        stream_info(self.conn()?, &self.streams[k]).await
    }

    fn stream_config(&self, stream: &str, marker: &str) -> Config {
        Config {
            name: stream.to_string(),
            description: Some(marker.into()),
            subjects: vec![format!("{stream}.files.>")],
            storage: StorageType::File,
            num_replicas: 1,
            duplicate_window: Duration::from_secs(self.t.settings.duplicate_window_s),
            ..Default::default()
        }
    }
}

#[async_trait]
impl System for Nats {
    fn name(&self) -> &str {
        &self.name
    }

    fn target(&self) -> String {
        let streams = match &self.streams[..] {
            [one] => format!("stream {one}"),
            [first, .., last] => format!("streams {first} … {last}"),
            [] => "no stream".into(),
        };
        format!(
            "{} {streams} (Nats-Msg-Id = file {})",
            self.t.server.address(),
            self.t.layout.keys.name()
        )
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        let (conn, version) = self.open("dedup-lab").await?;
        self.conn = Some(conn);
        Ok(ServerInfo {
            product: "NATS Server".into(),
            version,
        })
    }

    async fn meter(&mut self) -> SysResult<Box<dyn Meter>> {
        Ok(Box::new(NatsMeter {
            conn: self.open("dedup-lab meter").await?.0,
            streams: self.streams.clone(),
        }))
    }

    /// The namespace's streams, for any number of containers: none, all with dedup-lab's
    /// marker (the first one's text is the holding's), or one without it (foreign).
    async fn inspect(&mut self) -> SysResult<Holding> {
        self.found = None;
        let ns = &self.t.namespace;
        let mut ours: Vec<jetstream::stream::Info> = self
            .js()?
            .streams()
            .try_filter(|info| std::future::ready(in_namespace(ns, &info.config.name)))
            .try_collect()
            .await
            .map_err(self.err("STREAM.LIST"))?;
        ours.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        let mut marker = None;
        for info in &ours {
            match &info.config.description {
                Some(text) if is_marker(text) => {
                    marker.get_or_insert_with(|| text.clone());
                }
                _ => {
                    return Ok(Holding::Foreign(format!(
                        "stream {} exists but its description is not dedup-lab's marker",
                        info.config.name
                    )));
                }
            }
        }
        self.found = Some(ours.into_iter().map(|i| i.config.name).collect());
        Ok(marker.map_or(Holding::Absent, Holding::Marked))
    }

    async fn recreate(&mut self, marker: &Marker) -> SysResult<()> {
        let found = self.found.take().ok_or_else(|| {
            SysError::failed("nats: the namespace was not inspected before a reset")
        })?;
        for name in found {
            self.js()?
                .delete_stream(&name)
                .await
                .map_err(self.err(&format!("STREAM.DELETE {name}")))?;
        }
        self.files = self.streams.iter().map(|_| Holders::default()).collect();
        for name in &self.streams {
            let config = self.stream_config(name, &marker.text);
            self.js()?
                .create_stream(config)
                .await
                .map_err(self.err(&format!("STREAM.CREATE {name}")))?;
        }
        Ok(())
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        let mut files = ds.stream();
        let s = &self.t.settings;
        let mut window = Window::new(s.max_in_flight, s.max_in_flight_bytes);
        let mut acked = Vec::new();
        while let Some(item) = files.next().await {
            let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
            let size = content.len() as u64;
            let ack = self.publish(&f, content).await?;
            let client = self.conn()?.client.clone();
            let k = self.container(&f);
            let answer = async move {
                let a = ack.await;
                a.map(|a| (k, f.name, a))
                    .map_err(|e| classify(Some(&client), "publish ack", &e))
            };
            acked.extend(window.push(size, || Ok(answer)).await?);
        }
        acked.extend(window.finish().await?);
        for (k, name, ack) in acked {
            self.files[k].acked(&name, &ack)?;
        }
        Ok(())
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        let ack = self.publish(file, content).await?;
        self.confirm(file, ack).await
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        let k = self.container(file);
        let seq = self.files[k].release(&file.name)?;
        let subject = format!("STREAM.MSG.DELETE.{}", self.streams[k]);
        let answer: Response<Deleted> = self
            .js()?
            .request(
                subject,
                &serde_json::json!({ "seq": seq, "no_erase": true }),
            )
            .await
            .map_err(self.err("STREAM.MSG.DELETE"))?;
        match answer {
            Response::Ok(Deleted { success: true }) => Ok(()),
            Response::Ok(Deleted { success: false }) => Err(SysError::failed(format!(
                "nats: the server did not delete message {seq} ({})",
                file.name
            ))),
            Response::Err { error } => Err(SysError::failed(format!(
                "nats: deleting message {seq} ({}): {error}",
                file.name
            ))),
        }
    }

    async fn maintenance(&mut self) -> SysResult<String> {
        let mut done = Vec::new();
        for k in 0..self.streams.len() {
            let name = &self.streams[k];
            let Some(info) = self.info(k).await? else {
                return Err(SysError::failed(format!(
                    "nats: stream {name} does not exist"
                )));
            };
            let (messages, first) = (info.state.messages, info.state.first_sequence);
            let stream = self
                .js()?
                .get_stream_no_info(name)
                .await
                .map_err(self.err("stream handle"))?;
            let did = match purge_plan(messages, first) {
                PurgePlan::All => {
                    stream.purge().await.map_err(self.err("purge"))?;
                    "purged the empty stream".to_string()
                }
                PurgePlan::Below(seq) => {
                    let purged = stream
                        .purge()
                        .sequence(seq)
                        .await
                        .map_err(self.err("purge"))?
                        .purged;
                    if purged > 0 {
                        return Err(SysError::failed(format!(
                            "nats: the purge of {name} below the first live message ({seq}) \
                             deleted {purged} live messages"
                        )));
                    }
                    format!("purged below the first live message ({seq})")
                }
                PurgePlan::Nothing => "nothing deleted precedes the first live message".to_string(),
            };
            done.push(match self.streams.len() {
                1 => did,
                _ => format!("{name}: {did}"),
            });
        }
        Ok(format!(
            "{}; JetStream has no compaction request: deleted messages after the first live \
             one stay in their blocks until a block empties (removed) or, not the last, falls \
             under 25 % live (rewritten by the server)",
            done.join("; ")
        ))
    }

    async fn settle(&mut self) -> SysResult<()> {
        // Everything acknowledged is in the store files already (see the module doc); the
        // round trips prove the server still answers, so probes read a live server.
        let conn = self.conn()?;
        conn.client.flush().await.map_err(self.err("flush"))?;
        for k in 0..self.streams.len() {
            self.info(k).await?;
        }
        Ok(())
    }

    /// Messages the streams hold: none in a stream that does not exist (before the first
    /// reset).
    async fn count(&mut self) -> SysResult<u64> {
        let mut total = 0;
        for k in 0..self.streams.len() {
            total += self.info(k).await?.map_or(0, |i| i.state.messages);
        }
        Ok(total)
    }

    fn interrupted_since(&self, since: Instant) -> Option<String> {
        let dropped = *self
            .conn
            .as_ref()?
            .dropped_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        dropped.filter(|at| *at >= since).map(|at| {
            format!(
                "nats: the client lost the server {:.1} s into the cell and reconnected by \
                 itself; publishes it queued meanwhile may have gone through",
                at.duration_since(since).as_secs_f64()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(sequence: u64, duplicate: bool) -> PublishAck {
        serde_json::from_value(serde_json::json!({
            "stream": "dedup_lab", "seq": sequence, "duplicate": duplicate
        }))
        .unwrap()
    }

    #[test]
    fn a_file_deletes_the_message_its_ack_named() {
        let mut h = Holders::default();
        h.acked("a", &ack(1, false)).unwrap();
        h.acked("b", &ack(1, true)).unwrap();
        h.acked("c", &ack(2, false)).unwrap();
        assert_eq!(h.release("c").unwrap(), 2);
        assert_eq!(h.release("b").unwrap(), 1);
        assert!(h.release("b").unwrap_err().message.contains("not inserted"));
        // a shared message 1 with b: it is gone with b.
        let e = h.release("a").unwrap_err();
        assert!(e.message.contains("deleted already"), "{e}");
    }

    #[test]
    fn a_duplicate_of_a_deleted_message_and_a_second_insert_are_errors() {
        let mut h = Holders::default();
        h.acked("a", &ack(1, false)).unwrap();
        assert_eq!(h.release("a").unwrap(), 1);
        let e = h.acked("b", &ack(1, true)).unwrap_err();
        assert!(e.message.contains("stored nowhere"), "{e}");
        h.acked("c", &ack(2, false)).unwrap();
        assert!(
            h.acked("c", &ack(3, false))
                .unwrap_err()
                .message
                .contains("twice")
        );
    }

    #[test]
    fn one_container_keeps_the_stream_name_and_others_never_match_another_namespace() {
        assert_eq!(stream_names("dedup_lab_n", 1), ["dedup_lab_n"]);
        let spread = stream_names("dedup_lab_n", 3);
        assert_eq!(
            spread,
            ["dedup_lab_n-c0", "dedup_lab_n-c1", "dedup_lab_n-c2"]
        );
        for name in spread.iter().chain(["dedup_lab_n".to_string()].iter()) {
            assert!(in_namespace("dedup_lab_n", name), "{name}");
        }
        // Another namespace, and names no reset makes, are not the namespace's.
        for other in [
            "dedup_lab_n_c1",
            "dedup_lab_nx",
            "dedup_lab_n-c",
            "dedup_lab_n-cx",
        ] {
            assert!(!in_namespace("dedup_lab_n", other), "{other}");
        }
    }

    #[test]
    fn maintenance_never_purges_a_live_message() {
        assert_eq!(purge_plan(0, 81), PurgePlan::All);
        assert_eq!(purge_plan(30, 51), PurgePlan::Below(51));
        // Message 1 is live: a purge with sequence 1 would delete the whole stream.
        assert_eq!(purge_plan(30, 1), PurgePlan::Nothing);
    }

    fn refused(section: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let table: toml::Table = toml::from_str(section).unwrap();
        let e = super::super::build_from_section("nats", &table, dir.path())
            .err()
            .expect("refused");
        assert_eq!(crate::error::exit_code(&e), 2, "{e}");
        e.to_string()
    }

    #[test]
    fn bad_settings_are_named() {
        let e = refused("keys = \"hash\"");
        assert!(e.contains("keys") && e.contains("content"), "{e}");
        assert!(refused("stream = \"events\"").contains("dedup_lab"));
        assert!(refused("duplicate_window_s = 0").contains("at least 1"));
        let e = refused("password_env = \"PATH\"");
        assert!(e.contains("no user"), "{e}");
    }
}
