//! Payload types, and synthetic content: seeded streams of exactly the requested size.
//!
//! Content is cut into pieces: a whole file, or one chunk of a file when duplicates are chunks
//! (see `dedup`). A synthetic piece is a producer that appends parts (a segment of random
//! bytes, a JSON record, a sentence) until the piece is complete; [`content`] wraps a whole
//! file's piece in a `Read`. The output depends only on (payload type, class, seed, size,
//! cut), never on how the caller reads. Presets take their content from a directory instead
//! (see `source`).

use std::fmt::Write as _;
use std::io::Read;

use rand_core::Rng as _;
use serde::{Deserialize, Serialize};

use super::rng::{Rng, below, rng};

/// A kind of content: synthetic, or a preset read from a configured directory.
///
/// The names are stable: they appear in configs, paths, manifests and journal records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadType {
    /// Incompressible random bytes.
    RandomBinary,
    /// A JSON array of flat business records.
    StructuredJson,
    /// English-like prose from a fixed vocabulary.
    TextDocument,
    /// One UUID per line.
    UuidKeys,
    /// One nested JSON document, as stored in a JSONB column.
    JsonbDocuments,
    /// Each file (or chunk) is one of the other synthetic types, chosen by its seed.
    Mixed,
    /// Preset: bank transaction exports (the earlier testbed's xlsx/CSV files).
    BankTransactions,
    /// Preset: a text corpus, e.g. forum posts.
    TextCorpus,
    /// Preset: numeric CSV data.
    NumericDataset,
    /// Preset: Project Gutenberg books.
    GutenbergText,
    /// Preset: GitHub event archives (`.json.gz`).
    GithubEvents,
    /// Preset: NASA images.
    NasaImage,
    /// Preset: Blender open films.
    BlenderVideo,
}

impl PayloadType {
    /// Every synthetic payload type, in report order: what `all` selects.
    pub const ALL: [PayloadType; 6] = [
        PayloadType::RandomBinary,
        PayloadType::StructuredJson,
        PayloadType::TextDocument,
        PayloadType::UuidKeys,
        PayloadType::JsonbDocuments,
        PayloadType::Mixed,
    ];

    /// Every preset: content sliced from a directory named in `[dataset.sources]`.
    pub const PRESETS: [PayloadType; 7] = [
        PayloadType::BankTransactions,
        PayloadType::TextCorpus,
        PayloadType::NumericDataset,
        PayloadType::GutenbergText,
        PayloadType::GithubEvents,
        PayloadType::NasaImage,
        PayloadType::BlenderVideo,
    ];

    /// The name used in configs, paths and records.
    pub fn name(self) -> &'static str {
        match self {
            PayloadType::RandomBinary => "random_binary",
            PayloadType::StructuredJson => "structured_json",
            PayloadType::TextDocument => "text_document",
            PayloadType::UuidKeys => "uuid_keys",
            PayloadType::JsonbDocuments => "jsonb_documents",
            PayloadType::Mixed => "mixed",
            PayloadType::BankTransactions => "bank_transactions",
            PayloadType::TextCorpus => "text_corpus",
            PayloadType::NumericDataset => "numeric_dataset",
            PayloadType::GutenbergText => "gutenberg_text",
            PayloadType::GithubEvents => "github_events",
            PayloadType::NasaImage => "nasa_image",
            PayloadType::BlenderVideo => "blender_video",
        }
    }

    /// Looks a type up by name (synthetic or preset).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain(Self::PRESETS)
            .find(|p| p.name() == name)
    }

    /// Whether its content comes from a directory rather than a generator.
    pub fn is_preset(self) -> bool {
        Self::PRESETS.contains(&self)
    }

    /// The file name extension of its files. Preset files are byte slices of their source,
    /// valid in no particular format, so they get a neutral one.
    pub fn extension(self) -> &'static str {
        match self {
            PayloadType::RandomBinary | PayloadType::Mixed => "bin",
            PayloadType::StructuredJson | PayloadType::JsonbDocuments => "json",
            PayloadType::TextDocument | PayloadType::UuidKeys => "txt",
            _ => "dat",
        }
    }

    /// Whether every file of this type is one valid JSON value.
    pub fn is_json(self) -> bool {
        matches!(
            self,
            PayloadType::StructuredJson | PayloadType::JsonbDocuments
        )
    }

    /// The byte that pads its content where it must compress or shift: white space for text
    /// and JSON (so they stay valid), zero for binary content.
    pub fn filler(self) -> u8 {
        match self {
            PayloadType::StructuredJson
            | PayloadType::JsonbDocuments
            | PayloadType::TextDocument => b' ',
            PayloadType::UuidKeys => b'\n',
            _ => 0,
        }
    }
}

impl std::fmt::Display for PayloadType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a piece sits in its file. A file of JSON cut into chunks is one document across its
/// chunks: the first opens it, the last closes it, the ones between continue it, so a
/// duplicate chunk can only take the place of a chunk of the same class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// The whole file (every piece of a non-JSON payload).
    Only,
    /// Opens the document and continues after it.
    First,
    /// Continues the document on both sides.
    Middle,
    /// Closes the document.
    Last,
}

impl Class {
    /// Number of classes, for per-class tables.
    pub const COUNT: usize = 4;

    /// Position in per-class tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class of chunk `i` of a file of `chunks` chunks of `payload`.
    pub fn of(payload: PayloadType, i: u64, chunks: u64) -> Class {
        if !payload.is_json() || chunks == 1 {
            Class::Only
        } else if i == 0 {
            Class::First
        } else if i + 1 == chunks {
            Class::Last
        } else {
            Class::Middle
        }
    }

    fn opens(self) -> bool {
        matches!(self, Class::Only | Class::First)
    }

    fn closes(self) -> bool {
        matches!(self, Class::Only | Class::Last)
    }
}

/// How a piece is cut beyond its payload, class and length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cut {
    /// Percent of the piece that is filler (fio's `buffer_compress_percentage`).
    pub compress: u8,
    /// Filler bytes that text and JSON pieces keep at their end, so that a copy shifted by
    /// this many bytes loses only filler and stays valid.
    pub reserve: u64,
}

/// The segment a compress percentage applies to in binary content, as fio's default
/// `buffer_compress_chunk`: each segment starts with content and ends with zeros.
pub(crate) const SEGMENT: u64 = 512;

/// `(content, total)` bytes of the next segment of binary content with `remaining` bytes to
/// go: without compression one block of content, otherwise fio's layout.
pub(crate) fn segment(remaining: u64, compress: u8) -> (usize, usize) {
    if compress == 0 {
        let n = remaining.min(BLOCK as u64) as usize;
        return (n, n);
    }
    let total = remaining.min(SEGMENT);
    let content = (SEGMENT * u64::from(100 - compress) / 100).min(total);
    (content as usize, total as usize)
}

/// Bytes of content (not filler) in a binary piece of `len` bytes.
pub(crate) fn content_bytes(len: u64, compress: u8) -> u64 {
    if compress == 0 {
        return len;
    }
    let per = SEGMENT * u64::from(100 - compress) / 100;
    len / SEGMENT * per + (len % SEGMENT).min(per)
}

/// Appends content piece by piece.
trait Producer: Send {
    /// Appends the next part to `out`: at least one byte and at most `remaining` bytes,
    /// where `remaining` is what the piece still needs after everything appended so far.
    fn produce(&mut self, remaining: u64, out: &mut Vec<u8>);
}

/// One synthetic piece being produced.
pub(crate) struct Synth {
    producer: Box<dyn Producer>,
    remaining: u64,
}

impl Synth {
    /// The piece of `len` bytes of `payload` content for `seed`.
    pub fn new(payload: PayloadType, class: Class, seed: u64, len: u64, cut: Cut) -> Synth {
        Synth {
            producer: producer(payload, class, seed, cut),
            remaining: len,
        }
    }

    /// Appends content until `out` holds at least `upto` bytes or the piece is complete.
    pub fn fill(&mut self, out: &mut Vec<u8>, upto: usize) {
        while self.remaining > 0 && out.len() < upto {
            let before = out.len();
            self.producer.produce(self.remaining, out);
            let added = (out.len() - before) as u64;
            debug_assert!(added > 0 && added <= self.remaining);
            self.remaining -= added;
        }
    }
}

/// Exactly `size` bytes of `payload` content for `seed`: a whole file, not compressed.
pub fn content(payload: PayloadType, seed: u64, size: u64) -> impl Read + Send {
    Stream {
        synth: Synth::new(payload, Class::Only, seed, size, Cut::default()),
        pending: Vec::with_capacity(BLOCK),
        pos: 0,
    }
}

fn producer(payload: PayloadType, class: Class, seed: u64, cut: Cut) -> Box<dyn Producer> {
    let mut r = rng(seed);
    let framed = |r: Rng,
                  prefix: Vec<u8>,
                  separator: &'static [u8],
                  suffix: &'static [u8],
                  unit: fn(&mut Rng, &mut String)|
     -> Box<dyn Producer> {
        Box::new(Framed::new(
            r,
            Frame {
                prefix: if class.opens() { prefix } else { Vec::new() },
                separator,
                close: if class.closes() { suffix } else { separator },
                needs_element: class != Class::Only,
            },
            payload.filler(),
            unit,
            cut,
        ))
    };
    match payload {
        PayloadType::StructuredJson => framed(r, b"[".to_vec(), b",\n", b"]\n", structured_record),
        PayloadType::TextDocument => framed(r, Vec::new(), b"", b"", sentence),
        PayloadType::UuidKeys => framed(r, Vec::new(), b"", b"", uuid_line),
        PayloadType::JsonbDocuments => {
            let mut prefix = String::new();
            if class.opens() {
                prefix.push_str("{\"document_id\":\"");
                push_uuid(&mut r, &mut prefix);
                prefix.push_str("\",\"schema_version\":3,\"items\":[");
            }
            framed(r, prefix.into_bytes(), b",", b"]}\n", nested_item)
        }
        PayloadType::Mixed => {
            let others = &PayloadType::ALL[..PayloadType::ALL.len() - 1];
            let pick = others[below(&mut r, others.len() as u64) as usize];
            producer(pick, Class::Only, rand_core::Rng::next_u64(&mut r), cut)
        }
        // Random bytes; presets never reach here (their content is read from their source),
        // and get random bytes if they did, so that content is always defined.
        _ => Box::new(RandomBytes {
            rng: r,
            compress: cut.compress,
        }),
    }
}

/// Size of the internal block: the unit of generation and of copying out.
pub(crate) const BLOCK: usize = 256 * 1024;

struct Stream {
    synth: Synth,
    pending: Vec<u8>,
    pos: usize,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.pending.len() {
            self.pending.clear();
            self.pos = 0;
            self.synth.fill(&mut self.pending, BLOCK);
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct RandomBytes {
    rng: Rng,
    compress: u8,
}

impl Producer for RandomBytes {
    fn produce(&mut self, remaining: u64, out: &mut Vec<u8>) {
        let (content, total) = segment(remaining, self.compress);
        let start = out.len();
        out.resize(start + total, 0);
        fill_random(&mut self.rng, &mut out[start..start + content]);
    }
}

/// Fills `dst` with random bytes, 64 bits at a time; a partial last word uses its first bytes.
pub(crate) fn fill_random(rng: &mut Rng, dst: &mut [u8]) {
    let mut words = dst.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let tail = words.into_remainder();
    if !tail.is_empty() {
        let w = rng.next_u64().to_le_bytes();
        let len = tail.len();
        tail.copy_from_slice(&w[..len]);
    }
}

/// The framing of a text piece.
struct Frame {
    /// Opens the piece (`[` of a JSON file's first piece).
    prefix: Vec<u8>,
    /// Between two units.
    separator: &'static [u8],
    /// Ends the piece: the document's end, or a separator for pieces that others follow.
    close: &'static [u8],
    /// JSON between two separators needs a value: a piece that fits no unit holds `0`.
    needs_element: bool,
}

/// Text made of units (records, sentences, lines) between a prefix and a close, padded with a
/// filler byte before the close to the exact size, then the reserve of filler. JSON types stay
/// valid JSON: the filler is white space. Sizes too small for the framing get the smallest
/// valid JSON, `0`. With compression, each unit is followed by filler in the ratio asked.
struct Framed {
    rng: Rng,
    frame: Frame,
    filler: u8,
    unit: fn(&mut Rng, &mut String),
    cut: Cut,
    started: bool,
    first_unit: bool,
    pending_filler: u64,
    scratch: String,
}

impl Framed {
    fn new(rng: Rng, frame: Frame, filler: u8, unit: fn(&mut Rng, &mut String), cut: Cut) -> Self {
        Framed {
            rng,
            frame,
            filler,
            unit,
            cut,
            started: false,
            first_unit: true,
            pending_filler: 0,
            scratch: String::new(),
        }
    }

    /// Bytes every piece ends with: the close and the reserve.
    fn tail(&self) -> u64 {
        self.frame.close.len() as u64 + self.cut.reserve
    }

    fn pad(&self, out: &mut Vec<u8>, n: u64) {
        out.resize(out.len() + n as usize, self.filler);
    }
}

impl Producer for Framed {
    fn produce(&mut self, remaining: u64, out: &mut Vec<u8>) {
        let tail = self.tail();
        if !self.started {
            self.started = true;
            let framing = (self.frame.prefix.len() + self.frame.close.len()) as u64;
            let least = framing + self.cut.reserve + u64::from(self.frame.needs_element);
            if framing > 0 && remaining < least {
                out.push(b'0');
                self.pad(out, remaining - 1);
                return;
            }
            if !self.frame.prefix.is_empty() {
                out.extend_from_slice(&self.frame.prefix);
                return;
            }
        }
        if remaining == tail {
            out.extend_from_slice(self.frame.close);
            self.pad(out, self.cut.reserve);
            return;
        }
        if self.pending_filler > 0 {
            let n = self.pending_filler.min(remaining - tail);
            self.pending_filler -= n;
            self.pad(out, n);
            return;
        }
        self.scratch.clear();
        (self.unit)(&mut self.rng, &mut self.scratch);
        let sep: &[u8] = if self.first_unit {
            b""
        } else {
            self.frame.separator
        };
        let part = (sep.len() + self.scratch.len()) as u64;
        if part + tail <= remaining {
            self.first_unit = false;
            out.extend_from_slice(sep);
            out.extend_from_slice(self.scratch.as_bytes());
            let c = u64::from(self.cut.compress);
            self.pending_filler = part * c / (100 - c);
        } else if self.first_unit && self.frame.needs_element {
            self.first_unit = false;
            out.push(b'0');
        } else {
            self.pad(out, remaining - tail);
        }
    }
}

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[below(rng, items.len() as u64) as usize]
}

fn push_uuid(rng: &mut Rng, s: &mut String) {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    write!(s, "{}", id.hyphenated()).expect("write to String");
}

fn push_timestamp(rng: &mut Rng, s: &mut String) {
    write!(
        s,
        "20{:02}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        15 + below(rng, 12),
        1 + below(rng, 12),
        1 + below(rng, 28),
        below(rng, 24),
        below(rng, 60),
        below(rng, 60)
    )
    .expect("write to String");
}

fn structured_record(rng: &mut Rng, s: &mut String) {
    let first = pick(rng, FIRST_NAMES);
    let last = pick(rng, LAST_NAMES);
    let id = rng.next_u64() >> 20;
    write!(
        s,
        "{{\"id\":{id},\"customer\":\"{first} {last}\",\"email\":\"{}.{}{}@example.com\",\"amount\":{}.{:02},\"currency\":\"{}\",\"ts\":\"",
        first.to_ascii_lowercase(),
        last.to_ascii_lowercase(),
        below(rng, 1000),
        below(rng, 100_000),
        below(rng, 100),
        pick(rng, &["EUR", "USD", "GBP", "CHF", "JPY"]),
    )
    .expect("write to String");
    push_timestamp(rng, s);
    write!(
        s,
        "\",\"tags\":[\"{}\",\"{}\"],\"active\":{}}}",
        pick(rng, WORDS),
        pick(rng, WORDS),
        below(rng, 2) == 1
    )
    .expect("write to String");
}

fn nested_item(rng: &mut Rng, s: &mut String) {
    write!(
        s,
        "{{\"sku\":\"{}-{:05}\",\"qty\":{},\"price\":{{\"amount\":{}.{:02},\"currency\":\"{}\"}},\"attrs\":{{\"color\":\"{}\",\"size\":\"{}\",\"weight_g\":{}}},\"history\":[",
        pick(rng, &["AB", "CX", "QT", "ZR", "MM"]),
        below(rng, 100_000),
        1 + below(rng, 50),
        below(rng, 5000),
        below(rng, 100),
        pick(rng, &["EUR", "USD", "GBP"]),
        pick(rng, &["red", "green", "blue", "black", "white", "amber"]),
        pick(rng, &["XS", "S", "M", "L", "XL"]),
        below(rng, 20_000),
    )
    .expect("write to String");
    let events = 1 + below(rng, 3);
    for i in 0..events {
        if i > 0 {
            s.push(',');
        }
        s.push_str("{\"ts\":\"");
        push_timestamp(rng, s);
        write!(
            s,
            "\",\"event\":\"{}\",\"by\":\"{}\"}}",
            pick(rng, &["created", "paid", "packed", "shipped", "returned"]),
            pick(rng, FIRST_NAMES)
        )
        .expect("write to String");
    }
    s.push_str("]}");
}

fn sentence(rng: &mut Rng, s: &mut String) {
    let words = 6 + below(rng, 13);
    for i in 0..words {
        let w = pick(rng, WORDS);
        if i == 0 {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                s.push(f.to_ascii_uppercase());
                s.push_str(c.as_str());
            }
        } else {
            s.push_str(w);
        }
        if i + 1 < words {
            s.push_str(if below(rng, 12) == 0 { ", " } else { " " });
        }
    }
    s.push_str(if below(rng, 6) == 0 { ".\n\n" } else { ". " });
}

fn uuid_line(rng: &mut Rng, s: &mut String) {
    push_uuid(rng, s);
    s.push('\n');
}

const FIRST_NAMES: &[&str] = &[
    "Alba", "Bruno", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ines", "Jonas", "Kai",
    "Lena", "Mateo", "Nia", "Oskar", "Priya", "Quinn", "Rosa", "Sami", "Tove", "Uma", "Viktor",
    "Wen", "Yara", "Zoe",
];

const LAST_NAMES: &[&str] = &[
    "Smith", "Garcia", "Muller", "Rossi", "Novak", "Kowalski", "Jensen", "Silva", "Tanaka",
    "Okafor", "Dubois", "Larsen", "Ivanova", "Haddad", "Nguyen", "Popescu", "Fischer", "Moreau",
];

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "was", "that", "for", "it", "with", "as", "on", "be",
    "at", "by", "this", "had", "not", "are", "but", "from", "or", "have", "an", "they", "which",
    "one", "you", "were", "her", "all", "she", "there", "would", "their", "we", "him", "been",
    "has", "when", "who", "will", "more", "no", "if", "out", "so", "said", "what", "up", "its",
    "about", "into", "than", "them", "can", "only", "other", "new", "some", "could", "time",
    "these", "two", "may", "then", "do", "first", "any", "my", "now", "such", "like", "our",
    "over", "man", "me", "even", "most", "made", "after", "also", "did", "many", "before", "must",
    "through", "back", "years", "where", "much", "your", "way", "well", "down", "should",
    "because", "each", "just", "those", "people", "how", "too", "little", "state", "good", "very",
    "make", "world", "still", "own", "see", "men", "work", "long", "get", "here", "between",
    "both", "life", "being", "under", "never", "day", "same", "another", "know", "while", "last",
    "might", "us", "great", "old", "year", "off", "come", "since", "against", "go", "came",
    "right", "used", "take", "three", "storage", "block", "disk", "volume", "replica", "index",
    "page", "table", "record", "column", "segment", "archive", "ledger", "harbor", "river",
    "mountain", "signal", "garden", "engine", "lantern", "copper", "meadow", "thunder", "window",
    "station", "orbit", "crystal", "forest", "island", "valley", "market", "letter", "winter",
    "summer", "morning", "evening", "silver", "golden", "quiet", "bright", "distant", "ancient",
    "modern", "careful", "rapid", "steady", "hidden", "open",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(p: PayloadType, seed: u64, size: u64, chunk: usize) -> Vec<u8> {
        let mut r = content(p, seed, size);
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn exact_sizes_and_independent_of_read_size() {
        for p in PayloadType::ALL {
            for size in [0u64, 1, 2, 7, 100, 4096, 65_537, 300_001] {
                let a = generate(p, 9, size, 4096);
                let b = generate(p, 9, size, 1000);
                assert_eq!(a.len() as u64, size, "{p} size {size}");
                assert_eq!(a, b, "{p} size {size} depends on read size");
            }
        }
    }

    #[test]
    fn json_payloads_parse_at_many_sizes() {
        for p in [PayloadType::StructuredJson, PayloadType::JsonbDocuments] {
            for size in [1u64, 2, 5, 40, 333, 4096, 65_536, 250_000] {
                for seed in 0..5 {
                    let bytes = generate(p, seed, size, 8192);
                    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                        panic!("{p} seed {seed} size {size}: {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn different_seeds_differ() {
        for p in PayloadType::ALL {
            assert_ne!(
                generate(p, 1, 4096, 4096),
                generate(p, 2, 4096, 4096),
                "{p}"
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for p in PayloadType::ALL {
            assert_eq!(PayloadType::from_name(p.name()), Some(p));
        }
        assert_eq!(PayloadType::from_name("random"), None);
    }
}
