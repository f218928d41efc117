//! Verified readers over a bundle payload. Each one checks bytes before it
//! returns them; on failure the caller's buffer is zeroed, so no unverified
//! byte can leak even to a caller that ignores the error.

use crate::source::{ReadAt, check_range};
use crate::verity::{BLOCK_SIZE, Geometry, TreeVerifier, VerityError};
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest scratch buffer an unaligned read allocates at once.
const MAX_SCRATCH: usize = 1 << 20;

fn fail<T>(buf: &mut [u8], e: io::Error) -> io::Result<T> {
    buf.fill(0);
    Err(e)
}

/// Reads whole 4 KiB-aligned units through `aligned`, for any offset/length.
fn read_unaligned(
    size: u64,
    offset: u64,
    buf: &mut [u8],
    unit: u64,
    mut aligned: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> io::Result<()> {
    check_range(offset, buf.len(), size)?;
    if offset.is_multiple_of(unit) && ((buf.len() as u64).is_multiple_of(unit) || offset + buf.len() as u64 == size) {
        return aligned(offset, buf).or_else(|e| fail(buf, e));
    }
    let mut done = 0usize;
    let mut scratch = Vec::new();
    while done < buf.len() {
        let pos = offset + done as u64;
        let start = pos - pos % unit;
        let want_end = (offset + buf.len() as u64).min(start + MAX_SCRATCH as u64);
        let end = want_end.next_multiple_of(unit).min(size);
        scratch.resize((end - start) as usize, 0);
        if let Err(e) = aligned(start, &mut scratch) {
            return fail(buf, e);
        }
        let from = (pos - start) as usize;
        let n = ((end - pos) as usize).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&scratch[from..from + n]);
        done += n;
    }
    Ok(())
}

/// The squashfs (or ciphertext) part of a verity payload, every 4 KiB block
/// checked against the signed root hash as it is read.
pub struct VerityReader<S> {
    source: S,
    data_size: u64,
    verifier: TreeVerifier,
    /// One bit per data block: checked at least once (32 KiB per GiB).
    checked: Vec<AtomicU64>,
}

impl<S: ReadAt> VerityReader<S> {
    /// `source` is the payload: `data_size` bytes of data, then the tree.
    pub fn new(source: S, data_size: u64, salt: &[u8], root: [u8; 32]) -> io::Result<VerityReader<S>> {
        if !data_size.is_multiple_of(BLOCK_SIZE as u64) || data_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "verity data size is not a non-zero multiple of 4096",
            ));
        }
        let geometry = Geometry::new(data_size / BLOCK_SIZE as u64);
        if source.size() != data_size + geometry.tree_size() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "payload size does not match the verity tree size"));
        }
        let blocks = geometry.data_blocks;
        let checked = (0..blocks.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Ok(VerityReader { source, data_size, verifier: TreeVerifier::new(geometry, salt, root), checked })
    }

    fn is_checked(&self, block: u64) -> bool {
        self.checked[(block / 64) as usize].load(Ordering::Relaxed) & (1 << (block % 64)) != 0
    }

    fn read_blocks(&self, offset: u64, buf: &mut [u8]) -> Result<(), VerityError> {
        self.source.read_exact_at(offset, buf)?;
        let fetch = |off: u64, b: &mut [u8]| self.source.read_exact_at(self.data_size + off, b);
        let first = offset / BLOCK_SIZE as u64;
        if let Err(e) = self.verifier.verify(first, buf, &fetch) {
            // A cache on the way (the main ECU's download proxy) may have
            // handed out bad bytes: ask the origin once more, past it.
            if !self.source.read_fresh_at(offset, buf)? {
                return Err(e);
            }
            let fresh = |off: u64, b: &mut [u8]| {
                if self.source.read_fresh_at(self.data_size + off, b)? {
                    Ok(())
                } else {
                    self.source.read_exact_at(self.data_size + off, b)
                }
            };
            self.verifier.verify(first, buf, &fresh)?;
        }
        for b in first..first + (buf.len() / BLOCK_SIZE) as u64 {
            self.checked[(b / 64) as usize].fetch_or(1 << (b % 64), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads and checks every data block that no read has checked yet, so
    /// that afterwards each block of the payload has been verified at least
    /// once (RAUC's full payload check, without hashing twice).
    pub fn check_all(&self) -> Result<(), VerityError> {
        let blocks = self.data_size / BLOCK_SIZE as u64;
        let max_run = (MAX_SCRATCH / BLOCK_SIZE) as u64;
        let mut buf = vec![0u8; MAX_SCRATCH];
        let mut b = 0;
        while b < blocks {
            if self.is_checked(b) {
                b += 1;
                continue;
            }
            let mut end = b + 1;
            while end < blocks && end - b < max_run && !self.is_checked(end) {
                end += 1;
            }
            let n = ((end - b) as usize) * BLOCK_SIZE;
            self.read_blocks(b * BLOCK_SIZE as u64, &mut buf[..n])?;
            b = end;
        }
        Ok(())
    }
}

impl<S: ReadAt> ReadAt for VerityReader<S> {
    fn size(&self) -> u64 {
        self.data_size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_unaligned(self.data_size, offset, buf, BLOCK_SIZE as u64, |off, b| Ok(self.read_blocks(off, b)?))
    }

    fn advise_scattered(&self, scattered: bool) {
        self.source.advise_scattered(scattered)
    }

    /// The data bytes as they are, no hash tree read (the caller checks them).
    fn read_exact_at_unverified(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len(), self.data_size)?;
        self.source.read_exact_at_unverified(offset, buf)
    }
}

/// Decrypts a crypt bundle's payload: AES-256-CBC per 4 KiB sector, IV =
/// little-endian 512-byte sector number (dm-crypt `plain64`, `sector_size:4096`).
pub struct CryptReader<S> {
    inner: S,
    key: [u8; 32],
}

/// The IV of 4 KiB sector `sector`.
pub fn sector_iv(sector: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&(sector * 8).to_le_bytes());
    iv
}

/// Encrypts or decrypts whole sectors in place, `first_sector` being the index of `data[0..4096]`.
pub fn crypt_sectors(key: &[u8; 32], first_sector: u64, data: &mut [u8], encrypt: bool) -> io::Result<()> {
    if !data.len().is_multiple_of(BLOCK_SIZE) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "crypt data is not a multiple of 4096 bytes"));
    }
    let mut ctx = CipherCtx::new().map_err(io::Error::other)?;
    let cipher = Cipher::aes_256_cbc();
    let mut out = vec![0u8; BLOCK_SIZE + 16];
    for (i, sector) in data.chunks_exact_mut(BLOCK_SIZE).enumerate() {
        let iv = sector_iv(first_sector + i as u64);
        if encrypt {
            ctx.encrypt_init(Some(cipher), Some(key), Some(&iv)).map_err(io::Error::other)?;
        } else {
            ctx.decrypt_init(Some(cipher), Some(key), Some(&iv)).map_err(io::Error::other)?;
        }
        ctx.set_padding(false);
        let n = ctx.cipher_update(sector, Some(&mut out)).map_err(io::Error::other)?;
        debug_assert_eq!(n, BLOCK_SIZE);
        sector.copy_from_slice(&out[..BLOCK_SIZE]);
    }
    Ok(())
}

impl<S: ReadAt> CryptReader<S> {
    /// Decrypts `inner` (already verified ciphertext) with `key`.
    pub fn new(inner: S, key: [u8; 32]) -> CryptReader<S> {
        CryptReader { inner, key }
    }
}

impl<S: ReadAt> ReadAt for CryptReader<S> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_unaligned(self.inner.size(), offset, buf, BLOCK_SIZE as u64, |off, b| {
            self.inner.read_exact_at(off, b)?;
            crypt_sectors(&self.key, off / BLOCK_SIZE as u64, b, false)
        })
    }

    fn advise_scattered(&self, scattered: bool) {
        self.inner.advise_scattered(scattered)
    }

    /// Decrypts whole sectors read unverified (tampered ciphertext turns
    /// into wrong plaintext, which the caller's digest check catches).
    fn read_exact_at_unverified(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_unaligned(self.inner.size(), offset, buf, BLOCK_SIZE as u64, |off, b| {
            self.inner.read_exact_at_unverified(off, b)?;
            crypt_sectors(&self.key, off / BLOCK_SIZE as u64, b, false)
        })
    }
}

/// Chunk size of [`PinnedReader`] digests.
pub const PIN_CHUNK: usize = 64 * 1024;

/// Records BLAKE3 digests of consecutive 64 KiB chunks of a stream. BLAKE3
/// is a cryptographic hash, so a changed chunk cannot keep its digest, and
/// it costs about a quarter of SHA-256 here (SHA-NI), which matters because
/// it runs beside the signature's own SHA-256 over the whole payload.
#[derive(Default)]
pub struct ChunkDigester {
    current: blake3::Hasher,
    filled: usize,
    digests: Vec<[u8; 32]>,
}

impl ChunkDigester {
    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (PIN_CHUNK - self.filled).min(data.len());
            if n == PIN_CHUNK {
                // A whole chunk at once: no copy into the running state.
                self.digests.push(*blake3::hash(&data[..n]).as_bytes());
            } else {
                self.current.update(&data[..n]);
                self.filled += n;
                if self.filled == PIN_CHUNK {
                    self.digests.push(*self.current.finalize().as_bytes());
                    self.current.reset();
                    self.filled = 0;
                }
            }
            data = &data[n..];
        }
    }

    /// The digests, the last one over a possibly shorter chunk.
    pub fn finish(mut self) -> Vec<[u8; 32]> {
        if self.filled > 0 {
            self.digests.push(*self.current.finalize().as_bytes());
        }
        self.digests
    }
}

/// A plain bundle's payload after its detached signature was verified: every
/// chunk read is compared with the digest recorded during verification, so a
/// file changed afterwards yields errors, never changed bytes.
pub struct PinnedReader<S> {
    source: S,
    digests: Vec<[u8; 32]>,
}

impl<S: ReadAt> PinnedReader<S> {
    /// `digests` must come from a [`ChunkDigester`] fed exactly the bytes of `source`.
    pub fn new(source: S, digests: Vec<[u8; 32]>) -> io::Result<PinnedReader<S>> {
        if digests.len() as u64 != source.size().div_ceil(PIN_CHUNK as u64) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "chunk digests do not cover the payload"));
        }
        Ok(PinnedReader { source, digests })
    }

    fn read_chunks(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.source.read_exact_at(offset, buf)?;
        let first = offset / PIN_CHUNK as u64;
        for (i, chunk) in buf.chunks(PIN_CHUNK).enumerate() {
            let idx = first + i as u64;
            if blake3::hash(chunk).as_bytes() != &self.digests[idx as usize] {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "bundle payload changed after its signature was verified (at offset {})",
                        idx * PIN_CHUNK as u64
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl<S: ReadAt> ReadAt for PinnedReader<S> {
    fn size(&self) -> u64 {
        self.source.size()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_unaligned(self.source.size(), offset, buf, PIN_CHUNK as u64, |off, b| self.read_chunks(off, b))
    }

    fn advise_scattered(&self, scattered: bool) {
        self.source.advise_scattered(scattered)
    }

    /// The bytes as the file holds them now, not compared with the pins (the
    /// caller checks them).
    fn read_exact_at_unverified(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.source.read_exact_at_unverified(offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verity::build_tree;

    fn payload(blocks: usize) -> (Vec<u8>, Vec<u8>, [u8; 32]) {
        let data: Vec<u8> = (0..blocks * BLOCK_SIZE).map(|i| (i * 31 % 251) as u8).collect();
        let salt = [3u8; 32];
        let (root, tree) = build_tree(&data, &salt).unwrap();
        let mut p = data.clone();
        p.extend_from_slice(&tree);
        (data, p, root)
    }

    #[test]
    fn verity_reader_serves_unaligned_reads() {
        let (data, p, root) = payload(300);
        let r = VerityReader::new(p, data.len() as u64, &[3u8; 32], root).unwrap();
        for (off, len) in [(0usize, 10usize), (4095, 2), (5000, 70000), (data.len() - 1, 1), (0, data.len())] {
            let mut b = vec![0u8; len];
            r.read_exact_at(off as u64, &mut b).unwrap();
            assert_eq!(&b[..], &data[off..off + len]);
        }
        assert!(r.read_exact_at(data.len() as u64, &mut [0u8; 1]).is_err());
        r.check_all().unwrap();
    }

    /// A cache on the way that handed out damaged bytes (`stale`) until it
    /// is asked past (`fresh`), counting how often it was.
    struct StaleCache {
        stale: Vec<u8>,
        fresh: Option<Vec<u8>>,
        asked_past: AtomicU64,
    }

    impl ReadAt for StaleCache {
        fn size(&self) -> u64 {
            self.stale.len() as u64
        }

        fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.stale.read_exact_at(offset, buf)
        }

        fn read_fresh_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
            let Some(fresh) = &self.fresh else { return Ok(false) };
            self.asked_past.fetch_add(1, Ordering::Relaxed);
            fresh.read_exact_at(offset, buf)?;
            Ok(true)
        }
    }

    #[test]
    fn verity_reader_asks_past_a_cache_once_when_a_block_fails() {
        let (data, p, root) = payload(300);
        let mut stale = p.clone();
        stale[8192 + 100] ^= 4;
        // The origin has the right bytes: the read succeeds, one block asked again.
        let src = StaleCache { stale: stale.clone(), fresh: Some(p.clone()), asked_past: AtomicU64::new(0) };
        let r = VerityReader::new(src, data.len() as u64, &[3u8; 32], root).unwrap();
        let mut b = vec![0u8; BLOCK_SIZE];
        r.read_exact_at(8192, &mut b).unwrap();
        assert_eq!(&b[..], &data[8192..8192 + BLOCK_SIZE]);
        assert_eq!(r.source.asked_past.load(Ordering::Relaxed), 1);
        // The origin has the same damage: still refused, buffer zeroed.
        let src = StaleCache { stale: stale.clone(), fresh: Some(stale.clone()), asked_past: AtomicU64::new(0) };
        let r = VerityReader::new(src, data.len() as u64, &[3u8; 32], root).unwrap();
        let e = r.read_exact_at(8192, &mut b).unwrap_err();
        assert!(e.to_string().contains("does not match the signed hash tree"), "{e}");
        assert!(b.iter().all(|&x| x == 0));
        // No cache to pass: refused without a second read.
        let src = StaleCache { stale, fresh: None, asked_past: AtomicU64::new(0) };
        let r = VerityReader::new(src, data.len() as u64, &[3u8; 32], root).unwrap();
        assert!(r.read_exact_at(8192, &mut b).is_err());
        assert_eq!(r.source.asked_past.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn verity_reader_zeroes_buffer_on_tamper() {
        let (data, mut p, root) = payload(300);
        p[8192 + 100] ^= 4;
        let r = VerityReader::new(p, data.len() as u64, &[3u8; 32], root).unwrap();
        let mut b = vec![0xAAu8; 3 * BLOCK_SIZE];
        let e = r.read_exact_at(4096, &mut b).unwrap_err();
        assert!(e.to_string().contains("bundle payload is corrupted"), "{e}");
        assert!(b.iter().all(|&x| x == 0));
        let mut small = vec![0xAAu8; 10];
        assert!(r.read_exact_at(8192 + 95, &mut small).is_err());
        assert!(small.iter().all(|&x| x == 0));
        // Blocks before the damage still read fine.
        let mut ok = vec![0u8; 4096];
        r.read_exact_at(0, &mut ok).unwrap();
    }

    #[test]
    fn unverified_reads_skip_the_check_and_leave_blocks_unchecked() {
        let (data, mut p, root) = payload(300);
        p[8192 + 100] ^= 4;
        let r = VerityReader::new(p.clone(), data.len() as u64, &[3u8; 32], root).unwrap();
        let mut b = vec![0u8; 50];
        r.read_exact_at_unverified(8192 + 90, &mut b).unwrap();
        assert_eq!(&b[..], &p[8192 + 90..8192 + 140], "bytes as stored, damage included");
        assert!(r.read_exact_at(8192 + 90, &mut b).is_err(), "the checked read still refuses them");
        assert!(r.read_exact_at_unverified(data.len() as u64 - 10, &mut [0u8; 11]).is_err(), "not into the tree");
        // An unverified read does not count as a check.
        let r = VerityReader::new(p, data.len() as u64, &[3u8; 32], root).unwrap();
        r.read_exact_at_unverified(8192, &mut vec![0u8; 4096]).unwrap();
        assert!(matches!(r.check_all(), Err(VerityError::DataBlock(2))));
        // Crypt: whole sectors decrypted, any range served.
        let key = [5u8; 32];
        let plain: Vec<u8> = (0..3 * BLOCK_SIZE).map(|i| (i * 7) as u8).collect();
        let mut enc = plain.clone();
        crypt_sectors(&key, 0, &mut enc, true).unwrap();
        let mut c = vec![0u8; 5000];
        CryptReader::new(enc, key).read_exact_at_unverified(3000, &mut c).unwrap();
        assert_eq!(&c[..], &plain[3000..8000]);
    }

    #[test]
    fn full_check_covers_blocks_no_read_touched() {
        let (data, mut p, root) = payload(300);
        p[250 * BLOCK_SIZE + 9] ^= 1;
        let r = VerityReader::new(p, data.len() as u64, &[3u8; 32], root).unwrap();
        let mut b = vec![0u8; 100 * BLOCK_SIZE];
        r.read_exact_at(0, &mut b).unwrap();
        assert_eq!(&b[..], &data[..100 * BLOCK_SIZE]);
        assert!(matches!(r.check_all(), Err(VerityError::DataBlock(250))));
    }

    #[test]
    fn crypt_round_trip_and_iv() {
        assert_eq!(sector_iv(1)[..8], 8u64.to_le_bytes());
        let key = [9u8; 32];
        let plain: Vec<u8> = (0..3 * BLOCK_SIZE).map(|i| i as u8).collect();
        let mut enc = plain.clone();
        crypt_sectors(&key, 0, &mut enc, true).unwrap();
        assert_ne!(enc[..BLOCK_SIZE], plain[..BLOCK_SIZE]);
        // Sectors are independent: decrypting sector 2 alone works.
        let mut last = enc[2 * BLOCK_SIZE..].to_vec();
        crypt_sectors(&key, 2, &mut last, false).unwrap();
        assert_eq!(&last[..], &plain[2 * BLOCK_SIZE..]);
        let r = CryptReader::new(enc, key);
        let mut b = vec![0u8; 5000];
        r.read_exact_at(100, &mut b).unwrap();
        assert_eq!(&b[..], &plain[100..5100]);
    }

    #[test]
    fn pinned_reader_detects_later_changes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8).collect();
        let mut d = ChunkDigester::default();
        d.update(&data[..1000]);
        d.update(&data[1000..]);
        let digests = d.finish();
        assert_eq!(digests.len(), 4);
        let r = PinnedReader::new(data.clone(), digests.clone()).unwrap();
        let mut b = vec![0u8; 70_000];
        r.read_exact_at(130_000, &mut b).unwrap();
        assert_eq!(&b[..], &data[130_000..200_000]);
        let mut changed = data.clone();
        changed[199_999] ^= 1;
        let r = PinnedReader::new(changed, digests).unwrap();
        let e = r.read_exact_at(199_000, &mut [0u8; 10]).unwrap_err();
        assert!(e.to_string().contains("changed after its signature was verified"));
    }
}
