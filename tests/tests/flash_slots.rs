//! Flash and eMMC slot types (spec §4.2–4.3): `nand`, `nor`, `ubivol`,
//! `ubifs` (image and tar), `jffs2` (tar) and `boot-emmc`.
//!
//! This machine (and CI) has no MTD, UBI or eMMC hardware, so these tests
//! run rota against the recording fakes of `tests/fakes` (`flash_erase`,
//! `nandwrite`, `flashcp`, `ubiupdatevol`, `mkfs.ubifs`, `mmc`, and `mount`
//! for the `ubifs`/`jffs2` types only), which act on plain files standing
//! in for the devices. They check the exact tool calls, the bytes that end
//! up on the "device", the read-back checks and the bootloader state.

use std::fs;
use std::path::{Path, PathBuf};
use testkit::device::Device;
use testkit::{Content, Run, pki_file, rota_bundle, run, target_dir};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// A device whose `rootfs` A/B slots (U-Boot, booted A) have `slot_type`
/// and live in files `rootfs0`/`rootfs1` of `size` bytes (0x00) — unless
/// `extra` adds slots of its own.
fn device(name: &str, slot_type: &str, size: usize, extra: &str) -> Device {
    let dir = target_dir().join("test-devices").join(name);
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=uboot\nmountprefix={}\nstatusfile={}\n[keyring]\npath={}\n\
         [slot.rootfs.0]\ndevice=rootfs0\ntype={slot_type}\nbootname=A\n\
         [slot.rootfs.1]\ndevice=rootfs1\ntype={slot_type}\nbootname=B\n{extra}",
        dir.join("mnt").display(),
        dir.join("central.raucs").display(),
        pki_file("keyring.pem").display()
    );
    let d = Device::new(&dir, &conf);
    d.slot_file("rootfs0", size, 0);
    d.slot_file("rootfs1", size, 0);
    d.fake_file("uboot.env", "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n");
    d
}

/// A verity bundle with one image `file` for class `class`, made by
/// `fill(content)`; with `hook`, slot hooks dump their mount point.
fn bundle(name: &str, class: &str, file: &str, hook: bool, fill: impl FnOnce(&Content)) -> PathBuf {
    let dir = target_dir().join("test-bundles").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    fill(&c);
    // The payload squashfs must be larger than one 4 KiB block.
    c.image("padding.img", 8 * KIB, 99);
    let (hooks, enable) = if hook {
        c.file(
            "hook.sh",
            b"#!/bin/sh\n{ echo \"mount=${RAUC_SLOT_MOUNT_POINT:-none}\"; env | grep '^RAUC_BOOT_' | sort; \
              if [ -n \"$RAUC_SLOT_MOUNT_POINT\" ]; then ls \"$RAUC_SLOT_MOUNT_POINT\"; fi; } > \"$HOOK_DUMP/$1\"\n",
        );
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(c.dir.join("hook.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        ("[hooks]\nfilename=hook.sh\n", "hooks=pre-install;post-install\n")
    } else {
        ("", "")
    };
    c.manifest(&format!(
        "[update]\ncompatible=Test Config\n[bundle]\nformat=verity\n{hooks}\
         [image.{class}]\nfilename={file}\n{enable}[image.padding]\nfilename=padding.img\n"
    ));
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    b
}

fn install(d: &Device, b: &Path) -> Run {
    fs::create_dir_all(d.path("dump")).unwrap();
    run(d.rota().env("HOOK_DUMP", d.path("dump")).arg("install").arg(b))
}

/// The recorded calls, without the bootloader's.
fn flash_calls(d: &Device) -> Vec<String> {
    d.take_calls().into_iter().filter(|c| !c.starts_with("fw_")).collect()
}

/// The padding class has a raw slot of its own on every device.
const PADDING_SLOT: &str = "[slot.padding.0]\ndevice=padding\n";

fn with_padding(d: Device) -> Device {
    d.slot_file("padding", 64 * KIB, 0);
    d
}

fn boot_order(d: &Device) -> String {
    d.fake_read("uboot.env").lines().find_map(|l| l.strip_prefix("BOOT_ORDER=")).unwrap_or("").to_string()
}

#[test]
fn nand_slots_are_erased_then_written_through_nandwrite() {
    let d = with_padding(device("flash-nand", "nand", MIB, PADDING_SLOT));
    let mut img = Vec::new();
    let b = bundle("flash-nand", "rootfs", "rootfs.img", false, |c| img = c.image("rootfs.img", 300 * KIB, 1));
    install(&d, &b).ok();
    let dev = d.path("rootfs1");
    assert_eq!(
        flash_calls(&d),
        [format!("flash_erase --quiet {0} 0 0", dev.display()), format!("nandwrite --pad --quiet {} -", dev.display())]
    );
    let bytes = fs::read(&dev).unwrap();
    assert_eq!(&bytes[..img.len()], &img[..]);
    assert!(bytes[img.len()..].iter().all(|&b| b == 0xFF), "rest of the device erased");
    assert!(fs::read(d.path("rootfs0")).unwrap().iter().all(|&b| b == 0), "booted slot untouched");
    assert_eq!(boot_order(&d), "B A");

    // A compressed image is decompressed on its way to nandwrite.
    let raw = testkit::pseudo_random(200 * KIB, 2);
    let b = bundle("flash-nand-zst", "rootfs", "rootfs.img.zst", false, |c| {
        fs::write(c.dir.join("raw.img"), &raw).unwrap();
        run(std::process::Command::new("zstd")
            .arg("-q")
            .arg("--rm")
            .arg(c.dir.join("raw.img"))
            .arg("-o")
            .arg(c.dir.join("rootfs.img.zst")))
        .ok();
    });
    install(&d, &b).ok();
    let bytes = fs::read(&dev).unwrap();
    assert_eq!(&bytes[..raw.len()], &raw[..]);
    assert!(bytes[raw.len()..].iter().all(|&b| b == 0xFF));
}

#[test]
fn nand_write_failure_activates_nothing() {
    let d = with_padding(device("flash-nand-full", "nand", 64 * KIB, PADDING_SLOT));
    let b = bundle("flash-nand-full", "rootfs", "rootfs.img", false, |c| {
        c.image("rootfs.img", 100 * KIB, 3);
    });
    let r = install(&d, &b).fails();
    assert!(
        r.stderr.contains(
            "Failed updating slot rootfs.1: Failed to write 'rootfs.img': nandwrite failed: \
             Child process exited with code 1: nandwrite: Input file does not fit into device"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(boot_order(&d), "A", "nothing activated, the target marked bad");
}

#[test]
fn nor_slots_are_written_by_flashcp_from_the_mounted_bundle_and_read_back() {
    let extra = format!("{PADDING_SLOT}[slot.bootloader.0]\ndevice=nor0\ntype=nor\n");
    let d = with_padding(device("flash-nor", "raw", 64 * KIB, &extra));
    let nor = d.slot_file("nor0", 512 * KIB, 0);
    let mut img = Vec::new();
    let b = bundle("flash-nor", "bootloader", "boot.img", false, |c| {
        img = c.image("boot.img", 100 * KIB, 4);
    });
    install(&d, &b).ok();
    let calls = flash_calls(&d);
    let bundle_file = d.path("mnt/bundle/boot.img");
    assert_eq!(calls, [format!("flashcp --erase-all {} {}", bundle_file.display(), nor.display())]);
    let bytes = fs::read(&nor).unwrap();
    assert_eq!(&bytes[..img.len()], &img[..]);
    assert!(bytes[img.len()..].iter().all(|&b| b == 0xFF));
    assert!(!d.path("mnt/bundle").exists(), "bundle unmounted afterwards");
}

#[test]
fn ubi_volumes_get_one_volume_update_and_a_read_back_check() {
    let d = with_padding(device("flash-ubivol", "ubivol", MIB, PADDING_SLOT));
    let mut img = Vec::new();
    let b = bundle("flash-ubivol", "rootfs", "rootfs.squashfs", true, |c| {
        img = c.image("rootfs.squashfs", 256 * KIB, 6);
    });
    install(&d, &b).ok();
    let dev = d.path("rootfs1");
    assert_eq!(flash_calls(&d), [format!("ubiupdatevol {} --size={} -", dev.display(), img.len())]);
    assert_eq!(&fs::read(&dev).unwrap()[..img.len()], &img[..]);
    assert_eq!(fs::read_to_string(d.path("dump/slot-pre-install")).unwrap(), "mount=none\n", "ubivol: never mounted");
    assert_eq!(boot_order(&d), "B A");

    // The volume returns other bytes than it was given: the install fails
    // before activation and the slot is recorded as failed.
    d.fake_file("uboot.env", "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n");
    let r = run(d.rota().env("HOOK_DUMP", d.path("dump")).env("FAKE_UBI_FLIP", "1").arg("install").arg(&b)).fails();
    assert!(
        r.stderr.contains(&format!("Failed updating slot rootfs.1: Read-back check of '{}' failed", dev.display())),
        "{}",
        r.stderr
    );
    assert_eq!(boot_order(&d), "A", "nothing activated, the target marked bad");
    let status = fs::read_to_string(d.path("central.raucs")).unwrap();
    assert!(status.contains("[slot.rootfs.1]\nbundle.compatible=Test Config"), "{status}");
    assert!(status.contains("status=failed"), "{status}");
}

#[test]
fn ubifs_slots_take_images_as_volume_updates_and_tars_through_mkfs() {
    let d = with_padding(device("flash-ubifs", "ubifs", MIB, PADDING_SLOT));
    // The slot holds an old filesystem, which the pre-install hook sees.
    fs::create_dir_all(d.fake_state().join("flashfs/rootfs1/old")).unwrap();
    // A tar: mkfs.ubifs, mounted (fake: bind mount), extracted, post hook sees it.
    let b = bundle("flash-ubifs-tar", "rootfs", "root.tar", true, |c| {
        let tree = c.dir.join("tree");
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::write(tree.join("etc/os-release"), "ID=rota\n").unwrap();
        run(std::process::Command::new("tar").arg("cf").arg(c.dir.join("root.tar")).arg("-C").arg(&tree).arg(".")).ok();
        fs::remove_dir_all(&tree).unwrap();
    });
    install(&d, &b).ok();
    let dev = d.path("rootfs1");
    let mnt = d.path("mnt/rootfs.1");
    let mount = format!("mount -t ubifs {} {}", dev.display(), mnt.display());
    assert_eq!(flash_calls(&d), [mount.clone(), format!("mkfs.ubifs -y {}", dev.display()), mount]);
    assert_eq!(fs::read_to_string(d.path("dump/slot-pre-install")).unwrap(), format!("mount={}\nold\n", mnt.display()));
    let fs_dir = d.fake_state().join("flashfs/rootfs1");
    assert_eq!(fs::read_to_string(fs_dir.join("etc/os-release")).unwrap(), "ID=rota\n");
    assert_eq!(
        fs::read_to_string(d.path("dump/slot-post-install")).unwrap(),
        format!("mount={}\netc\n", mnt.display())
    );
    assert!(!mnt.exists(), "unmounted afterwards");

    // An image: one volume update; the hooks see the filesystem mounted.
    let mut img = Vec::new();
    let b = bundle("flash-ubifs-img", "rootfs", "rootfs.ubifs", true, |c| img = c.image("rootfs.ubifs", 128 * KIB, 7));
    install(&d, &b).ok();
    let calls = flash_calls(&d);
    assert!(calls.contains(&format!("ubiupdatevol {} --size={} -", dev.display(), img.len())), "{calls:?}");
    assert_eq!(calls.iter().filter(|c| c.starts_with("mount -t ubifs")).count(), 2, "pre and post hook: {calls:?}");
    assert!(
        fs::read_to_string(d.path("dump/slot-pre-install")).unwrap().starts_with(&format!("mount={}", mnt.display()))
    );
}

#[test]
fn jffs2_slots_are_erased_and_filled_from_a_tar() {
    let extra = format!("{PADDING_SLOT}[slot.data.0]\ndevice=mtd7\ntype=jffs2\n");
    let d = with_padding(device("flash-jffs2", "raw", 64 * KIB, &extra));
    let dev = d.slot_file("mtd7", 256 * KIB, 0);
    let b = bundle("flash-jffs2", "data", "data.tar.gz", false, |c| {
        let tree = c.dir.join("tree");
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("calibration"), "42\n").unwrap();
        run(std::process::Command::new("tar").arg("czf").arg(c.dir.join("data.tar.gz")).arg("-C").arg(&tree).arg("."))
            .ok();
        fs::remove_dir_all(&tree).unwrap();
    });
    install(&d, &b).ok();
    let mnt = d.path("mnt/data.0");
    assert_eq!(
        flash_calls(&d),
        [format!("flash_erase --quiet {} 0 0", dev.display()), format!("mount -t jffs2 mtd7 {}", mnt.display())],
        "mounted by the MTD device's name"
    );
    assert_eq!(fs::read_to_string(d.fake_state().join("flashfs/mtd7/calibration")).unwrap(), "42\n");
}

/// An eMMC `mmcblk0` with boot partitions of 256 KiB (0x5A) and their
/// `force_ro` switches (set) in a sysfs tree of the device.
fn emmc_device(name: &str, slot_extra: &str) -> Device {
    let extra = format!("{PADDING_SLOT}[slot.bootloader.0]\ndevice=emmc/mmcblk0\ntype=boot-emmc\n{slot_extra}");
    let d = with_padding(device(name, "raw", 64 * KIB, &extra));
    fs::create_dir_all(d.path("emmc")).unwrap();
    d.slot_file("emmc/mmcblk0", 1024 * KIB, 0);
    for k in 0..2 {
        d.slot_file(&format!("emmc/mmcblk0boot{k}"), 256 * KIB, 0x5A);
        let sys = d.path(&format!("sys/block/mmcblk0boot{k}"));
        fs::create_dir_all(&sys).unwrap();
        fs::write(sys.join("force_ro"), "1").unwrap();
    }
    d
}

fn emmc_install(d: &Device, b: &Path) -> Run {
    fs::create_dir_all(d.path("dump")).unwrap();
    run(d.rota().env("HOOK_DUMP", d.path("dump")).env("ROTA_SYSFS_PATH", d.path("sys")).arg("install").arg(b))
}

fn emmc_bundle(name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut img = Vec::new();
    let b = bundle(name, "bootloader", "boot.img", true, |c| {
        img = c.image("boot.img", len, seed);
    });
    (b, img)
}

#[test]
fn boot_emmc_writes_the_inactive_boot_partition_and_switches_the_card() {
    let d = emmc_device("emmc-switch", "");
    let base = fs::canonicalize(d.path("emmc/mmcblk0")).unwrap();
    let part = |k: u32| base.with_file_name(format!("mmcblk0boot{k}"));
    let (b, img) = emmc_bundle("emmc-switch", 100 * KIB, 10);
    emmc_install(&d, &b).ok();
    assert_eq!(
        flash_calls(&d),
        [
            format!("mmc extcsd read {}", base.display()),
            format!("mmc extcsd read {}", base.display()),
            format!("mmc bootpart enable 2 1 {}", part(1).display()),
            format!("mmc extcsd read {}", base.display()),
        ]
    );
    assert_eq!(d.fake_read("emmc.partition_config"), "50\n", "boot1 enabled, BOOT_ACK kept");
    let boot1 = fs::read(part(1)).unwrap();
    assert_eq!(&boot1[..img.len()], &img[..]);
    assert!(boot1[img.len()..].iter().all(|&b| b == 0), "rest of the partition cleared");
    assert!(fs::read(part(0)).unwrap().iter().all(|&b| b == 0x5A), "active boot partition untouched");
    for k in 0..2 {
        assert_eq!(fs::read_to_string(d.path(&format!("sys/block/mmcblk0boot{k}/force_ro"))).unwrap(), "1");
    }
    assert_eq!(
        fs::read_to_string(d.path("dump/slot-pre-install")).unwrap(),
        "mount=none\nRAUC_BOOT_PARTITION_ACTIVATING=1\nRAUC_BOOT_SIZE_LIMIT=0\n"
    );
    // The next update goes to boot0.
    let (b, img) = emmc_bundle("emmc-switch-2", 50 * KIB, 11);
    emmc_install(&d, &b).ok();
    assert_eq!(d.fake_read("emmc.partition_config"), "48\n");
    assert_eq!(&fs::read(part(0)).unwrap()[..img.len()], &img[..]);
}

#[test]
fn boot_emmc_failures_leave_the_card_booting_where_it_did() {
    // A register write the kernel does not pass on is an error.
    let d = emmc_device("emmc-stale", "");
    d.fake_file("emmc.stale", "");
    let (b, _) = emmc_bundle("emmc-stale", 20 * KIB, 12);
    let r = emmc_install(&d, &b).fails();
    let base = fs::canonicalize(d.path("emmc/mmcblk0")).unwrap();
    assert!(
        r.stderr.contains(&format!(
            "Failed to switch '{}' to boot partition 1: PARTITION_CONFIG still reads 0x48",
            base.display()
        )),
        "{}",
        r.stderr
    );
    assert_eq!(boot_order(&d), "A B");

    // An image over the slot's size-limit: nothing written, nothing unlocked.
    let d = emmc_device("emmc-limit", "size-limit=64K\n");
    let base = fs::canonicalize(d.path("emmc/mmcblk0")).unwrap();
    let (b, _) = emmc_bundle("emmc-limit", 100 * KIB, 13);
    let r = emmc_install(&d, &b).fails();
    assert!(
        r.stderr.contains(&format!(
            "Image 'boot.img' (102400 bytes) does not fit into boot partition '{}' (65536 bytes)",
            base.with_file_name("mmcblk0boot1").display()
        )),
        "{}",
        r.stderr
    );
    assert!(fs::read(base.with_file_name("mmcblk0boot1")).unwrap().iter().all(|&b| b == 0x5A));
    assert!(!flash_calls(&d).iter().any(|c| c.contains("bootpart")));
    assert_eq!(fs::read_to_string(d.path("sys/block/mmcblk0boot1/force_ro")).unwrap(), "1");
}

#[test]
fn write_slot_uses_the_same_flash_procedures() {
    let extra = "[slot.bootloader.0]\ndevice=nor0\ntype=nor\n";
    let d = device("flash-write-slot", "ubivol", 256 * KIB, extra);
    let nor = d.slot_file("nor0", 128 * KIB, 0);
    let img = testkit::pseudo_random(40 * KIB, 14);
    let file = d.path("image.img");
    fs::write(&file, &img).unwrap();
    d.run(&["write-slot", "rootfs.1", file.to_str().unwrap()]).ok();
    d.run(&["write-slot", "bootloader.0", file.to_str().unwrap()]).ok();
    let dev = d.path("rootfs1");
    assert_eq!(
        flash_calls(&d),
        [
            format!("ubiupdatevol {} --size={} -", dev.display(), img.len()),
            format!("flashcp --erase-all {} {}", file.display(), nor.display()),
        ]
    );
    assert_eq!(&fs::read(&dev).unwrap()[..img.len()], &img[..]);
    assert_eq!(&fs::read(&nor).unwrap()[..img.len()], &img[..]);
    let r = d.run(&["write-slot", "rootfs.0", file.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("Refusing to write slot rootfs.0: it belongs to the booted slot group"), "{}", r.stderr);
}
