//! The command line's texts and exit codes (spec §9, §14), as seen through
//! a `rauc` symlink to the `rota` binary.

use testkit::*;

#[test]
fn no_command_prints_help_and_fails() {
    let r = run(&mut rota_as_rauc());
    assert_eq!(r.code, 1);
    assert!(r.stdout.starts_with("Usage:\n  rauc [OPTION…] <COMMAND>\n\nOptions:\n"), "{}", r.stdout);
    assert!(r.stdout.contains("List of rauc commands:\n"), "{}", r.stdout);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn unknown_option_prints_command_usage() {
    let r = run(rota_as_rauc().args(["info", "--foobar"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.starts_with("Usage:\n  rauc [OPTION…] info <BUNDLE>\n\nPrint bundle info\n\nInfo options:\n"),
        "{}",
        r.stdout
    );
    assert_eq!(r.stderr, "Unknown option --foobar\n");
}

#[test]
fn invalid_command() {
    let r = run(rota_as_rauc().arg("dothis"));
    assert_eq!(r.code, 1);
    assert!(r.stdout.starts_with("Invalid command 'dothis' given\n"), "{}", r.stdout);
    assert!(r.stderr.is_empty());
}

#[test]
fn version_and_help() {
    let r = run(rota_as_rauc().arg("--version")).ok();
    assert!(r.stdout.starts_with("rauc "), "{}", r.stdout);
    let r = run(rota().arg("--version")).ok();
    assert!(r.stdout.starts_with("rota "), "{}", r.stdout);
    for cmd in ["bundle", "info", "extract", "extract-signature", "resign", "replace-signature", "encrypt"] {
        let r = run(rota_as_rauc().args([cmd, "--help"])).ok();
        assert!(r.stdout.starts_with(&format!("Usage:\n  rauc [OPTION…] {cmd}")), "{cmd}: {}", r.stdout);
        assert!(r.stdout.contains("Application Options:\n  -c, --conf=FILENAME"), "{cmd}: {}", r.stdout);
    }
    // The program name comes from argv[0].
    let r = run(rota().args(["info", "--help"])).ok();
    assert!(r.stdout.starts_with("Usage:\n  rota [OPTION…] info <BUNDLE>\n"), "{}", r.stdout);
}

#[test]
fn positional_argument_counts() {
    run(rota_as_rauc().arg("info")).fails();
    run(rota_as_rauc().args(["info", "a.raucb", "b.raucb"])).fails();
    run(rota_as_rauc().args(["extract", "a.raucb"])).fails();
    run(rota_as_rauc().args(["replace-signature", "a", "b"])).fails();
}

#[test]
fn options_before_or_after_the_command() {
    let t = tempfile::tempdir().unwrap();
    let c = Content::standard(t.path().join("c"), "verity");
    let b = t.path().join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    let k = pki_file("keyring.pem");
    let after = run(rota_as_rauc().arg("info").arg("--keyring").arg(&k).arg("--output-format=json").arg(&b)).ok();
    let before = run(rota_as_rauc().arg("--keyring").arg(&k).arg("--output-format=json").arg("info").arg(&b)).ok();
    let mixed = run(rota_as_rauc()
        .arg("-d")
        .arg("info")
        .arg(&b)
        .arg(format!("--keyring={}", k.display()))
        .args(["--output-format", "json"]))
    .ok();
    assert_eq!(after.stdout, before.stdout);
    assert_eq!(after.stdout, mixed.stdout);
    assert!(after.stdout.starts_with("{\"compatible\":\"Test Config\""), "{}", after.stdout);
}

#[test]
fn bad_output_format_and_overrides() {
    let r = run(rota_as_rauc().args(["info", "--output-format=invalid", "x.raucb"])).fails();
    assert_eq!(r.stderr.lines().last(), Some("Unknown output format: 'invalid'"));
    // `-C` is checked as RAUC checks it while reading the command line:
    // split at the first '=', then at the first ':'; a value may be left
    // out only at the end or before another option. The message alone, no help.
    let usage = "Error in parsing override: you must specify it in format SECTION:KEY=VALUE";
    let cases: &[(&[&str], &str)] = &[
        (&["info", "-C", "keyring", "x.raucb"], "Error in parsing override: Missing '='"),
        (&["info", "-C", "keyring:path", "x.raucb"], "Error in parsing override: Missing '='"),
        (&["info", "-C", "keyring=a:b", "x.raucb"], "Error in parsing override: Missing ':'"),
        (&["info", "--confopt=x", "x.raucb"], "Error in parsing override: Missing '='"),
        (&["info", "-Ckeyring:path"], "Error in parsing override: Missing '='"),
        (&["info", "-C", ":x=y", "x.raucb"], usage),
        (&["info", "-C"], usage),
        (&["info", "x.raucb", "-C", "--no-verify"], usage),
        (&["-C", "info", "x.raucb"], "Error in parsing override: Missing '='"),
        (&["-C"], usage),
    ];
    for (args, expected) in cases {
        let r = run(rota_as_rauc().args(*args)).fails();
        assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", format!("{expected}\n").as_str()), "{args:?}");
    }
    // A value may hold ':' and '=' after the first '='.
    let r = run(rota_as_rauc().args(["info", "-C", "system:bundle-formats=+verity", "-C", "a:b=c:d=e"])).fails();
    assert_eq!(r.stderr, "A bundle file or URL must be provided\n");
    let r = run(rota_as_rauc().args(["info", "-c", "/nonexistent/system.conf", "x.raucb"])).fails();
    assert!(r.stderr.contains("/nonexistent/system.conf"), "{}", r.stderr);
}
