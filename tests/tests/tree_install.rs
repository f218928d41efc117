//! File-level delta installs of `tree` images into ext4 slots (file-backed,
//! mounted through loop devices): version N runs in A, N+1 is installed into
//! B from a local bundle or streamed from nginx. The result equals N+1
//! exactly (contents, modes, owners, xattrs, capabilities, links, devices,
//! the sparse file); files the device has are copied or kept, only the rest
//! is read from the bundle; a corrupted local copy is not reused, a tampered
//! bundle is refused, an interrupted install is finished by the next one.

use rota_bundle::tree::{Entry, FileIndex, Kind};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::device::{Device, grub_selected, grubenv};
use testkit::nginx::{Nginx, web_root};
use testkit::trees::{
    assert_same_tree, bundle_as, ext4, ext4_device, find, scan_image, sh, with_mounted, with_mounted_ro,
};
use testkit::{Run, WorkDir, pki_file, rootfs, run, target_dir};

/// Files per generated tree and their mean size.
const FILES: usize = 3000;
const MEAN: usize = 8 * 1024;

/// Version 1 of a tree and its successor with `percent` % of the files
/// changed, their indexes, and a bundle of version 2.
struct Fixture {
    dir: PathBuf,
    _work: WorkDir,
    v1: PathBuf,
    v2: PathBuf,
    bundle: PathBuf,
    i1: FileIndex,
    i2: FileIndex,
}

impl Fixture {
    /// Made in `test-bundles/tree-install/<name>` (removed when the test
    /// passes); the bundle is written into `www` if given.
    fn new(name: &str, percent: usize, www: Option<&Path>) -> Fixture {
        let work = WorkDir::new(target_dir().join("test-bundles/tree-install").join(name));
        let dir = work.path().to_path_buf();
        let (v1, v2) = (dir.join("trees/v1"), dir.join("trees/v2"));
        rootfs::generate(&v1, FILES, MEAN, 1);
        sh(&format!("cp -a {} {}", v1.display(), v2.display()));
        rootfs::change(&v2, percent, 2);
        let bundle_path = www.unwrap_or(&dir).join("v2.raucb");
        bundle(&v2, &bundle_path);
        let (i1, i2) = (FileIndex::scan(&v1).unwrap(), FileIndex::scan(&v2).unwrap());
        Fixture { dir, _work: work, v1, v2, bundle: bundle_path, i1, i2 }
    }
}

/// Path → digest of the regular files of `index`.
fn contents_at(index: &FileIndex) -> HashMap<&[u8], &str> {
    index.entries.iter().filter_map(|e| Some((e.path.as_slice(), e.sha256.as_deref()?))).collect()
}

/// A verity bundle with `tree` as the rootfs tree image, at `out`.
fn bundle(tree: &Path, out: &Path) {
    bundle_as(tree, out, "verity");
}

/// A device booted from A holding `a`; B holds `b` (or nothing).
fn device(name: &str, a: &Path, b: Option<&Path>) -> Device {
    device_with(name, a, b, "")
}

/// [`device`] with more configuration (`[tree]` and such).
fn device_with(name: &str, a: &Path, b: Option<&Path>, extra: &str) -> Device {
    ext4_device(name, a, b, "data-directory=data", extra)
}

/// The numbers of the install's summary line:
/// (files, reused, copied, fetched, bytes fetched).
fn summary(r: &Run) -> (u64, u64, u64, u64, u64) {
    let text = format!("{}{}", r.stdout, r.stderr);
    let line = text.lines().find(|l| l.contains("Tree update of rootfs.1: ")).unwrap_or_else(|| panic!("{text}"));
    let nums: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
    // rootfs.1 → 1, then files, reused, bytes, copied, bytes, fetched, bytes, stored.
    (nums[1], nums[2], nums[4], nums[6], nums[7])
}

/// Distinct contents of `new` that no path holding them had in `old`
/// (what a device with `old` and no kept index must fetch).
fn fresh_contents(old: &FileIndex, new: &FileIndex) -> usize {
    let old_at = contents_at(old);
    let mut local: HashSet<&str> = HashSet::new();
    let mut all: HashSet<&str> = HashSet::new();
    for e in new.entries.iter().filter(|e| e.kind == Kind::File) {
        let sha = e.sha256.as_deref().unwrap();
        all.insert(sha);
        if old_at.get(e.path.as_slice()) == Some(&sha) {
            local.insert(sha);
        }
    }
    all.difference(&local).count()
}

/// Boots `d` from B (holding the fixture's v2), installs a v3 with 5 % of
/// v2's files changed into A (holding v1) and checks that only contents
/// neither in v2 nor at the same path in v1 were fetched; returns v3's
/// index and the summary line.
fn install_v3_into_a(d: &Device, f: &Fixture) -> (FileIndex, String) {
    let v3 = f.dir.join("trees/v3");
    sh(&format!("cp -a {} {}", f.v2.display(), v3.display()));
    rootfs::change(&v3, 5, 3);
    let i3 = FileIndex::scan(&v3).unwrap();
    let b3 = f.dir.join("v3.raucb");
    bundle(&v3, &b3);
    d.boot("rauc.slot=B");
    let r = run(d.rota().arg("install").arg(&b3)).ok();
    let text = format!("{}{}", r.stdout, r.stderr);
    let line = text.lines().find(|l| l.contains("Tree update of rootfs.0: ")).unwrap_or_else(|| panic!("{text}"));
    let in_v2: HashSet<&str> = f.i2.entries.iter().filter_map(|e| e.sha256.as_deref()).collect();
    let v1_at = contents_at(&f.i1);
    let needed: HashSet<&str> = i3
        .entries
        .iter()
        .filter_map(|e| Some((e.path.as_slice(), e.sha256.as_deref()?)))
        .filter(|(p, s)| !in_v2.contains(s) && v1_at.get(p) != Some(s))
        .map(|(_, s)| s)
        .collect();
    assert!(line.contains(&format!(", {} fetched from the bundle", needed.len())), "{line}");
    (i3, line.to_string())
}

#[test]
fn a_local_bundle_builds_the_new_tree_from_the_booted_slot_and_the_changed_files() {
    let f = Fixture::new("local", 5, None);
    let Fixture { v1, bundle: b, i1, i2, .. } = &f;

    // B was emptied: every file comes from A or the bundle.
    let d = device("local", v1, None);
    let r = run(d.rota().arg("install").arg(b)).ok();
    assert_same_tree(&scan_image(&d.path("rootfs1.img")), i2);
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("B"));
    let (files, reused, copied, fetched, _) = summary(&r);
    assert_eq!(fetched as usize, fresh_contents(i1, i2), "{}", r.stdout);
    assert_eq!(reused, 0);
    assert_eq!(files, reused + copied + fetched);
    // Every kind of object arrived with its metadata.
    let got = scan_image(&d.path("rootfs1.img"));
    assert_eq!(find(&got, "dev/null").kind, Kind::Char);
    assert_eq!(find(&got, "dev/loop7").kind, Kind::Block);
    assert_eq!(find(&got, "dev/initctl").kind, Kind::Fifo);
    assert!(find(&got, "usr/bin/tool").xattrs.contains_key("security.capability"));
    assert_eq!(find(&got, "usr/bin/tool").mode, 0o4755);
    assert_eq!(find(&got, "usr/lib/multi3").link_group, find(&got, "usr/lib/multi1").link_group);
    assert_eq!(find(&got, "etc/dangling").kind, Kind::Dir);
    // The sparse file stays sparse.
    let m = tempfile::tempdir().unwrap();
    run(Command::new("mount").args(["-o", "ro"]).arg(d.path("rootfs1.img")).arg(m.path())).ok();
    let blocks = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(m.path().join("var/sparse")).unwrap().blocks()
    };
    run(Command::new("umount").arg(m.path())).ok();
    assert!(blocks * 512 < 1 << 20, "var/sparse takes {} bytes", blocks * 512);
    // The installed index is kept for the next update.
    let kept: Vec<_> = fs::read_dir(d.path("data/slot.rootfs.1")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");

    // B runs v2 now; v3 goes into A, which still holds v1: files A already
    // has stay where they are, moved files are found in B by content.
    let (i3, line) = install_v3_into_a(&d, &f);
    assert_same_tree(&scan_image(&d.path("rootfs0.img")), &i3);
    assert!(!line.contains(" 0 reused"), "{line}");
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("A"));
}

/// The bytes of the files below `dir`, packed as the bundle tool packs a
/// tree (same compressor, no fragments): the compressed size of those files.
fn packed_size(dir: &Path) -> u64 {
    let out = dir.with_extension("sqfs");
    let _ = fs::remove_file(&out);
    run(Command::new("mksquashfs").arg(dir).arg(&out).args(["-quiet", "-no-progress", "-no-fragments", "-all-root"]))
        .ok();
    fs::metadata(&out).unwrap().len()
}

#[test]
fn a_streamed_install_fetches_little_more_than_the_changed_files() {
    let (_t, www) = web_root();
    let f = Fixture::new("stream", 5, Some(&www));
    let Fixture { dir, v1, v2, bundle: b, i1, i2, .. } = &f;
    let nginx = Nginx::serve(&www);

    let d = device("stream", v1, Some(v1));
    let r = run(d.rota().args(["install", &nginx.url("/v2.raucb")])).ok();
    assert_same_tree(&scan_image(&d.path("rootfs1.img")), i2);
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("B"));
    let (_, reused, _, fetched, _) = summary(&r);
    assert_eq!(fetched as usize, fresh_contents(i1, i2));
    assert!(reused > 0);

    // What had to cross the network: the changed contents (packed alone,
    // as the bundle packs them), the index (packed too), and at most all of
    // the bundle's metadata (squashfs tables, verity tree, signature) — the
    // bundle minus every content packed the same way. The contents' block
    // sums are fetched on top of these.
    let wanted: HashSet<&str> = {
        let old_at = contents_at(i1);
        i2.entries
            .iter()
            .filter_map(|e| Some((e.path.as_slice(), e.sha256.as_deref()?)))
            .filter(|(p, s)| old_at.get(p) != Some(s))
            .map(|(_, s)| s)
            .collect()
    };
    let changed_dir = dir.join("changed");
    fs::create_dir_all(&changed_dir).unwrap();
    for (path, sha) in contents_at(i2) {
        if wanted.contains(sha) && !changed_dir.join(sha).exists() {
            fs::copy(v2.join(std::str::from_utf8(path).unwrap()), changed_dir.join(sha)).unwrap();
        }
    }
    let changed = packed_size(&changed_dir);
    let extracted = dir.join("extracted");
    run(testkit::with_keyring(testkit::rota().arg("extract")).arg(b).arg(&extracted)).ok();
    // The index as the bundle stores it (compressed).
    let index_dir = dir.join("index");
    fs::create_dir_all(&index_dir).unwrap();
    fs::copy(extracted.join("rootfs.tree"), index_dir.join("rootfs.tree")).unwrap();
    let index = packed_size(&index_dir);
    // Everything after the squashfs data blocks: its tables (from the
    // superblock's inode table start), the verity tree, the signature.
    let bytes = fs::read(b).unwrap();
    let size = bytes.len() as u64;
    let metadata = size - u64::from_le_bytes(bytes[64..72].try_into().unwrap());
    let served = nginx.served("/v2.raucb");
    let bound = (changed + index + metadata) * 12 / 10;
    eprintln!("fetched {served} of {size}; changed {changed}, index {index}, metadata {metadata}");
    for l in
        format!("{}{}", r.stdout, r.stderr).lines().filter(|l| l.contains("downloaded") || l.contains("Tree update"))
    {
        eprintln!("{l}");
    }
    assert!(served <= bound, "fetched {served} bytes, more than 1.2 × ({changed} + {index} + {metadata})");
}

/// The size and inode count of the file system in the image at `img`, as
/// statfs counts them.
fn fs_capacity(img: &Path) -> (u64, u64) {
    let out = with_mounted_ro(img, |m| run(Command::new("stat").args(["-f", "-c", "%b %S %c"]).arg(m)).ok());
    let v: Vec<u64> = out.stdout.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0] * v[1], v[2])
}

/// Overwrites the file `rel` in the ext4 image `img` with as many `byte`s.
fn damage(img: &Path, rel: &str, byte: u8) {
    with_mounted(img, |m| {
        let len = fs::metadata(m.join(rel)).unwrap().len() as usize;
        fs::write(m.join(rel), vec![byte; len]).unwrap();
    });
}

/// A regular file of `old` whose content is unique and unchanged in `new`.
fn unchanged_file(old: &FileIndex, new: &FileIndex) -> String {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for e in old.entries.iter().chain(&new.entries) {
        if let Some(s) = e.sha256.as_deref() {
            *count.entry(s).or_default() += 1;
        }
    }
    let e = new
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File && e.size > 1000 && count[e.sha256.as_deref().unwrap()] == 2)
        .find(|e| old.entries.iter().any(|o| o.path == e.path && o.sha256 == e.sha256))
        .expect("an unchanged file");
    String::from_utf8(e.path.clone()).unwrap()
}

#[test]
fn a_corrupted_local_copy_is_fetched_and_a_tampered_bundle_is_refused() {
    let f = Fixture::new("bad", 5, None);
    let Fixture { dir, v1, v2, bundle: b, i1, i2, .. } = &f;

    // A file the booted slot holds unchanged was damaged there (same size).
    let d = device("corrupted", v1, None);
    let victim = unchanged_file(i1, i2);
    damage(&d.path("rootfs0.img"), &victim, 0x55);
    let r = run(d.rota().arg("install").arg(b)).ok();
    assert_same_tree(&scan_image(&d.path("rootfs1.img")), i2);
    let (_, _, _, fetched, _) = summary(&r);
    assert_eq!(fetched as usize, fresh_contents(i1, i2) + 1, "the damaged file is fetched");
    assert!(r.stderr.contains("does not hold the expected content"), "{}", r.stderr);

    // A changed file's bytes altered inside a correctly signed bundle: the
    // install stops, B is not activated, A is untouched.
    let mut bytes = fs::read(b).unwrap();
    let changed = i2
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File && e.size > 8192)
        .filter(|e| !i1.entries.iter().any(|o| o.sha256 == e.sha256))
        .find_map(|e| {
            // Random contents are stored as they are: find them in the bundle.
            let data = fs::read(v2.join(String::from_utf8(e.path.clone()).unwrap())).unwrap();
            bytes.windows(64).position(|w| w == &data[..64])
        })
        .expect("a changed file stored uncompressed");
    bytes[changed + 100] ^= 0x01;
    let tampered = dir.join("tampered.raucb");
    fs::write(&tampered, &bytes).unwrap();
    let d = device("tampered", v1, None);
    let a_before = testkit::sha256_hex(&fs::read(d.path("rootfs0.img")).unwrap());
    let r = run(d.rota().arg("install").arg(&tampered));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("corrupt"), "{}", r.stderr);
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("A"));
    assert_eq!(testkit::sha256_hex(&fs::read(d.path("rootfs0.img")).unwrap()), a_before);
    assert!(!testkit::mounted_below(&d.dir), "nothing stays mounted");
}

#[test]
fn an_install_killed_midway_is_finished_by_the_next_fetching_less() {
    let f = Fixture::new("killed", 10, None);
    let Fixture { v1, bundle: b, i1, i2, .. } = &f;
    let server = testkit::httpd::Server::start();
    server.put("/v2.raucb", fs::read(b).unwrap());
    // Slow answers: the install is still fetching when it is killed.
    server.set_delay(std::time::Duration::from_millis(15));
    let d = device("killed", v1, None);
    let mut child = d.rota().args(["install", &server.url("/v2.raucb")]).spawn().unwrap();
    let staging = d.path("mnt/rootfs.1/.rota-tree-staging");
    let total = fresh_contents(i1, i2);
    // Contents are staged from A first, then fetched: stop a third into the fetching.
    let distinct = i2.entries.iter().filter_map(|e| e.sha256.as_deref()).collect::<HashSet<_>>().len();
    let started = std::time::Instant::now();
    loop {
        let staged = fs::read_dir(&staging).map(|r| r.count()).unwrap_or(0);
        if staged >= distinct - total + total / 3 {
            break;
        }
        assert!(started.elapsed().as_secs() < 120, "install did not get going");
        assert!(child.try_wait().unwrap().is_none(), "install ended before it was killed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("A"));

    server.set_delay(std::time::Duration::ZERO);
    let r = run(d.rota().args(["install", &server.url("/v2.raucb")])).ok();
    assert_same_tree(&scan_image(&d.path("rootfs1.img")), i2);
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("B"));
    let (_, _, _, fetched, _) = summary(&r);
    assert!((fetched as usize) < total * 3 / 4, "fetched {fetched} of {total} again: {}", r.stderr);
    assert!(!testkit::mounted_below(&d.dir), "nothing stays mounted");
}

#[test]
fn the_service_reports_files_and_the_final_numbers() {
    use testkit::bus::{Bus, Service};
    let f = Fixture::new("service", 5, None);
    let Fixture { v1, bundle: b, i1, i2, .. } = &f;
    let d = device("service", v1, None);
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    let mut client = d.rota();
    client.envs(bus.env()).arg("install").arg(b);
    run(&mut client).ok();
    assert_same_tree(&scan_image(&d.path("rootfs1.img")), i2);
    let details = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let addr = bus.env().into_iter().find(|(k, _)| *k == "DBUS_SESSION_BUS_ADDRESS").unwrap().1.to_string();
        let conn = zbus::connection::Builder::address(addr.as_str()).build().await.unwrap();
        rota_dbus::ControlProxy::new(&conn).await.unwrap().details().await.unwrap()
    });
    let files = i2.entries.iter().filter(|e| e.kind == Kind::File && e.link_group == 0).count()
        + i2.entries.iter().filter(|e| e.link_group != 0).map(|e| e.link_group).collect::<HashSet<_>>().len();
    assert_eq!(u64::try_from(&*details["files-total"]).unwrap(), files as u64);
    assert_eq!(u64::try_from(&*details["files-done"]).unwrap(), files as u64);
    let results: HashMap<String, HashMap<String, u64>> = details["results"].try_clone().unwrap().try_into().unwrap();
    let root1 = &results["rootfs.1"];
    assert_eq!(root1["files-fetched"] as usize, fresh_contents(i1, i2), "{root1:?}");
    assert_eq!(root1["files-reused"] + root1["files-copied"] + root1["files-fetched"], files as u64);
    assert!(root1["bytes-fetched-stored"] > 0);
    // info through the service shows the tree as a local info does.
    let mut client = d.rota();
    client.envs(bus.env()).arg("info").arg(b);
    let via_service = run(&mut client).ok().stdout;
    assert_eq!(via_service, run(d.rota().arg("info").arg(b)).ok().stdout);
    assert!(via_service.contains(&format!("    Tree:      {files} files (")), "{via_service}");
}

#[test]
fn persistent_paths_come_from_the_booted_slot_and_fetched_contents_are_cached() {
    let f = Fixture::new("persist", 5, None);
    let Fixture { v1, i1, i2, bundle: b, .. } = &f;
    let extra = "[tree]\npersist=/etc/hostname;/var/lib/app;/opt/state/data;/etc/not-there\ncache-size=64M\n";
    let d = device_with("persist", v1, None, extra);
    // The running system changed its own state in A.
    with_mounted(&d.path("rootfs0.img"), |m| {
        fs::write(m.join("etc/hostname"), b"charger-0042\n").unwrap();
        fs::write(m.join("var/lib/app/secret"), b"rotated\n").unwrap();
        fs::write(m.join("var/lib/app/session"), b"42\n").unwrap();
        fs::create_dir_all(m.join("opt/state")).unwrap();
        fs::write(m.join("opt/state/data"), b"energy=12.3\n").unwrap();
        sh(&format!("chown -R 5:6 {0}/opt && chmod 0750 {0}/opt/state", m.display()));
    });
    let a = scan_image(&d.path("rootfs0.img"));
    let r = run(d.rota().arg("install").arg(b)).ok();
    let got = scan_image(&d.path("rootfs1.img"));
    // The kept paths are as in A (content, owner, mode, xattrs, time) ...
    let kept = |p: &[u8]| p == b"etc/hostname" || p.starts_with(b"var/lib/app") || p.starts_with(b"opt");
    for e in a.entries.iter().filter(|e| kept(&e.path)) {
        assert_eq!(find(&got, std::str::from_utf8(&e.path).unwrap()), e);
    }
    // ... and everything else is version 2.
    let rest = |i: &FileIndex| FileIndex { entries: i.entries.iter().filter(|e| !kept(&e.path)).cloned().collect() };
    assert_same_tree(&rest(&got), &rest(i2));
    let (_, _, _, fetched, _) = summary(&r);
    assert!(fetched > 0);

    // The fetched contents were cached: B emptied, the same version installs without the bundle's files.
    ext4(&d.path("rootfs1.img"), None, 128);
    let r = run(d.rota().arg("install").arg(b)).ok();
    let (files, reused, copied, fetched, _) = summary(&r);
    assert_eq!(fetched, 0, "{}", r.stderr);
    assert_eq!((reused, copied), (0, files));
    assert_same_tree(&rest(&scan_image(&d.path("rootfs1.img"))), &rest(i2));
    let _ = i1;
}

#[test]
fn a_damaged_target_is_repaired_or_rebuilt() {
    let f = Fixture::new("damaged-target", 5, None);
    let Fixture { v1, i1, i2, bundle: b, .. } = &f;
    // B holds version 1, but one file that stays the same was damaged in it.
    let d = device("damaged-file", v1, Some(v1));
    let victim = unchanged_file(i1, i2);
    damage(&d.path("rootfs1.img"), &victim, 0xAA);
    let r = run(d.rota().arg("install").arg(b)).ok();
    assert_same_tree(&scan_image(&d.path("rootfs1.img")), i2);
    let (_, reused, copied, fetched, _) = summary(&r);
    assert_eq!(fetched as usize, fresh_contents(i1, i2));
    assert!(reused > 0 && copied > 0, "the damaged file came from A: {reused} reused, {copied} copied");

    // B's filesystem is gone (superblocks overwritten): formatted and filled.
    let d = device("damaged-fs", v1, Some(v1));
    {
        use std::os::unix::fs::FileExt;
        let img = fs::OpenOptions::new().write(true).open(d.path("rootfs1.img")).unwrap();
        img.write_all_at(&vec![0x5A; 4 << 20], 0).unwrap();
    }
    let r = run(d.rota().arg("install").arg(b)).ok();
    assert!(r.stderr.contains("Slot rootfs.1 holds no usable filesystem: formatting it"), "{}", r.stderr);
    assert_same_tree(&scan_image(&d.path("rootfs1.img")), i2);
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("B"));
}

#[test]
fn plain_and_crypt_bundles_carry_tree_images_too() {
    let (_t, www) = web_root();
    let f = Fixture::new("formats", 5, None);
    let nginx = Nginx::serve(&www);
    let key = format!("[encryption]\nkey={}", pki_file("rsa-recipient.key").display());
    // A plain bundle from its file; a crypt bundle streamed (whole sectors
    // decrypted, each fetched block checked against its sum).
    for (format, from) in [("plain", None), ("crypt", Some(nginx.url("/crypt.raucb")))] {
        let b = www.join(format!("{format}.raucb"));
        bundle_as(&f.v2, &b, format);
        let d = device_with(&format!("format-{format}"), &f.v1, Some(&f.v1), &key);
        let r = run(d.rota().arg("install").arg(from.unwrap_or_else(|| b.display().to_string()))).ok();
        assert_same_tree(&scan_image(&d.path("rootfs1.img")), &f.i2);
        let (_, _, _, fetched, _) = summary(&r);
        assert_eq!(fetched as usize, fresh_contents(&f.i1, &f.i2), "{format}");
    }
    assert!(nginx.served("/crypt.raucb") < fs::metadata(www.join("crypt.raucb")).unwrap().len() / 4);
}

#[test]
fn tree_bundles_without_fitting_block_sums_are_refused_before_the_slot_is_touched() {
    // Debian's rauc packs a tree bundle's files again, all but the block sums.
    let work = WorkDir::new(target_dir().join("test-bundles/tree-install/no-sums"));
    let dir = work.path();
    let tree = dir.join("tree");
    rootfs::generate(&tree, 200, 4096, 1);
    let made = dir.join("made.raucb");
    bundle(&tree, &made);
    let content = dir.join("content");
    run(testkit::with_keyring(testkit::rota().arg("extract")).arg(&made).arg(&content)).ok();
    fs::remove_file(content.join(rota_bundle::tree::block_sums_file("rootfs.tree"))).unwrap();
    let repacked = dir.join("repacked.raucb");
    testkit::peer_bundle(&content, &repacked, "release").ok();

    let d = device("no-sums", &tree, None);
    let b_before = testkit::sha256_hex(&fs::read(d.path("rootfs1.img")).unwrap());
    let r = run(d.rota().arg("install").arg(&repacked));
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(
            "Tree image 'rootfs.tree' lacks 'rootfs.tree.data.sums' in the bundle (made by an older rota-bundle): build the bundle again"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("A"));
    assert_eq!(testkit::sha256_hex(&fs::read(d.path("rootfs1.img")).unwrap()), b_before, "B untouched");

    // Sums that do not fit the contents file (one block's short).
    let mut sums = {
        let out = dir.join("again");
        run(testkit::with_keyring(testkit::rota().arg("extract")).arg(&made).arg(&out)).ok();
        fs::read(out.join(rota_bundle::tree::block_sums_file("rootfs.tree"))).unwrap()
    };
    let blocks = sums.len() / 32;
    sums.truncate(sums.len() - 32);
    fs::write(content.join(rota_bundle::tree::block_sums_file("rootfs.tree")), &sums).unwrap();
    let short = dir.join("short.raucb");
    testkit::peer_bundle(&content, &short, "release").ok();
    let r = run(d.rota().arg("install").arg(&short));
    assert_ne!(r.code, 0);
    let want = format!(
        "'rootfs.tree.data.sums' in the bundle is corrupt: {} bytes for the {blocks} blocks of 'rootfs.tree.data'",
        sums.len()
    );
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    assert_eq!(testkit::sha256_hex(&fs::read(d.path("rootfs1.img")).unwrap()), b_before, "B untouched");
}

/// [`assert_same_tree`] for a slot that also holds its status and index
/// (`slot.raucs`, `slot.tree-index`; the root's time is the status file's).
fn assert_same_tree_beside_status(mut got: FileIndex, want: &FileIndex) {
    got.entries.retain(|e| !e.path.is_empty() && e.path != b"slot.raucs" && e.path != b"slot.tree-index");
    let mut want = want.clone();
    want.entries.retain(|e| !e.path.is_empty());
    assert_same_tree(&got, &want);
}

#[test]
fn the_installed_index_is_kept_where_the_slot_status_is() {
    let f = Fixture::new("per-slot", 5, None);
    let Fixture { dir, v1, bundle: b, i2, .. } = &f;
    let d = ext4_device("per-slot", v1, None, "statusfile=per-slot", "");
    run(d.rota().arg("install").arg(b)).ok();

    // B holds v2, its status, and the signed index it was installed from.
    let extracted = dir.join("extracted");
    run(testkit::with_keyring(testkit::rota().arg("extract")).arg(b).arg(&extracted)).ok();
    let index_sha = testkit::sha256_hex(&fs::read(extracted.join("rootfs.tree")).unwrap());
    let got = scan_image(&d.path("rootfs1.img"));
    assert_eq!(find(&got, "slot.tree-index").sha256.as_deref(), Some(index_sha.as_str()));
    assert_eq!(find(&got, "slot.raucs").kind, Kind::File);
    assert_same_tree_beside_status(got, i2);

    // B runs v2 now; v3 goes into A (v1, nothing kept): moved files are
    // found in B by content, through the index kept inside B.
    let (i3, _) = install_v3_into_a(&d, &f);
    assert_same_tree_beside_status(scan_image(&d.path("rootfs0.img")), &i3);
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("A"));

    // A central status file and no data directory: the index is kept beside it.
    let d = ext4_device("central", v1, None, "statusfile=state/central.raucs", "");
    fs::create_dir_all(d.path("state")).unwrap();
    run(d.rota().arg("install").arg(b)).ok();
    let kept = d.path(&format!("state/slot.rootfs.1/tree-{index_sha}.index"));
    assert_eq!(testkit::sha256_hex(&fs::read(&kept).unwrap()), index_sha);
    assert!(scan_image(&d.path("rootfs1.img")).entries.iter().all(|e| e.path != b"slot.tree-index"));
}

#[test]
fn a_target_too_small_for_the_new_tree_fails_clearly_and_is_not_activated() {
    let f = Fixture::new("too-small", 5, None);
    let Fixture { v1, bundle: b, i2, .. } = &f;
    // B is a 12 MiB slot; the tree takes more than three times that.
    let d = device("too-small", v1, Some(v1));
    ext4(&d.path("rootfs1.img"), None, 12);
    let a_before = testkit::sha256_hex(&fs::read(d.path("rootfs0.img")).unwrap());
    let r = run(d.rota().arg("install").arg(b));
    assert_ne!(r.code, 0);
    // What the tree takes: each hard-link group's content once.
    let mut groups = HashSet::new();
    let leaders: Vec<&Entry> = i2
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File && (e.link_group == 0 || groups.insert(e.link_group)))
        .collect();
    let (bytes, inodes) = fs_capacity(&d.path("rootfs1.img"));
    let want = format!(
        "Failed updating slot rootfs.1: the slot is too small for tree image 'rootfs.tree': its filesystem holds \
         {} and {inodes} inodes, the tree takes {} in {} files ({} entries): Failed to ",
        rota_bundle::info::format_size(bytes),
        rota_bundle::info::format_size(leaders.iter().map(|e| e.size).sum()),
        leaders.len(),
        i2.entries.len()
    );
    assert!(r.stderr.contains(&want), "{want}\n{}", r.stderr);
    // The filesystem runs out when a staged file is created or written,
    // whichever the parallel writers reach first.
    let cause = &r.stderr[r.stderr.find(&want).unwrap() + want.len()..];
    assert!(cause.starts_with("write '") || cause.starts_with("create '"), "{}", r.stderr);
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("A"));
    assert_eq!(testkit::sha256_hex(&fs::read(d.path("rootfs0.img")).unwrap()), a_before, "A untouched");
    // Not marked installed: the next install into a slot big enough starts over.
    ext4(&d.path("rootfs1.img"), None, 128);
    run(d.rota().arg("install").arg(b)).ok();
    assert_same_tree(&scan_image(&d.path("rootfs1.img")), i2);
}
