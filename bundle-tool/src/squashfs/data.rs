//! Reading file contents from squashfs data blocks and fragments.
//!
//! backhand parses the metadata (superblock, tables, directory tree), but its
//! file reader keeps every decompressed fragment block for the life of the
//! filesystem (about 190 MiB for a bundle with 21,000 small files) and turns
//! the real cause of a failed read into "Failed to decompress data". This
//! reader keeps a few fragment blocks, reads runs of blocks with one call to
//! the verified source, decompresses them in parallel, bounds every output
//! to the block size, and writes sparse blocks as holes where it can.

use crate::error::{Error, Result};
use crate::source::ReadAt;
use backhand::traits::types::Compressor;
use backhand::{DataSize, Fragment, SquashfsFileReader};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

const NO_FRAGMENT: u32 = 0xffff_ffff;
/// A run of blocks is read with one call and decompressed in parallel; it
/// holds at most this many bytes, compressed and decompressed.
const RUN_BYTES: u64 = 2 << 20;
/// Decompressed fragment blocks kept.
const FRAGMENT_CACHE: usize = 8;

/// Where file contents go: a file (holes for sparse blocks) or memory.
pub trait Sink {
    /// Appends bytes.
    fn put(&mut self, data: &[u8]) -> io::Result<()>;
    /// Appends `n` zero bytes.
    fn zeros(&mut self, n: u64) -> io::Result<()>;
    /// Called once at the end with the total length.
    fn finish(&mut self, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }

    fn zeros(&mut self, n: u64) -> io::Result<()> {
        self.resize(self.len() + n as usize, 0);
        Ok(())
    }
}

/// A new file, sparse: sparse blocks and every all-zero 4 KiB page are
/// left as holes (a tree image's contents file is mostly alignment padding).
impl Sink for crate::sparse::SparseWriter {
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_all(data)
    }

    fn zeros(&mut self, n: u64) -> io::Result<()> {
        self.skip(n)
    }

    fn finish(&mut self, len: u64) -> io::Result<()> {
        let written = self.complete()?;
        debug_assert_eq!(written, len, "the blocks add up to the file's length");
        Ok(())
    }
}

/// Any writer, with zeros written out.
pub struct WriteSink<'a>(pub &'a mut dyn Write);

impl Sink for WriteSink<'_> {
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data)
    }

    fn zeros(&mut self, mut n: u64) -> io::Result<()> {
        let z = [0u8; 8192];
        while n > 0 {
            let k = n.min(z.len() as u64) as usize;
            self.0.write_all(&z[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
}

/// Decompresses one block into `out` (cleared first); at most `limit` bytes.
fn decompress(compressor: Compressor, input: &[u8], limit: usize, out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("corrupt {what} block in squashfs"));
    match compressor {
        Compressor::Uncompressed => out.extend_from_slice(input),
        Compressor::Gzip => {
            flate2::read::ZlibDecoder::new(input).take(limit as u64 + 1).read_to_end(out).map_err(|_| bad("gzip"))?;
        }
        Compressor::Xz => {
            liblzma::read::XzDecoder::new(input).take(limit as u64 + 1).read_to_end(out).map_err(|_| bad("xz"))?;
        }
        Compressor::Zstd => {
            zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|_| bad("zstd"))?
                .take(limit as u64 + 1)
                .read_to_end(out)
                .map_err(|_| bad("zstd"))?;
        }
        Compressor::Lz4 => {
            out.resize(limit, 0);
            let n = lz4_flex::block::decompress_into(input, out).map_err(|_| bad("lz4"))?;
            out.truncate(n);
        }
        Compressor::Lzma | Compressor::Lzo => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("squashfs compressor {compressor:?} is not supported"),
            ));
        }
    }
    if out.len() > limit {
        return Err(bad("oversized"));
    }
    Ok(())
}

/// Where one regular file's blocks lie in the squashfs.
pub struct BlockMap {
    path: String,
    file_size: u64,
    block_size: u64,
    /// Offset of each stored block, and the end of the last.
    starts: Vec<u64>,
    sizes: Vec<DataSize>,
    /// Fragment index and offset of the file's tail, if it has one.
    fragment: Option<(u32, u32)>,
}

impl BlockMap {
    /// Stored blocks `first..end` as one run: (offset in the run, stored
    /// size, stored uncompressed, output length) each.
    fn run(&self, first: usize, end: usize) -> Vec<(u64, u32, bool, u64)> {
        let bs = self.block_size;
        (first..end)
            .map(|k| {
                let ds = self.sizes[k];
                let out_len = bs.min(self.file_size - k as u64 * bs);
                (self.starts[k] - self.starts[first], ds.size(), ds.uncompressed(), out_len)
            })
            .collect()
    }

    /// The file's size.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The filesystem's block size.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Offset in the squashfs of the file's first stored byte.
    pub fn start(&self) -> u64 {
        self.starts[0]
    }

    /// Offset in the squashfs of the block holding byte `offset` of the file.
    pub fn position(&self, offset: u64) -> u64 {
        self.starts[((offset / self.block_size) as usize).min(self.starts.len() - 1)]
    }

    /// Compressed bytes stored for the blocks holding bytes `offset..offset + len`.
    pub fn stored_range(&self, offset: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let first = offset / self.block_size;
        self.stored_bytes(first, (offset + len).div_ceil(self.block_size) - first)
    }

    /// Compressed bytes stored for blocks `first..first + count` (0 for
    /// sparse blocks; the tail fragment not counted).
    pub fn stored_bytes(&self, first: u64, count: u64) -> u64 {
        let a = (first as usize).min(self.sizes.len());
        let b = ((first + count) as usize).min(self.sizes.len());
        self.starts[b] - self.starts[a]
    }

    /// Number of stored blocks (the tail fragment not counted).
    pub fn stored_blocks(&self) -> u64 {
        self.sizes.len() as u64
    }

    /// Where stored block `block` lies in the squashfs (`start..end`, empty
    /// for a sparse block), and whether it is stored uncompressed.
    pub fn stored_block(&self, block: u64) -> (u64, u64, bool) {
        let i = block as usize;
        (self.starts[i], self.starts[i + 1], self.sizes[i].uncompressed())
    }
}

/// SHA-256 of each stored block of a file, from verified data: blocks
/// read with them are taken as they come from the source (unverified,
/// exactly their bytes) and checked against these before decompression.
pub type BlockSums<'a> = &'a [[u8; 32]];

/// Reads file contents of one squashfs.
pub struct DataReader {
    source: Arc<dyn ReadAt>,
    compressor: Compressor,
    block_size: u64,
    fragments: Vec<Fragment>,
    cache: Mutex<VecDeque<(u32, Arc<Vec<u8>>)>>,
}

struct FileLayout<'a> {
    blocks_start: u64,
    file_size: u64,
    frag_index: u32,
    block_offset: u32,
    block_sizes: &'a [DataSize],
}

fn layout(f: &SquashfsFileReader) -> FileLayout<'_> {
    match f {
        SquashfsFileReader::Basic(b) => FileLayout {
            blocks_start: u64::from(b.blocks_start),
            file_size: u64::from(b.file_size),
            frag_index: b.frag_index,
            block_offset: b.block_offset,
            block_sizes: &b.block_sizes,
        },
        SquashfsFileReader::Extended(e) => FileLayout {
            blocks_start: e.blocks_start,
            file_size: e.file_size,
            frag_index: e.frag_index,
            block_offset: e.block_offset,
            block_sizes: &e.block_sizes,
        },
    }
}

impl DataReader {
    /// A reader over `source` for a filesystem with these parameters.
    pub fn new(
        source: Arc<dyn ReadAt>,
        compressor: Compressor,
        block_size: u32,
        fragments: Vec<Fragment>,
    ) -> DataReader {
        DataReader {
            source,
            compressor,
            block_size: u64::from(block_size),
            fragments,
            cache: Mutex::new(VecDeque::new()),
        }
    }

    fn corrupt(path: &str, what: impl std::fmt::Display) -> Error {
        Error::Payload(format!("Failed to read '{path}' from bundle: corrupt squashfs: {what}"))
    }

    fn fragment(&self, index: u32, path: &str) -> Result<Arc<Vec<u8>>> {
        if let Some((_, data)) = self.cache.lock().expect("fragment cache").iter().find(|(i, _)| *i == index) {
            return Ok(data.clone());
        }
        let frag =
            self.fragments.get(index as usize).ok_or_else(|| Self::corrupt(path, format!("no fragment {index}")))?;
        let size = u64::from(frag.size.size());
        if size > self.block_size {
            return Err(Self::corrupt(path, format!("fragment {index} is larger than a block")));
        }
        let mut raw = vec![0u8; size as usize];
        self.source.read_exact_at(frag.start, &mut raw).map_err(|e| Error::Payload(e.to_string()))?;
        let data = if frag.size.uncompressed() {
            raw
        } else {
            let mut out = Vec::new();
            decompress(self.compressor, &raw, self.block_size as usize, &mut out)
                .map_err(|e| Self::corrupt(path, e))?;
            out
        };
        let data = Arc::new(data);
        let mut cache = self.cache.lock().expect("fragment cache");
        if cache.len() >= FRAGMENT_CACHE {
            cache.pop_front();
        }
        cache.push_back((index, data.clone()));
        Ok(data)
    }

    /// Reads the compressed bytes `start..start + len` of a run of blocks
    /// (offset in run, stored size, stored uncompressed, output length) with
    /// one call and decompresses them in parallel. Blocks stored as is are
    /// left in the run's bytes, not copied. `check` says how the bytes are
    /// checked (see [`Check`]).
    fn read_run(&self, start: u64, len: u64, run: &[(u64, u32, bool, u64)], check: Check) -> Result<Run> {
        let bs = self.block_size;
        let mut raw = vec![0u8; len as usize];
        let read = match check {
            Check::Verified => self.source.read_exact_at(start, &mut raw),
            Check::Summed(_) | Check::ByCaller => self.source.read_exact_at_unverified(start, &mut raw),
        };
        let sums = match check {
            Check::Summed(sums) => Some(sums),
            _ => None,
        };
        read.map_err(|e| Error::Payload(e.to_string()))?;
        let blocks = run
            .par_iter()
            .enumerate()
            .map(|(i, &(off, size, uncompressed, out_len))| {
                let input = &raw[off as usize..off as usize + size as usize];
                if size > 0 && sums.is_some_and(|sums| Sha256::digest(input)[..] != sums[i]) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the block stored at offset {} does not match its signed SHA-256", start + off),
                    ));
                }
                if size == 0 {
                    return Ok(Block::Sparse(out_len));
                }
                let (block, held) = if uncompressed {
                    (Block::Stored(off as usize..off as usize + input.len()), input.len())
                } else {
                    let mut out = Vec::with_capacity(out_len as usize);
                    decompress(self.compressor, input, bs as usize, &mut out)?;
                    let held = out.len();
                    (Block::Decoded(out), held)
                };
                if held as u64 != out_len {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("block holds {held} bytes, expected {out_len}"),
                    ));
                }
                Ok(block)
            })
            .collect();
        Ok(Run { raw, blocks })
    }

    /// Where the blocks of `file` lie, for reading some of them on their own.
    pub fn block_map(&self, file: &SquashfsFileReader, path: &str) -> Result<BlockMap> {
        let l = layout(file);
        let bs = self.block_size;
        let has_fragment = l.frag_index != NO_FRAGMENT;
        let in_blocks = if has_fragment { (l.file_size / bs) * bs } else { l.file_size };
        if l.block_sizes.len() as u64 != in_blocks.div_ceil(bs) {
            return Err(Self::corrupt(path, "block list does not match the file size"));
        }
        let mut starts = Vec::with_capacity(l.block_sizes.len() + 1);
        let mut pos = l.blocks_start;
        for ds in l.block_sizes {
            if u64::from(ds.size()) > bs {
                return Err(Self::corrupt(path, "block larger than the block size"));
            }
            starts.push(pos);
            pos += u64::from(ds.size());
        }
        starts.push(pos);
        Ok(BlockMap {
            path: path.to_string(),
            file_size: l.file_size,
            block_size: bs,
            starts,
            sizes: l.block_sizes.to_vec(),
            fragment: has_fragment.then_some((l.frag_index, l.block_offset)),
        })
    }

    /// The contents of blocks `first..first + count` of a file (each
    /// `block_size` bytes, the file's last one shorter), read with one call
    /// to the source.
    pub fn read_blocks(&self, map: &BlockMap, first: u64, count: u64) -> Result<Vec<u8>> {
        self.read_blocks_as(map, first, count, None)
    }

    /// [`DataReader::read_blocks`] with the SHA-256 of each of these stored
    /// blocks (`sums[0]` for block `first`) from verified data: the blocks
    /// are read exactly and unverified, then checked against them (a tail
    /// fragment is read verified).
    pub fn read_blocks_summed(&self, map: &BlockMap, first: u64, count: u64, sums: BlockSums) -> Result<Vec<u8>> {
        let stored = count.min(map.stored_blocks().saturating_sub(first));
        if (sums.len() as u64) < stored {
            return Err(Self::corrupt(&map.path, "fewer block sums than blocks"));
        }
        self.read_blocks_as(map, first, count, Some(sums))
    }

    fn read_blocks_as(&self, map: &BlockMap, first: u64, count: u64, sums: Option<BlockSums>) -> Result<Vec<u8>> {
        let bs = self.block_size;
        let total = map.file_size.div_ceil(bs);
        if first + count > total {
            return Err(Self::corrupt(&map.path, format!("blocks {first}+{count} beyond the file's {total}")));
        }
        let stored = map.sizes.len() as u64;
        let mut out = Vec::with_capacity((count * bs) as usize);
        let data_end = (first + count).min(stored);
        if first < data_end {
            let (a, b) = (first as usize, data_end as usize);
            let run = map.run(a, b);
            let check = sums.map_or(Check::Verified, Check::Summed);
            let r = self.read_run(map.starts[a], map.starts[b] - map.starts[a], &run, check)?;
            r.put_into(&mut out, &map.path, |e| Error::Io(e.to_string()))?;
        }
        if first + count > stored {
            let (index, offset) = map.fragment.ok_or_else(|| Self::corrupt(&map.path, "missing tail fragment"))?;
            let tail = map.file_size - stored * bs;
            let frag = self.fragment(index, &map.path)?;
            let start = u64::from(offset);
            let end = start
                .checked_add(tail)
                .filter(|e| *e <= frag.len() as u64)
                .ok_or_else(|| Self::corrupt(&map.path, "tail lies outside its fragment"))?;
            out.extend_from_slice(&frag[start as usize..end as usize]);
        }
        Ok(out)
    }

    /// Reads stored bytes as they are, verified (for blocks stored uncompressed).
    pub fn read_exact(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.source.read_exact_at(offset, buf).map_err(|e| Error::Payload(e.to_string()))
    }

    /// Passes a read pattern hint to the source (see [`ReadAt::advise_scattered`]).
    pub fn advise_scattered(&self, scattered: bool) {
        self.source.advise_scattered(scattered)
    }

    /// Streams the contents of `file` into `sink`; returns the length. The
    /// next runs of blocks are read, checked and decompressed on another
    /// thread while this one writes.
    pub fn copy(&self, file: &SquashfsFileReader, path: &str, sink: &mut dyn Sink) -> Result<u64> {
        self.copy_as(file, path, sink, false)
    }

    /// [`DataReader::copy`] for a caller that checks the whole stream against
    /// a trusted digest before it uses any of it (an image and its signed
    /// SHA-256): blocks stored as is are passed on without the source's own
    /// check. Every byte a decompressor sees is still checked first.
    pub fn copy_digest_checked(&self, file: &SquashfsFileReader, path: &str, sink: &mut dyn Sink) -> Result<u64> {
        self.copy_as(file, path, sink, true)
    }

    fn copy_as(&self, file: &SquashfsFileReader, path: &str, sink: &mut dyn Sink, by_caller: bool) -> Result<u64> {
        let map = self.block_map(file, path)?;
        let bs = self.block_size;
        let write_err = |e: io::Error| Error::Io(format!("Failed to write '{path}': {e}"));
        let stored = map.sizes.len();
        let max_blocks = (RUN_BYTES / bs).max(1) as usize;
        let mut written = 0u64;
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(Run, u64)>>(RUNS_AHEAD);
            let map = &map;
            scope.spawn(move || {
                let mut i = 0usize;
                while i < stored {
                    // A run of blocks whose compressed bytes are read in one go.
                    let mut j = i + 1;
                    while j < stored && map.starts[j + 1] - map.starts[i] <= RUN_BYTES && j - i < max_blocks {
                        j += 1;
                    }
                    let run = map.run(i, j);
                    let len = run.iter().map(|r| r.3).sum();
                    let as_is = run.iter().all(|&(_, size, uncompressed, _)| uncompressed || size == 0);
                    let check = if by_caller && as_is { Check::ByCaller } else { Check::Verified };
                    let r = self.read_run(map.starts[i], map.starts[j] - map.starts[i], &run, check);
                    let stop = r.is_err();
                    // The writer gone (it failed) or a failed read: stop reading.
                    if tx.send(r.map(|r| (r, len))).is_err() || stop {
                        return;
                    }
                    i = j;
                }
            });
            for r in rx {
                let (run, len) = r?;
                run.put_into(sink, path, write_err)?;
                written += len;
            }
            Ok(())
        })?;
        if written < map.file_size {
            let tail = self.read_blocks(&map, stored as u64, 1)?;
            sink.put(&tail).map_err(write_err)?;
            written += tail.len() as u64;
        }
        sink.finish(written).map_err(write_err)?;
        Ok(written)
    }
}

/// How the stored bytes of a run are checked.
#[derive(Clone, Copy)]
enum Check<'a> {
    /// By the source, as they are read.
    Verified,
    /// Against one SHA-256 per block from verified data.
    Summed(BlockSums<'a>),
    /// By the caller, after the whole stream (blocks stored as is only).
    ByCaller,
}

/// Runs queued between a copy's reading thread and its writer: none, a
/// rendezvous (one run is read while the one before it is written), which
/// keeps memory at two runs of at most `RUN_BYTES` stored and inflated each.
const RUNS_AHEAD: usize = 0;

/// One block of a run as read: stored as is (a range of the run's bytes),
/// decompressed, or sparse (its length).
enum Block {
    Stored(std::ops::Range<usize>),
    Decoded(Vec<u8>),
    Sparse(u64),
}

/// A run of blocks read with one call: its stored bytes and its blocks.
struct Run {
    raw: Vec<u8>,
    blocks: Vec<io::Result<Block>>,
}

impl Run {
    /// Puts the run's blocks into `sink` in order; a corrupt block is an
    /// error naming `path`, a failing sink one made by `sink_err`.
    fn put_into(self, sink: &mut dyn Sink, path: &str, sink_err: impl Fn(io::Error) -> Error) -> Result<()> {
        for block in self.blocks {
            match block.map_err(|e| DataReader::corrupt(path, e))? {
                Block::Stored(range) => sink.put(&self.raw[range]),
                Block::Decoded(data) => sink.put(&data),
                Block::Sparse(n) => sink.zeros(n),
            }
            .map_err(&sink_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompression_is_bounded() {
        let data = vec![7u8; 100_000];
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        let packed = z.finish().unwrap();
        let mut out = Vec::new();
        decompress(Compressor::Gzip, &packed, 131072, &mut out).unwrap();
        assert_eq!(out, data);
        assert!(decompress(Compressor::Gzip, &packed, 4096, &mut out).is_err());
        assert!(decompress(Compressor::Gzip, b"not zlib", 4096, &mut out).is_err());
        let zs = zstd::bulk::compress(&data, 3).unwrap();
        decompress(Compressor::Zstd, &zs, 131072, &mut out).unwrap();
        assert_eq!(out, data);
        let l4 = lz4_flex::block::compress(&data);
        decompress(Compressor::Lz4, &l4, 131072, &mut out).unwrap();
        assert_eq!(out, data);
        assert!(decompress(Compressor::Lz4, &l4, 1000, &mut out).is_err());
    }

    #[test]
    fn sinks() {
        let mut v = Vec::new();
        v.put(b"ab").unwrap();
        v.zeros(3).unwrap();
        assert_eq!(v, b"ab\0\0\0");
    }

    #[test]
    fn a_sparse_file_leaves_zero_pages_and_sparse_blocks_as_holes() {
        use crate::sparse::{HOLE_PAGE, SparseWriter};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        // A block with data in its first and fifth page, a sparse block, a
        // short last block whose data ends in zeros.
        let mut block = vec![0u8; 128 << 10];
        block[1] = 1;
        block[4 * HOLE_PAGE + 9] = 2;
        let mut last = vec![0u8; 3 * HOLE_PAGE + 100];
        last[HOLE_PAGE] = 3;
        let mut f = SparseWriter::new(std::fs::File::create(&path).unwrap());
        Sink::put(&mut f, &block).unwrap();
        Sink::zeros(&mut f, 128 << 10).unwrap();
        Sink::put(&mut f, &last).unwrap();
        let len = (256 << 10) + last.len() as u64;
        Sink::finish(&mut f, len).unwrap();
        let mut want = block.clone();
        want.resize(256 << 10, 0);
        want.extend_from_slice(&last);
        assert_eq!(std::fs::read(&path).unwrap(), want);
        // Three pages hold data.
        assert_eq!(std::fs::metadata(&path).unwrap().blocks() * 512, 3 * HOLE_PAGE as u64);
    }
}
