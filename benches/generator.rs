//! Generator throughput per payload type: content alone (into memory, one core) and whole data
//! sets (content + BLAKE3 + files on disk). Run with `cargo bench --bench generator`.

use std::io::Read;
use std::time::Instant;

use dedup_lab::dataset::{DataSet, DataSetSpec, PayloadType, SizeSpec, content};

const CONTENT_BYTES: u64 = 1 << 30;
const DATASET_FILES: u32 = 512;
const DATASET_FILE_SIZE: u64 = 256 * 1024;

fn main() {
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
