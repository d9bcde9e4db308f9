//! Lab MariaDB: a private instance (`mariadb-install-db` once, then `mariadbd` as a daemon) on
//! 127.0.0.1:13306 with its own socket. Options are given on the command line after
//! `--no-defaults`, so nothing under `/etc/mysql` applies; they hold no secret. The lab user's
//! password reaches the server as SQL on the client's stdin, never in process arguments.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::Settings;
use crate::systems::toolkit::{ServerKeys, lab_section};

use crate::lab::process::{Daemon, on_path};
use crate::lab::{Lab, Recipe, chown_to, is_root, run, run_with_input};

/// Loopback port of the lab server.
pub const PORT: u16 = 13306;
/// Account the lab creates for dedup-lab (`'dedup_lab'@'127.0.0.1'`).
pub const USER: &str = "dedup_lab";
/// OS account the server switches to when the lab runs as root (it refuses to run as root).
const OS_USER: &str = "mysql";

/// The MariaDB lab server.
pub struct MariaDb;

fn daemon(lab: &Lab) -> Daemon {
    Daemon {
        dir: lab.server_dir("mariadb"),
        program: "mariadbd",
    }
}

fn data_dir(lab: &Lab) -> PathBuf {
    lab.server_dir("mariadb").join("data")
}

fn run_dir(lab: &Lab) -> PathBuf {
    lab.server_dir("mariadb").join("run")
}

fn socket(lab: &Lab) -> PathBuf {
    run_dir(lab).join("mariadbd.sock")
}

/// `--user=mysql` when we are root: mariadbd itself drops to that account, so the pid we
/// started stays the server's pid.
fn user_args() -> Vec<OsString> {
    if is_root() {
        vec![format!("--user={OS_USER}").into()]
    } else {
        Vec::new()
    }
}

/// Initialises the data directory once: into a scratch directory renamed into place when
/// complete, so an interrupted install is redone rather than taken for a finished one.
fn install(lab: &Lab) -> anyhow::Result<()> {
    let partial = lab.server_dir("mariadb").join("data.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(&partial)?;
    chown_to(OS_USER, &partial)?;
    let mut datadir = OsString::from("--datadir=");
    datadir.push(&partial);
    run(Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(datadir)
        .args(user_args())
        // root@localhost authenticates by socket peer (the OS user): it needs no password.
        .arg("--auth-root-authentication-method=socket")
        .arg("--skip-test-db"))?;
    std::fs::rename(&partial, data_dir(lab))?;
    Ok(())
}

/// The server command: private paths, loopback only, LOAD DATA LOCAL on, packets up to the
/// maximum (1 GiB) so one file fits in one statement, utf8mb4 (the built-in default is
/// latin1), one tablespace per table (what the native probe reads).
fn server(lab: &Lab) -> Command {
    let opt = |name: &str, value: &std::path::Path| {
        let mut o = OsString::from(format!("--{name}="));
        o.push(value);
        o
    };
    let mut cmd = Command::new("mariadbd");
    cmd.arg("--no-defaults")
        .arg(opt("datadir", &data_dir(lab)))
        .arg(opt("socket", &socket(lab)))
        .arg(opt("pid-file", &run_dir(lab).join("mariadbd.pid")))
        .args(user_args())
        .arg(format!("--port={PORT}"))
        .args([
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--local-infile=1",
            "--max-allowed-packet=1G",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--innodb-file-per-table=1",
        ]);
    cmd
}

/// The client as the server's administrator: the OS user over the socket.
fn admin(lab: &Lab) -> Command {
    let mut cmd = Command::new("mariadb");
    cmd.arg("--no-defaults")
        .arg(format!("--socket={}", socket(lab).display()))
        .arg("--batch");
    cmd
}

/// `value` as a single-quoted SQL string literal.
fn sql_string(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Recipe for MariaDb {
    fn name(&self) -> &'static str {
        "mariadb"
    }

    fn packages(&self) -> &'static [&'static str] {
        &["mariadb-server", "mariadb-client"]
    }

    fn installed(&self) -> bool {
        ["mariadbd", "mariadb-install-db", "mariadb"]
            .iter()
            .all(|p| on_path(p))
    }

    fn up(&self, lab: &Lab) -> anyhow::Result<toml::Table> {
        let d = daemon(lab);
        std::fs::create_dir_all(run_dir(lab))?;
        chown_to(OS_USER, &run_dir(lab))?;
        if !data_dir(lab).join("mysql").is_dir() {
            install(lab).context("mariadb-install-db")?;
        }
        d.start(server(lab))?;
        d.wait_ready(Duration::from_secs(60), || {
            d.pid().is_some() && crate::lab::port_open(PORT) && socket(lab).exists()
        })
        .context("mariadb")?;
        let password_file = lab.secret("mariadb")?;
        let password = std::fs::read_to_string(&password_file)?;
        let account = format!("'{USER}'@'127.0.0.1'");
        // Grants: every privilege on databases named dedup_lab* (`_` is a wildcard in grants,
        // hence `\_`): the adapter creates, fills, optimizes and drops its own databases there,
        // and tests use one per test. PROCESS: to read information_schema.INNODB_SYS_TABLESPACES
        // (the native size). SUPER: to `SET GLOBAL innodb_max_purge_lag_wait`, which wakes
        // InnoDB's purge when settling; it grants no data access. RELOAD: to flush a
        // page-compressed table before it is measured (`FLUSH TABLES … FOR EXPORT`). Nothing
        // else on other databases.
        let sql = format!(
            "CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {pw};\n\
             ALTER USER {account} IDENTIFIED BY {pw};\n\
             GRANT ALL PRIVILEGES ON `dedup\\_lab%`.* TO {account};\n\
             GRANT PROCESS, SUPER, RELOAD ON *.* TO {account};\n",
            pw = sql_string(password.trim_end()),
        );
        run_with_input(&mut admin(lab), sql.as_bytes()).context("creating the lab user")?;
        let keys = ServerKeys {
            port: Some(PORT),
            user: Some(USER.into()),
            password_file: Some(password_file),
            ..Default::default()
        };
        Ok(lab_section(&keys, &Settings::default(), &[data_dir(lab)]))
    }

    fn down(&self, lab: &Lab) -> anyhow::Result<()> {
        // SIGTERM is mariadbd's clean shutdown; a large buffer pool may take a while to flush.
        daemon(lab).stop(Duration::from_secs(120))
    }

    fn status(&self, lab: &Lab) -> anyhow::Result<String> {
        Ok(format!("{} on 127.0.0.1:{PORT}", daemon(lab).status()))
    }
}
