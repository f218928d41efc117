//! File contents for a tree install: hashed on the way into the target's
//! staging directory, written sparse (all-zero 4 KiB blocks become holes),
//! and only kept when the digest is the one the index names.

use crate::confined::Root;
use crate::error::Result;
use rota_bundle::sparse::SparseWriter;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};

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

/// SHA-256 (hex) and length of the synced file `rel` below `root` as the
/// medium holds it: its cached pages are dropped before it is read.
pub fn hash_from_medium(root: &Root, rel: &[u8]) -> std::io::Result<(u64, String)> {
    let f = root.open_file(rel)?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
    rota_bundle::tree::hash_reader(f)
}

/// Copies `src` into the new, empty file `out` (sparse, hashed); returns
/// the digest of what was copied, `None` when `src` could not be read to
/// its end (another source may still have the content). The caller compares
/// it with the one it expects; a write that fails is an error.
pub fn copy_checked(src: &mut dyn Read, out: File) -> std::io::Result<Option<String>> {
    let mut w = HashingWriter::new(out);
    let mut buf = vec![0u8; CHUNK];
    let copied = loop {
        match src.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => w.write_all(&buf[..n])?,
            Err(_) => break false,
        }
    };
    let (_, got, _) = w.finish()?;
    Ok(copied.then_some(got))
}

/// Makes `dst` (empty) a clone of `src` where the file system shares
/// extents (btrfs, XFS); `false` where it cannot (ext4).
pub fn try_reflink(src: &File, dst: &File) -> bool {
    rustix::fs::ioctl_ficlone(dst, src).is_ok()
}

/// Creates `rel` below `root` for writing (replacing a leftover of an
/// earlier run, whatever it is), readable by its owner only.
pub fn create(root: &Root, rel: &[u8]) -> Result<File> {
    super::place::remove(root, rel)?;
    root.create(rel, 0o600).map_err(|e| super::place::fail("Failed to create", root, rel, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_become_holes_and_the_digest_covers_everything() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let path = dir.path().join("f");
        let mut data = vec![0u8; 64 * 4096 + 100];
        data[5] = 1;
        data[40 * 4096 + 7] = 2;
        let mut w = HashingWriter::new(create(&root, b"f").unwrap());
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
    fn a_copy_tells_its_digest_or_that_the_source_failed() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let sha = hex::encode(Sha256::digest(b"content"));
        assert_eq!(copy_checked(&mut &b"content"[..], create(&root, b"b").unwrap()).unwrap(), Some(sha));
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"content");
        let unreadable = &mut std::fs::File::open(dir.path()).unwrap();
        assert_eq!(copy_checked(unreadable, create(&root, b"c").unwrap()).unwrap(), None);
    }
}
