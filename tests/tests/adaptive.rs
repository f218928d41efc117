//! Adaptive updates (`adaptive=block-hash-index`, spec §10.3) streamed from
//! a real nginx: after 5 % of a 256 MiB raw image's blocks changed, only
//! about those blocks cross the network; the result is the new image
//! exactly, also when a slot changed behind its cached index; a device
//! without a data directory falls back to a full copy; local bundles are
//! installed adaptively too.

use std::fs;
use std::path::Path;
use testkit::device::{Device, grub_selected, grubenv};
use testkit::nginx::{Nginx, web_root};
use testkit::{Content, pki_file, pseudo_random, remove_tree, rota_bundle, run, sha256_hex, target_dir};

const MIB: usize = 1 << 20;
const SIZE: usize = 256 * MIB;
const BLOCK: usize = 4096;
/// Changes come in runs of 32 blocks (128 KiB, one squashfs block), as
/// rewritten files and extents do.
const RUN: usize = 32 * BLOCK;

/// `base` with `percent` % of its blocks replaced, in runs at
/// pseudo-random places.
fn changed(base: &[u8], percent: usize, seed: u64) -> Vec<u8> {
    let mut out = base.to_vec();
    let runs = base.len() / RUN;
    let want = runs * percent / 100;
    let picks = pseudo_random(want * 64, seed);
    let mut taken = vec![false; runs];
    let mut n = 0;
    for (i, chunk) in picks.chunks(8).enumerate() {
        if n == want {
            break;
        }
        let r = (u64::from_le_bytes(chunk.try_into().unwrap()) % runs as u64) as usize;
        if !taken[r] {
            taken[r] = true;
            out[r * RUN..(r + 1) * RUN].copy_from_slice(&pseudo_random(RUN, seed * 1000 + i as u64));
            n += 1;
        }
    }
    assert_eq!(n, want);
    out
}

/// A verity bundle of `image` (adaptive) published as `www/<name>.raucb`;
/// returns its size.
fn publish(www: &Path, name: &str, image: &[u8]) -> u64 {
    let dir = target_dir().join("test-bundles/adaptive").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    fs::write(c.dir.join("rootfs.img"), image).unwrap();
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat=verity\n\
         [image.rootfs]\nfilename=rootfs.img\nadaptive=block-hash-index\n",
    );
    let out = www.join(format!("{name}.raucb"));
    rota_bundle(&c.dir, &out, "release").ok();
    remove_tree(&dir);
    fs::metadata(&out).unwrap().len()
}

fn device(name: &str, system_extra: &str, a: &[u8]) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\n{system_extra}\n\
         [keyring]\npath={}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(target_dir().join("test-devices/adaptive").join(name), &conf);
    d.grub_env(&["A", "B"]);
    fs::write(d.path("rootfs0.img"), a).unwrap();
    d.slot_file("rootfs1.img", SIZE, 0x5A);
    d
}

/// The bytes the install reported it downloaded.
fn reported(log: &str) -> u64 {
    let line = log.lines().find(|l| l.contains("downloaded ")).unwrap_or_else(|| panic!("no report: {log}"));
    line.split("downloaded ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).expect("bytes")
}

#[test]
fn five_percent_changed_fetches_little_more_than_the_changed_blocks() {
    let (_t, www) = web_root();
    let nginx = Nginx::serve(&www);
    let v1 = pseudo_random(SIZE, 71);
    let v2 = changed(&v1, 5, 72);
    let v2_size = publish(&www, "v2", &v2);

    // v1 runs in A; B holds something else. 5 % of the blocks are new.
    let d = device("five-percent", "data-directory=data", &v1);
    let out = run(d.rota().args(["install", &nginx.url("/v2.raucb")])).ok();
    let log = format!("{}{}", out.stdout, out.stderr);
    assert!(fs::read(d.path("rootfs1.img")).unwrap() == v2, "B does not hold v2");
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("B"));
    assert!(log.contains("Adaptive update of rootfs.1: "), "{log}");

    let changed_bytes = (SIZE * 5 / 100 / RUN * RUN) as u64;
    let index = (SIZE / BLOCK * 32) as u64;
    // Everything in the bundle that is not file data (the random image and
    // index are stored uncompressed): squashfs tables, verity hash tree,
    // signature.
    let metadata = v2_size - SIZE as u64 - index;
    let fetched = nginx.served("/v2.raucb");
    let bound = (changed_bytes + index + metadata) * 12 / 10;
    eprintln!("fetched {fetched} of {v2_size} bytes; changed {changed_bytes}, index {index}, metadata {metadata}");
    assert!(
        fetched <= bound,
        "fetched {fetched} bytes, more than 1.2 × ({changed_bytes} changed + {index} index + {metadata} metadata)"
    );
    assert_eq!(reported(&log), fetched, "the install reports what it downloaded: {log}");
    // The bundle's index is kept as the new slot content's index.
    let cached = d.path(&format!("data/slot.rootfs.1/hash-{}/block-hash-index", sha256_hex(&v2)));
    assert_eq!(fs::metadata(&cached).map(|m| m.len()).ok(), Some(index), "{}", cached.display());

    // Now B runs v2, but some of its blocks changed behind its cached index
    // (a slot mounted read-write): blocks that no longer match are taken
    // from elsewhere, and A ends up holding v3 exactly.
    let mut b = fs::read(d.path("rootfs1.img")).unwrap();
    for i in 0..64 {
        let at = (i * 997 + 13) * BLOCK;
        b[at..at + BLOCK].fill(0xEE);
    }
    fs::write(d.path("rootfs1.img"), &b).unwrap();
    let v3 = changed(&v2, 5, 73);
    publish(&www, "v3", &v3);
    d.boot("rauc.slot=B");
    let out = run(d.rota().args(["install", &nginx.url("/v3.raucb")])).ok();
    assert!(fs::read(d.path("rootfs0.img")).unwrap() == v3, "A does not hold v3: {}{}", out.stdout, out.stderr);
    assert!(fs::read(d.path("rootfs1.img")).unwrap() == b, "the booted slot was written");
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("A"));
}

#[test]
fn without_a_data_directory_the_full_image_is_copied() {
    let (_t, www) = web_root();
    let nginx = Nginx::serve(&www);
    let v1 = pseudo_random(SIZE / 8, 81);
    let v2 = changed(&v1, 5, 82);
    let size = publish(&www, "nodata", &v2);
    let d = device("no-data-dir", "", &v1);
    fs::write(d.path("rootfs1.img"), vec![0x5A; SIZE / 8]).unwrap();
    let out = run(d.rota().args(["install", &nginx.url("/nodata.raucb")])).ok();
    let log = format!("{}{}", out.stdout, out.stderr);
    assert!(log.contains("Adaptive update of rootfs.1 not possible (no data-directory configured)"), "{log}");
    assert!(fs::read(d.path("rootfs1.img")).unwrap() == v2);
    assert!(nginx.served("/nodata.raucb") >= (SIZE / 8) as u64 && nginx.served("/nodata.raucb") <= size + size / 50);

    // The same bundle as a local file, on a device with a data directory:
    // adaptive too, and most blocks come from the booted slot.
    let d = device("local-bundle", "data-directory=data", &v1);
    fs::write(d.path("rootfs1.img"), vec![0x5A; SIZE / 8]).unwrap();
    let out = run(d.rota().arg("install").arg(www.join("nodata.raucb"))).ok();
    let log = format!("{}{}", out.stdout, out.stderr);
    assert!(log.contains("Adaptive update of rootfs.1: "), "{log}");
    let from_seed: u64 = log
        .split(" from the seed")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seed count: {log}"));
    assert!(from_seed >= (SIZE / 8 / BLOCK * 9 / 10) as u64, "{log}");
    assert!(fs::read(d.path("rootfs1.img")).unwrap() == v2);
}

/// A tree of `files` files (random content, 4–60 KiB) in a few directories.
fn tree(dir: &Path, files: usize, seed: u64) {
    for i in 0..files {
        let sub = dir.join(format!("pkg{}", i % 7));
        fs::create_dir_all(&sub).unwrap();
        let len = 4096 + (i * 7919 % 15) * 4096;
        fs::write(sub.join(format!("f{i:04}")), pseudo_random(len, seed * 100_000 + i as u64)).unwrap();
    }
}

/// An ext4 filesystem image (4 KiB blocks) of `size` bytes holding `dir`,
/// made reproducibly as release builds make them (fixed UUID, hash seed
/// and time: otherwise every metadata block's checksum changes).
fn ext4_image(dir: &Path, out: &Path, size: usize) -> Vec<u8> {
    let _ = fs::remove_file(out);
    let uuid = "6b1c2f6e-0d53-4c3a-9f5e-3d8f7a1b2c4d";
    let mut mkfs = std::process::Command::new("mkfs.ext4");
    mkfs.env("E2FSPROGS_FAKE_TIME", "1700000000").args(["-q", "-b", "4096", "-U", uuid]);
    mkfs.arg("-E").arg(format!("hash_seed={uuid}")).arg("-d").arg(dir).arg(out).arg(format!("{}K", size / 1024));
    run(&mut mkfs).ok();
    fs::read(out).unwrap()
}

/// The counts of the install's adaptive summary line, by name.
fn adaptive_counts(log: &str) -> std::collections::HashMap<String, u64> {
    let line = log.lines().find(|l| l.contains("Adaptive update of rootfs.1: ")).unwrap_or_else(|| panic!("{log}"));
    let mut out = std::collections::HashMap::new();
    let counts = line.split("Adaptive update of rootfs.1: ").nth(1).unwrap();
    for part in counts.split(";").next().unwrap().split(", ") {
        let mut words = part.split(' ');
        let Some(n) = words.next().and_then(|w| w.parse().ok()) else { continue };
        let what: Vec<&str> = words.take_while(|w| !w.starts_with('(')).collect();
        out.insert(what.join(" "), n);
    }
    out
}

#[test]
fn a_filesystem_release_reuses_the_targets_blocks_and_fetches_what_is_new() {
    const FS: usize = 48 * MIB;
    let (_t, www) = web_root();
    let nginx = Nginx::serve(&www);
    let work = target_dir().join("test-bundles/adaptive/ext4-release");
    remove_tree(&work);
    // Version 1, and version 2 as a release changes it: a file inserted in
    // the middle (the files after it move), new files, one of them a copy of
    // a file the system has (as licenses and shared libraries are), one
    // file rewritten.
    let (t1, t2) = (work.join("v1"), work.join("v2"));
    tree(&t1, 300, 1);
    run(std::process::Command::new("cp").arg("-a").arg(&t1).arg(&t2)).ok();
    let inserted = pseudo_random(MIB, 2);
    fs::write(t2.join("pkg3/f0150-inserted"), &inserted).unwrap();
    fs::create_dir_all(t2.join("new")).unwrap();
    for i in 0..3 {
        fs::write(t2.join(format!("new/n{i}")), pseudo_random(MIB / 2, 3 + i)).unwrap();
    }
    fs::write(t2.join("pkg1/f0008"), pseudo_random(64 * 1024, 9)).unwrap();
    let copied = fs::read(t2.join("pkg5/f0012")).unwrap();
    fs::write(t2.join("new/copy-of-f0012"), &copied).unwrap();
    let new_bytes = (MIB + 3 * MIB / 2 + 64 * 1024) as u64;
    let v1 = ext4_image(&t1, &work.join("v1.ext4"), FS);
    let v2 = ext4_image(&t2, &work.join("v2.ext4"), FS);
    publish(&www, "fs-v1", &v1);
    let v2_size = publish(&www, "fs-v2", &v2);

    // A runs v1; B got v1 by an earlier update, whose index the device
    // keeps (a central status file under the data directory).
    let d = device("ext4-release", "data-directory=data", &v1);
    fs::write(d.path("rootfs1.img"), vec![0x5A; FS]).unwrap();
    run(d.rota().args(["install", &nginx.url("/fs-v1.raucb")])).ok();
    d.boot("rauc.slot=A");
    let before = nginx.served("/fs-v2.raucb");
    let out = run(d.rota().args(["install", &nginx.url("/fs-v2.raucb")])).ok();
    let log = format!("{}{}", out.stdout, out.stderr);
    assert!(fs::read(d.path("rootfs1.img")).unwrap() == v2, "B does not hold v2");
    assert!(!log.contains("adaptive mode error"), "{log}");
    assert!(log.contains("the target's index kept from its last update"), "{log}");
    let c = adaptive_counts(&log);
    // Most blocks stay where they are; the copied file is taken from the
    // target itself, what moved from the booted slot.
    assert!(c["of 12288 blocks unchanged"] > 12288 / 2, "{c:?}");
    assert!(c["from the target"] >= copied.len() as u64 / 4096, "{c:?}");
    assert!(c["from the seed"] > 100, "{c:?}");
    let fetched = nginx.served("/fs-v2.raucb") - before;
    let index = (FS / BLOCK * 32) as u64;
    eprintln!("fetched {fetched} of {v2_size} bytes; new file data {new_bytes}, index {index}: {c:?}");
    assert!(fetched >= new_bytes, "less than the new files' data: {fetched}");
    assert!(fetched <= new_bytes + index + 6 * MIB as u64, "fetched {fetched} of {v2_size} bytes");
}

#[test]
fn a_target_too_large_for_an_index_gets_the_full_image() {
    // A 512 GiB (sparse) target would need an index of 2^27 entries, over
    // RAUC's bound: the adaptive write is given up before any hashing, in
    // RAUC's words, and the image is copied in full.
    let (_t, www) = web_root();
    let v1 = pseudo_random(SIZE / 32, 91);
    let v2 = changed(&v1, 5, 92);
    publish(&www, "huge-target", &v2);
    let d = device("huge-target", "data-directory=data", &v1);
    let target = fs::OpenOptions::new().write(true).create(true).truncate(true).open(d.path("rootfs1.img")).unwrap();
    target.set_len(1 << 39).unwrap();
    drop(target);
    let out = run(d.rota().arg("install").arg(www.join("huge-target.raucb"))).ok();
    let log = format!("{}{}", out.stdout, out.stderr);
    assert!(
        log.contains(
            "Continuing after adaptive mode error: failed to open target slot hash index for rootfs.1: \
             image/partition size (549755813888) is too large"
        ),
        "{log}"
    );
    let mut written = vec![0u8; v2.len()];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(d.path("rootfs1.img")).unwrap(), &mut written, 0)
        .unwrap();
    assert!(written == v2);
}
