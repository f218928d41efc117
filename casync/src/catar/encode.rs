//! Directory tree → `.catar` stream, as `casync make` writes it for the
//! same feature flags (spec §5): entries in byte order of their names,
//! metadata reduced to what the flags keep, one GOODBYE table per
//! directory. Streams: memory is one read buffer plus, per directory on
//! the current path, one small record per child.

use super::linux;
use super::{CatarError, GoodbyeItem, goodbye_order, name_hash};
use crate::flags as f;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// What an encoding wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Bytes of the archive.
    pub bytes: u64,
    /// Entries archived (the root included).
    pub entries: u64,
}

/// Where an archive goes: its bytes, and (for those who map it, as a
/// directory seed does) where each file's contents lie in it.
pub trait Sink: Write {
    /// The next `len` bytes written are the contents of the file `path`.
    fn payload(&mut self, _path: &Path, _len: u64) {}
}

/// A plain `Write` as a [`Sink`].
struct Plain<W: Write>(W);

impl<W: Write> Write for Plain<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Sink for Plain<W> {}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn payload(&mut self, path: &Path, len: u64) {
        (**self).payload(path, len)
    }
}

/// Writes the archive of the directory `root` with feature flags `flags`
/// (normalised; see [`crate::flags::archive_flags`]) to `out`.
pub fn encode(root: &Path, flags: u64, out: impl Write) -> Result<Encoded, CatarError> {
    encode_to(root, flags, &mut Plain(out))
}

/// [`encode`] into a [`Sink`].
pub fn encode_to(root: &Path, flags: u64, out: &mut dyn Sink) -> Result<Encoded, CatarError> {
    let flags = crate::flags::check(flags)
        .map_err(|e| CatarError::Unrepresentable { path: root.display().to_string(), reason: e.to_string() })?;
    let meta = std::fs::symlink_metadata(root).map_err(|e| CatarError::io(root.display(), e))?;
    if !meta.is_dir() {
        return Err(CatarError::Unrepresentable {
            path: root.display().to_string(),
            reason: "an archive's root must be a directory".into(),
        });
    }
    let mut e = Encoder { out, pos: 0, flags, entries: 0 };
    e.node(root, &meta)?;
    e.out.flush().map_err(|err| CatarError::io("archive", err))?;
    Ok(Encoded { bytes: e.pos, entries: e.entries })
}

struct Encoder<W: Sink> {
    out: W,
    pos: u64,
    flags: u64,
    entries: u64,
}

fn unrepresentable(path: &Path, reason: impl Into<String>) -> CatarError {
    CatarError::Unrepresentable { path: path.display().to_string(), reason: reason.into() }
}

/// Opens the file or directory `path` without following a link or blocking,
/// and checks it is still the entry `meta` describes.
fn open_checked(path: &Path, meta: &Metadata) -> Result<File, CatarError> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK);
    let file = o.open(path).map_err(|e| CatarError::io(path.display(), e))?;
    let now = file.metadata().map_err(|e| CatarError::io(path.display(), e))?;
    if now.dev() != meta.dev() || now.ino() != meta.ino() {
        return Err(unrepresentable(path, "changed while it was being archived"));
    }
    Ok(file)
}

impl<W: Sink> Encoder<W> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), CatarError> {
        self.out.write_all(bytes).map_err(|e| CatarError::io("archive", e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn record(&mut self, kind: u64, body: &[u8]) -> Result<(), CatarError> {
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&(16 + body.len() as u64).to_le_bytes());
        head[8..].copy_from_slice(&kind.to_le_bytes());
        self.write(&head)?;
        self.write(body)
    }

    fn words(&mut self, kind: u64, words: &[u64]) -> Result<(), CatarError> {
        let body: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.record(kind, &body)
    }

    fn string(&mut self, kind: u64, text: &[u8]) -> Result<(), CatarError> {
        let mut body = text.to_vec();
        body.push(0);
        self.record(kind, &body)
    }

    /// The `mode` field of `meta` under the flags (spec §5.3).
    fn mode(&self, meta: &Metadata) -> u64 {
        let m = meta.mode();
        let t = m & S_IFMT;
        let perm = m & 0o7777;
        let dir = t == S_IFDIR;
        let kept = if t == S_IFLNK {
            0o777
        } else if self.flags & (f::PERMISSIONS | f::ACL) != 0 {
            perm
        } else if self.flags & f::READ_ONLY != 0 {
            match (dir, perm & 0o222 != 0) {
                (true, true) => 0o777,
                (true, false) => 0o555,
                (false, true) => 0o666,
                (false, false) => 0o444,
            }
        } else if dir {
            0o777
        } else {
            0o666
        };
        u64::from(t | kept)
    }

    fn id(&self, path: &Path, id: u32, what: &str) -> Result<u64, CatarError> {
        if self.flags & f::UID16 != 0 {
            if id >= 0xFFFF {
                return Err(unrepresentable(path, format!("{what} {id} does not fit 16-bit ids (use 32bit-uids)")));
            }
            Ok(u64::from(id))
        } else if self.flags & f::UID32 != 0 {
            if id == 0xFFFF || id == u32::MAX {
                return Err(unrepresentable(path, format!("{what} {id} cannot be archived")));
            }
            Ok(u64::from(id))
        } else {
            Ok(0)
        }
    }

    fn mtime(&self, meta: &Metadata) -> u64 {
        let ns = (meta.mtime().max(0) as u64).saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec() as u64);
        match f::time_granularity(self.flags) {
            Some(g) => ns - ns % g,
            None => 0,
        }
    }

    /// One entry: ENTRY, metadata, content, and for a directory its children.
    fn node(&mut self, path: &Path, meta: &Metadata) -> Result<(), CatarError> {
        let ft = meta.file_type();
        let (is_dir, is_file) = (ft.is_dir(), ft.is_file());
        let opened = if is_dir || is_file { Some(open_checked(path, meta)?) } else { None };
        let attrs = match &opened {
            Some(file) => linux::inode_flags(file).map_err(|e| CatarError::io(path.display(), e))?,
            None => 0,
        } & self.flags
            & (f::CHATTR | f::FAT_ATTRS);
        let entry_pos = self.pos;
        self.entries += 1;
        let (uid, gid) = (self.id(path, meta.uid(), "uid")?, self.id(path, meta.gid(), "gid")?);
        let mode = self.mode(meta);
        let mtime = self.mtime(meta);
        self.words(super::ENTRY, &[self.flags, mode, attrs, uid, gid, mtime])?;
        self.metadata(path, meta, opened.as_ref())?;
        if is_file {
            let file = opened.expect("opened above");
            let size = meta.len();
            let mut head = [0u8; 16];
            head[..8].copy_from_slice(&(16 + size).to_le_bytes());
            head[8..].copy_from_slice(&super::PAYLOAD.to_le_bytes());
            self.write(&head)?;
            let copied =
                io::copy(&mut (&file).take(size), &mut self.out).map_err(|e| CatarError::io(path.display(), e))?;
            self.pos += copied;
            if copied != size {
                return Err(unrepresentable(path, "changed size while it was being archived"));
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| CatarError::io(path.display(), e))?;
            let t = target.as_os_str().as_bytes();
            if t.is_empty() || t.len() + 1 > super::SYMLINK_MAX {
                return Err(unrepresentable(path, "symlink target empty or too long"));
            }
            self.string(super::SYMLINK, t)?;
        } else if ft.is_block_device() || ft.is_char_device() {
            let rdev = meta.rdev();
            self.words(super::DEVICE, &[u64::from(libc::major(rdev)), u64::from(libc::minor(rdev))])?;
        } else if is_dir {
            let dir = opened.expect("opened above");
            // Virtual kernel file systems are archived as empty directories.
            let items = if linux::is_virtual_fs(&dir) { Vec::new() } else { self.children(path, meta)? };
            self.goodbye(entry_pos, items)?;
        }
        Ok(())
    }

    /// The optional records of §5.4, in their order.
    fn metadata(&mut self, path: &Path, meta: &Metadata, opened: Option<&File>) -> Result<(), CatarError> {
        let symlink = meta.file_type().is_symlink();
        if self.flags & f::USER_NAMES != 0 {
            for (id, group, kind) in [(meta.uid(), false, super::USER), (meta.gid(), true, super::GROUP)] {
                if id != 0
                    && let Some(name) = linux::id_name(id, group)
                {
                    self.string(kind, name.as_bytes())?;
                }
            }
        }
        let io = |e| CatarError::io(path.display(), e);
        let wants_xattrs = self.flags & (f::XATTRS | f::ACL | f::SELINUX | f::FCAPS) != 0 && !symlink;
        let names = if wants_xattrs { linux::xattr_names(path).map_err(io)? } else { Vec::new() };
        if self.flags & f::XATTRS != 0 {
            let mut stored: Vec<&Vec<u8>> =
                names.iter().filter(|n| n.starts_with(b"user.") || n.starts_with(b"trusted.")).collect();
            stored.sort();
            for name in stored {
                if name.len() > super::XATTR_NAME_MAX {
                    return Err(unrepresentable(path, "xattr name too long"));
                }
                let Some(value) = linux::xattr(path, name).map_err(io)? else { continue };
                if value.len() > super::XATTR_VALUE_MAX {
                    return Err(unrepresentable(path, "xattr value larger than 64 KiB"));
                }
                let mut body = name.clone();
                body.push(0);
                body.extend(&value);
                self.record(super::XATTR, &body)?;
            }
        }
        if self.flags & f::ACL != 0 && !symlink {
            self.acls(path, meta, &names)?;
        }
        let has = |n: &[u8]| names.iter().any(|x| x == n);
        if self.flags & f::SELINUX != 0
            && has(b"security.selinux")
            && let Some(mut label) = linux::xattr(path, b"security.selinux").map_err(io)?
        {
            while label.last() == Some(&0) {
                label.pop();
            }
            if !label.is_empty() {
                self.string(super::SELINUX, &label)?;
            }
        }
        if self.flags & f::FCAPS != 0
            && meta.is_file()
            && has(b"security.capability")
            && let Some(caps) = linux::xattr(path, b"security.capability").map_err(io)?
        {
            self.record(super::FCAPS, &caps)?;
        }
        if self.flags & f::QUOTA_PROJID != 0
            && let Some(file) = opened
        {
            let id = linux::project_id(file).map_err(io)?;
            if id != 0 {
                self.words(super::QUOTA_PROJID, &[u64::from(id)])?;
            }
        }
        Ok(())
    }

    /// The access ACL's named entries and group-object permissions, and a
    /// directory's default ACL (spec §5.2, §5.4).
    fn acls(&mut self, path: &Path, meta: &Metadata, names: &[Vec<u8>]) -> Result<(), CatarError> {
        let io = |e| CatarError::io(path.display(), e);
        let read = |name: &[u8]| -> Result<Option<Vec<linux::AclEntry>>, CatarError> {
            if !names.iter().any(|n| n == name) {
                return Ok(None);
            }
            let Some(v) = linux::xattr(path, name).map_err(io)? else { return Ok(None) };
            linux::parse_acl(&v).map(Some).ok_or_else(|| unrepresentable(path, "unreadable POSIX ACL"))
        };
        if let Some(acl) = read(b"system.posix_acl_access")? {
            self.acl_entries(path, &acl, super::ACL_USER, super::ACL_GROUP)?;
            if acl.iter().any(|e| e.tag == linux::TAG_MASK)
                && let Some(g) = acl.iter().find(|e| e.tag == linux::TAG_GROUP_OBJ)
            {
                self.words(super::ACL_GROUP_OBJ, &[u64::from(g.perm)])?;
            }
        }
        if meta.is_dir()
            && let Some(acl) = read(b"system.posix_acl_default")?
        {
            let perm = |tag| acl.iter().find(|e| e.tag == tag).map(|e| u64::from(e.perm));
            let mask = perm(linux::TAG_MASK).unwrap_or(super::ACL_NO_MASK);
            let obj = |tag| perm(tag).unwrap_or(0);
            self.words(
                super::ACL_DEFAULT,
                &[obj(linux::TAG_USER_OBJ), obj(linux::TAG_GROUP_OBJ), obj(linux::TAG_OTHER), mask],
            )?;
            self.acl_entries(path, &acl, super::ACL_DEFAULT_USER, super::ACL_DEFAULT_GROUP)?;
        }
        Ok(())
    }

    fn acl_entries(&mut self, path: &Path, acl: &[linux::AclEntry], user: u64, group: u64) -> Result<(), CatarError> {
        for (tag, kind) in [(linux::TAG_USER, user), (linux::TAG_GROUP, group)] {
            let mut entries: Vec<(u64, Option<String>, u64)> = Vec::new();
            for e in acl.iter().filter(|e| e.tag == tag) {
                let id = self.id(path, e.id, "ACL id")?;
                let name =
                    if self.flags & f::USER_NAMES != 0 { linux::id_name(e.id, tag == linux::TAG_GROUP) } else { None };
                entries.push((id, name, u64::from(e.perm)));
            }
            entries.sort();
            for (id, name, perm) in entries {
                let mut body: Vec<u8> = id.to_le_bytes().into_iter().chain(perm.to_le_bytes()).collect();
                if let Some(n) = name {
                    body.extend(n.as_bytes());
                    body.push(0);
                }
                self.record(kind, &body)?;
            }
        }
        Ok(())
    }

    /// Whether the flags keep an entry of this type at all (§5.5).
    fn keeps(&self, meta: &Metadata) -> bool {
        let ft = meta.file_type();
        let needs = if ft.is_symlink() {
            f::SYMLINKS
        } else if ft.is_block_device() || ft.is_char_device() {
            f::DEVICE_NODES
        } else if ft.is_fifo() {
            f::FIFOS
        } else if ft.is_socket() {
            f::SOCKETS
        } else {
            return true;
        };
        self.flags & needs != 0
    }

    /// The GOODBYE record of the directory whose ENTRY is at `entry_pos`.
    fn goodbye(&mut self, entry_pos: u64, items: Vec<GoodbyeItem>) -> Result<(), CatarError> {
        let start = self.pos;
        let size = 16 + 24 * items.len() as u64 + 24;
        let mut words = Vec::with_capacity(3 * items.len() + 3);
        for it in goodbye_order(items) {
            words.extend([start - it.start, it.size, it.hash]);
        }
        words.extend([start - entry_pos, size, super::GOODBYE_TAIL_MARKER]);
        self.words(super::GOODBYE, &words)
    }

    /// The children of directory `path`, in byte order of their names;
    /// returns their GOODBYE items.
    fn children(&mut self, path: &Path, meta: &Metadata) -> Result<Vec<GoodbyeItem>, CatarError> {
        let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(path)
            .map_err(|e| CatarError::io(path.display(), e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| CatarError::io(path.display(), e))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        if self.flags & f::EXCLUDE_FILE != 0 && names.iter().any(|n| n.as_bytes() == b".caexclude") {
            return Err(unrepresentable(path, ".caexclude files are not supported (encode without exclude-file)"));
        }
        let mut items = Vec::new();
        for name in names {
            let child = path.join(&name);
            let cmeta = std::fs::symlink_metadata(&child).map_err(|e| CatarError::io(child.display(), e))?;
            if !self.keeps(&cmeta) {
                continue;
            }
            if self.flags & f::EXCLUDE_SUBMOUNTS != 0 && cmeta.is_dir() && cmeta.dev() != meta.dev() {
                continue;
            }
            if self.flags & f::EXCLUDE_NODUMP != 0 && (cmeta.is_dir() || cmeta.is_file()) {
                let file = open_checked(&child, &cmeta)?;
                let attrs = linux::inode_flags(&file).map_err(|e| CatarError::io(child.display(), e))?;
                if attrs & f::FLAG_NODUMP != 0 {
                    continue;
                }
            }
            let bytes = name.as_bytes();
            if bytes.len() + 1 > super::FILENAME_MAX {
                return Err(unrepresentable(&child, "file name longer than 255 bytes"));
            }
            let start = self.pos;
            self.string(super::FILENAME, bytes)?;
            self.node(&child, &cmeta)?;
            items.push(GoodbyeItem { hash: name_hash(bytes), start, size: self.pos - start });
        }
        Ok(items)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testdata::lcg;
    use sha2::Digest;

    /// The spec's TV-5 tree below `dir` (owned by the caller: root in CI).
    pub(crate) fn tv5_tree(dir: &Path) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let tree = dir.join("tree");
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(tree.join("b")).unwrap();
        std::fs::write(tree.join("a.txt"), "hello\n").unwrap();
        std::fs::write(tree.join("b/c.bin"), lcg(7, 1000)).unwrap();
        std::fs::write(tree.join("empty"), "").unwrap();
        std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
        for (p, m) in [("", 0o755), ("b", 0o755), ("a.txt", 0o644), ("empty", 0o644), ("b/c.bin", 0o600)] {
            std::fs::set_permissions(tree.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        let t = libc::timespec { tv_sec: 1_700_000_000, tv_nsec: 0 };
        for p in ["link", "a.txt", "b/c.bin", "empty", "b", ""] {
            let c = std::ffi::CString::new(tree.join(p).as_os_str().as_bytes()).unwrap();
            // SAFETY: valid path and two timespecs.
            let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
            assert_eq!(rc, 0);
            // SAFETY: valid path.
            unsafe { libc::lchown(c.as_ptr(), 0, 0) };
        }
        tree
    }

    #[test]
    fn tv5_is_encoded_byte_for_byte() {
        if unsafe { libc::geteuid() } != 0 {
            return; // owners 0:0 need root
        }
        let dir = std::env::temp_dir().join(format!("casync-rs-tv5-{}", std::process::id()));
        let tree = tv5_tree(&dir);
        let mut out = Vec::new();
        let done = encode(&tree, f::archive_flags(&["unix"], &[], true).unwrap(), &mut out).unwrap();
        assert_eq!(done, Encoded { bytes: 1765, entries: 6 });
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&out)),
            "a28363fd68f1ec9504c207fd7a1f53247a50326bb91e0314033eb358a0c5c6bb"
        );
        // An empty directory: ENTRY and a GOODBYE with only its tail.
        let edir = dir.join("edir");
        std::fs::create_dir(&edir).unwrap();
        let t = libc::timespec { tv_sec: 1_700_000_000, tv_nsec: 0 };
        let c = std::ffi::CString::new(edir.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path and two timespecs.
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) };
        let mut out = Vec::new();
        encode(&edir, f::archive_flags(&["unix"], &[], true).unwrap(), &mut out).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&out)),
            "e21cbbd3e1a1cd5892a9fa16086e8eaa2b4f8d3d858715a93cfcbf764430d912"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
