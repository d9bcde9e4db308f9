//! `fs`: a plain directory used as an object store (one file per object).
//!
//! The namespace is one directory whose name starts with `dedup_lab` and which holds a marker
//! file; reset empties it. Files are written with plain reads and writes (never
//! `copy_file_range`, which could share extents on reflink filesystems and fake dedup).
//!
//! A container is the store directory itself with one container, else its subdirectory
//! `files_<k>` (created at each reset; a reset removes every subdirectory). A file is named by
//! its key: its name, or with content keys its content's hash. A content key that already
//! names a file is skipped, not rewritten (`O_CREAT | O_EXCL`): that file holds the same
//! bytes, as in content-addressed stores (git's objects), and rewriting them would only churn
//! the storage being measured (on a copy-on-write filesystem an overwrite allocates new extents
//! before it frees the old). Entries are the files of every container.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::toolkit::{Holding, Marker, check_namespace, container_name, parse, section_of};
use super::{System, SystemContext, SystemDef, TEST_HOOKS, TestHooks};
use crate::dataset::{DataSet, FileEntry};
use crate::lab::Embedded;
use crate::model::{KeyMode, Layout, Measured, Meter, ServerInfo, SysError, SysResult, failed};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    kind: "fs",
    aliases: &[],
    embedded: true,
    about: "a plain directory as object store (no server)",
    build,
    lab: &[&Embedded {
        name: "fs",
        section: lab_section,
    }],
    native_loader: None,
    tests: TestHooks {
        namespace_key: "dir",
        ..TEST_HOOKS
    },
};

const MARKER: &str = ".dedup-lab-owned";

/// `[systems.<instance>]` of kind fs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The store directory; its name must start with `dedup_lab`. Default
    /// `<experiment>/systems/<instance>/dedup_lab_store`.
    pub dir: Option<PathBuf>,
    /// fsync every file of the per-file stages before acknowledging it (as object stores do).
    pub fsync_each: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dir: None,
            fsync_each: true,
        }
    }
}

/// The lab's fs: its store in the lab directory, on the lab's storage.
fn lab_section(dir: &Path) -> toml::Table {
    section_of(&[&Settings {
        dir: Some(dir.join("dedup_lab_store")),
        ..Default::default()
    }])
}

fn build(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    let s: Settings = parse(ctx.instance, ctx.section)?;
    let dir = s.dir.unwrap_or_else(|| {
        ctx.experiment_dir
            .join("systems")
            .join(ctx.instance)
            .join("dedup_lab_store")
    });
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    check_namespace(ctx.instance, "dir (its last component)", &name)?;
    Ok(Box::new(Fs {
        name: ctx.instance.to_string(),
        dir,
        fsync_each: s.fsync_each,
        layout: ctx.layout,
    }))
}

/// The directory adapter.
struct Fs {
    name: String,
    dir: PathBuf,
    fsync_each: bool,
    layout: Layout,
}

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> SysError + '_ {
    failed(context)
}

/// The directory of container `k`: the store itself with one container, else its
/// subdirectory.
fn container(dir: &Path, layout: &Layout, k: u32) -> PathBuf {
    if layout.containers <= 1 {
        dir.to_path_buf()
    } else {
        dir.join(container_name("files", layout, k))
    }
}

/// The directory of every container.
fn containers(dir: &Path, layout: &Layout) -> Vec<PathBuf> {
    (0..layout.containers.max(1))
        .map(|k| container(dir, layout, k))
        .collect()
}

/// The stored files of every container (the marker is not one), with their metadata.
fn stored(dir: &Path, layout: &Layout) -> SysResult<Vec<(PathBuf, std::fs::Metadata)>> {
    let mut out = Vec::new();
    for c in containers(dir, layout) {
        for e in std::fs::read_dir(&c).map_err(io_err("fs: listing store"))? {
            let e = e.map_err(io_err("fs: listing store"))?;
            if e.file_name() == MARKER {
                continue;
            }
            out.push((e.path(), e.metadata().map_err(io_err("fs: stat"))?));
        }
    }
    Ok(out)
}

impl Fs {
    /// Where `f` is stored: its key in its container.
    fn path(&self, f: &FileEntry) -> PathBuf {
        container(&self.dir, &self.layout, self.layout.container_of(f)).join(self.layout.key_of(f))
    }

    fn write(&self, f: &FileEntry, content: &[u8], sync: bool) -> SysResult<()> {
        let path = self.path(f);
        let opened = match self.layout.keys {
            KeyMode::Name => std::fs::File::create(&path),
            KeyMode::Content => std::fs::File::create_new(&path),
        };
        let mut file = match opened {
            Ok(file) => file,
            // The content's file exists: it holds these bytes already.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(io_err("fs: create")(e)),
        };
        file.write_all(content).map_err(io_err("fs: write"))?;
        if sync {
            file.sync_all().map_err(io_err("fs: fsync"))?;
        }
        Ok(())
    }
}

/// Names a filesystem type from its `statfs` magic number.
fn fs_type(dir: &Path) -> String {
    let Ok(st) = rustix::fs::statfs(dir) else {
        return "unknown".into();
    };
    match st.f_type as u64 {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0xF2F5_2010 => "f2fs".into(),
        other => format!("type {other:#x}"),
    }
}

/// The meter: the store directory looked at from outside.
struct FsMeter {
    dir: PathBuf,
    layout: Layout,
}

#[async_trait]
impl Measured for FsMeter {
    fn native_copies(&self) -> Option<u32> {
        None
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        Err(SysError::failed("fs: no native size function"))
    }

    fn own_files(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }
}

#[async_trait]
impl Meter for FsMeter {
    /// Files in the store and their sizes (apparent bytes, as written).
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>> {
        tokio::task::block_in_place(|| {
            let stored = stored(&self.dir, &self.layout)?;
            let files = stored.len();
            let bytes: u64 = stored.iter().map(|(_, m)| m.len()).sum();
            Ok(BTreeMap::from([
                ("files".to_string(), files as f64),
                ("apparent_bytes".to_string(), bytes as f64),
            ]))
        })
    }
}

#[async_trait]
impl System for Fs {
    fn name(&self) -> &str {
        &self.name
    }

    fn target(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        // Nothing to connect to; report the filesystem of the nearest existing ancestor.
        let existing = self
            .dir
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("."));
        Ok(ServerInfo {
            product: "filesystem".into(),
            version: fs_type(existing),
        })
    }

    async fn meter(&mut self) -> SysResult<Box<dyn Meter>> {
        Ok(Box::new(FsMeter {
            dir: self.dir.clone(),
            layout: self.layout,
        }))
    }

    async fn inspect(&mut self) -> SysResult<Holding> {
        tokio::task::block_in_place(|| {
            if !self.dir.exists() {
                return Ok(Holding::Absent);
            }
            match std::fs::read_to_string(self.dir.join(MARKER)) {
                Ok(text) => Ok(Holding::Marked(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let mut entries =
                        std::fs::read_dir(&self.dir).map_err(io_err("fs: reading store"))?;
                    Ok(match entries.next() {
                        None => Holding::Absent,
                        Some(_) => Holding::Foreign(format!(
                            "{} is not empty and has no {MARKER} file",
                            self.dir.display()
                        )),
                    })
                }
                Err(e) => Err(io_err("fs: reading marker")(e)),
            }
        })
    }

    async fn recreate(&mut self, marker: &Marker) -> SysResult<()> {
        tokio::task::block_in_place(|| {
            let path = self.dir.join(MARKER);
            std::fs::create_dir_all(&self.dir).map_err(io_err("fs: creating store"))?;
            // The marker is written first and stays, so a reset cut short never leaves an
            // unmarked store behind.
            if marker.changed || !path.exists() {
                std::fs::write(&path, &marker.text).map_err(io_err("fs: writing marker"))?;
            }
            for e in std::fs::read_dir(&self.dir).map_err(io_err("fs: reading store"))? {
                let p = e.map_err(io_err("fs: reading store"))?.path();
                if p == path {
                    continue;
                }
                let removed = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                removed.map_err(io_err("fs: emptying store"))?;
            }
            if self.layout.containers > 1 {
                for c in containers(&self.dir, &self.layout) {
                    std::fs::create_dir(&c).map_err(io_err("fs: creating a container"))?;
                }
            }
            Ok(())
        })
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        tokio::task::block_in_place(|| {
            for f in &ds.manifest.files {
                let content = ds.read(f).map_err(|e| SysError::failed(format!("{e:#}")))?;
                self.write(f, &content, false)?;
            }
            Ok(())
        })
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        tokio::task::block_in_place(|| self.write(file, &content, self.fsync_each))
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        tokio::task::block_in_place(|| {
            std::fs::remove_file(self.path(file)).map_err(io_err("fs: delete"))
        })
    }

    async fn maintenance(&mut self) -> SysResult<String> {
        Ok("none: a plain directory has no space-reclaiming operation".into())
    }

    async fn settle(&mut self) -> SysResult<()> {
        // fsync every file and the directory, not syncfs: syncfs would also wait for every
        // other writer on the filesystem and make settle times meaningless.
        tokio::task::block_in_place(|| {
            let files = stored(&self.dir, &self.layout)?.into_iter().map(|(p, _)| p);
            for path in files.chain([self.dir.join(MARKER)]) {
                std::fs::File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err("fs: fsync"))?;
            }
            // Each container's directory, then the store's (which names the containers).
            let mut dirs = containers(&self.dir, &self.layout);
            if self.layout.containers > 1 {
                dirs.push(self.dir.clone());
            }
            for d in dirs {
                std::fs::File::open(&d)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err("fs: fsync store directory"))?;
            }
            Ok(())
        })
    }

    async fn count(&mut self) -> SysResult<u64> {
        tokio::task::block_in_place(|| Ok(stored(&self.dir, &self.layout)?.len() as u64))
    }
}
