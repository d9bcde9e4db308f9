//! Kafka's own loader for the benchmarks: librdkafka through Python's `confluent-kafka` wheel
//! (it bundles a current librdkafka), producing every file with the adapter's producer
//! settings into the topic the adapter's reset just made.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::FRAMING;
use super::settings::parse_section;
use crate::dataset::DataSet;
use crate::systems::{NativeLoader, SystemContext};

/// The loader.
pub const LOADER: NativeLoader = NativeLoader {
    tool: "confluent-kafka Producer (librdkafka)",
    prepare,
    load,
};

/// A Python venv with the confluent-kafka wheel, made once under `target/`.
fn venv() -> anyhow::Result<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        if !ok(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            || !ok(Command::new(venv.join("bin/pip")).args(["install", "-q", "confluent-kafka"]))
        {
            let _ = std::fs::remove_dir_all(&venv);
            anyhow::bail!(
                "cannot make target/bench-venv with confluent-kafka: needs python3 with venv \
                 (Debian: apt-get install python3-venv) and access to PyPI"
            );
        }
    }
    Ok(python)
}

/// Name and path of every file, tab-separated, for the Python producer to read.
fn prepare(ds: &DataSet, dir: &Path) -> anyhow::Result<PathBuf> {
    venv()?;
    let path = dir.join("files.tsv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for f in &ds.manifest.files {
        writeln!(w, "{}\t{}", f.name, ds.path(f).display())?;
    }
    w.flush()?;
    Ok(path)
}

/// Produces every file (key = name) into the newest topic under the prefix, with the
/// adapter's producer settings: acks=all, no resends, linger, batch size, compression.
const PRODUCE: &str = r#"
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

fn load(ctx: &SystemContext<'_>, input: &Path) -> anyhow::Result<Command> {
    let (s, prefix) = parse_section(ctx)?;
    if !ctx.layout.is_default() {
        crate::bail_usage!(
            "config [systems.{}]: the native Kafka loader writes every file under its name into \
             one topic; compare loaders with the default layout (keys = \"name\", containers = \
             1)",
            ctx.instance
        );
    }
    let mut c = Command::new(venv()?);
    c.arg("-c")
        .arg(PRODUCE)
        .arg(&s.bootstrap)
        .arg(prefix)
        .arg(s.linger_ms.to_string())
        .arg(s.batch_bytes.to_string())
        .arg(s.compression.name())
        .arg((s.max_message_bytes + FRAMING).to_string())
        .arg(input);
    Ok(c)
}
