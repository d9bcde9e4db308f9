//! Synthetic payload types: seeded streams of exactly the requested size.
//!
//! Every payload is a [`Producer`] that appends pieces of content (a block of random bytes, a
//! JSON record, a sentence) until the size is reached; [`content`] wraps it in a `Read`.
//! The output depends only on (payload type, seed, size), never on how the caller reads.

use std::fmt::Write as _;
use std::io::Read;

use rand_core::Rng as _;
use serde::{Deserialize, Serialize};

use super::rng::{Rng, below, rng};

/// A kind of synthetic content.
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
    /// Each file is one of the other types, chosen by its seed.
    Mixed,
}

impl PayloadType {
    /// Every synthetic payload type, in report order.
    pub const ALL: [PayloadType; 6] = [
        PayloadType::RandomBinary,
        PayloadType::StructuredJson,
        PayloadType::TextDocument,
        PayloadType::UuidKeys,
        PayloadType::JsonbDocuments,
        PayloadType::Mixed,
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
        }
    }

    /// Looks a type up by name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The file name extension of its files.
    pub fn extension(self) -> &'static str {
        match self {
            PayloadType::RandomBinary | PayloadType::Mixed => "bin",
            PayloadType::StructuredJson | PayloadType::JsonbDocuments => "json",
            PayloadType::TextDocument | PayloadType::UuidKeys => "txt",
        }
    }

    /// Whether every file of this type is one valid JSON value.
    pub fn is_json(self) -> bool {
        matches!(
            self,
            PayloadType::StructuredJson | PayloadType::JsonbDocuments
        )
    }
}

impl std::fmt::Display for PayloadType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Appends content piece by piece.
trait Producer: Send {
    /// Appends the next piece to `out`: at least one byte and at most `remaining` bytes,
    /// where `remaining` is what the file still needs after everything appended so far.
    fn produce(&mut self, remaining: u64, out: &mut Vec<u8>);
}

/// Exactly `size` bytes of `payload` content for `seed`.
pub fn content(payload: PayloadType, seed: u64, size: u64) -> impl Read + Send {
    Stream {
        producer: producer(payload, seed),
        pending: Vec::with_capacity(BLOCK),
        pos: 0,
        remaining: size,
    }
}

fn producer(payload: PayloadType, seed: u64) -> Box<dyn Producer> {
    let mut r = rng(seed);
    match payload {
        PayloadType::RandomBinary => Box::new(RandomBytes(r)),
        PayloadType::StructuredJson => Box::new(Framed::new(
            r,
            b"[".to_vec(),
            b",\n",
            b"]\n",
            b' ',
            structured_record,
        )),
        PayloadType::TextDocument => Box::new(Framed::new(r, Vec::new(), b"", b"", b' ', sentence)),
        PayloadType::UuidKeys => Box::new(Framed::new(r, Vec::new(), b"", b"", b'\n', uuid_line)),
        PayloadType::JsonbDocuments => {
            let mut prefix = String::from("{\"document_id\":\"");
            push_uuid(&mut r, &mut prefix);
            prefix.push_str("\",\"schema_version\":3,\"items\":[");
            Box::new(Framed::new(
                r,
                prefix.into_bytes(),
                b",",
                b"]}\n",
                b' ',
                nested_item,
            ))
        }
        PayloadType::Mixed => {
            let others = &PayloadType::ALL[..PayloadType::ALL.len() - 1];
            let pick = others[below(&mut r, others.len() as u64) as usize];
            producer(pick, rand_core::Rng::next_u64(&mut r))
        }
    }
}

/// Size of the internal block: the unit of generation and of copying out.
const BLOCK: usize = 64 * 1024;

struct Stream {
    producer: Box<dyn Producer>,
    pending: Vec<u8>,
    pos: usize,
    remaining: u64,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.pending.len() {
            self.pending.clear();
            self.pos = 0;
            while self.remaining > 0 && self.pending.len() < BLOCK {
                let before = self.pending.len();
                self.producer.produce(self.remaining, &mut self.pending);
                let added = (self.pending.len() - before) as u64;
                debug_assert!(added > 0 && added <= self.remaining);
                self.remaining -= added;
            }
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct RandomBytes(Rng);

impl Producer for RandomBytes {
    fn produce(&mut self, remaining: u64, out: &mut Vec<u8>) {
        let n = remaining.min(BLOCK as u64) as usize;
        let start = out.len();
        out.resize(start + n, 0);
        let dst = &mut out[start..];
        let mut words = dst.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.0.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let w = self.0.next_u64().to_le_bytes();
            let len = tail.len();
            tail.copy_from_slice(&w[..len]);
        }
    }
}

/// Text made of units (records, sentences, lines) between a prefix and a suffix, padded with a
/// filler byte before the suffix to the exact size. JSON types stay valid JSON: the filler is
/// white space. Sizes too small for prefix and suffix get the smallest valid JSON, `0`.
struct Framed {
    rng: Rng,
    prefix: Vec<u8>,
    separator: &'static [u8],
    suffix: &'static [u8],
    filler: u8,
    unit: fn(&mut Rng, &mut String),
    started: bool,
    first_unit: bool,
    scratch: String,
}

impl Framed {
    fn new(
        rng: Rng,
        prefix: Vec<u8>,
        separator: &'static [u8],
        suffix: &'static [u8],
        filler: u8,
        unit: fn(&mut Rng, &mut String),
    ) -> Self {
        Framed {
            rng,
            prefix,
            separator,
            suffix,
            filler,
            unit,
            started: false,
            first_unit: true,
            scratch: String::new(),
        }
    }

    fn framing(&self) -> u64 {
        (self.prefix.len() + self.suffix.len()) as u64
    }
}

impl Producer for Framed {
    fn produce(&mut self, remaining: u64, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            if self.framing() > 0 && remaining < self.framing() {
                out.push(b'0');
                out.resize(out.len() + remaining as usize - 1, b' ');
                return;
            }
            if !self.prefix.is_empty() {
                out.extend_from_slice(&self.prefix);
                return;
            }
        }
        self.scratch.clear();
        (self.unit)(&mut self.rng, &mut self.scratch);
        let sep: &[u8] = if self.first_unit { b"" } else { self.separator };
        let need = (sep.len() + self.scratch.len() + self.suffix.len()) as u64;
        if need <= remaining {
            self.first_unit = false;
            out.extend_from_slice(sep);
            out.extend_from_slice(self.scratch.as_bytes());
            if need == remaining {
                out.extend_from_slice(self.suffix);
            }
        } else {
            let pad = remaining as usize - self.suffix.len();
            out.resize(out.len() + pad, self.filler);
            out.extend_from_slice(self.suffix);
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
