//! Helpers for tests of `tree` images: bundles made from a directory,
//! ext4 slot images made from one, devices booted from A with ext4 slots,
//! and comparing what a slot image holds with a file index.

use crate::device::Device;
use crate::{Content, pki_file, remove_tree, rota, rota_bundle, run, target_dir};
use rota_bundle::tree::{Entry, FileIndex};
use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;

/// Runs `cmd` with `sh -c`; panics with its stderr when it fails.
pub fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("run sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A bundle of `format` with `tree` as the rootfs tree image, at `out`
/// (crypt bundles encrypted for the test recipient).
pub fn bundle_as(tree: &Path, out: &Path, format: &str) {
    let c = Content::new(out.with_extension("content"));
    sh(&format!("cp -a {} {}", tree.display(), c.dir.join("rootfs.tree").display()));
    c.manifest(&format!(
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat={format}\n[image.rootfs]\nfilename=rootfs.tree\n"
    ));
    if format != "crypt" {
        rota_bundle(&c.dir, out, "release").ok();
        remove_tree(&c.dir);
        return;
    }
    let signed = out.with_extension("signed.raucb");
    rota_bundle(&c.dir, &signed, "release").ok();
    remove_tree(&c.dir);
    let _ = fs::remove_file(out);
    let to = format!("--to={}", pki_file("rsa-recipient.pem").display());
    run(rota().arg("encrypt").arg(to).arg(&signed).arg(out)).ok();
    fs::remove_file(&signed).unwrap();
}

/// An ext4 filesystem image of `size_mib` MiB holding `tree` (nothing when `None`).
pub fn ext4(path: &Path, tree: Option<&Path>, size_mib: u64) {
    let _ = fs::remove_file(path);
    match tree {
        Some(t) => run(Command::new("mkfs.ext4").args(["-q", "-d"]).arg(t).arg(path).arg(format!("{size_mib}M"))).ok(),
        None => run(Command::new("truncate").arg(format!("-s{size_mib}M")).arg(path)).ok(),
    };
}

/// A device booted from A (`rootfs0.img`, holding `a`) with ext4 root slots
/// A and B (`rootfs1.img`, holding `b` or nothing), GRUB, the slot status
/// kept as `status` says, and `extra` configuration (`[tree]` and such), in
/// `test-devices/tree/<name>`.
pub fn ext4_device(name: &str, a: &Path, b: Option<&Path>, status: &str, extra: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\n{status}\nmountprefix=mnt\n\
         {extra}\n[keyring]\npath={}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\ntype=ext4\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\ntype=ext4\nbootname=B\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(target_dir().join("test-devices/tree").join(name), &conf);
    d.grub_env(&["A", "B"]);
    ext4(&d.path("rootfs0.img"), Some(a), 128);
    ext4(&d.path("rootfs1.img"), b, 128);
    d
}

/// What `f` makes of the filesystem image at `img`, mounted read-only at a temporary place.
pub fn with_mounted_ro<T>(img: &Path, f: impl FnOnce(&Path) -> T) -> T {
    let m = tempfile::tempdir().unwrap();
    run(Command::new("mount").args(["-o", "ro"]).arg(img).arg(m.path())).ok();
    let r = f(m.path());
    run(Command::new("umount").arg(m.path())).ok();
    r
}

/// Runs `f` with the ext4 image at `img` mounted read-write at a temporary place.
pub fn with_mounted(img: &Path, f: impl FnOnce(&Path)) {
    let m = tempfile::tempdir().unwrap();
    run(Command::new("mount").arg(img).arg(m.path())).ok();
    f(m.path());
    run(Command::new("umount").arg(m.path())).ok();
}

/// The index of what the filesystem image at `img` holds (`lost+found` left out).
pub fn scan_image(img: &Path) -> FileIndex {
    let mut index = with_mounted_ro(img, FileIndex::scan).unwrap();
    index.entries.retain(|e| !e.path.starts_with(b"lost+found"));
    index
}

/// Asserts that `got` has exactly the entries of `want`.
#[track_caller]
pub fn assert_same_tree(got: &FileIndex, want: &FileIndex) {
    if let Err(m) = tree_difference(got, want) {
        panic!("{m}");
    }
}

/// The first difference between `got` and `want`, if any.
pub fn tree_difference(got: &FileIndex, want: &FileIndex) -> Result<(), String> {
    let by_path = |i: &FileIndex| i.entries.iter().map(|e| (e.path.clone(), e.clone())).collect::<HashMap<_, _>>();
    let (g, w) = (by_path(got), by_path(want));
    for (p, e) in &w {
        if g.get(p) != Some(e) {
            return Err(format!("{}: {:?}, expected {e:?}", String::from_utf8_lossy(p), g.get(p)));
        }
    }
    if got.entries.len() != want.entries.len() {
        return Err(format!("{} entries, expected {}", got.entries.len(), want.entries.len()));
    }
    Ok(())
}

/// The entry of `path` in `index`.
#[track_caller]
pub fn find<'a>(index: &'a FileIndex, path: &str) -> &'a Entry {
    index.entries.iter().find(|e| e.path == path.as_bytes()).unwrap_or_else(|| panic!("{path}"))
}
