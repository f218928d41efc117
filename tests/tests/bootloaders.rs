//! Bootloader state after each mark, for every backend (spec §5): GRUB with
//! the real `grub-editenv`; U-Boot, barebox, EFI and the custom backend with
//! the recording fakes of `tests/fakes` (no such hardware here).

use serde_json::Value;
use std::process::Command;
use testkit::device::{Device, grubenv};
use testkit::{have, run, target_dir};

const SLOTS: &str = "[slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n\n\
[slot.appfs.0]\ndevice=appfs0.img\nparent=rootfs.0\n\n[slot.appfs.1]\ndevice=appfs1.img\nparent=rootfs.1\n";

fn device(name: &str, system_extra: &str, bootloader: &str, more: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader={bootloader}\ndata-directory=data\n{system_extra}\n{SLOTS}{more}"
    );
    let d = Device::new(target_dir().join("test-devices").join(name), &conf);
    for s in ["rootfs0.img", "rootfs1.img", "appfs0.img", "appfs1.img"] {
        d.slot_file(s, 4096, 0);
    }
    d
}

fn status_json(d: &Device) -> Value {
    serde_json::from_str(&d.run(&["status", "--output-format=json"]).ok().stdout).unwrap()
}

fn slot_field<'a>(v: &'a Value, slot: &str, field: &str) -> &'a Value {
    v["slots"].as_array().unwrap().iter().find_map(|s| s.get(slot)).unwrap().get(field).unwrap()
}

fn mark(d: &Device, how: &str, which: &str) -> String {
    d.run(&["status", how, which]).ok().stdout
}

#[test]
fn grub_with_the_real_grub_editenv() {
    assert!(have("grub-editenv"), "grub-editenv missing: run scripts/test (installs grub-common)");
    let d = device("grub", "grubenv=grubenv", "grub", "");
    d.grub_env(&["A", "B"]);
    let env = d.path("grubenv");

    let v = status_json(&d);
    assert_eq!(v["booted"], "A");
    assert_eq!(v["boot_primary"], "rootfs.0");
    assert_eq!(slot_field(&v, "rootfs.0", "state"), "booted");
    assert_eq!(slot_field(&v, "appfs.0", "state"), "active");
    assert_eq!(slot_field(&v, "rootfs.1", "boot_status"), "good");
    assert_eq!(slot_field(&v, "appfs.1", "boot_status"), &Value::Null);

    assert_eq!(mark(&d, "mark-active", "other"), "rota status: marked slot(s) rootfs.1 as active\n");
    assert_eq!(grubenv(&env), ["ORDER=B A", "A_OK=1", "A_TRY=0", "B_OK=1", "B_TRY=0"]);
    assert_eq!(status_json(&d)["boot_primary"], "rootfs.1");
    let central = std::fs::read_to_string(d.path("data/central.raucs")).unwrap();
    assert!(central.contains("[slot.rootfs.1]\nactivated.timestamp="), "{central}");
    assert!(central.contains("activated.count=1\n"), "{central}");

    assert_eq!(mark(&d, "mark-bad", "other"), "rota status: marked slot(s) rootfs.1 as bad\n");
    assert_eq!(grubenv(&env), ["ORDER=B A", "A_OK=1", "A_TRY=0", "B_OK=0", "B_TRY=0"]);
    let v = status_json(&d);
    assert_eq!(slot_field(&v, "rootfs.1", "boot_status"), "bad");
    assert_eq!(v["boot_primary"], "rootfs.0");

    assert_eq!(mark(&d, "mark-good", "rootfs.1"), "rota status: marked slot(s) rootfs.1 as good\n");
    assert_eq!(grubenv(&env), ["ORDER=B A", "A_OK=1", "A_TRY=0", "B_OK=1", "B_TRY=0"]);
    run(Command::new("grub-editenv").arg(&env).args(["set", "A_TRY=1"])).ok();
    assert_eq!(mark(&d, "mark-good", "booted"), "rota status: marked slot(s) rootfs.0 as good\n");
    assert_eq!(grubenv(&env), ["ORDER=B A", "A_OK=1", "A_TRY=0", "B_OK=1", "B_TRY=0"]);
    // Default identifier is `booted`.
    assert_eq!(d.run(&["status", "mark-active"]).ok().stdout, "rota status: marked slot(s) rootfs.0 as active\n");
    assert_eq!(grubenv(&env)[0], "ORDER=A B");
}

#[test]
fn mark_errors_and_rauc_wording() {
    let d = device("mark-errors", "", "noop", "");
    let r = run(d.rauc().args(["status", "mark-good", "rootfs.7"])).fails();
    assert_eq!(r.stderr.trim_end(), "rauc status: No slot with class rootfs and name rootfs.7 found");
    let r = run(d.rauc().args(["status", "mark-good", "appfs.0"])).fails();
    assert_eq!(r.stderr.trim_end(), "rauc status: Slot appfs.0 has no bootname set");
    let r = run(d.rauc().args(["status", "mark-best"])).fails();
    assert!(r.stderr.contains("unknown subcommand mark-best"), "{}", r.stderr);
    let r = run(d.rauc().args(["status", "mark-good"])).ok();
    assert_eq!(r.stdout, "rauc status: marked slot(s) rootfs.0 as good\n");
    d.boot("rauc.external quiet");
    let r = run(d.rauc().args(["status", "mark-good", "booted"])).fails();
    assert_eq!(r.stderr.trim_end(), "rauc status: Did not find booted slot");
    d.boot("rauc.slot=C");
    let r = run(d.rauc().args(["status"])).fails();
    assert_eq!(r.stderr.trim_end(), "Did not find booted slot (matching 'C')");
    d.boot("quiet splash");
    let r = run(d.rauc().args(["status"])).fails();
    assert_eq!(r.stderr.trim_end(), "Could not find any root device or rauc slot information in /proc/cmdline");
    let r = run(d.rauc().args(["status", "--override-boot-slot=B", "--output-format=json"])).ok();
    assert!(r.stdout.contains("\"booted\":\"B\""), "{}", r.stdout);
}

#[test]
fn noop_reports_unknown_states() {
    let d = device("noop", "", "noop", "");
    let out = d.run(&["status"]).ok().stdout;
    assert!(out.contains("Activated: none\n"), "{out}");
    assert!(out.contains("boot status: unknown\n"), "{out}");
    assert_eq!(mark(&d, "mark-bad", "other"), "rota status: marked slot(s) rootfs.1 as bad\n");
}

#[test]
fn prevent_late_fallback_marks_others_bad() {
    let d = device("late-fallback", "prevent-late-fallback=true\nboot-attempts=4", "uboot", "");
    d.fake_file("uboot.env", "BOOT_ORDER=A B\nBOOT_A_LEFT=1\nBOOT_B_LEFT=3\n");
    mark(&d, "mark-good", "booted");
    assert_eq!(d.fake_read("uboot.env"), "BOOT_A_LEFT=4\nBOOT_ORDER=A\nBOOT_B_LEFT=0\n");
}

#[test]
fn uboot_writes_each_change_in_one_call() {
    let d = device("uboot", "boot-attempts=5\nboot-attempts-primary=7", "uboot", "");
    d.fake_file("uboot.env", "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n");
    let v = status_json(&d);
    assert_eq!(v["boot_primary"], "rootfs.0");
    assert_eq!(slot_field(&v, "rootfs.1", "boot_status"), "good");
    d.take_calls();

    mark(&d, "mark-active", "other");
    let setenv: Vec<String> = d.take_calls().into_iter().filter(|c| c.starts_with("fw_setenv")).collect();
    assert_eq!(setenv.len(), 1, "{setenv:?}");
    assert!(setenv[0].starts_with("fw_setenv --script "), "{setenv:?}");
    assert_eq!(d.fake_read("uboot.env"), "BOOT_A_LEFT=3\nBOOT_B_LEFT=7\nBOOT_ORDER=B A\n");
    assert_eq!(status_json(&d)["boot_primary"], "rootfs.1");

    mark(&d, "mark-bad", "other");
    assert_eq!(d.fake_read("uboot.env"), "BOOT_A_LEFT=3\nBOOT_ORDER=A\nBOOT_B_LEFT=0\n");
    assert_eq!(slot_field(&status_json(&d), "rootfs.1", "boot_status"), "bad");
    d.take_calls();
    mark(&d, "mark-good", "booted");
    assert_eq!(d.fake_read("uboot.env"), "BOOT_ORDER=A\nBOOT_B_LEFT=0\nBOOT_A_LEFT=5\n");
    // A hex counter is read as hex.
    d.fake_file("uboot.env", "BOOT_ORDER=B A\nBOOT_A_LEFT=a\nBOOT_B_LEFT=0\n");
    let v = status_json(&d);
    assert_eq!(v["boot_primary"], "rootfs.0");
    assert_eq!(slot_field(&v, "rootfs.0", "boot_status"), "good");
}

#[test]
fn barebox_priorities_and_attempts() {
    let d = device("barebox", "barebox-statename=state\nbarebox-dtbpath=/boot/dt.dtb", "barebox", "");
    d.fake_file(
        "barebox.state",
        "bootstate.A.priority=20\nbootstate.A.remaining_attempts=3\nbootstate.B.priority=10\nbootstate.B.remaining_attempts=3\n",
    );
    assert_eq!(status_json(&d)["boot_primary"], "rootfs.0");
    d.take_calls();
    mark(&d, "mark-active", "other");
    let calls = d.take_calls();
    let sets: Vec<&String> = calls.iter().filter(|c| c.contains(" -s ")).collect();
    assert_eq!(
        sets,
        [
            "barebox-state -n state -s bootstate.A.priority=10 -s bootstate.B.priority=20 -s bootstate.B.remaining_attempts=3 -i /boot/dt.dtb"
        ]
    );
    assert_eq!(status_json(&d)["boot_primary"], "rootfs.1");
    mark(&d, "mark-bad", "rootfs.1");
    assert!(d.fake_read("barebox.state").contains("bootstate.B.priority=0\n"));
    let v = status_json(&d);
    assert_eq!(slot_field(&v, "rootfs.1", "boot_status"), "bad");
    assert_eq!(v["boot_primary"], "rootfs.0");
    mark(&d, "mark-good", "booted");
    assert!(d.fake_read("barebox.state").contains("bootstate.A.remaining_attempts=3\n"));
}

#[test]
fn efi_boot_entries() {
    let d = device("efi", "", "efi", "");
    d.fake_file("efi.entries", "0000 UiApp\n0001 A\n0002 B\n");
    d.fake_file("efi.order", "0001,0002,0000\n");
    d.fake_file("efi.current", "0002\n");
    // No rauc.slot= on the command line: BootCurrent tells the booted slot.
    d.boot("quiet");
    let v = status_json(&d);
    assert_eq!(v["booted"], "B");
    assert_eq!(v["boot_primary"], "rootfs.0");
    mark(&d, "mark-active", "other");
    assert_eq!(d.fake_read("efi.next"), "0001\n");
    assert_eq!(status_json(&d)["boot_primary"], "rootfs.0");
    mark(&d, "mark-bad", "rootfs.0");
    assert_eq!(d.fake_read("efi.order"), "0002,0000\n");
    assert_eq!(slot_field(&status_json(&d), "rootfs.0", "boot_status"), "bad");
    mark(&d, "mark-good", "rootfs.0");
    assert_eq!(d.fake_read("efi.order"), "0001,0002,0000\n");
    d.fake_file("efi.entries", "0000 UiApp\n0002 B\n");
    let r = d.run(&["status", "mark-good", "rootfs.0"]).fails();
    assert!(r.stderr.contains("Did not find efi entry for bootname 'A'!"), "{}", r.stderr);
}

#[test]
fn custom_backend_script() {
    let backend = testkit::device::fakes_dir().join("custom-backend");
    let d = device("custom", "", "custom", &format!("\n[handlers]\nbootloader-custom-backend={}\n", backend.display()));
    d.fake_file("custom.state", "primary=A\nstate.A=good\nstate.B=good\ncurrent=A\n");
    d.boot("quiet");
    let v = status_json(&d);
    assert_eq!(v["booted"], "A");
    assert_eq!(v["boot_primary"], "rootfs.0");
    d.take_calls();
    mark(&d, "mark-active", "other");
    mark(&d, "mark-bad", "booted");
    let calls: Vec<String> = d.take_calls().into_iter().filter(|c| c.contains("set-")).collect();
    assert_eq!(calls, ["custom-backend set-primary B", "custom-backend set-state A bad"]);
    let v = status_json(&d);
    assert_eq!(v["boot_primary"], "rootfs.1");
    assert_eq!(slot_field(&v, "rootfs.0", "boot_status"), "bad");
}
