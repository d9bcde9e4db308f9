//! Duplication inside files: the dedup unit, where duplicate chunks come from, and the
//! arithmetic that keeps grades exact when the grade counts chunks instead of files.
//!
//! With a chunk unit every file is a run of chunks of exactly that size, and the grade is
//! the share of chunks that repeat an earlier chunk, as fio's `dedupe_percentage` and
//! vdbench's `dedupratio` do it. Chunks are decided in stream order (file by file, chunk by
//! chunk) by selection sampling, so the count is exact and nothing per chunk is kept in
//! memory but the working set.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::SizeSpec;
use super::payload::{Class, PayloadType};
use super::rng::{Rng, below, rng};

/// Smallest chunk unit.
pub const MIN_UNIT: u32 = 4096;
/// Largest chunk unit.
pub const MAX_UNIT: u32 = 1 << 20;
/// Largest shift: below the smallest block size anyone deduplicates at (512 bytes), so that no
/// block grid lines a shifted copy up with its original.
pub const MAX_SHIFT: u16 = 511;
/// Working-set share when `working_set` mode is chosen without one: fio's default.
pub const DEFAULT_WORKING_SET: u8 = 5;

/// How the duplicates of a data set are formed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dedup {
    /// Whole files repeat other files; the grade is the share of duplicate files.
    #[default]
    Files,
    /// Chunks of a fixed size repeat earlier chunks; the grade is the share of duplicate
    /// chunks.
    Chunks(ChunkDedup),
}

/// Chunk-level duplication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDedup {
    /// Chunk size in bytes ([`MIN_UNIT`]..=[`MAX_UNIT`]); every file is a multiple of it.
    pub unit: u32,
    /// Which earlier chunk a duplicate repeats.
    pub mode: DupMode,
    /// Filler bytes per duplicate that move its content off the chunk grid (0 = aligned).
    /// A duplicate holds its original's first `unit − shift` bytes, after 1 to `shift` filler
    /// bytes (the k-th copy of an original after `1 + (k − 1) mod shift`) and before the rest
    /// of the filler. Fixed-size blocks then line a copy up neither with its original nor
    /// with its other copies (up to `shift` of them); content-defined chunking still finds it.
    pub shift: u16,
}

/// Which earlier chunk a duplicate chunk repeats (fio's `dedupe_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DupMode {
    /// The most recent unique chunk: duplicates sit next to their originals, where stream
    /// compressors see them too.
    Repeat,
    /// A random chunk of the working set: the first `percent` % of the unique chunks, so
    /// duplicates sit far from their originals.
    WorkingSet(u8),
}

impl DupMode {
    /// The config name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            DupMode::Repeat => "repeat",
            DupMode::WorkingSet(_) => "working_set",
        }
    }
}

impl fmt::Display for Dedup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dedup::Files => f.write_str("whole files"),
            Dedup::Chunks(c) => {
                write!(f, "{}-byte chunks, {}", c.unit, c.mode.name())?;
                if let DupMode::WorkingSet(p) = c.mode {
                    write!(f, " {p} %")?;
                }
                if c.shift > 0 {
                    write!(f, ", shift {}", c.shift)?;
                }
                Ok(())
            }
        }
    }
}

impl Dedup {
    /// Checks the knobs and that `sizes` can be cut into whole chunks; the message names the
    /// fix.
    pub fn check(&self, sizes: SizeSpec) -> Result<(), String> {
        let Dedup::Chunks(c) = self else {
            return Ok(());
        };
        if !(MIN_UNIT..=MAX_UNIT).contains(&c.unit) {
            return Err(format!(
                "dedup_unit {} is out of range: use file, or a chunk size from 4KiB to 1MiB",
                c.unit
            ));
        }
        if c.shift > MAX_SHIFT {
            return Err(format!(
                "shift {} is out of range: use 0 (aligned) or 1 to {MAX_SHIFT} bytes",
                c.shift
            ));
        }
        if let DupMode::WorkingSet(p) = c.mode
            && !(1..=100).contains(&p)
        {
            return Err(format!(
                "working_set {p} is out of range: use 1 to 100 (percent of the unique chunks)"
            ));
        }
        let unit = u64::from(c.unit);
        match sizes {
            SizeSpec::Fixed(s) if s % unit != 0 => Err(format!(
                "file_size {s} is not a multiple of dedup_unit {unit}: files are cut into whole \
                 chunks; use e.g. {} or {}",
                (s / unit).max(1) * unit,
                (s / unit + 1) * unit
            )),
            SizeSpec::Range { min, max } if min.div_ceil(unit) * unit > max => Err(format!(
                "file_size range {min}..{max} holds no multiple of dedup_unit {unit}: files are \
                 cut into whole chunks; widen the range or use a smaller unit"
            )),
            _ => Ok(()),
        }
    }
}

/// The dedup unit as configured: `file`, or a chunk size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DedupUnit {
    /// Whole files.
    #[default]
    File,
    /// Chunks of this many bytes.
    Chunk(u32),
}

impl FromStr for DedupUnit {
    type Err = String;

    /// Parses `file`, or a size such as `4KiB`, `64KiB` or `1MiB`.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "file" {
            return Ok(DedupUnit::File);
        }
        let size = t.parse::<bytesize::ByteSize>().map_err(|_| {
            format!("dedup_unit '{t}' is neither file nor a size; write file, 4KiB … 1MiB")
        })?;
        let size = size.as_u64();
        if !(u64::from(MIN_UNIT)..=u64::from(MAX_UNIT)).contains(&size) {
            return Err(format!(
                "dedup_unit '{t}' ({size} bytes) is out of range: use file, or 4KiB … 1MiB"
            ));
        }
        Ok(DedupUnit::Chunk(size as u32))
    }
}

impl fmt::Display for DedupUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DedupUnit::File => f.write_str("file"),
            DedupUnit::Chunk(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for DedupUnit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DedupUnit::File => s.serialize_str("file"),
            DedupUnit::Chunk(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for DedupUnit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::int_or_str(d)
    }
}

/// `(duplicates, uniques)` of `n` items at `grade` percent: duplicates = round(n·grade/100)
/// (half up), with at least `keep` uniques.
fn split(n: u64, grade: u8, keep: u64) -> (u64, u64) {
    let dups = ((n * u64::from(grade) + 50) / 100).min(n.saturating_sub(keep));
    (dups, n - dups)
}

/// Spreads the duplicates of a data set over the classes of its chunks: round(n·d/100) in
/// all, in proportion to each class's chunks (largest remainder), each class that has chunks
/// keeping at least one unique (a duplicate needs an original of its class).
pub(crate) fn allocate(counts: [u64; Class::COUNT], grade: u8) -> [u64; Class::COUNT] {
    let n: u64 = counts.iter().sum();
    let classes = counts.iter().filter(|&&c| c > 0).count() as u64;
    let (total, _) = split(n, grade, classes);
    let room = |k: usize| counts[k].saturating_sub(1);
    let mut dups = [0u64; Class::COUNT];
    let mut rest = [0u128; Class::COUNT];
    for k in 0..Class::COUNT {
        if n > 0 {
            let share = u128::from(total) * u128::from(counts[k]);
            dups[k] = ((share / u128::from(n)) as u64).min(room(k));
            rest[k] = share % u128::from(n);
        }
    }
    let mut left = total - dups.iter().sum::<u64>();
    while left > 0 {
        // The class with room and the largest remainder; ties go to the earlier class.
        let k = (0..Class::COUNT)
            .filter(|&k| dups[k] < room(k))
            .max_by(|&a, &b| rest[a].cmp(&rest[b]).then(b.cmp(&a)))
            .expect("total leaves every class one unique, so some class has room");
        dups[k] += 1;
        rest[k] = 0;
        left -= 1;
    }
    dups
}

/// Chunks, per class, of files of the given sizes cut into `unit`-byte chunks.
pub(crate) fn class_counts(payload: PayloadType, sizes: &[u64], unit: u64) -> [u64; Class::COUNT] {
    let mut counts = [0u64; Class::COUNT];
    for &s in sizes {
        let k = s / unit;
        match k {
            0 => {}
            1 => counts[Class::of(payload, 0, 1).index()] += 1,
            _ => {
                counts[Class::of(payload, 0, k).index()] += 1;
                counts[Class::of(payload, 1, k).index()] += k - 2;
                counts[Class::of(payload, k - 1, k).index()] += 1;
            }
        }
    }
    counts
}

/// Where a unique chunk (or file) was written: enough to find its bytes again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PieceRef {
    /// Unique index: the content id of a file, or the stream position among unique chunks.
    pub index: u64,
    /// Position of the file holding it.
    pub file: u32,
    /// Its offset in that file.
    pub offset: u64,
}

/// What one piece of a data set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// New content: unique number `index`.
    Unique(u64),
    /// The content of an earlier unique piece, as its n-th copy (from 1).
    Copy(PieceRef, u64),
}

#[derive(Clone, Debug, Default)]
struct ClassState {
    slots: u64,
    seen: u64,
    dups_left: u64,
    working_set: u64,
    /// Working-set members and the copies made of each so far.
    members: Vec<(PieceRef, u64)>,
    /// The latest unique chunk and the copies made of it so far.
    last: Option<(PieceRef, u64)>,
}

/// Decides chunk by chunk, in stream order, whether a chunk is unique or which earlier chunk
/// it repeats. Exact: every class gets exactly its allocated duplicates (selection sampling),
/// and its first chunk is unique.
pub(crate) struct Chooser {
    rng: Rng,
    mode: DupMode,
    classes: [ClassState; Class::COUNT],
    next_unique: u64,
}

impl Chooser {
    /// A chooser for chunks counted per class in `counts`, of which `dups` are duplicates.
    pub fn new(
        counts: [u64; Class::COUNT],
        dups: [u64; Class::COUNT],
        mode: DupMode,
        seed: u64,
    ) -> Chooser {
        let classes = std::array::from_fn(|k| {
            let uniques = counts[k] - dups[k];
            let working_set = match mode {
                DupMode::Repeat => 0,
                DupMode::WorkingSet(p) => ((uniques * u64::from(p) + 50) / 100).max(1),
            };
            ClassState {
                slots: counts[k],
                dups_left: dups[k],
                working_set,
                ..ClassState::default()
            }
        });
        Chooser {
            rng: rng(seed),
            mode,
            classes,
            next_unique: 0,
        }
    }

    /// The next chunk, of `class`, written in file `file` at `offset`.
    pub fn next(&mut self, class: Class, file: u32, offset: u64) -> Kind {
        let st = &mut self.classes[class.index()];
        let dup = st.seen > 0 && below(&mut self.rng, st.slots - st.seen) < st.dups_left;
        st.seen += 1;
        if dup {
            st.dups_left -= 1;
            let (of, copies) = match self.mode {
                DupMode::Repeat => st.last.as_mut().expect("a class's first chunk is unique"),
                DupMode::WorkingSet(_) => {
                    let i = below(&mut self.rng, st.members.len() as u64) as usize;
                    &mut st.members[i]
                }
            };
            *copies += 1;
            return Kind::Copy(*of, *copies);
        }
        let r = PieceRef {
            index: self.next_unique,
            file,
            offset,
        };
        self.next_unique += 1;
        st.last = Some((r, 0));
        if (st.members.len() as u64) < st.working_set {
            st.members.push((r, 0));
        }
        Kind::Unique(r.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_exact_and_keeps_a_unique_per_class() {
        // 100 chunks at 50 %: 50 duplicates, in proportion.
        assert_eq!(allocate([0, 10, 80, 10], 50), [0, 5, 40, 5]);
        // Largest remainder: 9 chunks at 50 % = round(4.5) = 5 duplicates, none in the class
        // of one chunk, which must stay unique.
        let d = allocate([1, 2, 3, 3], 50);
        assert_eq!(d.iter().sum::<u64>(), 5);
        assert_eq!(d[0], 0, "a class of one chunk cannot hold a duplicate");
        assert!(d.iter().zip([1, 2, 3, 3]).all(|(&d, n)| d < n), "{d:?}");
        // 7 chunks in 4 classes at 50 %: round(3.5) = 4, but only 3 leave each class a unique.
        assert_eq!(allocate([1, 2, 2, 2], 50).iter().sum::<u64>(), 3);
        // 99 % of 10 chunks in two classes: 9 requested, 8 possible (one unique per class).
        assert_eq!(allocate([0, 0, 10, 0], 99), [0, 0, 9, 0]);
        assert_eq!(allocate([0, 5, 0, 5], 99).iter().sum::<u64>(), 8);
        assert_eq!(allocate([0, 0, 0, 0], 50), [0, 0, 0, 0]);
    }

    #[test]
    fn chooser_places_exactly_the_allocated_duplicates() {
        for mode in [DupMode::Repeat, DupMode::WorkingSet(20)] {
            let counts = [3, 40, 400, 40];
            let dups = allocate(counts, 90);
            let mut ch = Chooser::new(counts, dups, mode, 5);
            let mut got = [0u64; Class::COUNT];
            let mut sources = std::collections::HashSet::new();
            let order = [Class::Only, Class::First, Class::Middle, Class::Last];
            let mut left = counts;
            let mut i = 0;
            while left.iter().any(|&c| c > 0) {
                let k = order[i % 4];
                i += 1;
                if left[k.index()] == 0 {
                    continue;
                }
                left[k.index()] -= 1;
                if let Kind::Copy(of, _) = ch.next(k, 0, 0) {
                    got[k.index()] += 1;
                    if k == Class::Middle {
                        sources.insert(of.index);
                    }
                }
            }
            assert_eq!(got, dups, "{mode:?}");
            if let DupMode::WorkingSet(_) = mode {
                // 400 Middle chunks at 90 %: 40 uniques, a working set of 8.
                assert!(sources.len() <= 8, "{}", sources.len());
            }
        }
    }

    #[test]
    fn units_parse_and_check_sizes() {
        assert_eq!("file".parse::<DedupUnit>(), Ok(DedupUnit::File));
        assert_eq!("4KiB".parse::<DedupUnit>(), Ok(DedupUnit::Chunk(4096)));
        assert!(
            "2KiB"
                .parse::<DedupUnit>()
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            "chunks"
                .parse::<DedupUnit>()
                .unwrap_err()
                .contains("neither")
        );
        let c = |unit, shift, mode| Dedup::Chunks(ChunkDedup { unit, mode, shift });
        let ok = c(4096, 0, DupMode::Repeat);
        assert!(ok.check(SizeSpec::Fixed(65536)).is_ok());
        let e = ok.check(SizeSpec::Fixed(10_000)).unwrap_err();
        assert!(e.contains("8192 or 12288"), "{e}");
        let e = ok
            .check(SizeSpec::Range {
                min: 5000,
                max: 8000,
            })
            .unwrap_err();
        assert!(e.contains("no multiple"), "{e}");
        assert!(
            c(4096, 512, DupMode::Repeat)
                .check(SizeSpec::Fixed(4096))
                .unwrap_err()
                .contains("shift")
        );
        assert!(
            c(4096, 0, DupMode::WorkingSet(0))
                .check(SizeSpec::Fixed(4096))
                .unwrap_err()
                .contains("working_set")
        );
    }
}
