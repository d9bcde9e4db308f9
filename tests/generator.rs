//! Data set generation: determinism, exact grades, valid JSON, sizes.

use std::collections::{HashMap, HashSet};

use dedup_lab::dataset::{DataSet, DataSetSpec, PayloadType, SizeSpec};

fn spec(payload: PayloadType, grade: u8, files: u32, sizes: SizeSpec, seed: u64) -> DataSetSpec {
    DataSetSpec {
        payload,
        grade,
        files,
        sizes,
        seed,
        ..Default::default()
    }
}

#[test]
fn same_seed_gives_identical_manifest_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for p in PayloadType::ALL {
        let s = spec(
            p,
            50,
            20,
            SizeSpec::Range {
                min: 1000,
                max: 9000,
            },
            7,
        );
        let a = DataSet::generate(&s, &dir.path().join(format!("{p}-a"))).unwrap();
        let b = DataSet::generate(&s, &dir.path().join(format!("{p}-b"))).unwrap();
        assert_eq!(a.manifest, b.manifest, "{p}");
        for f in &a.manifest.files {
            assert_eq!(a.read(f).unwrap(), b.read(f).unwrap(), "{p} {}", f.name);
        }
        let other = DataSet::generate(
            &DataSetSpec {
                seed: 8,
                ..s.clone()
            },
            &dir.path().join(format!("{p}-c")),
        )
        .unwrap();
        assert_ne!(
            a.manifest.files[0].blake3, other.manifest.files[0].blake3,
            "{p}"
        );
    }
}

#[test]
fn grade_90_of_500_files_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let ds = DataSet::generate(
        &spec(PayloadType::RandomBinary, 90, 500, SizeSpec::Fixed(1024), 3),
        &dir.path().join("ds"),
    )
    .unwrap();
    let m = &ds.manifest;
    assert_eq!((m.uniques, m.duplicates), (50, 450));
    let originals: Vec<_> = m.files.iter().filter(|f| f.copy_of.is_none()).collect();
    assert_eq!(originals.len(), 50);
    let mut copies: HashMap<&str, u32> = HashMap::new();
    for f in &m.files {
        if let Some(o) = &f.copy_of {
            *copies.entry(o.as_str()).or_default() += 1;
        }
    }
    assert_eq!(copies.len(), 50);
    assert!(copies.values().all(|&n| n == 9), "{copies:?}");
    // Verify independently of the manifest: hash the files on disk.
    let distinct: HashSet<blake3::Hash> = m
        .files
        .iter()
        .map(|f| blake3::hash(&ds.read(f).unwrap()))
        .collect();
    assert_eq!(distinct.len(), 50);
    assert_eq!(m.achieved_grade, 90.0);
    assert_eq!(m.logical_bytes, 500 * 1024);
    assert_eq!(m.unique_bytes, 50 * 1024);
}

#[test]
fn json_payload_files_parse() {
    let dir = tempfile::tempdir().unwrap();
    for p in [PayloadType::StructuredJson, PayloadType::JsonbDocuments] {
        let ds = DataSet::generate(
            &spec(
                p,
                0,
                30,
                SizeSpec::Range {
                    min: 100,
                    max: 200_000,
                },
                11,
            ),
            &dir.path().join(p.name()),
        )
        .unwrap();
        for f in &ds.manifest.files {
            let bytes = ds.read(f).unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .unwrap_or_else(|e| panic!("{p} {}: {e}", f.name));
        }
    }
}

#[test]
fn sizes_follow_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let ds = DataSet::generate(
        &spec(
            PayloadType::TextDocument,
            50,
            40,
            SizeSpec::Range {
                min: 4096,
                max: 8192,
            },
            5,
        ),
        &dir.path().join("ds"),
    )
    .unwrap();
    let sizes: HashSet<u64> = ds.manifest.files.iter().map(|f| f.size).collect();
    assert!(sizes.iter().all(|s| (4096..=8192).contains(s)));
    assert!(
        sizes.len() > 5,
        "a range should give varied sizes: {sizes:?}"
    );
    for f in &ds.manifest.files {
        assert_eq!(std::fs::metadata(ds.path(f)).unwrap().len(), f.size);
        if let Some(o) = &f.copy_of {
            let orig = ds.manifest.files.iter().find(|g| &g.name == o).unwrap();
            assert_eq!(orig.size, f.size);
        }
    }
}

#[test]
fn too_small_files_are_refused_not_miscounted() {
    let dir = tempfile::tempdir().unwrap();
    let err = DataSet::generate(
        &spec(PayloadType::StructuredJson, 0, 10, SizeSpec::Fixed(1), 5),
        &dir.path().join("ds"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
    assert!(!dir.path().join("ds").exists(), "no half-written data set");
}

#[test]
fn ensure_reuses_a_complete_data_set_and_regenerates_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds");
    let s = spec(PayloadType::UuidKeys, 50, 10, SizeSpec::Fixed(4096), 1);
    let a = DataSet::ensure(&s, &path).unwrap();
    let victim = a.path(&a.manifest.files[3]);
    std::fs::write(&victim, b"short").unwrap();
    let b = DataSet::ensure(&s, &path).unwrap();
    assert_eq!(a.manifest, b.manifest);
    assert_eq!(std::fs::metadata(&victim).unwrap().len(), 4096);
}

// ---- chunk-level duplication, compression, directory sources ----

use std::path::{Path, PathBuf};
use std::process::Command;

use dedup_lab::dataset::{ChunkDedup, Dedup, DupMode, Manifest, SourceSpec};

fn chunks(unit: u32, mode: DupMode, shift: u16) -> Dedup {
    Dedup::Chunks(ChunkDedup { unit, mode, shift })
}

/// The shipped sources: CSV, JSON lines (.gz) and license texts (.bz2, .xz, .zst).
fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sources")
}

fn source(dir: impl Into<PathBuf>) -> Option<SourceSpec> {
    Some(SourceSpec {
        dir: dir.into(),
        decompress: true,
    })
}

fn files_of(ds: &DataSet) -> Vec<Vec<u8>> {
    ds.manifest
        .files
        .iter()
        .map(|f| ds.read(f).unwrap().to_vec())
        .collect()
}

/// `(blocks, duplicate blocks)`: fixed blocks of `b` bytes aligned at each file's start, as a
/// file system lays them out; a block is a duplicate when an equal one came before.
fn fixed_blocks(ds: &DataSet, b: usize) -> (usize, usize) {
    let mut seen = HashSet::new();
    let mut n = 0;
    for data in files_of(ds) {
        for block in data.chunks(b) {
            n += 1;
            seen.insert(blake3::hash(block));
        }
    }
    (n, n - seen.len())
}

/// Bytes in content-defined chunks (FastCDC 2020, 2/8/32 KiB) that repeat an earlier chunk.
fn cdc_duplicate_bytes(ds: &DataSet) -> u64 {
    let mut seen = HashSet::new();
    let mut dup = 0;
    for data in files_of(ds) {
        for c in fastcdc::v2020::FastCDC::new(&data, 2048, 8192, 32768) {
            if !seen.insert(blake3::hash(&data[c.offset..c.offset + c.length])) {
                dup += c.length as u64;
            }
        }
    }
    dup
}

/// A source file as Debian's own tools decompress it: an independent reading of the stream.
fn decompressed(path: &Path) -> Vec<u8> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("gz") => "gzip",
        Some("bz2") => "bzip2",
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return std::fs::read(path).unwrap(),
    };
    let out = Command::new(tool).arg("-dc").arg(path).output().unwrap();
    assert!(out.status.success(), "{tool} -dc {}", path.display());
    out.stdout
}

#[test]
fn chunk_modes_are_deterministic_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    let modes = [
        (chunks(4096, DupMode::Repeat, 0), 0),
        (chunks(8192, DupMode::WorkingSet(20), 7), 50),
    ];
    for p in PayloadType::ALL {
        for (i, (dedup, compress)) in modes.into_iter().enumerate() {
            let s = DataSetSpec {
                dedup,
                compress,
                ..spec(
                    p,
                    50,
                    6,
                    SizeSpec::Range {
                        min: 8192,
                        max: 64 * 1024,
                    },
                    7,
                )
            };
            let make = |s: &DataSetSpec, tag: &str| {
                DataSet::generate(s, &dir.path().join(format!("{p}-{i}-{tag}"))).unwrap()
            };
            let (a, b) = (make(&s, "a"), make(&s, "b"));
            assert_eq!(a.manifest, b.manifest, "{p} {dedup:?}");
            assert_eq!(files_of(&a), files_of(&b), "{p} {dedup:?}");
            assert_eq!(
                s.byte_counts(),
                (a.manifest.logical_bytes, a.manifest.unique_bytes),
                "{p} {dedup:?}: the dry run's L and U"
            );
            let other = make(&DataSetSpec { seed: 8, ..s }, "c");
            assert_ne!(files_of(&a), files_of(&other), "{p} {dedup:?}");
        }
    }
}

#[test]
fn chunk_grade_is_exact_at_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    // 20 files × 16 chunks = 320 chunks.
    for p in [
        PayloadType::RandomBinary,
        PayloadType::StructuredJson,
        PayloadType::TextDocument,
    ] {
        for grade in [0u8, 33, 50, 90] {
            for mode in [DupMode::Repeat, DupMode::WorkingSet(10)] {
                let s = DataSetSpec {
                    dedup: chunks(4096, mode, 0),
                    ..spec(p, grade, 20, SizeSpec::Fixed(64 * 1024), 3)
                };
                let ds = DataSet::generate(&s, &dir.path().join(format!("{p}-{grade}"))).unwrap();
                let dups = (320 * u64::from(grade) + 50) / 100;
                // Counted on the bytes, independently of the manifest.
                let (n, dup_blocks) = fixed_blocks(&ds, 4096);
                assert_eq!((n, dup_blocks as u64), (320, dups), "{p} U{grade} {mode:?}");
                let m = &ds.manifest;
                assert_eq!((m.uniques, m.duplicates), (320 - dups, dups));
                assert_eq!(m.achieved_grade, 100.0 * dups as f64 / 320.0);
                assert_eq!(m.unique_bytes, (320 - dups) * 4096);
                assert_eq!(m.logical_bytes, 320 * 4096);
            }
        }
    }
}

#[test]
fn repeat_copies_the_latest_unique_and_working_set_the_first_uniques() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [DupMode::Repeat, DupMode::WorkingSet(10)] {
        let s = DataSetSpec {
            dedup: chunks(4096, mode, 0),
            ..spec(
                PayloadType::RandomBinary,
                75,
                25,
                SizeSpec::Fixed(64 * 1024),
                9,
            )
        };
        let ds = DataSet::generate(&s, &dir.path().join(mode.name())).unwrap();
        // Uniques numbered in stream order; every later occurrence is a copy.
        let mut order: HashMap<blake3::Hash, usize> = HashMap::new();
        let mut copied = HashSet::new();
        for data in files_of(&ds) {
            for block in data.chunks(4096) {
                let h = blake3::hash(block);
                let next = order.len();
                match order.get(&h) {
                    None => {
                        order.insert(h, next);
                    }
                    Some(&i) => {
                        if mode == DupMode::Repeat {
                            assert_eq!(i, next - 1, "a repeat copies the latest unique");
                        }
                        copied.insert(i);
                    }
                }
            }
        }
        // 400 chunks at 75 %: 100 uniques, a working set of 10.
        assert_eq!(order.len(), 100);
        if mode == DupMode::WorkingSet(10) {
            assert!(copied.iter().all(|&i| i < 10), "{copied:?}");
            assert!(
                copied.len() > 5,
                "copies spread over the working set: {copied:?}"
            );
        }
    }
}

#[test]
fn compress_fills_each_segment_like_fio() {
    let dir = tempfile::tempdir().unwrap();
    for (dedup, c) in [
        (Dedup::Files, 50u8),
        (chunks(4096, DupMode::Repeat, 0), 25),
        (chunks(4096, DupMode::Repeat, 0), 90),
    ] {
        let s = DataSetSpec {
            dedup,
            compress: c,
            ..spec(
                PayloadType::RandomBinary,
                0,
                8,
                SizeSpec::Fixed(64 * 1024),
                2,
            )
        };
        let ds = DataSet::generate(&s, &dir.path().join(format!("c{c}"))).unwrap();
        let content = 512 * (100 - usize::from(c)) / 100;
        let mut all = Vec::new();
        for data in files_of(&ds) {
            for seg in data.chunks(512) {
                assert!(
                    seg[content..].iter().all(|&b| b == 0),
                    "c{c}: filler is zero"
                );
                assert!(seg[content - 8..content].iter().any(|&b| b != 0), "c{c}");
            }
            all.extend(data);
        }
        // Random content does not compress, the zeros do: zstd -1 gives about 100 / (100 − c).
        let ratio = all.len() as f64 / zstd::bulk::compress(&all, 1).unwrap().len() as f64;
        let want = 100.0 / (100.0 - f64::from(c));
        assert!(
            (ratio / want - 1.0).abs() < 0.15,
            "c{c}: ratio {ratio:.2}, want {want:.2}"
        );
    }
}

#[test]
fn shifted_duplicates_escape_fixed_blocks_but_not_cdc() {
    let dir = tempfile::tempdir().unwrap();
    for p in [PayloadType::RandomBinary, PayloadType::TextDocument] {
        for mode in [DupMode::Repeat, DupMode::WorkingSet(50)] {
            let make = |shift: u16| {
                let s = DataSetSpec {
                    dedup: chunks(256 * 1024, mode, shift),
                    ..spec(p, 50, 8, SizeSpec::Fixed(1 << 20), 4)
                };
                let ds = DataSet::generate(&s, &dir.path().join(format!("{p}-{shift}"))).unwrap();
                assert_eq!(ds.manifest.duplicates, 16);
                ds
            };
            // Aligned: every 4 KiB block of a duplicate is found.
            let aligned = make(0);
            let (_, dup) = fixed_blocks(&aligned, 4096);
            if p == PayloadType::RandomBinary {
                assert_eq!(dup, 16 * 64, "{mode:?}");
            }
            let shifted = make(7);
            let m = &shifted.manifest;
            assert_eq!(m.unique_bytes, 16 * 256 * 1024 + 16 * 7);
            let dup_bytes = m.logical_bytes - m.unique_bytes;
            let (_, dup) = fixed_blocks(&shifted, 4096);
            if p == PayloadType::RandomBinary {
                assert_eq!(dup, 0, "{mode:?}: fixed blocks miss every shifted copy");
            } else {
                // Text has runs of filler that fall on equal blocks by themselves; the copies
                // are missed all the same.
                let (_, aligned_dup) = fixed_blocks(&aligned, 4096);
                assert!(
                    dup * 20 < aligned_dup,
                    "{p} {mode:?}: {dup} vs {aligned_dup}"
                );
            }
            let cdc = cdc_duplicate_bytes(&shifted);
            assert!(
                cdc as f64 >= 0.8 * dup_bytes as f64,
                "{p} {mode:?}: CDC found {cdc} of {dup_bytes} duplicate bytes"
            );
        }
    }
}

#[test]
fn json_stays_valid_in_every_chunk_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for p in [PayloadType::StructuredJson, PayloadType::JsonbDocuments] {
        for (unit, mode, shift, compress) in [
            (4096, DupMode::Repeat, 0, 0),
            (4096, DupMode::WorkingSet(30), 5, 60),
            (16384, DupMode::Repeat, 511, 0),
            (4096, DupMode::Repeat, 3, 95),
        ] {
            for grade in [50, 90] {
                let s = DataSetSpec {
                    dedup: chunks(unit, mode, shift),
                    compress,
                    ..spec(
                        p,
                        grade,
                        8,
                        SizeSpec::Range {
                            min: 4096,
                            max: 80_000,
                        },
                        u64::from(grade),
                    )
                };
                n += 1;
                let ds = DataSet::generate(&s, &dir.path().join(format!("j{n}"))).unwrap();
                for f in &ds.manifest.files {
                    let bytes = ds.read(f).unwrap();
                    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                        panic!(
                            "{p} {unit} {mode:?} shift {shift} c{compress} {}: {e}",
                            f.name
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn preset_slices_are_distinct_and_match_their_source() {
    let dir = tempfile::tempdir().unwrap();
    for decompress in [true, false] {
        let s = DataSetSpec {
            payload: PayloadType::TextCorpus,
            source: Some(SourceSpec {
                dir: shipped(),
                decompress,
            }),
            ..spec(
                PayloadType::TextCorpus,
                0,
                24,
                SizeSpec::Range {
                    min: 1000,
                    max: 9000,
                },
                5,
            )
        };
        let ds = DataSet::generate(&s, &dir.path().join(format!("d{decompress}"))).unwrap();
        let m = &ds.manifest;
        let hashes: HashSet<blake3::Hash> = files_of(&ds).iter().map(|d| blake3::hash(d)).collect();
        assert_eq!(hashes.len(), 24, "U0: no two equal files");
        assert_eq!(s.byte_counts().1, m.unique_bytes);
        let src = m.source.as_ref().expect("a preset records its source");
        assert_eq!(
            src.read_bytes, m.unique_bytes,
            "consecutive slices, nothing skipped"
        );
        assert_eq!(src.files.len(), 24);
        // Every file is exactly the source bytes its manifest names, as Debian's tools read
        // the source; the slices follow each other without overlap.
        let mut next: HashMap<String, u64> = HashMap::new();
        for (f, data) in src.files.iter().zip(files_of(&ds)) {
            let mut expect = Vec::new();
            for part in &f.parts {
                let path = shipped().join(&part.path);
                let stream = if decompress {
                    decompressed(&path)
                } else {
                    std::fs::read(&path).unwrap()
                };
                let at = next.entry(part.path.clone()).or_default();
                assert_eq!(part.offset, *at, "{}: slices follow each other", part.path);
                *at += part.len;
                expect.extend_from_slice(&stream[part.offset as usize..][..part.len as usize]);
            }
            assert_eq!(expect, data, "{}", f.name);
        }
        // Decompressed, the slices reach into the .gz events; raw, into its compressed bytes.
        assert!(next.contains_key("events/2024-01-01-0.json.gz"));
    }
}

#[test]
fn preset_chunks_from_debian_files() {
    let dir = tempfile::tempdir().unwrap();
    // Plain license texts, chunked; then the .gz changelogs of /usr/share/doc, whole files.
    let cases = [
        (
            "/usr/share/common-licenses",
            chunks(4096, DupMode::WorkingSet(50), 0),
            50,
        ),
        ("/usr/share/doc", Dedup::Files, 0),
    ];
    for (i, (src, dedup, grade)) in cases.into_iter().enumerate() {
        let s = DataSetSpec {
            dedup,
            source: source(src),
            ..spec(
                PayloadType::GutenbergText,
                grade,
                24,
                SizeSpec::Fixed(16384),
                11,
            )
        };
        let ds = DataSet::generate(&s, &dir.path().join(format!("deb{i}"))).unwrap();
        let m = &ds.manifest;
        let (blocks, dup) = fixed_blocks(&ds, if i == 0 { 4096 } else { 16384 });
        assert_eq!(
            (blocks - dup) as u64,
            m.uniques,
            "{src}: distinct pieces on disk"
        );
        assert_eq!(m.duplicates, (blocks as u64 * u64::from(grade) + 50) / 100);
        assert!(m.source.as_ref().unwrap().read_bytes >= m.uniques * 4096);
    }
}

#[test]
fn too_small_source_says_how_much_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let s = DataSetSpec {
        source: source(shipped().join("numeric")),
        ..spec(PayloadType::NumericDataset, 0, 16, SizeSpec::Fixed(4096), 1)
    };
    let err = DataSet::generate(&s, &dir.path().join("ds")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("holds 61321 bytes"), "{msg}");
    assert!(msg.contains("needs 65536"), "{msg}");
    assert!(msg.contains("4215 bytes missing"), "{msg}");
    assert_eq!(dedup_lab::error::exit_code(&err), 2);
    assert!(!dir.path().join("ds").exists(), "no half-written data set");
}

#[test]
fn repeated_source_content_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let csv = shipped().join("bank/transactions.csv");
    let size = std::fs::metadata(&csv).unwrap().len();
    std::fs::copy(&csv, src.join("a.csv")).unwrap();
    std::fs::copy(&csv, src.join("b.csv")).unwrap();
    std::fs::copy(
        shipped().join("numeric/measurements.csv"),
        src.join("c.csv"),
    )
    .unwrap();
    let s = DataSetSpec {
        source: source(&src),
        ..spec(
            PayloadType::BankTransactions,
            0,
            2,
            SizeSpec::Fixed(size),
            1,
        )
    };
    let ds = DataSet::generate(&s, &dir.path().join("ds")).unwrap();
    let files = files_of(&ds);
    assert_ne!(files[0], files[1]);
    let rec = ds.manifest.source.as_ref().unwrap();
    assert_eq!(rec.skipped_bytes, size, "b.csv repeats a.csv");
    assert_eq!(rec.files[1].parts[0].path, "c.csv");
    assert_eq!(
        files[1],
        std::fs::read(src.join("c.csv")).unwrap()[..size as usize]
    );
}

/// Runs the real binary; returns (exit code, stderr, stdout).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dedup-lab"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn presets_need_a_directory_with_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let make = [
        "generate",
        "--runs",
        "1",
        "--grades",
        "0",
        "--out",
        out,
        "--payloads",
    ];
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["gutenberg_text".into()],
            "[dataset.sources] gutenberg_text",
        ),
        (
            vec![
                "gutenberg_text".into(),
                format!("--source=gutenberg_text={}", empty.display()),
            ],
            "no non-empty regular file",
        ),
        (
            vec![
                "gutenberg_text".into(),
                "--source=gutenberg_text=/nonexistent/dir".into(),
            ],
            "cannot be read",
        ),
        (
            vec!["random_binary".into(), "--source=jpeg=/tmp".into()],
            "not a preset",
        ),
    ];
    for (extra, want) in cases {
        let args: Vec<&str> = make
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
            .collect();
        let (code, err, _) = cli(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // And with its directory, the preset generates.
    let src = format!("--source=text_corpus={}", shipped().display());
    let (code, err, _) = cli(&[
        "generate",
        "--runs",
        "1",
        "--grades",
        "50",
        "--out",
        out,
        "--payloads",
        "text_corpus",
        "--files",
        "8",
        "--file-size",
        "16KiB",
        "--dedup-unit",
        "4KiB",
        &src,
    ]);
    assert_eq!(code, 0, "{err}");
    let m =
        dedup_lab::dataset::Manifest::read(&Path::new(out).join("run-1/text_corpus-U50")).unwrap();
    assert_eq!((m.uniques, m.duplicates), (16, 16));
}

#[test]
fn content_stream_is_what_generate_writes() {
    let dir = tempfile::tempdir().unwrap();
    for (p, dedup) in [
        (PayloadType::Mixed, Dedup::Files),
        (PayloadType::RandomBinary, chunks(4096, DupMode::Repeat, 0)),
        (
            PayloadType::JsonbDocuments,
            chunks(8192, DupMode::WorkingSet(30), 9),
        ),
    ] {
        let s = DataSetSpec {
            dedup,
            compress: 40,
            ..spec(p, 60, 12, SizeSpec::Fixed(64 * 1024), 21)
        };
        let ds = DataSet::generate(&s, &dir.path().join(p.name())).unwrap();
        let written: Vec<u8> = files_of(&ds).concat();
        let mut streamed = Vec::new();
        let mut stream = s.content_stream().unwrap();
        while let Some(b) = stream.next_block().unwrap() {
            streamed.extend_from_slice(b);
        }
        assert!(streamed == written, "{p} {dedup:?}");
    }
}

/// A 2 GiB file, of which the first 256 MiB are random and the rest a hole (zeros), and a
/// tree of 1024 small files. The U0 data set of 1 MiB files takes the random part, one slice
/// of zeros, passes over the other zero slices as repeats, and ends in the tree; the child
/// `generate` process stays far below 256 MiB.
#[test]
fn a_two_gib_source_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("tree")).unwrap();
    let mut big = std::fs::File::create(src.join("big.img")).unwrap();
    std::io::copy(
        &mut dedup_lab::dataset::content(PayloadType::RandomBinary, 1, 256 << 20),
        &mut big,
    )
    .unwrap();
    big.set_len(2 << 30).unwrap();
    drop(big);
    for i in 0..1024u64 {
        let mut data = Vec::new();
        std::io::Read::read_to_end(
            &mut dedup_lab::dataset::content(PayloadType::RandomBinary, 100 + i, 24 * 1024),
            &mut data,
        )
        .unwrap();
        std::fs::write(src.join(format!("tree/{i:04}.bin")), data).unwrap();
    }
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    // 256 random + 1 zero + 24 tree slices of 1 MiB.
    let (code, err, stdout) = cli(&[
        "generate",
        "--runs",
        "1",
        "--grades",
        "0",
        "--out",
        out,
        "--payloads",
        "nasa_image",
        "--files",
        "281",
        "--file-size",
        "1MiB",
        &format!("--source=nasa_image={}", src.display()),
    ]);
    assert_eq!(code, 0, "{err}");
    let rss: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak RSS: ")?.strip_suffix(" MiB"))
        .expect("generate prints its peak RSS")
        .parse()
        .unwrap();
    assert!(rss <= 256.0, "peak RSS {rss} MiB");
    let ds = DataSet::open(&Path::new(out).join("run-1/nasa_image-U0")).unwrap();
    let distinct: HashSet<blake3::Hash> = ds
        .manifest
        .files
        .iter()
        .map(|f| blake3::hash(&ds.read(f).unwrap()))
        .collect();
    assert_eq!(distinct.len(), 281, "U0: no two equal files");
    let rec = ds.manifest.source.as_ref().unwrap();
    assert_eq!(
        rec.skipped_bytes,
        (2048 - 257) << 20,
        "zero slices after the first"
    );
    assert_eq!(rec.read_bytes, (2048 + 24) << 20);
    assert!(rec.files[280].parts[0].path.starts_with("tree/"));
}

#[test]
fn a_format_1_data_set_is_regenerated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds");
    let s = spec(PayloadType::TextDocument, 50, 6, SizeSpec::Fixed(4096), 2);
    let a = DataSet::generate(&s, &path).unwrap();
    // What format 1 wrote: no dedup, compress or source, and whole files only.
    let mut v: serde_json::Value = serde_json::to_value(&a.manifest).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("dedup");
    obj.remove("compress");
    obj.insert("format".into(), 1.into());
    std::fs::write(path.join("manifest.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(DataSet::open(&path).unwrap().manifest.format, 1);
    let b = DataSet::ensure(&s, &path).unwrap();
    assert_eq!(b.manifest, a.manifest);
    assert_eq!(
        Manifest::read(&path).unwrap().format,
        dedup_lab::dataset::FORMAT
    );
}
