//! Bootloader slots inside a region of a whole disk (spec §4.4–4.5), on
//! disk images with real partition tables made by `sfdisk`:
//! `boot-mbr-switch`, `boot-gpt-switch` and `boot-raw-fallback`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use testkit::device::Device;
use testkit::{Content, pki_file, pseudo_random, rota_bundle, run, target_dir};

const MIB: usize = 1 << 20;

/// A device with raw A/B root slots and `bootloader.0` = `disk.img` of `slot_type`.
fn device(name: &str, slot_type: &str, region: &str) -> Device {
    let dir = target_dir().join("test-devices").join(name);
    // Each device mounts its bundle below its own directory: the tests of
    // this file run at once, and two installs with hooks would otherwise
    // meet at the default /mnt/rauc/bundle.
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=noop\nmountprefix={}\n[keyring]\npath={}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n\
         [slot.bootloader.0]\ndevice=disk.img\ntype={slot_type}\n{region}\n",
        dir.join("mnt").display(),
        pki_file("keyring.pem").display()
    );
    let d = Device::new(&dir, &conf);
    d.slot_file("rootfs0.img", 4096, 0);
    d.slot_file("rootfs1.img", 4096, 0);
    d
}

/// A bundle carrying only a bootloader image of `len` bytes (hooks optional).
fn bundle(name: &str, len: usize, seed: u64, hook: bool) -> (PathBuf, Vec<u8>) {
    let dir = target_dir().join("test-bundles").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    let img = c.image("boot.img", len, seed);
    let hooks = if hook {
        c.file("hook.sh", b"#!/bin/sh\nenv | grep '^RAUC_BOOT_' | sort > \"$HOOK_DUMP/$1\"\n");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(c.dir.join("hook.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        "[hooks]\nfilename=hook.sh\n"
    } else {
        ""
    };
    let post = if hook { "hooks=pre-install;post-install\n" } else { "" };
    c.manifest(&format!(
        "[update]\ncompatible=Test Config\n[bundle]\nformat=verity\n{hooks}[image.bootloader]\nfilename=boot.img\n{post}"
    ));
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    (b, img)
}

fn sfdisk(disk: &Path, script: &str) {
    let mut child = Command::new("sfdisk").arg("-q").arg(disk).stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

/// (start, size) in sectors of each partition, and the names.
fn table(disk: &Path) -> (Vec<(u64, u64)>, Vec<String>) {
    let out = run(Command::new("sfdisk").arg("--json").arg(disk)).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let parts = v["partitiontable"]["partitions"].as_array().unwrap();
    (
        parts.iter().map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap())).collect(),
        parts.iter().map(|p| p["name"].as_str().unwrap_or("").to_string()).collect(),
    )
}

fn install(d: &Device, b: &Path) -> testkit::Run {
    fs::create_dir_all(d.path("dump")).unwrap();
    run(d.rota().env("HOOK_DUMP", d.path("dump")).arg("install").arg(b))
}

#[test]
fn mbr_switch_alternates_halves_and_moves_entry_zero() {
    let d = device("boot-mbr", "boot-mbr-switch", "region-start=1M\nregion-size=2M");
    let disk = d.slot_file("disk.img", 8 * MIB, 0x5A);
    sfdisk(&disk, "label: dos\nstart=2048, size=2048, type=c\nstart=8192, size=4096, type=83\n");
    let (b, img) = bundle("boot-mbr", 300 * 1024, 7, true);
    install(&d, &b).ok();
    let bytes = fs::read(&disk).unwrap();
    assert_eq!(&bytes[2 * MIB..2 * MIB + img.len()], &img[..], "written to the inactive (second) half");
    assert!(bytes[2 * MIB + img.len()..3 * MIB].iter().all(|&b| b == 0), "rest of the half cleared");
    assert!(bytes[MIB..2 * MIB].iter().all(|&b| b == 0x5A), "active half untouched");
    assert_eq!(table(&disk).0, [(4096, 2048), (8192, 4096)]);
    run(Command::new("sfdisk").arg("--verify").arg(&disk)).ok();
    let env = fs::read_to_string(d.path("dump/slot-pre-install")).unwrap();
    assert_eq!(
        env,
        format!(
            "RAUC_BOOT_PARTITION_ACTIVATING=1\nRAUC_BOOT_PARTITION_SIZE={MIB}\nRAUC_BOOT_PARTITION_START={}\n",
            2 * MIB
        )
    );
    // The next update goes back to the first half.
    let (b2, img2) = bundle("boot-mbr-2", 200 * 1024, 8, false);
    install(&d, &b2).ok();
    let bytes = fs::read(&disk).unwrap();
    assert_eq!(&bytes[MIB..MIB + img2.len()], &img2[..]);
    assert_eq!(&bytes[2 * MIB..2 * MIB + img.len()], &img[..], "previous copy kept as the inactive half");
    assert_eq!(table(&disk).0, [(2048, 2048), (8192, 4096)]);
}

#[test]
fn mbr_switch_refuses_a_table_that_does_not_match_the_region() {
    let d = device("boot-mbr-bad", "boot-mbr-switch", "region-start=1M\nregion-size=2M");
    let disk = d.slot_file("disk.img", 8 * MIB, 0x5A);
    sfdisk(&disk, "label: dos\nstart=6144, size=2048, type=c\n");
    let before = fs::read(&disk).unwrap();
    let (b, _) = bundle("boot-mbr-bad", 100 * 1024, 9, false);
    let r = install(&d, &b).fails();
    assert!(
        r.stderr.contains(&format!(
            "First partition of '{}' starts at byte {}, which is neither half of the region of slot bootloader.0",
            disk.display(),
            3 * MIB
        )),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read(&disk).unwrap(), before, "nothing written");
    // An image larger than half the region is refused before writing.
    sfdisk(&disk, "label: dos\nstart=2048, size=2048, type=c\n");
    let before = fs::read(&disk).unwrap();
    let (b, _) = bundle("boot-mbr-big", MIB + 4096, 10, false);
    let r = install(&d, &b).fails();
    assert!(r.stderr.contains("does not fit into half of the region (1048576 bytes)"), "{}", r.stderr);
    assert_eq!(fs::read(&disk).unwrap(), before);
}

#[test]
fn gpt_switch_moves_entry_one_and_keeps_the_table_valid() {
    let d = device("boot-gpt", "boot-gpt-switch", "region-start=1M\nregion-size=4M");
    let disk = d.slot_file("disk.img", 16 * MIB, 0);
    sfdisk(&disk, "label: gpt\nstart=2048, size=4096, name=boot\nstart=12288, size=8192, name=data\n");
    let (b, img) = bundle("boot-gpt", 512 * 1024, 11, false);
    install(&d, &b).ok();
    let bytes = fs::read(&disk).unwrap();
    assert_eq!(&bytes[3 * MIB..3 * MIB + img.len()], &img[..]);
    let (parts, names) = table(&disk);
    assert_eq!(parts, [(6144, 4096), (12288, 8192)]);
    assert_eq!(names, ["boot", "data"], "entry attributes kept");
    run(Command::new("sfdisk").arg("--verify").arg(&disk)).ok();
    install(&d, &b).ok();
    assert_eq!(table(&disk).0[0], (2048, 4096));
}

#[test]
fn raw_fallback_writes_both_copies_headers_last() {
    let d = device("boot-fallback", "boot-raw-fallback", "region-start=1M\nregion-size=2M");
    let disk = d.slot_file("disk.img", 4 * MIB, 0);
    // A previous image in both halves: the primary header is not clear, so
    // the fallback is written first.
    let old = pseudo_random(MIB, 3);
    let mut bytes = fs::read(&disk).unwrap();
    bytes[MIB..2 * MIB].copy_from_slice(&old);
    bytes[2 * MIB..3 * MIB].copy_from_slice(&old);
    fs::write(&disk, &bytes).unwrap();
    let (b, img) = bundle("boot-fallback", 600 * 1024, 12, true);
    install(&d, &b).ok();
    let bytes = fs::read(&disk).unwrap();
    for half in [MIB, 2 * MIB] {
        assert_eq!(&bytes[half..half + img.len()], &img[..]);
        assert!(bytes[half + img.len()..half + MIB].iter().all(|&b| b == 0));
    }
    assert!(bytes[..MIB].iter().chain(&bytes[3 * MIB..]).all(|&b| b == 0), "outside the region untouched");
    let env = fs::read_to_string(d.path("dump/slot-post-install")).unwrap();
    assert_eq!(env, format!("RAUC_BOOT_REGION_SIZE={}\nRAUC_BOOT_REGION_START={MIB}\n", 2 * MIB));
}
