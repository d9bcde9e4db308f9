//! Bulk loaders side by side with each system's native loader, on the same files, in the same
//! run, against the lab servers: `cargo bench --bench loaders` (after `dedup-lab lab up`).
//!
//! For each lab instance whose kind registers a native loader: generate one data set, write it
//! in the native tool's input format, then alternate: reset + dedup-lab `bulk_insert`, reset +
//! native tool. Both loads are checked by counting rows afterwards. The ratio is native time /
//! our time (≥ 1.0: dedup-lab is at least as fast).

use std::time::{Duration, Instant};

use dedup_lab::dataset::{DataSet, DataSetSpec, PayloadType, SizeSpec};
use dedup_lab::systems::toolkit::ownership::{self, Claim};
use dedup_lab::systems::{Instance, System};

const FILES: u32 = 4096;
const FILE_SIZE: u64 = 64 * 1024;
const REPS: usize = 5;

fn main() {
    let config = std::env::var("DEDUP_LAB_LAB_CONFIG").unwrap_or_else(|_| ".lab/lab.toml".into());
    let Ok(text) = std::fs::read_to_string(&config) else {
        eprintln!("no lab config at {config}: run `dedup-lab lab up` first");
        std::process::exit(2);
    };
    let doc: toml::Table = toml::from_str(&text).expect("lab config parses");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let tmp = tempfile::tempdir().expect("temp dir");
    let ds = DataSet::generate(
        &DataSetSpec {
            payload: PayloadType::RandomBinary,
            grade: 0,
            files: FILES,
            sizes: SizeSpec::Fixed(FILE_SIZE),
            seed: 1,
            ..Default::default()
        },
        &tmp.path().join("ds"),
    )
    .expect("generate");
    let mib = ds.manifest.logical_bytes as f64 / (1 << 20) as f64;
    println!(
        "data set: {FILES} files x {} KiB = {mib:.0} MiB random_binary; median of {REPS}\n",
        FILE_SIZE / 1024
    );
    println!("| system | native loader | dedup-lab MB/s | native MB/s | ratio |");
    println!("|---|---|---:|---:|---:|");
    // `cargo bench --bench loaders -- postgres redis` runs only the instances named.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let sections = doc
        .get("systems")
        .and_then(|s| s.as_table())
        .cloned()
        .unwrap_or_default();
    for (name, section) in &sections {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let instance =
            Instance::new(name, section.as_table(), Default::default()).expect("lab section");
        let Some(native) = &instance.def.native_loader else {
            continue;
        };
        // Per instance: two instances of a kind (garage, s3s) prepare the same input names.
        let own = tmp.path().join(name);
        std::fs::create_dir_all(&own).expect("bench dir");
        let input = (native.prepare)(&ds, &own).expect("native input");
        let (mut sys, _) = instance.build(tmp.path()).expect("build");
        let ctx = instance.context(tmp.path());
        let mut claim = Claim::new("bench", name, Duration::from_secs(3600));
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        runtime.block_on(async {
            sys.connect().await.expect("connect");
            for rep in 0..REPS {
                // Alternate who goes first, and start each load from a reset and a settled
                // server (PostgreSQL: a checkpoint), so that neither side pays for the other's
                // writes still being flushed.
                for native_turn in [rep % 2 == 1, rep % 2 == 0] {
                    reset(sys.as_mut(), &mut claim).await;
                    let clock = Instant::now();
                    if native_turn {
                        let out = (native.load)(&ctx, &input)
                            .expect("native command")
                            .output()
                            .expect("native tool");
                        theirs.push(clock.elapsed());
                        assert!(
                            out.status.success(),
                            "{}: {}",
                            native.tool,
                            String::from_utf8_lossy(&out.stderr)
                        );
                    } else {
                        sys.bulk_insert(&ds).await.expect("bulk insert");
                        ours.push(clock.elapsed());
                    }
                    assert_eq!(sys.count().await.expect("count"), u64::from(FILES));
                }
            }
            reset(sys.as_mut(), &mut claim).await;
        });
        let (o, t) = (median(&mut ours), median(&mut theirs));
        let mbs = |d: Duration| ds.manifest.logical_bytes as f64 / d.as_secs_f64() / 1e6;
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.2} |",
            native.tool,
            mbs(o),
            mbs(t),
            t.as_secs_f64() / o.as_secs_f64()
        );
    }
}

/// Resets the namespace and waits until the server is settled.
async fn reset(sys: &mut dyn System, claim: &mut Claim) {
    ownership::reset(sys, claim).await.expect("reset");
    sys.settle().await.expect("settle");
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
