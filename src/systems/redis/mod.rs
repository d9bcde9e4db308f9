//! `redis`: Redis (any RESP server). Namespace: keys under a lab prefix in a dedicated
//! logical database, with a marker key. A file is the key `<prefix>:files:<key>`, its key
//! its name or its content's hash (the layout's keys); with several containers, each is a
//! key prefix of its own, `<prefix>:c<k>:files:<key>`. A content key written again is a
//! `SET` of the same key: Redis overwrites it, so a content is one key in its container, and
//! the count (the keys a `SCAN` finds) is what Redis holds. Bulk path: pipelined `SET`s;
//! per-file `SET` / `DEL`;
//! maintenance: `BGREWRITEAOF` (when the AOF is on) and `MEMORY PURGE`; a reset also rewrites
//! the AOF, so every cell starts from a log without an earlier cell's garbage; settle: wait
//! until no AOF rewrite or RDB save is in progress; native size: `MEMORY USAGE` summed over
//! the lab's keys. The `fs` probe reads the server's RDB/AOF directory when it is local.
//! The `persistence` setting makes the server keep an append-only file, RDB snapshots or
//! nothing: it is server-wide, so the adapter applies it at every reset.

mod lab;
mod native;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisConnectionInfo};
use serde::{Deserialize, Serialize};

use super::toolkit::{Holding, Marker, Namespaced, Pacer, ServerDefaults, Target, Window, spawned};
use super::{System, SystemContext, SystemDef, TestHooks};
use crate::dataset::{DataSet, FileEntry};
use crate::model::{ErrorKind, Layout, Measured, Meter, ServerInfo, SysError, SysResult};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    kind: "redis",
    aliases: &[],
    embedded: false,
    about: "Redis: pipelined SET bulk load, BGREWRITEAOF maintenance",
    build,
    lab: &[&lab::Redis],
    native_loader: Some(native::LOADER),
    // Redis answers a SET far faster than the other servers (BENCHMARKS.md): a stop lands in
    // a per-file stage only with many more files.
    tests: TestHooks {
        namespace_key: "prefix",
        fault_data_set: (20_000, "1KiB"),
    },
};

const DEFAULTS: ServerDefaults = ServerDefaults {
    port: 6379,
    user: None,
};

/// The keys of a Redis instance's section beside the shared connection keys.
#[derive(Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Logical database used only by dedup-lab.
    pub db: i64,
    /// Key prefix (without the trailing `:`); must start with `dedup_lab`. Default: see
    /// [`SystemContext::default_namespace`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Files per pipelined round trip of the bulk path, at most.
    pub pipeline_files: usize,
    /// File bytes per pipelined round trip, at most (at least one file). Two round trips are
    /// in memory at a time (one in flight, one being built), each about twice over.
    pub pipeline_bytes: u64,
    /// Seconds to wait for the server's background work when settling.
    pub settle_timeout_s: u64,
    /// What the server keeps on disk, set at every reset: `aof` (an append-only file),
    /// `rdb` (snapshots), `none`; unset: whatever the server is configured with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            db: 15,
            prefix: None,
            pipeline_files: 64,
            pipeline_bytes: 8 << 20,
            settle_timeout_s: 300,
            persistence: None,
        }
    }
}

/// What a Redis server keeps on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persistence {
    /// An append-only file of every write (`appendonly yes`, no snapshots).
    Aof,
    /// Point-in-time snapshots (`appendonly no`, `save 3600 1 300 100 60 10000`).
    Rdb,
    /// Nothing (`appendonly no`, `save ""`).
    None,
}

impl Persistence {
    /// `CONFIG SET` pairs that select it.
    fn config(self) -> [(&'static str, &'static str); 2] {
        match self {
            Persistence::Aof => [("appendonly", "yes"), ("save", "")],
            Persistence::Rdb => [("appendonly", "no"), ("save", "3600 1 300 100 60 10000")],
            Persistence::None => [("appendonly", "no"), ("save", "")],
        }
    }
}

impl Namespaced for Settings {
    const KEY: &'static str = "prefix";

    fn namespace(&self) -> Option<&str> {
        self.prefix.as_deref()
    }
}

/// An instance's target, its limits checked.
fn target(ctx: &SystemContext<'_>) -> anyhow::Result<Target<Settings>> {
    let t: Target<Settings> = Target::of(ctx, DEF.kind, DEFAULTS)?;
    let s = &t.settings;
    if !(0..=1_000_000).contains(&s.db) || s.pipeline_files == 0 || s.pipeline_bytes == 0 {
        crate::bail_usage!(
            "config [systems.{}]: db must be 0 or more, pipeline_files and pipeline_bytes at \
             least 1",
            ctx.instance
        );
    }
    Ok(t)
}

fn build(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    Ok(Box::new(Redis {
        name: ctx.instance.to_string(),
        t: target(ctx)?,
        conn: None,
        aof: false,
    }))
}

/// The Redis adapter.
struct Redis {
    name: String,
    t: Target<Settings>,
    conn: Option<MultiplexedConnection>,
    /// Whether the server keeps an append-only file (decides the maintenance).
    aof: bool,
}

/// A lost connection (dropped, refused, timed out, I/O) or any other failure.
fn classify(context: &str, e: redis::RedisError) -> SysError {
    let lost =
        e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error() || e.is_timeout();
    SysError::from_driver("redis", context, &e, lost)
}

fn err(context: &str) -> impl FnOnce(redis::RedisError) -> SysError + '_ {
    move |e| classify(context, e)
}

/// The key of a file under a prefix: in its container, under its name or content hash. One
/// container keeps today's `<prefix>:files:<name>`.
fn key(prefix: &str, layout: &Layout, f: &FileEntry) -> String {
    let key = layout.key_of(f);
    if layout.containers == 1 {
        format!("{prefix}:files:{key}")
    } else {
        format!("{prefix}:c{}:files:{key}", layout.container_of(f))
    }
}

/// The `SCAN` pattern of every file key under a prefix, in all its containers.
fn files_pattern(prefix: &str, layout: &Layout) -> String {
    if layout.containers == 1 {
        format!("{prefix}:files:*")
    } else {
        format!("{prefix}:c*:files:*")
    }
}

/// Value of `field:` in an `INFO` section.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// An `INFO` section.
async fn info(conn: &mut MultiplexedConnection, section: &str) -> SysResult<String> {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .map_err(err("INFO"))
}

/// Every key matching `pattern`, by SCAN (never KEYS, which blocks the server).
async fn scan(conn: &mut MultiplexedConnection, pattern: &str) -> SysResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(err("SCAN"))?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The fields of `INFO memory` and `INFO persistence` the snapshot carries: memory used in
/// all, by the data set and by the allocator's resident pages; the AOF's size now and after
/// its last rewrite; writes since the last RDB save; background rewrites and saves running.
const SNAPSHOT_FIELDS: &[(&str, &str)] = &[
    ("memory", "used_memory"),
    ("memory", "used_memory_dataset"),
    ("memory", "used_memory_rss"),
    ("persistence", "aof_current_size"),
    ("persistence", "aof_base_size"),
    ("persistence", "rdb_changes_since_last_save"),
    ("persistence", "aof_rewrite_in_progress"),
    ("persistence", "rdb_bgsave_in_progress"),
];

/// The meter: a connection of its own.
struct RedisMeter {
    conn: MultiplexedConnection,
    /// [`files_pattern`] of the namespace.
    pattern: String,
}

#[async_trait]
impl Measured for RedisMeter {
    fn native_copies(&self) -> Option<u32> {
        Some(1)
    }

    /// `MEMORY USAGE` of every key of the namespace's files, summed.
    async fn native_size(&mut self) -> SysResult<u64> {
        let keys = scan(&mut self.conn, &self.pattern).await?;
        let mut total = 0u64;
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").arg(0);
            }
            let sizes: Vec<Option<u64>> = pipe
                .query_async(&mut self.conn)
                .await
                .map_err(err("MEMORY USAGE"))?;
            total += sizes.into_iter().flatten().sum::<u64>();
        }
        Ok(total)
    }
}

#[async_trait]
impl Meter for RedisMeter {
    /// [`SNAPSHOT_FIELDS`] that the server reports (an AOF's fields only with an AOF).
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>> {
        let memory = info(&mut self.conn, "memory").await?;
        let persistence = info(&mut self.conn, "persistence").await?;
        Ok(SNAPSHOT_FIELDS
            .iter()
            .filter_map(|&(section, field)| {
                let text = if section == "memory" {
                    &memory
                } else {
                    &persistence
                };
                let value = info_field(text, field)?.parse::<f64>().ok()?;
                Some((field.to_string(), value))
            })
            .collect())
    }
}

impl Redis {
    fn conn(&self) -> SysResult<MultiplexedConnection> {
        self.conn
            .clone()
            .ok_or_else(|| SysError::connection("redis: not connected"))
    }

    fn marker(&self) -> String {
        format!("{}:owner", self.t.namespace)
    }

    fn key(&self, f: &FileEntry) -> String {
        key(&self.t.namespace, &self.t.layout, f)
    }

    fn files_pattern(&self) -> String {
        files_pattern(&self.t.namespace, &self.t.layout)
    }

    async fn info(&self, section: &str) -> SysResult<String> {
        info(&mut self.conn()?, section).await
    }

    async fn scan(&self, pattern: &str) -> SysResult<Vec<String>> {
        scan(&mut self.conn()?, pattern).await
    }

    /// A new connection to the server, on the configured database.
    async fn open(&self) -> SysResult<MultiplexedConnection> {
        let s = &self.t.server;
        let mut redis = RedisConnectionInfo::default().set_db(self.t.settings.db);
        if let Some(u) = &s.user {
            redis = redis.set_username(u);
        }
        if let Some(pw) = &s.password {
            redis = redis.set_password(pw.expose());
        }
        let info = redis::IntoConnectionInfo::into_connection_info((s.host.clone(), s.port))
            .map_err(err("address"))?
            .set_redis_settings(redis);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(s.connect_timeout))
            .set_response_timeout(Some(Duration::from_secs(600)));
        Client::open(info)
            .map_err(err("client"))?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| {
                // A refused login does not heal by reconnecting.
                let refused = e.kind() == redis::ErrorKind::AuthenticationFailed
                    || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"));
                let mut se = classify(&format!("cannot connect to {}", s.address()), e);
                if refused {
                    se.kind = ErrorKind::Failed;
                }
                se
            })
    }

    /// Rewrites the AOF to the keys that exist now and waits until the rewrite is done.
    async fn rewrite_aof(&self) -> SysResult<()> {
        self.wait_background().await?;
        let started = redis::cmd("BGREWRITEAOF")
            .query_async::<()>(&mut self.conn()?)
            .await;
        match started {
            // A rewrite the server began by itself after the wait above holds every write too.
            // The server says so only in the text of a plain ERR reply.
            Err(e) if e.to_string().contains("already in progress") => {}
            other => other.map_err(err("BGREWRITEAOF"))?,
        }
        self.wait_background().await
    }

    /// Whether the AOF has grown since its last rewrite (`aof_current_size` above
    /// `aof_base_size`); a server that reports neither counts as grown.
    async fn aof_grown(&self) -> SysResult<bool> {
        let info = self.info("persistence").await?;
        let size = |field| info_field(&info, field).and_then(|v| v.parse::<u64>().ok());
        Ok(match (size("aof_current_size"), size("aof_base_size")) {
            (Some(current), Some(base)) => current > base,
            _ => true,
        })
    }

    /// Waits until the server has no AOF rewrite or RDB save running or scheduled.
    async fn wait_background(&self) -> SysResult<()> {
        let mut pacer = Pacer::new(Duration::from_secs(self.t.settings.settle_timeout_s));
        loop {
            let info = self.info("persistence").await?;
            let busy = [
                "aof_rewrite_in_progress",
                "aof_rewrite_scheduled",
                "rdb_bgsave_in_progress",
            ]
            .iter()
            .any(|f| info_field(&info, f).is_some_and(|v| v != "0"));
            if !busy {
                if info_field(&info, "aof_last_bgrewrite_status").is_some_and(|v| v != "ok") {
                    return Err(SysError::failed(
                        "redis: the last AOF rewrite failed (aof_last_bgrewrite_status)",
                    ));
                }
                return Ok(());
            }
            if !pacer.pause().await {
                return Err(SysError::failed(format!(
                    "redis: background persistence still running after {} s",
                    self.t.settings.settle_timeout_s
                )));
            }
        }
    }
}

#[async_trait]
impl System for Redis {
    fn name(&self) -> &str {
        &self.name
    }

    fn target(&self) -> String {
        format!(
            "{} db {} keys {}:*",
            self.t.server.address(),
            self.t.settings.db,
            self.t.namespace
        )
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        let conn = self.open().await?;
        self.conn = Some(conn);
        let server = self.info("server").await?;
        // A restarted server answers INFO while it loads its data but refuses everything
        // else: connected means loaded.
        let mut pacer = Pacer::new(Duration::from_secs(self.t.settings.settle_timeout_s));
        loop {
            let p = self.info("persistence").await?;
            if info_field(&p, "loading") != Some("1") {
                self.aof = info_field(&p, "aof_enabled") == Some("1");
                break;
            }
            if !pacer.pause().await {
                return Err(SysError::connection("redis: still loading its data set"));
            }
        }
        Ok(ServerInfo {
            product: "Redis".into(),
            version: info_field(&server, "redis_version")
                .unwrap_or("unknown")
                .to_string(),
        })
    }

    async fn meter(&mut self) -> SysResult<Box<dyn Meter>> {
        Ok(Box::new(RedisMeter {
            conn: self.open().await?,
            pattern: self.files_pattern(),
        }))
    }

    async fn inspect(&mut self) -> SysResult<Holding> {
        let prefix = self.t.namespace.clone();
        let keys = self.scan(&format!("{prefix}:*")).await?;
        let marker = self.marker();
        if keys.is_empty() {
            return Ok(Holding::Absent);
        }
        if !keys.contains(&marker) {
            return Ok(Holding::Foreign(format!(
                "db {} holds keys under {prefix}: but no {marker} key",
                self.t.settings.db
            )));
        }
        let text: Option<String> = redis::cmd("GET")
            .arg(&marker)
            .query_async(&mut self.conn()?)
            .await
            .map_err(err("GET marker"))?;
        Ok(Holding::Marked(text.unwrap_or_default()))
    }

    async fn recreate(&mut self, marker: &Marker) -> SysResult<()> {
        let mut conn = self.conn()?;
        if let Some(p) = self.t.settings.persistence {
            for (key, value) in p.config() {
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg(key)
                    .arg(value)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(err("CONFIG SET persistence"))?;
            }
            // Turning the AOF on starts a rewrite that writes the first file.
            self.wait_background().await?;
            self.aof = p == Persistence::Aof;
        }
        // The marker is written first and stays, so a reset cut short never leaves unmarked
        // lab keys behind. Unchanged, it is left alone, so the log gets no write for it.
        let marker_key = self.marker();
        if marker.changed {
            redis::cmd("SET")
                .arg(&marker_key)
                .arg(&marker.text)
                .query_async::<()>(&mut conn)
                .await
                .map_err(err("SET marker"))?;
        }
        let keys: Vec<String> = self
            .scan(&format!("{}:*", self.t.namespace))
            .await?
            .into_iter()
            .filter(|k| *k != marker_key)
            .collect();
        for chunk in keys.chunks(1000) {
            redis::cmd("UNLINK")
                .arg(chunk)
                .query_async::<()>(&mut conn)
                .await
                .map_err(err("UNLINK"))?;
        }
        // The log still holds the deleted keys' SETs and the DELs. Left there, the server's
        // automatic rewrite would reclaim them in the middle of a later stage, whose physical
        // growth would then shrink by an earlier cell's garbage. A log that has not grown
        // since its last rewrite (a reset right after another) holds none.
        if self.aof && self.aof_grown().await? {
            self.rewrite_aof().await?;
        }
        Ok(())
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        let conn = self.conn()?;
        let mut files = ds.stream();
        let mut pipe = redis::pipe();
        let (mut queued, mut queued_bytes) = (0, 0);
        // One round trip in flight while the next is read and built.
        let mut window = Window::new(1, u64::MAX);
        loop {
            let next = files.next().await;
            let done = next.is_none();
            if let Some(item) = next {
                let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
                pipe.cmd("SET").arg(self.key(&f)).arg(&content[..]).ignore();
                queued += 1;
                queued_bytes += content.len() as u64;
            }
            let full = queued >= self.t.settings.pipeline_files
                || queued_bytes >= self.t.settings.pipeline_bytes;
            if queued > 0 && (done || full) {
                let (batch, mut conn) = (std::mem::replace(&mut pipe, redis::pipe()), conn.clone());
                let send = || {
                    Ok(spawned("redis: pipelined SET", async move {
                        batch
                            .query_async::<()>(&mut conn)
                            .await
                            .map_err(err("pipelined SET"))
                    }))
                };
                window.push(0, send).await?;
                (queued, queued_bytes) = (0, 0);
            }
            if done {
                return window.finish().await.map(drop);
            }
        }
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        redis::cmd("SET")
            .arg(self.key(file))
            .arg(&content[..])
            .query_async::<()>(&mut self.conn()?)
            .await
            .map_err(err("SET"))
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        let n: u64 = redis::cmd("DEL")
            .arg(self.key(file))
            .query_async(&mut self.conn()?)
            .await
            .map_err(err("DEL"))?;
        if n != 1 {
            return Err(SysError::failed(format!(
                "redis: DEL of {} removed {n} keys",
                self.key(file)
            )));
        }
        Ok(())
    }

    async fn maintenance(&mut self) -> SysResult<String> {
        let mut conn = self.conn()?;
        let mut done = Vec::new();
        if self.aof {
            self.rewrite_aof().await?;
            done.push("BGREWRITEAOF");
        }
        redis::cmd("MEMORY")
            .arg("PURGE")
            .query_async::<()>(&mut conn)
            .await
            .map_err(err("MEMORY PURGE"))?;
        done.push("MEMORY PURGE");
        Ok(done.join("; "))
    }

    async fn settle(&mut self) -> SysResult<()> {
        self.wait_background().await
    }

    async fn count(&mut self) -> SysResult<u64> {
        Ok(self.scan(&self.files_pattern()).await?.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KeyMode;

    #[test]
    fn keys_name_the_container_only_when_there_are_several() {
        let f = FileEntry {
            id: 6,
            name: "f6".into(),
            size: 1,
            blake3: "ab12".into(),
            copy_of: None,
        };
        let layout = |keys, containers| Layout { keys, containers };
        assert_eq!(key("p", &Layout::default(), &f), "p:files:f6");
        assert_eq!(key("p", &layout(KeyMode::Content, 1), &f), "p:files:ab12");
        assert_eq!(key("p", &layout(KeyMode::Name, 4), &f), "p:c2:files:f6");
        assert_eq!(files_pattern("p", &Layout::default()), "p:files:*");
        assert_eq!(
            files_pattern("p", &layout(KeyMode::Content, 4)),
            "p:c*:files:*"
        );
    }

    #[test]
    fn reads_info_fields() {
        let info = "# Persistence\r\naof_enabled:1\r\naof_rewrite_in_progress:0\r\n";
        assert_eq!(info_field(info, "aof_enabled"), Some("1"));
        assert_eq!(info_field(info, "aof_rewrite_in_progress"), Some("0"));
        assert_eq!(info_field(info, "aof_rewrite"), None);
    }
}
