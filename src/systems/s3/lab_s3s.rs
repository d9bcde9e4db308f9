//! Lab S3 server `s3s` (kind `s3`): the plain-file server s3s-fs (crates.io, 0.14.x) on
//! 127.0.0.1:13910, serving `s3s/data/`, where each bucket is a directory and each object a
//! file of its own, next to two small JSON files (attributes and checksums) in the root. It
//! stores every copy: the no-dedup S3 baseline beside Garage, measured with the same adapter.
//!
//! s3s-fs's own binary takes its key pair only as arguments, which every user can read in
//! `ps`. The lab therefore runs `dedup-lab-s3s` (`tools/dedup-lab-s3s/`): the same server,
//! built from the s3s-fs library, reading the keys from its environment. The bucket
//! `dedup-lab` is created as a directory, which is what s3s-fs's CreateBucket does.
//!
//! The registry has no system named `s3s` until config instances exist, and a config with an
//! unknown `[systems.s3s]` section is refused: the section goes to a config of its own,
//! `s3s.toml` beside `lab.toml`, as `[systems.minio]`.

use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::Settings;
use crate::lab::process::{CargoTool, Daemon};
use crate::lab::{Lab, Recipe, port_open, read_secret};
use crate::probe;
use crate::systems::toolkit::section_of;

/// Loopback port of the S3 API.
pub const PORT: u16 = 13910;
/// The lab bucket.
pub const BUCKET: &str = "dedup-lab";

/// The lab's plain-file S3 server.
pub struct S3s;

fn daemon(lab: &Lab) -> Daemon {
    Daemon {
        dir: lab.server_dir("s3s"),
        program: "dedup-lab-s3s",
    }
}

/// s3s-fs with its keys from the environment, built from this repository.
const S3S: CargoTool = CargoTool {
    program: "dedup-lab-s3s",
    krate: "dedup-lab-s3s",
    args: &[
        "--path",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tools/dedup-lab-s3s"),
    ],
};

impl Recipe for S3s {
    fn name(&self) -> &'static str {
        "s3s"
    }

    fn packages(&self) -> &'static [&'static str] {
        &[]
    }

    fn installed(&self) -> bool {
        true
    }

    fn cargo_tools(&self) -> &'static [CargoTool] {
        &[S3S]
    }

    fn up(&self, lab: &Lab) -> anyhow::Result<toml::Table> {
        let program = S3S.path()?;
        let d = daemon(lab);
        let root = d.dir.join("data");
        std::fs::create_dir_all(root.join(BUCKET))?;
        let access_key_file = lab.secret("s3s-access-key")?;
        let secret_key_file = lab.secret("s3s-secret-key")?;
        let mut cmd = Command::new(program);
        cmd.args(["--host", "127.0.0.1", "--port", &PORT.to_string()])
            .arg(&root)
            .env("S3S_ACCESS_KEY", read_secret(&access_key_file)?)
            .env("S3S_SECRET_KEY", read_secret(&secret_key_file)?);
        d.start(cmd)?;
        d.wait_ready(Duration::from_secs(30), || port_open(PORT))
            .context("dedup-lab-s3s")?;
        let settings = Settings {
            endpoint: format!("http://127.0.0.1:{PORT}"),
            bucket: BUCKET.into(),
            access_key_file: Some(access_key_file),
            secret_key_file: Some(secret_key_file),
            ..Default::default()
        };
        let mut t = section_of(&[&settings]);
        // The bucket's directory, not the root: the root also holds two JSON files per object
        // name ever written, which DeleteObject leaves behind, so their cost falls on whichever
        // stage first writes a name and not on what the stage stores.
        t.extend([probe::setting(probe::fs::KEY, &[root.join(BUCKET)])]);
        Ok(t)
    }

    fn down(&self, lab: &Lab) -> anyhow::Result<()> {
        daemon(lab).stop(Duration::from_secs(30))
    }

    fn status(&self, lab: &Lab) -> anyhow::Result<String> {
        Ok(format!(
            "{} on 127.0.0.1:{PORT} (s3s-fs)",
            daemon(lab).status()
        ))
    }
}
