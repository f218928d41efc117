//! The command line as a client of a running service (spec §9.3, §9.5):
//! when `de.pengutronix.rauc` has an owner (or can be activated) on the bus
//! the service would use, `install`, `status` and `status mark-*` go
//! through D-Bus; otherwise they run in this process (direct mode).

use super::install::Terminal;
use crate::install::progress::ProgressSink;
use crate::report::{RepoReport, SlotReport, StatusReport};
use crate::status::SlotStatus;
use futures_util::StreamExt;
use rota_bundle::cli::CliError;
use rota_dbus::{Dict, InstallerProxy};
use std::collections::HashMap;
use zbus::{Connection, OwnedVariant, Variant};

/// The error a service answers for a method it does not have.
const UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";

/// A connection to a running (or activatable) service.
pub struct Client {
    rt: tokio::runtime::Runtime,
    conn: Connection,
}

/// A D-Bus failure as the command line reports it: the service's own
/// message (exit 1), or the transport's (exit 2).
pub(super) fn dbus_error(e: zbus::Error) -> CliError {
    match e {
        zbus::Error::MethodError(_, Some(message), _) => CliError { message, code: 1 },
        other => CliError { message: format!("D-Bus error: {other}"), code: 2 },
    }
}

impl Client {
    /// Connects to the bus the service uses (session with
    /// `DBUS_STARTER_BUS_TYPE=session`, else system) if the service is there.
    pub fn connect() -> Option<Client> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        let conn = rt.block_on(async {
            let conn = crate::dbus::connect_bus(crate::dbus::use_session_bus()).await.ok()?;
            let dbus = zbus::fdo::DBusProxy::new(&conn).await.ok()?;
            let name = zbus::names::BusName::try_from(rota_dbus::BUS_NAME).ok()?;
            if dbus.name_has_owner(name).await.unwrap_or(false) {
                return Some(conn);
            }
            let activatable = dbus.list_activatable_names().await.unwrap_or_default();
            activatable.iter().any(|n| n.as_str() == rota_dbus::BUS_NAME).then_some(conn)
        })?;
        Some(Client { rt, conn })
    }

    fn proxy(&self) -> Result<InstallerProxy<'static>, CliError> {
        self.rt.block_on(InstallerProxy::new(&self.conn)).map_err(dbus_error)
    }

    /// `install` through `InstallBundle`: prints what the service reports
    /// (operation, progress as lines or a bar, the last error) until its
    /// `Completed`. Only the service's own signals count (its unique name,
    /// the installer interface), and the client stops waiting when the
    /// service leaves the bus.
    pub fn install(&self, location: &str, args: HashMap<&str, Variant<'_>>, bar: bool) -> Result<(), CliError> {
        let proxy = self.proxy()?;
        let mut term = Terminal::new(bar);
        let result = self.rt.block_on(async {
            let dbus = zbus::fdo::DBusProxy::new(&self.conn).await.map_err(dbus_error)?;
            let name = zbus::names::BusName::try_from(rota_dbus::BUS_NAME).map_err(dbus_error)?;
            // Watched before the call, so no change of owner is missed.
            let mut owner_changes =
                dbus.receive_name_owner_changed_with_args(&[(0, rota_dbus::BUS_NAME)]).await.map_err(dbus_error)?;
            // The call starts the service if it is only activatable; its owner is known then.
            let rule = zbus::MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .path(rota_dbus::OBJECT_PATH)
                .build()
                .map_err(dbus_error)?;
            let mut signals = zbus::MessageStream::for_match_rule(rule, &self.conn, None).await.map_err(dbus_error)?;
            // Ctrl+C from here on detaches the client (exit code 3); registered before the call.
            let mut interrupted = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| CliError { message: format!("Failed to handle SIGINT: {e}"), code: 2 })?;
            proxy.install_bundle(location, args).await.map_err(dbus_error)?;
            let owner = dbus.get_name_owner(name).await.map_err(|e| dbus_error(e.into()))?;
            let vanished = || CliError { message: "The service stopped during the installation".into(), code: 2 };
            loop {
                // The service's own signals first: its Completed arrives
                // before the bus says it left, but both streams can be ready
                // at once, and an unbiased pick could take the departure.
                let msg = tokio::select! {
                    biased;
                    msg = signals.next() => msg,
                    change = owner_changes.next() => {
                        match change.as_ref().and_then(|c| c.args().ok()) {
                            Some(a) if a.new_owner().as_ref().map(|o| o.as_str()) == Some(owner.as_str()) => continue,
                            _ => return Err(vanished()),
                        }
                    }
                    _ = interrupted.recv() => {
                        return Err(CliError {
                            message: "Interrupted; the installation continues in the service".into(),
                            code: 3,
                        });
                    }
                };
                let Some(msg) = msg else { return Err(vanished()) };
                let Ok(msg) = msg else { continue };
                let header = msg.header();
                if header.sender().map(|s| s.as_str()) != Some(owner.as_str()) {
                    continue;
                }
                match rota_dbus::installer_signal(&msg) {
                    Some(rota_dbus::InstallerSignal::Completed(code)) => return Ok(code),
                    Some(rota_dbus::InstallerSignal::Changed(changed)) => print_changes(&mut term, &changed),
                    None => {}
                }
            }
        });
        term.finish();
        match result? {
            0 => {
                println!("Installing `{location}` succeeded");
                Ok(())
            }
            _ => Err(CliError { message: format!("Installing `{location}` failed"), code: 1 }),
        }
    }

    /// `status` from `GetSlotStatus`, `GetArtifactStatus`, `GetPrimary` and
    /// the properties (a failing `GetPrimary` only warns).
    pub fn status(&self) -> Result<StatusReport, CliError> {
        let proxy = self.proxy()?;
        self.rt.block_on(async {
            let boot_primary = match proxy.get_primary().await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("{}", dbus_error(e).message);
                    None
                }
            };
            let slots = proxy.get_slot_status().await.map_err(dbus_error)?;
            // Services before RAUC 1.12 (Debian's 1.8) have neither artifact
            // repositories nor the system version.
            let repos = match proxy.get_artifact_status().await {
                Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == UNKNOWN_METHOD => Vec::new(),
                r => r.map_err(dbus_error)?,
            };
            let system_version = proxy.system_version().await.unwrap_or_default();
            // The slots as RAUC's client shows them: put into a table of its
            // own in the order received, then walked.
            let names: Vec<&str> = slots.iter().map(|(name, _)| name.as_str()).collect();
            let slots =
                crate::slot_order::table_order(&names).into_iter().map(|i| slot_report(&slots[i].0, &slots[i].1));
            Ok(StatusReport {
                compatible: proxy.compatible().await.map_err(dbus_error)?,
                variant: proxy.variant().await.map_err(dbus_error)?,
                system_version: (!system_version.is_empty()).then_some(system_version),
                booted: proxy.boot_slot().await.map_err(dbus_error)?,
                boot_primary,
                slots: slots.collect(),
                repos: repos.iter().map(repo_report).collect(),
            })
        })
    }

    /// What `info` shows, verified by the service (`dev.rota.Installer1.Inspect`);
    /// `None` when the service does not offer it (RAUC's own service).
    pub fn inspect(
        &self,
        location: &str,
        args: HashMap<&str, Variant<'_>>,
    ) -> Result<Option<rota_bundle::info::BundleInfo>, CliError> {
        let proxy = self.rt.block_on(rota_dbus::ControlProxy::new(&self.conn)).map_err(dbus_error)?;
        match self.rt.block_on(proxy.inspect(location, args)) {
            Ok(d) => {
                crate::dbus::dicts::bundle_info_from_dict(&d).map(Some).map_err(|message| CliError { message, code: 2 })
            }
            Err(zbus::Error::MethodError(name, _, _))
                if [UNKNOWN_METHOD, "org.freedesktop.DBus.Error.UnknownInterface"].contains(&name.as_str()) =>
            {
                Ok(None)
            }
            Err(e) => Err(dbus_error(e)),
        }
    }

    /// `status mark-*` through `Mark`; returns the service's message.
    pub fn mark(&self, state: &str, identifier: &str) -> Result<String, CliError> {
        let proxy = self.proxy()?;
        self.rt.block_on(proxy.mark(state, identifier)).map(|(_, message)| message).map_err(dbus_error)
    }
}

/// Prints one `PropertiesChanged` of an installation as RAUC's client does.
fn print_changes(term: &mut Terminal, changed: &HashMap<String, OwnedVariant>) {
    for (key, value) in changed {
        let Ok(value) = value.try_clone() else { continue };
        match key.as_str() {
            "Operation" => {
                if let Ok(op) = String::try_from(value) {
                    term.message(&op);
                }
            }
            "Progress" => {
                if let Ok((p, m, d)) = <(i32, String, i32)>::try_from(value) {
                    term.progress(p, &m, d);
                }
            }
            "LastError" => match String::try_from(value) {
                Ok(e) if !e.is_empty() => term.message(&format!("LastError: {e}")),
                _ => {}
            },
            _ => {}
        }
    }
}

fn text(d: &Dict, key: &str) -> Option<String> {
    d.get(key).and_then(|v| v.try_clone().ok()).and_then(|v| String::try_from(v).ok())
}

fn number(d: &Dict, key: &str) -> Option<u64> {
    let v = d.get(key)?;
    u64::try_from(&**v).ok().or_else(|| u32::try_from(&**v).ok().map(u64::from))
}

/// A slot of `GetSlotStatus` back in the report's shape.
fn slot_report(name: &str, d: &Dict) -> SlotReport {
    SlotReport {
        name: name.to_string(),
        class: text(d, "class").unwrap_or_default(),
        device: text(d, "device").unwrap_or_default(),
        slot_type: text(d, "type").unwrap_or_default(),
        bootname: text(d, "bootname"),
        state: text(d, "state").unwrap_or_default(),
        parent: text(d, "parent"),
        mountpoint: text(d, "mountpoint"),
        boot_status: text(d, "boot-status"),
        description: text(d, "description"),
        status: SlotStatus {
            bundle_compatible: text(d, "bundle.compatible"),
            bundle_version: text(d, "bundle.version"),
            bundle_description: text(d, "bundle.description"),
            bundle_build: text(d, "bundle.build"),
            bundle_hash: text(d, "bundle.hash"),
            status: text(d, "status"),
            sha256: text(d, "sha256"),
            size: number(d, "size"),
            installed_transaction: text(d, "installed.transaction"),
            installed_timestamp: text(d, "installed.timestamp"),
            installed_count: number(d, "installed.count").unwrap_or(0),
            activated_timestamp: text(d, "activated.timestamp"),
            activated_count: number(d, "activated.count").unwrap_or(0),
        },
    }
}

fn dicts(d: &Dict, key: &str) -> Vec<Dict> {
    d.get(key).and_then(|v| v.try_clone().ok()).and_then(|v| Vec::<Dict>::try_from(v).ok()).unwrap_or_default()
}

/// A repository of `GetArtifactStatus` back in the report's shape.
fn repo_report(d: &Dict) -> RepoReport {
    let artifacts = dicts(d, "artifacts")
        .iter()
        .map(|a| {
            let name = text(a, "name").unwrap_or_default();
            let instances = dicts(a, "instances")
                .iter()
                .map(|i| {
                    let references: Vec<String> = i
                        .get("references")
                        .and_then(|v| v.try_clone().ok())
                        .and_then(|v| Vec::<String>::try_from(v).ok())
                        .unwrap_or_default();
                    crate::artifacts::Instance {
                        name: name.clone(),
                        digest: text(i, "checksum").unwrap_or_default(),
                        active: !references.is_empty(),
                    }
                })
                .collect();
            (name, instances)
        })
        .collect();
    RepoReport {
        name: text(d, "name").unwrap_or_default(),
        path: text(d, "path").unwrap_or_default(),
        repo_type: text(d, "type").unwrap_or_default(),
        description: text(d, "description"),
        artifacts,
    }
}
