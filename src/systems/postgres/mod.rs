//! `postgres`: PostgreSQL. Bulk path: one `COPY … FROM STDIN (FORMAT binary)` per lab table;
//! maintenance: `VACUUM FULL` + `CHECKPOINT`; settle: `CHECKPOINT`; native size:
//! `pg_total_relation_size` of the lab tables (heap, TOAST and indexes). Connection, namespace
//! and per-file statements are shared with every PostgreSQL-wire system ([`super::pgwire`]).
//!
//! COPY has no conflict clause, so with content keys the bulk path copies each container's
//! files into a temporary staging table and moves them with `INSERT … SELECT … ON CONFLICT
//! (content_key) DO NOTHING`. The staging column is stored uncompressed (`STORAGE EXTERNAL`):
//! PostgreSQL keeps a value's compression when it copies it between tables, so the lab
//! table's own compression setting decides, as it does for the COPY of name keys.

mod lab;
mod native;

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, pin_mut};
use tokio_postgres::Client;

use super::pgwire::{self, Dialect, err};
use super::toolkit::Tables;
use super::{SystemDef, TEST_HOOKS, TestHooks};
use crate::dataset::{DataSet, FileEntry};
use crate::model::{KeyMode, Layout, ServerInfo, SysError, SysResult};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    kind: Postgres::NAME,
    aliases: &[],
    embedded: false,
    about: "PostgreSQL: COPY BINARY bulk load, VACUUM FULL maintenance",
    build: pgwire::build::<Postgres>,
    lab: &[&lab::Postgres],
    native_loader: Some(native::LOADER),
    tests: TestHooks {
        namespace_key: "schema",
        ..TEST_HOOKS
    },
};

/// Start of a binary COPY stream: signature, flags, header extension length.
pub const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// End of a binary COPY stream: a field count of -1.
pub const COPY_TRAILER: &[u8] = &[0xff, 0xff];

/// The binary COPY encoding of `f`'s row up to its content, in the columns of
/// [`Tables::columns`]: with name keys field count 3, `id` (int4), `name` (text); with content
/// keys field count 2, `content_key` (text); then the length of `content` (bytea), which
/// follows.
pub fn copy_row_header(layout: &Layout, f: &FileEntry, content_len: usize) -> Bytes {
    let key = layout.key_of(f);
    let mut h = BytesMut::with_capacity(18 + key.len());
    match layout.keys {
        KeyMode::Name => {
            h.put_i16(3);
            h.put_i32(4);
            h.put_i32(f.id as i32);
        }
        KeyMode::Content => h.put_i16(2),
    }
    h.put_i32(key.len() as i32);
    h.put_slice(key.as_bytes());
    h.put_i32(content_len as i32);
    h.freeze()
}

/// Classifies an error of `context`, with `hint` (the privilege to grant) when the server
/// refused the statement for want of a privilege.
fn denied<'a>(
    context: &'a str,
    hint: &'a str,
) -> impl FnOnce(tokio_postgres::Error) -> SysError + 'a {
    move |e| {
        // 42501: insufficient_privilege.
        let refused = e.code().is_some_and(|c| c.code() == "42501");
        let mut se = pgwire::classify(Postgres::NAME, context, e);
        if refused {
            se.message.push_str(hint);
        }
        se
    }
}

/// The temporary table the content-key bulk path copies into.
const STAGING: &str = "pg_temp.dedup_lab_staging";

/// Copies the files of container `k` into `table` with one binary COPY.
async fn copy_in(c: &Client, tables: &Tables, k: u32, table: &str, ds: &DataSet) -> SysResult<()> {
    let sink = c
        .copy_in::<_, Bytes>(&format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            tables.columns()
        ))
        .await
        .map_err(err::<Postgres>("starting COPY"))?;
    pin_mut!(sink);
    // Each file goes out as its small row header followed by the file's own buffer: the
    // driver frames large buffers without copying them. `feed` leaves flushing to the
    // driver instead of waiting for every row.
    sink.feed(Bytes::from_static(COPY_SIGNATURE))
        .await
        .map_err(err::<Postgres>("COPY"))?;
    let layout = *tables.layout();
    let mut files = ds.stream_where(move |f| layout.container_of(f) == k);
    while let Some(item) = files.next().await {
        let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
        sink.feed(copy_row_header(&layout, &f, content.len()))
            .await
            .map_err(err::<Postgres>("COPY"))?;
        sink.feed(content).await.map_err(err::<Postgres>("COPY"))?;
    }
    sink.feed(Bytes::from_static(COPY_TRAILER))
        .await
        .map_err(err::<Postgres>("COPY"))?;
    sink.finish()
        .await
        .map_err(err::<Postgres>("finishing COPY"))?;
    Ok(())
}

/// The PostgreSQL dialect.
pub struct Postgres;

#[async_trait]
impl Dialect for Postgres {
    const NAME: &'static str = "postgres";
    const DEFAULTS: (u16, &'static str, &'static str) = (5432, "postgres", "postgres");
    const COLUMN_SETTINGS: bool = true;

    async fn server_info(c: &Client) -> SysResult<ServerInfo> {
        let version: String = c
            .query_one("SHOW server_version", &[])
            .await
            .map_err(err::<Self>("reading server version"))?
            .get(0);
        Ok(ServerInfo {
            product: "PostgreSQL".into(),
            version,
        })
    }

    async fn native_copies(_: &Client) -> SysResult<u32> {
        // pg_total_relation_size measures this server's files: one copy.
        Ok(1)
    }

    async fn bulk_insert(c: &Client, tables: &Tables, ds: &DataSet) -> SysResult<()> {
        if tables.layout().keys == KeyMode::Name {
            for k in tables.containers() {
                copy_in(c, tables, k, &tables.name(k), ds).await?;
            }
            return Ok(());
        }
        // A staging table left by a load cut short in this session goes first.
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS {STAGING};
             CREATE TEMP TABLE dedup_lab_staging (content_key text NOT NULL, content bytea NOT NULL);
             ALTER TABLE {STAGING} ALTER COLUMN content SET STORAGE EXTERNAL;"
        ))
        .await
        .map_err(denied(
            "creating the staging table",
            " (content keys stage the bulk load in a temporary table: grant the role TEMPORARY \
             on the database)",
        ))?;
        for k in tables.containers() {
            copy_in(c, tables, k, STAGING, ds).await?;
            c.batch_execute(&format!(
                "INSERT INTO {} (content_key, content) SELECT content_key, content FROM {STAGING} \
                 ON CONFLICT (content_key) DO NOTHING;
                 TRUNCATE {STAGING};",
                tables.name(k)
            ))
            .await
            .map_err(err::<Self>("INSERT … SELECT from the staging table"))?;
        }
        c.batch_execute(&format!("DROP TABLE {STAGING}"))
            .await
            .map_err(err::<Self>("dropping the staging table"))
    }

    async fn maintenance(c: &Client, tables: &[String]) -> SysResult<String> {
        let sql = format!("VACUUM FULL {}", tables.join(", "));
        c.batch_execute(&sql)
            .await
            .map_err(err::<Self>("VACUUM FULL"))?;
        Self::settle(c).await?;
        Ok(format!("{sql}; CHECKPOINT"))
    }

    async fn settle(c: &Client) -> SysResult<()> {
        c.batch_execute("CHECKPOINT").await.map_err(denied(
            "CHECKPOINT",
            " (settling needs CHECKPOINT: grant the role pg_checkpoint, or use a superuser)",
        ))
    }

    /// The lab tables' heap, TOAST and index bytes and their live and dead tuples, summed,
    /// and the WAL the server has written (its current LSN, in bytes).
    async fn snapshot(c: &Client, tables: &[String]) -> SysResult<BTreeMap<String, f64>> {
        // The regclass cast fails on a missing table: every table is counted or none.
        let row = c
            .query_one(
                "SELECT sum(pg_relation_size(r.oid))::float8, \
                        sum(coalesce(pg_total_relation_size(NULLIF(r.reltoastrelid, 0)), 0))::float8, \
                        sum(pg_indexes_size(r.oid))::float8, \
                        sum(pg_total_relation_size(r.oid))::float8, \
                        sum(coalesce(s.n_live_tup, 0))::float8, \
                        sum(coalesce(s.n_dead_tup, 0))::float8, \
                        (pg_current_wal_lsn() - '0/0')::float8 \
                 FROM pg_class r LEFT JOIN pg_stat_user_tables s ON s.relid = r.oid \
                 WHERE r.oid = ANY($1::text[]::regclass[])",
                &[&tables],
            )
            .await
            .map_err(err::<Self>("snapshot"))?;
        let names = [
            "heap_bytes",
            "toast_bytes",
            "index_bytes",
            "total_relation_bytes",
            "live_tuples",
            "dead_tuples",
            "wal_lsn_bytes",
        ];
        Ok(names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), row.get::<_, f64>(i)))
            .collect())
    }

    async fn native_size(c: &Client, tables: &[String]) -> SysResult<u64> {
        let n: i64 = c
            .query_one(
                "SELECT sum(pg_total_relation_size(t::regclass))::int8 FROM unnest($1::text[]) t",
                &[&tables],
            )
            .await
            .map_err(err::<Self>("pg_total_relation_size"))?
            .get(0);
        Ok(n as u64)
    }
}
