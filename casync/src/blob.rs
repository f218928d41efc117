//! Blobs (images, block devices) to and from a chunk store (spec §3, §6):
//! `make` cuts a stream into chunks, stores them and returns the `.caibx`
//! index; `extract` writes the stream an index describes from a store,
//! every chunk checked against its ID and its size in the index. Both
//! stream: memory stays at one chunk plus one read buffer.

use crate::chunker::{ChunkSizes, Chunker};
use crate::digest::DigestKind;
use crate::index::{Index, IndexItem, blob_flags};
use crate::seed::Seed;
use crate::store::{Compression, LocalStore, StoreError};
use std::io::{self, Read, Write};

/// Why a blob could not be made or extracted.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Reading the input or writing the output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The store could not give or take a chunk.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A chunk's length differs from the index.
    #[error("chunk {index} ({id}) holds {got} bytes where the index says {want}")]
    Size {
        /// Its position in the index.
        index: usize,
        /// Its ID.
        id: crate::digest::ChunkId,
        /// Bytes it holds.
        got: u64,
        /// Bytes the index gives it.
        want: u64,
    },
}

/// Cuts `input` into chunks (`sizes`, IDs by `digest`), stores each in
/// `store` (when given) and returns the index, flagged as `casync make` does.
pub fn make(
    mut input: impl Read,
    sizes: ChunkSizes,
    digest: DigestKind,
    store: Option<(&LocalStore, Compression)>,
) -> Result<Index, BlobError> {
    let mut items = Vec::new();
    let mut offset = 0u64;
    Chunker::chunk_stream(&mut input, sizes, |chunk: &[u8]| -> Result<(), BlobError> {
        let id = digest.digest(chunk);
        if let Some((store, how)) = store {
            store.put(&id, chunk, how)?;
        }
        items.push(IndexItem { offset, size: chunk.len() as u64, id });
        offset += chunk.len() as u64;
        Ok(())
    })?;
    Ok(Index { flags: blob_flags(digest), sizes, items })
}

/// Where the chunks of an extraction came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Chunks read from seeds.
    pub chunks_from_seeds: u64,
    /// Their bytes.
    pub bytes_from_seeds: u64,
    /// Chunks read from the store.
    pub chunks_from_store: u64,
    /// Their bytes (uncompressed).
    pub bytes_from_store: u64,
}

/// Writes the stream `index` describes, chunk by chunk from `store`.
pub fn extract(index: &Index, store: &LocalStore, out: impl Write) -> Result<u64, BlobError> {
    extract_seeded(index, store, &[], out).map(|s| s.bytes_from_seeds + s.bytes_from_store)
}

/// Writes the stream `index` describes, each chunk from the first seed
/// that holds it (checked against its ID when read) or else from `store`.
pub fn extract_seeded(
    index: &Index,
    store: &LocalStore,
    seeds: &[&Seed],
    mut out: impl Write,
) -> Result<Stats, BlobError> {
    let digest = index.digest_kind();
    let mut stats = Stats::default();
    for (i, item) in index.items.iter().enumerate() {
        if let Some(data) = seeds.iter().find_map(|s| s.get(&item.id, item.size, digest)) {
            out.write_all(&data)?;
            stats.chunks_from_seeds += 1;
            stats.bytes_from_seeds += item.size;
            continue;
        }
        let data = store.get(&item.id, digest, index.sizes.max)?;
        if data.len() as u64 != item.size {
            return Err(BlobError::Size { index: i, id: item.id, got: data.len() as u64, want: item.size });
        }
        out.write_all(&data)?;
        stats.chunks_from_store += 1;
        stats.bytes_from_store += item.size;
    }
    out.flush()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::lcg;

    #[test]
    fn make_then_extract_gives_the_bytes_back_and_the_same_index_as_of_blob() {
        let dir = std::env::temp_dir().join(format!("casync-rs-blob-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = LocalStore::new(&dir);
        let data = lcg(1, 1_500_000);
        let index =
            make(&data[..], ChunkSizes::default(), DigestKind::Sha512_256, Some((&store, Compression::Zstd))).unwrap();
        assert_eq!(index, Index::of_blob(&data, ChunkSizes::default(), DigestKind::Sha512_256));
        let mut out = Vec::new();
        assert_eq!(extract(&index, &store, &mut out).unwrap(), data.len() as u64);
        assert_eq!(out, data);
        // An index whose sizes lie about a chunk is caught.
        let mut lying = index.clone();
        lying.items[0].size += 1;
        let e = extract(&lying, &store, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("holds 116777 bytes where the index says 116778"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
