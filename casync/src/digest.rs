//! Chunk IDs (spec §3.3, §6.1): SHA-512/256 by default, SHA-256 when the
//! index's flags say so; written as 64 lowercase hex digits in stores.

use sha2::Digest as _;

/// A chunk ID: the digest of the uncompressed chunk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The ID as 64 lowercase hex digits (its name in a chunk store).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads 64 lowercase hex digits (upper case is refused, as casync does).
    pub fn from_hex(text: &str) -> Option<ChunkId> {
        if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut id = [0u8; 32];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(ChunkId(id))
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The hash that names chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestKind {
    /// SHA-512/256 (casync's default; flag bit `SHA512_256` set).
    Sha512_256,
    /// SHA-256 (`--digest=sha256`).
    Sha256,
}

impl DigestKind {
    /// The ID of `data`.
    pub fn digest(self, data: &[u8]) -> ChunkId {
        let mut id = [0u8; 32];
        match self {
            DigestKind::Sha512_256 => id.copy_from_slice(&sha2::Sha512_256::digest(data)),
            DigestKind::Sha256 => id.copy_from_slice(&sha2::Sha256::digest(data)),
        }
        ChunkId(id)
    }
}
