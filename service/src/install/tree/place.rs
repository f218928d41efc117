//! Putting objects in place and giving them the metadata of their index
//! entry: owner, mode (set-id bits after the owner, which clears them),
//! extended attributes (file capabilities last, as a change of owner
//! drops them), modification time. Everything goes through a
//! [`Root`](crate::confined::Root): nothing follows a symbolic link or
//! leaves the tree.

use crate::confined::{Root, is};
use crate::error::{Error, Result};
use rota_bundle::tree::{Entry, Kind};
use rustix::fs::{FileType, Stat};
use std::collections::BTreeMap;
use std::ffi::CString;

/// An I/O error on `rel` below `root`, told as `what '<path>': <error>`.
pub fn fail(what: &str, root: &Root, rel: &[u8], e: std::io::Error) -> Error {
    Error::io(what, &root.shown(rel), e)
}

/// What is at `rel` below `root` (a link itself), if anything.
pub fn stat(root: &Root, rel: &[u8]) -> Result<Option<Stat>> {
    root.stat(rel).map_err(|e| fail("Failed to stat", root, rel, e))
}

/// Removes whatever is at `rel` below `root` (a directory with its contents).
pub fn remove(root: &Root, rel: &[u8]) -> Result<()> {
    root.remove(rel).map_err(|e| fail("Failed to remove", root, rel, e))
}

/// The file type of an index entry's kind.
fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Char => FileType::CharacterDevice,
        Kind::Block => FileType::BlockDevice,
        Kind::Fifo => FileType::Fifo,
        Kind::Socket => FileType::Socket,
    }
}

/// Whether the object `st` at `rel` is already of `e`'s kind with `e`'s
/// link target or device number.
pub fn same_kind(root: &Root, rel: &[u8], st: &Stat, e: &Entry) -> bool {
    if !is(st, file_type(e.kind)) {
        return false;
    }
    match e.kind {
        Kind::Symlink => root.read_link(rel).is_ok_and(|l| Some(l.as_slice()) == e.target.as_deref()),
        Kind::Char | Kind::Block => st.st_rdev == e.rdev,
        Kind::Dir | Kind::File | Kind::Fifo | Kind::Socket => true,
    }
}

/// Creates the non-regular object `e` at `rel` (nothing is there).
pub fn create_special(root: &Root, rel: &[u8], e: &Entry) -> Result<()> {
    let r = match e.kind {
        Kind::Dir => root.mkdir(rel, 0o700),
        Kind::Symlink => root.symlink(rel, e.target.as_deref().unwrap_or_default()),
        Kind::Char | Kind::Block | Kind::Fifo | Kind::Socket => root.mknod(rel, file_type(e.kind), 0o600, e.rdev),
        Kind::File => {
            return Err(Error::Failed(format!("'{}' is a regular file, not created here", root.shown(rel).display())));
        }
    };
    r.map_err(|err| fail("Failed to create", root, rel, err))
}

/// The entry of the object at `rel` below `root` as an index records it
/// (a regular file hashed, a link's target read; not followed).
pub fn entry_of(root: &Root, rel: &[u8]) -> Result<Entry> {
    let st = stat(root, rel)?.ok_or_else(|| Error::Failed(format!("'{}' is gone", root.shown(rel).display())))?;
    let kind = [Kind::Dir, Kind::File, Kind::Symlink, Kind::Char, Kind::Block, Kind::Fifo, Kind::Socket]
        .into_iter()
        .find(|k| is(&st, file_type(*k)))
        .ok_or_else(|| Error::Failed(format!("'{}' is of an unknown type", root.shown(rel).display())))?;
    let node = root.node(rel).map_err(|err| fail("Failed to open", root, rel, err))?;
    let xattrs = node.xattrs().map_err(|err| fail("Failed to read xattrs of", root, rel, err))?;
    drop(node);
    let mut e = Entry {
        path: rel.to_vec(),
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        size: 0,
        sha256: None,
        target: None,
        rdev: 0,
        xattrs: xattrs.into_iter().map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), hex::encode(v))).collect(),
        link_group: 0,
    };
    match kind {
        Kind::File => {
            let file = root.open_file(rel).map_err(|err| fail("Failed to open", root, rel, err))?;
            let (len, sha) =
                rota_bundle::tree::hash_reader(file).map_err(|err| fail("Failed to read", root, rel, err))?;
            e.size = len;
            e.sha256 = Some(sha);
        }
        Kind::Symlink => {
            e.target = Some(root.read_link(rel).map_err(|err| fail("Failed to read link", root, rel, err))?)
        }
        Kind::Char | Kind::Block => e.rdev = st.st_rdev,
        Kind::Dir | Kind::Fifo | Kind::Socket => {}
    }
    Ok(e)
}

/// Gives the object at `rel` the owner, mode, xattrs and modification
/// time of `e` (a directory's time is set by [`set_mtime`] once its
/// contents are complete).
pub fn apply_metadata(root: &Root, rel: &[u8], e: &Entry) -> Result<()> {
    let node = root.node(rel).map_err(|err| fail("Failed to open", root, rel, err))?;
    let st = *node.stat();
    let want: BTreeMap<Vec<u8>, Vec<u8>> = e
        .xattrs
        .iter()
        .map(|(k, v)| {
            let value = hex::decode(v)
                .map_err(|_| Error::Failed(format!("xattr '{k}' of '{}' is not hex", root.shown(rel).display())))?;
            Ok((k.as_bytes().to_vec(), value))
        })
        .collect::<Result<_>>()?;
    let xattrs = || node.xattrs().map_err(|err| fail("Failed to read xattrs of", root, rel, err));
    let have = xattrs()?;
    let owner_changes = st.st_uid != e.uid || st.st_gid != e.gid;
    if owner_changes {
        node.chown(e.uid, e.gid).map_err(|err| fail("Failed to change owner of", root, rel, err))?;
    }
    if e.kind != Kind::Symlink && (owner_changes || st.st_mode & 0o7777 != e.mode) {
        node.chmod(e.mode).map_err(|err| fail("Failed to change mode of", root, rel, err))?;
    }
    // A change of owner drops capabilities: compare against what is left.
    let have = if owner_changes { xattrs()? } else { have };
    for name in have.keys().filter(|n| !want.contains_key(*n)) {
        let cname = CString::new(name.clone()).expect("xattr names hold no NUL");
        node.remove_xattr(&cname).map_err(|err| fail("Failed to remove xattr of", root, rel, err))?;
    }
    for (name, value) in &want {
        if have.get(name) == Some(value) {
            continue;
        }
        let shown = String::from_utf8_lossy(name);
        let cname = CString::new(name.clone())
            .map_err(|_| Error::Failed(format!("xattr name with NUL on '{}'", root.shown(rel).display())))?;
        node.set_xattr(&cname, value).map_err(|err| {
            Error::Failed(format!("Failed to set xattr '{shown}' of '{}': {err}", root.shown(rel).display()))
        })?;
    }
    if e.kind != Kind::Dir {
        node.set_mtime(e.mtime).map_err(|err| fail("Failed to set the time of", root, rel, err))?;
    }
    Ok(())
}

/// Sets the modification time of `rel` (not followed), access time untouched.
pub fn set_mtime(root: &Root, rel: &[u8], mtime: i64) -> Result<()> {
    root.set_mtime(rel, mtime).map_err(|err| fail("Failed to set the time of", root, rel, err))
}
