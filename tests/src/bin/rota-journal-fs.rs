//! A pass-through FUSE file system that journals every change, for the
//! power-cut campaign (`testkit::powercut`, RELIABILITY.md): it serves the
//! directory BACKING on MOUNTPOINT and appends to JOURNAL the entries that
//! exist when it starts, then every creation, link, removal, rename,
//! truncation, write and file or directory sync it passes on. The test then
//! rebuilds from the journal what a medium would hold after a power cut at
//! any point. A mock of a disk losing power, which a test cannot do to this
//! machine's.
//!
//! Usage: `rota-journal-fs BACKING MOUNTPOINT JOURNAL` (foreground; ends
//! when MOUNTPOINT is unmounted, then prints `ops=N` on stderr).

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::powercut::{JournalWriter, Kind, Op};

/// Inode numbers and the paths (below the backing directory) they name.
struct Names {
    path: HashMap<u64, PathBuf>,
    ino: HashMap<PathBuf, u64>,
    next: u64,
}

impl Names {
    fn ino_of(&mut self, path: &Path) -> u64 {
        if let Some(i) = self.ino.get(path) {
            return *i;
        }
        let i = self.next;
        self.next += 1;
        self.path.insert(i, path.to_path_buf());
        self.ino.insert(path.to_path_buf(), i);
        i
    }

    fn forget_path(&mut self, path: &Path) {
        if let Some(i) = self.ino.remove(path) {
            self.path.remove(&i);
        }
    }
}

struct JournalFs {
    backing: PathBuf,
    names: Mutex<Names>,
    files: Mutex<HashMap<u64, File>>,
    next_fh: Mutex<u64>,
    journal: Mutex<JournalWriter>,
    ops: AtomicU64,
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

fn kind_of(m: &fs::Metadata) -> FileType {
    let t = m.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 { UNIX_EPOCH + Duration::new(sec as u64, nsec as u32) } else { UNIX_EPOCH }
}

fn attr(ino: u64, m: &fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.len(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind_of(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl JournalFs {
    fn log(&self, op: Op) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.journal.lock().unwrap().append(&op).expect("append to the journal");
    }

    /// The backing path of inode `ino` (relative) and its full path.
    fn path(&self, ino: INodeNo) -> Result<(PathBuf, PathBuf), Errno> {
        let rel = self.names.lock().unwrap().path.get(&ino.0).cloned().ok_or(Errno::ENOENT)?;
        let full = self.backing.join(&rel);
        Ok((rel, full))
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<(PathBuf, PathBuf), Errno> {
        let (rel, _) = self.path(parent)?;
        let rel = rel.join(name);
        let full = self.backing.join(&rel);
        Ok((rel, full))
    }

    fn entry(&self, rel: &Path, full: &Path) -> Result<FileAttr, Errno> {
        let m = fs::symlink_metadata(full).map_err(errno)?;
        let ino = self.names.lock().unwrap().ino_of(rel);
        Ok(attr(ino, &m))
    }

    fn new_fh(&self, f: File) -> FileHandle {
        let mut n = self.next_fh.lock().unwrap();
        *n += 1;
        self.files.lock().unwrap().insert(*n, f);
        FileHandle(*n)
    }

    /// Makes the entry `name` of `parent` with `how`, as a `kind`.
    fn make(
        &self,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        how: impl FnOnce(&Path) -> std::io::Result<()>,
        reply: ReplyEntry,
    ) {
        let run = || -> Result<FileAttr, Errno> {
            let (rel, full) = self.child(parent, name)?;
            how(&full).map_err(errno)?;
            let a = self.entry(&rel, &full)?;
            self.log(Op::Create { ino: a.ino.0, parent: parent.0, name: name.as_bytes().to_vec(), kind });
            Ok(a)
        };
        match run() {
            Ok(a) => reply.entry(&Duration::ZERO, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// Removes the entry `name` of `parent` with `how` (a file or a directory).
    fn remove(&self, parent: INodeNo, name: &OsStr, how: fn(&Path) -> std::io::Result<()>, reply: ReplyEmpty) {
        let run = || -> Result<(), Errno> {
            let (rel, full) = self.child(parent, name)?;
            how(&full).map_err(errno)?;
            self.names.lock().unwrap().forget_path(&rel);
            self.log(Op::Unlink { parent: parent.0, name: name.as_bytes().to_vec() });
            Ok(())
        };
        match run() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Records every entry below the backing directory, parents first.
    fn journal_existing(&self, rel: &Path) {
        let dir = self.backing.join(rel);
        let mut entries: Vec<_> = fs::read_dir(&dir).expect("read the backing directory").flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        let parent = self.names.lock().unwrap().ino_of(rel);
        for e in entries {
            let crel = rel.join(e.file_name());
            let m = fs::symlink_metadata(e.path()).expect("stat");
            let kind = if m.is_dir() {
                Kind::Dir
            } else if m.file_type().is_symlink() {
                Kind::Symlink(fs::read_link(e.path()).expect("readlink").as_os_str().as_bytes().to_vec())
            } else {
                Kind::File
            };
            let ino = self.names.lock().unwrap().ino_of(&crel);
            self.log(Op::Exists { ino, parent, name: e.file_name().as_bytes().to_vec(), kind: kind.clone() });
            if kind == Kind::Dir {
                self.journal_existing(&crel);
            }
        }
    }
}

impl Filesystem for JournalFs {
    fn destroy(&mut self) {
        self.journal.get_mut().unwrap().flush().expect("write the journal out");
        eprintln!("ops={}", self.ops.load(Ordering::Relaxed));
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|(rel, full)| self.entry(&rel, &full)) {
            Ok(a) => reply.entry(&Duration::ZERO, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path(ino).and_then(|(_, full)| fs::symlink_metadata(full).map_err(errno)) {
            Ok(m) => reply.attr(&Duration::ZERO, &attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let run = || -> Result<FileAttr, Errno> {
            let (_, full) = self.path(ino)?;
            if let Some(mode) = mode {
                fs::set_permissions(&full, fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&full, uid, gid).map_err(errno)?;
            }
            if let Some(size) = size {
                File::options().write(true).open(&full).and_then(|f| f.set_len(size)).map_err(errno)?;
                self.log(Op::Truncate { ino: ino.0, size });
            }
            Ok(attr(ino.0, &fs::symlink_metadata(&full).map_err(errno)?))
        };
        match run() {
            Ok(a) => reply.attr(&Duration::ZERO, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.path(ino).and_then(|(_, full)| fs::read_link(full).map_err(errno)) {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        self.make(
            parent,
            name,
            Kind::File,
            |p| File::options().write(true).create_new(true).mode(mode & 0o7777).open(p).map(drop),
            reply,
        );
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let how = |p: &Path| {
            fs::create_dir(p).and_then(|()| fs::set_permissions(p, fs::Permissions::from_mode(mode & 0o7777)))
        };
        self.make(parent, name, Kind::Dir, how, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |p| fs::remove_file(p), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |p| fs::remove_dir(p), reply);
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let kind = Kind::Symlink(target.as_os_str().as_bytes().to_vec());
        self.make(parent, link_name, kind, |p| std::os::unix::fs::symlink(target, p), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let run = || -> Result<(), Errno> {
            let (rel, full) = self.child(parent, name)?;
            let (to_rel, to_full) = self.child(newparent, newname)?;
            fs::rename(&full, &to_full).map_err(errno)?;
            let mut names = self.names.lock().unwrap();
            names.forget_path(&to_rel);
            // Move the entry and everything below it to the new name.
            let moved: Vec<(PathBuf, u64)> =
                names.ino.iter().filter(|(p, _)| p.starts_with(&rel)).map(|(p, i)| (p.clone(), *i)).collect();
            for (p, i) in moved {
                let below = p.strip_prefix(&rel).expect("below");
                // (Joining an empty path would add a trailing slash.)
                let np = if below.as_os_str().is_empty() { to_rel.clone() } else { to_rel.join(below) };
                names.ino.remove(&p);
                names.ino.insert(np.clone(), i);
                names.path.insert(i, np);
            }
            drop(names);
            self.log(Op::Rename {
                parent: parent.0,
                name: name.as_bytes().to_vec(),
                to_parent: newparent.0,
                to_name: newname.as_bytes().to_vec(),
            });
            Ok(())
        };
        match run() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let run = || -> Result<FileAttr, Errno> {
            let (_, full) = self.path(ino)?;
            let (to_rel, to_full) = self.child(newparent, newname)?;
            fs::hard_link(&full, &to_full).map_err(errno)?;
            self.names.lock().unwrap().ino.insert(to_rel, ino.0);
            self.log(Op::Link { ino: ino.0, parent: newparent.0, name: newname.as_bytes().to_vec() });
            Ok(attr(ino.0, &fs::symlink_metadata(&to_full).map_err(errno)?))
        };
        match run() {
            Ok(a) => reply.entry(&Duration::ZERO, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let acc = flags.0 & libc::O_ACCMODE;
        let run = || -> Result<FileHandle, Errno> {
            let (_, full) = self.path(ino)?;
            let f =
                File::options().read(acc != libc::O_WRONLY).write(acc != libc::O_RDONLY).open(&full).map_err(errno)?;
            Ok(self.new_fh(f))
        };
        match run() {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let run = || -> Result<(FileAttr, FileHandle), Errno> {
            let (rel, full) = self.child(parent, name)?;
            let f = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode & 0o7777)
                .open(&full)
                .map_err(errno)?;
            let a = self.entry(&rel, &full)?;
            self.log(Op::Create { ino: a.ino.0, parent: parent.0, name: name.as_bytes().to_vec(), kind: Kind::File });
            Ok((a, self.new_fh(f)))
        };
        match run() {
            Ok((a, fh)) => reply.created(&Duration::ZERO, &a, Generation(0), fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let files = self.files.lock().unwrap();
        let Some(f) = files.get(&fh.0) else { return reply.error(Errno::EBADF) };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return reply.error(errno(e)),
            }
        }
        buf.truncate(got);
        reply.data(&buf);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let files = self.files.lock().unwrap();
        let Some(f) = files.get(&fh.0) else { return reply.error(Errno::EBADF) };
        if let Err(e) = f.write_all_at(data, offset) {
            return reply.error(errno(e));
        }
        // Logged while the handle is held: writes and syncs keep their order.
        self.log(Op::Write { ino: ino.0, offset, data: data.to_vec() });
        reply.written(data.len() as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // The backing copy need not reach this machine's disk: the journal
        // says what would be on the simulated one.
        let _files = self.files.lock().unwrap();
        self.log(Op::Fsync { ino: ino.0 });
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let run = || -> Result<Vec<(u64, FileType, std::ffi::OsString)>, Errno> {
            let (rel, full) = self.path(ino)?;
            let mut out = vec![(ino.0, FileType::Directory, ".".into()), (ino.0, FileType::Directory, "..".into())];
            let mut entries: Vec<_> = fs::read_dir(&full).map_err(errno)?.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let Ok(m) = fs::symlink_metadata(e.path()) else { continue };
                let i = self.names.lock().unwrap().ino_of(&rel.join(e.file_name()));
                out.push((i, kind_of(&m), e.file_name()));
            }
            Ok(out)
        };
        match run() {
            Ok(entries) => {
                for (n, (i, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(i), (n + 1) as u64, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.log(Op::FsyncDir { ino: ino.0 });
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let c = std::ffi::CString::new(self.backing.as_os_str().as_bytes()).expect("path");
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return reply.error(Errno::EIO);
        }
        reply.statfs(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, s.f_bsize as u32, 255, s.f_frsize as u32);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, backing, mountpoint, journal] = &args[..] else {
        eprintln!("usage: rota-journal-fs BACKING MOUNTPOINT JOURNAL");
        std::process::exit(2)
    };
    let names =
        Names { path: HashMap::from([(1, PathBuf::new())]), ino: HashMap::from([(PathBuf::new(), 1)]), next: 2 };
    let fs = JournalFs {
        backing: fs::canonicalize(backing).expect("the backing directory"),
        names: Mutex::new(names),
        files: Mutex::new(HashMap::new()),
        next_fh: Mutex::new(0),
        journal: Mutex::new(JournalWriter::create(Path::new(journal)).expect("create the journal")),
        ops: AtomicU64::new(0),
    };
    fs.journal_existing(Path::new(""));
    let mut config = fuser::Config::default();
    config.mount_options = vec![MountOption::FSName("rota-journal-fs".into()), MountOption::DefaultPermissions];
    config.n_threads = Some(2);
    // Until the test unmounts it; `destroy` then writes the journal out.
    fuser::mount(fs, mountpoint, &config).expect("serve the file system");
}
