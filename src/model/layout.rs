//! How an instance lays a data set out in its system: what each file is stored under (its
//! name, or its content's hash, so that a repeated content overwrites or is dropped as the
//! same entry) and how many containers (tables, buckets, topics, key prefixes) the files are
//! spread over. The engine and every adapter ask this one type, so that they agree on which
//! file goes where and how many entries a stage leaves.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::dataset::FileEntry;

/// What a file is stored under.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    /// Its name: every file is an entry of its own, duplicates included.
    #[default]
    Name,
    /// Its content's BLAKE3 (hex): a duplicate lands on the entry of its content, which the
    /// system overwrites or keeps (logical duplicate prevention).
    Content,
}

impl KeyMode {
    /// Name in configs and records.
    pub fn name(self) -> &'static str {
        match self {
            KeyMode::Name => "name",
            KeyMode::Content => "content",
        }
    }
}

/// The most containers an instance may spread files over.
pub const MAX_CONTAINERS: u32 = 64;

/// An instance's layout: `[layout]` for every instance, `keys` and `containers` in an
/// instance's section for one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Layout {
    /// What each file is stored under.
    pub keys: KeyMode,
    /// Containers the files are spread over, file id modulo this; 1 keeps them together.
    pub containers: u32,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            keys: KeyMode::Name,
            containers: 1,
        }
    }
}

impl Layout {
    /// Whether this is the layout of every instance that does not ask for another.
    pub fn is_default(&self) -> bool {
        *self == Layout::default()
    }

    /// The container `f` goes to, from 0.
    pub fn container_of(&self, f: &FileEntry) -> u32 {
        f.id % self.containers.max(1)
    }

    /// What `f` is stored under.
    pub fn key_of<'a>(&self, f: &'a FileEntry) -> &'a str {
        match self.keys {
            KeyMode::Name => &f.name,
            KeyMode::Content => &f.blake3,
        }
    }

    /// Entries the system holds once every file is stored: one per file, or with content
    /// keys one per distinct content in each container (a content repeated in another
    /// container is another entry there).
    pub fn stored_entries(&self, files: &[FileEntry]) -> u64 {
        self.holders(files).len() as u64
    }

    /// For each file, whether deleting it sends a request: with content keys only the last
    /// file holding an entry deletes it (an application that keeps content by its hash does
    /// so; deleting an earlier one would delete the data of the files that share it).
    pub fn deletes(&self, files: &[FileEntry]) -> Vec<bool> {
        let holders = self.holders(files);
        let mut seen: HashMap<(u32, &str), u32> = HashMap::new();
        files
            .iter()
            .map(|f| {
                let entry = (self.container_of(f), self.key_of(f));
                let n = seen.entry(entry).or_default();
                *n += 1;
                *n == holders[&entry]
            })
            .collect()
    }

    /// Files per entry (container, key).
    fn holders<'a>(&self, files: &'a [FileEntry]) -> HashMap<(u32, &'a str), u32> {
        let mut out = HashMap::new();
        for f in files {
            *out.entry((self.container_of(f), self.key_of(f)))
                .or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: u32, content: &str) -> FileEntry {
        FileEntry {
            id,
            name: format!("f{id}"),
            size: 1,
            blake3: content.into(),
            copy_of: None,
        }
    }

    #[test]
    fn content_keys_hold_one_entry_per_content_and_container() {
        // Contents a, b, a, a, c, b over ids 0..6.
        let files: Vec<FileEntry> = ["a", "b", "a", "a", "c", "b"]
            .iter()
            .enumerate()
            .map(|(i, c)| file(i as u32, c))
            .collect();
        let names = Layout::default();
        assert_eq!(names.stored_entries(&files), 6);
        assert!(names.deletes(&files).iter().all(|d| *d));
        let content = Layout {
            keys: KeyMode::Content,
            containers: 1,
        };
        assert_eq!(content.stored_entries(&files), 3);
        // a is deleted with its last file (id 3), b with id 5, c with id 4.
        assert_eq!(
            content.deletes(&files),
            [false, false, false, true, true, true]
        );
        // Two containers (even, odd ids): a in both, b only in 1, c only in 0.
        let spread = Layout {
            keys: KeyMode::Content,
            containers: 2,
        };
        assert_eq!(spread.container_of(&files[3]), 1);
        assert_eq!(spread.stored_entries(&files), 4);
        assert_eq!(
            spread.deletes(&files),
            [false, false, true, true, true, true]
        );
        assert_eq!(spread.key_of(&files[2]), "a");
    }
}
