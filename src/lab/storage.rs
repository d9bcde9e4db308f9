//! Lab storage: a server's directory `<lab>/<name>` on its own btrfs file system in a loop
//! image `<lab>/images/<name>.img`, so that the storage layer under a system can compress
//! and share blocks and dedup-lab can measure what it does.
//!
//! Kinds: `plain` (a directory on the host's file system), `btrfs`, `btrfs-zstd` (mounted
//! with `compress=zstd`). [`ensure`] creates, formats and mounts an image (idempotent),
//! [`release`] unmounts it and detaches its loop device, [`remove`] also deletes the image.
//!
//! How: util-linux's `mount -o loop` attaches the image and mounts it in one step. It takes a
//! free loop device race-free (`LOOP_CTL_GET_FREE` with retries when another process takes
//! the same one), sets `LO_FLAGS_AUTOCLEAR` so that the kernel detaches the device when the
//! file system is unmounted, and detaches it again itself when the mount fails: no loop device
//! outlives its mount, even if dedup-lab is killed. The `loopdev` crate would need bindgen
//! (libclang) to build and would leave those races to us. Unmounting is `umount2` (rustix);
//! what is mounted where is read from `/proc/self/mountinfo` (procfs-core) and
//! `/sys/block/loopN/loop/backing_file`, free space from `statvfs` (rustix).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::bail_usage;
use crate::error::usage;

/// Default size of an image: sparse, so it costs only what the file system holds.
pub const DEFAULT_SIZE: u64 = 2 << 30;
/// The smallest image accepted: mkfs.btrfs refuses much less, and a server needs room.
pub const MIN_SIZE: u64 = 256 << 20;
/// The directory of the images inside the lab directory.
pub const IMAGES: &str = "images";
/// Debian packages the btrfs kinds need (btrfs-progs to format, duperemove for the
/// storage-layer dedupe step), by the program that shows each is installed.
const PACKAGES: &[(&str, &str)] = &[("mkfs.btrfs", "btrfs-progs"), ("duperemove", "duperemove")];

/// Where a lab server's files live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A directory on the host's file system.
    #[default]
    Plain,
    /// Its own btrfs file system in a loop image.
    Btrfs,
    /// Its own btrfs file system in a loop image, mounted with `compress=zstd`.
    BtrfsZstd,
}

impl Kind {
    /// The btrfs compression algorithm this kind mounts with, if it compresses.
    fn compress(self) -> Option<&'static str> {
        match self {
            Kind::BtrfsZstd => Some("zstd"),
            Kind::Plain | Kind::Btrfs => None,
        }
    }

    /// Mount options for `mount -o`.
    fn mount_options(self) -> String {
        match self.compress() {
            Some(c) => format!("loop,compress={c}"),
            None => "loop".into(),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Plain => "plain",
            Kind::Btrfs => "btrfs",
            Kind::BtrfsZstd => "btrfs-zstd",
        })
    }
}

/// A file system mounted on a lab directory, as the kernel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mount point, `<lab>/<name>`.
    pub dir: PathBuf,
    /// File system type (`btrfs` for lab storage).
    pub fs_type: String,
    /// What is mounted: `/dev/loopN` for lab storage.
    pub source: String,
    /// The loop device's backing file, if the source is a loop device.
    pub image: Option<PathBuf>,
    /// The file system's (per-superblock) options, e.g. `rw,compress=zstd:3,…`.
    pub options: String,
}

impl Mount {
    /// The lab storage kind this mount is, if it is one (loop-backed btrfs).
    pub fn kind(&self) -> Option<Kind> {
        if self.fs_type != "btrfs" || self.image.is_none() {
            return None;
        }
        let compress = self.options.split(',').find_map(|o| {
            o.strip_prefix("compress=")
                .or(o.strip_prefix("compress-force="))
        });
        match compress {
            None => Some(Kind::Btrfs),
            Some(c) if c == "zstd" || c.starts_with("zstd:") => Some(Kind::BtrfsZstd),
            Some(_) => None,
        }
    }

    /// Bytes in use on the file system (`statvfs`: blocks minus free blocks; on btrfs this
    /// includes metadata and its DUP copy).
    pub fn used_bytes(&self) -> anyhow::Result<u64> {
        let s = rustix::fs::statvfs(&self.dir)
            .with_context(|| format!("statvfs {}", self.dir.display()))?;
        Ok((s.f_blocks - s.f_bfree) * s.f_frsize)
    }
}

impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {} ({})", self.fs_type, self.source, self.options)?;
        if let Ok(used) = self.used_bytes() {
            write!(f, ", {} used", bytesize::ByteSize(used).display().iec())?;
        }
        Ok(())
    }
}

/// A lab's storage choice, remembered in `<lab>/storage.toml` so that a later `lab up`
/// without `--storage` keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    /// The kind of every server's storage.
    pub kind: Kind,
    /// Size of the images created from now on, in bytes.
    pub image_size: u64,
}

impl Default for Choice {
    fn default() -> Choice {
        Choice {
            kind: Kind::Plain,
            image_size: DEFAULT_SIZE,
        }
    }
}

/// Name of the file that remembers the choice.
const CHOICE_FILE: &str = "storage.toml";

impl Choice {
    /// The choice remembered in `lab_dir`; `plain` for a lab that never chose.
    pub fn remembered(lab_dir: &Path) -> anyhow::Result<Choice> {
        let path = lab_dir.join(CHOICE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                usage(format!(
                    "{} is invalid ({e}); delete it and run `dedup-lab lab up --storage …`",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Choice::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Remembers this choice in `lab_dir`.
    pub fn remember(&self, lab_dir: &Path) -> anyhow::Result<()> {
        let path = lab_dir.join(CHOICE_FILE);
        std::fs::write(
            &path,
            format!(
                "# Written by `dedup-lab lab up --storage`: the lab's storage kind.\n{}",
                toml::to_string(self)?
            ),
        )
        .with_context(|| format!("writing {}", path.display()))
    }
}

/// The image file of `<lab>/<name>`.
pub fn image_path(lab_dir: &Path, name: &str) -> PathBuf {
    lab_dir.join(IMAGES).join(format!("{name}.img"))
}

/// The image while it is created and formatted: an image under the final name is always
/// formatted, so a crash half-way leaves nothing that looks usable.
fn partial_image_path(lab_dir: &Path, name: &str) -> PathBuf {
    lab_dir.join(IMAGES).join(format!("{name}.img.partial"))
}

/// Checks, before anything is created, that images for `names` (those not created yet, of
/// `size` bytes each) can be made and mounted as `kind`: root, loop devices, free space, btrfs
/// in the kernel, and btrfs-progs (installed through apt-get when missing). Each failure is a
/// usage error naming what is missing and the fix. Nothing to check for `plain`.
pub fn preflight(kind: Kind, lab_dir: &Path, names: &[&str], size: u64) -> anyhow::Result<()> {
    if kind == Kind::Plain {
        return Ok(());
    }
    if !super::is_root() {
        return Err(storage_error(
            kind,
            "needs root: it formats images, attaches loop devices and mounts them; run \
             `dedup-lab lab up` as root (e.g. with sudo)",
        ));
    }
    if size < MIN_SIZE {
        return Err(storage_error(
            kind,
            &format!(
                "cannot use images of {size} bytes: the smallest is {MIN_SIZE} bytes \
                 (256 MiB); give a larger --storage-size"
            ),
        ));
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err(storage_error(
            kind,
            "needs loop devices, and there is no /dev/loop-control: load the loop module \
             (`modprobe loop`) or give the container loop devices",
        ));
    }
    let free = Command::new("losetup").arg("--find").output();
    match free {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Err(storage_error(
                kind,
                &format!(
                    "found no free loop device (`losetup --find`: {}): detach unused ones \
                 (`losetup -a` lists them, `losetup -d DEVICE` detaches one)",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Err(e) => {
            return Err(storage_error(
                kind,
                &format!("cannot run losetup ({e}): install the Debian package mount (util-linux)"),
            ));
        }
    }
    let new = names
        .iter()
        .filter(|n| !image_path(lab_dir, n).exists())
        .count() as u64;
    let need = new * size;
    let stat =
        rustix::fs::statvfs(lab_dir).with_context(|| format!("statvfs {}", lab_dir.display()))?;
    let free = stat.f_bavail * stat.f_frsize;
    if need > free {
        let iec = |b: u64| bytesize::ByteSize(b).display().iec().to_string();
        return Err(storage_error(
            kind,
            &format!(
                "needs {} for {new} image(s) of {} in {}, which has {} free: sparse images \
                 grow to their full size as servers write, so all of it must be free; give a \
                 smaller --storage-size, fewer --systems, or another --dir",
                iec(need),
                iec(size),
                lab_dir.join(IMAGES).display(),
                iec(free)
            ),
        ));
    }
    // The module may not be loaded yet; modprobe's own failure says less than the check after.
    let _ = Command::new("modprobe").arg("btrfs").output();
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("btrfs"))
    {
        return Err(storage_error(
            kind,
            "needs btrfs, and the kernel has none (not in /proc/filesystems after `modprobe \
             btrfs`): install the kernel's btrfs module",
        ));
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(program, _)| !super::process::on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        super::install_packages(&missing)?;
    }
    Ok(())
}

/// A usage error about storage `kind`, ending in the way out that always exists.
fn storage_error(kind: Kind, problem: &str) -> anyhow::Error {
    usage(format!(
        "lab storage {kind} {problem}; or use --storage plain"
    ))
}

/// Makes `<lab>/<name>` storage of `kind`: for `plain` the directory (no mount: `None`); for
/// the btrfs kinds its image (sparse, `size` bytes, created and formatted if missing), mounted
/// on the directory. Already mounted as asked: nothing to do. Mounted otherwise (other options,
/// another image or file system) or a non-empty directory in the way: a usage error. Checks
/// [`preflight`] first; a failure half-way undoes what was done (no loop device attached, no
/// new image or directory left).
pub fn ensure(kind: Kind, lab_dir: &Path, name: &str, size: u64) -> anyhow::Result<Option<Mount>> {
    let dir = lab_dir.join(name);
    let image = image_path(lab_dir, name);
    let current = mounted(&dir)?;
    if kind == Kind::Plain {
        if let Some(m) = current {
            bail_usage!(
                "{} is a mount ({m}), not a plain directory; unmount it first \
                 (`dedup-lab lab down`)",
                dir.display()
            );
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        return Ok(None);
    }
    if let Some(m) = current {
        if m.kind() == Some(kind) && m.image.as_deref() == Some(image.as_path()) {
            return Ok(Some(m));
        }
        bail_usage!(
            "{} is already mounted ({m}), which is not lab storage {kind} from {}; unmount it \
             first (`dedup-lab lab down`, or `umount {}`)",
            dir.display(),
            image.display(),
            dir.display()
        );
    }
    preflight(kind, lab_dir, &[name], size)?;
    let mut undo = Undo::default();
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            bail_usage!(
                "{} holds files (plain lab storage?); mounting {kind} storage there would hide \
                 them: delete them with `dedup-lab lab wipe` first",
                dir.display()
            );
        }
    } else {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        undo.dir = Some(dir.clone());
    }
    if !image.exists() {
        std::fs::create_dir_all(lab_dir.join(IMAGES))?;
        let partial = partial_image_path(lab_dir, name);
        undo.image = Some(partial.clone());
        let file = std::fs::File::create(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        file.set_len(size)
            .with_context(|| format!("sizing {}", partial.display()))?;
        drop(file);
        super::run(
            Command::new("mkfs.btrfs")
                .args(["-q", "-f", "-L"])
                .arg(format!("dedup-lab-{name}"))
                .arg(&partial),
        )
        .with_context(|| format!("formatting {}", partial.display()))?;
        std::fs::rename(&partial, &image)?;
        undo.image = Some(image.clone());
    }
    // A loop device left on the image (attached by hand, or by a killed mount) would make
    // mount reuse or refuse it.
    detach_all(&image)?;
    undo.loop_of = Some(image.clone());
    super::run(
        Command::new("mount")
            .args(["-t", "btrfs", "-o", &kind.mount_options()])
            .arg(&image)
            .arg(&dir),
    )
    .with_context(|| format!("mounting {} on {}", image.display(), dir.display()))?;
    undo.mount = Some(dir.clone());
    let m = mounted(&dir)?.context("mount succeeded but the kernel shows no mount")?;
    if m.kind() != Some(kind) || m.image.as_deref() != Some(image.as_path()) {
        bail!(
            "{} was mounted as {m}, not as {kind} from {}",
            dir.display(),
            image.display()
        );
    }
    undo.disarm();
    Ok(Some(m))
}

/// What [`ensure`] has done so far, undone in reverse when it fails (on drop).
#[derive(Default)]
struct Undo {
    dir: Option<PathBuf>,
    image: Option<PathBuf>,
    loop_of: Option<PathBuf>,
    mount: Option<PathBuf>,
}

impl Undo {
    /// Keeps everything done. (Assigning a fresh `Undo` would drop, and so run, this one.)
    fn disarm(&mut self) {
        self.dir = None;
        self.image = None;
        self.loop_of = None;
        self.mount = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(dir) = &self.mount {
            let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::empty());
        }
        if let Some(image) = &self.loop_of {
            let _ = detach_all(image);
        }
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Unmounts `<lab>/<name>` if its lab image is mounted there and makes sure no loop device
/// is left on the image. Returns whether it unmounted something. A busy file system (a
/// server still running) or a mount that is not the lab's image is an error; nothing mounted
/// is fine (idempotent).
pub fn release(lab_dir: &Path, name: &str) -> anyhow::Result<bool> {
    let dir = lab_dir.join(name);
    let image = image_path(lab_dir, name);
    let unmounted = match mounted(&dir)? {
        None => false,
        Some(m) if m.image.as_deref() == Some(image.as_path()) => {
            rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::empty()).map_err(|e| {
                if e == rustix::io::Errno::BUSY {
                    usage(format!(
                        "cannot unmount {}: it is busy (a process has files open there); stop \
                         the servers using it (`dedup-lab lab down`) and try again",
                        dir.display()
                    ))
                } else {
                    anyhow::anyhow!("unmounting {}: {e}", dir.display())
                }
            })?;
            true
        }
        Some(m) => bail_usage!(
            "{} is mounted ({m}) but not from the lab image {}; dedup-lab leaves it alone: \
             unmount it yourself",
            dir.display(),
            image.display()
        ),
    };
    detach_all(&image)?;
    Ok(unmounted)
}

/// [`release`], then deletes the image (and a partial one from an interrupted [`ensure`]).
pub fn remove(lab_dir: &Path, name: &str) -> anyhow::Result<()> {
    release(lab_dir, name)?;
    for path in [image_path(lab_dir, name), partial_image_path(lab_dir, name)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {}", path.display())),
        }
    }
    Ok(())
}

/// What is mounted on `dir` (the topmost mount, if several are stacked), from
/// `/proc/self/mountinfo`.
pub fn mounted(dir: &Path) -> anyhow::Result<Option<Mount>> {
    use procfs_core::FromBufRead as _;
    let file =
        std::fs::File::open("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let infos = procfs_core::process::MountInfos::from_buf_read(std::io::BufReader::new(file))
        .context("parsing /proc/self/mountinfo")?;
    let escaped = mountinfo_escape(dir);
    let Some(info) = infos.into_iter().rev().find(|m| m.mount_point == escaped) else {
        return Ok(None);
    };
    let source = info.mount_source.unwrap_or_default();
    let mut options: Vec<String> = info
        .super_options
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .collect();
    options.sort();
    Ok(Some(Mount {
        dir: dir.to_path_buf(),
        fs_type: info.fs_type,
        image: backing_file(&source),
        source,
        options: options.join(","),
    }))
}

/// A path as `/proc/self/mountinfo` writes it: space, tab, newline and backslash as octal.
fn mountinfo_escape(path: &Path) -> PathBuf {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    PathBuf::from(out)
}

/// The backing file of loop device `device` (`/dev/loopN`), if it is an attached loop device.
fn backing_file(device: &str) -> Option<PathBuf> {
    let name = device.strip_prefix("/dev/")?;
    if !name.starts_with("loop") {
        return None;
    }
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

/// The loop devices whose backing file is `image` (also when the image was deleted meanwhile).
pub fn loop_devices(image: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let deleted = format!("{} (deleted)", image.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").context("reading /sys/block")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let device = format!("/dev/{name}");
        if let Some(backing) = backing_file(&device)
            && (backing == image || backing.as_os_str() == deleted.as_str())
        {
            found.push(PathBuf::from(device));
        }
    }
    Ok(found)
}

/// Detaches every loop device on `image`. After an unmount the kernel clears an autoclear
/// device by itself, possibly a moment later: wait for that first, then detach what is left
/// (a device attached by hand or by a crashed `mount`).
fn detach_all(image: &Path) -> anyhow::Result<()> {
    if loop_devices(image)?.is_empty() {
        return Ok(());
    }
    let cleared = super::process::wait_until(Duration::from_secs(5), || {
        loop_devices(image).is_ok_and(|d| d.is_empty())
    });
    if cleared.is_ok() {
        return Ok(());
    }
    for device in loop_devices(image)? {
        super::run(Command::new("losetup").arg("-d").arg(&device))
            .with_context(|| format!("detaching {} from {}", device.display(), image.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_what_the_kernel_escapes() {
        assert_eq!(
            mountinfo_escape(Path::new("/a b/c\\d\te")),
            PathBuf::from("/a\\040b/c\\134d\\011e")
        );
    }

    #[test]
    fn kind_follows_the_compress_option_of_a_loop_backed_btrfs() {
        let m = |fs: &str, image: bool, options: &str| Mount {
            dir: "/lab/x".into(),
            fs_type: fs.into(),
            source: "/dev/loop0".into(),
            image: image.then(|| "/lab/images/x.img".into()),
            options: options.into(),
        };
        assert_eq!(
            m("btrfs", true, "rw,space_cache=v2").kind(),
            Some(Kind::Btrfs)
        );
        assert_eq!(
            m("btrfs", true, "compress=zstd:3,rw").kind(),
            Some(Kind::BtrfsZstd)
        );
        assert_eq!(m("btrfs", true, "compress=lzo,rw").kind(), None);
        assert_eq!(m("btrfs", false, "rw").kind(), None);
        assert_eq!(m("ext4", true, "rw").kind(), None);
    }
}
