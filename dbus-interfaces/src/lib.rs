//! rota's D-Bus interfaces for clients: the bus name, object path and
//! interface names of `de.pengutronix.rauc` (spec §8), the error name RAUC
//! uses for every failure, and typed zbus proxies. The introspection XML
//! next to this crate is what the service exports, byte for byte.
#![deny(missing_docs)]

use std::collections::HashMap;
use zbus::{OwnedVariant, proxy};

/// The service's well-known name.
pub const BUS_NAME: &str = "de.pengutronix.rauc";
/// The object everything lives on.
pub const OBJECT_PATH: &str = "/";
/// RAUC's installer interface.
pub const INSTALLER_INTERFACE: &str = "de.pengutronix.rauc.Installer";
/// rota's own interface on the same object: `Cancel` and `Details`.
pub const CONTROL_INTERFACE: &str = "dev.rota.Installer1";
/// RAUC's poller interface, exported when polling is configured.
pub const POLLER_INTERFACE: &str = "de.pengutronix.rauc.Poller";
/// The error name of every method failure: GLib's unmapped I/O error
/// "failed-handled", as RAUC puts it on the bus.
pub const ERROR_NAME: &str = "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code30";

/// `a{sv}` as zbus hands it out.
pub type Dict = HashMap<String, OwnedVariant>;

/// `de.pengutronix.rauc.Installer` (spec §8.1).
#[proxy(interface = "de.pengutronix.rauc.Installer", default_service = "de.pengutronix.rauc", default_path = "/")]
pub trait Installer {
    /// Starts an installation; the result arrives as `Completed`.
    fn install_bundle(&self, source: &str, args: HashMap<&str, zbus::Variant<'_>>) -> zbus::Result<()>;

    /// Deprecated: `InstallBundle` without arguments.
    fn install(&self, source: &str) -> zbus::Result<()>;

    /// Opens and verifies a bundle; its manifest as `rauc info --output-format=json-2` has it.
    fn inspect_bundle(&self, source: &str, args: HashMap<&str, zbus::Variant<'_>>) -> zbus::Result<Dict>;

    /// Deprecated: (compatible, version) of a bundle.
    fn info(&self, bundle: &str) -> zbus::Result<(String, String)>;

    /// Marks slots `good`, `bad` or `active`: (marked slot names, message).
    fn mark(&self, state: &str, slot_identifier: &str) -> zbus::Result<(String, String)>;

    /// (slot name, status dict) of every configured slot.
    fn get_slot_status(&self) -> zbus::Result<Vec<(String, Dict)>>;

    /// One dict per artifact repository.
    fn get_artifact_status(&self) -> zbus::Result<Vec<Dict>>;

    /// The bootloader's primary slot.
    fn get_primary(&self) -> zbus::Result<String>;

    /// An installation ended: 0 success, 1 failure.
    #[zbus(signal)]
    fn completed(&self, result: i32) -> zbus::Result<()>;

    /// `idle` or `installing`.
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;

    /// The message of the last failed installation.
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;

    /// (percentage, message, depth) of the running installation.
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<(i32, String, i32)>;

    /// The system's compatible.
    #[zbus(property)]
    fn compatible(&self) -> zbus::Result<String>;

    /// The system's variant.
    #[zbus(property)]
    fn variant(&self) -> zbus::Result<String>;

    /// The system version from the system-info handler.
    #[zbus(property)]
    fn system_version(&self) -> zbus::Result<String>;

    /// The boot-slot string.
    #[zbus(property)]
    fn boot_slot(&self) -> zbus::Result<String>;
}

/// `dev.rota.Installer1`: what rota adds, on an interface of its own.
#[proxy(interface = "dev.rota.Installer1", default_service = "de.pengutronix.rauc", default_path = "/")]
pub trait Control {
    /// Cancels the running installation; refused once it activates, and while
    /// the bundle's own update handler installs it.
    fn cancel(&self) -> zbus::Result<()>;

    /// Everything `info` shows about a bundle, verified by the service:
    /// `manifest` (its text; a crypt bundle's `crypt-key` left out), `manifest-hash`,
    /// `format`, `encrypted`, `verified`, `chains`, `recipients`, `trees`.
    fn inspect(&self, source: &str, args: HashMap<&str, zbus::Variant<'_>>) -> zbus::Result<Dict>;

    /// `operation`, `phase`, `step`, `percentage`, `slot`, `bytes-done`, `bytes-total`,
    /// `files-done`, `files-total`, `results` (tree images' final numbers per slot).
    #[zbus(property)]
    fn details(&self) -> zbus::Result<Dict>;
}

/// `dev.rota.System1`: system updates across ECUs, exported by a main ECU.
#[proxy(interface = "dev.rota.System1", default_service = "de.pengutronix.rauc", default_path = "/")]
pub trait System {
    /// Starts the system update of a signed system manifest (path or URL);
    /// returns its transaction id once the manifest was checked.
    fn update(&self, url: &str, options: HashMap<&str, zbus::Variant<'_>>) -> zbus::Result<String>;

    /// Cancels a system update no ECU has switched to yet.
    fn cancel(&self) -> zbus::Result<()>;

    /// `idle`, `preparing`, `switching`, `committing`, `reverting`, `committed`, `reverted`, `failed`.
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;

    /// The running or last transaction.
    #[zbus(property)]
    fn transaction_id(&self) -> zbus::Result<String>;

    /// Its system version.
    #[zbus(property)]
    fn system_version(&self) -> zbus::Result<u64>;

    /// The system version last committed (0: none).
    #[zbus(property)]
    fn committed_system_version(&self) -> zbus::Result<u64>;

    /// Why the last transaction reverted or failed.
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;

    /// Per ECU: id, state, error, booted slot, booted version, progress.
    #[zbus(property)]
    fn ecus(&self) -> zbus::Result<Vec<(String, String, String, String, String, u32)>>;
}

/// `de.pengutronix.rauc.Poller` (spec §8.5), exported when `[polling] url` is set.
#[proxy(interface = "de.pengutronix.rauc.Poller", default_service = "de.pengutronix.rauc", default_path = "/")]
pub trait Poller {
    /// Schedules a poll soon (about 30 s).
    fn poll(&self) -> zbus::Result<()>;

    /// Next poll time, `CLOCK_BOOTTIME` µs; 0 once a reboot was triggered.
    #[zbus(property)]
    fn next_poll(&self) -> zbus::Result<i64>;

    /// Attempts, errors, times, the last result and the polled bundle.
    #[zbus(property)]
    fn status(&self) -> zbus::Result<Dict>;
}

/// One of the installer's signals, as a client reads it.
#[derive(Debug)]
pub enum InstallerSignal {
    /// `Completed(result)`.
    Completed(i32),
    /// The installer properties a `PropertiesChanged` carries.
    Changed(Dict),
}

/// Reads `msg` as one of the installer's signals; `None` for anything else
/// (other interfaces' property changes, other signals, malformed bodies).
pub fn installer_signal(msg: &zbus::Message) -> Option<InstallerSignal> {
    let header = msg.header();
    match (header.interface().map(|i| i.as_str()), header.member().map(|m| m.as_str())) {
        (Some(INSTALLER_INTERFACE), Some("Completed")) => msg.body().deserialize().ok().map(InstallerSignal::Completed),
        (Some("org.freedesktop.DBus.Properties"), Some("PropertiesChanged")) => {
            let (interface, changed, _): (String, Dict, Vec<String>) = msg.body().deserialize().ok()?;
            (interface == INSTALLER_INTERFACE).then_some(InstallerSignal::Changed(changed))
        }
        _ => None,
    }
}
