//! Lab PostgreSQL: a private cluster (initdb) on 127.0.0.1:55432 with SCRAM passwords.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::lab::{Lab, Recipe, as_user, chown_to, port_open, run};
use crate::systems::pgwire::Settings;
use crate::systems::toolkit::{ServerKeys, lab_section};

/// Loopback port of the lab server.
pub const PORT: u16 = 55432;
/// Role the lab creates (the cluster's bootstrap superuser).
pub const USER: &str = "dedup_lab";
const OS_USER: &str = "postgres";

/// The PostgreSQL lab server.
pub struct Postgres;

/// The newest installed server's `bin` directory.
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

fn bin() -> anyhow::Result<PathBuf> {
    bin_dir().context("PostgreSQL server programs not found under /usr/lib/postgresql")
}

fn data_dir(lab: &Lab) -> PathBuf {
    lab.server_dir("postgres").join("data")
}

/// The lab server's certificate, trusted through `ca_file` (clients connect with TLS).
fn ca_file(lab: &Lab) -> PathBuf {
    lab.server_dir("postgres").join("ca.crt")
}

fn pg_ctl(lab: &Lab, args: &[&str]) -> anyhow::Result<Command> {
    let mut c = as_user(OS_USER, &bin()?.join("pg_ctl"));
    c.arg("-D").arg(data_dir(lab)).args(args);
    Ok(c)
}

fn running(lab: &Lab) -> bool {
    data_dir(lab).join("PG_VERSION").exists()
        && pg_ctl(lab, &["status"])
            .and_then(|mut c| Ok(c.output()?.status.success()))
            .unwrap_or(false)
}

fn init(lab: &Lab, root: &Path, password_file: &Path) -> anyhow::Result<()> {
    let data = data_dir(lab);
    let run_dir = root.join("run");
    std::fs::create_dir_all(&run_dir)?;
    // initdb reads the password from a file the server user can read; it is removed after.
    let pwfile = root.join("initdb.pw");
    std::fs::copy(password_file, &pwfile)?;
    chown_to(OS_USER, root)?;
    let result = run(as_user(OS_USER, &bin()?.join("initdb"))
        .arg("-D")
        .arg(&data)
        .arg("-U")
        .arg(USER)
        .arg(format!("--pwfile={}", pwfile.display()))
        .arg("--auth=scram-sha-256")
        .arg("-E")
        .arg("UTF8"));
    let _ = std::fs::remove_file(&pwfile);
    result?;
    // A lab CA and a server certificate for 127.0.0.1 signed by it, so that TLS with full
    // verification is what the tests exercise; clients trust ca.crt. The CA key is removed.
    let ca_key = root.join("ca.key");
    let openssl = |args: &[&str]| {
        let mut c = as_user(OS_USER, Path::new("openssl"));
        c.arg("req")
            .args(["-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650"]);
        c.args(args);
        run(&mut c)
    };
    openssl(&[
        "-subj",
        "/CN=dedup-lab lab CA",
        "-keyout",
        &ca_key.to_string_lossy(),
        "-out",
        &ca_file(lab).to_string_lossy(),
    ])?;
    openssl(&[
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-CA",
        &ca_file(lab).to_string_lossy(),
        "-CAkey",
        &ca_key.to_string_lossy(),
        "-keyout",
        &data.join("server.key").to_string_lossy(),
        "-out",
        &data.join("server.crt").to_string_lossy(),
    ])?;
    std::fs::remove_file(&ca_key)?;
    let conf = format!(
        "\n# dedup-lab lab settings\nport = {PORT}\nlisten_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{}'\nssl = on\n",
        run_dir.display()
    );
    let path = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(&conf);
    std::fs::write(&path, text)?;
    Ok(())
}

impl Recipe for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn packages(&self) -> &'static [&'static str] {
        &["postgresql", "postgresql-client", "openssl"]
    }

    fn installed(&self) -> bool {
        bin_dir().is_some() && crate::lab::process::on_path("openssl")
    }

    fn up(&self, lab: &Lab) -> anyhow::Result<toml::Table> {
        let root = lab.server_dir("postgres");
        let password_file = lab.secret("postgres")?;
        if !data_dir(lab).join("PG_VERSION").exists() {
            std::fs::create_dir_all(&root)?;
            init(lab, &root, &password_file)?;
        }
        if !running(lab) {
            let log = root.join("postgres.log");
            run(pg_ctl(lab, &["-w", "-t", "60", "-l"])?
                .arg(&log)
                .arg("start"))
            .with_context(|| format!("see {}", log.display()))?;
        }
        if !port_open(PORT) {
            bail!("postgres runs but 127.0.0.1:{PORT} does not accept connections");
        }
        let keys = ServerKeys {
            port: Some(PORT),
            user: Some(USER.into()),
            password_file: Some(password_file),
            ..Default::default()
        };
        let settings = Settings {
            database: Some("postgres".into()),
            tls: true,
            ca_file: Some(ca_file(lab)),
            ..Default::default()
        };
        Ok(lab_section(&keys, &settings, &[data_dir(lab)]))
    }

    fn down(&self, lab: &Lab) -> anyhow::Result<()> {
        if running(lab) {
            run(&mut pg_ctl(lab, &["-m", "fast", "-w", "stop"])?)?;
        }
        Ok(())
    }

    fn status(&self, lab: &Lab) -> anyhow::Result<String> {
        Ok(if running(lab) {
            format!("running on 127.0.0.1:{PORT} ({})", data_dir(lab).display())
        } else {
            "stopped".into()
        })
    }
}
