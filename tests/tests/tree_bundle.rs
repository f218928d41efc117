//! `tree` images in bundles: a root file system directory becomes a signed
//! file index plus its distinct file contents, addressed by SHA-256; what
//! the index records matches the tree (special files, links, xattrs, file
//! capabilities included) and Debian's rauc accepts the bundle.

use rota_bundle::tree::{CONTENT_ALIGN, FileIndex, Kind, block_sums_file, content_offsets, contents_file};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;
use testkit::{Content, peer_rauc, rota, rota_bundle, run, sha256_hex, target_dir, with_keyring};

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A small root file system with every kind of object an image holds.
fn rootfs(root: &Path) {
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-link")).unwrap();
    fs::write(root.join("etc/hostname"), b"charger\n").unwrap();
    fs::write(root.join("usr/bin/big"), testkit::pseudo_random(256 * 1024, 5)).unwrap();
    fs::write(root.join("etc/same-as-hostname"), b"charger\n").unwrap();
    symlink("/usr/bin/tool", root.join("usr/bin/abs")).unwrap();
    let r = root.display();
    sh(&format!("mknod {r}/dev/null c 1 3 && mkfifo {r}/dev/fifo && chown 12:34 {r}/etc/hostname"));
    sh(&format!("truncate -s 8M {r}/sparse && printf end >> {r}/sparse"));
    sh(&format!("setfattr -n user.origin -v rota {r}/etc/hostname && setcap cap_net_raw+ep {r}/usr/bin/tool"));
}

#[test]
fn a_tree_image_is_bundled_as_a_signed_index_and_content_addressed_files() {
    let dir = target_dir().join("test-bundles").join("tree");
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    rootfs(&c.dir.join("rootfs.tree"));
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.tree\n",
    );
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();

    // Debian's rauc reads the bundle: the image is the index file.
    let info = run(with_keyring(peer_rauc().arg("info")).arg(&b)).ok();
    assert!(info.stdout.contains("rootfs.tree"), "{}", info.stdout);

    // The index inside describes the tree exactly; every file's content is there once.
    let out = dir.join("extracted");
    run(with_keyring(rota().arg("extract")).arg(&b).arg(&out)).ok();
    let text = fs::read(out.join("rootfs.tree")).unwrap();
    let index = FileIndex::read_from(&mut &text[..]).unwrap();
    assert_eq!(index, FileIndex::scan(&c.dir.join("rootfs.tree")).unwrap());
    let find = |p: &str| index.entries.iter().find(|e| e.path == p.as_bytes()).unwrap_or_else(|| panic!("{p}"));
    assert_eq!(find("dev/null").kind, Kind::Char);
    assert_eq!(find("dev/null").rdev, fs::metadata("/dev/null").unwrap().rdev());
    assert_eq!(find("dev/fifo").kind, Kind::Fifo);
    assert_eq!(find("usr/bin/abs").target.as_deref(), Some(&b"/usr/bin/tool"[..]));
    assert_eq!((find("etc/hostname").uid, find("etc/hostname").gid), (12, 34));
    assert_eq!(find("etc/hostname").xattrs.get("user.origin").map(String::as_str), Some("726f7461"));
    assert!(find("usr/bin/tool").xattrs.contains_key("security.capability"));
    assert_eq!(find("usr/bin/tool").mode, 0o4755);
    assert_ne!(find("usr/bin/tool").link_group, 0);
    assert_eq!(find("usr/bin/tool").link_group, find("usr/bin/tool-link").link_group);
    assert_eq!(find("sparse").size, (8 << 20) + 3);
    // Each distinct content once in the contents file, at its aligned place.
    let data = fs::read(out.join(contents_file("rootfs.tree"))).unwrap();
    let contents = index.contents();
    let offsets = content_offsets(contents.iter().map(|c| c.1));
    for ((sha, size, _), at) in contents.iter().zip(&offsets) {
        assert_eq!(at % CONTENT_ALIGN, 0);
        assert_eq!(sha256_hex(&data[*at as usize..(at + size) as usize]), *sha);
    }
    assert_eq!(data.len() as u64, offsets.last().unwrap() + contents.last().unwrap().1);
    let blobs: Vec<_> = contents.iter().map(|c| c.0).collect();
    // hostname and its twin share one content, as do the hard links.
    assert_eq!(blobs.len(), 4, "tool, hostname, big, sparse");
    // Extracted sparse: the alignment padding and the holes take no room
    // (no more than the tree's own files, each content once).
    let on_disk = |p: &Path| fs::metadata(p).unwrap().blocks() * 512;
    let tree_bytes: u64 = blobs
        .iter()
        .map(|sha| {
            let e = index.entries.iter().find(|e| e.sha256.as_deref() == Some(*sha)).unwrap();
            on_disk(&c.dir.join("rootfs.tree").join(std::str::from_utf8(&e.path).unwrap()))
        })
        .sum();
    let extracted = on_disk(&out.join(contents_file("rootfs.tree")));
    assert!(extracted <= tree_bytes, "{extracted} bytes on disk for {tree_bytes} bytes of files");

    // The SHA-256 of each stored block of the contents file, read from the
    // bundle's squashfs as stored; sparse blocks get distinct fillers.
    let sums = fs::read(out.join(block_sums_file("rootfs.tree"))).unwrap();
    let source = rota_bundle::source::FileSource::open(&b).unwrap();
    let squashfs = rota_bundle::squashfs::BundleFs::open(std::sync::Arc::new(source)).unwrap();
    let map = squashfs.block_map(&contents_file("rootfs.tree")).unwrap();
    assert_eq!(map.stored_blocks(), (data.len() as u64).div_ceil(CONTENT_ALIGN));
    assert_eq!(sums.len() as u64, 32 * map.stored_blocks());
    let bytes = fs::read(&b).unwrap();
    let mut sparse = 0;
    for (block, sum) in sums.chunks(32).enumerate() {
        let (start, end, _) = map.stored_block(block as u64);
        if start == end {
            sparse += 1;
            assert!(sums.chunks(32).filter(|s| s == &sum).count() == 1, "fillers differ");
        } else {
            assert_eq!(sha256_hex(&bytes[start as usize..end as usize]), hex::encode(sum), "block {block}");
        }
    }
    assert!(sparse >= 32, "the sparse file's holes are sparse blocks ({sparse})");

    // info counts the tree in every output format.
    let info = |format: &str| {
        run(with_keyring(rota().arg("info")).arg(format!("--output-format={format}")).arg(&b)).ok().stdout
    };
    let readable = info("readable");
    assert!(
        readable.contains(
            "Tree:      5 files (8.7 MB, 4 distinct contents), 5 directories, 1 symlinks, 2 special files, 1 hard links"
        ),
        "{readable}"
    );
    assert!(info("shell").contains("RAUC_IMAGE_TREE_FILES_0='5'\n"));
    let json: serde_json::Value = serde_json::from_str(&info("json")).unwrap();
    assert_eq!(json["images"][0]["rootfs"]["tree"]["contents"], 4);
    let json2: serde_json::Value = serde_json::from_str(&info("json-2")).unwrap();
    assert_eq!(json2["images"][0]["tree"]["special"], 2);
}

#[test]
fn a_tree_image_must_be_a_directory_or_a_tar_archive() {
    let dir = target_dir().join("test-bundles").join("tree-not-dir");
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    c.file("rootfs.tree", b"not a directory");
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.tree\n",
    );
    let b = dir.join("b.raucb");
    let r = rota_bundle(&c.dir, &b, "release").fails();
    assert!(
        r.stderr.contains("Tree image 'rootfs.tree' of '[image.rootfs]' is neither a directory nor a tar archive: "),
        "{}",
        r.stderr
    );
    assert!(!b.exists());
}

#[test]
fn a_tar_archive_makes_the_same_tree_image_as_its_directory() {
    let dir = target_dir().join("test-bundles").join("tree-tar");
    let _ = fs::remove_dir_all(&dir);
    let root = dir.join("root");
    rootfs(&root);
    let c = Content::new(dir.join("content"));
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --numeric-owner -czf {} -C {} .",
        c.dir.join("rootfs.tree").display(),
        root.display()
    ));
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.tree\n",
    );
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    let out = dir.join("extracted");
    run(with_keyring(rota().arg("extract")).arg(&b).arg(&out)).ok();
    let text = fs::read(out.join("rootfs.tree")).unwrap();
    assert_eq!(FileIndex::read_from(&mut &text[..]).unwrap(), FileIndex::scan(&root).unwrap());
}
