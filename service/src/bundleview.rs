//! The verified bundle as a read-only directory (for hooks and handlers,
//! `RAUC_BUNDLE_MOUNT_POINT`, and the `mount` command). A one-file FUSE
//! filesystem serves the payload's squashfs bytes from the verified reader —
//! every read checked against the verity tree (or the pinned digests of a
//! plain bundle) and decrypted for crypt bundles — and the kernel mounts that
//! file as squashfs through a read-only, auto-clearing loop device. The raw
//! bundle file is never mounted, and no device-mapper is needed.

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
    _file_dir: tempfile::TempDir,
}

impl BundleView {
    /// Mounts the squashfs `payload` read-only at `dir` (created if missing).
    pub fn mount(payload: Arc<dyn ReadAt>, dir: &Path) -> Result<BundleView> {
        let fail = |what: &str, e: std::io::Error| Error::Failed(format!("Failed mounting bundle: {what}: {e}"));
        let file_dir =
            tempfile::Builder::new().prefix("rota-payload-").tempdir().map_err(|e| fail("temporary directory", e))?;
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
        let mut view =
            BundleView { dir: dir.to_path_buf(), mounted: false, handles, session: Some(session), _file_dir: file_dir };
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
        if self.mounted
            && let Err(e) = mounts::umount(&self.dir)
        {
            tracing::warn!("Failed to unmount bundle at {}: {e}", self.dir.display());
        }
        // Unmounts the FUSE file once the loop device has let go of it.
        if let Some(s) = self.session.take()
            && let Err(e) = s.umount_and_join()
        {
            tracing::debug!("FUSE session end: {e}");
        }
    }
}
