//! Tree images into filesystem slots: file-level delta installs.
//!
//! The bundle carries the tree's file index (the image itself, so its
//! digest is in the signed manifest) and each distinct file content once.
//! The target slot is updated in place: what is already right stays, every
//! other file's content comes from the first place that has it — the
//! target's own earlier files, the staging directory an interrupted run
//! left behind, the local cache, the booted slot of the same class — and
//! only what no local copy holds is read from the bundle (so a streamed install fetches the
//! squashfs blocks of changed files only). Every content is checked
//! against its SHA-256 from the index before it is used, and every file
//! written is read back from the medium once the filesystem is synced;
//! metadata is applied from the index. A target whose filesystem fails its check or
//! cannot be cleaned up is formatted and filled from scratch.
//!
//! FAT slots are reached through mtools instead of a mount (module `fat`).
//!
//! The installed index is kept with the slot status, as
//! `slot.<name>/tree-<sha256>.index` under the `data-directory` (or beside
//! a central status file), or as `slot.tree-index` in the root of an ext4
//! slot that holds its own status (`statusfile=per-slot`), so the next
//! update finds files by content in that slot without scanning it.

mod cache;
mod content;
mod fat;
mod index;
mod persist;
mod place;

use super::control::InstallControl;
use super::hooks::{SlotHook, SlotHooks};
use crate::config::{SlotConfig, SlotType, StatusMode};
use crate::confined::{Root, is};
use crate::error::{Error, Result, failed};
use crate::mounts;
use crate::system::{SlotState, System};
use index::{Installed, Plan};
use rota_bundle::manifest::Image;
use rota_bundle::squashfs::BundleFs;
use rota_bundle::squashfs::data::BlockMap;
use rota_bundle::tree::Kind;
use rustix::fs::FileType;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The directory in the target's root where contents are put together
/// before they move into place; kept by an interrupted install for the next.
/// It comes from the old slot content like everything else there: used
/// only as a plain directory of the slot's file system, its entries only as
/// checked regular files.
const STAGING: &str = ".rota-tree-staging";
/// The installed index of an ext4 slot whose status lives inside it
/// (`statusfile=per-slot`), beside `slot.raucs` in its root.
const IN_SLOT_INDEX: &str = "slot.tree-index";

/// One tree install.
pub struct Job<'a> {
    /// The system (slots, mount prefix, data directory).
    pub system: &'a System,
    /// The target slot.
    pub slot: &'a SlotConfig,
    /// The tree image (its file is the index).
    pub image: &'a Image,
    /// The bundle's filesystem.
    pub fs: &'a BundleFs,
    /// Cancellation.
    pub control: &'a InstallControl,
    /// The image's slot hooks, if any: pre-install sees the old tree, post-install the new one.
    pub hooks: Option<&'a SlotHooks>,
    /// The image digest the target's status named before this install.
    pub installed: Option<&'a str>,
}

/// How far a tree install is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progressed {
    /// Content bytes in place or staged.
    pub bytes_done: u64,
    /// Content bytes of the tree (each hard-linked file once).
    pub bytes_total: u64,
    /// Regular files (each hard-link group once) resolved.
    pub files_done: u64,
    /// Regular files of the tree.
    pub files_total: u64,
}

/// What a tree install did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Regular files of the tree (each hard-link group once).
    pub files: u64,
    /// Files already right in the target.
    pub reused: u64,
    /// Files copied from a local source (booted slot, the target's other files, an earlier run).
    pub copied: u64,
    /// Files read from the bundle.
    pub fetched: u64,
    /// Bytes of reused files.
    pub bytes_reused: u64,
    /// Bytes copied locally.
    pub bytes_copied: u64,
    /// File bytes read from the bundle.
    pub bytes_fetched: u64,
    /// Squashfs bytes of those files (what a stream fetches for them).
    pub stored_fetched: u64,
}

impl Stats {
    /// The summary line of an install.
    pub fn summary(&self, slot: &str) -> String {
        format!(
            "Tree update of {slot}: {} files; {} reused ({} bytes), {} copied locally ({} bytes), {} fetched from the bundle ({} bytes, {} stored)",
            self.files,
            self.reused,
            self.bytes_reused,
            self.copied,
            self.bytes_copied,
            self.fetched,
            self.bytes_fetched,
            self.stored_fetched
        )
    }

    /// The numbers as (name, value) pairs for the structured progress interface.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("files-reused", self.reused),
            ("files-copied", self.copied),
            ("files-fetched", self.fetched),
            ("bytes-reused", self.bytes_reused),
            ("bytes-copied", self.bytes_copied),
            ("bytes-fetched", self.bytes_fetched),
            ("bytes-fetched-stored", self.stored_fetched),
        ]
    }
}

/// Where a slot's kept index lives when its status is kept outside the
/// slot: under the data directory, or beside the central status file.
fn kept_dir(system: &System, slot: &str) -> Option<PathBuf> {
    let dir = match (&system.config.system.data_directory, &system.config.system.status) {
        (Some(d), _) => d.clone(),
        (None, StatusMode::Central(file)) => file.parent()?.to_path_buf(),
        (None, StatusMode::PerSlot) => return None,
    };
    Some(dir.join(format!("slot.{slot}")))
}

/// Whether `slot`'s index is kept inside it (its status is, and it is ext4).
fn kept_in_slot(system: &System, slot: &SlotConfig) -> bool {
    kept_dir(system, &slot.name).is_none() && slot.slot_type == SlotType::Ext4
}

/// The files of the index kept in the slot mounted at `root`, if it is the
/// one of the installed tree `sha` (its digest is checked: the file is the
/// signed index the tree was installed from), whose content `plan` has.
fn in_slot_contents(root: &Root, sha: Option<&str>, plan: &Plan) -> Installed {
    let Some(sha) = sha else { return Installed::default() };
    let read = || -> std::result::Result<Installed, String> {
        let mut file = match root.open_file(IN_SLOT_INDEX.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Installed::default()),
            r => r.map_err(|e| e.to_string())?,
        };
        let (_, digest) = rota_bundle::tree::hash_reader(&mut file).map_err(|e| e.to_string())?;
        if digest != sha {
            return Ok(Installed::default());
        }
        file.rewind().map_err(|e| e.to_string())?;
        Installed::read_from(file, plan)
    };
    read().unwrap_or_else(|e| {
        tracing::warn!("Ignoring the file index kept in {}: {e}", root.path().display());
        Installed::default()
    })
}

fn kept_index_path(dir: &Path, sha: &str) -> PathBuf {
    dir.join(format!("tree-{sha}.index"))
}

/// The files of the kept index of `slot`'s installed tree `sha` (the
/// image digest its status names) whose content `plan` has.
fn kept_contents(system: &System, slot: &SlotConfig, sha: Option<&str>, plan: &Plan) -> Installed {
    let (Some(dir), Some(sha)) = (kept_dir(system, &slot.name), sha) else { return Installed::default() };
    let path = kept_index_path(&dir, sha);
    if !path.exists() {
        return Installed::default();
    }
    Installed::read(&path, plan).unwrap_or_else(|e| {
        tracing::warn!("Ignoring the kept file index of {}: {e}", slot.name);
        Installed::default()
    })
}

/// Lets the bundle's source read ahead again when the tree install ends.
struct Restore<'a>(&'a BundleFs);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        self.0.advise_scattered(false);
    }
}

/// A mount made for the install, undone when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = mounts::umount(&self.0) {
            tracing::warn!("{e}");
        }
    }
}

/// The booted slot of the target's class, as a source of contents.
struct Booted {
    /// Its files (none for a FAT slot read through mtools); dropped before the mount.
    root: Option<Root>,
    _mounted: Option<Mounted>,
    /// The device of a FAT slot that could not be mounted (read through mtools instead).
    fat: Option<PathBuf>,
    /// Where its files are, from the slot's kept index.
    installed: Installed,
}

impl Booted {
    fn open(system: &System, target: &SlotConfig, plan: &Plan) -> Option<Booted> {
        let s = system.slots.iter().find(|s| s.config.class == target.class && s.state == SlotState::Booted)?;
        let (root, mounted, fat) = match &s.mount_point {
            Some(mp) => (mp.clone(), None, None),
            None => {
                let dir = system.config.system.mount_prefix.join(&s.config.name);
                match mounts::mount_slot(&s.config, &dir, &["ro"]) {
                    Ok(()) => (dir.clone(), Some(Mounted(dir)), None),
                    // A kernel without vfat: read the files through mtools.
                    Err(_) if s.config.slot_type == SlotType::Vfat => (dir, None, Some(s.config.device.clone())),
                    Err(e) => {
                        tracing::warn!("Booted slot {} not used as a source: {e}", s.config.name);
                        return None;
                    }
                }
            }
        };
        let root = match fat {
            Some(_) => None,
            None => match Root::open(&root) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("Booted slot {} not used as a source: {}: {e}", s.config.name, root.display());
                    return None;
                }
            },
        };
        let sha = system.load_status(s).sha256;
        let installed = match &root {
            Some(r) if kept_in_slot(system, &s.config) => in_slot_contents(r, sha.as_deref(), plan),
            _ => kept_contents(system, &s.config, sha.as_deref(), plan),
        };
        Some(Booted { root, _mounted: mounted, fat, installed })
    }
}

/// Checks the target's filesystem and mounts it at `dir`; formats it
/// first when the check fails or the mount does. Returns the mount and
/// whether the filesystem is new.
fn mount_target(slot: &SlotConfig, dir: &Path) -> Result<(Mounted, bool)> {
    let healthy = match slot.slot_type {
        // e2fsck -p: 0 clean, 1 and 2 repaired; anything else is not usable.
        SlotType::Ext4 => std::process::Command::new("e2fsck")
            .arg("-p")
            .arg(&slot.device)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| matches!(s.code(), Some(0..=2))),
        _ => true,
    };
    if healthy && mounts::mount_slot(slot, dir, &[]).is_ok() {
        return Ok((Mounted(dir.to_path_buf()), false));
    }
    tracing::info!("Slot {} holds no usable filesystem: formatting it", slot.name);
    Ok((format_and_mount(slot, dir)?, true))
}

/// Creates a new filesystem on the (unmounted) slot and mounts it at `dir`.
fn format_and_mount(slot: &SlotConfig, dir: &Path) -> Result<Mounted> {
    super::archive::mkfs(slot)?;
    mounts::mount_slot(slot, dir, &[])?;
    Ok(Mounted(dir.to_path_buf()))
}

/// Installs the tree image of `job` into its slot; `progress` hears how far it is.
pub fn install(job: &Job<'_>, progress: &mut dyn FnMut(Progressed)) -> Result<Stats> {
    let slot = job.slot;
    let name = job.image.filename.as_deref().unwrap_or_default();
    let sha = job.image.sha256.as_deref().unwrap_or_default();
    // The index: read from the bundle, checked against the manifest.
    let kept = kept_dir(job.system, &slot.name);
    let work = match &kept {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| Error::io("Failed to create", d, e))?;
            tempfile::Builder::new().prefix(".tree-").tempdir_in(d)
        }
        None => tempfile::Builder::new().prefix("rota-tree-").tempdir(),
    }
    .map_err(|e| Error::Failed(format!("Failed to create a work directory: {e}")))?;
    // Single files are read from here on, each needing just its own blocks.
    job.fs.advise_scattered(true);
    let _sequential_again = Restore(job.fs);
    let index_path = work.path().join("index");
    let (len, digest) = {
        let out = std::fs::File::create_new(&index_path).map_err(|e| Error::io("Failed to create", &index_path, e))?;
        let mut w = content::HashingWriter::new(out);
        job.fs.copy_file(name, &mut w)?;
        let (len, digest, _) = w.finish().map_err(|e| Error::io("Failed to write", &index_path, e))?;
        (len, digest)
    };
    super::write::check_manifest(
        &super::write::ImageSource::Bundle(job.fs, name),
        len,
        &digest,
        job.image.size,
        job.image.sha256.as_deref(),
    )?;
    let plan = Plan::read(&index_path, name, STAGING)?;
    let (contents, sums) = contents_and_sums(job.fs, name)?;
    let fat = slot.slot_type == SlotType::Vfat;
    // A tree that has a file of that name at its root keeps it, not the index.
    let in_slot = kept_in_slot(job.system, slot) && plan.lookup(IN_SLOT_INDEX.as_bytes()).is_none();
    if fat {
        fat::check_tree((0..plan.len()).map(|i| plan.entry(i)), name)?;
    }
    // What the target held, by path, when its index was kept.
    let mut earlier = kept_contents(job.system, slot, job.installed, &plan);
    let booted = Booted::open(job.system, slot, &plan);
    let cache = cache::Cache::open(job.system);
    let dir = job.system.config.system.mount_prefix.join(&slot.name);
    // The target's content changes from here on: its kept index no longer holds.
    let drop_kept_index = || kept.as_deref().map_or(Ok(()), remove_kept_indexes);
    let new_ctx = |root: Root, staging: Root| Ctx {
        control: job.control,
        fs: job.fs,
        name,
        plan: &plan,
        contents: &contents,
        sums: &sums,
        root,
        staging,
        booted: booted.as_ref(),
        cache: cache.as_ref(),
    };
    if fat {
        // The new objects are laid out locally and copied in, contents staged
        // locally (with a data directory where an interrupted install finds them again).
        let layout = work.path().join("layout");
        let staging = match &kept {
            Some(d) => d.join("tree-staging"),
            None => work.path().join("staging"),
        };
        for d in [&layout, &staging] {
            std::fs::create_dir_all(d).map_err(|e| Error::io("Failed to create", d, e))?;
        }
        let mut run = Run::new(job, new_ctx(open_root(&layout)?, open_root(&staging)?), progress);
        run_hook_mounted(job, SlotHook::PreInstall, &dir)?;
        run.install_fat(&earlier, drop_kept_index)?;
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io("Failed to remove", &staging, e))?;
        run_hook_mounted(job, SlotHook::PostInstall, &dir)?;
        return keep_index(&kept, &index_path, sha, run.stats);
    }
    let (mut mounted, fresh) = mount_target(slot, &dir)?;
    drop_kept_index()?;
    let root = open_root(&dir)?;
    if in_slot {
        earlier = in_slot_contents(&root, job.installed, &plan);
        place::remove(&root, IN_SLOT_INDEX.as_bytes())?;
    }
    if let Some(h) = job.hooks {
        h.run(SlotHook::PreInstall, Some(&dir))?;
    }
    let staging = open_staging(&root, &plan)?;
    let mut ctx = new_ctx(root, staging);
    if let Err(e) = ctx.clean(&earlier) {
        if fresh {
            return Err(e);
        }
        // A filesystem that cannot be cleaned up is started over.
        tracing::warn!("Formatting slot {} after: {e}", slot.name);
        drop(ctx);
        drop(mounted);
        mounted = format_and_mount(slot, &dir)?;
        let root = open_root(&dir)?;
        let staging = open_staging(&root, &plan)?;
        ctx = new_ctx(root, staging);
    }
    let mut run = Run::new(job, ctx, progress);
    let mut fill = || -> Result<()> {
        run.resolve()?;
        run.place()?;
        place::remove(&run.ctx.root, STAGING.as_bytes())?;
        run.persist()?;
        if in_slot {
            // Beside slot.raucs, which the status update writes next (before
            // the directory times are set, so the root keeps its own).
            let root = &run.ctx.root;
            let to = IN_SLOT_INDEX.as_bytes();
            let mut from = std::fs::File::open(&index_path).map_err(|e| Error::io("Failed to open", &index_path, e))?;
            let copied = std::io::copy(&mut from, &mut content::create(root, to)?);
            copied.map_err(|e| place::fail("Failed to keep", root, to, e))?;
        }
        run.set_dir_times()?;
        run.ctx.root.sync().map_err(|e| Error::io("Failed to sync", &dir, e))?;
        run.read_back()
    };
    let filled = fill();
    filled.map_err(|e| too_small(e, &run.ctx.root, &plan, name))?;
    if let Some(h) = job.hooks {
        h.run(SlotHook::PostInstall, Some(&dir))?;
    }
    let stats = run.stats.clone();
    // The descriptors into the slot go before its mount.
    drop(run);
    drop(mounted);
    keep_index(&kept, &index_path, sha, stats)
}

/// Keeps the index of the installed tree `sha` (at `index_path`) in the
/// slot's kept directory, if it has one; returns `stats`.
fn keep_index(kept: &Option<PathBuf>, index_path: &Path, sha: &str, stats: Stats) -> Result<Stats> {
    if let Some(d) = kept {
        let to = kept_index_path(d, sha);
        std::fs::rename(index_path, &to).map_err(|e| Error::io("Failed to keep", &to, e))?;
    }
    Ok(stats)
}

/// The directory at `path` (rota's own: a mount point, a work directory) as a root.
fn open_root(path: &Path) -> Result<Root> {
    Root::open(path).map_err(|e| Error::io("Failed to open", path, e))
}

/// The staging directory of the target mounted as `root`: used if it is a
/// directory of the slot's file system, else whatever holds its name (a
/// file, a link) is removed and a new one made. Only checked contents the
/// plan wants stay in it.
fn open_staging(root: &Root, plan: &Plan) -> Result<Root> {
    let name = STAGING.as_bytes();
    match place::stat(root, name)? {
        Some(st) if is(&st, FileType::Directory) => {}
        found => {
            if found.is_some() {
                tracing::warn!("'{}' is not a directory: replaced", root.shown(name).display());
                place::remove(root, name)?;
            }
            root.mkdir(name, 0o700).map_err(|e| place::fail("Failed to create", root, name, e))?;
        }
    }
    let staging = root.subdir(name).map_err(|e| place::fail("Failed to open", root, name, e))?;
    prune_staging(&staging, plan)?;
    Ok(staging)
}

/// Drops everything from the staging directory but what can be a checked
/// content of `plan`: a regular file with one link, named by a digest the
/// plan has (half-written parts, links, fifos, devices and directories go).
fn prune_staging(staging: &Root, plan: &Plan) -> Result<()> {
    let names = staging.names(b"").map_err(|e| place::fail("Failed to read directory", staging, b"", e))?;
    for n in names {
        let wanted = n.len() == 64 && std::str::from_utf8(&n).ok().and_then(|s| plan.content_of(s)).is_some();
        let usable =
            wanted && place::stat(staging, &n)?.is_some_and(|st| is(&st, FileType::RegularFile) && st.st_nlink == 1);
        if !usable {
            place::remove(staging, &n)?;
        }
    }
    Ok(())
}

/// `e` told as what it is when the slot's filesystem (at `root`)
/// ran out of room or inodes: how much it holds against what the tree takes.
fn too_small(e: Error, root: &Root, plan: &Plan, name: &str) -> Error {
    let no_space = std::io::Error::from_raw_os_error(libc::ENOSPC).to_string();
    if !e.to_string().contains(&no_space) {
        return e;
    }
    let Ok(fs) = root.capacity() else { return e };
    let size = rota_bundle::info::format_size;
    Error::Failed(format!(
        "the slot is too small for tree image '{name}': its filesystem holds {} and {} inodes, \
         the tree takes {} in {} files ({} entries): {e}",
        size(fs.0),
        fs.1,
        size(plan.bytes_total),
        plan.files_total,
        plan.len()
    ))
}

/// Where the blocks of tree image `name`'s contents file lie, and the file
/// of their SHA-256 sums (checked before the slot is touched).
fn contents_and_sums(fs: &BundleFs, name: &str) -> Result<(BlockMap, BlockMap)> {
    let contents = fs.block_map(&rota_bundle::tree::contents_file(name))?;
    let sums_name = rota_bundle::tree::block_sums_file(name);
    if fs.entry(&sums_name).is_none() {
        return failed(format!(
            "Tree image '{name}' lacks '{sums_name}' in the bundle (made by an older rota-bundle): build the bundle again"
        ));
    }
    let sums = fs.block_map(&sums_name)?;
    if sums.file_size() != 32 * contents.stored_blocks() {
        return failed(format!(
            "'{sums_name}' in the bundle is corrupt: {} bytes for the {} blocks of '{}'",
            sums.file_size(),
            contents.stored_blocks(),
            rota_bundle::tree::contents_file(name),
        ));
    }
    Ok((contents, sums))
}

/// Runs a slot hook of a FAT slot (which is not mounted otherwise) with
/// the slot mounted at `dir`.
fn run_hook_mounted(job: &Job<'_>, hook: SlotHook, dir: &Path) -> Result<()> {
    match job.hooks {
        Some(h) if h.has(hook) => mounts::with_slot_mounted(job.slot, dir, |d| h.run(hook, Some(d))),
        _ => Ok(()),
    }
}

fn remove_kept_indexes(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("tree-") && n.ends_with(".index") {
            crate::files::remove_any(&e.path()).map_err(|err| Error::io("Failed to remove", &e.path(), err))?;
        }
    }
    Ok(())
}

/// The state of one install while the target is mounted.
struct Run<'a, 'p> {
    job: &'a Job<'a>,
    ctx: Ctx<'a>,
    /// Entries whose content was read from the bundle.
    fetched: Vec<usize>,
    /// Paths (relative) replaced by persistent ones from the booted slot.
    persisted: Vec<Vec<u8>>,
    /// Entries already right in the target.
    kept: Vec<bool>,
    stats: Stats,
    at: Progressed,
    progress: &'p mut dyn FnMut(Progressed),
}

impl<'a, 'p> Run<'a, 'p> {
    fn new(job: &'a Job<'a>, ctx: Ctx<'a>, progress: &'p mut dyn FnMut(Progressed)) -> Run<'a, 'p> {
        let plan = ctx.plan;
        Run {
            job,
            ctx,
            fetched: Vec::new(),
            persisted: Vec::new(),
            kept: vec![false; plan.len()],
            stats: Stats { files: plan.files_total, ..Stats::default() },
            at: Progressed { bytes_total: plan.bytes_total, files_total: plan.files_total, ..Progressed::default() },
            progress,
        }
    }
}

/// What the workers of an install share (nothing that is not `Sync`).
struct Ctx<'a> {
    control: &'a InstallControl,
    fs: &'a BundleFs,
    /// The image (index) name in the bundle.
    name: &'a str,
    plan: &'a Plan,
    /// Where the contents file's blocks lie, and the file of their sums.
    contents: &'a BlockMap,
    sums: &'a BlockMap,
    /// The tree being built (the mounted target, or a FAT slot's local layout).
    root: Root,
    /// Where contents are put together, by digest.
    staging: Root,
    booted: Option<&'a Booted>,
    cache: Option<&'a cache::Cache>,
}

/// Threads that copy and check files (mostly waiting for the medium, so
/// more than the cores).
const LOCAL_WORKERS: usize = 4;
/// Threads that read files from the bundle (each holds up to 2 MiB of
/// compressed and 2 MiB of inflated data).
const FETCH_WORKERS: usize = 2;

/// Runs `work` on every item with `workers` threads; `take` gets each
/// result on the calling thread as it comes. Stops at the first error.
fn in_parallel<T: Sync, R: Send>(
    workers: usize,
    items: &[T],
    work: impl Fn(&T) -> Result<R> + Sync,
    mut take: impl FnMut(&T, R) -> Result<()>,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..workers.min(items.len()) {
            let (tx, next, stop, work) = (tx.clone(), &next, &stop, &work);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(k) else { break };
                    let r = work(item);
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    if tx.send((k, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut first = None;
        for (k, r) in rx {
            if first.is_none()
                && let Err(e) = r.and_then(|v| take(&items[k], v))
            {
                stop.store(true, Ordering::Relaxed);
                first = Some(e);
            }
        }
        first.map_or(Ok(()), Err)
    })
}

/// How a file's content was found.
enum Found {
    /// Already right in the target.
    Kept,
    /// Staged from a local copy (or the target's own file at another path).
    Local,
    /// Another file with the same content stages it.
    Duplicate,
    /// No local copy: to be read from the bundle.
    Fetch,
}

impl Ctx<'_> {
    /// Whether the staging directory holds content `sha`.
    fn has_staged(&self, sha: &str) -> Result<bool> {
        Ok(place::stat(&self.staging, sha.as_bytes())?.is_some())
    }

    /// Whether the regular file `rel` below `root` has length `size` and
    /// digest `sha` (anything else there, or a read that fails, has not).
    fn holds(root: &Root, rel: &[u8], size: u64, sha: &str) -> Result<Option<rustix::fs::Stat>> {
        let Some(st) = place::stat(root, rel)? else { return Ok(None) };
        let right = is(&st, FileType::RegularFile)
            && st.st_size as u64 == size
            && root
                .open_file(rel)
                .and_then(rota_bundle::tree::hash_reader)
                .is_ok_and(|(len, h)| len == size && h == sha);
        Ok(right.then_some(st))
    }

    /// Copies `src` (read from `from`, for messages) into the staging
    /// directory as content `sha`; returns whether it holds that content.
    fn stage_copy(&self, src: &mut dyn Read, from: &Path, sha: &str) -> Result<bool> {
        let part = format!("{sha}.part");
        let out = content::create(&self.staging, part.as_bytes())?;
        let got = content::copy_checked(src, out)
            .map_err(|e| place::fail("Failed to write", &self.staging, part.as_bytes(), e))?;
        if got.as_deref() == Some(sha) {
            self.staging
                .rename(part.as_bytes(), &self.staging, sha.as_bytes())
                .map_err(|e| place::fail("Failed to move", &self.staging, part.as_bytes(), e))?;
            return Ok(true);
        }
        place::remove(&self.staging, part.as_bytes())?;
        if let Some(got) = got {
            tracing::warn!(
                "'{}' does not hold the expected content (sha256 {got}, not {sha}): not reused",
                from.display()
            );
        }
        Ok(false)
    }

    /// Finds the content of entry `i`; `claims` marks the contents some
    /// worker stages (one worker per content).
    fn resolve_one(&self, i: usize, claims: &[AtomicBool]) -> Result<Found> {
        self.control.check()?;
        let (plan, size) = (self.plan, self.plan.item(i).size);
        let (sha, rel) = (plan.sha(i), plan.path(i));
        let claim = || !claims[plan.content(i) as usize].swap(true, Ordering::Relaxed);
        if let Some(st) = Self::holds(&self.root, rel, size, &sha)? {
            if st.st_nlink == 1 {
                return Ok(Found::Kept);
            }
            if claim() {
                // Right content, but shared with another path: used from the staging directory.
                self.root
                    .rename(rel, &self.staging, sha.as_bytes())
                    .map_err(|err| place::fail("Failed to move", &self.root, rel, err))?;
                return Ok(Found::Local);
            }
        }
        place::remove(&self.root, rel)?;
        if !claim() {
            return Ok(Found::Duplicate);
        }
        Ok(if self.stage_locally(i, &sha)? { Found::Local } else { Found::Fetch })
    }

    /// Stages the content `sha` of entry `i` from the staging directory (an
    /// earlier run) or the local cache or the booted slot; returns whether a
    /// checked copy is there now.
    fn stage_locally(&self, i: usize, sha: &str) -> Result<bool> {
        if self.has_staged(sha)? {
            let staged = Self::holds(&self.staging, sha.as_bytes(), self.plan.item(i).size, sha)?;
            if staged.is_some_and(|st| st.st_nlink == 1) {
                return Ok(true);
            }
            place::remove(&self.staging, sha.as_bytes())?;
        }
        if let Some(c) = self.cache
            && c.copy_to(sha, &self.staging, sha.as_bytes())?
        {
            return Ok(true);
        }
        let Some(b) = self.booted else { return Ok(false) };
        let (path, size) = (self.plan.path(i), self.plan.item(i).size);
        // Where the booted slot's kept index has the content, then the same path.
        let known = b.installed.path_of(self.plan.content(i));
        let candidates = known.into_iter().chain((known != Some(path)).then_some(path));
        for rel in candidates {
            if let Some(dev) = &b.fat {
                if fat::stage_from_fat(&self.staging, dev, rel, sha)? {
                    return Ok(true);
                }
                continue;
            }
            let Some(root) = &b.root else { continue };
            let regular = root
                .stat(rel)
                .is_ok_and(|st| st.is_some_and(|st| is(&st, FileType::RegularFile) && st.st_size as u64 == size));
            let Some(mut src) = regular.then(|| root.open_file(rel).ok()).flatten() else { continue };
            if self.stage_copy(&mut src, &root.shown(rel), sha)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads the content of entry `i` from the bundle's contents file into
    /// the staging directory and checks it; returns its length and stored size.
    fn fetch_one(&self, i: usize, stored: u64) -> Result<(u64, u64)> {
        self.control.check()?;
        let (sha, size) = (self.plan.sha(i), self.plan.item(i).size);
        let part = format!("{sha}.part");
        let part = part.as_bytes();
        let mut w = content::HashingWriter::new(content::create(&self.staging, part)?);
        self.fs.copy_range(self.contents, self.plan.offset(i), size, self.sums, &mut w)?;
        let (len, got, _) = w.finish().map_err(|err| place::fail("Failed to write", &self.staging, part, err))?;
        if got != sha || len != size {
            place::remove(&self.staging, part)?;
            return failed(format!(
                "File '{}' of tree image '{}' has sha256 {got} ({len} bytes) in the bundle, the index says {sha} ({size} bytes)",
                String::from_utf8_lossy(self.plan.path(i)),
                self.name,
            ));
        }
        self.staging
            .rename(part, &self.staging, sha.as_bytes())
            .map_err(|err| place::fail("Failed to move", &self.staging, part, err))?;
        Ok((len, stored))
    }

    /// Reads the written file of entry `i` back from the medium and checks it.
    fn check_one(&self, i: usize) -> Result<()> {
        self.control.check()?;
        let (sha, size, rel) = (self.plan.sha(i), self.plan.item(i).size, self.plan.path(i));
        let (len, got) = content::hash_from_medium(&self.root, rel)
            .map_err(|err| place::fail("Failed to read back", &self.root, rel, err))?;
        if got != sha || len != size {
            return failed(format!(
                "Read-back check of '{}' failed: sha256 {got} of {len} bytes instead of {sha} of {size} bytes",
                self.root.shown(rel).display(),
            ));
        }
        Ok(())
    }

    /// Removes what the new tree does not have, or has as another kind of
    /// object, from the target; files whose content the new tree wants at
    /// another path (known from the kept index) move to the staging directory.
    fn clean(&self, earlier: &Installed) -> Result<()> {
        self.clean_dir(&[], earlier, 0)
    }

    fn clean_dir(&self, rel: &[u8], earlier: &Installed, depth: usize) -> Result<()> {
        if depth > crate::confined::MAX_DEPTH {
            return failed(format!(
                "'{}' is nested deeper than {} directories",
                self.root.shown(rel).display(),
                crate::confined::MAX_DEPTH
            ));
        }
        let plan = self.plan;
        let names = self.root.names(rel).map_err(|e| place::fail("Failed to read directory", &self.root, rel, e))?;
        for name in names {
            self.control.check()?;
            let child = if rel.is_empty() { name.clone() } else { [rel, b"/", &name].concat() };
            let found = plan.lookup(&child);
            if rel.is_empty() && (name == STAGING.as_bytes() || (name == b"lost+found" && found.is_none())) {
                continue;
            }
            let Some(st) = place::stat(&self.root, &child)? else { continue };
            let keep = found
                .is_some_and(|i| place::same_kind(&self.root, &child, &st, &plan.entry(i)) && !plan.is_follower(i));
            if is(&st, FileType::Directory) {
                self.clean_dir(&child, earlier, depth + 1)?;
            }
            if keep {
                continue;
            }
            let sha = earlier.content_at(&child).map(|c| plan.digest_hex(c));
            match sha {
                Some(sha) if is(&st, FileType::RegularFile) && st.st_nlink == 1 && !self.has_staged(&sha)? => self
                    .root
                    .rename(&child, &self.staging, sha.as_bytes())
                    .map_err(|e| place::fail("Failed to move", &self.root, &child, e))?,
                _ => place::remove(&self.root, &child)?,
            }
        }
        Ok(())
    }
}

/// Counts a resolved file into the progress.
fn done(at: &mut Progressed, progress: &mut dyn FnMut(Progressed), bytes: u64) {
    at.files_done += 1;
    at.bytes_done += bytes;
    progress(*at);
}

impl Run<'_, '_> {
    /// Finds every file's content (several files at a time): kept where
    /// the target already holds it, else staged from a local copy, else
    /// read from the bundle.
    fn resolve(&mut self) -> Result<()> {
        let plan = self.ctx.plan;
        let leaders: Vec<usize> = (0..plan.len()).filter(|&i| plan.is_leader(i)).collect();
        let claims: Vec<AtomicBool> = (0..plan.contents()).map(|_| AtomicBool::new(false)).collect();
        let mut fetch: Vec<usize> = Vec::new();
        let ctx = &self.ctx;
        let (kept, stats, at, progress) = (&mut self.kept, &mut self.stats, &mut self.at, &mut *self.progress);
        in_parallel(
            LOCAL_WORKERS,
            &leaders,
            |&i| ctx.resolve_one(i, &claims),
            |&i, found| {
                let size = plan.item(i).size;
                match found {
                    Found::Kept => {
                        kept[i] = true;
                        stats.reused += 1;
                        stats.bytes_reused += size;
                    }
                    // A duplicate is copied locally once its content is staged.
                    Found::Local | Found::Duplicate => {
                        stats.copied += 1;
                        stats.bytes_copied += size;
                    }
                    Found::Fetch => {
                        fetch.push(i);
                        return Ok(());
                    }
                }
                done(at, progress, size);
                Ok(())
            },
        )?;
        self.fetch(fetch)
    }

    /// Reads the contents no local copy had from the bundle, several at a
    /// time, taken in the order they lie in the squashfs.
    fn fetch(&mut self, wanted: Vec<usize>) -> Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        let ctx = &self.ctx;
        let map = &ctx.contents;
        let mut jobs: Vec<(u64, usize, u64)> = wanted
            .into_iter()
            .map(|i| {
                let (at, size) = (ctx.plan.offset(i), ctx.plan.item(i).size);
                (map.position(at), i, map.stored_range(at, size))
            })
            .collect();
        jobs.sort_by_key(|j| j.0);
        let (fetched, stats, at, progress) = (&mut self.fetched, &mut self.stats, &mut self.at, &mut *self.progress);
        let r = in_parallel(
            FETCH_WORKERS,
            &jobs,
            |&(_, i, stored)| ctx.fetch_one(i, stored),
            |&(_, i, _), (len, stored)| {
                fetched.push(i);
                stats.fetched += 1;
                stats.bytes_fetched += len;
                stats.stored_fetched += stored;
                done(at, progress, len);
                Ok(())
            },
        );
        self.keep_fetched();
        r
    }

    /// Builds the new tree in path order from kept files and staged
    /// contents, then gives directories their times, deepest first.
    fn place(&mut self) -> Result<()> {
        let plan = self.ctx.plan;
        // How many files still take each staged content (the last one moves it).
        let mut users = vec![0u32; plan.contents()];
        for i in (0..plan.len()).filter(|&i| plan.is_leader(i) && !self.kept[i]) {
            users[plan.content(i) as usize] += 1;
        }
        for i in 0..plan.len() {
            if i % 256 == 0 {
                self.ctx.control.check()?;
            }
            let (item, rel) = (*plan.item(i), plan.path(i));
            let root = &self.ctx.root;
            let existing = place::stat(root, rel)?;
            match item.kind {
                Kind::File if plan.is_follower(i) => {
                    place::remove(root, rel)?;
                    let from = plan.path(plan.leader_of(i));
                    root.hard_link(from, rel).map_err(|err| place::fail("Failed to link", root, rel, err))?;
                    continue;
                }
                Kind::File if self.kept[i] => {}
                Kind::File => {
                    if existing.is_some() {
                        place::remove(root, rel)?;
                    }
                    let sha = plan.sha(i);
                    let left = &mut users[plan.content(i) as usize];
                    *left -= 1;
                    let staging = &self.ctx.staging;
                    if *left == 0 {
                        staging
                            .rename(sha.as_bytes(), root, rel)
                            .map_err(|err| place::fail("Failed to move", staging, sha.as_bytes(), err))?;
                    } else {
                        let mut src = staging
                            .open_file(sha.as_bytes())
                            .map_err(|err| place::fail("Failed to open", staging, sha.as_bytes(), err))?;
                        let out = content::create(root, rel)?;
                        if !content::try_reflink(&src, &out)
                            && content::copy_checked(&mut src, out)
                                .map_err(|err| place::fail("Failed to write", root, rel, err))?
                                .as_deref()
                                != Some(sha.as_str())
                        {
                            return failed(format!("Staged content {sha} changed while in use"));
                        }
                    }
                }
                _ => {
                    let e = plan.entry(i);
                    let right = existing.as_ref().is_some_and(|st| place::same_kind(root, rel, st, &e));
                    if !right {
                        if existing.is_some() {
                            place::remove(root, rel)?;
                        }
                        place::create_special(root, rel, &e)?;
                    }
                }
            }
            place::apply_metadata(root, rel, &plan.entry(i))?;
        }
        Ok(())
    }

    /// Reads every file written by this install back from the medium (its
    /// cached pages dropped; the filesystem was synced) and checks it,
    /// several at a time.
    fn read_back(&mut self) -> Result<()> {
        let plan = self.ctx.plan;
        let written: Vec<usize> = (0..plan.len())
            .filter(|&i| plan.is_leader(i) && !self.kept[i] && !self.is_persisted(plan.path(i)))
            .collect();
        let ctx = &self.ctx;
        in_parallel(LOCAL_WORKERS, &written, |&i| ctx.check_one(i), |_, ()| Ok(()))
    }

    /// Copies the configured persistent paths from the booted slot.
    fn persist(&mut self) -> Result<()> {
        let paths = &self.job.system.config.tree.persist;
        if paths.is_empty() {
            return Ok(());
        }
        let Some(from) = self.ctx.booted.and_then(|b| b.root.as_ref()) else {
            tracing::warn!("No mounted booted slot of class {} to keep persistent paths from", self.job.slot.class);
            return Ok(());
        };
        for p in paths {
            self.ctx.control.check()?;
            if persist::copy(from, &self.ctx.root, p)? {
                self.persisted.push(p.trim_start_matches('/').as_bytes().to_vec());
            } else {
                tracing::info!("Persistent path '{p}' is not in the booted slot");
            }
        }
        Ok(())
    }

    /// Whether `path` is, or lies below, a path kept from the booted slot.
    fn is_persisted(&self, path: &[u8]) -> bool {
        self.persisted.iter().any(|p| path.starts_with(p) && (path.len() == p.len() || path[p.len()] == b'/'))
    }

    /// Puts the contents just fetched from the bundle (checked, still in
    /// the staging directory) into the local cache; failures are only logged.
    fn keep_fetched(&self) {
        let Some(c) = self.ctx.cache else { return };
        let plan = self.ctx.plan;
        let items: Vec<(String, Vec<u8>, u64)> =
            self.fetched.iter().map(|&i| (plan.sha(i), plan.sha(i).into_bytes(), plan.item(i).size)).collect();
        if let Err(e) = c.keep(&self.ctx.staging, &items) {
            tracing::warn!("Failed to keep fetched contents in the cache: {e}");
        }
    }

    /// Gives directories their times, deepest first (once nothing changes in them).
    fn set_dir_times(&self) -> Result<()> {
        let plan = self.ctx.plan;
        for i in (0..plan.len()).rev() {
            if plan.item(i).kind == Kind::Dir && !self.is_persisted(plan.path(i)) {
                place::set_mtime(&self.ctx.root, plan.path(i), plan.item(i).mtime)?;
            }
        }
        Ok(())
    }
}
