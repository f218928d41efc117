//! File contents for a tree install: hashed on the way into the target's
//! staging directory, written sparse (all-zero 4 KiB blocks become holes),
//! and only kept when the digest is the one the index names.

use crate::error::{Error, Result};
use rota_bundle::sparse::SparseWriter;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

/// Read size for local copies and hashing (one buffer per worker).
const CHUNK: usize = 256 << 10;

/// Writes a new file from a stream, sparse (all-zero 4 KiB pages become
/// holes), hashing every byte; [`HashingWriter::finish`] sets the length.
pub struct HashingWriter {
    file: SparseWriter,
    hasher: Sha256,
}

impl HashingWriter {
    /// A writer filling `file` (empty) from its start.
    pub fn new(file: File) -> HashingWriter {
        HashingWriter { file: SparseWriter::new(file), hasher: Sha256::new() }
    }

    /// Writes the held tail, sets the length (trailing holes) and returns
    /// (length, SHA-256 hex, file).
    pub fn finish(self) -> std::io::Result<(u64, String, File)> {
        let (len, file) = self.file.finish()?;
        Ok((len, hex::encode(self.hasher.finalize()), file))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.file.write_all(buf)?;
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
    let mut w = HashingWriter::new(out);
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
        let mut w = HashingWriter::new(create(&path).unwrap());
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
