//! The small local cache of contents fetched from bundles
//! (`<data-directory>/tree-cache/<sha256[..2]>/<sha256[2..]>`, at most
//! `[tree] cache-size` bytes, least recently used out first): a later
//! install that needs them again — into an emptied slot, or a bundle
//! re-published — copies them instead of fetching. Entries are checked
//! against their digest whenever they are used.

use super::{content, place};
use crate::confined::Root;
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::time::SystemTime;

/// The cache directory and its size limit.
pub struct Cache {
    dir: PathBuf,
    limit: u64,
}

impl Cache {
    /// The cache of `system`, when it has a data directory and a size.
    pub fn open(system: &crate::system::System) -> Option<Cache> {
        let limit = system.config.tree.cache_size;
        let data = system.config.system.data_directory.as_ref()?;
        (limit > 0).then(|| Cache { dir: data.join("tree-cache"), limit })
    }

    fn path(&self, sha: &str) -> PathBuf {
        self.dir.join(&sha[..2]).join(&sha[2..])
    }

    /// Copies the cached content `sha` to `name` below `to`; returns
    /// whether it did. A damaged entry is dropped.
    pub fn copy_to(&self, sha: &str, to: &Root, name: &[u8]) -> Result<bool> {
        let at = self.path(sha);
        let Ok(mut src) = std::fs::File::open(&at) else { return Ok(false) };
        let out = content::create(to, name)?;
        if content::copy_checked(&mut src, out).map_err(|e| place::fail("Failed to write", to, name, e))?.as_deref()
            == Some(sha)
        {
            // Used now: it leaves the cache last.
            let _ = src.set_modified(SystemTime::now());
            return Ok(true);
        }
        place::remove(to, name)?;
        crate::files::remove_any(&at).map_err(|e| Error::io("Failed to remove", &at, e))?;
        Ok(false)
    }

    /// Adds the contents `(sha256, its name below `from`, size)` that fit,
    /// then removes the least recently used entries beyond the limit.
    pub fn keep(&self, from: &Root, items: &[(String, Vec<u8>, u64)]) -> Result<()> {
        for (sha, name, size) in items {
            let at = self.path(sha);
            if *size > self.limit || at.exists() {
                continue;
            }
            let parent = at.parent().expect("cache paths have a parent");
            std::fs::create_dir_all(parent).map_err(|e| Error::io("Failed to create", parent, e))?;
            let part = at.with_extension("part");
            let Ok(mut src) = from.open_file(name) else { continue };
            let out = std::fs::File::create(&part).map_err(|e| Error::io("Failed to create", &part, e))?;
            if content::copy_checked(&mut src, out).map_err(|e| Error::io("Failed to write", &part, e))?.as_deref()
                == Some(sha.as_str())
            {
                std::fs::rename(&part, &at).map_err(|e| Error::io("Failed to store", &at, e))?;
            } else {
                crate::files::remove_any(&part).map_err(|e| Error::io("Failed to remove", &part, e))?;
            }
        }
        self.trim()
    }

    /// Removes the oldest entries until the cache holds at most its limit.
    fn trim(&self) -> Result<()> {
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        for sub in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            for e in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                if let Ok(md) = e.metadata() {
                    entries.push((md.modified().unwrap_or(SystemTime::UNIX_EPOCH), md.len(), e.path()));
                }
            }
        }
        entries.sort();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        for (_, len, path) in entries {
            if total <= self.limit {
                break;
            }
            crate::files::remove_any(&path).map_err(|e| Error::io("Failed to remove", &path, e))?;
            total -= len;
        }
        Ok(())
    }
}
