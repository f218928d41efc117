//! dm-verity hash trees as `veritysetup format --no-superblock` builds them
//! (format 1, SHA-256, 4 KiB data and hash blocks, salt prepended; spec §1.3).
//!
//! No maintained crate builds or checks these trees in user space, so this is
//! our own code; its output is compared byte for byte with `veritysetup`.

use sha2::{Digest, Sha256};
use std::io;

/// Data and hash block size.
pub const BLOCK_SIZE: usize = 4096;
/// Size of one digest.
pub const DIGEST_SIZE: usize = 32;
/// Digests per hash block.
pub const DIGESTS_PER_BLOCK: u64 = (BLOCK_SIZE / DIGEST_SIZE) as u64;

/// `SHA256(salt ‖ block)`.
pub fn salted_digest(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Shape of a hash tree for a given number of data blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Number of data blocks covered.
    pub data_blocks: u64,
    /// Hash blocks per level, level 0 (leaf digests) first.
    pub level_blocks: Vec<u64>,
    /// Byte offset of each level from the start of the tree (top level is stored first).
    pub level_offsets: Vec<u64>,
}

impl Geometry {
    /// Computes the layout for `data_blocks` blocks (at least one).
    pub fn new(data_blocks: u64) -> Geometry {
        let mut level_blocks = Vec::new();
        if data_blocks > 1 {
            let mut n = data_blocks;
            loop {
                n = n.div_ceil(DIGESTS_PER_BLOCK);
                level_blocks.push(n);
                if n == 1 {
                    break;
                }
            }
        }
        let mut level_offsets = vec![0u64; level_blocks.len()];
        let mut off = 0u64;
        for level in (0..level_blocks.len()).rev() {
            level_offsets[level] = off;
            off += level_blocks[level] * BLOCK_SIZE as u64;
        }
        Geometry { data_blocks, level_blocks, level_offsets }
    }

    /// Total tree size in bytes (`verity-size`).
    pub fn tree_size(&self) -> u64 {
        self.level_blocks.iter().sum::<u64>() * BLOCK_SIZE as u64
    }

    /// Number of hash levels (0 for a single data block).
    pub fn levels(&self) -> usize {
        self.level_blocks.len()
    }

    /// Byte offset within the tree of hash block `index` of `level`.
    pub fn block_offset(&self, level: usize, index: u64) -> u64 {
        self.level_offsets[level] + index * BLOCK_SIZE as u64
    }
}

/// Receives finished hash blocks from [`TreeBuilder`].
pub trait HashBlockSink {
    /// Stores one hash block at `offset` bytes from the start of the tree.
    fn put(&mut self, offset: u64, block: &[u8]) -> io::Result<()>;
}

impl HashBlockSink for Vec<u8> {
    fn put(&mut self, offset: u64, block: &[u8]) -> io::Result<()> {
        let end = offset as usize + block.len();
        if self.len() < end {
            self.resize(end, 0);
        }
        self[offset as usize..end].copy_from_slice(block);
        Ok(())
    }
}

/// Builds a tree incrementally: feed data blocks in order, get the root.
/// Memory use is one hash block per level whatever the data size.
pub struct TreeBuilder {
    salt: Vec<u8>,
    geometry: Geometry,
    pending: Vec<Vec<u8>>,
    written: Vec<u64>,
    fed: u64,
    root: Option<[u8; 32]>,
}

impl TreeBuilder {
    /// Starts a tree over `data_blocks` blocks with the given salt.
    pub fn new(data_blocks: u64, salt: &[u8]) -> TreeBuilder {
        assert!(data_blocks > 0, "a verity tree needs at least one data block");
        let geometry = Geometry::new(data_blocks);
        let levels = geometry.levels();
        TreeBuilder {
            salt: salt.to_vec(),
            geometry,
            pending: vec![Vec::with_capacity(BLOCK_SIZE); levels],
            written: vec![0; levels],
            fed: 0,
            root: None,
        }
    }

    /// The layout being built.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Adds the digests of consecutive data blocks (see [`salted_digest`]).
    pub fn push_digest(&mut self, digest: &[u8; 32], sink: &mut dyn HashBlockSink) -> io::Result<()> {
        if self.fed >= self.geometry.data_blocks {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "more data blocks than announced"));
        }
        self.fed += 1;
        if self.geometry.levels() == 0 {
            self.root = Some(*digest);
            return Ok(());
        }
        self.push_at(0, digest, sink)
    }

    /// Hashes and adds whole data blocks (`data.len()` a multiple of 4096).
    pub fn push_data(&mut self, data: &[u8], sink: &mut dyn HashBlockSink) -> io::Result<()> {
        if !data.len().is_multiple_of(BLOCK_SIZE) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "data is not a multiple of 4096 bytes"));
        }
        for block in data.chunks_exact(BLOCK_SIZE) {
            let d = salted_digest(&self.salt, block);
            self.push_digest(&d, sink)?;
        }
        Ok(())
    }

    fn push_at(&mut self, level: usize, digest: &[u8; 32], sink: &mut dyn HashBlockSink) -> io::Result<()> {
        self.pending[level].extend_from_slice(digest);
        if self.pending[level].len() == BLOCK_SIZE {
            self.flush_level(level, sink)?;
        }
        Ok(())
    }

    fn flush_level(&mut self, level: usize, sink: &mut dyn HashBlockSink) -> io::Result<()> {
        let mut block = std::mem::replace(&mut self.pending[level], Vec::with_capacity(BLOCK_SIZE));
        block.resize(BLOCK_SIZE, 0);
        let offset = self.geometry.block_offset(level, self.written[level]);
        sink.put(offset, &block)?;
        self.written[level] += 1;
        let d = salted_digest(&self.salt, &block);
        if level + 1 < self.geometry.levels() {
            self.push_at(level + 1, &d, sink)?;
        } else {
            self.root = Some(d);
        }
        Ok(())
    }

    /// Flushes partial blocks and returns the root hash.
    pub fn finish(mut self, sink: &mut dyn HashBlockSink) -> io::Result<[u8; 32]> {
        if self.fed != self.geometry.data_blocks {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "fewer data blocks than announced"));
        }
        for level in 0..self.geometry.levels() {
            if !self.pending[level].is_empty() {
                self.flush_level(level, sink)?;
            }
        }
        Ok(self.root.expect("the top level (or the single data block) sets the root"))
    }
}

/// A verity check failed: the bytes read do not match the signed tree.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// A data block does not match its leaf digest.
    #[error("bundle payload is corrupted: data block {0} does not match the signed hash tree")]
    DataBlock(u64),
    /// A hash block does not match its parent (or the root hash).
    #[error("bundle payload is corrupted: hash block {index} of level {level} does not match the signed root hash")]
    HashBlock {
        /// Tree level (0 = leaf digests).
        level: usize,
        /// Block index within the level.
        index: u64,
    },
    /// Reading from the bundle source failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<VerityError> for io::Error {
    fn from(e: VerityError) -> io::Error {
        match e {
            VerityError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

type HashBlock = std::sync::Arc<[u8]>;

/// Checks data blocks against a tree anchored in a trusted root hash.
/// Hash blocks are fetched on demand, verified up to the root, and cached.
pub struct TreeVerifier {
    geometry: Geometry,
    salt: Vec<u8>,
    root: [u8; 32],
    cache: std::sync::Mutex<std::collections::HashMap<(usize, u64), HashBlock>>,
    cache_limit: usize,
}

/// Reads `buf.len()` bytes of the hash tree at byte offset `offset` (from the tree start).
pub type TreeFetch<'a> = &'a (dyn Fn(u64, &mut [u8]) -> io::Result<()> + Sync);

impl TreeVerifier {
    /// A verifier for `geometry` with the signed `salt` and `root`.
    pub fn new(geometry: Geometry, salt: &[u8], root: [u8; 32]) -> TreeVerifier {
        TreeVerifier {
            geometry,
            salt: salt.to_vec(),
            root,
            cache: std::sync::Mutex::new(std::collections::HashMap::new()),
            cache_limit: 1024,
        }
    }

    /// The tree layout.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    fn cached(&self, level: usize, index: u64) -> Option<HashBlock> {
        self.cache.lock().expect("cache lock").get(&(level, index)).cloned()
    }

    fn remember(&self, level: usize, index: u64, block: HashBlock) {
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= self.cache_limit {
            // Keep the small upper levels; leaf blocks are cheap to re-fetch.
            cache.retain(|(l, _), _| *l > 0);
        }
        cache.insert((level, index), block);
    }

    fn expected_for_hash_block(&self, level: usize, index: u64, fetch: TreeFetch<'_>) -> Result<[u8; 32], VerityError> {
        if level + 1 == self.geometry.levels() {
            return Ok(self.root);
        }
        let parent = self.hash_blocks(level + 1, index / DIGESTS_PER_BLOCK, 1, fetch)?;
        let slot = (index % DIGESTS_PER_BLOCK) as usize * DIGEST_SIZE;
        Ok(parent[0][slot..slot + DIGEST_SIZE].try_into().expect("32 bytes"))
    }

    /// Verified hash blocks `first..first+count` of `level`, fetched in one read when not cached.
    fn hash_blocks(
        &self,
        level: usize,
        first: u64,
        count: u64,
        fetch: TreeFetch<'_>,
    ) -> Result<Vec<HashBlock>, VerityError> {
        let mut out = Vec::with_capacity(count as usize);
        let mut missing_from = None;
        for i in first..first + count {
            match self.cached(level, i) {
                Some(b) if missing_from.is_none() => out.push(b),
                _ => {
                    missing_from = Some(i);
                    break;
                }
            }
        }
        let Some(start) = missing_from else {
            return Ok(out);
        };
        let n = (first + count - start) as usize;
        let mut raw = vec![0u8; n * BLOCK_SIZE];
        fetch(self.geometry.block_offset(level, start), &mut raw)?;
        for (k, block) in raw.chunks_exact(BLOCK_SIZE).enumerate() {
            let index = start + k as u64;
            let expected = self.expected_for_hash_block(level, index, fetch)?;
            if salted_digest(&self.salt, block) != expected {
                return Err(VerityError::HashBlock { level, index });
            }
            let block: HashBlock = block.into();
            self.remember(level, index, block.clone());
            out.push(block);
        }
        Ok(out)
    }

    /// Checks consecutive data blocks starting at block `first_block`
    /// (`data.len()` a multiple of 4096).
    pub fn verify(&self, first_block: u64, data: &[u8], fetch: TreeFetch<'_>) -> Result<(), VerityError> {
        let count = (data.len() / BLOCK_SIZE) as u64;
        if count == 0 {
            return Ok(());
        }
        if first_block + count > self.geometry.data_blocks || !data.len().is_multiple_of(BLOCK_SIZE) {
            return Err(VerityError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "read outside the verity-protected data",
            )));
        }
        if self.geometry.levels() == 0 {
            return if salted_digest(&self.salt, data) == self.root { Ok(()) } else { Err(VerityError::DataBlock(0)) };
        }
        let first_leaf = first_block / DIGESTS_PER_BLOCK;
        let last_leaf = (first_block + count - 1) / DIGESTS_PER_BLOCK;
        let leaves = self.hash_blocks(0, first_leaf, last_leaf - first_leaf + 1, fetch)?;
        let check = |(k, block): (usize, &[u8])| -> Result<(), VerityError> {
            let index = first_block + k as u64;
            let leaf = &leaves[(index / DIGESTS_PER_BLOCK - first_leaf) as usize];
            let slot = (index % DIGESTS_PER_BLOCK) as usize * DIGEST_SIZE;
            if salted_digest(&self.salt, block)[..] == leaf[slot..slot + DIGEST_SIZE] {
                Ok(())
            } else {
                Err(VerityError::DataBlock(index))
            }
        };
        if count >= 32 {
            use rayon::prelude::*;
            data.par_chunks_exact(BLOCK_SIZE).enumerate().try_for_each(check)
        } else {
            data.chunks_exact(BLOCK_SIZE).enumerate().try_for_each(check)
        }
    }
}

/// Builds the whole tree of `data` in memory (whole blocks only); returns (root, tree).
pub fn build_tree(data: &[u8], salt: &[u8]) -> io::Result<([u8; 32], Vec<u8>)> {
    let blocks = (data.len() / BLOCK_SIZE) as u64;
    let mut builder = TreeBuilder::new(blocks, salt);
    let mut tree = Vec::new();
    builder.push_data(&data[..blocks as usize * BLOCK_SIZE], &mut tree)?;
    let root = builder.finish(&mut tree)?;
    Ok((root, tree))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(blocks: usize) -> Vec<u8> {
        (0..blocks * BLOCK_SIZE).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()
    }

    #[test]
    fn geometry_matches_veritysetup_layout() {
        assert_eq!(Geometry::new(1).tree_size(), 0);
        assert_eq!(Geometry::new(2).level_blocks, vec![1]);
        assert_eq!(Geometry::new(128).level_blocks, vec![1]);
        assert_eq!(Geometry::new(129).level_blocks, vec![2, 1]);
        let g = Geometry::new(40000);
        assert_eq!(g.level_blocks, vec![313, 3, 1]);
        // Top level first, level 0 last.
        assert_eq!(g.level_offsets, vec![4 * 4096, 4096, 0]);
    }

    #[test]
    fn builder_and_verifier_agree() {
        let salt = [7u8; 32];
        for blocks in [1usize, 2, 3, 127, 128, 129, 300, 16385] {
            let d = data(blocks);
            let (root, tree) = build_tree(&d, &salt).unwrap();
            assert_eq!(tree.len() as u64, Geometry::new(blocks as u64).tree_size());
            let v = TreeVerifier::new(Geometry::new(blocks as u64), &salt, root);
            let fetch = |off: u64, buf: &mut [u8]| -> io::Result<()> {
                buf.copy_from_slice(&tree[off as usize..off as usize + buf.len()]);
                Ok(())
            };
            v.verify(0, &d, &fetch).unwrap();
            let last = blocks - 1;
            v.verify(last as u64, &d[last * BLOCK_SIZE..], &fetch).unwrap();
            let mut bad = d.clone();
            bad[last * BLOCK_SIZE + 17] ^= 1;
            let e = v.verify(0, &bad, &fetch).unwrap_err();
            assert!(matches!(e, VerityError::DataBlock(b) if b == last as u64), "{e}");
        }
    }

    #[test]
    fn tampered_tree_is_rejected() {
        let salt = [1u8; 32];
        let d = data(300);
        let (root, mut tree) = build_tree(&d, &salt).unwrap();
        let n = tree.len();
        tree[n - 5] ^= 0x80; // in the zero padding of the last leaf block
        let v = TreeVerifier::new(Geometry::new(300), &salt, root);
        let fetch = |off: u64, buf: &mut [u8]| -> io::Result<()> {
            buf.copy_from_slice(&tree[off as usize..off as usize + buf.len()]);
            Ok(())
        };
        assert!(matches!(
            v.verify(299, &d[299 * BLOCK_SIZE..], &fetch),
            Err(VerityError::HashBlock { level: 0, index: 2 })
        ));
    }
}
