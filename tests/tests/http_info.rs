//! Bundles read over HTTP with range requests: from a real nginx, from an
//! in-process server (headers checked), and from servers that misbehave.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::httpd::{Mode, Server};
use testkit::nginx::{Nginx, Tls, web_root};
use testkit::*;

fn keyring() -> String {
    format!("--keyring={}", pki_file("keyring.pem").display())
}

fn make(dir: &Path, format: &str) -> (Content, PathBuf) {
    let c = Content::standard(dir.join(format!("c-{format}")), format);
    let b = dir.join(format!("{format}.raucb"));
    rota_bundle(&c.dir, &b, "release").ok();
    (c, b)
}

fn info_json(location: &str, extra: &[&str]) -> String {
    run(rota().arg("info").arg("--output-format=json").arg(keyring()).args(extra).arg(location)).ok().stdout
}

#[test]
fn info_and_extract_from_nginx() {
    let (t, www) = web_root();
    let nginx = Nginx::serve(&www);
    for format in ["verity", "crypt"] {
        let (c, b) = make(t.path(), format);
        fs::copy(&b, www.join(format!("{format}.raucb"))).unwrap();
        let url = nginx.url(&format!("/{format}.raucb"));
        assert_eq!(info_json(&url, &[]), info_json(&b.to_string_lossy(), &[]), "{format}");
        let out = t.path().join(format!("x-{format}"));
        run(rota().arg("extract").arg(keyring()).arg(&url).arg(&out)).ok();
        assert_eq!(tree_digest(&out).len(), 3);
        for f in ["rootfs.img", "appfs.img"] {
            assert_eq!(fs::read(out.join(f)).unwrap(), fs::read(c.dir.join(f)).unwrap(), "{format} {f}");
        }
    }
    let log = nginx.access_log();
    assert!(log.contains("\" 206 "), "range requests expected in the access log:\n{log}");
    assert!(!log.contains("\" 200 "), "no full downloads expected:\n{log}");
}

#[test]
fn info_from_in_process_server_sends_the_expected_headers() {
    let t = tempfile::tempdir().unwrap();
    let (_, b) = make(t.path(), "verity");
    let srv = Server::start();
    srv.put("/b.raucb", fs::read(&b).unwrap());
    let url = srv.url("/b.raucb");
    let out = info_json(&url, &["-H", "X-Token: secret 42", "--http-header=Authorization: Bearer abc"]);
    assert_eq!(out, info_json(&b.to_string_lossy(), &[]));
    let reqs = srv.requests();
    assert!(reqs.len() >= 3, "{reqs:?}");
    assert_eq!(reqs[0].header("range"), Some("bytes=0-3"));
    let ours = concat!("rota/", env!("CARGO_PKG_VERSION"));
    // Then exactly the trailer and exactly the signature, as RAUC asks for them.
    let bytes = fs::read(&b).unwrap();
    let len = bytes.len() as u64;
    let sig = split_bundle(&bytes).1 as u64;
    assert_eq!(reqs[1].header("range"), Some(format!("bytes={}-{}", len - 8, len - 1).as_str()));
    assert_eq!(reqs[2].header("range"), Some(format!("bytes={}-{}", len - 8 - sig, len - 9).as_str()));
    assert_eq!(reqs.len(), 3, "info of a verity bundle reads nothing else: {reqs:?}");
    for r in &reqs {
        assert!(r.spelt.iter().any(|k| k == "X-Token") && r.spelt.iter().any(|k| k == "Authorization"), "{r:?}");
        assert_eq!(r.header("x-token"), Some("secret 42"));
        assert_eq!(r.header("authorization"), Some("Bearer abc"));
    }
    // The first request names the client, as RAUC's does.
    assert_eq!(reqs[0].header("user-agent"), Some(ours), "{:?}", reqs[0]);
    for r in &reqs[1..] {
        assert!(r.header("user-agent").is_none(), "only the first request names the client: {r:?}");
    }
    // Called as `rauc`, RAUC's product token comes first (RAUC sends
    // `rauc/<version>`; servers may tell RAUC clients apart by it).
    let before = srv.requests().len();
    let out = run(rota_as_rauc().arg("info").arg("--output-format=json").arg(keyring()).arg(&url)).ok().stdout;
    assert_eq!(out, info_json(&b.to_string_lossy(), &[]));
    let reqs = srv.requests();
    let ua = reqs[before].header("user-agent").unwrap_or_default();
    assert!(ua.starts_with("rauc/1.") && ua.ends_with(&format!(" {ours}")), "{:?}", reqs[before]);
}

#[test]
fn a_ca_file_is_trusted_as_curl_trusts_it() {
    // The server's certificate is issued by the intermediate CA and sent
    // alone: a CA file holding only the intermediate is enough, as it is
    // for curl (and so for RAUC); the root alone or an unrelated CA is not.
    let t = tempfile::tempdir().unwrap();
    let (_, b) = make(t.path(), "verity");
    let (_w, www) = web_root();
    fs::copy(&b, www.join("b.raucb")).unwrap();
    let (cert, key) = (pki_file("inter-server.pem"), pki_file("inter-server.key"));
    let nginx = Nginx::serve_tls(&www, Tls { cert: &cert, key: &key, client_ca: None });
    let url = nginx.url("/b.raucb");
    let curl = |ca: &str| {
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--cacert"])
            .arg(pki_file(ca))
            .arg(&url)
            .status()
            .unwrap()
            .success()
    };
    let expected = info_json(&b.to_string_lossy(), &[]);
    assert!(curl("inter.pem"), "the referee trusts the intermediate alone");
    assert_eq!(info_json(&url, &[&format!("--tls-ca={}", pki_file("inter.pem").display())]), expected);
    for ca in ["root.pem", "other-root.pem"] {
        assert!(!curl(ca), "the referee refuses with {ca}");
        let out = run(rota().arg("info").arg(keyring()).arg(format!("--tls-ca={}", pki_file(ca).display())).arg(&url))
            .fails();
        assert!(
            out.stderr.contains("TLS handshake failed") && out.stderr.contains("certificate verify failed"),
            "{ca}: {}",
            out.stderr
        );
    }
}

#[test]
fn servers_that_misbehave_get_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let (_, b) = make(t.path(), "verity");
    let srv = Server::start();
    srv.put("/b.raucb", fs::read(&b).unwrap());
    let url = srv.url("/b.raucb");
    let cases = [
        (Mode::IgnoreRange, "range requests not supported by server"),
        (Mode::Status(404), "not found"),
        (Mode::Status(401), "unauthorized"),
        (Mode::Status(418), "unexpected HTTP response code 418"),
        (Mode::WrongRange, "server answered range 1-4/"),
    ];
    for (mode, expected) in cases {
        srv.set_mode(mode.clone());
        let r = run(rota().arg("info").arg(keyring()).arg(&url)).fails();
        let last = r.stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with(&format!("Failed to stream bundle {url}: ")), "{mode:?}: {last}");
        assert!(last.contains(expected), "{mode:?}: {last}");
    }
}

#[test]
fn plain_bundles_cannot_be_streamed_and_tampered_payloads_fail() {
    let t = tempfile::tempdir().unwrap();
    let (_, plain) = make(t.path(), "plain");
    let (_, verity) = make(t.path(), "verity");
    let srv = Server::start();
    srv.put("/p.raucb", fs::read(&plain).unwrap());
    let mut bytes = fs::read(&verity).unwrap();
    bytes[5000] ^= 0x10;
    srv.put("/v.raucb", bytes);
    let r = run(rota().arg("info").arg(keyring()).arg(srv.url("/p.raucb"))).fails();
    assert_eq!(
        r.stderr.lines().last(),
        Some("Invalid bundle format: Bundle format 'plain' not supported in streaming mode")
    );
    // info checks only the signature; extract reads the payload and refuses it.
    info_json(&srv.url("/v.raucb"), &[]);
    let out = t.path().join("x");
    let r = run(rota().arg("extract").arg(keyring()).arg(srv.url("/v.raucb")).arg(&out)).fails();
    assert!(r.stderr.contains("bundle payload is corrupted"), "{}", r.stderr);
    assert!(!out.exists());
}

#[test]
fn https_with_ca_pinning_no_verify_and_client_certificates() {
    let (t, www) = web_root();
    let (_, b) = make(t.path(), "verity");
    fs::copy(&b, www.join("b.raucb")).unwrap();
    let (cert, key) = (pki_file("server.pem"), pki_file("server.key"));
    let local = info_json(&b.to_string_lossy(), &[]);

    let server = Nginx::serve_tls(&www, Tls { cert: &cert, key: &key, client_ca: None });
    let url = server.url("/b.raucb");
    assert!(url.starts_with("https://"));
    let ca = format!("--tls-ca={}", pki_file("root.pem").display());
    assert_eq!(info_json(&url, &[&ca]), local);
    // The system store does not know the test CA; another CA does not either.
    let r = run(rota().arg("info").arg(keyring()).arg(&url)).fails();
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("Failed to stream bundle {url}: TLS handshake failed: ")), "{last}");
    assert!(
        last.contains("certificate verify failed") && last.contains("unable to get local issuer certificate"),
        "{last}"
    );
    assert!(!r.stderr.contains("retrying"), "certificate failures are not retried: {}", r.stderr);
    let wrong = format!("--tls-ca={}", pki_file("other-root.pem").display());
    run(rota().arg("info").arg(keyring()).arg(&wrong).arg(&url)).fails();
    assert_eq!(info_json(&url, &["--tls-no-verify"]), local);

    let mtls = Nginx::serve_tls(&www, Tls { cert: &cert, key: &key, client_ca: Some(&pki_file("root.pem")) });
    let url = mtls.url("/b.raucb");
    let r = run(rota().arg("info").arg(keyring()).arg(&ca).arg(&url)).fails();
    assert!(r.stderr.contains("unexpected HTTP response code 400"), "no client certificate: {}", r.stderr);
    let client = [
        format!("--tls-cert={}", pki_file("client.pem").display()),
        format!("--tls-key={}", pki_file("client.key").display()),
    ];
    assert_eq!(info_json(&url, &[&ca, &client[0], &client[1]]), local);
}

#[test]
fn automatic_rauc_headers_go_with_the_first_request_only() {
    let t = tempfile::tempdir().unwrap();
    let (_, b) = make(t.path(), "verity");
    let srv = Server::start();
    srv.put("/b.raucb", fs::read(&b).unwrap());
    let conf = t.path().join("system.conf");
    fs::write(
        &conf,
        format!(
            "[system]\ncompatible=Test Config\nbootloader=noop\nvariant-name=charger-v2\n\n[keyring]\npath={}\n\n[streaming]\nsend-headers=boot-id;uptime;variant;system-version\n",
            pki_file("keyring.pem").display()
        ),
    )
    .unwrap();
    run(rota().arg("info").arg("-c").arg(&conf).arg(srv.url("/b.raucb"))).ok();
    let reqs = srv.requests();
    let first = &reqs[0];
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(first.header("rauc-boot-id"), Some(boot_id.trim()));
    assert_eq!(first.header("rauc-variant"), Some("charger-v2"));
    assert!(first.header("rauc-uptime").is_some_and(|u| u.parse::<f64>().is_ok()), "{first:?}");
    // No system-info handler ran, so no system version is known or sent.
    assert!(first.header("rauc-system-version").is_none());
    let names: Vec<&str> = first.headers.iter().map(|(k, _)| k.as_str()).filter(|k| k.starts_with("rauc-")).collect();
    assert_eq!(names, ["rauc-boot-id", "rauc-uptime", "rauc-variant"], "send-headers order");
    // Spelt as RAUC (curl) spells them: HTTP/1 servers may keep the case.
    let spelt: Vec<&str> = first.spelt.iter().map(String::as_str).filter(|k| k.starts_with("RAUC-")).collect();
    assert_eq!(spelt, ["RAUC-Boot-ID", "RAUC-Uptime", "RAUC-Variant"], "{first:?}");
    for name in ["User-Agent", "Range", "Accept", "Host"] {
        assert!(first.spelt.iter().any(|k| k == name), "{name}: {first:?}");
    }
    for r in &reqs[1..] {
        assert!(r.headers.iter().all(|(k, _)| !k.starts_with("rauc-")), "{r:?}");
    }
    // With the configuration named, the system-info handler runs (as RAUC
    // sets up its target then) and its values go along; found on the search
    // path instead, the configuration alone counts.
    let handler = t.path().join("systeminfo.sh");
    fs::write(
        &handler,
        "#!/bin/sh
echo RAUC_SYSTEM_SERIAL=1234
echo RAUC_SYSTEM_VERSION=1.0.0
echo RAUC_SYSTEM_VARIANT=test-variant-x
echo RAUC_HTTP_FLEET=north
",
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(&handler)).ok();
    fs::write(
        &conf,
        format!(
            "[system]\ncompatible=Test Config\nbootloader=noop\nvariant-name=charger-v2\n\n[keyring]\npath={}\n\n[handlers]\nsystem-info={}\n\n[streaming]\nsend-headers=serial;system-version;variant\n",
            pki_file("keyring.pem").display(),
            handler.display()
        ),
    )
    .unwrap();
    let before = srv.requests().len();
    run(rota().arg("info").arg("-c").arg(&conf).arg(srv.url("/b.raucb"))).ok();
    let first = &srv.requests()[before];
    let sent: Vec<(&str, &str)> = first
        .spelt
        .iter()
        .zip(&first.headers)
        .filter(|(k, _)| k.starts_with("RAUC-"))
        .map(|(k, (_, v))| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        sent,
        [
            ("RAUC-Serial", "1234"),
            ("RAUC-System-Version", "1.0.0"),
            ("RAUC-Variant", "test-variant-x"),
            ("RAUC-FLEET", "north")
        ],
        "{first:?}"
    );
    fs::write(
        &conf,
        "[system]\ncompatible=Test Config\nbootloader=noop\n[streaming]\nsend-headers=boot-id;shoe-size\n",
    )
    .unwrap();
    let r = run(rota().arg("info").arg("-c").arg(&conf).arg(srv.url("/b.raucb"))).fails();
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(last.ends_with(":5: Automatic HTTP header 'shoe-size' not supported"), "{last}");
}

/// A verity bundle of one random `mib` MiB image on an in-process server,
/// extracted through it (after `configure` set the server up); returns the
/// server, the bundle's length and rota's output.
fn extract_served(mib: usize, seed: u64, configure: impl Fn(&Server)) -> (Server, u64, testkit::Run) {
    let t = tempfile::tempdir().unwrap();
    let c = Content::new(t.path().join("c"));
    let img = c.image("rootfs.img", mib << 20, seed);
    c.manifest("[update]\ncompatible=Test Config\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.img\n");
    let b = t.path().join("big.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    let bytes = fs::read(&b).unwrap();
    let len = bytes.len() as u64;
    let srv = Server::start();
    srv.put("/big.raucb", bytes);
    configure(&srv);
    let out = t.path().join("x");
    let r = run(rota().arg("extract").arg(keyring()).arg(srv.url("/big.raucb")).arg(&out)).ok();
    assert!(fs::read(out.join("rootfs.img")).unwrap() == img, "extracted image differs");
    (srv, len, r)
}

#[test]
fn streamed_reads_use_large_ranges_several_at_once() {
    let (srv, len, _) = extract_served(6, 3, |srv| srv.set_delay(std::time::Duration::from_millis(40)));
    let reqs = srv.requests();
    let windows: Vec<(u64, u64)> = reqs[3..]
        .iter()
        .map(|r| {
            let (a, b) = r.header("range").unwrap().trim_start_matches("bytes=").split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    // Scattered reads and the first reads of a stream fetch exactly the
    // 4 KiB blocks they need; a sequential stream then takes whole 512 KiB
    // windows, adjacent ones a read needs at once coalesced into one request
    // of at most 8 windows, and carries most of the bytes.
    assert!(windows.len() >= 6, "{windows:?}");
    const WIN: u64 = 512 * 1024;
    let mut in_windows = 0;
    for (a, b) in &windows {
        assert_eq!(a % 4096, 0, "range {a}-{b} is not 4 KiB aligned");
        let n = b - a + 1;
        assert!(n <= 8 * WIN, "range {a}-{b} is larger than 8 windows");
        if a % WIN == 0 && (n % WIN == 0 || *b == len - 1) {
            in_windows += n;
        }
    }
    assert!(in_windows * 10 >= len * 8, "only {in_windows} of {len} bytes came in whole windows: {windows:?}");
    // Only a few hash-tree blocks read before their stream became
    // sequential are fetched again, with their window.
    let fetched: u64 = reqs.iter().map(|r| r.range_len()).sum();
    assert!(fetched <= len + 64 * 1024, "fetched {fetched} of {len} bytes: {windows:?}");
    assert!(srv.max_concurrent() >= 2, "requests should overlap (read-ahead), max was {}", srv.max_concurrent());
}

#[test]
fn a_bundle_larger_than_the_window_cache_is_fetched_about_once() {
    // 48 MiB of incompressible data: four times the window cache, so windows
    // come and go while the verity reader interleaves data and hash-tree
    // reads. Read-ahead must not be evicted before it is used, and the hash
    // tree's upper levels, read now and then, must not be fetched again and
    // again.
    let (srv, len, r) = extract_served(48, 7, |_| {});
    let fetched: u64 = srv.requests().iter().map(|r| r.range_len()).sum();
    assert!(fetched <= len + len / 100, "fetched {fetched} bytes of a {len} byte bundle: {}", r.stderr);
}

#[test]
fn scattered_reads_of_bytes_being_fetched_wait_for_them() {
    use rota_bundle::source::ReadAt;
    use rota_bundle::source::http::{HttpOptions, HttpSource};
    let server = Server::start();
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    server.put("/b", data.clone());
    let source = std::sync::Arc::new(HttpSource::open(&server.url("/b"), HttpOptions::default()).unwrap());
    source.advise_scattered(true);
    let asked = |s: &Server| s.requests().iter().filter(|r| r.header("range") == Some("bytes=8192-12287")).count();
    // The first read's request is held at the server...
    server.hold(8192, 12288);
    let first = {
        let s = source.clone();
        std::thread::spawn(move || {
            let mut b = vec![0u8; 90];
            s.read_exact_at(8202, &mut b).map(|_| b)
        })
    };
    while asked(&server) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // ...while a second read of the same 4 KiB block comes along.
    let second = {
        let s = source.clone();
        std::thread::spawn(move || {
            let mut b = vec![0u8; 100];
            s.read_exact_at(8392, &mut b).map(|_| b)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    server.release();
    assert_eq!(first.join().unwrap().unwrap(), data[8202..8292]);
    assert_eq!(second.join().unwrap().unwrap(), data[8392..8492]);
    assert_eq!(asked(&server), 1, "the block was fetched once");
}
