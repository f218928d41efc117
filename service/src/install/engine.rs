//! The install sequence (spec §6.4–6.5).

use super::adaptive;
use super::archive;
use super::bootregion;
use super::casync::{self, StoreSetup};
use super::control::InstallControl;
use super::emmc;
use super::flash;
use super::hooks::{self, SlotHook, SlotHooks};
use super::plan::{self, Method, Plan, check_writable};
use super::progress::{Progress, ProgressSink};
use super::tree;
use super::write;
use crate::artifacts;
use crate::bundleview::BundleView;
use crate::error::{Error, Result, failed};
use crate::eventlog::{self, Event, ids};
use crate::mounts;
use crate::status::{SlotStatus, now_timestamp};
use crate::system::System;
use rota_bundle::bundle::{Bundle, OpenOptions, SignatureStep};
use rota_bundle::manifest::{BundleFormat, Image, Manifest};
use rota_bundle::squashfs::BundleFs;
use std::path::Path;

/// What the caller asks for.
#[derive(Default)]
pub struct InstallArgs {
    /// Bundle path or URL.
    pub location: String,
    /// How to open and verify the bundle.
    pub open: OpenOptions,
    /// Skip the compatible check.
    pub ignore_compatible: bool,
    /// Skip `min-bundle-version`.
    pub ignore_version_limit: bool,
    /// Transaction id (random when `None`).
    pub transaction_id: Option<String>,
    /// Refuse bundles whose manifest hash differs.
    pub require_manifest_hash: Option<String>,
    /// Extra arguments for the full custom handler (shell words, `--handler-args`).
    pub handler_args: Option<String>,
    /// Leave the written slots as they are, activating nothing (a system
    /// update's prepare step; its main switches later).
    pub no_activate: bool,
    /// Lets another thread cancel the installation before activation.
    pub control: std::sync::Arc<InstallControl>,
}

/// The mounted bundle as hooks and handlers see it.
struct MountedBundle {
    view: BundleView,
    /// `RAUC_BUNDLE_SPKI_HASHES`.
    spki_hashes: String,
}

impl MountedBundle {
    fn dir(&self) -> &Path {
        self.view.path()
    }
}

/// Splits `[handler] args` and `--handler-args` into words.
fn handler_argv(manifest: &Manifest, extra: Option<&str>) -> Result<Vec<String>> {
    let mut argv = Vec::new();
    for words in [manifest.handler.args.as_deref(), extra].into_iter().flatten() {
        argv.extend(
            shell_words::split(words)
                .map_err(|e| Error::Failed(format!("Invalid handler arguments '{words}': {e}")))?,
        );
    }
    Ok(argv)
}

/// What an install did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The transaction id.
    pub transaction_id: String,
    /// Slots written (names).
    pub written: Vec<String>,
    /// Artifacts written (names).
    pub artifacts: Vec<String>,
    /// Slot activated, if any.
    pub activated: Option<String>,
}

/// A fresh lowercase UUIDv4 from the kernel.
pub fn new_transaction_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{:032x}", std::time::UNIX_EPOCH.elapsed().map(|d| d.as_nanos()).unwrap_or(0)))
}

fn install_event(
    system: &System,
    txn: &str,
    manifest: Option<&Manifest>,
    hash: Option<&str>,
    message: String,
    id: &'static str,
) {
    let mut fields = vec![("TRANSACTION_ID", txn.to_string())];
    if id != ids::INSTALL_STARTED {
        fields.push(("BUNDLE_HASH", hash.unwrap_or("").to_string()));
        fields.push(("BUNDLE_DESCRIPTION", manifest.and_then(|m| m.update.description.clone()).unwrap_or_default()));
        fields.push(("BUNDLE_VERSION", manifest.and_then(|m| m.update.version.clone()).unwrap_or_default()));
    }
    eventlog::emit(&system.config.logs, &Event { kind: "install", message, message_id: Some(id), fields });
}

/// Runs one installation. Progress goes to `sink`; the result says which
/// slots were written and activated.
pub fn install(system: &mut System, args: &InstallArgs, sink: &mut dyn ProgressSink) -> Result<Outcome> {
    let txn = args.transaction_id.clone().unwrap_or_else(new_transaction_id);
    let short: String = txn.chars().take(8).collect();
    install_event(system, &txn, None, None, format!("Installation {short} started"), ids::INSTALL_STARTED);
    let mut progress = Progress::new(sink);
    progress.begin("Installing", 0, 10);
    let mut info: (Option<Manifest>, Option<String>) = (None, None);
    let result = run(system, args, &txn, &mut progress, &mut info).map_err(|e| {
        // Whatever stopped first (a write, a read from the server), a
        // cancelled installation says it was cancelled.
        let text = e.to_string();
        if args.control.is_cancelled() && !text.ends_with(super::control::CANCELLED_TEXT) {
            Error::Failed(super::control::CANCELLED_TEXT.into())
        } else {
            e
        }
    });
    match &result {
        Ok(_) => {
            progress.end(true);
            install_event(
                system,
                &txn,
                info.0.as_ref(),
                info.1.as_deref(),
                format!("Installation {short} succeeded"),
                ids::INSTALL_SUCCEEDED,
            );
        }
        Err(e) => {
            progress.fail_all();
            let (verb, id) = match e {
                Error::Rejected(_) => ("rejected", ids::INSTALL_REJECTED),
                _ => ("failed", ids::INSTALL_FAILED),
            };
            install_event(
                system,
                &txn,
                info.0.as_ref(),
                info.1.as_deref(),
                format!("Installation {short} {verb}: {e}"),
                id,
            );
        }
    }
    result
}

/// Logs a `writeslot` event (spec §11.2).
fn writeslot_event(system: &System, message: String) {
    eventlog::emit(&system.config.logs, &Event { kind: "writeslot", message, message_id: None, fields: vec![] });
}

/// Runs `f` as a leaf step of weight 1; a failure leaves the step open for `fail_all`.
fn step<T>(p: &mut Progress<'_>, text: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    p.begin(text, 1, 0);
    let r = f();
    if r.is_ok() {
        p.end(true);
    }
    r
}

fn run(
    system: &mut System,
    args: &InstallArgs,
    txn: &str,
    p: &mut Progress<'_>,
    info: &mut (Option<Manifest>, Option<String>),
) -> Result<Outcome> {
    let control = &*args.control;
    p.phase("checking");
    // The slots this installation may write stay locked until it ends.
    let _locks = step(p, "Determining slot states", || {
        let locks = system.lock_writable_slots()?;
        system.refresh_mounts();
        Ok(locks)
    })?;
    control.check()?;
    p.begin("Checking bundle", 1, 1);
    // The first request also names this installation, when configured.
    let mut open = args.open.clone();
    // Every wait for the server ends when the installation is cancelled.
    let cancelled = args.control.clone();
    open.http.cancel =
        Some(rota_bundle::source::http::CancelCheck(std::sync::Arc::new(move || cancelled.is_cancelled())));
    let send = &system.config.streaming.send_headers;
    if send.iter().any(|h| h == "transaction-id") {
        open.http.info_headers = rota_bundle::hostconfig::automatic_headers(send, &system.header_facts(Some(txn)));
    }
    // Reaching the server and reading the signature belong to "Checking
    // bundle"; its "Verifying signature" step begins once the signature is
    // in hand (EVerest tells DownloadFailed from InvalidSignature by this).
    let bundle = Bundle::open_with_steps(&args.location, &open, &mut |s| match s {
        SignatureStep::Begin => p.begin("Verifying signature", 1, 0),
        SignatureStep::Passed => p.end(true),
    })?;
    if let Some(expected) = &args.require_manifest_hash {
        if bundle.format() == BundleFormat::Plain {
            return failed("Refusing to install plain bundle when using require-manifest-hash");
        }
        let got = bundle.manifest_hash();
        if &got != expected {
            return failed(format!("Refusing to install bundle with unexpected hash (expected {expected}, got {got})"));
        }
    }
    if bundle.format() == BundleFormat::Crypt && !bundle.was_encrypted() {
        return failed("Refusing to install unencrypted crypt bundles");
    }
    p.end(true);
    let store = StoreSetup::new(system, &args.location, open.http.clone());
    let manifest = bundle.manifest().clone();
    let manifest_hash = bundle.manifest_hash();
    *info = (Some(manifest.clone()), Some(manifest_hash.clone()));
    // Hooks, handlers and `flashcp` (NOR slots) see the bundle mounted
    // (through the verified view).
    // Only the images of the system's variant count.
    let nor_target = manifest.select_images(system.variant()).unwrap_or_default().iter().any(|i| {
        system.slots.iter().any(|s| s.config.class == i.slotclass && s.config.slot_type == crate::config::SlotType::Nor)
    });
    let needs_mount = system.config.handlers.pre_install.is_some()
        || system.config.handlers.post_install.is_some()
        || manifest.hooks.filename.is_some()
        || manifest.handler.filename.is_some()
        || nor_target;
    let (fs, mounted) = step(p, "Checking manifest contents", || {
        bundle.check_manifest_contents()?;
        let fs = bundle.filesystem().map_err(|e| Error::Failed(format!("Failed mounting bundle: {e}")))?;
        let mounted = if needs_mount {
            let dir = system.config.system.mount_prefix.join("bundle");
            let view = BundleView::mount(bundle.payload()?, &dir)?;
            Some(MountedBundle { view, spki_hashes: bundle.signature().spki_hashes() })
        } else {
            None
        };
        Ok((fs, mounted))
    })?;
    control.check()?;
    let group = step(p, "Determining target install group", || Ok(plan::target_group(system)))?;
    let env = mounted.as_ref().map(|m| hooks::handler_env(system, &manifest, m.dir(), txn, &group)).unwrap_or_default();
    if let Some(pre) = &system.config.handlers.pre_install {
        hooks::run_handler(pre, &[], &env, &mut |m| p.message(m))
            .map_err(|e| Error::Failed(format!("Pre-install handler error: {e}")))?;
    }
    let install_check = manifest.hooks.hooks.iter().any(|h| h == "install-check");
    let check_hook = mounted.as_ref().filter(|_| install_check).and_then(|m| hooks::hook_program(&manifest, m.dir()));
    if let Some(program) = check_hook {
        hooks::install_check(system, &manifest, &program)?;
    } else if !args.ignore_compatible {
        manifest.check_compatible(&system.config.system.compatible).map_err(Error::Rejected)?;
    }
    if !args.ignore_version_limit
        && let Some(min) = &system.config.system.min_bundle_version
    {
        manifest.check_min_bundle_version(min).map_err(Error::Failed)?;
    }
    control.check()?;
    let outcome = match (&manifest.handler.filename, &mounted) {
        (Some(_), Some(_)) if args.no_activate => {
            return failed(
                "A bundle with its own update handler activates on its own and cannot be prepared for a system update",
            );
        }
        (Some(handler), Some(m)) => {
            let argv = handler_argv(&manifest, args.handler_args.as_deref())?;
            // The handler writes and activates on its own: from here on Cancel is refused.
            control.hand_over()?;
            p.begin("Launching update handler", 6, 0);
            hooks::run_handler(&m.dir().join(handler), &argv, &env, &mut |msg| p.message(msg))
                .map_err(|e| Error::Failed(format!("Installation error: Handler error: {e}")))?;
            p.end(true);
            Outcome { transaction_id: txn.to_string(), written: Vec::new(), artifacts: Vec::new(), activated: None }
        }
        _ => {
            let src = Sources { fs: &fs, mounted: mounted.as_ref(), store: &store };
            default_handler(system, &src, &manifest, &manifest_hash, &group, txn, control, !args.no_activate, p)
                .map_err(|e| e.context("Installation error"))?
        }
    };
    bundle.log_http_stats();
    if let Some(post) = &system.config.handlers.post_install {
        hooks::run_handler(post, &[], &env, &mut |m| p.message(m))
            .map_err(|e| Error::Failed(format!("Post-install handler error: {e}")))?;
    }
    drop(mounted);
    Ok(outcome)
}

/// A casync image opened for writing, if the image is one.
enum Casync {
    Blob(casync::BlobImage),
    Archive(casync::ArchiveImage),
    None,
}

/// Where images come from: the bundle's files, the bundle mounted for
/// hooks (when it is), the chunk store of casync images.
struct Sources<'a> {
    fs: &'a BundleFs,
    mounted: Option<&'a MountedBundle>,
    store: &'a StoreSetup,
}

#[allow(clippy::too_many_arguments)]
fn default_handler(
    system: &System,
    src: &Sources<'_>,
    manifest: &Manifest,
    manifest_hash: &str,
    group: &[usize],
    txn: &str,
    control: &InstallControl,
    activate: bool,
    p: &mut Progress<'_>,
) -> Result<Outcome> {
    let fs = src.fs;
    let images = manifest.select_images(system.variant()).map_err(Error::Failed)?;
    let plans = plan::plans(system, group, &images)?;
    artifacts::init(system)?;
    let artifact_plans = plan::artifact_plans(system, manifest)?;
    if plans.is_empty() && artifact_plans.is_empty() {
        return failed("No installable image found");
    }
    // Pre-checks for every plan before anything is written.
    // An artifact whose converted outputs are in the bundle may lack its
    // input (converters drop it unless told to keep it).
    let check_source = |image: &Image| match image.filename.as_deref() {
        Some(f) if fs.entry(f).is_none() && (image.artifact.is_none() || image.converted.is_empty()) => {
            failed(format!("Source image '{f}' not found in bundle"))
        }
        _ => Ok(()),
    };
    for ap in &artifact_plans {
        check_source(ap.image)?;
    }
    for pl in &plans {
        let slot = &system.slots[pl.slot];
        check_source(pl.image)?;
        if !slot.config.device.exists() {
            return failed(format!(
                "Destination device '{}' for slot '{}' not found",
                slot.config.device.display(),
                slot.config.name
            ));
        }
        check_writable(system, pl.slot, pl.method == Method::Hook)?;
    }
    let boot_mark = plans
        .iter()
        .map(|pl| &system.slots[pl.slot])
        .find(|s| s.config.bootname.is_some() && s.config.parent.is_none());
    if let Some(s) = boot_mark {
        let b = s.config.bootname.as_deref().expect("has bootname");
        system
            .bootloader
            .set_state(b, false)
            .map_err(|e| Error::Failed(format!("Failed marking slot {} non-bootable (bad): {e}", s.config.name)))?;
    }
    p.begin("Updating slots", 6, 10 * (plans.len() + artifact_plans.len()) as u32);
    p.phase("writing");
    let mut written = Vec::new();
    for pl in &plans {
        control.check()?;
        update_slot(system, src, manifest, manifest_hash, pl, txn, control, p)?;
        written.push(system.slots[pl.slot].config.name.clone());
    }
    // Artifacts are staged next to the running system's, which keep being
    // used until the point of no return; what this install staged goes again
    // if it fails before that.
    let mut artifacts = Vec::new();
    let mut staged = Vec::new();
    let mut stage = || -> Result<()> {
        for ap in &artifact_plans {
            control.check()?;
            if stage_artifact(system, fs, ap, control, p)? {
                staged.push(ap);
            }
            artifacts.push(ap.image.artifact.clone().unwrap_or_default());
        }
        p.end(true);
        // The point of no return: from here on a cancel request is refused.
        control.commit()
    };
    if let Err(e) = stage() {
        for ap in &staged {
            let repo = &system.config.artifacts[ap.repo];
            let (name, digest) = (ap.image.artifact.as_deref().unwrap_or(""), ap.image.sha256.as_deref().unwrap_or(""));
            if let Err(d) = artifacts::discard(repo, name, digest) {
                tracing::warn!("{d}");
            }
        }
        return Err(e);
    }
    p.phase("activating");
    activate_artifacts(system, manifest, &artifact_plans)?;
    let mut activated = None;
    if let Some(s) = boot_mark
        && system.config.system.activate_installed
        && activate
    {
        let b = s.config.bootname.as_deref().expect("has bootname");
        system.bootloader.set_primary(b).map_err(|e| {
            Error::Failed(format!("Failed marking slot {} bootable (active/primary): {e}", s.config.name))
        })?;
        let mut st = system.load_status(s);
        st.activated_timestamp = Some(now_timestamp());
        st.activated_count += 1;
        system.save_status(s, &st)?;
        activated = Some(s.config.name.clone());
    }
    Ok(Outcome { transaction_id: txn.to_string(), written, artifacts, activated })
}

#[allow(clippy::too_many_arguments)]
fn update_slot(
    system: &System,
    sources: &Sources<'_>,
    manifest: &Manifest,
    manifest_hash: &str,
    pl: &Plan<'_>,
    txn: &str,
    control: &InstallControl,
    p: &mut Progress<'_>,
) -> Result<()> {
    let (fs, mounted) = (sources.fs, sources.mounted);
    let slot = &system.slots[pl.slot];
    let name = &slot.config.name;
    let check_text = match &slot.config.bootname {
        Some(b) => format!("Checking slot {name} ({b})"),
        None => format!("Checking slot {name}"),
    };
    let image = pl.image;
    let (previous, skip) = step(p, &check_text, || {
        if let Some(mp) = &slot.mount_point {
            return failed(format!("Slot '{}' still mounted at {}", slot.config.device.display(), mp.display()));
        }
        let previous = system.load_status(slot);
        let skip = !slot.config.install_same
            && previous.status.as_deref() == Some("ok")
            && previous.sha256.is_some()
            && previous.sha256 == image.sha256;
        if !skip && let Some(c) = system.central() {
            let pending = SlotStatus { status: Some("pending".into()), sha256: None, size: None, ..previous.clone() };
            c.update(&[(name, &pending)])?;
        }
        Ok((previous, skip))
    })?;
    let fresh = |status: &str| SlotStatus {
        bundle_compatible: Some(manifest.update.compatible.clone()),
        bundle_version: manifest.update.version.clone(),
        bundle_description: manifest.update.description.clone(),
        bundle_build: manifest.update.build.clone(),
        bundle_hash: Some(manifest_hash.to_string()),
        status: Some(status.to_string()),
        sha256: image.sha256.clone(),
        size: image.size,
        installed_transaction: Some(txn.to_string()),
        installed_timestamp: Some(now_timestamp()),
        installed_count: previous.installed_count + 1,
        activated_timestamp: None,
        activated_count: previous.activated_count,
    };
    if skip {
        p.begin("Copying image skipped", 9, 0);
        p.end(true);
        return system.save_status(slot, &fresh("ok"));
    }
    p.begin(&format!("Copying image to {name}"), 9, 0);
    writeslot_event(system, format!("Updating slot {name}"));
    let size = image.size.unwrap_or(0);
    let total = size.max(1) as f64;
    let slot_hooks = mounted.and_then(|m| SlotHooks::new(system, manifest, m.dir(), &m.spki_hashes, slot, image));
    let r = if pl.method == Method::TreeToFs {
        let job = tree::Job {
            system,
            slot: &slot.config,
            image,
            fs,
            control,
            hooks: slot_hooks.as_ref(),
            installed: previous.sha256.as_deref(),
        };
        tree::install(&job, &mut |at| {
            p.fraction(at.bytes_done as f64 / at.bytes_total.max(1) as f64);
            p.bytes(name, at.bytes_done, at.bytes_total);
            p.files(name, at.files_done, at.files_total);
        })
        .map(|stats| {
            p.message(&stats.summary(name));
            p.counts(name, &stats.counts());
        })
    } else {
        let mut on_bytes = |n: u64| {
            p.fraction(n as f64 / total);
            p.bytes(name, n, size);
        };
        let opened = match pl.image.filename.as_deref() {
            Some(f) if casync::is_blob_index(image) => {
                casync::BlobImage::open(system, fs, f, pl.slot, previous.sha256.as_deref(), sources.store)
                    .map(Casync::Blob)
            }
            Some(f) if casync::is_archive_index(image) => {
                casync::ArchiveImage::open(system, fs, f, pl.slot, sources.store).map(Casync::Archive)
            }
            _ => Ok(Casync::None),
        };
        let written = opened.and_then(|opened| {
            let src = match (&opened, pl.image.filename.as_deref()) {
                (Casync::Blob(b), _) => Some(write::ImageSource::Casync(b)),
                (Casync::Archive(a), _) => Some(write::ImageSource::CasyncArchive(a)),
                (Casync::None, f) => f.map(|f| write::ImageSource::Bundle(fs, f)),
            };
            let guarded = src.as_ref().map(|s| write::ImageSource::Guarded(s, control));
            let before = previous.sha256.as_deref();
            let dir = mounted.map(|m| m.dir());
            write_image(system, guarded.as_ref(), pl, dir, slot_hooks.as_ref(), before, &mut on_bytes)?;
            if let (Casync::Blob(b), Some(sha)) = (&opened, image.sha256.as_deref()) {
                b.remember(system, sha);
            }
            Ok(match &opened {
                Casync::Blob(b) => Some(b.summary()),
                Casync::Archive(a) => Some(a.summary()),
                Casync::None => None,
            })
        });
        written.map(|summary| {
            if let Some(s) = summary {
                p.message(&s);
            }
        })
    };
    if let Err(e) = r {
        if let Err(se) = system.save_status(slot, &fresh("failed")) {
            tracing::warn!("Failed to save status of {name}: {se}");
        }
        return Err(Error::Failed(format!("Failed updating slot {name}: {e}")));
    }
    system.save_status(slot, &fresh("ok"))?;
    p.end(true);
    Ok(())
}

/// Stages one artifact: its instance written next to the active ones (or
/// an installed one reused); returns whether a new instance was written.
/// Nothing the running system uses changes.
fn stage_artifact(
    system: &System,
    fs: &BundleFs,
    ap: &plan::ArtifactPlan<'_>,
    control: &InstallControl,
    p: &mut Progress<'_>,
) -> Result<bool> {
    let repo = &system.config.artifacts[ap.repo];
    let image = ap.image;
    let name = image.artifact.as_deref().expect("artifact plan");
    let digest = image.sha256.as_deref().unwrap_or("");
    let reuse = step(p, &format!("Checking repo '{}'", repo.name), || Ok(artifacts::has_instance(repo, name, digest)))?;
    writeslot_event(system, format!("Updating artifact '{name}' in repo '{}'", repo.name));
    let text = if reuse { "Reusing artifact image in repo" } else { "Copying artifact image to repo" };
    p.begin(&format!("{text} '{}'", repo.name), 9, 0);
    if !reuse {
        let size = image.size.unwrap_or(0);
        let total = size.max(1) as f64;
        let trees = repo.repo_type == crate::config::ArtifactRepoType::Trees;
        let extracted = image.converted_for("tar-extract").filter(|_| trees);
        let f = image.converted_for("keep").or(image.filename.as_deref()).unwrap_or("");
        let r = match extracted {
            Some(dir) => artifacts::install_extracted(repo, name, digest, fs, dir),
            None if fs.entry(f).is_none() => failed(format!(
                "Image '{}/{name}' has unsupported format for repo type '{}'",
                image.slotclass,
                repo.repo_type.as_str()
            )),
            None => {
                let src = write::ImageSource::Bundle(fs, f);
                artifacts::install(repo, name, digest, &write::ImageSource::Guarded(&src, control), &mut |n| {
                    p.fraction(n as f64 / total);
                    p.bytes(&repo.name, n, size);
                })
            }
        };
        r.map_err(|e| e.context(&format!("Failed updating artifact '{name}' in repo '{}'", repo.name)))?;
    }
    p.end(true);
    Ok(!reuse)
}

/// Past the point of no return: the bundle's artifacts become the active
/// instances of their repos (links switched atomically), the artifacts of
/// those repos the bundle no longer ships are deactivated, and instances
/// nothing points to are removed.
fn activate_artifacts(system: &System, manifest: &Manifest, plans: &[plan::ArtifactPlan<'_>]) -> Result<()> {
    for (index, repo) in system.config.artifacts.iter().enumerate() {
        if !plans.iter().any(|ap| ap.repo == index) {
            continue;
        }
        let keep: Vec<&str> =
            manifest.images.iter().filter(|i| i.slotclass == repo.name).filter_map(|i| i.artifact.as_deref()).collect();
        artifacts::deactivate_others(repo, &keep)?;
        for ap in plans.iter().filter(|ap| ap.repo == index) {
            let name = ap.image.artifact.as_deref().expect("artifact plan");
            artifacts::activate(repo, name, ap.image.sha256.as_deref().unwrap_or(""))?;
        }
    }
    for repo in &system.config.artifacts {
        artifacts::prune(repo)?;
    }
    Ok(())
}

/// Writes `pl`'s image from `src` (`None` only for `emptyfs` and install
/// hooks) into its slot with the plan's method, running the image's slot
/// hooks around it (spec §4.2); shared by installs and `write-slot` (no
/// hooks). `bundle_dir` is where the bundle is mounted, if it is;
/// `installed` the digest of the image the slot held before.
pub fn write_image(
    system: &System,
    src: Option<&write::ImageSource<'_>>,
    pl: &Plan<'_>,
    bundle_dir: Option<&Path>,
    hooks: Option<&SlotHooks>,
    installed: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    use crate::config::SlotType;
    let slot = &system.slots[pl.slot].config;
    let image = pl.image;
    let slot_dir = system.config.system.mount_prefix.join(&slot.name);
    let run = |h: SlotHook, mount_point: Option<&Path>| hooks.map_or(Ok(()), |k| k.run(h, mount_point));
    // Hooks that run with the slot mounted are looked at first: no mount for nothing.
    let enabled = |h: SlotHook| hooks.is_some_and(|k| k.has(h));
    let unmounted = |h: SlotHook| run(h, None);
    let mounted = |h: SlotHook| {
        if enabled(h) { mounts::with_slot_mounted(slot, &slot_dir, |dir| run(h, Some(dir))) } else { Ok(()) }
    };
    let job = |src| write::Job { slot, src, file: src.local_path(bundle_dir), image, hooks };
    match (pl.method, src) {
        (Method::Copy | Method::ImageToFs | Method::Flash(_), Some(src)) => {
            // Hooks see the filesystem (old before, new after) where the slot holds one.
            let fs = match pl.method {
                Method::ImageToFs => true,
                Method::Flash(_) => slot.slot_type == SlotType::Ubifs,
                _ => false,
            };
            if fs { mounted(SlotHook::PreInstall) } else { unmounted(SlotHook::PreInstall) }?;
            if let Method::Flash(kind) = pl.method {
                flash::write(kind, &job(src), progress)?;
            } else {
                let adaptive = matches!(pl.method, Method::Copy | Method::ImageToFs)
                    && adaptive::install(system, slot, image, src, installed, progress);
                if !adaptive {
                    let (c, size, sha) = (image.compression(), image.size, image.sha256.as_deref());
                    write::copy_image(src, c, &slot.device, size, sha, progress)?;
                }
            }
            if fs && slot.resize && slot.slot_type == SlotType::Ext4 {
                crate::tools::run("resize2fs", &[&slot.device])?;
            }
            if fs { mounted(SlotHook::PostInstall) } else { unmounted(SlotHook::PostInstall) }
        }
        (Method::ArchiveToFs, src) => {
            // On flash filesystems the pre hook sees the old filesystem (spec §4.2).
            if matches!(slot.slot_type, SlotType::Ubifs | SlotType::Jffs2) {
                mounted(SlotHook::PreInstall)
            } else {
                unmounted(SlotHook::PreInstall)
            }?;
            let run_post = |dir: &Path| run(SlotHook::PostInstall, Some(dir));
            let post: archive::PostHook<'_> = if enabled(SlotHook::PostInstall) { Some(&run_post) } else { None };
            // A directory index's chunks were each checked against their
            // IDs; the manifest's digest is that of the archive it was made from.
            let verify = |bytes: u64, sha: &str| match src {
                Some(src) if src.casync_archive().is_none() => {
                    write::check_manifest(src, bytes, sha, image.size, image.sha256.as_deref())
                }
                _ => Ok(()),
            };
            archive::install_archive(src, slot, &slot_dir, &verify, post, progress)
        }
        (Method::BootRegion(kind), Some(src)) => bootregion::write(kind, &job(src), progress),
        (Method::Emmc, Some(src)) => emmc::write(&job(src), progress),
        (Method::Copy | Method::ImageToFs | Method::Flash(_) | Method::BootRegion(_) | Method::Emmc, None) => {
            failed("No image file to write")
        }
        (Method::TreeToFs, _) => failed("Tree images are installed from a bundle, not written to a slot on their own"),
        (Method::Hook, _) => match hooks {
            Some(h) => h.run(SlotHook::Install, system.slots[pl.slot].mount_point.as_deref()),
            None => failed("The image is written by an install hook, which needs its bundle"),
        },
    }
}
