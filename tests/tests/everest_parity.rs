//! EVerest's `Linux_Systemd_Rauc` module, played as it drives RAUC
//! (`spec/everest-ocpp.md` §1): an empty options dict, statuses taken from
//! substrings of the `Progress` texts, a transaction stored at
//! `Completed(0)`, and after the reboot the boot slot compared with the
//! stored one, then `Mark("good", "booted")`.
//!
//! The same charger runs against `rota service` and, as the referee, Debian's
//! `rauc service` (1.8) on an identical device with the same bundles, for
//! every path EVerest maps: success with a reboot into the new slot, a
//! fallback to the old slot, a bad signature, a failed write and a network
//! failure before anything was fetched. Both must give the same OCPP status
//! sequence, which must also be the one the spec names.

use futures_util::StreamExt;
use std::collections::HashMap;
use std::fs;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use testkit::bus::{Bus, Service};
use testkit::charger;
use testkit::device::Device;
use testkit::httpd::Server;
use testkit::peer_rauc;
use zbus::OwnedVariant;

/// The OCPP firmware statuses EVerest publishes (2.0.1 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Downloading,
    Downloaded,
    DownloadFailed,
    SignatureVerified,
    InvalidSignature,
    Installing,
    InstallRebooting,
    InstallVerificationFailed,
    Installed,
    InstallationFailed,
}
use Status::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Rota,
    Rauc,
}

/// What EVerest stores at `Completed(0)` to judge the update after the reboot.
#[derive(Debug, Clone)]
struct Transaction {
    primary: String,
    boot_slot: String,
}

/// One simulated charger: device, bus, the update service of `backend`,
/// and EVerest's view of it.
struct Charger {
    backend: Backend,
    device: Device,
    bus: Bus,
    rota: Option<Service>,
    rauc: Option<Child>,
    booted: String,
    statuses: Vec<Status>,
    stored: Option<Transaction>,
    /// What the service answered, for comparison between the backends.
    answers: Vec<String>,
}

impl Charger {
    fn new(backend: Backend, name: &str, target_device: &str) -> Charger {
        let tag = match backend {
            Backend::Rota => "rota",
            Backend::Rauc => "rauc",
        };
        let device = charger::device(&format!("everest-{name}-{tag}"), target_device);
        let mut c = Charger {
            backend,
            device,
            bus: Bus::start(),
            rota: None,
            rauc: None,
            booted: "A".into(),
            statuses: Vec::new(),
            stored: None,
            answers: Vec::new(),
        };
        c.start_service();
        c
    }

    fn start_service(&mut self) {
        match self.backend {
            Backend::Rota => {
                self.device.boot(&format!("rauc.slot={}", self.booted));
                self.rota = Some(Service::start(&self.device, &self.bus, &[]));
            }
            Backend::Rauc => {
                let mut cmd = peer_rauc();
                cmd.arg(format!("--conf={}", self.device.conf().display()))
                    .arg("service")
                    .arg(format!("--override-boot-slot={}", self.booted))
                    .envs(self.bus.env())
                    .current_dir(&self.device.dir)
                    .stdout(Stdio::null())
                    .stderr(fs::File::create(self.device.path("service.log")).unwrap());
                let mut child = cmd.spawn().expect("start Debian's rauc service");
                let deadline = Instant::now() + Duration::from_secs(30);
                while !self.bus.has_name("de.pengutronix.rauc") {
                    if let Ok(Some(st)) = child.try_wait() {
                        panic!("rauc service exited with {st}: {}", self.log());
                    }
                    assert!(Instant::now() < deadline, "rauc service did not take its name");
                    std::thread::sleep(Duration::from_millis(20));
                }
                self.rauc = Some(child);
            }
        }
    }

    fn stop_service(&mut self) {
        if let Some(s) = self.rota.take() {
            s.stop();
        }
        if let Some(mut c) = self.rauc.take() {
            // SAFETY: plain kill(2) of our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            c.wait().unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.bus.has_name("de.pengutronix.rauc") {
            assert!(Instant::now() < deadline, "the service kept its name");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.device.path("service.log")).unwrap_or_default()
    }

    fn publish(&mut self, s: Status) {
        // EVerest publishes on every matching message; the CSMS sees each
        // change once.
        if self.statuses.last() != Some(&s) {
            self.statuses.push(s);
        }
    }

    /// UpdateFirmware: EVerest's module from the call to `Completed`.
    /// Returns the `Progress` texts seen.
    fn update_firmware(&mut self, location: &str) -> Progress {
        rt().block_on(async {
            let conn = zbus::connection::Builder::address(self.bus.address.as_str()).build().await.unwrap();
            let rule = zbus::MatchRule::builder().msg_type(zbus::message::Type::Signal).path("/").build().unwrap();
            let mut stream = zbus::MessageStream::for_match_rule(rule, &conn, None).await.unwrap();
            let proxy = rota_dbus::InstallerProxy::new(&conn).await.unwrap();
            // Accepted only when idle; the call's own result is not checked.
            assert_eq!(proxy.operation().await.unwrap(), "idle");
            let _ = proxy.install_bundle(location, HashMap::new()).await;
            self.publish(Downloading);
            let mut texts = Vec::new();
            let mut signature_seen = false;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                let msg = tokio::time::timeout_at(deadline, stream.next())
                    .await
                    .unwrap_or_else(|_| panic!("no Completed from {:?}: {}", self.backend, self.log()))
                    .expect("bus open")
                    .unwrap();
                let header = msg.header();
                match header.member().map(|m| m.as_str()) {
                    Some("Completed") => {
                        let code: i32 = msg.body().deserialize().unwrap();
                        let last_error = proxy.last_error().await.unwrap();
                        self.answers.push(format!("Completed({code}), LastError set: {}", !last_error.is_empty()));
                        if code == 0 {
                            self.stored = Some(Transaction {
                                primary: proxy.get_primary().await.unwrap(),
                                boot_slot: proxy.boot_slot().await.unwrap(),
                            });
                            self.publish(InstallRebooting);
                        } else if self.statuses.last() == Some(&Installing) {
                            self.publish(InstallVerificationFailed);
                        }
                        return texts;
                    }
                    Some("PropertiesChanged") => {
                        let (interface, changed, _): (String, HashMap<String, OwnedVariant>, Vec<String>) =
                            msg.body().deserialize().unwrap();
                        if interface != rota_dbus::INSTALLER_INTERFACE {
                            continue;
                        }
                        let Some(v) = changed.get("Progress") else { continue };
                        let (percent, text, depth) = <(i32, String, i32)>::try_from(v.try_clone().unwrap()).unwrap();
                        if text.contains("Verifying signature done") {
                            signature_seen = true;
                            self.publish(Downloaded);
                            self.publish(SignatureVerified);
                        } else if text.contains("Verifying signature failed") {
                            signature_seen = true;
                            self.publish(Downloaded);
                            self.publish(InvalidSignature);
                        } else if text.contains("Checking bundle failed") && !signature_seen {
                            self.publish(DownloadFailed);
                        } else if text.contains("Copying") && !text.contains("done") {
                            self.publish(Installing);
                        }
                        texts.push((percent, text, depth));
                    }
                    _ => {}
                }
            }
        })
    }

    /// The reboot EVerest runs after `Completed(0)`: GRUB picks a slot as
    /// RAUC's GRUB script does; when `new_slot_comes_up` is false the new
    /// slot never reaches user space and the next boot falls back.
    fn reboot(&mut self, new_slot_comes_up: bool) {
        self.stop_service();
        let env = self.device.path("grubenv");
        let first = charger::grub_boot(&env);
        self.booted = if new_slot_comes_up || first == self.booted { first } else { charger::grub_boot(&env) };
        self.start_service();
    }

    /// EVerest after its start: judges a stored transaction.
    fn after_boot(&mut self) {
        let Some(stored) = self.stored.take() else { return };
        rt().block_on(async {
            let conn = zbus::connection::Builder::address(self.bus.address.as_str()).build().await.unwrap();
            let proxy = rota_dbus::InstallerProxy::new(&conn).await.unwrap();
            let boot_slot = proxy.boot_slot().await.unwrap();
            // EVerest reads the primary again (and only logs it).
            let primary = proxy.get_primary().await.map_err(|e| dbus_error_name(&e));
            self.answers.push(format!(
                "stored primary {} boot {}; now boot {boot_slot} primary {primary:?}",
                stored.primary, stored.boot_slot
            ));
            if boot_slot != stored.boot_slot {
                let marked = proxy.mark("good", "booted").await.map_err(|e| dbus_error_name(&e));
                self.answers.push(format!("Mark(good, booted) = {marked:?}"));
                self.publish(Installed);
            } else {
                self.publish(InstallationFailed);
            }
            let operation = proxy.operation().await.unwrap();
            self.answers.push(format!("Operation {operation}"));
        });
    }
}

impl Drop for Charger {
    fn drop(&mut self) {
        if let Some(mut c) = self.rauc.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn dbus_error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => panic!("not a D-Bus error reply: {other}"),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The progress steps as (text, depth), repeats (copy percentages) left
/// out. Two things in them changed in RAUC after 1.8 and rota follows the newer
/// RAUC (its percentages are checked against RAUC 1.15's weights in
/// `dbus_service.rs`): 1.10 gave the copy more weight (so percentages are
/// not compared here), and 1.13 added the bootname to `Checking slot X (B)`
/// (compared without it).
fn steps(progress: &[(i32, String, i32)]) -> Vec<(String, i32)> {
    let mut steps: Vec<(String, i32)> = Vec::new();
    for (_, t, d) in progress {
        let t = match t.strip_prefix("Checking slot ") {
            Some(rest) => {
                let (slot, tail) = rest.split_once(' ').map_or((rest, ""), |(s, t)| (s, t));
                let tail =
                    if tail.starts_with('(') { tail.split_once(')').map_or("", |(_, t)| t.trim_start()) } else { tail };
                format!("Checking slot {slot}{}{tail}", if tail.is_empty() { "" } else { " " })
            }
            None => t.clone(),
        };
        if steps.last().map(|s| &s.0) != Some(&t) {
            steps.push((t, *d));
        }
    }
    steps
}

/// Runs one path on both backends; returns (statuses, EVerest's steps) of each.
type Progress = Vec<(i32, String, i32)>;
type Steps = Vec<(String, i32)>;
type Outcome = (Vec<Status>, Steps, Vec<String>);

fn both(name: &str, target: &str, play: impl Fn(&mut Charger) -> Progress) -> [Outcome; 2] {
    let _serial = testkit::serial();
    [Backend::Rota, Backend::Rauc].map(|backend| {
        let mut c = Charger::new(backend, name, target);
        let texts = play(&mut c);
        let out = (c.statuses.clone(), steps(&texts), c.answers.clone());
        c.stop_service();
        out
    })
}

fn assert_parity(name: &str, results: &[Outcome; 2], expected: &[Status]) {
    let [(rota, rota_steps, rota_answers), (rauc, rauc_steps, rauc_answers)] = results;
    assert_eq!(
        rauc, expected,
        "{name}: Debian's rauc (the referee) gives other statuses than the spec: {rauc_steps:?}"
    );
    assert_eq!(rota, rauc, "{name}: rota and rauc differ\nrota: {rota_steps:?}\nrauc: {rauc_steps:?}");
    assert_eq!(rota_steps, rauc_steps, "{name}: the progress steps differ");
    // RAUC 1.14 changed Mark's message to "marked slot(s) …", which the
    // conformance suite checks and rota follows.
    let rauc_answers: Vec<String> = rauc_answers.iter().map(|a| a.replace("marked slot ", "marked slot(s) ")).collect();
    assert_eq!(rota_answers, &rauc_answers, "{name}: the services answered differently");
}

/// UpdateFirmware with `bundle`, the reboot (the new slot coming up or
/// not), EVerest's judgement after it; the charger must run `booted` then.
fn update_and_reboot(c: &mut Charger, bundle: &std::path::Path, new_slot_comes_up: bool, booted: &str) -> Progress {
    let texts = c.update_firmware(bundle.to_str().unwrap());
    c.reboot(new_slot_comes_up);
    c.after_boot();
    assert_eq!(c.booted, booted);
    texts
}

#[test]
fn success_then_reboot_into_the_new_slot() {
    let b = charger::bundle("everest-good", "plain", "release", 256 * 1024);
    let results = both("good", "rootfs1.img", |c| update_and_reboot(c, &b, true, "B"));
    assert_parity(
        "success",
        &results,
        &[Downloading, Downloaded, SignatureVerified, Installing, InstallRebooting, Installed],
    );
}

#[test]
fn a_new_slot_that_never_comes_up_falls_back_and_fails() {
    let b = charger::bundle("everest-fallback", "plain", "release", 256 * 1024);
    let results = both("fallback", "rootfs1.img", |c| update_and_reboot(c, &b, false, "A"));
    assert_parity(
        "fallback",
        &results,
        &[Downloading, Downloaded, SignatureVerified, Installing, InstallRebooting, InstallationFailed],
    );
}

#[test]
fn a_bundle_signed_by_an_unknown_ca_is_an_invalid_signature() {
    let b = charger::bundle("everest-badsig", "plain", "other", 256 * 1024);
    let results = both("badsig", "rootfs1.img", |c| c.update_firmware(b.to_str().unwrap()));
    assert_parity("bad signature", &results, &[Downloading, Downloaded, InvalidSignature]);
}

#[test]
fn a_failed_write_is_an_install_verification_failure() {
    // /dev/full: every write fails with ENOSPC, as on a full medium.
    let b = charger::bundle("everest-full", "plain", "release", 256 * 1024);
    let results = both("full", "/dev/full", |c| c.update_firmware(b.to_str().unwrap()));
    assert_parity(
        "failed write",
        &results,
        &[Downloading, Downloaded, SignatureVerified, Installing, InstallVerificationFailed],
    );
}

#[test]
fn an_unreachable_url_is_a_download_failure_not_a_bad_signature() {
    // Nothing listens there: the request fails before any byte arrives.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("http://127.0.0.1:{port}/update.raucb");
    let results = both("unreachable", "rootfs1.img", |c| c.update_firmware(&url));
    assert_parity("unreachable URL", &results, &[Downloading, DownloadFailed]);
}

/// rota streams what RAUC 1.8 cannot here (no NBD): the streamed paths are
/// checked against the statuses the spec names.
#[test]
fn streamed_bundles_from_http_map_to_the_same_statuses() {
    let _serial = testkit::serial();
    let good = fs::read(charger::bundle("everest-stream-good", "verity", "release", 256 * 1024)).unwrap();
    let bad = fs::read(charger::bundle("everest-stream-bad", "verity", "other", 256 * 1024)).unwrap();
    let server = Server::start();
    server.put("/good.raucb", good);
    server.put("/bad.raucb", bad);

    let mut c = Charger::new(Backend::Rota, "stream-good", "rootfs1.img");
    c.update_firmware(&server.url("/good.raucb"));
    c.reboot(true);
    c.after_boot();
    assert_eq!(c.statuses, [Downloading, Downloaded, SignatureVerified, Installing, InstallRebooting, Installed]);

    let mut c = Charger::new(Backend::Rota, "stream-bad", "rootfs1.img");
    c.update_firmware(&server.url("/bad.raucb"));
    assert_eq!(c.statuses, [Downloading, Downloaded, InvalidSignature]);

    // Found nowhere on a server that answers: a download failure too.
    let mut c = Charger::new(Backend::Rota, "stream-404", "rootfs1.img");
    let texts = c.update_firmware(&server.url("/missing.raucb"));
    assert_eq!(c.statuses, [Downloading, DownloadFailed], "{texts:?}");
    assert!(!texts.iter().any(|t| t.1.contains("Verifying signature")), "{texts:?}");
}
