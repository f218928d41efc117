//! Seeds (spec §10): chunks already on the device. An image file or block
//! device (the booted slot, the old content of the target) is cut with the
//! index's chunk sizes; a directory tree (a mounted slot) is encoded as the
//! catar stream the index's flags give and cut the same way. A chunk of the
//! index that the seed holds is read from there instead of the store, and
//! used only when its bytes hash to its ID at the time they are read.

use crate::chunker::{ChunkSizes, Chunker};
use crate::digest::{ChunkId, DigestKind};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A seed: a file, block device or directory tree and where its chunks are.
#[derive(Debug)]
pub struct Seed {
    path: PathBuf,
    bytes: Bytes,
    chunks: HashMap<ChunkId, (u64, u64)>,
    /// The seed is the output being written (in place, front to back).
    output: bool,
}

/// Where a seed's stream comes from.
#[derive(Debug)]
enum Bytes {
    /// A file or device read at the chunk's offset.
    Blob(File),
    /// A tree's catar stream, rebuilt from its map.
    Tree(TreeMap),
}

/// The catar stream of a tree as pieces: the archive's own records kept in
/// memory (about 150 bytes per entry), file contents by path and offset.
#[derive(Debug, Default)]
struct TreeMap {
    /// The record bytes, back to back.
    records: Vec<u8>,
    /// Pieces in stream order: start in the stream, length, where.
    pieces: Vec<(u64, u64, Piece)>,
    files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
enum Piece {
    /// At this offset of `records`.
    Records(u64),
    /// From the start of file `files[i]`.
    File(usize),
}

impl TreeMap {
    /// The stream's bytes `[offset, offset + len)`.
    fn read(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len as usize);
        let end = offset + len;
        let mut i = self.pieces.partition_point(|p| p.0 + p.1 <= offset);
        let mut at = offset;
        while at < end {
            let Some(&(start, plen, piece)) = self.pieces.get(i) else {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "beyond the seed's stream"));
            };
            let from = at - start;
            let n = (plen - from).min(end - at);
            match piece {
                Piece::Records(r) => {
                    let s = (r + from) as usize;
                    out.extend_from_slice(&self.records[s..s + n as usize]);
                }
                Piece::File(f) => {
                    let mut buf = vec![0u8; n as usize];
                    File::open(&self.files[f])?.read_exact_at(&mut buf, from)?;
                    out.extend(buf);
                }
            }
            at += n;
            i += 1;
        }
        Ok(out)
    }
}

/// The sink a tree seed is encoded into: chunks the stream and maps it.
struct TreeRecorder {
    map: TreeMap,
    maker: crate::blob::Maker<'static>,
    pos: u64,
    /// Where the file contents being written end.
    file_end: u64,
}

impl io::Write for TreeRecorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.maker.write_all(buf)?;
        let mut rest = buf;
        while !rest.is_empty() {
            if self.pos < self.file_end {
                let n = rest.len().min((self.file_end - self.pos) as usize);
                self.pos += n as u64;
                rest = &rest[n..];
                continue;
            }
            // Record bytes: extend the last records piece or start one.
            let r = self.map.records.len() as u64;
            match self.map.pieces.last_mut() {
                Some((start, len, Piece::Records(_))) if *start + *len == self.pos => *len += rest.len() as u64,
                _ => self.map.pieces.push((self.pos, rest.len() as u64, Piece::Records(r))),
            }
            self.map.records.extend_from_slice(rest);
            self.pos += rest.len() as u64;
            rest = &[];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl crate::catar::encode::Sink for TreeRecorder {
    fn payload(&mut self, path: &Path, len: u64) {
        if len > 0 {
            self.map.files.push(path.to_path_buf());
            self.map.pieces.push((self.pos, len, Piece::File(self.map.files.len() - 1)));
        }
        self.file_end = self.pos + len;
    }
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

    /// A seed of the file or device `path` whose chunks `index` already
    /// lists (the index it was written from, kept by the installer): no
    /// read of the whole seed first. Chunks are still checked against their
    /// IDs when read, so a seed changed since is caught chunk by chunk.
    /// `output`: it is the file being written (see [`Seed::open_output`]).
    pub fn from_index(path: &Path, index: &crate::index::Index, output: bool) -> io::Result<Seed> {
        let file = File::open(path)?;
        let mut chunks = HashMap::new();
        for item in &index.items {
            if output {
                chunks.insert(item.id, (item.offset, item.size));
            } else {
                chunks.entry(item.id).or_insert((item.offset, item.size));
            }
        }
        Ok(Seed { path: path.to_path_buf(), bytes: Bytes::Blob(file), chunks, output })
    }

    /// A seed of the directory tree at `root` (a mounted slot), encoded
    /// with the archive `flags` of the index it will serve. Memory: the
    /// tree's archive records (about 150 bytes per entry) and paths, plus
    /// about 48 bytes per chunk.
    pub fn open_tree(
        root: &Path,
        flags: u64,
        sizes: ChunkSizes,
        digest: DigestKind,
    ) -> Result<Seed, crate::catar::CatarError> {
        let mut rec = TreeRecorder {
            map: TreeMap::default(),
            maker: crate::blob::Maker::new(sizes, digest, None),
            pos: 0,
            file_end: 0,
        };
        crate::catar::encode::encode_to(root, flags, &mut rec)?;
        let index = rec.maker.finish().map_err(|e| crate::catar::CatarError::Io {
            path: root.display().to_string(),
            source: io::Error::other(e.to_string()),
        })?;
        let mut chunks = HashMap::new();
        for item in index.items {
            chunks.entry(item.id).or_insert((item.offset, item.size));
        }
        Ok(Seed { path: root.to_path_buf(), bytes: Bytes::Tree(rec.map), chunks, output: false })
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
        Ok(Seed { path: path.to_path_buf(), bytes: Bytes::Blob(file), chunks, output })
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
        let data = match &self.bytes {
            Bytes::Blob(file) => {
                let mut data = vec![0u8; len as usize];
                file.read_exact_at(&mut data, offset).ok()?;
                data
            }
            Bytes::Tree(map) => map.read(offset, len).ok()?,
        };
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
                bytes_from_store: 56_091,
                ..Stats::default()
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
