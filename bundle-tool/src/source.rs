//! Random-access byte sources: where bundle bytes come from (a local file,
//! an HTTP(S) URL) and the cursor that lets stream-oriented parsers read them.

pub mod http;

use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Positional reads of an immutable byte range.
pub trait ReadAt: Send + Sync {
    /// Total size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// A one-off read of a few bytes (trailer, signature) that should be
    /// fetched exactly, without caching or read-ahead.
    fn read_small_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(offset, buf)
    }

    /// Announces that reads from now on are scattered (`true`: each needs
    /// just its own bytes, as a tree install reading single files does) or
    /// may be sequential again (`false`). Remote sources stop reading ahead;
    /// layers pass it on.
    fn advise_scattered(&self, _scattered: bool) {}

    /// Fills `buf` with bytes the caller checks itself, against a digest it
    /// holds from verified data (a tree image's file contents and their
    /// SHA-256): a verifying layer may pass them on unchecked, and a remote
    /// source fetches exactly these bytes, not the whole 4 KiB blocks a
    /// check would need. By default the same as [`ReadAt::read_exact_at`].
    fn read_exact_at_unverified(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(offset, buf)
    }

    /// Fills `buf` again from the origin, past every cache on the way (a
    /// caching proxy drops what it held of these bytes), after they failed
    /// verification. `Ok(false)`: this source has no cache to pass, so a
    /// second read would bring the same bytes; `buf` is left as it was.
    fn read_fresh_at(&self, _offset: u64, _buf: &mut [u8]) -> io::Result<bool> {
        Ok(false)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_exact_at(offset, buf)
    }

    fn read_small_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_small_at(offset, buf)
    }

    fn advise_scattered(&self, scattered: bool) {
        (**self).advise_scattered(scattered)
    }

    fn read_exact_at_unverified(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_exact_at_unverified(offset, buf)
    }

    fn read_fresh_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        (**self).read_fresh_at(offset, buf)
    }
}

pub(crate) fn check_range(offset: u64, len: usize, size: u64) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read of {len} bytes at offset {offset} is beyond the end ({size} bytes)"),
        )),
    }
}

/// A local file; its size is taken once at open.
pub struct FileSource {
    file: File,
    size: u64,
}

impl FileSource {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> io::Result<FileSource> {
        let file = File::open(path)?;
        FileSource::from_file(file)
    }

    /// Wraps an open file.
    pub fn from_file(file: File) -> io::Result<FileSource> {
        let size = file.metadata()?.len();
        Ok(FileSource { file, size })
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl ReadAt for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len(), self.size)?;
        self.file.read_exact_at(buf, offset)
    }
}

/// A window `[start, start+len)` of another source.
pub struct Slice<S> {
    inner: S,
    start: u64,
    len: u64,
}

impl<S: ReadAt> Slice<S> {
    /// The bytes `[start, start+len)` of `inner`.
    pub fn new(inner: S, start: u64, len: u64) -> io::Result<Slice<S>> {
        check_range(start, len as usize, inner.size())?;
        Ok(Slice { inner, start, len })
    }
}

impl<S: ReadAt> ReadAt for Slice<S> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        self.inner.read_exact_at(self.start + offset, buf)
    }

    fn advise_scattered(&self, scattered: bool) {
        self.inner.advise_scattered(scattered)
    }

    fn read_exact_at_unverified(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        self.inner.read_exact_at_unverified(self.start + offset, buf)
    }

    fn read_fresh_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        check_range(offset, buf.len(), self.len)?;
        self.inner.read_fresh_at(self.start + offset, buf)
    }
}

/// An in-memory source (tests, small payloads).
impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len(), self.len() as u64)?;
        buf.copy_from_slice(&self[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
}

/// `Read + BufRead + Seek` over a [`ReadAt`], with an aligned buffer that
/// survives seeks inside it (squashfs readers seek a lot). A fill after a
/// seek reads 4 KiB; each fill continuing the previous one reads twice as
/// much, up to the buffer's size (a small table at a random place costs a
/// small read, a long sequential one soon reads whole buffers).
pub struct Cursor<S> {
    source: S,
    buf: Vec<u8>,
    buf_start: u64,
    buf_len: usize,
    pos: u64,
}

/// The first fill after a seek.
const FIRST_FILL: usize = 4096;

impl<S: ReadAt> Cursor<S> {
    /// Default buffer: 512 KiB, one verity leaf hash block's worth of data.
    pub const DEFAULT_CAPACITY: usize = 512 * 1024;

    /// A cursor at offset 0 with the default buffer.
    pub fn new(source: S) -> Cursor<S> {
        Cursor::with_capacity(source, Self::DEFAULT_CAPACITY)
    }

    /// A cursor with a buffer of `capacity` bytes (rounded up to 4 KiB).
    pub fn with_capacity(source: S, capacity: usize) -> Cursor<S> {
        let capacity = capacity.max(4096).next_multiple_of(4096);
        Cursor { source, buf: vec![0; capacity], buf_start: 0, buf_len: 0, pos: 0 }
    }

    /// The wrapped source.
    pub fn source(&self) -> &S {
        &self.source
    }
}

impl<S: ReadAt> Read for Cursor<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<S: ReadAt> BufRead for Cursor<S> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let size = self.source.size();
        if self.pos >= size {
            return Ok(&[]);
        }
        let in_buf = self.pos >= self.buf_start && self.pos < self.buf_start + self.buf_len as u64;
        if !in_buf {
            let start = self.pos - self.pos % 4096;
            let continues = self.buf_len > 0 && start == self.buf_start + self.buf_len as u64;
            let fill = if continues { (2 * self.buf_len).min(self.buf.len()) } else { FIRST_FILL.min(self.buf.len()) };
            let len = (fill as u64).min(size - start) as usize;
            self.buf_len = 0;
            self.source.read_exact_at(start, &mut self.buf[..len])?;
            self.buf_start = start;
            self.buf_len = len;
        }
        let off = (self.pos - self.buf_start) as usize;
        Ok(&self.buf[off..self.buf_len])
    }

    fn consume(&mut self, amt: usize) {
        self.pos += amt as u64;
    }
}

impl<S: ReadAt> Seek for Cursor<S> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let size = self.source.size() as i128;
        let target = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => size + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"));
        }
        self.pos = target as u64;
        Ok(self.pos)
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_reads_and_seeks_within_buffer() {
        let data: Vec<u8> = (0..20000u32).map(|i| i as u8).collect();
        let mut c = Cursor::with_capacity(data.clone(), 4096);
        let mut b = [0u8; 10];
        c.seek(SeekFrom::Start(4090)).unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b[..], &data[4090..4100]);
        c.seek(SeekFrom::Current(-20)).unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b[..], &data[4080..4090]);
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert_eq!(&rest[..], &data[4090..]);
        assert!(c.seek(SeekFrom::Current(-30000)).is_err());
    }

    #[test]
    fn slice_bounds() {
        let data: Vec<u8> = (0..100u8).collect();
        let s = Slice::new(data, 10, 20).unwrap();
        let mut b = [0u8; 5];
        s.read_exact_at(15, &mut b).unwrap();
        assert_eq!(b, [25, 26, 27, 28, 29]);
        assert!(s.read_exact_at(16, &mut b).is_err());
    }
}
