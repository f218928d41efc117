//! What a crypt bundle keeps secret stays secret: its content key never
//! leaves the service (not through `dev.rota.Installer1.Inspect`, not
//! through `InspectBundle`), and a failure to decrypt its envelope reads
//! the same whatever went wrong — a bad RSA padding, a content key of the
//! wrong length, a damaged content, a key it is not encrypted for — so no
//! caller learns anything about the device's private key from the text.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::bus::{Bus, Service};
use testkit::device::Device;
use testkit::{Content, WorkDir, pki_file, rota, rota_bundle, run, split_bundle, target_dir};

/// The one text every failure to decrypt gives (`rota_bundle::signature::envelope::DECRYPT_FAILED`).
const DECRYPT_FAILED: &str = "Failed to decrypt CMS EnvelopedData: it is not encrypted for this key, or it is damaged";

/// A crypt bundle encrypted for the test's RSA recipient, in `dir`.
fn crypt_bundle(dir: &Path) -> PathBuf {
    let c = Content::standard(dir.join("content"), "crypt");
    let signed = dir.join("signed.raucb");
    rota_bundle(&c.dir, &signed, "release").ok();
    let out = dir.join("crypt.raucb");
    let to = format!("--to={}", pki_file("rsa-recipient.pem").display());
    run(rota().arg("encrypt").arg(to).arg(&signed).arg(&out)).ok();
    out
}

/// A device whose service decrypts with the RSA recipient key.
fn device(name: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=noop\n[keyring]\npath={}\n[encryption]\nkey={}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n\
         [slot.appfs.0]\ndevice=appfs0.img\nparent=rootfs.0\n[slot.appfs.1]\ndevice=appfs1.img\nparent=rootfs.1\n",
        pki_file("keyring.pem").display(),
        pki_file("rsa-recipient.key").display()
    );
    let d = Device::new(target_dir().join("test-devices").join(name), &conf);
    for f in ["rootfs0.img", "rootfs1.img", "appfs0.img", "appfs1.img"] {
        d.slot_file(f, 512 * 1024, 0);
    }
    d
}

/// `busctl --json=short call` on the service object; (stdout, stderr, success).
fn call(bus: &Bus, interface: &str, method: &str, args: &[&str]) -> (String, String, bool) {
    let mut a = vec!["--json=short", "call", "de.pengutronix.rauc", "/", interface, method];
    a.extend(args);
    let r = run(&mut bus.busctl(&a));
    (r.stdout, r.stderr, r.code == 0)
}

/// The crypt key of `bundle` as its signed manifest holds it.
fn crypt_key_of(bundle: &Path, dir: &Path) -> String {
    let sig = dir.join("sig.der");
    let mut c = rota();
    c.arg("extract-signature").arg(format!("--key={}", pki_file("rsa-recipient.key").display()));
    testkit::with_keyring(&mut c).arg(bundle).arg(&sig);
    run(&mut c).ok();
    let out =
        run(Command::new("openssl").args(["cms", "-verify", "-noverify", "-inform", "DER", "-in"]).arg(&sig)).ok();
    let line = out.stdout.lines().find(|l| l.starts_with("crypt-key=")).expect("a crypt-key in the signed manifest");
    line["crypt-key=".len()..].trim().to_string()
}

#[test]
fn the_crypt_key_never_leaves_the_service() {
    let work = WorkDir::new(target_dir().join("test-bundles/crypt-secrets-key"));
    let b = crypt_bundle(work.path());
    let key = crypt_key_of(&b, work.path());
    assert_eq!(key.len(), 64);
    let d = device("crypt-secrets-key");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    let path = b.to_str().unwrap();
    for (interface, method) in [("dev.rota.Installer1", "Inspect"), ("de.pengutronix.rauc.Installer", "InspectBundle")]
    {
        let (out, err, ok) = call(&bus, interface, method, &["sa{sv}", path, "0"]);
        assert!(ok, "{method}: {err}");
        assert!(out.contains("Test Config"), "{method}: {out}");
        assert!(!out.contains(&key) && !out.contains("crypt-key"), "{method} shows the crypt key: {out}");
    }
    // `info` through the service shows what a local info with the key shows,
    // the manifest hash (over the signed text, key included) too.
    let mut via_service = d.rota();
    via_service.envs(bus.env()).args(["info", "--output-format=json", path]);
    let remote = run(&mut via_service).ok().stdout;
    let mut local = rota();
    local.args(["info", "--output-format=json", &format!("--key={}", pki_file("rsa-recipient.key").display())]);
    let local = run(testkit::with_keyring(&mut local).arg(path)).ok().stdout;
    assert_eq!(remote, local);
    assert!(!remote.contains(&key));
}

/// `bundle` with its CMS (EnvelopedData) replaced by `cms` of the same length.
fn with_cms(bundle: &[u8], cms: &[u8], out: &Path) -> PathBuf {
    let (payload, sig) = split_bundle(bundle);
    assert_eq!(sig, cms.len());
    let mut bytes = bundle[..payload].to_vec();
    bytes.extend_from_slice(cms);
    bytes.extend_from_slice(&bundle[payload + sig..]);
    fs::write(out, bytes).unwrap();
    out.to_path_buf()
}

/// Where the recipient's encrypted content key (the 256-byte OCTET STRING
/// of an RSA-2048 key transport) lies in `cms`.
fn encrypted_key_at(cms: &Path) -> usize {
    let out = run(Command::new("openssl").args(["asn1parse", "-inform", "DER", "-in"]).arg(cms)).ok().stdout;
    for line in out.lines() {
        // "  123:d=5  hl=4 l= 256 prim: OCTET STRING      [HEX DUMP]:…"
        let Some((offset, rest)) = line.trim_start().split_once(':') else { continue };
        let field = |name: &str| {
            rest.split(name).nth(1).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<usize>().ok())
        };
        if rest.contains("prim: OCTET STRING") && field(" l=") == Some(256) {
            return offset.trim().parse::<usize>().unwrap() + field("hl=").unwrap();
        }
    }
    panic!("no encrypted key in\n{out}");
}

#[test]
fn every_failure_to_decrypt_reads_the_same() {
    let work = WorkDir::new(target_dir().join("test-bundles/crypt-secrets-oracle"));
    let dir = work.path();
    let good = crypt_bundle(dir);
    let bytes = fs::read(&good).unwrap();
    let (payload, sig) = split_bundle(&bytes);
    let cms = bytes[payload..payload + sig].to_vec();
    let cms_path = dir.join("cms.der");
    fs::write(&cms_path, &cms).unwrap();
    let at = encrypted_key_at(&cms_path);

    // 1. The encrypted content key altered: its RSA padding is broken.
    let mut bad_padding = cms.clone();
    bad_padding[at + 100] ^= 0x5a;
    // 2. A correctly padded content key of 16 bytes instead of 32.
    let short_key = dir.join("short.key");
    fs::write(&short_key, [7u8; 16]).unwrap();
    let pubkey = dir.join("recipient.pub");
    run(Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(pki_file("rsa-recipient.pem"))
        .arg("-out")
        .arg(&pubkey))
    .ok();
    let wrapped = dir.join("short.enc");
    run(Command::new("openssl")
        .args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
        .arg(&pubkey)
        .arg("-in")
        .arg(&short_key)
        .arg("-out")
        .arg(&wrapped))
    .ok();
    let mut wrong_length = cms.clone();
    wrong_length[at..at + 256].copy_from_slice(&fs::read(&wrapped).unwrap());
    // 3. The encrypted content's last block altered: its padding is broken.
    let mut bad_content = cms.clone();
    *bad_content.last_mut().unwrap() ^= 0x01;
    // 4. A block three from the end altered (CBC): its plaintext block is
    //    garbled, the next one has a bit flipped and the last one, with the
    //    padding, is intact, so the padding holds and the damage is inside
    //    the SignedData (its signature). With (3) that happens 1 time in 256.
    let mut damaged = cms.clone();
    let n = damaged.len();
    damaged[n - 40] ^= 0x10;
    let bundles = [
        with_cms(&bytes, &bad_padding, &dir.join("bad-padding.raucb")),
        with_cms(&bytes, &wrong_length, &dir.join("wrong-length.raucb")),
        with_cms(&bytes, &bad_content, &dir.join("bad-content.raucb")),
        with_cms(&bytes, &damaged, &dir.join("damaged-content.raucb")),
    ];

    // On the command line, with the recipient's key; and with a key the
    // bundle is not encrypted for.
    let info = |b: &Path, key: &str| {
        let mut c = rota();
        c.args(["info", &format!("--key={}", pki_file(key).display())]);
        run(testkit::with_keyring(&mut c).arg(b))
    };
    let mut texts: Vec<String> = bundles.iter().map(|b| info(b, "rsa-recipient.key").fails().stderr).collect();
    texts.push(info(&good, "release.key").fails().stderr);
    // Each says it in its last line, and says nothing else.
    for t in &texts {
        assert_eq!(t.trim_end().lines().last(), Some(DECRYPT_FAILED), "{t}");
        for reason in ["padding", "wrong", "bad decrypt", "length", "error:"] {
            assert!(!t.lines().any(|l| l.to_lowercase().contains(reason) && !l.contains("Reading bundle")), "{t}");
        }
    }

    // Through the service (its [encryption] key): the same text each time.
    let d = device("crypt-secrets-oracle");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    for b in &bundles {
        let (_, err, ok) = call(&bus, "dev.rota.Installer1", "Inspect", &["sa{sv}", b.to_str().unwrap(), "0"]);
        assert!(!ok);
        assert_eq!(err.trim(), format!("Call failed: {DECRYPT_FAILED}"), "{}", b.display());
    }
    // The good bundle still opens.
    let (_, err, ok) = call(&bus, "dev.rota.Installer1", "Inspect", &["sa{sv}", good.to_str().unwrap(), "0"]);
    assert!(ok, "{err}");
}
