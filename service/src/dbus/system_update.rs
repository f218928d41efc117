//! `dev.rota.System1` on `/` of a main ECU: starts and cancels system
//! updates across ECUs and shows where one stands, per ECU and as a whole
//! (every change announced with `PropertiesChanged`).

use super::installer::{RaucError, check_keys};
use crate::ecu::main::{Driver, SystemRecord};
use std::collections::HashMap;
use zbus::{OwnedVariant, interface};

/// The interface's state: the driver and the record last announced.
pub struct SystemUpdate {
    driver: Driver,
    record: SystemRecord,
}

impl SystemUpdate {
    /// The interface of `driver`, showing `record`.
    pub fn new(driver: Driver, record: SystemRecord) -> SystemUpdate {
        SystemUpdate { driver, record }
    }

    /// Replaces the record shown; whether anything changed.
    pub fn set(&mut self, record: SystemRecord) -> bool {
        let changed = self.record != record;
        self.record = record;
        changed
    }
}

#[interface(name = "dev.rota.System1")]
impl SystemUpdate {
    /// Starts the system update whose signed system manifest `url` names
    /// (a path or an http(s) URL); returns its transaction id once the
    /// manifest was verified and checked, before any ECU fetches anything.
    #[zbus(out_args("transaction_id"))]
    async fn update(&self, url: String, options: HashMap<String, OwnedVariant>) -> Result<String, RaucError> {
        check_keys(&options, &[])?;
        super::check_location(&url)?;
        self.driver.update(&url).await.map_err(RaucError::Code30)
    }

    /// Cancels a system update no ECU has switched to yet: every ECU reverts.
    async fn cancel(&self) -> Result<(), RaucError> {
        self.driver.cancel().await.map_err(RaucError::Code30)
    }

    /// `idle`, `preparing`, `switching`, `committing`, `reverting`,
    /// `committed`, `reverted` or `failed`.
    #[zbus(property)]
    fn state(&self) -> String {
        self.record.phase.as_str().to_string()
    }

    /// The running or last transaction (SHA-256 of its system manifest).
    #[zbus(property)]
    fn transaction_id(&self) -> String {
        self.record.transaction_id.clone()
    }

    /// The system version of the running or last transaction.
    #[zbus(property)]
    fn system_version(&self) -> u64 {
        self.record.system_version
    }

    /// The system version last committed (0: none yet).
    #[zbus(property)]
    fn committed_system_version(&self) -> u64 {
        self.record.committed_system_version.unwrap_or(0)
    }

    /// Why the last transaction reverted or failed.
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.record.error.clone()
    }

    /// Per ECU: id, state, error, booted slot, booted version, progress.
    #[zbus(property)]
    fn ecus(&self) -> Vec<(String, String, String, String, String, u32)> {
        self.record
            .ecus
            .iter()
            .map(|(id, v)| {
                (
                    id.clone(),
                    v.state.clone(),
                    v.error.clone(),
                    v.booted_slot.clone(),
                    v.booted_version.clone(),
                    v.progress,
                )
            })
            .collect()
    }
}

/// Announces every property of `iref` after the record changed.
pub async fn announce(iref: &zbus::object_server::InterfaceRef<SystemUpdate>, record: SystemRecord) {
    let mut g = iref.get_mut().await;
    if !g.set(record) {
        return;
    }
    let e = iref.signal_emitter();
    let _ = g.state_changed(e).await;
    let _ = g.transaction_id_changed(e).await;
    let _ = g.system_version_changed(e).await;
    let _ = g.committed_system_version_changed(e).await;
    let _ = g.last_error_changed(e).await;
    let _ = g.ecus_changed(e).await;
}
