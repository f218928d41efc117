//! `de.pengutronix.rauc.Installer` (spec §8.1): RAUC's methods, properties
//! and signal on object `/`. Installations run one at a time on a blocking
//! worker; their progress comes back over a channel and becomes property
//! changes, then `Completed`, then `Operation=idle`.
//!
//! Beyond RAUC, read-only calls (`GetSlotStatus`, `GetArtifactStatus`,
//! `GetPrimary`, `InspectBundle`, `Info`) keep answering during an
//! installation; `Mark` and a second `InstallBundle` are refused.

use super::caller::Caller;
use super::dicts;
use super::{Service, access_from_args, arg};
use crate::install::engine::{self, InstallArgs};
use crate::install::progress::ProgressSink;
use crate::mark::{self, MarkState};
use crate::report::{self, StatusReport};
use crate::system::System;
use rota_bundle::info::inspect_value;
use rota_dbus::Dict;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering as AtomicOrdering};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;
use zbus::message::Header;
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::{OwnedVariant, interface};

/// RAUC's one error for every failure on the bus (spec §8.1): GLib's
/// unmapped I/O error "failed-handled", carrying the message.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark")]
pub enum RaucError {
    /// A failure of zbus itself.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Any failure of a method, with its message.
    Code30(String),
}

impl From<zbus::fdo::Error> for RaucError {
    fn from(e: zbus::fdo::Error) -> RaucError {
        RaucError::ZBus(zbus::Error::FDO(Box::new(e)))
    }
}

impl RaucError {
    fn failed(message: impl std::fmt::Display) -> RaucError {
        RaucError::Code30(message.to_string())
    }
}

/// The busy error of `InstallBundle`.
const BUSY_INSTALL: &str = "Already processing a different method";
/// The busy error of the other state-changing methods.
const BUSY: &str = "already processing a different method";

/// Longest state or slot identifier `Mark` looks at.
const MAX_MARK_ARG: usize = 256;

/// Keys `InstallBundle` accepts, with their D-Bus types.
const INSTALL_KEYS: &[(&str, &str)] = &[
    ("ignore-compatible", "b"),
    ("ignore-version-limit", "b"),
    ("transaction-id", "s"),
    ("require-manifest-hash", "s"),
    ("tls-cert", "s"),
    ("tls-key", "s"),
    ("tls-ca", "s"),
    ("tls-no-verify", "b"),
    ("http-headers", "as"),
];
/// Keys `InspectBundle` accepts, with their D-Bus types.
pub(super) const INSPECT_KEYS: &[(&str, &str)] =
    &[("tls-cert", "s"), ("tls-key", "s"), ("tls-ca", "s"), ("tls-no-verify", "b"), ("http-headers", "as")];

/// One installation for the worker.
pub struct InstallJob {
    /// What to install and how.
    pub args: InstallArgs,
    /// Told how the installation ended (the poller waits for it).
    pub done: Option<oneshot::Sender<Result<engine::Outcome, String>>>,
}

/// What the engine reports while it runs.
enum Event {
    Progress(i32, String, i32),
    Phase(String),
    Bytes(String, u64, u64),
    Files(String, u64, u64),
    Counts(String, Vec<(&'static str, u64)>),
}

/// Forwards the engine's progress to the worker task; handler messages go
/// to the log as RAUC's service does (`installing <bundle>: <message>`).
struct ChannelSink {
    tx: UnboundedSender<Event>,
    bundle: String,
    /// Slot and byte count of the last byte event passed on.
    sent: (String, u64),
    /// The byte count at which files were last passed on.
    files_sent: u64,
}

/// Byte counts are passed to the worker in steps of this size (and at a
/// slot's start and end), not for every chunk the engine writes.
const FORWARD_STEP: u64 = 1 << 20;

impl ProgressSink for ChannelSink {
    fn progress(&mut self, percentage: i32, message: &str, depth: i32) {
        let _ = self.tx.send(Event::Progress(percentage, message.to_string(), depth));
    }

    fn message(&mut self, text: &str) {
        tracing::info!("installing {}: {text}", self.bundle);
    }

    fn phase(&mut self, phase: &str) {
        let _ = self.tx.send(Event::Phase(phase.to_string()));
    }

    fn bytes(&mut self, slot: &str, done: u64, total: u64) {
        let (last_slot, last_done) = &self.sent;
        if last_slot == slot && done < total && done.saturating_sub(*last_done) < FORWARD_STEP {
            return;
        }
        self.sent = (slot.to_string(), done);
        let _ = self.tx.send(Event::Bytes(slot.to_string(), done, total));
    }

    fn files(&mut self, slot: &str, done: u64, total: u64) {
        // Passed on with the byte steps, and at the last file.
        if done == total || self.sent.1 != self.files_sent {
            self.files_sent = self.sent.1;
            let _ = self.tx.send(Event::Files(slot.to_string(), done, total));
        }
    }

    fn counts(&mut self, slot: &str, counts: &[(&'static str, u64)]) {
        let _ = self.tx.send(Event::Counts(slot.to_string(), counts.to_vec()));
    }
}

/// What the installer is doing.
const IDLE: u8 = 0;
const INSTALLING: u8 = 1;
const MARKING: u8 = 2;

/// The interface object. Its state changes through interior mutability, so
/// no call ever needs the interface exclusively: a long `InspectBundle` of a
/// slow server cannot hold up the progress and `Completed` of an install.
pub struct Installer {
    service: Arc<Service>,
    jobs: UnboundedSender<InstallJob>,
    /// [`IDLE`], [`INSTALLING`] or [`MARKING`].
    busy: AtomicU8,
    /// `LastError` and `Progress`.
    shown: std::sync::Mutex<(String, (i32, String, i32))>,
}

impl Installer {
    /// A new, idle installer handing its jobs to `jobs`.
    pub fn new(service: Arc<Service>, jobs: UnboundedSender<InstallJob>) -> Installer {
        Installer {
            service,
            jobs,
            busy: AtomicU8::new(IDLE),
            shown: std::sync::Mutex::new((String::new(), (0, String::new(), 0))),
        }
    }

    fn shown(&self) -> std::sync::MutexGuard<'_, (String, (i32, String, i32))> {
        self.shown.lock().expect("not poisoned")
    }

    /// Claims the installer for `what` if it is idle.
    fn claim(&self, what: u8) -> bool {
        self.busy.compare_exchange(IDLE, what, AtomicOrdering::SeqCst, AtomicOrdering::SeqCst).is_ok()
    }

    /// Claims the installer and queues `job`.
    async fn start(&self, job: InstallJob, emitter: &SignalEmitter<'_>) -> Result<(), RaucError> {
        if self.service.stopping.load(AtomicOrdering::SeqCst) {
            return Err(RaucError::failed("The service is stopping"));
        }
        if !self.claim(INSTALLING) {
            return Err(RaucError::failed(BUSY_INSTALL));
        }
        *self.service.current.lock().expect("not poisoned") = Some(job.args.control.clone());
        self.shown().0.clear();
        if self.jobs.send(job).is_err() {
            self.busy.store(IDLE, AtomicOrdering::SeqCst);
            return Err(RaucError::failed("The installation worker is gone"));
        }
        self.operation_changed(emitter).await?;
        self.last_error_changed(emitter).await?;
        Ok(())
    }

    /// Queues the `[autoinstall]` bundle at service start (no caller).
    pub async fn autoinstall(&self, location: String, emitter: &SignalEmitter<'_>) -> Result<(), RaucError> {
        let args = self.install_args(location, &HashMap::new(), None)?;
        self.start(InstallJob { args, done: None }, emitter).await
    }

    /// Whether an installation runs.
    pub fn is_installing(&self) -> bool {
        self.busy.load(AtomicOrdering::SeqCst) == INSTALLING
    }

    /// Queues the installation of `url` without a caller, refusing any
    /// other manifest than `manifest_hash`: a polled bundle (`activate`), or
    /// a system update's prepare step (nothing activated: the main switches
    /// later). Returns how it will end.
    pub async fn install_required(
        &self,
        url: String,
        manifest_hash: String,
        activate: bool,
        emitter: &SignalEmitter<'_>,
    ) -> Result<oneshot::Receiver<Result<engine::Outcome, String>>, RaucError> {
        super::check_location(&url)?;
        let mut args = self.install_args(url, &HashMap::new(), None)?;
        args.require_manifest_hash = Some(manifest_hash);
        args.no_activate = !activate;
        let (tx, rx) = oneshot::channel();
        self.start(InstallJob { args, done: Some(tx) }, emitter).await?;
        Ok(rx)
    }

    /// What the installation of `location` with `args` gets; files a
    /// `caller` names are opened with its rights (no caller: the service's
    /// own configuration named it).
    fn install_args(
        &self,
        location: String,
        args: &HashMap<String, OwnedVariant>,
        caller: Option<&Caller>,
    ) -> Result<InstallArgs, RaucError> {
        check_keys(args, INSTALL_KEYS)?;
        let access = access_from_args(args)?;
        let open = match caller {
            Some(c) => self.service.caller_open_options(&location, &access, c)?,
            None => self.service.open_options(&access),
        };
        Ok(InstallArgs {
            open,
            location,
            ignore_compatible: arg(args, "ignore-compatible")?.unwrap_or(false),
            ignore_version_limit: arg(args, "ignore-version-limit")?.unwrap_or(false),
            transaction_id: arg(args, "transaction-id")?,
            require_manifest_hash: arg(args, "require-manifest-hash")?,
            handler_args: self.service.handler_args.clone(),
            no_activate: false,
            control: Default::default(),
        })
    }

    /// Runs `f` on a fresh copy of the system on a blocking thread.
    async fn with_system<T: Send + 'static>(
        &self,
        f: impl FnOnce(&System) -> Result<T, RaucError> + Send + 'static,
    ) -> Result<T, RaucError> {
        let service = self.service.clone();
        let installing = self.is_installing();
        tokio::task::spawn_blocking(move || {
            let mut system = service.system.fork();
            // A slot being written must not be mounted to read its status.
            system.skip_status_mounts = installing;
            f(&system)
        })
        .await
        .map_err(|e| RaucError::failed(format!("Internal error: {e}")))?
    }
}

/// Refuses, before anything is opened, a key that is not `allowed` or whose
/// value has another type: RAUC looks each key up with its type, so a
/// wrongly typed key is left over and refused as unsupported like an unknown
/// one (`Unsupported key: <key>`, the first in sorted order).
pub(crate) fn check_keys(args: &HashMap<String, OwnedVariant>, allowed: &[(&str, &str)]) -> Result<(), RaucError> {
    let mut keys: Vec<&String> = args.keys().collect();
    keys.sort();
    let fits = |k: &String| allowed.iter().any(|(name, ty)| name == k && args[k].value_signature().to_string() == *ty);
    match keys.into_iter().find(|k| !fits(k)) {
        // A key of absurd length is not echoed whole.
        Some(k) if k.len() > 256 => {
            let shown: String = k.chars().take(64).collect();
            Err(RaucError::failed(format!("Unsupported key: {shown}… ({} bytes)", k.len())))
        }
        Some(k) => Err(RaucError::failed(format!("Unsupported key: {k}"))),
        None => Ok(()),
    }
}

#[interface(name = "de.pengutronix.rauc.Installer")]
impl Installer {
    /// Starts an installation of `source` and returns at once.
    async fn install_bundle(
        &self,
        source: String,
        args: HashMap<String, OwnedVariant>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), RaucError> {
        if self.busy.load(AtomicOrdering::SeqCst) != IDLE {
            return Err(RaucError::failed(BUSY_INSTALL));
        }
        super::check_location(&source)?;
        let caller = Caller::of(conn, &header).await.map_err(RaucError::failed)?;
        let args = self.install_args(rota_bundle::cli::commands::location(&source), &args, Some(&caller))?;
        self.start(InstallJob { args, done: None }, &emitter).await
    }

    /// Deprecated: `InstallBundle(source, {})`.
    async fn install(
        &self,
        source: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), RaucError> {
        self.install_bundle(source, HashMap::new(), header, conn, emitter).await
    }

    /// The bundle's manifest in the json-2 layout (spec §8.3).
    #[zbus(out_args("info"))]
    async fn inspect_bundle(
        &self,
        source: String,
        args: HashMap<String, OwnedVariant>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<Dict, RaucError> {
        let caller = Caller::of(conn, &header).await.map_err(RaucError::failed)?;
        let (info, _) = super::open_bundle(&self.service, source, args, caller).await?;
        Ok(dicts::inspect_dict(&inspect_value(&info)))
    }

    /// Deprecated: (compatible, version).
    #[zbus(out_args("compatible", "version"))]
    async fn info(
        &self,
        bundle: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(String, String), RaucError> {
        let caller = Caller::of(conn, &header).await.map_err(RaucError::failed)?;
        let (info, _) = super::open_bundle(&self.service, bundle, HashMap::new(), caller).await?;
        let update = &info.manifest.update;
        Ok((update.compatible.clone(), update.version.clone().unwrap_or_default()))
    }

    /// Marks slots; returns (marked slot names, message).
    #[zbus(out_args("slot_name", "message"))]
    async fn mark(&self, state: String, slot_identifier: String) -> Result<(String, String), RaucError> {
        // Slot names, bootnames and states are short: longer ones are not
        // looked up, and not echoed into the error whole.
        if let Some(long) = [&state, &slot_identifier].into_iter().find(|a| a.len() > MAX_MARK_ARG) {
            return Err(RaucError::failed(format!(
                "Invalid argument to Mark: {} bytes (at most {MAX_MARK_ARG})",
                long.len()
            )));
        }
        if !self.claim(MARKING) {
            return Err(RaucError::failed(BUSY));
        }
        let service = self.service.clone();
        let marked = self
            .with_system(move |system| {
                let state = MarkState::parse(&state).map_err(RaucError::failed)?;
                let (names, message) = mark::mark(system, state, &slot_identifier).map_err(RaucError::failed)?;
                // Polling waits until the booted slot was marked good through
                // the service (in this boot: a restarted service remembers it).
                let booted = system.booted().map(|s| s.config.name.as_str());
                if booted.is_some_and(|b| names.iter().any(|n| n == b)) && state != MarkState::Active {
                    let good = state == MarkState::Good;
                    service.booted_marked_good.store(good, std::sync::atomic::Ordering::SeqCst);
                    if let Err(e) = crate::runtime::record_booted_good(&super::run_dir(), good) {
                        tracing::warn!("{e}");
                    }
                }
                Ok((names.join(" "), message))
            })
            .await;
        self.busy.store(IDLE, AtomicOrdering::SeqCst);
        marked
    }

    /// (slot name, status) of every configured slot (spec §8.4).
    #[zbus(out_args("slot_status_array"))]
    async fn get_slot_status(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<Vec<(String, Dict)>, RaucError> {
        super::no_arguments(&header)?;
        self.with_system(|system| {
            let report = StatusReport::gather_slots(system);
            Ok(report.iter().map(|s| (s.name.clone(), dicts::slot_dict(s))).collect())
        })
        .await
    }

    /// One dict per artifact repository.
    #[zbus(out_args("artifacts"))]
    async fn get_artifact_status(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<Vec<Dict>, RaucError> {
        super::no_arguments(&header)?;
        self.with_system(|system| {
            Ok(report::gather_repos(system)
                .iter()
                .map(|r| r.json().as_object().map(dicts::dict_of).unwrap_or_default())
                .collect())
        })
        .await
    }

    /// The bootloader's primary slot.
    #[zbus(out_args("primary"))]
    async fn get_primary(&self, #[zbus(header)] header: zbus::message::Header<'_>) -> Result<String, RaucError> {
        super::no_arguments(&header)?;
        self.with_system(|system| {
            system.primary().map_err(|e| RaucError::failed(format!("Failed getting primary slot: {e}")))
        })
        .await
    }

    /// An installation ended: 0 success, 1 failure.
    #[zbus(signal)]
    pub async fn completed(emitter: &SignalEmitter<'_>, result: i32) -> zbus::Result<()>;

    /// `idle` or `installing`.
    #[zbus(property)]
    fn operation(&self) -> String {
        if self.is_installing() { "installing" } else { "idle" }.to_string()
    }

    /// The message of the last failed installation (`""` after a new start).
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.shown().0.clone()
    }

    /// (percentage, message, depth) of the running installation.
    #[zbus(property)]
    fn progress(&self) -> (i32, String, i32) {
        self.shown().1.clone()
    }

    /// The system's compatible.
    #[zbus(property)]
    fn compatible(&self) -> String {
        self.service.system.config.system.compatible.clone()
    }

    /// The system's variant.
    #[zbus(property)]
    fn variant(&self) -> String {
        self.service.system.variant.clone()
    }

    /// `RAUC_SYSTEM_VERSION` from the system-info handler.
    #[zbus(property)]
    fn system_version(&self) -> String {
        self.service.system.system_version().unwrap_or_default().to_string()
    }

    /// The boot-slot string (spec §6.1).
    #[zbus(property)]
    fn boot_slot(&self) -> String {
        self.service.system.boot_slot.clone()
    }
}

/// Runs queued installations one after the other, publishing their
/// progress and result on `iref`.
pub async fn worker(
    service: Arc<Service>,
    iref: InterfaceRef<Installer>,
    details: InterfaceRef<super::control::Control>,
    mut jobs: UnboundedReceiver<InstallJob>,
) {
    while let Some(mut job) = jobs.recv().await {
        let job_done = job.done.take();
        let (tx, mut events) = unbounded_channel();
        let svc = service.clone();
        let bundle = job.args.location.clone();
        let run = tokio::task::spawn_blocking(move || {
            let mut system = svc.system.fork();
            let mut sink = ChannelSink { tx, bundle, sent: (String::new(), 0), files_sent: u64::MAX };
            engine::install(&mut system, &job.args, &mut sink).map_err(|e| e.to_string())
        });
        let done = job_done;
        super::control::update(&details, |d| d.start()).await;
        while let Some(event) = events.recv().await {
            match event {
                Event::Progress(p, m, d) => {
                    super::control::update(&details, |s| s.progress(p, &m)).await;
                    let i = iref.get().await;
                    i.shown().1 = (p, m, d);
                    if let Err(e) = i.progress_changed(iref.signal_emitter()).await {
                        tracing::warn!("Failed to announce progress: {e}");
                    }
                }
                Event::Phase(phase) => super::control::update(&details, |s| s.phase(&phase)).await,
                Event::Bytes(slot, done, total) => {
                    super::control::update(&details, |s| s.bytes(&slot, done, total)).await
                }
                Event::Files(slot, done, total) => {
                    super::control::update(&details, |s| s.files(&slot, done, total)).await
                }
                Event::Counts(slot, counts) => super::control::update(&details, |s| s.counts(&slot, &counts)).await,
            }
        }
        let result = run.await.unwrap_or_else(|e| Err(format!("Internal error: {e}")));
        *service.current.lock().expect("not poisoned") = None;
        give_back_memory();
        super::control::update(&details, |s| s.finish()).await;
        if let Err(e) = &result {
            tracing::warn!("Installation failed: {e}");
            let i = iref.get().await;
            i.shown().0 = e.clone();
            if let Err(e) = i.last_error_changed(iref.signal_emitter()).await {
                tracing::warn!("Failed to announce the error: {e}");
            }
        }
        let code = if result.is_ok() { 0 } else { 1 };
        if let Some(done) = done {
            let _ = done.send(result);
        }
        if let Err(e) = Installer::completed(iref.signal_emitter(), code).await {
            tracing::warn!("Failed to send Completed: {e}");
        }
        let i = iref.get().await;
        i.busy.store(IDLE, AtomicOrdering::SeqCst);
        if let Err(e) = i.operation_changed(iref.signal_emitter()).await {
            tracing::warn!("Failed to announce the operation: {e}");
        }
    }
}

/// Returns the heap an installation freed (an index's tables, small
/// buffers) to the system: glibc keeps freed memory for reuse, and a
/// service idle for days should not hold tens of MiB on a small device.
fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Has glibc hand large blocks (copy buffers, HTTP windows, squashfs
/// blocks: 256 KiB and more) straight back to the system when they are
/// freed, instead of raising its threshold and keeping them in per-thread
/// arenas, and keeps those arenas few: the service's memory then returns to
/// its idle size after each installation.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
