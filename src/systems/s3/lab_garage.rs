//! Lab S3 server `garage` (kind `s3`): Garage, a single node on 127.0.0.1 (S3 on 13900,
//! RPC on 13901, admin API on 13903), installed with `cargo install` when missing.
//!
//! Garage is not MinIO: it cuts objects into 1 MiB blocks and stores each distinct block
//! once (it deduplicates), compresses blocks with zstd level 1 by default (kept: it is what
//! Garage users get), and removes the blocks of deleted objects only after a fixed 600 s
//! delay. Its key, secret, bucket and RPC secret come from generated secret files, passed in
//! the environment of `garage server --single-node --default-bucket`, never in its arguments.

use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::Settings;
use crate::lab::process::{CargoTool, Daemon, on_path};
use crate::lab::{Lab, Recipe, http_ok, read_secret};
use crate::probe;
use crate::systems::toolkit::section_of;

/// Loopback port of the S3 API.
pub const S3_PORT: u16 = 13900;
/// Loopback port of Garage's RPC (it talks to itself).
pub const RPC_PORT: u16 = 13901;
/// Loopback port of Garage's admin API.
pub const ADMIN_PORT: u16 = 13903;
/// The lab bucket.
pub const BUCKET: &str = "dedup-lab";
/// The region Garage signs for.
pub const REGION: &str = "garage";
/// The Garage release the lab installs.
pub const VERSION: &str = "2.5.0";

/// The instance the lab runs Garage as.
pub const NAME: &str = "garage";

/// The lab's deduplicating S3 server (Garage).
pub struct Garage;

fn daemon(lab: &Lab) -> Daemon {
    Daemon {
        dir: lab.server_dir(NAME),
        program: "garage",
    }
}

/// Garage with only the SQLite metadata engine.
const GARAGE: CargoTool = CargoTool {
    program: "garage",
    krate: "garage",
    args: &[
        "--version",
        VERSION,
        "--no-default-features",
        "--features",
        "bundled-libs,sqlite",
    ],
};

impl Recipe for Garage {
    fn name(&self) -> &'static str {
        NAME
    }

    /// rclone: the independent S3 client of the tests and the native loader of the bench.
    /// Garage itself is not a Debian package; `up` installs it with cargo.
    fn packages(&self) -> &'static [&'static str] {
        &["rclone"]
    }

    fn installed(&self) -> bool {
        on_path("rclone")
    }

    fn cargo_tools(&self) -> &'static [CargoTool] {
        &[GARAGE]
    }

    fn up(&self, lab: &Lab) -> anyhow::Result<toml::Table> {
        let garage = GARAGE.path()?;
        let d = daemon(lab);
        let (data, meta) = (d.dir.join("data"), d.dir.join("meta"));
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&meta)?;
        // Garage's own default compression (zstd level 1) stays on: it is what users get.
        let config = d.dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = {}\ndata_dir = {}\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{RPC_PORT}\"\nrpc_public_addr = \"127.0.0.1:{RPC_PORT}\"\n\n\
                 [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{S3_PORT}\"\n\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{ADMIN_PORT}\"\n",
                crate::lab::path_value(&meta),
                crate::lab::path_value(&data)
            ),
        )?;
        let access_key_file = lab.secret("garage-access-key")?;
        let secret_key_file = lab.secret("garage-secret-key")?;
        let admin_token_file = lab.secret("garage-admin-token")?;
        let mut cmd = Command::new(&garage);
        cmd.args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_CONFIG_FILE", &config)
            // Garage wants exactly 32 bytes of hex here.
            .env("GARAGE_RPC_SECRET_FILE", lab.secret_of("garage-rpc", 32)?)
            .env("GARAGE_ADMIN_TOKEN_FILE", &admin_token_file)
            .env("GARAGE_DEFAULT_ACCESS_KEY", read_secret(&access_key_file)?)
            .env("GARAGE_DEFAULT_SECRET_KEY", read_secret(&secret_key_file)?)
            .env("GARAGE_DEFAULT_BUCKET", BUCKET)
            .env("RUST_LOG", "garage=warn");
        d.start(cmd)?;
        d.wait_ready(Duration::from_secs(60), || http_ok(ADMIN_PORT, "/health"))
            .context("garage")?;
        let settings = Settings {
            endpoint: format!("http://127.0.0.1:{S3_PORT}"),
            region: REGION.into(),
            bucket: BUCKET.into(),
            access_key_file: Some(access_key_file),
            secret_key_file: Some(secret_key_file),
            garage_admin: Some(format!("http://127.0.0.1:{ADMIN_PORT}")),
            garage_admin_token_file: Some(admin_token_file),
            ..Default::default()
        };
        let mut t = section_of(&[&settings]);
        // Both directories: blocks live in data/, and objects under 3 KiB live only in the
        // metadata database (which also grows with every object).
        t.extend([probe::setting(probe::fs::KEY, &[data, meta])]);
        Ok(t)
    }

    fn down(&self, lab: &Lab) -> anyhow::Result<()> {
        daemon(lab).stop(Duration::from_secs(30))
    }

    fn status(&self, lab: &Lab) -> anyhow::Result<String> {
        Ok(format!(
            "{} on 127.0.0.1:{S3_PORT} (Garage)",
            daemon(lab).status()
        ))
    }
}
