//! Bulk loaders side by side with each system's native loader, on the same files, in the same
//! run, against the lab servers: `cargo bench --bench loaders` (after `dedup-lab lab up`).
//!
//! For each system with a native loader: generate one data set, write it in the native tool's
//! input format, then alternate three times: reset + dedup-lab `bulk_insert`, reset + native
//! tool. Both loads are checked by counting rows afterwards. The ratio is native time / our
//! time (≥ 1.0: dedup-lab is at least as fast).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dedup_lab::dataset::{DataSet, DataSetSpec, PayloadType, SizeSpec};
use dedup_lab::systems::{self, SystemContext};

const FILES: u32 = 4096;
const FILE_SIZE: u64 = 64 * 1024;
const REPS: usize = 3;

/// A native loader: writes its input once, then loads it.
struct Native {
    system: &'static str,
    tool: &'static str,
    prepare: fn(&DataSet, &Path) -> std::io::Result<PathBuf>,
    load: fn(&toml::Table, &Path) -> Command,
}

const NATIVE: &[Native] = &[
    Native {
        system: "postgres",
        tool: "psql \\copy (FORMAT binary)",
        prepare: pg_copy_file,
        load: psql_copy,
    },
    Native {
        system: "redis",
        tool: "redis-cli --pipe",
        prepare: resp_file,
        load: redis_pipe,
    },
    Native {
        system: "minio",
        tool: "rclone copy",
        prepare: rclone_input,
        load: rclone_copy,
    },
];

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
    for native in NATIVE {
        let Some(section) = doc
            .get("systems")
            .and_then(|s| s.get(native.system))
            .and_then(|s| s.as_table())
        else {
            eprintln!("{}: not in the lab config, skipped", native.system);
            continue;
        };
        let input = (native.prepare)(&ds, tmp.path()).expect("native input");
        let def = systems::lookup(native.system).expect("registered");
        let mut sys = (def.build)(&SystemContext {
            section: Some(section),
            experiment_dir: tmp.path(),
        })
        .expect("build");
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        runtime.block_on(async {
            sys.connect().await.expect("connect");
            for _ in 0..REPS {
                sys.reset().await.expect("reset");
                let clock = Instant::now();
                sys.bulk_insert(&ds).await.expect("bulk insert");
                ours.push(clock.elapsed());
                assert_eq!(sys.count().await.expect("count"), u64::from(FILES));

                sys.reset().await.expect("reset");
                let clock = Instant::now();
                let out = (native.load)(section, &input)
                    .output()
                    .expect("native tool");
                theirs.push(clock.elapsed());
                assert!(
                    out.status.success(),
                    "{}: {}",
                    native.tool,
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(sys.count().await.expect("count"), u64::from(FILES));
            }
            sys.reset().await.expect("reset");
        });
        let (o, t) = (median(&mut ours), median(&mut theirs));
        let mbs = |d: Duration| ds.manifest.logical_bytes as f64 / d.as_secs_f64() / 1e6;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} |",
            native.system,
            native.tool,
            mbs(o),
            mbs(t),
            t.as_secs_f64() / o.as_secs_f64()
        );
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secret(section: &toml::Table) -> String {
    let path = section["password_file"].as_str().expect("password_file");
    std::fs::read_to_string(path)
        .expect("password")
        .trim()
        .to_string()
}

/// PostgreSQL binary COPY format: signature, flags, extension length, rows, trailer.
fn pg_copy_file(ds: &DataSet, dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("files.pgcopy");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    w.write_all(b"PGCOPY\n\xff\r\n\0")?;
    w.write_all(&0i32.to_be_bytes())?;
    w.write_all(&0i32.to_be_bytes())?;
    for f in &ds.manifest.files {
        let content = ds.read(f).map_err(std::io::Error::other)?;
        w.write_all(&3i16.to_be_bytes())?;
        w.write_all(&4i32.to_be_bytes())?;
        w.write_all(&(f.id as i32).to_be_bytes())?;
        w.write_all(&(f.name.len() as i32).to_be_bytes())?;
        w.write_all(f.name.as_bytes())?;
        w.write_all(&(content.len() as i32).to_be_bytes())?;
        w.write_all(&content)?;
    }
    w.write_all(&(-1i16).to_be_bytes())?;
    w.flush()?;
    Ok(path)
}

fn psql_copy(section: &toml::Table, input: &Path) -> Command {
    let schema = section
        .get("schema")
        .and_then(|s| s.as_str())
        .unwrap_or("dedup_lab");
    let mut c = Command::new("psql");
    c.env("PGPASSWORD", secret(section))
        .arg("-X")
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-h")
        .arg(section["host"].as_str().unwrap())
        .arg("-p")
        .arg(section["port"].as_integer().unwrap().to_string())
        .arg("-U")
        .arg(section["user"].as_str().unwrap())
        .arg("-d")
        .arg(section["database"].as_str().unwrap())
        .arg("-c")
        .arg(format!(
            "\\copy {schema}.files (id, name, content) FROM '{}' (FORMAT binary)",
            input.display()
        ));
    c
}

/// SET commands in RESP, as `redis-cli --pipe` reads them.
fn resp_file(ds: &DataSet, dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("files.resp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for f in &ds.manifest.files {
        let content = ds.read(f).map_err(std::io::Error::other)?;
        let key = format!("dedup_lab:files:{}", f.name);
        write!(
            w,
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
            key.len(),
            content.len()
        )?;
        w.write_all(&content)?;
        w.write_all(b"\r\n")?;
    }
    w.flush()?;
    Ok(path)
}

fn redis_pipe(section: &toml::Table, input: &Path) -> Command {
    let db = section.get("db").and_then(|d| d.as_integer()).unwrap_or(15);
    let mut c = Command::new("sh");
    c.env("REDISCLI_AUTH", secret(section))
        .arg("-c")
        .arg("exec redis-cli -h \"$1\" -p \"$2\" -n \"$3\" --pipe < \"$4\"")
        .arg("redis-cli")
        .arg(section["host"].as_str().unwrap())
        .arg(section["port"].as_integer().unwrap().to_string())
        .arg(db.to_string())
        .arg(input);
    c
}

/// The data set's files without the manifest (hard links), for rclone to copy as they are.
/// Installs rclone (a Debian package) when it is missing.
fn rclone_input(ds: &DataSet, dir: &Path) -> std::io::Result<PathBuf> {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("rclone").is_file()));
    if !found {
        let status = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "rclone"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        assert!(status.success(), "apt-get install rclone failed");
    }
    let input = dir.join("s3-input");
    std::fs::create_dir_all(&input)?;
    for f in &ds.manifest.files {
        std::fs::hard_link(ds.path(f), input.join(&f.name))?;
    }
    Ok(input)
}

/// `rclone copy` into the adapter's key layout (`<prefix>/files/<name>`), with as many
/// transfers as the adapter has PUTs in flight, and without the destination checks and
/// per-object HEADs that an empty lab prefix does not need. Its S3 config is only in the
/// child's environment.
fn rclone_copy(section: &toml::Table, input: &Path) -> Command {
    let get = |k: &str, default: &str| {
        section
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or(default)
            .to_string()
    };
    let read = |k: &str| {
        let path = section[k].as_str().expect(k);
        std::fs::read_to_string(path).expect(k).trim().to_string()
    };
    let transfers = section
        .get("concurrency")
        .and_then(|v| v.as_integer())
        .unwrap_or(16)
        .to_string();
    let mut c = Command::new("rclone");
    c.env("RCLONE_CONFIG", "/dev/null")
        // rclone 1.60 refuses to start when AWS_CA_BUNDLE is set and the endpoint is http.
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG_LAB_TYPE", "s3")
        .env("RCLONE_CONFIG_LAB_PROVIDER", "Other")
        .env("RCLONE_CONFIG_LAB_ENV_AUTH", "false")
        .env("RCLONE_CONFIG_LAB_ACCESS_KEY_ID", read("access_key_file"))
        .env(
            "RCLONE_CONFIG_LAB_SECRET_ACCESS_KEY",
            read("secret_key_file"),
        )
        .env("RCLONE_CONFIG_LAB_ENDPOINT", get("endpoint", ""))
        .env("RCLONE_CONFIG_LAB_REGION", get("region", "us-east-1"))
        .env("RCLONE_CONFIG_LAB_FORCE_PATH_STYLE", "true")
        .arg("copy")
        .arg(input)
        .arg(format!(
            "lab:{}/{}/files",
            get("bucket", "dedup-lab"),
            get("prefix", "dedup_lab")
        ))
        .args(["--transfers", &transfers, "--checkers", &transfers])
        .args(["--no-check-dest", "--s3-no-check-bucket", "--s3-no-head"]);
    c
}
