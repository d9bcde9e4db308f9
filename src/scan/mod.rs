//! The dedup-potential scanner: how many of the bytes on disk a deduplicating store could
//! remove.
//!
//! It reads files once and, at the same time, cuts them into fixed blocks of each configured
//! size (aligned at each file's start, as a file system lays them out) and into
//! content-defined chunks (FastCDC). A chunk is a duplicate when an identical chunk (same
//! length, same bytes) was seen before anywhere in the scan. Chunks are identified by 128
//! bits of their BLAKE3 hash, so memory grows with the number of distinct chunks (16 bytes
//! each plus the hash table's slack: 20 to 40 bytes, per method) and never with file sizes:
//! files are read through one fixed buffer.
//!
//! The counts are set sizes, so they do not depend on the order in which files are read;
//! files are still walked in sorted order (symlinks not followed) so that a scan's errors
//! and its listing are reproducible. A scan runs on the calling thread and blocks (use
//! `spawn_blocking` from async code): one core already outruns fio-dedupe (BENCHMARKS.md),
//! and the lab machine's cores are busy with the servers being measured.
//!
//! A scan that could not read everything is an error, never a smaller number. The one
//! exception is a file that disappears between the directory listing and its opening (a
//! live server deletes files): it is skipped and counted in
//! [`ScanResult::vanished_files`]. Symlinks, sockets, pipes and devices hold no file data;
//! they are skipped and counted in [`ScanResult::skipped_entries`].

mod method;

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::Context as _;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};
use serde::{Deserialize, Serialize};
use walkdir::WalkDir;

use crate::bail_usage;
use crate::dataset::parse_size;
use method::{Cdc, Fixed};

/// Fixed block sizes scanned by default: a file system page, a database page and a typical
/// dedup block (duperemove's and ZFS's default record size).
pub const DEFAULT_BLOCK_SIZES: [u64; 3] = [4096, 16384, 131072];

/// Bytes asked of each `read`: large enough that system calls cost little, small enough to
/// stay in the CPU's caches while every method works on them.
const READ_SIZE: usize = 1 << 20;

/// FastCDC chunk sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdcParams {
    /// Smallest chunk (except a file's last).
    pub min: u64,
    /// Average chunk size the cut-point masks aim at.
    pub avg: u64,
    /// Largest chunk: a cut is forced here.
    pub max: u64,
}

impl CdcParams {
    /// Average chunk size used by default.
    pub const DEFAULT_AVG: u64 = 8192;

    /// `avg` with the FastCDC paper's ratios: minimum a quarter, maximum eight times it.
    pub fn with_avg(avg: u64) -> CdcParams {
        CdcParams {
            min: avg / 4,
            avg,
            max: avg * 8,
        }
    }

    /// The method name in results: `cdc-8192`, or `cdc-MIN-AVG-MAX` when the minimum or
    /// maximum is not the default ratio.
    pub fn method(&self) -> String {
        if *self == CdcParams::with_avg(self.avg) {
            format!("cdc-{}", self.avg)
        } else {
            format!("cdc-{}-{}-{}", self.min, self.avg, self.max)
        }
    }

    /// Checks the sizes against what the fastcdc crate accepts.
    pub fn validate(&self) -> anyhow::Result<()> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        for (name, value, lo, hi) in [
            ("average", self.avg, AVERAGE_MIN, AVERAGE_MAX),
            ("minimum", self.min, MINIMUM_MIN, MINIMUM_MAX),
            ("maximum", self.max, MAXIMUM_MIN, MAXIMUM_MAX),
        ] {
            if value < lo as u64 || value > hi as u64 {
                bail_usage!(
                    "CDC {name} chunk size {value} is outside FastCDC's range {lo}..={hi}; \
                     choose an average between 256 and 2 MiB, or give MIN:AVG:MAX within range"
                );
            }
            if value % 2 == 1 {
                bail_usage!("CDC {name} chunk size {value} is odd; FastCDC needs even sizes");
            }
        }
        if !(self.min <= self.avg && self.avg <= self.max) {
            bail_usage!(
                "CDC sizes {}:{}:{} are not ordered; write MIN:AVG:MAX with MIN ≤ AVG ≤ MAX",
                self.min,
                self.avg,
                self.max
            );
        }
        Ok(())
    }
}

impl Default for CdcParams {
    fn default() -> CdcParams {
        CdcParams::with_avg(CdcParams::DEFAULT_AVG)
    }
}

impl FromStr for CdcParams {
    type Err = String;

    /// Parses an average (`8KiB`, the paper's ratios for minimum and maximum) or
    /// `MIN:AVG:MAX`.
    fn from_str(s: &str) -> Result<CdcParams, String> {
        let sizes = s
            .split(':')
            .map(parse_size)
            .collect::<Result<Vec<_>, _>>()?;
        match sizes[..] {
            [avg] => Ok(CdcParams::with_avg(avg)),
            [min, avg, max] => Ok(CdcParams { min, avg, max }),
            _ => Err(format!(
                "'{s}' is not a CDC chunk size; write an average such as 8KiB, or MIN:AVG:MAX \
                 such as 2KiB:8KiB:64KiB"
            )),
        }
    }
}

/// What a scan computes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanConfig {
    /// Fixed block sizes in bytes, each its own method (`fixed-<size>`).
    pub block_sizes: Vec<u64>,
    /// Content-defined chunking, or none.
    pub cdc: Option<CdcParams>,
}

impl Default for ScanConfig {
    fn default() -> ScanConfig {
        ScanConfig {
            block_sizes: DEFAULT_BLOCK_SIZES.to_vec(),
            cdc: Some(CdcParams::default()),
        }
    }
}

impl ScanConfig {
    /// Checks that there is something to compute and every size is usable (usage errors).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.block_sizes.is_empty() && self.cdc.is_none() {
            bail_usage!("the scan has nothing to compute; give a block size or CDC (or both)");
        }
        for (i, &b) in self.block_sizes.iter().enumerate() {
            if b == 0 {
                bail_usage!("block size 0 is not a block; give sizes such as 4KiB,128KiB");
            }
            if self.block_sizes[..i].contains(&b) {
                bail_usage!("block size {b} is listed twice; list each size once");
            }
        }
        if let Some(cdc) = &self.cdc {
            cdc.validate()?;
        }
        Ok(())
    }
}

/// The counts of one method.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodResult {
    /// `fixed-<block size>` or the CDC name of [`CdcParams::method`].
    pub method: String,
    /// Bytes cut into chunks: every byte scanned.
    pub total_bytes: u64,
    /// Bytes of the first occurrence of each distinct chunk: what a deduplicating store
    /// with this method keeps.
    pub unique_bytes: u64,
    /// `total_bytes − unique_bytes`: what it could remove.
    pub duplicate_bytes: u64,
    /// Chunks cut.
    pub chunks: u64,
    /// Distinct chunks.
    pub unique_chunks: u64,
    /// Bytes in chunks that are entirely zero, every occurrence counted. They are ordinary
    /// chunks in the other counts; file systems often store them as holes instead.
    pub zero_bytes: u64,
}

impl MethodResult {
    /// `duplicate_bytes / total_bytes`; absent for an empty scan.
    pub fn duplicate_share(&self) -> Option<f64> {
        (self.total_bytes > 0).then(|| self.duplicate_bytes as f64 / self.total_bytes as f64)
    }
}

/// What a scan found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanResult {
    /// Regular files read.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Files (or directories) that disappeared after they were listed and before they were
    /// opened; their bytes are not counted.
    pub vanished_files: u64,
    /// Symlinks, sockets, pipes and devices met in the walk: not followed and not read.
    pub skipped_entries: u64,
    /// Wall-clock time from the scanner's creation to its result.
    pub duration_s: f64,
    /// One entry per method: the fixed block sizes in configured order, then CDC.
    pub methods: Vec<MethodResult>,
}

impl ScanResult {
    /// The result of the method named `name` (e.g. `fixed-4096`, `cdc-8192`).
    pub fn method(&self, name: &str) -> Option<&MethodResult> {
        self.methods.iter().find(|m| m.method == name)
    }
}

/// Scans `paths` (files or directory trees) with every method of `cfg`.
pub fn scan(paths: &[PathBuf], cfg: &ScanConfig) -> anyhow::Result<ScanResult> {
    let mut scanner = Scanner::new(cfg)?;
    for p in paths {
        scanner.add_path(p)?;
    }
    scanner.finish()
}

/// A scan in progress: add paths, files or streams, then take the result. Everything added
/// to one scanner is one scan (a chunk repeated in two files is a duplicate). After an
/// error the scanner refuses further work and has no result: its counts would be partial.
pub struct Scanner {
    fixed: Vec<Fixed>,
    cdc: Option<Cdc>,
    buf: Vec<u8>,
    files: u64,
    bytes: u64,
    vanished_files: u64,
    skipped_entries: u64,
    started: Instant,
    failed: bool,
}

impl Scanner {
    /// A scanner for `cfg` (validated here: bad sizes are usage errors).
    pub fn new(cfg: &ScanConfig) -> anyhow::Result<Scanner> {
        cfg.validate()?;
        let cdc = cfg.cdc.map(Cdc::new);
        let window = cdc.as_ref().map_or(0, Cdc::window);
        Ok(Scanner {
            fixed: cfg
                .block_sizes
                .iter()
                .map(|&b| Fixed::new(b as usize))
                .collect(),
            cdc,
            buf: vec![0; READ_SIZE + window],
            files: 0,
            bytes: 0,
            vanished_files: 0,
            skipped_entries: 0,
            started: Instant::now(),
            failed: false,
        })
    }

    /// Adds a file, or every file under a directory (sorted walk, symlinks not followed).
    /// A path that does not exist is a usage error; entries that vanish during the walk are
    /// counted, see the [module documentation](self).
    pub fn add_path(&mut self, path: &Path) -> anyhow::Result<()> {
        self.guarded(|s| {
            match std::fs::symlink_metadata(path) {
                Err(e) if e.kind() == ErrorKind::NotFound => bail_usage!(
                    "{} does not exist; name an existing file or directory to scan",
                    path.display()
                ),
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
                Ok(_) => {}
            }
            for entry in WalkDir::new(path).follow_links(false).sort_by_file_name() {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e)
                        if e.depth() > 0
                            && e.io_error().map(std::io::Error::kind)
                                == Some(ErrorKind::NotFound) =>
                    {
                        s.vanished_files += 1;
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("walking {}", path.display())),
                };
                let kind = entry.file_type();
                if kind.is_file() {
                    s.file(entry.path())?;
                } else if !kind.is_dir() {
                    s.skipped_entries += 1;
                }
            }
            Ok(())
        })
    }

    /// Adds one file; a file that does not exist (any more) is counted as vanished.
    pub fn add_file(&mut self, path: &Path) -> anyhow::Result<()> {
        self.guarded(|s| s.file(path))
    }

    /// Adds one stream of bytes as if it were a file's content.
    pub fn add_reader(&mut self, reader: impl Read) -> anyhow::Result<()> {
        self.guarded(|s| Ok(s.read(reader)?))
    }

    /// The counts of everything added; an error if any addition failed.
    pub fn finish(self) -> anyhow::Result<ScanResult> {
        anyhow::ensure!(
            !self.failed,
            "the scan is incomplete: a file could not be read (see the earlier error)"
        );
        let mut methods: Vec<MethodResult> = self.fixed.iter().map(Fixed::result).collect();
        methods.extend(self.cdc.as_ref().map(Cdc::result));
        Ok(ScanResult {
            files: self.files,
            bytes: self.bytes,
            vanished_files: self.vanished_files,
            skipped_entries: self.skipped_entries,
            duration_s: self.started.elapsed().as_secs_f64(),
            methods,
        })
    }

    /// Runs `f` unless an earlier call failed, and remembers if it fails.
    fn guarded(
        &mut self,
        f: impl FnOnce(&mut Scanner) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.failed,
            "the scan is incomplete after an earlier error; start a new scan"
        );
        let result = f(self);
        self.failed = result.is_err();
        result
    }

    fn file(&mut self, path: &Path) -> anyhow::Result<()> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.vanished_files += 1;
                return Ok(());
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        self.read(file)
            .with_context(|| format!("reading {}", path.display()))
    }

    /// One pass over a file's bytes: every fixed-block method sees each read as it arrives;
    /// CDC cuts from the buffer, whose unconsumed rest (less than one CDC window) moves to
    /// the front before the next read.
    fn read(&mut self, mut reader: impl Read) -> std::io::Result<()> {
        let (mut start, mut end) = (0, 0);
        loop {
            if self.buf.len() - end < READ_SIZE {
                self.buf.copy_within(start..end, 0);
                (start, end) = (0, end - start);
            }
            let n = match reader.read(&mut self.buf[end..]) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for f in &mut self.fixed {
                f.update(&self.buf[end..end + n]);
            }
            end += n;
            self.bytes += n as u64;
            start += match &mut self.cdc {
                Some(cdc) => cdc.consume(&self.buf[start..end], n == 0),
                None => end - start,
            };
            if n == 0 {
                break;
            }
        }
        for f in &mut self.fixed {
            f.end_file();
        }
        self.files += 1;
        Ok(())
    }
}

/// The result as a terminal table (method, chunks, bytes, unique, duplicate, share, zero)
/// and a line with files, throughput and what was skipped.
pub fn render(r: &ScanResult) -> String {
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "method",
        "chunks",
        "unique chunks",
        "bytes",
        "unique bytes",
        "duplicate bytes",
        "duplicate share",
        "zero bytes",
    ]);
    for m in &r.methods {
        table.add_row(vec![
            m.method.clone(),
            m.chunks.to_string(),
            m.unique_chunks.to_string(),
            m.total_bytes.to_string(),
            m.unique_bytes.to_string(),
            m.duplicate_bytes.to_string(),
            m.duplicate_share()
                .map_or("–".into(), |s| format!("{:.2} %", 100.0 * s)),
            m.zero_bytes.to_string(),
        ]);
    }
    for i in 1..8 {
        if let Some(c) = table.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    format!(
        "{table}\n{} files, {} bytes in {:.2} s ({:.0} MB/s); {} vanished while scanning, {} \
         symlinks or special files skipped\n",
        r.files,
        r.bytes,
        r.duration_s,
        r.bytes as f64 / r.duration_s.max(1e-9) / 1e6,
        r.vanished_files,
        r.skipped_entries
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::Read;

    use fastcdc::v2020::StreamCDC;

    use super::*;
    use crate::dataset::{PayloadType, content};

    /// Hands out at most `step` bytes per read, as a pipe or a slow file system may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// The scanner's buffer handling (refills, moving the unconsumed rest) yields the chunks
    /// of the crate's own streaming chunker, over several files and whatever the read sizes.
    #[test]
    fn scanner_cdc_counts_equal_stream_cdc() {
        let mut files = Vec::new();
        for seed in 0..3 {
            let mut v = Vec::new();
            content(PayloadType::TextDocument, seed, 3_000_000 + seed * 77_777)
                .read_to_end(&mut v)
                .unwrap();
            files.push(v);
        }
        files.push(files[0].clone());
        let (mut chunks, mut distinct, mut total) = (0u64, HashSet::new(), 0u64);
        for f in &files {
            for c in StreamCDC::new(&f[..], 2048, 8192, 65536) {
                let c = c.unwrap();
                chunks += 1;
                distinct.insert(c.data);
            }
            total += f.len() as u64;
        }
        let unique: u64 = distinct.iter().map(|d| d.len() as u64).sum();
        let cfg = ScanConfig {
            block_sizes: vec![],
            cdc: Some(CdcParams::default()),
        };
        for step in [usize::MAX, 65_536, 777] {
            let mut s = Scanner::new(&cfg).unwrap();
            for f in &files {
                s.add_reader(Trickle { data: f, step }).unwrap();
            }
            let r = s.finish().unwrap();
            let m = &r.methods[0];
            assert_eq!(
                (m.chunks, m.unique_chunks, m.unique_bytes, m.total_bytes),
                (chunks, distinct.len() as u64, unique, total),
                "reads of {step}"
            );
            assert_eq!(m.duplicate_bytes, files[0].len() as u64);
        }
    }
}
