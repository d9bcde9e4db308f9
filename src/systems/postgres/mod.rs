//! `postgres`: PostgreSQL. Bulk path: one `COPY … FROM STDIN (FORMAT binary)`; maintenance:
//! `VACUUM FULL` + `CHECKPOINT`; settle: `CHECKPOINT`; native size: `pg_total_relation_size`
//! of the lab table (heap, TOAST and indexes). Connection, namespace and per-file statements
//! are shared with every PostgreSQL-wire system ([`super::pgwire`]).

mod lab;
mod native;

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, pin_mut};
use tokio_postgres::Client;

use super::pgwire::{self, Dialect, err};
use super::{SystemDef, TEST_HOOKS, TestHooks};
use crate::dataset::DataSet;
use crate::model::{ServerInfo, SysError, SysResult};

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

/// The binary COPY encoding of one `files` row up to its content: field count 3, then
/// `id` (int4), `name` (text) and the length of `content` (bytea), which follows.
pub fn copy_row_header(id: u32, name: &str, content_len: usize) -> Bytes {
    let mut h = BytesMut::with_capacity(18 + name.len());
    h.put_i16(3);
    h.put_i32(4);
    h.put_i32(id as i32);
    h.put_i32(name.len() as i32);
    h.put_slice(name.as_bytes());
    h.put_i32(content_len as i32);
    h.freeze()
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

    async fn bulk_insert(c: &Client, table: &str, ds: &DataSet) -> SysResult<()> {
        let sink = c
            .copy_in::<_, Bytes>(&format!(
                "COPY {table} (id, name, content) FROM STDIN (FORMAT binary)"
            ))
            .await
            .map_err(err::<Self>("starting COPY"))?;
        pin_mut!(sink);
        // Each file goes out as its small row header followed by the file's own buffer: the
        // driver frames large buffers without copying them. `feed` leaves flushing to the
        // driver instead of waiting for every row.
        sink.feed(Bytes::from_static(COPY_SIGNATURE))
            .await
            .map_err(err::<Self>("COPY"))?;
        let mut files = ds.stream();
        while let Some(item) = files.next().await {
            let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
            sink.feed(copy_row_header(f.id, &f.name, content.len()))
                .await
                .map_err(err::<Self>("COPY"))?;
            sink.feed(content).await.map_err(err::<Self>("COPY"))?;
        }
        sink.feed(Bytes::from_static(COPY_TRAILER))
            .await
            .map_err(err::<Self>("COPY"))?;
        sink.finish().await.map_err(err::<Self>("finishing COPY"))?;
        Ok(())
    }

    async fn maintenance(c: &Client, table: &str) -> SysResult<String> {
        let sql = format!("VACUUM FULL {table}");
        c.batch_execute(&sql)
            .await
            .map_err(err::<Self>("VACUUM FULL"))?;
        Self::settle(c).await?;
        Ok(format!("{sql}; CHECKPOINT"))
    }

    async fn settle(c: &Client) -> SysResult<()> {
        c.batch_execute("CHECKPOINT").await.map_err(|e| {
            // 42501: insufficient_privilege.
            let denied = e.code().is_some_and(|c| c.code() == "42501");
            let mut se = pgwire::classify(Self::NAME, "CHECKPOINT", e);
            if denied {
                se.message.push_str(
                    " (settling needs CHECKPOINT: grant the role pg_checkpoint, or use a superuser)",
                );
            }
            se
        })
    }

    /// The lab table's heap, TOAST and index bytes, its live and dead tuples, and the WAL
    /// the server has written (its current LSN, in bytes).
    async fn snapshot(c: &Client, table: &str) -> SysResult<BTreeMap<String, f64>> {
        let row = c
            .query_one(
                "SELECT pg_relation_size(r.oid)::float8, \
                        coalesce(pg_total_relation_size(NULLIF(r.reltoastrelid, 0)), 0)::float8, \
                        pg_indexes_size(r.oid)::float8, \
                        pg_total_relation_size(r.oid)::float8, \
                        coalesce(s.n_live_tup, 0)::float8, coalesce(s.n_dead_tup, 0)::float8, \
                        (pg_current_wal_lsn() - '0/0')::float8 \
                 FROM pg_class r LEFT JOIN pg_stat_user_tables s ON s.relid = r.oid \
                 WHERE r.oid = $1::text::regclass",
                &[&table],
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

    async fn native_size(c: &Client, table: &str) -> SysResult<u64> {
        let n: i64 = c
            .query_one(
                "SELECT pg_total_relation_size($1::text::regclass)",
                &[&table],
            )
            .await
            .map_err(err::<Self>("pg_total_relation_size"))?
            .get(0);
        Ok(n as u64)
    }
}
