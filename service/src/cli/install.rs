//! `install <BUNDLE>` in direct mode: the install engine runs in this
//! process. Progress is a bar on a terminal (or with `--progress`), plain
//! `%3d%% <message>` lines otherwise.

use crate::install::engine::{self, InstallArgs};
use rota_bundle::bundle::{OpenOptions, is_remote};
use rota_bundle::cli::{CliError, Context};
use rota_bundle::signature::VerifyOptions;
use std::io::{IsTerminal, Write};

fn location(arg: &str) -> Result<String, CliError> {
    if !is_remote(arg) && !std::path::Path::new(arg).exists() {
        return Err(CliError { message: format!("No such file: {arg}"), code: 1 });
    }
    Ok(rota_bundle::cli::commands::location(arg))
}

fn bar(percentage: i32, message: &str) {
    let width = 30usize;
    let filled = (percentage.clamp(0, 100) as usize * width) / 100;
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K[{}{}] {percentage:3}% {message}", "#".repeat(filled), ".".repeat(width - filled));
    let _ = err.flush();
}

pub(super) fn run(ctx: &Context) -> Result<(), CliError> {
    let loc = location(ctx.arg(0))?;
    let mut system = super::setup(ctx)?;
    let mut conf = system.config.host_config();
    conf.variant = (!system.variant.is_empty()).then(|| system.variant.clone());
    let http = rota_bundle::cli::commands::http_options(ctx, &conf)?;
    let args = InstallArgs {
        location: loc.clone(),
        open: OpenOptions {
            verify: VerifyOptions { keyring: conf.keyring.clone(), no_verify: false, no_check_time: false },
            max_signature_size: conf.max_signature_size,
            allowed_formats: conf.bundle_formats.clone(),
            decryption_key: ctx.path("key").or(conf.decryption_key.clone()),
            decryption_cert: conf.decryption_cert.clone(),
            trust_environment: false,
            http,
        },
        ignore_compatible: ctx.args.has("ignore-compatible"),
        ignore_version_limit: ctx.args.has("ignore-version-limit"),
        transaction_id: ctx.args.value("transaction-id").map(str::to_string),
        require_manifest_hash: ctx.args.value("require-manifest-hash").map(str::to_string),
    };
    let use_bar = ctx.args.has("progress") || std::io::stderr().is_terminal();
    let mut sink = |p: i32, m: &str, _depth: i32| {
        if use_bar {
            bar(p, m);
        } else {
            println!("{p:3}% {m}");
        }
    };
    let result = engine::install(&mut system, &args, &mut sink);
    if use_bar {
        eprintln!();
    }
    match result {
        Ok(_) => {
            println!("Installing `{loc}` succeeded");
            Ok(())
        }
        Err(e) => {
            eprintln!("LastError: {e}");
            Err(CliError { message: format!("Installing `{loc}` failed"), code: 1 })
        }
    }
}
