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
