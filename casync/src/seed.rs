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
}

impl Seed {
    /// Reads `path` once, cutting it with `sizes` and naming chunks with
    /// `digest` (those of the index it will serve). Memory: one chunk plus
    /// about 48 bytes per chunk found.
    pub fn open(path: &Path, sizes: ChunkSizes, digest: DigestKind) -> io::Result<Seed> {
        let file = File::open(path)?;
        let mut chunks = HashMap::new();
        let mut offset = 0u64;
        Chunker::chunk_stream(&file, sizes, |chunk: &[u8]| -> io::Result<()> {
            let len = chunk.len() as u64;
            chunks.entry(digest.digest(chunk)).or_insert((offset, len));
            offset += len;
            Ok(())
        })?;
        Ok(Seed { path: path.to_path_buf(), file, chunks })
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

    /// Chunk `id` of `size` bytes, if the seed has it and it still hashes to `id`.
    pub fn get(&self, id: &ChunkId, size: u64, digest: DigestKind) -> Option<Vec<u8>> {
        let &(offset, len) = self.chunks.get(id)?;
        if len != size {
            return None;
        }
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
}
