//! The system manifest commands: `system-manifest` signs the manifest of a
//! multi-ECU update (filling in what each ECU's bundle says of itself) and
//! `system-info` verifies and shows one.

use super::options::OptSpec;
use super::{CliError, Context, fail};
use crate::bundle::{Bundle, OpenOptions};
use crate::keyfile::{GroupReader, KeyFile};
use crate::manifest::BundleFormat;
use crate::signature::{Keyring, Signer, VerifyOptions};
use crate::system_manifest::{self, SignedSystemManifest, SystemManifest};
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// Options of `system-manifest`.
pub const SYSTEM_MANIFEST_OPTS: &[OptSpec] = &[
    OptSpec::value("cert", "PEMFILE|PKCS11-URL", "signing certificate"),
    OptSpec::value("key", "PEMFILE|PKCS11-URL", "signing key"),
    OptSpec::value("intermediate", "PEMFILE", "intermediate certificate to embed (repeatable)"),
    OptSpec::value("keyring", "PEMFILE", "trust anchors for the bundles read and for checking the new signature"),
    OptSpec::value("signing-keyring", "PEMFILE", "check the new signature against these trust anchors instead"),
    OptSpec::value(
        "bundle-file",
        "ECU=BUNDLE",
        "read ECU's bundle from this file instead of its location (repeatable)",
    ),
];

/// Options of `system-info`.
pub const SYSTEM_INFO_OPTS: &[OptSpec] = &[
    OptSpec::value("keyring", "PEMFILE", "trust anchors for the signature"),
    OptSpec::flag("no-check-time", "ignore certificate validity periods"),
    OptSpec::value("output-format", "FORMAT", "readable or json"),
];

/// The keys an ECU's bundle can tell about itself.
const FROM_BUNDLE: [&str; 3] = ["manifest-hash", "compatible", "version"];

fn keyring(ctx: &Context, option: &str) -> Option<Keyring> {
    ctx.path(option).map(Keyring::from_path)
}

/// What ECU `id`'s bundle says of itself: manifest hash, compatible, version.
fn from_bundle(id: &str, location: &str, keyring: Option<&Keyring>) -> Result<[String; 3], CliError> {
    let Some(keyring) = keyring else {
        return fail(format!(
            "ECU '{id}': its manifest hash, compatible and version come from its bundle, \
             which needs --keyring to be read"
        ));
    };
    let open =
        OpenOptions { verify: VerifyOptions { keyring: keyring.clone(), ..Default::default() }, ..Default::default() };
    let bundle = Bundle::open(&super::commands::location(location), &open)
        .map_err(|e| CliError::from(format!("ECU '{id}': bundle '{location}': {e}")))?;
    let m = bundle.manifest();
    if m.bundle.format == BundleFormat::Plain {
        return fail(format!(
            "ECU '{id}': bundle '{location}' is a plain bundle; a system update needs verity or crypt bundles \
             (only their manifest hash can be required when they are installed)"
        ));
    }
    let Some(version) = m.update.version.clone() else {
        return fail(format!("ECU '{id}': bundle '{location}' has no version"));
    };
    Ok([bundle.manifest_hash(), m.update.compatible.clone(), version])
}

/// The input with every ECU's missing bundle facts filled in from its
/// bundle; facts both given and read must agree.
fn complete(input: &str, ctx: &Context) -> Result<SystemManifest, CliError> {
    let mut kf = KeyFile::parse(input)?;
    let files: Vec<(&str, &str)> = ctx
        .args
        .values("bundle-file")
        .iter()
        .map(|v| v.split_once('=').ok_or_else(|| CliError::from(format!("Invalid --bundle-file '{v}': ECU=BUNDLE"))))
        .collect::<Result<_, _>>()?;
    if let Some((id, _)) = files.iter().find(|(id, _)| kf.group(&format!("ecu.{id}")).is_none()) {
        return fail(format!("--bundle-file names ECU '{id}', which the system manifest does not have"));
    }
    let keyring = keyring(ctx, "keyring");
    for group in kf.groups.iter_mut().filter(|g| g.name.starts_with("ecu.")) {
        let id = group.name["ecu.".len()..].to_string();
        let file = files.iter().find(|(i, _)| *i == id).map(|(_, f)| f.to_string());
        let mut r = GroupReader::new(group);
        let given: Vec<Option<String>> = FROM_BUNDLE.iter().map(|k| r.string(k)).collect::<Result<_, _>>()?;
        if file.is_none() && given.iter().all(Option::is_some) {
            continue;
        }
        let location = match file {
            Some(f) => f,
            None => r
                .string("bundle")?
                .ok_or_else(|| CliError::from(format!("Missing key 'bundle' in group '[ecu.{id}]'")))?,
        };
        let read = from_bundle(&id, &location, keyring.as_ref())?;
        for ((key, given), read) in FROM_BUNDLE.iter().zip(given).zip(read) {
            match given {
                Some(g) if g != read => {
                    return fail(format!("ECU '{id}': {key} '{g}' given, but its bundle has '{read}'"));
                }
                Some(_) => {}
                None => group.set_string(key, &read),
            }
        }
    }
    Ok(SystemManifest::parse(&kf.to_text())?)
}

/// `system-manifest <INPUT> <OUTPUT>`.
pub fn cmd_system_manifest(ctx: &Context) -> Result<(), CliError> {
    let (input, output) = (Path::new(ctx.arg(0)), Path::new(ctx.arg(1)));
    let (Some(cert), Some(key)) = (ctx.path("cert"), ctx.path("key")) else {
        return fail("Cert and key files must be provided");
    };
    let text = std::fs::read_to_string(input)
        .map_err(|e| CliError::from(format!("Failed to read system manifest '{}': {e}", input.display())))?;
    let manifest = complete(&text, ctx)?;
    let signer = Signer::load(&cert, &key, &ctx.paths("intermediate"))?;
    let signed = system_manifest::sign(&manifest.to_text(), &signer)?;
    match keyring(ctx, "signing-keyring").or_else(|| keyring(ctx, "keyring")) {
        Some(k) => {
            system_manifest::open(&signed, &VerifyOptions { keyring: k, ..Default::default() })
                .map_err(|e| CliError::from(format!("The new signature does not verify: {e}")))?;
        }
        None => tracing::info!("No keyring given, not verifying the new signature"),
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(output).map_err(|e| {
        CliError::from(match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!("Output file '{}' already exists", output.display()),
            _ => format!("Failed to create '{}': {e}", output.display()),
        })
    })?;
    f.write_all(&signed).and_then(|_| f.sync_all()).map_err(|e| {
        let _ = std::fs::remove_file(output);
        CliError::from(format!("Failed to write '{}': {e}", output.display()))
    })?;
    println!(
        "System manifest for version {} with {} ECU(s) written to {}",
        manifest.version,
        manifest.ecus.len(),
        output.display()
    );
    Ok(())
}

/// Reads and verifies a signed system manifest file.
pub fn open_file(path: &Path, verify: &VerifyOptions) -> Result<SignedSystemManifest, CliError> {
    Ok(system_manifest::open(&system_manifest::read_file(path)?, verify)?)
}

/// The readable rendering of `system-info`.
pub fn readable(path: &str, s: &SignedSystemManifest) -> String {
    let m = &s.manifest;
    let mut o = String::new();
    let mut line = |k: &str, v: &str| o.push_str(&format!("{k:<17}{v}\n"));
    line("System manifest:", &format!("'{path}'"));
    line("Compatible:", &format!("'{}'", m.compatible));
    line("Version:", &m.version.to_string());
    line("Allow downgrade:", if m.allow_downgrade { "yes" } else { "no" });
    if let Some(d) = &m.description {
        line("Description:", &format!("'{d}'"));
    }
    line(
        "Signed by:",
        &s.signature.chains.first().and_then(|c| c.first()).map(|c| c.subject.clone()).unwrap_or_default(),
    );
    line("ECUs:", &m.ecus.len().to_string());
    for e in &m.ecus {
        o.push_str(&format!(
            "\n  [{}] update priority {}, reboot priority {}\n\
             \x20   Bundle:        '{}'\n    Compatible:    '{}'\n    Version:       '{}'\n    Manifest hash: '{}'\n",
            e.id, e.update_priority, e.reboot_priority, e.bundle, e.compatible, e.version, e.manifest_hash
        ));
    }
    o
}

/// The JSON rendering of `system-info`.
pub fn to_json(s: &SignedSystemManifest) -> serde_json::Value {
    let m = &s.manifest;
    json!({
        "compatible": m.compatible,
        "version": m.version,
        "allow-downgrade": m.allow_downgrade,
        "description": m.description,
        "signers": s.signature.chains.iter().map(|c| c.first().map(|c| c.subject.clone())).collect::<Vec<_>>(),
        "ecus": m.ecus.iter().map(|e| json!({
            "id": e.id,
            "bundle": e.bundle,
            "manifest-hash": e.manifest_hash,
            "compatible": e.compatible,
            "version": e.version,
            "update-priority": e.update_priority,
            "reboot-priority": e.reboot_priority,
        })).collect::<Vec<_>>(),
    })
}

/// `system-info <FILE>`.
pub fn cmd_system_info(ctx: &Context) -> Result<(), CliError> {
    let path = ctx.arg(0);
    let format = ctx.args.value("output-format").unwrap_or("readable");
    if !matches!(format, "readable" | "json") {
        return fail(format!("Unknown output format: '{format}'"));
    }
    let Some(keyring) =
        keyring(ctx, "keyring").or_else(|| ctx.host_config().ok().map(|c| c.keyring)).filter(|k| !k.is_empty())
    else {
        return fail("No keyring given (--keyring or the system configuration's)");
    };
    let verify = VerifyOptions { keyring, no_verify: false, no_check_time: ctx.args.has("no-check-time") };
    let signed = open_file(Path::new(path), &verify)?;
    match format {
        "json" => println!("{}", to_json(&signed)),
        _ => print!("{}", readable(path, &signed)),
    }
    Ok(())
}
