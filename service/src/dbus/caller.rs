//! Files a D-Bus caller names are opened with the caller's rights, not the
//! service's. The service runs as root; a caller the bus policy lets call
//! methods (root, or a member of group `rota`) must not make it read a file
//! the caller could not read itself — a root-only key, a file whose last
//! bytes an error message would show — nor block it on a fifo.
//!
//! The check opens the file on a thread of its own that first takes the
//! caller's user, group and supplementary groups (per-thread credentials:
//! the raw system calls, which Linux applies to the calling thread only)
//! and ends right after; the open descriptor is what the service reads.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Who called, as the bus daemon knows the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

/// The largest file read for a caller into memory (TLS material).
const READ_MAX: u64 = 1 << 20;

impl Caller {
    /// The caller that sent `header`, asked of the bus daemon (its user and
    /// groups; where the daemon does not tell the groups, they are read
    /// from the calling process).
    pub async fn of(conn: &zbus::Connection, header: &zbus::message::Header<'_>) -> Result<Caller> {
        let fail = |e: String| Error::Failed(format!("Cannot tell who called: {e}"));
        let sender = header.sender().ok_or_else(|| fail("the call has no sender".into()))?;
        let dbus = zbus::fdo::DBusProxy::new(conn).await.map_err(|e| fail(e.to_string()))?;
        let creds = dbus
            .get_connection_credentials(zbus::names::BusName::Unique(sender.to_owned()))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let uid = creds.unix_user_id().ok_or_else(|| fail("no user id".into()))?;
        let (gid, groups) = match (creds.unix_group_ids(), creds.process_id()) {
            (Some(g), _) if !g.is_empty() => (g[0], g.clone()),
            (_, Some(pid)) => groups_of(pid).map_err(|e| fail(format!("groups of process {pid}: {e}")))?,
            _ => return Err(fail("no groups and no process id".into())),
        };
        Ok(Caller { uid, gid, groups })
    }

    /// The service's own user (no switch needed).
    fn is_service(&self) -> bool {
        // SAFETY: plain getters.
        self.uid == unsafe { libc::geteuid() } && self.gid == unsafe { libc::getegid() }
    }

    /// Runs `f` with the caller's filesystem rights, on a thread that ends with it.
    fn with_rights<T: Send>(&self, f: impl FnOnce() -> std::io::Result<T> + Send) -> std::io::Result<T> {
        if self.is_service() {
            return f();
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
                let groups: Vec<rustix::fs::Gid> = self.groups.iter().map(|g| rustix::fs::Gid::from_raw(*g)).collect();
                let gid = rustix::fs::Gid::from_raw(self.gid);
                let uid = rustix::fs::Uid::from_raw(self.uid);
                // Groups first: once the user changes, the thread may change nothing more.
                set_thread_groups(&groups)?;
                set_thread_res_gid(gid, gid, gid)?;
                set_thread_res_uid(uid, uid, uid)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the thread opening the file failed")))
        })
    }

    /// Opens the regular file at `path` for reading as the caller would.
    pub fn open(&self, path: &Path) -> std::io::Result<File> {
        self.with_rights(|| rota_bundle::bundle::open_regular(path))
    }

    /// A copy of the caller's file at `path` (a regular file of at most
    /// 1 MiB) in memory, reachable through the returned path for as long
    /// as the returned descriptor is open.
    pub fn copy(&self, path: &Path) -> std::io::Result<(PathBuf, OwnedFd)> {
        let mut data = Vec::new();
        let file = self.open(path)?;
        file.take(READ_MAX + 1).read_to_end(&mut data)?;
        if data.len() as u64 > READ_MAX {
            return Err(std::io::Error::other("larger than 1 MiB"));
        }
        let fd = rustix::fs::memfd_create(c"rota-caller-file", rustix::fs::MemfdFlags::CLOEXEC)?;
        std::io::Write::write_all(&mut File::from(fd.try_clone()?), &data)?;
        Ok((PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())), fd))
    }
}

/// The effective group and the groups of process `pid`, from `/proc`.
fn groups_of(pid: u32) -> std::io::Result<(u32, Vec<u32>)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default()
    };
    // Gid: real, effective, saved, filesystem.
    let gid = *field("Gid:").get(1).ok_or_else(|| std::io::Error::other("no Gid line"))?;
    let mut groups = vec![gid];
    groups.extend(field("Groups:").into_iter().filter(|g| *g != gid));
    Ok((gid, groups))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_opened_with_the_callers_rights() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (secret, open) = (dir.path().join("secret"), dir.path().join("open"));
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&open, b"anyone").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let nobody = Caller { uid: 65534, gid: 65534, groups: vec![65534] };
        let service = Caller { uid: unsafe { libc::geteuid() }, gid: unsafe { libc::getegid() }, groups: vec![] };
        if !service.is_service() || service.uid != 0 {
            return; // Switching users needs root.
        }
        let e = nobody.open(&secret).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        assert!(nobody.open(&open).is_ok());
        assert!(service.open(&secret).is_ok());
        let (path, _fd) = nobody.copy(&open).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"anyone");
        // The thread that switched is gone: this one still reads as root.
        assert!(std::fs::read(&secret).is_ok());
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
        let e = nobody.open(&dir.path().join("fifo")).unwrap_err().to_string();
        assert_eq!(e, "not a regular file");
    }
}
