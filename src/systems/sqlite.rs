//! `sqlite`: an embedded SQLite database file (bundled library, no server).
//!
//! The namespace is one database file in a lab directory; a marker table identifies it as
//! lab-owned, and a reset deletes and recreates the file so every stage starts from empty.
//!
//! Containers are tables of that file (`files`, or `files_0` … with several; see
//! [`Tables`]). With content keys a table's primary key is the content's hash and a file is
//! written with `INSERT OR IGNORE`: a content the table holds is not stored again, so the
//! table's rows are its distinct contents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::toolkit::{Holding, MARKER_TABLE, Marker, Tables, check_namespace, parse, section_of};
use super::{System, SystemContext, SystemDef, TEST_HOOKS, TestHooks};
use crate::dataset::{DataSet, FileEntry};
use crate::lab::Embedded;
use crate::model::{KeyMode, Measured, Meter, ServerInfo, SysError, SysResult, failed};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    kind: "sqlite",
    aliases: &[],
    embedded: true,
    about: "embedded SQLite database file (bundled library, no server)",
    build,
    lab: &[&Embedded {
        name: "sqlite",
        section: lab_section,
    }],
    native_loader: None,
    tests: TestHooks {
        namespace_key: "file",
        ..TEST_HOOKS
    },
};

/// `[systems.<instance>]` of kind sqlite.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory holding the database; default `<experiment>/systems/<instance>`.
    pub dir: Option<PathBuf>,
    /// Database file name inside `dir` (must start with `dedup_lab`).
    pub file: Option<String>,
    /// `PRAGMA synchronous` (`off`, `normal`, `full`); default `full`: a commit is durable.
    pub synchronous: Option<String>,
}

/// The lab's sqlite: its database in the lab directory, on the lab's storage.
fn lab_section(dir: &Path) -> toml::Table {
    section_of(&[&Settings {
        dir: Some(dir.to_path_buf()),
        ..Default::default()
    }])
}

fn build(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    let s: Settings = parse(ctx.instance, ctx.section)?;
    let file = s
        .file
        .unwrap_or_else(|| format!("{}.sqlite", ctx.default_namespace(DEF.kind)));
    let stem = file.strip_suffix(".sqlite").unwrap_or(&file);
    check_namespace(ctx.instance, "file", stem)?;
    let synchronous = s.synchronous.unwrap_or_else(|| "full".into());
    if !["off", "normal", "full"].contains(&synchronous.as_str()) {
        crate::bail_usage!(
            "config [systems.{}] synchronous = \"{synchronous}\": use off, normal or full",
            ctx.instance
        );
    }
    let dir = s
        .dir
        .unwrap_or_else(|| ctx.experiment_dir.join("systems").join(ctx.instance));
    Ok(Box::new(Sqlite {
        name: ctx.instance.to_string(),
        path: dir.join(file),
        dir,
        synchronous,
        tables: Tables::new(None, ctx.layout),
        conn: None,
    }))
}

/// The SQLite adapter.
struct Sqlite {
    name: String,
    dir: PathBuf,
    path: PathBuf,
    synchronous: String,
    tables: Tables,
    conn: Option<Connection>,
}

fn sql_err(context: &str) -> impl FnOnce(rusqlite::Error) -> SysError + '_ {
    failed(context)
}

impl Sqlite {
    fn conn(&self) -> SysResult<&Connection> {
        self.conn
            .as_ref()
            .ok_or_else(|| SysError::failed("sqlite: database not open (reset first)"))
    }

    /// What the database file holds: nothing, dedup-lab's marker (with its text), or tables
    /// of someone else.
    fn holding(&self) -> SysResult<Holding> {
        if !self.path.exists() {
            return Ok(Holding::Absent);
        }
        let c = Connection::open(&self.path).map_err(sql_err("sqlite: opening database"))?;
        let tables: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(sql_err("sqlite: inspecting existing database"))?;
        // A file with no tables at all (a reset cut short before the marker) holds nothing.
        if tables == 0 {
            return Ok(Holding::Absent);
        }
        let marker: Option<String> = c
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [MARKER_TABLE],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_err("sqlite: inspecting existing database"))?;
        if marker.is_none() {
            return Ok(Holding::Foreign(format!(
                "{} holds tables but no {MARKER_TABLE} table",
                self.path.display()
            )));
        }
        let text: Option<String> = c
            .query_row(&format!("SELECT note FROM {MARKER_TABLE}"), [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql_err("sqlite: reading the marker"))?;
        Ok(Holding::Marked(text.unwrap_or_default()))
    }

    /// Deletes the database file; only called on a lab-owned one.
    fn remove(&mut self) -> SysResult<()> {
        self.conn = None;
        // The database (holding the marker) goes last, so a reset cut short never leaves
        // lab files without their marker.
        for suffix in ["-wal", "-shm", "-journal", ""] {
            let p = PathBuf::from(format!("{}{suffix}", self.path.display()));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed("sqlite: removing database")(e)),
            }
        }
        Ok(())
    }

    fn create(&mut self, marker: &str) -> SysResult<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            SysError::failed(format!("sqlite: cannot create {}: {e}", self.dir.display()))
        })?;
        let c = Connection::open(&self.path).map_err(sql_err("sqlite: creating database"))?;
        let row = match self.tables.layout().keys {
            KeyMode::Name => "id INTEGER PRIMARY KEY, name TEXT NOT NULL, content BLOB NOT NULL",
            KeyMode::Content => "content_key TEXT PRIMARY KEY, content BLOB NOT NULL",
        };
        let tables: String = self
            .tables
            .all()
            .iter()
            .map(|t| format!("CREATE TABLE {t} ({row});\n"))
            .collect();
        c.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {};
             BEGIN;
             CREATE TABLE {MARKER_TABLE} (note TEXT NOT NULL);
             {tables}",
            self.synchronous
        ))
        .and_then(|()| c.execute(&format!("INSERT INTO {MARKER_TABLE} VALUES (?1)"), [marker]))
        .and_then(|_| c.execute_batch("COMMIT"))
        .map_err(sql_err("sqlite: creating tables"))?;
        self.conn = Some(c);
        Ok(())
    }
}

/// Writes `f` into its table: under its id and name, or with content keys `INSERT OR IGNORE`
/// under its content's hash (a content the table holds already stays as it is).
fn insert(c: &Connection, tables: &Tables, f: &FileEntry, content: &[u8]) -> SysResult<()> {
    let table = tables.of(f);
    let done = match tables.layout().keys {
        KeyMode::Name => c
            .prepare_cached(&format!(
                "INSERT INTO {table} (id, name, content) VALUES (?1, ?2, ?3)"
            ))
            .and_then(|mut st| st.execute(params![f.id, f.name, content])),
        KeyMode::Content => c
            .prepare_cached(&format!(
                "INSERT OR IGNORE INTO {table} (content_key, content) VALUES (?1, ?2)"
            ))
            .and_then(|mut st| st.execute(params![tables.layout().key_of(f), content])),
    };
    done.map(drop).map_err(sql_err("sqlite: insert"))
}

/// The database file's pages as SQLite counts them.
struct Pages {
    count: i64,
    free: i64,
    size: i64,
}

impl Pages {
    /// The file's size in pages: the native size.
    fn bytes(&self) -> u64 {
        (self.count * self.size) as u64
    }
}

fn pages(c: &Connection) -> SysResult<Pages> {
    c.query_row(
        "SELECT page_count, freelist_count, page_size \
         FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
        [],
        |r| {
            Ok(Pages {
                count: r.get(0)?,
                free: r.get(1)?,
                size: r.get(2)?,
            })
        },
    )
    .map_err(sql_err("sqlite: page_count"))
}

/// The meter: a read-only connection opened for each look, since every reset replaces the
/// file (a connection kept open would read the deleted one).
struct SqliteMeter {
    dir: PathBuf,
    path: PathBuf,
}

impl SqliteMeter {
    fn pages(&self) -> SysResult<Pages> {
        let c = Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sql_err("sqlite: opening the database read-only"))?;
        pages(&c)
    }
}

#[async_trait]
impl Measured for SqliteMeter {
    fn native_copies(&self) -> Option<u32> {
        Some(1)
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        tokio::task::block_in_place(|| Ok(self.pages()?.bytes()))
    }

    fn own_files(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }
}

#[async_trait]
impl Meter for SqliteMeter {
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>> {
        tokio::task::block_in_place(|| {
            let p = self.pages()?;
            let wal =
                std::fs::metadata(format!("{}-wal", self.path.display())).map_or(0, |m| m.len());
            Ok(BTreeMap::from([
                ("page_count".to_string(), p.count as f64),
                ("freelist_count".to_string(), p.free as f64),
                ("page_size".to_string(), p.size as f64),
                ("wal_bytes".to_string(), wal as f64),
            ]))
        })
    }
}

#[async_trait]
impl System for Sqlite {
    fn name(&self) -> &str {
        &self.name
    }

    fn target(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        Ok(ServerInfo {
            product: "SQLite".into(),
            version: rusqlite::version().to_string(),
        })
    }

    async fn meter(&mut self) -> SysResult<Box<dyn Meter>> {
        Ok(Box::new(SqliteMeter {
            dir: self.dir.clone(),
            path: self.path.clone(),
        }))
    }

    async fn inspect(&mut self) -> SysResult<Holding> {
        // A connection of ours would hold the file open while it is inspected and deleted.
        self.conn = None;
        tokio::task::block_in_place(|| self.holding())
    }

    async fn recreate(&mut self, marker: &Marker) -> SysResult<()> {
        tokio::task::block_in_place(|| {
            self.remove()?;
            self.create(&marker.text)
        })
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        tokio::task::block_in_place(|| {
            let c = self.conn()?;
            let tx = c
                .unchecked_transaction()
                .map_err(sql_err("sqlite: begin"))?;
            for f in &ds.manifest.files {
                let content = ds.read(f).map_err(|e| SysError::failed(format!("{e:#}")))?;
                insert(&tx, &self.tables, f, &content)?;
            }
            tx.commit().map_err(sql_err("sqlite: commit"))
        })
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        tokio::task::block_in_place(|| insert(self.conn()?, &self.tables, file, &content))
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        tokio::task::block_in_place(|| {
            let t = &self.tables;
            let sql = format!("DELETE FROM {} WHERE {} = ?1", t.of(file), t.key_column());
            let mut st = self
                .conn()?
                .prepare_cached(&sql)
                .map_err(sql_err("sqlite: delete"))?;
            let n = match t.layout().keys {
                KeyMode::Name => st.execute([file.id]),
                KeyMode::Content => st.execute([t.layout().key_of(file)]),
            }
            .map_err(sql_err("sqlite: delete"))?;
            if n != 1 {
                return Err(SysError::failed(format!(
                    "sqlite: delete of {} removed {n} rows",
                    file.name
                )));
            }
            Ok(())
        })
    }

    async fn maintenance(&mut self) -> SysResult<String> {
        tokio::task::block_in_place(|| {
            self.conn()?
                .execute_batch("VACUUM")
                .map_err(sql_err("sqlite: VACUUM"))
        })?;
        Ok("VACUUM".into())
    }

    async fn settle(&mut self) -> SysResult<()> {
        tokio::task::block_in_place(|| {
            self.conn()?
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(drop)
                .map_err(sql_err("sqlite: checkpoint"))
        })
    }

    async fn count(&mut self) -> SysResult<u64> {
        tokio::task::block_in_place(|| {
            self.conn()?
                .query_row(&self.tables.count_sql(), [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(sql_err("sqlite: count"))
        })
    }
}
