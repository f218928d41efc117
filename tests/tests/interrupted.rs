//! Failure is harmless: an install killed with SIGKILL at 60 points spread
//! over its whole run leaves the booted slot group bit-identical, the
//! bootloader selecting the booted slot unless a complete update had already
//! been activated, readable status files, and a device the next install
//! updates normally.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::device::{Device, grub_selected, grubenv};
use testkit::{Content, pki_file, pseudo_random, rota_bundle, run, sha256_hex, target_dir};

const KILLS: u32 = 60;

/// The slot GRUB boots with this environment.
fn selected(env: &[String]) -> String {
    grub_selected(env).expect("some slot bootable")
}

fn digest(d: &Device, f: &str) -> String {
    sha256_hex(&fs::read(d.path(f)).unwrap())
}

#[test]
fn sigkill_at_any_point_loses_nothing() {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\n\
         [keyring]\npath={}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n\
         [slot.appfs.0]\ndevice=appfs0.img\nparent=rootfs.0\n[slot.appfs.1]\ndevice=appfs1.img\nparent=rootfs.1\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(target_dir().join("test-devices/interrupted"), &conf);
    d.grub_ab(12 << 20, 0x5A);
    let dir = target_dir().join("test-bundles/interrupted");
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    let root = c.image("rootfs.img", 8 << 20, 21);
    let app = c.image("appfs.img", 4 << 20, 22);
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=1\n[bundle]\nformat=verity\n\
         [image.rootfs]\nfilename=rootfs.img\n[image.appfs]\nfilename=appfs.img\n",
    );
    let bundle = dir.join("b.raucb");
    rota_bundle(&c.dir, &bundle, "release").ok();
    let booted = (digest(&d, "rootfs0.img"), digest(&d, "appfs0.img"));
    let holds_update = |d: &Device| {
        let r = fs::read(d.path("rootfs1.img")).unwrap();
        let a = fs::read(d.path("appfs1.img")).unwrap();
        r[..root.len()] == root[..] && a[..app.len()] == app[..]
    };

    // How long an uninterrupted install takes, to spread the kill points over it.
    let t0 = Instant::now();
    run(d.rota().arg("install").arg(&bundle)).ok();
    let span = t0.elapsed().as_micros() as u64 * 11 / 10;
    run(Command::new("grub-editenv").arg(d.path("grubenv")).args(["set", "ORDER=A B", "B_OK=0"])).ok();

    let delays = pseudo_random(KILLS as usize * 8, 99);
    let mut activated_kills = 0;
    for i in 0..KILLS {
        let r = u64::from_le_bytes(delays[i as usize * 8..][..8].try_into().unwrap());
        let delay = Duration::from_micros(r % span.max(1));
        let mut child =
            d.rota().arg("install").arg(&bundle).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        let env = grubenv(&d.path("grubenv"));
        assert_eq!(
            (digest(&d, "rootfs0.img"), digest(&d, "appfs0.img")),
            booted,
            "kill {i} after {delay:?} ({status}): booted slot group changed"
        );
        match selected(&env).as_str() {
            "A" => {}
            "B" => {
                assert!(holds_update(&d), "kill {i} after {delay:?}: B selected but not completely written: {env:?}");
                activated_kills += 1;
            }
            other => panic!("kill {i}: unexpected slot {other} selected"),
        }
        // Status files stay readable, whatever the moment.
        run(d.rota().args(["status", "--detailed", "--output-format=json"])).ok();
    }
    eprintln!("{KILLS} kills over {span} µs, {activated_kills} after activation");

    // The next install succeeds and activates B with the complete update.
    run(d.rota().arg("install").arg(&bundle)).ok();
    assert!(holds_update(&d));
    assert_eq!(selected(&grubenv(&d.path("grubenv"))), "B");
    assert_eq!((digest(&d, "rootfs0.img"), digest(&d, "appfs0.img")), booted);
}
