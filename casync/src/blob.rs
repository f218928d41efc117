//! Blobs (images, block devices) to and from a chunk store (spec §3, §6):
//! `make` cuts a stream into chunks, stores them and returns the `.caibx`
//! index; `extract` writes the stream an index describes from a store,
//! every chunk checked against its ID and its size in the index. Both
//! stream: memory stays at one chunk plus one read buffer.

use crate::chunker::{ChunkSizes, Chunker};
use crate::digest::{ChunkId, DigestKind};
use crate::index::{Index, IndexItem, blob_flags};
use crate::seed::Seed;
use crate::store::{ChunkSource, Compression, LocalStore, StoreError};
use std::collections::{HashMap, HashSet};
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
    let mut maker = Maker::new(sizes, digest, store);
    let copied = io::copy(&mut input, &mut maker);
    if let Some(e) = maker.error.take() {
        return Err(e.into());
    }
    copied?;
    maker.finish()
}

/// [`make`] in push mode: a `Write` that chunks (and stores) whatever is
/// written into it; [`Maker::finish`] gives the index. For producers that
/// write (a bundle's file copied out of its squashfs) rather than read.
pub struct Maker<'s> {
    chunker: Chunker,
    chunk: Vec<u8>,
    digest: DigestKind,
    store: Option<(&'s LocalStore, Compression)>,
    items: Vec<IndexItem>,
    offset: u64,
    stored: u64,
    error: Option<StoreError>,
}

impl<'s> Maker<'s> {
    /// A maker with these chunk sizes, IDs by `digest`, chunks put into
    /// `store` when given.
    pub fn new(sizes: ChunkSizes, digest: DigestKind, store: Option<(&'s LocalStore, Compression)>) -> Maker<'s> {
        Maker {
            chunker: Chunker::new(sizes),
            chunk: Vec::with_capacity(sizes.max as usize),
            digest,
            store,
            items: Vec::new(),
            offset: 0,
            stored: 0,
            error: None,
        }
    }

    fn emit(&mut self, chunk: &[u8]) -> io::Result<()> {
        let id = self.digest.digest(chunk);
        if let Some((store, how)) = self.store {
            match store.put(&id, chunk, how) {
                Ok(new) => self.stored += u64::from(new),
                Err(e) => {
                    let text = e.to_string();
                    self.error = Some(e);
                    return Err(io::Error::other(text));
                }
            }
        }
        self.items.push(IndexItem { offset: self.offset, size: chunk.len() as u64, id });
        self.offset += chunk.len() as u64;
        Ok(())
    }

    /// Chunks new to the store so far (the others were there already).
    pub fn stored_new(&self) -> u64 {
        self.stored
    }

    /// Ends the stream: the last chunk is cut and the index returned.
    pub fn finish(mut self) -> Result<Index, BlobError> {
        if !self.chunk.is_empty() {
            let chunk = std::mem::take(&mut self.chunk);
            if let Err(e) = self.emit(&chunk) {
                return Err(self.error.take().map_or(BlobError::Io(e), BlobError::Store));
            }
        }
        Ok(Index { flags: blob_flags(self.digest), sizes: self.chunker.sizes(), items: self.items })
    }
}

impl Write for Maker<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while let Some(cut) = self.chunker.feed(rest) {
            if self.chunk.is_empty() {
                self.emit(&rest[..cut])?;
            } else {
                let mut chunk = std::mem::take(&mut self.chunk);
                chunk.extend_from_slice(&rest[..cut]);
                let r = self.emit(&chunk);
                chunk.clear();
                self.chunk = chunk;
                r?;
            }
            rest = &rest[cut..];
        }
        self.chunk.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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
    /// Chunks the stream held before (fetched once, written again).
    pub chunks_repeated: u64,
    /// Their bytes.
    pub bytes_repeated: u64,
}

impl Stats {
    /// Bytes written in all.
    pub fn bytes(&self) -> u64 {
        self.bytes_from_seeds + self.bytes_from_store + self.bytes_repeated
    }
}

/// Bytes of fetched chunks an extraction keeps for their later places in
/// the same stream, so that no chunk is fetched twice (casync keeps a
/// per-run cache for the same reason); beyond it a chunk is fetched again.
pub const REPEAT_BUDGET: u64 = 16 << 20;

/// Chunks announced to the store ahead of the one being written
/// ([`ChunkSource::prefetch`]): what a remote store keeps in flight.
pub const LOOKAHEAD: usize = 16;

/// Writes the stream `index` describes, chunk by chunk from `store`.
pub fn extract(index: &Index, store: &dyn ChunkSource, out: impl Write) -> Result<u64, BlobError> {
    extract_seeded(index, store, &[], out).map(|s| s.bytes())
}

/// Writes the stream `index` describes, each chunk from the first seed
/// that holds it (checked against its ID when read) or else from `store`,
/// which hears of the store-bound chunks [`LOOKAHEAD`] chunks ahead.
pub fn extract_seeded(
    index: &Index,
    store: &dyn ChunkSource,
    seeds: &[&Seed],
    mut out: impl Write,
) -> Result<Stats, BlobError> {
    let digest = index.digest_kind();
    let mut stats = Stats::default();
    let from_store = |i: usize| {
        let item = &index.items[i];
        !seeds.iter().any(|s| s.has(&item.id, item.size, item.offset))
    };
    // Where each chunk is last needed, and fetched chunks kept until then.
    let last_use: HashMap<ChunkId, usize> = index.items.iter().enumerate().map(|(i, it)| (it.id, i)).collect();
    let mut kept: HashMap<ChunkId, Vec<u8>> = HashMap::new();
    let mut kept_bytes = 0u64;
    let mut announced_ids: HashSet<ChunkId> = HashSet::new();
    let mut announced = 0;
    for (i, item) in index.items.iter().enumerate() {
        if announced < (i + LOOKAHEAD).min(index.items.len()) {
            let until = (i + 2 * LOOKAHEAD).min(index.items.len());
            let ids: Vec<_> = (announced.max(i)..until)
                .filter(|&j| from_store(j))
                .map(|j| index.items[j].id)
                .filter(|id| announced_ids.insert(*id))
                .collect();
            if !ids.is_empty() {
                store.prefetch(&ids);
            }
            announced = until;
        }
        if let Some(data) = seeds.iter().find_map(|s| s.get(&item.id, item.size, item.offset, digest)) {
            out.write_all(&data)?;
            stats.chunks_from_seeds += 1;
            stats.bytes_from_seeds += item.size;
            continue;
        }
        let last = last_use.get(&item.id).copied().unwrap_or(i);
        if let Some(data) = kept.get(&item.id) {
            out.write_all(data)?;
            stats.chunks_repeated += 1;
            stats.bytes_repeated += item.size;
            if last == i {
                kept_bytes -= data.len() as u64;
                kept.remove(&item.id);
            }
            continue;
        }
        let data = store.get(&item.id, digest, index.sizes.max)?;
        if data.len() as u64 != item.size {
            return Err(BlobError::Size { index: i, id: item.id, got: data.len() as u64, want: item.size });
        }
        out.write_all(&data)?;
        stats.chunks_from_store += 1;
        stats.bytes_from_store += item.size;
        if last > i && kept_bytes + item.size <= REPEAT_BUDGET {
            kept_bytes += item.size;
            kept.insert(item.id, data);
        }
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

    #[test]
    fn a_chunk_the_stream_repeats_is_fetched_once() {
        use std::sync::atomic::{AtomicU64, Ordering};
        /// Counts the chunks asked of a store.
        struct Counting<'a>(&'a LocalStore, AtomicU64);
        impl ChunkSource for Counting<'_> {
            fn get(&self, id: &ChunkId, d: DigestKind, max: u64) -> Result<Vec<u8>, StoreError> {
                self.1.fetch_add(1, Ordering::Relaxed);
                self.0.get(id, d, max)
            }
        }
        let dir = std::env::temp_dir().join(format!("casync-rs-repeat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = LocalStore::new(&dir);
        // Three equal runs of fixed-size chunks: every chunk appears three times.
        let sizes = ChunkSizes { min: 4096, avg: 4096, max: 4096 };
        let part = lcg(5, 40_960);
        let data: Vec<u8> = [&part[..], &part[..], &part[..]].concat();
        let index = make(&data[..], sizes, DigestKind::Sha256, Some((&store, Compression::Zstd))).unwrap();
        let counting = Counting(&store, AtomicU64::new(0));
        let mut out = Vec::new();
        let stats = extract_seeded(&index, &counting, &[], &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(counting.1.load(Ordering::Relaxed), 10, "each of the 10 distinct chunks fetched once");
        assert_eq!((stats.chunks_from_store, stats.chunks_repeated), (10, 20));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
