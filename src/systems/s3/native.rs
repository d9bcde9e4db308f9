//! S3's own loader for the benchmarks: `rclone copy` into the adapter's key layout.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::S3;
use crate::dataset::DataSet;
use crate::lab::{install_packages, process::on_path};
use crate::systems::{NativeLoader, SystemContext};

/// The loader.
pub const LOADER: NativeLoader = NativeLoader {
    tool: "rclone copy",
    prepare,
    load,
};

/// The data set's files without the manifest (hard links), for rclone to copy as they are.
/// Installs rclone (a Debian package) when it is missing.
fn prepare(ds: &DataSet, dir: &Path) -> anyhow::Result<PathBuf> {
    if !on_path("rclone") {
        install_packages(&["rclone"])?;
    }
    let input = dir.join("s3-input");
    std::fs::create_dir_all(&input)?;
    for f in &ds.manifest.files {
        std::fs::hard_link(ds.path(f), input.join(&f.name))?;
    }
    Ok(input)
}

/// `rclone copy` into `<prefix>/files/<name>`, with as many transfers as the adapter has PUTs
/// in flight, and without the destination checks and per-object HEADs that an empty lab
/// prefix does not need. Its S3 config, keys included, is only in the child's environment.
/// The keys are the files' names in one container: the default layout.
fn load(ctx: &SystemContext<'_>, input: &Path) -> anyhow::Result<Command> {
    let s3 = S3::new(ctx)?;
    anyhow::ensure!(
        s3.layout.is_default(),
        "the s3 native loader copies files by name into one prefix: run it on an instance \
         with the default layout"
    );
    let s = &s3.settings;
    let transfers = s.concurrency.to_string();
    let mut c = Command::new("rclone");
    c.env("RCLONE_CONFIG", "/dev/null")
        // rclone 1.60 refuses to start when AWS_CA_BUNDLE is set and the endpoint is http.
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG_LAB_TYPE", "s3")
        .env("RCLONE_CONFIG_LAB_PROVIDER", "Other")
        .env("RCLONE_CONFIG_LAB_ENV_AUTH", "false")
        .env("RCLONE_CONFIG_LAB_ACCESS_KEY_ID", s3.access_key.expose())
        .env(
            "RCLONE_CONFIG_LAB_SECRET_ACCESS_KEY",
            s3.secret_key.expose(),
        )
        .env("RCLONE_CONFIG_LAB_ENDPOINT", &s.endpoint)
        .env("RCLONE_CONFIG_LAB_REGION", &s.region)
        .env("RCLONE_CONFIG_LAB_FORCE_PATH_STYLE", "true")
        .arg("copy")
        .arg(input)
        .arg(format!(
            "lab:{}/{}",
            s.bucket,
            s3.files_prefix(0).trim_end_matches('/')
        ))
        .args(["--transfers", &transfers, "--checkers", &transfers])
        .args(["--no-check-dest", "--s3-no-check-bucket", "--s3-no-head"]);
    Ok(c)
}
