//! `info <BUNDLE>` through the running service: the service opens and
//! verifies the bundle with its keyring, HTTP settings and decryption key
//! (`dev.rota.Installer1.Inspect`) and the output is rendered here exactly as
//! a local `info` renders it. Options that ask for local verification
//! (`--keyring`, `--no-verify`, `--no-check-time`, `--key`), no service, or a
//! service without rota's interface mean a local `info`.

use rota_bundle::cli::{CliError, Context};
use rota_bundle::info::{OutputFormat, render};

/// Options that describe a local verification.
const LOCAL_ONLY: [&str; 4] = ["keyring", "no-verify", "no-check-time", "key"];

/// The host-side `info` (local verification). With a configuration named
/// on the command line the device is set up as RAUC sets up its target:
/// the system-info handler runs, and what it reports (serial, system
/// version, variant, `RAUC_HTTP_*`) goes into the automatic HTTP headers.
fn local(ctx: &Context) -> Result<(), CliError> {
    let info = rota_bundle::cli::commands::HOST_COMMANDS.iter().find(|c| c.name == "info").expect("info command");
    let Some(conf) = ctx.path("conf") else {
        return (info.run)(ctx);
    };
    // A file that is no complete device configuration is still read as the
    // bundle tool reads it, before the bundle is looked at, as RAUC loads a
    // configuration named with `-c` first (and names what is wrong with it).
    let config = match crate::config::load(Some(&conf), ctx.args.values("confopt")) {
        Ok(config) => config,
        Err(device_error) => {
            // The device's reading names file and line where both fail.
            ctx.host_config().map_err(|_| CliError::from(device_error))?;
            return (info.run)(ctx);
        }
    };
    let facts = crate::system::target_header_facts(&config)?;
    let ctx = Context { prog: ctx.prog.clone(), args: ctx.args.clone(), header_facts: Some(facts) };
    (info.run)(&ctx)
}

pub(super) fn run(ctx: &Context) -> Result<(), CliError> {
    if LOCAL_ONLY.iter().any(|o| ctx.args.has(o)) {
        return local(ctx);
    }
    let Some(client) = super::client::Client::connect() else {
        return local(ctx);
    };
    let format = OutputFormat::parse(ctx.args.value("output-format").unwrap_or("readable"))?;
    let location = super::install::location(ctx.arg(0))?;
    match client.inspect(&location, super::install::access_args(ctx))? {
        Some(info) => {
            print!("{}", render(&info, format, ctx.args.has("dump-cert"), ctx.args.has("dump-recipients")));
            Ok(())
        }
        None => local(ctx),
    }
}
