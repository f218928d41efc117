//! Bad input gets a precise message (RAUC's wording where it has one) and
//! leaves nothing behind: truncated bundles, wrong keyrings, expired,
//! not-yet-valid and revoked signers, purposes, signing time, allowed CNs,
//! limits, formats, exclusive access, bad signing material.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::*;

struct Fixture {
    dir: tempfile::TempDir,
    content: Content,
}

fn fixture(format: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::standard(dir.path().join("content"), format);
    Fixture { dir, content }
}

impl Fixture {
    fn bundle(&self, name: &str, signer: &str) -> PathBuf {
        let out = self.dir.path().join(name);
        rota_bundle(&self.content.dir, &out, signer).ok();
        out
    }

    /// A system.conf with the given `[keyring]` lines.
    fn conf(&self, keyring: &str) -> PathBuf {
        let p = self.dir.path().join("system.conf");
        fs::write(&p, format!("[system]\ncompatible=Test Config\nbootloader=noop\n\n[keyring]\n{keyring}\n")).unwrap();
        p
    }
}

/// `rota info` with arguments; returns the last line of stderr on failure.
fn info_error(args: &[&str], bundle: &Path) -> String {
    let r = run(rota().arg("info").args(args).arg(bundle)).fails();
    r.stderr.lines().last().unwrap_or_default().to_string()
}

fn keyring(name: &str) -> String {
    format!("--keyring={}", pki_file(name).display())
}

#[test]
fn truncated_bundles() {
    let f = fixture("verity");
    let b = f.bundle("b.raucb", "release");
    let bytes = fs::read(&b).unwrap();
    let (payload, sig) = split_bundle(&bytes);
    let cases: Vec<(usize, String)> = vec![
        (0, "Invalid bundle format: Bundle size (0) is too small".into()),
        (7, "Invalid bundle format: Bundle size (7) is too small".into()),
        (payload + sig, "Invalid bundle format: Signature size (".into()),
        (bytes.len() - 1, "Invalid bundle format: Signature size (".into()),
        (payload / 2, "Invalid bundle format: Signature size (".into()),
    ];
    let t = f.dir.path().join("t.raucb");
    for (len, expected) in cases {
        fs::write(&t, &bytes[..len]).unwrap();
        let e = info_error(&[&keyring("keyring.pem")], &t);
        assert!(e.starts_with(&expected), "truncated to {len}: {e}");
    }
    // Cut inside the payload but keep a valid trailer: the tree no longer fits.
    let mut short = bytes[..payload - 8192].to_vec();
    short.extend_from_slice(&bytes[payload..]);
    fs::write(&t, &short).unwrap();
    let r = run(rota().arg("extract").arg(keyring("keyring.pem")).arg(&t).arg(f.dir.path().join("x"))).fails();
    assert!(r.stderr.contains("bundle payload is corrupted"), "{}", r.stderr);
    assert!(!f.dir.path().join("x").exists());
}

#[test]
fn wrong_keyring_and_missing_keyring() {
    let f = fixture("verity");
    let b = f.bundle("b.raucb", "release");
    assert_eq!(
        info_error(&[&keyring("other-root.pem")], &b),
        "signature verification failed: Verify error: unable to get local issuer certificate"
    );
    assert_eq!(info_error(&[], &b), "No keyring file or directory provided");
    let junk = f.dir.path().join("junk.pem");
    fs::write(&junk, "not a certificate\n").unwrap();
    let e = info_error(&[&format!("--keyring={}", junk.display())], &b);
    assert!(e.starts_with(&format!("Failed to load keyring file '{}': ", junk.display())), "{e}");
    // --no-verify skips the signature entirely.
    let out = run(rota().arg("info").arg("--no-verify").arg(&b)).ok().stdout;
    assert!(out.ends_with("Signature unverified\n"), "{out}");
}

#[test]
fn expired_and_not_yet_valid_signers() {
    let f = fixture("verity");
    let expired = f.bundle("expired.raucb", "expired");
    let future = f.bundle("future.raucb", "future");
    let k = keyring("keyring.pem");
    assert_eq!(info_error(&[&k], &expired), "signature verification failed: Verify error: certificate has expired");
    assert_eq!(info_error(&[&k], &future), "signature verification failed: Verify error: certificate is not yet valid");
    for b in [&expired, &future] {
        run(rota().arg("info").arg(&k).arg("--no-check-time").arg(b)).ok();
    }
}

#[test]
fn bundle_signing_time_decides_validity_when_configured() {
    let f = fixture("verity");
    // Signed in 2020, while the 'expired' signer (2020-2021) was valid.
    let out = f.dir.path().join("old.raucb");
    let r = run(Command::new("faketime")
        .arg("2020-06-01 12:00:00")
        .arg(bin("rota"))
        .arg("bundle")
        .args(signer_args("expired"))
        .arg(&f.content.dir)
        .arg(&out));
    r.ok();
    let k = keyring("keyring.pem");
    assert_eq!(info_error(&[&k], &out), "signature verification failed: Verify error: certificate has expired");
    let conf = f.conf(&format!("path={}\nuse-bundle-signing-time=true", pki_file("keyring.pem").display()));
    run(rota().arg("info").arg("-c").arg(&conf).arg(&out)).ok();
    // A current signature by the same signer is still refused.
    let now = f.bundle("now.raucb", "expired");
    assert_eq!(
        info_error(&["-c", conf.to_str().unwrap()], &now),
        "signature verification failed: Verify error: certificate has expired"
    );
    // Two signers: the signing time is ambiguous.
    let two = f.dir.path().join("two.raucb");
    run(rota()
        .arg("resign")
        .arg("--append")
        .arg(&k)
        .arg("--no-check-time")
        .args(signer_args("second"))
        .arg(&out)
        .arg(&two))
    .ok();
    assert_eq!(
        info_error(&["-c", conf.to_str().unwrap()], &two),
        "signature verification failed: multiple signerInfos are not supported with 'use-bundle-signing-time'"
    );

    // A signature without signed attributes (openssl cms -noattr) over the
    // bare manifest: it verifies, so replace-signature takes it, as RAUC
    // does, though the manifest lacks the verity parameters.
    let sig = f.dir.path().join("noattr.cms");
    openssl_cms_sign(&f.content.dir.join("manifest.raucm"), &sig, &["-noattr", "-nodetach"]);
    let noattr = f.dir.path().join("noattr.raucb");
    let release = f.bundle("release.raucb", "release");
    run(rota().arg("replace-signature").arg(&k).arg(&release).arg(&sig).arg(&noattr)).ok();
    assert_eq!(
        info_error(&["-c", conf.to_str().unwrap()], &noattr),
        "signature verification failed: Bundle signing time attribute not found in signature"
    );
    let r = run(rota().arg("info").arg(&k).arg(&noattr)).ok();
    assert!(r.stdout.contains("verity"), "{}", r.stdout);
    // Its payload cannot be reached: what needs it fails in RAUC's words.
    let e = run(rota().arg("extract").arg(&k).arg(&noattr).arg(f.dir.path().join("x"))).fails();
    assert_eq!(e.stderr.lines().last(), Some("Missing hash for verity bundle"), "{}", e.stderr);
    assert!(!f.dir.path().join("x").exists());
}

#[test]
fn revoked_signer_with_crl_checks() {
    let f = fixture("verity");
    let revoked = f.bundle("revoked.raucb", "revoked");
    let good = f.bundle("good.raucb", "release");
    let crl_conf = f.conf(&format!("path={}\ncheck-crl=true", pki_file("keyring-crl.pem").display()));
    assert_eq!(
        info_error(&["-c", crl_conf.to_str().unwrap()], &revoked),
        "signature verification failed: Verify error: certificate revoked"
    );
    run(rota().arg("info").arg("-c").arg(&crl_conf).arg(&good)).ok();
    // Without check-crl the CRL is only loaded (and warned about).
    let no_check = f.conf(&format!("path={}", pki_file("keyring-crl.pem").display()));
    let r = run(rota().arg("info").arg("-c").arg(&no_check).arg(&revoked)).ok();
    assert!(r.stderr.contains("contains a CRL, but check-crl is disabled"), "{}", r.stderr);
    // check-crl without any CRL for the chain fails.
    let missing = f.conf(&format!("path={}\ncheck-crl=true", pki_file("keyring.pem").display()));
    assert_eq!(
        info_error(&["-c", missing.to_str().unwrap()], &good),
        "signature verification failed: Verify error: unable to get certificate CRL"
    );
}

#[test]
fn partial_chains_and_keyring_directories() {
    let f = fixture("plain");
    let b = f.bundle("b.raucb", "release");
    let inter_only = f.conf(&format!("path={}", pki_file("inter.pem").display()));
    assert_eq!(
        info_error(&["-c", inter_only.to_str().unwrap()], &b),
        "signature verification failed: Verify error: unable to get issuer certificate"
    );
    let partial = f.conf(&format!("path={}\nallow-partial-chain=true", pki_file("inter.pem").display()));
    run(rota().arg("info").arg("-c").arg(&partial).arg(&b)).ok();
    // An OpenSSL hashed directory works as keyring.
    let dir = f.dir.path().join("certs");
    fs::create_dir(&dir).unwrap();
    fs::copy(pki_file("root.pem"), dir.join("root.pem")).unwrap();
    run(Command::new("openssl").arg("rehash").arg(&dir)).ok();
    let dconf = f.conf(&format!("directory={}", dir.display()));
    run(rota().arg("info").arg("-c").arg(&dconf).arg(&b)).ok();
}

#[test]
fn purposes_and_allowed_signer_cns() {
    let f = fixture("verity");
    let codesign = f.bundle("codesign.raucb", "codesign");
    let release = f.bundle("release.raucb", "release");
    let root = pki_file("keyring.pem");
    // OpenSSL's CMS default is S/MIME signing: a codeSigning-only signer fails.
    assert_eq!(
        info_error(&[&keyring("keyring.pem")], &codesign),
        "signature verification failed: Verify error: unsuitable certificate purpose"
    );
    for alias in ["codesign", "codesign-rauc"] {
        let c = f.conf(&format!("path={}\ncheck-purpose={alias}", root.display()));
        run(rota().arg("info").arg("-c").arg(&c).arg(&codesign)).ok();
        assert_eq!(
            info_error(&["-c", c.to_str().unwrap()], &release),
            "signature verification failed: Verify error: unsuitable certificate purpose"
        );
    }
    let any = f.conf(&format!("path={}\ncheck-purpose=any", root.display()));
    run(rota().arg("info").arg("-c").arg(&any).arg(&codesign)).ok();
    let bad = f.conf(&format!("path={}\ncheck-purpose=space-travel", root.display()));
    // Named with -c, the file is read as the device reads it: file and line.
    let e = info_error(&["-c", bad.to_str().unwrap()], &release);
    assert_eq!(
        e,
        format!("Invalid system config: {}:7: failed to configure X509 purpose 'space-travel'", bad.display())
    );

    let allowed = f.conf(&format!("path={}\nallowed-signer-cns=someone else;rota Release Signer;", root.display()));
    run(rota().arg("info").arg("-c").arg(&allowed).arg(&release)).ok();
    let other = f.conf(&format!("path={}\nallowed-signer-cns=someone else", root.display()));
    assert_eq!(
        info_error(&["-c", other.to_str().unwrap()], &release),
        "signature verification failed: No signature CN matching allowed-signer-cns found"
    );
}

#[test]
fn limits_and_allowed_formats() {
    let f = fixture("plain");
    let b = f.bundle("b.raucb", "release");
    let k = keyring("keyring.pem");
    assert_eq!(info_error(&[&k, "-C", "system:bundle-formats=-plain"], &b), "Bundle format 'plain' not allowed");
    assert_eq!(info_error(&[&k, "-C", "system:bundle-formats=verity crypt"], &b), "Bundle format 'plain' not allowed");
    let e = info_error(&[&k, "-C", "system:max-bundle-signature-size=100"], &b);
    assert!(
        e.starts_with("Invalid bundle format: Signature size (")
            && e.ends_with("exceeds max-bundle-signature-size (100)"),
        "{e}"
    );
    assert_eq!(
        info_error(&[&k, "-C", "system:max-bundle-signature-size"], &b),
        "Error in parsing override: Missing '='"
    );
    assert_eq!(info_error(&[&k, "-C", "max-bundle-signature-size=1"], &b), "Error in parsing override: Missing ':'");
    assert_eq!(info_error(&[&k, "-C", "max-bundle-signature-size"], &b), "Error in parsing override: Missing '='");
}

#[test]
fn plain_bundle_needs_exclusive_access() {
    let f = fixture("plain");
    let b = f.bundle("b.raucb", "release");
    let k = keyring("keyring.pem");
    let writer = fs::OpenOptions::new().append(true).open(&b).unwrap();
    assert_eq!(
        info_error(&[&k], &b),
        "could not ensure exclusive bundle access (F_SETLEASE): EAGAIN: existing open file descriptor"
    );
    drop(writer);
    run(rota().arg("info").arg(&k).arg(&b)).ok();
    // Group-writable bundles are taken over (mode 0644) and then accepted.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&b, fs::Permissions::from_mode(0o666)).unwrap();
    run(rota().arg("info").arg(&k).arg(&b)).ok();
    assert_eq!(fs::metadata(&b).unwrap().permissions().mode() & 0o777, 0o644);
}

#[test]
fn bundle_creation_errors_leave_nothing_behind() {
    let f = fixture("verity");
    let out = f.dir.path().join("out.raucb");
    let bundle_with = |cert: &str, key: &str, extra: &[&str]| {
        run(rota()
            .arg("bundle")
            .arg(format!("--cert={}", pki_file(cert).display()))
            .arg(format!("--key={}", pki_file(key).display()))
            .args(extra)
            .arg(&f.content.dir)
            .arg(&out))
    };
    // As RAUC: the format is announced, then the signing material checked.
    let r = bundle_with("release.pem", "second.key", &[]).fails();
    assert!(r.stderr.contains("key values mismatch"), "{}", r.stderr);
    assert_eq!(r.stdout, "Creating 'verity' format bundle\n");
    let r = bundle_with("release.key", "release.key", &[]).fails();
    assert!(r.stderr.contains("Expecting: CERTIFICATE"), "{}", r.stderr);
    let r = bundle_with("release.pem", "release.key", &["--mksquashfs-args=-nopad"]).fails();
    assert!(r.stderr.contains("not a multiple of 4096 bytes"), "{}", r.stderr);
    assert!(!out.exists());
    let leftovers: Vec<_> = fs::read_dir(f.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(leftovers.iter().all(|n| !n.to_string_lossy().contains(".tmp")), "{leftovers:?}");
    assert!(!f.content.dir.join(".rauc-workdir").exists());

    bundle_with("release.pem", "release.key", &[]).ok();
    let r = bundle_with("release.pem", "release.key", &[]).fails();
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);

    let r = run(rota().arg("bundle").arg(&f.content.dir).arg(f.dir.path().join("x.raucb"))).fails();
    assert_eq!(r.stderr.trim_end(), "Cert and key files must be provided");

    // Manifest errors name the problem.
    fs::remove_file(&out).unwrap();
    let m = f.content.dir.join("manifest.raucm");
    fs::write(
        &m,
        "[update]\ncompatible=x\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.img\nadaptive=magic\n",
    )
    .unwrap();
    let r = bundle_with("release.pem", "release.key", &[]).fails();
    assert!(r.stderr.contains("Unsupported adaptive method: magic"), "{}", r.stderr);
    fs::write(&m, "[update]\ncompatible=x\n[image.rootfs]\nfilename=missing.img\n").unwrap();
    let r = bundle_with("release.pem", "release.key", &[]).fails();
    assert!(r.stderr.contains("'missing.img'") && r.stderr.contains("not found"), "{}", r.stderr);
    for (version, message) in [
        ("1.14-dev", None),
        (
            "1000-rc.1+21000101",
            Some("Minimum RAUC version in manifest (1000-rc.1+21000101) is newer than current version ("),
        ),
        ("1.13", Some("Minimum RAUC version field in manifest is only supported since 1.14 (not '1.13')")),
        ("bad", Some("Failed to parse 'min-rauc-version'. Expected 'Major[.Minor[.Patch]][-pre_release]]', got 'bad'")),
    ] {
        let _ = fs::remove_file(&out);
        fs::write(&m, format!("[update]\ncompatible=x\nmin-rauc-version={version}\n[bundle]\nformat=verity\n"))
            .unwrap();
        match message {
            None => {
                bundle_with("release.pem", "release.key", &[]).ok();
            }
            Some(message) => {
                let r = bundle_with("release.pem", "release.key", &[]).fails();
                assert_eq!(r.stdout, "Creating 'verity' format bundle\n", "{version}");
                assert!(r.stderr.contains(message), "{version}: {}", r.stderr);
                assert!(!out.exists());
            }
        }
    }
    fs::write(&m, "[update]\ncompatible=x\nnope=1\n").unwrap();
    let r = bundle_with("release.pem", "release.key", &[]).fails();
    assert!(r.stderr.contains("Invalid key 'nope' in group '[update]'"), "{}", r.stderr);
}

#[test]
fn bundle_contents_rauc_refuses_are_refused_with_its_words() {
    // Links must stay in their directory, no hidden top-level directory, no
    // special files; a link to a name beside it and subdirectories are fine.
    // RAUC's suite (test_bundle_content_checks) referees the refusals, which
    // Debian's rauc 1.8 predates; it still takes what is accepted.
    let f = fixture("verity");
    let out = f.dir.path().join("out.raucb");
    let c = &f.content.dir;
    let build = |cmd: &mut Command| {
        cmd.arg("bundle").args(signer_args("release")).arg(c).arg(&out);
        let r = run(cmd);
        let _ = fs::remove_file(&out);
        r
    };
    type Make<'a> = &'a dyn Fn(&Path);
    let bad: [(&str, Make, &str); 4] = [
        (
            "absolute symlinks are not supported as bundle contents (abs-link)",
            &|c| std::os::unix::fs::symlink("/dev/null", c.join("abs-link")).unwrap(),
            "abs-link",
        ),
        (
            "symlinks containing slashes are not supported as bundle contents (rel-link)",
            &|c| std::os::unix::fs::symlink("../foo", c.join("rel-link")).unwrap(),
            "rel-link",
        ),
        (
            "hidden directories are not supported as top-level bundle contents (.hidden)",
            &|c| fs::create_dir(c.join(".hidden")).unwrap(),
            ".hidden",
        ),
        (
            "only regular files are supported as bundle contents (fifo)",
            &|c| {
                run(Command::new("mkfifo").arg(c.join("fifo"))).ok();
            },
            "fifo",
        ),
    ];
    for (message, make, name) in bad {
        make(c);
        let ours = build(&mut rota()).fails();
        assert_eq!(ours.stderr.lines().last(), Some(message), "{}", ours.stderr);
        assert!(!out.exists());
        let p = c.join(name);
        if p.is_dir() { fs::remove_dir(&p) } else { fs::remove_file(&p) }.unwrap();
    }
    std::os::unix::fs::symlink("rootfs.img", c.join("local-link")).unwrap();
    fs::create_dir_all(c.join("sub/.hidden-below")).unwrap();
    build(&mut rota()).ok();
    build(&mut peer_rauc()).ok();
}

#[test]
fn wrong_compatible_is_reported_with_rauc_text() {
    let f = fixture("verity");
    let b = f.bundle("b.raucb", "release");
    let opts = rota_bundle::bundle::OpenOptions {
        verify: rota_bundle::signature::VerifyOptions {
            keyring: rota_bundle::signature::Keyring::from_path(pki_file("keyring.pem")),
            ..Default::default()
        },
        ..Default::default()
    };
    let bundle = rota_bundle::bundle::Bundle::open(&b.to_string_lossy(), &opts).unwrap();
    assert_eq!(
        bundle.manifest().check_compatible("Other Device").unwrap_err(),
        "Compatible mismatch: Expected 'Other Device' but bundle manifest has 'Test Config'"
    );
    assert!(bundle.manifest().check_compatible("Test Config").is_ok());
}

#[test]
fn plain_payloads_over_2_gib_are_refused() {
    // A sparse file: a 2 GiB + 4 KiB payload, then a real detached CMS and trailer.
    let f = fixture("plain");
    let b = f.bundle("b.raucb", "release");
    let bytes = fs::read(&b).unwrap();
    let tail = &bytes[split_bundle(&bytes).0..];
    let big = f.dir.path().join("big.raucb");
    let file = fs::File::create(&big).unwrap();
    let payload = (1u64 << 31) + 4096;
    std::os::unix::fs::FileExt::write_all_at(&file, tail, payload).unwrap();
    drop(file);
    assert_eq!(
        info_error(&[&keyring("keyring.pem")], &big),
        "Invalid bundle format: Bundle payload size 2147487744 exceeds maximum for bundles using plain format (2 GiB)"
    );
}

#[test]
fn bundle_locations_resolve_as_rauc_resolves_them() {
    // `info`, `install` and `mount` take a path (made absolute), a `file:`
    // URI (GLib's conversion) or a URL; a local bundle must exist.
    let f = fixture("verity");
    let dir = f.dir.path().join("with space");
    fs::create_dir(&dir).unwrap();
    let b = f.bundle("with space/b.raucb", "release");
    let k = keyring("keyring.pem");
    let info = |arg: &str| run(rota().current_dir(&dir).args(["info", &k, "--output-format=json", arg]));
    let expected = info(&b.to_string_lossy()).ok().stdout;
    let escaped = b.to_string_lossy().replace(' ', "%20");
    for arg in ["b.raucb", "./b.raucb", &format!("file:{escaped}"), &format!("file://{escaped}")] {
        assert_eq!(info(arg).ok().stdout, expected, "{arg}");
    }
    let host = "file URI with hostname detected. Did you forget to add a leading / ?".to_string();
    let cases = [
        ("missing.raucb".to_string(), format!("No such file: {}", dir.join("missing.raucb").display())),
        ("file:/missing.raucb".to_string(), "No such file: /missing.raucb".to_string()),
        ("file://b.raucb".to_string(), "Conversion error: The URI “file://b.raucb” is invalid".to_string()),
        (
            "file:b.raucb".to_string(),
            "Conversion error: The URI “file:b.raucb” is not an absolute URI using the “file” scheme".to_string(),
        ),
        (format!("file://localhost{escaped}"), host.clone()),
        (format!("file://build-host{escaped}"), host),
        (
            format!("file:{escaped}#x"),
            format!("Conversion error: The local file URI “file:{escaped}#x” may not include a “#”"),
        ),
        (
            "file:/b%2F.raucb".to_string(),
            "Conversion error: The URI “file:/b%2F.raucb” contains invalidly escaped characters".to_string(),
        ),
    ];
    for (arg, message) in cases {
        let r = info(&arg).fails();
        assert_eq!(r.stderr, format!("{message}\n"), "{arg}");
    }
}
