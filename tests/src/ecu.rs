//! ECU devices for system-update tests: file-backed A/B slots with a GRUB
//! environment, an `[ecu]` group with the test PKI's identity for the ECU, a
//! health check whose verdict is the number in the device's `health` file,
//! and a reboot command that leaves a `rebooted` mark for the harness.

use crate::device::Device;
use crate::{Content, pki_file, rota_bundle, run, signer_args};
use std::fs;
use std::path::{Path, PathBuf};

/// A free TCP port on loopback (for an ECU interface to listen on).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The device of ECU `id` in `dir`, of `compatible`; `role` ends its `[ecu]`
/// group (role and what it needs) and may add groups after it.
pub fn ecu_device(dir: PathBuf, id: &str, compatible: &str, role: &str) -> Device {
    ecu_device_as(dir, id, id, compatible, role)
}

/// [`ecu_device`] presenting the test PKI's ECU identity `identity`
/// (`ecu-<identity>.pem`): more ECUs than the PKI has identities.
pub fn ecu_device_as(dir: PathBuf, id: &str, identity: &str, compatible: &str, role: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible={compatible}\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\nmountprefix=mnt\n\
         [keyring]\npath={}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n\
         [ecu]\nid={id}\ncert={}\nkey={}\nhealth-check={}\nreboot-command=touch {}\n{role}",
        pki_file("keyring.pem").display(),
        pki_file(&format!("ecu-{identity}.pem")).display(),
        pki_file(&format!("ecu-{identity}.key")).display(),
        dir.join("health.sh").display(),
        dir.join("rebooted").display(),
    );
    let d = Device::new(dir, &conf);
    d.grub_env(&["A", "B"]);
    for f in ["rootfs0.img", "rootfs1.img"] {
        d.slot_file(f, 512 * 1024, 0xAA);
    }
    fs::write(
        d.path("health.sh"),
        "#!/bin/sh\nv=$(cat \"$(dirname \"$0\")/health\")\necho \"verdict $v\" >&2\nexit \"$v\"\n",
    )
    .unwrap();
    run(std::process::Command::new("chmod").arg("+x").arg(d.path("health.sh"))).ok();
    fs::write(d.path("health"), "0").unwrap();
    d
}

/// A verity bundle `<dir>/<name>.raucb` of `compatible` and `version` with a
/// `rootfs.img` of `size` pseudo-random bytes from `seed`; its image.
pub fn ecu_bundle(
    dir: &Path,
    name: &str,
    compatible: &str,
    version: &str,
    size: usize,
    seed: u64,
) -> (PathBuf, Vec<u8>) {
    let c = Content::new(dir.join(format!("content-{name}")));
    let image = c.image("rootfs.img", size, seed);
    c.manifest(&format!(
        "[update]\ncompatible={compatible}\nversion={version}\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.img\n"
    ));
    let out = dir.join(format!("{name}.raucb"));
    let _ = fs::remove_file(&out);
    rota_bundle(&c.dir, &out, "release").ok();
    (out, image)
}

/// Signs the system manifest `text` into `out` with `rota-bundle
/// system-manifest` as `signer` of the test PKI (its facts read from the
/// bundles with the test keyring; the new signature checked against the
/// signer's own root).
pub fn sign_system_manifest(text: &str, out: &Path, signer: &str) {
    sign_system_manifest_with(text, out, signer, &[]);
}

/// [`sign_system_manifest`], reading the bundles of the ECUs `files` names
/// from those local copies (`--bundle-file`: their URLs are out of reach).
pub fn sign_system_manifest_with(text: &str, out: &Path, signer: &str, files: &[(&str, &Path)]) {
    let input = out.with_extension("conf");
    fs::write(&input, text).unwrap();
    let _ = fs::remove_file(out);
    let root = if signer == "other" { "other-root.pem" } else { "keyring.pem" };
    run(std::process::Command::new(crate::bin("rota-bundle"))
        .arg("system-manifest")
        .args(signer_args(signer))
        .arg(format!("--keyring={}", pki_file("keyring.pem").display()))
        .arg(format!("--signing-keyring={}", pki_file(root).display()))
        .args(files.iter().map(|(id, f)| format!("--bundle-file={id}={}", f.display())))
        .arg(&input)
        .arg(out))
    .ok();
}
