//! `de.pengutronix.rauc.Poller` (spec §8.5, §11.1), exported when
//! `[polling] url` is set: a scheduler that polls the URL for a bundle,
//! tells whether it is an update candidate, installs it without a caller
//! when the install criteria say so, and reboots when the reboot criteria
//! say so. The decisions live in [`crate::polling`].

use super::dicts::{self, owned};
use super::installer::Installer;
use super::{Access, Service};
use crate::config::PollingSection;
use crate::install::engine::Outcome;
use crate::polling;
use rota_bundle::info::{BundleInfo, inspect_value};
use rota_bundle::source::http::shown_url;
use rota_dbus::Dict;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::{Variant, interface};

/// What the server said about the polled bundle, beyond its manifest.
#[derive(Debug, Clone)]
struct BundleFacts {
    size: u64,
    effective_url: String,
    modified_time: Option<u64>,
    etag: Option<String>,
}

/// The `Status` property's contents.
#[derive(Debug, Default, Clone)]
struct PollStatus {
    attempt_count: u64,
    recent_error_count: u64,
    last_attempt_time: u64,
    last_success_time: u64,
    last_error_message: Option<String>,
    update_available: bool,
    summary: Option<String>,
    attempted_hash: Option<String>,
    manifest: Option<Dict>,
    manifest_hash: Option<String>,
    version: Option<String>,
    bundle: Option<BundleFacts>,
}

impl PollStatus {
    fn dict(&self) -> Dict {
        let mut d = Dict::new();
        let mut put = |k: &str, v: Variant<'static>| {
            d.insert(k.to_string(), owned(v));
        };
        put("attempt-count", Variant::from(self.attempt_count));
        put("recent-error-count", Variant::from(self.recent_error_count));
        put("last-attempt-time", Variant::from(self.last_attempt_time));
        put("last-success-time", Variant::from(self.last_success_time));
        put("update-available", Variant::from(self.update_available));
        for (k, v) in [
            ("last-error-message", &self.last_error_message),
            ("summary", &self.summary),
            ("attempted-hash", &self.attempted_hash),
        ] {
            if let Some(v) = v {
                put(k, Variant::from(v.clone()));
            }
        }
        if let Some(m) = &self.manifest {
            put("manifest", Variant::from(m.clone()));
        }
        if let Some(b) = &self.bundle {
            let mut bd = Dict::new();
            bd.insert("size".into(), owned(Variant::from(b.size)));
            bd.insert("effective-url".into(), owned(Variant::from(b.effective_url.clone())));
            if let Some(t) = b.modified_time {
                bd.insert("modified-time".into(), owned(Variant::from(t)));
            }
            if let Some(e) = &b.etag {
                bd.insert("etag".into(), owned(Variant::from(e.clone())));
            }
            put("bundle", Variant::from(bd));
        }
        d
    }
}

/// The interface object.
pub struct Poller {
    status: PollStatus,
    /// Next poll, `CLOCK_BOOTTIME`; `None` once a reboot was triggered.
    next: Option<Duration>,
}

impl Poller {
    /// A poller whose first poll comes after a random share of the interval.
    pub fn new(p: &PollingSection) -> Poller {
        Poller { status: PollStatus::default(), next: Some(polling::boottime() + polling::first_delay(p)) }
    }
}

#[interface(name = "de.pengutronix.rauc.Poller")]
impl Poller {
    /// Schedules a poll soon (the short delay, about 30 s).
    async fn poll(
        &mut self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> zbus::fdo::Result<()> {
        super::no_arguments(&header)?;
        if self.next.is_some() {
            self.next = Some(polling::boottime() + polling::short_delay());
            self.next_poll_changed(&emitter).await?;
        }
        Ok(())
    }

    /// Next poll time, `CLOCK_BOOTTIME` in µs (0 after a reboot was triggered).
    #[zbus(property)]
    fn next_poll(&self) -> i64 {
        self.next.map_or(0, |t| t.as_micros() as i64)
    }

    /// Attempts, errors, times, the last result and the polled bundle.
    #[zbus(property)]
    fn status(&self) -> Dict {
        self.status.dict()
    }
}

/// What one poll found.
enum Polled {
    /// A bundle: its info and what the server said about it.
    Bundle(Box<BundleInfo>, BundleFacts),
    /// `304`: the same bundle as last time.
    NotModified,
    /// `204`: no bundle.
    NoBundle,
}

/// Opens (and verifies) the bundle at `url` as `info` does, asking the
/// server to answer `304` when it still has the bundle of `etag`.
async fn fetch(service: &Arc<Service>, url: String, etag: Option<String>) -> Result<Polled, String> {
    let mut access = Access::default();
    if let Some(e) = etag {
        access.headers.push(("If-None-Match".into(), e));
    }
    let open = service.open_options(&access);
    tokio::task::spawn_blocking(move || {
        let bundle = match rota_bundle::bundle::Bundle::open(&url, &open) {
            Ok(b) => b,
            Err(e) => {
                let m = e.to_string();
                return if m.ends_with(": not modified") {
                    Ok(Polled::NotModified)
                } else if m.ends_with(": no content") {
                    Ok(Polled::NoBundle)
                } else {
                    Err(m)
                };
            }
        };
        let remote = bundle.remote_info().cloned();
        let facts = BundleFacts {
            size: remote.as_ref().map_or(0, |r| r.size),
            effective_url: remote.as_ref().map_or_else(|| shown_url(&url), |r| r.effective_url.clone()),
            modified_time: remote.as_ref().and_then(|r| r.last_modified.as_deref()).and_then(polling::parse_http_date),
            etag: remote.and_then(|r| r.etag),
        };
        Ok(Polled::Bundle(Box::new(BundleInfo::of(&bundle)), facts))
    })
    .await
    .map_err(|e| format!("Internal error: {e}"))?
}

/// Whether a poll may happen now: idle, the booted slot marked good
/// through the service, no inhibit file.
async fn may_poll(service: &Service, installer: &InterfaceRef<Installer>, p: &PollingSection) -> bool {
    if installer.get().await.is_installing() {
        return false;
    }
    if !service.booted_marked_good.load(Ordering::SeqCst) {
        tracing::debug!("Not polling: the booted slot has not been marked good");
        return false;
    }
    if let Some(f) = p.inhibit_files.iter().find(|f| f.exists()) {
        tracing::info!("Not polling: inhibit file {} exists", f.display());
        return false;
    }
    true
}

/// Polls, evaluates the result and starts an automatic installation when
/// the criteria say so; returns its completion, if one was started.
async fn poll_once(
    service: &Arc<Service>,
    p: &PollingSection,
    poller: &InterfaceRef<Poller>,
    installer: &InterfaceRef<Installer>,
) -> Option<oneshot::Receiver<Result<Outcome, String>>> {
    let etag = poller.get().await.status.bundle.as_ref().and_then(|b| b.etag.clone());
    let now = polling::boottime();
    let result = fetch(service, p.url.clone(), etag).await;
    let system_version = service.system.system_version().unwrap_or_default().to_string();
    let mut guard = poller.get_mut().await;
    let st = &mut guard.status;
    st.attempt_count += 1;
    st.last_attempt_time = now.as_micros() as u64;
    match result {
        Err(m) => {
            tracing::warn!("Polling {} failed: {m}", shown_url(&p.url));
            st.recent_error_count += 1;
            st.last_error_message = Some(m);
        }
        Ok(found) => {
            st.recent_error_count = 0;
            st.last_success_time = now.as_micros() as u64;
            match found {
                Polled::NotModified => tracing::info!("Polling {}: not modified", shown_url(&p.url)),
                Polled::NoBundle => {
                    st.manifest = None;
                    st.manifest_hash = None;
                    st.version = None;
                    st.bundle = None;
                    st.update_available = false;
                    st.summary = Some(polling::NO_BUNDLE.into());
                }
                Polled::Bundle(info, facts) => {
                    st.manifest = Some(dicts::inspect_dict(&inspect_value(&info)));
                    st.manifest_hash = Some(info.manifest_hash.clone());
                    st.version = info.manifest.update.version.clone();
                    st.bundle = Some(facts);
                }
            }
            if let Some(version) = st.version.clone() {
                let found = polling::candidate(&p.candidate_criteria, &system_version, &version);
                st.update_available = found.is_some();
                st.summary = Some(found.unwrap_or(polling::NO_CANDIDATE).into());
            }
            tracing::info!("Polling {}: {}", shown_url(&p.url), st.summary.as_deref().unwrap_or_default());
        }
    }
    let delay = polling::next_delay(p, st.recent_error_count);
    guard.next = Some(polling::boottime() + delay);
    let install = {
        let st = &guard.status;
        let version = st.version.clone().unwrap_or_default();
        match &st.manifest_hash {
            Some(hash)
                if st.update_available
                    && polling::auto_install(p, &system_version, &version)
                    && st.attempted_hash.as_ref() != Some(hash) =>
            {
                Some(hash.clone())
            }
            _ => None,
        }
    };
    let emitter = poller.signal_emitter().clone();
    let _ = guard.status_changed(&emitter).await;
    let _ = guard.next_poll_changed(&emitter).await;
    let hash = install?;
    drop(guard);
    tracing::info!("Installing {} (polling, manifest hash {hash})", shown_url(&p.url));
    let started =
        installer.get().await.install_required(p.url.clone(), hash.clone(), true, installer.signal_emitter()).await;
    let mut guard = poller.get_mut().await;
    let done = match started {
        Ok(done) => {
            // Attempted only once it started: a busy installer is tried again at the next poll.
            guard.status.attempted_hash = Some(hash);
            Some(done)
        }
        Err(e) => {
            tracing::warn!("Automatic installation failed to start: {e}");
            guard.status.last_error_message = Some(format!("Automatic installation failed to start: {e}"));
            None
        }
    };
    let _ = guard.status_changed(&emitter).await;
    done
}

/// The scheduler: ticks, polls when due and allowed, waits for automatic
/// installations and reboots when the criteria say so; stops after that.
pub async fn run(
    service: Arc<Service>,
    p: PollingSection,
    poller: InterfaceRef<Poller>,
    installer: InterfaceRef<Installer>,
) {
    let mut ticker = tokio::time::interval(polling::tick());
    let mut running: Option<oneshot::Receiver<Result<Outcome, String>>> = None;
    // The reboot criteria asked for a reboot that has not happened yet.
    let mut must_reboot = false;
    loop {
        ticker.tick().await;
        if let Some(done) = running.as_mut() {
            let outcome = match done.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => continue,
                Ok(r) => r,
                Err(oneshot::error::TryRecvError::Closed) => Err("the installation ended unexpectedly".into()),
            };
            running = None;
            let (ok, slots, artifacts) = match &outcome {
                Ok(o) => (true, o.written.len(), o.artifacts.len()),
                Err(_) => (false, 0, 0),
            };
            must_reboot = polling::reboot_after(&p, ok, slots, artifacts);
            if !must_reboot {
                set_next(&poller, polling::boottime() + polling::short_delay()).await;
                continue;
            }
        } else {
            let Some(next) = poller.get().await.next else { return };
            if polling::boottime() < next {
                continue;
            }
            if !may_poll(&service, &installer, &p).await {
                set_next(&poller, polling::boottime() + polling::short_delay()).await;
                continue;
            }
        }
        if must_reboot {
            match reboot(&p, &poller).await {
                // The system goes down: no more polls.
                Ok(()) => return,
                // Tried again after the short delay, instead of polling.
                Err(m) => {
                    tracing::warn!("{m}");
                    let mut g = poller.get_mut().await;
                    g.status.last_error_message = Some(m);
                    let _ = g.status_changed(poller.signal_emitter()).await;
                    drop(g);
                    set_next(&poller, polling::boottime() + polling::short_delay()).await;
                    continue;
                }
            }
        }
        running = poll_once(&service, &p, &poller, &installer).await;
    }
}

async fn set_next(poller: &InterfaceRef<Poller>, at: Duration) {
    let mut g = poller.get_mut().await;
    g.next = Some(at);
    let _ = g.next_poll_changed(poller.signal_emitter()).await;
}

/// Stops polling (`NextPoll` 0) and runs `reboot-cmd`. A failure is
/// returned, for the caller to report and schedule the next try.
async fn reboot(p: &PollingSection, poller: &InterfaceRef<Poller>) -> Result<(), String> {
    {
        let mut g = poller.get_mut().await;
        g.next = None;
        let _ = g.next_poll_changed(poller.signal_emitter()).await;
    }
    tracing::info!("Rebooting after the automatic installation: {}", p.reboot_cmd.join(" "));
    crate::tools::run_reboot_command(&p.reboot_cmd).await
}
