//! The device commands of the multi-call binary (direct mode, no service):
//! `status` with `mark-*`, `install`, `write-slot` and `mount`.

mod status;

use crate::config::{self, SystemConfig};
use crate::system::System;
use rota_bundle::cli::options::OptSpec;
use rota_bundle::cli::{CliError, Command, Context};

const OVERRIDE_BOOT_SLOT: OptSpec =
    OptSpec::value("override-boot-slot", "SLOTNAME", "use this slot (or _external_) as the booted one");

const STATUS_OPTS: &[OptSpec] = &[
    OptSpec::flag("detailed", "show the stored status of every slot"),
    OptSpec::value("output-format", "FORMAT", "readable, shell, json or json-pretty"),
    OVERRIDE_BOOT_SLOT,
];

/// The device commands, in help order.
pub const DEVICE_COMMANDS: &[Command] = &[Command {
    name: "status",
    usage: "[mark-good|mark-bad|mark-active [booted|other|SLOTNAME]]",
    summary: "Show system status or mark slots",
    group_title: "Status options:",
    options: STATUS_OPTS,
    positionals: (0, 2),
    missing_args: "",
    run: status::run,
}];

/// Every command of the `rota` binary: bundle commands, then device commands.
pub fn all_commands() -> Vec<Command> {
    rota_bundle::cli::commands::HOST_COMMANDS.iter().chain(DEVICE_COMMANDS).copied().collect()
}

/// The system configuration from `-c`/`-C`, with `--mount` and `--keyring` applied.
pub fn load_config(ctx: &Context) -> Result<SystemConfig, CliError> {
    let mut c = config::load(ctx.path("conf").as_deref(), ctx.args.values("confopt"))?;
    if let Some(m) = ctx.path("mount") {
        c.system.mount_prefix = m;
    }
    if let Some(k) = ctx.path("keyring") {
        c.keyring.path = Some(k);
        c.keyring.directory = None;
    }
    Ok(c)
}

/// The target context for a device command.
pub fn setup(ctx: &Context) -> Result<System, CliError> {
    let config = load_config(ctx)?;
    Ok(System::setup(config, ctx.args.value("override-boot-slot"))?)
}
