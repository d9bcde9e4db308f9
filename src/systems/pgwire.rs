//! Everything PostgreSQL-wire systems share: settings, connection, lab namespace, per-file
//! statements, counting and error classification. A [`Dialect`] supplies what differs
//! (bulk path, maintenance, settle, size function, version).
//!
//! Containers are tables of the lab schema ([`Tables`]). With content keys a table's primary
//! key is the content's hash and every write is `INSERT … ON CONFLICT (content_key) DO
//! NOTHING`: a content the table holds is not stored again, so its rows are its distinct
//! contents, and a delete by key removes the one row the engine's last holder asks for.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Socket, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::toolkit::{
    Holding, MARKER_TABLE, Marker, Namespaced, Server, ServerDefaults, Tables, Target,
};
use super::{System, SystemContext};
use crate::dataset::{DataSet, FileEntry};
use crate::error::usage;
use crate::model::{KeyMode, Layout, Measured, Meter, ServerInfo, SysError, SysResult};

/// What differs between PostgreSQL-wire systems.
#[async_trait]
pub trait Dialect: Send + Sync + 'static {
    /// Kind name.
    const NAME: &'static str;
    /// Port, user and database when the config gives none.
    const DEFAULTS: (u16, &'static str, &'static str);
    /// Whether the server has per-column compression and storage settings (PostgreSQL's
    /// `SET COMPRESSION` and `SET STORAGE`).
    const COLUMN_SETTINGS: bool;

    /// Product and version, asked of a fresh connection.
    async fn server_info(c: &Client) -> SysResult<ServerInfo>;
    /// Full copies of the data the native size function counts.
    async fn native_copies(c: &Client) -> SysResult<u32>;
    /// Loads every file into its table of `tables`.
    async fn bulk_insert(c: &Client, tables: &Tables, ds: &DataSet) -> SysResult<()>;
    /// The space-reclaiming operation on every lab table; returns what it did.
    async fn maintenance(c: &Client, tables: &[String]) -> SysResult<String>;
    /// Makes writes durable before a probe reads.
    async fn settle(c: &Client) -> SysResult<()>;
    /// Physical size of the lab tables together, bytes.
    async fn native_size(c: &Client, tables: &[String]) -> SysResult<u64>;
    /// The server's storage accounting of the lab tables together and of the server (see
    /// [`Meter::snapshot`]).
    async fn snapshot(c: &Client, tables: &[String]) -> SysResult<BTreeMap<String, f64>>;
}

/// The meter of a PostgreSQL-wire system: a connection of its own.
pub struct PgMeter<D: Dialect> {
    client: Client,
    tables: Vec<String>,
    copies: u32,
    dialect: PhantomData<D>,
}

#[async_trait]
impl<D: Dialect> Measured for PgMeter<D> {
    fn native_copies(&self) -> Option<u32> {
        Some(self.copies)
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        D::native_size(&self.client, &self.tables).await
    }
}

#[async_trait]
impl<D: Dialect> Meter for PgMeter<D> {
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>> {
        D::snapshot(&self.client, &self.tables).await
    }
}

/// The keys of a PostgreSQL-wire instance's section beside the shared connection keys.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Database; default the product's usual one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Lab schema; must start with `dedup_lab`. Default: see
    /// [`SystemContext::default_namespace`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Full copies the native size counts; default: asked of the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Connect over TLS, always verifying the server certificate and host name.
    pub tls: bool,
    /// PEM file of the CA(s) to trust for TLS; default: the Mozilla roots (webpki-roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Compression of the content column: `pglz` or `lz4` (PostgreSQL 14+); default the
    /// server's `default_toast_compression`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Storage of the content column: `extended` (compressed, then out of line; the
    /// default), `external` (out of line, never compressed), `main` or `plain`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
}

impl Namespaced for Settings {
    const KEY: &'static str = "schema";

    fn namespace(&self) -> Option<&str> {
        self.schema.as_deref()
    }
}

/// An instance's target for dialect `D`.
pub fn target<D: Dialect>(ctx: &SystemContext<'_>) -> anyhow::Result<Target<Settings>> {
    let (port, user, _) = D::DEFAULTS;
    let defaults = ServerDefaults {
        port,
        user: Some(user),
    };
    Target::of(ctx, D::NAME, defaults)
}

/// The database an instance of dialect `D` connects to.
pub fn database<D: Dialect>(s: &Settings) -> String {
    s.database.clone().unwrap_or_else(|| D::DEFAULTS.2.into())
}

/// Builds a PostgreSQL-wire adapter for dialect `D` from its config section.
pub fn build<D: Dialect>(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    let Target {
        server,
        namespace: schema,
        settings,
        ..
    } = target::<D>(ctx)?;
    let database = database::<D>(&settings);
    let tls = match (settings.tls, &settings.ca_file) {
        (true, ca) => Some(tls_connector(ctx.instance, ca.as_deref())?),
        (false, None) => None,
        (false, Some(_)) => {
            return Err(usage(format!(
                "config [systems.{}]: ca_file is set but tls = false; set tls = true or remove ca_file",
                ctx.instance
            )));
        }
    };
    let column = column_ddl(ctx.instance, D::COLUMN_SETTINGS, &settings)?;
    Ok(Box::new(PgWire::<D> {
        name: ctx.instance.to_string(),
        database,
        server,
        tables: Tables::new(Some(&schema), ctx.layout),
        schema,
        column,
        settings,
        tls,
        client: None,
        statements: HashMap::new(),
        copies: 1,
        dialect: PhantomData,
    }))
}

/// The `ALTER TABLE … ALTER COLUMN content …` clauses of the compression and storage settings.
fn column_ddl(instance: &str, supported: bool, s: &Settings) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    if let Some(c) = &s.compression {
        if !["pglz", "lz4"].contains(&c.as_str()) {
            crate::bail_usage!(
                "config [systems.{instance}] compression = \"{c}\": use pglz or lz4"
            );
        }
        out.push(format!("SET COMPRESSION {c}"));
    }
    if let Some(st) = &s.storage {
        if !["plain", "main", "external", "extended"].contains(&st.as_str()) {
            crate::bail_usage!(
                "config [systems.{instance}] storage = \"{st}\": use extended, external, main \
                 or plain"
            );
        }
        out.push(format!("SET STORAGE {}", st.to_uppercase()));
    }
    if !out.is_empty() && !supported {
        crate::bail_usage!(
            "config [systems.{instance}]: compression and storage are PostgreSQL column \
             settings this system does not have; remove them"
        );
    }
    Ok(out)
}

/// A PostgreSQL-wire system.
pub struct PgWire<D: Dialect> {
    name: String,
    server: Server,
    database: String,
    schema: String,
    tables: Tables,
    /// Clauses applied to the content column after each reset.
    column: Vec<String>,
    settings: Settings,
    tls: Option<MakeRustlsConnect>,
    client: Option<Client>,
    /// Prepared per-file statements by (insert?, container).
    statements: HashMap<(bool, u32), Statement>,
    copies: u32,
    dialect: PhantomData<D>,
}

/// A TLS connector that verifies the server's certificate chain and host name against the
/// CAs in `ca_file`, or against the Mozilla roots.
fn tls_connector(system: &str, ca_file: Option<&Path>) -> anyhow::Result<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    usage(format!(
                        "config [systems.{system}] ca_file {}: {e}; give a PEM file of CA certificates",
                        path.display()
                    ))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(usage(format!(
                    "config [systems.{system}] ca_file {} holds no usable CA certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Opens a connection and drives it on its own task.
async fn open<T>(
    cfg: &tokio_postgres::Config,
    tls: T,
    system: &'static str,
) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = cfg.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("{system} connection ended: {e}");
        }
    });
    Ok(client)
}

/// Classifies a driver error: a closed connection, an I/O failure, or a server-side
/// connection/shutdown condition (SQLSTATE 08xxx, 57Pxx) means the connection is lost.
pub fn classify(system: &str, context: &str, e: tokio_postgres::Error) -> SysError {
    let code = e.code().map(|c| c.code()).unwrap_or_default();
    let lost = e.is_closed()
        || code.starts_with("08")
        || code.starts_with("57P")
        || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    SysError::from_driver(system, context, &e, lost)
}

/// Whether a failed connect cannot heal by reconnecting: refused credentials (SQLSTATE class
/// 28), a database that does not exist (3D000), or a TLS failure (a rustls error in the
/// chain: an unverifiable certificate stays unverifiable).
fn permanent(e: &tokio_postgres::Error) -> bool {
    let code = e.code().map(|c| c.code()).unwrap_or_default();
    let mut tls = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        tls |= s.is::<rustls::Error>()
            || s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<rustls::Error>());
        source = s.source();
    }
    code.starts_with("28") || code == "3D000" || tls
}

fn not_connected<D: Dialect>() -> SysError {
    SysError::connection(format!("{}: not connected", D::NAME))
}

/// Error mapper for dialect code.
pub fn err<D: Dialect>(context: &str) -> impl FnOnce(tokio_postgres::Error) -> SysError + '_ {
    move |e| classify(D::NAME, context, e)
}

/// Rows per multi-row INSERT of the batched bulk path.
pub const BATCH_ROWS: usize = 100;
/// Bytes per multi-row INSERT of the batched bulk path (a batch ends at whichever comes first).
pub const BATCH_BYTES: usize = 8 << 20;

/// `INSERT INTO table (columns) VALUES ($1, …), …` for `rows` rows of `tables`' columns; with
/// content keys `… ON CONFLICT (content_key) DO NOTHING`, so a content the table holds (or
/// that an earlier row of the same statement brings) is not stored again.
pub fn insert_sql(tables: &Tables, table: &str, rows: usize) -> String {
    let n = tables.column_count();
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let row: Vec<String> = (1..=n).map(|c| format!("${}", n * r + c)).collect();
            format!("({})", row.join(", "))
        })
        .collect();
    let conflict = match tables.layout().keys {
        KeyMode::Name => String::new(),
        KeyMode::Content => format!(" ON CONFLICT ({}) DO NOTHING", tables.key_column()),
    };
    format!(
        "INSERT INTO {table} ({}) VALUES {}{conflict}",
        tables.columns(),
        values.join(", ")
    )
}

/// One file as the parameters of a row.
struct Row<'a> {
    id: i32,
    name: &'a str,
    key: &'a str,
    content: &'a [u8],
}

impl<'a> Row<'a> {
    fn new(layout: &Layout, f: &'a FileEntry, content: &'a [u8]) -> Row<'a> {
        Row {
            id: f.id as i32,
            name: &f.name,
            key: layout.key_of(f),
            content,
        }
    }

    /// The parameter a delete selects the row by ([`Tables::key_column`]).
    fn key(&self, keys: KeyMode) -> &(dyn ToSql + Sync) {
        match keys {
            KeyMode::Name => &self.id,
            KeyMode::Content => &self.key,
        }
    }

    /// Appends the row's parameters in the order of [`Tables::columns`].
    fn params<'b>(&'b self, keys: KeyMode, out: &mut Vec<&'b (dyn ToSql + Sync)>) {
        match keys {
            KeyMode::Name => {
                out.extend([&self.id as &(dyn ToSql + Sync), &self.name, &self.content])
            }
            KeyMode::Content => out.extend([&self.key as &(dyn ToSql + Sync), &self.content]),
        }
    }
}

/// The batched bulk path: for each container in turn, multi-row INSERTs ([`insert_sql`]) of
/// up to [`BATCH_ROWS`] rows or [`BATCH_BYTES`] bytes, each one statement, reading files ahead
/// on another thread.
pub async fn batched_insert<D: Dialect>(
    c: &Client,
    tables: &Tables,
    ds: &DataSet,
) -> SysResult<()> {
    let layout = *tables.layout();
    for k in tables.containers() {
        let table = tables.name(k);
        let mut files = ds.stream_where(move |f| layout.container_of(f) == k);
        let mut batch: Vec<(FileEntry, Bytes)> = Vec::new();
        let mut bytes = 0;
        loop {
            let next = files.next().await;
            let done = next.is_none();
            if let Some(item) = next {
                let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
                bytes += content.len();
                batch.push((f, content));
            }
            if !batch.is_empty() && (done || batch.len() >= BATCH_ROWS || bytes >= BATCH_BYTES) {
                let rows: Vec<Row<'_>> = batch
                    .iter()
                    .map(|(f, content)| Row::new(&layout, f, content))
                    .collect();
                let mut params = Vec::with_capacity(tables.column_count() * rows.len());
                for row in &rows {
                    row.params(layout.keys, &mut params);
                }
                c.execute(&insert_sql(tables, &table, rows.len()), &params)
                    .await
                    .map_err(err::<D>("batched INSERT"))?;
                batch.clear();
                bytes = 0;
            }
            if done {
                break;
            }
        }
    }
    Ok(())
}

impl<D: Dialect> PgWire<D> {
    /// A new connection to the server, named `application` in its activity view.
    async fn open_client(&self, application: &str) -> SysResult<Client> {
        let s = &self.server;
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&s.host)
            .port(s.port)
            .user(s.user.as_deref().unwrap_or_default())
            .dbname(&self.database)
            .application_name(application)
            .connect_timeout(s.connect_timeout);
        if let Some(pw) = &s.password {
            cfg.password(pw.expose());
        }
        let opened = match &self.tls {
            Some(tls) => {
                cfg.ssl_mode(SslMode::Require);
                open(&cfg, tls.clone(), D::NAME).await
            }
            None => open(&cfg, NoTls, D::NAME).await,
        };
        opened.map_err(|e| {
            let permanent = permanent(&e);
            let mut se = classify(D::NAME, &format!("cannot connect to {}", s.address()), e);
            if permanent {
                se.kind = crate::model::ErrorKind::Failed;
            }
            se
        })
    }

    fn client(&self) -> SysResult<&Client> {
        match &self.client {
            Some(c) if !c.is_closed() => Ok(c),
            _ => Err(not_connected::<D>()),
        }
    }

    /// The prepared per-file insert or delete of `f`'s table, prepared on first use.
    async fn statement(&mut self, insert: bool, f: &FileEntry) -> SysResult<Statement> {
        let k = self.tables.layout().container_of(f);
        if let Some(st) = self.statements.get(&(insert, k)) {
            return Ok(st.clone());
        }
        let t = &self.tables;
        let table = t.name(k);
        // The types of the row's columns (Tables::columns), and of the key among them.
        let (row, key) = match t.layout().keys {
            KeyMode::Name => (vec![Type::INT4, Type::TEXT, Type::BYTEA], Type::INT4),
            KeyMode::Content => (vec![Type::TEXT, Type::BYTEA], Type::TEXT),
        };
        let (sql, types) = if insert {
            (insert_sql(t, &table, 1), row)
        } else {
            (
                format!("DELETE FROM {table} WHERE {} = $1", t.key_column()),
                vec![key],
            )
        };
        let st = self
            .client()?
            .prepare_typed(&sql, &types)
            .await
            .map_err(err::<D>("prepare"))?;
        self.statements.insert((insert, k), st.clone());
        Ok(st)
    }
}

#[async_trait]
impl<D: Dialect> System for PgWire<D> {
    fn name(&self) -> &str {
        &self.name
    }

    fn target(&self) -> String {
        let s = &self.server;
        format!(
            "{} database {} schema {} as {}{}",
            s.address(),
            self.database,
            self.schema,
            s.user.as_deref().unwrap_or_default(),
            if self.settings.tls {
                ", TLS verified"
            } else {
                ""
            }
        )
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        let client = self.open_client("dedup-lab").await?;
        let info = D::server_info(&client).await?;
        self.copies = match self.settings.replicas {
            Some(r) => r,
            None => D::native_copies(&client).await?,
        };
        self.client = Some(client);
        self.statements.clear();
        Ok(info)
    }

    async fn meter(&mut self) -> SysResult<Box<dyn Meter>> {
        Ok(Box::new(PgMeter::<D> {
            client: self.open_client("dedup-lab meter").await?,
            tables: self.tables.all(),
            copies: self.copies,
            dialect: PhantomData,
        }))
    }

    async fn inspect(&mut self) -> SysResult<Holding> {
        self.statements.clear();
        let schema = self.schema.clone();
        let c = self.client()?;
        let row = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
                                WHERE table_schema = $1 AND table_name = $2), \
                        EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1)",
                &[&schema, &MARKER_TABLE],
            )
            .await
            .map_err(err::<D>("inspecting schema"))?;
        let (marked, has_tables): (bool, bool) = (row.get(0), row.get(1));
        if !marked {
            // An existing schema without tables holds nothing to lose: it is what a reset
            // cut short between CREATE SCHEMA and the marker leaves behind.
            return Ok(if has_tables {
                Holding::Foreign(format!(
                    "schema {schema} holds tables but no {MARKER_TABLE} table"
                ))
            } else {
                Holding::Absent
            });
        }
        let note: Option<String> = c
            .query_opt(
                &format!("SELECT note FROM {schema}.{MARKER_TABLE} LIMIT 1"),
                &[],
            )
            .await
            .map_err(err::<D>("reading the marker"))?
            .map(|r| r.get(0));
        Ok(Holding::Marked(note.unwrap_or_default()))
    }

    async fn recreate(&mut self, marker: &Marker) -> SysResult<()> {
        let schema = self.schema.clone();
        let row = match self.tables.layout().keys {
            KeyMode::Name => "id INT4 PRIMARY KEY, name text NOT NULL, content bytea NOT NULL",
            KeyMode::Content => "content_key text PRIMARY KEY, content bytea NOT NULL",
        };
        let mut tables = String::new();
        for table in self.tables.all() {
            tables.push_str(&format!("CREATE TABLE {table} ({row});\n"));
            for c in &self.column {
                tables.push_str(&format!("ALTER TABLE {table} ALTER COLUMN content {c};\n"));
            }
        }
        let c = match &mut self.client {
            Some(c) if !c.is_closed() => c,
            _ => return Err(not_connected::<D>()),
        };
        // One transaction: a reset cut short leaves the old schema or the new one, marked.
        let tx = c.transaction().await.map_err(err::<D>("BEGIN"))?;
        tx.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE;
             CREATE SCHEMA {schema};
             CREATE TABLE {schema}.{MARKER_TABLE} (note text NOT NULL);
             {tables}"
        ))
        .await
        .map_err(err::<D>("recreating schema"))?;
        tx.execute(
            &format!("INSERT INTO {schema}.{MARKER_TABLE} VALUES ($1)"),
            &[&marker.text],
        )
        .await
        .map_err(err::<D>("writing the marker"))?;
        tx.commit().await.map_err(err::<D>("COMMIT"))
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        D::bulk_insert(self.client()?, &self.tables, ds).await
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        let st = self.statement(true, file).await?;
        let layout = *self.tables.layout();
        let row = Row::new(&layout, file, &content);
        let mut params = Vec::with_capacity(3);
        row.params(layout.keys, &mut params);
        self.client()?
            .execute(&st, &params)
            .await
            .map_err(err::<D>("insert"))?;
        Ok(())
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        let st = self.statement(false, file).await?;
        let layout = *self.tables.layout();
        let row = Row::new(&layout, file, &[]);
        let n = self
            .client()?
            .execute(&st, &[row.key(layout.keys)])
            .await
            .map_err(err::<D>("delete"))?;
        if n != 1 {
            return Err(SysError::failed(format!(
                "{}: delete of {} removed {n} rows",
                D::NAME,
                file.name
            )));
        }
        Ok(())
    }

    async fn maintenance(&mut self) -> SysResult<String> {
        D::maintenance(self.client()?, &self.tables.all()).await
    }

    async fn settle(&mut self) -> SysResult<()> {
        D::settle(self.client()?).await
    }

    async fn count(&mut self) -> SysResult<u64> {
        let n: i64 = self
            .client()?
            .query_one(&self.tables.count_sql(), &[])
            .await
            .map_err(err::<D>("count"))?
            .get(0);
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sql_numbers_parameters_in_row_order() {
        let names = Tables::new(Some("s"), Layout::default());
        assert_eq!(
            insert_sql(&names, "s.files", 2),
            "INSERT INTO s.files (id, name, content) VALUES ($1, $2, $3), ($4, $5, $6)"
        );
        let content = Tables::new(
            Some("s"),
            Layout {
                keys: KeyMode::Content,
                containers: 2,
            },
        );
        assert_eq!(
            insert_sql(&content, "s.files_1", 2),
            "INSERT INTO s.files_1 (content_key, content) VALUES ($1, $2), ($3, $4) \
             ON CONFLICT (content_key) DO NOTHING"
        );
    }
}
