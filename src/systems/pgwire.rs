//! Everything PostgreSQL-wire systems share: settings, connection, lab namespace, per-file
//! statements, counting and error classification. A [`Dialect`] supplies what differs
//! (bulk path, maintenance, settle, size function, version).

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Socket, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    ErrorKind, MARKER_TABLE, ServerInfo, SysError, SysResult, System, SystemContext,
    check_namespace, error_chain, parse_section,
};
use crate::dataset::{DataSet, FileEntry};
use crate::error::usage;
use crate::secret::{Secret, SecretSource};

/// What differs between PostgreSQL-wire systems.
#[async_trait]
pub trait Dialect: Send + Sync + 'static {
    /// Registry name.
    const NAME: &'static str;
    /// Port when the config gives none.
    const DEFAULT_PORT: u16;
    /// User when the config gives none.
    const DEFAULT_USER: &'static str;
    /// Database when the config gives none.
    const DEFAULT_DATABASE: &'static str;

    /// Product and version, asked of a fresh connection.
    async fn server_info(c: &Client) -> SysResult<ServerInfo>;
    /// Full copies of the data the native size function counts.
    async fn native_copies(c: &Client, settings: &Settings) -> SysResult<u32>;
    /// Loads every file into `table` (`schema.files`).
    async fn bulk_insert(c: &Client, table: &str, ds: &DataSet) -> SysResult<()>;
    /// The space-reclaiming operation; returns what it did.
    async fn maintenance(c: &Client, table: &str) -> SysResult<String>;
    /// Makes writes durable before a probe reads.
    async fn settle(c: &Client) -> SysResult<()>;
    /// Physical size of `table`, bytes.
    async fn native_size(c: &Client, table: &str) -> SysResult<u64>;
}

/// `[systems.postgres]` / `[systems.cockroachdb]`
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: Option<u16>,
    /// User.
    pub user: Option<String>,
    /// Database.
    pub database: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// Lab schema; must start with `dedup_lab`.
    pub schema: String,
    /// Seconds to wait for a connection.
    pub connect_timeout_s: u64,
    /// Full copies the native size counts; default: asked of the server.
    pub replicas: Option<u32>,
    /// Connect over TLS, always verifying the server certificate and host name.
    pub tls: bool,
    /// PEM file of the CA(s) to trust for TLS; default: the Mozilla roots (webpki-roots).
    pub ca_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: "127.0.0.1".into(),
            port: None,
            user: None,
            database: None,
            password_env: None,
            password_file: None,
            schema: "dedup_lab".into(),
            connect_timeout_s: 10,
            replicas: None,
            tls: false,
            ca_file: None,
        }
    }
}

/// Builds a PostgreSQL-wire adapter for dialect `D` from its config section.
pub fn build<D: Dialect>(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    let settings: Settings = parse_section(D::NAME, ctx.section)?;
    check_namespace(D::NAME, "schema", &settings.schema)?;
    let password = SecretSource::from_keys(
        settings.password_env.clone(),
        settings.password_file.clone(),
    )
    .resolve(&format!("config [systems.{}] password", D::NAME))?;
    let tls = match (settings.tls, &settings.ca_file) {
        (true, ca) => Some(tls_connector(D::NAME, ca.as_deref())?),
        (false, None) => None,
        (false, Some(_)) => {
            return Err(usage(format!(
                "config [systems.{}]: ca_file is set but tls = false; set tls = true or remove ca_file",
                D::NAME
            )));
        }
    };
    Ok(Box::new(PgWire::<D> {
        settings,
        password,
        tls,
        client: None,
        insert: None,
        delete: None,
        copies: 1,
        dialect: PhantomData,
    }))
}

/// A PostgreSQL-wire system.
pub struct PgWire<D: Dialect> {
    settings: Settings,
    password: Option<Secret>,
    tls: Option<MakeRustlsConnect>,
    client: Option<Client>,
    insert: Option<Statement>,
    delete: Option<Statement>,
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
    let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
    let lost = e.is_closed()
        || code.starts_with("08")
        || code.starts_with("57P")
        || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    let msg = format!("{system}: {context}: {}", error_chain(&e));
    if lost {
        SysError::connection(msg)
    } else {
        SysError::failed(msg)
    }
}

/// Error mapper for dialect code.
pub fn err<D: Dialect>(context: &str) -> impl FnOnce(tokio_postgres::Error) -> SysError + '_ {
    move |e| classify(D::NAME, context, e)
}

/// Rows per multi-row INSERT of the batched bulk path.
pub const BATCH_ROWS: usize = 100;
/// Bytes per multi-row INSERT of the batched bulk path (a batch ends at whichever comes first).
pub const BATCH_BYTES: usize = 8 << 20;

/// `INSERT INTO table (id, name, content) VALUES ($1, $2, $3), …` for `rows` rows.
pub fn insert_batch_sql(table: &str, rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| format!("(${}, ${}, ${})", 3 * r + 1, 3 * r + 2, 3 * r + 3))
        .collect();
    format!(
        "INSERT INTO {table} (id, name, content) VALUES {}",
        values.join(", ")
    )
}

/// The batched bulk path: multi-row INSERTs of up to [`BATCH_ROWS`] rows or [`BATCH_BYTES`]
/// bytes, each one statement, reading files ahead on another thread.
pub async fn batched_insert<D: Dialect>(c: &Client, table: &str, ds: &DataSet) -> SysResult<()> {
    let mut files = ds.stream();
    let mut batch: Vec<(i32, String, Bytes)> = Vec::new();
    let mut bytes = 0;
    loop {
        let next = files.next().await;
        let done = next.is_none();
        if let Some(item) = next {
            let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
            bytes += content.len();
            batch.push((f.id as i32, f.name, content));
        }
        if !batch.is_empty() && (done || batch.len() >= BATCH_ROWS || bytes >= BATCH_BYTES) {
            let contents: Vec<&[u8]> = batch.iter().map(|(_, _, b)| &b[..]).collect();
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(3 * batch.len());
            for ((id, name, _), content) in batch.iter().zip(&contents) {
                params.extend([id as &(dyn ToSql + Sync), name, content]);
            }
            c.execute(&insert_batch_sql(table, batch.len()), &params)
                .await
                .map_err(err::<D>("batched INSERT"))?;
            batch.clear();
            bytes = 0;
        }
        if done {
            return Ok(());
        }
    }
}

impl<D: Dialect> PgWire<D> {
    fn client(&self) -> SysResult<&Client> {
        match &self.client {
            Some(c) if !c.is_closed() => Ok(c),
            _ => Err(SysError::connection(format!("{}: not connected", D::NAME))),
        }
    }

    fn table(&self) -> String {
        format!("{}.files", self.settings.schema)
    }

    async fn statement(&mut self, insert: bool) -> SysResult<Statement> {
        let cached = if insert { &self.insert } else { &self.delete };
        if let Some(st) = cached {
            return Ok(st.clone());
        }
        let (sql, types) = if insert {
            (
                insert_batch_sql(&self.table(), 1),
                vec![Type::INT4, Type::TEXT, Type::BYTEA],
            )
        } else {
            (
                format!("DELETE FROM {} WHERE id = $1", self.table()),
                vec![Type::INT4],
            )
        };
        let st = self
            .client()?
            .prepare_typed(&sql, &types)
            .await
            .map_err(err::<D>("prepare"))?;
        *(if insert {
            &mut self.insert
        } else {
            &mut self.delete
        }) = Some(st.clone());
        Ok(st)
    }
}

#[async_trait]
impl<D: Dialect> System for PgWire<D> {
    fn name(&self) -> &'static str {
        D::NAME
    }

    fn native_copies(&self) -> Option<u32> {
        Some(self.copies)
    }

    fn target(&self) -> String {
        let s = &self.settings;
        format!(
            "{}:{} database {} schema {} as {}{}",
            s.host,
            s.port.unwrap_or(D::DEFAULT_PORT),
            s.database.as_deref().unwrap_or(D::DEFAULT_DATABASE),
            s.schema,
            s.user.as_deref().unwrap_or(D::DEFAULT_USER),
            if s.tls { ", TLS verified" } else { "" }
        )
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        let s = &self.settings;
        let port = s.port.unwrap_or(D::DEFAULT_PORT);
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&s.host)
            .port(port)
            .user(s.user.as_deref().unwrap_or(D::DEFAULT_USER))
            .dbname(s.database.as_deref().unwrap_or(D::DEFAULT_DATABASE))
            .application_name("dedup-lab")
            .connect_timeout(Duration::from_secs(s.connect_timeout_s));
        if let Some(pw) = &self.password {
            cfg.password(pw.expose());
        }
        let opened = match &self.tls {
            Some(tls) => {
                cfg.ssl_mode(SslMode::Require);
                open(&cfg, tls.clone(), D::NAME).await
            }
            None => open(&cfg, NoTls, D::NAME).await,
        };
        let client = opened.map_err(|e| {
            let mut se = classify(D::NAME, &format!("cannot connect to {}:{port}", s.host), e);
            // Authentication, unknown-database and TLS errors do not heal by reconnecting.
            let permanent = ["password", "does not exist", "TLS", "certificate"];
            if permanent.iter().any(|p| se.message.contains(p)) {
                se.kind = ErrorKind::Failed;
            }
            se
        })?;
        let info = D::server_info(&client).await?;
        self.copies = match self.settings.replicas {
            Some(r) => r,
            None => D::native_copies(&client, &self.settings).await?,
        };
        self.client = Some(client);
        self.insert = None;
        self.delete = None;
        Ok(info)
    }

    async fn reset(&mut self) -> SysResult<()> {
        self.insert = None;
        self.delete = None;
        let schema = self.settings.schema.clone();
        let c = self.client()?;
        let row = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1), \
                        EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2), \
                        EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1)",
                &[&schema, &MARKER_TABLE],
            )
            .await
            .map_err(err::<D>("inspecting schema"))?;
        let (exists, marked, has_tables): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
        if exists && has_tables && !marked {
            return Err(SysError::unsafe_namespace(format!(
                "{}: schema {schema} exists and holds tables but has no {MARKER_TABLE} table: it \
                 was not created by dedup-lab; refusing to drop it — configure another schema",
                D::NAME
            )));
        }
        c.batch_execute(&format!(
            "BEGIN;
             DROP SCHEMA IF EXISTS {schema} CASCADE;
             CREATE SCHEMA {schema};
             CREATE TABLE {schema}.{MARKER_TABLE} (note text NOT NULL);
             INSERT INTO {schema}.{MARKER_TABLE} VALUES ('created by dedup-lab; dropped and recreated by its resets');
             CREATE TABLE {schema}.files (id INT4 PRIMARY KEY, name text NOT NULL, content bytea NOT NULL);
             COMMIT;"
        ))
        .await
        .map_err(err::<D>("recreating schema"))
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        let table = self.table();
        D::bulk_insert(self.client()?, &table, ds).await
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        let st = self.statement(true).await?;
        self.client()?
            .execute(&st, &[&(file.id as i32), &file.name, &&content[..]])
            .await
            .map_err(err::<D>("insert"))?;
        Ok(())
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        let st = self.statement(false).await?;
        let n = self
            .client()?
            .execute(&st, &[&(file.id as i32)])
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
        let table = self.table();
        D::maintenance(self.client()?, &table).await
    }

    async fn settle(&mut self) -> SysResult<()> {
        D::settle(self.client()?).await
    }

    async fn count(&mut self) -> SysResult<u64> {
        let n: i64 = self
            .client()?
            .query_one(&format!("SELECT count(*) FROM {}", self.table()), &[])
            .await
            .map_err(err::<D>("count"))?
            .get(0);
        Ok(n as u64)
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        let table = self.table();
        D::native_size(self.client()?, &table).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sql_numbers_parameters_in_row_order() {
        assert_eq!(
            insert_batch_sql("s.files", 2),
            "INSERT INTO s.files (id, name, content) VALUES ($1, $2, $3), ($4, $5, $6)"
        );
    }
}
