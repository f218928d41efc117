//! Polling (`[polling]`, spec §11.1, `de.pengutronix.rauc.Poller` §8.5)
//! against a real nginx and a real dbus-daemon: no poll before the booted
//! slot was marked good through the service (in this boot: a restarted
//! service remembers it); a newer bundle is reported
//! and installed without a caller (`install-criteria`), then the reboot
//! command runs and polling stops (a failing one is reported and run
//! again); a candidate found while the installer is busy is installed at a
//! later poll; an unchanged bundle is answered `304`;
//! an inhibit file stops polls; errors are counted; a service without a
//! system version refuses to start. The scheduler's 10 s tick is shortened
//! with `ROTA_POLL_TICK_MS` so a `Poll()` is due after 0.3 s instead of 30 s.

use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::bus::{Bus, Service, interface_element};
use testkit::device::{Device, grub_selected, grubenv};
use testkit::nginx::{Nginx, web_root};
use testkit::{Content, pki_file, rota_bundle, run, target_dir};

const SLOT: usize = 1 << 20;
const TICK: (&str, &str) = ("ROTA_POLL_TICK_MS", "100");

fn device(name: &str, polling: &str, version: Option<&str>) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\n\
         [keyring]\npath={}\n[handlers]\nsystem-info=system-info.sh\n[polling]\n{polling}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(target_dir().join("test-devices/polling").join(name), &conf);
    d.grub_ab(SLOT, 0x5A);
    let handler = d.path("system-info.sh");
    let line = version.map(|v| format!("echo RAUC_SYSTEM_VERSION={v}\n")).unwrap_or_default();
    fs::write(&handler, format!("#!/bin/sh\n{line}")).unwrap();
    fs::set_permissions(&handler, fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn publish(www: &Path, version: &str) -> Vec<u8> {
    let dir = target_dir().join("test-bundles/polling").join(version);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    let image = c.image("rootfs.img", 256 << 10, 90);
    c.manifest(&format!(
        "[update]\ncompatible=Test Config\nversion={version}\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.img\n"
    ));
    let out = www.join("update.raucb");
    let _ = fs::remove_file(&out);
    rota_bundle(&c.dir, &out, "release").ok();
    image
}

fn busctl_json(bus: &Bus, args: &[&str]) -> Value {
    let mut all = vec!["--json=short"];
    all.extend(args);
    let out = run(&mut bus.busctl(&all)).ok();
    serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null)
}

/// The Poller's `Status` as JSON (busctl's `{"type", "data"}` per value).
fn status(bus: &Bus) -> Value {
    busctl_json(bus, &["get-property", "de.pengutronix.rauc", "/", "de.pengutronix.rauc.Poller", "Status"])["data"]
        .clone()
}

fn next_poll(bus: &Bus) -> i64 {
    busctl_json(bus, &["get-property", "de.pengutronix.rauc", "/", "de.pengutronix.rauc.Poller", "NextPoll"])["data"]
        .as_i64()
        .unwrap()
}

fn poll(bus: &Bus) {
    run(&mut bus.busctl(&["call", "de.pengutronix.rauc", "/", "de.pengutronix.rauc.Poller", "Poll"])).ok();
}

fn mark_good(d: &Device, bus: &Bus) {
    run(d.rota().envs(bus.env()).args(["status", "mark-good", "booted"])).ok();
}

/// Waits (up to 30 s) until `check` holds for the Status.
fn wait_status(bus: &Bus, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(bus);
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn attempts(s: &Value) -> u64 {
    s["attempt-count"]["data"].as_u64().unwrap_or(0)
}

#[test]
fn a_newer_bundle_is_installed_without_a_caller_and_the_device_reboots() {
    let (t, www) = web_root();
    let nginx = Nginx::serve(&www);
    let image = publish(&www, "2.0.0");
    let rebooted = t.path().join("rebooted");
    let polling = format!(
        "url={}\ninstall-criteria=higher-semver\nreboot-criteria=updated-slots\nreboot-cmd=touch {}\n",
        nginx.url("/update.raucb"),
        rebooted.display()
    );
    let d = device("auto-install", &polling, Some("1.0.0"));
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[TICK]);

    // Not marked good through the service yet: Poll() leads to no attempt.
    poll(&bus);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(attempts(&status(&bus)), 0, "polled before the booted slot was marked good");
    assert!(nginx.header_log().is_empty());

    mark_good(&d, &bus);
    poll(&bus);
    let s = wait_status(&bus, "update found", |s| attempts(s) >= 1);
    assert_eq!(s["update-available"]["data"], true, "{s}");
    assert_eq!(s["summary"]["data"], "update candidate found: higher semantic version", "{s}");
    assert_eq!(s["manifest"]["data"]["update"]["data"]["version"]["data"], "2.0.0", "{s}");
    assert_eq!(s["bundle"]["data"]["effective-url"]["data"], nginx.url("/update.raucb"), "{s}");
    assert!(s["bundle"]["data"]["etag"]["data"].as_str().is_some_and(|e| e.starts_with('"')), "{s}");

    // Installed without a caller, then the reboot command ran and polling stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rebooted.exists() {
        assert!(
            Instant::now() < deadline,
            "no reboot; service log: {}",
            fs::read_to_string(d.path("service.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fs::read(d.path("rootfs1.img")).unwrap()[..image.len()] == image[..], "B not written");
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("B"));
    assert_eq!(next_poll(&bus), 0, "polling stops once a reboot was triggered");
    let s = status(&bus);
    assert_eq!(s["attempted-hash"]["data"], s["manifest"]["data"]["manifest-hash"]["data"], "{s}");
}

#[test]
fn unchanged_bundles_inhibit_files_and_errors() {
    let (t, www) = web_root();
    let nginx = Nginx::serve(&www);
    publish(&www, "1.0.0");
    let inhibit = t.path().join("inhibit");
    let polling = format!("url={}\ninhibit-files={}\n", nginx.url("/update.raucb"), inhibit.display());
    let d = device("no-candidate", &polling, Some("1.0.0"));
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[TICK]);
    mark_good(&d, &bus);

    // The same version: no candidate, nothing installed.
    poll(&bus);
    let s = wait_status(&bus, "first poll", |s| attempts(s) >= 1);
    assert_eq!(s["update-available"]["data"], false, "{s}");
    assert_eq!(s["summary"]["data"], "no update candidate available", "{s}");
    assert!(next_poll(&bus) > 0);
    // Polled again: the server answers 304 for the ETag of the last poll,
    // and the result stays.
    poll(&bus);
    let s = wait_status(&bus, "second poll", |s| attempts(s) >= 2);
    assert_eq!(s["summary"]["data"], "no update candidate available", "{s}");
    assert_eq!(s["recent-error-count"]["data"], 0, "{s}");
    let log = nginx.header_log();
    assert_eq!(log.last().map(|l| l.status), Some(304), "{log:?}");
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("A"), "nothing installed");

    // An inhibit file stops polls.
    fs::write(&inhibit, "").unwrap();
    poll(&bus);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(attempts(&status(&bus)), 2, "polled despite the inhibit file");
    fs::remove_file(&inhibit).unwrap();

    // Errors are counted and reported.
    fs::remove_file(www.join("update.raucb")).unwrap();
    poll(&bus);
    let s = wait_status(&bus, "failed poll", |s| attempts(s) >= 3);
    assert_eq!(s["recent-error-count"]["data"], 1, "{s}");
    let m = s["last-error-message"]["data"].as_str().unwrap_or_default().to_string();
    assert!(m.ends_with("not found"), "{m}");
}

#[test]
fn the_poller_interface_is_exported_as_shipped_only_when_polling_is_configured() {
    let d = device("introspect", "url=http://127.0.0.1:9/update.raucb\n", Some("1.0.0"));
    let bus = Bus::start();
    let svc = Service::start(&d, &bus, &[TICK]);
    let call = ["call", "de.pengutronix.rauc", "/", "org.freedesktop.DBus.Introspectable", "Introspect"];
    let exported = busctl_json(&bus, &call)["data"][0].as_str().unwrap().to_string();
    let name = rota_dbus::POLLER_INTERFACE;
    if let Ok(path) = std::env::var("ROTA_WRITE_POLLER_XML") {
        fs::write(path, &exported).unwrap();
    }
    let shipped = fs::read_to_string(testkit::workspace().join(format!("dbus-interfaces/{name}.xml"))).unwrap();
    assert_eq!(interface_element(&exported, name), interface_element(&shipped, name));
    // The typed proxy of rota-dbus: Poll() brings the next poll forward to
    // the short delay (three ticks here), and Status starts empty.
    let first = next_poll(&bus);
    assert!(first > 0, "a first poll is scheduled");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(bus.address.as_str()).build().await.unwrap();
        let proxy = rota_dbus::PollerProxy::new(&conn).await.unwrap();
        proxy.poll().await.unwrap();
        let next = proxy.next_poll().await.unwrap();
        assert!(next > 0 && next < first, "Poll() brings the next poll forward: {next} vs {first}");
        let status = proxy.status().await.unwrap();
        let count: u64 = status["attempt-count"].clone().try_into().unwrap();
        assert_eq!(count, 0);
    });
    drop(svc);

    // Without [polling] there is no Poller.
    let plain = Device::new(
        target_dir().join("test-devices/polling/introspect-none"),
        &fs::read_to_string(d.conf()).unwrap().replace("[polling]\nurl=http://127.0.0.1:9/update.raucb\n", ""),
    );
    plain.grub_ab(SLOT, 0x5A);
    fs::copy(d.path("system-info.sh"), plain.path("system-info.sh")).unwrap();
    let bus = Bus::start();
    let _svc = Service::start(&plain, &bus, &[]);
    let exported = busctl_json(&bus, &call)["data"][0].as_str().unwrap().to_string();
    assert!(!exported.contains(name), "{exported}");
}

#[test]
fn a_server_without_a_bundle_answers_no_content() {
    // The in-process server first serves a candidate, then answers 204.
    let t = tempfile::tempdir().unwrap();
    publish(t.path(), "3.0.0");
    let srv = testkit::httpd::Server::start();
    srv.put("/update.raucb", fs::read(t.path().join("update.raucb")).unwrap());
    let d = device("no-content", &format!("url={}\n", srv.url("/update.raucb")), Some("1.0.0"));
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[TICK]);
    mark_good(&d, &bus);
    poll(&bus);
    let s = wait_status(&bus, "candidate", |s| attempts(s) >= 1);
    assert_eq!(s["update-available"]["data"], true, "{s}");
    assert!(next_poll(&bus) > 0);
    // No install-criteria: a candidate waits for an application's InstallBundle.
    assert_eq!(grub_selected(&grubenv(&d.path("grubenv"))).as_deref(), Some("A"));

    srv.set_mode(testkit::httpd::Mode::Status(204));
    poll(&bus);
    let s = wait_status(&bus, "no bundle", |s| attempts(s) >= 2);
    assert_eq!(s["summary"]["data"], "no update bundle available", "{s}");
    assert_eq!(s["update-available"]["data"], false, "{s}");
    assert!(s.get("manifest").is_none() && s.get("bundle").is_none(), "{s}");
    assert_eq!(s["recent-error-count"]["data"], 0, "{s}");
}

#[test]
fn polling_needs_a_system_version() {
    let d = device("no-version", "url=http://127.0.0.1:9/update.raucb\n", None);
    let bus = Bus::start();
    let out = run(d.rota().envs(bus.env()).arg("service")).fails();
    assert!(out.stderr.contains("system version not provided via system-info handler"), "{}", out.stderr);
}

/// Waits (up to 60 s) until `path` exists.
fn wait_for_file(path: &Path, d: &Device) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "no {}; log: {}",
            path.display(),
            fs::read_to_string(d.path("service.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_failing_reboot_command_is_reported_and_tried_again() {
    let (t, www) = web_root();
    let nginx = Nginx::serve(&www);
    publish(&www, "2.1.0");
    // The first reboot attempt fails, the second succeeds.
    let (tried, rebooted) = (t.path().join("tried"), t.path().join("rebooted"));
    let cmd = t.path().join("reboot.sh");
    fs::write(
        &cmd,
        format!(
            "#!/bin/sh\nif [ -e {0} ]; then touch {1}; else touch {0}; exit 1; fi\n",
            tried.display(),
            rebooted.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&cmd, fs::Permissions::from_mode(0o755)).unwrap();
    let polling = format!(
        "url={}\ninstall-criteria=higher-semver\nreboot-criteria=updated-slots\nreboot-cmd={}\n",
        nginx.url("/update.raucb"),
        cmd.display()
    );
    let d = device("reboot-fails", &polling, Some("1.0.0"));
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[TICK]);
    mark_good(&d, &bus);
    poll(&bus);
    wait_for_file(&tried, &d);
    let s = wait_status(&bus, "the failure reported", |s| s["last-error-message"]["data"].is_string());
    let m = s["last-error-message"]["data"].as_str().unwrap();
    assert!(m.starts_with(&format!("Reboot command {} failed", cmd.display())), "{m}");
    // Tried again: this time the system goes down, and polling stops.
    wait_for_file(&rebooted, &d);
    let deadline = Instant::now() + Duration::from_secs(10);
    while next_poll(&bus) != 0 {
        assert!(Instant::now() < deadline, "polling goes on after the reboot");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_candidate_found_while_the_installer_is_busy_is_installed_later() {
    let t = tempfile::tempdir().unwrap();
    let image = publish(t.path(), "2.2.0");
    // Polls are answered slowly: the installer gets busy while one runs.
    let polled = testkit::httpd::Server::start();
    polled.put("/update.raucb", fs::read(t.path().join("update.raucb")).unwrap());
    polled.set_delay(Duration::from_millis(400));
    // An application installs another bundle meanwhile, held up by its server.
    let dir = target_dir().join("test-bundles/polling/busy-other");
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    c.image("rootfs.img", 256 << 10, 91);
    c.manifest("[update]\ncompatible=Test Config\nversion=1.5.0\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.img\n");
    rota_bundle(&c.dir, &dir.join("other.raucb"), "release").ok();
    let other = testkit::httpd::Server::start();
    other.put("/other.raucb", fs::read(dir.join("other.raucb")).unwrap());
    other.hold(8192, 1 << 30);
    let rebooted = t.path().join("rebooted");
    let polling = format!(
        "url={}\ninstall-criteria=higher-semver\nreboot-criteria=updated-slots\nreboot-cmd=touch {}\n",
        polled.url("/update.raucb"),
        rebooted.display()
    );
    let d = device("busy", &polling, Some("1.0.0"));
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[TICK]);
    mark_good(&d, &bus);
    poll(&bus);
    let deadline = Instant::now() + Duration::from_secs(30);
    while polled.requests().is_empty() {
        assert!(Instant::now() < deadline, "no poll");
        std::thread::sleep(Duration::from_millis(20));
    }
    let call = ["call", "de.pengutronix.rauc", "/", "de.pengutronix.rauc.Installer", "InstallBundle", "sa{sv}"];
    let mut args = call.to_vec();
    let url = other.url("/other.raucb");
    args.extend([url.as_str(), "0"]);
    run(&mut bus.busctl(&args)).ok();
    let s = wait_status(&bus, "the candidate found busy", |s| {
        attempts(s) >= 1 && s["last-error-message"]["data"].is_string()
    });
    assert!(
        s["last-error-message"]["data"].as_str().unwrap().starts_with("Automatic installation failed to start"),
        "{s}"
    );
    assert!(s.get("attempted-hash").is_none(), "recorded as attempted although it never started: {s}");
    // The application's install ends; the next poll installs the candidate.
    other.release();
    polled.set_delay(Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rebooted.exists() {
        assert!(
            Instant::now() < deadline,
            "the candidate was not installed: {}",
            fs::read_to_string(d.path("service.log")).unwrap()
        );
        poll(&bus);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(fs::read(d.path("rootfs1.img")).unwrap()[..image.len()] == image[..], "B holds the candidate");
}

#[test]
fn a_restarted_service_polls_without_a_new_mark() {
    let (_t, www) = web_root();
    let nginx = Nginx::serve(&www);
    publish(&www, "1.0.2");
    let d = device("restart", &format!("url={}\n", nginx.url("/update.raucb")), Some("1.0.0"));
    let bus = Bus::start();
    let svc = Service::start(&d, &bus, &[TICK]);
    mark_good(&d, &bus);
    assert!(svc.stop().success());
    // The same boot: the mark of the service before counts.
    let _svc = Service::start(&d, &bus, &[TICK]);
    poll(&bus);
    wait_status(&bus, "a poll after the restart", |s| attempts(s) >= 1);
}

#[test]
fn rauc_test_polling_speedup_divides_every_delay() {
    // RAUC's own hook for its tests: an out-of-range factor stops the
    // service; 1000 turns the first delay (6–54 s for a 60 s interval) and
    // the 10 s tick into milliseconds, so polls come without a Poll() call.
    let srv = testkit::httpd::Server::start();
    srv.put("/update.raucb", Vec::new());
    srv.set_mode(testkit::httpd::Mode::Status(204));
    let d = device("speedup", &format!("url={}\ninterval-sec=60\n", srv.url("/update.raucb")), Some("1.0.0"));
    let bus = Bus::start();
    for bad in ["0", "1001", "fast"] {
        let out = run(d.rota().envs(bus.env()).env("RAUC_TEST_POLLING_SPEEDUP", bad).arg("service")).fails();
        assert_eq!(out.stderr.trim_end(), format!("Invalid RAUC_TEST_POLLING_SPEEDUP value '{bad}'"));
    }
    let _svc = Service::start(&d, &bus, &[("RAUC_TEST_POLLING_SPEEDUP", "1000")]);
    mark_good(&d, &bus);
    // Without the factor two polls take more than a minute (wait_status
    // gives up after 30 s).
    let s = wait_status(&bus, "polls without Poll()", |s| attempts(s) >= 2);
    assert_eq!(s["summary"]["data"], "no update bundle available", "{s}");
}
