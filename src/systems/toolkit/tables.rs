//! The lab tables of the SQL adapters (SQLite, the PostgreSQL-wire systems, MariaDB) under a
//! layout: one table per container, its key column, and the statements that span them all.
//!
//! With one container the table is `files`, as it always was; with N it is `files_0` …
//! `files_<N-1>`, all in the lab namespace, so a reset that drops the namespace removes
//! whatever N an earlier run used. Name keys keep the historical row `(id, name, content)`
//! keyed by `id`; content keys store `(content_key, content)` keyed by the content's hash, so
//! that the system's own primary key turns a repeated content into a no-op.

use crate::dataset::FileEntry;
use crate::model::{KeyMode, Layout};

/// The name of container `k` of a system whose single container is called `base`: `base`
/// itself with one container (existing data, docs and tools keep working), `base_<k>` with
/// several.
pub fn container_name(base: &str, layout: &Layout, k: u32) -> String {
    if layout.containers <= 1 {
        base.to_string()
    } else {
        format!("{base}_{k}")
    }
}

/// The key column of content-keyed tables.
pub const CONTENT_KEY: &str = "content_key";

/// The lab tables of one namespace.
#[derive(Clone, Debug)]
pub struct Tables {
    /// `namespace.`, or nothing for a system with one namespace per database file.
    qualifier: String,
    layout: Layout,
}

impl Tables {
    /// The tables of `namespace` (a schema or database; `None` for SQLite's own file) under
    /// `layout`.
    pub fn new(namespace: Option<&str>, layout: Layout) -> Tables {
        Tables {
            qualifier: namespace.map(|n| format!("{n}.")).unwrap_or_default(),
            layout,
        }
    }

    /// The layout the tables follow.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The containers, in order.
    pub fn containers(&self) -> std::ops::Range<u32> {
        0..self.layout.containers.max(1)
    }

    /// The unqualified name of container `k`'s table.
    pub fn bare(&self, k: u32) -> String {
        container_name("files", &self.layout, k)
    }

    /// The qualified name of container `k`'s table.
    pub fn name(&self, k: u32) -> String {
        format!("{}{}", self.qualifier, self.bare(k))
    }

    /// The qualified name of the table `f` goes to.
    pub fn of(&self, f: &FileEntry) -> String {
        self.name(self.layout.container_of(f))
    }

    /// Every table's qualified name, in container order.
    pub fn all(&self) -> Vec<String> {
        self.containers().map(|k| self.name(k)).collect()
    }

    /// The columns a row is written with, content last.
    pub fn columns(&self) -> &'static str {
        match self.layout.keys {
            KeyMode::Name => "id, name, content",
            KeyMode::Content => "content_key, content",
        }
    }

    /// The columns a row is written with, content included.
    pub fn column_count(&self) -> usize {
        match self.layout.keys {
            KeyMode::Name => 3,
            KeyMode::Content => 2,
        }
    }

    /// The column a delete selects its row by: the file's id, or its content key.
    pub fn key_column(&self) -> &'static str {
        match self.layout.keys {
            KeyMode::Name => "id",
            KeyMode::Content => CONTENT_KEY,
        }
    }

    /// One statement counting the rows of every table.
    pub fn count_sql(&self) -> String {
        let parts: Vec<String> = self
            .all()
            .iter()
            .map(|t| format!("(SELECT count(*) FROM {t})"))
            .collect();
        format!("SELECT {}", parts.join(" + "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_container_keeps_the_historical_table_and_several_are_numbered() {
        let one = Tables::new(Some("dedup_lab_x"), Layout::default());
        assert_eq!(one.all(), ["dedup_lab_x.files"]);
        assert_eq!(one.columns(), "id, name, content");
        assert_eq!(one.key_column(), "id");
        assert_eq!(
            one.count_sql(),
            "SELECT (SELECT count(*) FROM dedup_lab_x.files)"
        );
        let four = Tables::new(
            None,
            Layout {
                keys: KeyMode::Content,
                containers: 4,
            },
        );
        assert_eq!(four.all(), ["files_0", "files_1", "files_2", "files_3"]);
        let f = FileEntry {
            id: 7,
            name: "000007.bin".into(),
            size: 1,
            blake3: "ab".into(),
            copy_of: None,
        };
        assert_eq!(four.of(&f), "files_3");
        assert_eq!(four.columns(), "content_key, content");
        assert_eq!(four.column_count(), 2);
        assert_eq!(four.key_column(), "content_key");
        assert_eq!(
            four.count_sql(),
            "SELECT (SELECT count(*) FROM files_0) + (SELECT count(*) FROM files_1) + \
             (SELECT count(*) FROM files_2) + (SELECT count(*) FROM files_3)"
        );
    }
}
