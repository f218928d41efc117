//! Slots are listed and numbered as RAUC lists and numbers them (the walk
//! of its slot hash table), checked against Debian's rauc 1.8 on the same
//! A/B/C device: the slot order of `GetSlotStatus`, `status` in shell
//! format through each client, and the `RAUC_SLOT_*`, `RAUC_TARGET_SLOTS`
//! and `RAUC_IMAGE_*` values a handler sees, including which of two
//! never-installed root slots becomes the target.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::bus::{Bus, Service};
use testkit::device::{Device, grub_selected, grubenv};
use testkit::*;

const SLOTS: [(&str, &str, &str); 8] = [
    ("rootfs.0", "bootname=A", "rootfs-0.img"),
    ("rootfs.1", "bootname=B", "rootfs-1.img"),
    ("rootfs.2", "bootname=C", "rootfs-2.img"),
    ("appfs.0", "parent=rootfs.0", "appfs-0.img"),
    ("appfs.1", "parent=rootfs.1", "appfs-1.img"),
    ("appfs.2", "parent=rootfs.2", "appfs-2.img"),
    ("boot.0", "", "boot-0.img"),
    ("data.0", "", "data-0.img"),
];

fn device() -> Device {
    let d = Device::new(target_dir().join("test-devices").join("slot-order"), "");
    let mut conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv={}\ndata-directory={}\n\n\
         [keyring]\npath={}\n\n[handlers]\npre-install={}\n",
        d.path("grubenv").display(),
        d.path("data").display(),
        pki_file("keyring.pem").display(),
        d.path("hook.sh").display(),
    );
    for (name, extra, file) in SLOTS {
        conf += &format!("\n[slot.{name}]\ndevice={}\n{extra}\n", d.path(file).display());
    }
    d.write_conf(&conf);
    fs::write(
        d.path("hook.sh"),
        format!(
            "#!/bin/sh\nenv | grep -E '^RAUC_(SLOTS|SLOT_|TARGET_SLOTS|IMAGE_)' | sort > {}\n",
            d.path("hook.env").display()
        ),
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(d.path("hook.sh"))).ok();
    d
}

/// Fresh slots, GRUB environment and status: A booted, nothing installed.
fn reset(d: &Device) {
    for (_, _, file) in SLOTS {
        d.slot_file(file, 1 << 20, 0);
    }
    d.grub_env(&["A", "B", "C"]);
    let _ = fs::remove_dir_all(d.path("data"));
    fs::create_dir_all(d.path("data")).unwrap();
    let _ = fs::remove_file(d.path("hook.env"));
}

/// Slot names in the order `GetSlotStatus` returns them.
fn slot_status_order(bus: &Bus) -> Vec<String> {
    let out = run(&mut bus.busctl(&[
        "--json=short",
        "call",
        "de.pengutronix.rauc",
        "/",
        "de.pengutronix.rauc.Installer",
        "GetSlotStatus",
    ]))
    .ok()
    .stdout;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["data"][0].as_array().unwrap().iter().map(|t| t[0].as_str().unwrap().to_string()).collect()
}

/// `RAUC_SYSTEM_SLOTS` and `RAUC_SLOT_NAME_<n>`/`RAUC_SLOT_PARENT_<n>` of
/// a shell status.
fn shell_slots(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| {
            l.starts_with("RAUC_SYSTEM_SLOTS=")
                || l.starts_with("RAUC_SLOT_CLASS_")
                || l.starts_with("RAUC_SLOT_DEVICE_")
        })
        .map(str::to_string)
        .collect()
}

/// Debian's `rauc service` on `bus` for `d`, booted from A.
fn peer_service(d: &Device, bus: &Bus) -> Child {
    let mut c = peer_rauc();
    c.envs(bus.env())
        .arg("service")
        .arg(format!("--conf={}", d.conf().display()))
        .arg(format!("--mount={}", d.path("mnt").display()))
        .arg("--override-boot-slot=A")
        .stdout(Stdio::null())
        .stderr(fs::File::create(d.path("peer.log")).unwrap());
    fs::create_dir_all(d.path("mnt")).unwrap();
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bus.has_name("de.pengutronix.rauc") {
        assert!(child.try_wait().unwrap().is_none(), "{}", fs::read_to_string(d.path("peer.log")).unwrap());
        assert!(Instant::now() < deadline, "rauc service did not take its name");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn slots_are_ordered_and_numbered_as_debians_rauc_does() {
    let d = device();
    let content = Content::standard(d.path("content"), "plain");
    let bundle = d.path("b.raucb");
    rota_bundle(&content.dir, &bundle, "release").ok();
    let peer_client = |bus: &Bus, args: &[&str]| run(peer_rauc().envs(bus.env()).args(args));

    // Debian's rauc: service, its client, an installation.
    reset(&d);
    let bus = Bus::start();
    let mut peer = peer_service(&d, &bus);
    let peer_order = slot_status_order(&bus);
    let peer_shell = shell_slots(&peer_client(&bus, &["status", "--output-format=shell"]).ok().stdout);
    peer_client(&bus, &["install", bundle.to_str().unwrap()]).ok();
    let peer_env = fs::read_to_string(d.path("hook.env")).unwrap();
    let peer_selected = grub_selected(&grubenv(&d.path("grubenv")));
    let _ = peer.kill();
    let _ = peer.wait();
    drop(bus);

    // rota: its service, both clients, the same installation.
    reset(&d);
    let bus = Bus::start();
    let svc = Service::start(&d, &bus, &[]);
    assert_eq!(slot_status_order(&bus), peer_order, "GetSlotStatus");
    assert_eq!(shell_slots(&peer_client(&bus, &["status", "--output-format=shell"]).ok().stdout), peer_shell);
    let ours = run(d.rota().envs(bus.env()).args(["status", "--output-format=shell"])).ok().stdout;
    assert_eq!(shell_slots(&ours), peer_shell, "rota's client re-walks what it receives as RAUC's does");
    run(d.rota().envs(bus.env()).args(["install", bundle.to_str().unwrap()])).ok();
    let env = fs::read_to_string(d.path("hook.env")).unwrap();
    assert_eq!(env, peer_env, "handler environment");
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))), peer_selected, "the same target");
    assert!(env.contains("RAUC_SLOT_NAME_6=rootfs.2\n") && env.contains("RAUC_TARGET_SLOTS=2 3 6 8\n"), "{env}");
    drop(svc);

    // Without a service, `status` walks the configuration's table once.
    let direct = run(d.rota().args(["status", "--output-format=shell"])).ok().stdout;
    let names = direct.lines().find(|l| l.starts_with("RAUC_SYSTEM_SLOTS=")).unwrap();
    assert_eq!(names, format!("RAUC_SYSTEM_SLOTS='{}'", peer_order.join(" ")));
}
