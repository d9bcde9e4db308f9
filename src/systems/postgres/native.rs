//! PostgreSQL's own loader for the benchmarks: `psql \copy … (FORMAT binary)` of a file in
//! the binary COPY format, encoded as the bulk path sends it, into the default layout's one
//! table.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{COPY_SIGNATURE, COPY_TRAILER, Postgres, copy_row_header};
use crate::dataset::DataSet;
use crate::model::Layout;
use crate::systems::pgwire::{database, target};
use crate::systems::{NativeLoader, SystemContext};

/// The loader.
pub const LOADER: NativeLoader = NativeLoader {
    tool: "psql \\copy (FORMAT binary)",
    prepare,
    load,
};

fn prepare(ds: &DataSet, dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("files.pgcopy");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    w.write_all(COPY_SIGNATURE)?;
    for f in &ds.manifest.files {
        let content = ds.read(f)?;
        w.write_all(&copy_row_header(&Layout::default(), f, content.len()))?;
        w.write_all(&content)?;
    }
    w.write_all(COPY_TRAILER)?;
    w.flush()?;
    Ok(path)
}

fn load(ctx: &SystemContext<'_>, input: &Path) -> anyhow::Result<Command> {
    let t = target::<Postgres>(ctx)?;
    let database = database::<Postgres>(&t.settings);
    let mut c = Command::new("psql");
    if let Some(pw) = &t.server.password {
        c.env("PGPASSWORD", pw.expose());
    }
    c.args(["-X", "-v", "ON_ERROR_STOP=1", "-h", &t.server.host])
        .args(["-p", &t.server.port.to_string()])
        .args(["-U", t.server.user.as_deref().unwrap_or_default()])
        .args(["-d", &database, "-c"])
        .arg(format!(
            "\\copy {}.files (id, name, content) FROM '{}' (FORMAT binary)",
            t.namespace,
            input.display()
        ));
    Ok(c)
}
