//! `rota service` on a real private `dbus-daemon` (spec §8): every method,
//! property and signal of `de.pengutronix.rauc.Installer`, from `busctl`
//! and from our typed proxies (`rota-dbus`); the progress sequence of a
//! two-slot install, the busy rule, failures, a second instance, SIGTERM.

use futures_util::StreamExt;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::bus::{Bus, Service, interface_element};
use testkit::device::{Device, grubenv};
use testkit::{Content, pki_file, rota_bundle, run, target_dir, workspace};
use zbus::OwnedVariant;

/// A device with A/B root slots and app children, GRUB (real
/// `grub-editenv`), central status, a variant and a system-info handler.
fn device(name: &str, handlers: &str) -> Device {
    let dir = target_dir().join("test-devices").join(name);
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\nmountprefix=mnt\n\
         variant-name=charger-x\n[keyring]\npath={}\n[handlers]\nsystem-info=system-info.sh\n{handlers}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n\
         [slot.appfs.0]\ndevice=appfs0.img\nparent=rootfs.0\n[slot.appfs.1]\ndevice=appfs1.img\nparent=rootfs.1\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(&dir, &conf);
    script(&d.path("system-info.sh"), "echo RAUC_SYSTEM_VERSION=2026.11\n");
    d.grub_ab(512 * 1024, 0xAA);
    d
}

fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The standard two-image bundle (compatible `compatible`).
fn bundle(name: &str, compatible: &str) -> PathBuf {
    let dir = target_dir().join("test-bundles").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::standard(dir.join("content"), "verity");
    let manifest = fs::read_to_string(c.dir.join("manifest.raucm")).unwrap();
    c.manifest(&manifest.replace("compatible=Test Config", &format!("compatible={compatible}")));
    let out = dir.join("b.raucb");
    rota_bundle(&c.dir, &out, "release").ok();
    out
}

fn busctl(bus: &Bus, args: &[&str]) -> String {
    run(&mut bus.busctl(args)).ok().stdout.trim().to_string()
}

fn call(bus: &Bus, method: &str, sig_and_args: &[&str]) -> String {
    let mut args = vec!["call", "de.pengutronix.rauc", "/", "de.pengutronix.rauc.Installer", method];
    args.extend(sig_and_args);
    busctl(bus, &args)
}

fn call_fails(bus: &Bus, method: &str, sig_and_args: &[&str]) -> String {
    let mut args = vec!["call", "de.pengutronix.rauc", "/", "de.pengutronix.rauc.Installer", method];
    args.extend(sig_and_args);
    run(&mut bus.busctl(&args)).fails().stderr.trim().to_string()
}

fn property(bus: &Bus, name: &str) -> String {
    busctl(bus, &["get-property", "de.pengutronix.rauc", "/", "de.pengutronix.rauc.Installer", name])
}

fn primary(d: &Device) -> String {
    grubenv(&d.path("grubenv"))
        .into_iter()
        .find_map(|l| l.strip_prefix("ORDER=").map(|o| o.split(' ').next().unwrap().to_string()))
        .unwrap()
}

#[test]
fn properties_introspection_and_shutdown() {
    let d = device("dbus-props", "");
    let bus = Bus::start();
    let svc = Service::start(&d, &bus, &[]);
    assert_eq!(property(&bus, "Operation"), "s \"idle\"");
    assert_eq!(property(&bus, "LastError"), "s \"\"");
    assert_eq!(property(&bus, "Progress"), "(isi) 0 \"\" 0");
    assert_eq!(property(&bus, "Compatible"), "s \"Test Config\"");
    assert_eq!(property(&bus, "Variant"), "s \"charger-x\"");
    assert_eq!(property(&bus, "SystemVersion"), "s \"2026.11\"");
    assert_eq!(property(&bus, "BootSlot"), "s \"A\"");

    // What the service exports is exactly the shipped XML.
    let json = busctl(
        &bus,
        &["--json=short", "call", "de.pengutronix.rauc", "/", "org.freedesktop.DBus.Introspectable", "Introspect"],
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let exported = v["data"][0].as_str().unwrap().to_string();
    for name in [rota_dbus::INSTALLER_INTERFACE, rota_dbus::CONTROL_INTERFACE] {
        let shipped = fs::read_to_string(workspace().join(format!("dbus-interfaces/{name}.xml"))).unwrap();
        assert_eq!(interface_element(&exported, name), interface_element(&shipped, name));
    }
    let listing = busctl(&bus, &["introspect", "de.pengutronix.rauc", "/", "de.pengutronix.rauc.Installer"]);
    for member in [
        ".InstallBundle",
        ".Install",
        ".InspectBundle",
        ".Info",
        ".Mark",
        ".GetSlotStatus",
        ".GetArtifactStatus",
        ".GetPrimary",
        ".Completed",
    ] {
        assert!(listing.lines().any(|l| l.starts_with(&format!("{member} "))), "{member} in {listing}");
    }
    assert_eq!(listing.lines().filter(|l| l.contains("emits-change")).count(), 7, "{listing}");

    // The service start recorded the boot and the runtime links.
    assert_eq!(fs::read_link(d.path("run/slots/active/rootfs")).unwrap(), d.path("rootfs0.img"));
    assert_eq!(fs::read_link(d.path("run/slots/active/appfs")).unwrap(), d.path("appfs0.img"));

    // A second instance cannot take the name; the first keeps serving.
    let second = run(d.rota().envs(bus.env()).env("ROTA_RUN_DIR", d.path("run")).arg("service")).fails();
    assert_eq!(second.code, 1);
    assert!(second.stderr.contains("Failed to obtain name de.pengutronix.rauc on session bus"), "{}", second.stderr);
    assert_eq!(property(&bus, "Operation"), "s \"idle\"");
    assert!(svc.stop().success(), "SIGTERM ends the service with 0");
}

#[test]
fn methods_from_busctl() {
    let d = device("dbus-busctl", "");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    assert_eq!(call(&bus, "GetPrimary", &[]), "s \"rootfs.0\"");
    assert_eq!(call(&bus, "Mark", &["ss", "good", "booted"]), "ss \"rootfs.0\" \"marked slot(s) rootfs.0 as good\"");
    assert_eq!(call(&bus, "Mark", &["ss", "bad", "other"]), "ss \"rootfs.1\" \"marked slot(s) rootfs.1 as bad\"");
    assert_eq!(call_fails(&bus, "Mark", &["ss", "weird", "booted"]), "Call failed: unknown slot state 'weird'");
    assert_eq!(
        call_fails(&bus, "Mark", &["ss", "good", "rootfs.9"]),
        "Call failed: No slot with class rootfs and name rootfs.9 found"
    );
    assert_eq!(call_fails(&bus, "Mark", &["ss", "good", "rootfs"]), "Call failed: Invalid slot name format: 'rootfs'");
    let status = busctl(
        &bus,
        &["--json=short", "call", "de.pengutronix.rauc", "/", "de.pengutronix.rauc.Installer", "GetSlotStatus"],
    );
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let slots = v["data"][0].as_array().unwrap();
    let names: Vec<&str> = slots.iter().map(|s| s[0].as_str().unwrap()).collect();
    // In the order RAUC walks its slot table (see tests/slot_order.rs).
    assert_eq!(names, ["rootfs.1", "appfs.1", "rootfs.0", "appfs.0"]);
    let root0 = &slots[2][1];
    assert_eq!(root0["state"]["data"], "booted");
    assert_eq!(root0["bootname"]["data"], "A");
    assert_eq!(root0["boot-status"]["data"], "good");
    assert_eq!(slots[0][1]["boot-status"]["data"], "bad");
    assert_eq!(slots[3][1]["parent"]["data"], "rootfs.0");
    assert!(slots[3][1].get("bootname").is_none());

    let b = bundle("dbus-busctl", "Test Config");
    let b = b.to_str().unwrap();
    assert_eq!(call(&bus, "Info", &["s", b]), "ss \"Test Config\" \"2024.08-1\"");
    let inspect = busctl(
        &bus,
        &[
            "--json=short",
            "call",
            "de.pengutronix.rauc",
            "/",
            "de.pengutronix.rauc.Installer",
            "InspectBundle",
            "sa{sv}",
            b,
            "0",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["type"], "a{sv}");
    let info = &v["data"][0];
    assert_eq!(info["update"]["type"], "a{sv}");
    assert_eq!(info["update"]["data"]["compatible"]["data"], "Test Config");
    assert_eq!(info["bundle"]["data"]["format"]["data"], "verity");
    assert_eq!(info["bundle"]["data"]["verity-size"]["type"], "t");
    assert_eq!(info["images"]["type"], "aa{sv}");
    assert_eq!(info["images"]["data"][0]["slot-class"]["data"], "rootfs");
    assert_eq!(info["images"]["data"][0]["size"]["type"], "t");
    assert_eq!(info["images"]["data"][0]["hooks"]["type"], "as");
    assert_eq!(info["meta"]["type"], "a{sa{ss}}");
    assert_eq!(info["manifest-hash"]["type"], "s");
    assert_eq!(call(&bus, "GetArtifactStatus", &[]), "aa{sv} 0");
    assert_eq!(
        call_fails(&bus, "InstallBundle", &["sa{sv}", b, "1", "frobnicate", "b", "true"]),
        "Call failed: Unsupported key: frobnicate"
    );
    assert_eq!(
        call_fails(&bus, "InspectBundle", &["sa{sv}", b, "1", "ignore-compatible", "b", "true"]),
        "Call failed: Unsupported key: ignore-compatible"
    );
    assert_eq!(property(&bus, "Operation"), "s \"idle\"", "refused calls start nothing");
}

/// One signal of the installer as the test sees it.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Progress(i32, String, i32),
    Operation(String),
    LastError(String),
    Completed(i32),
}

/// Collects the installer's signals in arrival order until `Operation`
/// returns to `idle` after a `Completed`.
async fn signals_until_idle(stream: &mut zbus::MessageStream) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        // A signal that never comes fails the test with what did, not hangs it.
        let Ok(next) = tokio::time::timeout(std::time::Duration::from_secs(60), stream.next()).await else {
            panic!("no signal for 60 s; seen: {seen:?}");
        };
        let Some(msg) = next else { break };
        let msg = msg.unwrap();
        let header = msg.header();
        let member = header.member().map(|m| m.to_string()).unwrap_or_default();
        match member.as_str() {
            "Completed" => seen.push(Seen::Completed(msg.body().deserialize::<i32>().unwrap())),
            "PropertiesChanged" => {
                let (interface, changed, _): (String, HashMap<String, OwnedVariant>, Vec<String>) =
                    msg.body().deserialize().unwrap();
                if interface != rota_dbus::INSTALLER_INTERFACE {
                    continue;
                }
                let mut keys: Vec<&String> = changed.keys().collect();
                keys.sort();
                for k in keys {
                    let v = changed[k].try_clone().unwrap();
                    seen.push(match k.as_str() {
                        "Progress" => {
                            let (p, m, d) = <(i32, String, i32)>::try_from(v).unwrap();
                            Seen::Progress(p, m, d)
                        }
                        "Operation" => Seen::Operation(String::try_from(v).unwrap()),
                        "LastError" => Seen::LastError(String::try_from(v).unwrap()),
                        other => panic!("unexpected property {other}"),
                    });
                }
            }
            _ => {}
        }
        let done = seen.iter().any(|s| matches!(s, Seen::Completed(_)));
        if done && seen.last() == Some(&Seen::Operation("idle".into())) {
            break;
        }
    }
    seen
}

async fn connect(bus: &Bus) -> (zbus::Connection, rota_dbus::InstallerProxy<'static>, zbus::MessageStream) {
    let conn = zbus::connection::Builder::address(bus.address.as_str()).build().await.unwrap();
    let rule = zbus::MatchRule::builder().msg_type(zbus::message::Type::Signal).path("/").build().unwrap();
    // The tests call methods while signals queue up unread; a full queue
    // (zbus's default is 64) would hold back the replies on the same
    // connection for good.
    let stream = zbus::MessageStream::for_match_rule(rule, &conn, std::num::NonZeroUsize::new(1 << 16)).await.unwrap();
    let proxy = rota_dbus::InstallerProxy::new(&conn).await.unwrap();
    (conn, proxy, stream)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn install_over_the_bus_reports_rauc_progress_then_completed_then_idle() {
    let d = device("dbus-install", "");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    let b = bundle("dbus-install", "Test Config");
    rt().block_on(async {
        let (_conn, proxy, mut stream) = connect(&bus).await;
        proxy.install_bundle(b.to_str().unwrap(), HashMap::new()).await.unwrap();
        let seen = signals_until_idle(&mut stream).await;
        assert_eq!(seen[0], Seen::Operation("installing".into()));
        assert_eq!(seen[1], Seen::LastError(String::new()));
        let tail: Vec<Seen> = seen[seen.len() - 3..].to_vec();
        assert_eq!(
            tail,
            [Seen::Progress(100, "Installing done.".into(), 1), Seen::Completed(0), Seen::Operation("idle".into())]
        );
        // The progress sequence of spec §6.9, intermediate copy percentages aside.
        let mut steps = Vec::new();
        let mut copying: Option<(String, i32)> = None;
        for s in &seen {
            let Seen::Progress(p, m, depth) = s else { continue };
            if let Some((text, last)) = &mut copying
                && m == text
            {
                assert!(*p > *last, "copy percentages rise: {seen:?}");
                *last = *p;
                continue;
            }
            copying = m.starts_with("Copying image to ").then(|| (m.clone(), *p)).filter(|_| !m.ends_with("done."));
            steps.push((*p, m.clone(), *depth));
        }
        let expected: Vec<(i32, String, i32)> = [
            (0, "Installing", 1),
            (0, "Determining slot states", 2),
            (10, "Determining slot states done.", 2),
            (10, "Checking bundle", 2),
            (10, "Verifying signature", 3),
            (20, "Verifying signature done.", 3),
            (20, "Checking bundle done.", 2),
            (20, "Checking manifest contents", 2),
            (30, "Checking manifest contents done.", 2),
            (30, "Determining target install group", 2),
            (40, "Determining target install group done.", 2),
            (40, "Updating slots", 2),
            (40, "Checking slot rootfs.1 (B)", 3),
            (43, "Checking slot rootfs.1 (B) done.", 3),
            (43, "Copying image to rootfs.1", 3),
            (70, "Copying image to rootfs.1 done.", 3),
            (70, "Checking slot appfs.1", 3),
            (73, "Checking slot appfs.1 done.", 3),
            (73, "Copying image to appfs.1", 3),
            (99, "Copying image to appfs.1 done.", 3),
            (99, "Updating slots done.", 2),
            (100, "Installing done.", 1),
        ]
        .into_iter()
        .map(|(p, m, d)| (p, m.to_string(), d))
        .collect();
        assert_eq!(steps, expected);
        assert_eq!(proxy.progress().await.unwrap(), (100, "Installing done.".to_string(), 1));
        assert_eq!(proxy.operation().await.unwrap(), "idle");
        assert_eq!(proxy.get_primary().await.unwrap(), "rootfs.1");
        let status = proxy.get_slot_status().await.unwrap();
        let (_, root1) = status.iter().find(|(n, _)| n == "rootfs.1").unwrap();
        assert_eq!(String::try_from(root1["status"].try_clone().unwrap()).unwrap(), "ok");
        assert_eq!(String::try_from(root1["bundle.version"].try_clone().unwrap()).unwrap(), "2024.08-1");
        assert_eq!(u32::try_from(&*root1["installed.count"]).unwrap(), 1);
        assert_eq!(u64::try_from(&*root1["size"]).unwrap(), 256 * 1024);
    });
    assert_eq!(primary(&d), "B");
}

#[test]
fn one_installation_at_a_time_while_reads_go_on() {
    // The pre-install handler holds the installation until the gate file exists.
    let d = device("dbus-busy", "pre-install=gate.sh\n");
    script(&d.path("gate.sh"), "while [ ! -e \"$GATE\" ]; do sleep 0.05; done\n");
    let gate = d.path("gate");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[("GATE", gate.to_str().unwrap())]);
    let b = bundle("dbus-busy", "Test Config");
    let b = b.to_str().unwrap();
    rt().block_on(async {
        let (_conn, proxy, mut stream) = connect(&bus).await;
        // Two calls at once: exactly one is accepted.
        let (r1, r2) = tokio::join!(proxy.install_bundle(b, HashMap::new()), proxy.install_bundle(b, HashMap::new()));
        let refused = match (r1, r2) {
            (Ok(()), Err(e)) | (Err(e), Ok(())) => e,
            other => panic!("exactly one install must start: {other:?}"),
        };
        let zbus::Error::MethodError(name, message, _) = refused else { panic!("{refused:?}") };
        assert_eq!(name.as_str(), rota_dbus::ERROR_NAME);
        assert_eq!(message.as_deref(), Some("Already processing a different method"));
        assert_eq!(proxy.operation().await.unwrap(), "installing");
        // Reads keep answering; marking is refused.
        assert_eq!(proxy.get_slot_status().await.unwrap().len(), 4);
        assert_eq!(proxy.get_primary().await.unwrap(), "rootfs.0");
        assert_eq!(proxy.info(b).await.unwrap().0, "Test Config");
        let e = proxy.mark("good", "booted").await.unwrap_err();
        assert!(e.to_string().contains("already processing a different method"), "{e}");
        fs::write(&gate, "").unwrap();
        let seen = signals_until_idle(&mut stream).await;
        assert!(seen.contains(&Seen::Completed(0)), "{seen:?}");
        assert_eq!(seen.iter().filter(|s| matches!(s, Seen::Completed(_))).count(), 1, "one install ran");
    });
    assert_eq!(primary(&d), "B");
}

#[test]
fn a_failed_installation_sets_last_error_until_the_next_starts() {
    let d = device("dbus-fail", "");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    let wrong = bundle("dbus-fail-wrong", "Other Config");
    let good = bundle("dbus-fail-good", "Test Config");
    rt().block_on(async {
        let (_conn, proxy, mut stream) = connect(&bus).await;
        proxy.install(wrong.to_str().unwrap()).await.unwrap();
        let seen = signals_until_idle(&mut stream).await;
        let error = "Compatible mismatch: Expected 'Test Config' but bundle manifest has 'Other Config'";
        let n = seen.len();
        assert_eq!(
            seen[n - 4..],
            [
                Seen::Progress(100, "Installing failed.".into(), 1),
                Seen::LastError(error.into()),
                Seen::Completed(1),
                Seen::Operation("idle".into())
            ]
        );
        assert_eq!(proxy.last_error().await.unwrap(), error);
        proxy.install_bundle(good.to_str().unwrap(), HashMap::new()).await.unwrap();
        let seen = signals_until_idle(&mut stream).await;
        assert_eq!(seen[1], Seen::LastError(String::new()), "reset when the next install starts");
        assert!(seen.contains(&Seen::Completed(0)));
        assert_eq!(proxy.last_error().await.unwrap(), "");
    });
    assert_eq!(primary(&d), "B");
}

#[test]
fn debian_rauc_client_talks_to_rota_service() {
    let d = device("dbus-rauc-client", "");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    let rauc = |args: &[&str]| {
        let mut c = testkit::peer_rauc();
        c.envs(bus.env()).args(args).current_dir(&d.dir);
        run(&mut c)
    };
    let status = rauc(&["status"]).ok().stdout;
    assert!(status.contains("Compatible:  Test Config"), "{status}");
    assert!(status.contains("Variant:     charger-x"), "{status}");
    assert!(status.contains("Booted from: rootfs.0 (A)"), "{status}");
    assert!(status.contains("Activated: rootfs.0 (A)"), "{status}");
    assert_eq!(rauc(&["status", "mark-good"]).ok().stdout.trim(), "rauc status: marked slot(s) rootfs.0 as good");
    let b = bundle("dbus-rauc-client", "Test Config");
    let install = rauc(&["install", b.to_str().unwrap()]).ok();
    assert!(install.stdout.contains("100% Installing done."), "{}", install.stdout);
    assert!(install.stdout.contains(&format!("Installing `{}` succeeded", b.display())), "{}", install.stdout);
    assert_eq!(primary(&d), "B");
    let json = rauc(&["status", "--detailed", "--output-format=json"]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["boot_primary"], "rootfs.1");
    let slots = v["slots"].as_array().unwrap();
    let root1 = slots.iter().find_map(|s| s.get("rootfs.1")).unwrap();
    assert_eq!(root1["slot_status"]["status"], "ok");
    assert_eq!(root1["slot_status"]["bundle"]["version"], "2024.08-1");
    let keyring = format!("--keyring={}", pki_file("keyring.pem").display());
    let info = rauc(&["info", &keyring, b.to_str().unwrap()]).ok().stdout;
    assert!(info.contains("Compatible: \t'Test Config'"), "{info}");
    let wrong = bundle("dbus-rauc-client-wrong", "Other Config");
    let failed = rauc(&["install", wrong.to_str().unwrap()]).fails();
    assert!(
        failed.stderr.contains("Compatible mismatch") || failed.stdout.contains("Compatible mismatch"),
        "{failed:?}"
    );
}

#[test]
fn the_cli_is_a_client_of_the_running_service() {
    let d = device("dbus-cli-client", "");
    let bus = Bus::start();
    let svc = Service::start(&d, &bus, &[]);
    let client = |args: &[&str]| {
        let mut c = d.rota();
        c.envs(bus.env()).args(args);
        run(&mut c)
    };
    let peer = |args: &[&str]| {
        let mut c = testkit::peer_rauc();
        c.envs(bus.env()).args(args).current_dir(&d.dir);
        run(&mut c)
    };
    // A refused install prints what Debian's rauc client prints, line by
    // line (rauc 1.8 sometimes also prints the final `idle`, racing its exit).
    let wrong = bundle("dbus-cli-client-wrong", "Other Config");
    let ours = client(&["install", wrong.to_str().unwrap()]).fails();
    let theirs = peer(&["install", wrong.to_str().unwrap()]).fails();
    assert_eq!(ours.stdout, theirs.stdout.strip_suffix("idle\n").unwrap_or(&theirs.stdout));
    assert_eq!(ours.stderr.trim_end(), theirs.stderr.trim_end());
    assert!(ours.stdout.starts_with("installing\n  0% Installing\n"), "{}", ours.stdout);
    assert!(ours.stdout.contains("LastError: Compatible mismatch"), "{}", ours.stdout);
    assert_eq!(ours.code, 1);
    // Direct-mode-only options are refused.
    let r = client(&["install", "--keyring=/x.pem", wrong.to_str().unwrap()]).fails();
    assert_eq!(r.stderr.trim(), "--keyring not supported when using the D-Bus service");

    let good = bundle("dbus-cli-client", "Test Config");
    let ours = client(&["install", good.to_str().unwrap()]).ok();
    assert!(ours.stdout.ends_with(&format!("100% Installing done.\nInstalling `{}` succeeded\n", good.display())));
    assert_eq!(primary(&d), "B");
    assert_eq!(client(&["status", "mark-good", "other"]).ok().stdout, "rota status: marked slot(s) rootfs.1 as good\n");
    let r = client(&["status", "mark-good", "rootfs.7"]).fails();
    assert_eq!(r.stderr.trim(), "rota status: No slot with class rootfs and name rootfs.7 found");

    // Status through the service equals status computed in this process.
    for format in ["readable", "shell", "json"] {
        let via_service = client(&["status", "--detailed", &format!("--output-format={format}")]).ok().stdout;
        let direct = d.run(&["status", "--detailed", &format!("--output-format={format}")]).ok().stdout;
        assert_eq!(via_service, direct, "{format}");
    }
    assert!(svc.stop().success());
    // Without the service, the same command runs in direct mode.
    let direct = client(&["status"]).ok().stdout;
    assert!(direct.contains("Booted from:    rootfs.0 (A)"), "{direct}");
}

fn detail_u64(d: &rota_dbus::Dict, k: &str) -> u64 {
    u64::try_from(&*d[k]).unwrap()
}

fn detail_str(d: &rota_dbus::Dict, k: &str) -> String {
    String::try_from(d[k].try_clone().unwrap()).unwrap()
}

#[test]
fn cancel_mid_copy_leaves_the_target_inactive_and_the_next_install_succeeds() {
    let d = device("dbus-cancel", "");
    for f in ["rootfs0.img", "rootfs1.img"] {
        d.slot_file(f, 20 << 20, 0xAA);
    }
    // Served over HTTP, the transfer of the image data stops at 10 MiB until released.
    let (b, image, server) = testkit::httpd::held_bundle("dbus-cancel", 16 << 20, (10 << 20, 12 << 20));
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    rt().block_on(async {
        let (conn, proxy, mut stream) = connect(&bus).await;
        let control = rota_dbus::ControlProxy::new(&conn).await.unwrap();
        let e = control.cancel().await.unwrap_err();
        assert!(e.to_string().contains("No installation running"), "{e}");
        proxy.install_bundle(&server.url("/b.raucb"), HashMap::new()).await.unwrap();
        // Wait until the copy has written some bytes and stalls at the hold.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let details = loop {
            let details = control.details().await.unwrap();
            if detail_str(&details, "phase") == "writing" && detail_u64(&details, "bytes-done") > 0 {
                break details;
            }
            assert!(std::time::Instant::now() < deadline, "copy never started: {details:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(detail_str(&details, "slot"), "rootfs.1");
        assert_eq!(detail_u64(&details, "bytes-total"), 16 << 20);
        assert!(detail_u64(&details, "bytes-done") < 16 << 20, "{details:?}");
        assert_eq!(detail_str(&details, "operation"), "installing");
        control.cancel().await.unwrap();
        server.release();
        let seen = signals_until_idle(&mut stream).await;
        assert!(seen.contains(&Seen::Completed(1)), "{seen:?}");
        let error = proxy.last_error().await.unwrap();
        assert!(error.ends_with("Installation cancelled"), "{error}");
        assert_eq!(detail_str(&control.details().await.unwrap(), "phase"), "idle");
        let status = proxy.get_slot_status().await.unwrap();
        let (_, root1) = status.iter().find(|(n, _)| n == "rootfs.1").unwrap();
        assert_eq!(String::try_from(root1["status"].try_clone().unwrap()).unwrap(), "failed");
        assert_eq!(String::try_from(root1["state"].try_clone().unwrap()).unwrap(), "inactive");
    });
    assert_eq!(primary(&d), "A", "nothing activated");
    // The next install succeeds.
    rt().block_on(async {
        let (_conn, proxy, mut stream) = connect(&bus).await;
        proxy.install_bundle(b.to_str().unwrap(), HashMap::new()).await.unwrap();
        assert!(signals_until_idle(&mut stream).await.contains(&Seen::Completed(0)));
    });
    assert_eq!(primary(&d), "B");
    assert_eq!(&fs::read(d.path("rootfs1.img")).unwrap()[..image.len()], &image[..]);
}

#[test]
fn cancel_ends_an_install_waiting_for_a_silent_server() {
    let d = device("dbus-cancel-silent", "");
    // The server answers nothing for the image's second MiB, and never will.
    let (_, _, server) = testkit::httpd::held_bundle("dbus-cancel-silent", 4 << 20, (1 << 20, 2 << 20));
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    rt().block_on(async {
        let (conn, proxy, mut stream) = connect(&bus).await;
        let control = rota_dbus::ControlProxy::new(&conn).await.unwrap();
        proxy.install_bundle(&server.url("/b.raucb"), HashMap::new()).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // Writing, and waiting for the held range.
        while detail_str(&control.details().await.unwrap(), "phase") != "writing" {
            assert!(std::time::Instant::now() < deadline, "the copy never started");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        server.wait_for_range(1 << 20, 2 << 20);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        control.cancel().await.unwrap();
        let seen = tokio::time::timeout(std::time::Duration::from_secs(20), signals_until_idle(&mut stream))
            .await
            .expect("Cancel did not end an installation waiting for the server");
        assert!(seen.contains(&Seen::Completed(1)), "{seen:?}");
        let error = proxy.last_error().await.unwrap();
        assert!(error.ends_with("Installation cancelled"), "{error}");
    });
    assert_eq!(primary(&d), "A", "nothing activated");
}

#[test]
fn the_client_heeds_only_its_service_and_stops_waiting_when_it_dies() {
    let d = device("dbus-client-impostor", "");
    let (_, _, server) = testkit::httpd::held_bundle("dbus-client-impostor", 4 << 20, (1 << 20, 2 << 20));
    let bus = Bus::start();
    let mut svc = Service::start(&d, &bus, &[]);
    let mut client = d.rota();
    client.envs(bus.env()).arg("install").arg(server.url("/b.raucb"));
    client.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = client.spawn().unwrap();
    server.wait_for_range(1 << 20, 2 << 20);
    // Another connection sends what the service would: the client waits on.
    for signal in [&["Completed", "i", "0"][..], &["Completed", "i", "1"]] {
        let mut emit = vec!["emit", "/", "de.pengutronix.rauc.Installer"];
        emit.extend(signal);
        run(&mut bus.busctl(&emit)).ok();
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(child.try_wait().unwrap().is_none(), "the client took another sender's Completed");
    // The service dies: the client says so instead of waiting for ever.
    svc.signal(libc::SIGKILL);
    let started = std::time::Instant::now();
    let out = loop {
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the client still waits for a dead service");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!svc.running());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("The service stopped during the installation"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("succeeded"));
}

/// `rota install <location>` through the service on `bus`, started in the background.
fn client_install(d: &Device, bus: &Bus, location: &str) -> std::process::Child {
    let mut client = d.rota();
    client.envs(bus.env()).arg("install").arg(location);
    client.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    client.spawn().unwrap()
}

/// Waits (up to `secs`) for `child` to end; its output.
fn finished(child: std::process::Child, secs: u64) -> std::process::Output {
    let mut child = child;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "still running after {secs} s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn sigterm_cancels_a_running_install_and_the_service_ends_after_its_completed() {
    let d = device("dbus-sigterm", "");
    let (_, _, server) = testkit::httpd::held_bundle("dbus-sigterm", 4 << 20, (1 << 20, 2 << 20));
    let bus = Bus::start();
    let mut svc = Service::start(&d, &bus, &[]);
    let client = client_install(&d, &bus, &server.url("/b.raucb"));
    server.wait_for_range(1 << 20, 2 << 20);
    svc.signal(libc::SIGTERM);
    // The client hears the installation's end from the service (exit 1, not
    // 2 for a service that vanished), and the service then ends with 0.
    let out = finished(client, 30);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("Installation cancelled"), "{text}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while svc.running() {
        assert!(std::time::Instant::now() < deadline, "the service did not end");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(svc.wait().success());
    assert_eq!(primary(&d), "A", "nothing activated");
    let log = fs::read_to_string(d.path("service.log")).unwrap();
    assert!(log.contains("Stopping: the running installation is cancelled"), "{log}");
}

#[test]
fn sigterm_lets_an_install_past_its_point_of_no_return_finish() {
    let d = device("dbus-sigterm-late", "post-install=slow.sh\n");
    let started = d.path("post-install-started");
    script(&d.path("slow.sh"), &format!("touch {}\nsleep 2\n", started.display()));
    let b = bundle("dbus-sigterm-late", "Test Config");
    let bus = Bus::start();
    let mut svc = Service::start(&d, &bus, &[]);
    let client = client_install(&d, &bus, b.to_str().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !started.exists() {
        assert!(std::time::Instant::now() < deadline, "the post-install handler never ran");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    svc.signal(libc::SIGTERM);
    let out = finished(client, 30);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    while svc.running() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(svc.wait().success());
    assert_eq!(primary(&d), "B", "the activated update stands");
}

#[test]
fn cancel_is_refused_while_the_bundles_own_handler_installs() {
    let d = device("dbus-cancel-handler", "");
    let dir = target_dir().join("test-bundles").join("dbus-cancel-handler");
    let _ = fs::remove_dir_all(&dir);
    let c = Content::standard(dir.join("content"), "verity");
    let started = d.path("handler-started");
    script(&c.dir.join("handler.sh"), &format!("touch {}\nsleep 2\n", started.display()));
    let manifest = fs::read_to_string(c.dir.join("manifest.raucm")).unwrap();
    c.manifest(&format!("{manifest}\n[handler]\nfilename=handler.sh\n"));
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    rt().block_on(async {
        let (conn, proxy, mut stream) = connect(&bus).await;
        let control = rota_dbus::ControlProxy::new(&conn).await.unwrap();
        proxy.install_bundle(b.to_str().unwrap(), HashMap::new()).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !started.exists() {
            assert!(std::time::Instant::now() < deadline, "the handler never ran");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let e = control.cancel().await.unwrap_err().to_string();
        assert!(e.contains("Cannot cancel: the bundle's update handler is installing it"), "{e}");
        let seen = signals_until_idle(&mut stream).await;
        assert!(seen.contains(&Seen::Completed(0)), "the handler's installation ends as it ends: {seen:?}");
    });
}

#[test]
fn a_linked_grub_environment_is_changed_where_the_link_leads() {
    // The environment GRUB reads lives on another partition; the configured path links to it.
    let d = device("dbus-grubenv-link", "");
    fs::create_dir_all(d.path("efi")).unwrap();
    fs::rename(d.path("grubenv"), d.path("efi/grubenv")).unwrap();
    std::os::unix::fs::symlink("efi/grubenv", d.path("grubenv")).unwrap();
    let b = bundle("dbus-grubenv-link", "Test Config");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    let out = finished(client_install(&d, &bus, b.to_str().unwrap()), 60);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(fs::symlink_metadata(d.path("grubenv")).unwrap().file_type().is_symlink(), "the link was replaced");
    let order = grubenv(&d.path("efi/grubenv")).into_iter().find(|l| l.starts_with("ORDER=")).unwrap();
    assert_eq!(order, "ORDER=B A", "the file GRUB reads");
    // Marking goes the same way.
    run(&mut bus.busctl(&[
        "call",
        "de.pengutronix.rauc",
        "/",
        "de.pengutronix.rauc.Installer",
        "Mark",
        "ss",
        "active",
        "booted",
    ]))
    .ok();
    assert!(grubenv(&d.path("efi/grubenv")).contains(&"ORDER=A B".to_string()));
}

#[test]
fn a_process_left_inside_the_bundle_view_does_not_block_the_next_install() {
    // The pre-install handler leaves a process behind in the bundle view.
    let d = device("dbus-busy-view", "pre-install=linger.sh\n");
    let pid = d.path("lingering.pid");
    script(
        &d.path("linger.sh"),
        &format!(
            "setsid sh -c 'cd \"$RAUC_BUNDLE_MOUNT_POINT\" && exec sleep 60' </dev/null >/dev/null 2>&1 &\necho $! >> {}\n",
            pid.display()
        ),
    );
    let b = bundle("dbus-busy-view", "Test Config");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    for round in 0..2 {
        let out = finished(client_install(&d, &bus, b.to_str().unwrap()), 60);
        assert_eq!(out.status.code(), Some(0), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let log = fs::read_to_string(d.path("service.log")).unwrap();
    assert!(log.contains("is still in use by a process: detached"), "{log}");
    assert!(!testkit::mounted_below(&d.path("mnt")), "the views are detached from the namespace");
    for p in fs::read_to_string(&pid).unwrap().split_whitespace() {
        run(Command::new("kill").arg(p)).ok();
    }
}

/// The anonymous memory the process `pid` holds, in KiB.
fn rss_anon_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_service_gives_its_memory_back_after_an_installation() {
    let d = device("dbus-memory", "pre-install=pre.sh\n");
    script(&d.path("pre.sh"), "ls \"$RAUC_BUNDLE_MOUNT_POINT\" >/dev/null\n");
    for f in ["rootfs0.img", "rootfs1.img"] {
        d.slot_file(f, 20 << 20, 0xAA);
    }
    let (b, _, server) = testkit::httpd::held_bundle("dbus-memory", 8 << 20, (u64::MAX, u64::MAX));
    let bus = Bus::start();
    let svc = Service::start(&d, &bus, &[]);
    let idle = rss_anon_kib(svc.pid());
    // A local install (through the bundle view) and a streamed one.
    for location in [b.to_str().unwrap().to_string(), server.url("/b.raucb")] {
        let out = finished(client_install(&d, &bus, &location), 60);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let after = rss_anon_kib(svc.pid());
    assert!(after < idle + 8 * 1024, "{after} KiB of anonymous memory after two installations, {idle} KiB idle");
}

#[test]
fn bus_addresses_are_read_as_libdbus_reads_them() {
    // As `dbus-daemon --print-address` writes it (a newline at the end), after
    // an alternative that does not answer.
    let d = device("dbus-address", "");
    let bus = Bus::start();
    let address = format!("unix:path=/nonexistent/bus;{}\n", bus.address);
    let env = [("DBUS_SESSION_BUS_ADDRESS", address.as_str())];
    let _svc = Service::start(&d, &bus, &env);
    // No configuration here: only the service can answer.
    let mut status = testkit::rota();
    status.envs(bus.env()).envs(env).args(["status", "--output-format=json"]);
    let out = run(&mut status).ok();
    assert!(out.stdout.contains("\"booted\":\"A\""), "{}", out.stdout);
}

#[test]
fn python_dasbus_client() {
    let d = device("dbus-dasbus", "");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    let good = bundle("dbus-dasbus-good", "Test Config");
    let wrong = bundle("dbus-dasbus-wrong", "Other Config");
    let r = run(Command::new("/usr/bin/python3")
        .arg(workspace().join("tests/dbus/dasbus_client.py"))
        .arg(&bus.address)
        .arg(&good)
        .arg(&wrong))
    .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["properties"],
        serde_json::json!({"Operation": "idle", "LastError": "", "Progress": [0, "", 0], "Compatible": "Test Config",
                           "Variant": "charger-x", "SystemVersion": "2026.11", "BootSlot": "A"})
    );
    assert_eq!(v["primary"], "rootfs.0");
    assert_eq!(v["slots"][2][0], "rootfs.0");
    assert_eq!(v["slots"][2][1]["state"], "booted");
    assert_eq!(v["artifacts"], serde_json::json!([]));
    assert_eq!(v["info"], serde_json::json!(["Test Config", "2024.08-1"]));
    assert_eq!(v["inspect"]["update"]["version"], "2024.08-1");
    assert_eq!(v["inspect"]["images"][1]["slot-class"], "appfs");
    assert_eq!(v["mark"], serde_json::json!(["rootfs.0", "marked slot(s) rootfs.0 as good"]));
    assert!(v["mark_error"].as_str().unwrap().contains("unknown slot state 'weird'"), "{}", v["mark_error"]);
    assert_eq!(v["install_wrong"]["completed"], 1);
    assert!(v["install_wrong"]["last_error"].as_str().unwrap().starts_with("Compatible mismatch"));
    assert_eq!(v["install_good"]["completed"], 0);
    let progress = v["install_good"]["progress"].as_array().unwrap();
    assert_eq!(progress.first().unwrap(), &serde_json::json!([0, "Installing", 1]));
    assert_eq!(progress.last().unwrap(), &serde_json::json!([100, "Installing done.", 1]));
    assert_eq!(v["primary_after"], "rootfs.1");
}

#[test]
fn install_bundle_arguments_reach_the_http_requests() {
    let d = device("dbus-args", "");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    let b = bundle("dbus-args", "Other Config");
    let server = testkit::httpd::Server::start();
    server.put("/b.raucb", fs::read(&b).unwrap());
    rt().block_on(async {
        let (_conn, proxy, mut stream) = connect(&bus).await;
        let headers = zbus::Variant::from(vec!["X-Fleet: charger-7", "Authorization: Bearer t0k3n"]);
        let mut args = HashMap::new();
        args.insert("http-headers", headers.try_clone().unwrap());
        let info = proxy.inspect_bundle(&server.url("/b.raucb"), args.clone()).await.unwrap();
        assert_eq!(String::try_from(info["manifest-hash"].try_clone().unwrap()).unwrap().len(), 64);
        // The bundle's compatible is wrong: ignore-compatible lets it in.
        args.insert("ignore-compatible", true.into());
        args.insert("transaction-id", "0f0e0d0c-0b0a-4908-8706-050403020100".into());
        proxy.install_bundle(&server.url("/b.raucb"), args).await.unwrap();
        let seen = signals_until_idle(&mut stream).await;
        assert!(seen.contains(&Seen::Completed(0)), "{seen:?}");
        let status = proxy.get_slot_status().await.unwrap();
        let (_, root1) = status.iter().find(|(n, _)| n == "rootfs.1").unwrap();
        assert_eq!(
            String::try_from(root1["installed.transaction"].try_clone().unwrap()).unwrap(),
            "0f0e0d0c-0b0a-4908-8706-050403020100"
        );
    });
    let requests = server.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r.header("x-fleet"), Some("charger-7"), "{r:?}");
        assert_eq!(r.header("authorization"), Some("Bearer t0k3n"), "{r:?}");
    }
    assert_eq!(primary(&d), "B");
}

#[test]
fn info_through_the_service_renders_what_a_local_info_renders() {
    let d = device("dbus-info", "");
    let bus = Bus::start();
    let svc = Service::start(&d, &bus, &[]);
    let b = bundle("dbus-info", "Test Config");
    let b = b.to_str().unwrap();
    // No configuration and no keyring on this side: only the service can verify.
    let via_service = |args: &[&str]| {
        let mut c = testkit::rota();
        c.envs(bus.env()).arg("info").args(args).arg(b).current_dir(&d.dir);
        run(&mut c)
    };
    let keyring = format!("--keyring={}", pki_file("keyring.pem").display());
    for format in ["readable", "shell", "json", "json-pretty", "json-2"] {
        let fmt = format!("--output-format={format}");
        let ours = via_service(&[&fmt]).ok().stdout;
        let local = run(testkit::rota().args(["info", &keyring, &fmt, b])).ok().stdout;
        assert_eq!(ours, local, "{format}");
    }
    let ours = via_service(&["--dump-cert"]).ok().stdout;
    assert!(ours.contains("Certificate Chain:"), "{ours}");
    assert_eq!(ours, run(testkit::rota().args(["info", &keyring, "--dump-cert", b])).ok().stdout);
    // A bundle the service's keyring does not trust is refused by the service.
    let dir = target_dir().join("test-bundles").join("dbus-info-untrusted");
    let _ = fs::remove_dir_all(&dir);
    let c = Content::standard(dir.join("content"), "verity");
    let untrusted = dir.join("b.raucb");
    rota_bundle(&c.dir, &untrusted, "other").ok();
    let mut cmd = testkit::rota();
    cmd.envs(bus.env()).arg("info").arg(&untrusted);
    let r = run(&mut cmd).fails();
    assert!(r.stderr.contains("signature verification failed"), "{}", r.stderr);
    // Without the service the same command verifies locally (and has no keyring here).
    assert!(svc.stop().success());
    let r = via_service(&[]).fails();
    assert!(!r.stderr.is_empty());
}

#[test]
fn ctrl_c_detaches_the_client_and_the_installation_goes_on() {
    let d = device("dbus-ctrl-c", "pre-install=gate.sh\n");
    script(&d.path("gate.sh"), "while [ ! -e \"$GATE\" ]; do sleep 0.05; done\n");
    let gate = d.path("gate");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[("GATE", gate.to_str().unwrap())]);
    let b = bundle("dbus-ctrl-c", "Test Config");
    let client = d
        .rota()
        .envs(bus.env())
        .arg("install")
        .arg(&b)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let wait_for = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while property(&bus, "Operation") != format!("s \"{what}\"") {
            assert!(std::time::Instant::now() < deadline, "Operation never became {what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    wait_for("installing");
    // Once the client printed the operation, it is in its loop and handles SIGINT.
    let mut client = client;
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert_eq!(first, "installing\n");
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(client.id() as i32, libc::SIGINT) };
    let out = client.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the installation continues in the service"), "{out:?}");
    assert_eq!(property(&bus, "Operation"), "s \"installing\"");
    fs::write(&gate, "").unwrap();
    wait_for("idle");
    assert_eq!(property(&bus, "LastError"), "s \"\"");
    assert_eq!(primary(&d), "B");
}

#[test]
fn a_stalled_remote_inspect_holds_up_no_installation() {
    let d = device("dbus-stalled-inspect", "");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    let b = bundle("dbus-stalled-inspect", "Test Config");
    // The same bundle served over HTTP, every byte held back until released.
    let server = testkit::httpd::Server::start();
    let len = fs::metadata(&b).unwrap().len();
    server.put("/b.raucb", fs::read(&b).unwrap());
    server.hold(0, len);
    rt().block_on(async {
        let (conn, proxy, mut stream) = connect(&bus).await;
        let url = server.url("/b.raucb");
        let inspecting = proxy.inspect_bundle(&url, HashMap::new());
        let installing = async {
            // Let the inspection reach the server first.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while server.requests().is_empty() {
                assert!(std::time::Instant::now() < deadline, "the inspection never asked the server");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let install = async {
                proxy.install_bundle(b.to_str().unwrap(), HashMap::new()).await.unwrap();
                signals_until_idle(&mut stream).await
            };
            let limit = std::time::Duration::from_secs(120);
            let Ok(seen) = tokio::time::timeout(limit, install).await else {
                server.release();
                panic!("the installation was held up by the stalled inspection");
            };
            // Progress, Completed and idle all arrived while the inspection still waits.
            assert!(seen.contains(&Seen::Progress(100, "Installing done.".into(), 1)), "{seen:?}");
            assert!(seen.contains(&Seen::Completed(0)), "{seen:?}");
            let control = rota_dbus::ControlProxy::new(&conn).await.unwrap();
            assert_eq!(detail_str(&control.details().await.unwrap(), "phase"), "idle");
            server.release();
        };
        let (info, ()) = tokio::join!(inspecting, installing);
        let info = info.unwrap();
        assert!(info.contains_key("manifest-hash"), "{:?}", info.keys().collect::<Vec<_>>());
    });
    assert_eq!(primary(&d), "B");
}
