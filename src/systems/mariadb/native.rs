//! MariaDB's own loader for the benchmarks: `mariadb --local-infile=1 -e "LOAD DATA LOCAL
//! INFILE …"` of a tab-separated file, escaped as the bulk path streams it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{DEF, DEFAULTS, Settings, escape_into};
use crate::dataset::DataSet;
use crate::systems::toolkit::Target;
use crate::systems::{NativeLoader, SystemContext};

/// The loader.
pub const LOADER: NativeLoader = NativeLoader {
    tool: "mariadb LOAD DATA LOCAL INFILE",
    prepare,
    load,
};

fn prepare(ds: &DataSet, dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("files.tsv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut row = Vec::new();
    for f in &ds.manifest.files {
        let content = ds.read(f)?;
        row.clear();
        row.extend_from_slice(format!("{}\t{}\t", f.id, f.name).as_bytes());
        escape_into(&mut row, &content);
        row.push(b'\n');
        w.write_all(&row)?;
    }
    w.flush()?;
    Ok(path)
}

fn load(ctx: &SystemContext<'_>, input: &Path) -> anyhow::Result<Command> {
    let t: Target<Settings> = Target::of(ctx, DEF.kind, DEFAULTS)?;
    let mut c = Command::new("mariadb");
    if let Some(pw) = &t.server.password {
        c.env("MYSQL_PWD", pw.expose());
    }
    c.args(["--no-defaults", "--local-infile=1", "-h", &t.server.host])
        .args(["-P", &t.server.port.to_string()])
        .args(["-u", t.server.user.as_deref().unwrap_or_default(), "-e"])
        .arg(format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE {}.files CHARACTER SET binary \
             FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' \
             (id, name, content)",
            input.display(),
            t.namespace
        ));
    Ok(c)
}
