//! The local lab: private server instances on loopback for tests and local experiments.
//!
//! `lab up` installs what is missing (Debian packages, crates.io programs), starts every server
//! in its own directory under the lab directory on non-standard ports, and writes `lab.toml`,
//! a config that `dedup-lab run --config` uses. Passwords are generated into `secrets/` (mode
//! 0600) and referenced by path. `lab down` stops exactly what `up` started; `lab wipe` also
//! deletes their data. Each server is a [`Recipe`] that lives with its system (in
//! `systems/<kind>/lab.rs`) and is registered with it; this module runs them and offers what
//! they share.
//!
//! With `--storage btrfs` or `btrfs-zstd`, each selected server's directory (an embedded
//! system's too: its [`Embedded`] recipe runs nothing but puts its files there) is its own
//! btrfs file system in a loop image ([`storage`]), mounted before the server starts and
//! unmounted after it stops.

pub mod dedupe;
pub mod process;
pub mod prometheus;
pub mod storage;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::bail_usage;
use crate::error::usage;
use storage::Choice;

/// A server the lab can run for one system kind.
pub trait Recipe: Sync {
    /// The instance it serves: its `[systems.<name>]` section in `lab.toml` and its directory
    /// under the lab directory.
    fn name(&self) -> &'static str;
    /// Debian packages that provide it.
    fn packages(&self) -> &'static [&'static str];
    /// Whether its Debian packages are installed.
    fn installed(&self) -> bool;
    /// Programs it needs that come from crates.io rather than Debian.
    fn cargo_tools(&self) -> &'static [process::CargoTool] {
        &[]
    }
    /// Starts it if it is not running (idempotent) and returns its instance's config section
    /// (without `kind`, which the lab adds).
    fn up(&self, lab: &Lab) -> anyhow::Result<toml::Table>;
    /// Stops it if it runs.
    fn down(&self, lab: &Lab) -> anyhow::Result<()>;
    /// Whether it runs, with details.
    fn status(&self, lab: &Lab) -> anyhow::Result<String>;
}

/// The lab's recipe for an embedded system: no server runs; its files go in its directory under
/// the lab (on the lab's storage), and its section says where.
pub struct Embedded {
    /// The instance.
    pub name: &'static str,
    /// The instance's section for a directory.
    pub section: fn(&Path) -> toml::Table,
}

impl Recipe for Embedded {
    fn name(&self) -> &'static str {
        self.name
    }

    fn packages(&self) -> &'static [&'static str] {
        &[]
    }

    fn installed(&self) -> bool {
        true
    }

    fn up(&self, lab: &Lab) -> anyhow::Result<toml::Table> {
        let dir = lab.server_dir(self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok((self.section)(&dir))
    }

    fn down(&self, _: &Lab) -> anyhow::Result<()> {
        Ok(())
    }

    fn status(&self, lab: &Lab) -> anyhow::Result<String> {
        Ok(format!(
            "embedded (no server): files in {}",
            lab.server_dir(self.name).display()
        ))
    }
}

/// A lab server with the kind of system it serves.
#[derive(Clone, Copy)]
pub struct Server {
    /// The system kind (`kind = "…"` in its section when the instance is named otherwise).
    pub kind: &'static str,
    /// How to run it.
    pub recipe: &'static dyn Recipe,
}

/// A lab directory, the servers selected in it, and its storage.
pub struct Lab {
    dir: PathBuf,
    /// Every server the lab knows, selected or not.
    all: Vec<Server>,
    servers: Vec<Server>,
    storage: storage::Choice,
}

/// Name of the generated config inside the lab directory.
pub const CONFIG: &str = "lab.toml";

impl Lab {
    /// Selects servers among `all` (in start order) by instance name (all when `None`). The
    /// storage is what the lab last chose.
    pub fn new(dir: &Path, all: &[Server], names: Option<&[String]>) -> anyhow::Result<Lab> {
        let servers = match names {
            None => all.to_vec(),
            Some(names) => names
                .iter()
                .map(|n| {
                    all.iter()
                        .copied()
                        .find(|s| s.recipe.name() == n)
                        .ok_or_else(|| {
                            usage(format!(
                                "the lab has no server '{n}'; lab servers: {}",
                                all.iter()
                                    .map(|s| s.recipe.name())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))
                        })
                })
                .collect::<anyhow::Result<_>>()?,
        };
        std::fs::create_dir_all(dir).map_err(|e| {
            usage(format!(
                "cannot create lab directory {}: {e}",
                dir.display()
            ))
        })?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let storage = storage::Choice::remembered(&dir)?;
        Ok(Lab {
            dir,
            all: all.to_vec(),
            servers,
            storage,
        })
    }

    /// Asks for storage `kind` (default: what the lab has) and images of `image_size` bytes
    /// (default: the lab's). Another kind than the lab's while servers' data or images exist
    /// is refused: their data would be hidden or left behind.
    pub fn with_storage(
        mut self,
        kind: Option<storage::Kind>,
        image_size: Option<u64>,
    ) -> anyhow::Result<Lab> {
        let kind = kind.unwrap_or(self.storage.kind);
        if kind != self.storage.kind
            && let Some(data) = self.data_present()?
        {
            bail_usage!(
                "the lab in {} has {} storage and data in {}; it cannot switch to {kind} with \
                 data present: run `dedup-lab lab wipe` first (it deletes the lab servers' \
                 data), or keep --storage {}",
                self.dir.display(),
                self.storage.kind,
                data.display(),
                self.storage.kind
            );
        }
        self.storage = storage::Choice {
            kind,
            image_size: image_size.unwrap_or(self.storage.image_size),
        };
        Ok(self)
    }

    /// The first lab image or non-empty server directory, of any server.
    fn data_present(&self) -> anyhow::Result<Option<PathBuf>> {
        let names = self
            .all
            .iter()
            .map(|s| s.recipe.name())
            .chain([storage::IMAGES]);
        for name in names {
            let dir = self.dir.join(name);
            match std::fs::read_dir(&dir) {
                Ok(mut entries) => {
                    if let Some(entry) = entries.next() {
                        return Ok(Some(entry?.path()));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
            }
        }
        Ok(None)
    }

    /// The directories under the lab that get storage of their own: the selected servers'.
    fn storage_names(&self) -> Vec<&'static str> {
        self.servers.iter().map(|s| s.recipe.name()).collect()
    }

    /// A server's own directory.
    pub fn server_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Checks and remembers the storage choice, installs missing packages, mounts each
    /// selected directory's storage and starts its server, writes and returns `lab.toml`.
    pub async fn up(&self) -> anyhow::Result<PathBuf> {
        let names = self.storage_names();
        let Choice { kind, image_size } = self.storage;
        storage::preflight(kind, &self.dir, &names, image_size)?;
        self.storage.remember(&self.dir)?;
        let missing: Vec<&str> = self
            .servers
            .iter()
            .filter(|s| !s.recipe.installed())
            .flat_map(|s| s.recipe.packages().iter().copied())
            .collect();
        if !missing.is_empty() {
            install_packages(&missing)?;
        }
        // crates.io programs build side by side: each build has long single-threaded phases.
        let tools: Vec<&process::CargoTool> = self
            .servers
            .iter()
            .flat_map(|s| s.recipe.cargo_tools())
            .filter(|t| t.find().is_none())
            .collect();
        std::thread::scope(|scope| {
            let builds: Vec<_> = tools
                .iter()
                .map(|t| scope.spawn(move || t.install()))
                .collect();
            builds
                .into_iter()
                .try_for_each(|b| b.join().expect("install thread").map(drop))
        })?;
        // Merge into an existing lab.toml so `lab up --systems x` keeps the other sections.
        let path = self.dir.join(CONFIG);
        let mut doc: toml::Table = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{} is not valid TOML; delete it", path.display()))?,
            Err(_) => toml::Table::new(),
        };
        let mut experiment = toml::Table::new();
        experiment.insert("systems".into(), toml::Value::Array(vec!["all".into()]));
        doc.insert("experiment".into(), toml::Value::Table(experiment));
        let mut systems = match doc.remove("systems") {
            Some(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        for s in &self.servers {
            let name = s.recipe.name();
            storage::ensure(kind, &self.dir, name, image_size)?;
            let mut section = s
                .recipe
                .up(self)
                .with_context(|| format!("lab: starting {name}"))?;
            if name != s.kind {
                section.insert("kind".into(), s.kind.into());
            }
            if kind != storage::Kind::Plain {
                // The storage probe reads what the fs probe reads (the data directories), or
                // the whole instance directory, which is its own file system.
                let data = section
                    .get(crate::probe::fs::KEY)
                    .cloned()
                    .unwrap_or_else(|| vec![path_value(&self.server_dir(name))].into());
                section.insert(crate::probe::storage::KEY.into(), data);
            }
            systems.insert(name.into(), toml::Value::Table(section));
        }
        doc.insert("systems".into(), toml::Value::Table(systems));
        let text = format!(
            "# Written by `dedup-lab lab up`: local servers on loopback. Secrets are referenced\n\
             # by file, never written here.\n{}",
            toml::to_string_pretty(&doc)?
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Stops every selected server (in reverse start order), then unmounts the selected
    /// storage and detaches its loop devices (whatever the lab's kind: what is mounted).
    pub fn down(&self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        for s in self.servers.iter().rev() {
            if let Err(e) = s.recipe.down(self) {
                failed.push(format!("{}: {e:#}", s.recipe.name()));
            }
        }
        for name in self.storage_names() {
            if let Err(e) = storage::release(&self.dir, name) {
                failed.push(format!("{name}: {e:#}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            bail!("lab down: {}", failed.join("; "))
        }
    }

    /// Stops the selected servers and deletes their directories, so that the next `up` starts
    /// them empty (before timing a matrix; tansu keeps every topic it ever had, as it cannot
    /// drop one without dropping all). Secrets stay, so configs that name them stay valid.
    pub fn wipe(&self) -> anyhow::Result<()> {
        self.down()?;
        for name in self.storage_names() {
            let dir = self.server_dir(name);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("lab wipe: deleting {}: {e}", dir.display()),
            }
            storage::remove(&self.dir, name).with_context(|| format!("lab wipe: {name}"))?;
        }
        // Only if no other server's image is left in it.
        let _ = std::fs::remove_dir(self.dir.join(storage::IMAGES));
        Ok(())
    }

    /// The storage kind, then one line per server, and under it the file system mounted on
    /// its directory, if any.
    pub fn status(&self) -> anyhow::Result<String> {
        let mut out = format!(
            "{:<12} {} (images of {})\n",
            "storage",
            self.storage.kind,
            bytesize::ByteSize(self.storage.image_size).display().iec()
        );
        for name in self.storage_names() {
            if let Some(s) = self.servers.iter().find(|s| s.recipe.name() == name) {
                out.push_str(&format!("{name:<12} {}\n", s.recipe.status(self)?));
            }
            if let Some(m) = storage::mounted(&self.server_dir(name))? {
                out.push_str(&format!("{:<12} mounted: {m}\n", ""));
            }
        }
        Ok(out)
    }

    /// Runs out-of-band block dedup ([`dedupe::dedupe`]) over every selected directory that
    /// has its lab storage mounted. None mounted is a usage error.
    pub fn dedupe(
        &self,
        block_size: u64,
    ) -> anyhow::Result<Vec<(&'static str, dedupe::DedupeRun)>> {
        let mut runs = Vec::new();
        for name in self.storage_names() {
            let dir = self.server_dir(name);
            if storage::mounted(&dir)?.is_some_and(|m| m.kind().is_some()) {
                runs.push((name, dedupe::dedupe(&dir, block_size)?));
            }
        }
        if runs.is_empty() {
            bail_usage!(
                "no lab storage is mounted in {} for {}: start it with `dedup-lab lab up \
                 --storage btrfs`",
                self.dir.display(),
                self.storage_names().join(", ")
            );
        }
        Ok(runs)
    }

    /// The path of a generated secret, creating it (random, mode 0600) on first use.
    /// It starts with a letter: a config format that parses values (nats-server reads its
    /// password from an environment variable as a value) takes one of digits first for a
    /// number.
    pub fn secret(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.secret_as(name, "s", 18)
    }

    /// A secret of exactly `len` random bytes written as hex (Garage's RPC secret).
    pub fn secret_of(&self, name: &str, len: usize) -> anyhow::Result<PathBuf> {
        self.secret_as(name, "", len)
    }

    /// A secret of `prefix` and `len` random bytes written as hex.
    fn secret_as(&self, name: &str, prefix: &str, len: usize) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("secrets");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let path = dir.join(format!("{name}.password"));
        if !path.exists() {
            let mut bytes = vec![0u8; len];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let value = format!("{prefix}{hex}");
            std::fs::write(&path, value)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(path)
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a command, failing with its exit status and the end of its output.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    checked(cmd, out)
}

/// [`run`] with `input` written to the command's stdin: how a secret reaches a client without
/// appearing in its arguments. The input is written before any output is read, so it must be
/// small (a few statements).
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> anyhow::Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(input));
    // A client that failed early explains itself better than the broken pipe it left us.
    let out = checked(cmd, child.wait_with_output()?)?;
    if let Some(Err(e)) = written {
        bail!("{:?}: writing its input: {e}", cmd.get_program());
    }
    Ok(out)
}

/// The stdout of a finished command, or an error with its exit status and the end of its
/// output.
pub fn checked(cmd: &Command, out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        let tail: String = text
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        bail!("{:?} failed ({}):\n{tail}", cmd.get_program(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command run as `user` when we are root (servers refuse to run as root), else as us.
pub fn as_user(user: &str, program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg(user).arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Gives a directory tree to `user` when we are root.
pub fn chown_to(user: &str, path: &Path) -> anyhow::Result<()> {
    if is_root() {
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(path))?;
    }
    Ok(())
}

/// Installs Debian packages without starting their services (the lab runs private instances).
pub fn install_packages(pkgs: &[&str]) -> anyhow::Result<()> {
    if !is_root() {
        return Err(usage(format!(
            "missing packages: {0}; install them with `sudo apt-get install {0}` or run \
             `dedup-lab lab up` as root",
            pkgs.join(" ")
        )));
    }
    eprintln!("lab: installing {}", pkgs.join(" "));
    // A policy-rc.d answering 101 keeps package scripts from starting system services.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let placed = !policy.exists();
    if placed {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let result = (|| {
        let apt = |args: &[&str]| {
            run(Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"))
        };
        let install = || apt(&[&["install", "-y", "--no-install-recommends"][..], pkgs].concat());
        if install().is_err() {
            apt(&["update"])?;
            install()?;
        }
        Ok(())
    })();
    if placed {
        let _ = std::fs::remove_file(policy);
    }
    result
}

/// A path as a config value.
pub fn path_value(p: &Path) -> toml::Value {
    p.display().to_string().into()
}

/// Whether an HTTP server on 127.0.0.1:`port` answers `GET path` with status 200 (a health
/// endpoint that needs no credentials).
pub fn http_ok(port: u16, path: &str) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 12];
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .and_then(|()| s.read_exact(&mut head))
        .is_ok_and(|()| head.ends_with(b" 200"))
}

/// A secret file's value without its trailing newline, for handing to a server through its
/// environment.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that is never running.
    struct Idle(&'static str);

    impl Recipe for Idle {
        fn name(&self) -> &'static str {
            self.0
        }
        fn packages(&self) -> &'static [&'static str] {
            &[]
        }
        fn installed(&self) -> bool {
            true
        }
        fn up(&self, _: &Lab) -> anyhow::Result<toml::Table> {
            Ok(toml::Table::new())
        }
        fn down(&self, _: &Lab) -> anyhow::Result<()> {
            Ok(())
        }
        fn status(&self, _: &Lab) -> anyhow::Result<String> {
            Ok("stopped".into())
        }
    }

    #[test]
    fn wipe_deletes_the_selected_servers_directories_and_keeps_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let all = [
            Server {
                kind: "redis",
                recipe: &Idle("redis"),
            },
            Server {
                kind: "kafka",
                recipe: &Idle("kafka"),
            },
        ];
        let lab = Lab::new(dir.path(), &all, Some(&["redis".to_string()])).unwrap();
        let secret = lab.secret("redis").unwrap();
        for server in ["redis", "kafka"] {
            std::fs::create_dir_all(dir.path().join(server).join("data")).unwrap();
            std::fs::write(dir.path().join(server).join("data/x"), b"x").unwrap();
        }
        lab.wipe().unwrap();
        assert!(!dir.path().join("redis").exists());
        // Not selected: untouched.
        assert!(dir.path().join("kafka/data/x").exists());
        assert!(secret.exists());
        // Idempotent: nothing left to delete is not an error.
        lab.wipe().unwrap();
    }
}
