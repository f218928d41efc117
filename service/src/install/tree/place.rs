//! Putting objects in place and giving them the metadata of their index
//! entry: owner, mode (set-id bits after the owner, which clears them),
//! extended attributes (file capabilities last, as a change of owner
//! drops them), modification time. Nothing follows a symbolic link.

use crate::error::{Error, Result, failed};
use rota_bundle::tree::{Entry, Kind};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The path of `rel` (index bytes, `""` for the root) below `root`.
pub fn under(root: &Path, rel: &[u8]) -> std::path::PathBuf {
    if rel.is_empty() { root.to_path_buf() } else { root.join(std::ffi::OsStr::from_bytes(rel)) }
}

/// The names in directory `dir`, sorted by their bytes.
pub fn sorted_names(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let fail = |e| Error::io("Failed to read directory", dir, e);
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .map_err(fail)?
        .map(|d| d.map(|d| d.file_name().as_bytes().to_vec()))
        .collect::<std::io::Result<_>>()
        .map_err(fail)?;
    names.sort();
    Ok(names)
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Failed(format!("NUL in path '{}'", path.display())))
}

fn last_error(what: &str, path: &Path) -> Error {
    Error::io(what, path, std::io::Error::last_os_error())
}

/// The `st_mode` file type bits of a special file kind.
fn type_bits(kind: Kind) -> libc::mode_t {
    match kind {
        Kind::Char => libc::S_IFCHR,
        Kind::Block => libc::S_IFBLK,
        Kind::Fifo => libc::S_IFIFO,
        Kind::Socket => libc::S_IFSOCK,
        Kind::Dir | Kind::File | Kind::Symlink => 0,
    }
}

/// Whether the object at `path` (not followed) is already of `e`'s kind
/// with `e`'s link target or device number.
pub fn same_kind(md: &std::fs::Metadata, e: &Entry, path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    match e.kind {
        Kind::Dir => t.is_dir(),
        Kind::File => t.is_file(),
        Kind::Symlink => {
            t.is_symlink()
                && std::fs::read_link(path).is_ok_and(|l| Some(l.as_os_str().as_bytes()) == e.target.as_deref())
        }
        Kind::Char => t.is_char_device() && md.rdev() == e.rdev,
        Kind::Block => t.is_block_device() && md.rdev() == e.rdev,
        Kind::Fifo => t.is_fifo(),
        Kind::Socket => t.is_socket(),
    }
}

/// Removes whatever is at `path` (a directory with its contents).
pub fn remove_any(path: &Path) -> Result<()> {
    crate::files::remove_any(path).map_err(|e| Error::io("Failed to remove", path, e))
}

/// Creates the non-regular object `e` at `path` (nothing is there).
pub fn create_special(path: &Path, e: &Entry) -> Result<()> {
    match e.kind {
        Kind::Dir => std::fs::create_dir(path).map_err(|err| Error::io("Failed to create directory", path, err)),
        Kind::Symlink => {
            let target = std::ffi::OsStr::from_bytes(e.target.as_deref().unwrap_or_default());
            std::os::unix::fs::symlink(target, path).map_err(|err| Error::io("Failed to create symlink", path, err))
        }
        Kind::Char | Kind::Block | Kind::Fifo | Kind::Socket => {
            let c = cpath(path)?;
            // SAFETY: valid C string; mode and device number from the index.
            let r = unsafe { libc::mknod(c.as_ptr(), type_bits(e.kind) | 0o600, e.rdev as libc::dev_t) };
            if r != 0 {
                return Err(last_error("Failed to create special file", path));
            }
            Ok(())
        }
        Kind::File => failed(format!("'{}' is a regular file, not created here", path.display())),
    }
}

/// The extended attributes of `path` (not following a symlink), name → value.
fn xattrs_of(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    rota_bundle::tree::read_xattrs(path).map_err(|e| Error::io("Failed to read xattrs of", path, e))
}

/// Gives the object at `path` the owner, mode, xattrs and modification
/// time of `e` (a directory's time is set by [`set_mtime`] once its
/// contents are complete).
pub fn apply_metadata(path: &Path, e: &Entry) -> Result<()> {
    let c = cpath(path)?;
    let md = std::fs::symlink_metadata(path).map_err(|err| Error::io("Failed to stat", path, err))?;
    let want: BTreeMap<Vec<u8>, Vec<u8>> = e
        .xattrs
        .iter()
        .map(|(k, v)| {
            Ok((
                k.as_bytes().to_vec(),
                hex::decode(v).map_err(|_| Error::Failed(format!("xattr '{k}' of '{}' is not hex", path.display())))?,
            ))
        })
        .collect::<Result<_>>()?;
    let have = xattrs_of(path)?;
    let owner_changes = md.uid() != e.uid || md.gid() != e.gid;
    if owner_changes {
        // SAFETY: valid C string.
        if unsafe { libc::lchown(c.as_ptr(), e.uid, e.gid) } != 0 {
            return Err(last_error("Failed to change owner of", path));
        }
    }
    if e.kind != Kind::Symlink && (owner_changes || md.mode() & 0o7777 != e.mode) {
        // SAFETY: valid C string.
        if unsafe { libc::chmod(c.as_ptr(), e.mode as libc::mode_t) } != 0 {
            return Err(last_error("Failed to change mode of", path));
        }
    }
    // A change of owner drops capabilities: compare against what is left.
    let have = if owner_changes { xattrs_of(path)? } else { have };
    for name in have.keys().filter(|n| !want.contains_key(*n)) {
        let cname = CString::new(name.clone()).expect("xattr names hold no NUL");
        // SAFETY: valid C strings.
        if unsafe { libc::lremovexattr(c.as_ptr(), cname.as_ptr()) } != 0 {
            return Err(last_error("Failed to remove xattr of", path));
        }
    }
    for (name, value) in &want {
        if have.get(name) == Some(value) {
            continue;
        }
        let cname = CString::new(name.clone())
            .map_err(|_| Error::Failed(format!("xattr name with NUL on '{}'", path.display())))?;
        // SAFETY: valid C strings; the buffer holds `value.len()` bytes.
        let r = unsafe { libc::lsetxattr(c.as_ptr(), cname.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            return Err(Error::Failed(format!(
                "Failed to set xattr '{}' of '{}': {err}",
                String::from_utf8_lossy(name),
                path.display()
            )));
        }
    }
    if e.kind != Kind::Dir {
        set_mtime(path, e.mtime)?;
    }
    Ok(())
}

/// Sets the modification time of `path` (not followed), access time untouched.
pub fn set_mtime(path: &Path, mtime: i64) -> Result<()> {
    let c = cpath(path)?;
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: mtime as libc::time_t, tv_nsec: 0 },
    ];
    // SAFETY: valid C string and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 {
        return Err(last_error("Failed to set the time of", path));
    }
    Ok(())
}
