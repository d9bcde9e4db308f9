//! `sqlite`: an embedded SQLite database file (bundled library, no server).
//!
//! The namespace is one database file in a lab directory; a marker table identifies it as
//! lab-owned, and reset deletes and recreates the file so every stage starts from empty.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, params};
use serde::Deserialize;

use super::{
    MARKER_TABLE, ServerInfo, SysError, SysResult, System, SystemContext, SystemDef,
    check_namespace, failed, parse_section,
};
use crate::dataset::{DataSet, FileEntry};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    name: "sqlite",
    embedded: true,
    about: "embedded SQLite database file (bundled library, no server)",
    build,
};

/// `[systems.sqlite]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Directory holding the database; default `<experiment>/systems/sqlite`.
    dir: Option<PathBuf>,
    /// Database file name inside `dir` (must start with `dedup_lab`).
    file: Option<String>,
    /// `PRAGMA synchronous` (`off`, `normal`, `full`); default `full`: a commit is durable.
    synchronous: Option<String>,
}

fn build(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    let s: Settings = parse_section(DEF.name, ctx.section)?;
    let file = s.file.unwrap_or_else(|| "dedup_lab.sqlite".into());
    let stem = file.strip_suffix(".sqlite").unwrap_or(&file);
    check_namespace(DEF.name, "file", stem)?;
    let synchronous = s.synchronous.unwrap_or_else(|| "full".into());
    if !["off", "normal", "full"].contains(&synchronous.as_str()) {
        crate::bail_usage!(
            "config [systems.sqlite] synchronous = \"{synchronous}\": use off, normal or full"
        );
    }
    let dir = s
        .dir
        .unwrap_or_else(|| ctx.experiment_dir.join("systems").join("sqlite"));
    Ok(Box::new(Sqlite {
        path: dir.join(file),
        dir,
        synchronous,
        conn: None,
    }))
}

/// The SQLite adapter.
struct Sqlite {
    dir: PathBuf,
    path: PathBuf,
    synchronous: String,
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

    /// Deletes the database file if it is lab-owned, refusing any other file.
    fn remove_owned(&mut self) -> SysResult<()> {
        self.conn = None;
        if !self.path.exists() {
            return Ok(());
        }
        // A file with no tables at all (a reset cut short before the marker) is safe to delete.
        let (tables, marked): (i64, i64) = Connection::open(&self.path)
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*), count(*) FILTER (WHERE name = ?1) FROM sqlite_master \
                     WHERE type = 'table'",
                    [MARKER_TABLE],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .map_err(sql_err("sqlite: inspecting existing database"))?;
        if tables > 0 && marked == 0 {
            return Err(SysError::unsafe_namespace(format!(
                "sqlite: {} exists but was not created by dedup-lab (no {MARKER_TABLE} table); \
                 refusing to delete it — move it away or configure another file",
                self.path.display()
            )));
        }
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

    fn create(&mut self) -> SysResult<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            SysError::failed(format!("sqlite: cannot create {}: {e}", self.dir.display()))
        })?;
        let c = Connection::open(&self.path).map_err(sql_err("sqlite: creating database"))?;
        c.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {};
             BEGIN;
             CREATE TABLE {MARKER_TABLE} (note TEXT NOT NULL);
             INSERT INTO {MARKER_TABLE} VALUES ('created by dedup-lab; deleted by its resets');
             CREATE TABLE files (id INTEGER PRIMARY KEY, name TEXT NOT NULL, content BLOB NOT NULL);
             COMMIT;",
            self.synchronous
        ))
        .map_err(sql_err("sqlite: creating tables"))?;
        self.conn = Some(c);
        Ok(())
    }
}

fn insert(c: &Connection, f: &FileEntry, content: &[u8]) -> SysResult<()> {
    c.prepare_cached("INSERT INTO files (id, name, content) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute(params![f.id, f.name, content]))
        .map(drop)
        .map_err(sql_err("sqlite: insert"))
}

#[async_trait]
impl System for Sqlite {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn native_copies(&self) -> Option<u32> {
        Some(1)
    }

    fn default_fs_probe(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
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

    async fn reset(&mut self) -> SysResult<()> {
        tokio::task::block_in_place(|| {
            self.remove_owned()?;
            self.create()
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
                insert(&tx, f, &content)?;
            }
            tx.commit().map_err(sql_err("sqlite: commit"))
        })
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        tokio::task::block_in_place(|| insert(self.conn()?, file, &content))
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        tokio::task::block_in_place(|| {
            let n = self
                .conn()?
                .prepare_cached("DELETE FROM files WHERE id = ?1")
                .and_then(|mut st| st.execute([file.id]))
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
                .query_row("SELECT count(*) FROM files", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(sql_err("sqlite: count"))
        })
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        tokio::task::block_in_place(|| {
            self.conn()?
                .query_row(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u64)
                .map_err(sql_err("sqlite: page_count"))
        })
    }
}
