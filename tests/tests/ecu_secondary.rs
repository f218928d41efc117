//! A secondary ECU driven through its ECU interface by a test main: the real
//! `rota service` with file-backed A/B slots and GRUB environment, the main's
//! side played by rota-ecu's client with the main's certificate. Reboots are
//! simulated: the reboot command leaves a mark, the test restarts the service
//! with the slot GRUB's environment selects.

use rota_ecu::proto::{PrepareRequest, State, StatusRequest, TransactionRef};
use rota_ecu::tls::{self, TlsConfig};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::bus::{Bus, Service};
use testkit::device::{Device, grub_selected, grubenv};
use testkit::ecu::{ecu_bundle, ecu_device, free_port, sign_system_manifest};
use testkit::{pki_file, serial, target_dir};

struct Ecu {
    d: Device,
    bus: Bus,
    svc: Option<Service>,
    addr: String,
}

impl Ecu {
    fn new(name: &str) -> Ecu {
        let port = free_port();
        let role =
            format!("role=secondary\nlisten=127.0.0.1:{port}\nmain-cert={}\n", pki_file("ecu-main.pem").display());
        let d = ecu_device(target_dir().join("test-devices").join(name), "display", "Test Config", &role);
        let bus = Bus::start();
        let mut e = Ecu { d, bus, svc: None, addr: format!("127.0.0.1:{port}") };
        e.start();
        e
    }

    fn start(&mut self) {
        self.svc = Some(Service::start(&self.d, &self.bus, &[]));
    }

    /// Waits for the reboot command, then "reboots": the service stops and
    /// comes back in the slot GRUB's environment selects.
    fn reboot(&mut self) -> String {
        let mark = self.d.path("rebooted");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !mark.exists() {
            assert!(
                Instant::now() < deadline,
                "no reboot: {}",
                fs::read_to_string(self.d.path("service.log")).unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        fs::remove_file(&mark).unwrap();
        assert!(self.svc.take().unwrap().stop().success());
        let slot = grub_selected(&grubenv(&self.d.path("grubenv"))).expect("GRUB selects a slot");
        self.d.boot(&format!("rauc.slot={slot}"));
        self.start();
        slot
    }
}

fn main_tls() -> TlsConfig {
    TlsConfig { cert: pki_file("ecu-main.pem"), key: pki_file("ecu-main.key"), peer: pki_file("ecu-display.pem") }
}

async fn client(addr: &str) -> rota_ecu::client::Client {
    rota_ecu::client::connect(
        addr,
        tls::connector(&main_tls()).unwrap(),
        Duration::from_secs(10),
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

async fn status(addr: &str) -> rota_ecu::proto::EcuStatus {
    client(addr).await.get_status(StatusRequest {}).await.unwrap().into_inner()
}

/// Polls until the ECU is in `want` (panics with its status after 60 s).
async fn wait_for(addr: &str, want: State) -> rota_ecu::proto::EcuStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(addr).await;
        if s.state == want as i32 {
            return s;
        }
        assert!(Instant::now() < deadline, "waiting for {want:?}: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A verity bundle of version `version` for the ECU, and its image.
fn bundle(dir: &Path, version: &str) -> (PathBuf, Vec<u8>) {
    ecu_bundle(dir, &format!("display-{version}"), "Test Config", version, 256 * 1024, version.len() as u64 + 40)
}

/// A system manifest with `system_version` naming `bundle` for ECU display,
/// signed by `signer` (DER).
fn system_manifest(dir: &Path, system_version: u64, bundle: &Path, extra: &str, signer: &str) -> Vec<u8> {
    let text = format!(
        "[system]\ncompatible=Test System\nversion={system_version}\n{extra}\n[ecu.display]\nbundle={}\n",
        bundle.display()
    );
    let out = dir.join(format!("system-{system_version}-{signer}.sig"));
    sign_system_manifest(&text, &out, signer);
    fs::read(&out).unwrap()
}

/// The prepare request the main would send for `der`.
fn prepare_request(der: &[u8]) -> PrepareRequest {
    // The main's view: what the text says (the secondary checks the signature).
    let unchecked = rota_bundle::signature::VerifyOptions { no_verify: true, ..Default::default() };
    let text = rota_bundle::signature::verify(der, None, &unchecked).unwrap().content.unwrap();
    let m = rota_bundle::system_manifest::SystemManifest::parse(&String::from_utf8(text).unwrap()).unwrap();
    let e = m.ecu("display").unwrap();
    PrepareRequest {
        transaction: Some(transaction(der, m.version)),
        bundle_url: e.bundle.clone(),
        manifest_hash: e.manifest_hash.clone(),
        compatible: e.compatible.clone(),
        version: e.version.clone(),
        system_manifest: der.to_vec(),
    }
}

fn transaction(der: &[u8], version: u64) -> TransactionRef {
    TransactionRef { transaction_id: testkit::sha256_hex(der), system_version: version }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn head(path: &Path, n: usize) -> Vec<u8> {
    fs::read(path).unwrap()[..n].to_vec()
}

#[test]
fn a_secondary_prepares_switches_reports_healthy_and_commits() {
    let _g = serial();
    let mut ecu = Ecu::new("ecu-secondary-commit");
    let dir = ecu.d.path("bundles");
    fs::create_dir_all(&dir).unwrap();
    let (b, image) = bundle(&dir, "2.0");
    let der = system_manifest(&dir, 1, &b, "", "release");
    let t = transaction(&der, 1);
    let rt = rt();
    let addr = ecu.addr.clone();

    let s = rt.block_on(status(&addr));
    assert_eq!((s.ecu_id.as_str(), s.state, s.booted_slot.as_str()), ("display", State::Idle as i32, "A"));

    // Prepare: written, nothing activated (B is marked bad while written).
    rt.block_on(async {
        client(&addr).await.prepare(prepare_request(&der)).await.unwrap();
        wait_for(&addr, State::Prepared).await;
    });
    assert_eq!(head(&ecu.d.path("rootfs1.img"), image.len()), image);
    let env = grubenv(&ecu.d.path("grubenv"));
    assert_eq!(grub_selected(&env).as_deref(), Some("A"), "{env:?}");
    assert!(env.contains(&"B_OK=0".to_string()), "{env:?}");
    // The same Prepare again changes nothing.
    let again = rt.block_on(async { client(&addr).await.prepare(prepare_request(&der)).await.unwrap().into_inner() });
    assert_eq!(again.state, State::Prepared as i32);

    // Switch: B becomes GRUB's choice and the ECU reboots into it.
    rt.block_on(async { client(&addr).await.switch(t.clone()).await.unwrap() });
    assert_eq!(ecu.reboot(), "B");
    let s = rt.block_on(wait_for(&addr, State::Healthy));
    assert_eq!((s.booted_slot.as_str(), s.booted_version.as_str()), ("B", "2.0"));

    // Commit: the booted slot is marked good; the system version is kept.
    let s = rt.block_on(async { client(&addr).await.commit(t.clone()).await.unwrap().into_inner() });
    assert_eq!(s.state, State::Committed as i32);
    let env = grubenv(&ecu.d.path("grubenv"));
    assert!(env.contains(&"B_OK=1".to_string()) && env.contains(&"ORDER=B A".to_string()), "{env:?}");
    let record = fs::read_to_string(ecu.d.path("data/ecu/transaction.json")).unwrap();
    assert!(record.contains("\"committed-system-version\": 1"), "{record}");

    // Replayed: the same (and so not newer) system version is refused
    // before anything is fetched, and nothing changes.
    let s = rt.block_on(async {
        let mut c = client(&addr).await;
        let other = system_manifest(&dir, 1, &b, "description=again", "release");
        c.prepare(prepare_request(&other)).await.unwrap();
        wait_for(&addr, State::Failed).await
    });
    assert!(s.error.contains("Refusing system version 1: not newer than the installed system version 1"), "{s:?}");
    assert_eq!(grub_selected(&grubenv(&ecu.d.path("grubenv"))).as_deref(), Some("B"));
    assert!(ecu.svc.take().unwrap().stop().success());
}

#[test]
fn an_unhealthy_secondary_reverts_to_its_old_slot() {
    let _g = serial();
    let mut ecu = Ecu::new("ecu-secondary-revert");
    let dir = ecu.d.path("bundles");
    fs::create_dir_all(&dir).unwrap();
    let (b, _) = bundle(&dir, "2.0");
    let der = system_manifest(&dir, 5, &b, "", "release");
    let t = transaction(&der, 5);
    let rt = rt();
    let addr = ecu.addr.clone();
    let before = fs::read(ecu.d.path("rootfs0.img")).unwrap();
    fs::write(ecu.d.path("health"), "3").unwrap();
    rt.block_on(async {
        client(&addr).await.prepare(prepare_request(&der)).await.unwrap();
        wait_for(&addr, State::Prepared).await;
        client(&addr).await.switch(t.clone()).await.unwrap();
    });
    assert_eq!(ecu.reboot(), "B");
    let s = rt.block_on(wait_for(&addr, State::Unhealthy));
    assert!(s.error.contains("health check failed") && s.error.contains("verdict 3"), "{s:?}");
    // Commit is refused; revert makes A GRUB's choice again and reboots.
    let e = rt.block_on(async { client(&addr).await.commit(t.clone()).await.unwrap_err() });
    assert!(e.message().contains("cannot commit"), "{e:?}");
    rt.block_on(async { client(&addr).await.revert(t.clone()).await.unwrap() });
    assert_eq!(ecu.reboot(), "A");
    let s = rt.block_on(wait_for(&addr, State::Reverted));
    assert_eq!(s.booted_slot, "A");
    assert_eq!(fs::read(ecu.d.path("rootfs0.img")).unwrap(), before, "the old slot untouched");
    assert!(ecu.svc.take().unwrap().stop().success());
}

#[test]
fn a_secondary_refuses_what_the_signed_system_manifest_does_not_say() {
    let _g = serial();
    let mut ecu = Ecu::new("ecu-secondary-refuse");
    let dir = ecu.d.path("bundles");
    fs::create_dir_all(&dir).unwrap();
    let (b, _) = bundle(&dir, "2.0");
    let rt = rt();
    let addr = ecu.addr.clone();
    let good = system_manifest(&dir, 2, &b, "", "release");
    let foreign = system_manifest(&dir, 3, &b, "", "other");
    let cases: Vec<(PrepareRequest, &str)> = vec![
        (prepare_request(&foreign), "system manifest: signature verification failed"),
        (
            PrepareRequest { manifest_hash: "00".repeat(32), ..prepare_request(&good) },
            "the request for ECU 'display' differs from the signed system manifest",
        ),
        (
            PrepareRequest {
                transaction: Some(TransactionRef { transaction_id: "ab".into(), system_version: 2 }),
                ..prepare_request(&good)
            },
            "the transaction id is not the system manifest's SHA-256",
        ),
    ];
    for (req, want) in cases {
        let s = rt.block_on(async {
            client(&addr).await.prepare(req).await.unwrap();
            wait_for(&addr, State::Failed).await
        });
        assert!(s.error.contains(want), "{want:?}: {s:?}");
    }
    assert_eq!(fs::read(ecu.d.path("rootfs1.img")).unwrap(), vec![0xAA; 512 * 1024], "nothing written");
    assert_eq!(grub_selected(&grubenv(&ecu.d.path("grubenv"))).as_deref(), Some("A"));
    assert!(ecu.svc.take().unwrap().stop().success());
}
