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

/// A device in `test-devices/<name>` with A/B root slots and app children
/// (12 MiB of 0x5A each), GRUB, a data directory and `extra` configuration.
fn device(name: &str, extra: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\n{extra}\n\
         [keyring]\npath={}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n\
         [slot.appfs.0]\ndevice=appfs0.img\nparent=rootfs.0\n[slot.appfs.1]\ndevice=appfs1.img\nparent=rootfs.1\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(target_dir().join("test-devices").join(name), &conf);
    d.grub_ab(12 << 20, 0x5A);
    d
}

/// A bundle in `test-bundles/<name>` with an 8 MiB rootfs and a 4 MiB
/// appfs image (random, from `seed`): the bundle and the two images.
fn bundle(name: &str, seed: u64) -> (std::path::PathBuf, Vec<u8>, Vec<u8>) {
    let dir = target_dir().join("test-bundles").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    let root = c.image("rootfs.img", 8 << 20, seed);
    let app = c.image("appfs.img", 4 << 20, seed + 1);
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=1\n[bundle]\nformat=verity\n\
         [image.rootfs]\nfilename=rootfs.img\n[image.appfs]\nfilename=appfs.img\n",
    );
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    (b, root, app)
}

/// Whether B's slots hold `root` and `app` completely.
fn holds(d: &Device, root: &[u8], app: &[u8]) -> bool {
    let r = fs::read(d.path("rootfs1.img")).unwrap();
    let a = fs::read(d.path("appfs1.img")).unwrap();
    r[..root.len()] == root[..] && a[..app.len()] == app[..]
}

#[test]
fn sigkill_at_any_point_loses_nothing() {
    let d = device("interrupted", "");
    let (bundle, root, app) = bundle("interrupted", 21);
    let booted = (digest(&d, "rootfs0.img"), digest(&d, "appfs0.img"));
    let holds_update = |d: &Device| holds(d, &root, &app);

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

#[test]
fn the_service_killed_at_any_point_leaves_nothing_that_stops_the_next_install() {
    use testkit::bus::{Bus, Service};
    const SERVICE_KILLS: u32 = 24;
    // A pre-install handler: every installation mounts the bundle view
    // (FUSE, a loop device, squashfs) under the device's mount prefix.
    let d = device("interrupted-service", "mountprefix=mnt\n[handlers]\npre-install=pre.sh");
    {
        use std::os::unix::fs::PermissionsExt;
        fs::write(d.path("pre.sh"), "#!/bin/sh\nls \"$RAUC_BUNDLE_MOUNT_POINT\" >/dev/null\n").unwrap();
        fs::set_permissions(d.path("pre.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (bundle, root, app) = bundle("interrupted-service", 23);
    let booted = (digest(&d, "rootfs0.img"), digest(&d, "appfs0.img"));
    let holds_update = |d: &Device| holds(d, &root, &app);
    let bus = Bus::start();
    let install = |d: &Device| {
        let mut client = d.rota();
        client.envs(bus.env()).arg("install").arg(&bundle).stdout(Stdio::null()).stderr(Stdio::null());
        client.spawn().unwrap()
    };

    // How long an install through the service takes.
    let svc = Service::start(&d, &bus, &[]);
    let t0 = Instant::now();
    assert!(install(&d).wait().unwrap().success());
    let span = t0.elapsed().as_micros() as u64 * 11 / 10;
    assert!(svc.stop().success());
    run(Command::new("grub-editenv").arg(d.path("grubenv")).args(["set", "ORDER=A B", "B_OK=0"])).ok();

    let delays = pseudo_random(SERVICE_KILLS as usize * 8, 98);
    let mut left_mounted = 0;
    for i in 0..SERVICE_KILLS {
        let r = u64::from_le_bytes(delays[i as usize * 8..][..8].try_into().unwrap());
        let delay = Duration::from_micros(r % span.max(1));
        let svc = Service::start(&d, &bus, &[]);
        let mut client = install(&d);
        std::thread::sleep(delay);
        svc.signal(libc::SIGKILL);
        svc.wait();
        let _ = client.wait();
        if testkit::mounted_below(&d.path("mnt")) {
            left_mounted += 1;
        }
        assert_eq!((digest(&d, "rootfs0.img"), digest(&d, "appfs0.img")), booted, "kill {i} after {delay:?}");
        let env = grubenv(&d.path("grubenv"));
        if selected(&env) == "B" {
            assert!(holds_update(&d), "kill {i} after {delay:?}: B selected but not completely written: {env:?}");
        }
        // A restarted service releases what the killed one left mounted
        // before it takes its name, with no installation needed; the next
        // install through it succeeds, and once the service stopped nothing
        // of either is left: no mount, no loop device, no FUSE session, no
        // payload directory.
        let svc = Service::start(&d, &bus, &[]);
        assert!(!testkit::mounted_below(&d.path("mnt")), "kill {i}: still mounted after the restart");
        assert_eq!(testkit::loops_below(&d.dir), Vec::<String>::new(), "kill {i}: loop devices after the restart");
        let out = install(&d).wait_with_output().unwrap();
        assert!(out.status.success(), "kill {i}: {}", fs::read_to_string(d.path("service.log")).unwrap());
        assert!(holds_update(&d));
        assert_eq!(selected(&grubenv(&d.path("grubenv"))), "B");
        assert!(svc.stop().success());
        assert!(!testkit::mounted_below(&d.dir), "kill {i}: {}", fs::read_to_string("/proc/self/mountinfo").unwrap());
        assert_eq!(testkit::loops_below(&d.dir), Vec::<String>::new(), "kill {i}");
        let left: Vec<_> = fs::read_dir(d.path("mnt")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.iter().all(|n| !n.to_string_lossy().starts_with(".payload-")), "kill {i}: {left:?}");
        run(Command::new("grub-editenv").arg(d.path("grubenv")).args(["set", "ORDER=A B", "B_OK=0"])).ok();
    }
    eprintln!("{SERVICE_KILLS} kills over {span} µs, {left_mounted} left the bundle view mounted");
    assert!(left_mounted > 0, "no kill hit a mounted bundle view");
}
