//! Generating a data set: the pieces of every file in stream order (whole files, or chunks),
//! their content (synthetic, or sliced from a directory source), verification by hashing,
//! and the manifest.
//!
//! Unique pieces are made in stream order, so a directory source is read once from start to
//! end. A duplicate piece is its original again: from the last unique chunk of its class
//! (kept in memory), regenerated from its seed (synthetic), or read back from the file it was
//! written to (directory sources).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::dedup::{Chooser, ChunkDedup, Dedup, Kind, PieceRef, allocate, class_counts};
use super::manifest::{FORMAT, FileEntry, Manifest, SourceRecord, SourcedFile};
use super::payload::{BLOCK, Class, Cut, PayloadType, Synth, content_bytes, segment};
use super::plan::{GradePlan, plan};
use super::rng::{derive_seed, index_seed, rng};
use super::source::{SourcePart, SourceStream};
use super::{DataSetSpec, MANIFEST};
use crate::error::usage;

/// The sizes and duplicate plan of a data set, computed without generating it.
pub(crate) enum Layout {
    /// Whole-file duplicates: the grade plan, and the size of every distinct content.
    Files { plan: GradePlan, sizes: Vec<u64> },
    /// Chunk duplicates: the size of every file, and chunks and duplicates per class.
    Chunks {
        chunk: ChunkDedup,
        sizes: Vec<u64>,
        counts: [u64; Class::COUNT],
        dups: [u64; Class::COUNT],
    },
}

impl Layout {
    /// The layout of `spec`: sizes drawn and duplicates planned from its seed.
    pub fn new(spec: &DataSetSpec) -> Layout {
        let mut size_rng = rng(derive_seed(spec.seed, "sizes", 0));
        match spec.dedup {
            Dedup::Files => {
                let plan = plan(spec.files, spec.grade, derive_seed(spec.seed, "plan", 0));
                let sizes = (0..plan.uniques)
                    .map(|_| spec.sizes.draw(&mut size_rng))
                    .collect();
                Layout::Files { plan, sizes }
            }
            Dedup::Chunks(chunk) => {
                let unit = u64::from(chunk.unit);
                let sizes: Vec<u64> = (0..spec.files)
                    .map(|_| spec.sizes.draw_chunks(&mut size_rng, unit))
                    .collect();
                let counts = class_counts(spec.payload, &sizes, unit);
                let dups = allocate(counts, spec.grade);
                Layout::Chunks {
                    chunk,
                    sizes,
                    counts,
                    dups,
                }
            }
        }
    }

    fn file_size(&self, pos: u32) -> u64 {
        match self {
            Layout::Files { plan, sizes } => sizes[plan.slots[pos as usize] as usize],
            Layout::Chunks { sizes, .. } => sizes[pos as usize],
        }
    }

    /// L: the sum of all file sizes.
    pub fn logical_bytes(&self) -> u64 {
        match self {
            Layout::Files { plan, sizes } => plan.slots.iter().map(|&c| sizes[c as usize]).sum(),
            Layout::Chunks { sizes, .. } => sizes.iter().sum(),
        }
    }

    /// Pieces at the dedup unit: files, or chunks.
    pub fn pieces(&self) -> u64 {
        match self {
            Layout::Files { plan, .. } => plan.slots.len() as u64,
            Layout::Chunks { counts, .. } => counts.iter().sum(),
        }
    }

    /// Duplicate pieces.
    pub fn duplicates(&self) -> u64 {
        match self {
            Layout::Files { plan, .. } => u64::from(plan.duplicates),
            Layout::Chunks { dups, .. } => dups.iter().sum(),
        }
    }

    /// U: the bytes left after perfect deduplication at the dedup unit. A shifted duplicate
    /// keeps its filler: only `unit − shift` of its bytes repeat the original.
    pub fn unique_bytes(&self) -> u64 {
        match self {
            Layout::Files { sizes, .. } => sizes.iter().sum(),
            Layout::Chunks { chunk, .. } => {
                let dups = self.duplicates();
                (self.pieces() - dups) * u64::from(chunk.unit) + dups * u64::from(chunk.shift)
            }
        }
    }

    /// Bytes of content the unique pieces take from a directory source.
    fn source_bytes(&self, compress: u8) -> u64 {
        match self {
            Layout::Files { sizes, .. } => sizes.iter().map(|&s| content_bytes(s, compress)).sum(),
            Layout::Chunks { chunk, .. } => {
                (self.pieces() - self.duplicates()) * content_bytes(u64::from(chunk.unit), compress)
            }
        }
    }
}

/// A file about to be generated.
pub(crate) struct FileHead {
    /// Its name in the data set.
    pub name: String,
}

/// A piece about to be generated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PieceHead {
    /// Its length.
    pub len: u64,
    /// Unique, or a copy of which piece.
    pub kind: Kind,
    /// Filler bytes a shifted copy starts with; its content follows.
    pub lead: u64,
    /// Bytes of content: all but the chunk's shift.
    pub content: u64,
    class: Class,
}

enum From {
    Synth(Synth),
    Source,
    Cache { class: usize, pos: usize },
    File(File),
}

struct Piece {
    lead: u64,
    take: u64,
    trail: u64,
    from: From,
}

/// Produces a data set's bytes file by file, piece by piece, block by block.
pub(crate) struct Generator {
    payload: PayloadType,
    cut: Cut,
    seed: u64,
    chunk_seed: u64,
    layout: Layout,
    chooser: Option<Chooser>,
    first_of: HashMap<u64, u32>,
    source: Option<SourceStream>,
    out: Option<PathBuf>,
    files: u32,
    next_file: u32,
    file: Option<(u32, u64, u64)>,
    piece: Option<Piece>,
    last: Option<PieceHead>,
    block: Vec<u8>,
    cache: [(Option<u64>, Vec<u8>); Class::COUNT],
    parts: Vec<SourcePart>,
    parts_mark: usize,
    skipped: u64,
}

impl Generator {
    /// A generator for `spec`; `out` is the directory the files go to, which directory
    /// sources read duplicates back from.
    pub fn new(spec: &DataSetSpec, out: Option<&Path>) -> anyhow::Result<Generator> {
        spec.check().map_err(usage)?;
        let layout = Layout::new(spec);
        let (chooser, reserve) = match &layout {
            Layout::Chunks {
                chunk,
                counts,
                dups,
                ..
            } => (
                Some(Chooser::new(
                    *counts,
                    *dups,
                    chunk.mode,
                    derive_seed(spec.seed, "chunk-plan", 0),
                )),
                u64::from(chunk.shift),
            ),
            Layout::Files { .. } => (None, 0),
        };
        let source = match &spec.source {
            Some(s) if spec.payload.is_preset() => {
                if out.is_none() {
                    bail!("a directory source is read only when generating into a directory");
                }
                Some(SourceStream::open(s)?)
            }
            _ => None,
        };
        Ok(Generator {
            payload: spec.payload,
            cut: Cut {
                compress: spec.compress,
                reserve,
            },
            seed: spec.seed,
            chunk_seed: derive_seed(spec.seed, "chunks", 0),
            layout,
            chooser,
            first_of: HashMap::new(),
            source,
            out: out.map(Path::to_path_buf),
            files: spec.files,
            next_file: 0,
            file: None,
            piece: None,
            last: None,
            block: Vec::with_capacity(BLOCK + super::payload::SEGMENT as usize),
            cache: Default::default(),
            parts: Vec::new(),
            parts_mark: 0,
            skipped: 0,
        })
    }

    /// The layout being generated.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn name(&self, pos: u32) -> String {
        format!("{pos:06}.{}", self.payload.extension())
    }

    /// Starts the next file; `None` after the last.
    pub fn next_file(&mut self) -> Option<FileHead> {
        if self.next_file == self.files {
            return None;
        }
        let pos = self.next_file;
        self.next_file += 1;
        self.file = Some((pos, self.layout.file_size(pos), 0));
        Some(FileHead {
            name: self.name(pos),
        })
    }

    /// Starts the next piece of the current file; `None` after its last.
    pub fn next_piece(&mut self) -> anyhow::Result<Option<PieceHead>> {
        let Some((pos, size, done)) = self.file else {
            return Ok(None);
        };
        if done == size {
            return Ok(None);
        }
        let (len, class, kind, shift) = match &self.layout {
            Layout::Files { plan, .. } => {
                let c = u64::from(plan.slots[pos as usize]);
                let kind = match self.first_of.entry(c) {
                    Entry::Occupied(e) => Kind::Copy(
                        PieceRef {
                            index: c,
                            file: *e.get(),
                            offset: 0,
                        },
                        0,
                    ),
                    Entry::Vacant(e) => {
                        e.insert(pos);
                        Kind::Unique(c)
                    }
                };
                (size, Class::Only, kind, 0)
            }
            Layout::Chunks { chunk, .. } => {
                let unit = u64::from(chunk.unit);
                let class = Class::of(self.payload, done / unit, size / unit);
                let chooser = self.chooser.as_mut().expect("chunk layout has a chooser");
                (
                    unit,
                    class,
                    chooser.next(class, pos, done),
                    u64::from(chunk.shift),
                )
            }
        };
        self.file = Some((pos, size, done + len));
        let lead = match kind {
            Kind::Copy(_, nth) if shift > 0 => 1 + (nth - 1) % shift,
            _ => 0,
        };
        let head = PieceHead {
            len,
            kind,
            lead,
            content: len - shift,
            class,
        };
        self.start(head)?;
        Ok(Some(head))
    }

    fn seed_of(&self, index: u64) -> u64 {
        match self.layout {
            Layout::Files { .. } => derive_seed(self.seed, "content", index),
            Layout::Chunks { .. } => index_seed(self.chunk_seed, index),
        }
    }

    fn start(&mut self, head: PieceHead) -> anyhow::Result<()> {
        let from = match head.kind {
            Kind::Unique(_) if self.source.is_some() => From::Source,
            Kind::Unique(i) => From::Synth(self.synth(head, i)),
            Kind::Copy(r, _) if self.cache[head.class.index()].0 == Some(r.index) => From::Cache {
                class: head.class.index(),
                pos: 0,
            },
            Kind::Copy(r, _) if self.source.is_some() => {
                let out = self
                    .out
                    .as_ref()
                    .expect("directory sources write to a directory");
                let path = out.join(self.name(r.file));
                let mut f = File::open(&path)
                    .with_context(|| format!("reading back {}", path.display()))?;
                f.seek(SeekFrom::Start(r.offset))?;
                From::File(f)
            }
            Kind::Copy(r, _) => From::Synth(self.synth(head, r.index)),
        };
        self.parts_mark = self.parts.len();
        self.last = Some(head);
        // A unique piece is whole content (its generator ends it with the shift's filler);
        // a copy is lead filler, the original's content, then the rest of the filler.
        let (take, trail) = match head.kind {
            Kind::Unique(_) => (head.len, 0),
            Kind::Copy(..) => (head.content, head.len - head.content - head.lead),
        };
        self.piece = Some(Piece {
            lead: head.lead,
            take,
            trail,
            from,
        });
        Ok(())
    }

    fn synth(&self, head: PieceHead, index: u64) -> Synth {
        Synth::new(
            self.payload,
            head.class,
            self.seed_of(index),
            head.len,
            self.cut,
        )
    }

    /// Generates the next block of the current piece into [`Generator::block`]; `false` when
    /// the piece is complete.
    pub fn fill_block(&mut self) -> anyhow::Result<bool> {
        let Some(p) = self.piece.as_mut() else {
            return Ok(false);
        };
        if p.lead == 0 && p.take == 0 && p.trail == 0 {
            self.finish();
            return Ok(false);
        }
        self.block.clear();
        let filler = self.payload.filler();
        self.block.resize(p.lead as usize, filler);
        p.lead = 0;
        while self.block.len() < BLOCK && p.take > 0 {
            let before = self.block.len();
            match &mut p.from {
                From::Synth(s) => {
                    let want = before + p.take as usize;
                    s.fill(&mut self.block, want.min(BLOCK));
                    self.block.truncate(want);
                }
                From::Source => {
                    let (content, total) = segment(p.take, self.cut.compress);
                    self.block.resize(before + total, 0);
                    let source = self.source.as_mut().expect("source piece has a source");
                    let got =
                        source.fill(&mut self.block[before..before + content], &mut self.parts)?;
                    if got < content {
                        return Err(self.too_small());
                    }
                }
                From::Cache { class, pos } => {
                    let n = (p.take as usize).min(BLOCK - before);
                    self.block
                        .extend_from_slice(&self.cache[*class].1[*pos..*pos + n]);
                    *pos += n;
                }
                From::File(f) => {
                    let n = (p.take as usize).min(BLOCK - before);
                    self.block.resize(before + n, 0);
                    f.read_exact(&mut self.block[before..])
                        .context("reading back an original for its duplicate")?;
                }
            }
            p.take -= (self.block.len() - before) as u64;
        }
        if p.take == 0 {
            self.block
                .resize(self.block.len() + p.trail as usize, filler);
            p.trail = 0;
        }
        Ok(true)
    }

    /// The block [`Generator::fill_block`] made.
    pub fn block(&self) -> &[u8] {
        &self.block
    }

    /// Ends a piece. A unique chunk that fits one block stays in memory as the last of its
    /// class (the block buffer is swapped in), so copies of it (every copy in repeat mode) cost
    /// a memory copy only.
    fn finish(&mut self) {
        self.piece = None;
        let head = self.last.expect("a piece to finish");
        if let (Kind::Unique(i), Layout::Chunks { .. }) = (head.kind, &self.layout)
            && head.len <= BLOCK as u64
        {
            let slot = &mut self.cache[head.class.index()];
            std::mem::swap(&mut slot.1, &mut self.block);
            slot.0 = Some(i);
        }
    }

    /// Makes the unique piece just generated again from the next slice of the source, after
    /// its content turned out to repeat an earlier one. `false` for synthetic content, whose
    /// seed gives only one content.
    pub fn retry_piece(&mut self) -> anyhow::Result<bool> {
        let Some(head) = self.last else {
            return Ok(false);
        };
        if self.source.is_none() || !matches!(head.kind, Kind::Unique(_)) {
            return Ok(false);
        }
        self.skipped += content_bytes(head.len, self.cut.compress);
        self.parts.truncate(self.parts_mark);
        if let Kind::Unique(i) = head.kind {
            let slot = &mut self.cache[head.class.index()];
            if slot.0 == Some(i) {
                slot.0 = None;
            }
        }
        self.start(head)?;
        Ok(true)
    }

    /// The source ranges of the current file's unique content, collected since the last call.
    pub fn take_parts(&mut self) -> Vec<SourcePart> {
        self.parts_mark = 0;
        std::mem::take(&mut self.parts)
    }

    /// `(bytes read, bytes skipped)` of the directory source.
    pub fn source_counts(&self) -> Option<(u64, u64)> {
        self.source.as_ref().map(|s| (s.bytes_read(), self.skipped))
    }

    fn too_small(&self) -> anyhow::Error {
        let have = self.source.as_ref().map_or(0, SourceStream::bytes_read);
        let need = self.layout.source_bytes(self.cut.compress) + self.skipped;
        let skipped = if self.skipped > 0 {
            format!(
                " ({} of them passed over because they repeated earlier content)",
                self.skipped
            )
        } else {
            String::new()
        };
        usage(format!(
            "the source of {} is too small: it holds {have} bytes, the data set needs {need}{skipped}, \
             {} bytes missing; add files to the source directory, or lower files, file_size or \
             the grade",
            self.payload,
            need.saturating_sub(have)
        ))
    }
}

/// The bytes of a synthetic data set, every file in order, made in memory without touching
/// disk: what [`super::DataSet::generate`] writes, for benchmarks and for piping into tools.
pub struct ContentStream {
    generator: Generator,
    in_piece: bool,
    in_file: bool,
}

impl ContentStream {
    pub(crate) fn new(spec: &DataSetSpec) -> anyhow::Result<ContentStream> {
        if spec.payload.is_preset() {
            return Err(usage(format!(
                "{} is read from a directory source, which only `generate` reads",
                spec.payload
            )));
        }
        Ok(ContentStream {
            generator: Generator::new(spec, None)?,
            in_piece: false,
            in_file: false,
        })
    }

    /// The next block of content; `None` after the last. Blocks hold at most a few hundred KiB
    /// and never span two files.
    pub fn next_block(&mut self) -> anyhow::Result<Option<&[u8]>> {
        loop {
            if self.in_piece {
                if self.generator.fill_block()? {
                    return Ok(Some(self.generator.block()));
                }
                self.in_piece = false;
            }
            if self.in_file {
                if self.generator.next_piece()?.is_some() {
                    self.in_piece = true;
                    continue;
                }
                self.in_file = false;
            }
            if self.generator.next_file().is_none() {
                return Ok(None);
            }
            self.in_file = true;
        }
    }
}

/// Which bytes of a piece its verification key covers: a unique chunk's content (all but its
/// shift), and where a copy holds that content, so that equal keys mean the copy holds its
/// original's content.
fn window(head: &PieceHead) -> (u64, u64) {
    (head.lead, head.lead + head.content)
}

/// 128 bits of BLAKE3: collisions among even billions of chunks are beyond any probability
/// that matters, at half the memory of the whole hash.
fn key(h: &blake3::Hasher) -> u128 {
    u128::from_le_bytes(h.finalize().as_bytes()[..16].try_into().expect("16 bytes"))
}

/// Writes every file and the manifest into `partial`; returns the verified manifest.
pub(crate) fn write_partial(
    spec: &DataSetSpec,
    partial: &Path,
    on_file: &dyn Fn(u64),
) -> anyhow::Result<Manifest> {
    std::fs::create_dir_all(partial)
        .with_context(|| format!("creating data set directory {}", partial.display()))?;
    let mut g = Generator::new(spec, Some(partial))?;
    let by_chunk = matches!(spec.dedup, Dedup::Chunks(_));
    // Unique contents by key, with their unique index: duplicates must map to their original.
    let mut keys: HashMap<u128, u64> = HashMap::new();
    let mut first_with: HashMap<String, String> = HashMap::new();
    let mut files: Vec<FileEntry> = Vec::with_capacity(spec.files as usize);
    let mut sourced = Vec::new();
    while let Some(head) = g.next_file() {
        let path = partial.join(&head.name);
        let mut f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut file_hash = blake3::Hasher::new();
        let mut written = 0u64;
        while let Some(piece) = g.next_piece()? {
            let before = g.source_counts().map(|_| file_hash.clone());
            loop {
                let (lo, hi) = window(&piece);
                let mut piece_hash = blake3::Hasher::new();
                let mut at = 0u64;
                while g.fill_block()? {
                    let b = g.block();
                    f.write_all(b)
                        .with_context(|| format!("writing {}", path.display()))?;
                    file_hash.update(b);
                    if by_chunk {
                        let (s, e) = (lo.max(at), hi.min(at + b.len() as u64));
                        if s < e {
                            piece_hash.update(&b[(s - at) as usize..(e - at) as usize]);
                        }
                    }
                    at += b.len() as u64;
                }
                // With whole files, the piece is the file: its hash is the key.
                let k = key(if by_chunk { &piece_hash } else { &file_hash });
                match piece.kind {
                    Kind::Unique(index) => match keys.entry(k) {
                        Entry::Vacant(e) => {
                            e.insert(index);
                        }
                        Entry::Occupied(_) => {
                            if !g.retry_piece()? {
                                bail!(too_small_to_differ(spec));
                            }
                            f.set_len(written)?;
                            f.seek(SeekFrom::Start(written))?;
                            file_hash = before.clone().expect("retries only with a source");
                            continue;
                        }
                    },
                    Kind::Copy(of, _) => {
                        if keys.get(&k) != Some(&of.index) {
                            bail!(
                                "generator is not deterministic: {} at offset {written} should \
                                 repeat unique content {}",
                                head.name,
                                of.index
                            );
                        }
                    }
                }
                break;
            }
            written += piece.len;
        }
        let blake3 = file_hash.finalize().to_hex().to_string();
        let copy_of = match first_with.entry(blake3.clone()) {
            Entry::Occupied(e) => Some(e.get().clone()),
            Entry::Vacant(e) => {
                e.insert(head.name.clone());
                None
            }
        };
        let parts = g.take_parts();
        if !parts.is_empty() {
            sourced.push(SourcedFile {
                name: head.name.clone(),
                parts,
            });
        }
        files.push(FileEntry {
            id: files.len() as u32,
            name: head.name,
            size: written,
            blake3,
            copy_of,
        });
        on_file(written);
    }
    let layout = g.layout();
    let pieces = layout.pieces();
    let uniques = keys.len() as u64;
    if uniques != pieces - layout.duplicates() {
        bail!(
            "generator wrote {uniques} distinct contents where it planned {}",
            pieces - layout.duplicates()
        );
    }
    let source = match (&spec.source, g.source_counts()) {
        (Some(s), Some((read_bytes, skipped_bytes))) => Some(SourceRecord {
            dir: std::path::absolute(&s.dir).unwrap_or_else(|_| s.dir.clone()),
            decompress: s.decompress,
            read_bytes,
            skipped_bytes,
            files: sourced,
        }),
        _ => None,
    };
    let manifest = Manifest {
        format: FORMAT,
        payload: spec.payload,
        grade: spec.grade,
        seed: spec.seed,
        file_size: spec.sizes,
        dedup: spec.dedup,
        compress: spec.compress,
        uniques,
        duplicates: pieces - uniques,
        logical_bytes: files.iter().map(|f| f.size).sum(),
        unique_bytes: layout.unique_bytes(),
        achieved_grade: 100.0 * (pieces - uniques) as f64 / pieces as f64,
        source,
        files,
    };
    let mut f = File::create(partial.join(MANIFEST))?;
    f.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
    f.sync_all()?;
    Ok(manifest)
}

fn too_small_to_differ(spec: &DataSetSpec) -> String {
    match spec.dedup {
        Dedup::Files => format!(
            "{} files of {} at size {} repeat each other's content: the files are too small to \
             differ; use a larger --file-size",
            spec.files, spec.payload, spec.sizes
        ),
        Dedup::Chunks(c) => format!(
            "{}-byte chunks of {} at compress {} % repeat each other's content: the chunks are \
             too small to differ; use a larger --dedup-unit or a lower --compress",
            c.unit, spec.payload, spec.compress
        ),
    }
}
