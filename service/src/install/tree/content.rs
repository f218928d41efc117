//! File contents for a tree install: hashed on the way into the target's
//! staging directory, written sparse (all-zero 4 KiB blocks become holes),
//! and only kept when the digest is the one the index names.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Blocks of this size that hold only zeros are left as holes.
const HOLE_BLOCK: usize = 4096;
/// Read size for local copies and hashing (one buffer per worker).
const CHUNK: usize = 256 << 10;

/// Writes a file from a stream, hashing every byte and skipping the writes
/// of aligned all-zero blocks; [`SparseWriter::finish`] sets the length.
pub struct SparseWriter {
    file: File,
    /// Bytes taken so far.
    pos: u64,
    /// The start of the block being filled, held until it is complete.
    partial: Vec<u8>,
    hasher: Sha256,
}

impl SparseWriter {
    /// A writer filling `file` (empty) from its start.
    pub fn new(file: File) -> SparseWriter {
        SparseWriter { file, pos: 0, partial: Vec::with_capacity(HOLE_BLOCK), hasher: Sha256::new() }
    }

    /// Writes `block` (a whole block, or the file's last piece) unless it is all zeros.
    fn put(&self, block: &[u8], at: u64) -> std::io::Result<()> {
        if block.iter().any(|b| *b != 0) {
            self.file.write_all_at(block, at)?;
        }
        Ok(())
    }

    /// Writes the held tail, sets the length (trailing holes) and returns
    /// (length, SHA-256 hex, file).
    pub fn finish(self) -> std::io::Result<(u64, String, File)> {
        self.put(&self.partial, self.pos - self.partial.len() as u64)?;
        self.file.set_len(self.pos)?;
        Ok((self.pos, hex::encode(self.hasher.finalize()), self.file))
    }
}

impl Write for SparseWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        let mut rest = buf;
        // Complete a held block first.
        if !self.partial.is_empty() {
            let n = (HOLE_BLOCK - self.partial.len()).min(rest.len());
            self.partial.extend_from_slice(&rest[..n]);
            self.pos += n as u64;
            rest = &rest[n..];
            if self.partial.len() < HOLE_BLOCK {
                return Ok(buf.len());
            }
            let block = std::mem::take(&mut self.partial);
            self.put(&block, self.pos - HOLE_BLOCK as u64)?;
            self.partial = block;
            self.partial.clear();
        }
        // Whole blocks straight from the caller's buffer (runs of data
        // blocks in one write), a tail held.
        let whole = rest.len() - rest.len() % HOLE_BLOCK;
        let blocks: Vec<&[u8]> = rest[..whole].chunks(HOLE_BLOCK).collect();
        let mut i = 0;
        while i < blocks.len() {
            let zero = |b: &[u8]| b.iter().all(|x| *x == 0);
            let mut j = i;
            while j < blocks.len() && !zero(blocks[j]) {
                j += 1;
            }
            if j > i {
                self.file.write_all_at(&rest[i * HOLE_BLOCK..j * HOLE_BLOCK], self.pos)?;
                self.pos += ((j - i) * HOLE_BLOCK) as u64;
            } else {
                self.pos += HOLE_BLOCK as u64;
                j += 1;
            }
            i = j;
        }
        self.partial.extend_from_slice(&rest[whole..]);
        self.pos += (rest.len() - whole) as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SHA-256 (hex) and length of the synced file at `path` as the medium
/// holds it: its cached pages are dropped before it is read.
pub fn hash_from_medium(path: &Path) -> std::io::Result<(u64, String)> {
    use std::os::fd::AsRawFd;
    let f = File::open(path)?;
    // SAFETY: advisory call on an open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    drop(f);
    rota_bundle::tree::hash_file(path)
}

/// Copies `from` to a new file `to` (sparse, hashed); keeps it only when
/// its digest is `sha` and returns whether it did. A source that cannot be
/// read counts as a mismatch (another source may still have the content).
pub fn copy_verified(from: &Path, to: &Path, sha: &str) -> Result<bool> {
    let Ok(mut src) = File::open(from) else { return Ok(false) };
    let out = create(to)?;
    let mut w = SparseWriter::new(out);
    let mut buf = vec![0u8; CHUNK];
    let copied = loop {
        match src.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => w.write_all(&buf[..n]).map_err(|e| Error::io("Failed to write", to, e))?,
            Err(_) => break false,
        }
    };
    let (_, got, _) = w.finish().map_err(|e| Error::io("Failed to write", to, e))?;
    if copied && got == sha {
        return Ok(true);
    }
    super::place::remove_any(to)?;
    if copied {
        tracing::warn!("'{}' does not hold the expected content (sha256 {got}, not {sha}): not reused", from.display());
    }
    Ok(false)
}

/// A clone of `from` at `to` where the file system shares extents
/// (btrfs, XFS); `false` where it cannot (ext4), leaving nothing behind.
pub fn try_reflink(from: &Path, to: &Path) -> bool {
    let (Ok(src), Ok(dst)) = (File::open(from), create(to)) else { return false };
    use std::os::fd::AsRawFd;
    // SAFETY: FICLONE on two open descriptors; failure leaves `dst` empty.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if r != 0 {
        let _ = std::fs::remove_file(to);
    }
    r == 0
}

/// Creates `path` for writing (replacing a leftover of an earlier run).
pub fn create(path: &Path) -> Result<File> {
    let _ = crate::files::remove_any(path);
    File::options().write(true).create_new(true).open(path).map_err(|e| Error::io("Failed to create", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_become_holes_and_the_digest_covers_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut data = vec![0u8; 64 * 4096 + 100];
        data[5] = 1;
        data[40 * 4096 + 7] = 2;
        let mut w = SparseWriter::new(create(&path).unwrap());
        for piece in data.chunks(3000) {
            w.write_all(piece).unwrap();
        }
        let (len, sha, _) = w.finish().unwrap();
        assert_eq!(len, data.len() as u64);
        assert_eq!(sha, hex::encode(Sha256::digest(&data)));
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Two blocks hold data (a third for the unaligned tail at most).
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 <= 3 * 4096 + 4096, "not sparse");
    }

    #[test]
    fn a_copy_is_kept_only_with_the_right_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&from, b"content").unwrap();
        let sha = hex::encode(Sha256::digest(b"content"));
        assert!(copy_verified(&from, &to, &sha).unwrap());
        assert_eq!(std::fs::read(&to).unwrap(), b"content");
        assert!(!copy_verified(&from, &to, &"0".repeat(64)).unwrap());
        assert!(!to.exists());
        assert!(!copy_verified(&dir.path().join("missing"), &to, &sha).unwrap());
    }
}
