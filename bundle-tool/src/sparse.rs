//! New regular files written sparse: every aligned all-zero 4 KiB page is
//! left as a hole (never for devices, where a skipped page would keep
//! whatever was there).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// Pages of this size that hold only zeros are not written.
pub const HOLE_PAGE: usize = 4096;

/// Fills a new, empty file from its start, skipping the writes of aligned
/// all-zero pages; [`SparseWriter::complete`] sets the length.
pub struct SparseWriter {
    file: File,
    /// Bytes taken so far.
    pos: u64,
    /// The start of the page being filled, held until it is complete.
    partial: Vec<u8>,
}

impl SparseWriter {
    /// A writer filling `file` (empty) from its start.
    pub fn new(file: File) -> SparseWriter {
        SparseWriter { file, pos: 0, partial: Vec::with_capacity(HOLE_PAGE) }
    }

    /// Writes `page` (a whole page, or a piece before a hole or the end) at
    /// `at` unless it is all zeros.
    fn write_page(&self, page: &[u8], at: u64) -> io::Result<()> {
        if page.iter().any(|b| *b != 0) {
            self.file.write_all_at(page, at)?;
        }
        Ok(())
    }

    /// Writes the held piece of a page, if any.
    fn put_partial(&mut self) -> io::Result<()> {
        self.write_page(&self.partial, self.pos - self.partial.len() as u64)?;
        self.partial.clear();
        Ok(())
    }

    /// Takes `n` zero bytes without looking at them (a known hole).
    pub fn skip(&mut self, n: u64) -> io::Result<()> {
        self.put_partial()?;
        self.pos += n;
        Ok(())
    }

    /// Writes the held tail and sets the length (trailing holes); returns it.
    pub fn complete(&mut self) -> io::Result<u64> {
        self.put_partial()?;
        self.file.set_len(self.pos)?;
        Ok(self.pos)
    }

    /// [`SparseWriter::complete`], returning the length and the file.
    pub fn finish(mut self) -> io::Result<(u64, File)> {
        let len = self.complete()?;
        Ok((len, self.file))
    }
}

impl Write for SparseWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        // Complete a held page first.
        if !self.partial.is_empty() {
            let n = (HOLE_PAGE - self.partial.len()).min(rest.len());
            self.partial.extend_from_slice(&rest[..n]);
            self.pos += n as u64;
            rest = &rest[n..];
            if self.partial.len() < HOLE_PAGE {
                return Ok(buf.len());
            }
            self.put_partial()?;
        }
        // Whole pages straight from the caller's buffer (runs of data
        // pages in one write), a tail held.
        let whole = rest.len() - rest.len() % HOLE_PAGE;
        let pages: Vec<&[u8]> = rest[..whole].chunks(HOLE_PAGE).collect();
        let zero = |p: &[u8]| p.iter().all(|x| *x == 0);
        let mut i = 0;
        while i < pages.len() {
            let mut j = i;
            while j < pages.len() && !zero(pages[j]) {
                j += 1;
            }
            if j > i {
                self.file.write_all_at(&rest[i * HOLE_PAGE..j * HOLE_PAGE], self.pos)?;
                self.pos += ((j - i) * HOLE_PAGE) as u64;
            } else {
                self.pos += HOLE_PAGE as u64;
                j += 1;
            }
            i = j;
        }
        self.partial.extend_from_slice(&rest[whole..]);
        self.pos += (rest.len() - whole) as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_pages_and_skipped_bytes_become_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        // Data in the first and fifth page, written in odd pieces; a known
        // hole; a last piece whose data ends in zeros.
        let mut head = vec![0u8; 32 * HOLE_PAGE];
        head[1] = 1;
        head[4 * HOLE_PAGE + 9] = 2;
        let mut last = vec![0u8; 3 * HOLE_PAGE + 100];
        last[HOLE_PAGE] = 3;
        let mut w = SparseWriter::new(File::create(&path).unwrap());
        for piece in head.chunks(3000) {
            w.write_all(piece).unwrap();
        }
        w.skip(32 * HOLE_PAGE as u64).unwrap();
        w.write_all(&last).unwrap();
        let (len, _) = w.finish().unwrap();
        let mut want = head.clone();
        want.resize(64 * HOLE_PAGE, 0);
        want.extend_from_slice(&last);
        assert_eq!(len, want.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), want);
        // Three pages hold data.
        assert_eq!(std::fs::metadata(&path).unwrap().blocks() * 512, 3 * HOLE_PAGE as u64);
    }
}
