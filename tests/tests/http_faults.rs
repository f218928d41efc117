//! Streaming installs against an in-process server that misbehaves at a
//! chosen byte of the bundle: transient faults are retried (resuming
//! partially received ranges) to a complete, activated update; lasting or
//! lying ones end in a clear error with the booted slot untouched and the
//! target not activated.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;
use testkit::device::{Device, grub_selected, grubenv};
use testkit::httpd::{Fault, Server};
use testkit::{Content, pki_file, rota_bundle, run, run_within, sha256_hex, target_dir};

const SLOT: usize = 12 << 20;

/// A verity bundle with an 8 MiB incompressible rootfs image, built once.
fn bundle() -> (PathBuf, Vec<u8>) {
    static BUILT: std::sync::OnceLock<(PathBuf, Vec<u8>)> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = target_dir().join("test-bundles/http-faults");
            let _ = fs::remove_dir_all(&dir);
            let c = Content::new(dir.join("content"));
            let image = c.image("rootfs.img", 8 << 20, 77);
            c.manifest(
                "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat=verity\n\
                 [image.rootfs]\nfilename=rootfs.img\n",
            );
            let b = dir.join("b.raucb");
            rota_bundle(&c.dir, &b, "release").ok();
            (b, image)
        })
        .clone()
}

/// A device booted from A whose transfers give up quickly.
fn device(name: &str) -> Device {
    device_with(name, "")
}

/// [`device`] with more `[streaming]` keys.
fn device_with(name: &str, streaming: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\n\
         [keyring]\npath={}\n\
         [streaming]\nretries=3\nretry-pause-ms=50\nstall-timeout-sec=2\n{streaming}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(target_dir().join("test-devices/http-faults").join(name), &conf);
    d.grub_ab(SLOT, 0x5A);
    d
}

/// The slot GRUB would boot (empty when none).
fn selected(d: &Device) -> String {
    grub_selected(&grubenv(&d.path("grubenv"))).unwrap_or_default()
}

/// Serves the bundle with `fault` at its middle byte `times` times.
fn serve(fault: Fault, times: usize) -> (Server, u64) {
    let (b, _) = bundle();
    let bytes = fs::read(&b).unwrap();
    let len = bytes.len() as u64;
    let srv = Server::start();
    srv.put("/b.raucb", bytes);
    srv.inject(fault, len / 2, times);
    (srv, len)
}

fn install(d: &Device, srv: &Server) -> testkit::Run {
    run(d.rota().arg("install").arg(srv.url("/b.raucb")))
}

fn assert_untouched(d: &Device, case: &str) {
    let booted = sha256_hex(&vec![0x5A; SLOT]);
    assert_eq!(sha256_hex(&fs::read(d.path("rootfs0.img")).unwrap()), booted, "{case}: booted slot changed");
    assert_eq!(selected(d), "A", "{case}: the target must not be activated");
}

fn assert_installed(d: &Device, case: &str) {
    let (_, image) = bundle();
    let slot = fs::read(d.path("rootfs1.img")).unwrap();
    assert!(slot[..image.len()] == image[..], "{case}: update not completely written");
    assert_eq!(selected(d), "B", "{case}: update not activated");
    assert_eq!(sha256_hex(&fs::read(d.path("rootfs0.img")).unwrap()), sha256_hex(&vec![0x5A; SLOT]));
}

#[test]
fn transient_faults_are_retried_and_partial_ranges_resumed() {
    let cases = [
        ("reset", Fault::Reset(100_000), 1, true),
        ("stall", Fault::Stall(100_000, Duration::from_secs(4)), 1, true),
        ("short", Fault::Short(100_000), 1, true),
        ("503", Fault::Status(503), 2, false),
        // Bytes damaged once on the way (a cache handing out a bad copy):
        // the image's digest finds it, a verified read asks past every
        // cache, and the image is written again from verified reads.
        ("corrupt-once", Fault::Corrupt, 1, false),
    ];
    for (case, fault, times, resumes) in cases {
        let d = device(case);
        let (srv, _) = serve(fault, times);
        install(&d, &srv).ok();
        assert_eq!(srv.faults_served(), times, "{case}");
        assert_installed(&d, case);
        let starts: Vec<u64> = srv
            .requests()
            .iter()
            .filter_map(|r| r.header("range")?.strip_prefix("bytes=")?.split_once('-')?.0.parse().ok())
            .collect();
        // A resumed request starts where the broken response stopped: 100 000
        // bytes into a range asked for before. (Images stored as is are
        // fetched run by run at their own offsets, the rest window by window.)
        let resumed: Vec<&u64> = starts
            .iter()
            .enumerate()
            .filter(|(i, s)| s.checked_sub(100_000).is_some_and(|from| starts[..*i].contains(&from)))
            .map(|(_, s)| s)
            .collect();
        assert_eq!(resumed.len(), resumes as usize, "{case}: resumed requests {resumed:?} of {starts:?}");
    }
}

#[test]
fn lasting_or_lying_faults_end_in_clear_errors() {
    let cases = [
        ("503-forever", Fault::Status(503), 100, "unexpected HTTP response code 503 (gave up after 4 attempts)"),
        ("404", Fault::Status(404), 1, "not found"),
        ("200", Fault::IgnoreRange, 1, "range requests not supported by server"),
        ("wrong-range", Fault::WrongRange, 1, "server answered range"),
        // Data that arrives intact but differs from what was signed, every
        // time it is asked for (found by the image's signed digest; the
        // verified reads that follow find the block).
        ("corrupt", Fault::Corrupt, 1000, "bundle payload is corrupted: data block"),
    ];
    for (case, fault, times, message) in cases {
        let d = device(case);
        let (srv, _) = serve(fault, times);
        let out = install(&d, &srv).fails();
        assert!(out.stderr.contains(message), "{case}: expected '{message}' in:\n{}", out.stderr);
        if case != "corrupt" {
            assert!(out.stderr.contains(&srv.url("/b.raucb")), "{case}: the URL is named:\n{}", out.stderr);
        }
        assert_untouched(&d, case);
        // The next install from an honest server succeeds.
        let (b, _) = bundle();
        let good = Server::start();
        good.put("/b.raucb", fs::read(&b).unwrap());
        install(&d, &good).ok();
        assert_installed(&d, case);
    }
}

#[test]
fn a_bundle_replaced_on_the_server_mid_install_is_refused() {
    let d = device("replaced");
    let (b, _) = bundle();
    let bytes = fs::read(&b).unwrap();
    let srv = Server::start();
    srv.put("/b.raucb", bytes.clone());
    let mid = bytes.len() as u64 / 2;
    srv.hold(mid, mid + 1);
    let mut cmd = d.rota();
    cmd.arg("install").arg(srv.url("/b.raucb"));
    let waiter = std::thread::spawn(move || cmd.output().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let covers_mid = |r: &testkit::httpd::Request| {
        r.header("range")
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split_once('-'))
            .is_some_and(|(a, b)| a.parse::<u64>().unwrap() <= mid && b.parse::<u64>().unwrap() >= mid)
    };
    while !srv.requests().iter().any(covers_mid) {
        assert!(std::time::Instant::now() < deadline, "the install never reached the middle");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A new release of the same size appears under the same name.
    let mut replaced = bytes;
    replaced[mid as usize] ^= 0xff;
    srv.put("/b.raucb", replaced);
    srv.release();
    let out = waiter.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("bundle changed on the server since it was opened"), "{stderr}");
    assert_untouched(&d, "replaced");
}

#[test]
fn a_server_that_sends_a_byte_and_hangs_up_is_given_up_on() {
    // Every attempt brings one more byte: without a cap on attempts in all,
    // the install would go on for a day.
    let d = device("byte-and-hang-up");
    let (srv, _) = serve(Fault::Reset(1), 1_000_000);
    let out = run_within(d.rota().arg("install").arg(srv.url("/b.raucb")), Duration::from_secs(120));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("(gave up after 20 attempts)"), "{}", out.stderr);
    assert_eq!(srv.faults_served(), 20, "the default max-attempts");
    assert_untouched(&d, "byte-and-hang-up");
}

#[test]
fn a_trickling_server_is_given_up_on() {
    // Slower than min-bytes-per-sec (256 by default) over a stall timeout (2 s).
    let d = device_with("trickle", "max-attempts=3");
    let (srv, _) = serve(Fault::Trickle(Duration::from_millis(200)), 1_000_000);
    let out = run_within(d.rota().arg("install").arg(srv.url("/b.raucb")), Duration::from_secs(120));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("transfer slower than 256 bytes/s for 2 s (gave up after 3 attempts)"),
        "{}",
        out.stderr
    );
    assert_untouched(&d, "trickle");
    // Fast enough for no minimum, never done: the request's deadline ends it.
    let d = device_with("deadline", "min-bytes-per-sec=0\nrequest-timeout-sec=3");
    let (srv, _) = serve(Fault::Trickle(Duration::from_millis(50)), 1_000_000);
    let out = run_within(d.rota().arg("install").arg(srv.url("/b.raucb")), Duration::from_secs(120));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("no complete response within 3 s"), "{}", out.stderr);
    assert_untouched(&d, "deadline");
}
