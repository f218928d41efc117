//! `.catar` stream → directory tree. Every record is checked as casync's
//! decoder checks it (spec §5.7) — sizes and limits, the order of records,
//! modes, ids and times consistent with the archive's flags, names that
//! cannot leave their directory and come in strictly increasing order, and
//! each GOODBYE table equal to the one its directory's children give — and
//! the tree is created below the destination with its owners, permissions,
//! times, xattrs, ACLs, capabilities, SELinux labels, attributes and
//! project ids as the flags carry them. Nothing already there is replaced
//! or followed: only an existing real directory is reused (`lost+found` of
//! a fresh file system); any other name that exists is an error.

use super::linux::{self, AclEntry};
use super::{CatarError, GoodbyeItem, goodbye_order, name_hash};
use crate::flags as f;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// What an extraction wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Bytes of the archive read.
    pub bytes: u64,
    /// Entries created (the root included).
    pub entries: u64,
}

/// Recreates the tree of the archive `input` in the directory `dest`
/// (which must exist; the root's metadata is applied to it).
pub fn extract(input: impl Read, dest: &Path) -> Result<Extracted, CatarError> {
    let mut d = Decoder { r: input, pos: 0, peeked: None, flags: None, entries: 0 };
    let Some(root) = d.header()? else { return Err(d.invalid(0, "empty stream".into())) };
    if root.kind != super::ENTRY {
        return Err(d.invalid(0, "the archive does not start with an ENTRY".into()));
    }
    d.node(dest, root, true)?;
    if let Some(h) = d.header()? {
        return Err(d.invalid(h.at, "data after the root directory's GOODBYE".into()));
    }
    Ok(Extracted { bytes: d.pos, entries: d.entries })
}

#[derive(Debug, Clone, Copy)]
struct Header {
    at: u64,
    size: u64,
    kind: u64,
}

/// The metadata records of one entry.
#[derive(Default)]
struct Meta {
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    acl_user: Vec<(u64, u64)>,
    acl_group: Vec<(u64, u64)>,
    acl_group_obj: Option<u64>,
    acl_default: Option<[u64; 4]>,
    acl_default_user: Vec<(u64, u64)>,
    acl_default_group: Vec<(u64, u64)>,
    selinux: Option<Vec<u8>>,
    fcaps: Option<Vec<u8>>,
    projid: Option<u32>,
}

/// The fields of an ENTRY.
#[derive(Debug, Clone, Copy)]
struct Entry {
    mode: u64,
    attrs: u64,
    uid: u64,
    gid: u64,
    mtime: u64,
}

const S_IFMT: u64 = 0o170000;
const TYPES: [u64; 7] = [0o040000, 0o100000, 0o120000, 0o060000, 0o020000, 0o010000, 0o140000];

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The place of each metadata record kind in an entry (§5.1), and whether
/// it may repeat.
fn meta_rank(kind: u64) -> Option<(u8, bool)> {
    Some(match kind {
        super::USER => (1, false),
        super::GROUP => (2, false),
        super::XATTR => (3, true),
        super::ACL_USER => (4, true),
        super::ACL_GROUP => (5, true),
        super::ACL_GROUP_OBJ => (6, false),
        super::ACL_DEFAULT => (7, false),
        super::ACL_DEFAULT_USER => (8, true),
        super::ACL_DEFAULT_GROUP => (9, true),
        super::SELINUX => (10, false),
        super::FCAPS => (11, false),
        super::QUOTA_PROJID => (12, false),
        _ => return None,
    })
}

/// Named ACL entries of one kind: (id, permissions) pairs under `tag`.
fn named(tag: u16, list: &[(u64, u64)]) -> impl Iterator<Item = AclEntry> + '_ {
    list.iter().map(move |&(id, p)| AclEntry { tag, perm: p as u16, id: id as u32 })
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check_rc(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

struct Decoder<R: Read> {
    r: R,
    pos: u64,
    peeked: Option<Header>,
    flags: Option<u64>,
    entries: u64,
}

impl<R: Read> Decoder<R> {
    fn invalid(&self, at: u64, reason: String) -> CatarError {
        CatarError::Invalid { at, reason }
    }

    /// Where the next record starts (a header read ahead is not consumed).
    fn logical_pos(&self) -> u64 {
        self.peeked.map_or(self.pos, |h| h.at)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), CatarError> {
        let at = self.pos;
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => self.invalid(at, "the stream ends inside a record".into()),
            _ => CatarError::io("archive", e),
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// The next record's header; `None` at the very end of the stream.
    fn header(&mut self) -> Result<Option<Header>, CatarError> {
        if let Some(h) = self.peeked.take() {
            return Ok(Some(h));
        }
        let at = self.pos;
        let mut head = [0u8; 16];
        let mut got = 0;
        while got < 16 {
            match self.r.read(&mut head[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(self.invalid(at, "the stream ends inside a record header".into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CatarError::io("archive", e)),
            }
        }
        self.pos += 16;
        let h = Header { at, size: u64_at(&head, 0), kind: u64_at(&head, 8) };
        if h.size < 16 {
            return Err(self.invalid(at, format!("record size {} below its header", h.size)));
        }
        Ok(Some(h))
    }

    /// The body of `h`, at most `max` bytes.
    fn body(&mut self, h: Header, max: usize) -> Result<Vec<u8>, CatarError> {
        let len = h.size - 16;
        if len > max as u64 {
            return Err(self.invalid(h.at, format!("record of {} bytes, at most {max} allowed", h.size)));
        }
        let mut b = vec![0u8; len as usize];
        self.read(&mut b)?;
        Ok(b)
    }

    /// A NUL-terminated string body of at most `max` bytes (NUL included).
    fn string(&mut self, h: Header, max: usize) -> Result<Vec<u8>, CatarError> {
        let mut b = self.body(h, max)?;
        if b.len() < 2 || b.pop() != Some(0) || b.contains(&0) {
            return Err(self.invalid(h.at, "malformed string record".into()));
        }
        Ok(b)
    }

    fn entry(&mut self, h: Header) -> Result<Entry, CatarError> {
        if h.size != 64 {
            return Err(self.invalid(h.at, format!("ENTRY of {} bytes instead of 64", h.size)));
        }
        let b = self.body(h, 48)?;
        let flags = u64_at(&b, 0);
        match self.flags {
            None => {
                f::check(flags).map_err(|e| self.invalid(h.at, e.to_string()))?;
                self.flags = Some(flags);
            }
            Some(first) if first != flags => {
                return Err(
                    self.invalid(h.at, format!("feature flags {flags:#x} differ from the archive's {first:#x}"))
                );
            }
            Some(_) => {}
        }
        let e = Entry {
            mode: u64_at(&b, 8),
            attrs: u64_at(&b, 16),
            uid: u64_at(&b, 24),
            gid: u64_at(&b, 32),
            mtime: u64_at(&b, 40),
        };
        let t = e.mode & S_IFMT;
        if !TYPES.contains(&t) || e.mode & !(S_IFMT | 0o7777) != 0 {
            return Err(self.invalid(h.at, format!("invalid mode {:o}", e.mode)));
        }
        let perm = e.mode & 0o7777;
        let dir = t == 0o040000;
        let perms_ok = if t == 0o120000 {
            perm == 0o777
        } else if flags & (f::PERMISSIONS | f::ACL) != 0 {
            true
        } else if flags & f::READ_ONLY != 0 {
            if dir { perm == 0o777 || perm == 0o555 } else { perm == 0o666 || perm == 0o444 }
        } else {
            perm == if dir { 0o777 } else { 0o666 }
        };
        if !perms_ok {
            return Err(self.invalid(h.at, format!("mode {:o} not possible under the archive's flags", e.mode)));
        }
        let id_limit = if flags & f::UID16 != 0 {
            0xFFFE
        } else if flags & f::UID32 != 0 {
            u64::from(u32::MAX) - 1
        } else {
            0
        };
        let bad_id = |id: u64| id > id_limit || (flags & f::UID32 != 0 && id == 0xFFFF);
        if bad_id(e.uid) || bad_id(e.gid) {
            return Err(self.invalid(h.at, format!("uid {} / gid {} out of range for the flags", e.uid, e.gid)));
        }
        let granule = f::time_granularity(flags);
        if granule.map_or(e.mtime != 0, |g| !e.mtime.is_multiple_of(g)) {
            return Err(self.invalid(h.at, format!("mtime {} not a multiple of the archive's granularity", e.mtime)));
        }
        let allowed = flags & (f::CHATTR | f::FAT_ATTRS | f::SUBVOLUME | f::SUBVOLUME_RO);
        if e.attrs & !allowed != 0 || (e.attrs != 0 && !(dir || t == 0o100000)) {
            return Err(self.invalid(h.at, format!("entry attributes {:#x} not allowed here", e.attrs)));
        }
        Ok(e)
    }

    /// Reads the metadata records after an ENTRY, in their order.
    fn meta(&mut self, e: &Entry) -> Result<Meta, CatarError> {
        let mut m = Meta::default();
        let mut last = 0u8;
        let flags = self.flags.unwrap_or(0);
        loop {
            let Some(h) = self.header()? else { return Ok(m) };
            let Some((rank, repeats)) = meta_rank(h.kind) else {
                self.peeked = Some(h);
                return Ok(m);
            };
            if rank < last || (rank == last && !repeats) {
                return Err(self.invalid(h.at, "metadata record out of order or repeated".into()));
            }
            last = rank;
            let needs = match h.kind {
                super::USER | super::GROUP => f::USER_NAMES,
                super::XATTR => f::XATTRS,
                super::SELINUX => f::SELINUX,
                super::FCAPS => f::FCAPS,
                super::QUOTA_PROJID => f::QUOTA_PROJID,
                _ => f::ACL,
            };
            if flags & needs == 0 {
                return Err(self.invalid(h.at, "metadata record the archive's flags do not allow".into()));
            }
            match h.kind {
                super::USER | super::GROUP => {
                    let name = self.string(h, super::NAME_MAX)?;
                    if name == b"root" || name == b"0" {
                        return Err(self.invalid(h.at, "a name record naming root".into()));
                    }
                }
                super::XATTR => {
                    let b = self.body(h, super::XATTR_NAME_MAX + 1 + super::XATTR_VALUE_MAX)?;
                    let Some(nul) = b.iter().position(|&c| c == 0) else {
                        return Err(self.invalid(h.at, "xattr without a name".into()));
                    };
                    let name = b[..nul].to_vec();
                    if nul == 0
                        || nul > super::XATTR_NAME_MAX
                        || !(name.starts_with(b"user.") || name.starts_with(b"trusted."))
                    {
                        return Err(self.invalid(h.at, "xattr name not allowed".into()));
                    }
                    if m.xattrs.last().is_some_and(|(prev, _)| *prev >= name) {
                        return Err(self.invalid(h.at, "xattrs out of order".into()));
                    }
                    m.xattrs.push((name, b[nul + 1..].to_vec()));
                }
                super::ACL_USER | super::ACL_GROUP | super::ACL_DEFAULT_USER | super::ACL_DEFAULT_GROUP => {
                    let b = self.body(h, 16 + super::NAME_MAX)?;
                    if b.len() < 16 {
                        return Err(self.invalid(h.at, "short ACL entry".into()));
                    }
                    let entry = (u64_at(&b, 0), u64_at(&b, 8));
                    if entry.1 & !7 != 0 || entry.0 > u64::from(u32::MAX) {
                        return Err(self.invalid(h.at, "invalid ACL entry".into()));
                    }
                    let list = match h.kind {
                        super::ACL_USER => &mut m.acl_user,
                        super::ACL_GROUP => &mut m.acl_group,
                        super::ACL_DEFAULT_USER => &mut m.acl_default_user,
                        _ => &mut m.acl_default_group,
                    };
                    list.push(entry);
                }
                super::ACL_GROUP_OBJ => {
                    let b = self.body(h, 8)?;
                    if b.len() != 8 || u64_at(&b, 0) & !7 != 0 {
                        return Err(self.invalid(h.at, "invalid ACL_GROUP_OBJ".into()));
                    }
                    m.acl_group_obj = Some(u64_at(&b, 0));
                }
                super::ACL_DEFAULT => {
                    let b = self.body(h, 32)?;
                    if b.len() != 32 || e.mode & S_IFMT != 0o040000 {
                        return Err(self.invalid(h.at, "invalid ACL_DEFAULT".into()));
                    }
                    m.acl_default = Some([u64_at(&b, 0), u64_at(&b, 8), u64_at(&b, 16), u64_at(&b, 24)]);
                }
                super::SELINUX => m.selinux = Some(self.string(h, super::SELINUX_MAX)?),
                super::FCAPS => {
                    if e.mode & S_IFMT != 0o100000 {
                        return Err(self.invalid(h.at, "capabilities on something other than a regular file".into()));
                    }
                    m.fcaps = Some(self.body(h, super::XATTR_VALUE_MAX)?);
                }
                _ => {
                    let b = self.body(h, 8)?;
                    let id = if b.len() == 8 { u64_at(&b, 0) } else { u64::MAX };
                    if id == 0 || id > u64::from(u32::MAX) {
                        return Err(self.invalid(h.at, "invalid project id".into()));
                    }
                    m.projid = Some(id as u32);
                }
            }
        }
    }

    /// One entry (its ENTRY header already read) created at `path`.
    fn node(&mut self, path: &Path, h: Header, root: bool) -> Result<(), CatarError> {
        let e = self.entry(h)?;
        let meta = self.meta(&e)?;
        self.entries += 1;
        let t = e.mode & S_IFMT;
        let io = |err| CatarError::io(path.display(), err);
        let want = |d: &mut Self, kind: u64, what: &str| -> Result<Header, CatarError> {
            match d.header()? {
                Some(c) if c.kind == kind => Ok(c),
                Some(c) => Err(d.invalid(c.at, format!("{what} expected"))),
                None => Err(d.invalid(d.pos, format!("{what} expected, the stream ended"))),
            }
        };
        if root && t != 0o040000 {
            return Err(self.invalid(h.at, "the archive's root is not a directory".into()));
        }
        match t {
            0o040000 => {
                if !root {
                    let made = std::fs::DirBuilder::new().mode(0o700).create(path);
                    if let Err(err) = made {
                        let reusable = err.kind() == io::ErrorKind::AlreadyExists
                            && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
                        if !reusable {
                            return Err(io(err));
                        }
                    }
                }
                self.children(path, h)?;
            }
            0o100000 => {
                let p = want(self, super::PAYLOAD, "PAYLOAD")?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map_err(io)?;
                let len = p.size - 16;
                let copied = io::copy(&mut (&mut self.r).take(len), &mut file).map_err(io)?;
                self.pos += copied;
                if copied != len {
                    return Err(self.invalid(p.at, "the stream ends inside a file".into()));
                }
                file.flush().map_err(io)?;
            }
            0o120000 => {
                let s = want(self, super::SYMLINK, "SYMLINK")?;
                let target = self.string(s, super::SYMLINK_MAX)?;
                std::os::unix::fs::symlink(std::ffi::OsString::from_vec(target), path).map_err(io)?;
            }
            0o060000 | 0o020000 => {
                let d = want(self, super::DEVICE, "DEVICE")?;
                let b = self.body(d, 16)?;
                if b.len() != 16 || u64_at(&b, 0) >= 1 << 12 || u64_at(&b, 8) >= 1 << 20 {
                    return Err(self.invalid(d.at, "invalid device numbers".into()));
                }
                let dev = libc::makedev(u64_at(&b, 0) as u32, u64_at(&b, 8) as u32);
                // SAFETY: valid path.
                check_rc(unsafe { libc::mknod(cstr(path).map_err(io)?.as_ptr(), (t | 0o600) as libc::mode_t, dev) })
                    .map_err(io)?;
            }
            _ => {
                // FIFO or socket: the node itself, no content record.
                // SAFETY: valid path.
                check_rc(unsafe { libc::mknod(cstr(path).map_err(io)?.as_ptr(), (t | 0o600) as libc::mode_t, 0) })
                    .map_err(io)?;
            }
        }
        self.apply(path, &e, &meta).map_err(io)
    }

    /// The children of the directory whose ENTRY is `dir`, up to and
    /// including its GOODBYE, checked against that table.
    fn children(&mut self, path: &Path, dir: Header) -> Result<(), CatarError> {
        let mut items = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        loop {
            let Some(h) = self.header()? else {
                return Err(self.invalid(self.pos, "the stream ends inside a directory".into()));
            };
            match h.kind {
                super::FILENAME => {
                    let name = self.string(h, super::FILENAME_MAX)?;
                    if name == b"." || name == b".." || name.contains(&b'/') {
                        return Err(self.invalid(h.at, "file name not allowed".into()));
                    }
                    if last.as_ref().is_some_and(|l| *l >= name) {
                        return Err(self.invalid(h.at, "file names not in strictly increasing order".into()));
                    }
                    let child = path.join(std::ffi::OsStr::from_bytes(&name));
                    let Some(entry) = self.header()? else {
                        return Err(self.invalid(self.pos, "FILENAME without its entry".into()));
                    };
                    if entry.kind != super::ENTRY {
                        return Err(self.invalid(entry.at, "ENTRY expected after FILENAME".into()));
                    }
                    self.node(&child, entry, false)?;
                    items.push(GoodbyeItem { hash: name_hash(&name), start: h.at, size: self.logical_pos() - h.at });
                    last = Some(name);
                }
                super::GOODBYE => {
                    let expect = goodbye_order(items);
                    let size = 16 + 24 * expect.len() as u64 + 24;
                    if h.size != size {
                        return Err(
                            self.invalid(h.at, format!("GOODBYE of {} bytes for {} children", h.size, expect.len()))
                        );
                    }
                    let b = self.body(h, size as usize)?;
                    let mut want: Vec<u64> = expect.iter().flat_map(|i| [h.at - i.start, i.size, i.hash]).collect();
                    want.extend([h.at - dir.at, size, super::GOODBYE_TAIL_MARKER]);
                    let got: Vec<u64> =
                        b.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().expect("8"))).collect();
                    if got != want {
                        return Err(self.invalid(h.at, "GOODBYE table does not match the directory".into()));
                    }
                    return Ok(());
                }
                _ => return Err(self.invalid(h.at, "FILENAME or GOODBYE expected".into())),
            }
        }
    }

    /// Owner, permissions, xattrs, ACLs, label, capabilities, attributes,
    /// project id and mtime of the new entry `path`, as the flags carry them.
    fn apply(&self, path: &Path, e: &Entry, m: &Meta) -> io::Result<()> {
        let flags = self.flags.unwrap_or(0);
        let c = cstr(path)?;
        let t = e.mode & S_IFMT;
        let symlink = t == 0o120000;
        if flags & (f::UID16 | f::UID32) != 0 {
            // SAFETY: valid path.
            check_rc(unsafe { libc::lchown(c.as_ptr(), e.uid as u32, e.gid as u32) })?;
        }
        if !symlink {
            // After chown, which clears set-id bits.
            // SAFETY: valid path.
            check_rc(unsafe { libc::chmod(c.as_ptr(), (e.mode & 0o7777) as libc::mode_t) })?;
            for (name, value) in &m.xattrs {
                linux::set_xattr(path, name, value)?;
            }
            let perm = |shift: u64| ((e.mode >> shift) & 7) as u16;
            if !m.acl_user.is_empty() || !m.acl_group.is_empty() || m.acl_group_obj.is_some() {
                let mut acl = vec![
                    AclEntry { tag: linux::TAG_USER_OBJ, perm: perm(6), id: u32::MAX },
                    AclEntry {
                        tag: linux::TAG_GROUP_OBJ,
                        perm: m.acl_group_obj.map_or(perm(3), |p| p as u16),
                        id: u32::MAX,
                    },
                    AclEntry { tag: linux::TAG_MASK, perm: perm(3), id: u32::MAX },
                    AclEntry { tag: linux::TAG_OTHER, perm: perm(0), id: u32::MAX },
                ];
                acl.extend(named(linux::TAG_USER, &m.acl_user).chain(named(linux::TAG_GROUP, &m.acl_group)));
                linux::set_xattr(path, b"system.posix_acl_access", &linux::format_acl(&acl))?;
            }
            if let Some([u, g, o, mask]) = m.acl_default {
                let mut acl = vec![
                    AclEntry { tag: linux::TAG_USER_OBJ, perm: u as u16, id: u32::MAX },
                    AclEntry { tag: linux::TAG_GROUP_OBJ, perm: g as u16, id: u32::MAX },
                    AclEntry { tag: linux::TAG_OTHER, perm: o as u16, id: u32::MAX },
                ];
                if mask != super::ACL_NO_MASK {
                    acl.push(AclEntry { tag: linux::TAG_MASK, perm: mask as u16, id: u32::MAX });
                }
                acl.extend(
                    named(linux::TAG_USER, &m.acl_default_user).chain(named(linux::TAG_GROUP, &m.acl_default_group)),
                );
                linux::set_xattr(path, b"system.posix_acl_default", &linux::format_acl(&acl))?;
            }
            if let Some(label) = &m.selinux {
                let mut v = label.clone();
                v.push(0);
                linux::set_xattr(path, b"security.selinux", &v)?;
            }
            if let Some(caps) = &m.fcaps {
                linux::set_xattr(path, b"security.capability", caps)?;
            }
        }
        if f::time_granularity(flags).is_some() {
            let ts = libc::timespec {
                tv_sec: (e.mtime / 1_000_000_000) as libc::time_t,
                tv_nsec: (e.mtime % 1_000_000_000) as _,
            };
            let times = [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, ts];
            // SAFETY: valid path and two timespecs.
            check_rc(unsafe {
                libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
            })?;
        }
        // Last: an immutable or append-only entry takes no further change.
        if (t == 0o100000 || t == 0o040000) && (e.attrs != 0 || m.projid.is_some()) {
            let fd = File::open(path)?;
            if let Some(id) = m.projid {
                linux::set_project_id(&fd, id)?;
            }
            linux::set_inode_flags(&fd, e.attrs & (f::CHATTR | f::FAT_ATTRS))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catar::encode::{encode, tests::tv5_tree};

    #[test]
    fn tv5_round_trips_and_damage_is_refused() {
        if unsafe { libc::geteuid() } != 0 {
            return; // owners 0:0 need root
        }
        let dir = std::env::temp_dir().join(format!("casync-rs-decode-{}", std::process::id()));
        let tree = tv5_tree(&dir);
        let flags = f::archive_flags(&["unix"], &[], true).unwrap();
        let mut archive = Vec::new();
        encode(&tree, flags, &mut archive).unwrap();
        let out = dir.join("out");
        std::fs::create_dir(&out).unwrap();
        assert_eq!(extract(&archive[..], &out).unwrap(), Extracted { bytes: 1765, entries: 6 });
        let mut again = Vec::new();
        encode(&out, flags, &mut again).unwrap();
        assert!(again == archive, "the extracted tree encodes to other bytes");
        let fresh = |name: &str| {
            let d = dir.join(name);
            std::fs::create_dir(&d).unwrap();
            d
        };
        // A GOODBYE hash changed: refused.
        let mut bad = archive.clone();
        bad[1629 + 16 + 16] ^= 1;
        let e = extract(&bad[..], &fresh("bad1")).unwrap_err().to_string();
        assert!(e.contains("at byte 1629: GOODBYE table does not match"), "{e}");
        // Truncated.
        let e = extract(&archive[..1000], &fresh("bad2")).unwrap_err().to_string();
        assert!(e.contains("ends inside"), "{e}");
        // A file name with a slash (same length: "a.txt" -> "a/txt").
        let mut bad = archive.clone();
        bad[64 + 16 + 1] = b'/';
        let e = extract(&bad[..], &fresh("bad3")).unwrap_err().to_string();
        assert!(e.contains("at byte 64: file name not allowed"), "{e}");
        // An existing symlink where the archive has a directory is not followed.
        let trap = fresh("bad4");
        std::os::unix::fs::symlink("/tmp", trap.join("b")).unwrap();
        let e = extract(&archive[..], &trap).unwrap_err().to_string();
        assert!(e.contains("File exists"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
