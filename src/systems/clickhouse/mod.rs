//! `clickhouse`: ClickHouse over HTTP, old (Debian's 18.16) and new servers alike.
//!
//! Namespace: a database named `dedup_lab*` marked by a `dedup_lab_owner` table, holding
//! `files (id UInt32, name String, content String) ENGINE = MergeTree ORDER BY id`. Bulk path:
//! `INSERT … FORMAT RowBinary` streamed in blocks of `bulk_block_mib`; per-file `INSERT`s, one
//! request each; per-file deletes as `ALTER TABLE … DELETE` mutations (lightweight `DELETE
//! FROM` on servers that have it), each awaited until `system.mutations` reports it done;
//! maintenance: `OPTIMIZE TABLE … FINAL`; native size: `sum(bytes_on_disk)` of the table's
//! active parts. Every insert sets `insert_deduplicate = 0`, so identical blocks are stored.
//!
//! Layout: a container is a table, `files_<k>` when there are several (`files` alone keeps
//! today's name); a reset drops every `files` and `files_<k>` table of the database, whatever
//! an earlier run's number was. With content keys each table is `(hash String, content
//! String) ENGINE = ReplacingMergeTree ORDER BY hash`: a repeated content is another row until
//! a merge keeps one row per hash, so the insert's physical growth is about L until merges
//! (or `OPTIMIZE … FINAL`) run, while the count, `count()` with `FINAL`, is one per content
//! from the start. A delete removes every row of its hash.
//!
//! Parts that merges and mutations replace stay on disk until ClickHouse's cleanup removes
//! them: the native probe never counts them, the `fs` probe (the data directory) does. The lab
//! table is therefore created with a 1 s `old_parts_lifetime` and cleanup period, and settling
//! waits until the table has no running merge, no pending mutation and no replaced part left,
//! so both probes read the same live data.
//!
//! Client: the official `clickhouse` crate with validation off (18.16 knows neither the
//! `RowBinaryWithNamesAndTypes` format nor the `describe_include_subcolumns` setting that
//! validation needs) and without compression (payloads are mostly incompressible and the
//! CPU is better spent loading). Credentials travel in the `X-ClickHouse-User` /
//! `X-ClickHouse-Key` headers, never in the URL. The user needs to create databases and
//! tables, insert, `ALTER … DELETE`, `OPTIMIZE` and read `system.parts`, `system.merges` and
//! `system.mutations`.
//!
//! Variants: the table engine (`MergeTree`, or `ReplacingMergeTree`, which drops rows with a
//! repeated sorting key when parts merge; by default MergeTree with name keys, whose ids never
//! repeat, and ReplacingMergeTree with content keys, which need it) and the content column's
//! codec (servers from 19.1).

mod lab;
mod native;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use clickhouse::insert::Insert;
use clickhouse::query::Query;
use clickhouse::{Client, Compression, Row, RowOwned, RowRead, RowWrite};
use serde::{Deserialize, Serialize};

use super::toolkit::{
    Holding, MARKER_TABLE, Marker, Namespaced, Pacer, ServerDefaults, Target, Window, spawned,
};
use super::{System, SystemContext, SystemDef, TEST_HOOKS, TestHooks};
use crate::dataset::{DataSet, FileEntry};
use crate::model::{KeyMode, Layout, Measured, Meter, ServerInfo, SysError, SysResult};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    kind: "clickhouse",
    aliases: &[],
    embedded: false,
    about: "ClickHouse: RowBinary bulk load over HTTP, OPTIMIZE FINAL maintenance",
    build,
    lab: &[&lab::ClickHouse],
    native_loader: Some(native::LOADER),
    tests: TestHooks {
        namespace_key: "database",
        ..TEST_HOOKS
    },
};

/// The HTTP port; ClickHouse's usual account.
const DEFAULTS: ServerDefaults = ServerDefaults {
    port: 8123,
    user: Some("default"),
};

/// The keys of a ClickHouse instance's section beside the shared connection keys (`port` is
/// the HTTP port).
#[derive(Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Lab database; must start with `dedup_lab`. Default: see
    /// [`SystemContext::default_namespace`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Table engine of the lab tables; default: MergeTree with name keys, ReplacingMergeTree
    /// with content keys (which refuse MergeTree: it would keep a row per file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// Codec of the content column, e.g. `ZSTD(3)`, `LZ4HC(9)`, `NONE`; default: the
    /// server's (LZ4). Column codecs need ClickHouse 19.1 or newer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    /// MiB of file content per `INSERT` of the bulk path (one part each).
    pub bulk_block_mib: u64,
    /// Seconds one request may take before the connection counts as lost.
    pub request_timeout_s: u64,
    /// Seconds to wait for mutations, merges and part cleanup.
    pub settle_timeout_s: u64,
    /// Whether settling also waits until replaced parts are removed from disk. Off by default:
    /// old servers (18.16) remove them only every few seconds, which would dominate a run; the
    /// `fs` probe then counts replaced parts still on disk, the native probe never does.
    pub wait_for_part_cleanup: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database: None,
            engine: None,
            codec: None,
            bulk_block_mib: 64,
            request_timeout_s: 600,
            settle_timeout_s: 300,
            wait_for_part_cleanup: false,
        }
    }
}

/// A table engine of the MergeTree family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Engine {
    /// Keeps every row.
    MergeTree,
    /// Keeps one row per sorting key once parts merge.
    ReplacingMergeTree,
}

impl Engine {
    /// Name in SQL and configs.
    fn name(self) -> &'static str {
        match self {
            Engine::MergeTree => "MergeTree",
            Engine::ReplacingMergeTree => "ReplacingMergeTree",
        }
    }

    /// The engine of a layout whose section says `engine` (or nothing).
    fn of(engine: Option<Engine>, layout: &Layout) -> Engine {
        engine.unwrap_or(match layout.keys {
            KeyMode::Name => Engine::MergeTree,
            KeyMode::Content => Engine::ReplacingMergeTree,
        })
    }
}

impl Namespaced for Settings {
    const KEY: &'static str = "database";

    fn namespace(&self) -> Option<&str> {
        self.database.as_deref()
    }
}

/// An instance's target, its limits, engine and codec checked.
fn target(ctx: &SystemContext<'_>) -> anyhow::Result<Target<Settings>> {
    let t: Target<Settings> = Target::of(ctx, DEF.kind, DEFAULTS)?;
    let (s, instance) = (&t.settings, ctx.instance);
    if s.bulk_block_mib == 0 || s.request_timeout_s == 0 || s.settle_timeout_s == 0 {
        crate::bail_usage!(
            "config [systems.{instance}]: bulk_block_mib, request_timeout_s and \
             settle_timeout_s must be at least 1"
        );
    }
    if s.engine == Some(Engine::MergeTree) && t.layout.keys == KeyMode::Content {
        crate::bail_usage!(
            "config [systems.{instance}] engine = \"MergeTree\" with keys = \"content\": \
             MergeTree keeps a row per file, so a content would be stored and counted once per \
             copy; use engine = \"ReplacingMergeTree\" or leave engine out (content keys choose \
             it), or keys = \"name\""
        );
    }
    if let Some(codec) = &s.codec
        && (codec.is_empty()
            || !codec
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "(), ".contains(c)))
    {
        crate::bail_usage!(
            "config [systems.{instance}] codec = \"{codec}\" is not a codec expression; write \
             e.g. ZSTD(3) or LZ4HC(9)"
        );
    }
    Ok(t)
}

fn build(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    Ok(Box::new(ClickHouse {
        name: ctx.instance.to_string(),
        t: target(ctx)?,
        client: None,
        features: Features::default(),
    }))
}

/// What a server version supports beyond 18.16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Features {
    /// `DELETE FROM … WHERE` (lightweight delete, generally available since 23.3).
    lightweight_delete: bool,
    /// `DROP TABLE … SYNC`: Atomic databases (the default since 20.10) otherwise keep a
    /// dropped table's data on disk for minutes.
    drop_sync: bool,
}

impl Features {
    /// Features of a server reporting `version` (`18.16.1`, `24.8.4.13`); `None` if the
    /// version does not start with `major.minor`.
    fn of(version: &str) -> Option<Features> {
        let mut parts = version.trim().split('.');
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next()?.parse().ok()?;
        let v = (major, minor);
        Some(Features {
            lightweight_delete: v >= (23, 3),
            drop_sync: v >= (20, 10),
        })
    }
}

/// A row of a lab table, made from a file and its content.
trait Stored: RowOwned + RowWrite + Send + 'static {
    /// The row of `f` under `layout`.
    fn of(layout: &Layout, f: FileEntry, content: Bytes) -> Self;
}

/// A row of a lab table with name keys, as RowBinary: UInt32, then LEB128-prefixed bytes
/// twice.
#[derive(Row, Serialize)]
struct FileRow {
    id: u32,
    name: String,
    content: Bytes,
}

impl Stored for FileRow {
    fn of(_: &Layout, f: FileEntry, content: Bytes) -> Self {
        FileRow {
            id: f.id,
            name: f.name,
            content,
        }
    }
}

/// A row of a lab table with content keys: the content's hash and the content.
#[derive(Row, Serialize)]
struct ContentRow {
    hash: String,
    content: Bytes,
}

impl Stored for ContentRow {
    fn of(layout: &Layout, f: FileEntry, content: Bytes) -> Self {
        ContentRow {
            hash: layout.key_of(&f).to_string(),
            content,
        }
    }
}

/// The ClickHouse adapter.
struct ClickHouse {
    name: String,
    t: Target<Settings>,
    client: Option<Client>,
    features: Features,
}

/// The lab tables of a layout, one per container: `files`, or `files_0` … `files_<n-1>`.
fn tables(layout: &Layout) -> Vec<String> {
    match layout.containers {
        1 => vec!["files".to_string()],
        n => (0..n).map(|k| format!("files_{k}")).collect(),
    }
}

/// `tables` as an SQL list, `('files_0', 'files_1')`, for `table IN …` (the names are ours).
fn sql_list(tables: &[String]) -> String {
    let quoted: Vec<String> = tables.iter().map(|t| format!("'{t}'")).collect();
    format!("({})", quoted.join(", "))
}

/// The server's HTTP address; an IPv6 address goes in brackets.
fn base_url(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

/// A lost connection (refused, reset, I/O, incomplete body, no answer in time) or any other
/// failure, such as an error the server reported.
fn classify(context: &str, e: clickhouse::error::Error) -> SysError {
    use clickhouse::error::Error;
    let lost = matches!(e, Error::Network(_) | Error::TimedOut);
    SysError::from_driver("clickhouse", context, &e, lost)
}

fn err(context: &str) -> impl FnOnce(clickhouse::error::Error) -> SysError + '_ {
    move |e| classify(context, e)
}

/// Outstanding work on the lab tables (an [`sql_list`]): running merges, unfinished
/// mutations, replaced parts still on disk. Naming the `_state` virtual column makes
/// system.parts list parts in every state, including those being deleted right now, which
/// `NOT active` alone would miss; the active state is `Committed` before 22.x and `Active`
/// after.
fn busy_sql(tables: &str) -> String {
    format!(
        "SELECT \
         (SELECT count() FROM system.merges WHERE database = ? AND table IN {tables}), \
         (SELECT count() FROM system.mutations WHERE database = ? AND table IN {tables} \
            AND NOT is_done), \
         (SELECT count() FROM system.parts WHERE database = ? AND table IN {tables} \
            AND _state NOT IN ('Committed', 'Active'))"
    )
}

/// Awaits one request; no answer within `limit_s` seconds counts as a lost connection.
async fn timed<T>(
    limit_s: u64,
    context: &str,
    request: impl Future<Output = clickhouse::error::Result<T>>,
) -> SysResult<T> {
    match tokio::time::timeout(Duration::from_secs(limit_s), request).await {
        Ok(result) => result.map_err(err(context)),
        Err(_) => Err(SysError::connection(format!(
            "clickhouse: {context}: no answer within {limit_s} s"
        ))),
    }
}

/// The snapshot: the lab tables' (an [`sql_list`]) active parts (count, rows, bytes on disk,
/// compressed and uncompressed), their `content` column's compressed and uncompressed bytes,
/// and the work outstanding ([`busy_sql`]'s counts).
fn snapshot_sql(tables: &str) -> String {
    let t = tables;
    format!(
        "SELECT [\
         (SELECT toFloat64(count()) FROM system.parts WHERE active AND database = ? AND table IN {t}), \
         (SELECT toFloat64(sum(rows)) FROM system.parts WHERE active AND database = ? AND table IN {t}), \
         (SELECT toFloat64(sum(bytes_on_disk)) FROM system.parts WHERE active AND database = ? AND table IN {t}), \
         (SELECT toFloat64(sum(data_compressed_bytes)) FROM system.parts WHERE active AND database = ? AND table IN {t}), \
         (SELECT toFloat64(sum(data_uncompressed_bytes)) FROM system.parts WHERE active AND database = ? AND table IN {t}), \
         (SELECT toFloat64(sum(data_compressed_bytes)) FROM system.columns WHERE database = ? AND table IN {t} AND name = 'content'), \
         (SELECT toFloat64(sum(data_uncompressed_bytes)) FROM system.columns WHERE database = ? AND table IN {t} AND name = 'content'), \
         (SELECT toFloat64(count()) FROM system.merges WHERE database = ? AND table IN {t}), \
         (SELECT toFloat64(count()) FROM system.mutations WHERE database = ? AND table IN {t} AND NOT is_done), \
         (SELECT toFloat64(count()) FROM system.parts WHERE database = ? AND table IN {t} \
            AND _state NOT IN ('Committed', 'Active'))]"
    )
}

/// Names of [`snapshot_sql`]'s columns.
const SNAPSHOT_NAMES: [&str; 10] = [
    "active_parts",
    "rows",
    "bytes_on_disk",
    "data_compressed_bytes",
    "data_uncompressed_bytes",
    "content_compressed_bytes",
    "content_uncompressed_bytes",
    "merges_running",
    "mutations_unfinished",
    "parts_replaced",
];

/// The meter: a client of its own.
struct ClickHouseMeter {
    client: Client,
    namespace: String,
    /// The lab tables, an [`sql_list`].
    tables: String,
    timeout_s: u64,
}

#[async_trait]
impl Measured for ClickHouseMeter {
    fn native_copies(&self) -> Option<u32> {
        // A non-replicated MergeTree table: system.parts lists this server's one copy.
        Some(1)
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        let query = self
            .client
            .query(&format!(
                "SELECT sum(bytes_on_disk) FROM system.parts \
                 WHERE active AND database = ? AND table IN {}",
                self.tables
            ))
            .bind(&self.namespace);
        timed(self.timeout_s, "sum(bytes_on_disk)", query.fetch_one()).await
    }
}

#[async_trait]
impl Meter for ClickHouseMeter {
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>> {
        let mut query = self.client.query(&snapshot_sql(&self.tables));
        for _ in 0..SNAPSHOT_NAMES.len() {
            query = query.bind(&self.namespace);
        }
        let values: Vec<f64> = timed(self.timeout_s, "snapshot", query.fetch_one()).await?;
        Ok(SNAPSHOT_NAMES
            .iter()
            .zip(values)
            .map(|(n, v)| (n.to_string(), v))
            .collect())
    }
}

impl ClickHouse {
    fn client(&self) -> SysResult<&Client> {
        self.client
            .as_ref()
            .ok_or_else(|| SysError::connection("clickhouse: not connected"))
    }

    /// The engine of the lab tables.
    fn engine(&self) -> Engine {
        Engine::of(self.t.settings.engine, &self.t.layout)
    }

    /// The lab tables, `<db>.<table>`, one per container.
    fn tables(&self) -> Vec<String> {
        tables(&self.t.layout)
            .into_iter()
            .map(|t| format!("{}.{t}", self.t.namespace))
            .collect()
    }

    /// The table of `f`'s container.
    fn table_of(&self, f: &FileEntry) -> String {
        self.tables()
            .swap_remove(self.t.layout.container_of(f) as usize)
    }

    fn query(&self, sql: &str) -> SysResult<Query> {
        Ok(self.client()?.query(sql))
    }

    /// Awaits one request within `request_timeout_s` (see [`timed`]).
    async fn timed<T>(
        &self,
        context: &str,
        request: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> SysResult<T> {
        timed(self.t.settings.request_timeout_s, context, request).await
    }

    /// A new client (with a connection pool of its own).
    fn new_client(&self) -> Client {
        let s = &self.t.server;
        let client = Client::default()
            .with_url(base_url(&s.host, s.port))
            .with_user(s.user.as_deref().unwrap_or_default())
            .with_compression(Compression::None)
            .with_validation(false);
        match &s.password {
            Some(pw) => client.with_password(pw.expose()),
            None => client,
        }
    }

    async fn execute(&self, context: &str, sql: &str) -> SysResult<()> {
        self.timed(context, self.query(sql)?.execute()).await
    }

    async fn fetch<T: RowOwned + RowRead>(&self, context: &str, query: Query) -> SysResult<T> {
        self.timed(context, query.fetch_one::<T>()).await
    }

    /// A new `INSERT INTO <table> FORMAT RowBinary` with deduplication of identical blocks
    /// off.
    async fn insert<R: Stored>(&self, table: &str) -> SysResult<Insert<R>> {
        let timeout = Some(Duration::from_secs(self.t.settings.request_timeout_s));
        Ok(self
            .client()?
            .insert_unescaped::<R>(table)
            .await
            .map_err(err("starting INSERT"))?
            .with_setting("insert_deduplicate", "0")
            .with_timeouts(timeout, timeout))
    }

    /// Polls until the lab tables have no unfinished mutation, and no running merge if
    /// `merges_too`, and no replaced part left on disk if `cleanup_too`; bounded by
    /// `settle_timeout_s`.
    async fn wait_idle(&self, context: &str, merges_too: bool, cleanup_too: bool) -> SysResult<()> {
        let db = &self.t.namespace;
        let tables = sql_list(&tables(&self.t.layout));
        let sql = busy_sql(&tables);
        // A delete mutation takes tens of milliseconds and a stage awaits 64 of them one by
        // one: a finer cap than other systems' keeps each wait close to its mutation's time.
        let limit = Duration::from_secs(self.t.settings.settle_timeout_s);
        let mut pacer = Pacer::new(limit).cap(Duration::from_millis(5));
        loop {
            let query = self.query(&sql)?.bind(db).bind(db).bind(db);
            let (merges, mutations, replaced): (u64, u64, u64) = self.fetch(context, query).await?;
            let busy = mutations
                + if merges_too { merges } else { 0 }
                + if cleanup_too { replaced } else { 0 };
            if busy == 0 {
                return Ok(());
            }
            if !pacer.pause().await {
                return Err(SysError::failed(format!(
                    "clickhouse: {context}: after {} s {db}'s tables {tables} still have \
                     {mutations} unfinished mutations, {merges} running merges and {replaced} \
                     replaced parts on disk (see system.mutations, system.merges, system.parts)",
                    self.t.settings.settle_timeout_s
                )));
            }
        }
    }

    /// The bulk path with rows `R`: each container's rows stream into an `INSERT` of their
    /// table, which ends at `bulk_block_mib` (a part each) and the next block begins.
    async fn load<R: Stored>(&self, ds: &DataSet) -> SysResult<()> {
        let block = self.t.settings.bulk_block_mib << 20;
        let tables = self.tables();
        let mut files = ds.stream();
        let mut open: Vec<Option<(Insert<R>, u64)>> = tables.iter().map(|_| None).collect();
        // A full block's INSERT finishes (the server writes its part) while the next block
        // streams: the one before it must be acknowledged before a third begins.
        let mut finishing = Window::new(2, u64::MAX);
        while let Some(item) = files.next().await {
            let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
            let container = self.t.layout.container_of(&f) as usize;
            let slot = &mut open[container];
            let (insert, bytes) = match slot {
                Some(o) => o,
                None => slot.insert((self.insert(&tables[container]).await?, 0)),
            };
            *bytes += content.len() as u64;
            let row = R::of(&self.t.layout, f, content);
            insert.write(&row).await.map_err(err("bulk INSERT"))?;
            if *bytes >= block
                && let Some((insert, _)) = slot.take()
            {
                let end = async move { insert.end().await.map_err(err("bulk INSERT")) };
                finishing
                    .push(0, || Ok(spawned("clickhouse: bulk INSERT", end)))
                    .await?;
            }
        }
        for (insert, _) in open.into_iter().flatten() {
            insert.end().await.map_err(err("bulk INSERT"))?;
        }
        finishing.finish().await.map(drop)
    }

    /// One file in an `INSERT` of its own, as a row `R`.
    async fn insert_row<R: Stored>(&self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        let mut insert = self.insert::<R>(&self.table_of(file)).await?;
        let row = R::of(&self.t.layout, file.clone(), content);
        insert.write(&row).await.map_err(err("INSERT"))?;
        insert.end().await.map_err(err("INSERT"))
    }
}

#[async_trait]
impl System for ClickHouse {
    fn name(&self) -> &str {
        &self.name
    }

    fn target(&self) -> String {
        let s = &self.t.server;
        format!(
            "{} database {} as {}",
            base_url(&s.host, s.port),
            self.t.namespace,
            s.user.as_deref().unwrap_or_default()
        )
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        self.client = Some(self.new_client());
        let context = format!("cannot connect to {}", self.t.server.address());
        let version: String = self
            .fetch(&context, self.query("SELECT version()")?)
            .await
            .inspect_err(|_| self.client = None)?;
        self.features = Features::of(&version).ok_or_else(|| {
            SysError::failed(format!(
                "clickhouse: server version \"{version}\" does not start with major.minor"
            ))
        })?;
        Ok(ServerInfo {
            product: "ClickHouse".into(),
            version,
        })
    }

    async fn meter(&mut self) -> SysResult<Box<dyn Meter>> {
        Ok(Box::new(ClickHouseMeter {
            client: self.new_client(),
            namespace: self.t.namespace.clone(),
            tables: sql_list(&tables(&self.t.layout)),
            timeout_s: self.t.settings.request_timeout_s,
        }))
    }

    async fn inspect(&mut self) -> SysResult<Holding> {
        let db = self.t.namespace.clone();
        let tables: Vec<String> = self
            .timed(
                "listing tables",
                self.query("SELECT name FROM system.tables WHERE database = ?")?
                    .bind(&db)
                    .fetch_all::<String>(),
            )
            .await?;
        if tables.is_empty() {
            return Ok(Holding::Absent);
        }
        if !tables.iter().any(|t| t == MARKER_TABLE) {
            return Ok(Holding::Foreign(format!(
                "database {db} holds tables but no {MARKER_TABLE} table"
            )));
        }
        // The marker table keeps every lease written into it; the last one counts.
        let notes: Vec<String> = self
            .timed(
                "reading the marker",
                self.query(&format!("SELECT note FROM {db}.{MARKER_TABLE}"))?
                    .fetch_all::<String>(),
            )
            .await?;
        Ok(Holding::Marked(notes.last().cloned().unwrap_or_default()))
    }

    async fn recreate(&mut self, marker: &Marker) -> SysResult<()> {
        let db = self.t.namespace.clone();
        let exists: u64 = self
            .fetch(
                "inspecting the marker",
                self.query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")?
                    .bind(&db)
                    .bind(MARKER_TABLE),
            )
            .await?;
        if exists == 0 {
            self.execute(
                "creating database",
                &format!("CREATE DATABASE IF NOT EXISTS {db}"),
            )
            .await?;
            self.execute(
                "creating marker",
                &format!("CREATE TABLE {db}.{MARKER_TABLE} (note String) ENGINE = TinyLog"),
            )
            .await?;
        }
        // The marker stays, so a reset cut short never leaves an unmarked lab database; a new
        // lease is appended to it.
        if exists == 0 || marker.changed {
            self.timed(
                "writing marker",
                self.query(&format!("INSERT INTO {db}.{MARKER_TABLE} VALUES (?)"))?
                    .bind(&marker.text)
                    .execute(),
            )
            .await?;
        }
        // Every container table of any earlier layout goes, not only this layout's.
        let sync = if self.features.drop_sync { " SYNC" } else { "" };
        let old: Vec<String> = self
            .timed(
                "listing file tables",
                self.query(
                    "SELECT name FROM system.tables WHERE database = ? \
                     AND (name = 'files' OR match(name, '^files_[0-9]+$'))",
                )?
                .bind(&db)
                .fetch_all::<String>(),
            )
            .await?;
        for table in old {
            self.execute(
                "dropping files",
                &format!("DROP TABLE IF EXISTS {db}.{table}{sync}"),
            )
            .await?;
        }
        let codec = match &self.t.settings.codec {
            Some(c) => format!(" CODEC({c})"),
            None => String::new(),
        };
        let (columns, order) = match self.t.layout.keys {
            KeyMode::Name => ("id UInt32, name String", "id"),
            KeyMode::Content => ("hash String", "hash"),
        };
        for table in self.tables() {
            self.execute(
                "creating files",
                &format!(
                    "CREATE TABLE {table} ({columns}, content String{codec}) \
                     ENGINE = {} ORDER BY {order} \
                     SETTINGS old_parts_lifetime = 1, cleanup_delay_period = 1, \
                     cleanup_delay_period_random_add = 0",
                    self.engine().name()
                ),
            )
            .await?;
        }
        Ok(())
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        match self.t.layout.keys {
            KeyMode::Name => self.load::<FileRow>(ds).await,
            KeyMode::Content => self.load::<ContentRow>(ds).await,
        }
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        match self.t.layout.keys {
            KeyMode::Name => self.insert_row::<FileRow>(file, content).await,
            KeyMode::Content => self.insert_row::<ContentRow>(file, content).await,
        }
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        let table = self.table_of(file);
        let (context, sql) = if self.features.lightweight_delete {
            ("DELETE", format!("DELETE FROM {table} WHERE "))
        } else {
            (
                "ALTER TABLE … DELETE",
                format!("ALTER TABLE {table} DELETE WHERE "),
            )
        };
        // With content keys, every row of the hash: a ReplacingMergeTree holds one per insert
        // until parts merge.
        let query = match self.t.layout.keys {
            KeyMode::Name => self.query(&format!("{sql}id = ?"))?.bind(file.id),
            KeyMode::Content => self
                .query(&format!("{sql}hash = ?"))?
                .bind(self.t.layout.key_of(file)),
        };
        self.timed(context, query.execute()).await?;
        // Both forms run as mutations; the file is gone only once its mutation is done.
        self.wait_idle("waiting for the delete mutation", false, false)
            .await
    }

    async fn maintenance(&mut self) -> SysResult<String> {
        let mut done = Vec::new();
        for table in self.tables() {
            let sql = format!("OPTIMIZE TABLE {table} FINAL");
            self.execute("OPTIMIZE FINAL", &sql).await?;
            done.push(sql);
        }
        Ok(done.join("; "))
    }

    async fn settle(&mut self) -> SysResult<()> {
        self.wait_idle("settling", true, self.t.settings.wait_for_part_cleanup)
            .await
    }

    /// Rows of every lab table; with ReplacingMergeTree as of `FINAL` (one per key), which
    /// rows not yet merged away would otherwise inflate.
    async fn count(&mut self) -> SysResult<u64> {
        let last = match self.engine() {
            Engine::MergeTree => "",
            Engine::ReplacingMergeTree => " FINAL",
        };
        let counts: Vec<String> = self
            .tables()
            .iter()
            .map(|t| format!("(SELECT count() FROM {t}{last})"))
            .collect();
        let query = self.query(&format!("SELECT {}", counts.join(" + ")))?;
        self.fetch("count", query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_servers_get_mutations_and_plain_drops() {
        assert_eq!(Features::of("18.16.1"), Some(Features::default()));
        assert_eq!(
            Features::of("20.9.7.11"),
            Some(Features {
                lightweight_delete: false,
                drop_sync: false
            })
        );
    }

    #[test]
    fn new_servers_get_sync_drops_then_lightweight_deletes() {
        let f = Features::of("22.8.21.38").unwrap();
        assert!(f.drop_sync && !f.lightweight_delete);
        let f = Features::of("23.3.1.2823").unwrap();
        assert!(f.drop_sync && f.lightweight_delete);
        let f = Features::of("26.9.1.1-stable").unwrap();
        assert!(f.drop_sync && f.lightweight_delete);
    }

    #[test]
    fn versions_without_major_minor_are_rejected() {
        assert_eq!(Features::of(""), None);
        assert_eq!(Features::of("24"), None);
        assert_eq!(Features::of("v24.3"), None);
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(base_url("::1", 8123), "http://[::1]:8123");
        assert_eq!(base_url("db.example", 18123), "http://db.example:18123");
    }

    /// Builds an instance from `section` with `layout`.
    fn build_with(section: &str, layout: Layout) -> anyhow::Result<Target<Settings>> {
        let section: toml::Table = toml::from_str(section).unwrap();
        target(&SystemContext {
            instance: "clickhouse",
            section: Some(&section),
            experiment_dir: std::path::Path::new("."),
            layout,
        })
    }

    #[test]
    fn content_keys_choose_replacing_merge_tree_and_refuse_merge_tree() {
        let content = Layout {
            keys: KeyMode::Content,
            containers: 1,
        };
        let t = build_with("", content).unwrap();
        assert_eq!(
            Engine::of(t.settings.engine, &t.layout),
            Engine::ReplacingMergeTree
        );
        let t = build_with("", Layout::default()).unwrap();
        assert_eq!(Engine::of(t.settings.engine, &t.layout), Engine::MergeTree);
        let t = build_with("engine = \"ReplacingMergeTree\"", Layout::default()).unwrap();
        assert_eq!(
            Engine::of(t.settings.engine, &t.layout),
            Engine::ReplacingMergeTree
        );
        let e = build_with("engine = \"MergeTree\"", content).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        assert!(
            e.to_string().contains("engine = \"ReplacingMergeTree\""),
            "{e}"
        );
        let e = build_with("engine = \"Log\"", Layout::default()).unwrap_err();
        assert!(e.to_string().contains("ReplacingMergeTree"), "{e}");
    }

    #[test]
    fn one_container_is_the_table_files_and_several_are_numbered() {
        assert_eq!(tables(&Layout::default()), ["files"]);
        let four = Layout {
            keys: KeyMode::Name,
            containers: 4,
        };
        assert_eq!(tables(&four), ["files_0", "files_1", "files_2", "files_3"]);
        assert_eq!(sql_list(&tables(&four)[..2]), "('files_0', 'files_1')");
    }

    #[test]
    fn host_with_credentials_is_refused() {
        let section: toml::Table =
            toml::from_str("host = \"user:pw@db.example\"\nport = 8123").unwrap();
        let e = build(&SystemContext {
            instance: "clickhouse",
            section: Some(&section),
            experiment_dir: std::path::Path::new("."),
            layout: Default::default(),
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("not a host name"), "{e}");
        assert_eq!(crate::error::exit_code(&e), 2);
    }
}
