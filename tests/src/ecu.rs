//! ECU devices for system-update tests: file-backed A/B slots with a GRUB
//! environment, an `[ecu]` group with the test PKI's identity for the ECU, a
//! health check whose verdict is the number in the device's `health` file,
//! and a reboot command that leaves a `rebooted` mark for the harness.

use crate::device::Device;
use crate::{pki_file, run};
use std::fs;
use std::path::PathBuf;

/// A free TCP port on loopback (for an ECU interface to listen on).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The device of ECU `id` in `dir`, of `compatible`; `role` ends its `[ecu]`
/// group (role and what it needs) and may add groups after it.
pub fn ecu_device(dir: PathBuf, id: &str, compatible: &str, role: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible={compatible}\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\nmountprefix=mnt\n\
         [keyring]\npath={}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n\
         [ecu]\nid={id}\ncert={}\nkey={}\nhealth-check={}\nreboot-command=touch {}\n{role}",
        pki_file("keyring.pem").display(),
        pki_file(&format!("ecu-{id}.pem")).display(),
        pki_file(&format!("ecu-{id}.key")).display(),
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
