//! rota as rota-ocpp sees it: the service's D-Bus API and nothing else
//! (`de.pengutronix.rauc.Installer`, and `dev.rota.Installer1` to cancel),
//! read as EVerest reads RAUC: the step texts of `Progress`.

use futures_util::StreamExt;
use rota_dbus::{ControlProxy, InstallerProxy};
use std::collections::HashMap;

/// What an installation showed on its way, told as it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallEvent {
    /// The bundle's signature was verified.
    SignatureVerified,
    /// The bundle's signature was refused.
    SignatureFailed,
    /// An image is being written; overall percentage.
    Copying(i32),
}

/// How an installation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// `Completed`'s code (0: success).
    pub code: i32,
    /// `LastError` after it.
    pub last_error: String,
    /// The signature step was reached.
    pub signature_reached: bool,
    /// The signature was refused.
    pub signature_failed: bool,
    /// The bundle check failed before the signature step: the bundle
    /// could not be fetched.
    pub unreachable: bool,
    /// An image was being written.
    pub copying: bool,
}

/// A connection to `rota service`.
pub struct Rota {
    conn: zbus::Connection,
    installer: InstallerProxy<'static>,
    control: ControlProxy<'static>,
}

/// A D-Bus failure as text.
fn text(e: zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(_, Some(msg), _) => msg,
        other => other.to_string(),
    }
}

impl Rota {
    /// Connects over the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set).
    pub async fn connect() -> Result<Rota, String> {
        let conn = zbus::Connection::system().await.map_err(|e| format!("system bus: {e}"))?;
        Rota::on(conn).await
    }

    /// Uses an open connection.
    pub async fn on(conn: zbus::Connection) -> Result<Rota, String> {
        // Properties are read from the service each time: a cache fed by
        // signals could still hold the values from before `Completed`.
        let installer = InstallerProxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(text)?;
        let control = ControlProxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(text)?;
        Ok(Rota { conn, installer, control })
    }

    /// `Operation`.
    pub async fn operation(&self) -> Result<String, String> {
        self.installer.operation().await.map_err(text)
    }

    /// `BootSlot`.
    pub async fn boot_slot(&self) -> Result<String, String> {
        self.installer.boot_slot().await.map_err(text)
    }

    /// `SystemVersion` (the `system-info` handler's `RAUC_SYSTEM_VERSION`).
    pub async fn system_version(&self) -> Result<String, String> {
        self.installer.system_version().await.map_err(text)
    }

    /// `Mark(state, slot)`.
    pub async fn mark(&self, state: &str, slot: &str) -> Result<String, String> {
        self.installer.mark(state, slot).await.map(|(_, msg)| msg).map_err(text)
    }

    /// `dev.rota.Installer1.Cancel`.
    pub async fn cancel(&self) -> Result<(), String> {
        self.control.cancel().await.map_err(text)
    }

    /// `InspectBundle`: fetches the bundle's signature and verifies it.
    pub async fn inspect(&self, location: &str) -> Result<(), String> {
        self.installer.inspect_bundle(location, HashMap::new()).await.map(|_| ()).map_err(text)
    }

    /// `InstallBundle(location, {})` until `Completed`, telling `on_event`
    /// what the progress texts show.
    pub async fn install(&self, location: &str, mut on_event: impl FnMut(InstallEvent)) -> Result<Finished, String> {
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .path("/")
            .build()
            .map_err(|e| e.to_string())?;
        let mut signals = zbus::MessageStream::for_match_rule(rule, &self.conn, None).await.map_err(text)?;
        self.installer.install_bundle(location, HashMap::new()).await.map_err(text)?;
        let mut done = Finished {
            code: -1,
            last_error: String::new(),
            signature_reached: false,
            signature_failed: false,
            unreachable: false,
            copying: false,
        };
        while let Some(msg) = signals.next().await {
            let Ok(msg) = msg else { continue };
            match rota_dbus::installer_signal(&msg) {
                Some(rota_dbus::InstallerSignal::Completed(code)) => {
                    done.code = code;
                    done.last_error = self.installer.last_error().await.unwrap_or_default();
                    return Ok(done);
                }
                Some(rota_dbus::InstallerSignal::Changed(changed)) => {
                    let Some(v) = changed.get("Progress").and_then(|v| v.try_clone().ok()) else { continue };
                    let Ok((percent, step, _)) = <(i32, String, i32)>::try_from(v) else { continue };
                    if step.starts_with("Verifying signature") {
                        done.signature_reached = true;
                    }
                    if step.contains("Verifying signature done") {
                        on_event(InstallEvent::SignatureVerified);
                    } else if step.contains("Verifying signature failed") {
                        done.signature_failed = true;
                        on_event(InstallEvent::SignatureFailed);
                    } else if step.contains("Checking bundle failed") && !done.signature_reached {
                        done.unreachable = true;
                    } else if step.starts_with("Copying image")
                        && !step.ends_with("done.")
                        && !step.ends_with("failed.")
                    {
                        done.copying = true;
                        on_event(InstallEvent::Copying(percent));
                    }
                }
                None => {}
            }
        }
        Err("the D-Bus connection ended during the installation".to_string())
    }
}
