//! The shipped bus policy (`dbus-interfaces/dbus-1/de.pengutronix.rauc.conf`)
//! on a real `dbus-daemon` configured like a system bus: root owns the name
//! and may call everything, members of group `rota` may call methods,
//! anybody else may only read properties and introspect. Also checks the
//! shipped systemd units with `systemd-analyze verify`.

use std::fs;
use std::process::Command;
use testkit::bus::{Bus, Service};
use testkit::device::Device;
use testkit::{pki_file, run, target_dir, workspace};

/// A system-bus configuration with the defaults of Debian's system bus
/// (method calls denied unless a policy allows them) plus our policy.
fn bus_config(dir: &std::path::Path) -> std::path::PathBuf {
    let policy = workspace().join("dbus-interfaces/dbus-1/de.pengutronix.rauc.conf");
    let text = format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>{}</include>
</busconfig>
"#,
        dir.display(),
        policy.display()
    );
    let path = dir.join("system-bus.conf");
    fs::write(&path, text).unwrap();
    path
}

/// `busctl` on `bus` as uid/gid 65534 (nobody), with `groups` as supplementary groups.
fn as_nobody(bus: &Bus, groups: &str, args: &[&str]) -> testkit::Run {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534"]);
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        c.arg(format!("--groups={groups}"));
    }
    c.arg("busctl").arg(format!("--address={}", bus.address)).args(args);
    run(&mut c)
}

const INSTALLER: [&str; 3] = ["de.pengutronix.rauc", "/", "de.pengutronix.rauc.Installer"];

fn with_installer<'a>(verb: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![verb];
    v.extend(INSTALLER);
    v.extend(rest);
    v
}

/// A system-like bus with the shipped policy and `rota service` on it for a
/// device named `name`; the gid of group `rota` (made if missing).
struct PolicyBus {
    bus: Bus,
    _svc: Service,
    d: Device,
    rota_gid: String,
    _tmp: tempfile::TempDir,
}

impl PolicyBus {
    fn start(name: &str) -> PolicyBus {
        // The group must exist before the bus reads the policy.
        if Command::new("getent").args(["group", "rota"]).output().unwrap().stdout.is_empty() {
            run(Command::new("groupadd").args(["--system", "rota"])).ok();
        }
        // The socket must be reachable for nobody: a world-traversable temp dir.
        let tmp = tempfile::Builder::new().prefix("rota-bus").tempdir_in("/tmp").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let bus = Bus::start_system(&bus_config(tmp.path()));
        let conf = format!(
            "[system]\ncompatible=Test Config\nbootloader=noop\n[keyring]\npath={}\n\
             [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n",
            pki_file("keyring.pem").display()
        );
        let d = Device::new(target_dir().join("test-devices").join(name), &conf);
        d.slot_file("rootfs0.img", 4096, 0);
        d.slot_file("rootfs1.img", 4096, 0);
        let svc = Service::start(&d, &bus, &[]);
        let gid = run(Command::new("getent").args(["group", "rota"])).ok().stdout;
        let rota_gid = gid.split(':').nth(2).unwrap().trim().to_string();
        PolicyBus { bus, _svc: svc, d, rota_gid, _tmp: tmp }
    }
}

#[test]
fn only_root_and_group_rota_change_state() {
    let PolicyBus { bus, rota_gid: gid, .. } = &PolicyBus::start("dbus-policy");
    // Anybody: properties and introspection.
    let op = as_nobody(bus, "", &with_installer("get-property", &["Operation"])).ok();
    assert_eq!(op.stdout.trim(), "s \"idle\"");
    as_nobody(bus, "", &["introspect", "de.pengutronix.rauc", "/"]).ok();
    // … but no method of any interface: no install, inspection, mark,
    // cancel, poll or query, and no property set.
    let on = |iface: &'static str, rest: &[&'static str]| {
        let mut v = vec!["call", "de.pengutronix.rauc", "/", iface];
        v.extend(rest);
        v
    };
    for call in [
        with_installer("call", &["InstallBundle", "sa{sv}", "/tmp/x.raucb", "0"]),
        with_installer("call", &["Install", "s", "/tmp/x.raucb"]),
        with_installer("call", &["InspectBundle", "sa{sv}", "/tmp/x.raucb", "0"]),
        with_installer("call", &["Info", "s", "/tmp/x.raucb"]),
        with_installer("call", &["Mark", "ss", "good", "booted"]),
        with_installer("call", &["GetSlotStatus"]),
        with_installer("call", &["GetArtifactStatus"]),
        with_installer("call", &["GetPrimary"]),
        on("dev.rota.Installer1", &["Cancel"]),
        on("dev.rota.Installer1", &["Inspect", "sa{sv}", "/tmp/x.raucb", "0"]),
        on("de.pengutronix.rauc.Poller", &["Poll"]),
        on("org.freedesktop.DBus.Properties", &["Set", "ssv", "de.pengutronix.rauc.Installer", "Operation", "s", "x"]),
    ] {
        let r = as_nobody(bus, "", &call).fails();
        assert!(r.stderr.contains("Access denied"), "{call:?}: {}", r.stderr);
    }
    // Nobody may take the name either.
    let own = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "dbus-send"])
        .arg(format!("--bus={}", bus.address))
        .args(["--print-reply", "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus"])
        .args(["org.freedesktop.DBus.RequestName", "string:de.pengutronix.rauc", "uint32:4"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&own.stderr).contains("AccessDenied"), "{own:?}");

    // Members of group rota may call methods.
    let r = as_nobody(bus, gid, &with_installer("call", &["GetSlotStatus"])).ok();
    assert!(r.stdout.starts_with("a(sa{sv}) 2"), "{}", r.stdout);
    // Root may do everything.
    let r = run(&mut bus.busctl(&with_installer("call", &["Mark", "ss", "bad", "other"]))).ok();
    assert_eq!(r.stdout.trim(), "ss \"rootfs.1\" \"marked slot(s) rootfs.1 as bad\"");
}

#[test]
fn a_caller_in_group_rota_reaches_only_files_it_may_read_itself() {
    use std::os::unix::fs::PermissionsExt;
    let PolicyBus { bus, d, rota_gid: gid, .. } = &PolicyBus::start("dbus-policy-files");
    let dir = tempfile::Builder::new().prefix("rota-files").tempdir_in("/tmp").unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // A root-only file whose last 8 bytes, read as a signature size, are 123456789.
    let secret = dir.path().join("secret.raucb");
    let mut bytes = vec![0u8; 4096];
    bytes.extend_from_slice(&123_456_789u64.to_be_bytes());
    fs::write(&secret, &bytes).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let inspect = |path: &std::path::Path| {
        as_nobody(bus, gid, &with_installer("call", &["InspectBundle", "sa{sv}", path.to_str().unwrap(), "0"]))
    };
    let r = inspect(&secret).fails();
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    assert!(!r.stderr.contains("123456789"), "{}", r.stderr);
    // Installing it is refused the same way, and leaves no trace.
    let install = with_installer("call", &["InstallBundle", "sa{sv}", secret.to_str().unwrap(), "0"]);
    let r = as_nobody(bus, gid, &install).fails();
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    // Root may read it: the service's own check then speaks (RAUC's wording).
    let r = run(&mut bus.busctl(&with_installer("call", &["InspectBundle", "sa{sv}", secret.to_str().unwrap(), "0"])));
    assert!(r.stderr.contains("Signature size (123456789) exceeds bundle size"), "{}", r.stderr);
    // A fifo and a device answer at once, unopened.
    let fifo = dir.path().join("fifo.raucb");
    run(Command::new("mkfifo").arg("-m0666").arg(&fifo)).ok();
    for path in [fifo.as_path(), std::path::Path::new("/dev/zero")] {
        let started = std::time::Instant::now();
        let r = inspect(path).fails();
        assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
    // A TLS key the caller cannot read is not read for it either.
    let key = dir.path().join("client.key");
    fs::copy(pki_file("release.key"), &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let cert = pki_file("release.pem");
    let r = as_nobody(
        bus,
        gid,
        &with_installer(
            "call",
            &[
                "InspectBundle",
                "sa{sv}",
                "https://127.0.0.1:9/b.raucb",
                "2",
                "tls-cert",
                "s",
                cert.to_str().unwrap(),
                "tls-key",
                "s",
                key.to_str().unwrap(),
            ],
        ),
    )
    .fails();
    assert!(r.stderr.contains(&format!("Failed to read '{}': Permission denied", key.display())), "{}", r.stderr);
    // A bundle the caller may read is inspected for it.
    let b = dir.path().join("good.raucb");
    let c = testkit::Content::standard(d.path("content"), "verity");
    testkit::rota_bundle(&c.dir, &b, "release").ok();
    fs::set_permissions(&b, fs::Permissions::from_mode(0o644)).unwrap();
    let r = inspect(&b).ok();
    assert!(r.stdout.contains("Test Config"), "{}", r.stdout);
}

#[test]
fn shipped_systemd_units_verify() {
    let dir = workspace().join("dbus-interfaces/systemd");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("rota.service"))
        .arg(dir.join("rota-mark-good.service"))
        .arg(dir.join("rota-ocpp.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    // Only the binaries' absence on this build machine may be reported.
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let absent = ["/usr/bin/rota ", "/usr/bin/rota-ocpp "]
            .iter()
            .any(|b| line.contains(&format!("Command {b}is not executable")));
        assert!(absent, "{text}");
    }
}
