//! rota-ocpp end to end: a CSMS on PyPI's `ocpp` (`tests/ocpp/csms.py`)
//! sends the update request, rota-ocpp drives the real `rota service` on a
//! private bus over D-Bus only, the bundle streams from nginx, the charger
//! reboots through RAUC's GRUB script, and the CSMS's log must show the
//! protocol's status sequence.

use serde_json::{Value, json};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::bus::{Bus, Service};
use testkit::charger;
use testkit::csms::Csms;
use testkit::device::{Device, grubenv};
use testkit::nginx::Nginx;
use testkit::{bin, pki_file};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A charger running rota service and rota-ocpp, a CSMS and a web server.
struct Rig {
    d: Device,
    bus: Bus,
    svc: Option<Service>,
    ocpp: Option<Child>,
    csms: Csms,
    web: Nginx,
    www: PathBuf,
    booted: String,
    /// Extra environment of rota service.
    service_env: Vec<(&'static str, &'static str)>,
}

fn at(offset_secs: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs)).format(&Rfc3339).unwrap()
}

impl Rig {
    fn new(name: &str, protocol: &str) -> Rig {
        Rig::with(name, protocol, |_| {}, vec![])
    }

    /// A rig whose device `edit` changes first, with `service_env` for rota
    /// service; returned once rota-ocpp's first BootNotification arrived.
    fn with(
        name: &str,
        protocol: &str,
        edit: impl FnOnce(&Device),
        service_env: Vec<(&'static str, &'static str)>,
    ) -> Rig {
        let d = charger::device(&format!("ocpp-{name}"), "rootfs1.img");
        edit(&d);
        let www = d.path("www");
        fs::create_dir_all(&www).unwrap();
        let csms = Csms::start(d.path("csms.jsonl"), &[]);
        let conf = format!(
            "[csms]\nurl={}\nid=CP-{name}\nprotocol={protocol}\ncall-timeout-sec=20\nreconnect-max-sec=1\n\
             [station]\nstate-dir={}\nvendor=rota-tests\nmodel=charger\n\
             [update]\nreboot-command=touch {}\nhealth-check=test -e {}\nmanufacturer-root={}\nmanufacturer-crl={}\n",
            csms.url(),
            d.path("ocpp-state").display(),
            d.path("rebooted").display(),
            d.path("healthy").display(),
            pki_file("keyring-chain.pem").display(),
            pki_file("inter.crl").display(),
        );
        fs::write(d.path("rota-ocpp.conf"), conf).unwrap();
        let bus = Bus::start();
        let web = Nginx::serve(&www);
        let mut rig = Rig { d, bus, svc: None, ocpp: None, csms, web, www, booted: "A".into(), service_env };
        rig.start();
        rig
    }

    fn start(&mut self) {
        self.d.boot(&format!("rauc.slot={}", self.booted));
        self.svc = Some(Service::start(&self.d, &self.bus, &self.service_env));
        let child = Command::new(bin("rota-ocpp"))
            .arg(format!("--config={}", self.d.path("rota-ocpp.conf").display()))
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus.address)
            .env("ROTA_OCPP_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(fs::OpenOptions::new().create(true).append(true).open(self.d.path("rota-ocpp.log")).unwrap())
            .spawn()
            .expect("start rota-ocpp");
        self.ocpp = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.ocpp.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(s) = self.svc.take() {
            s.stop();
        }
    }

    fn put(&self, name: &str, bundle: &std::path::Path) -> String {
        fs::copy(bundle, self.www.join(name)).unwrap();
        self.web.url(&format!("/{name}"))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.d.path("rota-ocpp.log")).unwrap_or_default()
    }

    /// Polls `done` for up to `secs`, failing with `what` and all the CSMS saw.
    fn until(&self, what: &str, secs: u64, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: {:#?}\n{}", self.csms.messages(), self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for rota-ocpp's reboot command.
    fn wait_for_reboot(&self) {
        self.until("no reboot", 60, || self.d.path("rebooted").exists());
        fs::remove_file(self.d.path("rebooted")).unwrap();
    }

    /// Power cycle: GRUB picks the next slot; both programs start again.
    fn reboot(&mut self) {
        self.stop();
        self.booted = charger::grub_boot(&self.d.path("grubenv"));
        self.start();
    }

    fn wait_for_status(&self, status: &str) {
        self.until(&format!("no {status}"), 60, || self.csms.statuses().iter().any(|(s, _)| s == status));
    }

    /// The statuses so far, repeats (Installing with progress) folded.
    fn statuses(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (s, _) in self.csms.statuses() {
            if out.last() != Some(&s) {
                out.push(s);
            }
        }
        out
    }

    /// The CSMS's calls answered so far: their `status`.
    fn answers(&self) -> Vec<Value> {
        let results = self.csms.messages().into_iter().filter(|m| m["kind"] == "result");
        results.map(|m| m["payload"]["status"].clone()).collect()
    }

    fn wait_for_answers(&self, n: usize) {
        self.until(&format!("fewer than {n} answers"), 30, || self.answers().len() >= n);
    }

    fn grub(&self, key: &str) -> Option<String> {
        grubenv(&self.d.path("grubenv"))
            .into_iter()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop();
    }
}

fn update201(request_id: i64, location: &str, extra: Value) -> String {
    let mut firmware = json!({"location": location, "retrieve_date_time": at(-60)});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            if k.ends_with("date_time") || k == "signing_certificate" || k == "signature" {
                firmware[k] = v;
            }
        }
    }
    format!(
        "UpdateFirmware={}",
        json!({"request_id": request_id, "firmware": firmware, "retries": 3, "retry_interval": 1})
    )
}

/// A server for `bundle` (at `/held.raucb`) that holds back its second MiB,
/// the middle of the image, until released.
fn held_server(bundle: &std::path::Path) -> testkit::httpd::Server {
    let held = testkit::httpd::Server::start();
    held.put("/held.raucb", fs::read(bundle).unwrap());
    held.hold(1 << 20, 2 << 20);
    held
}

fn verity_bundle(name: &str, signer: &str) -> PathBuf {
    charger::bundle(&format!("ocpp-{name}"), "verity", signer, 4 << 20)
}

#[test]
fn ocpp201_update_streams_reboots_checks_health_and_reports_installed() {
    let _serial = testkit::serial();
    let bundle = verity_bundle("201", "release");
    let mut rig = Rig::new("201", "ocpp2.0.1");
    let url = rig.put("fw.raucb", &bundle);
    rig.csms.command(&update201(11, &url, json!({})));
    rig.wait_for_reboot();
    let result = rig.csms.wait_for("the answer", |m| m["kind"] == "result" && m["action"] == "UpdateFirmware");
    assert_eq!(result["payload"]["status"], "Accepted");
    assert_eq!(rig.statuses(), ["Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallRebooting"]);
    assert!(rig.csms.statuses().iter().all(|(_, id)| *id == Some(11)));
    // Installing carries the progress in customData.
    let progress: Vec<i64> = rig
        .csms
        .messages()
        .iter()
        .filter(|m| m["payload"]["status"] == "Installing")
        .filter_map(|m| m["payload"]["customData"]["progress"].as_i64())
        .collect();
    assert!(!progress.is_empty() && progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");

    fs::write(rig.d.path("healthy"), "").unwrap();
    rig.reboot();
    assert_eq!(rig.booted, "B");
    rig.wait_for_status("Installed");
    assert_eq!(
        rig.statuses(),
        ["Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallRebooting", "Installed"]
    );
    let boots: Vec<Value> = rig.csms.messages().into_iter().filter(|m| m["action"] == "BootNotification").collect();
    assert_eq!(boots.last().unwrap()["payload"]["reason"], "FirmwareUpdate");
    rig.csms.wait_for("FirmwareUpdated", |m| {
        m["action"] == "SecurityEventNotification" && m["payload"]["type"] == "FirmwareUpdated"
    });
    // Marked good: GRUB keeps booting B.
    assert_eq!(rig.grub("B_OK").as_deref(), Some("1"));
    assert_eq!(rig.grub("B_TRY").as_deref(), Some("0"));
    assert!(!rig.d.path("ocpp-state/update.json").exists());
    // Asked afterwards: nothing runs.
    rig.csms.command(r#"TriggerMessage={"requested_message": "FirmwareStatusNotification"}"#);
    rig.until("no Idle", 30, || rig.csms.statuses().last() == Some(&("Idle".to_string(), None)));
}

#[test]
fn a_failed_health_check_marks_the_new_slot_bad_and_falls_back() {
    let _serial = testkit::serial();
    let bundle = verity_bundle("health", "release");
    let mut rig = Rig::new("health", "ocpp2.0.1");
    let url = rig.put("fw.raucb", &bundle);
    rig.csms.command(&update201(5, &url, json!({})));
    rig.wait_for_reboot();
    rig.reboot();
    assert_eq!(rig.booted, "B");
    // No `healthy` file: marked bad, rebooted into A.
    rig.wait_for_reboot();
    assert_eq!(rig.grub("B_OK").as_deref(), Some("0"));
    rig.reboot();
    assert_eq!(rig.booted, "A");
    rig.wait_for_status("InstallationFailed");
    assert_eq!(
        rig.statuses(),
        ["Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallRebooting", "InstallationFailed"]
    );
    assert!(!rig.d.path("ocpp-state/update.json").exists());
}

#[test]
fn ocpp16_core_reports_its_seven_statuses() {
    let _serial = testkit::serial();
    let bundle = verity_bundle("16", "release");
    let mut rig = Rig::new("16", "ocpp1.6");
    let url = rig.put("fw.raucb", &bundle);
    rig.csms.command(&format!("UpdateFirmware={}", json!({"location": url, "retrieve_date": at(-5)})));
    rig.wait_for_reboot();
    fs::write(rig.d.path("healthy"), "").unwrap();
    rig.reboot();
    rig.wait_for_status("Installed");
    assert_eq!(rig.statuses(), ["Downloading", "Downloaded", "Installing", "Installed"]);
    assert!(rig.csms.statuses().iter().all(|(_, id)| id.is_none()));
    // 1.6 core has no security events.
    assert!(!rig.csms.messages().iter().any(|m| m["action"] == "SecurityEventNotification"));
}

#[test]
fn signed16_certificates_outside_the_manufacturer_root_are_refused_before_anything_runs() {
    let _serial = testkit::serial();
    let bundle = verity_bundle("signed16", "release");
    let rig = Rig::new("signed16", "ocpp1.6");
    let url = rig.put("fw.raucb", &bundle);
    let signed = |id: i64, cert: &str| {
        let pem = fs::read_to_string(pki_file(cert)).unwrap();
        let firmware =
            json!({"location": url, "retrieve_date_time": at(3600), "signing_certificate": pem, "signature": "c2ln"});
        format!("SignedUpdateFirmware={}", json!({"request_id": id, "firmware": firmware}))
    };
    rig.csms.command(&signed(1, "other.pem"));
    rig.csms.command(&signed(2, "revoked.pem"));
    rig.csms.command(&signed(3, "release.pem"));
    rig.wait_for_answers(3);
    assert_eq!(rig.answers(), ["InvalidCertificate", "RevokedCertificate", "Accepted"]);
    // The accepted one waits for its retrieve time, with its request id.
    rig.wait_for_status("DownloadScheduled");
    assert_eq!(rig.csms.statuses(), [("DownloadScheduled".to_string(), Some(3))]);
    // The security extension's trigger asks for the signed notification.
    rig.csms.command(r#"ExtendedTriggerMessage={"requested_message": "FirmwareStatusNotification"}"#);
    rig.until("no second status", 30, || rig.csms.statuses().len() >= 2);
    let last = rig.csms.messages().into_iter().rfind(|m| m["kind"] == "call").unwrap();
    assert_eq!(last["action"], "SignedFirmwareStatusNotification");
    assert_eq!(last["payload"], json!({"status": "DownloadScheduled", "requestId": 3}));
    let events: Vec<Value> =
        rig.csms.messages().into_iter().filter(|m| m["action"] == "SecurityEventNotification").collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|e| e["payload"]["type"] == "InvalidFirmwareSigningCertificate"));
}

#[test]
fn a_newer_request_cancels_a_scheduled_one_and_a_url_that_fails_is_retried() {
    let _serial = testkit::serial();
    let bundle = verity_bundle("cancel", "release");
    let rig = Rig::new("cancel", "ocpp2.0.1");
    let url = rig.web.url("/later.raucb");
    rig.csms.command(&update201(1, &url, json!({"retrieve_date_time": at(3600)})));
    rig.wait_for_status("DownloadScheduled");
    // Not there yet: fetched, paused, fetched again once it is.
    rig.csms.command(&update201(2, &url, json!({})));
    rig.wait_for_status("DownloadPaused");
    rig.put("later.raucb", &bundle);
    rig.wait_for_reboot();
    assert_eq!(rig.answers(), ["Accepted", "AcceptedCanceled"]);
    let seq: Vec<(String, Option<i64>)> = rig.csms.statuses();
    assert_eq!(seq[0], ("DownloadScheduled".to_string(), Some(1)));
    let second: Vec<String> = rig.statuses()[1..].to_vec();
    let start = ["Downloading", "DownloadPaused"];
    assert_eq!(second[..2], start, "{second:?}");
    assert_eq!(second.last().map(String::as_str), Some("InstallRebooting"), "{second:?}");
    assert!(seq[1..].iter().all(|(_, id)| *id == Some(2)), "{seq:?}");
}

#[test]
fn an_install_time_ahead_verifies_first_and_a_bad_signature_is_reported() {
    let _serial = testkit::serial();
    let good = verity_bundle("sched", "release");
    let bad = verity_bundle("sched-bad", "other");
    let rig = Rig::new("sched", "ocpp2.0.1");
    let good_url = rig.put("good.raucb", &good);
    let bad_url = rig.put("bad.raucb", &bad);
    rig.csms.command(&update201(7, &bad_url, json!({})));
    rig.wait_for_status("InvalidSignature");
    assert_eq!(rig.statuses(), ["Downloading", "Downloaded", "InvalidSignature"]);
    rig.csms.command(&update201(8, &good_url, json!({"install_date_time": at(3)})));
    rig.wait_for_reboot();
    let second: Vec<String> = rig.statuses()[3..].to_vec();
    assert_eq!(
        second,
        ["Downloading", "Downloaded", "SignatureVerified", "InstallScheduled", "Installing", "InstallRebooting"]
    );
}

/// `openssl dgst -sha256 -sign KEY FILE`, base64: an OCPP firmware signature.
fn firmware_signature(file: &std::path::Path, key: &str) -> String {
    let out = Command::new("openssl").args(["dgst", "-sha256", "-sign"]).arg(pki_file(key)).arg(file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b64 = Command::new("base64").arg("-w0").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    b64.stdin.as_ref().unwrap().write_all(&out.stdout).unwrap();
    String::from_utf8(b64.wait_with_output().unwrap().stdout).unwrap()
}

#[test]
fn signed16_detached_signatures_are_checked_over_the_downloaded_bundle() {
    let _serial = testkit::serial();
    let bundle = verity_bundle("signed16-sig", "release");
    let mut rig = Rig::new("signed16-sig", "ocpp1.6");
    let url = rig.put("fw.raucb", &bundle);
    let pem = fs::read_to_string(pki_file("release.pem")).unwrap();
    let signed = |id: i64, signature: &str| {
        let firmware =
            json!({"location": url, "retrieve_date_time": at(-5), "signing_certificate": pem, "signature": signature});
        format!("SignedUpdateFirmware={}", json!({"request_id": id, "firmware": firmware, "retries": 0}))
    };
    // Signed by another key than the certificate's: refused before rota installs.
    let b_before = fs::read(rig.d.path("rootfs1.img")).unwrap();
    rig.csms.command(&signed(20, &firmware_signature(&bundle, "other.key")));
    rig.wait_for_status("InvalidSignature");
    assert_eq!(rig.statuses(), ["Downloading", "Downloaded", "InvalidSignature"]);
    assert_eq!(fs::read(rig.d.path("rootfs1.img")).unwrap(), b_before, "slot B untouched");
    rig.csms.wait_for("the event", |m| m["payload"]["type"] == "InvalidFirmwareSignature");
    assert!(!rig.d.path("ocpp-state/firmware.raucb").exists());
    // The right signature: the downloaded file is what rota installs.
    rig.csms.command(&signed(21, &firmware_signature(&bundle, "release.key")));
    rig.wait_for_reboot();
    let second: Vec<String> = rig.statuses()[3..].to_vec();
    assert_eq!(second, ["Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallRebooting"]);
    assert!(rig.csms.statuses()[3..].iter().all(|(_, id)| *id == Some(21)));
    assert!(!rig.d.path("ocpp-state/firmware.raucb").exists());
    let fetched = rig.web.header_log().iter().filter(|l| l.uri == "/fw.raucb").count();
    assert_eq!(fetched, 2, "one whole download per request, nothing streamed");
    fs::write(rig.d.path("healthy"), "").unwrap();
    rig.reboot();
    rig.wait_for_status("Installed");
    let signed_statuses =
        rig.csms.messages().iter().filter(|m| m["action"] == "SignedFirmwareStatusNotification").count();
    assert_eq!(signed_statuses, rig.csms.statuses().len());
}

#[test]
fn requests_are_rejected_while_rota_is_busy_and_once_the_station_reboots() {
    let _serial = testkit::serial();
    let bundle = verity_bundle("busy", "release");
    let rig = Rig::new("busy", "ocpp2.0.1");
    let url = rig.put("fw.raucb", &bundle);
    // Another client's installation, held mid-way by its server.
    let held = held_server(&bundle);
    let mut other = rig.d.rota();
    other.envs(rig.bus.env()).arg("install").arg(held.url("/held.raucb")).stdout(Stdio::null()).stderr(Stdio::null());
    let mut other = other.spawn().unwrap();
    held.wait_for_range(1 << 20, 2 << 20);
    rig.csms.command(&update201(30, &url, json!({})));
    let r = rig.csms.wait_for("the answer", |m| m["kind"] == "result");
    assert_eq!(r["payload"]["status"], "Rejected");
    held.release();
    assert!(other.wait().unwrap().success());
    assert!(rig.csms.statuses().is_empty(), "{:?}", rig.csms.statuses());
    // Its own update: once the reboot command ran, nothing new is taken.
    rig.csms.command(&update201(31, &url, json!({"retrieve_date_time": at(2)})));
    rig.wait_for_reboot();
    rig.csms.command(&update201(32, &url, json!({})));
    rig.wait_for_answers(3);
    assert_eq!(rig.answers(), ["Rejected", "Accepted", "Rejected"]);
    // The scheduled retrieve time was waited for.
    assert_eq!(
        rig.statuses(),
        ["DownloadScheduled", "Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallRebooting"]
    );
    let saved = fs::read_to_string(rig.d.path("ocpp-state/update.json")).unwrap();
    assert!(saved.contains("Rebooting") && saved.contains("\"request_id\": 31"), "{saved}");
}

#[test]
fn a_newer_request_cancels_a_running_installation_through_rota() {
    let _serial = testkit::serial();
    let bundle = verity_bundle("cancel-running", "release");
    let rig = Rig::new("cancel-running", "ocpp2.0.1");
    let url = rig.put("fw.raucb", &bundle);
    // The first bundle's server stalls in the middle of the image.
    let held = held_server(&bundle);
    rig.csms.command(&update201(40, &held.url("/held.raucb"), json!({})));
    rig.wait_for_status("Installing");
    held.wait_for_range(1 << 20, 2 << 20);
    rig.csms.command(&update201(41, &url, json!({})));
    rig.wait_for_reboot();
    assert_eq!(rig.answers(), ["Accepted", "AcceptedCanceled"]);
    let seq = rig.csms.statuses();
    let first: Vec<&str> = seq.iter().filter(|(_, id)| *id == Some(40)).map(|(s, _)| s.as_str()).collect();
    assert_eq!(first.last(), Some(&"Installing"), "the cancelled one says nothing more: {seq:?}");
    let second: Vec<&str> = seq.iter().filter(|(_, id)| *id == Some(41)).map(|(s, _)| s.as_str()).collect();
    assert_eq!(second.first(), Some(&"Downloading"));
    assert_eq!(second.last(), Some(&"InstallRebooting"));
    // rota's own record: the first installation was cancelled.
    let log = fs::read_to_string(rig.d.path("service.log")).unwrap();
    assert!(log.contains("cancel"), "{log}");
}

#[test]
fn statuses_wait_for_a_csms_that_is_away_and_installed_follows_the_reconnection() {
    let _serial = testkit::serial();
    let bundle = verity_bundle("away", "release");
    let mut rig = Rig::new("away", "ocpp1.6");
    let url = rig.put("fw.raucb", &bundle);
    rig.csms.command(&format!("UpdateFirmware={}", json!({"location": url, "retrieve_date": at(-5)})));
    rig.wait_for_reboot();
    // The CSMS is down while the charger reboots and checks its health.
    rig.csms.stop();
    fs::write(rig.d.path("healthy"), "").unwrap();
    rig.reboot();
    std::thread::sleep(Duration::from_secs(2));
    // Not judged without the CSMS: the slot is not marked good yet.
    assert_eq!(rig.grub("B_TRY").as_deref(), Some("1"));
    rig.csms.restart();
    rig.wait_for_status("Installed");
    assert_eq!(rig.statuses(), ["Downloading", "Downloaded", "Installing", "Installed"]);
    assert_eq!(rig.grub("B_TRY").as_deref(), Some("0"));
}

#[test]
fn a_slot_that_reads_back_other_bytes_is_an_install_verification_failure() {
    let _serial = testkit::serial();
    // An image that fits the 512 KiB slot.
    let bundle = charger::bundle("ocpp-readback", "verity", "release", 256 * 1024);
    // Slot B is a UBI volume whose (recording) ubiupdatevol stores other
    // bytes than it was given: rota's read-back check fails.
    let ubi = |d: &Device| {
        let conf = fs::read_to_string(d.conf()).unwrap();
        let b = format!("device={}\ntype=raw\nbootname=B", d.path("rootfs1.img").display());
        assert!(conf.contains(&b));
        d.write_conf(&conf.replace(&b, &b.replace("type=raw", "type=ubivol")));
    };
    let rig = Rig::with("readback", "ocpp2.0.1", ubi, vec![("FAKE_UBI_FLIP", "1")]);
    let url = rig.put("fw.raucb", &bundle);
    rig.csms.command(&update201(50, &url, json!({})));
    rig.wait_for_status("InstallVerificationFailed");
    assert_eq!(
        rig.statuses(),
        ["Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallVerificationFailed"]
    );
    assert_eq!(rig.grub("ORDER").as_deref(), Some("A B"), "nothing activated");
    assert!(!rig.d.path("rebooted").exists());
}
