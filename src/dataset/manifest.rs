//! The manifest of a data set: every file with its size, hash and what it copies.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{PayloadType, SizeSpec};

/// Version of the manifest layout and of the generators; bumped when either changes output.
pub const FORMAT: u32 = 1;

/// One file of a data set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Position in the data set: the row id / insertion order.
    pub id: u32,
    /// File name inside the data set directory; also the object key.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 hash of the content, hex.
    pub blake3: String,
    /// For a duplicate: the name of the file whose content it repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<String>,
}

/// A data set's manifest, written as `manifest.json` in its directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`] of the writer.
    pub format: u32,
    /// Payload type of every file.
    pub payload: PayloadType,
    /// Requested grade: percent of files that duplicate another file.
    pub grade: u8,
    /// Seed the data set was generated from.
    pub seed: u64,
    /// Requested file sizes.
    pub file_size: SizeSpec,
    /// Number of distinct contents planned.
    pub uniques: u32,
    /// Number of duplicate files planned.
    pub duplicates: u32,
    /// Sum of all file sizes.
    pub logical_bytes: u64,
    /// Sum of the sizes of distinct contents.
    pub unique_bytes: u64,
    /// Share of duplicate files as verified by hashing the written bytes, in percent.
    pub achieved_grade: f64,
    /// Every file, in insertion order.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Reads `manifest.json` from a data set directory.
    pub fn read(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join(super::MANIFEST);
        let text = std::fs::read(&path)
            .with_context(|| format!("reading data set manifest {}", path.display()))?;
        serde_json::from_slice(&text)
            .with_context(|| format!("parsing data set manifest {}", path.display()))
    }
}
