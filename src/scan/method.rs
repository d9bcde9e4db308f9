//! The chunkers behind a scan: fixed blocks aligned at each file's start, and FastCDC
//! content-defined chunks, each feeding one set of chunk keys.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use fastcdc::v2020::{Normalization, cut, select_masks};

use super::{CdcParams, MethodResult};

/// A chunk's identity: the first 128 bits of its BLAKE3 hash. Two different chunks get the
/// same key with probability about n²/2¹²⁹ for n distinct chunks: below 10⁻¹⁴ even for 2⁴⁰
/// chunks (4 PiB at 4 KiB), far below any disk's silent error rate, while half the bits of
/// the full hash halve the memory of the sets. A key covers the chunk's length too: chunks of
/// different lengths are different inputs to the hash.
type Key = u128;

fn key(chunk: &[u8]) -> Key {
    truncate(blake3::hash(chunk))
}

fn truncate(hash: blake3::Hash) -> Key {
    let bytes: [u8; 16] = hash.as_bytes()[..16].try_into().expect("32-byte hash");
    Key::from_le_bytes(bytes)
}

/// True when every byte is zero. It stops at the first non-zero 64-byte run, so content that
/// is not zero costs almost nothing; within a run the fold compiles to vector instructions.
fn is_zero(data: &[u8]) -> bool {
    data.chunks(64)
        .all(|run| run.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Keys are already uniform hashes: the set uses their low 64 bits as its hash instead of
/// hashing them again with SipHash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is reached for a `u128` key; this keeps other inputs correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, k: u128) {
        self.0 = k as u64;
    }
}

/// The chunks one method has seen, with the counts of [`MethodResult`].
struct ChunkSet {
    seen: HashSet<Key, BuildHasherDefault<KeyHasher>>,
    total_bytes: u64,
    unique_bytes: u64,
    chunks: u64,
    zero_bytes: u64,
}

impl ChunkSet {
    fn new() -> ChunkSet {
        ChunkSet {
            seen: HashSet::default(),
            total_bytes: 0,
            unique_bytes: 0,
            chunks: 0,
            zero_bytes: 0,
        }
    }

    fn add(&mut self, chunk: &[u8]) {
        self.add_key(key(chunk), chunk.len() as u64, is_zero(chunk));
    }

    /// Adds a chunk whose key and zero flag were computed incrementally.
    fn add_key(&mut self, k: Key, len: u64, zero: bool) {
        self.chunks += 1;
        self.total_bytes += len;
        if zero {
            self.zero_bytes += len;
        }
        if self.seen.insert(k) {
            self.unique_bytes += len;
        }
    }

    fn result(&self, method: String) -> MethodResult {
        MethodResult {
            method,
            total_bytes: self.total_bytes,
            unique_bytes: self.unique_bytes,
            duplicate_bytes: self.total_bytes - self.unique_bytes,
            chunks: self.chunks,
            unique_chunks: self.seen.len() as u64,
            zero_bytes: self.zero_bytes,
        }
    }
}

/// Fixed blocks of one size, aligned at each file's start as a file system lays them out; a
/// file's last, shorter block is a block of its own length.
pub(super) struct Fixed {
    size: usize,
    /// The block being filled when a read ends inside it.
    partial: blake3::Hasher,
    filled: usize,
    partial_zero: bool,
    set: ChunkSet,
}

impl Fixed {
    pub(super) fn new(size: usize) -> Fixed {
        Fixed {
            size,
            partial: blake3::Hasher::new(),
            filled: 0,
            partial_zero: true,
            set: ChunkSet::new(),
        }
    }

    /// Takes the next bytes of the current file.
    pub(super) fn update(&mut self, mut data: &[u8]) {
        if self.filled > 0 {
            let take = (self.size - self.filled).min(data.len());
            self.extend_partial(&data[..take]);
            data = &data[take..];
            if self.filled == self.size {
                self.end_partial();
            }
        }
        let mut blocks = data.chunks_exact(self.size);
        for block in &mut blocks {
            self.set.add(block);
        }
        let rest = blocks.remainder();
        if !rest.is_empty() {
            self.extend_partial(rest);
        }
    }

    /// Ends the current file: its last, shorter block counts with its own length.
    pub(super) fn end_file(&mut self) {
        if self.filled > 0 {
            self.end_partial();
        }
    }

    fn extend_partial(&mut self, data: &[u8]) {
        self.partial.update(data);
        self.partial_zero &= is_zero(data);
        self.filled += data.len();
    }

    fn end_partial(&mut self) {
        self.set.add_key(
            truncate(self.partial.finalize()),
            self.filled as u64,
            self.partial_zero,
        );
        self.partial.reset();
        self.filled = 0;
        self.partial_zero = true;
    }

    pub(super) fn result(&self) -> MethodResult {
        self.set.result(format!("fixed-{}", self.size))
    }
}

/// FastCDC (the 2020 algorithm, normalization level 1, as the crate's `StreamCDC` uses) over
/// the scanner's own buffer: the crate's `StreamCDC` copies every chunk into a new `Vec` and
/// moves the rest of its buffer after each one; cutting in place gives the same cut points
/// (a cut only ever looks at the next `max` bytes, and the caller always offers at least
/// `max` bytes or the rest of the file) without those copies.
pub(super) struct Cdc {
    cutter: Cutter,
    set: ChunkSet,
}

impl Cdc {
    pub(super) fn new(params: CdcParams) -> Cdc {
        Cdc {
            cutter: Cutter::new(params),
            set: ChunkSet::new(),
        }
    }

    /// Bytes the chunker must be offered before it may cut (unless the file ends).
    pub(super) fn window(&self) -> usize {
        self.cutter.params.max as usize
    }

    /// Chunks the start of `data`; returns how many bytes were consumed (see
    /// [`Cutter::split`]).
    pub(super) fn consume(&mut self, data: &[u8], end_of_file: bool) -> usize {
        self.cutter
            .split(data, end_of_file, |chunk| self.set.add(chunk))
    }

    pub(super) fn result(&self) -> MethodResult {
        self.set.result(self.cutter.params.method())
    }
}

/// FastCDC's cut-point search with its masks chosen once.
struct Cutter {
    params: CdcParams,
    mask_s: u64,
    mask_l: u64,
}

impl Cutter {
    fn new(params: CdcParams) -> Cutter {
        let (mask_s, mask_l) = select_masks(params.avg as usize, Normalization::Level1);
        Cutter {
            params,
            mask_s,
            mask_l,
        }
    }

    /// Cuts chunks from the start of `data` while at least `max` bytes are left, or all of
    /// it at the end of a file, handing each to `chunk`; returns the bytes consumed.
    fn split(&self, data: &[u8], end_of_file: bool, mut chunk: impl FnMut(&[u8])) -> usize {
        let p = &self.params;
        let window = p.max as usize;
        let mut pos = 0;
        while data.len() - pos >= window || (end_of_file && pos < data.len()) {
            let (_, len) = cut(
                &data[pos..],
                p.min as usize,
                p.avg as usize,
                window,
                self.mask_s,
                self.mask_l,
                self.mask_s << 1,
                self.mask_l << 1,
            );
            chunk(&data[pos..pos + len]);
            pos += len;
        }
        pos
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use fastcdc::v2020::StreamCDC;

    use super::*;
    use crate::dataset::{PayloadType, content};

    fn bytes(payload: PayloadType, seed: u64, size: u64) -> Vec<u8> {
        let mut v = Vec::new();
        content(payload, seed, size).read_to_end(&mut v).unwrap();
        v
    }

    /// Our in-place cutting, offered the data in uneven pieces as the scanner's buffer does,
    /// finds exactly the chunks of the crate's own streaming chunker.
    #[test]
    fn cdc_cuts_where_stream_cdc_cuts() {
        for payload in [PayloadType::TextDocument, PayloadType::RandomBinary] {
            let data = bytes(payload, 3, 3 << 20);
            let expected: Vec<usize> = StreamCDC::new(&data[..], 2048, 8192, 65536)
                .map(|c| c.unwrap().length)
                .collect();
            let cutter = Cutter::new(CdcParams::with_avg(8192));
            let mut lens = Vec::new();
            let (mut start, mut end) = (0, 0);
            while start < data.len() {
                end = (end + 100_000).min(data.len());
                start += cutter.split(&data[start..end], end == data.len(), |c| lens.push(c.len()));
            }
            assert!(expected.len() > 100, "{payload}: {} chunks", expected.len());
            assert_eq!(lens, expected, "{payload}");
        }
    }

    /// A block split over many reads counts like the same block read at once, and the zero
    /// flag survives the split.
    #[test]
    fn fixed_blocks_do_not_depend_on_read_sizes() {
        // 100 000 random bytes, 12 288 zeros, 5 000 random bytes: 28 whole 4 KiB blocks and
        // a 2 600-byte tail; blocks 25 and 26 (bytes 102 400..110 592) are the only ones
        // entirely zero, so one of them is a duplicate.
        let mut data = bytes(PayloadType::RandomBinary, 9, 100_000);
        data.extend(std::iter::repeat_n(0u8, 3 * 4096));
        data.extend(bytes(PayloadType::RandomBinary, 10, 5_000));
        let mut whole = Fixed::new(4096);
        whole.update(&data);
        whole.end_file();
        let r = whole.result();
        assert_eq!(
            (r.total_bytes, r.chunks, r.zero_bytes, r.duplicate_bytes),
            (117_288, 29, 8192, 4096)
        );
        for piece in [1, 1000, 4095, 4097, 70_000] {
            let mut split = Fixed::new(4096);
            for p in data.chunks(piece) {
                split.update(p);
            }
            split.end_file();
            assert_eq!(split.result(), r, "pieces of {piece}");
        }
    }
}
