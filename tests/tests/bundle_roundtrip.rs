//! Every format round-trips: `bundle` → `info` (all output formats agree
//! with the manifest) → `extract` gives back the input files.

use serde_json::Value;
use std::fs;
use std::path::Path;
use testkit::*;

const META: &str = "\n[meta.version]\nchannel=beta\nrelease-notes=foo bar\n";

fn make(dir: &Path, format: &str) -> (Content, std::path::PathBuf) {
    let c = Content::standard(dir.join("content"), format);
    let m = fs::read_to_string(c.dir.join("manifest.raucm")).unwrap();
    c.manifest(&format!("{m}{META}"));
    let out = dir.join(format!("{format}.raucb"));
    let r = rota_bundle(&c.dir, &out, "release").ok();
    assert_eq!(r.stdout, format!("Creating '{format}' format bundle\n"));
    (c, out)
}

fn info(bundle: &Path, format: &str, extra: &[&str]) -> String {
    let mut cmd = rota();
    cmd.arg("info").arg(format!("--output-format={format}")).args(extra).arg(bundle);
    with_keyring(&mut cmd);
    run(&mut cmd).ok().stdout
}

/// The manifest bytes the hash must cover: the inline manifest for
/// verity/crypt (from the CMS), `manifest.raucm` in the squashfs for plain.
fn signed_manifest(bundle: &Path, dir: &Path, format: &str) -> Vec<u8> {
    if format == "plain" {
        let ex = dir.join("mf-extract");
        let mut cmd = rota();
        with_keyring(cmd.arg("extract").arg(bundle).arg(&ex));
        run(&mut cmd).ok();
        return fs::read(ex.join("manifest.raucm")).unwrap();
    }
    let sig = dir.join("sig.der");
    let mut cmd = rota();
    with_keyring(cmd.arg("extract-signature").arg(bundle).arg(&sig));
    run(&mut cmd).ok();
    let out = run(std::process::Command::new("openssl")
        .args(["cms", "-verify", "-noverify", "-binary", "-inform", "DER", "-in"])
        .arg(&sig));
    out.stdout.into_bytes()
}

fn check_info_agrees(bundle: &Path, content: &Content, dir: &Path, format: &str) {
    let images = [("rootfs", "rootfs.img"), ("appfs", "appfs.img")];
    let mhash = sha256_hex(&signed_manifest(bundle, dir, format));

    // json and json-pretty carry the same document.
    let json: Value = serde_json::from_str(&info(bundle, "json", &[])).unwrap();
    let pretty_text = info(bundle, "json-pretty", &[]);
    assert!(pretty_text.contains("\"compatible\" : \"Test Config\""));
    let pretty: Value = serde_json::from_str(&pretty_text).unwrap();
    assert_eq!(json, pretty);
    assert_eq!(json["compatible"], "Test Config");
    assert_eq!(json["version"], "2024.08-1");
    assert_eq!(json["description"], "Spec test bundle");
    assert_eq!(json["build"], "20240824");
    assert_eq!(json["format"], format);
    assert_eq!(json["hash"], mhash.as_str());
    for (i, (class, file)) in images.iter().enumerate() {
        let img = &json["images"][i][class];
        let data = fs::read(content.dir.join(file)).unwrap();
        assert_eq!(img["filename"], *file);
        assert_eq!(img["checksum"], sha256_hex(&data).as_str());
        assert_eq!(img["size"], data.len() as u64);
        assert_eq!(img["type"], "raw");
    }

    // json-2 is the InspectBundle dictionary.
    let j2: Value = serde_json::from_str(&info(bundle, "json-2", &[])).unwrap();
    assert_eq!(j2["manifest-hash"], mhash.as_str());
    assert_eq!(j2["update"]["compatible"], "Test Config");
    assert_eq!(j2["bundle"]["format"], format);
    assert!(j2["bundle"].get("crypt-key").is_none());
    assert_eq!(j2["images"][1]["slot-class"], "appfs");
    assert_eq!(j2["meta"]["version"]["release-notes"], "foo bar");
    if format != "plain" {
        assert!(j2["bundle"]["verity-hash"].as_str().unwrap().len() == 64);
    }

    // shell output evaluates to the same values.
    let sh = info(bundle, "shell", &[]);
    let script = format!(
        "{sh}\nprintf '%s|%s|%s|%s|%s|%s' \"$RAUC_MF_COMPATIBLE\" \"$RAUC_MF_FORMAT\" \"$RAUC_MF_HASH\" \"$RAUC_IMAGE_DIGEST_1\" \"$RAUC_IMAGE_SIZE_0\" \"$RAUC_META_VERSION_RELEASE_NOTES\""
    );
    let out = run(std::process::Command::new("sh").arg("-c").arg(script)).ok();
    let appfs = sha256_hex(&fs::read(content.dir.join("appfs.img")).unwrap());
    assert_eq!(out.stdout, format!("Test Config|{format}|{mhash}|{appfs}|262144|foo bar"));

    // --dump-cert adds OpenSSL's text dump of the signer certificate.
    let dump = info(bundle, "readable", &["--dump-cert"]);
    assert!(dump.contains("Certificate:\n    Data:\n"), "{dump}");
    assert!(dump.contains("Subject: O = rota test, CN = rota Release Signer"), "{dump}");

    // readable text.
    let text = info(bundle, "readable", &[]);
    assert!(text.starts_with("Compatible:     'Test Config'\nVersion:        '2024.08-1'\n"), "{text}");
    assert!(text.contains(&format!("Bundle Format:  {format}")), "{text}");
    assert!(text.contains(&format!("Manifest Hash:  '{mhash}'")), "{text}");
    assert!(text.contains("2 Images:\n  \x1b[1m[rootfs]\x1b[0m\n    Filename:  rootfs.img\n"), "{text}");
    assert!(text.contains("Certificate Chain:\n 0 Subject: O = rota test, CN = rota Release Signer\n"), "{text}");
    assert!(text.contains(" 2 Subject: O = rota test, CN = rota Test Root CA\n"), "{text}");
}

fn check_extract(bundle: &Path, content: &Content, dir: &Path) {
    let out = dir.join("extracted");
    let mut cmd = rota();
    with_keyring(cmd.arg("extract").arg(bundle).arg(&out));
    run(&mut cmd).ok();
    for f in ["rootfs.img", "appfs.img"] {
        assert_eq!(fs::read(out.join(f)).unwrap(), fs::read(content.dir.join(f)).unwrap(), "{f}");
    }
    let internal = fs::read_to_string(out.join("manifest.raucm")).unwrap();
    assert!(internal.contains("sha256="), "{internal}");
    assert!(!internal.contains("verity-hash"), "internal manifest must not carry verity keys: {internal}");
    // The output directory must not exist beforehand.
    let mut again = rota();
    with_keyring(again.arg("extract").arg(bundle).arg(&out));
    assert!(run(&mut again).fails().stderr.contains("already exists"));
}

#[test]
fn plain_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let (c, b) = make(t.path(), "plain");
    check_info_agrees(&b, &c, t.path(), "plain");
    check_extract(&b, &c, t.path());
}

#[test]
fn verity_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let (c, b) = make(t.path(), "verity");
    check_info_agrees(&b, &c, t.path(), "verity");
    check_extract(&b, &c, t.path());
}

#[test]
fn crypt_round_trip_unencrypted_and_encrypted() {
    let t = tempfile::tempdir().unwrap();
    let (c, b) = make(t.path(), "crypt");
    check_info_agrees(&b, &c, t.path(), "crypt");
    let text = info(&b, "readable", &[]);
    assert!(
        text.contains("Bundle Format:  crypt \x1b[33m[unencrypted CMS]\x1b[0m\n  Crypt Key:    '<hidden>'\n"),
        "{text}"
    );

    // Encrypt for an RSA and an EC recipient; either key opens it.
    let enc = t.path().join("enc.raucb");
    let mut cmd = rota();
    cmd.arg("encrypt")
        .arg(format!("--to={}", pki_file("rsa-recipient.pem").display()))
        .arg(format!("--to={}", pki_file("ec-recipient.pem").display()));
    with_keyring(&mut cmd).arg(&b).arg(&enc);
    assert_eq!(run(&mut cmd).ok().stdout, format!("Encrypted bundle written to {}\n", enc.display()));
    // Same payload, different CMS.
    let (plain_b, enc_b) = (fs::read(&b).unwrap(), fs::read(&enc).unwrap());
    let payload_len = split_bundle(&plain_b).0;
    assert_eq!(plain_b[..payload_len], enc_b[..payload_len]);

    for key in ["rsa-recipient.key", "ec-recipient.key"] {
        let key = pki_file(key);
        let text = info(&enc, "readable", &[&format!("--key={}", key.display()), "--dump-recipients"]);
        assert!(text.contains("Bundle Format:  crypt \x1b[32m[encrypted CMS]\x1b[0m\n"), "{text}");
        assert!(text.contains("2 Recipients:"), "{text}");
        let json: Value = serde_json::from_str(&info(&enc, "json", &[&format!("--key={}", key.display())])).unwrap();
        assert_eq!(json["format"], "crypt");
    }
    let out = t.path().join("dec");
    let mut cmd = rota();
    with_keyring(
        cmd.arg("extract").arg(format!("--key={}", pki_file("ec-recipient.key").display())).arg(&enc).arg(&out),
    );
    run(&mut cmd).ok();
    assert_eq!(fs::read(out.join("rootfs.img")).unwrap(), fs::read(c.dir.join("rootfs.img")).unwrap());

    // Without a key, and with a key that is not a recipient.
    let mut cmd = rota();
    with_keyring(cmd.arg("info").arg(&enc));
    let r = run(&mut cmd).fails();
    assert_eq!(
        r.stderr.lines().last().unwrap(),
        "Encrypted bundle detected, but no decryption key given. Use --key=<PEMFILE|PKCS11-URL> to provide one."
    );
    let mut cmd = rota();
    with_keyring(cmd.arg("info").arg(format!("--key={}", pki_file("release.key").display())).arg(&enc));
    let r = run(&mut cmd).fails();
    assert!(r.stderr.contains("Failed to decrypt CMS EnvelopedData"), "{}", r.stderr);

    // Only crypt bundles can be encrypted.
    let (_, vb) = make(&t.path().join("v"), "verity");
    let mut cmd = rota();
    cmd.arg("encrypt").arg(format!("--to={}", pki_file("rsa-recipient.pem").display()));
    with_keyring(&mut cmd).arg(&vb).arg(t.path().join("nope.raucb"));
    assert!(run(&mut cmd).fails().stderr.contains("Refused to encrypt input bundle that is not in 'crypt' format."));
    assert!(!t.path().join("nope.raucb").exists());

    // Recipient files without a certificate: OpenSSL's reason, as RAUC
    // passes it on; nothing is written.
    let key_only = pki_file("rsa-recipient.key");
    let missing = t.path().join("missing.pem");
    for (to, expected) in [
        (&key_only, format!("Failed to parse cert file '{}': Expecting: CERTIFICATE", key_only.display())),
        (&missing, format!("Failed to load cert file '{}'", missing.display())),
    ] {
        let mut cmd = rota();
        cmd.arg("encrypt").arg(format!("--to={}", to.display()));
        with_keyring(&mut cmd).arg(&b).arg(t.path().join("nope.raucb"));
        assert_eq!(run(&mut cmd).fails().stderr.lines().last(), Some(expected.as_str()));
        assert!(!t.path().join("nope.raucb").exists());
    }
}

#[test]
fn adaptive_index_and_hooks_are_bundled() {
    let t = tempfile::tempdir().unwrap();
    let c = Content::new(t.path().join("content"));
    let img = c.image("rootfs.ext4", 64 * 4096, 7);
    c.file("hook.sh", b"#!/bin/sh\nexit 0\n");
    c.manifest("[update]\ncompatible=c\n[bundle]\nformat=verity\n[hooks]\nfilename=hook.sh\nhooks=install-check\n[image.rootfs]\nfilename=rootfs.ext4\nhooks=pre-install;post-install\nadaptive=block-hash-index\n");
    let b = t.path().join("a.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    let out = t.path().join("x");
    let mut cmd = rota();
    with_keyring(cmd.arg("extract").arg(&b).arg(&out));
    run(&mut cmd).ok();
    let index = fs::read(out.join("rootfs.ext4.block-hash-index")).unwrap();
    assert_eq!(index.len(), 64 * 32);
    assert_eq!(&index[..32], &sha2_of(&img[..4096])[..]);
    let j: Value = serde_json::from_str(&info(&b, "json", &[])).unwrap();
    assert_eq!(j["hooks"], serde_json::json!(["install-check"]));
    assert_eq!(j["images"][0]["rootfs"]["hooks"], serde_json::json!(["pre-install", "post-install"]));
    assert_eq!(j["images"][0]["rootfs"]["adaptive"], serde_json::json!(["block-hash-index"]));
    assert_eq!(j["images"][0]["rootfs"]["type"], "ext4");
}

fn sha2_of(d: &[u8]) -> Vec<u8> {
    hex::decode(sha256_hex(d)).unwrap()
}
