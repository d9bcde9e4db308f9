//! `cockroachdb`: CockroachDB over the PostgreSQL wire. Bulk path: multi-row INSERT batches;
//! maintenance: none exists — garbage collection of old MVCC versions runs on its own after
//! the zone's `gc.ttlseconds`, which the stage reports; native size: `approximate_disk_bytes`
//! of the lab tables' ranges (`SHOW RANGES … WITH DETAILS`), which counts every replica. With
//! content keys the batches are `INSERT … ON CONFLICT (content_key) DO NOTHING`, as the
//! per-file inserts are ([`super::pgwire`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio_postgres::Client;

use super::pgwire::{self, Dialect, err};
use super::toolkit::Tables;
use super::{SystemDef, TEST_HOOKS, TestHooks};
use crate::dataset::DataSet;
use crate::model::{ServerInfo, SysError, SysResult};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    kind: Cockroach::NAME,
    aliases: &[],
    embedded: false,
    about: "CockroachDB: batched INSERT bulk load, span-stats size, GC TTL instead of vacuum",
    build: pgwire::build::<Cockroach>,
    lab: &[],
    native_loader: None,
    tests: TestHooks {
        namespace_key: "schema",
        ..TEST_HOOKS
    },
};

/// The CockroachDB dialect.
pub struct Cockroach;

/// Reads `key = value` out of a zone configuration's `raw_config_sql`.
fn zone_value(raw_config_sql: &str, key: &str) -> Option<u64> {
    raw_config_sql.lines().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        (k.trim() == key)
            .then(|| v.trim().trim_end_matches(',').trim().parse().ok())
            .flatten()
    })
}

/// The version token (`v23.2.4`) of `SELECT version()`.
fn version_of(banner: &str) -> String {
    banner
        .split_whitespace()
        .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(banner)
        .to_string()
}

async fn zone_config(c: &Client, target: &str) -> SysResult<String> {
    let row = c
        .query_one(
            &format!("SELECT raw_config_sql FROM [SHOW ZONE CONFIGURATION FROM {target}]"),
            &[],
        )
        .await
        .map_err(err::<Cockroach>("SHOW ZONE CONFIGURATION"))?;
    Ok(row.get(0))
}

/// The span stats of every range of the lab tables, as one row source.
fn ranges_of(tables: &[String]) -> String {
    let each: Vec<String> = tables
        .iter()
        .map(|t| format!("SELECT span_stats FROM [SHOW RANGES FROM TABLE {t} WITH DETAILS]"))
        .collect();
    format!("({}) AS ranges", each.join(" UNION ALL "))
}

/// The snapshot query of the lab tables: ranges, approximate disk bytes and live bytes.
fn snapshot_sql(tables: &[String]) -> String {
    format!(
        "SELECT count(*)::FLOAT8, \
                coalesce(sum((span_stats->>'approximate_disk_bytes')::INT8), 0)::FLOAT8, \
                coalesce(sum((span_stats->>'live_bytes')::INT8), 0)::FLOAT8 \
         FROM {}",
        ranges_of(tables)
    )
}

/// The native size query of the lab tables.
fn native_size_sql(tables: &[String]) -> String {
    format!(
        "SELECT coalesce(sum((span_stats->>'approximate_disk_bytes')::INT8), 0)::INT8 \
         FROM {}",
        ranges_of(tables)
    )
}

#[async_trait]
impl Dialect for Cockroach {
    const NAME: &'static str = "cockroachdb";
    const DEFAULTS: (u16, &'static str, &'static str) = (26257, "root", "defaultdb");
    const COLUMN_SETTINGS: bool = false;

    async fn server_info(c: &Client) -> SysResult<ServerInfo> {
        let banner: String = c
            .query_one("SELECT version()", &[])
            .await
            .map_err(err::<Self>("reading server version"))?
            .get(0);
        if !banner.contains("CockroachDB") {
            return Err(SysError::failed(format!(
                "cockroachdb: the server is not CockroachDB ({banner}); use [systems.postgres] for it"
            )));
        }
        Ok(ServerInfo {
            product: "CockroachDB".into(),
            version: version_of(&banner),
        })
    }

    async fn native_copies(c: &Client) -> SysResult<u32> {
        // approximate_disk_bytes sums all replicas: R = min(num_replicas, live nodes).
        let replicas = zone_value(&zone_config(c, "RANGE default").await?, "num_replicas")
            .ok_or_else(|| SysError::failed("cockroachdb: no num_replicas in the default zone"))?;
        let nodes: i64 = c
            .query_one(
                "SELECT count(*) FROM crdb_internal.gossip_nodes WHERE is_live",
                &[],
            )
            .await
            .map_err(err::<Self>("counting live nodes"))?
            .get(0);
        Ok(replicas.min(nodes.max(1) as u64) as u32)
    }

    async fn bulk_insert(c: &Client, tables: &Tables, ds: &DataSet) -> SysResult<()> {
        pgwire::batched_insert::<Self>(c, tables, ds).await
    }

    async fn maintenance(c: &Client, tables: &[String]) -> SysResult<String> {
        // Every lab table is created by the same reset with no zone of its own: they share
        // the zone the first one reports.
        let ttl = zone_value(
            &zone_config(c, &format!("TABLE {}", tables[0])).await?,
            "gc.ttlseconds",
        );
        Ok(match ttl {
            Some(s) => format!(
                "none: CockroachDB has no manual space reclaim; old MVCC versions are garbage \
                 collected after gc.ttlseconds = {s}"
            ),
            None => "none: CockroachDB has no manual space reclaim (gc.ttlseconds unknown)".into(),
        })
    }

    async fn settle(_: &Client) -> SysResult<()> {
        // Commits are durable when acknowledged (Raft log fsynced); there is no checkpoint.
        Ok(())
    }

    /// The lab tables' ranges and their approximate disk and live bytes (all replicas).
    async fn snapshot(c: &Client, tables: &[String]) -> SysResult<BTreeMap<String, f64>> {
        let row = c
            .query_one(&snapshot_sql(tables), &[])
            .await
            .map_err(err::<Self>("snapshot"))?;
        Ok(BTreeMap::from([
            ("ranges".to_string(), row.get::<_, f64>(0)),
            ("approximate_disk_bytes".to_string(), row.get::<_, f64>(1)),
            ("live_bytes".to_string(), row.get::<_, f64>(2)),
        ]))
    }

    async fn native_size(c: &Client, tables: &[String]) -> SysResult<u64> {
        let n: i64 = c
            .query_one(&native_size_sql(tables), &[])
            .await
            .map_err(err::<Self>("span stats"))?
            .get(0);
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = "ALTER RANGE default CONFIGURE ZONE USING
\trange_min_bytes = 134217728,
\trange_max_bytes = 536870912,
\tgc.ttlseconds = 14400,
\tnum_replicas = 3,
\tconstraints = '[]',
\tlease_preferences = '[]'";

    #[test]
    fn reads_zone_values() {
        assert_eq!(zone_value(ZONE, "num_replicas"), Some(3));
        assert_eq!(zone_value(ZONE, "gc.ttlseconds"), Some(14400));
        assert_eq!(zone_value(ZONE, "constraints"), None);
        assert_eq!(zone_value(ZONE, "missing"), None);
    }

    #[test]
    fn size_queries_cover_every_lab_table() {
        let tables = Tables::new(
            Some("dedup_lab"),
            crate::model::Layout {
                keys: crate::model::KeyMode::Content,
                containers: 2,
            },
        )
        .all();
        assert_eq!(
            native_size_sql(&tables),
            "SELECT coalesce(sum((span_stats->>'approximate_disk_bytes')::INT8), 0)::INT8 \
             FROM (SELECT span_stats FROM [SHOW RANGES FROM TABLE dedup_lab.files_0 WITH DETAILS] \
             UNION ALL SELECT span_stats FROM [SHOW RANGES FROM TABLE dedup_lab.files_1 WITH DETAILS]) \
             AS ranges"
        );
        let one = Tables::new(Some("dedup_lab"), Default::default()).all();
        assert!(
            snapshot_sql(&one).ends_with(
                "FROM (SELECT span_stats FROM [SHOW RANGES FROM TABLE dedup_lab.files WITH DETAILS]) \
                 AS ranges"
            ),
            "{}",
            snapshot_sql(&one)
        );
    }

    #[test]
    fn reads_version_token() {
        assert_eq!(
            version_of(
                "CockroachDB CCL v23.2.4 (x86_64-pc-linux-gnu, built 2024/04/10 18:09:20, go1.21.9 X:nocoverageredesign)"
            ),
            "v23.2.4"
        );
    }
}
