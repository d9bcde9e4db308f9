//! `postgres`: PostgreSQL over its wire protocol (tokio-postgres).
//!
//! Namespace: one schema (default `dedup_lab`) carrying a marker comment. Bulk path: one
//! `COPY … FROM STDIN (FORMAT binary)`; per-file: prepared INSERT / DELETE; maintenance:
//! `VACUUM FULL` + `CHECKPOINT`; native size: `pg_total_relation_size` over the schema's tables
//! (heap, TOAST and indexes).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::pin_mut;
use serde::Deserialize;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Statement};

use super::{
    ProbeSet, ServerInfo, SysError, SysResult, System, SystemContext, SystemDef, check_namespace,
    parse_section,
};
use crate::dataset::{DataSet, FileEntry};
use crate::secret::{Secret, SecretSource};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    name: "postgres",
    embedded: false,
    about: "PostgreSQL: COPY BINARY bulk load, VACUUM FULL maintenance",
    build,
};

/// Comment on the lab schema that marks it as owned by dedup-lab.
pub const MARKER: &str = "owned by dedup-lab: dropped and recreated by its resets";

/// `[systems.postgres]`
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    host: String,
    port: u16,
    user: String,
    database: String,
    /// Environment variable holding the password.
    password_env: Option<String>,
    /// File holding the password.
    password_file: Option<PathBuf>,
    /// Lab schema; must start with `dedup_lab`.
    schema: String,
    /// Directories for the `fs` probe (e.g. the data directory of a local server).
    fs_probe: Vec<PathBuf>,
    /// Seconds to wait for a connection.
    connect_timeout_s: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "postgres".into(),
            database: "postgres".into(),
            password_env: None,
            password_file: None,
            schema: "dedup_lab".into(),
            fs_probe: Vec::new(),
            connect_timeout_s: 10,
        }
    }
}

fn build(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    let s: Settings = parse_section(DEF.name, ctx.section)?;
    check_namespace(DEF.name, "schema", &s.schema)?;
    let password = SecretSource::from_keys(s.password_env.clone(), s.password_file.clone())
        .resolve("config [systems.postgres] password")?;
    Ok(Box::new(Postgres {
        settings: s,
        password,
        client: None,
        insert: None,
        delete: None,
    }))
}

/// The PostgreSQL adapter.
struct Postgres {
    settings: Settings,
    password: Option<Secret>,
    client: Option<Client>,
    insert: Option<Statement>,
    delete: Option<Statement>,
}

/// Classifies a driver error: a closed connection, an I/O failure, or a server-side
/// connection/shutdown condition (SQLSTATE 08xxx, 57Pxx) means the connection is lost.
fn classify(context: &str, e: tokio_postgres::Error) -> SysError {
    let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
    let lost = e.is_closed()
        || code.starts_with("08")
        || code.starts_with("57P")
        || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    let msg = format!("postgres: {context}: {}", super::error_chain(&e));
    if lost {
        SysError::connection(msg)
    } else {
        SysError::failed(msg)
    }
}

fn err(context: &str) -> impl FnOnce(tokio_postgres::Error) -> SysError + '_ {
    move |e| classify(context, e)
}

impl Postgres {
    fn client(&self) -> SysResult<&Client> {
        match &self.client {
            Some(c) if !c.is_closed() => Ok(c),
            _ => Err(SysError::connection("postgres: not connected")),
        }
    }

    fn table(&self) -> String {
        format!("{}.files", self.settings.schema)
    }

    async fn statement(&mut self, insert: bool) -> SysResult<Statement> {
        let slot = if insert { &self.insert } else { &self.delete };
        if let Some(st) = slot {
            return Ok(st.clone());
        }
        let (sql, types) = if insert {
            (
                format!(
                    "INSERT INTO {} (id, name, content) VALUES ($1, $2, $3)",
                    self.table()
                ),
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
            .map_err(err("prepare"))?;
        if insert {
            self.insert = Some(st.clone());
        } else {
            self.delete = Some(st.clone());
        }
        Ok(st)
    }
}

#[async_trait]
impl System for Postgres {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn probes(&self) -> ProbeSet {
        ProbeSet {
            native: true,
            fs: self.settings.fs_probe.clone(),
            copies: 1,
        }
    }

    fn target(&self) -> String {
        let s = &self.settings;
        format!(
            "{}:{} database {} schema {} as {}",
            s.host, s.port, s.database, s.schema, s.user
        )
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        let s = &self.settings;
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&s.host)
            .port(s.port)
            .user(&s.user)
            .dbname(&s.database)
            .application_name("dedup-lab")
            .connect_timeout(Duration::from_secs(s.connect_timeout_s));
        if let Some(pw) = &self.password {
            cfg.password(pw.expose());
        }
        let (client, connection) = cfg.connect(NoTls).await.map_err(|e| {
            let mut se = classify(&format!("cannot connect to {}:{}", s.host, s.port), e);
            // Authentication and unknown-database errors will not heal by retrying.
            if se.message.contains("password") || se.message.contains("does not exist") {
                se.kind = super::ErrorKind::Failed;
            }
            se
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("postgres connection ended: {e}");
            }
        });
        let version: String = client
            .query_one("SHOW server_version", &[])
            .await
            .map_err(err("reading server version"))?
            .get(0);
        self.client = Some(client);
        self.insert = None;
        self.delete = None;
        Ok(ServerInfo {
            product: "PostgreSQL".into(),
            version,
        })
    }

    async fn reset(&mut self) -> SysResult<()> {
        self.insert = None;
        self.delete = None;
        let schema = self.settings.schema.clone();
        let c = self.client()?;
        let row = c
            .query_opt(
                "SELECT coalesce(obj_description(oid, 'pg_namespace'), '') \
                 FROM pg_namespace WHERE nspname = $1",
                &[&schema],
            )
            .await
            .map_err(err("inspecting schema"))?;
        if let Some(row) = row {
            let comment: String = row.get(0);
            if comment != MARKER {
                return Err(SysError::unsafe_namespace(format!(
                    "postgres: schema {schema} exists but was not created by dedup-lab (its \
                     comment is not the dedup-lab marker); refusing to drop it — configure \
                     another schema"
                )));
            }
        }
        c.batch_execute(&format!(
            "BEGIN;
             DROP SCHEMA IF EXISTS {schema} CASCADE;
             CREATE SCHEMA {schema};
             COMMENT ON SCHEMA {schema} IS '{MARKER}';
             CREATE TABLE {schema}.files (id integer PRIMARY KEY, name text NOT NULL, content bytea NOT NULL);
             COMMIT;"
        ))
        .await
        .map_err(err("recreating schema"))
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        let sink = self
            .client()?
            .copy_in(&format!(
                "COPY {} (id, name, content) FROM STDIN (FORMAT binary)",
                self.table()
            ))
            .await
            .map_err(err("starting COPY"))?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::TEXT, Type::BYTEA]);
        pin_mut!(writer);
        let mut files = ds.stream();
        while let Some(item) = files.next().await {
            let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
            writer
                .as_mut()
                .write(&[&(f.id as i32), &f.name, &&content[..]])
                .await
                .map_err(err("COPY"))?;
        }
        writer.finish().await.map_err(err("finishing COPY"))?;
        Ok(())
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        let st = self.statement(true).await?;
        self.client()?
            .execute(&st, &[&(file.id as i32), &file.name, &&content[..]])
            .await
            .map_err(err("insert"))?;
        Ok(())
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        let st = self.statement(false).await?;
        let n = self
            .client()?
            .execute(&st, &[&(file.id as i32)])
            .await
            .map_err(err("delete"))?;
        if n != 1 {
            return Err(SysError::failed(format!(
                "postgres: delete of {} removed {n} rows",
                file.name
            )));
        }
        Ok(())
    }

    async fn maintenance(&mut self) -> SysResult<String> {
        let sql = format!("VACUUM FULL {}", self.table());
        let c = self.client()?;
        c.batch_execute(&sql).await.map_err(err("VACUUM FULL"))?;
        c.batch_execute("CHECKPOINT")
            .await
            .map_err(err("CHECKPOINT"))?;
        Ok(format!("{sql}; CHECKPOINT"))
    }

    async fn settle(&mut self) -> SysResult<()> {
        self.client()?
            .batch_execute("CHECKPOINT")
            .await
            .map_err(|e| {
                let mut se = classify("CHECKPOINT", e);
                if se.message.contains("permission") || se.message.contains("superuser") {
                    se.message.push_str(
                        " (settling needs CHECKPOINT: grant the role pg_checkpoint or superuser)",
                    );
                }
                se
            })
    }

    async fn count(&mut self) -> SysResult<u64> {
        let n: i64 = self
            .client()?
            .query_one(&format!("SELECT count(*) FROM {}", self.table()), &[])
            .await
            .map_err(err("count"))?
            .get(0);
        Ok(n as u64)
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        let n: i64 = self
            .client()?
            .query_one(NATIVE_SIZE_SQL, &[&self.settings.schema])
            .await
            .map_err(err("pg_total_relation_size"))?
            .get(0);
        Ok(n as u64)
    }
}

/// Physical size of the lab schema: heap, TOAST and indexes of every table in it.
pub const NATIVE_SIZE_SQL: &str = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $1 AND c.relkind = 'r'";
