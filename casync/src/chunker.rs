//! casync's content-defined chunker (spec §7): a buzhash over a 48-byte
//! window, a boundary where `H mod d == d - 1` with the discriminator `d`
//! derived from the average size, and casync's exact cut rule, so that the
//! same bytes and parameters give casync's chunks.
//!
//! The chunker is fed any slices; it keeps only the 48 bytes of the window.

use crate::buzhash_table::TABLE;

/// The rolling hash's window.
pub const WINDOW: usize = 48;
/// Largest chunk size casync accepts.
pub const SIZE_LIMIT: u64 = 128 << 20;

/// Chunk size parameters (spec §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    /// Smallest chunk (except the last).
    pub min: u64,
    /// Average the discriminator aims at.
    pub avg: u64,
    /// Largest chunk.
    pub max: u64,
}

impl Default for ChunkSizes {
    /// casync's (and RAUC's) 16 KiB / 64 KiB / 256 KiB.
    fn default() -> ChunkSizes {
        ChunkSizes { min: 16 << 10, avg: 64 << 10, max: 256 << 10 }
    }
}

/// Why chunk sizes cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid chunk sizes {min}:{avg}:{max}: {reason}")]
pub struct SizeError {
    min: u64,
    avg: u64,
    max: u64,
    reason: &'static str,
}

impl ChunkSizes {
    /// From the average alone, as casync's `--chunk-size=AVG`: avg/4 and avg·4.
    pub fn from_avg(avg: u64) -> Result<ChunkSizes, SizeError> {
        ChunkSizes { min: (avg / 4).max(1), avg, max: (avg * 4).min(SIZE_LIMIT) }.checked()
    }

    /// Checks the rules casync applies: each in [1, 128 MiB], min ≤ avg ≤ max.
    pub fn checked(self) -> Result<ChunkSizes, SizeError> {
        let ChunkSizes { min, avg, max } = self;
        let bad = |reason| Err(SizeError { min, avg, max, reason });
        if [min, avg, max].iter().any(|&v| v == 0 || v > SIZE_LIMIT) {
            return bad("each must lie between 1 byte and 128 MiB");
        }
        if !(min <= avg && avg <= max) {
            return bad("min <= avg <= max does not hold");
        }
        Ok(self)
    }

    /// The discriminator (spec §7.3), clamped to [min, max].
    pub fn discriminator(&self) -> u32 {
        let avg = self.avg as f64;
        let d = (avg / (1.332_375_15 - 1.428_888_52e-7 * avg)) as u64;
        d.clamp(self.min, self.max) as u32
    }
}

/// The buzhash of a full 48-byte window (oldest byte first).
pub fn window_hash(window: &[u8; WINDOW]) -> u32 {
    window.iter().enumerate().fold(0u32, |h, (j, &b)| h ^ TABLE[b as usize].rotate_left((WINDOW - 1 - j) as u32))
}

/// The hash after dropping `out` and appending `incoming`.
#[inline]
pub fn roll(h: u32, out: u8, incoming: u8) -> u32 {
    h.rotate_left(1) ^ TABLE[out as usize].rotate_left(WINDOW as u32) ^ TABLE[incoming as usize]
}

/// Finds chunk boundaries in a stream fed in pieces.
#[derive(Debug, Clone)]
pub struct Chunker {
    sizes: ChunkSizes,
    d: u32,
    /// First length at which a cut is considered.
    first: u64,
    /// Bytes of the current chunk so far.
    len: u64,
    /// The last 48 bytes, as a ring.
    ring: [u8; WINDOW],
    hash: u32,
}

impl Chunker {
    /// A chunker for `sizes` (see [`ChunkSizes::checked`]).
    pub fn new(sizes: ChunkSizes) -> Chunker {
        Chunker {
            sizes,
            d: sizes.discriminator(),
            first: sizes.min.max(WINDOW as u64),
            len: 0,
            ring: [0; WINDOW],
            hash: 0,
        }
    }

    /// The parameters.
    pub fn sizes(&self) -> ChunkSizes {
        self.sizes
    }

    /// Bytes of the chunk in progress.
    pub fn pending(&self) -> u64 {
        self.len
    }

    /// Consumes `data` up to the next boundary: `Some(n)` when the chunk in
    /// progress ends after `data[..n]` (the chunker then starts a new one),
    /// `None` when all of `data` belongs to it.
    pub fn feed(&mut self, data: &[u8]) -> Option<usize> {
        let s = self.sizes;
        if s.min == s.avg && s.avg == s.max {
            let room = (s.max - self.len) as usize;
            if data.len() >= room {
                self.len = 0;
                return Some(room);
            }
            self.len += data.len() as u64;
            return None;
        }
        let mut i = 0;
        // Bytes before the window that reaches `first` are only counted.
        let skip = self.first - WINDOW as u64;
        if self.len < skip {
            let n = ((skip - self.len) as usize).min(data.len());
            self.len += n as u64;
            i = n;
        }
        while i < data.len() {
            let b = data[i];
            let slot = (self.len % WINDOW as u64) as usize;
            let out = self.ring[slot];
            self.ring[slot] = b;
            self.len += 1;
            i += 1;
            if self.len < self.first {
                continue;
            }
            if self.len == self.first {
                let mut window = [0u8; WINDOW];
                let start = (self.len % WINDOW as u64) as usize;
                for (k, w) in window.iter_mut().enumerate() {
                    *w = self.ring[(start + k) % WINDOW];
                }
                self.hash = window_hash(&window);
            } else {
                self.hash = roll(self.hash, out, b);
            }
            if self.len >= s.max || self.hash % self.d == self.d - 1 {
                self.len = 0;
                return Some(i);
            }
        }
        None
    }

    /// Cuts everything `input` yields into chunks and hands each, in order,
    /// to `each`; memory: one chunk and a 1 MiB read buffer.
    pub fn chunk_stream<E: From<std::io::Error>>(
        mut input: impl std::io::Read,
        sizes: ChunkSizes,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut chunker = Chunker::new(sizes);
        let mut chunk = Vec::with_capacity(sizes.max as usize);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            let mut rest = &buf[..n];
            while let Some(cut) = chunker.feed(rest) {
                if chunk.is_empty() {
                    each(&rest[..cut])?;
                } else {
                    chunk.extend_from_slice(&rest[..cut]);
                    each(&chunk)?;
                    chunk.clear();
                }
                rest = &rest[cut..];
            }
            chunk.extend_from_slice(rest);
        }
        if !chunk.is_empty() {
            each(&chunk)?;
        }
        Ok(())
    }

    /// Cuts `data` (a whole stream) into chunk lengths.
    pub fn split(sizes: ChunkSizes, data: &[u8]) -> Vec<u64> {
        let mut c = Chunker::new(sizes);
        let mut out = Vec::new();
        let mut rest = data;
        while let Some(n) = c.feed(rest) {
            out.push(n as u64);
            rest = &rest[n..];
        }
        if c.pending() > 0 {
            out.push(c.pending());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::lcg;
    use sha2::Digest;

    #[test]
    fn table_is_casyncs() {
        let bytes: Vec<u8> = TABLE.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            "5b52080d38287da9d2e278466e3e0db7ec98e5e8b226f50612a56fa012b1f660"
        );
        assert_eq!(TABLE.iter().fold(0, |a, v| a ^ v), 0);
    }

    #[test]
    fn window_hashes_match_the_spec() {
        let h = |w: &[u8]| window_hash(w.try_into().unwrap());
        assert_eq!(h(&[0u8; 48]), 0x9e48_9e48);
        assert_eq!(h(&[0xffu8; 48]), 0xfdc4_023b);
        let up: Vec<u8> = (0u8..48).collect();
        assert_eq!(h(&up), 0x6b67_dec6);
        assert_eq!(roll(h(&up), 0x00, 0x30), 0xa3fc_25f1);
        assert_eq!(h(&lcg(19409, 48)), 0x8c30_fd85);
        assert_eq!(&lcg(1, 4), &[0x3c, 0x5e, 0x81, 0xb4]);
    }

    #[test]
    fn discriminators_match_the_spec() {
        for (avg, d) in [
            (1024u64, 768u32),
            (4096, 3075),
            (8192, 6153),
            (16384, 12318),
            (32768, 24680),
            (65536, 49535),
            (131072, 99777),
            (262144, 202440),
            (1048576, 886711),
        ] {
            let s = ChunkSizes { min: 1, avg, max: SIZE_LIMIT };
            assert_eq!(s.discriminator(), d, "avg {avg}");
        }
        assert_eq!(ChunkSizes::from_avg(16384).unwrap(), ChunkSizes { min: 4096, avg: 16384, max: 65536 });
        assert!(ChunkSizes { min: 10, avg: 5, max: 20 }.checked().is_err());
    }

    #[test]
    fn tv1_boundaries_in_any_feeding() {
        let data = lcg(1, 1_500_000);
        let sizes = Chunker::split(ChunkSizes::default(), &data);
        assert_eq!(sizes.len(), 26);
        assert_eq!(&sizes[..4], &[116_777, 77_247, 37_553, 22_267]);
        assert_eq!(sizes[11], 130_612);
        assert_eq!(sizes[25], 96_816);
        // Fed in odd pieces, the same cuts.
        let mut c = Chunker::new(ChunkSizes::default());
        let (mut cuts, mut at) = (Vec::new(), 0u64);
        for piece in data.chunks(7919) {
            let mut rest = piece;
            while let Some(n) = c.feed(rest) {
                at += n as u64;
                cuts.push(at);
                rest = &rest[n..];
            }
            at += rest.len() as u64;
        }
        let expected: Vec<u64> = sizes
            .iter()
            .scan(0, |e, s| {
                *e += s;
                Some(*e)
            })
            .collect();
        assert_eq!(cuts, expected[..25]);
    }

    #[test]
    fn variants_zeros_and_a_cut_at_exactly_min() {
        let data = lcg(1, 1_500_000);
        let small = Chunker::split(ChunkSizes { min: 4096, avg: 16384, max: 65536 }, &data);
        assert_eq!(small.len(), 106);
        assert_eq!(&small[..2], &[12_419, 16_894]);
        let fixed = Chunker::split(ChunkSizes { min: 65536, avg: 65536, max: 65536 }, &data);
        assert_eq!(fixed.len(), 23);
        assert_eq!(fixed[22], 58_208);
        let zeros = Chunker::split(ChunkSizes::default(), &vec![0u8; 1_049_576]);
        assert_eq!(zeros, [262_144, 262_144, 262_144, 262_144, 1000]);
        let mut tv4 = vec![0u8; 16_336];
        tv4.extend(lcg(19409, 48));
        tv4.extend(lcg(1, 100_000));
        assert_eq!(Chunker::split(ChunkSizes::default(), &tv4), [16_384, 100_000]);
        assert!(Chunker::split(ChunkSizes::default(), &[]).is_empty());
    }
}
