//! Write faults on the target medium (RELIABILITY.md, campaign "write
//! faults"): `rota-flaky-medium` under the inactive slot fails writes with
//! EIO, runs out of space, cuts writes short, fails fsync or fails reading
//! back, at offsets chosen at every edge of the image and at random. Each
//! failing case must end with a precise error naming the slot and the cause,
//! the slot marked failed and not activated, the booted slots and the
//! bootloader untouched, nothing left behind, and the next install on an
//! honest medium succeeding. Short writes must be finished, not reported.
//!
//! The medium is a mock (a FUSE file): this machine has no failing flash.
//! `ROTA_WRITE_FAULT_CASES` sets the number of random offsets per fault
//! (the quick default is 3; the campaign runs more).

use std::fs;
use std::path::{Path, PathBuf};
use testkit::bus::{Bus, Service};
use testkit::device::{Device, grubenv};
use testkit::medium::FlakyMedium;
use testkit::{Content, Run, pki_file, rota_bundle, run, serial, sha256_hex, target_dir};

const SLOT_SIZE: u64 = 512 * 1024;

fn device(name: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\nmountprefix=mnt\n\
         [keyring]\npath={}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(target_dir().join("test-devices").join(name), &conf);
    d.grub_env(&["A", "B"]);
    for f in ["rootfs0.img", "rootfs1.img"] {
        d.slot_file(f, SLOT_SIZE as usize, 0xAA);
    }
    d
}

/// A signed bundle of `format` with one image of `len` pseudo-random bytes.
fn bundle(name: &str, format: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let dir = target_dir().join("test-bundles").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    let image = testkit::pseudo_random(len, 22);
    fs::write(c.dir.join("rootfs.img"), &image).unwrap();
    c.manifest(&format!(
        "[update]\ncompatible=Test Config\nversion=1\n[bundle]\nformat={format}\n[image.rootfs]\nfilename=rootfs.img\n"
    ));
    let out = dir.join("b.raucb");
    rota_bundle(&c.dir, &out, "release").ok();
    (out, image)
}

fn medium(d: &Device, faults: &[String]) -> FlakyMedium {
    let program = Path::new(env!("CARGO_BIN_EXE_rota-flaky-medium"));
    FlakyMedium::mount(program, &d.path("rootfs1.img"), &d.path("rootfs1.backing"), faults)
}

/// Everything a failed install must leave as it was: the booted slot (its
/// digest) and what the bootloader's environment says of it and of the boot
/// order. (The target's own `B_OK` is cleared before it is written.)
fn snapshot(d: &Device) -> (String, Vec<String>) {
    let env = grubenv(&d.path("grubenv")).into_iter().filter(|l| !l.starts_with("B_")).collect();
    (sha256_hex(&fs::read(d.path("rootfs0.img")).unwrap()), env)
}

/// Offsets to try in an image of `len` bytes: its first and last byte, the
/// edges of its first and last 4 KiB blocks and of the 128 KiB writes, its
/// middle, and `random` more from a seeded generator.
fn offsets(len: u64, random: usize, seed: u64) -> Vec<u64> {
    let mut at = vec![0, 4095, 4096, 128 * 1024 - 1, 128 * 1024, len / 2, len - 4096, len - 1];
    // Reproducible from the seed printed on failure.
    let mut rng = testkit::Rng::new(seed);
    for _ in 0..random {
        at.push(rng.below(len));
    }
    at.sort_unstable();
    at.dedup();
    at
}

fn random_cases() -> usize {
    std::env::var("ROTA_WRITE_FAULT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3)
}

/// What a failed install must show: the cause in the error, the slot failed
/// and inactive, the booted slot and the bootloader as `before`.
fn assert_failed_cleanly(d: &Device, r: &Run, cause: &str, before: &(String, Vec<String>), case: &str) {
    let expected = format!("Failed updating slot rootfs.1: {cause}");
    assert!(r.stderr.contains(&expected), "{case}: expected '{expected}' in: {}", r.stderr);
    assert_eq!(&snapshot(d), before, "{case}: the booted slot or the bootloader changed");
    assert!(grubenv(&d.path("grubenv")).contains(&"B_OK=0".to_string()), "{case}: the target is not marked bad");
    let central = fs::read_to_string(d.path("data/central.raucs")).unwrap();
    let section = central.split("[slot.rootfs.1]").nth(1).unwrap_or("");
    assert!(section.contains("status=failed"), "{case}: {central}");
    assert!(!d.path("mnt").exists() || fs::read_dir(d.path("mnt")).unwrap().next().is_none(), "{case}: mounts left");
    // The flaky medium itself is unmounted by now: nothing may be left.
    let left = testkit::mounts_below(&d.dir);
    assert!(left.is_empty(), "{case}: left mounted: {left:?}");
}

#[test]
fn every_write_fault_fails_the_install_cleanly_and_the_next_install_succeeds() {
    let _g = serial();
    let d = device("write-faults");
    let len = 384 * 1024;
    let (verity, image) = bundle("write-faults-verity", "verity", len);
    let (plain, _) = bundle("write-faults-plain", "plain", len);
    let seed = 0x5eed_2026;
    let cases = offsets(len as u64, random_cases(), seed);
    let mut tried = 0;
    let dev = d.path("rootfs1.img");
    let read_back = format!("Failed to read back '{}': Input/output error (os error 5)", dev.display());
    let write = format!("Failed writing image: Failed to write '{}' at byte ", dev.display());
    for (kind, cause, errno) in [
        ("eio", write.as_str(), "Input/output error (os error 5)"),
        ("enospc", write.as_str(), "No space left on device (os error 28)"),
        ("read-eio", read_back.as_str(), ""),
    ] {
        for (i, at) in cases.iter().enumerate() {
            let b = if i % 2 == 0 { &verity } else { &plain };
            let case = format!("{kind}@{at} ({}, seed {seed:#x})", b.display());
            let before = snapshot(&d);
            let m = medium(&d, &[format!("{kind}@{at}")]);
            let r = run(d.rota().arg("install").arg(b)).fails();
            assert!(m.unmount().faults > 0, "{case}: no fault was injected");
            assert_failed_cleanly(&d, &r, cause, &before, &case);
            assert!(r.stderr.contains(errno), "{case}: expected '{errno}' in: {}", r.stderr);
            tried += 1;
        }
    }
    // fsync failing: the data may not be on the medium, so nothing is activated.
    let before = snapshot(&d);
    let m = medium(&d, &["fsync-eio".to_string()]);
    let r = run(d.rota().arg("install").arg(&verity)).fails();
    assert!(m.unmount().faults > 0, "fsync-eio: no fault was injected");
    let sync = format!("Failed to sync '{}': Input/output error (os error 5)", dev.display());
    assert_failed_cleanly(&d, &r, &sync, &before, "fsync-eio");
    eprintln!("write faults: {} failing cases, all clean", tried + 1);

    // After all that, an honest medium takes the next install.
    let m = medium(&d, &[]);
    run(d.rota().arg("install").arg(&verity)).ok();
    assert_eq!(m.unmount().faults, 0);
    assert_eq!(sha256_hex(&fs::read(d.path("rootfs1.backing")).unwrap()[..len]), sha256_hex(&image));
    assert_eq!(grubenv(&d.path("grubenv")).iter().find(|l| l.starts_with("ORDER=")).unwrap(), "ORDER=B A");
}

#[test]
fn short_writes_are_finished_and_the_image_is_whole() {
    let _g = serial();
    let d = device("write-faults-short");
    let len = 384 * 1024;
    let (b, image) = bundle("write-faults-short", "verity", len);
    let cases = offsets(len as u64, random_cases(), 0x5107_7e11);
    for &at in &cases {
        d.grub_env(&["A", "B"]);
        let m = medium(&d, &[format!("short@{at}")]);
        let r = run(d.rota().arg("install").arg(&b));
        assert_eq!(m.unmount().faults, 1, "short@{at}: one write was cut short");
        assert_eq!(r.code, 0, "short@{at}: {}", r.stderr);
        let written = fs::read(d.path("rootfs1.backing")).unwrap();
        assert_eq!(sha256_hex(&written[..len]), sha256_hex(&image), "short@{at}");
    }
    eprintln!("short writes: {} cases, all finished", cases.len());
}

#[test]
fn the_service_leaks_nothing_over_failed_writes() {
    let _g = serial();
    let d = device("write-faults-service");
    let len = 384 * 1024;
    let (b, _) = bundle("write-faults-service", "verity", len);
    let bus = Bus::start();
    let svc = Service::start(&d, &bus, &[]);
    let client = |bundle: &Path| run(d.rota().envs(bus.env()).arg("install").arg(bundle));
    // One honest install first: what the service holds open after it is
    // the baseline.
    let m = medium(&d, &[]);
    client(&b).ok();
    m.unmount();
    let baseline = svc.settled_fds();
    // Only mounts below the device count: the machine may mount other things meanwhile.
    let mounts = || testkit::mounts_below_seen_by(&svc.pid().to_string(), &d.dir);
    assert_eq!(mounts(), Vec::<String>::new(), "mounts left by the honest install");
    for (i, fault) in ["eio@200000", "enospc@100000", "read-eio@300000", "fsync-eio", "eio@0"].iter().enumerate() {
        d.grub_env(&["A", "B"]);
        let before = snapshot(&d);
        let m = medium(&d, &[fault.to_string()]);
        let r = client(&b);
        assert!(m.unmount().faults > 0, "{fault}: no fault was injected");
        assert_eq!(r.code, 1, "{fault}: {}", r.stdout);
        assert!(
            r.stdout.contains("LastError: Installation error: Failed updating slot rootfs.1: "),
            "{fault}: {}",
            r.stdout
        );
        assert_eq!(snapshot(&d), before, "{fault}: the booted slot or the bootloader changed");
        let fds = svc.settled_fds();
        assert!(fds <= baseline, "{fault} (case {i}): the service holds {fds} files open, {baseline} before");
        assert_eq!(mounts(), Vec::<String>::new(), "{fault}: mounts left");
    }
    let m = medium(&d, &[]);
    client(&b).ok();
    m.unmount();
    assert!(svc.stop().success());
}
