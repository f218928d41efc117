//! `.caibx` / `.caidx` index files (spec §3): a 48-byte INDEX record
//! (feature flags and chunk sizes), a TABLE header, one 40-byte item per
//! chunk (its end offset and ID) and a 40-byte tail. Read with casync's
//! checks, written byte for byte as casync writes them.

use crate::chunker::{ChunkSizes, SIZE_LIMIT};
use crate::digest::{ChunkId, DigestKind};
use std::io::{self, Read, Write};

/// Type magic of the INDEX record.
pub const INDEX_MAGIC: u64 = 0x9682_4d9c_7b12_9ff9;
/// Type magic of the TABLE record.
pub const TABLE_MAGIC: u64 = 0xe75b_9e11_2f17_417d;
/// Marker closing the table.
pub const TABLE_TAIL_MARKER: u64 = 0x4b4f_050e_5549_ecd1;
/// Feature flag: chunk IDs are SHA-512/256 (else SHA-256).
pub const FLAG_SHA512_256: u64 = 0x2000_0000_0000_0000;
/// Feature flags `casync make` writes into a `.caibx` (exclude-nodump,
/// exclude-file, SHA-512/256).
pub const BLOB_FLAGS: u64 = 0xB000_0000_0000_0000;

/// The feature flags `casync make` writes into a `.caibx` with IDs by `digest`.
pub fn blob_flags(digest: DigestKind) -> u64 {
    match digest {
        DigestKind::Sha512_256 => BLOB_FLAGS,
        DigestKind::Sha256 => BLOB_FLAGS & !FLAG_SHA512_256,
    }
}

/// One chunk of the indexed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexItem {
    /// Where it starts in the stream.
    pub offset: u64,
    /// Its length.
    pub size: u64,
    /// Its ID.
    pub id: ChunkId,
}

/// An index: flags, chunk sizes and the chunks in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Feature flags (§4); for blobs [`BLOB_FLAGS`] or the SHA-256 variant.
    pub flags: u64,
    /// The chunker parameters the stream was cut with.
    pub sizes: ChunkSizes,
    /// The chunks.
    pub items: Vec<IndexItem>,
}

/// Why an index cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Reading failed.
    #[error("reading the index: {0}")]
    Io(#[from] io::Error),
    /// The bytes are no valid index.
    #[error("invalid index: {0}")]
    Invalid(String),
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Index {
    /// The hash naming this index's chunks.
    pub fn digest_kind(&self) -> DigestKind {
        if self.flags & FLAG_SHA512_256 != 0 { DigestKind::Sha512_256 } else { DigestKind::Sha256 }
    }

    /// The length of the indexed stream.
    pub fn stream_size(&self) -> u64 {
        self.items.last().map_or(0, |i| i.offset + i.size)
    }

    /// Reads an index from `r`, with casync's checks (§3.4): record sizes
    /// and magics, known and normalised feature flags (§4.3), chunk sizes in range, end offsets rising, no chunk over
    /// max, a well-formed tail and nothing after it.
    pub fn read(mut r: impl Read) -> Result<Index, IndexError> {
        let bad = |m: String| IndexError::Invalid(m);
        let mut head = [0u8; 64];
        r.read_exact(&mut head).map_err(|e| bad(format!("too short for its header ({e})")))?;
        if u64_at(&head, 0) != 48 || u64_at(&head, 8) != INDEX_MAGIC {
            return Err(bad("no INDEX record at the start".into()));
        }
        let flags = crate::flags::check(u64_at(&head, 16)).map_err(|e| bad(e.to_string()))?;
        let sizes = ChunkSizes { min: u64_at(&head, 24), avg: u64_at(&head, 32), max: u64_at(&head, 40) };
        let sizes = sizes.checked().map_err(|e| bad(e.to_string()))?;
        if u64_at(&head, 48) != u64::MAX || u64_at(&head, 56) != TABLE_MAGIC {
            return Err(bad("no TABLE record after the INDEX record".into()));
        }
        let mut items = Vec::new();
        let mut end = 0u64;
        let mut rec = [0u8; 40];
        loop {
            r.read_exact(&mut rec).map_err(|e| bad(format!("table ends without its tail ({e})")))?;
            let n = items.len() as u64;
            let is_tail = u64_at(&rec, 32) == TABLE_TAIL_MARKER
                && u64_at(&rec, 0) == 0
                && u64_at(&rec, 8) == 0
                && u64_at(&rec, 16) == 48
                && u64_at(&rec, 24) == 16 + 40 * n + 40;
            if is_tail {
                break;
            }
            let item_end = u64_at(&rec, 0);
            if item_end <= end {
                return Err(bad(format!("chunk {n} ends at {item_end}, not after {end}")));
            }
            if item_end - end > sizes.max.min(SIZE_LIMIT) {
                return Err(bad(format!("chunk {n} is {} bytes, more than the maximum {}", item_end - end, sizes.max)));
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(&rec[8..40]);
            items.push(IndexItem { offset: end, size: item_end - end, id: ChunkId(id) });
            end = item_end;
        }
        let mut extra = [0u8; 1];
        if r.read(&mut extra)? != 0 {
            return Err(bad("bytes after the table's tail".into()));
        }
        Ok(Index { flags, sizes, items })
    }

    /// Writes the index as casync does.
    pub fn write(&self, mut w: impl Write) -> io::Result<()> {
        let mut out = Vec::with_capacity(104 + 40 * self.items.len());
        for v in [48, INDEX_MAGIC, self.flags, self.sizes.min, self.sizes.avg, self.sizes.max, u64::MAX, TABLE_MAGIC] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for item in &self.items {
            out.extend_from_slice(&(item.offset + item.size).to_le_bytes());
            out.extend_from_slice(&item.id.0);
        }
        let table_size = 16 + 40 * self.items.len() as u64 + 40;
        for v in [0, 0, 48, table_size, TABLE_TAIL_MARKER] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&out)
    }

    /// Cuts `data` with `sizes` and names its chunks: the `.caibx` `casync make` writes.
    pub fn of_blob(data: &[u8], sizes: ChunkSizes, digest: DigestKind) -> Index {
        let flags = blob_flags(digest);
        let mut offset = 0u64;
        let items = crate::chunker::Chunker::split(sizes, data)
            .into_iter()
            .map(|size| {
                let chunk = &data[offset as usize..(offset + size) as usize];
                let item = IndexItem { offset, size, id: digest.digest(chunk) };
                offset += size;
                item
            })
            .collect();
        Index { flags, sizes, items }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::lcg;
    use sha2::Digest;

    fn bytes(index: &Index) -> Vec<u8> {
        let mut out = Vec::new();
        index.write(&mut out).unwrap();
        out
    }

    fn sha256(b: &[u8]) -> String {
        hex::encode(sha2::Sha256::digest(b))
    }

    #[test]
    fn blob_indexes_are_byte_identical_to_casyncs() {
        let tv1 = lcg(1, 1_500_000);
        let i = Index::of_blob(&tv1, ChunkSizes::default(), DigestKind::Sha512_256);
        assert_eq!(i.items[0].id.to_hex(), "9d205608013fdab78a22d3fe154ec509385fef2f3972e864b5a7a567afc15323");
        assert_eq!(i.items[25].id.to_hex(), "781d49309e694dfc248b5b5797d2b1ad72c903baefd2d0bc2c03ca330089313c");
        let b = bytes(&i);
        assert_eq!(b.len(), 1144);
        assert_eq!(sha256(&b), "9537b0bc65861a7971d826d9a7ebbeaa6757a0914df16e5e6b8cd5130eb5d0a8");
        let s = Index::of_blob(&tv1, ChunkSizes::default(), DigestKind::Sha256);
        assert_eq!(s.items[0].id.to_hex(), "4e0b464f0009e27af0591a3a8a29ba1f1dc0b70fa9ecb0aefface8db927dee69");
        assert_eq!(sha256(&bytes(&s)), "ad3c02d15fc87b7b7e06ed151db5caab06902adc67f3a2f11f298dd49c9ac36d");
        let small = Index::of_blob(&tv1, ChunkSizes { min: 4096, avg: 16384, max: 65536 }, DigestKind::Sha512_256);
        assert_eq!(sha256(&bytes(&small)), "0bf5e1dba36ead9ff23eec0e7f5b5be6476737c4beedc99e0836a74b2051dc42");
        let fixed = Index::of_blob(&tv1, ChunkSizes { min: 65536, avg: 65536, max: 65536 }, DigestKind::Sha512_256);
        assert_eq!(sha256(&bytes(&fixed)), "28663d591b266903c4a77cecb0435188260812b2c23c67412458376a966f72e3");
        let zeros = Index::of_blob(&vec![0u8; 1_049_576], ChunkSizes::default(), DigestKind::Sha512_256);
        assert_eq!(sha256(&bytes(&zeros)), "0c4a25f6da7c12ada8674ab2e829cf54e713cac6e5853f3e114a8b414c46e2a0");
        let mut tv2 = tv1[..300_000].to_vec();
        tv2.extend(lcg(2, 1000));
        tv2.extend(&tv1[300_000..]);
        let i2 = Index::of_blob(&tv2, ChunkSizes::default(), DigestKind::Sha512_256);
        assert_eq!(sha256(&bytes(&i2)), "9c67c517ee20eded02e247b6204c7a184aa3464a325261eba1d63a6449f24d14");
        let new: Vec<_> = i2.items.iter().filter(|x| !i.items.iter().any(|y| y.id == x.id)).collect();
        assert_eq!(new.len(), 1, "one new chunk after an insertion");
        let mut tv4 = vec![0u8; 16_336];
        tv4.extend(lcg(19409, 48));
        tv4.extend(lcg(1, 100_000));
        let i4 = Index::of_blob(&tv4, ChunkSizes::default(), DigestKind::Sha512_256);
        assert_eq!(sha256(&bytes(&i4)), "5d342eb7c2b1db53314d5d16e954ee6fbd430d6acb0f429de57fa3c0a1e696a7");
        let empty = bytes(&Index::of_blob(&[], ChunkSizes::default(), DigestKind::Sha512_256));
        assert_eq!(empty.len(), 104);
        assert_eq!(Index::read(&empty[..]).unwrap().items.len(), 0);
    }

    #[test]
    fn reading_round_trips_and_refuses_what_casync_refuses() {
        let i = Index::of_blob(&lcg(1, 300_000), ChunkSizes::default(), DigestKind::Sha512_256);
        let b = bytes(&i);
        assert_eq!(Index::read(&b[..]).unwrap(), i);
        assert_eq!(Index::read(&b[..]).unwrap().stream_size(), 300_000);
        let err = |b: &[u8]| Index::read(b).unwrap_err().to_string();
        assert!(err(&b[..b.len() - 1]).contains("without its tail"));
        let mut extra = b.clone();
        extra.push(0);
        assert!(err(&extra).contains("after the table's tail"));
        let mut magic = b.clone();
        magic[8] ^= 1;
        assert!(err(&magic).contains("no INDEX record"));
        let mut order = b.clone();
        // Second item ends where the first does.
        let first_end = order[64..72].to_vec();
        order[64 + 40..64 + 48].copy_from_slice(&first_end);
        assert!(err(&order).contains("not after"), "{}", err(&order));
        let mut sizes = b.clone();
        sizes[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(err(&sizes).contains("invalid chunk sizes"));
        let mut flags = b.clone();
        // 16- and 32-bit uids together: not casync's normal form.
        flags[16..24].copy_from_slice(&(BLOB_FLAGS | 3).to_le_bytes());
        assert!(err(&flags).contains("are not normalised"), "{}", err(&flags));
        flags[16..24].copy_from_slice(&(BLOB_FLAGS | 1 << 40).to_le_bytes());
        assert!(err(&flags).contains("unknown feature flags"), "{}", err(&flags));
        let mut big = b;
        // First chunk longer than max (256 KiB).
        big[64..72].copy_from_slice(&(300_000u64).to_le_bytes());
        assert!(err(&big).contains("more than the maximum"), "{}", err(&big));
    }
}
