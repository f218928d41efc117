//! `mount <BUNDLE>`: the verified bundle shown read-only through FUSE and a
//! loop device on the FUSE file — never by mounting the bundle file — until
//! `umount`; tampered blocks read as I/O errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::device::Device;
use testkit::{Content, pki_file, rota_bundle, run, target_dir};

/// errno of an I/O error.
const EIO: i32 = 5;

fn device(name: &str) -> Device {
    let dir = target_dir().join("test-devices").join(name);
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=noop\nmountprefix={}\n[keyring]\npath={}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n",
        dir.join("mnt").display(),
        pki_file("keyring.pem").display()
    );
    let d = Device::new(dir, &conf);
    d.slot_file("rootfs0.img", 4096, 0);
    d
}

fn bundle(name: &str) -> (PathBuf, PathBuf) {
    let dir = target_dir().join("test-bundles").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::standard(dir.join("content"), "verity");
    fs::create_dir_all(c.dir.join("hooks.d")).unwrap();
    c.file("hooks.d/hook.sh", b"#!/bin/sh\necho hook\n");
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    (b, c.dir)
}

/// Unmounts a view a failed assertion left behind.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if mounted(&self.0) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
}

fn mounted(dir: &Path) -> bool {
    let real = fs::canonicalize(dir).unwrap_or(dir.to_path_buf());
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(real.to_str().unwrap()))
}

/// The loop device behind the mount at `dir` and the file it is backed by.
fn backing_file(dir: &Path) -> String {
    let real = fs::canonicalize(dir).unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info.lines().find(|l| l.split(' ').nth(4) == Some(real.to_str().unwrap())).unwrap();
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-").unwrap();
    assert_eq!(fields[sep + 1], "squashfs", "{line}");
    let dev = fields[sep + 2].strip_prefix("/dev/").unwrap();
    fs::read_to_string(format!("/sys/block/{dev}/loop/backing_file")).unwrap().trim().to_string()
}

fn fuse_mounts() -> usize {
    fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(" fuse rota-bundle ")).count()
}

fn umount_and_wait(dir: &Path, fuse_before: usize) {
    run(Command::new("umount").arg(dir)).ok();
    // The serving process notices the loop device letting go and ends its FUSE mount.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fuse_mounts() > fuse_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(fuse_mounts() <= fuse_before, "FUSE view still mounted after umount");
}

#[test]
fn mount_shows_the_verified_content_until_umount() {
    let _g = testkit::serial();
    let d = device("mount");
    let (b, content) = bundle("mount");
    let fuse_before = fuse_mounts();
    let r = run(d.rota().arg("mount").arg(&b)).ok();
    let dir = d.path("mnt/bundle");
    let _cleanup = Cleanup(dir.clone());
    let shown = dir.display().to_string();
    assert_eq!(r.stdout, format!("Mounted bundle at {shown}. Use 'umount {shown}' to unmount.\n"));
    assert!(mounted(&dir));
    for f in ["rootfs.img", "appfs.img", "hooks.d/hook.sh"] {
        assert_eq!(fs::read(dir.join(f)).unwrap(), fs::read(content.join(f)).unwrap(), "{f}");
    }
    assert!(fs::read_to_string(dir.join("manifest.raucm")).unwrap().contains("compatible=Test Config"));
    assert!(fs::write(dir.join("new"), b"x").is_err(), "read-only");
    let backing = backing_file(&dir);
    assert!(backing.ends_with("/payload.squashfs") && !backing.contains("b.raucb"), "{backing}");
    // A second mount at the same place is refused.
    let again = run(d.rota().arg("mount").arg(&b)).fails();
    assert!(again.stderr.contains("is already a mount point"), "{}", again.stderr);
    umount_and_wait(&dir, fuse_before);
    assert!(!mounted(&dir));
}

#[test]
fn tampered_blocks_read_as_io_errors_and_bad_signatures_mount_nothing() {
    let _g = testkit::serial();
    let d = device("mount-tampered");
    let (b, content) = bundle("mount-tampered");
    let mut bytes = fs::read(&b).unwrap();
    bytes[6000] ^= 0x01; // file data of rootfs.img, right after the superblock
    let bad = b.with_extension("tampered.raucb");
    fs::write(&bad, &bytes).unwrap();
    let fuse_before = fuse_mounts();
    run(d.rota().arg("mount").arg(&bad)).ok();
    let dir = d.path("mnt/bundle");
    let _cleanup = Cleanup(dir.clone());
    let err = fs::read(dir.join("rootfs.img")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
    assert_eq!(fs::read(dir.join("appfs.img")).unwrap(), fs::read(content.join("appfs.img")).unwrap());
    umount_and_wait(&dir, fuse_before);

    // Signed by a CA outside the keyring: nothing is mounted.
    let other = d.path("other.raucb");
    rota_bundle(&content, &other, "other").ok();
    let r = run(d.rota().arg("mount").arg(&other)).fails();
    assert!(r.stderr.contains("signature"), "{}", r.stderr);
    assert!(!mounted(&dir));
    assert_eq!(fuse_mounts(), fuse_before);
}
