//! Generator benchmarks. `cargo bench --bench generator` runs all three parts; name parts after
//! `--` to run only those:
//!
//! - `payloads`: throughput per payload type, content alone (into memory, one core) and whole
//!   data sets (content + BLAKE3 + files on disk).
//! - `fio`: chunk-level duplication beside fio on one profile (4 KiB unit, 50 % duplicate
//!   chunks, 50 % compressible, 256 MiB): generation throughput (fio's null engine against
//!   dedup-lab's content stream, one core each), `fio-dedupe -b 4096` and `zstd -1` on both
//!   outputs. Needs Debian's `fio` and `zstd`.
//! - `shift`: how much of the duplicate bytes fixed 4 KiB blocks and content-defined chunking
//!   (FastCDC 2020, 2/8/32 KiB) find, per chunk unit, with copies aligned and shifted.
//! - `source`: a directory source of one 2 GiB file and 4096 small files (some gzipped),
//!   generated as a U0 data set by the release binary: its peak RSS (`VmHWM`, printed by
//!   `generate`), throughput, and a hash check that no two files are equal.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use dedup_lab::dataset::{
    ChunkDedup, DataSet, DataSetSpec, Dedup, DupMode, PayloadType, SizeSpec, content,
};

const CONTENT_BYTES: u64 = 1 << 30;
const DATASET_FILES: u32 = 512;
const DATASET_FILE_SIZE: u64 = 256 * 1024;

fn main() {
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |p: &str| parts.is_empty() || parts.iter().any(|a| a == p);
    if want("payloads") {
        payloads();
    }
    if want("fio") {
        beside_fio();
    }
    if want("shift") {
        shifted();
    }
    if want("source") {
        big_source();
    }
}

fn payloads() {
    println!("| payload | content only, 1 core (GB/s) | data set to disk incl. hashing (GB/s) |");
    println!("|---|---:|---:|");
    let dir = tempfile::tempdir().expect("temp dir");
    for p in PayloadType::ALL {
        let mut buf = vec![0u8; 256 * 1024];
        let clock = Instant::now();
        let mut left = CONTENT_BYTES;
        let mut seed = 0;
        while left > 0 {
            // 16 MiB streams, as files of a data set would be.
            let size = left.min(16 << 20);
            let mut r = content(p, seed, size);
            while r.read(&mut buf).expect("read") > 0 {}
            left -= size;
            seed += 1;
        }
        let content_gbs = CONTENT_BYTES as f64 / clock.elapsed().as_secs_f64() / 1e9;

        let spec = DataSetSpec {
            payload: p,
            grade: 0,
            files: DATASET_FILES,
            sizes: SizeSpec::Fixed(DATASET_FILE_SIZE),
            seed: 1,
            ..Default::default()
        };
        let clock = Instant::now();
        let ds = DataSet::generate(&spec, &dir.path().join(p.name())).expect("generate");
        let ds_gbs = ds.manifest.logical_bytes as f64 / clock.elapsed().as_secs_f64() / 1e9;
        println!("| {p} | {content_gbs:.2} | {ds_gbs:.2} |");
    }
}

/// fio's options for the shared profile, and dedup-lab's spec for it.
struct Profile {
    name: &'static str,
    fio: &'static [&'static str],
    mode: DupMode,
}

const PROFILES: [Profile; 2] = [
    Profile {
        name: "repeat",
        fio: &["--dedupe_mode=repeat"],
        mode: DupMode::Repeat,
    },
    Profile {
        name: "working_set 5 %",
        fio: &[
            "--dedupe_mode=working_set",
            "--dedupe_working_set_percentage=5",
        ],
        mode: DupMode::WorkingSet(5),
    },
];

const FIO_COMMON: &[&str] = &[
    "--name=gen",
    "--rw=write",
    "--bs=4k",
    "--size=256m",
    "--dedupe_percentage=50",
    "--buffer_compress_percentage=50",
];

/// Times fio's buffer generation with the null engine and dedup-lab's content stream; each
/// pass makes 16 × 256 MiB, and the best of 3 passes counts (the least disturbed by others).
const LOOPS: u32 = 16;

fn spec(mode: DupMode) -> DataSetSpec {
    DataSetSpec {
        payload: PayloadType::RandomBinary,
        grade: 50,
        files: 64,
        sizes: SizeSpec::Fixed(4 << 20),
        seed: 1,
        dedup: Dedup::Chunks(ChunkDedup {
            unit: 4096,
            mode,
            shift: 0,
        }),
        compress: 50,
        source: None,
    }
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn fio(profile: &Profile, extra: &[&str]) -> Command {
    let mut c = Command::new("fio");
    c.args(FIO_COMMON).args(profile.fio).args(extra);
    c
}

/// Share of duplicate 4 KiB blocks fio-dedupe reports: 1 − unique extents / extents.
fn fio_dedupe(file: &Path) -> f64 {
    let out = String::from_utf8(run(Command::new("fio-dedupe")
        .args(["-b", "4096"])
        .arg(file)))
    .expect("utf-8");
    let num = |key: &str| -> f64 {
        let at = out.find(key).unwrap_or_else(|| panic!("{key} in {out}")) + key.len();
        out[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {out}"))
    };
    100.0 * (1.0 - num("Unique extents=") / num("Extents="))
}

/// zstd -1 compression ratio of a file.
fn zstd_ratio(file: &Path) -> f64 {
    let compressed = run(Command::new("zstd").args(["-1", "-c"]).arg(file)).len();
    std::fs::metadata(file).expect("size").len() as f64 / compressed as f64
}

fn beside_fio() {
    let dir = tempfile::tempdir().expect("temp dir");
    println!();
    println!(
        "| mode | fio null engine (GB/s) | dedup-lab content (GB/s) | ratio | fio-dedupe on fio | \
         fio-dedupe on dedup-lab | zstd -1 fio | zstd -1 dedup-lab | zstd difference |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for profile in &PROFILES {
        let loops = format!("--loops={LOOPS}");
        let fio_gbs = (0..3)
            .map(|_| {
                let out = run(&mut fio(
                    profile,
                    &["--ioengine=null", &loops, "--output-format=json"],
                ));
                let v: serde_json::Value = serde_json::from_slice(&out).expect("fio json");
                v["jobs"][0]["write"]["bw_bytes"]
                    .as_f64()
                    .expect("bw_bytes")
                    / 1e9
            })
            .fold(0.0, f64::max);
        let s = spec(profile.mode);
        let ours_gbs = (0..3)
            .map(|_| {
                let clock = Instant::now();
                let mut bytes = 0u64;
                for _ in 0..LOOPS {
                    let mut stream = s.content_stream().expect("content stream");
                    while let Some(b) = stream.next_block().expect("content") {
                        bytes += b.len() as u64;
                    }
                }
                bytes as f64 / clock.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max);

        let fio_file = dir.path().join("fio.bin");
        let name = format!("--filename={}", fio_file.display());
        run(&mut fio(profile, &["--ioengine=psync", &name]));
        let ds = DataSet::generate(&s, &dir.path().join("ds")).expect("generate");
        let ours_file = dir.path().join("ours.bin");
        let mut out = std::fs::File::create(&ours_file).expect("create");
        for f in &ds.manifest.files {
            out.write_all(&ds.read(f).expect("read")).expect("write");
        }
        drop(out);
        let (zf, zo) = (zstd_ratio(&fio_file), zstd_ratio(&ours_file));
        println!(
            "| {} | {fio_gbs:.2} | {ours_gbs:.2} | {:.2} | {:.2} % | {:.2} % | {zf:.2} | {zo:.2} | \
             {:+.1} % |",
            profile.name,
            ours_gbs / fio_gbs,
            fio_dedupe(&fio_file),
            fio_dedupe(&ours_file),
            100.0 * (zo / zf - 1.0),
        );
    }
    println!();
    println!("fio command lines:");
    for profile in &PROFILES {
        for extra in [
            vec![
                "--ioengine=null".to_string(),
                format!("--loops={LOOPS}"),
                "--output-format=json".into(),
            ],
            vec!["--ioengine=psync".into(), "--filename=fio.bin".into()],
        ] {
            let args: Vec<&str> = FIO_COMMON
                .iter()
                .chain(profile.fio)
                .copied()
                .chain(extra.iter().map(String::as_str))
                .collect();
            println!("    fio {}", args.join(" "));
        }
    }
    println!("    fio-dedupe -b 4096 FILE; zstd -1 -c FILE | wc -c");
}

/// Duplicate bytes that fixed 4 KiB blocks and FastCDC find in a data set, as shares of its
/// duplicate bytes L − U.
fn found(ds: &DataSet) -> (f64, f64) {
    let (mut blocks, mut chunks) = (HashSet::new(), HashSet::new());
    let (mut fixed, mut cdc) = (0u64, 0u64);
    for f in &ds.manifest.files {
        let data = ds.read(f).expect("read");
        for b in data.chunks(4096) {
            if !blocks.insert(blake3::hash(b)) {
                fixed += b.len() as u64;
            }
        }
        for c in fastcdc::v2020::FastCDC::new(&data, 2048, 8192, 32768) {
            if !chunks.insert(blake3::hash(&data[c.offset..c.offset + c.length])) {
                cdc += c.length as u64;
            }
        }
    }
    let dup = (ds.manifest.logical_bytes - ds.manifest.unique_bytes) as f64;
    (fixed as f64 / dup, cdc as f64 / dup)
}

fn shifted() {
    let dir = tempfile::tempdir().expect("temp dir");
    println!();
    println!("| unit | mode | shift | fixed 4 KiB finds | FastCDC 8 KiB finds |");
    println!("|---:|---|---:|---:|---:|");
    for unit in [16 << 10, 64 << 10, 256 << 10] {
        for mode in [DupMode::Repeat, DupMode::WorkingSet(5)] {
            for shift in [0, 7, 63] {
                let s = DataSetSpec {
                    dedup: Dedup::Chunks(ChunkDedup { unit, mode, shift }),
                    files: 64,
                    sizes: SizeSpec::Fixed(1 << 20),
                    grade: 50,
                    ..Default::default()
                };
                let ds = DataSet::generate(&s, &dir.path().join("ds")).expect("generate");
                let (fixed, cdc) = found(&ds);
                println!(
                    "| {} KiB | {} | {shift} | {:.1} % | {:.1} % |",
                    unit >> 10,
                    mode.name(),
                    100.0 * fixed,
                    100.0 * cdc
                );
            }
        }
    }
}

const BIG_FILE: u64 = 2 << 30;
const SMALL_FILES: u32 = 4096;

/// A 2 GiB file and a tree of small files, one in 8 of them gzipped.
fn write_source(dir: &Path) {
    let mut f = std::fs::File::create(dir.join("big.bin")).expect("create");
    let mut r = content(PayloadType::RandomBinary, 1, BIG_FILE);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n]).expect("write");
    }
    for i in 0..SMALL_FILES {
        let sub = dir.join(format!("tree/d{:02}", i % 64));
        std::fs::create_dir_all(&sub).expect("mkdir");
        let size = 4096 + u64::from(i * 7919 % 28672);
        let mut text = Vec::new();
        content(PayloadType::TextDocument, u64::from(i) + 10, size)
            .read_to_end(&mut text)
            .expect("text");
        if i % 8 == 0 {
            let f = std::fs::File::create(sub.join(format!("f{i:04}.txt.gz"))).expect("create");
            let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            gz.write_all(&text).expect("gzip");
            gz.finish().expect("gzip");
        } else {
            std::fs::write(sub.join(format!("f{i:04}.txt")), &text).expect("write");
        }
    }
}

fn big_source() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    write_source(&src);
    // 2100 × 1 MiB: all of the 2 GiB file and some of the tree.
    let out = dir.path().join("out");
    let clock = Instant::now();
    let stdout = run(Command::new(env!("CARGO_BIN_EXE_dedup-lab")).args([
        "generate",
        "--out",
        out.to_str().expect("path"),
        "--runs",
        "1",
        "--grades",
        "0",
        "--payloads",
        "nasa_image",
        "--files",
        "2100",
        "--file-size",
        "1MiB",
        &format!("--source=nasa_image={}", src.display()),
    ]));
    let secs = clock.elapsed().as_secs_f64();
    let stdout = String::from_utf8(stdout).expect("utf-8");
    let rss = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak RSS: "))
        .expect("generate prints its peak RSS");
    let ds = DataSet::open(&out.join("run-1/nasa_image-U0")).expect("data set");
    let m = &ds.manifest;
    // Independent of the manifest: hash what is on disk.
    let distinct: HashSet<blake3::Hash> = m
        .files
        .iter()
        .map(|f| blake3::hash(&ds.read(f).expect("read")))
        .collect();
    let source = m.source.as_ref().expect("source record");
    let from_tree = source
        .files
        .iter()
        .flat_map(|f| &f.parts)
        .filter(|p| p.path.starts_with("tree/"))
        .count();
    println!();
    println!(
        "directory source: 2 GiB file + {SMALL_FILES} small files; U0 data set of {} files, \
         {:.2} GiB: {:.1} s ({:.0} MB/s), peak RSS {rss}, {} distinct files by hash, {} \
         source ranges from the tree, {} bytes of source read",
        m.files.len(),
        m.logical_bytes as f64 / f64::from(1 << 30),
        secs,
        m.logical_bytes as f64 / secs / 1e6,
        distinct.len(),
        from_tree,
        source.read_bytes,
    );
    assert_eq!(distinct.len(), m.files.len(), "U0: no two equal files");
}
