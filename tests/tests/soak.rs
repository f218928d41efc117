//! Soak (RELIABILITY.md, campaign "soak"): consecutive installations
//! through D-Bus into alternating slots — plain, verity, crypt, adaptive and
//! tree bundles, local and streamed from an HTTP server — about one in five
//! cancelled at a random moment and one in twenty ended by SIGKILL of the
//! service, which is then started again. Every so many installations, and
//! after every kill, the device "reboots" into the slot the bootloader
//! selects.
//!
//! After each installation: the outcome agrees with `GetPrimary`,
//! `GetSlotStatus` and the slot itself (a selected slot holds the complete
//! image of the bundle that last succeeded into it; a failed or cancelled
//! one is not selected), and the booted slot is bit-identical. Per service
//! process: its open file descriptors do not grow and its resident memory
//! stays flat (figures printed). At every reboot and at the end: no mount,
//! loop device or FUSE session is left below the device, and the service's
//! temporary directory is empty.
//!
//! `ROTA_SOAK_INSTALLS` sets the number of installations (40 in CI; the
//! campaign runs 1 000), `ROTA_SOAK_SEED` the seed (printed),
//! `ROTA_SOAK_REBOOT_EVERY`, `ROTA_SOAK_CANCEL_PERCENT` and
//! `ROTA_SOAK_KILL_PERCENT` the reboots, cancels and kills.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;
use testkit::bus::{Bus, Client, Service};
use testkit::device::{Device, grubenv};
use testkit::httpd::Server;
use testkit::trees::ext4;
use testkit::{Content, Rng, pki_file, pseudo_random, rota, rota_bundle, run, sha256_hex, target_dir};
use zbus::{OwnedVariant, Variant};

const RAUC: &str = "de.pengutronix.rauc.Installer";
const ROTA: &str = "dev.rota.Installer1";
const IMAGE: usize = 1 << 20;

/// Slots: raw root filesystems A/B and ext4 application slots below them.
fn device() -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\nmountprefix=mnt\n\
         [keyring]\npath={}\n[encryption]\nkey={}\n[streaming]\nretry-pause-ms=10\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n\
         [slot.appfs.0]\ndevice=appfs0.img\ntype=ext4\nparent=rootfs.0\n\
         [slot.appfs.1]\ndevice=appfs1.img\ntype=ext4\nparent=rootfs.1\n",
        pki_file("keyring.pem").display(),
        pki_file("rsa-recipient.key").display()
    );
    let d = Device::new(target_dir().join("test-devices/soak"), &conf);
    d.grub_env(&["A", "B"]);
    for f in ["rootfs0.img", "rootfs1.img"] {
        d.slot_file(f, 2 * IMAGE, 0xAA);
    }
    for f in ["appfs0.img", "appfs1.img"] {
        ext4(&d.path(f), None, 16);
    }
    fs::create_dir_all(d.path("tmp")).unwrap();
    d
}

/// One bundle of the soak: its file, its root image, and its kind.
struct Bundle {
    kind: &'static str,
    path: PathBuf,
    root: Vec<u8>,
    /// Where the HTTP server serves it (plain bundles are downloaded to the
    /// service's temporary directory first, the others streamed).
    url: String,
}

/// Two versions of each kind, so that consecutive installations change the
/// slot.
fn bundles(server: &Server) -> Vec<Bundle> {
    let dir = target_dir().join("test-bundles/soak");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut out = Vec::new();
    for (kind, format, image_keys) in [
        ("plain", "plain", ""),
        ("verity", "verity", ""),
        ("crypt", "crypt", ""),
        ("adaptive", "verity", "adaptive=block-hash-index\n"),
        ("tree", "verity", ""),
    ] {
        for version in 1..=2u64 {
            let name = format!("{kind}-{version}");
            let c = Content::new(dir.join(format!("{name}.content")));
            let mut root = pseudo_random(IMAGE, version);
            // Each kind differs a little from the others, adaptive ones only in part.
            root[..kind.len()].copy_from_slice(kind.as_bytes());
            fs::write(c.dir.join("rootfs.img"), &root).unwrap();
            let mut manifest = format!(
                "[update]\ncompatible=Test Config\nversion={version}\n[bundle]\nformat={format}\n\
                 [image.rootfs]\nfilename=rootfs.img\n{image_keys}"
            );
            if kind == "tree" {
                let tree = c.dir.join("appfs.tree");
                fs::create_dir_all(tree.join("etc")).unwrap();
                fs::write(tree.join("etc/release"), format!("soak {version}\n")).unwrap();
                fs::write(tree.join("data.bin"), pseudo_random(200 * 1024, 10 + version)).unwrap();
                manifest.push_str("[image.appfs]\nfilename=appfs.tree\n");
            }
            c.manifest(&manifest);
            let path = dir.join(format!("{name}.raucb"));
            if format == "crypt" {
                let signed = dir.join(format!("{name}.signed.raucb"));
                rota_bundle(&c.dir, &signed, "release").ok();
                let to = format!("--to={}", pki_file("rsa-recipient.pem").display());
                run(rota().arg("encrypt").arg(to).arg(&signed).arg(&path)).ok();
            } else {
                rota_bundle(&c.dir, &path, "release").ok();
            }
            server.put(&format!("/{name}.raucb"), fs::read(&path).unwrap());
            let url = server.url(&format!("/{name}.raucb"));
            out.push(Bundle { kind, path, root, url });
        }
    }
    out
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What is left below the device that should not be: mounts (FUSE ones
/// included) and loop devices on its files.
fn leftovers(d: &Device) -> Vec<String> {
    let mut left: Vec<String> = testkit::mounts_below(&d.dir).into_iter().map(|m| format!("mount: {m}")).collect();
    left.extend(testkit::loops_below(&d.dir).into_iter().map(|l| format!("loop: {l}")));
    if let Ok(entries) = fs::read_dir(d.path("tmp")) {
        left.extend(entries.flatten().map(|e| format!("temporary file: {}", e.path().display())));
    }
    left
}

/// Every call of the soak is answered within this.
const ANSWER: Duration = Duration::from_secs(30);

async fn connect(bus: &Bus) -> Client {
    Client::connect(bus, ANSWER).await
}

/// Waits until no installation runs; its `LastError`.
async fn idle(c: &Client) -> String {
    c.idle(Duration::from_secs(120), "soak").await
}

async fn primary(c: &Client) -> String {
    c.call(RAUC, "GetPrimary", &(), "GetPrimary").await.unwrap().body().deserialize::<String>().unwrap()
}

async fn slot_status(c: &Client) -> HashMap<String, HashMap<String, OwnedVariant>> {
    let msg = c.call(RAUC, "GetSlotStatus", &(), "GetSlotStatus").await.unwrap();
    msg.body().deserialize::<Vec<(String, HashMap<String, OwnedVariant>)>>().unwrap().into_iter().collect()
}

fn text(dict: &HashMap<String, OwnedVariant>, key: &str) -> String {
    dict.get(key).map(|v| String::try_from(v.try_clone().unwrap()).unwrap_or_default()).unwrap_or_default()
}

/// The slot letter and index of a bootname.
fn index_of(bootname: &str) -> usize {
    if bootname == "A" { 0 } else { 1 }
}

/// How one installation ended.
#[derive(Debug, PartialEq)]
enum Ending {
    Succeeded,
    Failed,
    Killed,
}

#[test]
fn soak_installs_through_the_bus_stay_consistent_and_leak_nothing() {
    let installs: usize = std::env::var("ROTA_SOAK_INSTALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let seed: u64 = std::env::var("ROTA_SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x50a4_2026);
    // Installations between reboots: 25, or more to watch one service
    // process longer.
    let reboot_every: usize = std::env::var("ROTA_SOAK_REBOOT_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(25);
    // Percentages of installations cancelled and killed (20 and 5; 0 and 0
    // to watch one service process over many installations).
    let percent = |k: &str, default: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (cancel_pct, kill_pct) = (percent("ROTA_SOAK_CANCEL_PERCENT", 20), percent("ROTA_SOAK_KILL_PERCENT", 5));
    eprintln!(
        "soak: {installs} installations, a reboot every {reboot_every}, {cancel_pct} % cancelled, {kill_pct} % killed, seed {seed}"
    );
    let d = device();
    let server = Server::start();
    let bundles = bundles(&server);
    let bus = Bus::start();
    let mut rng = Rng::new(seed);
    let mut booted = "A";
    d.boot("rauc.slot=A");
    let tmp = d.path("tmp");
    let env = [("TMPDIR", tmp.to_str().unwrap())];
    let mut svc = Service::start(&d, &bus, &env);
    // What each slot must hold when selected: the root image of the last
    // bundle that succeeded into it.
    let mut holds: [Option<usize>; 2] = [None, None];
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    // Per service process: (installs, fds and RSS after its first install, last).
    let mut segment: Option<(usize, usize, u64)> = None;
    let mut figures = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for n in 0..installs {
        let b = &bundles[rng.below(bundles.len() as u64) as usize];
        let streamed = rng.below(2) == 0;
        let source = if streamed { b.url.clone() } else { b.path.display().to_string() };
        let roll = rng.below(100);
        let (cancel, kill) = (roll < cancel_pct, (cancel_pct..cancel_pct + kill_pct).contains(&roll));
        let delay = Duration::from_millis(rng.below(400));
        let target = 1 - index_of(booted);
        let booted_digest = sha256_hex(&fs::read(d.path(&format!("rootfs{}.img", index_of(booted)))).unwrap());
        *kinds.entry(format!("{} {}", b.kind, if streamed { "streamed" } else { "local" })).or_default() += 1;
        let case = format!("install {n}: {} {} ({source})", b.kind, if streamed { "streamed" } else { "local" });

        let ending = rt.block_on(async {
            let c = connect(&bus).await;
            let none = HashMap::<&str, Variant<'_>>::new();
            if let Err(e) = c.call(RAUC, "InstallBundle", &(source.as_str(), none), &case).await {
                panic!("{case}: refused: {e}");
            }
            if cancel || kill {
                tokio::time::sleep(delay).await;
            }
            if cancel {
                // Refused when it already ended or is activating: fine.
                let _ = c.call(ROTA, "Cancel", &(), &case).await;
            }
            if kill {
                svc.signal(libc::SIGKILL);
                return Ending::Killed;
            }
            if idle(&c).await.is_empty() { Ending::Succeeded } else { Ending::Failed }
        });
        *counts
            .entry(match (&ending, cancel) {
                (Ending::Killed, _) => "killed",
                (Ending::Succeeded, _) => "succeeded",
                (Ending::Failed, true) => "cancelled",
                (Ending::Failed, false) => "failed",
            })
            .or_default() += 1;
        if ending == Ending::Killed {
            let killed = std::mem::replace(&mut svc, Service::start(&d, &bus, &env));
            let _ = killed.wait();
            // The next process is another segment.
            if let Some((from, fds, rss)) = segment.take() {
                figures.push((from, n, fds, rss, None));
            }
        }
        if ending == Ending::Failed && !cancel {
            panic!("{case}: failed: {}", rt.block_on(async { connect(&bus).await.text("LastError").await }));
        }

        // The outcome against what the service and the slots say.
        rt.block_on(async {
            let c = connect(&bus).await;
            let primary = primary(&c).await;
            let status = slot_status(&c).await;
            let target_name = format!("rootfs.{target}");
            if ending == Ending::Succeeded {
                assert_eq!(primary, target_name, "{case}: succeeded, but the primary is {primary}");
                assert_eq!(text(&status[&target_name], "status"), "ok", "{case}");
            }
            if primary == target_name {
                // Selected: it holds this bundle's image (it succeeded, or a
                // kill came just after it did) or, when this installation
                // never touched it, the one before — whole, either way.
                let got = sha256_hex(&fs::read(d.path(&format!("rootfs{target}.img"))).unwrap()[..IMAGE]);
                let this = bundles.iter().position(|x| std::ptr::eq(x, b)).unwrap();
                let whole = |i: Option<usize>| i.is_some_and(|i| sha256_hex(&bundles[i].root) == got);
                holds[target] = match ending {
                    Ending::Succeeded => Some(this).filter(|_| whole(Some(this))),
                    Ending::Killed if whole(Some(this)) => Some(this),
                    _ => holds[target].filter(|_| whole(holds[target])),
                };
                assert!(holds[target].is_some(), "{case}: the selected slot {target_name} is not whole");
            } else {
                assert_eq!(primary, format!("rootfs.{}", index_of(booted)), "{case}");
                holds[target] = None;
            }
        });
        let now = sha256_hex(&fs::read(d.path(&format!("rootfs{}.img", index_of(booted)))).unwrap());
        assert_eq!(now, booted_digest, "{case}: the booted slot changed");

        // Resources of this service process.
        let pid = svc.pid();
        match segment {
            // A process started after a kill is measured from its first installation.
            None if ending == Ending::Killed => {}
            None => segment = Some((n, svc.settled_fds(), rss_kib(pid))),
            Some((_, fds, _)) if n % 10 == 9 => {
                let now = svc.settled_fds();
                assert!(now <= fds, "{case}: the service holds {now} files open, {fds} after its first installation");
            }
            _ => {}
        }

        // A reboot every `reboot_every` installations and after a kill:
        // into the slot the bootloader selects.
        if n % reboot_every == reboot_every - 1 || ending == Ending::Killed {
            let selected = grubenv(&d.path("grubenv"))
                .iter()
                .find_map(|l| l.strip_prefix("ORDER=").map(|o| o.split(' ').next().unwrap().to_string()))
                .unwrap();
            if let Some((from, fds, rss)) = segment.take() {
                figures.push((from, n, fds, rss, Some((svc.settled_fds(), rss_kib(svc.pid())))));
            }
            assert!(svc.stop().success(), "install {n}: SIGTERM ends the service");
            let left = leftovers(&d);
            assert!(left.is_empty(), "install {n}: left behind: {left:#?}");
            booted = if selected == "A" { "A" } else { "B" };
            // The new boot: good, and its slot selected.
            d.grub_env(if booted == "A" { &["A", "B"] } else { &["B", "A"] });
            d.boot(&format!("rauc.slot={booted}"));
            svc = Service::start(&d, &bus, &env);
        }
    }
    if let Some((from, fds, rss)) = segment.take() {
        figures.push((from, installs - 1, fds, rss, Some((svc.settled_fds(), rss_kib(svc.pid())))));
    }
    assert!(svc.stop().success());
    let left = leftovers(&d);
    assert!(left.is_empty(), "left behind: {left:#?}");
    let log = fs::read_to_string(d.path("service.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
    eprintln!("soak outcomes: {counts:?}");
    eprintln!("soak bundles: {kinds:?}");
    let mut growth = Vec::new();
    for (from, to, fds, rss, end) in &figures {
        if let Some((end_fds, end_rss)) = end {
            eprintln!("soak process of installs {from}..={to}: fds {fds} -> {end_fds}, RSS {} -> {} KiB", rss, end_rss);
            growth.push(*end_rss as i64 - *rss as i64);
        }
    }
    // Resident memory stays flat: no process grew by more than 16 MiB over
    // its installations (a leak of a few KiB per installation would show in
    // the campaign's long segments; the figures are printed for the record).
    for g in &growth {
        assert!(*g < 16 * 1024, "a service process grew by {g} KiB: {figures:?}");
    }
    assert!(counts.get("succeeded").copied().unwrap_or(0) > 0);
}
