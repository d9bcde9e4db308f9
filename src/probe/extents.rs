//! Physical bytes at the storage layer: what the file system allocates for a set of paths
//! after its own compression and block sharing, from the kernel's extent accounting.
//!
//! On btrfs, FIEMAP reports the logical length of a compressed extent, not what it occupies,
//! so [`measure`] reads the file extent items themselves, as `compsize` does:
//! `BTRFS_IOC_TREE_SEARCH_V2` over each inode's `EXTENT_DATA` items (`disk_bytenr`,
//! `disk_num_bytes`, `ram_bytes`, `num_bytes`, compression, type). That ioctl needs
//! `CAP_SYS_ADMIN` (root). The shared/exclusive split comes from FIEMAP's
//! `FIEMAP_EXTENT_SHARED` flag, computed exactly as `btrfs filesystem du` does, since only the
//! kernel's backref walk knows whether something outside the set refers to an extent.
//! Other file systems are read through FIEMAP (exact where nothing is compressed: ext4, XFS
//! with its reflinks), and where FIEMAP is not offered (tmpfs, overlayfs) through the
//! allocated blocks (`st_blocks` × 512) of each inode, which cannot see sharing.
//!
//! Each file system is flushed first (`syncfs`): data still in delayed allocation has no
//! extent yet, and btrfs compresses only on writeback.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use rustix::io::Errno;
use rustix::ioctl::{Opcode, Updater, ioctl, opcode};
use serde::{Deserialize, Serialize};

use super::fs::vanished;

/// The extent accounting of a set of paths. Regular files only, each inode once (hard links
/// and paths given twice count once), not following symbolic links; directories' own
/// metadata is not counted.
///
/// On btrfs the fields mean exactly what `compsize` and `btrfs filesystem du` print:
///
/// - `physical_bytes` = compsize's "Disk Usage": each distinct data extent's
///   `disk_num_bytes` once however many files or offsets refer to it (reflinks, deduped
///   ranges), counted whole even where only part of it is still referenced (btrfs frees an
///   extent only when nothing refers to any of it), compressed size for compressed extents,
///   preallocated extents included; plus `inline_bytes`. This is what the data costs on disk.
/// - `inline_bytes`: files small enough to live inside the metadata b-tree (an inline extent)
///   count the bytes of their data there (compressed size if compressed; the item minus its
///   21-byte header), once, without the b-tree's own overhead and without the second copy of
///   the DUP metadata profile.
/// - `uncompressed_bytes` = compsize's "Uncompressed": the same extents' `ram_bytes`.
/// - `referenced_bytes` = compsize's "Referenced": every reference's `num_bytes` (a reflinked
///   extent counts once per reference), inline extents' `ram_bytes`.
/// - `total_bytes`, `exclusive_bytes`, `shared_bytes` = `btrfs filesystem du -s`'s "Total",
///   "Exclusive" and "Set shared": from FIEMAP, inline and delayed extents skipped; total is
///   the referenced length of every extent; exclusive is total minus the extents FIEMAP flags
///   shared (referenced elsewhere too, inside or outside the set); shared is the union of the
///   physical ranges of the shared extents, so each counts once. Like `btrfs fi du`, the union
///   takes a compressed extent's logical length from its physical start: for compressed data
///   `shared_bytes` is not an on-disk size; `physical_bytes` is.
///
/// On other file systems, FIEMAP: `physical_bytes` is the union of every extent's physical
/// range (an XFS reflinked extent counts once), `uncompressed_bytes` equals it, and
/// `referenced_bytes` = `total_bytes` is the sum of extent lengths; inline data (ext4's
/// `inline_data`) counts its length. Without FIEMAP every byte of `st_blocks` × 512 counts as
/// physical, referenced, total and exclusive. [`Methods`] says which files went which way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extents {
    /// Regular files (inodes) counted.
    pub files: u64,
    /// Sum of the files' sizes (`st_size`).
    pub logical_bytes: u64,
    /// What the data occupies on disk, each physical extent once (see above).
    pub physical_bytes: u64,
    /// The distinct extents' size before compression.
    pub uncompressed_bytes: u64,
    /// Bytes the files refer to, a shared extent once per reference.
    pub referenced_bytes: u64,
    /// `btrfs filesystem du`'s "Total".
    pub total_bytes: u64,
    /// `btrfs filesystem du`'s "Exclusive".
    pub exclusive_bytes: u64,
    /// `btrfs filesystem du`'s "Set shared".
    pub shared_bytes: u64,
    /// Distinct data extents (inline ones not included).
    pub extents: u64,
    /// References to them (file extent items).
    pub refs: u64,
    /// Distinct extents stored compressed.
    pub compressed_extents: u64,
    /// Their size on disk.
    pub compressed_disk_bytes: u64,
    /// Their size before compression.
    pub compressed_uncompressed_bytes: u64,
    /// Inline extents (a small file's data inside the metadata).
    pub inline_extents: u64,
    /// Their bytes as stored (part of `physical_bytes`).
    pub inline_bytes: u64,
    /// Preallocated (fallocated, unwritten) extents' bytes on disk (part of `physical_bytes`).
    pub prealloc_bytes: u64,
    /// How the files were read.
    pub methods: Methods,
}

/// How many files each accounting read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Methods {
    /// btrfs file extent items (`BTRFS_IOC_TREE_SEARCH_V2`) plus FIEMAP for sharing.
    pub btrfs: u64,
    /// FIEMAP alone.
    pub fiemap: u64,
    /// Allocated blocks (`st_blocks`): the file system offers no FIEMAP.
    pub blocks: u64,
}

/// Reads the extent accounting of every regular file under `paths` (files or directories,
/// recursively); see [`Extents`] for what is counted. Files that vanish while it reads (a live
/// server's temporary files) are skipped; a missing root is an error.
pub fn measure(paths: &[PathBuf]) -> anyhow::Result<Extents> {
    let mut acc = Accounting::default();
    for root in paths {
        let file = File::open(root)
            .with_context(|| format!("storage probe: opening {}", root.display()))?;
        rustix::fs::syncfs(&file)
            .with_context(|| format!("storage probe: syncfs {}", root.display()))?;
    }
    for root in paths {
        for entry in walkdir::WalkDir::new(root).follow_links(false) {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if vanished(&e) => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("storage probe: walking {}", root.display()));
                }
            };
            if entry.file_type().is_file() {
                acc.file(entry.path())
                    .with_context(|| format!("storage probe: {}", entry.path().display()))?;
            }
        }
    }
    Ok(acc.finish())
}

/// Identifies a file system across its subvolumes (which have distinct `st_dev`s on btrfs):
/// the btrfs fsid, or the device number elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum FsId {
    Btrfs([u8; 16]),
    Other(u64),
}

/// Running totals while files are read.
#[derive(Default)]
struct Accounting {
    out: Extents,
    inodes: HashSet<(u64, u64)>,
    fs_of_dev: HashMap<u64, FsId>,
    /// btrfs extents seen, by (file system, `disk_bytenr`).
    seen: HashSet<(FsId, u64)>,
    /// Physical ranges `[start, end)` whose union is `shared_bytes`.
    shared: Vec<(FsId, u64, u64)>,
    /// Physical ranges whose union is the FIEMAP-only `physical_bytes`.
    fiemap_physical: Vec<(FsId, u64, u64)>,
}

impl Accounting {
    fn file(&mut self, path: &Path) -> anyhow::Result<()> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let meta = file.metadata()?;
        if !meta.is_file() || !self.inodes.insert((meta.dev(), meta.ino())) {
            return Ok(());
        }
        let fs = match self.fs_of_dev.get(&meta.dev()) {
            Some(fs) => *fs,
            None => {
                let fs = fs_id(&file, meta.dev())?;
                self.fs_of_dev.insert(meta.dev(), fs);
                fs
            }
        };
        self.out.files += 1;
        self.out.logical_bytes += meta.size();
        match fs {
            FsId::Btrfs(_) => {
                self.btrfs_items(&file, fs, meta.ino())?;
                self.fiemap(&file, fs, false)?;
                self.out.methods.btrfs += 1;
            }
            FsId::Other(_) => {
                if self.fiemap(&file, fs, true)? {
                    self.out.methods.fiemap += 1;
                } else {
                    let bytes = meta.blocks() * 512;
                    for field in [
                        &mut self.out.physical_bytes,
                        &mut self.out.uncompressed_bytes,
                        &mut self.out.referenced_bytes,
                        &mut self.out.total_bytes,
                        &mut self.out.exclusive_bytes,
                    ] {
                        *field += bytes;
                    }
                    self.out.methods.blocks += 1;
                }
            }
        }
        Ok(())
    }

    /// Adds a btrfs inode's file extent items.
    fn btrfs_items(&mut self, file: &File, fs: FsId, ino: u64) -> anyhow::Result<()> {
        let mut args = Box::new(SearchArgsV2 {
            key: SearchKey::default(),
            buf_size: SEARCH_BUF as u64,
            buf: [0; SEARCH_BUF],
        });
        let mut min_offset = 0;
        loop {
            args.key = SearchKey {
                tree_id: 0, // the subvolume of the open file
                min_objectid: ino,
                max_objectid: ino,
                min_offset,
                max_offset: u64::MAX,
                min_transid: 0,
                max_transid: u64::MAX,
                min_type: BTRFS_EXTENT_DATA_KEY,
                max_type: BTRFS_EXTENT_DATA_KEY,
                nr_items: u32::MAX,
                ..SearchKey::default()
            };
            args.buf_size = SEARCH_BUF as u64;
            // SAFETY: the opcode is BTRFS_IOC_TREE_SEARCH_V2, whose argument is a search key
            // and buffer size followed by `buf_size` bytes of buffer, which `SearchArgsV2` is.
            let result = unsafe {
                ioctl(
                    file,
                    Updater::<TREE_SEARCH_V2, SearchArgsV2>::new(&mut args),
                )
            };
            match result {
                Ok(()) => {}
                Err(Errno::PERM) => bail!(
                    "reading btrfs extents needs root (BTRFS_IOC_TREE_SEARCH_V2 requires \
                     CAP_SYS_ADMIN); run dedup-lab as root"
                ),
                Err(e) => bail!("BTRFS_IOC_TREE_SEARCH_V2: {e}"),
            }
            let items = args.key.nr_items;
            if items == 0 {
                return Ok(());
            }
            let mut at = 0usize;
            let mut last_offset = 0;
            for _ in 0..items {
                let head = args
                    .buf
                    .get(at..at + 32)
                    .context("BTRFS_IOC_TREE_SEARCH_V2 returned a truncated header")?;
                last_offset = u64::from_ne_bytes(head[16..24].try_into()?);
                let len = u32::from_ne_bytes(head[28..32].try_into()?) as usize;
                at += 32;
                let item = args
                    .buf
                    .get(at..at + len)
                    .context("BTRFS_IOC_TREE_SEARCH_V2 returned a truncated item")?;
                self.extent_item(fs, item)?;
                at += len;
            }
            if last_offset == u64::MAX {
                return Ok(());
            }
            min_offset = last_offset + 1;
        }
    }

    /// Adds one `btrfs_file_extent_item` (on-disk layout, little-endian, packed).
    fn extent_item(&mut self, fs: FsId, item: &[u8]) -> anyhow::Result<()> {
        let le64 = |at: usize| -> anyhow::Result<u64> {
            Ok(u64::from_le_bytes(
                item.get(at..at + 8)
                    .context("short file extent item")?
                    .try_into()?,
            ))
        };
        let ram_bytes = le64(8)?;
        let compressed = *item.get(16).context("short file extent item")? != 0;
        let kind = *item.get(20).context("short file extent item")?;
        let o = &mut self.out;
        if kind == FILE_EXTENT_INLINE {
            let stored = item
                .len()
                .checked_sub(INLINE_HEADER)
                .context("short inline extent item")? as u64;
            o.inline_extents += 1;
            o.inline_bytes += stored;
            o.physical_bytes += stored;
            o.uncompressed_bytes += ram_bytes;
            o.referenced_bytes += ram_bytes;
            if compressed {
                o.compressed_extents += 1;
                o.compressed_disk_bytes += stored;
                o.compressed_uncompressed_bytes += ram_bytes;
            }
            return Ok(());
        }
        let disk_bytenr = le64(21)?;
        let disk_num_bytes = le64(29)?;
        let num_bytes = le64(45)?;
        if disk_bytenr == 0 {
            return Ok(()); // a hole
        }
        o.refs += 1;
        o.referenced_bytes += num_bytes;
        if self.seen.insert((fs, disk_bytenr)) {
            o.extents += 1;
            o.physical_bytes += disk_num_bytes;
            o.uncompressed_bytes += ram_bytes;
            if compressed {
                o.compressed_extents += 1;
                o.compressed_disk_bytes += disk_num_bytes;
                o.compressed_uncompressed_bytes += ram_bytes;
            }
            if kind == FILE_EXTENT_PREALLOC {
                o.prealloc_bytes += disk_num_bytes;
            }
        }
        Ok(())
    }

    /// Adds a file's FIEMAP extents to the `btrfs fi du` fields and, with `physical`, to the
    /// FIEMAP-only physical and referenced bytes. Returns false if the file system offers no
    /// FIEMAP.
    fn fiemap(&mut self, file: &File, fs: FsId, physical: bool) -> anyhow::Result<bool> {
        let mut map = Box::new(Fiemap {
            head: FiemapHead::default(),
            extents: [FiemapExtent::default(); FIEMAP_EXTENTS],
        });
        let mut start = 0u64;
        loop {
            map.head = FiemapHead {
                fm_start: start,
                fm_length: u64::MAX - start,
                fm_extent_count: FIEMAP_EXTENTS as u32,
                ..FiemapHead::default()
            };
            // SAFETY: the opcode is FS_IOC_FIEMAP, whose argument is a `struct fiemap`
            // followed by `fm_extent_count` extents, which `Fiemap` is.
            let result = unsafe { ioctl(file, Updater::<FS_IOC_FIEMAP, Fiemap>::new(&mut map)) };
            match result {
                Ok(()) => {}
                Err(Errno::OPNOTSUPP | Errno::NOTTY) if !physical || start > 0 => {
                    bail!("FS_IOC_FIEMAP is not supported here")
                }
                Err(Errno::OPNOTSUPP | Errno::NOTTY) => return Ok(false),
                Err(e) => bail!("FS_IOC_FIEMAP: {e}"),
            }
            let n = map.head.fm_mapped_extents as usize;
            if n == 0 {
                return Ok(true);
            }
            let mut last = false;
            for e in &map.extents[..n] {
                last |= e.fe_flags & FIEMAP_EXTENT_LAST != 0;
                if physical && e.fe_flags & FIEMAP_EXTENT_DATA_INLINE != 0 {
                    self.out.inline_extents += 1;
                    self.out.inline_bytes += e.fe_length;
                    self.out.physical_bytes += e.fe_length;
                    self.out.uncompressed_bytes += e.fe_length;
                    self.out.referenced_bytes += e.fe_length;
                }
                if e.fe_flags & FIEMAP_SKIP != 0 || e.fe_length == 0 {
                    continue;
                }
                let range = (fs, e.fe_physical, e.fe_physical + e.fe_length);
                self.out.total_bytes += e.fe_length;
                if e.fe_flags & FIEMAP_EXTENT_SHARED != 0 {
                    self.shared.push(range);
                } else {
                    self.out.exclusive_bytes += e.fe_length;
                }
                if physical {
                    self.out.refs += 1;
                    self.out.referenced_bytes += e.fe_length;
                    self.fiemap_physical.push(range);
                }
            }
            let tail = &map.extents[n - 1];
            start = tail.fe_logical + tail.fe_length;
            if last {
                return Ok(true);
            }
        }
    }

    fn finish(mut self) -> Extents {
        self.out.shared_bytes = union_len(&mut self.shared);
        let fiemap_physical = union_len(&mut self.fiemap_physical);
        self.out.physical_bytes += fiemap_physical;
        self.out.uncompressed_bytes += fiemap_physical;
        self.out
    }
}

/// The number of bytes covered by the union of half-open ranges (per file system).
fn union_len(ranges: &mut [(FsId, u64, u64)]) -> u64 {
    ranges.sort_unstable();
    let mut total = 0;
    let mut current: Option<(FsId, u64, u64)> = None;
    for &(fs, start, end) in ranges.iter() {
        match &mut current {
            Some((cfs, _, cend)) if *cfs == fs && start <= *cend => *cend = (*cend).max(end),
            _ => {
                if let Some((_, s, e)) = current {
                    total += e - s;
                }
                current = Some((fs, start, end));
            }
        }
    }
    total + current.map_or(0, |(_, s, e)| e - s)
}

/// Whether an open file or directory is on btrfs (`statfs`'s `f_type`).
pub fn is_btrfs(file: &File) -> anyhow::Result<bool> {
    const BTRFS_SUPER_MAGIC: u32 = 0x9123_683E;
    let stat = rustix::fs::fstatfs(file).context("fstatfs")?;
    // f_type is a signed word of the architecture's width; magic numbers are 32 bits.
    Ok(stat.f_type as u32 == BTRFS_SUPER_MAGIC)
}

/// The file system of an open file: btrfs (by its fsid) or another (by device).
fn fs_id(file: &File, dev: u64) -> anyhow::Result<FsId> {
    if !is_btrfs(file)? {
        return Ok(FsId::Other(dev));
    }
    // Zeroed input: the kernel reads `flags` to decide which optional fields to fill.
    let mut info = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 1024 - 32],
    };
    // SAFETY: the opcode is BTRFS_IOC_FS_INFO, whose argument is the 1024-byte
    // `struct btrfs_ioctl_fs_info_args`, which `FsInfoArgs` is.
    unsafe { ioctl(file, Updater::<FS_INFO, FsInfoArgs>::new(&mut info)) }
        .context("BTRFS_IOC_FS_INFO")?;
    Ok(FsId::Btrfs(info.fsid))
}

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const BTRFS_EXTENT_DATA_KEY: u32 = 108;
const FILE_EXTENT_INLINE: u8 = 0;
const FILE_EXTENT_PREALLOC: u8 = 2;
/// Bytes of a `btrfs_file_extent_item` before inline data.
const INLINE_HEADER: usize = 21;
/// Search buffer, as compsize uses (the kernel's limit is 16 MiB).
const SEARCH_BUF: usize = 64 * 1024;

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args_v2` without its buffer: what the opcode encodes.
#[repr(C)]
struct SearchArgsV2Head {
    key: SearchKey,
    buf_size: u64,
}

/// `struct btrfs_ioctl_search_args_v2` with a buffer of [`SEARCH_BUF`] bytes.
#[repr(C)]
struct SearchArgsV2 {
    key: SearchKey,
    buf_size: u64,
    buf: [u8; SEARCH_BUF],
}

/// `struct btrfs_ioctl_fs_info_args` up to the fsid; the rest is not read.
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 1024 - 32],
}

const TREE_SEARCH_V2: Opcode = opcode::read_write::<SearchArgsV2Head>(BTRFS_IOCTL_MAGIC, 17);
const FS_INFO: Opcode = opcode::read::<FsInfoArgs>(BTRFS_IOCTL_MAGIC, 31);
const FS_IOC_FIEMAP: Opcode = opcode::read_write::<FiemapHead>(b'f', 11);

const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
/// What `btrfs filesystem du` skips: unknown location, delayed allocation, inline data.
const FIEMAP_SKIP: u32 = 0x2 | 0x4 | FIEMAP_EXTENT_DATA_INLINE;
/// Extents asked for per FIEMAP call (as `btrfs filesystem du`'s 16 KiB buffer holds).
const FIEMAP_EXTENTS: usize = 292;

/// `struct fiemap` without its extents.
#[repr(C)]
#[derive(Default)]
struct FiemapHead {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

/// `struct fiemap_extent`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

/// `struct fiemap` with room for [`FIEMAP_EXTENTS`] extents.
#[repr(C)]
struct Fiemap {
    head: FiemapHead,
    extents: [FiemapExtent; FIEMAP_EXTENTS],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_struct_sizes_match_the_uapi_headers() {
        assert_eq!(std::mem::size_of::<SearchKey>(), 104);
        assert_eq!(std::mem::size_of::<SearchArgsV2Head>(), 112);
        assert_eq!(std::mem::size_of::<FsInfoArgs>(), 1024);
        assert_eq!(std::mem::size_of::<FiemapHead>(), 32);
        assert_eq!(std::mem::size_of::<FiemapExtent>(), 56);
    }

    #[test]
    fn union_counts_overlaps_once_and_file_systems_apart() {
        let a = FsId::Other(1);
        let b = FsId::Other(2);
        let mut r = vec![(a, 0, 10), (a, 5, 20), (a, 30, 40), (b, 0, 10), (a, 20, 25)];
        assert_eq!(union_len(&mut r), 25 + 10 + 10);
        assert_eq!(union_len(&mut []), 0);
    }

    #[test]
    fn host_file_system_gives_the_allocated_bytes_of_distinct_files() {
        // The host file system (ext4, xfs or tmpfs) goes through FIEMAP or st_blocks.
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        std::fs::write(dir.path().join("a"), &data).unwrap();
        std::fs::write(dir.path().join("b"), &data[..5000]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("c")).unwrap();
        let e = measure(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(e.files, 2);
        assert_eq!(e.logical_bytes, 305_000);
        let blocks =
            super::super::fs::allocated_bytes(&[dir.path().join("a"), dir.path().join("b")])
                .unwrap();
        assert_eq!(e.physical_bytes, blocks, "{e:?}");
        assert_eq!(e.methods.btrfs, 0);
        assert_eq!(e.methods.fiemap + e.methods.blocks, 2);
    }
}
