//! The main ECU's side: one system update across all ECUs as a
//! transaction. Prepare on every ECU (update groups in priority order) →
//! switch and reboot (reboot groups in priority order, each group healthy
//! before the next) → commit everywhere. Any failure or timeout before the
//! commit reverts every ECU. The transaction is recorded durably at every
//! phase change, so a main that reboots or is killed resumes where it was:
//! every command is idempotent on the secondaries.

use super::proxy::Proxy;
use super::secondary::Secondary;
use crate::config::{EcuRole, EcuSection, SecondaryConfig};
use crate::dbus::Service;
use rota_bundle::signature::VerifyOptions;
use rota_bundle::source::ReadAt;
use rota_bundle::system_manifest::{self, Installed, SignedSystemManifest};
use rota_ecu::proto::ecu_server::Ecu;
use rota_ecu::proto::{EcuStatus, PrepareRequest, State, StatusRequest, TransactionRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Where a system update stands on the main.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// No system update.
    #[default]
    Idle,
    /// Every ECU prepares.
    Preparing,
    /// Reboot groups switch in turn.
    Switching,
    /// Every ECU is healthy; marking good everywhere.
    Committing,
    /// Undoing the update on every ECU.
    Reverting,
    /// Done: every ECU runs the new release.
    Committed,
    /// Done: every ECU runs the old release again.
    Reverted,
    /// An ECU could not be brought back: maintenance is needed.
    Failed,
}

impl Phase {
    /// Its name in D-Bus properties and `rota system status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Preparing => "preparing",
            Phase::Switching => "switching",
            Phase::Committing => "committing",
            Phase::Reverting => "reverting",
            Phase::Committed => "committed",
            Phase::Reverted => "reverted",
            Phase::Failed => "failed",
        }
    }

    /// Whether a transaction runs.
    pub fn running(self) -> bool {
        matches!(self, Phase::Preparing | Phase::Switching | Phase::Committing | Phase::Reverting)
    }
}

/// What the main last heard from one ECU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct EcuView {
    /// Its state (`rota-ecu-v1.proto`'s names in lower case), or `unreachable`.
    pub state: String,
    /// Its error, or why it could not be reached.
    pub error: String,
    /// Its booted slot and version.
    pub booted_slot: String,
    /// The version it runs.
    pub booted_version: String,
    /// Preparation progress in percent.
    pub progress: u32,
    /// Whether the main told it to switch (until then its old slot stays
    /// active whatever happens to it, so it needs no revert to be safe).
    pub switched: bool,
}

/// The main's record of the system update (`<state dir>/system.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct SystemRecord {
    /// The transaction: SHA-256 of the signed system manifest.
    pub transaction_id: String,
    /// Its system version.
    pub system_version: u64,
    /// Where it stands.
    pub phase: Phase,
    /// The reboot group switching (index into the manifest's reboot groups).
    pub group: usize,
    /// When the current phase (or reboot group) began, seconds since the epoch.
    pub since: u64,
    /// Why it reverted or failed.
    pub error: String,
    /// Each ECU of the transaction.
    pub ecus: BTreeMap<String, EcuView>,
    /// The system version of the last committed system update.
    pub committed_system_version: Option<u64>,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn state_name(s: i32) -> String {
    State::try_from(s).map(|s| s.as_str_name().to_lowercase()).unwrap_or_else(|_| format!("state-{s}"))
}

/// Pause between status polls.
const POLL: Duration = Duration::from_millis(500);
/// Longest wait for one ECU call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a TCP connect plus TLS handshake to a secondary may take: a
/// LAN peer that has not answered in this time is out of reach, and the
/// phase's loop asks again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest signed system manifest fetched.
const MAX_MANIFEST: u64 = system_manifest::MAX_SIZE as u64;

/// Why a command to an ECU did not succeed.
#[derive(Debug, Clone)]
struct CallError {
    /// Whether the ECU answered (and refused) rather than was out of reach;
    /// an answer lost to a reboot or a link is not a refusal.
    refused: bool,
    message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl CallError {
    fn unreachable(message: impl std::fmt::Display) -> CallError {
        CallError { refused: false, message: message.to_string() }
    }

    fn of(status: tonic::Status) -> CallError {
        use tonic::Code;
        let refused =
            !matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded);
        CallError { refused, message: status.message().to_string() }
    }
}

/// One command to an ECU.
enum Command {
    Status,
    Prepare(PrepareRequest),
    Switch(TransactionRef),
    Commit(TransactionRef),
    Revert(TransactionRef),
}

/// The main's system-update driver.
#[derive(Clone)]
pub struct Driver {
    service: Arc<Service>,
    ecu: EcuSection,
    secondaries: Vec<SecondaryConfig>,
    prepare_timeout: Duration,
    health_timeout: Duration,
    local: Secondary,
    /// The download cache secondaries fetch through, if `proxy-listen` is set.
    proxy: Option<Proxy>,
    record: Arc<Mutex<SystemRecord>>,
    /// Told whenever the record changed (the D-Bus interface announces it).
    changed: Arc<dyn Fn(SystemRecord) + Send + Sync>,
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Driver {
    fn dir(&self) -> &Path {
        &self.ecu.state_directory
    }

    fn manifest_path(dir: &Path) -> PathBuf {
        dir.join("system-manifest.der")
    }

    /// The driver of a main ECU; resumes a transaction a restart interrupted.
    pub fn start(
        service: Arc<Service>,
        ecu: EcuSection,
        local: Secondary,
        proxy: Option<Proxy>,
        changed: Arc<dyn Fn(SystemRecord) + Send + Sync>,
    ) -> crate::error::Result<Driver> {
        let EcuRole::Main { secondaries, prepare_timeout_sec, health_timeout_sec, .. } = &ecu.role else {
            return Err(crate::error::Error::Failed("not a main ECU".into()));
        };
        let record = load_record(&ecu.state_directory)?;
        let d = Driver {
            service,
            secondaries: secondaries.clone(),
            prepare_timeout: Duration::from_secs(*prepare_timeout_sec),
            health_timeout: Duration::from_secs(*health_timeout_sec),
            ecu,
            local,
            proxy,
            record: Arc::new(Mutex::new(record.clone())),
            changed,
            running: Arc::new(Mutex::new(())),
        };
        if record.phase.running() {
            tracing::info!("Resuming system update {} ({})", record.transaction_id, record.phase.as_str());
            let me = d.clone();
            tokio::spawn(async move { me.drive().await });
        }
        Ok(d)
    }

    /// The current record.
    pub async fn record(&self) -> SystemRecord {
        self.record.lock().await.clone()
    }

    async fn save(&self, r: &SystemRecord) {
        let (dir, rec) = (self.dir().to_path_buf(), r.clone());
        match tokio::task::spawn_blocking(move || save_record(&dir, &rec)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("{e}"),
            Err(e) => tracing::error!("{e}"),
        }
        (self.changed)(r.clone());
    }

    /// Starts the system update `location` names (a path or an http(s)
    /// URL of a signed system manifest); returns its transaction id once
    /// it was checked, before any ECU fetches anything.
    pub async fn update(&self, location: &str) -> Result<String, String> {
        let mut r = self.record.lock().await;
        if r.phase.running() {
            return Err(format!("A system update is already running (transaction {})", r.transaction_id));
        }
        let der = self.fetch_manifest(location).await?;
        let verify = VerifyOptions { keyring: self.service.system.config.keyring.clone(), ..Default::default() };
        let signed = system_manifest::open(&der, &verify).map_err(|e| format!("System manifest refused: {e}"))?;
        self.check(&signed, &r).await?;
        let id = hex::encode(openssl::sha::sha256(&der));
        let dir = self.dir().to_path_buf();
        let bytes = der.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            crate::files::replace(&Self::manifest_path(&dir), &bytes)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("Failed to keep the system manifest: {e}"))?;
        *r = SystemRecord {
            transaction_id: id.clone(),
            system_version: signed.manifest.version,
            phase: Phase::Preparing,
            since: now(),
            ecus: signed.manifest.ecus.iter().map(|e| (e.id.clone(), EcuView::default())).collect(),
            committed_system_version: r.committed_system_version,
            ..Default::default()
        };
        self.save(&r).await;
        drop(r);
        tracing::info!("System update {id} (system version {}) started", signed.manifest.version);
        let me = self.clone();
        tokio::spawn(async move { me.drive().await });
        Ok(id)
    }

    /// Cancels a system update that has not switched any ECU yet.
    pub async fn cancel(&self) -> Result<(), String> {
        let mut r = self.record.lock().await;
        match r.phase {
            Phase::Preparing => {
                r.phase = Phase::Reverting;
                r.since = now();
                r.error = "cancelled".into();
                self.save(&r).await;
                Ok(())
            }
            Phase::Switching | Phase::Committing => {
                Err("The system update has switched ECUs already; it completes or reverts on its own".into())
            }
            _ => Err("No system update running".into()),
        }
    }

    async fn fetch_manifest(&self, location: &str) -> Result<Vec<u8>, String> {
        let location = location.to_string();
        let http = self.service.open_options(&Default::default()).http;
        tokio::task::spawn_blocking(move || {
            if rota_bundle::bundle::is_remote(&location) {
                let src = rota_bundle::source::http::HttpSource::open(&location, http)?;
                if src.size() > MAX_MANIFEST {
                    return Err(format!("System manifest {location} is larger than {MAX_MANIFEST} bytes"));
                }
                let mut buf = vec![0u8; src.size() as usize];
                src.read_small_at(0, &mut buf).map_err(|e| format!("Failed to fetch {location}: {e}"))?;
                Ok(buf)
            } else {
                // A larger file is read one byte past the limit, which
                // system_manifest::open refuses.
                let path = location.strip_prefix("file://").unwrap_or(&location);
                system_manifest::read_file(Path::new(path)).map_err(|e| e.to_string())
            }
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Checks a verified manifest before anything is fetched: every ECU
    /// known and of the bundle's compatible, anti-rollback against the committed
    /// system version and what each ECU runs.
    async fn check(&self, signed: &SignedSystemManifest, r: &SystemRecord) -> Result<(), String> {
        let m = &signed.manifest;
        let mut installed = Installed { system_version: r.committed_system_version, ..Default::default() };
        for e in &m.ecus {
            if e.id != self.ecu.id && !self.secondaries.iter().any(|s| s.id == e.id) {
                return Err(format!("System manifest names ECU '{}', which this main does not know", e.id));
            }
            match self.call(&e.id, Command::Status).await {
                Ok(s) => {
                    if s.compatible != e.compatible {
                        return Err(format!(
                            "ECU '{}' is '{}', the system manifest's bundle for it is '{}'",
                            e.id, s.compatible, e.compatible
                        ));
                    }
                    if !s.booted_version.is_empty() {
                        installed.ecu_versions.insert(e.id.clone(), s.booted_version);
                    }
                }
                Err(err) => return Err(format!("ECU '{}': {err}", e.id)),
            }
        }
        m.check_rollback(&installed).map_err(|e| e.to_string())
    }

    /// Sends `cmd` to ECU `id` (this ECU itself without the network).
    async fn call(&self, id: &str, cmd: Command) -> Result<EcuStatus, CallError> {
        use tonic::Request;
        if id == self.ecu.id {
            let l = &self.local;
            let r = match cmd {
                Command::Status => l.get_status(Request::new(StatusRequest {})).await,
                Command::Prepare(p) => l.prepare(Request::new(p)).await,
                Command::Switch(t) => l.switch(Request::new(t)).await,
                Command::Commit(t) => l.commit(Request::new(t)).await,
                Command::Revert(t) => l.revert(Request::new(t)).await,
            };
            return r
                .map(|r| r.into_inner())
                .map_err(|s| CallError { refused: true, message: s.message().to_string() });
        }
        let s = self
            .secondaries
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| CallError { refused: true, message: format!("unknown ECU '{id}'") })?;
        let tls =
            rota_ecu::tls::TlsConfig { cert: self.ecu.cert.clone(), key: self.ecu.key.clone(), peer: s.cert.clone() };
        let connector = rota_ecu::tls::connector(&tls).map_err(CallError::unreachable)?;
        let mut c = rota_ecu::client::connect(&s.address, connector, CONNECT_TIMEOUT, CALL_TIMEOUT)
            .await
            .map_err(CallError::unreachable)?;
        let r = match cmd {
            Command::Status => c.get_status(StatusRequest {}).await,
            Command::Prepare(p) => c.prepare(p).await,
            Command::Switch(t) => c.switch(t).await,
            Command::Commit(t) => c.commit(t).await,
            Command::Revert(t) => c.revert(t).await,
        };
        r.map(|r| r.into_inner()).map_err(CallError::of)
    }

    /// `ids` with this ECU last: its own switch or revert reboots it, so
    /// the others are told first.
    fn own_last<'a>(&self, ids: &[&'a str]) -> Vec<&'a str> {
        let (mut others, own): (Vec<&str>, Vec<&str>) = ids.iter().partition(|id| **id != self.ecu.id);
        others.extend(own);
        others
    }

    /// Records what an ECU said (or that it could not be reached).
    async fn note(&self, id: &str, answer: &Result<EcuStatus, CallError>) {
        let mut r = self.record.lock().await;
        let view = match answer {
            Ok(s) => EcuView {
                state: state_name(s.state),
                error: s.error.clone(),
                booted_slot: s.booted_slot.clone(),
                booted_version: s.booted_version.clone(),
                progress: s.progress,
                switched: false,
            },
            Err(e) => EcuView {
                state: if e.refused { "refused".into() } else { "unreachable".into() },
                error: e.message.clone(),
                ..r.ecus.get(id).cloned().unwrap_or_default()
            },
        };
        if r.ecus.get(id) != Some(&view) {
            r.ecus.insert(id.to_string(), view);
            (self.changed)(r.clone());
        }
    }

    async fn set_phase(&self, phase: Phase, error: Option<String>) {
        let mut r = self.record.lock().await;
        if phase == Phase::Reverting && r.phase == Phase::Reverting {
            return;
        }
        tracing::info!(
            "System update {}: {} → {}{}",
            r.transaction_id,
            r.phase.as_str(),
            phase.as_str(),
            error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
        );
        r.phase = phase;
        r.since = now();
        if let Some(e) = error {
            r.error = e;
        }
        if phase == Phase::Committed {
            r.committed_system_version = Some(r.system_version);
        }
        self.save(&r).await;
    }

    fn elapsed(since: u64) -> Duration {
        Duration::from_secs(now().saturating_sub(since))
    }

    /// Runs the transaction from its recorded phase to its end.
    async fn drive(&self) {
        let Ok(_running) = self.running.try_lock() else { return };
        let der = match std::fs::read(Self::manifest_path(self.dir())) {
            Ok(d) => d,
            Err(e) => {
                self.set_phase(Phase::Failed, Some(format!("the system manifest is gone: {e}"))).await;
                return;
            }
        };
        let unchecked = VerifyOptions { no_verify: true, ..Default::default() };
        let Ok(signed) = system_manifest::open(&der, &unchecked) else {
            self.set_phase(Phase::Failed, Some("the kept system manifest does not parse".into())).await;
            return;
        };
        let m = signed.manifest;
        let remote = rota_bundle::bundle::is_remote;
        if let Some(p) = &self.proxy {
            p.serve_only(&m.ecus.iter().filter(|e| remote(&e.bundle)).map(|e| e.bundle.clone()).collect::<Vec<_>>());
        }
        let t = {
            let r = self.record.lock().await;
            TransactionRef { transaction_id: r.transaction_id.clone(), system_version: r.system_version }
        };
        loop {
            let r = self.record().await;
            match r.phase {
                Phase::Preparing => {
                    let mut failure = None;
                    'groups: for group in m.update_groups() {
                        for e in &group {
                            let req = PrepareRequest {
                                transaction: Some(t.clone()),
                                bundle_url: match &self.proxy {
                                    Some(p) if remote(&e.bundle) => p.url_for(&e.bundle),
                                    _ => e.bundle.clone(),
                                },
                                manifest_hash: e.manifest_hash.clone(),
                                compatible: e.compatible.clone(),
                                version: e.version.clone(),
                                system_manifest: der.clone(),
                            };
                            let a = self.call(&e.id, Command::Prepare(req)).await;
                            self.note(&e.id, &a).await;
                            // An ECU out of reach may still have taken it:
                            // the wait below asks until the prepare timeout.
                            if let Err(err) = &a
                                && err.refused
                            {
                                failure = Some(format!("ECU '{}': {err}", e.id));
                                break 'groups;
                            }
                        }
                        let ids: Vec<&str> = group.iter().map(|e| e.id.as_str()).collect();
                        if let Err(err) = self.wait_all(&ids, State::Prepared, r.since, self.prepare_timeout).await {
                            failure = Some(err);
                            break;
                        }
                        if self.record().await.phase != Phase::Preparing {
                            break;
                        }
                    }
                    if self.record().await.phase != Phase::Preparing {
                        continue;
                    }
                    match failure {
                        Some(e) => self.set_phase(Phase::Reverting, Some(format!("prepare failed: {e}"))).await,
                        None => {
                            let mut r = self.record.lock().await;
                            r.group = 0;
                            drop(r);
                            self.set_phase(Phase::Switching, None).await;
                        }
                    }
                }
                Phase::Switching => {
                    let groups = m.reboot_groups();
                    let Some(group) = groups.get(r.group) else {
                        self.set_phase(Phase::Committing, None).await;
                        continue;
                    };
                    let ids: Vec<&str> = group.iter().map(|e| e.id.as_str()).collect();
                    let mut failure = None;
                    for id in self.own_last(&ids) {
                        let id = &id;
                        // Recorded before it is sent: a revert then knows to undo it.
                        let mut r = self.record.lock().await;
                        if let Some(v) = r.ecus.get_mut(*id).filter(|v| !v.switched) {
                            v.switched = true;
                            self.save(&r).await;
                        }
                        drop(r);
                        let a = self.call(id, Command::Switch(t.clone())).await;
                        self.note(id, &a).await;
                        // An answer lost (the ECU reboots at once, or its
                        // link failed) is no refusal: the wait for it to be
                        // healthy asks again until the health timeout.
                        if let Err(e) = a
                            && e.refused
                        {
                            failure = Some(format!("ECU '{id}': switching failed: {e}"));
                            break;
                        }
                    }
                    if failure.is_none()
                        && let Err(e) = self.wait_all(&ids, State::Healthy, r.since, self.health_timeout).await
                    {
                        failure = Some(e);
                    }
                    match failure {
                        Some(e) => self.set_phase(Phase::Reverting, Some(e)).await,
                        None => {
                            let mut r = self.record.lock().await;
                            r.group += 1;
                            r.since = now();
                            self.save(&r).await;
                        }
                    }
                }
                Phase::Committing => {
                    let mut all = true;
                    for e in &m.ecus {
                        let a = self.call(&e.id, Command::Commit(t.clone())).await;
                        self.note(&e.id, &a).await;
                        all &= a.is_ok_and(|s| s.state == State::Committed as i32);
                    }
                    if all {
                        self.set_phase(Phase::Committed, None).await;
                    } else {
                        // Healthy everywhere and partly committed: commits
                        // are retried until every ECU has taken it.
                        tokio::time::sleep(POLL).await;
                    }
                }
                Phase::Reverting => {
                    let mut done = true;
                    let ids: Vec<&str> = m.ecus.iter().map(|e| e.id.as_str()).collect();
                    for id in self.own_last(&ids) {
                        let e = m.ecu(id).expect("an ECU of the manifest");
                        let a = match self.call(&e.id, Command::Revert(t.clone())).await {
                            Err(err) => match self.call(&e.id, Command::Status).await {
                                // It never took part (its prepare did not arrive).
                                Ok(s) if s.transaction_id != t.transaction_id => continue,
                                // Out of reach, but never told to switch: its old
                                // slot stays active; it leaves the prepared
                                // transaction at the next one.
                                Err(_) if !self.record().await.ecus.get(&e.id).is_some_and(|v| v.switched) => {
                                    continue;
                                }
                                _ => Err(err),
                            },
                            ok => ok,
                        };
                        self.note(&e.id, &a).await;
                        let a = match a {
                            Ok(s) if s.state == State::Reverting as i32 => self.call(&e.id, Command::Status).await,
                            other => other,
                        };
                        self.note(&e.id, &a).await;
                        done &= a.as_ref().is_ok_and(|s| s.state == State::Reverted as i32);
                    }
                    if done {
                        self.set_phase(Phase::Reverted, None).await;
                    } else if Self::elapsed(r.since) > self.health_timeout {
                        let stuck: Vec<String> = self
                            .record()
                            .await
                            .ecus
                            .iter()
                            .filter(|(_, v)| v.state != "reverted")
                            .map(|(id, v)| format!("{id} ({})", v.state))
                            .collect();
                        self.set_phase(
                            Phase::Failed,
                            Some(format!("{}; not reverted: {}: maintenance is required", r.error, stuck.join(", "))),
                        )
                        .await;
                    } else {
                        tokio::time::sleep(POLL).await;
                    }
                }
                Phase::Idle | Phase::Committed | Phase::Reverted | Phase::Failed => return,
            }
        }
    }

    /// Polls `ids` until each is in `want`; fails on an ECU that failed, is
    /// unhealthy, or when `timeout` since `since` passed (an ECU that cannot
    /// be reached is asked again until then).
    async fn wait_all(&self, ids: &[&str], want: State, since: u64, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let mut all = true;
            for id in ids {
                let a = self.call(id, Command::Status).await;
                self.note(id, &a).await;
                match a {
                    Ok(s) if s.state == want as i32 => {}
                    Ok(s) if s.state == State::Failed as i32 || s.state == State::Unhealthy as i32 => {
                        return Err(format!("ECU '{id}' is {}: {}", state_name(s.state), s.error));
                    }
                    Ok(s) if s.state == State::Reverted as i32 || s.state == State::Idle as i32 => {
                        return Err(format!("ECU '{id}' left the transaction ({})", state_name(s.state)));
                    }
                    _ => all = false,
                }
            }
            if all {
                return Ok(());
            }
            if self.record().await.phase == Phase::Reverting {
                return Err("cancelled".into());
            }
            if Self::elapsed(since).max(started.elapsed()) > timeout {
                let r = self.record().await;
                let late: Vec<String> = ids
                    .iter()
                    .filter_map(|id| {
                        r.ecus.get(*id).filter(|v| v.state != state_name(want as i32)).map(|v| {
                            format!(
                                "{id} ({}{})",
                                v.state,
                                if v.error.is_empty() { String::new() } else { format!(": {}", v.error) }
                            )
                        })
                    })
                    .collect();
                return Err(format!(
                    "timed out after {} s waiting for {}: {}",
                    timeout.as_secs(),
                    state_name(want as i32),
                    late.join(", ")
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn record_path(dir: &Path) -> PathBuf {
    dir.join("system.json")
}

/// The main's record; a record that does not parse is kept as
/// `system.json.broken` and the service starts with the update `failed`:
/// where each ECU stands is unknown, which needs an operator's look, and a
/// new update may start.
fn load_record(dir: &Path) -> crate::error::Result<SystemRecord> {
    Ok(match super::state::load_json(&record_path(dir))? {
        super::state::Stored::Read(r) => r,
        super::state::Stored::Missing => SystemRecord::default(),
        super::state::Stored::Broken(text) => SystemRecord {
            phase: Phase::Failed,
            since: now(),
            error: format!("{text}: where each ECU stands is unknown"),
            ..Default::default()
        },
    })
}

fn save_record(dir: &Path, r: &SystemRecord) -> crate::error::Result<()> {
    super::state::save_json(&record_path(dir), r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_record_is_kept_and_reads_failed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_record(dir.path()).unwrap(), SystemRecord::default());
        let r = SystemRecord {
            transaction_id: "ab".into(),
            system_version: 3,
            phase: Phase::Switching,
            committed_system_version: Some(2),
            ..Default::default()
        };
        save_record(dir.path(), &r).unwrap();
        assert_eq!(load_record(dir.path()).unwrap(), r);
        std::fs::write(record_path(dir.path()), "{\"phase\": \"switching\", ").unwrap();
        let failed = load_record(dir.path()).unwrap();
        assert_eq!(failed.phase, Phase::Failed);
        assert!(!failed.phase.running());
        assert!(failed.error.contains("system.json.broken"), "{}", failed.error);
        assert!(failed.error.ends_with("where each ECU stands is unknown"), "{}", failed.error);
        assert!(dir.path().join("system.json.broken").exists());
        assert!(!record_path(dir.path()).exists());
    }
}
