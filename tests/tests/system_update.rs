//! System updates across ECUs: a main and two secondaries, each a real
//! `rota service` in its own network namespace with its own bus, file-backed
//! A/B slots and GRUB environment, joined by veth links to a bridge; the main
//! drives them over the ECU interface (mutual TLS) and is driven itself
//! through `dev.rota.System1` with busctl and `rota system`.
//! Reboots are simulated: an ECU's reboot command leaves a mark, the harness
//! restarts that ECU's service in the slot its GRUB environment selects.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::bus::{Bus, Service};
use testkit::device::{Device, grub_selected, grubenv};
use testkit::ecu::{ecu_bundle, ecu_device_as, sign_system_manifest};
use testkit::{pki_file, run, serial, target_dir};

/// One ECU: its device, bus and service.
struct Ecu {
    id: &'static str,
    d: Device,
    bus: Bus,
    svc: Option<Service>,
    reboots: usize,
    netns: testkit::netns::Netns,
}

impl Ecu {
    /// An ECU `id` of `compatible`; `role` is its `[ecu]` group's
    /// role-specific part.
    fn new(test: &str, id: &'static str, compatible: &str, role: &str, netns: testkit::netns::Netns) -> Ecu {
        Ecu::new_as(test, id, id, compatible, role, netns)
    }

    /// [`Ecu::new`] with the test PKI's identity `identity`.
    fn new_as(
        test: &str,
        id: &'static str,
        identity: &str,
        compatible: &str,
        role: &str,
        netns: testkit::netns::Netns,
    ) -> Ecu {
        let dir = target_dir().join("test-devices").join(format!("{test}-{id}"));
        let d = ecu_device_as(dir, id, identity, compatible, role);
        let bus = Bus::start();
        let mut e = Ecu { id, d, bus, svc: None, reboots: 0, netns };
        e.start();
        e
    }

    fn start(&mut self) {
        self.svc = Some(Service::start_in(&self.d, &self.bus, &[], Some(&self.netns)));
    }

    /// Reboots the ECU if it asked to: the service stops and comes back in
    /// the slot GRUB selects.
    fn reboot_if_asked(&mut self) {
        let mark = self.d.path("rebooted");
        if !mark.exists() {
            return;
        }
        fs::remove_file(&mark).unwrap();
        assert!(self.svc.take().unwrap().stop().success());
        let slot = grub_selected(&grubenv(&self.d.path("grubenv"))).expect("GRUB selects a slot");
        self.d.boot(&format!("rauc.slot={slot}"));
        self.start();
        self.reboots += 1;
    }

    fn selected(&self) -> String {
        grub_selected(&grubenv(&self.d.path("grubenv"))).unwrap()
    }

    fn booted(&self) -> String {
        fs::read_to_string(self.d.path("cmdline")).unwrap().trim().trim_start_matches("rauc.slot=").to_string()
    }
}

/// The secondaries of a test system and how they are set up.
struct Layout<'a> {
    /// Their ids.
    secondaries: &'a [&'static str],
    /// The test PKI identity (`ecu-<name>`) ECU `id` presents.
    identity: &'a dyn Fn(&str) -> String,
    /// The main's `prepare-timeout-sec`.
    prepare_timeout_sec: u64,
}

/// A main with secondaries (`display` and `pay` unless a layout says
/// otherwise) on a LAN.
struct System {
    main: Ecu,
    secondaries: Vec<Ecu>,
    lan: testkit::netns::Lan,
    prefix: String,
}

impl System {
    fn new(test: &str) -> System {
        System::with(test, "", &[])
    }

    /// A system whose main gets `main_extra` in its `[ecu]` group and whose
    /// ECUs get the configuration text `extra` names for them; ECU `id` is
    /// of compatible `Charger <id>`.
    fn with(test: &str, main_extra: &str, extra: &[(&str, &str)]) -> System {
        System::build(test, main_extra, extra, &|id| format!("Charger {id}"))
    }

    /// [`System::with`], ECU `id` of compatible `compatible(id)`.
    fn build(test: &str, main_extra: &str, extra: &[(&str, &str)], compatible: &dyn Fn(&str) -> String) -> System {
        let layout =
            Layout { secondaries: &["display", "pay"], identity: &|id| id.to_string(), prepare_timeout_sec: 60 };
        System::build_from(test, &layout, main_extra, extra, compatible)
    }

    /// A system of `layout`, as [`System::build`] says.
    fn build_from(
        test: &str,
        layout: &Layout<'_>,
        main_extra: &str,
        extra: &[(&str, &str)],
        compatible: &dyn Fn(&str) -> String,
    ) -> System {
        let extra_of = |id: &str| extra.iter().find(|(i, _)| *i == id).map(|(_, t)| t.to_string()).unwrap_or_default();
        let prefix = format!("rota-{}", test.trim_start_matches("sysupdate-"));
        let mut lan = testkit::netns::Lan::new(&prefix);
        lan.host(&prefix, "main");
        let addrs: Vec<String> = layout.secondaries.iter().map(|id| lan.host(&prefix, id)).collect();
        let secondaries: Vec<Ecu> = layout
            .secondaries
            .iter()
            .zip(&addrs)
            .map(|(id, addr)| {
                let role = format!(
                    "role=secondary\nlisten={addr}:50151\nmain-cert={}\n{}",
                    pki_file("ecu-main.pem").display(),
                    extra_of(id)
                );
                Ecu::new_as(test, id, &(layout.identity)(id), &compatible(id), &role, lan.netns(id).handle())
            })
            .collect();
        let mut role = format!(
            "role=main\nhealth-timeout-sec=60\nprepare-timeout-sec={}\n{main_extra}",
            layout.prepare_timeout_sec
        );
        for (s, addr) in secondaries.iter().zip(&addrs) {
            role.push_str(&format!(
                "[secondary.{}]\naddress={addr}:50151\ncert={}\n",
                s.id,
                pki_file(&format!("ecu-{}.pem", (layout.identity)(s.id))).display()
            ));
        }
        role.push_str(&extra_of("main"));
        let main = Ecu::new(test, "main", &compatible("main"), &role, lan.netns("main").handle());
        System { main, secondaries, lan, prefix }
    }

    fn all(&mut self) -> impl Iterator<Item = &mut Ecu> {
        std::iter::once(&mut self.main).chain(self.secondaries.iter_mut())
    }

    fn ecu(&self, id: &str) -> &Ecu {
        std::iter::once(&self.main).chain(&self.secondaries).find(|e| e.id == id).unwrap()
    }

    fn property(&self, name: &str) -> String {
        let r = run(&mut self.main.bus.busctl(&["get-property", "de.pengutronix.rauc", "/", "dev.rota.System1", name]));
        // busctl escapes quotes inside strings.
        r.stdout.trim().replace("\\'", "'")
    }

    fn update(&self, manifest: &Path) -> testkit::Run {
        run(&mut self.main.bus.busctl(&[
            "call",
            "de.pengutronix.rauc",
            "/",
            "dev.rota.System1",
            "Update",
            "sa{sv}",
            manifest.to_str().unwrap(),
            "0",
        ]))
    }

    /// Plays the bootloader until the main's state is one of `ends`.
    fn run_until(&mut self, ends: &[&str]) -> String {
        self.run_until_within(ends, Duration::from_secs(180))
    }

    /// [`System::run_until`], for at most `limit`.
    fn run_until_within(&mut self, ends: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            for e in self.all() {
                e.reboot_if_asked();
            }
            let state = self.property("State");
            if ends.iter().any(|s| state == format!("s \"{s}\"")) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "state {state}; ECUs {}; main log:\n{}",
                self.property("Ecus"),
                fs::read_to_string(self.main.d.path("service.log")).unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(mut self) {
        for e in self.all() {
            assert!(e.svc.take().unwrap().stop().success(), "{}", e.id);
        }
    }
}

/// A verity bundle for ECU `id` at `version`, in `dir`.
fn bundle(dir: &Path, id: &str, version: &str, seed: u64) -> PathBuf {
    ecu_bundle(dir, &format!("{id}-{version}-{seed}"), &format!("Charger {id}"), version, 128 * 1024, seed).0
}

/// The signed system manifest of `bundles` at system version `version`.
fn system_manifest(dir: &Path, version: u64, bundles: &[(&str, &Path, &str)]) -> PathBuf {
    let mut text = format!("[system]\ncompatible=Charger\nversion={version}\n");
    for (id, b, extra) in bundles {
        text.push_str(&format!("[ecu.{id}]\nbundle={}\n{extra}", b.display()));
    }
    let out = dir.join(format!("system-{version}.sig"));
    sign_system_manifest(&text, &out, "release");
    out
}

fn setup(test: &str) -> (System, PathBuf, [PathBuf; 3]) {
    setup_with(System::new(test))
}

fn setup_with(s: System) -> (System, PathBuf, [PathBuf; 3]) {
    let dir = s.main.d.path("updates");
    fs::create_dir_all(&dir).unwrap();
    let b = [bundle(&dir, "main", "2.0", 1), bundle(&dir, "display", "2.0", 2), bundle(&dir, "pay", "2.0", 3)];
    (s, dir, b)
}

#[test]
fn a_system_update_commits_on_every_ecu() {
    let _g = serial();
    let (mut s, dir, b) = setup("sysupdate-commit");
    // The main reboots last, the display first.
    let m = system_manifest(
        &dir,
        1,
        &[("main", &b[0], ""), ("display", &b[1], "reboot-priority=2\n"), ("pay", &b[2], "reboot-priority=1\n")],
    );
    // `rota system update` on the main follows it to the end, across the
    // main's own reboot.
    let client = s
        .main
        .d
        .rota()
        .envs(s.main.bus.env())
        .args(["system", "update", m.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(s.run_until(&["committed", "reverted", "failed"]), "s \"committed\"", "{}", s.property("LastError"));
    let out = client.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "System update ",
        " started\n",
        "preparing\n",
        "switching\n",
        "committed\n",
        "System update committed: system version 1\n",
    ] {
        assert!(stdout.contains(want), "{want:?} in {stdout}");
    }
    assert!(stdout.contains("  display          committed    booted B 2.0"), "{stdout}");
    let status = run(s.main.d.rota().envs(s.main.bus.env()).args(["system", "status", "--output-format=json"])).ok();
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!((v["state"].as_str(), v["committed-system-version"].as_u64()), (Some("committed"), Some(1)));
    assert_eq!(v["ecus"].as_array().unwrap().len(), 3);
    for e in s.all() {
        assert_eq!((e.booted(), e.selected(), e.reboots), ("B".to_string(), "B".to_string(), 1), "{}", e.id);
        let env = grubenv(&e.d.path("grubenv"));
        assert!(env.contains(&"B_OK=1".to_string()), "{}: {env:?}", e.id);
    }
    assert_eq!(s.property("CommittedSystemVersion"), "t 1");
    let ecus = s.property("Ecus");
    assert_eq!(ecus.matches("\"committed\"").count(), 3, "{ecus}");

    // The same system version again is refused before anything moves.
    let again = system_manifest(&dir, 1, &[("display", &b[1], "")]);
    let r = s.update(&again).fails();
    assert!(
        r.stderr.contains("Refusing system version 1: not newer than the installed system version 1"),
        "{}",
        r.stderr
    );
    s.stop();
}

#[test]
fn an_unhealthy_ecu_reverts_every_ecu() {
    let _g = serial();
    let (mut s, dir, b) = setup("sysupdate-unhealthy");
    fs::write(s.ecu("pay").d.path("health"), "4").unwrap();
    let m = system_manifest(&dir, 2, &[("main", &b[0], ""), ("display", &b[1], ""), ("pay", &b[2], "")]);
    s.update(&m).ok();
    assert_eq!(s.run_until(&["committed", "reverted", "failed"]), "s \"reverted\"");
    let error = s.property("LastError");
    assert!(error.contains("ECU 'pay' is unhealthy: health check failed") && error.contains("verdict 4"), "{error}");
    for e in s.all() {
        assert_eq!((e.booted(), e.selected()), ("A".to_string(), "A".to_string()), "{}", e.id);
    }
    assert_eq!(s.property("CommittedSystemVersion"), "t 0");
    s.stop();
}

#[test]
fn a_failed_prepare_switches_no_ecu() {
    let _g = serial();
    let (mut s, dir, b) = setup("sysupdate-prepare");
    let m = system_manifest(&dir, 3, &[("main", &b[0], ""), ("display", &b[1], ""), ("pay", &b[2], "")]);
    // The pay bundle is replaced after signing: its manifest hash differs.
    let other = bundle(&dir, "pay", "2.0", 9);
    fs::rename(&other, &b[2]).unwrap();
    s.update(&m).ok();
    assert_eq!(s.run_until(&["committed", "reverted", "failed"]), "s \"reverted\"");
    let error = s.property("LastError");
    assert!(error.contains("prepare failed") && error.contains("pay"), "{error}");
    for e in s.all() {
        assert_eq!((e.booted(), e.selected(), e.reboots), ("A".to_string(), "A".to_string(), 0), "{}", e.id);
    }
    s.stop();
}

#[test]
fn a_secondary_cut_off_while_preparing_is_named_and_the_others_revert() {
    let _g = serial();
    // Pay's preparation hangs in its pre-install handler; then its link is cut.
    let hang = "[handlers]\npre-install=/bin/sleep-forever\n";
    let sys = System::with("sysupdate-cutoff", "prepare-timeout-sec=15\n", &[("pay", hang)]);
    let hook = sys.ecu("pay").d.path("hang.sh");
    // It leaves its process id (the sleep's, after exec) for the end.
    fs::write(&hook, format!("#!/bin/sh\necho $$ > {}\nexec sleep 600\n", hook.with_extension("pid").display()))
        .unwrap();
    run(std::process::Command::new("chmod").arg("+x").arg(&hook)).ok();
    let conf =
        fs::read_to_string(sys.ecu("pay").d.conf()).unwrap().replace("/bin/sleep-forever", hook.to_str().unwrap());
    sys.ecu("pay").d.write_conf(&conf);
    let (mut s, dir, b) = setup_with(sys);
    // Pay's service reads the new configuration at its next start.
    {
        let pay = s.secondaries.iter_mut().find(|e| e.id == "pay").unwrap();
        assert!(pay.svc.take().unwrap().stop().success());
        pay.start();
    }
    let m = system_manifest(&dir, 4, &[("main", &b[0], ""), ("display", &b[1], ""), ("pay", &b[2], "")]);
    s.update(&m).ok();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s.property("Ecus").contains("\"pay\" \"preparing\"") {
        assert!(Instant::now() < deadline, "{}", s.property("Ecus"));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Pay's link goes down: it still runs, but nothing reaches it.
    s.lan.cut("pay");
    // The main gives up at its prepare timeout (15 s here), names pay, and
    // reverts the others.
    assert_eq!(s.run_until(&["committed", "reverted", "failed"]), "s \"reverted\"");
    let error = s.property("LastError");
    assert!(error.contains("prepare failed: timed out") && error.contains("pay (unreachable"), "{error}");
    for e in [&s.main, s.ecu("display")] {
        assert_eq!((e.booted(), e.selected(), e.reboots), ("A".to_string(), "A".to_string(), 0), "{}", e.id);
    }
    assert_eq!(s.ecu("pay").selected(), "A", "pay never switched");
    // Back on the LAN, pay leaves the old transaction at the next one.
    s.lan.mend("pay");
    let hung = fs::read_to_string(hook.with_extension("pid")).unwrap();
    run(std::process::Command::new("kill").arg(hung.trim())).ok();
    s.stop();
}

#[test]
fn a_main_killed_mid_transaction_resumes_it() {
    let _g = serial();
    let (mut s, dir, b) = setup("sysupdate-mainkill");
    let m = system_manifest(
        &dir,
        5,
        &[("main", &b[0], ""), ("display", &b[1], "reboot-priority=2\n"), ("pay", &b[2], "reboot-priority=1\n")],
    );
    s.update(&m).ok();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut killed = false;
    loop {
        for e in s.all() {
            e.reboot_if_asked();
        }
        if !killed && s.ecu("display").reboots == 1 {
            // The display switched and rebooted: the main dies with SIGKILL
            // and comes back (in its old slot: it has not switched yet).
            let svc = s.main.svc.take().unwrap();
            svc.signal(libc::SIGKILL);
            svc.wait();
            s.main.start();
            killed = true;
        }
        let state = s.property("State");
        if state == "s \"committed\"" || state == "s \"reverted\"" || state == "s \"failed\"" {
            assert_eq!(state, "s \"committed\"", "{}", s.property("LastError"));
            break;
        }
        assert!(Instant::now() < deadline, "{state}: {}", s.property("Ecus"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(killed);
    for e in s.all() {
        assert_eq!((e.booted(), e.reboots), ("B".to_string(), 1), "{}", e.id);
    }
    let log = fs::read_to_string(s.main.d.path("service.log")).unwrap();
    assert!(log.contains("Resuming system update"), "{log}");
    s.stop();
}

#[test]
fn a_secondary_with_another_certificate_is_refused_before_anything_moves() {
    let _g = serial();
    let (mut s, dir, b) = setup("sysupdate-wrongcert");
    // The main pins a certificate the pay ECU does not have.
    let conf = fs::read_to_string(s.main.d.conf()).unwrap();
    let pinned = pki_file("ecu-pay.pem").display().to_string();
    s.main.d.write_conf(&conf.replace(&pinned, pki_file("ecu-spare.pem").to_str().unwrap()));
    assert!(s.main.svc.take().unwrap().stop().success());
    s.main.start();
    let m = system_manifest(&dir, 6, &[("main", &b[0], ""), ("pay", &b[2], "")]);
    let r = s.update(&m).fails();
    assert!(
        r.stderr.contains("ECU 'pay': Connecting to ECU at") && r.stderr.contains("certificate verify failed"),
        "{}",
        r.stderr
    );
    assert_eq!(s.property("State"), "s \"idle\"");
    for e in s.all() {
        assert_eq!(
            (e.selected(), fs::read(e.d.path("rootfs1.img")).unwrap()),
            ("A".to_string(), vec![0xAA; 512 * 1024]),
            "{}",
            e.id
        );
    }
    s.stop();
}

/// Bytes the origin sent for `path` (the lengths of the ranges asked for).
fn origin_bytes(origin: &testkit::httpd::Server, path: &str) -> u64 {
    origin.requests().iter().filter(|r| r.path == path).map(|r| r.range_len()).sum()
}

#[test]
fn secondaries_fetch_through_the_mains_cache_and_the_origin_sends_each_bundle_once() {
    let _g = serial();
    // display and pay take the same bundle; the main its own. Every ECU,
    // the main too, fetches through the main's proxy (10.77.0.1).
    let mut s = System::build("sysupdate-proxy", "proxy-listen=10.77.0.1:8470\nproxy-cache-size=64M\n", &[], &|id| {
        if id == "main" { "Charger main".into() } else { "Charger panel".into() }
    });
    let addr = s.lan.host(&s.prefix.clone(), "origin");
    let origin = testkit::httpd::Server::start_in(s.lan.netns("origin"), &format!("{addr}:8080"));
    let dir = s.main.d.path("updates");
    fs::create_dir_all(&dir).unwrap();
    let size = 6 << 20;
    let (main_b, _) = ecu_bundle(&dir, "main-proxy", "Charger main", "2.0", size, 11);
    let (panel_b, _) = ecu_bundle(&dir, "panel-proxy", "Charger panel", "2.0", size, 12);
    let (main_len, panel_len) = (fs::metadata(&main_b).unwrap().len(), fs::metadata(&panel_b).unwrap().len());
    origin.put("/main.raucb", fs::read(&main_b).unwrap());
    origin.put("/panel.raucb", fs::read(&panel_b).unwrap());
    // The origin corrupts one byte of the main's bundle once: the proxy
    // keeps that chunk, the main's verification fails, it asks again past
    // the cache, and the proxy fetches the chunk again.
    let bad = (2 << 20) + 4321;
    origin.inject(testkit::httpd::Fault::Corrupt, bad, 1);
    let mut text = "[system]\ncompatible=Charger\nversion=1\n".to_string();
    for (id, path) in [("main", "/main.raucb"), ("display", "/panel.raucb"), ("pay", "/panel.raucb")] {
        text.push_str(&format!("[ecu.{id}]\nbundle={}\n", origin.url(path)));
    }
    let m = dir.join("system-1.sig");
    testkit::ecu::sign_system_manifest_with(
        &text,
        &m,
        "release",
        &[("main", &main_b), ("display", &panel_b), ("pay", &panel_b)],
    );
    s.update(&m).ok();
    assert_eq!(s.run_until(&["committed", "reverted", "failed"]), "s \"committed\"", "{}", s.property("LastError"));
    for e in s.all() {
        assert_eq!((e.booted(), e.reboots), ("B".to_string(), 1), "{}", e.id);
    }
    assert_eq!(origin.faults_served(), 1, "the corrupted range was served");
    // ... and the proxy fetched that chunk again.
    let covers = |r: &&testkit::httpd::Request| {
        let range = r.header("range").and_then(|v| v.strip_prefix("bytes=")).and_then(|v| v.split_once('-'));
        range.is_some_and(|(a, b)| a.parse::<u64>().unwrap() <= bad && b.parse::<u64>().unwrap() >= bad)
    };
    let requests = origin.requests();
    assert_eq!(requests.iter().filter(|r| r.path == "/main.raucb").filter(covers).count(), 2);
    // Two ECUs installed the panel bundle: it crossed the origin link once
    // (within 5 %: the proxy fetches whole chunks, the probe asks 4 bytes).
    let panel = origin_bytes(&origin, "/panel.raucb");
    assert!(panel >= panel_len && panel * 100 <= panel_len * 105, "panel bundle: {panel} origin bytes for {panel_len}");
    // The main's bundle once, plus the chunks asked for past the cache
    // (the bad one, and perhaps those of the hash tree) once more.
    let main = origin_bytes(&origin, "/main.raucb");
    assert!(main > main_len && main <= main_len + (3 << 20), "main bundle: {main} origin bytes for {main_len}");
    // The proxy serves the running update's bundles and nothing else.
    let proxy_get = |path: &str| {
        let mut c = std::process::Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-r", "0-3"])
            .arg(format!("http://10.77.0.1:8470{path}"));
        s.lan.netns("display").enter(&mut c);
        run(&mut c).ok().stdout
    };
    let key = |url: &str| hex_sha256(url.as_bytes());
    assert_eq!(proxy_get(&format!("/bundle/{}", key(&origin.url("/panel.raucb")))), "206");
    assert_eq!(proxy_get(&format!("/bundle/{}", key(&origin.url("/other.raucb")))), "404");
    assert_eq!(proxy_get(&format!("/{}", origin.url("/panel.raucb"))), "404");
    assert_eq!(proxy_get("/bundle/../../etc/passwd"), "404");
    s.stop();
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[test]
fn a_download_cache_smaller_than_the_bundles_stays_within_its_bound() {
    let _g = serial();
    // 2 MiB of cache for two different 4 MiB bundles read at once: chunks
    // go least recently used first, and come back from the origin when an
    // ECU still needs them.
    let mut s =
        System::build("sysupdate-small-cache", "proxy-listen=10.77.0.1:8470\nproxy-cache-size=2M\n", &[], &|id| {
            format!("Charger {id}")
        });
    let addr = s.lan.host(&s.prefix.clone(), "origin");
    let origin = testkit::httpd::Server::start_in(s.lan.netns("origin"), &format!("{addr}:8080"));
    let dir = s.main.d.path("updates");
    fs::create_dir_all(&dir).unwrap();
    let (display_b, _) = ecu_bundle(&dir, "display-small", "Charger display", "2.0", 4 << 20, 21);
    let (pay_b, _) = ecu_bundle(&dir, "pay-small", "Charger pay", "2.0", 4 << 20, 22);
    origin.put("/display.raucb", fs::read(&display_b).unwrap());
    origin.put("/pay.raucb", fs::read(&pay_b).unwrap());
    let text = format!(
        "[system]\ncompatible=Charger\nversion=1\n[ecu.display]\nbundle={}\n[ecu.pay]\nbundle={}\n",
        origin.url("/display.raucb"),
        origin.url("/pay.raucb")
    );
    let m = dir.join("system-1.sig");
    testkit::ecu::sign_system_manifest_with(&text, &m, "release", &[("display", &display_b), ("pay", &pay_b)]);
    let cache = s.main.d.path("data/ecu/cache");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let most = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(dir_bytes(&cache));
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        });
        s.update(&m).ok();
        let state = s.run_until(&["committed", "reverted", "failed"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(state, "s \"committed\"", "{}", s.property("LastError"));
        watcher.join().unwrap()
    });
    assert!(most > 0, "the cache at {} was used", cache.display());
    // The bound, plus chunks being written (.part) before the oldest go.
    assert!(most <= (2 << 20) + 6 * (1 << 20), "cache held {most} bytes");
    for id in ["display", "pay"] {
        assert_eq!(s.ecu(id).booted(), "B", "{id}");
    }
    s.stop();
}

/// Bytes of the regular files below `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Issue 23's benchmark (`bench/run ecu`; ignored in the test suite): N
/// secondaries (1, 2, 4, 8) update to the same bundle of
/// `ROTA_BENCH_ECU_MIB` (default 256) MiB from an origin whose link is
/// shaped to `ROTA_BENCH_ECU_LINK` (default 100mbit), through the main's
/// download cache and each fetching directly. Prints one line per run:
/// bytes the origin sent, and the wall time from `Update` to committed.
#[test]
#[ignore]
fn benchmark_download_cache() {
    let _g = serial();
    let mib: usize = std::env::var("ROTA_BENCH_ECU_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let rate = std::env::var("ROTA_BENCH_ECU_LINK").unwrap_or_else(|_| "100mbit".into());
    let counts: Vec<usize> = std::env::var("ROTA_BENCH_ECU_COUNTS")
        .unwrap_or_else(|_| "1 2 4 8".into())
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    const IDS: [&str; 8] = ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"];
    let dir = target_dir().join("bench-ecu");
    fs::create_dir_all(&dir).unwrap();
    let (bundle, _) = ecu_bundle(&dir, &format!("panel-{mib}"), "Charger panel", "2.0", mib << 20, 42);
    let bundle_bytes = fs::read(&bundle).unwrap();
    let size = bundle_bytes.len() as u64;
    println!("ecu-bench bundle={size} link={rate}");
    for &n in &counts {
        for proxy in [true, false] {
            let layout =
                Layout { secondaries: &IDS[..n], identity: &|_| "display".to_string(), prepare_timeout_sec: 3600 };
            let extra = if proxy { "proxy-listen=10.77.0.1:8470\n" } else { "" };
            let mut s = System::build_from("sysupdate-bench", &layout, extra, &[], &|_| "Charger panel".into());
            let addr = s.lan.host(&s.prefix.clone(), "origin");
            let origin = testkit::httpd::Server::start_in(s.lan.netns("origin"), &format!("{addr}:8080"));
            origin.put("/panel.raucb", bundle_bytes.clone());
            let mut tc = std::process::Command::new("tc");
            tc.args(["qdisc", "add", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "256kb", "latency", "50ms"]);
            s.lan.netns("origin").enter(&mut tc);
            run(&mut tc).ok();
            if n == counts[0] && proxy {
                // The floor: one client fetching the bundle over the same link.
                let mut curl = std::process::Command::new("curl");
                curl.args(["-s", "-o", "/dev/null", "-w", "%{time_total}", &origin.url("/panel.raucb")]);
                s.lan.netns("main").enter(&mut curl);
                println!("ecu-bench floor curl_s={}", run(&mut curl).ok().stdout.trim());
            }
            let mut text = "[system]\ncompatible=Charger\nversion=1\n".to_string();
            for id in &IDS[..n] {
                text.push_str(&format!("[ecu.{id}]\nbundle={}\n", origin.url("/panel.raucb")));
            }
            let m = dir.join(format!("system-{n}-{proxy}.sig"));
            let files: Vec<(&str, &Path)> = IDS[..n].iter().map(|id| (*id, bundle.as_path())).collect();
            testkit::ecu::sign_system_manifest_with(&text, &m, "release", &files);
            let t0 = Instant::now();
            s.update(&m).ok();
            let state = s.run_until_within(&["committed", "reverted", "failed"], Duration::from_secs(3600));
            let wall = t0.elapsed().as_secs_f64();
            assert_eq!(state, "s \"committed\"", "{}", s.property("LastError"));
            let bytes = origin_bytes(&origin, "/panel.raucb");
            println!(
                "ecu-bench secondaries={n} mode={} origin_bytes={bytes} origin_per_bundle={:.3} wall_s={wall:.1}",
                if proxy { "proxy" } else { "direct" },
                bytes as f64 / size as f64
            );
            s.stop();
        }
    }
}
