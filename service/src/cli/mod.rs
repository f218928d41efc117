//! The device commands of the multi-call binary: `status` with `mark-*`,
//! `install`, `write-slot`, `mount` and `service`. `install`, `status` and
//! `info` are clients of a running service when there is one, else they do
//! the work in this process (direct mode).

mod client;
mod info;
mod install;
mod mount;
mod status;
mod system;
mod write_slot;

use crate::config::{self, SystemConfig};
use crate::system::System;
use rota_bundle::bundle::OpenOptions;
use rota_bundle::cli::options::OptSpec;
use rota_bundle::cli::{CliError, Command, Context};

const OVERRIDE_BOOT_SLOT: OptSpec =
    OptSpec::value("override-boot-slot", "SLOTNAME", "use this slot (or _external_) as the booted one");

const STATUS_OPTS: &[OptSpec] = &[
    OptSpec::flag("detailed", "show the stored status of every slot"),
    OptSpec::value("output-format", "FORMAT", "readable, shell, json or json-pretty"),
    OVERRIDE_BOOT_SLOT,
];

const SYSTEM_OPTS: &[OptSpec] = &[OptSpec::value("output-format", "FORMAT", "readable or json (status)")];

const INSTALL_OPTS: &[OptSpec] = &[
    OptSpec::flag("ignore-compatible", "install even if the compatible does not match"),
    OptSpec::flag("ignore-version-limit", "install even if the version is below min-bundle-version"),
    OptSpec::value("transaction-id", "UUID", "transaction id to use"),
    OptSpec::value("require-manifest-hash", "HASH", "install only a bundle with this manifest hash"),
    OptSpec::flag("progress", "show a progress bar"),
    OptSpec::value("handler-args", "ARGS", "extra arguments for the full custom handler"),
    OptSpec::value("keyring", "PEMFILE", "trust anchors (instead of the configured keyring)"),
    OVERRIDE_BOOT_SLOT,
    // From here on shared with `mount`.
    OptSpec::value("key", "PEMFILE|PKCS11-URL", "private key to decrypt an encrypted bundle"),
    OptSpec::value("tls-cert", "PEMFILE|PKCS11-URL", "TLS client certificate"),
    OptSpec::value("tls-key", "PEMFILE|PKCS11-URL", "TLS client key"),
    OptSpec::value("tls-ca", "PEMFILE", "CA certificates for the HTTPS server"),
    OptSpec::flag("tls-no-verify", "do not check the HTTPS server certificate"),
    OptSpec::value("http-header", "'NAME: VALUE'", "extra HTTP header (repeatable)").short('H'),
];

/// `mount` takes the bundle-access options that end the install options
/// (decryption key, TLS, HTTP headers).
const MOUNT_OPTS: &[OptSpec] = INSTALL_OPTS.split_at(8).1;

const SERVICE_OPTS: &[OptSpec] = &[
    OptSpec::value("handler-args", "ARGS", "extra arguments for the full custom handler"),
    OptSpec::value("keyring", "PEMFILE", "trust anchors (instead of the configured keyring)"),
    OVERRIDE_BOOT_SLOT,
];

const WRITE_SLOT_OPTS: &[OptSpec] = &[
    OptSpec::value("image-type", "TYPE", "image type (instead of deriving it from the file name)").short('t'),
    // RAUC's hidden spelling of the same option, kept for older scripts.
    OptSpec::value("image-type-compat", "TYPE", "image type (compat)").short('l').hidden(),
    OVERRIDE_BOOT_SLOT,
];

/// The device commands, in help order.
pub const DEVICE_COMMANDS: &[Command] = &[
    Command {
        name: "install",
        usage: "<BUNDLE>",
        summary: "Install a bundle",
        group_title: "Install options:",
        options: INSTALL_OPTS,
        positionals: (1, 1),
        missing_args: "A bundle filename or URL must be provided",
        run: install::run,
    },
    Command {
        name: "mount",
        usage: "<BUNDLE>",
        summary: "Mount a bundle (read-only, verified)",
        group_title: "Mount options:",
        options: MOUNT_OPTS,
        positionals: (1, 1),
        missing_args: "A bundle filename or URL must be provided",
        run: mount::run,
    },
    Command {
        name: "write-slot",
        usage: "<SLOTNAME> <IMAGE>",
        summary: "Write an image to a slot, bypassing the update logic",
        group_title: "Write-slot options:",
        options: WRITE_SLOT_OPTS,
        positionals: (2, 2),
        missing_args: "A slot name and an image file must be provided",
        run: write_slot::run,
    },
    Command {
        name: "service",
        usage: "",
        summary: "Start the D-Bus service",
        group_title: "Service options:",
        options: SERVICE_OPTS,
        positionals: (0, 0),
        missing_args: "",
        run: crate::dbus::run,
    },
    Command {
        name: "status",
        usage: "[mark-good|mark-bad|mark-active [booted|other|SLOTNAME]]",
        summary: "Show system status or mark slots",
        group_title: "Status options:",
        options: STATUS_OPTS,
        positionals: (0, 2),
        missing_args: "",
        run: status::run,
    },
    Command {
        name: "system",
        usage: "update <URL>|status|cancel",
        summary: "Update the whole system (main ECU)",
        group_title: "System options:",
        options: SYSTEM_OPTS,
        positionals: (1, 2),
        missing_args: "A system command (update, status or cancel) must be given",
        run: system::run,
    },
];

/// Every command of the `rota` binary: bundle commands (`info` asks the
/// running service, when there is one), then device commands.
pub fn all_commands() -> Vec<Command> {
    rota_bundle::cli::commands::HOST_COMMANDS
        .iter()
        .map(|c| if c.name == "info" { Command { run: info::run, ..*c } } else { *c })
        .chain(DEVICE_COMMANDS.iter().copied())
        .collect()
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

/// How device commands open a bundle: the configured keyring, formats and
/// decryption key (`--key` wins), and the HTTP options of `ctx` and the
/// configuration (with `facts` for the automatic headers).
pub fn open_options(
    ctx: &Context,
    config: &SystemConfig,
    facts: &rota_bundle::hostconfig::HeaderFacts,
) -> Result<OpenOptions, CliError> {
    let http = rota_bundle::cli::commands::http_options(ctx, &config.host_config(), facts)?;
    Ok(config.open_options(http, ctx.path("key")))
}

/// The target context for a device command.
pub fn setup(ctx: &Context) -> Result<System, CliError> {
    let config = load_config(ctx)?;
    Ok(System::setup(config, ctx.args.value("override-boot-slot"))?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_takes_exactly_the_bundle_access_options() {
        let names: Vec<&str> = super::MOUNT_OPTS.iter().map(|o| o.long).collect();
        assert_eq!(names, ["key", "tls-cert", "tls-key", "tls-ca", "tls-no-verify", "http-header"]);
    }
}
