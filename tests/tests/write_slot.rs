//! `write-slot <SLOT> <IMAGE>` (spec §4.6): the slot type's write method,
//! no status, no bootloader change, and the same refusals as installs.

use std::fs;
use std::process::Command;
use testkit::device::{Device, grubenv};
use testkit::{pseudo_random, run, target_dir};

fn device(name: &str) -> Device {
    let conf = "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\n\
        [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n\
        [slot.bootloader.0]\ndevice=boot.img\nreadonly=true\n";
    let d = Device::new(target_dir().join("test-devices").join(name), conf);
    run(Command::new("grub-editenv").arg(d.path("grubenv")).args(["set", "ORDER=A B", "A_OK=1", "B_OK=1"])).ok();
    for f in ["rootfs0.img", "rootfs1.img", "boot.img"] {
        d.slot_file(f, 256 * 1024, 0xAA);
    }
    d
}

#[test]
fn writes_raw_and_compressed_images_without_touching_anything_else() {
    let d = device("write-slot");
    let image = pseudo_random(100 * 1024, 5);
    fs::write(d.path("new.img"), &image).unwrap();
    let env = grubenv(&d.path("grubenv"));
    let r = run(d.rota().args(["write-slot", "rootfs.1"]).arg(d.path("new.img"))).ok();
    assert_eq!(r.stdout, "Slot written successfully\n");
    assert_eq!(&fs::read(d.path("rootfs1.img")).unwrap()[..image.len()], &image[..]);
    assert_eq!(grubenv(&d.path("grubenv")), env, "no bootloader change");
    assert!(!d.path("data/central.raucs").exists(), "no status written");

    // A gzip-compressed file with an explicit type is unpacked on the way.
    let image2 = pseudo_random(120 * 1024, 6);
    fs::write(d.path("firmware.bin"), &image2).unwrap();
    run(Command::new("gzip").args(["-f", "-k"]).arg(d.path("firmware.bin"))).ok();
    run(d.rota().args(["write-slot", "-t", "raw", "rootfs.1"]).arg(d.path("firmware.bin.gz"))).ok();
    assert_eq!(&fs::read(d.path("rootfs1.img")).unwrap()[..image2.len()], &image2[..]);

    // The long spelling and RAUC's hidden `-l` name the type as `-t` does.
    let image3 = pseudo_random(64 * 1024, 7);
    fs::write(d.path("firmware3.bin"), &image3).unwrap();
    for args in [&["--image-type=raw"][..], &["-l", "raw"][..]] {
        fs::write(d.path("rootfs1.img"), vec![0u8; 128 * 1024]).unwrap();
        let r = run(d.rota().arg("write-slot").args(args).arg("rootfs.1").arg(d.path("firmware3.bin"))).ok();
        assert_eq!(r.stdout, "Slot written successfully\n", "{args:?}");
        assert_eq!(&fs::read(d.path("rootfs1.img")).unwrap()[..image3.len()], &image3[..], "{args:?}");
    }
}

#[test]
fn refusals_name_the_reason_and_write_nothing() {
    let d = device("write-slot-refused");
    fs::write(d.path("new.img"), pseudo_random(8192, 1)).unwrap();
    fs::write(d.path("new.bin"), pseudo_random(8192, 1)).unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["write-slot", "rootfs.7"], "No matching slot found for given slot name"),
        (&["write-slot", "bootloader.0"], "Reject writing to readonly slot"),
        (&["write-slot", "rootfs.0"], "Refusing to write slot rootfs.0: it belongs to the booted slot group"),
        (&["write-slot", "rootfs.1"], "new.bin' to known image type"),
        (&["write-slot", "-t", "fancy", "rootfs.1"], "Unsupported image type 'fancy'"),
        (&["write-slot", "-t", "tar", "rootfs.1"], "Unsupported image type 'tar' for slot type 'raw'"),
    ];
    for (args, message) in cases {
        let file = if message.contains("new.bin") { "new.bin" } else { "new.img" };
        let r = run(d.rota().args(args).arg(d.path(file))).fails();
        assert!(r.stderr.contains(message), "{args:?}: {}", r.stderr);
    }
    // As RAUC (and GIO) say it; the image is looked at before the slot.
    let missing = d.path("missing.img");
    let r = run(d.rota().args(["write-slot", "rootfs.7"]).arg(&missing)).fails();
    assert!(
        r.stderr.contains(&format!("Error opening file “{}”: No such file or directory", missing.display())),
        "{}",
        r.stderr
    );
    let r = run(d.rota().args(["write-slot", "rootfs.7"]).arg(d.path("new.img"))).fails();
    assert!(r.stderr.contains("'rootfs.7'.\nAvailable slots:\n  rootfs.0 (raw)\n"), "{}", r.stderr);
    // The booted slot need not be known: the command line says nothing about it here.
    fs::write(d.path("cmdline"), "quiet\n").unwrap();
    let r = run(d.rota().args(["write-slot", "rootfs.1"]).arg(d.path("new.img"))).ok();
    assert!(r.stdout.contains("Slot written successfully"), "{}", r.stdout);
    assert_eq!(&fs::read(d.path("rootfs1.img")).unwrap()[..8192], &pseudo_random(8192, 1)[..]);
    fs::write(d.path("rootfs1.img"), vec![0xAA; 256 * 1024]).unwrap();
    for f in ["rootfs0.img", "rootfs1.img", "boot.img"] {
        assert_eq!(fs::read(d.path(f)).unwrap(), vec![0xAA; 256 * 1024], "{f} untouched");
    }
}
