//! The Linux calls the archive needs beyond `std`: inode attribute flags
//! (chattr, FAT attributes, project ids), extended attributes, POSIX ACLs
//! in their xattr form, user and group names, and the file-system type.

use crate::flags as f;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
const FAT_IOCTL_GET_ATTRIBUTES: libc::c_ulong = 0x8004_7210;
const FAT_IOCTL_SET_ATTRIBUTES: libc::c_ulong = 0x4004_7211;

/// chattr bits (`FS_*_FL`) and the feature-flag bit each maps to.
const CHATTR_MAP: &[(u32, u64)] = &[
    (0x20, f::FLAG_APPEND),
    (0x80, f::FLAG_NOATIME),
    (0x4, f::FLAG_COMPR),
    (0x80_0000, f::FLAG_NOCOW),
    (0x40, f::FLAG_NODUMP),
    (0x1_0000, f::FLAG_DIRSYNC),
    (0x10, f::FLAG_IMMUTABLE),
    (0x8, f::FLAG_SYNC),
    (0x400, f::FLAG_NOCOMP),
    (0x2000_0000, f::FLAG_PROJINHERIT),
];

/// FAT attribute bits and their feature-flag bits.
const FAT_MAP: &[(u32, u64)] = &[(0x2, f::FLAG_HIDDEN), (0x4, f::FLAG_SYSTEM), (0x20, f::FLAG_ARCHIVE)];

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS))
}

/// The chattr and FAT attributes of the open file or directory `fd` as
/// feature-flag bits (0 where the file system has none).
pub fn inode_flags(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut out = 0;
    let mut v: libc::c_long = 0;
    // SAFETY: the ioctl writes one long into `v`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFLAGS, &mut v) } == 0 {
        out |= CHATTR_MAP.iter().filter(|(fl, _)| v as u32 & fl != 0).map(|(_, b)| b).fold(0, |a, b| a | b);
    } else {
        let e = io::Error::last_os_error();
        if !unsupported(&e) {
            return Err(e);
        }
    }
    let mut fat: u32 = 0;
    // SAFETY: the ioctl writes one u32 into `fat`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), FAT_IOCTL_GET_ATTRIBUTES, &mut fat) } == 0 {
        out |= FAT_MAP.iter().filter(|(fl, _)| fat & fl != 0).map(|(_, b)| b).fold(0, |a, b| a | b);
    }
    Ok(out)
}

/// Sets the chattr and FAT attributes `bits` (feature-flag bits) on `fd`.
pub fn set_inode_flags(fd: &impl AsRawFd, bits: u64) -> io::Result<()> {
    let chattr = CHATTR_MAP.iter().filter(|(_, b)| bits & b != 0).map(|(fl, _)| *fl).fold(0, |a, b| a | b);
    if chattr != 0 {
        let v = chattr as libc::c_long;
        // SAFETY: the ioctl reads one long from `v`.
        if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_SETFLAGS, &v) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let fat = FAT_MAP.iter().filter(|(_, b)| bits & b != 0).map(|(fl, _)| *fl).fold(0, |a, b| a | b);
    if fat != 0 {
        // SAFETY: the ioctl reads one u32 from `fat`.
        if unsafe { libc::ioctl(fd.as_raw_fd(), FAT_IOCTL_SET_ATTRIBUTES, &fat) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `struct fsxattr`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// The project quota id of `fd` (0 where there is none).
pub fn project_id(fd: &impl AsRawFd) -> io::Result<u32> {
    let mut x = FsXattr::default();
    // SAFETY: the ioctl fills a `struct fsxattr`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, &mut x) } == 0 {
        return Ok(x.projid);
    }
    let e = io::Error::last_os_error();
    if unsupported(&e) { Ok(0) } else { Err(e) }
}

/// Sets the project quota id of `fd`.
pub fn set_project_id(fd: &impl AsRawFd, id: u32) -> io::Result<()> {
    let mut x = FsXattr::default();
    // SAFETY: the ioctls read and write a `struct fsxattr`.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, &mut x) != 0 {
            return Err(io::Error::last_os_error());
        }
        x.projid = id;
        if libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, &x) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The names of `path`'s extended attributes (not following a symlink).
pub fn xattr_names(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let p = cpath(path)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `buf` is valid for its length; the call writes at most that.
        let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf.split(|&b| b == 0).filter(|n| !n.is_empty()).map(<[u8]>::to_vec).collect());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    }
}

/// The value of xattr `name` of `path` (`None` if it has none).
pub fn xattr(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let p = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: as above.
        let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA | libc::ENOTSUP) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Sets xattr `name` of `path` to `value` (not following a symlink).
pub fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: pointers valid for the given lengths.
    if unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One POSIX ACL entry (tag as in `<sys/acl.h>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclEntry {
    /// ACL_USER_OBJ 1, ACL_USER 2, ACL_GROUP_OBJ 4, ACL_GROUP 8, ACL_MASK 0x10, ACL_OTHER 0x20.
    pub tag: u16,
    /// rwx bits.
    pub perm: u16,
    /// uid or gid of named entries.
    pub id: u32,
}

/// Tags of ACL entries.
pub const TAG_USER_OBJ: u16 = 1;
/// Named user.
pub const TAG_USER: u16 = 2;
/// Owning group.
pub const TAG_GROUP_OBJ: u16 = 4;
/// Named group.
pub const TAG_GROUP: u16 = 8;
/// Mask.
pub const TAG_MASK: u16 = 0x10;
/// Others.
pub const TAG_OTHER: u16 = 0x20;

/// Parses the `system.posix_acl_*` xattr form (version 2).
pub fn parse_acl(value: &[u8]) -> Option<Vec<AclEntry>> {
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) || u32::from_le_bytes(value[..4].try_into().ok()?) != 2 {
        return None;
    }
    Some(
        value[4..]
            .chunks_exact(8)
            .map(|e| AclEntry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect(),
    )
}

/// The xattr form of `entries` (sorted by tag, then id, as the kernel wants them).
pub fn format_acl(entries: &[AclEntry]) -> Vec<u8> {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|e| (e.tag, e.id));
    let mut out = 2u32.to_le_bytes().to_vec();
    for e in sorted {
        out.extend(e.tag.to_le_bytes());
        out.extend(e.perm.to_le_bytes());
        out.extend(e.id.to_le_bytes());
    }
    out
}

/// The host's name of uid `uid` (`group`: of gid), if it has one.
pub fn id_name(id: u32, group: bool) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    // SAFETY: the reentrant lookups write into `buf` and the record only;
    // the name is copied out before either goes away.
    unsafe {
        if group {
            let mut g: libc::group = std::mem::zeroed();
            let mut res = std::ptr::null_mut();
            if libc::getgrgid_r(id, &mut g, buf.as_mut_ptr(), buf.len(), &mut res) != 0 || res.is_null() {
                return None;
            }
            Some(CStr::from_ptr(g.gr_name).to_string_lossy().into_owned())
        } else {
            let mut p: libc::passwd = std::mem::zeroed();
            let mut res = std::ptr::null_mut();
            if libc::getpwuid_r(id, &mut p, buf.as_mut_ptr(), buf.len(), &mut res) != 0 || res.is_null() {
                return None;
            }
            Some(CStr::from_ptr(p.pw_name).to_string_lossy().into_owned())
        }
    }
}

/// Whether the directory `fd` lies on a virtual kernel file system (proc,
/// sysfs, cgroup, devpts, debugfs, …) whose contents are not archived.
pub fn is_virtual_fs(fd: &impl AsRawFd) -> bool {
    const MAGICS: &[i64] = &[
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x0027_e0eb, // cgroup
        0x6367_7270, // cgroup2
        0x1cd1,      // devpts
        0x6462_6720, // debugfs
        0x7472_6163, // tracefs
        0x7363_6673, // securityfs
        0x6165_676c, // pstore
        0xcafe_4a11, // bpf
        0xde5e_81e4, // efivarfs
        0x6265_6570, // configfs
        0x6573_5543, // fusectl
        0x1980_0202, // mqueue
        0x4249_4e4d, // binfmt_misc
    ];
    // SAFETY: fstatfs fills the struct.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut s) } != 0 {
        return false;
    }
    MAGICS.contains(&(s.f_type as i64))
}
