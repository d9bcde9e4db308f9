//! The manifest of a data set: every file with its size, hash and what it copies.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::source::SourcePart;
use super::{Dedup, PayloadType, SizeSpec};

/// Version of the manifest layout and of the generators; bumped when either changes output.
/// 2: dedup unit, compression, directory sources.
pub const FORMAT: u32 = 2;

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
    /// How duplicates are formed: whole files, or chunks of a unit. (Default for manifests
    /// of format 1, which had whole files only: they still parse, and are regenerated.)
    #[serde(default)]
    pub dedup: Dedup,
    /// Percent of every piece (chunk, or file with the file unit) that is filler.
    #[serde(default)]
    pub compress: u8,
    /// Number of distinct contents at the dedup unit (files or chunks), as verified.
    pub uniques: u64,
    /// Number of duplicates at the dedup unit (files or chunks), as verified.
    pub duplicates: u64,
    /// Sum of all file sizes (L).
    pub logical_bytes: u64,
    /// Bytes left after perfect deduplication at the dedup unit (U): the distinct contents,
    /// plus the filler in front of shifted duplicates.
    pub unique_bytes: u64,
    /// Share of duplicates at the dedup unit as verified by hashing the written bytes, in
    /// percent.
    pub achieved_grade: f64,
    /// For presets: the directory source and where every file's unique content came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRecord>,
    /// Every file, in insertion order.
    pub files: Vec<FileEntry>,
}

/// Where a preset data set's content came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// The source directory (absolute).
    pub dir: std::path::PathBuf,
    /// Whether compressed files were read decompressed.
    pub decompress: bool,
    /// Bytes of the source stream read.
    pub read_bytes: u64,
    /// Bytes of it passed over because they repeated content already taken.
    pub skipped_bytes: u64,
    /// Per file with unique content: the source ranges it holds, in order.
    pub files: Vec<SourcedFile>,
}

/// The source ranges of one data set file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcedFile {
    /// The data set file.
    pub name: String,
    /// Its unique content, in order: each range of a source file's (decompressed) stream.
    /// Filler (compression, shift) and duplicate chunks are not listed.
    pub parts: Vec<SourcePart>,
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
