//! Small filesystem operations shared by artifact repositories, tree
//! installs, bootloaders and status files: removal, sync, and replacing a
//! configured file atomically where its links lead, under a lock.

use std::path::{Path, PathBuf};

/// Removes whatever is at `path` (a directory with its contents, not
/// following a symlink); nothing there is fine.
pub fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes out everything cached for the filesystem holding `dir`.
pub fn syncfs(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = std::fs::File::open(dir)?;
    // SAFETY: syncfs on an open descriptor.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Links followed at most by [`resolve_links`] (as the kernel's limit).
const MAX_LINKS: usize = 40;

/// `path` with every symbolic link it names followed to the file it leads
/// to, which need not exist yet: a configured file (a GRUB environment, a
/// status file) may be a link into another partition, and replacing it
/// means replacing that file, not the link.
pub fn resolve_links(path: &Path) -> std::io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)?;
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ELOOP))
}

/// An exclusive lock on a directory (`flock`), held while alive: whoever
/// replaces a file in it by rename (the service, the command line) does
/// one read-modify-write at a time. The directory's inode outlives every
/// rename in it, so the lock does too.
pub struct DirLock {
    _dir: std::fs::File,
}

impl DirLock {
    /// Waits for and takes the lock of `dir`.
    pub fn take(dir: &Path) -> std::io::Result<DirLock> {
        use std::os::fd::AsRawFd;
        let d = std::fs::File::open(dir)?;
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(d.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(DirLock { _dir: d })
    }
}

/// Creates `dir` and its missing parents, readable by root only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// The directory of `path` (`.` for a bare name).
pub fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Replaces the file `path` with `data` (mode 0644) atomically: a
/// temporary file in the same directory, synced, renamed over it, the
/// directory synced. `path` is taken as it is: a link there is replaced.
pub fn replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = dir_of(path);
    let mut tmp = tempfile::Builder::new().prefix(".rota-").tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_followed_to_the_file_they_lead_to() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(&b).unwrap();
        std::fs::create_dir_all(&a).unwrap();
        symlink("../b/env", a.join("env")).unwrap();
        symlink(a.join("env"), t.path().join("top")).unwrap();
        assert_eq!(resolve_links(&t.path().join("top")).unwrap(), a.join("../b/env"));
        assert_eq!(resolve_links(&b.join("plain")).unwrap(), b.join("plain"));
        symlink("loop", t.path().join("loop")).unwrap();
        assert_eq!(resolve_links(&t.path().join("loop")).unwrap_err().raw_os_error(), Some(libc::ELOOP));
    }
}
