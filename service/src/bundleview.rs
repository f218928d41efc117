//! The verified bundle as a read-only directory (for hooks and handlers,
//! `RAUC_BUNDLE_MOUNT_POINT`, and the `mount` command). A one-file FUSE
//! filesystem serves the payload's squashfs bytes from the verified reader —
//! every read checked against the verity tree (or the pinned digests of a
//! plain bundle) and decrypted for crypt bundles — and the kernel mounts that
//! file as squashfs through a read-only, auto-clearing loop device. The raw
//! bundle file is never mounted, and no device-mapper is needed.
//!
//! Everything a view sets up lives under the mount prefix: the squashfs at
//! `<prefix>/bundle`, the payload file at `<prefix>/.payload-*/`, and the
//! view holds `<prefix>/.bundle.lock` while it exists. Whoever takes that
//! lock knows no live view is left, so what a killed process left there
//! (mounts whose FUSE server is gone, their loop devices) is removed first.
//! A view that cannot be unmounted because a process is still inside (a
//! handler left one behind) is detached lazily and goes once it is left.

use crate::error::{Error, Result};
use crate::mounts;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, MountOption, OpenFlags,
    ReplyAttr, ReplyData, ReplyEmpty, ReplyOpen, Request,
};
use rota_bundle::source::ReadAt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// How long the kernel may cache the file's attributes (they never change).
const ATTR_TTL: Duration = Duration::from_secs(3600);

/// Open handles of the payload file, and whether it was ever opened.
#[derive(Default)]
struct Handles {
    open: usize,
    ever: bool,
}

/// The FUSE filesystem: its root is the payload file itself (mounted on a
/// regular file).
struct PayloadFile {
    payload: Arc<dyn ReadAt>,
    handles: Arc<(Mutex<Handles>, Condvar)>,
}

impl PayloadFile {
    fn attr(&self) -> FileAttr {
        let size = self.payload.size();
        FileAttr {
            ino: INodeNo(1),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0o444,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for PayloadFile {
    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo(1) {
            reply.attr(&ATTR_TTL, &self.attr());
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (lock, _) = &*self.handles;
        let mut h = lock.lock().expect("handles lock");
        h.open += 1;
        h.ever = true;
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let end = offset.saturating_add(size as u64).min(self.payload.size());
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        match self.payload.read_exact_at(offset, &mut buf) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                tracing::error!("Bundle payload read at {offset} failed: {e}");
                reply.error(Errno::EIO);
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let (lock, cv) = &*self.handles;
        let mut h = lock.lock().expect("handles lock");
        h.open = h.open.saturating_sub(1);
        cv.notify_all();
        reply.ok();
    }
}

/// A mounted view of a verified bundle; unmounted when dropped.
pub struct BundleView {
    dir: PathBuf,
    mounted: bool,
    handles: Arc<(Mutex<Handles>, Condvar)>,
    session: Option<fuser::BackgroundSession>,
    file_dir: Option<tempfile::TempDir>,
    _lock: std::fs::File,
}

/// Prefix of the directories holding a view's payload file.
const PAYLOAD_PREFIX: &str = ".payload-";

/// Takes the bundle-view lock of the mount prefix `prefix`: fails at once
/// if a live view (another installation, `rota mount`) holds it.
fn lock_views(prefix: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let fail = |e: std::io::Error| Error::Failed(format!("Failed mounting bundle: {}: {e}", prefix.display()));
    std::fs::create_dir_all(prefix).map_err(fail)?;
    let lock = std::fs::File::create(prefix.join(".bundle.lock")).map_err(fail)?;
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let dir = prefix.join("bundle");
        let why = if mounts::is_mount_point(&dir) { "is already a mount point" } else { "is being mounted" };
        return Err(Error::Failed(format!(
            "Failed mounting bundle: {} {why} (by another process: rota mount, or an installation)",
            dir.display()
        )));
    }
    Ok(lock)
}

/// Removes what dead views left under `prefix` (its lock must be held):
/// the mount at `<prefix>/bundle`, the payload files' FUSE mounts, their
/// loop devices, the payload directories. Busy mounts are detached lazily.
/// Returns what it removed, for the log.
pub fn release_debris(prefix: &Path) -> Vec<String> {
    let Ok(prefix) = std::fs::canonicalize(prefix) else { return Vec::new() };
    let mut done = Vec::new();
    let is_payload = |p: &Path| {
        p.strip_prefix(&prefix)
            .ok()
            .and_then(|r| r.iter().next())
            .is_some_and(|c| c.to_string_lossy().starts_with(PAYLOAD_PREFIX))
    };
    // The squashfs first, then the payload files it was mounted from.
    let mut stale: Vec<mounts::Mount> =
        mounts::table().into_iter().filter(|m| m.target == prefix.join("bundle") || is_payload(&m.target)).collect();
    stale.sort_by_key(|m| !m.target.ends_with("bundle"));
    for m in &stale {
        match mounts::umount_or_detach(&m.target) {
            Ok(lazy) => done.push(format!("{}{}", m.target.display(), if lazy { " (detached)" } else { "" })),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    // Loop devices still bound to a payload file (autoclear frees the rest).
    for entry in std::fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else { continue };
        if name.starts_with("loop") && is_payload(Path::new(backing.trim_end().trim_end_matches(" (deleted)"))) {
            let dev = Path::new("/dev").join(&name);
            if crate::tools::run("losetup", &["-d".as_ref(), dev.as_os_str()]).is_ok() {
                done.push(dev.display().to_string());
            }
        }
    }
    for entry in std::fs::read_dir(&prefix).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(PAYLOAD_PREFIX)
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            done.push(entry.path().display().to_string());
        }
    }
    done
}

/// [`release_debris`] of `prefix` if no live view holds its lock (else nothing).
pub fn release_unused(prefix: &Path) -> Vec<String> {
    match lock_views(prefix) {
        Ok(_lock) => release_debris(prefix),
        Err(_) => Vec::new(),
    }
}

impl BundleView {
    /// Mounts the squashfs `payload` read-only at `dir` (`<prefix>/bundle`,
    /// created if missing), after removing what dead views left there.
    pub fn mount(payload: Arc<dyn ReadAt>, dir: &Path) -> Result<BundleView> {
        let fail = |what: &str, e: std::io::Error| Error::Failed(format!("Failed mounting bundle: {what}: {e}"));
        let prefix = dir.parent().unwrap_or(Path::new("/"));
        let lock = lock_views(prefix)?;
        for what in release_debris(prefix) {
            tracing::warn!("Removed {what}, left by an interrupted bundle view");
        }
        if mounts::is_mount_point(dir) {
            return Err(Error::Failed(format!("Failed mounting bundle: {} is already a mount point", dir.display())));
        }
        let file_dir = tempfile::Builder::new()
            .prefix(PAYLOAD_PREFIX)
            .tempdir_in(prefix)
            .map_err(|e| fail("temporary directory", e))?;
        let file = file_dir.path().join("payload.squashfs");
        std::fs::File::create(&file).map_err(|e| fail("payload file", e))?;
        let handles = Arc::new((Mutex::new(Handles::default()), Condvar::new()));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::RO,
            MountOption::FSName("rota-bundle".into()),
            MountOption::Subtype("rota".into()),
            MountOption::DefaultPermissions,
        ];
        config.n_threads = Some(2);
        let fs = PayloadFile { payload, handles: handles.clone() };
        let session = fuser::spawn_mount(fs, &file, &config).map_err(|e| fail("FUSE", e))?;
        let mut view = BundleView {
            dir: dir.to_path_buf(),
            mounted: false,
            handles,
            session: Some(session),
            file_dir: Some(file_dir),
            _lock: lock,
        };
        // `loop` makes mount(8) set up an auto-clearing, read-only loop device.
        mounts::mount(&file, dir, Some("squashfs"), &["ro", "loop"])
            .map_err(|e| Error::Failed(format!("Failed mounting bundle: {e}")))?;
        view.mounted = true;
        Ok(view)
    }

    /// The directory the bundle content is visible in.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Keeps serving until the view is unmounted from outside (`umount DIR`):
    /// the loop device then lets go of the payload file.
    pub fn serve_until_unmounted(mut self) {
        let (lock, cv) = &*self.handles;
        let mut h = lock.lock().expect("handles lock");
        while !h.ever || h.open > 0 {
            h = cv.wait(h).expect("handles lock");
        }
        drop(h);
        self.mounted = false;
    }
}

impl Drop for BundleView {
    fn drop(&mut self) {
        let mut busy = false;
        if self.mounted {
            match mounts::umount_or_detach(&self.dir) {
                Ok(lazy) => busy = lazy,
                Err(e) => tracing::warn!("Failed to unmount bundle at {}: {e}", self.dir.display()),
            }
            if busy {
                tracing::warn!(
                    "Bundle at {} is still in use by a process: detached, it goes when that process leaves",
                    self.dir.display()
                );
            }
        }
        let Some(session) = self.session.take() else { return };
        if busy {
            // The loop device keeps the payload file open until the last
            // user leaves: the FUSE mount is detached too, and its server
            // thread serves that user and ends with it.
            if let Some(dir) = self.file_dir.take() {
                let file = dir.path().join("payload.squashfs");
                if let Err(e) = mounts::umount_or_detach(&file) {
                    tracing::warn!("{e}");
                }
                let _ = dir.close();
            }
            std::mem::forget(session);
            return;
        }
        // Unmounts the FUSE file once the loop device has let go of it.
        if let Err(e) = session.umount_and_join() {
            tracing::debug!("FUSE session end: {e}");
        }
    }
}
