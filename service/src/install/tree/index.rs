//! The file index of a tree install held compactly, so that memory stays
//! small for trees of many files: every path in one buffer, digests as 32
//! bytes in one sorted table of distinct contents (entries refer to them
//! by number), link targets, device numbers and xattrs only for the
//! entries that have them. About 130 bytes per entry instead of the
//! 400–500 of parsed [`Entry`] values. Read from the index file one entry
//! at a time (it is never held whole).

use crate::error::{Error, Result};
use rota_bundle::tree::{Entry, FileIndex, Kind};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// Marks "none" in the numbers of [`Item`].
const NONE: u32 = u32::MAX;

/// One entry of the index.
#[derive(Debug, Clone, Copy)]
pub struct Item {
    /// Where the path starts in the path buffer.
    path_at: u32,
    path_len: u16,
    mode: u16,
    /// The object's type.
    pub kind: Kind,
    uid: u32,
    gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Size in bytes (regular files).
    pub size: u64,
    /// Number of the content (regular files), else [`NONE`].
    content: u32,
    /// Hard-link group (0: none).
    pub link_group: u32,
    /// Number of the entry's extra metadata, else [`NONE`].
    extra: u32,
}

/// What few entries have.
#[derive(Debug)]
struct Extra {
    target: Option<Vec<u8>>,
    rdev: u64,
    xattrs: BTreeMap<String, String>,
}

fn decode(hex_digest: &str) -> Option<Digest> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut d).ok()?;
    Some(d)
}

/// The index of the tree being installed.
pub struct Plan {
    paths: Vec<u8>,
    items: Vec<Item>,
    /// Distinct contents, sorted.
    digests: Vec<Digest>,
    /// Where each content starts in the image's contents file.
    offsets: Vec<u64>,
    extras: Vec<Extra>,
    /// Hard-link group → its first entry (the one that gets the content).
    leaders: HashMap<u32, usize>,
    /// Content bytes of the tree (each hard-link group once).
    pub bytes_total: u64,
    /// Regular files of the tree (each hard-link group once).
    pub files_total: u64,
}

impl Plan {
    /// Reads the index file at `path` (of image `name`); `reserved` is a
    /// top-level name the tree must not use.
    pub fn read(path: &Path, name: &str, reserved: &str) -> Result<Plan> {
        let file = std::fs::File::open(path).map_err(|e| Error::io("Failed to open", path, e))?;
        let mut plan = Plan {
            paths: Vec::new(),
            items: Vec::new(),
            digests: Vec::new(),
            offsets: Vec::new(),
            extras: Vec::new(),
            leaders: HashMap::new(),
            bytes_total: 0,
            files_total: 0,
        };
        // Each file's digest, in entry order, until the table is sorted.
        let mut raw: Vec<Digest> = Vec::new();
        FileIndex::read_each(&mut std::io::BufReader::new(file), |e| plan.push(e, &mut raw, reserved))
            .map_err(|e| Error::Failed(format!("Tree image '{name}': {e}")))?;
        plan.digests = raw.clone();
        plan.digests.sort_unstable();
        plan.digests.dedup();
        plan.digests.shrink_to_fit();
        let mut sizes = vec![0; plan.digests.len()];
        for item in plan.items.iter_mut().filter(|i| i.content != NONE) {
            let d = &raw[item.content as usize];
            item.content = plan.digests.binary_search(d).expect("every digest is in the table") as u32;
            sizes[item.content as usize] = item.size;
        }
        plan.offsets = rota_bundle::tree::content_offsets(sizes);
        plan.items.shrink_to_fit();
        plan.paths.shrink_to_fit();
        Ok(plan)
    }

    fn push(&mut self, e: Entry, raw: &mut Vec<Digest>, reserved: &str) -> std::result::Result<(), String> {
        if e.path == reserved.as_bytes() {
            return Err(format!("holds the reserved path '{reserved}'"));
        }
        let path_len = u16::try_from(e.path.len()).map_err(|_| "path longer than 65535 bytes".to_string())?;
        let path_at = u32::try_from(self.paths.len()).map_err(|_| "paths longer than 4 GiB in all".to_string())?;
        let link_group = u32::try_from(e.link_group).map_err(|_| "hard-link group number too large".to_string())?;
        let content = match &e.sha256 {
            Some(s) => {
                raw.push(decode(s).ok_or("malformed SHA-256")?);
                (raw.len() - 1) as u32
            }
            None => NONE,
        };
        let extra = if e.target.is_some() || e.rdev != 0 || !e.xattrs.is_empty() {
            self.extras.push(Extra { target: e.target, rdev: e.rdev, xattrs: e.xattrs });
            (self.extras.len() - 1) as u32
        } else {
            NONE
        };
        let i = self.items.len();
        if e.kind == Kind::File && (link_group == 0 || !self.leaders.contains_key(&link_group)) {
            if link_group != 0 {
                self.leaders.insert(link_group, i);
            }
            self.bytes_total += e.size;
            self.files_total += 1;
        }
        self.paths.extend_from_slice(&e.path);
        self.items.push(Item {
            path_at,
            path_len,
            mode: (e.mode & 0o7777) as u16,
            kind: e.kind,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            size: e.size,
            content,
            link_group,
            extra,
        });
        Ok(())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Entry `i`.
    pub fn item(&self, i: usize) -> &Item {
        &self.items[i]
    }

    /// The path of entry `i`.
    pub fn path(&self, i: usize) -> &[u8] {
        let it = &self.items[i];
        &self.paths[it.path_at as usize..it.path_at as usize + it.path_len as usize]
    }

    /// The entry at `path`.
    pub fn lookup(&self, path: &[u8]) -> Option<usize> {
        let mut range = 0..self.items.len();
        // Binary search over the path order of the index.
        while range.start < range.end {
            let mid = range.start + (range.end - range.start) / 2;
            match self.path(mid).cmp(path) {
                std::cmp::Ordering::Less => range.start = mid + 1,
                std::cmp::Ordering::Greater => range.end = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The whole entry `i`, as the index has it.
    pub fn entry(&self, i: usize) -> Entry {
        let it = &self.items[i];
        let extra = (it.extra != NONE).then(|| &self.extras[it.extra as usize]);
        Entry {
            path: self.path(i).to_vec(),
            kind: it.kind,
            mode: u32::from(it.mode),
            uid: it.uid,
            gid: it.gid,
            mtime: it.mtime,
            size: it.size,
            sha256: (it.content != NONE).then(|| self.sha(i)),
            target: extra.and_then(|x| x.target.clone()),
            rdev: extra.map_or(0, |x| x.rdev),
            xattrs: extra.map(|x| x.xattrs.clone()).unwrap_or_default(),
            link_group: u64::from(it.link_group),
        }
    }

    /// Whether entry `i` is a regular file that gets a content of its own
    /// (not a hard link to an earlier entry).
    pub fn is_leader(&self, i: usize) -> bool {
        let it = &self.items[i];
        it.kind == Kind::File && (it.link_group == 0 || self.leaders.get(&it.link_group) == Some(&i))
    }

    /// Whether entry `i` is a hard link to an earlier entry.
    pub fn is_follower(&self, i: usize) -> bool {
        let it = &self.items[i];
        it.kind == Kind::File && !self.is_leader(i)
    }

    /// The first entry of the hard-link group of entry `i`.
    pub fn leader_of(&self, i: usize) -> usize {
        self.leaders.get(&self.items[i].link_group).copied().unwrap_or(i)
    }

    /// The number of the content of regular file `i`.
    pub fn content(&self, i: usize) -> u32 {
        self.items[i].content
    }

    /// Where the content of regular file `i` starts in the image's contents file.
    pub fn offset(&self, i: usize) -> u64 {
        self.offsets[self.items[i].content as usize]
    }

    /// Number of distinct contents.
    pub fn contents(&self) -> usize {
        self.digests.len()
    }

    /// Content number `c` as hex.
    pub fn digest_hex(&self, c: u32) -> String {
        hex::encode(self.digests[c as usize])
    }

    /// The digest of regular file `i` as hex (empty for other entries).
    pub fn sha(&self, i: usize) -> String {
        match self.items[i].content {
            NONE => String::new(),
            c => self.digest_hex(c),
        }
    }

    /// The number of the content with digest `hex_digest`, if the tree has it.
    pub fn content_of(&self, hex_digest: &str) -> Option<u32> {
        let d = decode(hex_digest)?;
        self.digests.binary_search(&d).ok().map(|c| c as u32)
    }
}

/// Paths and contents of a tree installed earlier (a slot's kept index),
/// only the regular files whose content the new tree has.
#[derive(Default)]
pub struct Installed {
    paths: Vec<u8>,
    /// (path start, path length, content number), by path.
    files: Vec<(u32, u16, u32)>,
    /// Positions in `files`, by content number.
    by_content: Vec<u32>,
}

impl Installed {
    /// Reads the kept index at `path`, keeping what `plan` wants.
    pub fn read(path: &Path, plan: &Plan) -> std::result::Result<Installed, String> {
        Installed::read_from(std::fs::File::open(path).map_err(|e| e.to_string())?, plan)
    }

    /// Reads a kept index from `file`, keeping what `plan` wants.
    pub fn read_from(file: impl std::io::Read, plan: &Plan) -> std::result::Result<Installed, String> {
        let mut out = Installed::default();
        FileIndex::read_each(&mut std::io::BufReader::new(file), |e| {
            let Some(c) = e.sha256.as_deref().and_then(|s| plan.content_of(s)) else { return Ok(()) };
            let (Ok(at), Ok(len)) = (u32::try_from(out.paths.len()), u16::try_from(e.path.len())) else {
                return Err("path too long".into());
            };
            out.paths.extend_from_slice(&e.path);
            out.files.push((at, len, c));
            Ok(())
        })?;
        out.by_content = (0..out.files.len() as u32).collect();
        out.by_content.sort_by_key(|&k| out.files[k as usize].2);
        out.paths.shrink_to_fit();
        out.files.shrink_to_fit();
        Ok(out)
    }

    fn path_at(&self, k: usize) -> &[u8] {
        let (at, len, _) = self.files[k];
        &self.paths[at as usize..at as usize + len as usize]
    }

    /// The content number of the file at `path`, if it is one the new tree has.
    pub fn content_at(&self, path: &[u8]) -> Option<u32> {
        let k = self
            .files
            .binary_search_by(|&(at, len, _)| self.paths[at as usize..(at + u32::from(len)) as usize].cmp(path));
        k.ok().map(|k| self.files[k].2)
    }

    /// A path holding content `c`, if any.
    pub fn path_of(&self, c: u32) -> Option<&[u8]> {
        let k = self.by_content.partition_point(|&k| self.files[k as usize].2 < c);
        let &k = self.by_content.get(k)?;
        (self.files[k as usize].2 == c).then(|| self.path_at(k as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_bundle::tree::FileIndex;

    #[test]
    fn the_compact_index_gives_back_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/a"), b"one").unwrap();
        std::fs::write(root.join("d/e/b"), b"two").unwrap();
        std::fs::write(root.join("c"), b"one").unwrap();
        std::fs::hard_link(root.join("d/e/b"), root.join("z")).unwrap();
        std::os::unix::fs::symlink("d/a", root.join("l")).unwrap();
        let index = FileIndex::scan(&root).unwrap();
        let file = dir.path().join("index");
        index.write_to(&mut std::fs::File::create(&file).unwrap()).unwrap();

        let plan = Plan::read(&file, "t.tree", ".staging").unwrap();
        assert_eq!(plan.len(), index.entries.len());
        for (i, e) in index.entries.iter().enumerate() {
            assert_eq!(&plan.entry(i), e);
            assert_eq!(plan.lookup(&e.path), Some(i));
        }
        assert_eq!(plan.lookup(b"d/b"), None);
        assert_eq!((plan.contents(), plan.files_total, plan.bytes_total), (2, 3, 9));
        let z = plan.lookup(b"z").unwrap();
        assert!(plan.is_follower(z) && plan.is_leader(plan.leader_of(z)));
        let one = plan.content_of(&plan.sha(plan.lookup(b"c").unwrap())).unwrap();
        assert_eq!(plan.content(plan.lookup(b"d/a").unwrap()), one);
        assert_eq!(plan.content_of(&"0".repeat(64)), None);

        let installed = Installed::read(&file, &plan).unwrap();
        assert_eq!(installed.content_at(b"d/a"), Some(one));
        assert_eq!(installed.content_at(b"l"), None);
        assert!(matches!(installed.path_of(one), Some(b"c" | b"d/a")));

        std::fs::create_dir(root.join(".staging")).unwrap();
        let index = FileIndex::scan(&root).unwrap();
        index.write_to(&mut std::fs::File::create(&file).unwrap()).unwrap();
        let err = Plan::read(&file, "t.tree", ".staging").err().unwrap().to_string();
        assert!(err.contains("holds the reserved path '.staging'"), "{err}");
    }
}
