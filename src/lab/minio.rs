//! Lab S3 server for the `minio` system: Garage, a single node on 127.0.0.1 (S3 on 13900,
//! RPC on 13901, admin API on 13903), installed with `cargo install` when missing.
//!
//! Garage is not MinIO: it cuts objects into 1 MiB blocks and stores each distinct block
//! once (it deduplicates), compresses blocks with zstd level 1 by default (kept: it is what
//! Garage users get), and removes the blocks of deleted objects only after a fixed 600 s
//! delay. Its key, secret, bucket and RPC secret come from generated secret files, passed in
//! the environment of `garage server --single-node --default-bucket`, never in its arguments.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::process::{CargoTool, Daemon, on_path};
use super::{Lab, Server};

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

/// The lab's S3 server (Garage).
pub struct Garage;

fn daemon(lab: &Lab) -> Daemon {
    Daemon {
        dir: lab.server_dir("minio"),
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

/// Whether Garage's admin API answers `/health` with 200 (it does once the layout, key and
/// bucket are set up).
fn healthy() -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 12];
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .and_then(|()| s.read_exact(&mut head))
        .is_ok_and(|()| head.ends_with(b" 200"))
}

fn read_secret(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

impl Server for Garage {
    fn name(&self) -> &'static str {
        "minio"
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
                super::path_value(&meta),
                super::path_value(&data)
            ),
        )?;
        let access_key_file = lab.secret("minio-access-key")?;
        let secret_key_file = lab.secret("minio-secret-key")?;
        let admin_token_file = lab.secret("minio-admin-token")?;
        let mut cmd = Command::new(&garage);
        cmd.args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_CONFIG_FILE", &config)
            // Garage wants exactly 32 bytes of hex here.
            .env("GARAGE_RPC_SECRET_FILE", lab.secret_of("minio-rpc", 32)?)
            .env("GARAGE_ADMIN_TOKEN_FILE", &admin_token_file)
            .env("GARAGE_DEFAULT_ACCESS_KEY", read_secret(&access_key_file)?)
            .env("GARAGE_DEFAULT_SECRET_KEY", read_secret(&secret_key_file)?)
            .env("GARAGE_DEFAULT_BUCKET", BUCKET)
            .env("RUST_LOG", "garage=warn");
        d.start(cmd)?;
        d.wait_ready(Duration::from_secs(60), healthy)
            .context("garage")?;
        let mut t = toml::Table::new();
        t.insert(
            "endpoint".into(),
            format!("http://127.0.0.1:{S3_PORT}").into(),
        );
        t.insert("region".into(), REGION.into());
        t.insert("bucket".into(), BUCKET.into());
        t.insert(
            "access_key_file".into(),
            super::path_value(&access_key_file),
        );
        t.insert(
            "secret_key_file".into(),
            super::path_value(&secret_key_file),
        );
        t.insert(
            "garage_admin".into(),
            format!("http://127.0.0.1:{ADMIN_PORT}").into(),
        );
        t.insert(
            "garage_admin_token_file".into(),
            super::path_value(&admin_token_file),
        );
        // Both directories: blocks live in data/, and objects under 3 KiB live only in the
        // metadata database (which also grows with every object).
        t.insert(
            "fs_probe".into(),
            toml::Value::Array(vec![super::path_value(&data), super::path_value(&meta)]),
        );
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
