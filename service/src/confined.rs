//! File system access held inside one directory tree, for content the
//! installer does not trust: an old slot's files (an earlier image, or
//! whoever had root while it ran, may have planted anything there), the
//! staging area inside it, a booted slot read as a source of contents.
//!
//! Every path is resolved beneath an open directory by the kernel
//! (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`):
//! no symbolic link is followed, no `..` leaves the tree and no other file
//! system is entered. Objects are looked at with `fstatat(AT_SYMLINK_NOFOLLOW)`
//! before use, regular files are opened without blocking (`O_NONBLOCK`, so a
//! fifo cannot stall a reader) and only after their type was checked (a device
//! node is never opened), and every change goes through a directory
//! descriptor and the object's name in it (`unlinkat`, `renameat`, `linkat`,
//! `fchownat`, `utimensat`, ...). Kernels without `openat2` (before 5.6, or
//! sandboxes that hide it) get the same rules from a walk of
//! `openat(O_NOFOLLOW | O_DIRECTORY)` calls that checks each directory's device.
//!
//! Paths are the bytes of a file index: relative, `/`-separated, `""` for
//! the root itself; `.`, `..` and empty components are refused.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Cleared once `openat2` turned out to be missing: walk components instead.
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// A directory tree that paths are resolved beneath.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    dev: u64,
    path: PathBuf,
    /// Resolve by walking components even where `openat2` exists (tests).
    walk: bool,
}

/// A directory that holds the object a path names, and that name.
struct Parent<'a> {
    dir: Dir<'a>,
    name: CString,
}

/// The root's own descriptor, or one opened beneath it.
enum Dir<'a> {
    Root(BorrowedFd<'a>),
    Sub(OwnedFd),
}

impl AsFd for Dir<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Dir::Root(fd) => *fd,
            Dir::Sub(fd) => fd.as_fd(),
        }
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// Whether `st` is of file type `t`.
pub fn is(st: &Stat, t: FileType) -> bool {
    FileType::from_raw_mode(st.st_mode) == t
}

/// Checks that `rel` is a plain relative path: no leading or doubled `/`,
/// no `.` or `..` component, no NUL.
fn check(rel: &[u8]) -> io::Result<()> {
    let bad = rel.contains(&0) || rel.split(|b| *b == b'/').any(|c| c.is_empty() || c == b"." || c == b"..");
    if bad {
        return Err(invalid(format!("unsafe path '{}'", String::from_utf8_lossy(rel))));
    }
    Ok(())
}

impl Root {
    /// Opens the directory at `path` (a place of rota's own: a mount
    /// point, the data directory) as a root to resolve beneath.
    pub fn open(path: &Path) -> io::Result<Root> {
        let dir = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let dev = rustix::fs::fstat(&dir)?.st_dev;
        Ok(Root { dir, dev, path: path.to_path_buf(), walk: false })
    }

    /// Where the root is (for messages and external tools).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `rel` below the root, for messages.
    pub fn shown(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() { self.path.clone() } else { self.path.join(OsStr::from_bytes(rel)) }
    }

    /// Opens `rel` with `flags`, never following a symbolic link (a final
    /// one included: with `O_PATH` the link itself is opened) nor leaving
    /// the root's file system.
    fn resolve(&self, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
        if rel.is_empty() {
            return Ok(rustix::fs::openat(&self.dir, c".", flags, Mode::empty())?);
        }
        check(rel)?;
        if !self.walk && OPENAT2.load(Ordering::Relaxed) {
            let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV;
            loop {
                match rustix::fs::openat2(&self.dir, rel, flags, Mode::empty(), how) {
                    // A rename elsewhere raced the lookup: the kernel asks to try again.
                    Err(rustix::io::Errno::AGAIN) => continue,
                    Err(rustix::io::Errno::NOSYS) => {
                        OPENAT2.store(false, Ordering::Relaxed);
                        break;
                    }
                    r => return Ok(r?),
                }
            }
        }
        self.walk(rel, flags)
    }

    /// [`Root::resolve`] one component at a time, for kernels without `openat2`.
    fn walk(&self, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
        let mut parts = rel.split(|b| *b == b'/').peekable();
        let mut dir: Option<OwnedFd> = None;
        while let Some(part) = parts.next() {
            let at: BorrowedFd<'_> = dir.as_ref().map_or(self.dir.as_fd(), |d| d.as_fd());
            let last = parts.peek().is_none();
            let how =
                if last { flags } else { OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC };
            let fd = rustix::fs::openat(at, part, how, Mode::empty())?;
            if rustix::fs::fstat(&fd)?.st_dev != self.dev {
                return Err(rustix::io::Errno::XDEV.into());
            }
            dir = Some(fd);
        }
        dir.ok_or_else(|| invalid("empty path".into()))
    }

    /// The directory holding `rel` (resolved beneath the root) and its name there.
    fn parent<'a>(&'a self, rel: &[u8]) -> io::Result<Parent<'a>> {
        check(rel)?;
        let (dir, name) = match rel.iter().rposition(|b| *b == b'/') {
            Some(i) => (Dir::Sub(self.resolve(&rel[..i], OFlags::RDONLY | OFlags::DIRECTORY)?), &rel[i + 1..]),
            None => (Dir::Root(self.dir.as_fd()), rel),
        };
        let name = CString::new(name).map_err(|_| invalid("NUL in path".into()))?;
        Ok(Parent { dir, name })
    }

    /// A directory beneath the root as a root of its own.
    pub fn subdir(&self, rel: &[u8]) -> io::Result<Root> {
        let dir = self.resolve(rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok(Root { dir, dev: self.dev, path: self.shown(rel), walk: self.walk })
    }

    /// What is at `rel` (a link itself, not its target); `None` when nothing is.
    pub fn stat(&self, rel: &[u8]) -> io::Result<Option<Stat>> {
        let r = if rel.is_empty() {
            rustix::fs::fstat(&self.dir)
        } else {
            match self.parent(rel) {
                Ok(p) => rustix::fs::statat(&p.dir, &p.name, AtFlags::SYMLINK_NOFOLLOW),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        match r {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the regular file at `rel` for reading. Anything else there (a
    /// link, a fifo, a device, a directory) is refused without being opened.
    pub fn open_file(&self, rel: &[u8]) -> io::Result<File> {
        let p = self.parent(rel)?;
        let st = rustix::fs::statat(&p.dir, &p.name, AtFlags::SYMLINK_NOFOLLOW)?;
        if !is(&st, FileType::RegularFile) {
            return Err(invalid(format!("'{}' is not a regular file", self.shown(rel).display())));
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&p.dir, &p.name, flags, Mode::empty())?;
        let opened = rustix::fs::fstat(&fd)?;
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) || !is(&opened, FileType::RegularFile) {
            return Err(invalid(format!("'{}' changed while it was opened", self.shown(rel).display())));
        }
        // Reads of a regular file never block; blocking mode is what callers expect.
        rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
        Ok(File::from(fd))
    }

    /// Creates the new regular file `rel` (nothing may be there) for writing, mode `mode`.
    pub fn create(&self, rel: &[u8], mode: u32) -> io::Result<File> {
        let p = self.parent(rel)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(&p.dir, &p.name, flags, Mode::from_raw_mode(mode))?))
    }

    /// Removes whatever is at `rel` (a directory with everything in it,
    /// not entering other file systems); nothing there is fine.
    pub fn remove(&self, rel: &[u8]) -> io::Result<()> {
        let p = match self.parent(rel) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        remove_at(p.dir.as_fd(), &p.name, self.dev, 0)
    }

    /// Moves `from` (beneath this root) to `to` beneath `dest` (the same
    /// file system), replacing a file there.
    pub fn rename(&self, from: &[u8], dest: &Root, to: &[u8]) -> io::Result<()> {
        let (a, b) = (self.parent(from)?, dest.parent(to)?);
        Ok(rustix::fs::renameat(&a.dir, &a.name, &b.dir, &b.name)?)
    }

    /// Makes `to` another name of the file at `from`.
    pub fn hard_link(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let (a, b) = (self.parent(from)?, self.parent(to)?);
        Ok(rustix::fs::linkat(&a.dir, &a.name, &b.dir, &b.name, AtFlags::empty())?)
    }

    /// Creates the directory `rel` with `mode`.
    pub fn mkdir(&self, rel: &[u8], mode: u32) -> io::Result<()> {
        let p = self.parent(rel)?;
        Ok(rustix::fs::mkdirat(&p.dir, &p.name, Mode::from_raw_mode(mode))?)
    }

    /// Creates the symbolic link `rel` pointing at `target`.
    pub fn symlink(&self, rel: &[u8], target: &[u8]) -> io::Result<()> {
        let p = self.parent(rel)?;
        let target = CString::new(target).map_err(|_| invalid("NUL in link target".into()))?;
        Ok(rustix::fs::symlinkat(target.as_c_str(), &p.dir, &p.name)?)
    }

    /// Creates the special file `rel` (device, fifo or socket) of type `t`.
    pub fn mknod(&self, rel: &[u8], t: FileType, mode: u32, rdev: u64) -> io::Result<()> {
        let p = self.parent(rel)?;
        Ok(rustix::fs::mknodat(&p.dir, &p.name, t, Mode::from_raw_mode(mode), rdev)?)
    }

    /// The target of the symbolic link `rel`.
    pub fn read_link(&self, rel: &[u8]) -> io::Result<Vec<u8>> {
        let p = self.parent(rel)?;
        Ok(rustix::fs::readlinkat(&p.dir, &p.name, Vec::new())?.into_bytes())
    }

    /// The names in directory `rel`, sorted by their bytes.
    pub fn names(&self, rel: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let dir = self.resolve(rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        names_in(dir.as_fd())
    }

    /// The object at `rel`, held for a series of metadata changes (see [`Node`]).
    pub fn node(&self, rel: &[u8]) -> io::Result<Node<'_>> {
        let (dir, name) = if rel.is_empty() {
            (Dir::Root(self.dir.as_fd()), CString::new(".").expect("no NUL"))
        } else {
            let p = self.parent(rel)?;
            (p.dir, p.name)
        };
        let st = rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW)?;
        let flags = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => OFlags::RDONLY | OFlags::DIRECTORY,
            FileType::RegularFile => OFlags::RDONLY | OFlags::NONBLOCK,
            _ => return Ok(Node { st, how: Held::Named(dir, name) }),
        };
        let fd = rustix::fs::openat(
            &dir,
            &name,
            flags | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let opened = rustix::fs::fstat(&fd)?;
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) || opened.st_dev != self.dev {
            return Err(invalid(format!("'{}' changed while it was opened", self.shown(rel).display())));
        }
        Ok(Node { st: opened, how: Held::Open(fd) })
    }

    /// Sets the modification time of `rel` (a link itself); the access time stays.
    pub fn set_mtime(&self, rel: &[u8], secs: i64) -> io::Result<()> {
        self.node(rel)?.set_mtime(secs)
    }

    /// Writes out everything cached for the root's file system.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::syncfs(&self.dir)?)
    }

    /// Size in bytes and inode count of the root's file system.
    pub fn capacity(&self) -> io::Result<(u64, u64)> {
        let st = rustix::fs::fstatvfs(&self.dir)?;
        Ok((st.f_blocks * st.f_frsize, st.f_files))
    }
}

/// An object beneath a root, held for metadata changes: a directory or a
/// regular file through a descriptor of its own (`fchown`, `fchmod`,
/// `f*xattr`, `futimens`), anything else — a link, a device, a fifo, a
/// socket, never opened — through its parent's descriptor and its name
/// (`fchownat` and `utimensat` without following, `l*xattr` on
/// `/proc/self/fd/<parent>/<name>`).
pub struct Node<'a> {
    st: Stat,
    how: Held<'a>,
}

enum Held<'a> {
    Open(OwnedFd),
    Named(Dir<'a>, CString),
}

impl Node<'_> {
    /// What the object is (as it was when it was taken).
    pub fn stat(&self) -> &Stat {
        &self.st
    }

    /// The `/proc/self/fd/<parent>/<name>` path of a named object.
    fn proc_path(dir: &Dir<'_>, name: &CStr) -> CString {
        use std::os::fd::AsRawFd;
        let mut path = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
        path.extend_from_slice(name.to_bytes());
        CString::new(path).expect("no NUL")
    }

    /// Gives the object owner `uid` and group `gid`.
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        let (u, g) = (Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)));
        let done = match &self.how {
            Held::Open(fd) => rustix::fs::fchown(fd, u, g),
            Held::Named(dir, name) => rustix::fs::chownat(dir, name.as_c_str(), u, g, AtFlags::SYMLINK_NOFOLLOW),
        };
        Ok(done?)
    }

    /// Sets the permission bits; a symbolic link has none to set.
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        let mode = Mode::from_raw_mode(mode);
        let done = match &self.how {
            Held::Open(fd) => rustix::fs::fchmod(fd, mode),
            Held::Named(..) if is(&self.st, FileType::Symlink) => {
                return Err(invalid("a symbolic link has no mode to set".into()));
            }
            // A device, fifo or socket: its name was just seen to be one (not a link).
            Held::Named(dir, name) => rustix::fs::chmodat(dir, name.as_c_str(), mode, AtFlags::empty()),
        };
        Ok(done?)
    }

    /// Sets the modification time; the access time stays.
    pub fn set_mtime(&self, secs: i64) -> io::Result<()> {
        let times = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
            last_modification: rustix::fs::Timespec { tv_sec: secs, tv_nsec: 0 },
        };
        let done = match &self.how {
            Held::Open(fd) => rustix::fs::futimens(fd, &times),
            Held::Named(dir, name) => rustix::fs::utimensat(dir, name.as_c_str(), &times, AtFlags::SYMLINK_NOFOLLOW),
        };
        Ok(done?)
    }

    /// The extended attributes, name → value; none where the file system keeps none.
    pub fn xattrs(&self) -> io::Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = std::collections::BTreeMap::new();
        let mut names = vec![0u8; 1024];
        let len = loop {
            let r = match &self.how {
                Held::Open(fd) => rustix::fs::flistxattr(fd, &mut names[..]),
                Held::Named(dir, name) => rustix::fs::llistxattr(Self::proc_path(dir, name).as_c_str(), &mut names[..]),
            };
            match r {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
                Err(rustix::io::Errno::NOTSUP) => return Ok(out),
                Err(e) => return Err(e.into()),
            }
        };
        for attr in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let cattr = CString::new(attr).expect("split at NUL");
            let mut value = vec![0u8; 256];
            let n = loop {
                let r = match &self.how {
                    Held::Open(fd) => rustix::fs::fgetxattr(fd, cattr.as_c_str(), &mut value[..]),
                    Held::Named(dir, name) => {
                        rustix::fs::lgetxattr(Self::proc_path(dir, name).as_c_str(), cattr.as_c_str(), &mut value[..])
                    }
                };
                match r {
                    Ok(n) => break n,
                    Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                    Err(e) => return Err(e.into()),
                }
            };
            value.truncate(n);
            out.insert(attr.to_vec(), value);
        }
        Ok(out)
    }

    /// Sets the extended attribute `attr`.
    pub fn set_xattr(&self, attr: &CStr, value: &[u8]) -> io::Result<()> {
        let flags = rustix::fs::XattrFlags::empty();
        let done = match &self.how {
            Held::Open(fd) => rustix::fs::fsetxattr(fd, attr, value, flags),
            Held::Named(dir, name) => rustix::fs::lsetxattr(Self::proc_path(dir, name).as_c_str(), attr, value, flags),
        };
        Ok(done?)
    }

    /// Removes the extended attribute `attr`.
    pub fn remove_xattr(&self, attr: &CStr) -> io::Result<()> {
        let done = match &self.how {
            Held::Open(fd) => rustix::fs::fremovexattr(fd, attr),
            Held::Named(dir, name) => rustix::fs::lremovexattr(Self::proc_path(dir, name).as_c_str(), attr),
        };
        Ok(done?)
    }
}

/// The names in the open directory `dir`, sorted.
fn names_in(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir)?;
    while let Some(e) = d.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// Directory levels [`remove_at`] descends at most (each holds a descriptor).
pub const MAX_DEPTH: usize = 256;

/// Removes `name` in `dir` and, for a directory, everything below it on
/// the file system `dev`.
fn remove_at(dir: BorrowedFd<'_>, name: &CStr, dev: u64, depth: usize) -> io::Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !is(&st, FileType::Directory) {
        return Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?);
    }
    if st.st_dev != dev {
        return Err(io::Error::other(format!("'{}' is another file system", name.to_string_lossy())));
    }
    if depth >= MAX_DEPTH {
        return Err(io::Error::other(format!("directories nested deeper than {MAX_DEPTH} levels")));
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let sub = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    if rustix::fs::fstat(&sub)?.st_dev != dev {
        return Err(io::Error::other(format!("'{}' is another file system", name.to_string_lossy())));
    }
    for n in names_in(sub.as_fd())? {
        let n = CString::new(n).expect("directory entries hold no NUL");
        remove_at(sub.as_fd(), &n, dev, depth + 1)?;
    }
    drop(sub);
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::{MetadataExt, symlink};

    fn setup() -> (tempfile::TempDir, Root, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("root"), t.path().join("outside"));
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("f"), b"outside").unwrap();
        std::fs::write(root.join("d/file"), b"inside").unwrap();
        symlink(&outside, root.join("link-dir")).unwrap();
        symlink(outside.join("f"), root.join("link-file")).unwrap();
        symlink("../outside", root.join("d/up")).unwrap();
        let r = Root::open(&root).unwrap();
        (t, r, outside)
    }

    /// Runs `f` with `openat2` and again walking components.
    fn each_way(f: impl Fn(&Root, &Path)) {
        for walk in [false, true] {
            let (_t, mut r, outside) = setup();
            r.walk = walk;
            f(&r, &outside);
        }
    }

    #[test]
    fn no_link_is_followed_and_nothing_outside_is_reached() {
        each_way(|r, outside| {
            let mut s = String::new();
            r.open_file(b"d/file").unwrap().read_to_string(&mut s).unwrap();
            assert_eq!(s, "inside");
            for rel in
                [&b"link-file"[..], b"link-dir/f", b"d/up/f", b"../outside/f", b"d/../d/file", b"/d/file", b"d//file"]
            {
                assert!(r.open_file(rel).is_err(), "{}", String::from_utf8_lossy(rel));
                assert!(r.create(rel, 0o644).is_err(), "{}", String::from_utf8_lossy(rel));
            }
            assert!(r.names(b"link-dir").is_err());
            assert!(r.subdir(b"link-dir").is_err());
            assert!(r.stat(b"link-dir/f").is_err());
            // The link itself is seen, removed, replaced.
            assert!(is(&r.stat(b"link-dir").unwrap().unwrap(), FileType::Symlink));
            let link = r.node(b"link-file").unwrap();
            assert!(link.chmod(0o600).is_err());
            link.chown(0, 0).unwrap();
            link.set_mtime(12345).unwrap();
            assert_eq!(r.stat(b"link-file").unwrap().unwrap().st_mtime, 12345);
            assert_ne!(std::fs::metadata(outside.join("f")).unwrap().mtime(), 12345);
            drop(link);
            r.remove(b"link-dir").unwrap();
            r.remove(b"link-file").unwrap();
            r.mkdir(b"link-dir", 0o755).unwrap();
            r.create(b"link-dir/new", 0o600).unwrap().write_all(b"new").unwrap();
            assert_eq!(std::fs::read_dir(outside).unwrap().count(), 1);
            assert_eq!(std::fs::read(outside.join("f")).unwrap(), b"outside");
            assert_eq!(r.names(b"").unwrap(), vec![b"d".to_vec(), b"link-dir".to_vec()]);
            assert_eq!(r.read_link(b"d/up").unwrap(), b"../outside");
            assert_eq!(r.stat(b"missing/deeper").unwrap().map(|_| ()), None);
        });
    }

    #[test]
    fn fifos_and_devices_are_not_opened() {
        each_way(|r, _| {
            r.mknod(b"d/fifo", FileType::Fifo, 0o644, 0).unwrap();
            let e = r.open_file(b"d/fifo").unwrap_err().to_string();
            assert!(e.ends_with("d/fifo' is not a regular file"), "{e}");
            r.mknod(b"d/zero", FileType::CharacterDevice, 0o644, rustix::fs::makedev(1, 5)).unwrap();
            assert!(r.open_file(b"d/zero").is_err());
            assert!(r.open_file(b"d").is_err());
            r.node(b"d/fifo").unwrap().chmod(0o600).unwrap();
            assert_eq!(r.stat(b"d/fifo").unwrap().unwrap().st_mode & 0o7777, 0o600);
            r.node(b"d/file").unwrap().chmod(0o640).unwrap();
            assert_eq!(r.stat(b"d/file").unwrap().unwrap().st_mode & 0o7777, 0o640);
        });
    }

    #[test]
    fn removal_stays_below_the_root_and_renames_move_between_roots() {
        each_way(|r, outside| {
            symlink(outside, r.path().join("d/e/out")).unwrap();
            r.remove(b"d").unwrap();
            assert!(r.stat(b"d").unwrap().is_none());
            assert_eq!(std::fs::read(outside.join("f")).unwrap(), b"outside");
            r.mkdir(b"s", 0o700).unwrap();
            let s = r.subdir(b"s").unwrap();
            s.create(b"x", 0o600).unwrap().write_all(b"x").unwrap();
            r.mkdir(b"t", 0o755).unwrap();
            s.rename(b"x", r, b"t/y").unwrap();
            r.hard_link(b"t/y", b"t/z").unwrap();
            assert_eq!(r.stat(b"t/z").unwrap().unwrap().st_nlink, 2);
            r.symlink(b"t/l", b"y").unwrap();
            assert_eq!(r.read_link(b"t/l").unwrap(), b"y");
        });
    }

    #[test]
    fn xattrs_are_read_and_set_on_the_object_itself() {
        each_way(|r, outside| {
            let name = c"user.rota";
            let file = r.node(b"d/file").unwrap();
            match file.set_xattr(name, b"v") {
                // tmpfs without user xattrs: nothing to check here.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return,
                other => other.unwrap(),
            }
            assert_eq!(file.xattrs().unwrap().get(&b"user.rota"[..]).map(Vec::as_slice), Some(&b"v"[..]));
            file.remove_xattr(name).unwrap();
            assert!(file.xattrs().unwrap().is_empty());
            // On a fifo (named, not opened): trusted.* is root's to set.
            r.mknod(b"d/fifo", FileType::Fifo, 0o644, 0).unwrap();
            let fifo = r.node(b"d/fifo").unwrap();
            fifo.set_xattr(c"trusted.rota", b"f").unwrap();
            assert_eq!(fifo.xattrs().unwrap().get(&b"trusted.rota"[..]).map(Vec::as_slice), Some(&b"f"[..]));
            // user xattrs cannot go on links: the link is addressed, not its target.
            assert!(r.node(b"link-file").unwrap().set_xattr(name, b"v").is_err());
            assert!(std::fs::read_dir(outside).is_ok());
        });
    }
}
