//! Hostile callers (RELIABILITY.md, campaign "hostile callers"): every
//! method of `de.pengutronix.rauc.Installer` and `dev.rota.Installer1`, and
//! the properties interface, called with wrong signatures, wrong types and
//! unknown keys in `a{sv}`, 1 MiB strings, paths that are not bundles
//! (FIFOs, devices, directories, link loops, files of others) and URLs with
//! odd schemes, then all of it from 16 clients at once. The service must
//! answer every call (within 10 s) with D-Bus's `InvalidArgs` or RAUC's
//! error, never panic or stall, end every refused installation with a
//! `LastError`, and still install a real bundle afterwards with no more
//! file descriptors open than before. (Unprivileged callers under the
//! shipped policy are `dbus_policy.rs`.)

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::bus::{Bus, Client, Service};
use testkit::device::Device;
use testkit::{Content, pki_file, rota_bundle, target_dir};
use zbus::{OwnedVariant as OwnedValue, Variant as Value};

const RAUC: &str = "de.pengutronix.rauc.Installer";
const ROTA: &str = "dev.rota.Installer1";
const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";
const RAUC_FAILED: &str = "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code30";
/// Every call must be answered within this: D-Bus's default call timeout,
/// what a real client waits (a tighter bound failed on loaded machines
/// without telling a stall from a slow answer).
const ANSWER: Duration = Duration::from_secs(25);

/// A device; `streaming` is its `[streaming]` group (retry tuning).
fn device(name: &str, streaming: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\nmountprefix=mnt\n\
         [keyring]\npath={}\n[streaming]\n{streaming}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(target_dir().join("test-devices").join(name), &conf);
    d.grub_env(&["A", "B"]);
    for f in ["rootfs0.img", "rootfs1.img"] {
        d.slot_file(f, 512 * 1024, 0xAA);
    }
    d
}

fn bundle(name: &str) -> PathBuf {
    let dir = target_dir().join("test-bundles").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    fs::write(c.dir.join("rootfs.img"), testkit::pseudo_random(128 * 1024, 7)).unwrap();
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=1\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.img\n",
    );
    let out = dir.join("b.raucb");
    rota_bundle(&c.dir, &out, "release").ok();
    out
}

/// How the service answered one call.
#[derive(Debug)]
enum Answer {
    Reply,
    Error(String, String),
}

/// A client making hostile calls, and how many it made.
struct Caller {
    client: Client,
    /// Calls made.
    tried: usize,
}

impl Caller {
    async fn new(bus: &Bus) -> Caller {
        Caller { client: Client::connect(bus, ANSWER).await, tried: 0 }
    }

    /// Calls `iface.method(body)`; panics unless answered within
    /// [`ANSWER`] with a reply or an error of an allowed name.
    async fn call<B>(&mut self, iface: &str, method: &str, body: &B, case: &str) -> Answer
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.tried += 1;
        let answer = match self.client.call(iface, method, body, case).await {
            Ok(_) => Answer::Reply,
            Err(zbus::Error::MethodError(name, text, _)) => Answer::Error(name.to_string(), text.unwrap_or_default()),
            Err(zbus::Error::FDO(e)) => {
                use zbus::DBusError;
                Answer::Error(e.name().to_string(), e.description().unwrap_or_default().to_string())
            }
            Err(e) => panic!("{case}: {iface}.{method}: {e}"),
        };
        if let Answer::Error(name, text) = &answer {
            // The properties interface answers with D-Bus's own errors.
            let properties = ["UnknownProperty", "UnknownInterface", "PropertyReadOnly"]
                .map(|e| format!("org.freedesktop.DBus.Error.{e}"));
            let allowed = name == INVALID_ARGS
                || name == RAUC_FAILED
                || (iface == "org.freedesktop.DBus.Properties" && properties.contains(name));
            assert!(allowed, "{case}: {iface}.{method}: {name}: {text}");
            assert!(
                !text.is_empty() && text.len() < 4096,
                "{case}: {iface}.{method}: error text of {} bytes",
                text.len()
            );
        }
        answer
    }

    async fn operation(&self) -> String {
        self.client.text("Operation").await
    }

    /// Waits until no installation runs; its `LastError`.
    async fn idle(&self, case: &str) -> String {
        self.client.idle(Duration::from_secs(60), case).await
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Sources that are not bundles, for the install and inspect methods.
fn hostile_sources(dir: &Path) -> Vec<String> {
    let fifo = dir.join("fifo.raucb");
    let _ = fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    let loop_link = dir.join("loop.raucb");
    let _ = fs::remove_file(&loop_link);
    std::os::unix::fs::symlink(&loop_link, &loop_link).unwrap();
    let sparse = dir.join("huge.raucb");
    let f = fs::File::create(&sparse).unwrap();
    f.set_len(1 << 40).unwrap();
    let empty = dir.join("empty.raucb");
    fs::write(&empty, b"").unwrap();
    let huge = "x".repeat(1 << 20);
    [
        "",
        " ",
        "relative/bundle.raucb",
        "../../../../etc/shadow",
        "/etc/shadow",
        "/proc/self/mem",
        "/proc/self/fd/0",
        "/dev/zero",
        "/dev/urandom",
        "/dev/null",
        "/",
        "/nonexistent/bundle.raucb",
        "file:///etc/passwd",
        "file://",
        "ftp://127.0.0.1/b.raucb",
        "javascript:alert(1)",
        "data:application/octet-stream;base64,AAAA",
        "http://",
        "http://[::1",
        "http://127.0.0.1:1/b.raucb",
        "https://user:secret@127.0.0.1:1/b.raucb",
        "http://256.256.256.256/b.raucb",
        "casync://127.0.0.1/x",
        "\u{202e}bundle.raucb",
        "bundle\nLastError: injected",
    ]
    .into_iter()
    .map(String::from)
    .chain([fifo, loop_link, sparse, empty, dir.to_path_buf()].iter().map(|p| p.display().to_string()))
    .chain([huge.clone(), format!("http://127.0.0.1:1/{huge}"), format!("/{huge}")])
    .collect()
}

/// Values of every D-Bus type but the right one, for one key.
fn wrong_values() -> Vec<(&'static str, OwnedValue)> {
    let ov = |v: Value<'_>| OwnedValue::try_from(v).unwrap();
    vec![
        ("u32", ov(Value::U32(7))),
        ("bool", ov(Value::Bool(true))),
        ("string", ov(Value::from("yes"))),
        ("huge string", ov(Value::from("y".repeat(1 << 20)))),
        ("string array", ov(Value::from(vec!["a: b", "c"]))),
        ("byte array", ov(Value::from(vec![0u8, 1, 2]))),
        ("dict", ov(Value::from(HashMap::from([("k".to_string(), Value::from(1u8))])))),
        ("nested variant", ov(Value::Variant(Box::new(Value::from("s"))))),
        ("object path", ov(Value::ObjectPath(zbus::ObjectPath::try_from("/x").unwrap()))),
        ("double", ov(Value::F64(f64::NAN))),
    ]
}

/// Keys each `a{sv}` method takes, as the service documents them.
const INSTALL_KEYS: &[&str] = &[
    "ignore-compatible",
    "ignore-version-limit",
    "transaction-id",
    "require-manifest-hash",
    "tls-cert",
    "tls-key",
    "tls-ca",
    "tls-no-verify",
    "http-headers",
];
const INSPECT_KEYS: &[&str] = &["tls-cert", "tls-key", "tls-ca", "tls-no-verify", "http-headers"];

/// Calls every method with wrong signatures: each must be refused with
/// `InvalidArgs` (or, where the arguments do fit, answered).
async fn wrong_signatures(c: &mut Caller) {
    let methods: &[(&str, &str)] = &[
        (RAUC, "InstallBundle"),
        (RAUC, "Install"),
        (RAUC, "InspectBundle"),
        (RAUC, "Info"),
        (RAUC, "Mark"),
        (RAUC, "GetSlotStatus"),
        (RAUC, "GetArtifactStatus"),
        (RAUC, "GetPrimary"),
        (ROTA, "Cancel"),
        (ROTA, "Inspect"),
    ];
    for (iface, method) in methods {
        let case = format!("{method} with wrong arguments");
        // Only the signatures that do not match the method are sure refusals.
        let fits_empty = ["GetSlotStatus", "GetArtifactStatus", "GetPrimary", "Cancel"].contains(method);
        let fits_s = ["Install", "Info"].contains(method);
        for (sig, answer) in [
            ("()", c.call(iface, method, &(), &case).await),
            ("(u)", c.call(iface, method, &(7u32,), &case).await),
            ("(s)", c.call(iface, method, &("/x",), &case).await),
            ("(sss)", c.call(iface, method, &("a", "b", "c"), &case).await),
            ("(as)", c.call(iface, method, &(vec!["a"],), &case).await),
            ("(sa{ss})", c.call(iface, method, &("/x", HashMap::from([("k", "v")])), &case).await),
            ("(sa{sv}u)", c.call(iface, method, &("/x", HashMap::<&str, Value<'_>>::new(), 1u32), &case).await),
        ] {
            let fits = (sig == "()" && fits_empty) || (sig == "(s)" && fits_s);
            if !fits {
                assert!(matches!(&answer, Answer::Error(n, _) if n == INVALID_ARGS), "{case} {sig}: {answer:?}");
            }
        }
        c.idle(&case).await;
    }
}

/// Wrong types and unknown keys in `a{sv}`: each refused with RAUC's error
/// naming the key (`Unsupported key: <key>` for both, as RAUC says), before
/// the bundle is opened, and no installation started.
async fn wrong_dicts(c: &mut Caller) {
    for (iface, method, keys) in
        [(RAUC, "InstallBundle", INSTALL_KEYS), (RAUC, "InspectBundle", INSPECT_KEYS), (ROTA, "Inspect", INSPECT_KEYS)]
    {
        for key in keys.iter().copied() {
            for (what, value) in wrong_values() {
                // A string is right for some keys, a boolean for others, a
                // string array for http-headers.
                let right = match key {
                    "ignore-compatible" | "ignore-version-limit" | "tls-no-verify" => what == "bool",
                    "http-headers" => what == "string array",
                    _ => what == "string" || what == "huge string",
                };
                if right {
                    continue;
                }
                let case = format!("{method} with {key} as {what}");
                let args = HashMap::from([(key, value)]);
                let answer = c.call(iface, method, &("/nonexistent.raucb", args), &case).await;
                match answer {
                    Answer::Error(name, text) => {
                        assert_eq!(name, RAUC_FAILED, "{case}");
                        // RAUC looks keys up with their type: a wrongly typed one is unsupported.
                        assert_eq!(text, format!("Unsupported key: {key}"), "{case}");
                    }
                    Answer::Reply => panic!("{case}: accepted"),
                }
            }
        }
        for key in ["", "unknown", "IGNORE-COMPATIBLE", "tls-cert\0x", &"k".repeat(1 << 20)] {
            if key.contains('\0') {
                continue;
            }
            let case = format!("{method} with key '{}'", key.chars().take(20).collect::<String>());
            let args = HashMap::from([(key, Value::from(true))]);
            match c.call(iface, method, &("/nonexistent.raucb", args), &case).await {
                Answer::Error(name, text) => {
                    assert_eq!(name, RAUC_FAILED, "{case}");
                    assert!(text.starts_with("Unsupported key: "), "{case}: {text}");
                }
                Answer::Reply => panic!("{case}: accepted"),
            }
        }
        c.idle(method).await;
    }
}

/// Sources that are not bundles: inspections fail at once, installations
/// start and end with a `LastError`, and nothing stalls.
async fn hostile_locations(c: &mut Caller, dir: &Path) -> usize {
    let mut installs = 0;
    for source in hostile_sources(dir) {
        let shown: String = source.chars().take(60).collect();
        let case = format!("source '{shown}'");
        for (iface, method) in [(RAUC, "InspectBundle"), (ROTA, "Inspect")] {
            let answer = c.call(iface, method, &(source.as_str(), HashMap::<&str, Value<'_>>::new()), &case).await;
            assert!(matches!(answer, Answer::Error(ref n, _) if n == RAUC_FAILED), "{case} {method}: {answer:?}");
        }
        let answer = c.call(RAUC, "Info", &(source.as_str(),), &case).await;
        assert!(matches!(answer, Answer::Error(..)), "{case} Info: {answer:?}");
        for method in ["InstallBundle", "Install"] {
            let answer = if method == "Install" {
                c.call(RAUC, method, &(source.as_str(),), &case).await
            } else {
                c.call(RAUC, method, &(source.as_str(), HashMap::<&str, Value<'_>>::new()), &case).await
            };
            if let Answer::Reply = answer {
                installs += 1;
                let last = c.idle(&case).await;
                assert!(!last.is_empty(), "{case} {method}: the installation did not fail");
                assert!(last.len() < 4096 + 2 * (1 << 20), "{case}: LastError of {} bytes", last.len());
            }
        }
    }
    installs
}

/// Mark with states and slots that are not: refused, nothing marked.
async fn hostile_marks(c: &mut Caller) {
    let huge = "s".repeat(1 << 20);
    for (state, slot) in [
        ("", ""),
        ("GOOD", "booted"),
        ("good", ""),
        ("good", "rootfs.99"),
        ("good", "../rootfs.0"),
        ("bad", huge.as_str()),
        (huge.as_str(), "other"),
        ("good\nbad", "other"),
        ("active", "rootfs"),
    ] {
        let case = format!("Mark({}, {})", &state[..state.len().min(12)], &slot[..slot.len().min(12)]);
        let answer = c.call(RAUC, "Mark", &(state, slot), &case).await;
        assert!(matches!(answer, Answer::Error(ref n, _) if n == RAUC_FAILED), "{case}: {answer:?}");
        if state.len() > 256 || slot.len() > 256 {
            let Answer::Error(_, text) = answer else { unreachable!() };
            assert_eq!(text, "Invalid argument to Mark: 1048576 bytes (at most 256)", "{case}");
        }
    }
    // Nothing was marked.
    let status = c.client.call(RAUC, "GetSlotStatus", &(), "GetSlotStatus").await.unwrap();
    let slots: Vec<(String, HashMap<String, OwnedValue>)> = status.body().deserialize().unwrap();
    for (name, dict) in slots {
        let state = dict.get("boot-status").map(|v| String::try_from(v.try_clone().unwrap()).unwrap());
        assert_ne!(state.as_deref(), Some("bad"), "{name} was marked");
    }
}

/// Properties: unknown names, wrong interfaces, writes to read-only ones.
async fn hostile_properties(c: &mut Caller) {
    const PROPS: &str = "org.freedesktop.DBus.Properties";
    for iface in [RAUC, ROTA, "de.pengutronix.rauc.Poller", "", "x.y"] {
        for name in ["Operation", "Nope", "", "Details"] {
            let _ = c.call(PROPS, "Get", &(iface, name), "Get").await;
            let _ = c.call(PROPS, "Set", &(iface, name, Value::from("idle")), "Set").await;
        }
        let _ = c.call(PROPS, "GetAll", &(iface,), "GetAll").await;
    }
    assert_eq!(c.operation().await, "idle");
}

#[test]
fn hostile_calls_are_refused_and_the_service_keeps_working() {
    // Unreachable servers are retried with short pauses here: the retries
    // are not what this test is about.
    let d = device("hostile-callers", "retry-pause-ms=10\n");
    let good = bundle("hostile-callers");
    let bus = Bus::start();
    let svc = Service::start(&d, &bus, &[]);
    let dir = d.path("hostile");
    fs::create_dir_all(&dir).unwrap();
    // The baseline: after an honest installation, settled.
    let r = testkit::run(d.rota().envs(bus.env()).arg("install").arg(&good));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let before = svc.settled_fds();
    let (tried, installs) = rt().block_on(async {
        let mut c = Caller::new(&bus).await;
        wrong_signatures(&mut c).await;
        wrong_dicts(&mut c).await;
        let installs = hostile_locations(&mut c, &dir).await;
        hostile_marks(&mut c).await;
        hostile_properties(&mut c).await;
        (c.tried, installs)
    });
    eprintln!("hostile calls: {tried} tried, {installs} installations started and refused");
    let log = fs::read_to_string(d.path("service.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    // Still an update service: a real bundle installs.
    let r = testkit::run(d.rota().envs(bus.env()).arg("install").arg(&good));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let after = svc.settled_fds();
    assert!(after <= before, "the service holds more files open: {after} after, {before} before");
    assert!(svc.stop().success());
}

#[test]
fn sixteen_clients_at_once_get_answers_and_one_installation_at_a_time() {
    let d = device("hostile-callers-16", "retry-pause-ms=10\n");
    let good = bundle("hostile-callers-16");
    let bus = Bus::start();
    let svc = Service::start(&d, &bus, &[]);
    let dir = d.path("hostile");
    fs::create_dir_all(&dir).unwrap();
    let sources = hostile_sources(&dir);
    // Rounds per client: 6 in CI, more in the campaign's long run.
    let rounds: usize = std::env::var("ROTA_HOSTILE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..16usize {
            let (bus, sources, good, accepted, calls) = (&bus, &sources, &good, &accepted, &calls);
            s.spawn(move || {
                rt().block_on(async {
                    let mut c = Caller::new(bus).await;
                    for round in 0..rounds {
                        let case = format!("client {i} round {round}");
                        let source = &sources[(i * 7 + round) % sources.len()];
                        let none = HashMap::<&str, Value<'_>>::new();
                        match (i + round) % 4 {
                            0 => {
                                let b = if round % 2 == 0 { good.to_str().unwrap() } else { source.as_str() };
                                if let Answer::Reply = c.call(RAUC, "InstallBundle", &(b, none), &case).await {
                                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                            1 => {
                                let _ = c.call(RAUC, "InspectBundle", &(good.to_str().unwrap(), none), &case).await;
                            }
                            2 => {
                                let _ = c.call(RAUC, "GetSlotStatus", &(), &case).await;
                                let _ = c.call(ROTA, "Cancel", &(), &case).await;
                            }
                            _ => {
                                let bad = HashMap::from([("tls-no-verify", Value::from("yes"))]);
                                let _ = c.call(RAUC, "InstallBundle", &(source.as_str(), bad), &case).await;
                                let _ = c.call(RAUC, "Mark", &("good", "nope"), &case).await;
                            }
                        }
                    }
                    calls.fetch_add(c.tried, std::sync::atomic::Ordering::Relaxed);
                })
            });
        }
    });
    rt().block_on(async {
        let c = Caller::new(&bus).await;
        c.idle("after the clients").await;
    });
    let calls: usize = calls.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "16 clients: {calls} calls in {rounds} rounds each, {} installations accepted",
        accepted.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(accepted.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let log = fs::read_to_string(d.path("service.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    let r = testkit::run(d.rota().envs(bus.env()).arg("install").arg(&good));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(svc.stop().success());
}

#[test]
fn an_inspection_of_an_unreachable_server_is_answered_before_the_bus_times_out() {
    // The configured retries (5, pauses doubling from 1 s: 31 s) are longer
    // than a D-Bus call waits (25 s); an inspection gives up sooner.
    let d = device("hostile-callers-inspect", "");
    let bus = Bus::start();
    let svc = Service::start(&d, &bus, &[]);
    rt().block_on(async {
        let mut c = Caller::new(&bus).await;
        let t0 = std::time::Instant::now();
        let none = HashMap::<&str, Value<'_>>::new();
        let answer = c.call(RAUC, "InspectBundle", &("http://127.0.0.1:1/b.raucb", none), "unreachable").await;
        let Answer::Error(name, text) = answer else { panic!("an unreachable bundle inspected") };
        assert_eq!(name, RAUC_FAILED);
        assert!(text.contains("127.0.0.1:1") && text.to_lowercase().contains("refused"), "{text}");
        eprintln!("answered in {:?}: {text}", t0.elapsed());
    });
    assert!(svc.stop().success());
}
