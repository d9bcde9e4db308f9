//! `postgres`: PostgreSQL. Bulk path: one `COPY … FROM STDIN (FORMAT binary)`; maintenance:
//! `VACUUM FULL` + `CHECKPOINT`; settle: `CHECKPOINT`; native size: `pg_total_relation_size`
//! of the lab table (heap, TOAST and indexes). Connection, namespace and per-file statements
//! are shared with every PostgreSQL-wire system ([`super::pgwire`]).

use async_trait::async_trait;
use futures_util::pin_mut;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use super::pgwire::{self, Dialect, Settings, err};
use super::{ServerInfo, SysError, SysResult, SystemDef};
use crate::dataset::DataSet;

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    name: Postgres::NAME,
    embedded: false,
    about: "PostgreSQL: COPY BINARY bulk load, VACUUM FULL maintenance",
    build: pgwire::build::<Postgres>,
};

/// The PostgreSQL dialect.
pub struct Postgres;

#[async_trait]
impl Dialect for Postgres {
    const NAME: &'static str = "postgres";
    const DEFAULT_PORT: u16 = 5432;
    const DEFAULT_USER: &'static str = "postgres";
    const DEFAULT_DATABASE: &'static str = "postgres";

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

    async fn native_copies(_: &Client, _: &Settings) -> SysResult<u32> {
        // pg_total_relation_size measures this server's files: one copy.
        Ok(1)
    }

    async fn bulk_insert(c: &Client, table: &str, ds: &DataSet) -> SysResult<()> {
        let sink = c
            .copy_in(&format!(
                "COPY {table} (id, name, content) FROM STDIN (FORMAT binary)"
            ))
            .await
            .map_err(err::<Self>("starting COPY"))?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::TEXT, Type::BYTEA]);
        pin_mut!(writer);
        let mut files = ds.stream();
        while let Some(item) = files.next().await {
            let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
            writer
                .as_mut()
                .write(&[&(f.id as i32), &f.name, &&content[..]])
                .await
                .map_err(err::<Self>("COPY"))?;
        }
        writer
            .finish()
            .await
            .map_err(err::<Self>("finishing COPY"))?;
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
            let mut se = pgwire::classify(Self::NAME, "CHECKPOINT", e);
            if se.message.contains("permission") || se.message.contains("superuser") {
                se.message.push_str(
                    " (settling needs CHECKPOINT: grant the role pg_checkpoint, or use a superuser)",
                );
            }
            se
        })
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
