//! Dedup-potential scan throughput on one core beside fio's `fio-dedupe`, on the same 1 GiB
//! of data: `cargo bench --bench scan` (needs fio and GNU time: `apt-get install fio time`).
//!
//! A random_binary data set at U50 (1024 files × 1 MiB) is generated and its data files are
//! concatenated into one file, because fio-dedupe reads one file. Both tools then scan that
//! file, from the page cache (it was just written), alternating, REPS times each; the table
//! shows medians. Each scan is a separate process run under `/usr/bin/time`, so its wall
//! time includes start-up and its peak RSS is its own. The ratio is our MB/s over
//! fio-dedupe's at the same block size (≥ 1.0: dedup-lab is at least as fast).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use dedup_lab::dataset::{DataSet, DataSetSpec, PayloadType, SizeSpec};

const FILES: u32 = 1024;
const FILE_SIZE: u64 = 1 << 20;
const REPS: usize = 3;

/// Wall seconds and peak RSS in MiB of one process.
struct Run {
    seconds: f64,
    rss_mib: f64,
}

fn timed(program: &str, args: &[&str]) -> Run {
    let clock = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kib=%M", program])
        .args(args)
        .output()
        .expect("/usr/bin/time (Debian package `time`)");
    let seconds = clock.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let kib: f64 = stderr
        .rsplit("maxrss_kib=")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no maxrss in {stderr}"));
    Run {
        seconds,
        rss_mib: kib / 1024.0,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median MB/s and largest peak RSS of REPS runs of each command, taking turns so that no
/// command always meets a warmer machine.
fn measure(bytes: u64, commands: &[(&str, &[&str])]) -> Vec<(f64, f64)> {
    let mut runs: Vec<Vec<Run>> = commands.iter().map(|_| Vec::new()).collect();
    for _ in 0..REPS {
        for (i, (program, args)) in commands.iter().enumerate() {
            runs[i].push(timed(program, args));
        }
    }
    runs.iter()
        .map(|r| {
            let mbs = median(r.iter().map(|r| bytes as f64 / r.seconds / 1e6).collect());
            (mbs, r.iter().map(|r| r.rss_mib).fold(0.0, f64::max))
        })
        .collect()
}

fn main() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let ds = DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade: 50,
            files: FILES,
            sizes: SizeSpec::Fixed(FILE_SIZE),
            seed: 1,
            ..Default::default()
        },
        &tmp.path().join("u50"),
    )
    .expect("generate");
    let file = tmp.path().join("u50.bin");
    concatenate(&ds, &file);
    let bytes = ds.manifest.logical_bytes;
    let path = file.to_str().unwrap();
    let ours = env!("CARGO_BIN_EXE_dedup-lab");

    println!(
        "1 GiB random_binary U50 ({FILES} × {} KiB) in one file, page cache, 1 thread; \
         median of {REPS}",
        FILE_SIZE / 1024
    );
    println!(
        "| method | dedup-lab MB/s | dedup-lab peak RSS MiB | fio-dedupe | fio-dedupe MB/s | fio-dedupe peak RSS MiB | ratio |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|");
    let fio_exact = ["-b", "4096", "-t", "1", "-B", "0", "-p", "0", path];
    let fio_bloom = ["-b", "4096", "-t", "1", "-p", "0", path];
    let cases: [(&str, &[&str], &str, &[&str]); 3] = [
        (
            "fixed-4096",
            &["scan", "--json", "--block", "4KiB", "--cdc", "none", path],
            "-b 4096 -t 1 -B 0 (exact)",
            &fio_exact,
        ),
        (
            "fixed-4096",
            &["scan", "--json", "--block", "4KiB", "--cdc", "none", path],
            "-b 4096 -t 1 (Bloom filter, default)",
            &fio_bloom,
        ),
        (
            "cdc-8192",
            &["scan", "--json", "--block", "none", "--cdc", "8KiB", path],
            "-b 4096 -t 1 -B 0 (exact)",
            &fio_exact,
        ),
    ];
    for (method, our_args, fio_label, fio_args) in cases {
        let m = measure(bytes, &[(ours, our_args), ("fio-dedupe", fio_args)]);
        let ((our_mbs, our_rss), (fio_mbs, fio_rss)) = (m[0], m[1]);
        println!(
            "| {method} | {our_mbs:.0} | {our_rss:.1} | {fio_label} | {fio_mbs:.0} | {fio_rss:.1} | {:.2} |",
            our_mbs / fio_mbs
        );
    }
    let (all_mbs, all_rss) = measure(bytes, &[(ours, &["scan", "--json", path])])[0];
    println!(
        "| default: fixed 4, 16, 128 KiB + cdc-8192 in one pass | {all_mbs:.0} | {all_rss:.1} | | | | |"
    );
}

fn concatenate(ds: &DataSet, out: &Path) {
    let mut w = std::fs::File::create(out).expect("create");
    for f in &ds.manifest.files {
        let mut r = std::fs::File::open(ds.path(f)).expect("open");
        std::io::copy(&mut r, &mut w).expect("copy");
    }
}
