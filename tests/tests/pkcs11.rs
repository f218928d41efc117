//! Keys that never leave a PKCS#11 token (SoftHSM 2, through OpenSSL's
//! pkcs11 engine): signing bundles, decrypting crypt bundles on the device,
//! and presenting a TLS client certificate to nginx. Debian's rauc is the
//! peer for signatures made on the token.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::bus::{Bus, Service};
use testkit::device::{Device, grub_selected, grubenv};
use testkit::httpd::{Fault, Server};
use testkit::nginx::{Nginx, Tls};
use testkit::pkcs11::Token;
use testkit::{Content, peer_rauc, pki_file, rota, rota_bundle, run, sha256_hex, target_dir};

fn dir(name: &str) -> PathBuf {
    let d = target_dir().join("test-pkcs11").join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// A token in `dir` holding the `release` signer (key and certificate).
fn release_token(dir: &Path) -> Token {
    let t = Token::new(&dir.join("token"));
    t.import("release", "01", &pki_file("release.key"), Some(&pki_file("release.pem")));
    t
}

fn with_env<'a>(cmd: &'a mut Command, env: &[(String, String)]) -> &'a mut Command {
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
}

fn token_sign_args(t: &Token) -> Vec<String> {
    vec![
        format!("--cert={}", t.uri("release", "cert")),
        format!("--key={}", t.uri("release", "private")),
        format!("--intermediate={}", pki_file("inter.pem").display()),
    ]
}

#[test]
fn bundles_signed_on_a_token_verify_with_rota_and_rauc() {
    let d = dir("sign");
    let t = release_token(&d);
    let c = Content::standard(d.join("content"), "verity");
    let keyring = format!("--keyring={}", pki_file("keyring.pem").display());
    // rota signs on the token and rauc verifies, and the other way round.
    type Tool = fn() -> Command;
    let tools: [(&str, Tool, Tool); 2] = [("rota", rota, peer_rauc), ("rauc", peer_rauc, rota)];
    for (signer, sign, verify) in tools {
        let b = d.join(format!("{signer}.raucb"));
        run(with_env(sign().arg("bundle").args(token_sign_args(&t)).arg(&c.dir).arg(&b), &t.env())).ok();
        let info = run(verify().arg("info").arg(&keyring).arg(&b)).ok();
        assert!(
            info.stderr.contains("Verified inline signature by 'O = rota test, CN = rota Release Signer'"),
            "signed by {signer}: {}",
            info.stderr
        );
    }
}

#[test]
fn a_wrong_pin_or_a_missing_object_is_named_and_writes_no_bundle() {
    let d = dir("sign-errors");
    let t = release_token(&d);
    let c = Content::standard(d.join("content"), "verity");
    let out = d.join("b.raucb");
    let mut env = t.env_without_pin();
    env.push(("RAUC_PKCS11_PIN".into(), "9999".into()));
    let r = run(with_env(rota().arg("bundle").args(token_sign_args(&t)).arg(&c.dir).arg(&out), &env)).fails();
    let key = t.uri("release", "private");
    assert!(r.stderr.contains(&format!("Failed to load key '{key}': ")), "{}", r.stderr);
    assert!(r.stderr.contains("PIN incorrect"), "{}", r.stderr);
    assert!(!out.exists());
    // A PIN in the URI works like the environment's, and is never shown.
    let missing = "pkcs11:token=rota;object=nothing;type=private?pin-value=1234";
    let args = [format!("--cert={}", t.uri("release", "cert")), format!("--key={missing}")];
    let r = run(with_env(rota().arg("bundle").args(args).arg(&c.dir).arg(&out), &t.env_without_pin())).fails();
    assert!(
        r.stderr.contains("Failed to load key 'pkcs11:token=rota;object=nothing;type=private?pin-value=***': "),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("object not found"), "{}", r.stderr);
    // (libp11 prints the URI itself; rota's own lines never show the PIN.)
    assert!(r.stderr.lines().filter(|l| l.contains("Failed")).all(|l| !l.contains("pin-value=1234")), "{}", r.stderr);
    assert!(!out.exists());
    // A module that does not exist.
    let env = vec![("RAUC_PKCS11_MODULE".to_string(), "/nonexistent/pkcs11-module.so".to_string())];
    let r = run(with_env(rota().arg("bundle").args(token_sign_args(&t)).arg(&c.dir).arg(&out), &env)).fails();
    assert!(
        r.stderr.contains("Failed to load certificate 'pkcs11:token=rota;object=release;type=cert': "),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn crypt_bundles_install_with_the_decryption_key_on_a_token() {
    let d = dir("decrypt");
    let t = Token::new(&d.join("token"));
    t.import("rsa", "02", &pki_file("rsa-recipient.key"), None);
    t.import("ec", "03", &pki_file("ec-recipient.key"), None);
    let c = Content::standard(d.join("content"), "crypt");
    let signed = d.join("signed.raucb");
    run(rota().arg("bundle").args(testkit::signer_args("release")).arg(&c.dir).arg(&signed)).ok();
    for (label, recipient) in [("rsa", "rsa-recipient.pem"), ("ec", "ec-recipient.pem")] {
        let enc = d.join(format!("{label}.raucb"));
        let to = format!("--to={}", pki_file(recipient).display());
        run(rota().arg("encrypt").arg(to).arg(&signed).arg(&enc)).ok();
        // `info --key=<URI>`, from rota and from rauc.
        let keyring = format!("--keyring={}", pki_file("keyring.pem").display());
        let key = format!("--key={}", t.uri(label, "private"));
        for mut cmd in [rota(), peer_rauc()] {
            let info = run(with_env(cmd.arg("info").arg(&keyring).arg(&key).arg(&enc), &t.env())).ok();
            assert!(info.stdout.contains("Compatible:") && info.stdout.contains("'Test Config'"), "{}", info.stdout);
        }
        // A device whose [encryption] key is on the token installs it.
        let conf = format!(
            "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\n[keyring]\npath={}\n\
             [encryption]\nkey={}\n[slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n\
             [slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n[slot.appfs.0]\ndevice=appfs0.img\nparent=rootfs.0\n\
             [slot.appfs.1]\ndevice=appfs1.img\nparent=rootfs.1\n",
            pki_file("keyring.pem").display(),
            t.uri(label, "private")
        );
        let dev = Device::new(d.join(format!("device-{label}")), &conf);
        dev.grub_env(&["A", "B"]);
        for f in ["rootfs0.img", "rootfs1.img", "appfs0.img", "appfs1.img"] {
            dev.slot_file(f, 512 * 1024, 0xAA);
        }
        run(with_env(dev.rota().arg("install").arg(&enc), &t.env())).ok();
        let root = fs::read(dev.path("rootfs1.img")).unwrap();
        assert_eq!(root[..256 * 1024], fs::read(c.dir.join("rootfs.img")).unwrap()[..], "{label}");
        assert!(fs::read(dev.path("rootfs0.img")).unwrap().iter().all(|&b| b == 0xAA), "booted slot untouched");
        assert_eq!(testkit::device::grub_selected(&grubenv(&dev.path("grubenv"))).as_deref(), Some("B"));
    }
}

const SLOT: usize = 4 << 20;

/// An A/B device with its slots filled with 0x5A, booted from A.
fn ab_device(dir: &Path, extra: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\n[keyring]\npath={}\n{extra}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(dir, &conf);
    d.grub_ab(SLOT, 0x5A);
    d
}

/// A verity bundle with a 2 MiB image at `www/b.raucb`; returns the image.
fn publish(d: &Path, www: &Path) -> Vec<u8> {
    let c = Content::new(d.join("content"));
    let image = c.image("rootfs.img", 2 << 20, 77);
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.img\n",
    );
    fs::create_dir_all(www).unwrap();
    rota_bundle(&c.dir, &www.join("b.raucb"), "release").ok();
    image
}

fn installed(d: &Device, image: &[u8]) -> bool {
    let slot = fs::read(d.path("rootfs1.img")).unwrap();
    slot[..image.len()] == image[..] && grub_selected(&grubenv(&d.path("grubenv"))).as_deref() == Some("B")
}

fn untouched(d: &Device) -> bool {
    let fill = sha256_hex(&vec![0x5A; SLOT]);
    grub_selected(&grubenv(&d.path("grubenv"))).as_deref() == Some("A")
        && ["rootfs0.img", "rootfs1.img"].iter().all(|s| sha256_hex(&fs::read(d.path(s)).unwrap()) == fill)
}

#[test]
fn https_client_certificates_from_a_token() {
    let d = dir("tls");
    let www = d.join("www");
    let image = publish(&d, &www);
    let t = Token::new(&d.join("token"));
    t.import("client", "05", &pki_file("client.key"), Some(&pki_file("client.pem")));
    let root = pki_file("root.pem");
    let (cert, key) = (pki_file("server.pem"), pki_file("server.key"));
    let mtls = Nginx::serve_tls(&www, Tls { cert: &cert, key: &key, client_ca: Some(&root) });
    let url = mtls.url("/b.raucb");
    let ca = format!("--tls-ca={}", root.display());

    // Direct mode: certificate and key on the token.
    let dev = ab_device(&d.join("direct"), "");
    let args = [
        ca.clone(),
        format!("--tls-cert={}", t.uri("client", "cert")),
        format!("--tls-key={}", t.uri("client", "private")),
    ];
    run(with_env(dev.rota().arg("install").args(&args).arg(&url), &t.env())).ok();
    assert!(installed(&dev, &image), "token certificate and key");

    // The certificate from a file, the key on the token.
    let dev = ab_device(&d.join("mixed"), "");
    let args = [
        ca.clone(),
        format!("--tls-cert={}", pki_file("client.pem").display()),
        format!("--tls-key={}", t.uri("client", "private")),
    ];
    run(with_env(dev.rota().arg("install").args(&args).arg(&url), &t.env())).ok();
    assert!(installed(&dev, &image), "file certificate, token key");

    // The service, configured in [streaming].
    let streaming = format!(
        "[streaming]\ntls-ca={}\ntls-cert={}\ntls-key={}\n",
        root.display(),
        t.uri("client", "cert"),
        t.uri("client", "private")
    );
    let dev = ab_device(&d.join("service"), &streaming);
    let bus = Bus::start();
    let env = t.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let svc = Service::start(&dev, &bus, &env);
    run(dev.rota().envs(bus.env()).args(["install", &url])).ok();
    assert!(installed(&dev, &image), "service");
    drop(svc);
    assert!(mtls.header_log().iter().filter(|l| l.uri == "/b.raucb").all(|l| l.status == 206));

    // Through the environment's proxy: https:// in a CONNECT tunnel, and
    // http:// (the token transport, key loaded but unused) in absolute form.
    let proxy = testkit::proxy::Proxy::start();
    let via = proxy.url("fleet", "pw");
    let plain = Nginx::serve(&www);
    let token_args =
        [format!("--tls-cert={}", t.uri("client", "cert")), format!("--tls-key={}", t.uri("client", "private"))];
    for (name, var, target) in
        [("proxy-https", "https_proxy", url.clone()), ("proxy-http", "http_proxy", plain.url("/b.raucb"))]
    {
        let dev = ab_device(&d.join(name), "");
        let mut cmd = dev.rota();
        cmd.env_remove("no_proxy")
            .env_remove("NO_PROXY")
            .env(var, &via)
            .arg("install")
            .arg(&ca)
            .args(&token_args)
            .arg(&target);
        run(with_env(&mut cmd, &t.env())).ok();
        assert!(installed(&dev, &image), "{name}");
    }
    let seen = proxy.seen();
    assert!(seen.iter().any(|s| s.line == format!("CONNECT 127.0.0.1:{}", mtls.port)), "{seen:?}");
    assert!(seen.iter().any(|s| s.line == format!("GET {}", plain.url("/b.raucb"))), "{seen:?}");
    // base64 of fleet:pw
    assert!(seen.iter().all(|s| s.auth.as_deref() == Some("Basic ZmxlZXQ6cHc=")), "{seen:?}");

    // No PIN: the key cannot be used; the message names it, nothing is written.
    let dev = ab_device(&d.join("no-pin"), "");
    let args =
        [ca, format!("--tls-cert={}", t.uri("client", "cert")), format!("--tls-key={}", t.uri("client", "private"))];
    let r = run(with_env(dev.rota().arg("install").args(&args).arg(&url), &t.env_without_pin())).fails();
    let key = t.uri("client", "private");
    assert!(r.stderr.contains(&format!("Failed to stream bundle {url}: Failed to load key '{key}': ")), "{}", r.stderr);
    assert!(untouched(&dev), "no PIN");
}

#[test]
fn the_token_transport_follows_redirects_sends_credentials_and_survives_faults() {
    let d = dir("transport");
    let www = d.join("www");
    let image = publish(&d, &www);
    let bytes = fs::read(www.join("b.raucb")).unwrap();
    let t = Token::new(&d.join("token"));
    t.import("client", "05", &pki_file("client.key"), Some(&pki_file("client.pem")));
    let srv = Server::start();
    srv.put("/b.raucb", bytes.clone());
    srv.redirect("/latest.raucb", "/b.raucb");
    // A reset mid-body, a stall and a 503, each once, somewhere in the image.
    let third = bytes.len() as u64 / 3;
    srv.inject(Fault::Reset(1000), third, 1);
    srv.inject(Fault::Stall(1000, std::time::Duration::from_secs(5)), 2 * third, 1);
    srv.inject(Fault::Status(503), third / 2, 1);
    let url = srv.url("/latest.raucb").replace("http://", "http://fleet:s%3Acret@");
    let dev = ab_device(&d.join("device"), "[streaming]\nstall-timeout-sec=1\nretry-pause-ms=50\n");
    // Over plain HTTP the key is loaded but unused: the request still goes
    // through the token transport.
    let args = [format!("--tls-cert={}", t.uri("client", "cert")), format!("--tls-key={}", t.uri("client", "private"))];
    run(with_env(dev.rota().arg("install").args(&args).arg(&url), &t.env())).ok();
    assert!(installed(&dev, &image), "installed through redirects and faults");
    assert_eq!(srv.faults_served(), 3);
    let requests = srv.requests();
    let basic = "Basic ZmxlZXQ6czpjcmV0".to_string(); // base64 of fleet:s:cret
    assert!(requests.iter().any(|r| r.path == "/latest.raucb"));
    assert!(requests.iter().all(|r| r.header("authorization") == Some(basic.as_str())), "{requests:?}");
    assert!(requests.iter().filter(|r| r.path == "/b.raucb").all(|r| r.header("range").is_some()));

    // Too many redirects: a clear error, nothing written.
    srv.redirect("/loop.raucb", "/loop.raucb");
    let dev = ab_device(&d.join("loop"), "");
    let r = run(with_env(dev.rota().arg("install").args(&args).arg(srv.url("/loop.raucb")), &t.env())).fails();
    assert!(r.stderr.contains("more than 8 redirects"), "{}", r.stderr);
    assert!(untouched(&dev), "redirect loop");
}

#[test]
fn credentials_go_only_to_their_host_and_are_never_shown() {
    let d = dir("credentials");
    let www = d.join("www");
    publish(&d, &www);
    let bytes = fs::read(www.join("b.raucb")).unwrap();
    let t = Token::new(&d.join("token"));
    t.import("client", "05", &pki_file("client.key"), Some(&pki_file("client.pem")));
    let token_args =
        vec![format!("--tls-cert={}", t.uri("client", "cert")), format!("--tls-key={}", t.uri("client", "private"))];
    // Without a client key, and with the token's key.
    for (transport, args) in [("no client key", vec![]), ("token", token_args)] {
        let (origin, mirror) = (Server::start(), Server::start());
        origin.put("/b.raucb", bytes.clone());
        mirror.put("/b.raucb", bytes.clone());
        origin.redirect("/elsewhere.raucb", &mirror.url("/b.raucb"));
        origin.redirect("/here.raucb", "/b.raucb");
        let with_user = |path: &str| origin.url(path).replace("http://", "http://fleet:s3cret@");
        let info = |url: &str, extra: &[&str]| {
            let mut c = rota();
            c.args(["info", "--output-format=json"]).args(&args).args(extra).arg(url);
            run(with_env(testkit::with_keyring(&mut c), &t.env()))
        };
        // Redirected to another host: no credential follows, other headers do.
        let sent = ["-H", "Authorization: Bearer tok", "-H", "Cookie: session=1", "-H", "X-Fleet: 7"];
        let r = info(&with_user("/elsewhere.raucb"), &sent).ok();
        assert!(!format!("{}{}", r.stdout, r.stderr).contains("s3cret"), "{transport}: {}", r.stderr);
        let there = mirror.requests();
        assert!(!there.is_empty(), "{transport}");
        for req in &there {
            assert_eq!((req.header("authorization"), req.header("cookie")), (None, None), "{transport}: {req:?}");
            assert_eq!(req.header("x-fleet"), Some("7"), "{transport}: {req:?}");
        }
        // Redirected on the same host: every request, the ranges after the
        // redirect too, carries the URL's credentials.
        let before = origin.requests().len();
        info(&with_user("/here.raucb"), &[]).ok();
        let basic = "Basic ZmxlZXQ6czNjcmV0"; // base64 of fleet:s3cret
        let here = &origin.requests()[before..];
        assert!(here.len() >= 3, "{transport}: {here:?}");
        assert!(here.iter().all(|r| r.header("authorization") == Some(basic)), "{transport}: {here:?}");
        // An error names the URL without its credentials.
        let r = info(&with_user("/missing.raucb"), &[]).fails();
        assert!(
            r.stderr.contains(&format!("Failed to stream bundle {}", origin.url("/missing.raucb"))),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("s3cret"), "{transport}: {}", r.stderr);
    }
}
