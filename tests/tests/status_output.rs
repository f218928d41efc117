//! `status` in every output format (spec §9.5), and configuration errors as
//! the command line reports them.

use std::process::Command;
use testkit::device::Device;
use testkit::{run, target_dir};

fn device(name: &str) -> Device {
    let d = Device::new(
        target_dir().join("test-devices").join(name),
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\n\
         [slot.rootfs.0]\ndevice=/dev/null\nbootname=A\ndescription=first root\n\
         [slot.rootfs.1]\ndevice=/dev/zero\nbootname=B\n[slot.appfs.0]\ndevice=/dev/full\nparent=rootfs.0\n",
    );
    let env = d.path("grubenv");
    run(Command::new("grub-editenv").arg(&env).arg("create")).ok();
    run(Command::new("grub-editenv").arg(&env).args(["set", "ORDER=B A", "A_OK=1", "A_TRY=0", "B_OK=0", "B_TRY=0"]))
        .ok();
    std::fs::create_dir_all(d.path("data")).unwrap();
    std::fs::write(
        d.path("data/central.raucs"),
        "[system]\nboot-id=x\n\n[slot.rootfs.0]\nbundle.compatible=Test Config\nbundle.version=1.0\nstatus=ok\nsha256=ab\nsize=262144\n\
         installed.transaction=t-1\ninstalled.timestamp=2026-11-22T03:24:43Z\ninstalled.count=2\n",
    )
    .unwrap();
    d
}

#[test]
fn readable_detailed() {
    // RAUC's layout and order: root classes and slots as its slot table
    // walks them (rootfs.1 before rootfs.0 here), children under their root.
    let d = device("status-readable");
    let out = run(d.rauc().args(["status", "--detailed"]).env("LANG", "C")).ok().stdout;
    let expected = r#"=== System Info ===
Compatible:     Test Config
Variant:        
System Version: 
Booted from:    rootfs.0 (A)

=== Bootloader ===
Activated: rootfs.0 (A)

=== Slot States ===
o [rootfs.1] (/dev/zero, raw, inactive)
      bootname: B
      boot status: bad
      slot status:
          bundle:
              compatible=
          installed:

x [rootfs.0] (/dev/null, raw, booted)
      bootname: A
      description: first root
      boot status: good
      slot status:
          bundle:
              compatible=Test Config
              version=1.0
          checksum:
              sha256=ab
              size=262.1 kB (262144 bytes)
          installed:
              timestamp=2026-11-22T03:24:43Z
              count=2
              transaction=t-1
          status=ok
    [appfs.0] (/dev/full, raw, active)
      slot status:
          bundle:
              compatible=
          installed:
"#;
    assert_eq!(out, expected);
    let out = run(d.rauc().arg("status").env("LANG", "en_US.UTF-8")).ok().stdout;
    assert!(out.contains("⏺ [rootfs.0]") && out.contains("○ [rootfs.1]"), "{out}");
}

#[test]
fn shell_output_is_valid_sh() {
    let d = device("status-shell");
    let out = run(d.rota().args(["status", "--detailed", "--output-format=shell"])).ok().stdout;
    // Numbered in RAUC's order: rootfs.1, rootfs.0, appfs.0.
    let script = format!(
        "{out}\necho \"$RAUC_SYSTEM_SLOTS|$RAUC_SLOTS|$RAUC_SLOT_STATUS_INSTALLED_COUNT_2|$RAUC_SLOT_BOOT_STATUS_1|$RAUC_SLOT_PARENT_3|$RAUC_BOOT_PRIMARY\""
    );
    let r = run(Command::new("sh").arg("-c").arg(script)).ok();
    assert_eq!(r.stdout, "rootfs.1 rootfs.0 appfs.0|1 2 3|2|bad|rootfs.0|rootfs.0\n");
}

#[test]
fn json_formats() {
    let d = device("status-json");
    let compact = run(d.rota().args(["status", "--detailed", "--output-format=json"])).ok().stdout;
    assert!(compact.starts_with("{\"compatible\":\"Test Config\",\"variant\":\"\",\"system_version\":null,\"booted\":\"A\",\"boot_primary\":\"rootfs.0\",\"slots\":[{\"rootfs.1\":{\"class\":\"rootfs\""), "{compact}");
    let v: serde_json::Value = serde_json::from_str(&compact).unwrap();
    let st = &v["slots"][1]["rootfs.0"]["slot_status"];
    assert_eq!(st["checksum"]["size"], 262144);
    assert_eq!(st["installed"]["count"], 2);
    assert_eq!(v["artifact-repositories"], serde_json::json!([]));
    let pretty = run(d.rota().args(["status", "--output-format=json-pretty"])).ok().stdout;
    assert!(pretty.contains("\"compatible\" : \"Test Config\""), "{pretty}");
    let r = run(d.rota().args(["status", "--output-format=xml"])).fails();
    assert_eq!(r.stderr.trim_end(), "Unknown output format: 'xml'");
}

#[test]
fn config_errors_name_file_line_and_key() {
    let d = device("status-bad-conf");
    std::fs::create_dir_all(d.path("system.conf.d")).unwrap();
    std::fs::write(d.path("system.conf.d/50-site.conf"), "# site\n[system]\nbootloader=lilo\n").unwrap();
    let r = run(d.rota().arg("status")).fails();
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "Invalid system config: {}:3: Unsupported bootloader 'lilo' selected in system config",
            d.path("system.conf.d/50-site.conf").display()
        )
    );
    std::fs::remove_file(d.path("system.conf.d/50-site.conf")).unwrap();
    let r = run(d.rota().args(["status", "-C", "slot.rootfs.0:bootname=has space"])).fails();
    assert_eq!(
        r.stderr.trim_end(),
        "Invalid system config: -C option 1:1: Bootname 'has space' of slot rootfs.0 must not contain whitespace"
    );
    let r = run(d.rota().args(["status", "-C", "system"])).fails();
    assert_eq!(r.stderr.trim_end(), "Error in parsing override: Missing '='");
}

#[test]
fn rauc_test_hooks_replace_the_command_line_and_the_runtime_directory() {
    // RAUC_TEST_CMDLINE is the kernel command line itself, ahead of the
    // simulated device's file; RAUC_TEST_RUNTIME_DIRECTORY moves /run/rauc.
    let d = device("status-rauc-test-hooks");
    let shell = |cmdline: &str| {
        let out = run(d.rota().env("RAUC_TEST_CMDLINE", cmdline).args(["status", "--output-format=shell"])).ok();
        out.stdout.lines().find(|l| l.starts_with("RAUC_SYSTEM_BOOTED_BOOTNAME=")).unwrap().to_string()
    };
    assert_eq!(shell("quiet rauc.slot=B"), "RAUC_SYSTEM_BOOTED_BOOTNAME='B'");
    assert_eq!(shell("rauc.external"), "RAUC_SYSTEM_BOOTED_BOOTNAME='_external_'");
    let run_dir = d.path("rauc-test-run");
    let bus = testkit::bus::Bus::start();
    let _svc = testkit::bus::Service::start(&d, &bus, &[("RAUC_TEST_RUNTIME_DIRECTORY", run_dir.to_str().unwrap())]);
    let link = run_dir.join("slots/active/rootfs");
    assert_eq!(std::fs::read_link(&link).unwrap(), std::path::Path::new("/dev/null"), "{}", link.display());
}
