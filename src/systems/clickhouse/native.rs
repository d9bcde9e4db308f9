//! ClickHouse's own loader for the benchmarks: `clickhouse-client` inserting a RowBinary file
//! over the lab server's native port.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::lab::TCP_PORT;
use super::target;
use crate::dataset::DataSet;
use crate::systems::{NativeLoader, SystemContext};

/// The loader.
pub const LOADER: NativeLoader = NativeLoader {
    tool: "clickhouse-client RowBinary",
    prepare,
    load,
};

/// RowBinary of (UInt32 id, String name, String content): little-endian id, then each string
/// as a LEB128 length and its bytes.
fn prepare(ds: &DataSet, dir: &Path) -> anyhow::Result<PathBuf> {
    fn string(w: &mut impl std::io::Write, bytes: &[u8]) -> std::io::Result<()> {
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
        let content = ds.read(f)?;
        w.write_all(&f.id.to_le_bytes())?;
        string(&mut w, f.name.as_bytes())?;
        string(&mut w, &content)?;
    }
    w.flush()?;
    Ok(path)
}

/// The credentials go in a mode-0600 client config next to the input, not on the command
/// line. The section names only the HTTP port: the lab's native port is used. The input's
/// rows are those of the default layout (name keys, one table).
fn load(ctx: &SystemContext<'_>, input: &Path) -> anyhow::Result<Command> {
    let t = target(ctx)?;
    anyhow::ensure!(
        t.layout.is_default(),
        "the clickhouse native loader writes rows by name into the one table files: run it on \
         an instance with the default layout"
    );
    let config = input.with_extension("client.xml");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&config)?;
    write!(
        file,
        "<config><host>{}</host><user>{}</user><password>{}</password></config>",
        t.server.host,
        t.server.user.as_deref().unwrap_or_default(),
        t.server
            .password
            .as_ref()
            .map(|p| p.expose())
            .unwrap_or_default()
    )?;
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(
            "exec clickhouse-client --config-file=\"$1\" --port \"$2\" --insert_deduplicate=0 \
             --query \"$3\" < \"$4\"",
        )
        .arg("clickhouse-client")
        .arg(&config)
        .arg(TCP_PORT.to_string())
        .arg(format!(
            "INSERT INTO {}.files FORMAT RowBinary",
            t.namespace
        ))
        .arg(input);
    Ok(c)
}
