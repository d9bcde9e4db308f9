//! Redis's own loader for the benchmarks: `redis-cli --pipe` of SET commands in RESP.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{key, target};
use crate::dataset::DataSet;
use crate::model::Layout;
use crate::systems::{NativeLoader, SystemContext};

/// The loader.
pub const LOADER: NativeLoader = NativeLoader {
    tool: "redis-cli --pipe",
    prepare,
    load,
};

/// The file holds SETs for keys under `dedup_lab`, the prefix of an instance named `redis`,
/// in the default layout (the file is written before the instance is known); [`load`]
/// refuses any other prefix or layout.
const PREFIX: &str = "dedup_lab";

fn prepare(ds: &DataSet, dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("files.resp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for f in &ds.manifest.files {
        let content = ds.read(f)?;
        let key = key(PREFIX, &Layout::default(), f);
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

fn load(ctx: &SystemContext<'_>, input: &Path) -> anyhow::Result<Command> {
    let t = target(ctx)?;
    anyhow::ensure!(
        t.namespace == PREFIX && t.layout.is_default(),
        "the redis native loader writes keys under {PREFIX}, by name in one container: run it \
         on an instance with that prefix and the default layout"
    );
    let mut c = Command::new("sh");
    if let Some(pw) = &t.server.password {
        c.env("REDISCLI_AUTH", pw.expose());
    }
    c.arg("-c")
        .arg("exec redis-cli -h \"$1\" -p \"$2\" -n \"$3\" --pipe < \"$4\"")
        .arg("redis-cli")
        .arg(&t.server.host)
        .arg(t.server.port.to_string())
        .arg(t.settings.db.to_string())
        .arg(input);
    Ok(c)
}
