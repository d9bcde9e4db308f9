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
use dedup_lab::systems;

const FILES: u32 = 4096;
const FILE_SIZE: u64 = 64 * 1024;
const REPS: usize = 5;

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
        system: "mariadb",
        tool: "mariadb LOAD DATA LOCAL INFILE",
        prepare: escaped_tsv_file,
        load: mariadb_load,
    },
    Native {
        system: "redis",
        tool: "redis-cli --pipe",
        prepare: resp_file,
        load: redis_pipe,
    },
    Native {
        system: "kafka",
        tool: "confluent-kafka Producer (librdkafka)",
        prepare: kafka_file_list,
        load: kafka_produce,
    },
    Native {
        system: "clickhouse",
        tool: "clickhouse-client RowBinary",
        prepare: rowbinary_file,
        load: clickhouse_client,
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
    // `cargo bench --bench loaders -- postgres redis` runs only the systems named.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for native in NATIVE {
        if !only.is_empty() && !only.iter().any(|s| s == native.system) {
            continue;
        }
        let Some(section) = doc
            .get("systems")
            .and_then(|s| s.get(native.system))
            .and_then(|s| s.as_table())
        else {
            eprintln!("{}: not in the lab config, skipped", native.system);
            continue;
        };
        let input = (native.prepare)(&ds, tmp.path()).expect("native input");
        let mut sys =
            systems::build_from_section(native.system, section, tmp.path()).expect("build");
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        runtime.block_on(async {
            sys.connect().await.expect("connect");
            for rep in 0..REPS {
                // Alternate who goes first, and start each load from a reset and a settled
                // server (PostgreSQL: a checkpoint), so that neither side pays for the other's
                // writes still being flushed.
                for native_turn in [rep % 2 == 1, rep % 2 == 0] {
                    sys.reset().await.expect("reset");
                    sys.settle().await.expect("settle");
                    let clock = Instant::now();
                    if native_turn {
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
                    } else {
                        sys.bulk_insert(&ds).await.expect("bulk insert");
                        ours.push(clock.elapsed());
                    }
                    assert_eq!(sys.count().await.expect("count"), u64::from(FILES));
                }
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

/// The rows in PostgreSQL's binary COPY format, encoded as dedup-lab's bulk path sends them.
fn pg_copy_file(ds: &DataSet, dir: &Path) -> std::io::Result<PathBuf> {
    use dedup_lab::systems::postgres::{COPY_SIGNATURE, COPY_TRAILER, copy_row_header};
    let path = dir.join("files.pgcopy");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    w.write_all(COPY_SIGNATURE)?;
    for f in &ds.manifest.files {
        let content = ds.read(f).map_err(std::io::Error::other)?;
        w.write_all(&copy_row_header(f.id, &f.name, content.len()))?;
        w.write_all(&content)?;
    }
    w.write_all(COPY_TRAILER)?;
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

/// Tab-separated rows for LOAD DATA: `\\`, TAB and LF escaped with a backslash, so any bytes
/// round-trip (the format dedup-lab streams, written here independently).
fn escaped_tsv_file(ds: &DataSet, dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("files.tsv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut escaped = Vec::new();
    for f in &ds.manifest.files {
        let content = ds.read(f).map_err(std::io::Error::other)?;
        escaped.clear();
        for &b in content.iter() {
            match b {
                b'\\' => escaped.extend_from_slice(b"\\\\"),
                b'\t' => escaped.extend_from_slice(b"\\t"),
                b'\n' => escaped.extend_from_slice(b"\\n"),
                _ => escaped.push(b),
            }
        }
        write!(w, "{}\t{}\t", f.id, f.name)?;
        w.write_all(&escaped)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(path)
}

fn mariadb_load(section: &toml::Table, input: &Path) -> Command {
    let database = section
        .get("database")
        .and_then(|s| s.as_str())
        .unwrap_or("dedup_lab");
    let mut c = Command::new("mariadb");
    c.env("MYSQL_PWD", secret(section))
        .arg("--no-defaults")
        .arg("--local-infile=1")
        .arg("-h")
        .arg(section["host"].as_str().unwrap())
        .arg("-P")
        .arg(section["port"].as_integer().unwrap().to_string())
        .arg("-u")
        .arg(section["user"].as_str().unwrap())
        .arg("-e")
        .arg(format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE {database}.files CHARACTER SET binary \
             FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' \
             (id, name, content)",
            input.display()
        ));
    c
}

/// A Python venv with the confluent-kafka wheel (it bundles its own librdkafka), made once.
fn kafka_venv() -> std::io::Result<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        if !ok(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            || !ok(Command::new(venv.join("bin/pip")).args(["install", "-q", "confluent-kafka"]))
        {
            let _ = std::fs::remove_dir_all(&venv);
            return Err(std::io::Error::other(
                "cannot make target/bench-venv with confluent-kafka: needs python3 with venv \
                 (Debian: apt-get install python3-venv) and access to PyPI",
            ));
        }
    }
    Ok(python)
}

/// Name and path of every file, tab-separated, for the Python producer to read.
fn kafka_file_list(ds: &DataSet, dir: &Path) -> std::io::Result<PathBuf> {
    kafka_venv()?;
    let path = dir.join("files.tsv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for f in &ds.manifest.files {
        writeln!(w, "{}\t{}", f.name, ds.path(f).display())?;
    }
    w.flush()?;
    Ok(path)
}

/// Produces every file (key = name) into the topic the adapter's reset just made, with the
/// adapter's producer settings: acks=all, no resends, linger, batch size, compression.
const KAFKA_PRODUCE: &str = r#"
import sys
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
bootstrap, prefix, linger, batch, compression, max_bytes, listing = sys.argv[1:]
names = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
topic = max(t for t in names if t.startswith(prefix + "-") and t[len(prefix) + 1:].isdigit())
p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
              "message.send.max.retries": 0, "linger.ms": int(linger), "batch.size": int(batch),
              "compression.type": compression, "message.max.bytes": int(max_bytes)})
errors = []
def report(err, msg):
    if err is not None:
        errors.append(err)
for line in open(listing):
    name, path = line.rstrip("\n").split("\t")
    with open(path, "rb") as f:
        value = f.read()
    while True:
        try:
            p.produce(topic, value, name, on_delivery=report)
            break
        except BufferError:
            p.poll(0.1)
    p.poll(0)
left = p.flush(120)
if left or errors:
    sys.exit(f"{left} undelivered, errors: {errors[:3]}")
"#;

fn kafka_produce(section: &toml::Table, input: &Path) -> Command {
    // The adapter's defaults where the section sets nothing.
    let get = |key: &str, default: &str| {
        section.get(key).map_or(default.to_string(), |v| match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let max_bytes: u64 = get("max_message_bytes", "4194304").parse().unwrap();
    let mut c = Command::new(kafka_venv().expect("venv"));
    c.arg("-c")
        .arg(KAFKA_PRODUCE)
        .arg(get("bootstrap", "127.0.0.1:9092"))
        .arg(get("prefix", "dedup_lab"))
        .arg(get("linger_ms", "5"))
        .arg(get("batch_bytes", "1048576"))
        .arg(get("compression", "none"))
        // The adapter allows 64 KiB of batch framing above the largest record.
        .arg((max_bytes + (64 << 10)).to_string())
        .arg(input);
    c
}

/// RowBinary of (UInt32 id, String name, String content): little-endian id, then each string
/// as a LEB128 length and its bytes.
fn rowbinary_file(ds: &DataSet, dir: &Path) -> std::io::Result<PathBuf> {
    fn string(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
        let mut n = bytes.len() as u64;
        while n >= 0x80 {
            w.write_all(&[(n as u8) | 0x80])?;
            n >>= 7;
        }
        w.write_all(&[n as u8])?;
        w.write_all(bytes)
    }
    let path = dir.join("files.rowbinary");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for f in &ds.manifest.files {
        let content = ds.read(f).map_err(std::io::Error::other)?;
        w.write_all(&f.id.to_le_bytes())?;
        string(&mut w, f.name.as_bytes())?;
        string(&mut w, &content)?;
    }
    w.flush()?;
    Ok(path)
}

/// clickhouse-client over the lab server's native port (the config section names only the
/// HTTP port); the credentials go in a mode-0600 client config, not on the command line.
fn clickhouse_client(section: &toml::Table, input: &Path) -> Command {
    use std::os::unix::fs::OpenOptionsExt;
    let database = section
        .get("database")
        .and_then(|d| d.as_str())
        .unwrap_or("dedup_lab");
    let config = input.with_extension("client.xml");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&config)
        .expect("client config");
    write!(
        file,
        "<config><host>{}</host><user>{}</user><password>{}</password></config>",
        section["host"].as_str().unwrap(),
        section["user"].as_str().unwrap(),
        secret(section)
    )
    .expect("client config");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(
            "exec clickhouse-client --config-file=\"$1\" --port 19000 --insert_deduplicate=0 \
             --query \"$2\" < \"$3\"",
        )
        .arg("clickhouse-client")
        .arg(&config)
        .arg(format!("INSERT INTO {database}.files FORMAT RowBinary"))
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
