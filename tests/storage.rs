//! Lab storage on real loop-mounted btrfs images: the extent accounting against `compsize`
//! and `btrfs filesystem du`, duperemove, the mount lifecycle of `lab up/down/wipe`, and the
//! bad inputs refused before anything is mounted. Needs root, btrfs-progs, btrfs-compsize and
//! duperemove (scripts/test installs them). Every image is created in a temporary directory
//! and unmounted and detached by a guard, also when a test fails.
//!
//! The lab lifecycle runs through the binary with the server-less selection `--systems
//! sqlite` (the embedded sqlite's directory runs no server): the lab servers listen on fixed
//! ports on which the shared lab already runs, so a second redis cannot start here.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bin, text};
use dedup_lab::dataset::{DataSet, DataSetSpec, PayloadType, SizeSpec};
use dedup_lab::error::exit_code;
use dedup_lab::lab::storage::{self, Kind};
use dedup_lab::lab::{Lab, dedupe};
use dedup_lab::probe::extents::{self, Extents};

const MIB: u64 = 1 << 20;

/// A btrfs image mounted in a temporary lab directory; unmounted, detached and deleted on
/// drop.
struct Image {
    lab: tempfile::TempDir,
    name: &'static str,
}

impl Image {
    fn new(kind: Kind, size: u64) -> Image {
        let lab = tempfile::tempdir().unwrap();
        let image = Image { lab, name: "t" };
        let mount = storage::ensure(kind, image.lab.path(), image.name, size).unwrap();
        assert_eq!(mount.and_then(|m| m.kind()), Some(kind));
        image
    }

    fn dir(&self) -> PathBuf {
        self.lab.path().join(self.name)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Err(e) = storage::remove(self.lab.path(), self.name) {
            eprintln!("cleanup: {e:#}; unmounting by hand");
            cleanup_by_hand(
                &self.dir(),
                &storage::image_path(self.lab.path(), self.name),
            );
        }
    }
}

/// The last resort of a guard whose own cleanup failed: util-linux, lazily.
fn cleanup_by_hand(dir: &Path, image: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).status();
    for device in storage::loop_devices(image).unwrap_or_default() {
        let _ = Command::new("losetup").arg("-d").arg(device).status();
    }
}

/// Generates a data set into `dir`.
fn generate(dir: &Path, payload: PayloadType, grade: u8, files: u32, sizes: &str) -> DataSet {
    let spec = DataSetSpec {
        payload,
        grade,
        files,
        sizes: sizes.parse::<SizeSpec>().unwrap(),
        seed: 11,
        ..Default::default()
    };
    DataSet::generate(&spec, dir).unwrap()
}

/// compsize's totals: (disk usage, uncompressed, referenced, inline extents).
fn compsize(dir: &Path) -> (u64, u64, u64, u64) {
    let out = run_ok(Command::new("compsize").arg("-b").arg(dir));
    // "Processed 23 files, 41 regular extents (42 refs), 1 inline."
    let inline = out
        .lines()
        .find_map(|l| l.strip_prefix("Processed "))
        .and_then(|l| l.rsplit(", ").next())
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no inline count in compsize output:\n{out}"));
    let total: Vec<u64> = out
        .lines()
        .find(|l| l.starts_with("TOTAL"))
        .unwrap_or_else(|| panic!("no TOTAL in compsize output:\n{out}"))
        .split_whitespace()
        .skip(2)
        .map(|n| n.parse().unwrap())
        .collect();
    (total[0], total[1], total[2], inline)
}

/// `btrfs filesystem du -s --raw`: (total, exclusive, set shared).
fn fi_du(dir: &Path) -> (u64, u64, u64) {
    let out = run_ok(
        Command::new("btrfs")
            .args(["filesystem", "du", "-s", "--raw"])
            .arg(dir),
    );
    let row: Vec<u64> = out
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no row in btrfs fi du output:\n{out}"))
        .split_whitespace()
        .take(3)
        .map(|n| n.parse().unwrap())
        .collect();
    (row[0], row[1], row[2])
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `ours` is within `tolerance` (a fraction) of `theirs`.
fn assert_close(what: &str, ours: u64, theirs: u64, tolerance: f64) {
    let diff = ours.abs_diff(theirs) as f64;
    assert!(
        diff <= tolerance * theirs.max(1) as f64,
        "{what}: ours {ours}, theirs {theirs} (more than {:.1} % apart)",
        tolerance * 100.0
    );
}

/// Measures `dir` and checks every figure compsize and `btrfs fi du` also give, within 1 %.
fn measure_and_cross_check(dir: &Path) -> Extents {
    let e = extents::measure(&[dir.to_path_buf()]).unwrap();
    let (disk, uncompressed, referenced, inline) = compsize(dir);
    assert_close(
        "physical vs compsize disk usage",
        e.physical_bytes,
        disk,
        0.01,
    );
    assert_close(
        "uncompressed vs compsize",
        e.uncompressed_bytes,
        uncompressed,
        0.01,
    );
    assert_close(
        "referenced vs compsize",
        e.referenced_bytes,
        referenced,
        0.01,
    );
    assert_eq!(e.inline_extents, inline, "inline extents vs compsize");
    let (total, exclusive, shared) = fi_du(dir);
    assert_close("total vs btrfs fi du", e.total_bytes, total, 0.01);
    assert_close(
        "exclusive vs btrfs fi du",
        e.exclusive_bytes,
        exclusive,
        0.01,
    );
    assert_close("set shared vs btrfs fi du", e.shared_bytes, shared, 0.01);
    assert_eq!(e.methods.btrfs, e.files);
    println!(
        "{}: ours physical {} uncompressed {} referenced {} inline {} | compsize {disk} \
         {uncompressed} {referenced} {inline}; ours total {} exclusive {} shared {} | \
         btrfs fi du {total} {exclusive} {shared}",
        dir.display(),
        e.physical_bytes,
        e.uncompressed_bytes,
        e.referenced_bytes,
        e.inline_extents,
        e.total_bytes,
        e.exclusive_bytes,
        e.shared_bytes
    );
    e
}

#[test]
fn extents_agree_with_compsize_and_fi_du_on_random_files_and_a_reflinked_copy() {
    let image = Image::new(Kind::Btrfs, 1 << 30);
    let ds = generate(
        &image.dir().join("ds"),
        PayloadType::RandomBinary,
        0,
        24,
        "64KiB..4MiB",
    );
    let before = measure_and_cross_check(&image.dir());
    let manifest_len = std::fs::metadata(ds.dir.join("manifest.json"))
        .unwrap()
        .len();
    assert_eq!(
        before.logical_bytes,
        ds.manifest.logical_bytes + manifest_len
    );
    // Random data stored as written: physical is the logical size rounded up to 4 KiB blocks.
    assert!(before.physical_bytes >= before.logical_bytes);
    assert!(
        before.physical_bytes < before.logical_bytes + 25 * 4096,
        "{before:?}"
    );
    assert_eq!(before.shared_bytes, 0);
    assert_eq!(before.compressed_extents, 0);

    let first = ds.path(&ds.manifest.files[0]);
    let size = ds.manifest.files[0].size;
    run_ok(
        Command::new("cp")
            .arg("--reflink=always")
            .arg(&first)
            .arg(image.dir().join("copy")),
    );
    let after = measure_and_cross_check(&image.dir());
    // A reflink adds references, not extents: physical is unchanged, the file's extents are
    // now shared by two files and counted once.
    assert_eq!(after.physical_bytes, before.physical_bytes);
    assert_eq!(after.extents, before.extents);
    assert_eq!(after.logical_bytes, before.logical_bytes + size);
    // Extents cover whole 4 KiB blocks, so references grow by the size rounded up.
    let rounded = size.div_ceil(4096) * 4096;
    assert_eq!(after.referenced_bytes, before.referenced_bytes + rounded);
    assert_eq!(after.shared_bytes, rounded, "{after:?}");
    assert_eq!(after.exclusive_bytes, before.exclusive_bytes - rounded);
}

#[test]
fn compressible_files_on_btrfs_zstd_cost_less_than_their_size_as_compsize_says() {
    let image = Image::new(Kind::BtrfsZstd, 1 << 30);
    let ds = generate(
        &image.dir().join("ds"),
        PayloadType::TextDocument,
        0,
        16,
        "256KiB..2MiB",
    );
    let e = measure_and_cross_check(&image.dir());
    assert!(e.compressed_extents > 0, "{e:?}");
    assert!(
        e.compressed_disk_bytes * 2 < e.compressed_uncompressed_bytes,
        "{e:?}"
    );
    // The storage layer's compression: clearly below the logical size.
    assert!(
        e.physical_bytes * 2 < ds.manifest.logical_bytes,
        "physical {} vs logical {}",
        e.physical_bytes,
        ds.manifest.logical_bytes
    );
    assert_eq!(
        e.uncompressed_bytes, e.referenced_bytes,
        "nothing is shared"
    );
}

#[test]
fn small_files_are_inline_extents_counted_at_their_stored_size() {
    let image = Image::new(Kind::Btrfs, 512 * MIB);
    let ds = generate(
        &image.dir().join("ds"),
        PayloadType::RandomBinary,
        0,
        30,
        "100..1500",
    );
    let e = measure_and_cross_check(&image.dir());
    // Every data file is inline (btrfs inlines up to 2 KiB by default); the manifest is not.
    assert_eq!(e.inline_extents, 30, "{e:?}");
    let data: u64 = ds.manifest.logical_bytes;
    assert_eq!(
        e.inline_bytes, data,
        "uncompressed inline data is stored as is"
    );
    let manifest_len = std::fs::metadata(ds.dir.join("manifest.json"))
        .unwrap()
        .len();
    assert_eq!(e.physical_bytes, data + manifest_len.div_ceil(4096) * 4096);
    // btrfs fi du skips inline extents.
    assert_eq!(e.total_bytes, manifest_len.div_ceil(4096) * 4096);
}

#[test]
fn duperemove_halves_two_identical_64_mib_files() {
    let image = Image::new(Kind::Btrfs, 512 * MIB);
    let ds = generate(
        &image.dir().join("ds"),
        PayloadType::RandomBinary,
        50,
        2,
        "64MiB",
    );
    assert_eq!(ds.manifest.uniques, 1);
    let before = measure_and_cross_check(&image.dir());
    assert_close(
        "physical before dedupe",
        before.physical_bytes,
        128 * MIB,
        0.02,
    );
    let run = dedupe::dedupe(&image.dir(), 128 << 10).unwrap();
    println!("duperemove: {:?}\n{}", run.duration, run.summary);
    assert_eq!(run.block_size, 128 << 10);
    assert!(run.summary.contains("Total files:"), "{}", run.summary);
    assert!(
        run.shared_change_bytes.unwrap() >= 64 * MIB as i64,
        "{run:?}"
    );
    let after = measure_and_cross_check(&image.dir());
    assert_close(
        "physical after dedupe",
        after.physical_bytes,
        64 * MIB,
        0.02,
    );
    assert_eq!(after.logical_bytes, before.logical_bytes);
    assert_close("shared after dedupe", after.shared_bytes, 64 * MIB, 0.02);
}

#[test]
fn dedupe_refuses_a_directory_not_on_btrfs() {
    let dir = tempfile::tempdir().unwrap();
    let e = dedupe::dedupe(dir.path(), 128 << 10).unwrap_err();
    assert_eq!(exit_code(&e), 2);
    assert!(e.to_string().contains("is not on btrfs"), "{e}");
}

#[test]
fn ensure_is_idempotent_and_refuses_what_is_mounted_otherwise() {
    let image = Image::new(Kind::Btrfs, 512 * MIB);
    let lab = image.lab.path();
    let first = storage::mounted(&image.dir()).unwrap().unwrap();
    let again = storage::ensure(Kind::Btrfs, lab, "t", 512 * MIB)
        .unwrap()
        .unwrap();
    assert_eq!(
        again.source, first.source,
        "the same loop device, not a second mount"
    );
    let devices = storage::loop_devices(&storage::image_path(lab, "t")).unwrap();
    assert_eq!(devices, vec![PathBuf::from(&first.source)]);

    for kind in [Kind::BtrfsZstd, Kind::Plain] {
        let e = storage::ensure(kind, lab, "t", 512 * MIB).unwrap_err();
        assert_eq!(exit_code(&e), 2, "{e}");
        assert!(e.to_string().contains("lab down"), "{e}");
    }

    assert!(storage::release(lab, "t").unwrap());
    assert!(storage::mounted(&image.dir()).unwrap().is_none());
    assert!(
        storage::loop_devices(&storage::image_path(lab, "t"))
            .unwrap()
            .is_empty()
    );
    assert!(
        !storage::release(lab, "t").unwrap(),
        "nothing left to release"
    );
    // The image stays and mounts again, now compressing.
    let m = storage::ensure(Kind::BtrfsZstd, lab, "t", 512 * MIB)
        .unwrap()
        .unwrap();
    assert_eq!(m.kind(), Some(Kind::BtrfsZstd));
    assert!(m.options.contains("compress=zstd"), "{m:?}");
}

#[test]
fn ensure_leaves_a_foreign_mount_and_a_non_empty_directory_alone() {
    let lab = tempfile::tempdir().unwrap();
    let dir = lab.path().join("t");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("data"), b"plain lab data").unwrap();
    let e = storage::ensure(Kind::Btrfs, lab.path(), "t", 512 * MIB).unwrap_err();
    assert_eq!(exit_code(&e), 2);
    assert!(e.to_string().contains("lab wipe"), "{e}");
    assert!(!storage::image_path(lab.path(), "t").exists());
    assert_eq!(std::fs::read(dir.join("data")).unwrap(), b"plain lab data");

    let tmpfs = lab.path().join("u");
    std::fs::create_dir(&tmpfs).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "none"])
            .arg(&tmpfs),
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&tmpfs);
    let e = storage::ensure(Kind::Btrfs, lab.path(), "u", 512 * MIB).unwrap_err();
    assert_eq!(exit_code(&e), 2);
    assert!(e.to_string().contains("already mounted (tmpfs"), "{e}");
    let e = storage::release(lab.path(), "u").unwrap_err();
    assert!(e.to_string().contains("leaves it alone"), "{e}");
    assert_eq!(storage::mounted(&tmpfs).unwrap().unwrap().fs_type, "tmpfs");
    assert!(!storage::image_path(lab.path(), "u").exists());
}

/// A lab directory that `lab wipe` (through the library) empties on drop, whatever happened.
struct TempLab {
    dir: tempfile::TempDir,
}

impl TempLab {
    fn new() -> TempLab {
        TempLab {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn lab(&self, args: &[&str]) -> Output {
        let dir = self.path().to_str().unwrap();
        bin()
            .arg("lab")
            .args(args)
            .args(["--systems", "sqlite", "--dir", dir])
            .output()
            .unwrap()
    }

    fn embedded(&self) -> PathBuf {
        self.path().join("sqlite")
    }

    fn image(&self) -> PathBuf {
        storage::image_path(self.path(), "sqlite")
    }

    /// What `findmnt` shows on the embedded directory ("" when nothing).
    fn findmnt(&self) -> String {
        let out = Command::new("findmnt")
            .args(["--noheadings", "--raw", "-o", "FSTYPE,SOURCE,FS-OPTIONS"])
            .arg(self.embedded())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// What `losetup -a` lists for the embedded image ("" when nothing).
    fn losetup(&self) -> String {
        let out = Command::new("losetup").arg("-a").output().unwrap();
        let image = self.image().display().to_string();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&image))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn assert_nothing_mounted(&self) {
        assert_eq!(self.findmnt(), "");
        assert_eq!(self.losetup(), "");
    }
}

impl Drop for TempLab {
    fn drop(&mut self) {
        let servers = dedup_lab::systems::lab_servers();
        let wiped =
            Lab::new(self.path(), &servers, Some(&["sqlite".to_string()])).and_then(|l| l.wipe());
        if let Err(e) = wiped {
            eprintln!("cleanup: {e:#}; unmounting by hand");
            cleanup_by_hand(&self.embedded(), &self.image());
        }
    }
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{}", text(o));
}

fn assert_usage(o: &Output, words: &[&str]) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert_eq!(t.matches("error:").count(), 1, "one message: {t}");
    for w in words {
        assert!(t.contains(w), "missing '{w}' in: {t}");
    }
}

#[test]
fn lab_up_mounts_down_unmounts_wipe_removes_and_the_kind_is_remembered() {
    let lab = TempLab::new();
    assert_ok(&lab.lab(&["up", "--storage", "btrfs", "--storage-size", "512MiB"]));
    let shown = lab.findmnt();
    assert!(shown.starts_with("btrfs /dev/loop"), "{shown}");
    assert!(!shown.contains("compress"), "{shown}");
    assert!(lab.losetup().starts_with("/dev/loop"), "{}", lab.losetup());
    assert_eq!(std::fs::metadata(lab.image()).unwrap().len(), 512 * MIB);

    let status = lab.lab(&["status"]);
    assert_ok(&status);
    let status = text(&status);
    assert!(
        status.contains("storage      btrfs (images of 512.0 MiB)"),
        "{status}"
    );
    assert!(status.contains("mounted: btrfs on /dev/loop"), "{status}");
    assert!(status.contains("MiB used"), "{status}");

    // Idempotent: the same mount, not a second one.
    assert_ok(&lab.lab(&["up"]));
    assert_eq!(lab.findmnt(), shown);
    assert_eq!(lab.losetup().lines().count(), 1);

    // Another kind with data present is refused, and nothing changes.
    assert_usage(
        &lab.lab(&["up", "--storage", "btrfs-zstd"]),
        &["cannot switch to btrfs-zstd", "lab wipe"],
    );
    assert_eq!(lab.findmnt(), shown);

    // duperemove missing: named, with its package; the mount stays as it was.
    let mut dedupe = bin();
    dedupe
        .args(["lab", "dedupe", "--systems", "sqlite", "--dir"])
        .arg(lab.path())
        .env("PATH", "/nonexistent");
    assert_usage(
        &dedupe.output().unwrap(),
        &["duperemove is not installed", "apt-get install duperemove"],
    );
    assert_eq!(lab.findmnt(), shown);

    assert_ok(&lab.lab(&["down"]));
    lab.assert_nothing_mounted();
    assert!(lab.image().exists(), "down keeps the image");

    // Without --storage, up keeps the lab's btrfs.
    assert_ok(&lab.lab(&["up"]));
    assert!(lab.findmnt().starts_with("btrfs /dev/loop"));
    assert_ok(&lab.lab(&["wipe"]));
    lab.assert_nothing_mounted();
    assert!(!lab.image().exists());
    assert!(!lab.embedded().exists());

    // Nothing left: switching to compressed storage is allowed now.
    assert_ok(&lab.lab(&["up", "--storage", "btrfs-zstd", "--storage-size", "512MiB"]));
    assert!(lab.findmnt().contains("compress=zstd"), "{}", lab.findmnt());
    assert_ok(&lab.lab(&["wipe"]));
    lab.assert_nothing_mounted();
}

#[test]
fn storage_without_root_space_or_loop_devices_is_refused_before_anything_is_made() {
    let lab = TempLab::new();
    let dir = lab.path().to_str().unwrap().to_string();
    let bin_path = env!("CARGO_BIN_EXE_dedup-lab");
    // nobody must be able to reach and write the lab directory to get as far as the check.
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o777);
    std::fs::set_permissions(lab.path(), mode).unwrap();
    let up = [
        "lab",
        "up",
        "--storage",
        "btrfs",
        "--systems",
        "sqlite",
        "--dir",
        &dir,
    ];

    let not_root = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", bin_path])
        .args(up)
        .output()
        .unwrap();
    assert_usage(
        &not_root,
        &["lab storage btrfs needs root", "--storage plain"],
    );

    let too_big = bin()
        .args(up)
        .args(["--storage-size", "64PiB"])
        .output()
        .unwrap();
    assert_usage(
        &too_big,
        &["needs 64.0 PiB", "free", "smaller --storage-size"],
    );

    // No loop devices: a private mount namespace whose /dev is an empty tmpfs.
    let no_loop = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /dev && exec "$0" "$@""#)
        .arg(bin_path)
        .args(up)
        .output()
        .unwrap();
    assert_usage(&no_loop, &["no /dev/loop-control", "modprobe loop"]);

    lab.assert_nothing_mounted();
    assert!(!lab.image().exists());
    assert!(
        !lab.path().join("storage.toml").exists(),
        "the choice is not remembered"
    );
}

#[test]
fn a_mount_failing_half_way_leaves_no_image_directory_or_loop_device() {
    let lab = TempLab::new();
    // A PATH with every program lab storage runs except mount: the image is made and
    // formatted for real, then mounting fails.
    let tools = tempfile::tempdir().unwrap();
    for program in ["mkfs.btrfs", "losetup", "duperemove"] {
        let path = run_ok(Command::new("sh").args(["-c", &format!("command -v {program}")]));
        std::os::unix::fs::symlink(path.trim(), tools.path().join(program)).unwrap();
    }
    let out = bin()
        .args([
            "lab",
            "up",
            "--storage",
            "btrfs",
            "--storage-size",
            "256MiB",
        ])
        .args(["--systems", "sqlite", "--dir"])
        .arg(lab.path())
        .env("PATH", tools.path())
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("mounting") && t.contains("\"mount\""), "{t}");
    lab.assert_nothing_mounted();
    assert!(!lab.image().exists(), "the new image is deleted");
    assert!(!lab.embedded().exists(), "the new directory is deleted");
    let images: Vec<_> = std::fs::read_dir(lab.path().join("images"))
        .unwrap()
        .collect();
    assert!(images.is_empty(), "{images:?}");
}
