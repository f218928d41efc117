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
use crate::error::{Error, Result, failed};
use crate::mounts;
use crate::system::{SlotState, System};
use index::{Installed, Plan};
use rota_bundle::manifest::Image;
use rota_bundle::squashfs::BundleFs;
use rota_bundle::squashfs::data::BlockMap;
use rota_bundle::tree::Kind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The directory in the target's root where contents are put together
/// before they move into place; kept by an interrupted install for the next.
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

use place::under;

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
fn in_slot_contents(root: &Path, sha: Option<&str>, plan: &Plan) -> Installed {
    let path = root.join(IN_SLOT_INDEX);
    let Some(sha) = sha else { return Installed::default() };
    match rota_bundle::tree::hash_file(&path) {
        Ok((_, digest)) if digest == sha => Installed::read(&path, plan).unwrap_or_else(|e| {
            tracing::warn!("Ignoring the file index kept in {}: {e}", root.display());
            Installed::default()
        }),
        _ => Installed::default(),
    }
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
    root: PathBuf,
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
        let sha = system.load_status(s).sha256;
        let installed = if kept_in_slot(system, &s.config) {
            in_slot_contents(&root, sha.as_deref(), plan)
        } else {
            kept_contents(system, &s.config, sha.as_deref(), plan)
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
        let out = content::create(&index_path)?;
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
    let ctx = Ctx {
        control: job.control,
        fs: job.fs,
        name,
        plan: &plan,
        contents,
        sums,
        // FAT: the new objects are laid out here and copied in, contents staged locally
        // (with a data directory where an interrupted install finds them again).
        root: if fat { work.path().join("layout") } else { dir.clone() },
        staging: match &kept {
            _ if !fat => dir.join(STAGING),
            Some(d) => d.join("tree-staging"),
            None => work.path().join("staging"),
        },
        booted: booted.as_ref(),
        cache: cache.as_ref(),
    };
    let mut run = Run {
        job,
        ctx,
        fetched: Vec::new(),
        persisted: Vec::new(),
        kept: vec![false; plan.len()],
        stats: Stats { files: plan.files_total, ..Stats::default() },
        at: Progressed { bytes_total: plan.bytes_total, files_total: plan.files_total, ..Progressed::default() },
        progress,
    };
    if fat {
        run_hook_mounted(job, SlotHook::PreInstall, &dir)?;
        run.install_fat(&earlier, drop_kept_index)?;
        std::fs::remove_dir_all(&run.ctx.staging).map_err(|e| Error::io("Failed to remove", &run.ctx.staging, e))?;
        run_hook_mounted(job, SlotHook::PostInstall, &dir)?;
    } else {
        let (mounted, fresh) = mount_target(slot, &dir)?;
        drop_kept_index()?;
        if in_slot {
            earlier = in_slot_contents(&dir, job.installed, &plan);
            place::remove_any(&dir.join(IN_SLOT_INDEX))?;
        }
        let mut mounted = Some(mounted);
        if let Some(h) = job.hooks {
            h.run(SlotHook::PreInstall, Some(&dir))?;
        }
        run.open_staging()?;
        if let Err(e) = run.clean(&earlier) {
            if fresh {
                return Err(e);
            }
            // A filesystem that cannot be cleaned up is started over.
            tracing::warn!("Formatting slot {} after: {e}", slot.name);
            drop(mounted.take());
            mounted = Some(format_and_mount(slot, &dir)?);
            run.open_staging()?;
        }
        let mut fill = || -> Result<()> {
            run.resolve()?;
            run.place()?;
            let staging = &run.ctx.staging;
            std::fs::remove_dir_all(staging).map_err(|e| Error::io("Failed to remove", staging, e))?;
            run.persist()?;
            if in_slot {
                // Beside slot.raucs, which the status update writes next (before
                // the directory times are set, so the root keeps its own).
                let to = dir.join(IN_SLOT_INDEX);
                std::fs::copy(&index_path, &to).map_err(|e| Error::io("Failed to keep", &to, e))?;
            }
            run.set_dir_times()?;
            crate::files::syncfs(&dir).map_err(|e| Error::io("Failed to sync", &dir, e))?;
            run.read_back()
        };
        fill().map_err(|e| too_small(e, &dir, &plan, name))?;
        if let Some(h) = job.hooks {
            h.run(SlotHook::PostInstall, Some(&dir))?;
        }
        drop(mounted);
    }
    let stats = run.stats.clone();
    drop(run);
    if let Some(d) = &kept {
        let to = kept_index_path(d, sha);
        std::fs::rename(&index_path, &to).map_err(|e| Error::io("Failed to keep", &to, e))?;
    }
    Ok(stats)
}

/// `e` told as what it is when the slot's filesystem (mounted at `dir`)
/// ran out of room or inodes: how much it holds against what the tree takes.
fn too_small(e: Error, dir: &Path, plan: &Plan, name: &str) -> Error {
    let no_space = std::io::Error::from_raw_os_error(libc::ENOSPC).to_string();
    if !e.to_string().contains(&no_space) {
        return e;
    }
    let Ok(fs) = fs_capacity(dir) else { return e };
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

/// Size in bytes and inode count of the file system mounted at `dir`.
fn fs_capacity(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: statvfs is plain old data; all zeros is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a buffer of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_blocks * st.f_frsize, st.f_files))
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
            place::remove_any(&e.path())?;
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

/// What the workers of an install share (nothing that is not `Sync`).
struct Ctx<'a> {
    control: &'a InstallControl,
    fs: &'a BundleFs,
    /// The image (index) name in the bundle.
    name: &'a str,
    plan: &'a Plan,
    /// Where the contents file's blocks lie, and the file of their sums.
    contents: BlockMap,
    sums: BlockMap,
    root: PathBuf,
    staging: PathBuf,
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
    fn staged(&self, sha: &str) -> PathBuf {
        self.staging.join(sha)
    }

    /// Finds the content of entry `i`; `claims` marks the contents some
    /// worker stages (one worker per content).
    fn resolve_one(&self, i: usize, claims: &[AtomicBool]) -> Result<Found> {
        self.control.check()?;
        let (plan, size) = (self.plan, self.plan.item(i).size);
        let sha = plan.sha(i);
        let claim = || !claims[plan.content(i) as usize].swap(true, Ordering::Relaxed);
        let path = under(&self.root, plan.path(i));
        if let Ok(md) = std::fs::symlink_metadata(&path) {
            let right =
                md.len() == size && rota_bundle::tree::hash_file(&path).is_ok_and(|(len, h)| len == size && h == sha);
            if right && md.nlink() == 1 {
                return Ok(Found::Kept);
            }
            if right && claim() {
                // Right content, but shared with another path: used from the staging directory.
                let to = self.staged(&sha);
                std::fs::rename(&path, &to).map_err(|err| Error::io("Failed to move", &path, err))?;
                return Ok(Found::Local);
            }
            place::remove_any(&path)?;
        }
        if !claim() {
            return Ok(Found::Duplicate);
        }
        Ok(if self.stage_locally(i, &sha)? { Found::Local } else { Found::Fetch })
    }

    /// Stages the content `sha` of entry `i` from the staging directory (an
    /// earlier run) or the local cache or the booted slot; returns whether a
    /// checked copy is there now.
    fn stage_locally(&self, i: usize, sha: &str) -> Result<bool> {
        let to = self.staged(sha);
        if to.exists() {
            if rota_bundle::tree::hash_file(&to).is_ok_and(|(_, h)| h == sha) {
                return Ok(true);
            }
            place::remove_any(&to)?;
        }
        if let Some(c) = self.cache
            && c.copy_to(sha, &to)?
        {
            return Ok(true);
        }
        let Some(b) = self.booted else { return Ok(false) };
        let (path, size) = (self.plan.path(i), self.plan.item(i).size);
        let part = self.staging.join(format!("{sha}.part"));
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
            let from = under(&b.root, rel);
            if std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_file() && m.len() == size)
                && content::copy_verified(&from, &part, sha)?
            {
                std::fs::rename(&part, &to).map_err(|err| Error::io("Failed to move", &part, err))?;
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
        let part = self.staging.join(format!("{sha}.part"));
        let mut w = content::HashingWriter::new(content::create(&part)?);
        self.fs.copy_range(&self.contents, self.plan.offset(i), size, &self.sums, &mut w)?;
        let (len, got, _) = w.finish().map_err(|err| Error::io("Failed to write", &part, err))?;
        if got != sha || len != size {
            place::remove_any(&part)?;
            return failed(format!(
                "File '{}' of tree image '{}' has sha256 {got} ({len} bytes) in the bundle, the index says {sha} ({size} bytes)",
                String::from_utf8_lossy(self.plan.path(i)),
                self.name,
            ));
        }
        let to = self.staged(&sha);
        std::fs::rename(&part, &to).map_err(|err| Error::io("Failed to move", &part, err))?;
        Ok((len, stored))
    }

    /// Reads the written file of entry `i` back from the medium and checks it.
    fn check_one(&self, i: usize) -> Result<()> {
        self.control.check()?;
        let (sha, size) = (self.plan.sha(i), self.plan.item(i).size);
        let path = under(&self.root, self.plan.path(i));
        let (len, got) =
            content::hash_from_medium(&path).map_err(|err| Error::io("Failed to read back", &path, err))?;
        if got != sha || len != size {
            return failed(format!(
                "Read-back check of '{}' failed: sha256 {got} of {len} bytes instead of {sha} of {size} bytes",
                path.display(),
            ));
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
    /// Creates the staging directory, dropping half-written leftovers.
    fn open_staging(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.ctx.staging).map_err(|e| Error::io("Failed to create", &self.ctx.staging, e))?;
        let entries =
            std::fs::read_dir(&self.ctx.staging).map_err(|e| Error::io("Failed to read", &self.ctx.staging, e))?;
        for e in entries.flatten() {
            let n = e.file_name();
            if n.len() != 64 || self.ctx.plan.content_of(&n.to_string_lossy()).is_none() {
                place::remove_any(&e.path())?;
            }
        }
        Ok(())
    }

    /// Removes what the new tree does not have, or has as another kind of
    /// object, from the target; files whose content the new tree wants at
    /// another path (known from the kept index) move to the staging directory.
    fn clean(&mut self, earlier: &Installed) -> Result<()> {
        self.clean_dir(&[], earlier)
    }

    fn clean_dir(&mut self, rel: &[u8], earlier: &Installed) -> Result<()> {
        let plan = self.ctx.plan;
        for name in place::sorted_names(&under(&self.ctx.root, rel))? {
            self.ctx.control.check()?;
            let child = if rel.is_empty() { name.clone() } else { [rel, b"/", &name].concat() };
            let found = plan.lookup(&child);
            if rel.is_empty() && (name == STAGING.as_bytes() || (name == b"lost+found" && found.is_none())) {
                continue;
            }
            let path = under(&self.ctx.root, &child);
            let md = std::fs::symlink_metadata(&path).map_err(|e| Error::io("Failed to stat", &path, e))?;
            let keep = found.is_some_and(|i| place::same_kind(&md, &plan.entry(i), &path) && !plan.is_follower(i));
            if md.is_dir() {
                self.clean_dir(&child, earlier)?;
            }
            if keep {
                continue;
            }
            let to = earlier.content_at(&child).map(|c| self.ctx.staged(&plan.digest_hex(c)));
            match to {
                Some(to) if md.is_file() && !to.exists() => {
                    std::fs::rename(&path, &to).map_err(|e| Error::io("Failed to move", &path, e))?;
                }
                _ => place::remove_any(&path)?,
            }
        }
        Ok(())
    }

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
            let item = *plan.item(i);
            let path = under(&self.ctx.root, plan.path(i));
            let existing = std::fs::symlink_metadata(&path).ok();
            match item.kind {
                Kind::File if plan.is_follower(i) => {
                    place::remove_any(&path)?;
                    let from = under(&self.ctx.root, plan.path(plan.leader_of(i)));
                    std::fs::hard_link(&from, &path).map_err(|err| Error::io("Failed to link", &path, err))?;
                    continue;
                }
                Kind::File if self.kept[i] => {}
                Kind::File => {
                    if existing.is_some() {
                        place::remove_any(&path)?;
                    }
                    let sha = plan.sha(i);
                    let left = &mut users[plan.content(i) as usize];
                    *left -= 1;
                    let staged = self.ctx.staged(&sha);
                    if *left == 0 {
                        std::fs::rename(&staged, &path).map_err(|err| Error::io("Failed to move", &staged, err))?;
                    } else if !content::try_reflink(&staged, &path) && !content::copy_verified(&staged, &path, &sha)? {
                        return failed(format!("Staged content {sha} changed while in use"));
                    }
                }
                _ => {
                    let e = plan.entry(i);
                    let right = existing.as_ref().is_some_and(|md| place::same_kind(md, &e, &path));
                    if !right {
                        if existing.is_some() {
                            place::remove_any(&path)?;
                        }
                        place::create_special(&path, &e)?;
                    }
                }
            }
            place::apply_metadata(&path, &plan.entry(i))?;
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
        let Some(b) = self.ctx.booted.filter(|b| b.fat.is_none()) else {
            tracing::warn!("No mounted booted slot of class {} to keep persistent paths from", self.job.slot.class);
            return Ok(());
        };
        for p in paths {
            self.ctx.control.check()?;
            if persist::copy(&b.root, &self.ctx.root, p)? {
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
        let items: Vec<(String, PathBuf, u64)> =
            self.fetched.iter().map(|&i| (plan.sha(i), self.ctx.staged(&plan.sha(i)), plan.item(i).size)).collect();
        if let Err(e) = c.keep(&items) {
            tracing::warn!("Failed to keep fetched contents in the cache: {e}");
        }
    }

    /// Gives directories their times, deepest first (once nothing changes in them).
    fn set_dir_times(&self) -> Result<()> {
        let plan = self.ctx.plan;
        for i in (0..plan.len()).rev() {
            if plan.item(i).kind == Kind::Dir && !self.is_persisted(plan.path(i)) {
                place::set_mtime(&under(&self.ctx.root, plan.path(i)), plan.item(i).mtime)?;
            }
        }
        Ok(())
    }
}
