//! Directory trees to and from a chunk store (`.caidx`, spec §3, §5): `make`
//! encodes a tree as a catar stream straight into the chunker; `extract`
//! reassembles the stream from seeds and the store on one thread and
//! decodes it into a directory on another, so neither the archive nor the
//! tree is ever held in memory or written to a temporary file.

use crate::blob::{self, BlobError, Maker, Stats};
use crate::catar::{CatarError, decode, encode};
use crate::chunker::ChunkSizes;
use crate::digest::DigestKind;
use crate::index::Index;
use crate::seed::Seed;
use crate::store::{ChunkSource, Compression, LocalStore};
use std::path::Path;

/// Why an archive could not be made or extracted.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Encoding or decoding the tree failed.
    #[error("{0}")]
    Catar(#[from] CatarError),
    /// Chunking, storing or fetching failed.
    #[error("{0}")]
    Blob(#[from] BlobError),
}

/// Encodes the tree at `root` with feature `flags` (normalised, with the
/// digest bit matching `digest`), cuts the stream with `sizes` and puts the
/// chunks into `store` when given; returns the `.caidx` index.
pub fn make(
    root: &Path,
    flags: u64,
    sizes: ChunkSizes,
    digest: DigestKind,
    store: Option<(&LocalStore, Compression)>,
) -> Result<Index, ArchiveError> {
    let mut maker = Maker::new(sizes, digest, store);
    encode::encode(root, flags, &mut maker)?;
    let mut index = maker.finish()?;
    index.flags = flags;
    Ok(index)
}

/// Recreates the tree `index` describes in the directory `dest`, each chunk
/// from the first seed that holds it or else from `store` (all checked
/// against their IDs); `progress` hears the stream bytes decoded so far and
/// stops the extraction by returning an error (a cancelled installation).
/// Returns what was decoded and where chunks came from.
pub fn extract(
    index: &Index,
    store: &dyn ChunkSource,
    seeds: &[&Seed],
    dest: &Path,
    progress: &mut dyn FnMut(u64) -> std::io::Result<()>,
) -> Result<(decode::Extracted, Stats), ArchiveError> {
    let (reader, writer) = std::io::pipe().map_err(BlobError::Io)?;
    std::thread::scope(|scope| {
        let feeder = scope.spawn(move || blob::extract_seeded(index, store, seeds, writer));
        let counted = Counted { inner: reader, bytes: 0, progress };
        let decoded = decode::extract(std::io::BufReader::with_capacity(1 << 20, counted), dest);
        let fed = feeder.join().expect("chunk feeder thread");
        match (decoded, fed) {
            (Ok(d), Ok(s)) => Ok((d, s)),
            // The decoder stopped reading: its error is the cause.
            (Err(d), Err(BlobError::Io(e))) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(d.into()),
            // The feeder's own failure explains a stream that ended early.
            (_, Err(e)) => Err(e.into()),
            (Err(d), Ok(_)) => Err(d.into()),
        }
    })
}

/// A reader that reports how many bytes went through it, and fails once
/// the report is answered with an error.
struct Counted<'p, R> {
    inner: R,
    bytes: u64,
    progress: &'p mut dyn FnMut(u64) -> std::io::Result<()>,
}

impl<R: std::io::Read> std::io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        (self.progress)(self.bytes)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::lcg;

    fn tree(root: &Path, version: u32) {
        let _ = std::fs::remove_dir_all(root);
        for i in 0..40u32 {
            let d = root.join(format!("pkg{}", i % 5));
            std::fs::create_dir_all(&d).unwrap();
            let len = 3_000 + (i as usize * 7919) % 60_000;
            let seed = if i == 17 { 1000 + version } else { i };
            std::fs::write(d.join(format!("f{i:02}")), lcg(seed, len)).unwrap();
        }
        std::os::unix::fs::symlink("pkg0/f00", root.join("link")).unwrap();
    }

    #[test]
    fn trees_round_trip_and_a_tree_seed_supplies_what_did_not_change() {
        let dir = std::env::temp_dir().join(format!("casync-rs-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let flags = crate::flags::archive_flags(&["permissions", "symlinks", "sec-time"], &[], true).unwrap();
        let (sizes, d) = (ChunkSizes::from_avg(16 << 10).unwrap(), DigestKind::Sha512_256);
        let (old, new) = (dir.join("old"), dir.join("new"));
        tree(&old, 1);
        tree(&new, 2);
        let full = LocalStore::new(dir.join("full"));
        let index = make(&new, flags, sizes, d, Some((&full, Compression::Zstd))).unwrap();
        assert_eq!(index.flags, flags);
        // Without seeds, from the full store.
        let out = dir.join("out1");
        std::fs::create_dir(&out).unwrap();
        let (done, stats) = extract(&index, &full, &[], &out, &mut |_| Ok(())).unwrap();
        assert_eq!(done.entries, 47);
        assert_eq!(stats.chunks_from_seeds, 0);
        let mut a = Vec::new();
        let mut b = Vec::new();
        encode::encode(&new, flags, &mut a).unwrap();
        encode::encode(&out, flags, &mut b).unwrap();
        assert!(a == b, "the extracted tree differs");
        // Seeded from the old tree, with a store holding only what it lacks.
        let seed = Seed::open_tree(&old, flags, sizes, d).unwrap();
        let delta = LocalStore::new(dir.join("delta"));
        for item in &index.items {
            if !seed.has(&item.id, item.size, 0) {
                delta.put(&item.id, &full.get(&item.id, d, sizes.max).unwrap(), Compression::Zstd).unwrap();
            }
        }
        let out = dir.join("out2");
        std::fs::create_dir(&out).unwrap();
        let (_, stats) = extract(&index, &delta, &[&seed], &out, &mut |_| Ok(())).unwrap();
        assert!(stats.chunks_from_seeds > 3 * stats.chunks_from_store, "{stats:?}");
        let mut c = Vec::new();
        encode::encode(&out, flags, &mut c).unwrap();
        assert!(a == c, "the seeded extraction differs");
        // A missing chunk stops the extraction with the store's error.
        let out = dir.join("out3");
        std::fs::create_dir(&out).unwrap();
        let e = extract(&index, &delta, &[], &out, &mut |_| Ok(())).unwrap_err().to_string();
        assert!(e.contains("is missing from the store"), "{e}");
        // A progress callback that says stop stops it, with its own error.
        let out = dir.join("out4");
        std::fs::create_dir(&out).unwrap();
        let stop = |n: u64| if n > 100_000 { Err(std::io::Error::other("stop here")) } else { Ok(()) };
        let e = extract(&index, &full, &[], &out, &mut { stop }).unwrap_err().to_string();
        assert!(e.contains("stop here"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
