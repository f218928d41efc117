//! The bundle's squashfs over a verified reader: metadata parsed by
//! `backhand`, file contents read by [`data::DataReader`]; list, read and
//! extract files without mounting anything.

pub mod data;

use crate::error::{Error, Result, io_error as io_err};
use crate::source::{Cursor, ReadAt};
use backhand::{FilesystemReader, InnerNode, Node, SquashfsFileReader};
use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Remembers the last error of the verified source while backhand parses
/// the metadata, so the real cause (e.g. a corrupted block) is reported.
#[derive(Clone, Default)]
struct ErrorSlot(Arc<Mutex<Option<String>>>);

struct RecordingSource {
    inner: Arc<dyn ReadAt>,
    slot: ErrorSlot,
}

impl ReadAt for RecordingSource {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact_at(offset, buf).inspect_err(|e| {
            *self.slot.0.lock().expect("error slot") = Some(e.to_string());
        })
    }

    fn advise_scattered(&self, scattered: bool) {
        self.inner.advise_scattered(scattered)
    }

    fn read_exact_at_unverified(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact_at_unverified(offset, buf)
    }
}

/// Kind of a squashfs entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// Regular file of the given size.
    File(u64),
    /// Directory.
    Dir,
    /// Symbolic link to the given target.
    Symlink(PathBuf),
    /// Character device (Linux `dev_t` encoding of squashfs).
    CharDevice(u32),
    /// Block device.
    BlockDevice(u32),
    /// Named pipe.
    Fifo,
    /// Socket.
    Socket,
}

/// One entry with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the squashfs root (`""` for the root).
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (no type bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (Unix seconds).
    pub mtime: u32,
}

/// A squashfs opened over a (verified) payload reader.
pub struct BundleFs {
    fs: FilesystemReader<'static>,
    data: data::DataReader,
}

fn rel(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_string()
}

/// The end of bytes `offset..offset + len` of the file `map` describes, if they lie inside it.
fn range_end(map: &data::BlockMap, offset: u64, len: u64) -> Result<u64> {
    offset.checked_add(len).filter(|end| *end <= map.file_size()).ok_or_else(|| {
        Error::Payload(format!("Bytes {offset}+{len} lie beyond a file of {} bytes in the bundle", map.file_size()))
    })
}

/// Splits a squashfs device number into (major, minor).
pub fn split_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

impl BundleFs {
    /// Parses the squashfs superblock, tables and directory tree.
    pub fn open(payload: Arc<dyn ReadAt>) -> Result<BundleFs> {
        let errors = ErrorSlot::default();
        let source = RecordingSource { inner: payload.clone(), slot: errors.clone() };
        let cursor = Cursor::new(source);
        // The superblock and the tables are read exactly: no read-ahead
        // into the data blocks around them.
        payload.advise_scattered(true);
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| FilesystemReader::from_reader(cursor)));
        payload.advise_scattered(false);
        let fs = match opened {
            Ok(Ok(fs)) => fs,
            Ok(Err(e)) => {
                return Err(Self::cause(&errors, format!("Failed to read bundle squashfs: {e}")));
            }
            Err(_) => {
                return Err(Self::cause(&errors, "Failed to read bundle squashfs: malformed image".to_string()));
            }
        };
        let compressor = fs.compressor.unwrap_or(backhand::traits::types::Compressor::Uncompressed);
        let data = data::DataReader::new(payload, compressor, fs.block_size, fs.fragments.clone().unwrap_or_default());
        Ok(BundleFs { fs, data })
    }

    fn cause(slot: &ErrorSlot, fallback: String) -> Error {
        Error::Payload(slot.0.lock().expect("error slot").take().unwrap_or(fallback))
    }

    fn nodes(&self) -> impl Iterator<Item = &Node<SquashfsFileReader>> {
        self.fs.files()
    }

    /// The node at `path`, found by binary search: the reader keeps its
    /// nodes sorted by full path (a bundle with a tree image holds one
    /// file per distinct content, and installs look many of them up).
    fn node(&self, path: &str) -> Option<&Node<SquashfsFileReader>> {
        let want = Path::new("/").join(path.trim_start_matches('/'));
        let nodes = &self.fs.root.nodes;
        nodes.binary_search_by(|n| n.fullpath.as_path().cmp(&want)).ok().map(|i| &nodes[i])
    }

    /// Every entry, parents before children.
    pub fn entries(&self) -> Vec<Entry> {
        self.nodes().map(entry_of).collect()
    }

    /// The entry at `path`, if any.
    pub fn entry(&self, path: &str) -> Option<Entry> {
        self.node(path).map(entry_of)
    }

    /// The regular file at `path`.
    fn regular_file(&self, path: &str) -> Result<&SquashfsFileReader> {
        let node = self.node(path).ok_or_else(|| Error::Other(format!("File '{path}' not found in bundle")))?;
        match &node.inner {
            InnerNode::File(f) => Ok(f),
            _ => Err(Error::Other(format!("'{path}' in bundle is not a regular file"))),
        }
    }

    /// Streams one regular file into `out`; returns the bytes written.
    pub fn copy_file(&self, path: &str, out: &mut dyn Write) -> Result<u64> {
        self.data.copy(self.regular_file(path)?, path, &mut data::WriteSink(out))
    }

    /// [`BundleFs::copy_file`] for a caller that checks the whole stream
    /// against a trusted digest (the image's signed SHA-256) before anything
    /// is used: blocks stored as is skip the payload's own check.
    pub fn copy_file_digest_checked(&self, path: &str, out: &mut dyn Write) -> Result<u64> {
        self.data.copy_digest_checked(self.regular_file(path)?, path, &mut data::WriteSink(out))
    }

    /// Where the blocks of the regular file at `path` lie, for reading some
    /// of them on their own with [`BundleFs::read_blocks`].
    pub fn block_map(&self, path: &str) -> Result<data::BlockMap> {
        self.data.block_map(self.regular_file(path)?, path)
    }

    /// Blocks `first..first + count` of the file `map` describes, read with
    /// one call to the verified source.
    pub fn read_blocks(&self, map: &data::BlockMap, first: u64, count: u64) -> Result<Vec<u8>> {
        self.data.read_blocks(map, first, count)
    }

    /// Bytes `offset..offset + len` of the file `map` describes, verified.
    /// Where the blocks holding them are stored uncompressed (a file of
    /// digests), just these bytes are read, not the whole blocks.
    pub fn read_range(&self, map: &data::BlockMap, offset: u64, len: u64) -> Result<Vec<u8>> {
        let bs = map.block_size();
        let end = range_end(map, offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let (first, last) = (offset / bs, (end - 1) / bs);
        let plain = last < map.stored_blocks()
            && (first..=last).all(|b| {
                let (s, e, uncompressed) = map.stored_block(b);
                uncompressed && e - s == bs.min(map.file_size() - b * bs)
            });
        if plain {
            let mut out = vec![0u8; len as usize];
            let mut at = offset;
            while at < end {
                let (s, _, _) = map.stored_block(at / bs);
                let n = (end - at).min(bs - at % bs);
                let o = (at - offset) as usize;
                self.data.read_exact(s + at % bs, &mut out[o..o + n as usize])?;
                at += n;
            }
            return Ok(out);
        }
        let data = self.read_blocks(map, first, last + 1 - first)?;
        let skip = (offset - first * bs) as usize;
        Ok(data[skip..skip + len as usize].to_vec())
    }

    /// Copies bytes `offset..offset + len` of the file `map` describes into
    /// `out`, reading the blocks that hold them, at most 16 per call to the
    /// source. `sums` is the file of the SHA-256 of each stored block of
    /// `map`'s file: the blocks are read exactly as stored and checked
    /// against their sums (which are read verified) instead of through the
    /// payload's own check: no 4 KiB blocks around them, no hash tree.
    pub fn copy_range(
        &self,
        map: &data::BlockMap,
        offset: u64,
        len: u64,
        sums: &data::BlockMap,
        out: &mut dyn Write,
    ) -> Result<()> {
        let bs = map.block_size();
        range_end(map, offset, len)?;
        let (mut block, mut skip, mut left) = (offset / bs, (offset % bs) as usize, len);
        while left > 0 {
            let count = (skip as u64 + left).div_ceil(bs).min(16);
            let summed = count.min(map.stored_blocks().saturating_sub(block));
            let raw = self.read_range(sums, block * 32, summed * 32)?;
            let block_sums: Vec<[u8; 32]> =
                raw.chunks_exact(32).map(|c| c.try_into().expect("32-byte chunks")).collect();
            let data = self.data.read_blocks_summed(map, block, count, &block_sums)?;
            let take = (data.len() - skip).min(left as usize);
            out.write_all(&data[skip..skip + take]).map_err(|e| Error::Other(format!("Failed to write: {e}")))?;
            left -= take as u64;
            block += count;
            skip = 0;
        }
        Ok(())
    }

    /// Tells the bundle's source that file reads from now on are scattered
    /// (`true`) or may be sequential again (see [`ReadAt::advise_scattered`]).
    pub fn advise_scattered(&self, scattered: bool) {
        self.data.advise_scattered(scattered)
    }

    /// Reads one regular file completely.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let f = self.regular_file(path)?;
        let mut out = Vec::with_capacity(f.file_len().min(64 << 20));
        self.data.copy(f, path, &mut out)?;
        Ok(out)
    }

    /// Extracts everything below `dest` (created if missing), keeping modes,
    /// owners (when root), times, links, devices and fifos. Regular files are
    /// written by a few workers that take them in on-disk order, sparse (zero
    /// 4 KiB pages become holes).
    pub fn extract_to(&self, dest: &Path) -> Result<()> {
        self.extract_mapped(dest, &|relp, _| Some(relp.to_string()))
    }

    /// [`BundleFs::extract_to`] leaving out the regular files (by path
    /// inside the bundle) for which `wanted` says no.
    pub fn extract_files_to(&self, dest: &Path, wanted: &dyn Fn(&str) -> bool) -> Result<()> {
        self.extract_mapped(dest, &|relp, is_file| (!is_file || wanted(relp)).then(|| relp.to_string()))
    }

    /// [`BundleFs::extract_to`] of the directory `dir` of the bundle only:
    /// its contents land directly below `dest`.
    pub fn extract_dir_to(&self, dir: &str, dest: &Path) -> Result<()> {
        let prefix = format!("{}/", dir.trim_matches('/'));
        if !matches!(self.node(dir).map(|n| &n.inner), Some(InnerNode::Dir(_))) {
            return Err(Error::Other(format!("'{dir}' in bundle is not a directory")));
        }
        self.extract_mapped(dest, &|relp, _| {
            if relp == prefix.trim_end_matches('/') {
                Some(String::new())
            } else {
                relp.strip_prefix(&prefix).map(str::to_string)
            }
        })
    }

    /// Extracts the entries `place` maps (path inside the bundle, whether
    /// it is a regular file) to a path below `dest` (`""`: `dest` itself);
    /// the others are left out.
    fn extract_mapped(&self, dest: &Path, place: &dyn Fn(&str, bool) -> Option<String>) -> Result<()> {
        std::fs::create_dir_all(dest).map_err(|e| io_err("create", dest, e))?;
        let is_root = unsafe { libc::geteuid() } == 0;
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        for node in self.nodes() {
            let relp = rel(&node.fullpath);
            if relp.split('/').any(|c| c == ".." || c == ".") {
                return Err(Error::Payload(format!("Invalid path in bundle: {relp}")));
            }
            let Some(relp) = place(&relp, matches!(node.inner, InnerNode::File(_))) else { continue };
            let target = if relp.is_empty() { dest.to_path_buf() } else { dest.join(&relp) };
            let mode = u32::from(node.header.permissions) & 0o7777;
            match &node.inner {
                InnerNode::Dir(_) => {
                    if !relp.is_empty() {
                        std::fs::create_dir(&target).map_err(|e| io_err("create directory", &target, e))?;
                    }
                    dirs.push((target, node));
                    continue;
                }
                InnerNode::File(f) => {
                    files.push((target, rel(&node.fullpath), f, node));
                    continue;
                }
                InnerNode::Symlink(s) => {
                    std::os::unix::fs::symlink(&s.link, &target).map_err(|e| io_err("create symlink", &target, e))?;
                }
                InnerNode::CharacterDevice(d) => mknod(&target, libc::S_IFCHR, mode, d.device_number)?,
                InnerNode::BlockDevice(d) => mknod(&target, libc::S_IFBLK, mode, d.device_number)?,
                InnerNode::NamedPipe => mknod(&target, libc::S_IFIFO, mode, 0)?,
                InnerNode::Socket => {
                    tracing::warn!("skipping socket '{relp}'");
                    continue;
                }
            }
            apply_metadata(&target, node, is_root, !matches!(node.inner, InnerNode::Symlink(_)))?;
        }
        files.sort_by_key(|(_, _, f, _)| file_position(f));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4);
        let results: Vec<Result<()>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= files.len() || failed.load(std::sync::atomic::Ordering::Relaxed) {
                                return Ok(());
                            }
                            let (target, relp, f, node) = &files[i];
                            let r = std::fs::File::create(target)
                                .map_err(|e| io_err("create", target, e))
                                .and_then(|out| self.data.copy(f, relp, &mut crate::sparse::SparseWriter::new(out)))
                                .and_then(|_| apply_metadata(target, node, is_root, true));
                            if r.is_err() {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                return r;
                            }
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("extraction worker panicked")).collect()
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        // Directories last and deepest first, so read-only modes do not block children.
        for (path, node) in dirs.into_iter().rev() {
            apply_metadata(&path, node, is_root, true)?;
        }
        Ok(())
    }
}

/// Where a file's data starts, for reading files in on-disk order.
fn file_position(f: &SquashfsFileReader) -> (u64, u32) {
    match f {
        SquashfsFileReader::Basic(b) if !b.block_sizes.is_empty() => (u64::from(b.blocks_start), 0),
        SquashfsFileReader::Extended(e) if !e.block_sizes.is_empty() => (e.blocks_start, 0),
        SquashfsFileReader::Basic(b) => (u64::MAX, b.frag_index),
        SquashfsFileReader::Extended(e) => (u64::MAX, e.frag_index),
    }
}

fn entry_of(n: &Node<SquashfsFileReader>) -> Entry {
    let kind = match &n.inner {
        InnerNode::File(f) => EntryKind::File(f.file_len() as u64),
        InnerNode::Dir(_) => EntryKind::Dir,
        InnerNode::Symlink(s) => EntryKind::Symlink(s.link.clone()),
        InnerNode::CharacterDevice(d) => EntryKind::CharDevice(d.device_number),
        InnerNode::BlockDevice(d) => EntryKind::BlockDevice(d.device_number),
        InnerNode::NamedPipe => EntryKind::Fifo,
        InnerNode::Socket => EntryKind::Socket,
    };
    Entry {
        path: rel(&n.fullpath),
        kind,
        mode: u32::from(n.header.permissions) & 0o7777,
        uid: n.header.uid,
        gid: n.header.gid,
        mtime: n.header.mtime,
    }
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Payload(format!("Invalid path in bundle: {}", p.display())))
}

fn mknod(p: &Path, kind: libc::mode_t, mode: u32, dev: u32) -> Result<()> {
    let (major, minor) = split_dev(dev);
    let c = cpath(p)?;
    if unsafe { libc::mknod(c.as_ptr(), kind | mode as libc::mode_t, libc::makedev(major, minor)) } != 0 {
        return Err(Error::Io(format!("Failed to create '{}': {}", p.display(), io::Error::last_os_error())));
    }
    Ok(())
}

fn apply_metadata(p: &Path, node: &Node<SquashfsFileReader>, is_root: bool, chmod: bool) -> Result<()> {
    let c = cpath(p)?;
    let fail =
        |what: &str| Error::Io(format!("Failed to set {what} of '{}': {}", p.display(), io::Error::last_os_error()));
    unsafe {
        if is_root && libc::lchown(c.as_ptr(), node.header.uid, node.header.gid) != 0 {
            return Err(fail("owner"));
        }
        if chmod && libc::chmod(c.as_ptr(), (u32::from(node.header.permissions) & 0o7777) as libc::mode_t) != 0 {
            return Err(fail("mode"));
        }
        let t = libc::timespec { tv_sec: node.header.mtime as libc::time_t, tv_nsec: 0 };
        let times = [t, t];
        if libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) != 0 {
            return Err(fail("times"));
        }
    }
    Ok(())
}
