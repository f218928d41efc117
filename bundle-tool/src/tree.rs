//! The file index of a `tree` image: one entry per file system object of a
//! root file system (path, type, owner, mode, size, SHA-256, symlink target,
//! device numbers, extended attributes including file capabilities, hard-link
//! groups). It travels inside the bundle's verified payload and its digest is
//! in the manifest, so every file's content and metadata is covered by the
//! signature; installs apply metadata from it, never from the squashfs.
//!
//! On disk it is JSON Lines: a header line, then one object per entry in
//! byte order of the paths (the root directory first, as `""`), so equal
//! trees give equal indexes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::io::{BufRead, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The first line of every index.
const HEADER: &str = r#"{"format":"rota-file-index","version":1}"#;

/// What kind of object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

/// The counts `info` shows for a tree image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeSummary {
    /// Regular files (a hard-link group counted once).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Distinct contents among them (what the bundle stores).
    pub contents: u64,
    /// Directories, the root included.
    pub directories: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Device nodes, fifos and sockets.
    pub special: u64,
    /// Further names of hard-linked files.
    pub hard_links: u64,
}

impl TreeSummary {
    /// The counts from (name, value) pairs as [`TreeSummary::fields`]
    /// names them (missing names count 0).
    pub fn from_fields(value: impl Fn(&str) -> Option<u64>) -> TreeSummary {
        let n = |k: &str| value(k).unwrap_or(0);
        TreeSummary {
            files: n("files"),
            bytes: n("bytes"),
            contents: n("contents"),
            directories: n("directories"),
            symlinks: n("symlinks"),
            special: n("special"),
            hard_links: n("hard-links"),
        }
    }

    /// (name, value) pairs in display order, named as in `info`'s JSON.
    pub fn fields(&self) -> [(&'static str, u64); 7] {
        [
            ("files", self.files),
            ("bytes", self.bytes),
            ("contents", self.contents),
            ("directories", self.directories),
            ("symlinks", self.symlinks),
            ("special", self.special),
            ("hard-links", self.hard_links),
        ]
    }
}

/// Contents of a tree image are stored once each, sorted by SHA-256, in
/// one file beside the index ([`contents_file`]), each starting at a
/// multiple of this many bytes: the squashfs block size of bundles, so a
/// content's blocks hold nothing else and reading (or streaming) one
/// content touches its own blocks only. The gaps are holes, which squashfs
/// stores as sparse blocks.
pub const CONTENT_ALIGN: u64 = 128 * 1024;

/// The name of the contents file of tree image `image`.
pub fn contents_file(image: &str) -> String {
    format!("{image}.data")
}

/// The name of the file holding the SHA-256 of each stored (compressed)
/// squashfs block of tree image `image`'s contents file, in block order (32
/// bytes each; a sparse block's is filler). Added to the squashfs after the rest,
/// as its layout is known only then; a device checks the bytes it fetches
/// for a content against these before decompressing them, so it fetches
/// just those bytes instead of the whole 4 KiB blocks around them and the
/// verity hash blocks above them.
pub fn block_sums_file(image: &str) -> String {
    format!("{image}.data.sums")
}

/// Where contents of these sizes (in SHA-256 order) start in the contents file.
pub fn content_offsets(sizes: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut at = 0;
    sizes
        .into_iter()
        .map(|size| {
            let start = at;
            at += size.div_ceil(CONTENT_ALIGN) * CONTENT_ALIGN;
            start
        })
        .collect()
}

/// One file system object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path below the tree's root, `/`-separated, no leading `/` (`""` is the root).
    #[serde(with = "bytes_text")]
    pub path: Vec<u8>,
    /// The object's type.
    pub kind: Kind,
    /// Permission bits, set-id and sticky bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Size in bytes (regular files).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// SHA-256 of the content, hex (regular files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Link target (symbolic links).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes_text")]
    pub target: Option<Vec<u8>>,
    /// Device number (character and block devices).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    /// Extended attributes, name → value in hex (`security.capability` among them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// Hard-link group: entries sharing a number are one inode (numbered
    /// from 1 in path order; absent for files with a single link).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub link_group: u64,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Paths and link targets: a JSON string when they are UTF-8, else `hex:`
/// and the bytes in hex (file names on Linux are bytes).
mod bytes_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn encode(v: &[u8]) -> String {
        match std::str::from_utf8(v) {
            Ok(s) if !s.starts_with("hex:") => s.to_string(),
            _ => format!("hex:{}", hex::encode(v)),
        }
    }

    pub fn decode(s: &str) -> Result<Vec<u8>, String> {
        match s.strip_prefix("hex:") {
            Some(h) => hex::decode(h).map_err(|e| format!("invalid hex path '{s}': {e}")),
            None => Ok(s.as_bytes().to_vec()),
        }
    }

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        decode(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod opt_bytes_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&super::bytes_text::encode(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| super::bytes_text::decode(&s).map_err(serde::de::Error::custom)).transpose()
    }
}

/// The index of one tree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileIndex {
    /// The entries, sorted by path bytes.
    pub entries: Vec<Entry>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("Failed to {what} '{}': {e}", path.display())
}

/// The extended attributes of `path` (not following a final symlink),
/// name → value; none where the filesystem has no xattr support.
pub fn read_xattrs(path: &Path) -> std::io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut out = BTreeMap::new();
    // SAFETY: sizing call with a NULL buffer.
    let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOTSUP) { Ok(out) } else { Err(e) };
    }
    let mut names = vec![0u8; len as usize];
    // SAFETY: the buffer holds `len` bytes.
    let len = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    for name in names[..len as usize].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("split at NUL");
        let mut value = vec![0u8; 256];
        loop {
            // SAFETY: the buffer holds `value.len()` bytes.
            let n = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
            if n >= 0 {
                value.truncate(n as usize);
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ERANGE) {
                return Err(e);
            }
            value.resize(value.len() * 4, 0);
        }
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

/// The extended attributes of `path` as the index records them (value in hex).
fn xattrs(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let raw = read_xattrs(path).map_err(|e| io_err("read xattrs of", path, e))?;
    Ok(raw.into_iter().map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), hex::encode(v))).collect())
}

/// Length and SHA-256 (hex) of the file at `path`.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    hash_reader(std::fs::File::open(path)?)
}

/// Length and SHA-256 (hex) of everything `f` reads.
pub fn hash_reader(mut f: impl Read) -> std::io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((len, hex::encode(h.finalize())));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}

impl Entry {
    /// The entry of the object at `rel` below `root` (not following a
    /// final symlink). A file with several links gets a `link_group` that
    /// identifies its inode; [`FileIndex::scan`] renumbers them.
    pub fn read(root: &Path, rel: &[u8]) -> Result<Entry, String> {
        let full = if rel.is_empty() { root.to_path_buf() } else { root.join(OsStr::from_bytes(rel)) };
        let md = std::fs::symlink_metadata(&full).map_err(|e| io_err("stat", &full, e))?;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Socket
        };
        let mut e = Entry {
            path: rel.to_vec(),
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            size: 0,
            sha256: None,
            target: None,
            rdev: 0,
            xattrs: xattrs(&full)?,
            link_group: 0,
        };
        match kind {
            Kind::File => {
                e.size = md.len();
                e.sha256 = Some(hash_file(&full).map_err(|err| io_err("read", &full, err))?.1);
                if md.nlink() > 1 {
                    e.link_group = md.ino() ^ (md.dev() << 48);
                }
            }
            Kind::Symlink => {
                let t = std::fs::read_link(&full).map_err(|err| io_err("read link", &full, err))?;
                e.target = Some(t.into_os_string().into_vec());
            }
            Kind::Char | Kind::Block => e.rdev = md.rdev(),
            Kind::Dir | Kind::Fifo | Kind::Socket => {}
        }
        Ok(e)
    }
}

impl FileIndex {
    /// Indexes the tree below `root` (not following symlinks, not crossing
    /// into other file systems' contents beyond what `root` shows).
    pub fn scan(root: &Path) -> Result<FileIndex, String> {
        let mut entries = Vec::new();
        let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(rel) = stack.pop() {
            let e = Entry::read(root, &rel)?;
            if e.kind == Kind::Dir {
                let full = FileIndex::path_under(root, &e);
                let mut names: Vec<OsString> = std::fs::read_dir(&full)
                    .map_err(|err| io_err("read directory", &full, err))?
                    .map(|d| d.map(|d| d.file_name()))
                    .collect::<std::io::Result<_>>()
                    .map_err(|err| io_err("read directory", &full, err))?;
                names.sort();
                for name in names.into_iter().rev() {
                    let mut child = rel.clone();
                    if !child.is_empty() {
                        child.push(b'/');
                    }
                    child.extend_from_slice(name.as_bytes());
                    stack.push(child);
                }
            }
            entries.push(e);
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        // Hard-link groups numbered from 1 in path order.
        let mut groups: HashMap<u64, u64> = HashMap::new();
        for e in entries.iter_mut().filter(|e| e.link_group != 0) {
            let next = groups.len() as u64 + 1;
            e.link_group = *groups.entry(e.link_group).or_insert(next);
        }
        Ok(FileIndex { entries })
    }

    /// Writes the index as JSON Lines.
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(out, "{HEADER}")?;
        for e in &self.entries {
            serde_json::to_writer(&mut *out, e)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Reads an index written by [`FileIndex::write_to`], checking it
    /// (see [`FileIndex::read_each`]).
    pub fn read_from(input: &mut dyn BufRead) -> Result<FileIndex, String> {
        let mut entries = Vec::new();
        FileIndex::read_each(input, |e| {
            entries.push(e);
            Ok(())
        })?;
        Ok(FileIndex { entries })
    }

    /// Reads an index written by [`FileIndex::write_to`] one entry at a
    /// time, without holding it: `f` gets each entry once it passed the
    /// checks an install relies on — paths in order, the root directory
    /// first, every other path relative, without `.`/`..` or empty
    /// components, below a directory of the index; files carry a digest,
    /// links a target, and the members of a hard-link group are alike.
    pub fn read_each(input: &mut dyn BufRead, mut f: impl FnMut(Entry) -> Result<(), String>) -> Result<(), String> {
        let mut lines = input.lines();
        match lines.next() {
            Some(Ok(h)) if h == HEADER => {}
            _ => return Err("not a rota file index (header missing)".to_string()),
        }
        let mut checker = Checker::default();
        for (i, line) in lines.enumerate() {
            let at = |why: String| format!("file index line {}: {why}", i + 2);
            let line = line.map_err(|e| format!("Failed to read file index: {e}"))?;
            let e: Entry = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
            checker.check(&e).map_err(|why| at(why.to_string()))?;
            f(e).map_err(at)?;
        }
        Ok(())
    }

    /// What `info` shows of the tree.
    pub fn summary(&self) -> TreeSummary {
        let mut counter = SummaryCounter::default();
        self.entries.iter().for_each(|e| counter.add(e));
        counter.finish()
    }

    /// What `info` shows of the index read from `input` (checked as
    /// [`FileIndex::read_each`] does), without holding the index.
    pub fn summarize(input: &mut dyn BufRead) -> Result<TreeSummary, String> {
        let mut counter = SummaryCounter::default();
        FileIndex::read_each(input, |e| {
            counter.add(&e);
            Ok(())
        })?;
        Ok(counter.finish())
    }

    /// The distinct contents (SHA-256, size, the first entry holding it), sorted by SHA-256.
    pub fn contents(&self) -> Vec<(&str, u64, &Entry)> {
        let mut out: Vec<(&str, u64, &Entry)> =
            self.entries.iter().filter_map(|e| Some((e.sha256.as_deref()?, e.size, e))).collect();
        out.sort_by_key(|c| c.0);
        out.dedup_by_key(|c| c.0);
        out
    }

    /// Total bytes of regular files (each hard-link group once).
    pub fn content_bytes(&self) -> u64 {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::File && (e.link_group == 0 || seen.insert(e.link_group)))
            .map(|e| e.size)
            .sum()
    }

    /// The path of an entry below `root`.
    pub fn path_under(root: &Path, e: &Entry) -> PathBuf {
        root.join(OsStr::from_bytes(&e.path))
    }
}

/// Counts entries for a [`TreeSummary`].
#[derive(Default)]
struct SummaryCounter {
    summary: TreeSummary,
    groups: std::collections::HashSet<u64>,
    contents: std::collections::HashSet<String>,
}

impl SummaryCounter {
    fn add(&mut self, e: &Entry) {
        let s = &mut self.summary;
        match e.kind {
            Kind::File if e.link_group != 0 && !self.groups.insert(e.link_group) => s.hard_links += 1,
            Kind::File => {
                s.files += 1;
                s.bytes += e.size;
                if let Some(sha) = &e.sha256
                    && !self.contents.contains(sha)
                {
                    self.contents.insert(sha.clone());
                }
            }
            Kind::Dir => s.directories += 1,
            Kind::Symlink => s.symlinks += 1,
            Kind::Char | Kind::Block | Kind::Fifo | Kind::Socket => s.special += 1,
        }
    }

    fn finish(mut self) -> TreeSummary {
        self.summary.contents = self.contents.len() as u64;
        self.summary
    }
}

/// Checks index entries one at a time, in order (see [`FileIndex::read_each`]):
/// remembers the last path, the directories and the first member of each
/// hard-link group, nothing else.
#[derive(Default)]
struct Checker {
    last: Option<Vec<u8>>,
    dirs: std::collections::HashSet<Vec<u8>>,
    groups: HashMap<u64, Entry>,
}

impl Checker {
    fn check(&mut self, e: &Entry) -> Result<(), &'static str> {
        let Some(last) = self.last.replace(e.path.clone()) else {
            if !e.path.is_empty() || e.kind != Kind::Dir {
                return Err("the first entry must be the root directory");
            }
            self.dirs.insert(Vec::new());
            return Ok(());
        };
        if last >= e.path {
            return Err("paths out of order");
        }
        if e.path.split(|b| *b == b'/').any(|c| c.is_empty() || c == b"." || c == b"..") {
            return Err("path with an empty, '.' or '..' component");
        }
        let parent = e.path.iter().rposition(|b| *b == b'/').map_or(&e.path[..0], |at| &e.path[..at]);
        if !self.dirs.contains(parent) {
            return Err("parent is not a directory of the index");
        }
        match e.kind {
            Kind::Dir => {
                self.dirs.insert(e.path.clone());
            }
            Kind::File => {
                let sha_ok = e.sha256.as_deref().is_some_and(|s| {
                    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                });
                if !sha_ok {
                    return Err("regular file without a SHA-256");
                }
            }
            Kind::Symlink if e.target.as_ref().is_none_or(|t| t.is_empty()) => {
                return Err("symbolic link without a target");
            }
            _ => {}
        }
        if e.link_group != 0 {
            if e.kind != Kind::File {
                return Err("hard-link group on an entry that is not a regular file");
            }
            let first = self.groups.entry(e.link_group).or_insert_with(|| e.clone());
            let alike = |a: &Entry, b: &Entry| {
                (a.sha256.as_ref(), a.size, a.mode, a.uid, a.gid, a.mtime, &a.xattrs)
                    == (b.sha256.as_ref(), b.size, b.mode, b.uid, b.gid, b.mtime, &b.xattrs)
            };
            if !alike(first, e) {
                return Err("hard-link group members differ");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn sample(dir: &Path) {
        std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
        std::fs::write(dir.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(dir.join("usr/bin/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(dir.join("usr/bin/tool"), dir.join("usr/bin/tool-again")).unwrap();
        symlink("tool", dir.join("usr/bin/link")).unwrap();
        std::fs::write(dir.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name").unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        let path = CString::new(dir.join("empty").as_os_str().as_bytes()).unwrap();
        let (name, value) = (CString::new("user.rota").unwrap(), b"\x01\x02");
        // SAFETY: valid C strings and buffer.
        let r = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), 2, 0) };
        assert_eq!(r, 0, "user xattrs on the test directory: {}", std::io::Error::last_os_error());
    }

    #[test]
    fn scan_write_and_read_back() {
        let t = tempfile::tempdir().unwrap();
        sample(t.path());
        let idx = FileIndex::scan(t.path()).unwrap();
        let paths: Vec<String> = idx.entries.iter().map(|e| bytes_text::encode(&e.path)).collect();
        assert_eq!(
            paths,
            [
                "",
                "caf\u{e9}-as-latin-1",
                "empty",
                "usr",
                "usr/bin",
                "usr/bin/link",
                "usr/bin/tool",
                "usr/bin/tool-again"
            ]
            .map(|p| if p.starts_with("caf") { "hex:636166e9".to_string() } else { p.to_string() })
        );
        let tool = &idx.entries[6];
        assert_eq!((tool.kind, tool.mode, tool.size, tool.link_group), (Kind::File, 0o4755, 18, 1));
        assert_eq!(tool.sha256.as_deref(), Some(hex::encode(Sha256::digest(b"#!/bin/sh\necho hi\n")).as_str()));
        assert_eq!(idx.entries[7].link_group, 1);
        assert_eq!(idx.entries[5].target.as_deref(), Some(&b"tool"[..]));
        assert_eq!(idx.entries[0].kind, Kind::Dir);
        assert_eq!(idx.entries[2].xattrs.get("user.rota").map(String::as_str), Some("0102"));
        assert_eq!(idx.content_bytes(), 18 + 12);
        let mut text = Vec::new();
        idx.write_to(&mut text).unwrap();
        let back = FileIndex::read_from(&mut &text[..]).unwrap();
        assert_eq!(back, idx);
        // Same tree, same bytes.
        let mut again = Vec::new();
        FileIndex::scan(t.path()).unwrap().write_to(&mut again).unwrap();
        assert_eq!(again, text);
    }

    #[test]
    fn unsafe_or_inconsistent_indexes_are_refused() {
        let line = |path: &str, kind: &str, extra: &str| {
            format!("{{\"path\":\"{path}\",\"kind\":\"{kind}\",\"mode\":493,\"uid\":0,\"gid\":0,\"mtime\":0{extra}}}\n")
        };
        let sha = format!(",\"size\":1,\"sha256\":\"{}\"", "ab".repeat(32));
        let root = line("", "dir", "");
        let cases = [
            (line("a", "dir", ""), "line 2: the first entry must be the root directory"),
            (root.clone() + &line("../x", "file", &sha), "line 3: path with an empty"),
            (root.clone() + &line("a//b", "file", &sha), "line 3: path with an empty"),
            (root.clone() + &line("a/b", "file", &sha), "line 3: parent is not a directory"),
            (root.clone() + &line("a", "file", &sha) + &line("a/b", "file", &sha), "line 4: parent is not a directory"),
            (root.clone() + &line("a", "file", ""), "line 3: regular file without a SHA-256"),
            (root.clone() + &line("a", "symlink", ""), "line 3: symbolic link without a target"),
            (
                root.clone()
                    + &line("a", "file", &(sha.clone() + ",\"link_group\":1"))
                    + &line("b", "file", ",\"size\":1,\"sha256\":\"00\",\"link_group\":1"),
                "line 4: regular file without a SHA-256",
            ),
            (
                root.clone()
                    + &line("a", "file", &(sha.clone() + ",\"link_group\":1"))
                    + &line("b", "file", &(sha.clone() + ",\"link_group\":1")).replace("493", "420"),
                "line 4: hard-link group members differ",
            ),
        ];
        for (body, want) in cases {
            let text = format!("{HEADER}\n{body}");
            let err = FileIndex::read_from(&mut text.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        }
        let fine = format!("{HEADER}\n{root}{}", line("a", "dir", "") + &line("a/b", "file", &sha));
        assert_eq!(FileIndex::read_from(&mut fine.as_bytes()).unwrap().entries.len(), 3);
    }

    #[test]
    fn damaged_indexes_are_refused() {
        assert!(FileIndex::read_from(&mut &b"{}\n"[..]).unwrap_err().contains("header missing"));
        let text = format!(
            "{HEADER}\n{{\"path\":\"\",\"kind\":\"dir\",\"mode\":493,\"uid\":0,\"gid\":0,\"mtime\":0}}\n{{\"path\":\"b\",\"kind\":\"dir\",\"mode\":493,\"uid\":0,\"gid\":0,\"mtime\":0}}\n{{\"path\":\"a\",\"kind\":\"dir\",\"mode\":493,\"uid\":0,\"gid\":0,\"mtime\":0}}\n"
        );
        assert!(FileIndex::read_from(&mut text.as_bytes()).unwrap_err().contains("line 4: paths out of order"));
        let text = format!("{HEADER}\n{{\"path\":\"a\",\"kind\":\"door\"}}\n");
        assert!(FileIndex::read_from(&mut text.as_bytes()).unwrap_err().contains("file index line 2"));
    }
}
