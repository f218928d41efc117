//! The bundle commands: `bundle`, `resign`, `convert`, `replace-signature`,
//! `extract-signature`, `extract`, `encrypt` and `info`; the system manifest
//! commands `system-manifest` and `system-info` (in [`super::system`]).

use super::options::OptSpec;
use super::{CliError, Command, Context, fail};
use crate::bundle::{Bundle, OpenOptions, is_remote};
use crate::create::{self, CreateOptions, ResignOptions, SigningOptions};
use crate::info::{self, BundleInfo, OutputFormat};
use crate::signature::{Keyring, VerifyOptions};
use crate::source::http::{HttpOptions, parse_header};
use std::path::{Path, PathBuf};

const CERT: OptSpec = OptSpec::value("cert", "PEMFILE|PKCS11-URL", "signing certificate");
const SIGN_KEY: OptSpec = OptSpec::value("key", "PEMFILE|PKCS11-URL", "signing key");
const DECRYPT_KEY: OptSpec = OptSpec::value("key", "PEMFILE|PKCS11-URL", "private key to decrypt an encrypted bundle");
const INTERMEDIATE: OptSpec =
    OptSpec::value("intermediate", "PEMFILE", "intermediate certificate to embed (repeatable)");
const SIGNING_KEYRING: OptSpec =
    OptSpec::value("signing-keyring", "PEMFILE", "check the new signature against these trust anchors");
const KEYRING: OptSpec = OptSpec::value("keyring", "PEMFILE", "trust anchors for checking the input bundle");
const NO_VERIFY: OptSpec = OptSpec::flag("no-verify", "do not check the bundle signature");
const NO_CHECK_TIME: OptSpec = OptSpec::flag("no-check-time", "ignore certificate validity periods");
const TRUST_ENV: OptSpec = OptSpec::flag("trust-environment", "skip the exclusive-access checks of the bundle file");

const BUNDLE_OPTS: &[OptSpec] = &[
    CERT,
    SIGN_KEY,
    INTERMEDIATE,
    SIGNING_KEYRING,
    OptSpec::value("mksquashfs-args", "ARGS", "extra arguments for mksquashfs"),
];
const RESIGN_OPTS: &[OptSpec] = &[
    CERT,
    SIGN_KEY,
    INTERMEDIATE,
    SIGNING_KEYRING,
    KEYRING,
    NO_VERIFY,
    NO_CHECK_TIME,
    OptSpec::flag("append", "add a signer, keeping the existing signature"),
];
const CONVERT_OPTS: &[OptSpec] = &[
    CERT,
    SIGN_KEY,
    INTERMEDIATE,
    SIGNING_KEYRING,
    TRUST_ENV,
    KEYRING,
    NO_VERIFY,
    OptSpec::value("mksquashfs-args", "ARGS", "extra arguments for mksquashfs"),
    OptSpec::value("casync-args", "ARGS", "casync make options: --chunk-size, --digest, --compression"),
    OptSpec::value("ignore-image", "SLOTCLASS", "leave the images of this slot class as they are (repeatable)"),
];
const REPLACE_OPTS: &[OptSpec] = &[KEYRING, SIGNING_KEYRING, NO_VERIFY, TRUST_ENV];
const EXTRACT_SIG_OPTS: &[OptSpec] = &[KEYRING, DECRYPT_KEY, TRUST_ENV];
const EXTRACT_OPTS: &[OptSpec] = &[KEYRING, DECRYPT_KEY, TRUST_ENV];
const ENCRYPT_OPTS: &[OptSpec] = &[OptSpec::value("to", "PEMFILE", "recipient certificate(s) (repeatable)"), KEYRING];
const INFO_OPTS: &[OptSpec] = &[
    KEYRING,
    NO_VERIFY,
    NO_CHECK_TIME,
    DECRYPT_KEY,
    OptSpec::value("output-format", "FORMAT", "readable, shell, json, json-pretty or json-2"),
    OptSpec::flag("dump-cert", "print the signer certificates"),
    OptSpec::flag("dump-recipients", "print the recipients of an encrypted bundle"),
    OptSpec::value("tls-cert", "PEMFILE|PKCS11-URL", "TLS client certificate"),
    OptSpec::value("tls-key", "PEMFILE|PKCS11-URL", "TLS client key"),
    OptSpec::value("tls-ca", "PEMFILE", "CA certificates for the HTTPS server"),
    OptSpec::flag("tls-no-verify", "do not check the HTTPS server certificate"),
    OptSpec::value("http-header", "'NAME: VALUE'", "extra HTTP header (repeatable)").short('H'),
];

/// The host-side commands, in help order.
pub const HOST_COMMANDS: &[Command] = &[
    Command {
        name: "bundle",
        usage: "<INPUTDIR> <BUNDLENAME>",
        summary: "Create a bundle from a content directory",
        group_title: "Bundle options:",
        options: BUNDLE_OPTS,
        positionals: (2, 2),
        missing_args: "An input directory and an output bundle name must be provided",
        run: cmd_bundle,
    },
    Command {
        name: "resign",
        usage: "<INBUNDLE> <OUTBUNDLE>",
        summary: "Sign an existing bundle again",
        group_title: "Resign options:",
        options: RESIGN_OPTS,
        positionals: (2, 2),
        missing_args: "An input bundle and an output bundle name must be provided",
        run: cmd_resign,
    },
    Command {
        name: "convert",
        usage: "<INBUNDLE> <OUTBUNDLE>",
        summary: "Convert a bundle to a casync bundle and chunk store",
        group_title: "Convert options:",
        options: CONVERT_OPTS,
        positionals: (2, 2),
        missing_args: "An input bundle and an output bundle name must be provided",
        run: cmd_convert,
    },
    Command {
        name: "encrypt",
        usage: "<INBUNDLE> <OUTBUNDLE>",
        summary: "Encrypt a crypt bundle for recipients",
        group_title: "Encrypt options:",
        options: ENCRYPT_OPTS,
        positionals: (2, 2),
        missing_args: "An input bundle and an output bundle name must be provided",
        run: cmd_encrypt,
    },
    Command {
        name: "replace-signature",
        usage: "<INBUNDLE> <INPUTSIG> <OUTBUNDLE>",
        summary: "Replace the signature of a bundle",
        group_title: "Replace signature options:",
        options: REPLACE_OPTS,
        positionals: (3, 3),
        missing_args: "An input bundle, a signature file and an output bundle name must be provided",
        run: cmd_replace_signature,
    },
    Command {
        name: "extract-signature",
        usage: "<BUNDLE> <OUTPUTSIG>",
        summary: "Write the signature of a bundle to a file",
        group_title: "Extract signature options:",
        options: EXTRACT_SIG_OPTS,
        positionals: (2, 2),
        missing_args: "A bundle and an output file name must be provided",
        run: cmd_extract_signature,
    },
    Command {
        name: "extract",
        usage: "<BUNDLE> <OUTPUTDIR>",
        summary: "Extract the bundle content",
        group_title: "Extract options:",
        options: EXTRACT_OPTS,
        positionals: (2, 2),
        missing_args: "A bundle and an output directory must be provided",
        run: cmd_extract,
    },
    Command {
        name: "info",
        usage: "<BUNDLE>",
        summary: "Print bundle info",
        group_title: "Info options:",
        options: INFO_OPTS,
        positionals: (1, 1),
        missing_args: "A bundle file or URL must be provided",
        run: cmd_info,
    },
    Command {
        name: "system-manifest",
        usage: "<INPUT> <OUTPUT>",
        summary: "Sign the system manifest of a multi-ECU update",
        group_title: "System manifest options:",
        options: super::system::SYSTEM_MANIFEST_OPTS,
        positionals: (2, 2),
        missing_args: "A system manifest and an output file name must be provided",
        run: super::system::cmd_system_manifest,
    },
    Command {
        name: "system-info",
        usage: "<FILE>",
        summary: "Verify and print a signed system manifest",
        group_title: "System info options:",
        options: super::system::SYSTEM_INFO_OPTS,
        positionals: (1, 1),
        missing_args: "A signed system manifest must be provided",
        run: super::system::cmd_system_info,
    },
];

fn keyring_for(ctx: &Context, config: &Keyring, option: &str) -> Keyring {
    match ctx.path(option) {
        Some(p) => Keyring { path: Some(p), directory: None, ..config.clone() },
        None => config.clone(),
    }
}

/// HTTP options from `conf` (with the automatic headers `facts` allow) and
/// the TLS/header command-line options, which win.
pub fn http_options(
    ctx: &Context,
    conf: &crate::hostconfig::HostConfig,
    facts: &crate::hostconfig::HeaderFacts,
) -> Result<HttpOptions, CliError> {
    let mut http = conf.http_options(facts);
    http.tls_ca = ctx.path("tls-ca").or(http.tls_ca);
    http.tls_cert = ctx.path("tls-cert").or(http.tls_cert);
    http.tls_key = ctx.path("tls-key").or(http.tls_key);
    http.tls_no_verify = ctx.args.has("tls-no-verify");
    for h in ctx.args.values("http-header") {
        http.headers.push(parse_header(h)?);
    }
    Ok(http)
}

/// Open options from command line and configuration.
fn open_options(ctx: &Context, use_config: bool) -> Result<OpenOptions, CliError> {
    let conf = if use_config { ctx.host_config()? } else { Default::default() };
    let facts = ctx
        .header_facts
        .clone()
        .unwrap_or_else(|| crate::hostconfig::HeaderFacts { variant: conf.variant.clone(), ..Default::default() });
    let http = http_options(ctx, &conf, &facts)?;
    Ok(OpenOptions {
        verify: VerifyOptions {
            keyring: keyring_for(ctx, &conf.keyring, "keyring"),
            no_verify: ctx.args.has("no-verify"),
            no_check_time: ctx.args.has("no-check-time"),
        },
        max_signature_size: conf.max_signature_size,
        allowed_formats: conf.bundle_formats.clone(),
        decryption_key: ctx.path("key").or(conf.decryption_key.clone()),
        decryption_cert: conf.decryption_cert.clone(),
        trust_environment: ctx.args.has("trust-environment"),
        http,
        // The bundle tool streams; plain bundles are only downloaded on devices.
        download: None,
        opened: None,
        keep_open: Vec::new(),
    })
}

/// Absolute path for local arguments (RAUC makes relative paths absolute), URLs unchanged.
pub fn location(arg: &str) -> String {
    if is_remote(arg) || arg.starts_with("file://") {
        return arg.to_string();
    }
    std::path::absolute(arg).map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|_| arg.to_string())
}

fn signing(ctx: &Context) -> Result<SigningOptions, CliError> {
    let keyring = ctx.path("signing-keyring").or_else(|| ctx.path("keyring")).map(Keyring::from_path);
    Ok(SigningOptions {
        cert: ctx.path("cert"),
        key: ctx.path("key"),
        intermediates: ctx.paths("intermediate"),
        keyring,
    })
}

fn print_warnings(warnings: &[String]) {
    for w in warnings {
        tracing::warn!("{w}");
    }
}

fn cmd_bundle(ctx: &Context) -> Result<(), CliError> {
    let input = PathBuf::from(ctx.arg(0));
    let output = PathBuf::from(ctx.arg(1));
    let signing = signing(ctx)?;
    if signing.cert.is_none() || signing.key.is_none() {
        return fail("Cert and key files must be provided");
    }
    let mksquashfs_args = shell_args(ctx, "mksquashfs-args")?;
    if signing.keyring.is_none() {
        tracing::info!("No keyring given, skipping signature verification");
    }
    let opts = CreateOptions { signing, mksquashfs_args };
    let created = create::create(&input, &output, &opts, &mut |format| println!("Creating '{format}' format bundle"))?;
    print_warnings(&created.warnings);
    Ok(())
}

fn cmd_resign(ctx: &Context) -> Result<(), CliError> {
    let mut open = open_options(ctx, false)?;
    open.verify.keyring = keyring_for(ctx, &Keyring::default(), "keyring");
    let opts = ResignOptions { signing: signing(ctx)?, open, append: ctx.args.has("append") };
    let warnings = create::resign(&location(ctx.arg(0)), Path::new(ctx.arg(1)), &opts)?;
    print_warnings(&warnings);
    Ok(())
}

fn shell_args(ctx: &Context, option: &str) -> Result<Vec<String>, CliError> {
    match ctx.args.value(option) {
        Some(a) => shell_words::split(a).map_err(|e| CliError::from(format!("Invalid --{option}: {e}"))),
        None => Ok(Vec::new()),
    }
}

fn cmd_convert(ctx: &Context) -> Result<(), CliError> {
    let signing = signing(ctx)?;
    if signing.cert.is_none() || signing.key.is_none() {
        return fail("Cert and key files must be provided");
    }
    let mut open = open_options(ctx, false)?;
    open.verify.keyring = keyring_for(ctx, &Keyring::default(), "keyring");
    let opts = crate::convert::ConvertOptions {
        signing,
        open,
        ignore_images: ctx.args.values("ignore-image").iter().map(|s| s.to_string()).collect(),
        casync_args: shell_args(ctx, "casync-args")?,
        mksquashfs_args: shell_args(ctx, "mksquashfs-args")?,
    };
    let out = ctx.arg(1);
    // As RAUC: a bundle that does not open or verify is reported as such.
    let bundle = Bundle::open(&location(ctx.arg(0)), &opts.open)?;
    let converted = crate::convert::convert(&bundle, Path::new(out), &opts, &mut |line| tracing::info!("{line}"))
        .map_err(|e| CliError::from(format!("Failed to create bundle: {e}")))?;
    print_warnings(&converted.warnings);
    println!("Bundle written to {out}");
    Ok(())
}

fn cmd_encrypt(ctx: &Context) -> Result<(), CliError> {
    let recipients = ctx.paths("to");
    if recipients.is_empty() {
        return fail("At least one recipient certificate must be given with --to");
    }
    let mut open = open_options(ctx, false)?;
    if open.verify.keyring.is_empty() {
        tracing::info!("No keyring given, not verifying the input bundle");
        open.verify.no_verify = true;
    }
    let out = ctx.arg(1);
    create::encrypt(&location(ctx.arg(0)), Path::new(out), &recipients, &open)?;
    println!("Encrypted bundle written to {out}");
    Ok(())
}

fn cmd_replace_signature(ctx: &Context) -> Result<(), CliError> {
    // The input bundle is verified with `--keyring` (unless `--no-verify`),
    // the new signature with `--signing-keyring` (else `--keyring`) whenever
    // one is given, as RAUC does.
    let open = open_options(ctx, false)?;
    let keyring = ctx.path("signing-keyring").or_else(|| ctx.path("keyring")).map(Keyring::from_path);
    create::replace_signature(
        &location(ctx.arg(0)),
        Path::new(ctx.arg(1)),
        Path::new(ctx.arg(2)),
        keyring.as_ref(),
        &open,
    )?;
    Ok(())
}

fn cmd_extract_signature(ctx: &Context) -> Result<(), CliError> {
    let open = open_options(ctx, true)?;
    create::extract_signature(&location(ctx.arg(0)), Path::new(ctx.arg(1)), &open)?;
    Ok(())
}

fn cmd_extract(ctx: &Context) -> Result<(), CliError> {
    let open = open_options(ctx, true)?;
    let dest = PathBuf::from(ctx.arg(1));
    if dest.symlink_metadata().is_ok() {
        return fail(format!("Output directory '{}' already exists", dest.display()));
    }
    let bundle = Bundle::open(&location(ctx.arg(0)), &open)?;
    bundle.extract(&dest)?;
    Ok(())
}

fn cmd_info(ctx: &Context) -> Result<(), CliError> {
    let format = OutputFormat::parse(ctx.args.value("output-format").unwrap_or("readable"))?;
    let location = crate::bundle::resolve_location(ctx.arg(0))?;
    let open = open_options(ctx, true)?;
    let bundle = Bundle::open(&location, &open)?;
    let text =
        info::render(&BundleInfo::of(&bundle), format, ctx.args.has("dump-cert"), ctx.args.has("dump-recipients"));
    print!("{text}");
    bundle.log_http_stats();
    Ok(())
}
