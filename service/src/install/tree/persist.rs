//! Persistent paths (ota-client's persist list): files and directories
//! copied from the booted slot into the freshly installed tree, replacing
//! what the image has there, with owners, modes, xattrs and times kept.
//! Both trees are reached through [`Root`]s: a path that leads through a
//! symbolic link in the booted slot is refused, not followed.

use super::{content, place};
use crate::confined::Root;
use crate::error::{Error, Result, failed};
use rota_bundle::tree::Kind;

/// Copies `path` (absolute in the slot, e.g. `/etc/machine-id`) from the
/// tree `from` into the tree `to`; returns whether the booted slot had it.
/// Missing parent directories are made as the booted slot has them.
pub fn copy(from: &Root, to: &Root, path: &str) -> Result<bool> {
    let rel = path.trim_start_matches('/').trim_end_matches('/').as_bytes();
    let shown = |at: &[u8]| String::from_utf8_lossy(at).into_owned();
    match from.stat(rel) {
        Ok(Some(_)) => {}
        Ok(None) => return Ok(false),
        Err(e) => return failed(format!("Cannot keep '{path}' from the booted slot: {e}")),
    }
    // Parents first, each only if the new tree lacks it as a directory.
    let mut made = Vec::new();
    for (at, _) in rel.iter().enumerate().filter(|(_, b)| **b == b'/') {
        let parent = &rel[..at];
        if place::stat(to, parent)?.is_some_and(|st| crate::confined::is(&st, rustix::fs::FileType::Directory)) {
            continue;
        }
        let e = place::entry_of(from, parent)?;
        if e.kind != Kind::Dir {
            return failed(format!("Cannot keep '{path}': '/{}' is not a directory", shown(parent)));
        }
        place::remove(to, parent)?;
        place::create_special(to, parent, &e)?;
        place::apply_metadata(to, parent, &e)?;
        made.push(e);
    }
    copy_object(from, to, rel)?;
    for e in made.iter().rev() {
        place::set_mtime(to, &e.path, e.mtime)?;
    }
    Ok(true)
}

/// Copies the object at `rel` (a directory with everything below it).
fn copy_object(from: &Root, to: &Root, rel: &[u8]) -> Result<()> {
    let e = place::entry_of(from, rel)?;
    place::remove(to, rel)?;
    if e.kind == Kind::File {
        let sha = e.sha256.as_deref().unwrap_or_default();
        let mut src = from.open_file(rel).map_err(|err| place::fail("Failed to open", from, rel, err))?;
        let out = content::create(to, rel)?;
        let got = content::copy_checked(&mut src, out).map_err(|err| place::fail("Failed to write", to, rel, err))?;
        if got.as_deref() != Some(sha) {
            return failed(format!("'{}' changed while it was copied", from.shown(rel).display()));
        }
    } else {
        place::create_special(to, rel, &e)?;
    }
    if e.kind == Kind::Dir {
        let names = from.names(rel).map_err(|err| Error::io("Failed to read directory", &from.shown(rel), err))?;
        for name in names {
            copy_object(from, to, &[rel, b"/", &name].concat())?;
        }
    }
    place::apply_metadata(to, rel, &e)?;
    if e.kind == Kind::Dir {
        place::set_mtime(to, rel, e.mtime)?;
    }
    Ok(())
}
