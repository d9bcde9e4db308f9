//! `[export.git]`: at the end of a run, the experiment directory's results — every file at
//! its top (journal, config, metadata, exports, report) and the data set manifests, not data
//! set files or embedded systems' stores — are committed under `<experiment id>/` to a
//! branch of a local repository, and the branch is pushed to a remote where configured.
//!
//! It drives the `git` program rather than a library: gix cannot push, and git2 would build
//! libgit2 with its own TLS and SSH stacks and need credentials handed to it in code. The
//! `git` program pushes over every transport with the user's own credential helpers, SSH
//! agent and config, so no credential passes through dedup-lab: a remote URL that carries one
//! is refused. The commit is made with plumbing and a private index (`hash-object`,
//! `update-index`, `write-tree`, `commit-tree`, `update-ref` with the old value), so it
//! touches no working tree and works in a bare repository; other experiments' directories
//! on the branch stay as they are. A failed push leaves the commit in the local repository.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use super::{Item, ItemKind, Sink, SinkContext, SinkDef, parse};
use crate::error::usage;

/// Registry entry.
pub const DEF: SinkDef = SinkDef { name: "git", build };

/// The keys of `[export.git]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The local repository (bare or not) the commits go to; created bare when missing.
    pub repo: PathBuf,
    /// The branch the commits go on.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Where to push the branch: a remote of `repo`, or a URL or path (no credentials).
    pub remote: Option<String>,
    /// Whether to push (default: when a remote is given).
    pub push: Option<bool>,
    /// Seconds one git command (the push, mostly) may take.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_branch() -> String {
    "dedup-lab-results".into()
}

fn default_timeout() -> u64 {
    60
}

/// Variables that would point git at another repository, index or object store than the
/// ones this sink names; they are removed from git's environment.
const LOCATION_VARS: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
];

/// A `git` command with the location variables removed and prompts off: a push that needs
/// credentials the helpers do not have fails instead of waiting for a terminal.
fn git_command() -> std::process::Command {
    let mut c = std::process::Command::new("git");
    for v in LOCATION_VARS {
        c.env_remove(v);
    }
    c.env("GIT_TERMINAL_PROMPT", "0")
        .env("GCM_INTERACTIVE", "never")
        .stdin(Stdio::null());
    c
}

/// `--git-dir=<dir>`: names the repository exactly, so git does not search the parents of a
/// directory that is not one.
fn git_dir_arg(dir: &Path) -> OsString {
    let mut arg = OsString::from("--git-dir=");
    arg.push(dir);
    arg
}

/// Runs a git command on repository `dir` (if given) to the end at build time; its trimmed
/// stdout, or its stderr.
fn run_now(dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut c = git_command();
    c.args(dir.map(git_dir_arg)).args(args);
    match c.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The git directory of an existing repository at `path` (`path/.git`, or `path` itself
/// when bare), or `None` when nothing is at `path`.
fn git_dir(path: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !path.exists() {
        return Ok(None);
    }
    let dot_git = path.join(".git");
    let candidate = if dot_git.exists() {
        dot_git
    } else {
        path.to_path_buf()
    };
    match run_now(Some(&candidate), &["rev-parse", "--absolute-git-dir"]) {
        Ok(dir) => Ok(Some(PathBuf::from(dir))),
        Err(_) => Err(usage(format!(
            "config [export.git] repo = \"{}\" exists but is not a git repository; name a \
             repository, or a path that does not exist yet (a bare one is created there)",
            path.display()
        ))),
    }
}

/// Refuses a remote that would read as an option, and a remote URL that carries a
/// credential: a password, or a user name over http(s), where tokens are often passed as
/// user names. `git@host:path` and `ssh://git@host/…` name an SSH user, not a credential.
fn check_remote_url(remote: &str) -> anyhow::Result<()> {
    if remote.is_empty() || remote.starts_with('-') {
        crate::bail_usage!(
            "config [export.git] remote = \"{remote}\" is not a remote: give a remote's name, \
             URL or path"
        );
    }
    let Ok(mut url) = reqwest::Url::parse(remote) else {
        return Ok(());
    };
    let http = matches!(url.scheme(), "http" | "https");
    if url.password().is_some() || (http && !url.username().is_empty()) {
        // The message names the remote without what it carries.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        return Err(usage(format!(
            "config [export.git] remote {url} carries credentials; remove them from the URL and \
             let git find them (a credential helper, or an SSH key)"
        )));
    }
    Ok(())
}

fn build(section: &toml::Table, ctx: &SinkContext) -> anyhow::Result<Box<dyn Sink>> {
    let s: Settings = parse("git", section)?;
    let what = "config [export.git]";
    if let Err(e) = run_now(None, &["--version"]) {
        return Err(usage(format!(
            "{what}: the git program cannot run ({e}); install it (`apt-get install git`) or \
             remove [export.git]"
        )));
    }
    if run_now(None, &["check-ref-format", "--branch", &s.branch]).is_err() {
        crate::bail_usage!(
            "{what} branch = \"{}\" is not a valid branch name",
            s.branch
        );
    }
    if s.timeout_s == 0 {
        crate::bail_usage!("{what} timeout_s must be at least 1");
    }
    let repo = std::path::absolute(&s.repo)
        .with_context(|| format!("{what} repo = \"{}\"", s.repo.display()))?;
    let existing = git_dir(&repo)?;
    let push = s.push.unwrap_or(s.remote.is_some());
    let remote = match (&s.remote, push) {
        (None, true) => {
            crate::bail_usage!("{what} push = true needs a remote; set remote = \"…\"")
        }
        (None, false) | (Some(_), false) => None,
        (Some(r), true) => {
            check_remote_url(r)?;
            let is_name = !r.contains([':', '/']) && !Path::new(r).exists();
            if is_name {
                let known = existing
                    .as_deref()
                    .is_some_and(|dir| run_now(Some(dir), &["remote", "get-url", r]).is_ok());
                if !known {
                    crate::bail_usage!(
                        "{what} remote = \"{r}\" is not a remote of {}; add it there with `git \
                         remote add`, or give the remote's URL",
                        repo.display()
                    );
                }
            }
            Some(r.clone())
        }
    };
    // Commits carry the user's git identity; where git has none, dedup-lab's own.
    let own_identity = run_now(existing.as_deref(), &["var", "GIT_COMMITTER_IDENT"]).is_err();
    Ok(Box::new(Git {
        repo,
        own_identity,
        git_dir: existing,
        branch: s.branch,
        remote,
        timeout: Duration::from_secs(s.timeout_s),
        experiment: ctx.experiment.clone(),
        committed: false,
    }))
}

/// The git sink.
struct Git {
    repo: PathBuf,
    /// Known once the repository exists.
    git_dir: Option<PathBuf>,
    /// Commit as dedup-lab: git has no identity of the user.
    own_identity: bool,
    branch: String,
    /// Where to push, if anywhere.
    remote: Option<String>,
    timeout: Duration,
    experiment: String,
    /// Set once the directory is committed: a retry only pushes again.
    committed: bool,
}

/// The files of an experiment directory that go into the commit, relative to it, sorted.
pub fn result_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = PathBuf::from(entry.file_name());
        if entry.file_type()?.is_file() && name.extension().is_none_or(|e| e != "tmp") {
            out.push(name);
        }
    }
    let datasets = dir.join("datasets");
    if datasets.is_dir() {
        for entry in walkdir::WalkDir::new(&datasets) {
            let entry = entry?;
            if entry.file_type().is_file() && entry.file_name() == "manifest.json" {
                out.push(entry.path().strip_prefix(dir)?.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Git {
    /// Runs git on the repository (with a private index file, if given) and returns its
    /// trimmed stdout; `input` goes to its stdin.
    async fn git(
        &self,
        args: &[&str],
        index: Option<&Path>,
        input: Option<Vec<u8>>,
    ) -> anyhow::Result<String> {
        let dir = self
            .git_dir
            .as_deref()
            .context("the repository does not exist yet")?;
        let mut std = git_command();
        std.arg(git_dir_arg(dir)).args(args);
        if let Some(index) = index {
            std.env("GIT_INDEX_FILE", index);
        }
        if self.own_identity {
            for (var, value) in [
                ("GIT_AUTHOR_NAME", "dedup-lab"),
                ("GIT_AUTHOR_EMAIL", "dedup-lab@localhost"),
                ("GIT_COMMITTER_NAME", "dedup-lab"),
                ("GIT_COMMITTER_EMAIL", "dedup-lab@localhost"),
            ] {
                std.env(var, value);
            }
        }
        let name = args.first().copied().unwrap_or_default();
        let mut cmd = tokio::process::Command::from(std);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let run = async {
            let mut child = cmd.spawn().context("starting git")?;
            if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
                stdin.write_all(&bytes).await?;
            }
            Ok::<_, anyhow::Error>(child.wait_with_output().await?)
        };
        let out = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| {
                anyhow::anyhow!("git {name} took more than {} s", self.timeout.as_secs())
            })??;
        if !out.status.success() {
            bail!(
                "git {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Creates the repository (bare) if it does not exist yet.
    async fn ensure_repo(&mut self) -> anyhow::Result<()> {
        if self.git_dir.is_none() {
            let mut cmd = tokio::process::Command::from(git_command());
            let out = cmd
                .args(["init", "--bare", "--quiet"])
                .arg(&self.repo)
                .output()
                .await
                .context("starting git")?;
            if !out.status.success() {
                bail!(
                    "git init {}: {}",
                    self.repo.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            self.git_dir = git_dir(&self.repo)?;
        }
        Ok(())
    }

    /// Commits the result files of `dir` under `<experiment>/` on the branch, replacing what
    /// the branch held there; a directory equal to the branch's makes no commit.
    async fn commit(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.ensure_repo().await?;
        let files = result_files(dir)?;
        let paths: String = files
            .iter()
            .map(|f| format!("{}\n", dir.join(f).display()))
            .collect();
        let blobs = self
            .git(
                &["hash-object", "-w", "--stdin-paths"],
                None,
                Some(paths.into_bytes()),
            )
            .await?;
        let blobs: Vec<&str> = blobs.lines().collect();
        if blobs.len() != files.len() {
            bail!(
                "git hash-object gave {} ids for {} files",
                blobs.len(),
                files.len()
            );
        }
        let branch = format!("refs/heads/{}", self.branch);
        let verify = format!("{branch}^{{commit}}");
        let parent = self
            .git(&["rev-parse", "-q", "--verify", &verify], None, None)
            .await
            .ok();
        let scratch = tempfile::tempdir().context("a temporary index")?;
        let index = scratch.path().join("index");
        let index = Some(index.as_path());
        let prefix = format!("{}/", self.experiment);
        // The index starts as the branch's tree; what it held under the prefix is removed
        // (mode 0 removes a path) and the directory's files take its place.
        let mut entries = Vec::new();
        match &parent {
            Some(p) => {
                self.git(&["read-tree", p], index, None).await?;
                let old = self
                    .git(
                        &["ls-tree", "-r", "-z", "--name-only", p, "--", &prefix],
                        None,
                        None,
                    )
                    .await?;
                for path in old.split('\0').filter(|p| !p.is_empty()) {
                    entries.extend_from_slice(format!("0 {}\t{path}\0", "0".repeat(40)).as_bytes());
                }
            }
            None => {
                self.git(&["read-tree", "--empty"], index, None).await?;
            }
        }
        for (file, blob) in files.iter().zip(&blobs) {
            entries.extend_from_slice(
                format!("100644 {blob}\t{prefix}{}\0", file.display()).as_bytes(),
            );
        }
        self.git(
            &["update-index", "-z", "--index-info"],
            index,
            Some(entries),
        )
        .await?;
        let tree = self.git(&["write-tree"], index, None).await?;
        if let Some(p) = &parent {
            let tree_of = format!("{p}^{{tree}}");
            if self.git(&["rev-parse", &tree_of], None, None).await? == tree {
                return Ok(());
            }
        }
        let message = format!(
            "dedup-lab: results of experiment {}\n\n{} files from {} on {}.\n",
            self.experiment,
            files.len(),
            dir.display(),
            gethostname::gethostname().to_string_lossy()
        );
        let mut args: Vec<&str> = vec!["commit-tree", &tree];
        if let Some(p) = &parent {
            args.extend(["-p", p]);
        }
        args.extend(["-F", "-"]);
        let commit = self.git(&args, None, Some(message.into_bytes())).await?;
        // The old value makes the update fail, rather than drop a commit, if another run moved
        // the branch meanwhile; the retry then builds on that one. An empty old value means
        // "must not exist yet".
        let old = parent.unwrap_or_default();
        self.git(&["update-ref", &branch, &commit, &old], None, None)
            .await?;
        Ok(())
    }

    /// Pushes the branch to the remote.
    async fn push(&self, remote: &str) -> anyhow::Result<()> {
        let spec = format!("refs/heads/{0}:refs/heads/{0}", self.branch);
        self.git(&["push", "--quiet", "--", remote, &spec], None, None)
            .await
            .with_context(|| {
                format!(
                    "pushing branch {} to {remote} failed; the commit stays in {}",
                    self.branch,
                    self.repo.display()
                )
            })
            .map(drop)
    }
}

#[async_trait]
impl Sink for Git {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn takes(&self) -> &'static [ItemKind] {
        &[ItemKind::Directory]
    }

    /// The repository was checked when the sink was built; a remote is only tried by the push.
    async fn healthcheck(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn send(&mut self, items: &[Item]) -> anyhow::Result<()> {
        for item in items {
            if let Item::Directory(dir) = item {
                if !self.committed {
                    self.commit(dir)
                        .await
                        .with_context(|| format!("committing to {}", self.repo.display()))?;
                    self.committed = true;
                }
                if let Some(remote) = &self.remote {
                    self.push(remote).await?;
                }
            }
        }
        Ok(())
    }
}
