//! Data sets: seeded files with an exact share of duplicates, and their manifests.
//!
//! A data set is a directory of files plus `manifest.json`. It is generated into a hidden
//! sibling directory and renamed into place only when complete and verified, so a directory
//! with a manifest is always a whole data set.

mod manifest;
mod payload;
mod plan;
pub mod rng;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use manifest::{FORMAT, FileEntry, Manifest};
pub use payload::{PayloadType, content};
pub use plan::{GradePlan, plan, split};

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
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSetSpec {
    /// Payload type of every file.
    pub payload: PayloadType,
    /// Percent of files that duplicate another file (0–99).
    pub grade: u8,
    /// Number of files.
    pub files: u32,
    /// File sizes.
    pub sizes: SizeSpec,
    /// Seed: same spec and seed give byte-identical files.
    pub seed: u64,
}

impl DataSetSpec {
    /// The grade plan and the size of every distinct content.
    fn layout(&self) -> (GradePlan, Vec<u64>) {
        let plan = plan(
            self.files,
            self.grade,
            rng::derive_seed(self.seed, "plan", 0),
        );
        let mut size_rng = rng::rng(rng::derive_seed(self.seed, "sizes", 0));
        let sizes = (0..plan.uniques)
            .map(|_| self.sizes.draw(&mut size_rng))
            .collect();
        (plan, sizes)
    }

    /// `(L, U)`: logical and unique bytes the data set will have, without generating it.
    pub fn byte_counts(&self) -> (u64, u64) {
        let (plan, sizes) = self.layout();
        let logical = plan.slots.iter().map(|&c| sizes[c as usize]).sum();
        (logical, sizes.iter().sum())
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
        if let Ok(ds) = DataSet::open(dir)
            && ds.matches(spec)
        {
            return Ok(ds);
        }
        DataSet::generate(spec, dir)
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
            && m.files.len() == spec.files as usize
    }

    /// Generates `spec` into `dir`, replacing whatever is there, and verifies the grade by
    /// hashing what was written. Memory stays bounded by one I/O buffer.
    pub fn generate(spec: &DataSetSpec, dir: &Path) -> anyhow::Result<DataSet> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        let name = dir
            .file_name()
            .context("data set directory has no name")?
            .to_string_lossy();
        let partial = parent.join(format!(".{name}.partial"));
        remove_dir_if_exists(&partial)?;
        let result = write_partial(spec, &partial).and_then(|manifest| {
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
            for f in &ds.manifest.files {
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

/// Writes every file and the manifest into `partial`; returns the verified manifest.
fn write_partial(spec: &DataSetSpec, partial: &Path) -> anyhow::Result<Manifest> {
    std::fs::create_dir_all(partial)
        .with_context(|| format!("creating data set directory {}", partial.display()))?;
    let (plan, sizes) = spec.layout();
    let mut buf = vec![0u8; 256 * 1024];
    let mut files: Vec<FileEntry> = Vec::with_capacity(plan.slots.len());
    let mut first_of: HashMap<u32, usize> = HashMap::new();
    for (pos, &content) in plan.slots.iter().enumerate() {
        let name = format!("{pos:06}.{}", spec.payload.extension());
        let size = sizes[content as usize];
        let seed = rng::derive_seed(spec.seed, "content", u64::from(content));
        let hash = write_content(
            &partial.join(&name),
            payload::content(spec.payload, seed, size),
            &mut buf,
        )?;
        let copy_of = match first_of.get(&content) {
            Some(&orig) => Some(files[orig].name.clone()),
            None => {
                first_of.insert(content, pos);
                None
            }
        };
        files.push(FileEntry {
            id: pos as u32,
            name,
            size,
            blake3: hash,
            copy_of,
        });
    }
    let manifest = verify(spec, &plan, &sizes, files)?;
    let mut f = File::create(partial.join(MANIFEST))?;
    f.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
    f.sync_all()?;
    Ok(manifest)
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

fn write_content(path: &Path, mut src: impl Read, buf: &mut [u8]) -> anyhow::Result<String> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = src.read(buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Checks the written hashes against the plan and builds the manifest.
fn verify(
    spec: &DataSetSpec,
    plan: &GradePlan,
    sizes: &[u64],
    files: Vec<FileEntry>,
) -> anyhow::Result<Manifest> {
    let by_name: HashMap<&str, &FileEntry> = files.iter().map(|f| (f.name.as_str(), f)).collect();
    for f in &files {
        if let Some(orig) = &f.copy_of
            && by_name[orig.as_str()].blake3 != f.blake3
        {
            bail!(
                "generator is not deterministic: {} should repeat {}",
                f.name,
                orig
            );
        }
    }
    let distinct: std::collections::HashSet<&str> =
        files.iter().map(|f| f.blake3.as_str()).collect();
    if distinct.len() != plan.uniques as usize {
        bail!(
            "{} files of {} at size {} gave only {} distinct contents instead of {}: \
             the files are too small to differ; use a larger --file-size",
            spec.files,
            spec.payload,
            spec.sizes,
            distinct.len(),
            plan.uniques
        );
    }
    let n = files.len() as f64;
    Ok(Manifest {
        format: FORMAT,
        payload: spec.payload,
        grade: spec.grade,
        seed: spec.seed,
        file_size: spec.sizes,
        uniques: plan.uniques,
        duplicates: plan.duplicates,
        logical_bytes: files.iter().map(|f| f.size).sum(),
        unique_bytes: sizes.iter().sum(),
        achieved_grade: 100.0 * (n - distinct.len() as f64) / n,
        files,
    })
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
