//! File-level delta installs of `tree` images into FAT slots (file-backed;
//! this kernel has no vfat driver, so rota and these tests reach the
//! filesystem through mtools). The first install fills an emptied slot;
//! the next updates it in place, keeping the files that stayed, taking
//! moved ones from the slot itself and fetching only new contents; a
//! damaged file is found and replaced; a tree FAT cannot store is refused
//! before the slot is touched.

use rota_bundle::tree::{FileIndex, Kind};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::device::{Device, grub_selected, grubenv};
use testkit::{Content, Run, pki_file, pseudo_random, rota_bundle, run, target_dir};

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A boot-partition-like tree: kernels, device trees, overlays with long
/// and non-ASCII names, duplicated contents, a hard link, an empty directory.
fn boot_tree(root: &Path) {
    for i in 0..150u64 {
        let dir = root.join(format!("overlays/group-{}", i % 6));
        fs::create_dir_all(&dir).unwrap();
        let len = 200 + (i as usize * 977) % 30_000;
        fs::write(dir.join(format!("Overlay Number {i:03}.dtbo")), pseudo_random(len, i)).unwrap();
    }
    fs::create_dir_all(root.join("EFI/BOOT")).unwrap();
    fs::write(root.join("EFI/BOOT/BOOTX64.EFI"), pseudo_random(300_000, 1000)).unwrap();
    fs::write(root.join("zImage"), pseudo_random(900_000, 1001)).unwrap();
    fs::write(root.join("größe-ünd-maße.txt"), b"unicode name\n").unwrap();
    fs::write(root.join("config.txt"), b"kernel=zImage\n").unwrap();
    fs::write(root.join("cmdline.txt"), b"root=/dev/mmcblk0p2\n").unwrap();
    // Same content at two paths, and a hard link (a copy on FAT).
    fs::write(root.join("EFI/BOOT/grub.cfg"), b"set timeout=0\n").unwrap();
    fs::write(root.join("EFI/grub-copy.cfg"), b"set timeout=0\n").unwrap();
    fs::hard_link(root.join("zImage"), root.join("zImage.bak")).unwrap();
    fs::create_dir_all(root.join("empty/nested")).unwrap();
    sh(&format!("find {} -exec touch -h -d '2024-05-06 07:08:10' {{}} +", root.display()));
}

/// A verity bundle with `tree` as the `boot` tree image, at `out`.
fn bundle(tree: &Path, out: &Path) {
    let c = Content::new(out.with_extension("content"));
    sh(&format!("cp -a {} {}", tree.display(), c.dir.join("boot.tree").display()));
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat=verity\n[image.boot]\nfilename=boot.tree\n",
    );
    rota_bundle(&c.dir, out, "release").ok();
}

/// A device booted from A; its slots are FAT filesystems in files (B starts out emptied).
fn device(name: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\nmountprefix=mnt\n\
         [keyring]\npath={}\n\
         [slot.boot.0]\ndevice=boot0.img\ntype=vfat\nbootname=A\n[slot.boot.1]\ndevice=boot1.img\ntype=vfat\nbootname=B\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(target_dir().join("test-devices/tree-vfat").join(name), &conf);
    d.grub_env(&["A", "B"]);
    for img in ["boot0.img", "boot1.img"] {
        run(Command::new("truncate").arg("-s32M").arg(d.path(img))).ok();
    }
    run(Command::new("mkfs.vfat").arg(d.path("boot0.img"))).ok();
    d
}

fn mtools(program: &str, img: &Path) -> Command {
    let mut c = Command::new(program);
    c.env("MTOOLS_SKIP_CHECK", "1").env("LC_ALL", "C.UTF-8").arg("-i").arg(img);
    c
}

/// What a directory holds: path → file content (`None` for a directory) and mtime.
fn tree_of(root: &Path) -> BTreeMap<String, (Option<Vec<u8>>, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let md = e.metadata().unwrap();
            let mtime = {
                use std::os::unix::fs::MetadataExt;
                md.mtime()
            };
            if md.is_dir() {
                stack.push(r.clone());
                out.insert(r.to_string_lossy().into_owned(), (None, mtime));
            } else {
                out.insert(r.to_string_lossy().into_owned(), (Some(fs::read(e.path()).unwrap()), mtime));
            }
        }
    }
    out
}

/// Asserts the FAT image `img` holds exactly `want` (contents; file times to FAT's two seconds).
fn assert_fat_holds(img: &Path, want: &Path) {
    let out = tempfile::tempdir().unwrap();
    run(mtools("mcopy", img).args(["-s", "-n", "-m", "::/"]).arg(out.path())).ok();
    let (got, want) = (tree_of(out.path()), tree_of(want));
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (p, (content, mtime)) in &want {
        let (c, t) = &got[p];
        assert!(c == content, "{p} differs");
        if content.is_some() {
            assert!((t - mtime).abs() <= 2, "{p}: mtime {t}, wanted {mtime}");
        }
    }
}

/// (files, reused, copied, fetched) from the summary line of the install into `slot`.
fn summary(r: &Run, slot: &str) -> (u64, u64, u64, u64) {
    let text = format!("{}{}", r.stdout, r.stderr);
    let line =
        text.lines().find(|l| l.contains(&format!("Tree update of {slot}: "))).unwrap_or_else(|| panic!("{text}"));
    let nums: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
    (nums[1], nums[2], nums[4], nums[6])
}

fn contents(i: &FileIndex) -> HashSet<&str> {
    i.entries.iter().filter_map(|e| e.sha256.as_deref()).collect()
}

#[test]
fn a_fat_slot_is_filled_then_updated_in_place() {
    let dir = target_dir().join("test-bundles/tree-vfat");
    let _ = fs::remove_dir_all(&dir);
    let (v1, v2) = (dir.join("v1"), dir.join("v2"));
    boot_tree(&v1);
    sh(&format!("cp -a {} {}", v1.display(), v2.display()));
    // v2: ten overlays changed, five removed, five new, three moved, a
    // directory where a file was, and the other way round.
    for i in 0..10u64 {
        let p = v2.join(format!("overlays/group-{}/Overlay Number {i:03}.dtbo", i % 6));
        fs::write(p, pseudo_random(5000, 5000 + i)).unwrap();
    }
    for i in 10..15u64 {
        fs::remove_file(v2.join(format!("overlays/group-{}/Overlay Number {i:03}.dtbo", i % 6))).unwrap();
    }
    for i in 0..5u64 {
        fs::write(v2.join(format!("overlays/group-{i}/new-{i}.dtbo")), pseudo_random(7000, 6000 + i)).unwrap();
    }
    fs::create_dir_all(v2.join("moved")).unwrap();
    for i in 20..23u64 {
        let from = v2.join(format!("overlays/group-{}/Overlay Number {i:03}.dtbo", i % 6));
        fs::rename(from, v2.join(format!("moved/{i}.dtbo"))).unwrap();
    }
    fs::remove_file(v2.join("cmdline.txt")).unwrap();
    fs::create_dir_all(v2.join("cmdline.txt")).unwrap();
    fs::remove_dir_all(v2.join("empty")).unwrap();
    fs::write(v2.join("empty"), b"now a file\n").unwrap();
    sh(&format!("find {} -newer {} -exec touch -h -d '2025-01-02 03:04:06' {{}} +", v2.display(), v1.display()));
    let (b1, b2) = (dir.join("v1.raucb"), dir.join("v2.raucb"));
    bundle(&v1, &b1);
    bundle(&v2, &b2);
    let (i1, i2) = (FileIndex::scan(&v1).unwrap(), FileIndex::scan(&v2).unwrap());
    let d = device("update");
    let install = |b: &Path, img: &str, want: &Path| {
        let r = run(d.rota().arg("install").arg(b)).ok();
        assert_fat_holds(&d.path(img), want);
        let n = summary(&r, &format!("boot.{}", &img[4..5]));
        assert_eq!(n.0, n.1 + n.2 + n.3, "{}", r.stdout);
        (n, r.stdout)
    };
    let new_in = |a: &FileIndex, b: &FileIndex| contents(a).difference(&contents(b)).count() as u64;

    // The emptied B is formatted and filled; A (booted, read through
    // mtools) holds nothing yet, so everything comes from the bundle.
    let ((_, reused, _, fetched), out) = install(&b1, "boot1.img", &v1);
    assert_eq!((reused, fetched), (0, contents(&i1).len() as u64), "{out}");
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("B"), "{out}");

    // v2 into B again (A is still booted): files that stayed are kept,
    // moved ones come from B itself (the kept index says where); only
    // contents v1 lacked are fetched.
    let ((_, reused, copied, fetched), out) = install(&b2, "boot1.img", &v2);
    assert_eq!(fetched, new_in(&i2, &i1), "{out}");
    let stayed = i2
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File && e.link_group == 0)
        .filter(|e| i1.entries.iter().any(|o| o.path == e.path && o.sha256 == e.sha256))
        .count() as u64;
    // zImage and its hard link stayed as well: a link group counts once.
    assert_eq!(reused, stayed + 1, "{out}");
    assert!(copied >= 3, "the moved files are copied locally: {out}");
    // And back: the files in `moved/` are taken before that directory goes.
    let ((_, _, _, fetched), out) = install(&b1, "boot1.img", &v1);
    assert_eq!(fetched, new_in(&i1, &i2), "{out}");
    let ((_, _, _, fetched), out) = install(&b2, "boot1.img", &v2);
    assert_eq!(fetched, new_in(&i2, &i1), "{out}");

    // B booted: v2 into the empty A comes entirely from B, read through mtools.
    d.boot("rauc.slot=B");
    let ((files, _, copied, fetched), out) = install(&b2, "boot0.img", &v2);
    assert_eq!((copied, fetched), (files, 0), "{out}");

    // A file damaged in A (same length) is found and replaced from B; damaged
    // in B as well, it is fetched.
    let victim = "overlays/group-5/Overlay Number 101.dtbo";
    let len = fs::metadata(v2.join(victim)).unwrap().len() as usize;
    let bad = dir.join("bad");
    fs::write(&bad, vec![0x55; len]).unwrap();
    let damage = |img: &str| run(mtools("mcopy", &d.path(img)).arg("-o").arg(&bad).arg(format!("::/{victim}"))).ok();
    damage("boot0.img");
    let ((files, reused, copied, fetched), out) = install(&b2, "boot0.img", &v2);
    assert_eq!((reused, copied, fetched), (files - 1, 1, 0), "{out}");
    damage("boot0.img");
    damage("boot1.img");
    let ((files, reused, copied, fetched), out) = install(&b2, "boot0.img", &v2);
    assert_eq!((reused, copied, fetched), (files - 1, 0, 1), "{out}");
}

/// Adds something to a tree.
type MakeTree = fn(&Path);

#[test]
fn a_tree_fat_cannot_store_is_refused_before_the_slot_is_touched() {
    let dir = target_dir().join("test-bundles/tree-vfat-refused");
    let _ = fs::remove_dir_all(&dir);
    let d = device("refused");
    run(Command::new("mkfs.vfat").arg(d.path("boot1.img"))).ok();
    let before = fs::read(d.path("boot1.img")).unwrap();
    let cases: [(&str, MakeTree, &str); 3] = [
        (
            "symlink",
            |t| std::os::unix::fs::symlink("zImage", t.join("vmlinuz")).unwrap(),
            "Tree image 'boot.tree' holds the symbolic link '/vmlinuz', which a vfat slot cannot store",
        ),
        (
            "case",
            |t| fs::write(t.join("ZIMAGE"), b"x").unwrap(),
            "Tree image 'boot.tree' holds '/zImage' and another path that differs only in case, which FAT does not tell apart",
        ),
        (
            "name",
            |t| fs::write(t.join("what?.txt"), b"x").unwrap(),
            "Tree image 'boot.tree' holds the name '/what?.txt', which FAT cannot store",
        ),
    ];
    for (name, make, message) in cases {
        let tree = dir.join(name);
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("zImage"), pseudo_random(20_000, 1)).unwrap();
        make(&tree);
        let b = dir.join(format!("{name}.raucb"));
        bundle(&tree, &b);
        let r = run(d.rota().arg("install").arg(&b)).fails();
        assert!(r.stderr.contains(message), "{name}: {}", r.stderr);
        assert!(fs::read(d.path("boot1.img")).unwrap() == before, "{name}: the slot changed");
        assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("A"), "{name}");
    }
}

/// The number on the line of mtools' output that holds `label`: after a
/// label ending in ':', else before it (thousands separators dropped).
fn mtools_number(out: &str, label: &str) -> u64 {
    let line = out.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("{label}: {out}"));
    let (before, after) = line.split_once(label).unwrap();
    let text = if label.ends_with(':') { after } else { before };
    text.chars().filter(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

#[test]
fn a_tree_too_big_for_the_fat_slot_is_refused_before_the_slot_is_touched() {
    let work = testkit::WorkDir::new(target_dir().join("test-bundles/tree-vfat-small"));
    let tree = work.path().join("tree");
    boot_tree(&tree);
    let b = work.path().join("b.raucb");
    bundle(&tree, &b);
    // B: a 2 MiB FAT slot holding a file of its own; the tree takes about 4 MB.
    let d = device("small");
    let img = d.path("boot1.img");
    run(Command::new("truncate").arg("-s2M").arg(&img)).ok();
    run(Command::new("mkfs.vfat").arg(&img)).ok();
    let free = mtools_number(&run(mtools("mdir", &img).arg("::/")).ok().stdout, "bytes free");
    let info = run(mtools("minfo", &img).arg("::")).ok().stdout;
    let cluster = mtools_number(&info, "sector size:") * mtools_number(&info, "cluster size:");
    fs::write(work.path().join("old.txt"), b"old\n").unwrap();
    run(mtools("mcopy", &img).arg(work.path().join("old.txt")).arg("::/old.txt")).ok();
    let before = fs::read(&img).unwrap();

    let r = run(d.rota().arg("install").arg(&b)).fails();
    let size = rota_bundle::info::format_size;
    let want = format!(
        "Failed updating slot boot.1: the slot is too small for tree image 'boot.tree': its filesystem holds {} in {} clusters of {}, the tree takes at least ",
        size(free),
        free / cluster,
        size(cluster)
    );
    assert!(r.stderr.contains(&want), "{want}\n{}", r.stderr);
    assert!(fs::read(&img).unwrap() == before, "the slot changed");
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("A"));
}
