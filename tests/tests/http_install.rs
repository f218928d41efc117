//! Installs straight from a real nginx on 127.0.0.1: verity and crypt
//! bundles streamed through the CLI (direct mode) and through the D-Bus
//! service, with the documented headers arriving at the server (spec §10.1),
//! plain bundles downloaded first within `max-bundle-download-size`, and
//! HTTPS servers checked against the configured CA, with client certificates.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use testkit::bus::{Bus, Service};
use testkit::device::{Device, grub_selected, grubenv};
use testkit::nginx::{Logged, Nginx, Tls, web_root};
use testkit::{Content, pki_file, rota, rota_bundle, run, sha256_hex, target_dir};

const SLOT: usize = 4 << 20;
const TXN: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

fn device(name: &str, extra_system: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\nvariant-name=charger-v2\n{extra_system}\n\
         [keyring]\npath={}\n[encryption]\nkey={}\n\
         [handlers]\nsystem-info=system-info.sh\n\
         [streaming]\nsend-headers=boot-id;machine-id;system-version;serial;variant;transaction-id;uptime\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n",
        pki_file("keyring.pem").display(),
        pki_file("rsa-recipient.key").display()
    );
    let d = Device::new(target_dir().join("test-devices/http-install").join(name), &conf);
    d.grub_ab(SLOT, 0x5A);
    let handler = d.path("system-info.sh");
    fs::write(
        &handler,
        "#!/bin/sh\necho RAUC_SYSTEM_VERSION=2024.08-1\necho RAUC_SYSTEM_SERIAL=1234\necho RAUC_HTTP_MY_INFO=abc\n",
    )
    .unwrap();
    fs::set_permissions(&handler, fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// A bundle of `format` with a 2 MiB rootfs image (seeded by `seed`) in
/// `www`, as `<format>.raucb`; returns the image.
fn publish(www: &Path, format: &str, seed: u64) -> Vec<u8> {
    let dir = target_dir().join("test-bundles/http-install").join(format!("{format}-{seed}"));
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    let image = c.image("rootfs.img", 2 << 20, seed);
    c.manifest(&format!(
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat={format}\n[image.rootfs]\nfilename=rootfs.img\n"
    ));
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    let out = www.join(format!("{format}.raucb"));
    if format == "crypt" {
        let to = format!("--to={}", pki_file("rsa-recipient.pem").display());
        run(rota().args(["encrypt", &to]).arg(&b).arg(&out)).ok();
    } else {
        fs::copy(&b, &out).unwrap();
    }
    image
}

/// The slot GRUB would boot (empty when none).
fn selected(d: &Device) -> String {
    grub_selected(&grubenv(&d.path("grubenv"))).unwrap_or_default()
}

fn assert_installed(d: &Device, image: &[u8], case: &str) {
    let slot = fs::read(d.path("rootfs1.img")).unwrap();
    assert!(slot[..image.len()] == image[..], "{case}: update not completely written");
    assert_eq!(selected(d), "B", "{case}: update not activated");
    assert_eq!(sha256_hex(&fs::read(d.path("rootfs0.img")).unwrap()), sha256_hex(&vec![0x5A; SLOT]), "{case}");
}

fn first_line(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().and_then(|t| t.lines().next().map(str::to_string)).filter(|l| !l.is_empty())
}

/// The requests for `uri`: the first carries the client's identity and every
/// configured automatic header, later ones none of them; all carry the
/// caller's own header and were answered with `206`.
fn assert_headers(log: &[Logged], uri: &str, case: &str) {
    let reqs: Vec<&Logged> = log.iter().filter(|l| l.uri == uri).collect();
    assert!(reqs.len() > 3, "{case}: {reqs:?}");
    let first = reqs[0];
    assert_eq!(first.header("range"), Some("bytes=0-3"), "{case}");
    assert!(first.header("user_agent").is_some_and(|ua| ua.starts_with("rota/")), "{case}: {first:?}");
    let expect = [
        ("rauc_boot_id", first_line("/proc/sys/kernel/random/boot_id")),
        ("rauc_machine_id", first_line("/etc/machine-id")),
        ("rauc_system_version", Some("2024.08-1".to_string())),
        ("rauc_serial", Some("1234".to_string())),
        ("rauc_variant", Some("charger-v2".to_string())),
        ("rauc_transaction_id", Some(TXN.to_string())),
        ("rauc_my_info", Some("abc".to_string())),
    ];
    for (name, value) in expect {
        assert_eq!(first.header(name), value.as_deref(), "{case}: {name} of {first:?}");
    }
    let uptime: f64 = first.header("rauc_uptime").expect("uptime sent").parse().expect("uptime is seconds");
    assert!(uptime > 0.0);
    for r in &reqs {
        assert_eq!(r.status, 206, "{case}: {r:?}");
        assert_eq!(r.header("x_fleet"), Some("charger-7"), "{case}: {r:?}");
    }
    for r in &reqs[1..] {
        assert!(r.headers.keys().all(|k| !k.starts_with("rauc_") && k != "user_agent"), "{case}: {r:?}");
    }
    // No conditional headers: as RAUC's, the requests carry none (the
    // version opened is checked on each response instead).
    assert!(reqs.iter().all(|r| r.header("if_match").is_none()), "{case}: {reqs:?}");
}

/// Publishes a verity and a crypt bundle on one nginx and has `install`
/// put each on a fresh device named `<name>-<format>`; then checks the slots
/// and the headers that arrived.
fn stream_both_formats(name: &str, seeds: [u64; 2], install: impl Fn(&Device, &str)) {
    let (_t, www) = web_root();
    let nginx = Nginx::serve(&www);
    for (format, seed) in ["verity", "crypt"].into_iter().zip(seeds) {
        let image = publish(&www, format, seed);
        let d = device(&format!("{name}-{format}"), "");
        install(&d, &nginx.url(&format!("/{format}.raucb")));
        assert_installed(&d, &image, format);
        assert_headers(&nginx.header_log(), &format!("/{format}.raucb"), format);
    }
}

#[test]
fn verity_and_crypt_stream_from_nginx_through_the_cli() {
    stream_both_formats("cli", [31, 32], |d, url| {
        run(d.rota().args(["install", "-H", "X-Fleet: charger-7", &format!("--transaction-id={TXN}"), url])).ok();
    });
}

#[test]
fn verity_and_crypt_stream_from_nginx_through_the_service() {
    stream_both_formats("dbus", [41, 42], |d, url| {
        let bus = Bus::start();
        let _svc = Service::start(d, &bus, &[]);
        // The CLI finds the service and calls InstallBundle with http-headers and transaction-id.
        let install = ["install", "--progress", "-H", "X-Fleet: charger-7", &format!("--transaction-id={TXN}"), url];
        let out = run(d.rota().envs(bus.env()).args(install)).ok();
        assert!(out.stdout.contains("Installing done.") || out.stderr.contains("Installing done."), "{out:?}");
    });
}

#[test]
fn plain_bundles_are_downloaded_within_max_bundle_download_size() {
    let (_t, www) = web_root();
    let nginx = Nginx::serve(&www);
    let image = publish(&www, "plain", 51);
    let url = nginx.url("/plain.raucb");
    let size = fs::metadata(www.join("plain.raucb")).unwrap().len();

    let d = device("plain-too-big", "max-bundle-download-size=1048576");
    let out = run(d.rota().arg("install").arg(&url)).fails();
    let expect = format!("its size ({size} bytes) exceeds max-bundle-download-size (1048576 bytes)");
    assert!(out.stderr.contains(&expect), "{}", out.stderr);
    assert_eq!(selected(&d), "A");
    assert_eq!(sha256_hex(&fs::read(d.path("rootfs1.img")).unwrap()), sha256_hex(&vec![0x5A; SLOT]), "not written");

    // A device that does not accept plain bundles refuses before downloading.
    let d = device("plain-not-allowed", "bundle-formats=-plain");
    let out = run(d.rota().arg("install").arg(&url)).fails();
    assert!(out.stderr.contains("Bundle format 'plain' not allowed"), "{}", out.stderr);
    assert!(nginx.served("/plain.raucb") < 64 * 1024, "downloaded before refusing");
    assert_eq!(selected(&d), "A");

    let d = device("plain-download", "max-bundle-download-size=67108864");
    run(d.rota().arg("install").arg(&url)).ok();
    assert_installed(&d, &image, "plain");
    // The whole file crossed the network once, in ranges (and the few
    // bytes the refusals read).
    let fetched = nginx.served("/plain.raucb");
    assert!(fetched >= size && fetched < size + 64 * 1024, "fetched {fetched} of {size}");
}

/// The update was refused: nothing activated, the booted slot and the target
/// bit-identical to before.
fn assert_untouched(d: &Device, case: &str) {
    assert_eq!(selected(d), "A", "{case}: activated");
    for slot in ["rootfs0.img", "rootfs1.img"] {
        let bytes = fs::read(d.path(slot)).unwrap();
        assert_eq!(sha256_hex(&bytes), sha256_hex(&vec![0x5A; SLOT]), "{case}: {slot} written");
    }
}

#[test]
fn https_installs_check_the_server_ca_and_present_client_certificates() {
    let (_t, www) = web_root();
    let image = publish(&www, "verity", 61);
    let (cert, key) = (pki_file("server.pem"), pki_file("server.key"));
    let root = pki_file("root.pem");
    let client = [pki_file("client.pem"), pki_file("client.key")];
    // TLS settings of the device, as a system.conf.d drop-in.
    let tls_conf = |d: &Device, ca: &Path, client_cert: bool| {
        let mut conf = format!("[streaming]\ntls-ca={}\n", ca.display());
        if client_cert {
            conf += &format!("tls-cert={}\ntls-key={}\n", client[0].display(), client[1].display());
        }
        fs::create_dir_all(d.path("system.conf.d")).unwrap();
        fs::write(d.path("system.conf.d/50-tls.conf"), conf).unwrap();
    };

    // Server certificate checks, through the service: a CA that did not
    // sign the server's certificate fails the handshake, clearly, and the
    // slots stay as they were.
    let server = Nginx::serve_tls(&www, Tls { cert: &cert, key: &key, client_ca: None });
    let url = server.url("/verity.raucb");
    let d = device("https-wrong-ca", "");
    tls_conf(&d, &pki_file("other-root.pem"), false);
    let bus = Bus::start();
    let svc = Service::start(&d, &bus, &[]);
    let out = run(d.rota().envs(bus.env()).args(["install", &url])).fails();
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains(&format!("Failed to stream bundle {url}: TLS handshake failed: ")), "{text}");
    assert!(text.contains("certificate verify failed"), "{text}");
    assert_untouched(&d, "wrong CA");
    // The caller's CA (InstallBundle's tls-ca) is used instead of the configured one.
    run(d.rota().envs(bus.env()).args(["install", &format!("--tls-ca={}", root.display()), &url])).ok();
    assert_installed(&d, &image, "caller's CA");
    drop(svc);

    // A server that requires a client certificate: refused without one,
    // installed with the configured one (service) or the given one (direct).
    let mtls = Nginx::serve_tls(&www, Tls { cert: &cert, key: &key, client_ca: Some(&root) });
    let url = mtls.url("/verity.raucb");
    let d = device("https-no-client-cert", "");
    let out = run(d.rota().args(["install", &format!("--tls-ca={}", root.display()), &url])).fails();
    assert!(out.stderr.contains("unexpected HTTP response code 400"), "{}", out.stderr);
    assert_untouched(&d, "no client certificate");

    let d = device("https-client-cert-service", "");
    tls_conf(&d, &root, true);
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    run(d.rota().envs(bus.env()).args(["install", &url])).ok();
    assert_installed(&d, &image, "client certificate from system.conf");

    let d = device("https-client-cert-direct", "");
    let args = [
        format!("--tls-ca={}", root.display()),
        format!("--tls-cert={}", client[0].display()),
        format!("--tls-key={}", client[1].display()),
    ];
    run(d.rota().arg("install").args(&args).arg(&url)).ok();
    assert_installed(&d, &image, "client certificate given");
    assert!(mtls.header_log().iter().filter(|l| l.uri == "/verity.raucb").all(|l| l.status == 206 || l.status == 400));
}

#[test]
fn installs_go_through_the_proxy_of_the_environment() {
    let (_t, www) = web_root();
    let image = publish(&www, "verity", 71);
    let plain = Nginx::serve(&www);
    let (cert, key) = (pki_file("server.pem"), pki_file("server.key"));
    let tls = Nginx::serve_tls(&www, Tls { cert: &cert, key: &key, client_ca: None });
    let proxy = testkit::proxy::Proxy::start();
    let via = proxy.url("fleet", "pw");
    // http:// as absolute-form requests to the proxy.
    let d = device("proxy-http", "");
    let url = plain.url("/verity.raucb");
    run(d.rota().env_remove("no_proxy").env_remove("NO_PROXY").env("http_proxy", &via).args(["install", &url])).ok();
    assert_installed(&d, &image, "http through the proxy");
    // https:// through a CONNECT tunnel.
    let d = device("proxy-https", "");
    let ca = format!("--tls-ca={}", pki_file("root.pem").display());
    let url_tls = tls.url("/verity.raucb");
    run(d
        .rota()
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .env("https_proxy", &via)
        .args(["install", &ca, &url_tls]))
    .ok();
    assert_installed(&d, &image, "https through the proxy");
    let seen = proxy.seen();
    assert!(seen.iter().any(|s| s.line == format!("GET {url}")), "{seen:?}");
    assert!(seen.iter().any(|s| s.line == format!("CONNECT 127.0.0.1:{}", tls.port)), "{seen:?}");
    // base64 of fleet:pw
    assert!(seen.iter().all(|s| s.auth.as_deref() == Some("Basic ZmxlZXQ6cHc=")), "{seen:?}");
    // no_proxy exempts a host.
    let before = proxy.seen().len();
    let d = device("proxy-exempt", "");
    run(d.rota().env("no_proxy", "127.0.0.1").env("http_proxy", &via).args(["install", &url])).ok();
    assert_installed(&d, &image, "exempt from the proxy");
    assert_eq!(proxy.seen().len(), before, "no_proxy bypasses the proxy");
}
