//! Interop with Debian's `rauc` (1.8): its bundles open and verify in rota,
//! rota's bundles pass `rauc info`, and `rauc extract` of a rota bundle
//! gives the same files as rota's own extraction.

use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::Command;
use testkit::*;

fn keyring_arg() -> String {
    format!("--keyring={}", pki_file("keyring.pem").display())
}

fn rota_json(bundle: &Path, extra: &[String]) -> Value {
    let r = run(rota().arg("info").arg("--output-format=json").arg(keyring_arg()).args(extra).arg(bundle)).ok();
    serde_json::from_str(&r.stdout).unwrap()
}

fn peer_json(bundle: &Path, extra: &[String]) -> Value {
    let r = run(peer_rauc().arg("info").arg("--output-format=json").arg(keyring_arg()).args(extra).arg(bundle)).ok();
    serde_json::from_str(&r.stdout).unwrap()
}

/// rauc 1.8's JSON lacks `format`, `hash`, `artifact` and `type`; the rest must agree.
fn assert_same_manifest(ours: &Value, peer: &Value) {
    for k in ["compatible", "version", "description", "build", "hooks"] {
        assert_eq!(ours[k], peer[k], "{k}");
    }
    let (a, b) = (ours["images"].as_array().unwrap(), peer["images"].as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        let (class, xo) = x.as_object().unwrap().iter().next().unwrap();
        let yo = &y[class];
        for k in ["variant", "filename", "checksum", "size", "hooks", "adaptive"] {
            assert_eq!(xo[k], yo[k], "{class}.{k}");
        }
    }
}

fn extract_with(cmd: &mut std::process::Command, bundle: &Path, out: &Path, extra: &[String]) {
    run(cmd.arg("extract").arg(keyring_arg()).args(extra).arg(bundle).arg(out)).ok();
}

#[test]
fn rauc_bundles_open_and_verify_in_rota() {
    for format in ["plain", "verity", "crypt"] {
        let t = tempfile::tempdir().unwrap();
        let c = Content::standard(t.path().join("c"), format);
        let b = t.path().join("peer.raucb");
        peer_bundle(&c.dir, &b, "release").ok();
        assert_same_manifest(&rota_json(&b, &[]), &peer_json(&b, &[]));
        let out = t.path().join("x");
        extract_with(&mut rota(), &b, &out, &[]);
        for f in ["rootfs.img", "appfs.img"] {
            assert_eq!(fs::read(out.join(f)).unwrap(), fs::read(c.dir.join(f)).unwrap(), "{format}: {f}");
        }
        // rota's manifest hash covers what rauc's bundle signed.
        let j = rota_json(&b, &[]);
        assert_eq!(j["format"], format);
        assert_eq!(j["hash"].as_str().unwrap().len(), 64);
    }
}

#[test]
fn rauc_encrypted_crypt_bundle_opens_in_rota() {
    let t = tempfile::tempdir().unwrap();
    let c = Content::standard(t.path().join("c"), "crypt");
    let b = t.path().join("peer.raucb");
    peer_bundle(&c.dir, &b, "release").ok();
    let enc = t.path().join("peer-enc.raucb");
    run(peer_rauc()
        .arg("encrypt")
        .arg(keyring_arg())
        .arg(format!("--to={}", pki_file("rsa-recipient.pem").display()))
        .arg(&b)
        .arg(&enc))
    .ok();
    let key = format!("--key={}", pki_file("rsa-recipient.key").display());
    let text = run(rota().arg("info").arg(keyring_arg()).arg(&key).arg(&enc)).ok().stdout;
    assert!(text.contains("Bundle Format:  crypt \x1b[32m[encrypted CMS]\x1b[0m"), "{text}");
    let out = t.path().join("x");
    extract_with(&mut rota(), &enc, &out, std::slice::from_ref(&key));
    assert_eq!(fs::read(out.join("rootfs.img")).unwrap(), fs::read(c.dir.join("rootfs.img")).unwrap());
}

#[test]
fn rota_bundles_pass_rauc_info_and_extract_identically() {
    for format in ["plain", "verity", "crypt"] {
        let t = tempfile::tempdir().unwrap();
        let c = Content::standard(t.path().join("c"), format);
        c.file("hook.sh", b"#!/bin/sh\nexit 0\n");
        let m = fs::read_to_string(c.dir.join("manifest.raucm")).unwrap();
        c.manifest(&m.replace("[image.rootfs]\nfilename=rootfs.img\n", "[hooks]\nfilename=hook.sh\nhooks=install-check\n\n[image.rootfs]\nfilename=rootfs.img\nhooks=post-install\nadaptive=block-hash-index\n"));
        let b = t.path().join("ours.raucb");
        rota_bundle(&c.dir, &b, "release").ok();
        assert_same_manifest(&rota_json(&b, &[]), &peer_json(&b, &[]));
        let peer_text = run(peer_rauc().arg("info").arg(keyring_arg()).arg(&b)).ok().stdout;
        assert!(peer_text.contains(&format!("Bundle Format: \t{format}")), "{peer_text}");

        let (a, p) = (t.path().join("by-rota"), t.path().join("by-rauc"));
        extract_with(&mut rota(), &b, &a, &[]);
        extract_with(&mut peer_rauc(), &b, &p, &[]);
        assert_eq!(tree_digest(&a), tree_digest(&p), "{format}");
    }
}

#[test]
fn rota_encrypted_bundle_decrypts_in_rauc() {
    let t = tempfile::tempdir().unwrap();
    let c = Content::standard(t.path().join("c"), "crypt");
    let b = t.path().join("ours.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    let enc = t.path().join("ours-enc.raucb");
    run(rota()
        .arg("encrypt")
        .arg(keyring_arg())
        .arg(format!("--to={}", pki_file("ec-recipient.pem").display()))
        .arg(format!("--to={}", pki_file("rsa-recipient.pem").display()))
        .arg(&b)
        .arg(&enc))
    .ok();
    for key in ["rsa-recipient.key", "ec-recipient.key"] {
        let key = format!("--key={}", pki_file(key).display());
        let ours = rota_json(&enc, std::slice::from_ref(&key));
        let peer = peer_json(&enc, std::slice::from_ref(&key));
        assert_same_manifest(&ours, &peer);
    }
    let out = t.path().join("x");
    extract_with(&mut peer_rauc(), &enc, &out, &[format!("--key={}", pki_file("ec-recipient.key").display())]);
    assert_eq!(fs::read(out.join("appfs.img")).unwrap(), fs::read(c.dir.join("appfs.img")).unwrap());
}

#[test]
fn resigned_bundles_verify_in_both_and_double_signed_ones_are_refused_by_both() {
    let t = tempfile::tempdir().unwrap();
    for format in ["plain", "verity"] {
        let c = Content::standard(t.path().join(format!("c-{format}")), format);
        let b = t.path().join(format!("{format}.raucb"));
        peer_bundle(&c.dir, &b, "release").ok();
        let two = t.path().join(format!("{format}-two.raucb"));
        run(rota().arg("resign").arg("--append").arg(keyring_arg()).args(signer_args("second")).arg(&b).arg(&two)).ok();
        // Both verify both signatures, then refuse the bundle: which chain
        // would it be trusted for? (RAUC's suite asks the same.)
        let both = "signature by 'O = rota test, CN = rota Release Signer', 'O = rota test, CN = rota Second Signer'";
        for mut cmd in [rota(), peer_rauc()] {
            let r = run(cmd.arg("info").arg(keyring_arg()).arg(&two)).fails();
            assert!(r.stderr.contains(both), "{}", r.stderr);
            assert!(r.stderr.contains("Unsupported number of signers: 2"), "{}", r.stderr);
        }
        // Without verification it opens.
        run(rota().args(["info", "--no-verify"]).arg(&two)).ok();
        // The added signer must chain up to the signing keyring.
        let stray = t.path().join(format!("{format}-stray.raucb"));
        let r = run(rota()
            .args(["resign", "--append"])
            .arg(keyring_arg())
            .arg(format!("--signing-keyring={}", pki_file("other-root.pem").display()))
            .args(signer_args("second"))
            .arg(&b)
            .arg(&stray))
        .fails();
        assert!(r.stderr.contains("Verify error: unable to get local issuer certificate"), "{}", r.stderr);
        assert!(!stray.exists());

        // A plain resign replaces the signer; payload bytes stay the same.
        let re = t.path().join(format!("{format}-re.raucb"));
        run(rota().arg("resign").arg(keyring_arg()).args(signer_args("second")).arg(&b).arg(&re)).ok();
        let text = run(peer_rauc().arg("info").arg(keyring_arg()).arg(&re)).ok().stdout;
        assert!(text.contains("CN = rota Second Signer") && !text.contains("CN = rota Release Signer"), "{text}");
        assert_eq!(rota_json(&re, &[])["hash"], rota_json(&b, &[])["hash"]);
    }
}

#[test]
fn extracted_and_replaced_signatures_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let c = Content::standard(t.path().join("c"), "verity");
    let (a, b) = (t.path().join("a.raucb"), t.path().join("b.raucb"));
    rota_bundle(&c.dir, &a, "release").ok();
    // Same content, other salt: the signature of `a` does not fit `b`'s payload.
    rota_bundle(&c.dir, &b, "release").ok();
    let sig = t.path().join("a.sig");
    run(rota().arg("extract-signature").arg(keyring_arg()).arg(&a).arg(&sig)).ok();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&sig).unwrap().permissions().mode() & 0o777, 0o600);
    let peer_sig = t.path().join("a-peer.sig");
    run(peer_rauc().arg("extract-signature").arg(keyring_arg()).arg(&a).arg(&peer_sig)).ok();
    assert_eq!(fs::read(&sig).unwrap(), fs::read(&peer_sig).unwrap());

    let ok = t.path().join("a2.raucb");
    run(rota().arg("replace-signature").arg(keyring_arg()).arg(&a).arg(&sig).arg(&ok)).ok();
    assert_eq!(fs::read(&ok).unwrap(), fs::read(&a).unwrap());
    let bad = t.path().join("mixed.raucb");
    let r = run(rota().arg("replace-signature").arg(keyring_arg()).arg(&b).arg(&sig).arg(&bad)).fails();
    assert!(r.stderr.contains("bundle payload is corrupted"), "{}", r.stderr);
    assert!(!bad.exists(), "a bundle that fails verification must not be left behind");

    // The input bundle must pass `--keyring` itself unless `--no-verify`;
    // the new signature is checked either way. Same verdicts as Debian's rauc.
    let other = t.path().join("a-other.raucb");
    run(rota()
        .arg("resign")
        .args(signer_args("other"))
        .arg(keyring_arg())
        .arg(format!("--signing-keyring={}", pki_file("other-root.pem").display()))
        .arg(&a)
        .arg(&other))
    .ok();
    for (name, mut cmd) in [("rota", rota()), ("rauc", peer_rauc())] {
        let out = t.path().join(format!("{name}-replaced.raucb"));
        cmd.arg(keyring_arg()).arg("replace-signature");
        let r = run(Command::new(cmd.get_program()).args(cmd.get_args()).arg(&other).arg(&sig).arg(&out)).fails();
        assert!(!out.exists(), "{name}: {}", r.stderr);
        run(cmd.arg("--no-verify").arg(&other).arg(&sig).arg(&out)).ok();
        assert_eq!(fs::read(&out).unwrap(), fs::read(&a).unwrap(), "{name}");
    }
}
