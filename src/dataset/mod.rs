//! Data sets: seeded files with an exact share of duplicates, and their manifests.
//!
//! A data set is a directory of files plus `manifest.json`. It is generated into a hidden
//! sibling directory and renamed into place only when complete and verified, so a directory
//! with a manifest is always a whole data set. Duplicates are whole files or chunks inside
//! files (`dedup`); content is synthetic (`payload`) or sliced from a directory (`source`).

mod dedup;
mod generate;
mod manifest;
mod payload;
mod plan;
pub mod rng;
mod source;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use dedup::{
    ChunkDedup, DEFAULT_WORKING_SET, Dedup, DedupUnit, DupMode, MAX_SHIFT, MAX_UNIT, MIN_UNIT,
};
pub use generate::ContentStream;
pub use manifest::{FORMAT, FileEntry, Manifest, SourceRecord, SourcedFile};
pub use payload::{PayloadType, content};
pub use plan::{GradePlan, plan, split};
pub use source::{SourcePart, SourceSpec, check_dir};

/// File name of the manifest inside a data set directory.
pub const MANIFEST: &str = "manifest.json";

/// File sizes of a data set: one fixed size, or a seeded uniform range (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeSpec {
    /// Every file has this size.
    Fixed(u64),
    /// Each distinct content draws its size from `min..=max`.
    Range {
        /// Smallest size.
        min: u64,
        /// Largest size.
        max: u64,
    },
}

impl SizeSpec {
    /// The largest size a file can have.
    pub fn max(self) -> u64 {
        match self {
            SizeSpec::Fixed(s) => s,
            SizeSpec::Range { max, .. } => max,
        }
    }

    fn draw(self, rng: &mut rng::Rng) -> u64 {
        match self {
            SizeSpec::Fixed(s) => s,
            SizeSpec::Range { min, max } => min + rng::below(rng, max - min + 1),
        }
    }

    /// A size that is a whole number of `unit` chunks: a fixed size as it is (a multiple, as
    /// [`Dedup::check`] ensures), or a multiple drawn uniformly from the range.
    fn draw_chunks(self, rng: &mut rng::Rng, unit: u64) -> u64 {
        match self {
            SizeSpec::Fixed(s) => s,
            SizeSpec::Range { min, max } => {
                let (lo, hi) = (min.div_ceil(unit), max / unit);
                (lo + rng::below(rng, hi - lo + 1)) * unit
            }
        }
    }
}

/// Parses one size such as `65536`, `64KiB` or `1MiB` (zero included: callers say why zero is
/// wrong for them).
pub fn parse_size(t: &str) -> Result<u64, String> {
    let t = t.trim();
    t.parse::<bytesize::ByteSize>()
        .map(|s| s.as_u64())
        .map_err(|_| format!("'{t}' is not a size; write e.g. 65536, 64KiB or 1MiB"))
}

impl FromStr for SizeSpec {
    type Err = String;

    /// Parses `64KiB` or `4KiB..1MiB`.
    fn from_str(s: &str) -> Result<Self, String> {
        let one = |t: &str| -> Result<u64, String> {
            let size = parse_size(t)?;
            if size == 0 {
                return Err(format!(
                    "'{}' is zero; a file needs at least 1 byte",
                    t.trim()
                ));
            }
            Ok(size)
        };
        match s.split_once("..") {
            None => Ok(SizeSpec::Fixed(one(s)?)),
            Some((a, b)) => {
                let (min, max) = (one(a)?, one(b)?);
                if min > max {
                    return Err(format!(
                        "size range '{s}' has its minimum above its maximum; write MIN..MAX"
                    ));
                }
                Ok(if min == max {
                    SizeSpec::Fixed(min)
                } else {
                    SizeSpec::Range { min, max }
                })
            }
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeSpec::Fixed(s) => write!(f, "{s}"),
            SizeSpec::Range { min, max } => write!(f, "{min}..{max}"),
        }
    }
}

impl Serialize for SizeSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SizeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_str(d)
    }
}

/// Deserializes a size written as a number of bytes or as text ("64KiB"), both through
/// `T`'s parser.
pub(crate) fn int_or_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Str(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => n.to_string().parse(),
        Raw::Str(s) => s.parse(),
    }
    .map_err(serde::de::Error::custom)
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSetSpec {
    /// Payload type of every file.
    pub payload: PayloadType,
    /// Percent of duplicates at the dedup unit: files, or chunks (0–99).
    pub grade: u8,
    /// Number of files.
    pub files: u32,
    /// File sizes.
    pub sizes: SizeSpec,
    /// Seed: same spec and seed give byte-identical files.
    pub seed: u64,
    /// How duplicates are formed: whole files (default) or chunks.
    pub dedup: Dedup,
    /// Percent of every piece (chunk, or file with whole-file duplicates) that is filler and
    /// compresses away, as fio's `buffer_compress_percentage` (0–99).
    pub compress: u8,
    /// Where a preset's content comes from; required for presets, ignored otherwise.
    pub source: Option<SourceSpec>,
}

impl Default for DataSetSpec {
    /// 50 files of 64 KiB random bytes, no duplicates, seed 1: the fields tests change.
    fn default() -> Self {
        DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade: 0,
            files: 50,
            sizes: SizeSpec::Fixed(64 * 1024),
            seed: 1,
            dedup: Dedup::Files,
            compress: 0,
            source: None,
        }
    }
}

impl DataSetSpec {
    /// Checks what the config checks too, for specs built in code; the message names the fix.
    pub fn check(&self) -> Result<(), String> {
        self.dedup.check(self.sizes)?;
        if self.grade > 99 {
            return Err(format!(
                "grade {} is out of range: a grade is a percent of duplicates, 0 to 99",
                self.grade
            ));
        }
        if self.compress > 99 {
            return Err(format!(
                "compress {} is out of range: use 0 to 99 (percent of each chunk that is filler)",
                self.compress
            ));
        }
        if self.payload.is_preset() && self.source.is_none() {
            return Err(format!(
                "payload type {0} reads its files from a directory: set [dataset.sources] \
                 {0} = \"/path/to/dir\" in the config, or --source {0}=/path/to/dir",
                self.payload
            ));
        }
        Ok(())
    }

    /// `(L, U)`: logical and unique bytes the data set will have, without generating it.
    /// U is what remains after perfect deduplication at the data set's dedup unit.
    pub fn byte_counts(&self) -> (u64, u64) {
        let layout = generate::Layout::new(self);
        (layout.logical_bytes(), layout.unique_bytes())
    }

    /// The data set's bytes, every file in order, made in memory: for synthetic payloads only
    /// (a directory source is read only while writing a data set, which reads duplicates
    /// back).
    pub fn content_stream(&self) -> anyhow::Result<ContentStream> {
        ContentStream::new(self)
    }
}

/// A generated data set on disk.
#[derive(Clone, Debug)]
pub struct DataSet {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl DataSet {
    /// Returns the data set in `dir` if it is complete and was generated from `spec`,
    /// otherwise generates it there.
    pub fn ensure(spec: &DataSetSpec, dir: &Path) -> anyhow::Result<DataSet> {
        DataSet::ensure_with(spec, dir, &|_| ())
    }

    /// [`DataSet::ensure`], calling `written` with each file's size as it is generated (for
    /// progress).
    pub fn ensure_with(
        spec: &DataSetSpec,
        dir: &Path,
        written: &dyn Fn(u64),
    ) -> anyhow::Result<DataSet> {
        if let Ok(ds) = DataSet::open(dir)
            && ds.matches(spec)
        {
            return Ok(ds);
        }
        DataSet::generate_with(spec, dir, written)
    }

    /// Opens a complete data set: its manifest parses and every file has its size.
    pub fn open(dir: &Path) -> anyhow::Result<DataSet> {
        let manifest = Manifest::read(dir)?;
        let ds = DataSet {
            dir: dir.to_path_buf(),
            manifest,
        };
        for f in &ds.manifest.files {
            let len = std::fs::metadata(ds.path(f))
                .with_context(|| format!("data set {}: file {}", dir.display(), f.name))?
                .len();
            if len != f.size {
                bail!(
                    "data set {}: file {} has {len} bytes, the manifest says {}",
                    dir.display(),
                    f.name,
                    f.size
                );
            }
        }
        Ok(ds)
    }

    fn matches(&self, spec: &DataSetSpec) -> bool {
        let m = &self.manifest;
        m.format == FORMAT
            && m.payload == spec.payload
            && m.grade == spec.grade
            && m.seed == spec.seed
            && m.file_size == spec.sizes
            && m.dedup == spec.dedup
            && m.compress == spec.compress
            && m.files.len() == spec.files as usize
            && match (&m.source, &spec.source) {
                (None, _) => !spec.payload.is_preset(),
                (Some(r), Some(s)) => {
                    r.decompress == s.decompress
                        && std::path::absolute(&s.dir).is_ok_and(|d| d == r.dir)
                }
                (Some(_), None) => false,
            }
    }

    /// Generates `spec` into `dir`, replacing whatever is there, and verifies the grade by
    /// hashing what was written. Memory stays bounded by a few blocks plus 16 bytes of hash
    /// per unique piece (file or chunk).
    pub fn generate(spec: &DataSetSpec, dir: &Path) -> anyhow::Result<DataSet> {
        DataSet::generate_with(spec, dir, &|_| ())
    }

    /// [`DataSet::generate`], calling `written` with each file's size once it is written.
    pub fn generate_with(
        spec: &DataSetSpec,
        dir: &Path,
        written: &dyn Fn(u64),
    ) -> anyhow::Result<DataSet> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        let name = dir
            .file_name()
            .context("data set directory has no name")?
            .to_string_lossy();
        let partial = parent.join(format!(".{name}.partial"));
        remove_dir_if_exists(&partial)?;
        let result = generate::write_partial(spec, &partial, written).and_then(|manifest| {
            remove_dir_if_exists(dir)?;
            std::fs::rename(&partial, dir)
                .with_context(|| format!("moving data set into {}", dir.display()))?;
            Ok(DataSet {
                dir: dir.to_path_buf(),
                manifest,
            })
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
        result
    }

    /// Path of one file.
    pub fn path(&self, f: &FileEntry) -> PathBuf {
        self.dir.join(&f.name)
    }

    /// Reads one whole file, checking its size against the manifest.
    pub fn read(&self, f: &FileEntry) -> anyhow::Result<Bytes> {
        let data = std::fs::read(self.path(f))
            .with_context(|| format!("reading {}", self.path(f).display()))?;
        if data.len() as u64 != f.size {
            bail!(
                "{} changed on disk: {} bytes, manifest says {}",
                self.path(f).display(),
                data.len(),
                f.size
            );
        }
        Ok(Bytes::from(data))
    }

    /// Streams every file in order, read ahead on a separate thread so disk reads overlap
    /// with sending. At most about 64 MiB (and at least one file) is buffered.
    pub fn stream(&self) -> FileStream {
        self.stream_where(|_| true)
    }

    /// Streams the files `keep` selects, in order, as [`DataSet::stream`] does: for bulk paths
    /// that load one container at a time.
    pub fn stream_where(&self, keep: impl Fn(&FileEntry) -> bool + Send + 'static) -> FileStream {
        let max = self
            .manifest
            .files
            .iter()
            .map(|f| f.size)
            .max()
            .unwrap_or(1);
        let depth = ((64 << 20) / max.max(1)).clamp(1, 16) as usize;
        let (tx, rx) = tokio::sync::mpsc::channel(depth);
        let ds = self.clone();
        std::thread::spawn(move || {
            for f in ds.manifest.files.iter().filter(|f| keep(f)) {
                let item = ds.read(f).map(|b| (f.clone(), b));
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    break;
                }
            }
        });
        FileStream { rx }
    }
}

/// Files of a data set in order, with their content; see [`DataSet::stream`].
pub struct FileStream {
    rx: tokio::sync::mpsc::Receiver<anyhow::Result<(FileEntry, Bytes)>>,
}

impl FileStream {
    /// The next file, `None` after the last.
    pub async fn next(&mut self) -> Option<anyhow::Result<(FileEntry, Bytes)>> {
        self.rx.recv().await
    }
}

/// Deletes the files of a data set but keeps its manifest; [`DataSet::ensure`] regenerates
/// them when needed.
pub fn remove_files(ds: &DataSet) -> anyhow::Result<()> {
    for f in &ds.manifest.files {
        match std::fs::remove_file(ds.path(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", ds.path(f).display())),
        }
    }
    Ok(())
}

fn remove_dir_if_exists(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_filtered_stream_yields_the_selected_files_in_order_with_their_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = DataSet::generate(
            &DataSetSpec {
                payload: PayloadType::RandomBinary,
                grade: 50,
                files: 8,
                sizes: SizeSpec::Fixed(1000),
                seed: 2,
                ..Default::default()
            },
            &tmp.path().join("ds"),
        )
        .unwrap();
        let mut files = ds.stream_where(|f| f.id % 3 == 1);
        let mut ids = Vec::new();
        while let Some(item) = files.next().await {
            let (f, content) = item.unwrap();
            assert_eq!(blake3::hash(&content).to_hex().as_str(), f.blake3);
            ids.push(f.id);
        }
        assert_eq!(ids, [1, 4, 7]);
    }

    #[test]
    fn size_spec_parses_and_rejects() {
        assert_eq!("64KiB".parse::<SizeSpec>(), Ok(SizeSpec::Fixed(65536)));
        assert_eq!("1000".parse::<SizeSpec>(), Ok(SizeSpec::Fixed(1000)));
        assert_eq!(
            "4KiB..1MiB".parse::<SizeSpec>(),
            Ok(SizeSpec::Range {
                min: 4096,
                max: 1 << 20
            })
        );
        assert!("0".parse::<SizeSpec>().unwrap_err().contains("zero"));
        assert!(
            "2KiB..1KiB"
                .parse::<SizeSpec>()
                .unwrap_err()
                .contains("minimum")
        );
        assert!(
            "lots"
                .parse::<SizeSpec>()
                .unwrap_err()
                .contains("not a size")
        );
    }
}
