//! Persistent paths (ota-client's persist list): files and directories
//! copied from the booted slot into the freshly installed tree, replacing
//! what the image has there, with owners, modes, xattrs and times kept.

use super::{content, place};
use crate::error::{Error, Result, failed};
use rota_bundle::tree::{Entry, Kind};
use std::path::Path;

use place::under;

/// Copies `path` (absolute in the slot, e.g. `/etc/machine-id`) from the
/// tree at `from` into the tree at `to`; returns whether the booted slot had
/// it. Missing parent directories are made as the booted slot has them.
pub fn copy(from: &Path, to: &Path, path: &str) -> Result<bool> {
    let rel = path.trim_start_matches('/').as_bytes();
    if std::fs::symlink_metadata(under(from, rel)).is_err() {
        return Ok(false);
    }
    // Parents first, each only if the new tree lacks it as a directory.
    let mut made = Vec::new();
    for (at, _) in rel.iter().enumerate().filter(|(_, b)| **b == b'/') {
        let parent = &rel[..at];
        let dst = under(to, parent);
        if std::fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let e = Entry::read(from, parent).map_err(Error::Failed)?;
        if e.kind != Kind::Dir {
            return failed(format!("Cannot keep '{path}': '/{}' is not a directory", String::from_utf8_lossy(parent)));
        }
        place::remove_any(&dst)?;
        place::create_special(&dst, &e)?;
        place::apply_metadata(&dst, &e)?;
        made.push(e);
    }
    copy_object(from, to, rel)?;
    for e in made.iter().rev() {
        place::set_mtime(&under(to, &e.path), e.mtime)?;
    }
    Ok(true)
}

/// Copies the object at `rel` (a directory with everything below it).
fn copy_object(from: &Path, to: &Path, rel: &[u8]) -> Result<()> {
    let e = Entry::read(from, rel).map_err(Error::Failed)?;
    let (src, dst) = (under(from, rel), under(to, rel));
    place::remove_any(&dst)?;
    if e.kind == Kind::File {
        let sha = e.sha256.as_deref().unwrap_or_default();
        if !content::copy_verified(&src, &dst, sha)? {
            return failed(format!("'{}' changed while it was copied", src.display()));
        }
    } else {
        place::create_special(&dst, &e)?;
    }
    if e.kind == Kind::Dir {
        for name in place::sorted_names(&src)? {
            copy_object(from, to, &[rel, b"/", &name].concat())?;
        }
    }
    place::apply_metadata(&dst, &e)?;
    if e.kind == Kind::Dir {
        place::set_mtime(&dst, e.mtime)?;
    }
    Ok(())
}
