//! Tree installs into a target slot whose old content was planted by an
//! attacker (or left behind by a broken image): a link out of the slot
//! where the installer stages contents, staged contents that are links,
//! fifos or devices, objects of the wrong kind where the new tree has files
//! and directories, a fifo where the slot's status and kept index belong.
//! The install never reaches outside the slot, never blocks, and the slot
//! ends up holding exactly the signed tree.

use rota_bundle::tree::{FileIndex, Kind};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::device::{Device, grub_selected, grubenv};
use testkit::trees::{assert_same_tree, bundle_as, ext4, ext4_device, scan_image, sh};
use testkit::{Run, WorkDir, rootfs, run_within, target_dir};

/// Version 1 of a small tree (booted in A), version 2 bundled, and a
/// directory outside every slot that an attacker points links at.
struct Fixture {
    dir: PathBuf,
    _work: WorkDir,
    v1: PathBuf,
    bundle: PathBuf,
    i2: FileIndex,
    outside: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let work = WorkDir::new(target_dir().join("test-bundles/tree-hostile").join(name));
        let dir = work.path().to_path_buf();
        let (v1, v2) = (dir.join("v1"), dir.join("v2"));
        rootfs::generate(&v1, 120, 2048, 11);
        sh(&format!("cp -a {} {}", v1.display(), v2.display()));
        rootfs::change(&v2, 20, 12);
        let bundle = dir.join("v2.raucb");
        bundle_as(&v2, &bundle, "verity");
        let i2 = FileIndex::scan(&v2).unwrap();
        let outside = dir.join("outside");
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("precious.txt"), b"not the slot's\n").unwrap();
        fs::write(outside.join("sub/inner"), b"nor this\n").unwrap();
        fs::write(outside.join("0".repeat(64)), b"named like a digest\n").unwrap();
        Fixture { dir, _work: work, v1, bundle, i2, outside }
    }

    /// Regular files of version 2 with distinct, non-empty contents: (path, sha256).
    fn files(&self, n: usize) -> Vec<(String, String)> {
        let mut seen = std::collections::HashSet::new();
        self.i2
            .entries
            .iter()
            .filter(|e| e.kind == Kind::File && e.size > 0 && e.link_group == 0 && std::str::from_utf8(&e.path).is_ok())
            .filter(|e| seen.insert(e.sha256.clone()))
            .take(n)
            .map(|e| (String::from_utf8(e.path.clone()).unwrap(), e.sha256.clone().unwrap()))
            .collect()
    }

    /// A copy of file `rel` of version 2, outside every slot, with `mode`.
    fn outside_copy(&self, rel: &str, mode: u32) -> PathBuf {
        let v2 = self.dir.join("v2");
        let to = self.outside.join(rel.replace('/', "_"));
        fs::copy(v2.join(rel), &to).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(mode)).unwrap();
        to
    }

    /// A device booted from A (version 1) whose B slot holds `hostile`.
    fn device(&self, name: &str, hostile: &Path, status: &str) -> Device {
        let d = ext4_device(&format!("hostile-{name}"), &self.v1, None, status, "");
        ext4(&d.path("rootfs1.img"), Some(hostile), 128);
        d
    }
}

/// Every object below `dir` with its kind, mode and content (or link
/// target): what must stay as it is.
fn state(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let content = if md.is_file() {
                fs::read(&p).unwrap()
            } else if md.file_type().is_symlink() {
                fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()
            } else {
                stack.push(p.clone());
                Vec::new()
            };
            out.push((p, md.mode(), content));
        }
    }
    out.sort();
    out
}

/// Installs the fixture's bundle into B and checks that B holds exactly
/// version 2, is the slot booted next, and nothing outside changed.
fn install_and_check(f: &Fixture, d: &Device) -> Run {
    let before = state(&f.outside);
    let r = run_within(d.rota().arg("install").arg(&f.bundle), Duration::from_secs(300));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(state(&f.outside), before, "the install changed something outside the slot");
    let mut got = scan_image(&d.path("rootfs1.img"));
    got.entries.retain(|e| e.path != b"slot.raucs" && e.path != b"slot.tree-index" && !e.path.is_empty());
    let mut want = f.i2.clone();
    want.entries.retain(|e| !e.path.is_empty());
    assert_same_tree(&got, &want);
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("B"));
    r
}

#[test]
fn a_staging_directory_linked_out_of_the_slot_is_not_followed() {
    let f = Fixture::new("staging-link");
    let (path, sha) = f.files(1).remove(0);
    // A staged-looking content in the outside directory, with the right bytes.
    fs::copy(f.dir.join("v2").join(&path), f.outside.join(&sha)).unwrap();
    fs::set_permissions(f.outside.join(&sha), fs::Permissions::from_mode(0o600)).unwrap();
    let hostile = f.dir.join("hostile");
    fs::create_dir_all(&hostile).unwrap();
    symlink(&f.outside, hostile.join(".rota-tree-staging")).unwrap();
    let d = f.device("staging-link", &hostile, "data-directory=data");
    install_and_check(&f, &d);
}

#[test]
fn a_file_at_the_staging_name_is_replaced() {
    let f = Fixture::new("staging-file");
    let hostile = f.dir.join("hostile");
    fs::create_dir_all(&hostile).unwrap();
    fs::write(hostile.join(".rota-tree-staging"), b"in the way\n").unwrap();
    let d = f.device("staging-file", &hostile, "data-directory=data");
    install_and_check(&f, &d);
}

#[test]
fn staged_links_fifos_and_devices_named_by_digest_are_discarded() {
    let f = Fixture::new("staged-objects");
    let files = f.files(5);
    let hostile = f.dir.join("hostile");
    let staging = hostile.join(".rota-tree-staging");
    fs::create_dir_all(&staging).unwrap();
    // A link to a file outside with exactly the content the name promises.
    let target = f.outside_copy(&files[0].0, 0o640);
    symlink(&target, staging.join(&files[0].1)).unwrap();
    let s = staging.display();
    sh(&format!(
        "mkfifo {s}/{} && mknod {s}/{} c 1 5 && mkdir {s}/{} && echo wrong > {s}/{}",
        files[1].1, files[2].1, files[3].1, files[4].1
    ));
    let d = f.device("staged-objects", &hostile, "data-directory=data");
    install_and_check(&f, &d);
    assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o640, "the linked file's mode changed");
}

#[test]
fn objects_of_the_wrong_kind_in_the_target_are_replaced_without_following_them() {
    let f = Fixture::new("wrong-kinds");
    let files = f.files(4);
    // B holds version 1, with links, a fifo and a device where version 2
    // has a directory and files.
    let hostile = f.dir.join("hostile");
    sh(&format!("cp -a {} {}", f.v1.display(), hostile.display()));
    let h = hostile.display();
    sh(&format!("rm -rf {h}/var/lib/app && ln -s {} {h}/var/lib/app", f.outside.display()));
    let linked = f.outside_copy(&files[0].0, 0o604);
    for (i, (path, _)) in files.iter().enumerate() {
        let p = hostile.join(path);
        let _ = fs::remove_file(&p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        match i {
            0 => symlink(&linked, &p).unwrap(),
            1 => sh(&format!("mkfifo '{}'", p.display())),
            2 => sh(&format!("mknod '{}' c 1 5", p.display())),
            _ => symlink(f.outside.join("precious.txt"), &p).unwrap(),
        }
    }
    let d = f.device("wrong-kinds", &hostile, "data-directory=data");
    install_and_check(&f, &d);
    assert_eq!(fs::metadata(&linked).unwrap().mode() & 0o7777, 0o604, "the linked file's mode changed");
}

#[test]
fn a_planted_status_and_index_that_are_fifos_do_not_block() {
    let f = Fixture::new("in-slot-fifos");
    // The slot status names the bundle's index as installed, so the
    // installer looks for the index kept in the slot: both are fifos.
    let info =
        testkit::run(testkit::with_keyring(testkit::rota().args(["info", "--output-format=json"])).arg(&f.bundle)).ok();
    let json: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    let sha = json["images"][0]["rootfs"]["checksum"].as_str().unwrap().to_string();
    let hostile = f.dir.join("hostile");
    fs::create_dir_all(&hostile).unwrap();
    sh(&format!("mkfifo {0}/slot.tree-index {0}/slot.raucs", hostile.display()));
    let d = f.device("in-slot-fifos", &hostile, "statusfile=per-slot");
    // `status` reads every slot's status: it must not block either.
    let st = run_within(d.rota().arg("status"), Duration::from_secs(60));
    assert_eq!(st.code, 0, "{}", st.stderr);
    assert!(st.stderr.contains("slot.raucs' is not a regular file"), "{}", st.stderr);
    install_and_check(&f, &d);

    // Again with a status that names the index, and the index a fifo.
    let status = format!("[slot]\nbundle.compatible=Test Config\nstatus=ok\nsha256={sha}\n");
    testkit::trees::with_mounted(&d.path("rootfs1.img"), |m| {
        fs::write(m.join("slot.raucs"), &status).unwrap();
        fs::remove_file(m.join("slot.tree-index")).unwrap();
        sh(&format!("mkfifo {}/slot.tree-index", m.display()));
    });
    let r = install_and_check(&f, &d);
    assert!(r.stderr.contains("slot.tree-index' is not a regular file"), "{}", r.stderr);
}
