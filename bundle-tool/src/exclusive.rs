//! Exclusive-access checks for bundles whose signature covers the file
//! contents directly (plain bundles, spec §1.9): the file must be one nobody
//! else can change while we verify it.
//!
//! rota also pins a plain payload to the digests recorded while verifying
//! (see [`crate::reader::PinnedReader`]), so a later change is caught either way.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const LOCAL_FS: &[(i64, &str)] = &[
    (0xEF53, "ext2/3/4"),
    (0x9123_683E, "btrfs"),
    (0x5846_5342, "xfs"),
    (0xF2F5_2010, "f2fs"),
    (0x4d44, "vfat"),
    (0x2011_BAB0, "exfat"),
    (0x9660, "iso9660"),
    (0x1501_3346, "udf"),
    (0x72b6, "jffs2"),
    (0x7371_7368, "squashfs"),
    (0x28cd_3d45, "cramfs"),
    (0x7275, "romfs"),
    (0x5346_544e, "ntfs"),
    (0x5346_414F, "afs"),
];

const ROOT_PREPARED_FS: &[(i64, &str)] = &[
    (0x0102_1994, "tmpfs"),
    (0x8584_58f6, "ramfs"),
    (0x794c_7630, "overlayfs"),
    (0x2405_1905, "ubifs"),
    (0x2fc1_2fc1, "zfs"),
    (0x00c0_ffee, "hostfs"),
];

fn fs_type(file: &File) -> std::io::Result<i64> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// The device node behind `dev` (major:minor), from sysfs.
fn device_node(dev: u64) -> Option<std::path::PathBuf> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    Some(Path::new("/dev").join(name))
}

/// Reasons a file fails the check, without trying to fix anything.
fn check(file: &File) -> std::result::Result<(), String> {
    let md = file.metadata().map_err(|e| format!("failed to stat bundle: {e}"))?;
    if !md.file_type().is_file() {
        return Err("unsafe bundle (not a regular file)".to_string());
    }
    let euid = unsafe { libc::geteuid() };
    if md.uid() != 0 && md.uid() != euid {
        return Err(format!("unsafe bundle uid {}", md.uid()));
    }
    let mode = md.mode() & 0o7777;
    if mode & !0o755 != 0 {
        return Err(format!("unsafe bundle permissions 0{mode:o}"));
    }
    let root_dev = std::fs::metadata("/").map(|m| m.dev()).ok();
    if root_dev != Some(md.dev()) {
        let ty = fs_type(file).map_err(|e| format!("failed to check bundle filesystem: {e}"))?;
        if let Some((_, name)) = LOCAL_FS.iter().find(|(t, _)| *t == ty) {
            let node = device_node(md.dev())
                .ok_or_else(|| format!("unsafe bundle: backing device of {name} filesystem not found"))?;
            let owner = std::fs::metadata(&node)
                .map(|m| m.uid())
                .map_err(|e| format!("unsafe bundle: cannot check backing device {}: {e}", node.display()))?;
            if owner != 0 {
                return Err(format!("unsafe bundle: backing device {} is not owned by root", node.display()));
            }
        } else if !ROOT_PREPARED_FS.iter().any(|(t, _)| *t == ty) {
            let what = match ty {
                0x6573_5546 => "FUSE".to_string(),
                0x6969 => "NFS".to_string(),
                other => format!("0x{other:x}"),
            };
            return Err(format!("unsafe bundle: filesystem type {what} is not trusted"));
        }
    }
    take_lease(file)
}

fn take_lease(file: &File) -> std::result::Result<(), String> {
    // A lease break signals SIGIO, which by default would kill us; the
    // pinned digests make an early release harmless, so ignore it.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGIO, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_DFL {
            libc::signal(libc::SIGIO, libc::SIG_IGN);
        }
    }
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN) => {
                "could not ensure exclusive bundle access (F_SETLEASE): EAGAIN: existing open file descriptor"
                    .to_string()
            }
            _ => format!("could not ensure exclusive bundle access (F_SETLEASE): {e}"),
        });
    }
    Ok(())
}

/// Holds the read lease until dropped.
pub struct ExclusiveAccess<'a> {
    file: &'a File,
}

impl Drop for ExclusiveAccess<'_> {
    fn drop(&mut self) {
        unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    }
}

/// Checks the open bundle; on failure takes ownership (root-owned, at most
/// `0644`) and checks once more, as RAUC does.
pub fn ensure(file: &File) -> Result<ExclusiveAccess<'_>> {
    if check(file).is_err() {
        let md = file.metadata()?;
        let fd = file.as_raw_fd();
        let euid = unsafe { libc::geteuid() };
        if md.uid() != 0 && md.uid() != euid {
            unsafe { libc::fchown(fd, 0, u32::MAX) };
        }
        let mode = md.mode() & 0o7777;
        if mode & !0o644 != 0 {
            unsafe { libc::fchmod(fd, (mode & 0o644) as libc::mode_t) };
        }
        check(file).map_err(Error::Payload)?;
    }
    Ok(ExclusiveAccess { file })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn world_writable_file_is_fixed_and_busy_file_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.raucb");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let f = File::open(&p).unwrap();
        drop(ensure(&f).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
        let _writer = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        let e = ensure(&f).err().unwrap().to_string();
        assert_eq!(e, "could not ensure exclusive bundle access (F_SETLEASE): EAGAIN: existing open file descriptor");
    }
}
