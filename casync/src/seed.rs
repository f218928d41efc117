//! Seeds (spec §10): chunks already on the device. An image file or block
//! device (the booted slot, the old content of the target) is cut with the
//! index's chunk sizes; a chunk of the index that the seed holds is read
//! from there instead of the store, and used only when its bytes hash to
//! its ID at the time they are read.

use crate::chunker::{ChunkSizes, Chunker};
use crate::digest::{ChunkId, DigestKind};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A seed: a file or block device and where its chunks are.
#[derive(Debug)]
pub struct Seed {
    path: PathBuf,
    file: File,
    chunks: HashMap<ChunkId, (u64, u64)>,
    /// The seed is the output being written (in place, front to back).
    output: bool,
}

impl Seed {
    /// Reads `path` once, cutting it with `sizes` and naming chunks with
    /// `digest` (those of the index it will serve). Memory: one chunk plus
    /// about 48 bytes per chunk found.
    pub fn open(path: &Path, sizes: ChunkSizes, digest: DigestKind) -> io::Result<Seed> {
        Self::read(path, sizes, digest, false)
    }

    /// A seed of the file or device the extraction writes into, in place
    /// and front to back (the old content of an A/B target slot): a chunk
    /// is taken from it only where it lies at or after the position being
    /// written, so bytes already overwritten are never used. Where a chunk
    /// occurs more than once the last occurrence is kept.
    pub fn open_output(path: &Path, sizes: ChunkSizes, digest: DigestKind) -> io::Result<Seed> {
        Self::read(path, sizes, digest, true)
    }

    fn read(path: &Path, sizes: ChunkSizes, digest: DigestKind, output: bool) -> io::Result<Seed> {
        let file = File::open(path)?;
        let mut chunks = HashMap::new();
        let mut offset = 0u64;
        Chunker::chunk_stream(&file, sizes, |chunk: &[u8]| -> io::Result<()> {
            let len = chunk.len() as u64;
            let id = digest.digest(chunk);
            if output {
                chunks.insert(id, (offset, len));
            } else {
                chunks.entry(id).or_insert((offset, len));
            }
            offset += len;
            Ok(())
        })?;
        Ok(Seed { path: path.to_path_buf(), file, chunks, output })
    }

    /// The seed's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many distinct chunks it holds.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether it holds no chunk.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Whether the seed can serve chunk `id` of `size` bytes for output
    /// position `at` (a hint: [`Seed::get`] checks the bytes).
    pub fn has(&self, id: &ChunkId, size: u64, at: u64) -> bool {
        self.chunks.get(id).is_some_and(|&(offset, len)| len == size && (!self.output || offset >= at))
    }

    /// Chunk `id` of `size` bytes for output position `at`, if the seed has
    /// it (for an output seed: at or after `at`) and it still hashes to `id`.
    pub fn get(&self, id: &ChunkId, size: u64, at: u64, digest: DigestKind) -> Option<Vec<u8>> {
        if !self.has(id, size, at) {
            return None;
        }
        let &(offset, len) = self.chunks.get(id)?;
        let mut data = vec![0u8; len as usize];
        self.file.read_exact_at(&mut data, offset).ok()?;
        (digest.digest(&data) == *id).then_some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{self, Stats};
    use crate::store::{Compression, LocalStore};
    use crate::testdata::lcg;

    #[test]
    fn a_seed_supplies_every_chunk_it_has_and_the_store_the_rest() {
        let dir = std::env::temp_dir().join(format!("casync-rs-seed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let old = lcg(1, 1_500_000);
        let mut new = old[..300_000].to_vec();
        new.extend(lcg(2, 1000));
        new.extend(&old[300_000..]);
        let sizes = ChunkSizes::default();
        let d = DigestKind::Sha512_256;
        // The store holds only the new release's chunks the old one lacks.
        let full = LocalStore::new(dir.join("full"));
        let index = blob::make(&new[..], sizes, d, Some((&full, Compression::Zstd))).unwrap();
        let old_index = crate::index::Index::of_blob(&old, sizes, d);
        let delta = LocalStore::new(dir.join("delta"));
        for item in index.items.iter().filter(|i| !old_index.items.iter().any(|o| o.id == i.id)) {
            let data = full.get(&item.id, d, sizes.max).unwrap();
            delta.put(&item.id, &data, Compression::Zstd).unwrap();
        }
        let seed_path = dir.join("old.img");
        std::fs::write(&seed_path, &old).unwrap();
        let seed = Seed::open(&seed_path, sizes, d).unwrap();
        assert_eq!(seed.len(), 26);
        let mut out = Vec::new();
        let stats = blob::extract_seeded(&index, &delta, &[&seed], &mut out).unwrap();
        assert_eq!(out, new);
        assert_eq!(
            stats,
            Stats {
                chunks_from_seeds: 25,
                bytes_from_seeds: 1_444_909,
                chunks_from_store: 1,
                bytes_from_store: 56_091
            }
        );
        // A seed changed since it was read: its chunk no longer hashes, the store is asked.
        std::fs::write(&seed_path, vec![0u8; old.len()]).unwrap();
        let e = blob::extract_seeded(&index, &delta, &[&seed], std::io::sink()).unwrap_err();
        assert!(e.to_string().contains("is missing from the store"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_output_seed_serves_only_chunks_not_yet_overwritten() {
        let dir = std::env::temp_dir().join(format!("casync-rs-outseed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (sizes, d) = (ChunkSizes::default(), DigestKind::Sha512_256);
        let old = lcg(1, 1_500_000);
        let target = dir.join("slot.img");
        // Content moved to lower offsets (a prefix removed): every chunk but
        // the first can come from further on in the target itself.
        let shrunk = old[200_000..].to_vec();
        let full = LocalStore::new(dir.join("full"));
        let index = blob::make(&shrunk[..], sizes, d, Some((&full, Compression::Zstd))).unwrap();
        std::fs::write(&target, &old).unwrap();
        let seed = Seed::open_output(&target, sizes, d).unwrap();
        let out = std::fs::OpenOptions::new().write(true).open(&target).unwrap();
        let stats = blob::extract_seeded(&index, &full, &[&seed], std::io::BufWriter::new(out)).unwrap();
        assert_eq!(&std::fs::read(&target).unwrap()[..shrunk.len()], &shrunk[..]);
        assert_eq!(stats.chunks_from_store, 1, "{stats:?}");
        // Content moved to higher offsets (a prefix added): the target's
        // chunks lie before the write position, so none is used.
        let mut grown = lcg(9, 100_000);
        grown.extend(&old);
        let index = blob::make(&grown[..], sizes, d, Some((&full, Compression::Zstd))).unwrap();
        std::fs::write(&target, &old).unwrap();
        let seed = Seed::open_output(&target, sizes, d).unwrap();
        let out = std::fs::OpenOptions::new().write(true).open(&target).unwrap();
        let stats = blob::extract_seeded(&index, &full, &[&seed], std::io::BufWriter::new(out)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), grown);
        assert_eq!(stats.chunks_from_seeds, 0, "{stats:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
