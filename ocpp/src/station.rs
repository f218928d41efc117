//! The charge point: one loop that owns the CSMS link and the update
//! state; the update itself runs as a task that reports back
//! (`spec/everest-ocpp.md`: what EVerest leaves out, rota-ocpp does).
//!
//! - UpdateFirmware / SignedUpdateFirmware are answered truthfully:
//!   Rejected when rota is busy with something else or the running update
//!   is past its point of no return, AcceptedCanceled when a running one is
//!   cancelled for the new one (`dev.rota.Installer1.Cancel`),
//!   InvalidCertificate / RevokedCertificate for a signing certificate the
//!   manufacturer root does not vouch for.
//! - The update waits for `retrieveDateTime` (DownloadScheduled), verifies
//!   the bundle first when `installDateTime` lies ahead (SignatureVerified,
//!   InstallScheduled), pauses and tries again when the bundle cannot be
//!   fetched (DownloadPaused, `retries` × `retryInterval`), and reports
//!   every status its protocol has.
//! - Statuses are queued while the CSMS is unreachable. After the reboot
//!   the new slot is marked good only once the health check passed and the
//!   CSMS accepted the BootNotification; a failed check marks it bad and
//!   reboots into the old slot.

use crate::Protocol;
use crate::certs::{self, Verdict};
use crate::config::Config;
use crate::download::{self, FetchError};
use crate::link::{IncomingCall, Link, LinkError};
use crate::messages::{self, RegistrationStatus, TriggerMessageStatus, UpdateFirmwareStatus, v16, v201};
use crate::rota::{InstallEvent, Rota};
use crate::rpc::ErrorCode;
use crate::state::{Channel, Phase, Saved, StateStore, UpdateRequest};
use crate::status::{CoreFirmwareStatus, FirmwareStatus};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

/// A firmware status for the CSMS, addressed as its request asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// How the update was asked for.
    pub channel: Channel,
    /// Its request id.
    pub request_id: Option<i64>,
    /// The status.
    pub status: FirmwareStatus,
    /// Installation progress in percent (sent in 2.0.1's `customData`).
    pub progress: Option<i32>,
}

impl Notice {
    /// A status of `request`.
    fn of(request: &UpdateRequest, status: FirmwareStatus, progress: Option<i32>) -> Notice {
        Notice { channel: request.channel, request_id: request.request_id, status, progress }
    }
}

/// What goes to the CSMS, in order.
#[derive(Debug, Clone)]
enum Outgoing {
    Status(Notice),
    /// A security event (type, details) of an update on `channel`.
    Security(Channel, &'static str, String),
}

/// What the update task tells the station.
#[derive(Debug)]
enum JobEvent {
    Out(Outgoing),
    /// The update is written and activated: reboot once the statuses are out.
    Reboot,
    /// The task with this number ended.
    Ended(u64),
}

/// The running update task.
struct Job {
    number: u64,
    request: UpdateRequest,
    cancel: watch::Sender<bool>,
    past_no_return: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

/// The station: configuration, state, rota, and what waits for the CSMS.
pub struct Station {
    cfg: Arc<Config>,
    store: StateStore,
    rota: Arc<Rota>,
    job: Option<Job>,
    jobs_started: u64,
    events_tx: mpsc::UnboundedSender<JobEvent>,
    events: mpsc::UnboundedReceiver<JobEvent>,
    queue: VecDeque<Outgoing>,
    /// The status of the update in progress (`None`: Idle).
    current: Option<Notice>,
    /// The last 1.6 core status sent, so that each change goes once.
    last_core: Option<CoreFirmwareStatus>,
    reboot_pending: bool,
    /// The reboot command ran: the station is going down.
    rebooting: bool,
    /// A reboot whose outcome is judged once the CSMS accepted the station.
    after_boot: Option<Saved>,
    heartbeat: Duration,
}

impl Station {
    /// The station, with what a previous run left in the state directory.
    pub fn new(cfg: Config, rota: Rota) -> Result<Station, String> {
        let store =
            StateStore::new(&cfg.state_dir).map_err(|e| format!("state directory {}: {e}", cfg.state_dir.display()))?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut st = Station {
            cfg: Arc::new(cfg),
            store,
            rota: Arc::new(rota),
            job: None,
            jobs_started: 0,
            events_tx,
            events,
            queue: VecDeque::new(),
            current: None,
            last_core: None,
            reboot_pending: false,
            rebooting: false,
            after_boot: None,
            heartbeat: Duration::from_secs(300),
        };
        match st.store.load() {
            Some(Saved { request, phase: Phase::Accepted }) => {
                tracing::info!("carrying on with the update from {}", request.location);
                st.start_job(request);
            }
            Some(saved) => st.after_boot = Some(saved),
            None => {}
        }
        Ok(st)
    }

    /// Serves the CSMS until the process is stopped, reconnecting with
    /// back-off; statuses queue up while it is unreachable.
    pub async fn run(mut self) -> Result<(), String> {
        let mut backoff = Duration::from_secs(1);
        loop {
            match Link::connect(&self.cfg.link).await {
                Ok(link) => {
                    backoff = Duration::from_secs(1);
                    if let Err(e) = self.serve(link).await {
                        tracing::warn!("{e}");
                    }
                }
                Err(e @ LinkError::Config(_)) => return Err(e.to_string()),
                Err(e) => tracing::warn!("{e}"),
            }
            let wake = tokio::time::sleep(backoff);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    Some(ev) = self.events.recv() => self.on_event(ev),
                }
                if self.reboot_pending {
                    self.reboot().await;
                }
            }
            backoff = (backoff * 2).min(self.cfg.reconnect_max);
        }
    }

    /// One connection: BootNotification until accepted, then calls both ways.
    async fn serve(&mut self, mut link: Link) -> Result<(), LinkError> {
        self.boot(&link).await?;
        if let Some(saved) = self.after_boot.take() {
            self.judge_reboot(saved).await;
        }
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.tick().await;
        loop {
            self.flush(&link).await?;
            if self.reboot_pending {
                self.reboot().await;
            }
            tokio::select! {
                call = link.next_call() => match call {
                    Some(call) => self.on_call(&link, call).await?,
                    None => return Err(LinkError::Connection("the CSMS closed the connection".into())),
                },
                Some(ev) = self.events.recv() => self.on_event(ev),
                _ = heartbeat.tick() => {
                    link.call(&messages::HeartbeatRequest {}).await?;
                }
            }
        }
    }

    async fn boot(&mut self, link: &Link) -> Result<(), LinkError> {
        let firmware_version = self.rota.system_version().await.ok().filter(|v| !v.is_empty());
        loop {
            let (status, interval) = match link.protocol() {
                Protocol::Ocpp16 => {
                    let request = v16::BootNotificationRequest {
                        charge_point_vendor: self.cfg.vendor.clone(),
                        charge_point_model: self.cfg.model.clone(),
                        charge_point_serial_number: self.cfg.serial.clone(),
                        firmware_version: firmware_version.clone(),
                    };
                    let r = link.call(&request).await?;
                    (r.status, r.interval)
                }
                Protocol::Ocpp201 => {
                    let reason = if self.after_boot.is_some() {
                        v201::BootReason::FirmwareUpdate
                    } else {
                        v201::BootReason::PowerUp
                    };
                    let request = v201::BootNotificationRequest {
                        charging_station: v201::ChargingStation {
                            model: self.cfg.model.clone(),
                            vendor_name: self.cfg.vendor.clone(),
                            serial_number: self.cfg.serial.clone(),
                            firmware_version: firmware_version.clone(),
                        },
                        reason,
                    };
                    let r = link.call(&request).await?;
                    (r.status, r.interval)
                }
            };
            let interval = Duration::from_secs(interval.clamp(1, 86_400) as u64);
            if status == RegistrationStatus::Accepted {
                self.heartbeat = interval;
                return Ok(());
            }
            tracing::info!("the CSMS answered BootNotification with {status:?}: asking again in {interval:?}");
            tokio::time::sleep(interval).await;
        }
    }

    fn on_event(&mut self, ev: JobEvent) {
        match ev {
            JobEvent::Out(out) => self.enqueue(out),
            JobEvent::Reboot => self.reboot_pending = true,
            JobEvent::Ended(number) => {
                // A cancelled task ends after its successor started.
                if self.job.as_ref().is_some_and(|j| j.number == number) {
                    self.job = None;
                }
            }
        }
    }

    fn enqueue(&mut self, out: Outgoing) {
        if let Outgoing::Status(n) = &out {
            self.current = (!n.status.is_final()).then(|| n.clone());
        }
        self.queue.push_back(out);
    }

    async fn flush(&mut self, link: &Link) -> Result<(), LinkError> {
        while let Some(out) = self.queue.front().cloned() {
            match &out {
                Outgoing::Status(n) => self.send_status(link, n).await?,
                Outgoing::Security(Channel::Core16, ..) => {}
                Outgoing::Security(_, kind, info) => {
                    let event = messages::SecurityEventNotificationRequest {
                        kind: kind.to_string(),
                        timestamp: OffsetDateTime::now_utc(),
                        tech_info: Some(info.chars().take(255).collect()),
                    };
                    link.call(&event).await?;
                }
            }
            self.queue.pop_front();
        }
        Ok(())
    }

    async fn send_status(&mut self, link: &Link, n: &Notice) -> Result<(), LinkError> {
        match n.channel {
            Channel::Core16 => {
                let Some(core) = n.status.core() else { return Ok(()) };
                if self.last_core != Some(core) {
                    link.call(&v16::FirmwareStatusNotificationRequest { status: core }).await?;
                }
                self.last_core = if n.status.is_final() { None } else { Some(core) };
            }
            Channel::Signed16 => {
                let request =
                    v16::SignedFirmwareStatusNotificationRequest { status: n.status, request_id: n.request_id };
                link.call(&request).await?;
            }
            Channel::V201 => {
                let request = v201::FirmwareStatusNotificationRequest {
                    status: n.status,
                    request_id: n.request_id,
                    custom_data: n.progress.map(|p| json!({"vendorId": "dev.rota", "progress": p})),
                };
                link.call(&request).await?;
            }
        }
        Ok(())
    }

    /// Runs the reboot command once the queue is empty (or the CSMS is away).
    async fn reboot(&mut self) {
        self.reboot_pending = false;
        // Nothing new starts until the station is back; the saved state
        // tells the next start what this reboot was for.
        self.rebooting = true;
        tracing::info!("rebooting: {}", self.cfg.reboot_command);
        let status = tokio::process::Command::new("/bin/sh").arg("-c").arg(&self.cfg.reboot_command).status().await;
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::error!("reboot command failed: {s}"),
            Err(e) => tracing::error!("reboot command: {e}"),
        }
    }

    // --- calls of the CSMS ---

    async fn on_call(&mut self, link: &Link, call: IncomingCall) -> Result<(), LinkError> {
        let answer = self.answer(link.protocol(), &call).await;
        link.answer(&call, answer).await
    }

    /// The answer to a call of the CSMS.
    async fn answer(&mut self, protocol: Protocol, call: &IncomingCall) -> Result<Value, (ErrorCode, String)> {
        match (protocol, call.action.as_str()) {
            (Protocol::Ocpp16, "UpdateFirmware") => {
                let request = UpdateRequest::from(parse::<v16::UpdateFirmwareRequest>(call)?);
                // 1.6 core has no answer but an empty one: a request that
                // cannot start reports a failed installation.
                if self.take_request(request.clone()).await == UpdateFirmwareStatus::Rejected {
                    let failed = Notice::of(&request, FirmwareStatus::InstallationFailed, None);
                    self.enqueue(Outgoing::Status(failed));
                }
                Ok(json!({}))
            }
            (Protocol::Ocpp16, "SignedUpdateFirmware") => {
                let r = parse::<v16::SignedUpdateFirmwareRequest>(call)?;
                let status = self.take_request(UpdateRequest::signed(Channel::Signed16, r.into())).await;
                Ok(response(&v16::SignedUpdateFirmwareResponse { status }))
            }
            (Protocol::Ocpp201, "UpdateFirmware") => {
                let r = parse::<v201::UpdateFirmwareRequest>(call)?;
                let status = self.take_request(UpdateRequest::signed(Channel::V201, r)).await;
                Ok(response(&v201::UpdateFirmwareResponse { status, status_info: None }))
            }
            (Protocol::Ocpp16, "TriggerMessage" | "ExtendedTriggerMessage") | (Protocol::Ocpp201, "TriggerMessage") => {
                let wanted = call.payload.get("requestedMessage").and_then(Value::as_str).ok_or_else(|| {
                    (ErrorCode::OccurrenceConstraintViolation, "requestedMessage is missing".to_string())
                })?;
                Ok(json!({ "status": self.trigger(protocol, &call.action, wanted) }))
            }
            (_, action) => Err((ErrorCode::NotImplemented, format!("{action} is not implemented by rota-ocpp"))),
        }
    }

    /// Queues what a TriggerMessage asks for and says whether it will come.
    fn trigger(&mut self, protocol: Protocol, action: &str, wanted: &str) -> TriggerMessageStatus {
        match wanted {
            "FirmwareStatusNotification" => {
                let channel = match (protocol, action) {
                    (Protocol::Ocpp201, _) => Channel::V201,
                    (_, "ExtendedTriggerMessage") => Channel::Signed16,
                    _ => Channel::Core16,
                };
                let notice = match &self.current {
                    Some(n) => Notice { channel, ..n.clone() },
                    None => Notice { channel, request_id: None, status: FirmwareStatus::Idle, progress: None },
                };
                if channel == Channel::Core16 {
                    // Sent as asked, even when unchanged.
                    self.last_core = None;
                }
                self.queue.push_back(Outgoing::Status(notice));
                TriggerMessageStatus::Accepted
            }
            _ => TriggerMessageStatus::NotImplemented,
        }
    }

    /// Decides on a new request and starts it when accepted.
    async fn take_request(&mut self, request: UpdateRequest) -> UpdateFirmwareStatus {
        if !(request.location.starts_with("http://") || request.location.starts_with("https://")) {
            tracing::warn!("refusing update from '{}': rota-ocpp fetches http(s) URLs", request.location);
            return UpdateFirmwareStatus::Rejected;
        }
        if request.signature.is_some() && request.signing_certificate.is_none() {
            tracing::warn!("refusing update: a firmware signature without the certificate to check it");
            return UpdateFirmwareStatus::InvalidCertificate;
        }
        if let Some(pem) = &request.signing_certificate {
            let refused =
                match certs::check(pem, self.cfg.manufacturer_root.as_deref(), self.cfg.manufacturer_crl.as_deref()) {
                    Verdict::Valid => None,
                    Verdict::Invalid(why) => Some((UpdateFirmwareStatus::InvalidCertificate, why)),
                    Verdict::Revoked => Some((
                        UpdateFirmwareStatus::RevokedCertificate,
                        "the signing certificate is revoked".to_string(),
                    )),
                };
            if let Some((status, why)) = refused {
                tracing::warn!("refusing update: signing certificate: {why}");
                self.queue.push_back(Outgoing::Security(request.channel, "InvalidFirmwareSigningCertificate", why));
                return status;
            }
        }
        if self.after_boot.is_some() || self.reboot_pending || self.rebooting {
            return UpdateFirmwareStatus::Rejected;
        }
        let mut answer = UpdateFirmwareStatus::Accepted;
        if let Some(job) = self.job.take() {
            if job.handle.is_finished() {
                // Ended; its Ended event is still on the way.
            } else if job.past_no_return.load(Ordering::SeqCst) {
                self.job = Some(job);
                return UpdateFirmwareStatus::Rejected;
            } else {
                tracing::info!("cancelling the update from {} for the new one", job.request.location);
                let _ = job.cancel.send(true);
                // The task may be between its last check and rota's
                // installation: rota is asked to cancel for as long as the
                // task runs.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while !job.handle.is_finished() && tokio::time::Instant::now() < deadline {
                    if self.rota.operation().await.as_deref() == Ok("installing")
                        && let Err(e) = self.rota.cancel().await
                    {
                        tracing::warn!("cancelling rota's installation: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                answer = UpdateFirmwareStatus::AcceptedCanceled;
            }
        }
        match self.rota.operation().await {
            Ok(op) if op == "idle" => {}
            Ok(op) => {
                tracing::warn!("refusing update: rota is {op}");
                return UpdateFirmwareStatus::Rejected;
            }
            Err(e) => {
                tracing::warn!("refusing update: rota is not reachable: {e}");
                return UpdateFirmwareStatus::Rejected;
            }
        }
        if let Err(e) = self.store.save(&Saved { request: request.clone(), phase: Phase::Accepted }) {
            tracing::error!("refusing update: cannot save it: {e}");
            return UpdateFirmwareStatus::Rejected;
        }
        self.start_job(request);
        answer
    }

    fn start_job(&mut self, request: UpdateRequest) {
        let (cancel, cancelled) = watch::channel(false);
        let past_no_return = Arc::new(AtomicBool::new(false));
        self.jobs_started += 1;
        let number = self.jobs_started;
        let task = UpdateTask {
            number,
            cfg: self.cfg.clone(),
            store: self.store.clone(),
            rota: self.rota.clone(),
            request: request.clone(),
            events: self.events_tx.clone(),
            cancelled,
            past_no_return: past_no_return.clone(),
        };
        let handle = tokio::spawn(task.run());
        self.job = Some(Job { number, request, cancel, past_no_return, handle });
    }

    // --- after the reboot ---

    /// Judges the reboot an update asked for, with the CSMS connected.
    async fn judge_reboot(&mut self, saved: Saved) {
        let request = saved.request;
        let notice = |status| Outgoing::Status(Notice::of(&request, status, None));
        match saved.phase {
            Phase::Rebooting { boot_slot_before } => {
                let booted = match self.rota.boot_slot().await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!("cannot read the booted slot: {e}; judging again at the next connection");
                        self.after_boot = Some(Saved { request, phase: Phase::Rebooting { boot_slot_before } });
                        return;
                    }
                };
                if booted == boot_slot_before {
                    tracing::warn!("the station came back on slot {booted}: the new slot did not boot");
                    if let Err(e) = self.rota.mark("bad", "other").await {
                        tracing::warn!("marking the new slot bad: {e}");
                    }
                    self.enqueue(notice(FirmwareStatus::InstallationFailed));
                    self.clear_state();
                } else if health_check(&self.cfg).await {
                    match self.rota.mark("good", "booted").await {
                        Ok(msg) => {
                            tracing::info!("{msg}");
                            self.enqueue(notice(FirmwareStatus::Installed));
                            self.enqueue(Outgoing::Security(
                                request.channel,
                                "FirmwareUpdated",
                                format!("slot {booted} from {}", request.location),
                            ));
                        }
                        Err(e) => {
                            tracing::error!("marking slot {booted} good failed: {e}");
                            self.enqueue(notice(FirmwareStatus::InstallationFailed));
                        }
                    }
                    self.clear_state();
                } else {
                    tracing::warn!("the health check failed on slot {booted}: marking it bad and rebooting");
                    if let Err(e) = self.rota.mark("bad", "booted").await {
                        tracing::error!("marking slot {booted} bad failed: {e}");
                    }
                    match self.store.save(&Saved { request, phase: Phase::Reverting }) {
                        Ok(()) => self.reboot_pending = true,
                        Err(e) => tracing::error!("cannot save the state before rebooting: {e}"),
                    }
                }
            }
            Phase::Reverting => {
                self.enqueue(notice(FirmwareStatus::InstallationFailed));
                self.clear_state();
            }
            Phase::Accepted => unreachable!("accepted requests are carried on as jobs"),
        }
    }

    fn clear_state(&self) {
        if let Err(e) = self.store.clear() {
            tracing::error!("cannot clear the saved update: {e}");
        }
    }
}

fn response(r: &impl serde::Serialize) -> Value {
    serde_json::to_value(r).expect("responses serialize")
}

fn parse<T: serde::de::DeserializeOwned>(call: &IncomingCall) -> Result<T, (ErrorCode, String)> {
    serde_json::from_value(call.payload.clone()).map_err(|e| (ErrorCode::FormatViolation, e.to_string()))
}

/// Runs the configured health check; no check counts as healthy.
async fn health_check(cfg: &Config) -> bool {
    let Some(cmd) = &cfg.health_check else { return true };
    let run = tokio::process::Command::new("/bin/sh").arg("-c").arg(cmd).kill_on_drop(true).status();
    match tokio::time::timeout(cfg.health_timeout, run).await {
        Ok(Ok(s)) if s.success() => true,
        Ok(Ok(s)) => {
            tracing::warn!("health check '{cmd}' failed: {s}");
            false
        }
        Ok(Err(e)) => {
            tracing::warn!("health check '{cmd}': {e}");
            false
        }
        Err(_) => {
            tracing::warn!("health check '{cmd}' took longer than {:?}", cfg.health_timeout);
            false
        }
    }
}

/// One update, from the scheduled download to the reboot.
struct UpdateTask {
    number: u64,
    cfg: Arc<Config>,
    store: StateStore,
    rota: Arc<Rota>,
    request: UpdateRequest,
    events: mpsc::UnboundedSender<JobEvent>,
    cancelled: watch::Receiver<bool>,
    past_no_return: Arc<AtomicBool>,
}

/// The update was cancelled for a newer one.
struct Cancelled;

impl UpdateTask {
    async fn run(mut self) {
        let _ = self.carry_out().await;
        let _ = self.events.send(JobEvent::Ended(self.number));
    }

    fn emit(&self, status: FirmwareStatus, progress: Option<i32>) {
        let notice = Notice::of(&self.request, status, progress);
        let _ = self.events.send(JobEvent::Out(Outgoing::Status(notice)));
    }

    fn security(&self, kind: &'static str, info: String) {
        let _ = self.events.send(JobEvent::Out(Outgoing::Security(self.request.channel, kind, info)));
    }

    fn end(&self, status: FirmwareStatus) {
        // A task cancelled for a newer request neither reports nor clears
        // the saved state, which is the newer request's by now.
        if *self.cancelled.borrow() {
            return;
        }
        self.emit(status, None);
        if let Err(e) = self.store.clear() {
            tracing::error!("cannot clear the saved update: {e}");
        }
    }

    /// Sleeps until `at` unless cancelled first.
    async fn wait_until(&mut self, at: OffsetDateTime) -> Result<(), Cancelled> {
        let left = at - OffsetDateTime::now_utc();
        if left.is_positive() {
            let left = Duration::try_from(left).unwrap_or_default();
            self.sleep(left).await?;
        }
        Ok(())
    }

    async fn sleep(&mut self, d: Duration) -> Result<(), Cancelled> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancelled.wait_for(|c| *c) => Err(Cancelled),
        }
    }

    fn check_cancelled(&self) -> Result<(), Cancelled> {
        if *self.cancelled.borrow() { Err(Cancelled) } else { Ok(()) }
    }

    async fn carry_out(&mut self) -> Result<(), Cancelled> {
        if self.request.retrieve_at > OffsetDateTime::now_utc() {
            self.emit(FirmwareStatus::DownloadScheduled, None);
            self.wait_until(self.request.retrieve_at).await?;
        }
        let mut tries_left = self.request.retries;
        loop {
            self.check_cancelled()?;
            self.emit(FirmwareStatus::Downloading, None);
            let attempt = self.attempt().await;
            self.remove_download();
            let why = match attempt? {
                Attempt::Done => return Ok(()),
                Attempt::Unreachable(why) => why,
            };
            let location = &self.request.location;
            if tries_left == 0 {
                tracing::warn!("giving up on {location}: {why}");
                self.end(FirmwareStatus::DownloadFailed);
                return Ok(());
            }
            tries_left -= 1;
            tracing::info!("cannot fetch {location} ({why}): trying again in {} s", self.request.retry_interval_sec);
            self.emit(FirmwareStatus::DownloadPaused, None);
            self.sleep(Duration::from_secs(self.request.retry_interval_sec)).await?;
        }
    }

    /// Where a bundle with a detached signature is downloaded to.
    fn download_path(&self) -> std::path::PathBuf {
        self.cfg.state_dir.join("firmware.raucb")
    }

    fn remove_download(&self) {
        match std::fs::remove_file(self.download_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => tracing::warn!("removing the download: {e}"),
            _ => {}
        }
    }

    /// One try: fetch (or stream), verify, wait for the install time, install.
    async fn attempt(&mut self) -> Result<Attempt, Cancelled> {
        let mut verified = false;
        let mut source = self.request.location.clone();
        if let (Some(signature), Some(certificate)) =
            (self.request.signature.clone(), self.request.signing_certificate.clone())
        {
            let path = self.download_path();
            let fetched = tokio::select! {
                r = download::fetch(&self.request.location, &path, self.cfg.max_download_size) => r,
                _ = self.cancelled.wait_for(|c| *c) => return Err(Cancelled),
            };
            match fetched {
                Ok(_) => {}
                Err(FetchError::Network(why)) => return Ok(Attempt::Unreachable(why)),
                Err(e) => {
                    tracing::error!("download failed: {e}");
                    self.end(FirmwareStatus::DownloadFailed);
                    return Ok(Attempt::Done);
                }
            }
            self.emit(FirmwareStatus::Downloaded, None);
            if let Err(why) = download::verify_signature(&path, &certificate, &signature) {
                tracing::warn!("{why}");
                self.security("InvalidFirmwareSignature", why);
                self.end(FirmwareStatus::InvalidSignature);
                return Ok(Attempt::Done);
            }
            self.emit(FirmwareStatus::SignatureVerified, None);
            verified = true;
            source = path.display().to_string();
        }
        if let Some(at) = self.request.install_at.filter(|at| *at > OffsetDateTime::now_utc()) {
            if !verified {
                // Verified now (the bundle's own signature), installed at its time.
                match self.rota.inspect(&source).await {
                    Ok(()) => {
                        self.emit(FirmwareStatus::Downloaded, None);
                        self.emit(FirmwareStatus::SignatureVerified, None);
                        verified = true;
                    }
                    Err(e) if is_signature_error(&e) => {
                        self.emit(FirmwareStatus::Downloaded, None);
                        self.security("InvalidFirmwareSignature", e);
                        self.end(FirmwareStatus::InvalidSignature);
                        return Ok(Attempt::Done);
                    }
                    Err(e) => return Ok(Attempt::Unreachable(e)),
                }
            }
            self.emit(FirmwareStatus::InstallScheduled, None);
            self.wait_until(at).await?;
        }
        self.check_cancelled()?;
        self.install(&source, verified).await
    }

    /// Installs `source` through rota and reports what happens.
    async fn install(&mut self, source: &str, verified: bool) -> Result<Attempt, Cancelled> {
        let boot_slot_before = match self.rota.boot_slot().await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot read the booted slot: {e}");
                self.end(FirmwareStatus::InstallationFailed);
                return Ok(Attempt::Done);
            }
        };
        let mut last_progress = -10;
        let this = &*self;
        let result = this
            .rota
            .install(source, |ev| match ev {
                InstallEvent::SignatureVerified if !verified => {
                    this.emit(FirmwareStatus::Downloaded, None);
                    this.emit(FirmwareStatus::SignatureVerified, None);
                }
                InstallEvent::SignatureVerified => {}
                InstallEvent::SignatureFailed => this.emit(FirmwareStatus::Downloaded, None),
                InstallEvent::Copying(p) => {
                    if last_progress < 0 || p >= last_progress + 10 || p == 100 {
                        last_progress = p;
                        this.emit(FirmwareStatus::Installing, Some(p));
                    }
                }
            })
            .await;
        let finished = match result {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("installation could not start: {e}");
                self.end(FirmwareStatus::InstallationFailed);
                return Ok(Attempt::Done);
            }
        };
        if finished.code == 0 {
            self.past_no_return.store(true, Ordering::SeqCst);
            let saved = Saved { request: self.request.clone(), phase: Phase::Rebooting { boot_slot_before } };
            if let Err(e) = self.store.save(&saved) {
                tracing::error!("cannot save the state before rebooting: {e}");
            }
            self.emit(FirmwareStatus::InstallRebooting, None);
            let _ = self.events.send(JobEvent::Reboot);
            return Ok(Attempt::Done);
        }
        self.check_cancelled()?;
        tracing::warn!("installation failed: {}", finished.last_error);
        if finished.signature_failed {
            self.security("InvalidFirmwareSignature", finished.last_error);
            self.end(FirmwareStatus::InvalidSignature);
        } else if finished.unreachable {
            return Ok(Attempt::Unreachable(finished.last_error));
        } else {
            self.end(failure_status(&finished.last_error));
        }
        Ok(Attempt::Done)
    }
}

/// How one try ended.
enum Attempt {
    /// Reported and over (installed, or failed for good).
    Done,
    /// The bundle could not be fetched (why): worth another try.
    Unreachable(String),
}

/// The status of an installation that failed while writing: the written
/// data did not read back as written (rota's read-back check), or anything
/// else.
fn failure_status(last_error: &str) -> FirmwareStatus {
    let e = last_error.to_ascii_lowercase();
    if e.contains("read-back check") || e.contains("failed to read back") {
        FirmwareStatus::InstallVerificationFailed
    } else {
        FirmwareStatus::InstallationFailed
    }
}

/// Whether an InspectBundle failure is about the signature (not the network).
fn is_signature_error(e: &str) -> bool {
    e.contains("signature verification failed") || e.contains("Verify error") || e.contains("signer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_read_back_is_a_verification_failure_and_other_errors_are_not() {
        // rota's texts (service/src/install/write.rs), as LastError carries them.
        let mismatch = "Installation error: Failed updating slot rootfs.1: Read-back check of '/dev/ubi0_1' failed: \
                        sha256 aa of 10 bytes instead of bb of 10 bytes";
        assert_eq!(failure_status(mismatch), FirmwareStatus::InstallVerificationFailed);
        let unreadable = "Installation error: Failed updating slot rootfs.1: Failed to read back '/dev/mmcblk0p3': EIO";
        assert_eq!(failure_status(unreadable), FirmwareStatus::InstallVerificationFailed);
        let full = "Installation error: Failed updating slot rootfs.1: No space left on device (os error 28)";
        assert_eq!(failure_status(full), FirmwareStatus::InstallationFailed);
        assert!(is_signature_error(
            "signature verification failed: Verify error: unable to get local issuer certificate"
        ));
        assert!(!is_signature_error("Failed to open bundle: HTTP 404"));
    }
}
