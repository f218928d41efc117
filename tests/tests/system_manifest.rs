//! `rota-bundle system-manifest` and `system-info`: the signed system
//! manifest of a multi-ECU update. The referees are OpenSSL's `cms -verify`
//! (the signature and the text it carries) and Debian's `rauc info` (each
//! bundle's manifest hash).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::{Content, peer_rauc, pki_file, rota_bundle, run, signer_args, target_dir, with_keyring};

fn rota_bundle_tool() -> Command {
    Command::new(testkit::bin("rota-bundle"))
}

/// A fresh directory for test `name`.
fn dir(name: &str) -> PathBuf {
    let d = target_dir().join("test-system-manifest").join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// A signed bundle with `compatible`, `version` and `format` in `d`.
fn bundle(d: &Path, name: &str, compatible: &str, version: &str, format: &str) -> PathBuf {
    let c = Content::new(d.join(format!("{name}-content")));
    c.image("rootfs.img", 64 * 1024, version.len() as u64);
    c.manifest(&format!(
        "[update]\ncompatible={compatible}\nversion={version}\n[bundle]\nformat={format}\n[image.rootfs]\nfilename=rootfs.img\n"
    ));
    let out = d.join(format!("{name}.raucb"));
    rota_bundle(&c.dir, &out, "release").ok();
    out
}

/// The manifest hash of `bundle` by other tools: Debian's rauc extracts the
/// signature, OpenSSL takes the signed manifest out of it, SHA-256 over that.
fn peer_manifest_hash(bundle: &Path) -> String {
    let sig = bundle.with_extension("cms");
    let _ = fs::remove_file(&sig);
    run(with_keyring(peer_rauc().arg("extract-signature").arg(bundle).arg(&sig))).ok();
    let manifest = bundle.with_extension("manifest");
    run(Command::new("openssl")
        .args(["cms", "-verify", "-binary", "-inform", "DER", "-noverify", "-in"])
        .arg(&sig)
        .arg("-out")
        .arg(&manifest))
    .ok();
    testkit::sha256_hex(&fs::read(&manifest).unwrap())
}

/// What `openssl cms -verify` finds inside `signed`, verified against `ca`.
fn openssl_content(signed: &Path, ca: &str) -> Result<String, String> {
    let out = Command::new("openssl")
        .args(["cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any", "-in"])
        .arg(signed)
        .arg("-CAfile")
        .arg(pki_file(ca))
        .output()
        .unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8(out.stdout).unwrap()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

fn sign(input: &Path, output: &Path, extra: &[&str]) -> testkit::Run {
    run(rota_bundle_tool().arg("system-manifest").args(signer_args("release")).args(extra).arg(input).arg(output))
}

fn keyring_arg() -> String {
    format!("--keyring={}", pki_file("keyring.pem").display())
}

#[test]
fn a_system_manifest_is_completed_from_its_bundles_and_signed() {
    let d = dir("made");
    let main = bundle(&d, "main", "Charger Main", "2.1.0", "verity");
    let display = bundle(&d, "display", "Charger Display", "1.4", "verity");
    let input = d.join("system.conf");
    fs::write(
        &input,
        format!(
            "[system]\ncompatible=Charger\nversion=42\ndescription=Release 2.1\n\n\
             [ecu.main]\nbundle=https://updates.example.com/main.raucb\nupdate-priority=1\n\n\
             [ecu.display]\nbundle={}\nreboot-priority=3\ncompatible=Charger Display\n",
            display.display()
        ),
    )
    .unwrap();
    let out = d.join("system.sig");
    let bundle_file = format!("--bundle-file=main={}", main.display());
    let r = sign(&input, &out, &[&keyring_arg(), &bundle_file]).ok();
    assert_eq!(r.stdout, format!("System manifest for version 42 with 2 ECU(s) written to {}\n", out.display()));

    // OpenSSL verifies the signature and finds the completed text, with the
    // manifest hashes Debian's rauc computes for each bundle.
    let text = openssl_content(&out, "keyring.pem").unwrap();
    let (hm, hd) = (peer_manifest_hash(&main), peer_manifest_hash(&display));
    assert_eq!(
        text,
        format!(
            "[system]\nformat=1\ncompatible=Charger\nversion=42\ndescription=Release 2.1\n\n\
             [ecu.main]\nbundle=https://updates.example.com/main.raucb\nmanifest-hash={hm}\ncompatible=Charger Main\n\
             version=2.1.0\nupdate-priority=1\nreboot-priority=0\n\n\
             [ecu.display]\nbundle={}\nmanifest-hash={hd}\ncompatible=Charger Display\nversion=1.4\n\
             update-priority=0\nreboot-priority=3\n",
            display.display()
        )
    );
    assert!(openssl_content(&out, "other-root.pem").is_err(), "another CA does not verify it");

    // system-info shows it, readable and as JSON.
    let r = run(rota_bundle_tool().args(["system-info", &keyring_arg()]).arg(&out)).ok();
    for want in [
        "Compatible:      'Charger'\n",
        "Version:         42\n",
        "Allow downgrade: no\n",
        "Signed by:       O = rota test, CN = rota Release Signer\n",
        "ECUs:            2\n",
        "  [main] update priority 1, reboot priority 0\n",
        &format!("    Manifest hash: '{hm}'\n"),
        "    Version:       '1.4'\n",
    ] {
        assert!(r.stdout.contains(want), "{want:?} in\n{}", r.stdout);
    }
    let r = run(rota_bundle_tool().args(["system-info", "--output-format=json", &keyring_arg()]).arg(&out)).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["version"], 42);
    assert_eq!(v["ecus"][1]["id"], "display");
    assert_eq!(v["ecus"][1]["manifest-hash"], hd.as_str());
    assert_eq!(v["ecus"][1]["reboot-priority"], 3);

    // The output is never overwritten.
    let r = sign(&input, &out, &[&keyring_arg(), &bundle_file]).fails();
    assert!(r.stderr.contains(&format!("Output file '{}' already exists", out.display())), "{}", r.stderr);
}

#[test]
fn what_cannot_be_signed_is_refused() {
    let d = dir("refused");
    let verity = bundle(&d, "verity", "Main", "2.0", "verity");
    let plain = bundle(&d, "plain", "Main", "2.0", "plain");
    let input = |name: &str, ecu: &str| {
        let p = d.join(format!("{name}.conf"));
        fs::write(&p, format!("[system]\ncompatible=C\nversion=1\n[ecu.main]\n{ecu}")).unwrap();
        p
    };
    let cases: Vec<(PathBuf, Vec<String>, String)> = vec![
        (
            input("plain", &format!("bundle={}\n", plain.display())),
            vec![keyring_arg()],
            "is a plain bundle; a system update needs verity or crypt bundles".into(),
        ),
        (
            input("mismatch", &format!("bundle={}\nversion=2.1\n", verity.display())),
            vec![keyring_arg()],
            "ECU 'main': version '2.1' given, but its bundle has '2.0'".into(),
        ),
        (
            input("nokeyring", &format!("bundle={}\n", verity.display())),
            vec![],
            "which needs --keyring to be read".into(),
        ),
        (
            input("untrusted", &format!("bundle={}\n", verity.display())),
            vec![format!("--keyring={}", pki_file("other-root.pem").display())],
            "ECU 'main': bundle '".into(),
        ),
        (input("missing", "compatible=X\n"), vec![keyring_arg()], "Missing key 'bundle' in group '[ecu.main]'".into()),
        (
            input("unknown", &format!("bundle={}\ncolour=red\n", verity.display())),
            vec![keyring_arg()],
            "Invalid key 'colour' in group '[ecu.main]'".into(),
        ),
        (
            input("otherecu", &format!("bundle={}\n", verity.display())),
            vec![keyring_arg(), format!("--bundle-file=pay={}", verity.display())],
            "--bundle-file names ECU 'pay', which the system manifest does not have".into(),
        ),
    ];
    for (input, extra, want) in cases {
        let out = input.with_extension("sig");
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let r = sign(&input, &out, &extra).fails();
        assert!(r.stderr.contains(&want), "{}: {want:?} not in {:?}", input.display(), r.stderr);
        assert!(!out.exists(), "nothing written for {}", input.display());
    }

    // A signer outside the keyring given for the new signature.
    let good = input("good", &format!("bundle={}\n", verity.display()));
    let out = d.join("wrong-signer.sig");
    let r =
        sign(&good, &out, &[&format!("--signing-keyring={}", pki_file("other-root.pem").display()), &keyring_arg()])
            .fails();
    assert!(r.stderr.contains("The new signature does not verify"), "{}", r.stderr);
    assert!(!out.exists());
}

#[test]
fn system_info_refuses_a_tampered_or_foreign_manifest() {
    let d = dir("info");
    let verity = bundle(&d, "verity", "Main", "2.0", "verity");
    let input = d.join("system.conf");
    fs::write(&input, format!("[system]\ncompatible=C\nversion=3\n[ecu.main]\nbundle={}\n", verity.display())).unwrap();
    let out = d.join("system.sig");
    sign(&input, &out, &[&keyring_arg()]).ok();
    let info = |path: &Path, keyring: &str| {
        run(rota_bundle_tool().args(["system-info", &format!("--keyring={}", pki_file(keyring).display())]).arg(path))
    };
    info(&out, "keyring.pem").ok();

    let r = info(&out, "other-root.pem").fails();
    assert!(r.stderr.contains("signature verification failed"), "{}", r.stderr);

    // One byte of the signed text changed ('version=3' → 'version=4').
    let mut bytes = fs::read(&out).unwrap();
    let at = bytes.windows(9).position(|w| w == b"version=3").unwrap() + 8;
    bytes[at] = b'4';
    let tampered = d.join("tampered.sig");
    fs::write(&tampered, &bytes).unwrap();
    let r = info(&tampered, "keyring.pem").fails();
    assert!(r.stderr.contains("signature verification failed"), "{}", r.stderr);
    assert!(openssl_content(&tampered, "keyring.pem").is_err(), "OpenSSL agrees");

    // Truncated, and not a signature at all.
    let truncated = d.join("truncated.sig");
    fs::write(&truncated, &fs::read(&out).unwrap()[..200]).unwrap();
    let r = info(&truncated, "keyring.pem").fails();
    assert!(r.stderr.contains("failed to parse signature"), "{}", r.stderr);
    let r = info(&input, "keyring.pem").fails();
    assert!(r.stderr.contains("failed to parse signature"), "{}", r.stderr);

    // A signed text that is not a system manifest (OpenSSL signs it).
    let foreign = d.join("foreign.sig");
    let text = d.join("foreign.txt");
    fs::write(&text, "[update]\ncompatible=C\n").unwrap();
    testkit::openssl_cms_sign(&text, &foreign, &["-nodetach"]);
    let r = info(&foreign, "keyring.pem").fails();
    assert!(r.stderr.contains("Invalid group '[update]' in system manifest"), "{}", r.stderr);
}
