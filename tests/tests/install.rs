//! Installs in direct mode (spec §6): rota- and rauc-made bundles of every
//! format into file-backed raw slots and into ext4/vfat filesystems on loop
//! devices, A/B and A/B/C rotation, external boot, install-same, and the
//! failures that must leave the booted slot and the bootloader alone.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::device::{Device, grubenv};
use testkit::medium::FlakyMedium;
use testkit::{Content, Run, peer_bundle, pki_file, rota, rota_bundle, run, serial, sha256_hex, target_dir};

const AB: &str = "[slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n\
[slot.appfs.0]\ndevice=appfs0.img\nparent=rootfs.0\n[slot.appfs.1]\ndevice=appfs1.img\nparent=rootfs.1\n";

fn conf(extra_system: &str, slots: &str) -> String {
    format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\n{extra_system}\n\
         [keyring]\npath={}\n[encryption]\nkey={}\n{slots}",
        pki_file("keyring.pem").display(),
        pki_file("rsa-recipient.key").display()
    )
}

fn device(name: &str, extra_system: &str, slots: &str) -> Device {
    let d = Device::new(target_dir().join("test-devices").join(name), &conf(extra_system, slots));
    d.grub_env(&["A", "B", "C"]);
    for f in ["rootfs0.img", "rootfs1.img", "rootfs2.img", "appfs0.img", "appfs1.img"] {
        d.slot_file(f, 512 * 1024, 0xAA);
    }
    d
}

/// A signed bundle (standard content: rootfs.img 256 KiB, appfs.img 64 KiB) of `format`.
fn bundle(name: &str, format: &str, seed_extra: &str) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let dir = target_dir().join("test-bundles").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::standard(dir.join("content"), format);
    if !seed_extra.is_empty() {
        c.image("rootfs.img", 256 * 1024, seed_extra.len() as u64 + 10);
    }
    let out = dir.join("b.raucb");
    rota_bundle(&c.dir, &out, "release").ok();
    let root = fs::read(c.dir.join("rootfs.img")).unwrap();
    let app = fs::read(c.dir.join("appfs.img")).unwrap();
    (out, root, app)
}

fn encrypted(plain: &Path) -> PathBuf {
    let out = plain.with_extension("enc.raucb");
    let _ = fs::remove_file(&out);
    run(rota().args(["encrypt", &format!("--to={}", pki_file("rsa-recipient.pem").display())]).arg(plain).arg(&out))
        .ok();
    out
}

fn install(d: &Device, bundle: &Path) -> Run {
    run(d.rota().arg("install").arg(bundle))
}

fn head(path: &Path, len: usize) -> Vec<u8> {
    fs::read(path).unwrap()[..len].to_vec()
}

fn primary(d: &Device) -> String {
    grubenv(&d.path("grubenv"))
        .into_iter()
        .find_map(|l| l.strip_prefix("ORDER=").map(|o| o.split(' ').next().unwrap().to_string()))
        .unwrap()
}

#[test]
fn ab_alternation_over_several_installs() {
    let d = device("install-ab", "", AB);
    let (b1, root1, app1) = bundle("ab-1", "verity", "");
    let out = install(&d, &b1).ok().stdout;
    assert!(out.contains(" 40% Checking slot rootfs.1 (B)\n"), "{out}");
    assert!(
        out.ends_with("100% Installing done.\nInstalling `".to_string().as_str())
            || out.contains("100% Installing done.\n"),
        "{out}"
    );
    assert_eq!(head(&d.path("rootfs1.img"), root1.len()), root1);
    assert_eq!(head(&d.path("appfs1.img"), app1.len()), app1);
    assert_eq!(primary(&d), "B");
    // Reboot into B, install the next version: it lands in A.
    d.boot("rauc.slot=B");
    let (b2, root2, _) = bundle("ab-2", "verity", "x");
    install(&d, &b2).ok();
    assert_eq!(head(&d.path("rootfs0.img"), root2.len()), root2);
    assert_eq!(head(&d.path("rootfs1.img"), root1.len()), root1, "booted slot B untouched");
    assert_eq!(primary(&d), "A");
    d.boot("rauc.slot=A");
    install(&d, &b1).ok();
    assert_eq!(primary(&d), "B");
    let v: serde_json::Value =
        serde_json::from_str(&d.run(&["status", "--detailed", "--output-format=json"]).ok().stdout).unwrap();
    let st = &v["slots"].as_array().unwrap().iter().find_map(|s| s.get("rootfs.1")).unwrap()["slot_status"];
    assert_eq!(st["installed"]["count"], 2);
    assert_eq!(st["activated"]["count"], 2);
    assert_eq!(st["checksum"]["sha256"], sha256_hex(&root1));
    assert_eq!(st["status"], "ok");
}

#[test]
fn every_format_from_rota_and_from_rauc() {
    let _g = serial();
    let d = device("install-formats", "", AB);
    for (i, format) in ["plain", "verity", "crypt"].iter().enumerate() {
        for maker in ["rota", "rauc"] {
            let dir = target_dir().join(format!("test-bundles/fmt-{maker}-{format}"));
            let _ = fs::remove_dir_all(&dir);
            let c = Content::standard(dir.join("content"), format);
            let root = c.image("rootfs.img", 256 * 1024, 100 + i as u64);
            let out = dir.join("b.raucb");
            if maker == "rota" { rota_bundle(&c.dir, &out, "release") } else { peer_bundle(&c.dir, &out, "release") }
                .ok();
            let out = if *format == "crypt" { encrypted(&out) } else { out };
            // Fill the target with garbage first, so a no-op would be noticed.
            d.slot_file("rootfs1.img", 512 * 1024, 0x55);
            let r = install(&d, &out);
            assert_eq!(r.code, 0, "{maker} {format}: {}\n{}", r.stdout, r.stderr);
            assert_eq!(head(&d.path("rootfs1.img"), root.len()), root, "{maker} {format}");
        }
    }
}

#[test]
fn unencrypted_crypt_bundles_are_refused() {
    let d = device("install-crypt-plain", "", AB);
    let (b, _, _) = bundle("crypt-unencrypted", "crypt", "");
    let r = install(&d, &b).fails();
    assert!(r.stderr.contains("LastError: Refusing to install unencrypted crypt bundles"), "{}", r.stderr);
    assert!(r.stdout.ends_with("100% Installing failed.\n"), "{}", r.stdout);
}

#[test]
fn abc_rotates_through_the_oldest_slot() {
    let slots = "[slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n[slot.rootfs.2]\ndevice=rootfs2.img\nbootname=C\n";
    let d = device("install-abc", "", slots);
    let dir = target_dir().join("test-bundles/abc");
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    c.image("rootfs.img", 128 * 1024, 7);
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=1\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.img\n",
    );
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    let mut order = Vec::new();
    for _ in 0..4 {
        install(&d, &b).ok();
        order.push(primary(&d));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(order, ["B", "C", "B", "C"]);
}

#[test]
fn external_boot_installs_into_any_slot() {
    let d = device("install-external", "", AB);
    d.boot("root=/dev/nfs rw");
    let (b, root, _) = bundle("external", "verity", "");
    // Every slot is a candidate; none was ever installed, so the first RAUC
    // walks to (rootfs.1), then the one still without an installation.
    install(&d, &b).ok();
    assert_eq!(head(&d.path("rootfs1.img"), root.len()), root);
    assert_eq!(primary(&d), "B");
    install(&d, &b).ok();
    assert_eq!(head(&d.path("rootfs0.img"), root.len()), root);
    assert_eq!(primary(&d), "A");
    let r = run(d.rota().args(["status", "--override-boot-slot=_external_", "--output-format=json"])).ok();
    assert!(r.stdout.contains("\"booted\":\"_external_\""), "{}", r.stdout);
}

#[test]
fn install_same_false_skips_identical_images() {
    let slots = AB.replace("device=rootfs1.img\n", "device=rootfs1.img\ninstall-same=false\n");
    let d = device("install-same", "", &slots);
    let (b, _, _) = bundle("same", "verity", "");
    install(&d, &b).ok();
    let r = install(&d, &b).ok();
    assert!(r.stdout.contains("Copying image skipped"), "{}", r.stdout);
    assert!(r.stdout.contains("Copying image to appfs.1"), "{}", r.stdout);
    let central = fs::read_to_string(d.path("data/central.raucs")).unwrap();
    assert!(central.contains("installed.count=2"), "{central}");
}

/// State of everything a failed install must not change.
fn snapshot(d: &Device) -> (Vec<u8>, Vec<u8>, Vec<String>) {
    (fs::read(d.path("rootfs0.img")).unwrap(), fs::read(d.path("appfs0.img")).unwrap(), grubenv(&d.path("grubenv")))
}

#[test]
fn wrong_compatible_changes_nothing() {
    let d = device("install-compat", "", AB);
    let dir = target_dir().join("test-bundles/compat");
    let _ = fs::remove_dir_all(&dir);
    let c = Content::standard(dir.join("content"), "verity");
    c.manifest("[update]\ncompatible=Other\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.img\n");
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    let before = snapshot(&d);
    let r = install(&d, &b).fails();
    assert!(
        r.stderr.contains("LastError: Compatible mismatch: Expected 'Test Config' but bundle manifest has 'Other'"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshot(&d), before);
    assert_eq!(fs::read(d.path("rootfs1.img")).unwrap(), vec![0xAA; 512 * 1024]);
}

#[test]
fn missing_slot_device_is_reported_before_writing() {
    let d = device("install-missing", "", AB);
    fs::remove_file(d.path("appfs1.img")).unwrap();
    let (b, _, _) = bundle("missing", "verity", "");
    let before = snapshot(&d);
    let r = install(&d, &b).fails();
    assert!(
        r.stderr
            .contains(&format!("Destination device '{}' for slot 'appfs.1' not found", d.path("appfs1.img").display())),
        "{}",
        r.stderr
    );
    assert_eq!(snapshot(&d), before);
    assert_eq!(fs::read(d.path("rootfs1.img")).unwrap(), vec![0xAA; 512 * 1024], "nothing written");
}

#[test]
fn full_target_fails_cleanly() {
    let _g = serial();
    let d = device("install-full", "", AB);
    let small = d.path("small");
    fs::create_dir_all(&small).unwrap();
    run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&small)).ok();
    fs::write(small.join("rootfs1.img"), b"").unwrap();
    d.write_conf(&conf(
        "",
        &AB.replace("device=rootfs1.img", &format!("device={}", small.join("rootfs1.img").display())),
    ));
    let (b, _, _) = bundle("full", "verity", "");
    let before = snapshot(&d);
    let r = install(&d, &b);
    run(Command::new("umount").arg(&small)).ok();
    let r = r.fails();
    assert!(r.stderr.contains("Failed updating slot rootfs.1: "), "{}", r.stderr);
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    let (root0, app0, env) = snapshot(&d);
    assert_eq!((root0, app0), (before.0, before.1));
    assert!(env.contains(&"ORDER=A B C".to_string()) && env.contains(&"B_OK=0".to_string()), "{env:?}");
    let central = fs::read_to_string(d.path("data/central.raucs")).unwrap();
    assert!(central.contains("[slot.rootfs.1]") && central.contains("status=failed"), "{central}");
}

fn losetup(file: &Path) -> String {
    run(Command::new("losetup").args(["-f", "--show"]).arg(file)).ok().stdout.trim().to_string()
}

#[test]
fn ext4_and_vfat_on_loop_devices() {
    let _g = serial();
    let dir = target_dir().join("test-bundles/fs");
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    c.image("padding.bin", 16 * 1024, 3);
    // An ext4 image for the rootfs slots, a tar (with xattrs and a file capability) for appfs.
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::write(tree.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::write(tree.join("hello.txt"), b"hello from the update\n").unwrap();
    run(Command::new("setfattr").args(["-n", "user.rota", "-v", "kept"]).arg(tree.join("hello.txt"))).ok();
    run(Command::new("setcap").arg("cap_net_raw+ep").arg(tree.join("bin/tool"))).ok();
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-czf"])
        .arg(c.dir.join("app.tar.gz"))
        .arg("-C")
        .arg(&tree)
        .arg("."))
    .ok();
    run(Command::new("mkfs.ext4").args(["-q", "-d"]).arg(&tree).arg(c.dir.join("root.ext4")).arg("4M")).ok();
    let vfat_tree = dir.join("vfat-tree");
    fs::create_dir_all(&vfat_tree).unwrap();
    fs::write(vfat_tree.join("boot.cfg"), b"timeout=1\n").unwrap();
    run(Command::new("tar").arg("-cf").arg(c.dir.join("boot.tar")).arg("-C").arg(&vfat_tree).arg(".")).ok();
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat=verity\n\
        [image.rootfs]\nfilename=root.ext4\n[image.appfs]\nfilename=app.tar.gz\n[image.boot]\nfilename=boot.tar\n",
    );
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();

    let d = Device::new(target_dir().join("test-devices/install-fs"), "");
    let mut loops = Vec::new();
    for f in ["r0", "r1", "a0", "a1", "b0", "b1"] {
        let p = d.slot_file(&format!("{f}.img"), 8 << 20, 0);
        loops.push(losetup(&p));
    }
    let slots = format!(
        "[slot.rootfs.0]\ndevice={}\ntype=ext4\nbootname=A\n[slot.rootfs.1]\ndevice={}\ntype=ext4\nbootname=B\n\
         [slot.appfs.0]\ndevice={}\ntype=ext4\nparent=rootfs.0\n[slot.appfs.1]\ndevice={}\ntype=ext4\nparent=rootfs.1\n\
         [slot.boot.0]\ndevice={}\ntype=vfat\nparent=rootfs.0\n[slot.boot.1]\ndevice={}\ntype=vfat\nparent=rootfs.1\n",
        loops[0], loops[1], loops[2], loops[3], loops[4], loops[5]
    );
    d.write_conf(&conf(&format!("mountprefix={}", d.path("mnt").display()), &slots));
    d.grub_env(&["A", "B"]);
    let r = install(&d, &b);
    let check = |dev: &str, f: &dyn Fn(&Path)| {
        let m = d.path("check");
        fs::create_dir_all(&m).unwrap();
        run(Command::new("mount").arg(dev).arg(&m)).ok();
        f(&m);
        run(Command::new("umount").arg(&m)).ok();
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let r = r.ok();
        assert!(r.stdout.contains("Copying image to boot.1"), "{}", r.stdout);
        check(&loops[1], &|m| assert_eq!(fs::read(m.join("hello.txt")).unwrap(), b"hello from the update\n"));
        check(&loops[3], &|m| {
            assert_eq!(fs::read(m.join("hello.txt")).unwrap(), b"hello from the update\n");
            let x =
                run(Command::new("getfattr").args(["-n", "user.rota", "--only-values"]).arg(m.join("hello.txt"))).ok();
            assert_eq!(x.stdout, "kept");
            let cap = run(Command::new("getcap").arg(m.join("bin/tool"))).ok();
            assert!(cap.stdout.contains("cap_net_raw=ep"), "{}", cap.stdout);
        });
        // This kernel has no vfat driver: read the FAT filesystem with mtools.
        let cfg = run(Command::new("mtype").args(["-i", &loops[5], "::/boot.cfg"]).env("MTOOLS_SKIP_CHECK", "1")).ok();
        assert_eq!(cfg.stdout, "timeout=1\n");
        let label = run(Command::new("blkid").args(["-s", "LABEL", "-o", "value"]).arg(&loops[5])).ok();
        assert_eq!(label.stdout.trim(), "BOOT_1");
        assert_eq!(primary(&d), "B");
    }));
    for l in &loops {
        run(Command::new("losetup").args(["-d", l]));
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A plain bundle signed correctly (real `openssl cms`) whose manifest states
/// a sha256 the image does not have — what a broken build host would produce.
fn lying_plain_bundle(name: &str) -> PathBuf {
    let dir = target_dir().join("test-bundles").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    let root = c.image("rootfs.img", 256 * 1024, 7);
    let mut claimed = root.clone();
    claimed[1000] ^= 1;
    c.manifest(&format!(
        "[update]\ncompatible=Test Config\nversion=1\n[bundle]\nformat=plain\n\
         [image.rootfs]\nfilename=rootfs.img\nsha256={}\nsize={}\n",
        sha256_hex(&claimed),
        root.len()
    ));
    let sq = dir.join("payload.sqfs");
    run(Command::new("mksquashfs").arg(&c.dir).arg(&sq).args(["-all-root", "-noappend", "-no-progress", "-quiet"]))
        .ok();
    let sig = dir.join("sig.der");
    testkit::openssl_cms_sign(&sq, &sig, &["-nosmimecap"]);
    let mut bytes = fs::read(&sq).unwrap();
    let sig = fs::read(&sig).unwrap();
    bytes.extend_from_slice(&sig);
    bytes.extend_from_slice(&(sig.len() as u64).to_be_bytes());
    let out = dir.join("b.raucb");
    fs::write(&out, bytes).unwrap();
    out
}

#[test]
fn corrupted_image_in_a_signed_bundle_is_not_activated() {
    let d = device("install-corrupt", "", AB);
    let b = lying_plain_bundle("corrupt");
    // The signature is fine: both info commands accept the bundle.
    run(testkit::with_keyring(rota().arg("info").arg(&b))).ok();
    run(testkit::with_keyring(testkit::peer_rauc().arg("info").arg(&b))).ok();
    let before = snapshot(&d);
    let r = install(&d, &b).fails();
    assert!(r.stderr.contains("Failed updating slot rootfs.1: Image 'rootfs.img' has sha256 "), "{}", r.stderr);
    assert!(r.stderr.contains("but the manifest says "), "{}", r.stderr);
    assert!(r.stderr.contains("Installing `") && r.stderr.contains("` failed"), "{}", r.stderr);
    let (root0, app0, env) = snapshot(&d);
    assert_eq!((root0, app0), (before.0, before.1), "booted slot untouched");
    assert!(env.contains(&"ORDER=A B C".to_string()) && env.contains(&"B_OK=0".to_string()), "{env:?}");
    let central = fs::read_to_string(d.path("data/central.raucs")).unwrap();
    assert!(central.contains("[slot.rootfs.1]") && central.contains("status=failed"), "{central}");
    // Mark-good of the booted slot still works and the next good bundle installs.
    let (good, root, _) = bundle("after-corrupt", "verity", "");
    install(&d, &good).ok();
    assert_eq!(head(&d.path("rootfs1.img"), root.len()), root);
    assert_eq!(primary(&d), "B");
}

fn compress(tool: &str, file: &Path) -> PathBuf {
    run(Command::new(tool).args(["-q", "-k", "-f"]).arg(file)).ok();
    let ext = match tool {
        "gzip" => "gz",
        "xz" => "xz",
        _ => "zst",
    };
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".{ext}"));
    PathBuf::from(name)
}

#[test]
fn compressed_images_are_decompressed_on_the_way() {
    let d = device("install-compressed", "", AB);
    let dir = target_dir().join("test-bundles/compressed");
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    // Half random, half zeros, so the compressed file is much smaller than the image.
    let mut root = testkit::pseudo_random(200 * 1024, 11);
    root.extend(vec![0u8; 200 * 1024]);
    fs::write(c.dir.join("rootfs.img"), &root).unwrap();
    let app = c.image("appfs.img", 64 * 1024, 12);
    compress("zstd", &c.dir.join("rootfs.img"));
    compress("xz", &c.dir.join("appfs.img"));
    fs::remove_file(c.dir.join("rootfs.img")).unwrap();
    fs::remove_file(c.dir.join("appfs.img")).unwrap();
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=1\n[bundle]\nformat=verity\n\
         [image.rootfs]\nfilename=rootfs.img.zst\n[image.appfs]\nfilename=appfs.img.xz\ntype=raw\n",
    );
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    let info = run(testkit::with_keyring(rota().args(["info", "--output-format=json"]).arg(&b))).ok();
    assert!(info.stdout.contains(r#""filename":"rootfs.img.zst","type":"raw""#), "{}", info.stdout);
    install(&d, &b).ok();
    assert_eq!(head(&d.path("rootfs1.img"), root.len()), root);
    assert_eq!(head(&d.path("appfs1.img"), app.len()), app);
    // The status keeps the manifest's digest (of the compressed file), so install-same works.
    let central = fs::read_to_string(d.path("data/central.raucs")).unwrap();
    let zst = fs::read(c.dir.join("rootfs.img.zst")).unwrap();
    assert!(zst.len() < root.len() * 3 / 4);
    assert!(central.contains(&format!("sha256={}", sha256_hex(&zst))), "{central}");

    // A corrupt compressed stream in a correctly signed bundle: clear error, nothing activated.
    let c2 = Content::new(dir.join("content-bad"));
    let mut gz = fs::read(compress("gzip", &c.dir.join("manifest.raucm"))).unwrap();
    let n = gz.len();
    gz[n / 2] ^= 0xff;
    gz.extend(testkit::pseudo_random(8192, 3)); // bundles need some bulk
    c2.file("rootfs.img.gz", &gz);
    c2.manifest("[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.img.gz\n");
    let bad = dir.join("bad.raucb");
    rota_bundle(&c2.dir, &bad, "release").ok();
    d.boot("rauc.slot=B");
    let before = fs::read(d.path("rootfs1.img")).unwrap();
    let r = install(&d, &bad).fails();
    assert!(r.stderr.contains("Failed updating slot rootfs.0: Failed to decompress 'rootfs.img.gz': "), "{}", r.stderr);
    assert_eq!(fs::read(d.path("rootfs1.img")).unwrap(), before, "booted slot untouched");
    assert_eq!(primary(&d), "B");
}

#[test]
fn progress_is_a_bar_on_a_terminal() {
    let d = device("install-tty", "", AB);
    let (b, _, _) = bundle("tty", "verity", "");
    // `script` gives the install a pseudo-terminal.
    let cmd = d.rota();
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let mut line = vec![quote(cmd.get_program())];
    line.extend(cmd.get_args().map(quote));
    line.push("install".into());
    line.push(quote(b.as_os_str()));
    let mut script = Command::new("script");
    script.args(["-qefc", &line.join(" "), "/dev/null"]);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    let out = run(&mut script).ok().stdout;
    assert!(out.contains("\r\x1b[K[###"), "{out:?}");
    assert!(out.contains("] 100% Installing done."), "{out:?}");
    assert!(!out.contains(" 40% Checking slot rootfs.1 (B)\n"), "no plain lines on a terminal: {out:?}");
    assert!(out.contains("succeeded"), "{out:?}");
}

/// The flaky medium on `dev`, decaying the byte at `flip_at` once written.
fn flaky(dev: &Path, backing: &Path, flip_at: u64) -> FlakyMedium {
    FlakyMedium::mount(Path::new(env!("CARGO_BIN_EXE_rota-flaky-medium")), dev, backing, &[format!("decay@{flip_at}")])
}

#[test]
fn a_block_that_goes_bad_on_the_medium_after_the_write_is_caught() {
    let _g = serial();
    let d = device("install-medium", "", AB);
    let (verity, root, _) = bundle("medium", "verity", "");
    let plain = bundle("medium-plain", "plain", "").0;
    let dev = d.path("rootfs1.img");
    let backing = d.path("rootfs1.backing");

    // An honest medium first: the reads reach it, and the install passes.
    let m = flaky(&dev, &backing, 1 << 40);
    install(&d, &verity).ok();
    let served = m.unmount();
    assert!(served.reads > 0 && served.writes > 0 && served.faults == 0, "{served:?}");
    assert_eq!(head(&backing, root.len()), root);
    d.grub_env(&["A", "B", "C"]);

    // One byte in the middle of the image decays once written: the read-back
    // (SHA-256 of the medium against the signed manifest) catches it, for a
    // verity and a plain bundle alike; nothing is activated.
    for b in [&verity, &plain] {
        let m = flaky(&dev, &backing, root.len() as u64 / 2 + 5);
        let before = snapshot(&d);
        let r = install(&d, b).fails();
        assert!(m.unmount().faults > 0, "the medium decayed");
        assert!(
            r.stderr.contains(&format!(
                "Failed updating slot rootfs.1: Read-back check of '{}' failed: sha256 ",
                dev.display()
            )),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&format!("instead of {} of {} bytes", sha256_hex(&root), root.len())),
            "{}",
            r.stderr
        );
        // What was written was right: the medium changed it afterwards.
        assert_eq!(head(&backing, root.len()), root);
        let (root0, app0, env) = snapshot(&d);
        assert_eq!((root0, app0), (before.0, before.1), "booted slots untouched");
        assert!(env.contains(&"ORDER=A B C".to_string()) && env.contains(&"B_OK=0".to_string()), "{env:?}");
        let central = fs::read_to_string(d.path("data/central.raucs")).unwrap();
        assert!(central.contains("[slot.rootfs.1]") && central.contains("status=failed"), "{central}");
        d.grub_env(&["A", "B", "C"]);
    }

    // A compressed image is compared by BLAKE3 of what was written.
    let dir = target_dir().join("test-bundles/medium-gz");
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    let mut img = testkit::pseudo_random(100 * 1024, 21);
    img.extend(vec![0u8; 100 * 1024]);
    fs::write(c.dir.join("rootfs.img"), &img).unwrap();
    compress("gzip", &c.dir.join("rootfs.img"));
    fs::remove_file(c.dir.join("rootfs.img")).unwrap();
    c.manifest("[update]\ncompatible=Test Config\nversion=1\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.img.gz\n");
    let gz = dir.join("b.raucb");
    rota_bundle(&c.dir, &gz, "release").ok();
    let m = flaky(&dev, &backing, 4096 * 3 + 1);
    let r = install(&d, &gz).fails();
    assert!(m.unmount().faults > 0, "the medium decayed");
    assert!(
        r.stderr.contains(&format!(
            "Failed updating slot rootfs.1: Read-back check of '{}' failed: blake3 ",
            dev.display()
        )),
        "{}",
        r.stderr
    );
    assert_eq!(head(&backing, img.len()), img);
    assert_eq!(primary(&d), "A");
}
