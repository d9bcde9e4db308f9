//! `mariadb`: MariaDB with InnoDB. Namespace: a database named `dedup_lab*` that holds a marker
//! table. Bulk path: one `LOAD DATA LOCAL INFILE` whose "file" is streamed from memory as
//! escaped tab-separated rows; per-file prepared `INSERT` / `DELETE`; maintenance: `OPTIMIZE
//! TABLE` (InnoDB rebuilds the table); settle: wait until InnoDB's purge has caught up; native
//! size: the allocated bytes of the table's own tablespace file. A MySQL server is recorded as
//! MySQL, but is not supported: MySQL 8 names the tablespace view `INNODB_TABLESPACES`, so the
//! native probe fails there with the server's message.
//!
//! Containers are tables of the lab database ([`Tables`]), each in its own tablespace file;
//! the bulk path loads them one after the other. With content keys a table's primary key is
//! the content's hash, the bulk path is `LOAD DATA … IGNORE` and a file is written with
//! `INSERT IGNORE`: InnoDB finds the key before it writes the row, so a content the table holds
//! is not stored again and the table's rows are its distinct contents.

mod lab;
mod native;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use serde::{Deserialize, Serialize};

use super::toolkit::{
    Holding, MARKER_TABLE, Marker, Namespaced, Pacer, ServerDefaults, Tables, Target,
};
use super::{System, SystemContext, SystemDef, TEST_HOOKS, TestHooks};
use crate::dataset::{DataSet, FileEntry, FileStream};
use crate::model::{ErrorKind, KeyMode, Layout, Measured, Meter, ServerInfo, SysError, SysResult};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    kind: "mariadb",
    aliases: &[],
    embedded: false,
    about: "MariaDB (InnoDB): LOAD DATA LOCAL bulk load, OPTIMIZE TABLE maintenance",
    build,
    lab: &[&lab::MariaDb],
    native_loader: Some(native::LOADER),
    tests: TestHooks {
        namespace_key: "database",
        ..TEST_HOOKS
    },
};

const DEFAULTS: ServerDefaults = ServerDefaults {
    port: 3306,
    user: Some("root"),
};

/// The keys of a MariaDB instance's section beside the shared connection keys.
#[derive(Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Lab database; must start with `dedup_lab`. Default: see
    /// [`SystemContext::default_namespace`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Seconds to wait for InnoDB's purge when settling.
    pub settle_timeout_s: u64,
    /// Create the lab table with InnoDB page compression (`PAGE_COMPRESSED=1`): pages are
    /// compressed when written and the freed space is punched out of the file.
    pub page_compressed: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database: None,
            settle_timeout_s: 300,
            page_compressed: false,
        }
    }
}

impl Namespaced for Settings {
    const KEY: &'static str = "database";

    fn namespace(&self) -> Option<&str> {
        self.database.as_deref()
    }
}

fn build(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    let t: Target<Settings> = Target::of(ctx, DEF.kind, DEFAULTS)?;
    Ok(Box::new(MariaDb {
        name: ctx.instance.to_string(),
        tables: Tables::new(Some(&t.namespace), t.layout),
        t,
        conn: None,
        lag_wait: None,
    }))
}

/// The MariaDB adapter.
struct MariaDb {
    name: String,
    t: Target<Settings>,
    tables: Tables,
    conn: Option<Conn>,
    /// Whether the account may `SET GLOBAL innodb_max_purge_lag_wait` (it needs SUPER);
    /// learned at the first settle.
    lag_wait: Option<bool>,
}

/// Server error for a packet over `max_allowed_packet`.
const ER_NET_PACKET_TOO_LARGE: u16 = 1153;
/// Server error for a statement that needs a global privilege the account lacks (SUPER to
/// wake purge, PROCESS to read the tablespace view).
const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;
/// Server errors for a refused login: access denied to the server, to the database, or for an
/// account without a password.
const ER_ACCESS_DENIED: [u16; 3] = [1045, 1044, 1698];

/// Classifies a driver error: I/O failures, a closed connection, and server errors about the
/// connection itself (SQLSTATE class 08, e.g. shutdown; 1927 connection killed; 4031
/// disconnected for inactivity) mean the connection is lost.
fn classify(context: &str, e: mysql_async::Error) -> SysError {
    let mut hint = "";
    let lost = match &e {
        mysql_async::Error::Io(_) => true,
        mysql_async::Error::Driver(d) => matches!(d, mysql_async::DriverError::ConnectionClosed),
        // Class 08 too, but a reconnect cannot make the file fit.
        mysql_async::Error::Server(s) if s.code == ER_NET_PACKET_TOO_LARGE => {
            hint = " (a file is larger than the server's max_allowed_packet: raise it above the \
                    largest file, up to 1G)";
            false
        }
        mysql_async::Error::Server(s) => {
            s.state.starts_with("08") || [1927, 4031].contains(&s.code)
        }
        _ => false,
    };
    let mut se = SysError::from_driver("mariadb", context, &e, lost);
    se.message.push_str(hint);
    se
}

/// The server error code of a driver error, if the server sent one.
fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

fn err(context: &str) -> impl FnOnce(mysql_async::Error) -> SysError + '_ {
    move |e| classify(context, e)
}

/// Appends `data` in LOAD DATA's escaped text form: the bytes the parser interprets — the
/// escape character and the field and line terminators — become `\\`, `\t` and `\n`; every
/// other byte (NUL and CR included) is read back as it is.
fn escape_into(out: &mut Vec<u8>, data: &[u8]) {
    let mut start = 0;
    // memchr3 scans many bytes per instruction; random data has a special byte every ~85.
    for i in memchr::memchr3_iter(b'\\', b'\t', b'\n', data) {
        let escaped = match data[i] {
            b'\t' => b't',
            b'\n' => b'n',
            b => b,
        };
        out.extend_from_slice(&data[start..i]);
        out.extend_from_slice(&[b'\\', escaped]);
        start = i + 1;
    }
    out.extend_from_slice(&data[start..]);
}

/// One file as a line of the LOAD DATA stream, in the columns of [`Tables::columns`]:
/// `id \t name \t content \n`, or with content keys `content_key \t content \n`.
fn tsv_row(layout: &Layout, f: &FileEntry, content: &[u8]) -> Bytes {
    let key = layout.key_of(f);
    // Random bytes need escaping about once in 85; leave room for that.
    let mut row = Vec::with_capacity(content.len() + content.len() / 32 + key.len() + 16);
    if layout.keys == KeyMode::Name {
        row.extend_from_slice(f.id.to_string().as_bytes());
        row.push(b'\t');
    }
    escape_into(&mut row, key.as_bytes());
    row.push(b'\t');
    escape_into(&mut row, content);
    row.push(b'\n');
    row.into()
}

/// The data set as the bytes of a LOAD DATA "file", produced as the server reads it. A task
/// reads and escapes a few rows ahead, so that escaping overlaps sending.
fn tsv_stream(mut files: FileStream, layout: Layout) -> mysql_async::InfileData {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(item) = files.next().await {
            let row = item
                .map(|(f, content)| tsv_row(&layout, &f, &content))
                .map_err(|e| std::io::Error::other(format!("{e:#}")));
            let failed = row.is_err();
            // A closed channel means the load ended early; its error is reported there.
            if tx.send(row).await.is_err() || failed {
                return;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { Some((rx.recv().await?, rx)) }).boxed()
}

impl MariaDb {
    /// A new connection to the server.
    async fn open(&self) -> SysResult<Conn> {
        let s = &self.t.server;
        let opts = OptsBuilder::default()
            .ip_or_hostname(s.host.clone())
            .tcp_port(s.port)
            .user(s.user.clone())
            .pass(s.password.as_ref().map(|p| p.expose().to_string()))
            // The driver would otherwise switch to the server's socket when the host is local,
            // and the account for socket connections is a different one ('user'@'localhost').
            .prefer_socket(false);
        let at = format!("cannot connect to {}", s.address());
        tokio::time::timeout(s.connect_timeout, Conn::new(opts))
            .await
            .map_err(|_| {
                SysError::connection(format!(
                    "mariadb: {at}: no answer within {} s",
                    s.connect_timeout.as_secs()
                ))
            })?
            .map_err(|e| {
                // A refused login does not heal by reconnecting.
                let refused = server_code(&e).is_some_and(|c| ER_ACCESS_DENIED.contains(&c));
                let mut se = classify(&at, e);
                if refused {
                    se.kind = ErrorKind::Failed;
                }
                se
            })
    }

    /// Waits until InnoDB's purge has processed every committed delete (see `settle`).
    async fn await_purge(&mut self) -> SysResult<()> {
        let limit = Duration::from_secs(self.t.settings.settle_timeout_s);
        let mut pacer = Pacer::new(limit);
        if self.lag_wait != Some(false) {
            let wait = self
                .conn()?
                .query_drop("SET GLOBAL innodb_max_purge_lag_wait = 0");
            match tokio::time::timeout(limit, wait).await {
                Ok(Ok(())) => self.lag_wait = Some(true),
                Ok(Err(mysql_async::Error::Server(e))) if e.code == ER_SPECIFIC_ACCESS_DENIED => {
                    tracing::info!(
                        "mariadb: no SUPER privilege, so settling polls InnoDB's history list \
                         instead of waking purge"
                    );
                    self.lag_wait = Some(false);
                }
                Ok(Err(e)) => return Err(classify("waiting for InnoDB purge", e)),
                Err(_) => {
                    // The statement still blocks the connection: drop it, the next stage
                    // reconnects.
                    self.conn = None;
                    return Err(self.purge_overdue("transactions"));
                }
            }
        }
        loop {
            let history = self.history_length().await?;
            if history == 0 {
                return Ok(());
            }
            if !pacer.pause().await {
                return Err(self.purge_overdue(&format!("{history} transactions")));
            }
        }
    }

    fn conn(&mut self) -> SysResult<&mut Conn> {
        self.conn
            .as_mut()
            .ok_or_else(|| SysError::connection("mariadb: not connected"))
    }

    /// The error of a settle that outlived `settle_timeout_s` with `left` still to purge.
    fn purge_overdue(&self, left: &str) -> SysError {
        SysError::failed(format!(
            "mariadb: InnoDB purge still has {left} to process after {} s (a long-running \
             transaction elsewhere holds it back?)",
            self.t.settings.settle_timeout_s
        ))
    }

    /// InnoDB's history list: committed changes whose undo logs purge has not yet processed.
    /// Deleted rows (and their off-page BLOBs) are freed only when purge gets to them.
    async fn history_length(&mut self) -> SysResult<u64> {
        let n: Option<String> = self
            .conn()?
            .query_first(
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                 WHERE VARIABLE_NAME = 'INNODB_HISTORY_LIST_LENGTH'",
            )
            .await
            .map_err(err("reading the InnoDB history list length"))?;
        n.and_then(|v| v.parse().ok()).ok_or_else(|| {
            SysError::failed("mariadb: the server reports no Innodb_history_list_length")
        })
    }
}

/// The meter: a connection of its own.
struct MariaDbMeter {
    conn: Conn,
    namespace: String,
    tables: Tables,
}

/// The server status counters the snapshot carries: bytes InnoDB wrote to its data files and
/// its redo log, pages written, the purge backlog, and what page compression saved.
const STATUS: &[&str] = &[
    "Innodb_data_written",
    "Innodb_os_log_written",
    "Innodb_pages_written",
    "Innodb_history_list_length",
    "Innodb_page_compression_saved",
];

impl MariaDbMeter {
    /// The lab tables' tablespace names (`database/table`), as positional parameters.
    fn tablespaces(&self) -> Vec<mysql_async::Value> {
        self.tables
            .containers()
            .map(|k| format!("{}/{}", self.namespace, self.tables.bare(k)).into())
            .collect()
    }

    /// `?, ?, …` for the lab tables.
    fn placeholders(&self) -> String {
        vec!["?"; self.tables.containers().len()].join(", ")
    }

    /// The error of a look that found `found` of the lab tables' tablespaces.
    fn missing(&self, found: u64) -> SysError {
        SysError::failed(format!(
            "mariadb: {found} of the {} lab tables of {} have a tablespace of their own: enable \
             innodb_file_per_table on the server (the native size reads each table's .ibd file)",
            self.tables.containers().len(),
            self.namespace
        ))
    }
}

#[async_trait]
impl Measured for MariaDbMeter {
    fn native_copies(&self) -> Option<u32> {
        // The tablespace file of this server: one copy.
        Some(1)
    }

    /// `ALLOCATED_SIZE` of the table's tablespace: the file's allocated blocks (`st_blocks` ×
    /// 512), read from the file system when queried, so it is current — unlike
    /// `TABLES.DATA_LENGTH`, a statistics estimate refreshed only by `ANALYZE`. Not `FILE_SIZE`:
    /// that is the apparent length, which counts holes (page compression punches them) and so
    /// is not what the table occupies; `ALLOCATED_SIZE` measures what the `fs` probe measures.
    async fn native_size(&mut self) -> SysResult<u64> {
        let (found, size): (u64, u64) = self
            .conn
            .exec_first(
                format!(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(ALLOCATED_SIZE), 0) AS UNSIGNED) \
                     FROM information_schema.INNODB_SYS_TABLESPACES WHERE NAME IN ({})",
                    self.placeholders()
                ),
                self.tablespaces(),
            )
            .await
            .map_err(tablespace_err)?
            .unwrap_or_default();
        if found != self.tables.containers().len() as u64 {
            return Err(self.missing(found));
        }
        Ok(size)
    }
}

#[async_trait]
impl Meter for MariaDbMeter {
    /// The tablespace's file and allocated size, the table statistics' data, index and free
    /// bytes (estimates, refreshed by `ANALYZE` and `OPTIMIZE`), and [`STATUS`].
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>> {
        // Unsigned integers: the driver converts them to u64, not to f64; sums are decimals
        // until cast.
        let sum = |c: &str| format!("CAST(COALESCE(SUM({c}), 0) AS UNSIGNED)");
        let (found, file, allocated, data, index, free): (u64, u64, u64, u64, u64, u64) = self
            .conn
            .exec_first(
                format!(
                    "SELECT COUNT(*), {}, {}, {}, {}, {} \
                     FROM information_schema.INNODB_SYS_TABLESPACES s \
                     JOIN information_schema.TABLES t \
                       ON t.TABLE_SCHEMA = ? \
                      AND s.NAME = CONCAT(t.TABLE_SCHEMA, '/', t.TABLE_NAME) \
                     WHERE s.NAME IN ({})",
                    sum("s.FILE_SIZE"),
                    sum("s.ALLOCATED_SIZE"),
                    sum("t.DATA_LENGTH"),
                    sum("t.INDEX_LENGTH"),
                    sum("t.DATA_FREE"),
                    self.placeholders()
                ),
                [vec![self.namespace.clone().into()], self.tablespaces()].concat(),
            )
            .await
            .map_err(tablespace_err)?
            .unwrap_or_default();
        if found != self.tables.containers().len() as u64 {
            return Err(self.missing(found));
        }
        let mut out: BTreeMap<String, f64> = [
            ("file_size", file),
            ("allocated_size", allocated),
            ("data_length", data),
            ("index_length", index),
            ("data_free", free),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v as f64))
        .collect();
        let status: Vec<(String, String)> = self
            .conn
            .query(format!(
                "SHOW GLOBAL STATUS WHERE Variable_name IN ({})",
                STATUS
                    .iter()
                    .map(|v| format!("'{v}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .await
            .map_err(err("reading SHOW GLOBAL STATUS"))?;
        for (name, value) in status {
            if let Ok(v) = value.parse::<f64>() {
                out.insert(name.to_lowercase(), v);
            }
        }
        Ok(out)
    }
}

/// A failed read of the tablespace view, with the privilege it needs.
fn tablespace_err(e: mysql_async::Error) -> SysError {
    let denied = server_code(&e) == Some(ER_SPECIFIC_ACCESS_DENIED);
    let mut se = classify("reading INNODB_SYS_TABLESPACES", e);
    if denied {
        se.message
            .push_str(" (the native size needs the PROCESS privilege: grant it)");
    }
    se
}

#[async_trait]
impl System for MariaDb {
    fn name(&self) -> &str {
        &self.name
    }

    fn target(&self) -> String {
        format!(
            "{} database {} as {}",
            self.t.server.address(),
            self.t.namespace,
            self.t.server.user.as_deref().unwrap_or_default()
        )
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        self.conn = None;
        let conn = self.open().await?;
        let conn = self.conn.insert(conn);
        let version: String = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(err("reading server version"))?
            .unwrap_or_default();
        let product = if version.contains("MariaDB") {
            "MariaDB"
        } else {
            "MySQL"
        };
        Ok(ServerInfo {
            product: product.into(),
            version,
        })
    }

    async fn meter(&mut self) -> SysResult<Box<dyn Meter>> {
        Ok(Box::new(MariaDbMeter {
            conn: self.open().await?,
            namespace: self.t.namespace.clone(),
            tables: self.tables.clone(),
        }))
    }

    async fn inspect(&mut self) -> SysResult<Holding> {
        let db = self.t.namespace.clone();
        let (marked, objects): (bool, u64) = self
            .conn()?
            .exec_first(
                "SELECT EXISTS (SELECT 1 FROM information_schema.TABLES \
                                WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?), \
                        (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?) \
                        + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ?)",
                (&db, MARKER_TABLE, &db, &db),
            )
            .await
            .map_err(err("inspecting the lab database"))?
            .unwrap_or_default();
        if !marked {
            // An empty unmarked database holds nothing to lose: it is what a reset
            // interrupted between CREATE DATABASE and the marker leaves behind.
            return Ok(if objects > 0 {
                Holding::Foreign(format!(
                    "database {db} holds tables or routines but no {MARKER_TABLE} table"
                ))
            } else {
                Holding::Absent
            });
        }
        let note: Option<String> = self
            .conn()?
            .query_first(format!("SELECT note FROM {db}.{MARKER_TABLE} LIMIT 1"))
            .await
            .map_err(err("reading the marker"))?;
        Ok(Holding::Marked(note.unwrap_or_default()))
    }

    async fn recreate(&mut self, marker: &Marker) -> SysResult<()> {
        let db = self.t.namespace.clone();
        let options = if self.t.settings.page_compressed {
            " PAGE_COMPRESSED=1"
        } else {
            ""
        };
        // DDL commits implicitly in MariaDB: the marker table comes first, so a reset cut
        // short leaves a marked database.
        self.conn()?
            .query_drop(format!(
                "DROP DATABASE IF EXISTS {db};
                 CREATE DATABASE {db} CHARACTER SET utf8mb4;
                 CREATE TABLE {db}.{MARKER_TABLE} (note TEXT NOT NULL) ENGINE=InnoDB;"
            ))
            .await
            .map_err(err("recreating the lab database"))?;
        self.conn()?
            .exec_drop(
                format!("INSERT INTO {db}.{MARKER_TABLE} VALUES (?)"),
                (&marker.text,),
            )
            .await
            .map_err(err("writing the marker"))?;
        let row = match self.tables.layout().keys {
            KeyMode::Name => "id INT PRIMARY KEY, name VARCHAR(255) NOT NULL",
            KeyMode::Content => {
                "content_key CHAR(64) CHARACTER SET ascii COLLATE ascii_bin PRIMARY KEY"
            }
        };
        for table in self.tables.all() {
            self.conn()?
                .query_drop(format!(
                    "CREATE TABLE {table} ({row}, content LONGBLOB NOT NULL) \
                     ENGINE=InnoDB{options}"
                ))
                .await
                .map_err(err("creating a lab table"))?;
        }
        Ok(())
    }

    /// One `LOAD DATA` per table. With content keys it is `LOAD DATA … IGNORE`: a row whose key
    /// the table holds is skipped with a duplicate-key warning, so a load is right when it
    /// stored the layout's entries and warned once for each other file.
    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        let (mut loaded, mut warnings) = (0, 0);
        let layout = *self.tables.layout();
        let ignore = match layout.keys {
            KeyMode::Name => "",
            KeyMode::Content => " IGNORE",
        };
        for k in self.tables.containers() {
            let table = self.tables.name(k);
            let columns = self.tables.columns();
            let files = ds.stream_where(move |f| layout.container_of(f) == k);
            let conn = self.conn()?;
            conn.set_infile_handler(async move { Ok(tsv_stream(files, layout)) });
            // The file name is only a label: the handler above supplies the bytes. With LOCAL,
            // the server turns bad rows and duplicate keys into warnings, so both are checked
            // below.
            conn.query_drop(format!(
                "LOAD DATA LOCAL INFILE 'dedup-lab'{ignore} INTO TABLE {table} \
                 CHARACTER SET binary \
                 FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' \
                 ({columns})"
            ))
            .await
            .map_err(err("LOAD DATA LOCAL INFILE"))?;
            loaded += conn.affected_rows();
            warnings += u64::from(conn.get_warnings());
        }
        let files = &ds.manifest.files;
        let want = layout.stored_entries(files);
        if loaded != want || warnings != files.len() as u64 - want {
            return Err(SysError::failed(format!(
                "mariadb: LOAD DATA of {} files stored {loaded} rows with {warnings} warnings; \
                 expected {want} rows and {} duplicate-key warnings",
                files.len(),
                files.len() as u64 - want
            )));
        }
        Ok(())
    }

    /// With content keys `INSERT IGNORE`: one row stored, or none with one duplicate-key
    /// warning; anything else (a value the server changed) is an error.
    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        let table = self.tables.of(file);
        let layout = *self.tables.layout();
        let conn = self.conn()?;
        // The driver prepares each statement once and keeps it in its statement cache.
        match layout.keys {
            KeyMode::Name => {
                let sql = format!("INSERT INTO {table} (id, name, content) VALUES (?, ?, ?)");
                return conn
                    .exec_drop(sql, (file.id, &file.name, Vec::from(content)))
                    .await
                    .map_err(err("insert"));
            }
            KeyMode::Content => {
                let sql =
                    format!("INSERT IGNORE INTO {table} (content_key, content) VALUES (?, ?)");
                conn.exec_drop(sql, (layout.key_of(file), Vec::from(content)))
                    .await
                    .map_err(err("insert"))?;
            }
        }
        let (stored, warnings) = (conn.affected_rows(), conn.get_warnings());
        if stored + u64::from(warnings) != 1 {
            return Err(SysError::failed(format!(
                "mariadb: INSERT IGNORE of {} stored {stored} rows with {warnings} warnings",
                file.name
            )));
        }
        Ok(())
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        let t = &self.tables;
        let sql = format!("DELETE FROM {} WHERE {} = ?", t.of(file), t.key_column());
        let key: mysql_async::Value = match t.layout().keys {
            KeyMode::Name => file.id.into(),
            KeyMode::Content => t.layout().key_of(file).into(),
        };
        let conn = self.conn()?;
        conn.exec_drop(sql, (key,)).await.map_err(err("delete"))?;
        let n = conn.affected_rows();
        if n != 1 {
            return Err(SysError::failed(format!(
                "mariadb: delete of {} removed {n} rows",
                file.name
            )));
        }
        Ok(())
    }

    async fn maintenance(&mut self) -> SysResult<String> {
        let sql = format!("OPTIMIZE TABLE {}", self.tables.all().join(", "));
        // One row per message: (Table, Op, Msg_type, Msg_text); InnoDB answers with a note that
        // it recreates the table, then the status.
        let rows: Vec<(String, String, String, String)> = self
            .conn()?
            .query(&sql)
            .await
            .map_err(err("OPTIMIZE TABLE"))?;
        if let Some((_, _, _, text)) = rows.iter().find(|r| r.2.eq_ignore_ascii_case("error")) {
            return Err(SysError::failed(format!("mariadb: {sql}: {text}")));
        }
        let messages: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
        Ok(format!("{sql}: {}", messages.join("; ")))
    }

    /// Commits are durable through the redo log, and a tablespace file grows the moment InnoDB
    /// extends it, so sizes need no flush to be current. What InnoDB still owes is purge: a
    /// deleted row and its BLOB pages are freed only when purge processes the delete. Purge is
    /// done when the history list is empty. With SUPER, `SET GLOBAL
    /// innodb_max_purge_lag_wait=0` wakes purge and waits for it; without, purge runs at its
    /// own pace and the status variable, which needs no privilege, is polled. Either way the
    /// poll has the last word. A page-compressed table is the exception to "no flush": its
    /// pages are compressed, and the file's holes punched, only when they are written, so
    /// settling then also flushes the table (`FLUSH TABLES … FOR EXPORT`, which needs RELOAD).
    async fn settle(&mut self) -> SysResult<()> {
        self.await_purge().await?;
        if self.t.settings.page_compressed {
            let tables = self.tables.all().join(", ");
            let flushed = self
                .conn()?
                .query_drop(format!("FLUSH TABLES {tables} FOR EXPORT"))
                .await;
            if let Err(e) = flushed {
                let denied = server_code(&e) == Some(ER_SPECIFIC_ACCESS_DENIED);
                let mut se = classify("FLUSH TABLES … FOR EXPORT", e);
                if denied {
                    se.message.push_str(
                        " (a page-compressed table is flushed before it is measured: grant \
                         the account RELOAD, or set page_compressed = false)",
                    );
                }
                return Err(se);
            }
            self.conn()?
                .query_drop("UNLOCK TABLES")
                .await
                .map_err(err("UNLOCK TABLES"))?;
        }
        Ok(())
    }

    async fn count(&mut self) -> SysResult<u64> {
        let sql = self.tables.count_sql();
        let n: Option<u64> = self.conn()?.query_first(sql).await.map_err(err("count"))?;
        Ok(n.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16, state: &str) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: "from the server".into(),
            state: state.into(),
        })
    }

    #[test]
    fn lost_connections_are_told_from_other_failures() {
        let kind = |e| classify("op", e).kind;
        let io = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(
            kind(mysql_async::Error::from(io)),
            ErrorKind::ConnectionLost
        );
        // Server shutdown, killed connection: lost.
        assert_eq!(kind(server(1053, "08S01")), ErrorKind::ConnectionLost);
        assert_eq!(kind(server(1927, "70100")), ErrorKind::ConnectionLost);
        // Access denied, missing table, a killed query (not the connection): failed.
        assert_eq!(kind(server(1045, "28000")), ErrorKind::Failed);
        assert_eq!(kind(server(1146, "42S02")), ErrorKind::Failed);
        assert_eq!(kind(server(1317, "70100")), ErrorKind::Failed);
        let too_large = classify("insert", server(1153, "08S01"));
        assert_eq!(too_large.kind, ErrorKind::Failed);
        assert!(
            too_large
                .message
                .contains("raise it above the largest file")
        );
    }

    #[test]
    fn escapes_exactly_the_bytes_load_data_interprets() {
        let mut out = Vec::new();
        escape_into(&mut out, b"a\\b\tc\nd\0e\rf\\N");
        assert_eq!(out, b"a\\\\b\\tc\\nd\0e\rf\\\\N");
    }

    #[test]
    fn a_row_is_id_name_content() {
        let f = FileEntry {
            id: 7,
            name: "000007.bin".into(),
            size: 3,
            blake3: String::new(),
            copy_of: None,
        };
        assert_eq!(
            &tsv_row(&Layout::default(), &f, b"x\ty")[..],
            b"7\t000007.bin\tx\\ty\n"
        );
        let content = Layout {
            keys: KeyMode::Content,
            containers: 1,
        };
        let f = FileEntry {
            blake3: "ab12".into(),
            ..f
        };
        assert_eq!(&tsv_row(&content, &f, b"x\ty")[..], b"ab12\tx\\ty\n");
    }
}
