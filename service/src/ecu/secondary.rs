//! A secondary's side of the ECU interface: it checks the signed system
//! manifest against its own keyring and its own anti-rollback record before
//! it fetches anything, prepares through the service's installer (the same
//! queue and checks as any installation, with the manifest hash required and
//! nothing activated), and switches, commits or reverts on the main's word.
//! Every step is recorded durably before it is acted on, so a reboot at any
//! point leaves a record the next start continues from.

use super::state::{self, Record, Step};
use crate::config::EcuSection;
use crate::dbus::Service;
use crate::dbus::installer::Installer;
use crate::mark::{self, MarkState};
use rota_bundle::signature::VerifyOptions;
use rota_bundle::system_manifest::{self, Installed};
use rota_ecu::proto::ecu_server::Ecu;
use rota_ecu::proto::{EcuStatus, PrepareRequest, StatusRequest, TransactionRef};
use std::sync::Arc;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use zbus::object_server::InterfaceRef;

/// The ECU interface of a secondary.
#[derive(Clone)]
pub struct Secondary {
    service: Arc<Service>,
    installer: InterfaceRef<Installer>,
    ecu: EcuSection,
    record: Arc<Mutex<Record>>,
    boot_id: String,
}

/// The kernel's id of this boot.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The bootname of the booted slot, if one matched.
fn booted_bootname(system: &crate::system::System) -> Option<String> {
    system.booted().and_then(|s| system.bootname_of(&s.config)).map(str::to_string)
}

fn refused(message: impl Into<String>) -> Status {
    Status::failed_precondition(message)
}

impl Secondary {
    /// The secondary of `service`, its record brought up to date with what
    /// booted: a switch that came up in the target slot is booted-new (the
    /// health check then runs), one that came up elsewhere is unhealthy; a
    /// revert that came up in the old slot is done.
    pub async fn start(
        service: Arc<Service>,
        installer: InterfaceRef<Installer>,
        ecu: EcuSection,
    ) -> crate::error::Result<Secondary> {
        let mut record = state::load(&ecu.state_directory)?;
        let booted = booted_bootname(&service.system);
        match record.step {
            Step::Switching if booted.is_some() && booted == record.target_bootname => {
                record.step = Step::BootedNew;
            }
            Step::Switching => {
                record.step = Step::Unhealthy;
                record.error = format!(
                    "booted {} after switching to {}",
                    booted.as_deref().unwrap_or("an unknown slot"),
                    record.target_bootname.as_deref().unwrap_or("?")
                );
            }
            Step::Reverting if booted.is_some() && booted == record.previous_bootname => record.step = Step::Reverted,
            Step::Preparing => {
                // The service stopped mid-installation: nothing was activated.
                record.step = Step::Failed;
                record.error = "the service stopped while preparing".into();
            }
            _ => {}
        }
        state::save(&ecu.state_directory, &record)?;
        let s = Secondary { service, installer, ecu, record: Arc::new(Mutex::new(record)), boot_id: boot_id() };
        if s.record.lock().await.step == Step::BootedNew {
            let me = s.clone();
            tokio::spawn(async move { me.health_check().await });
        }
        Ok(s)
    }

    async fn save(&self, record: &Record) -> Result<(), Status> {
        let dir = self.ecu.state_directory.clone();
        let r = record.clone();
        tokio::task::spawn_blocking(move || state::save(&dir, &r))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn status_of(&self, record: &Record) -> EcuStatus {
        let system = &self.service.system;
        let booted = system.booted();
        EcuStatus {
            ecu_id: self.ecu.id.clone(),
            transaction_id: record.transaction_id.clone(),
            state: record.step.proto().into(),
            progress: record.progress,
            error: record.error.clone(),
            booted_slot: booted_bootname(system).unwrap_or_default(),
            booted_version: booted.and_then(|s| system.load_status(s).bundle_version).unwrap_or_default(),
            compatible: system.config.system.compatible.clone(),
            boot_id: self.boot_id.clone(),
        }
    }

    async fn answer(&self) -> Result<Response<EcuStatus>, Status> {
        let r = self.record.lock().await;
        Ok(Response::new(self.status_of(&r)))
    }

    /// Refuses a command whose transaction is not the one recorded.
    fn check_transaction(record: &Record, t: &Option<TransactionRef>) -> Result<(), Status> {
        let id = t.as_ref().map(|t| t.transaction_id.as_str()).unwrap_or("");
        if record.transaction_id != id || id.is_empty() {
            return Err(refused(format!(
                "transaction '{id}' is not this ECU's (it is in '{}')",
                record.transaction_id
            )));
        }
        Ok(())
    }

    /// Checks a prepare request against the signed system manifest it
    /// carries, this ECU's keyring and its anti-rollback record.
    fn check_prepare(&self, req: &PrepareRequest, record: &Record) -> Result<(), String> {
        let config = &self.service.system.config;
        let verify = VerifyOptions { keyring: config.keyring.clone(), ..Default::default() };
        let signed =
            system_manifest::open(&req.system_manifest, &verify).map_err(|e| format!("system manifest: {e}"))?;
        let id = hex::encode(openssl::sha::sha256(&req.system_manifest));
        let t = req.transaction.as_ref();
        if t.map(|t| t.transaction_id.as_str()) != Some(id.as_str()) {
            return Err("the transaction id is not the system manifest's SHA-256".into());
        }
        let m = &signed.manifest;
        if t.map(|t| t.system_version) != Some(m.version) {
            return Err("the system version is not the system manifest's".into());
        }
        let e = m.ecu(&self.ecu.id).ok_or_else(|| format!("the system manifest has no ECU '{}'", self.ecu.id))?;
        if (e.manifest_hash.as_str(), e.compatible.as_str(), e.version.as_str())
            != (req.manifest_hash.as_str(), req.compatible.as_str(), req.version.as_str())
        {
            return Err(format!("the request for ECU '{}' differs from the signed system manifest", e.id));
        }
        if e.compatible != config.system.compatible {
            return Err(format!(
                "bundle compatible '{}' is not this ECU's '{}'",
                e.compatible, config.system.compatible
            ));
        }
        let system = &self.service.system;
        let mut installed = Installed { system_version: record.committed_system_version, ..Default::default() };
        if let Some(v) = system.booted().and_then(|s| system.load_status(s).bundle_version) {
            installed.ecu_versions.insert(self.ecu.id.clone(), v);
        }
        m.check_rollback(&installed).map_err(|e| e.to_string())
    }

    /// Runs the health check in the new slot and records its verdict.
    async fn health_check(&self) {
        let verdict = match &self.ecu.health_check {
            None => Ok(()),
            Some(cmd) => {
                let cmd = cmd.clone();
                match tokio::task::spawn_blocking(move || std::process::Command::new(&cmd).output()).await {
                    Ok(Ok(out)) if out.status.success() => Ok(()),
                    Ok(Ok(out)) => Err(format!(
                        "health check failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )),
                    Ok(Err(e)) => Err(format!("health check could not run: {e}")),
                    Err(e) => Err(format!("health check could not run: {e}")),
                }
            }
        };
        let mut r = self.record.lock().await;
        if r.step != Step::BootedNew {
            return;
        }
        match verdict {
            Ok(()) => r.step = Step::Healthy,
            Err(e) => {
                tracing::warn!("System update {}: {e}", r.transaction_id);
                r.step = Step::Unhealthy;
                r.error = e;
            }
        }
        let _ = self.save(&r).await;
    }

    /// Marks `identifier` `state` on a fresh view of the system.
    async fn mark(&self, state: MarkState, identifier: String) -> Result<(), Status> {
        let service = self.service.clone();
        tokio::task::spawn_blocking(move || {
            let system = service.system.fork();
            mark::mark(&system, state, &identifier).map(|_| ())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))
    }

    /// Runs the reboot command a moment after the answer went out.
    fn reboot_soon(&self) {
        let cmd = self.ecu.reboot_command.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            tracing::info!("Rebooting for the system update: {}", cmd.join(" "));
            if let Err(e) = crate::tools::run_reboot_command(&cmd).await {
                tracing::warn!("{e}");
            }
        });
    }
}

/// The commands, run to their end whatever happens to the caller's
/// connection (see [`Secondary::detached`]).
impl Secondary {
    async fn prepare_now(&self, request: Request<PrepareRequest>) -> Result<Response<EcuStatus>, Status> {
        let req = request.into_inner();
        let t = req.transaction.clone().unwrap_or_default();
        let mut r = self.record.lock().await;
        // The same transaction again: nothing changes.
        if r.transaction_id == t.transaction_id && !t.transaction_id.is_empty() && r.step != Step::Idle {
            return Ok(Response::new(self.status_of(&r)));
        }
        if matches!(r.step, Step::Preparing | Step::Switching | Step::BootedNew | Step::Healthy | Step::Reverting) {
            return Err(refused(format!("busy with transaction '{}' ({:?})", r.transaction_id, r.step)));
        }
        let checked = self.check_prepare(&req, &r);
        let committed = r.committed_system_version;
        *r = Record {
            transaction_id: t.transaction_id.clone(),
            system_version: t.system_version,
            step: Step::Preparing,
            previous_bootname: booted_bootname(&self.service.system),
            committed_system_version: committed,
            ..Default::default()
        };
        if let Err(e) = checked {
            tracing::warn!("System update {}: refused: {e}", t.transaction_id);
            r.step = Step::Failed;
            r.error = e;
            self.save(&r).await?;
            return Ok(Response::new(self.status_of(&r)));
        }
        self.save(&r).await?;
        let started = self
            .installer
            .get()
            .await
            .install_required(req.bundle_url.clone(), req.manifest_hash.clone(), false, self.installer.signal_emitter())
            .await;
        let done = match started {
            Ok(done) => done,
            Err(e) => {
                r.step = Step::Failed;
                r.error = format!("the installation did not start: {e}");
                self.save(&r).await?;
                return Ok(Response::new(self.status_of(&r)));
            }
        };
        drop(r);
        let me = self.clone();
        tokio::spawn(async move {
            let outcome = done.await.unwrap_or_else(|_| Err("the installation worker is gone".into()));
            let mut r = me.record.lock().await;
            if r.transaction_id != t.transaction_id || r.step != Step::Preparing {
                return;
            }
            let target = outcome.as_ref().ok().and_then(|o| {
                let system = &me.service.system;
                o.written.iter().find_map(|name| {
                    let slot = system.slot(name)?;
                    system.bootname_of(&slot.config).map(|b| (name.clone(), b.to_string()))
                })
            });
            match (outcome, target) {
                (Ok(_), Some((slot, bootname))) => {
                    r.step = Step::Prepared;
                    r.progress = 100;
                    r.target_slot = Some(slot);
                    r.target_bootname = Some(bootname);
                }
                (Ok(_), None) => {
                    r.step = Step::Failed;
                    r.error = "the bundle wrote no bootable slot".into();
                }
                (Err(e), _) => {
                    r.step = Step::Failed;
                    r.error = e;
                }
            }
            if let Err(e) = me.save(&r).await {
                tracing::warn!("{e}");
            }
        });
        self.answer().await
    }

    async fn switch_now(&self, request: Request<TransactionRef>) -> Result<Response<EcuStatus>, Status> {
        let t = Some(request.into_inner());
        let mut r = self.record.lock().await;
        Self::check_transaction(&r, &t)?;
        match r.step {
            Step::Switching | Step::BootedNew | Step::Healthy | Step::Unhealthy => {
                return Ok(Response::new(self.status_of(&r)));
            }
            Step::Prepared => {}
            other => return Err(refused(format!("cannot switch: the transaction is {other:?}"))),
        }
        let slot = r.target_slot.clone().unwrap_or_default();
        // Recorded first: a reboot between activation and the record would
        // otherwise leave the new slot booted without a transaction to judge it.
        r.step = Step::Switching;
        self.save(&r).await?;
        if let Err(e) = self.mark(MarkState::Active, slot).await {
            r.step = Step::Prepared;
            r.error = format!("switching failed: {}", e.message());
            self.save(&r).await?;
            return Err(e);
        }
        self.reboot_soon();
        Ok(Response::new(self.status_of(&r)))
    }

    async fn commit_now(&self, request: Request<TransactionRef>) -> Result<Response<EcuStatus>, Status> {
        let t = Some(request.into_inner());
        let mut r = self.record.lock().await;
        Self::check_transaction(&r, &t)?;
        match r.step {
            Step::Committed => return Ok(Response::new(self.status_of(&r))),
            Step::Healthy => {}
            other => return Err(refused(format!("cannot commit: the transaction is {other:?}"))),
        }
        self.mark(MarkState::Good, "booted".into()).await?;
        r.step = Step::Committed;
        r.committed_system_version = Some(r.system_version);
        self.save(&r).await?;
        Ok(Response::new(self.status_of(&r)))
    }

    async fn revert_now(&self, request: Request<TransactionRef>) -> Result<Response<EcuStatus>, Status> {
        let t = Some(request.into_inner());
        let mut r = self.record.lock().await;
        Self::check_transaction(&r, &t)?;
        if matches!(r.step, Step::Reverting | Step::Reverted) {
            return Ok(Response::new(self.status_of(&r)));
        }
        if !r.step.revertible() {
            return Err(refused(format!("cannot revert: the transaction is {:?}", r.step)));
        }
        if r.step == Step::Preparing
            && let Some(control) = self.service.current.lock().expect("not poisoned").clone()
        {
            let _ = control.cancel();
        }
        let system = &self.service.system;
        let booted = booted_bootname(system);
        let on_new = booted.is_some() && booted == r.target_bootname;
        // The slot booted before the transaction is made the primary again
        // (when a switch happened; a prepared slot was never activated).
        if matches!(r.step, Step::Switching | Step::BootedNew | Step::Healthy | Step::Unhealthy) {
            let previous = system
                .slots
                .iter()
                .find(|s| system.bootname_of(&s.config).map(str::to_string) == r.previous_bootname)
                .map(|s| s.config.name.clone())
                .ok_or_else(|| Status::internal("the slot booted before the transaction is unknown"))?;
            self.mark(MarkState::Active, previous).await?;
        }
        if on_new {
            r.step = Step::Reverting;
            self.save(&r).await?;
            self.reboot_soon();
        } else {
            r.step = Step::Reverted;
            self.save(&r).await?;
        }
        Ok(Response::new(self.status_of(&r)))
    }
}

/// Runs a command on its own task: a caller that hangs up (the main
/// rebooting while it sends Switch to the others) must not stop it between
/// what it records and what it does, say between activating the new slot and
/// rebooting into it.
async fn detached(
    command: impl std::future::Future<Output = Result<Response<EcuStatus>, Status>> + Send + 'static,
) -> Result<Response<EcuStatus>, Status> {
    tokio::spawn(command).await.unwrap_or_else(|e| Err(Status::internal(format!("the command failed: {e}"))))
}

#[tonic::async_trait]
impl Ecu for Secondary {
    async fn get_status(&self, _: Request<StatusRequest>) -> Result<Response<EcuStatus>, Status> {
        self.answer().await
    }

    async fn prepare(&self, request: Request<PrepareRequest>) -> Result<Response<EcuStatus>, Status> {
        let me = self.clone();
        detached(async move { me.prepare_now(request).await }).await
    }

    async fn switch(&self, request: Request<TransactionRef>) -> Result<Response<EcuStatus>, Status> {
        let me = self.clone();
        detached(async move { me.switch_now(request).await }).await
    }

    async fn commit(&self, request: Request<TransactionRef>) -> Result<Response<EcuStatus>, Status> {
        let me = self.clone();
        detached(async move { me.commit_now(request).await }).await
    }

    async fn revert(&self, request: Request<TransactionRef>) -> Result<Response<EcuStatus>, Status> {
        let me = self.clone();
        detached(async move { me.revert_now(request).await }).await
    }
}
