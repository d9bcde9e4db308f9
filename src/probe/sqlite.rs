//! The `sqlite` probe: bytes of the pages in use of SQLite databases that a server stores its
//! data in (tansu, Garage's metadata): (page_count − freelist_count) × page_size. A server
//! that reuses free pages grows its file less than it stores; this probe sees the data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};

use super::{Built, Probe, ProbeContext, ProbeDef};
use crate::model::{Measured, Reading, SysError};

/// Registry entry.
pub const DEF: ProbeDef = ProbeDef {
    name: "sqlite",
    key: Some(KEY),
    key_help: "a list of SQLite database files",
    about: "pages in use of the SQLite files a server keeps its data in",
    build,
};

/// The config key.
pub const KEY: &str = "sqlite_probe";

fn build(ctx: &ProbeContext<'_>) -> Built {
    let paths: Option<Vec<PathBuf>> = ctx.parse(&DEF)?;
    Ok(paths
        .filter(|p| !p.is_empty())
        .map(|paths| Box::new(Sqlite { paths }) as Box<dyn Probe>))
}

struct Sqlite {
    paths: Vec<PathBuf>,
}

#[async_trait]
impl Probe for Sqlite {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn required_paths(&self) -> &[PathBuf] {
        &self.paths
    }

    async fn read(&self, _: &mut dyn Measured) -> Result<Reading, SysError> {
        let paths = self.paths.clone();
        Ok(super::blocking(move || used_bytes(&paths)).await)
    }
}

/// Sums the used bytes of every database. Each is opened read-only, as a reader of its WAL
/// (so committed pages not yet checkpointed count); a missing file is an error.
pub fn used_bytes(paths: &[PathBuf]) -> anyhow::Result<u64> {
    paths.iter().map(|p| used_bytes_of(p)).sum()
}

fn used_bytes_of(path: &Path) -> anyhow::Result<u64> {
    let what = || format!("sqlite probe: {}", path.display());
    if !path.is_file() {
        anyhow::bail!("sqlite probe: {} is not a file", path.display());
    }
    let db = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(what)?;
    db.busy_timeout(Duration::from_secs(30))
        .with_context(what)?;
    let used: i64 = db
        .query_row(
            "SELECT (page_count - freelist_count) * page_size \
             FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )
        .with_context(what)?;
    Ok(used as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_used_pages_not_free_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let db = Connection::open(&path).unwrap();
        db.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (b BLOB);")
            .unwrap();
        let empty = used_bytes(std::slice::from_ref(&path)).unwrap();
        db.execute("INSERT INTO t VALUES (zeroblob(1000000))", [])
            .unwrap();
        let full = used_bytes(std::slice::from_ref(&path)).unwrap();
        assert!(full - empty >= 990_000, "grew {}", full - empty);
        db.execute("DELETE FROM t", []).unwrap();
        let freed = used_bytes(std::slice::from_ref(&path)).unwrap();
        // The file keeps its pages, but they are free now.
        assert!(freed < empty + 10_000, "{freed} vs {empty}");
        let err = used_bytes(&[dir.path().join("missing.db")]).unwrap_err();
        assert!(err.to_string().contains("is not a file"));
    }
}
