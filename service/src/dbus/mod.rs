//! `rota service`: the D-Bus service `de.pengutronix.rauc` (spec §8) on
//! tokio + zbus. It sets the system up once (config, booted slot,
//! system-info handler), records the boot and the runtime links (§7.3,
//! §7.5), takes the bus name, serves the installer interface until SIGTERM
//! (exit 0) or until it loses the name (fatal), and installs the
//! `[autoinstall]` bundle if there is one.

pub mod caller;
pub mod control;
pub mod dicts;
pub mod installer;
pub mod poller;
pub mod system_update;

use crate::runtime;
use crate::system::System;
use caller::Caller;
use installer::{Installer, RaucError};
use rota_bundle::bundle::OpenOptions;
use rota_bundle::cli::{CliError, Context};
use rota_bundle::source::http::parse_header;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use zbus::OwnedVariant;

/// What the service keeps for every request.
pub struct Service {
    /// The system as set up at start; requests work on forks of it.
    pub system: System,
    /// `--handler-args` for the full custom handler.
    pub handler_args: Option<String>,
    /// The control of the running installation, if one runs.
    pub current: std::sync::Mutex<Option<Arc<crate::install::control::InstallControl>>>,
    /// Whether the booted slot was marked good through the service since
    /// it started (polling waits for it, spec §11.1).
    pub booted_marked_good: std::sync::atomic::AtomicBool,
    /// Set once SIGTERM or SIGINT came: no installation starts any more.
    pub stopping: std::sync::atomic::AtomicBool,
}

/// Longest bundle location a caller may give: a path longer than the
/// kernel's PATH_MAX cannot be opened, and no server takes such a URL.
pub const MAX_LOCATION: usize = 4096;

/// Refuses a location longer than [`MAX_LOCATION`] before it is used, so it
/// is neither opened nor echoed into errors, logs and `LastError`.
pub fn check_location(source: &str) -> Result<(), RaucError> {
    match source.len() {
        n if n > MAX_LOCATION => {
            Err(RaucError::Code30(format!("Bundle location too long: {n} bytes (at most {MAX_LOCATION})")))
        }
        _ => Ok(()),
    }
}

/// Refuses a call that brings arguments to a method that takes none, with
/// `InvalidArgs` as for any other signature mismatch (zbus checks the
/// arguments only of methods that have some; RAUC's GDBus checks all).
pub fn no_arguments(header: &zbus::message::Header<'_>) -> zbus::fdo::Result<()> {
    match header.signature().to_string() {
        s if s.is_empty() => Ok(()),
        s => Err(zbus::fdo::Error::InvalidArgs(format!("Signature mismatch: got `{s}`, expected ``"))),
    }
}

/// How a caller wants a bundle reached: TLS material and extra HTTP headers.
#[derive(Debug, Default, Clone)]
pub struct Access {
    /// Client certificate (PEM or PKCS#11 URL).
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM or PKCS#11 URL).
    pub tls_key: Option<PathBuf>,
    /// CA file.
    pub tls_ca: Option<PathBuf>,
    /// Accept any server certificate.
    pub tls_no_verify: bool,
    /// `Name: value` headers for every request.
    pub headers: Vec<(String, String)>,
}

/// The value of `key` in D-Bus call arguments as `T`; a value of another
/// type is refused as RAUC refuses it, `Unsupported key: <key>` (callers
/// check the types first with `installer::check_keys`).
pub fn arg<T: TryFrom<OwnedVariant>>(args: &HashMap<String, OwnedVariant>, key: &str) -> Result<Option<T>, RaucError> {
    args.get(key)
        .map(|v| {
            v.try_clone()
                .ok()
                .and_then(|v| T::try_from(v).ok())
                .ok_or_else(|| RaucError::Code30(format!("Unsupported key: {key}")))
        })
        .transpose()
}

/// The bundle-access keys of `InstallBundle`/`InspectBundle` arguments.
pub fn access_from_args(args: &HashMap<String, OwnedVariant>) -> Result<Access, RaucError> {
    let path = |k: &str| arg::<String>(args, k).map(|v| v.map(PathBuf::from));
    let mut access = Access {
        tls_cert: path("tls-cert")?,
        tls_key: path("tls-key")?,
        tls_ca: path("tls-ca")?,
        tls_no_verify: arg(args, "tls-no-verify")?.unwrap_or(false),
        headers: Vec::new(),
    };
    for h in arg::<Vec<String>>(args, "http-headers")?.unwrap_or_default() {
        access.headers.push(parse_header(&h).map_err(RaucError::Code30)?);
    }
    Ok(access)
}

impl Service {
    /// How this service opens a bundle for a caller: the configured keyring,
    /// formats, decryption key and HTTP settings, with the caller's TLS
    /// material and headers.
    pub fn open_options(&self, access: &Access) -> OpenOptions {
        let mut http = self.system.config.host_config().http_options(&self.system.header_facts(None));
        http.tls_ca = access.tls_ca.clone().or(http.tls_ca);
        http.tls_cert = access.tls_cert.clone().or(http.tls_cert);
        http.tls_key = access.tls_key.clone().or(http.tls_key);
        http.tls_no_verify = access.tls_no_verify;
        http.headers = access.headers.clone();
        self.system.config.open_options(http, None)
    }

    /// How this service opens `location` for `caller` ([`Self::open_options`]):
    /// a local bundle and the caller's local TLS files are opened with the
    /// caller's rights (see [`caller`]), not the service's.
    pub fn caller_open_options(
        &self,
        location: &str,
        access: &Access,
        caller: &Caller,
    ) -> Result<OpenOptions, RaucError> {
        let mut access = access.clone();
        let mut held = Vec::new();
        for path in [&mut access.tls_cert, &mut access.tls_key, &mut access.tls_ca].into_iter().flatten() {
            if path.to_str().is_some_and(rota_bundle::pkcs11::is_uri) {
                continue;
            }
            let (copy, fd) = caller
                .copy(path)
                .map_err(|e| RaucError::Code30(format!("Failed to read '{}': {e}", path.display())))?;
            *path = copy;
            held.push(Arc::new(fd));
        }
        let mut open = self.open_options(&access);
        open.keep_open = held;
        if !rota_bundle::bundle::is_remote(location) {
            let path = rota_bundle::bundle::local_path(location).map_err(|e| RaucError::Code30(e.to_string()))?;
            let file = caller
                .open(&path)
                .map_err(|e| RaucError::Code30(format!("Failed to open bundle '{}': {e}", path.display())))?;
            open.opened = Some(Arc::new(file));
        }
        Ok(open)
    }
}

/// Retries of a failed request while a caller waits for an inspection: an
/// unreachable server is given up on within seconds (pauses of 1 and 2 s),
/// so the caller hears why before its D-Bus call times out (25 s by
/// default), not after. Installations keep the configured retries.
const INSPECT_RETRIES: u32 = 2;

/// Opens and verifies `source` for a caller with `args` (the bundle-access
/// keys of `InspectBundle`) on a blocking thread: what `info` shows, and the
/// exact manifest text.
pub async fn open_bundle(
    service: &Arc<Service>,
    source: String,
    args: HashMap<String, OwnedVariant>,
    caller: Caller,
) -> Result<(rota_bundle::info::BundleInfo, String), RaucError> {
    check_location(&source)?;
    installer::check_keys(&args, installer::INSPECT_KEYS)?;
    let access = access_from_args(&args)?;
    let service = service.clone();
    tokio::task::spawn_blocking(move || {
        let location = rota_bundle::cli::commands::location(&source);
        let mut open = service.caller_open_options(&location, &access, &caller)?;
        open.http.retries = open.http.retries.min(INSPECT_RETRIES);
        let bundle =
            rota_bundle::bundle::Bundle::open(&location, &open).map_err(|e| RaucError::Code30(e.to_string()))?;
        let text = String::from_utf8_lossy(bundle.manifest_bytes()).into_owned();
        Ok((rota_bundle::info::BundleInfo::of(&bundle), text))
    })
    .await
    .map_err(|e| RaucError::Code30(format!("Internal error: {e}")))?
}

/// Whether the service uses the session bus (`DBUS_STARTER_BUS_TYPE=session`).
pub fn use_session_bus() -> bool {
    std::env::var("DBUS_STARTER_BUS_TYPE").is_ok_and(|v| v == "session")
}

/// The addresses of the bus, as libdbus and GLib read them from
/// `DBUS_SESSION_BUS_ADDRESS` or `DBUS_SYSTEM_BUS_ADDRESS`: white space
/// around the value dropped (an address read from `dbus-daemon
/// --print-address` ends in a newline), `;`-separated alternatives in
/// order. Empty when the variable is not set: the usual place is used then.
pub fn bus_addresses(session: bool) -> Vec<String> {
    let var = if session { "DBUS_SESSION_BUS_ADDRESS" } else { "DBUS_SYSTEM_BUS_ADDRESS" };
    let value = std::env::var(var).unwrap_or_default();
    value.split(';').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect()
}

/// Builders for the bus, one per address in order ([`bus_addresses`]), or
/// zbus's own way to the bus when no address is set.
pub fn bus_builders(session: bool) -> Vec<zbus::connection::Builder<'static>> {
    let addresses = bus_addresses(session);
    if addresses.is_empty() {
        let b = if session { zbus::connection::Builder::session() } else { zbus::connection::Builder::system() };
        return vec![b];
    }
    addresses.into_iter().map(|a| zbus::connection::Builder::address(a.as_str())).collect()
}

/// A connection to the bus: the first of its addresses that answers.
pub async fn connect_bus(session: bool) -> zbus::Result<zbus::Connection> {
    let mut last = zbus::Error::Address("no bus address".into());
    for builder in bus_builders(session) {
        match builder.build().await {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Where the runtime links go (RAUC's test hook `RAUC_TEST_RUNTIME_DIRECTORY`,
/// or `ROTA_RUN_DIR`, moves them for tests).
pub(crate) fn run_dir() -> PathBuf {
    std::env::var_os("RAUC_TEST_RUNTIME_DIRECTORY")
        .or_else(|| std::env::var_os("ROTA_RUN_DIR"))
        .map_or_else(|| PathBuf::from(runtime::RUN_DIR), PathBuf::from)
}

/// `rota service`.
pub fn run(ctx: &Context) -> Result<(), CliError> {
    crate::polling::speedup()?;
    installer::tune_allocator();
    let system = crate::cli::setup(ctx)?;
    let service = Arc::new(Service {
        system,
        handler_args: ctx.args.value("handler-args").map(str::to_string),
        current: Default::default(),
        booted_marked_good: runtime::booted_marked_good(&run_dir()).into(),
        stopping: Default::default(),
    });
    if service.system.config.polling.is_some() && service.system.system_version().is_none() {
        return Err(fail("system version not provided via system-info handler".into()));
    }
    crate::artifacts::init(&service.system)?;
    release_left_mounts(&service.system);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError { message: format!("Failed to start the runtime: {e}"), code: 1 })?;
    rt.block_on(serve(service))
}

/// A service killed during an installation leaves the slot it was writing
/// mounted under the mount prefix (with its loop device), or a bundle view;
/// the next start releases them, as the next installation would — unless
/// another installation (`rota install` in direct mode) holds the slots.
fn release_left_mounts(system: &System) {
    if let Err(e) = system.lock_writable_slots() {
        tracing::info!("Leaving the mounts under the mount prefix alone: {e}");
    }
}

/// Once the name is ours: the boot event (a second instance that cannot
/// take the name logs nothing).
fn record_start(system: &System) {
    match runtime::current_boot_id() {
        Ok(id) => {
            if let Err(e) = runtime::record_boot(system, &id) {
                tracing::warn!("Failed to record the boot: {e}");
            }
        }
        Err(e) => tracing::warn!("{e}"),
    }
}

fn fail(message: String) -> CliError {
    CliError { message, code: 1 }
}

async fn serve(service: Arc<Service>) -> Result<(), CliError> {
    use futures_util::StreamExt;
    let session = use_session_bus();
    let bus = if session { "session" } else { "system" };
    let (jobs, queue) = tokio::sync::mpsc::unbounded_channel();
    // The runtime links exist before the name is visible, as in RAUC: a
    // client that sees the service also sees `slots/active`.
    if let Err(e) = runtime::create_links(&service.system, &run_dir()) {
        tracing::warn!("{e}");
    }
    let polling = service.system.config.polling.clone();
    // The first of the bus's addresses that answers.
    let mut last = zbus::Error::Address("no bus address".into());
    let mut connected = None;
    for mut builder in bus_builders(session) {
        if let Some(p) = &polling {
            builder = builder.serve_at(rota_dbus::OBJECT_PATH, poller::Poller::new(p));
        }
        let built = builder
            .name(rota_dbus::BUS_NAME)
            .allow_name_replacements(false)
            .replace_existing_names(false)
            .serve_at(rota_dbus::OBJECT_PATH, Installer::new(service.clone(), jobs.clone()))
            .serve_at(rota_dbus::OBJECT_PATH, control::Control::new(service.clone()))
            .build()
            .await;
        match built {
            Ok(c) => {
                connected = Some(c);
                break;
            }
            Err(zbus::Error::NameTaken) => {
                return Err(fail(format!("Failed to obtain name {} on {bus} bus", rota_dbus::BUS_NAME)));
            }
            Err(e) => last = e,
        }
    }
    drop(jobs);
    let conn = connected.ok_or_else(|| fail(format!("Failed to connect to the {bus} bus: {last}")))?;
    let iref = conn
        .object_server()
        .interface::<_, Installer>(rota_dbus::OBJECT_PATH)
        .await
        .map_err(|e| fail(format!("Failed to set up the service: {e}")))?;
    record_start(&service.system);
    tracing::info!("Service ready: {} on the {bus} bus", rota_dbus::BUS_NAME);
    let details = conn
        .object_server()
        .interface::<_, control::Control>(rota_dbus::OBJECT_PATH)
        .await
        .map_err(|e| fail(format!("Failed to set up the service: {e}")))?;
    tokio::spawn(installer::worker(service.clone(), iref.clone(), details, queue));
    if let Some(p) = polling {
        let pref = conn
            .object_server()
            .interface::<_, poller::Poller>(rota_dbus::OBJECT_PATH)
            .await
            .map_err(|e| fail(format!("Failed to set up the service: {e}")))?;
        tracing::info!("Polling {} every {} s", rota_bundle::source::http::shown_url(&p.url), p.interval_sec);
        tokio::spawn(poller::run(service.clone(), p, pref, iref.clone()));
    }
    if let Some(ecu) = service.system.config.ecu.clone() {
        crate::ecu::start(service.clone(), &conn, iref.clone(), ecu)
            .await
            .map_err(|e| fail(format!("Failed to set up the ECU interface: {e}")))?;
    }
    if let Some(path) = service.system.config.autoinstall.clone().filter(|p| p.exists()) {
        let location = path.to_string_lossy().into_owned();
        tracing::info!("Installing {location} (autoinstall)");
        let i = iref.get().await;
        if let Err(e) = i.autoinstall(location, iref.signal_emitter()).await {
            tracing::warn!("Autoinstall failed to start: {e}");
        }
    }
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.map_err(|e| fail(format!("D-Bus error: {e}")))?;
    let mut lost = dbus.receive_name_lost().await.map_err(|e| fail(format!("D-Bus error: {e}")))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| fail(format!("Failed to handle SIGTERM: {e}")))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| fail(format!("Failed to handle SIGINT: {e}")))?;
    let lost_name = |signal: Option<zbus::fdo::NameLost>| match signal {
        None => Some(fail("Lost the connection to the bus".into())),
        Some(s) if s.args().is_ok_and(|a| a.name() == rota_dbus::BUS_NAME) => {
            Some(fail(format!("Lost name {} on {bus} bus", rota_dbus::BUS_NAME)))
        }
        Some(_) => None,
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            signal = lost.next() => if let Some(e) = lost_name(signal) { return Err(e) },
        }
    }
    // A running installation is cancelled unless it is past its point of no
    // return; either way the name stays ours until its Completed went out.
    service.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut told = false;
    while iref.get().await.is_installing() {
        let current = service.current.lock().expect("not poisoned").clone();
        if let Some(control) = current.filter(|_| !told) {
            told = true;
            match control.cancel() {
                Ok(()) => tracing::info!("Stopping: the running installation is cancelled"),
                Err(_) => tracing::info!("Stopping once the running installation, past its point of no return, ends"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            signal = lost.next() => if let Some(e) = lost_name(signal) { return Err(e) },
        }
    }
    tracing::info!("Service stopped");
    Ok(())
}
