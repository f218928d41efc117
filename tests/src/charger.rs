//! A charger for the OCPP and EVerest tests: A/B raw root slots under
//! GRUB (real `grub-editenv`), a central status file, absolute paths (so
//! Debian's rauc 1.8 reads the same `system.conf`), and its bundles.

use crate::device::{Device, grubenv};
use crate::{Content, pki_file, rota_bundle, run, target_dir};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The compatible string of the charger and its bundles.
pub const COMPATIBLE: &str = "EVerest Charger";

/// A charger in `test-devices/<name>`; slot B is `target_device` (a file
/// name in the device directory, or an absolute path such as `/dev/full`).
pub fn device(name: &str, target_device: &str) -> Device {
    let dir = target_dir().join("test-devices").join(name);
    let d = Device::new(&dir, "");
    let target = if target_device.starts_with('/') {
        target_device.to_string()
    } else {
        d.path(target_device).display().to_string()
    };
    let conf = format!(
        "[system]\ncompatible={COMPATIBLE}\nbootloader=grub\ngrubenv={grubenv}\nstatusfile={status}\n\
         mountprefix={mnt}\n[keyring]\npath={keyring}\n\
         [slot.rootfs.0]\ndevice={a}\ntype=raw\nbootname=A\n[slot.rootfs.1]\ndevice={target}\ntype=raw\nbootname=B\n",
        grubenv = d.path("grubenv").display(),
        status = d.path("central.raucs").display(),
        mnt = d.path("mnt").display(),
        keyring = pki_file("keyring.pem").display(),
        a = d.path("rootfs0.img").display(),
    );
    d.write_conf(&conf);
    fs::create_dir_all(d.path("mnt")).unwrap();
    d.grub_env(&["A", "B"]);
    d.slot_file("rootfs0.img", 512 * 1024, 0xAA);
    d.slot_file("rootfs1.img", 512 * 1024, 0xBB);
    d
}

/// A one-image bundle for the charger (`format` plain/verity), signed by
/// `signer` of the test PKI; `size` bytes of image.
pub fn bundle(name: &str, format: &str, signer: &str, size: usize) -> PathBuf {
    let dir = target_dir().join("test-bundles").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    c.image("rootfs.img", size, 7);
    c.manifest(&format!(
        "[update]\ncompatible={COMPATIBLE}\nversion=2026.12.0\n[bundle]\nformat={format}\n[image.rootfs]\nfilename=rootfs.img\n"
    ));
    let out = dir.join("b.raucb");
    rota_bundle(&c.dir, &out, signer).ok();
    out
}

/// One boot through RAUC's GRUB script: each slot of `ORDER` examined gets
/// `TRY=1`; the first that had `OK=1` and `TRY=0` boots.
pub fn grub_boot(env: &Path) -> String {
    let lines = grubenv(env);
    let get = |k: &str| lines.iter().find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_string));
    let order = get("ORDER").expect("ORDER");
    for slot in order.split(' ') {
        let ok = get(&format!("{slot}_OK")).as_deref() == Some("1");
        let tried = get(&format!("{slot}_TRY")).as_deref() != Some("0");
        run(Command::new("grub-editenv").arg(env).args(["set", &format!("{slot}_TRY=1")])).ok();
        if ok && !tried {
            return slot.to_string();
        }
    }
    panic!("GRUB found no bootable slot: {lines:?}");
}
