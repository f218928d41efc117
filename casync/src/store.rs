//! Chunk stores (`.castr`, spec §6): `<store>/<first 4 hex>/<id>.cacnk`,
//! each chunk compressed on its own (zstd by default; xz and gzip read and
//! written too, told apart by their magic), named by the ID of its
//! uncompressed bytes. Every chunk read is decompressed and hashed again;
//! one that does not match its name is refused.

use crate::digest::{ChunkId, DigestKind};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// How chunks are compressed when written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd at level 3, as casync writes.
    Zstd,
    /// xz.
    Xz,
    /// gzip.
    Gzip,
}

/// Why a chunk could not be had.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store has no such chunk.
    #[error("chunk {0} is missing from the store")]
    Missing(ChunkId),
    /// The chunk's bytes do not hash to its name, or do not decompress.
    #[error("chunk {id} is damaged: {reason}")]
    Corrupt {
        /// The chunk.
        id: ChunkId,
        /// What is wrong.
        reason: String,
    },
    /// A remote store could not deliver the chunk (after its own retries).
    #[error("chunk {id} could not be fetched: {reason}")]
    Fetch {
        /// The chunk.
        id: ChunkId,
        /// Why not.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("chunk store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Where an extraction gets the chunks no seed holds: a local directory
/// ([`LocalStore`]) or a remote store the caller provides.
pub trait ChunkSource: Sync {
    /// The chunk `id`, decompressed and checked against its ID; `max`
    /// bounds its size.
    fn get(&self, id: &ChunkId, digest: DigestKind, max: u64) -> Result<Vec<u8>, StoreError>;

    /// Says that these chunks will be asked for next, in this order (each
    /// once): a remote store starts fetching them so that several are in
    /// flight. Local stores ignore it.
    fn prefetch(&self, _ids: &[ChunkId]) {}
}

/// The bytes of chunk `id` from its stored form (compressed, or plain when
/// `compressed` is false), checked against the ID: what every store does
/// with a chunk file it read or fetched.
pub fn unpack(
    id: &ChunkId,
    stored: &[u8],
    compressed: bool,
    digest: DigestKind,
    max: u64,
) -> Result<Vec<u8>, StoreError> {
    let data = if compressed {
        decompress(stored, max).map_err(|e| StoreError::Corrupt { id: *id, reason: e.to_string() })?
    } else if stored.len() as u64 > max {
        return Err(StoreError::Corrupt { id: *id, reason: format!("larger than {max} bytes") });
    } else {
        stored.to_vec()
    };
    let got = digest.digest(&data);
    if got != *id {
        return Err(StoreError::Corrupt { id: *id, reason: format!("its bytes hash to {got}") });
    }
    Ok(data)
}

/// The path of chunk `id` inside a store: `<first 4 hex>/<id>.cacnk`
/// (relative; a URL path for remote stores).
pub fn chunk_name(id: &ChunkId) -> String {
    let hex = id.to_hex();
    format!("{}/{hex}.cacnk", &hex[..4])
}

/// A chunk store in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];

/// Decompresses a stored chunk by its magic, expecting at most `limit` bytes.
pub fn decompress(data: &[u8], limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let reader: Box<dyn Read + '_> = if data.starts_with(ZSTD_MAGIC) {
        Box::new(zstd::stream::read::Decoder::new(data)?)
    } else if data.starts_with(XZ_MAGIC) {
        Box::new(liblzma::read::XzDecoder::new(data))
    } else if data.starts_with(GZIP_MAGIC) {
        Box::new(flate2::read::GzDecoder::new(data))
    } else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "neither zstd, xz nor gzip"));
    };
    reader.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {limit} bytes")));
    }
    Ok(out)
}

/// Compresses a chunk for a store.
pub fn compress(data: &[u8], how: Compression) -> io::Result<Vec<u8>> {
    match how {
        Compression::Zstd => zstd::bulk::compress(data, 3),
        Compression::Xz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(data)?;
            e.finish()
        }
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data)?;
            e.finish()
        }
    }
}

impl LocalStore {
    /// The store in `dir` (made when the first chunk is written).
    pub fn new(dir: impl Into<PathBuf>) -> LocalStore {
        LocalStore { dir: dir.into() }
    }

    /// The file of a compressed chunk.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(chunk_name(id))
    }

    /// The chunk `id`, checked against its name; `max` bounds its size.
    /// An uncompressed `<id>` file is read when there is no `.cacnk`.
    pub fn get(&self, id: &ChunkId, digest: DigestKind, max: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.chunk_path(id);
        let io = |path: &Path, source| StoreError::Io { path: path.to_path_buf(), source };
        match std::fs::read(&path) {
            Ok(stored) => unpack(id, &stored, true, digest, max),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let plain = path.with_extension("");
                match std::fs::read(&plain) {
                    Ok(d) => unpack(id, &d, false, digest, max),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::Missing(*id)),
                    Err(e) => Err(io(&plain, e)),
                }
            }
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Stores `data` as chunk `id` unless it is there already (then it is
    /// reused); written to a temporary file and linked into place, read-only.
    pub fn put(&self, id: &ChunkId, data: &[u8], how: Compression) -> Result<bool, StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.chunk_path(id);
        if path.exists() {
            return Ok(false);
        }
        let io = |path: &Path, source| StoreError::Io { path: path.to_path_buf(), source };
        let sub = path.parent().expect("chunk files live in a subdirectory");
        std::fs::create_dir_all(sub).map_err(|e| io(sub, e))?;
        let stored = compress(data, how).map_err(|e| io(&path, e))?;
        let mut tmp = tempfile_in(sub).map_err(|e| io(sub, e))?;
        tmp.1.write_all(&stored).map_err(|e| io(&tmp.0, e))?;
        tmp.1.set_permissions(std::fs::Permissions::from_mode(0o444)).map_err(|e| io(&tmp.0, e))?;
        drop(tmp.1);
        let linked = std::fs::hard_link(&tmp.0, &path);
        let _ = std::fs::remove_file(&tmp.0);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(&path, e)),
        }
    }
}

impl ChunkSource for LocalStore {
    fn get(&self, id: &ChunkId, digest: DigestKind, max: u64) -> Result<Vec<u8>, StoreError> {
        LocalStore::get(self, id, digest, max)
    }
}

/// A new file `<random>.tmp` in `dir`.
fn tempfile_in(dir: &Path) -> io::Result<(PathBuf, std::fs::File)> {
    for attempt in 0u32..100 {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let name = format!(".{:x}{:x}{attempt}.tmp", std::process::id(), nanos);
        let path = dir.join(name);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::lcg;

    fn store(name: &str) -> (PathBuf, LocalStore) {
        let dir = std::env::temp_dir().join(format!("casync-rs-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (dir.clone(), LocalStore::new(dir))
    }

    #[test]
    fn chunks_round_trip_in_every_compression_and_are_reused() {
        let (dir, s) = store("roundtrip");
        let data = lcg(3, 70_000);
        for how in [Compression::Zstd, Compression::Xz, Compression::Gzip] {
            let mut d = data.clone();
            d[0] = how as u8;
            let id = DigestKind::Sha512_256.digest(&d);
            assert!(s.put(&id, &d, how).unwrap());
            assert!(!s.put(&id, &d, how).unwrap(), "reused");
            assert_eq!(s.get(&id, DigestKind::Sha512_256, 1 << 20).unwrap(), d);
            let meta = std::fs::metadata(s.chunk_path(&id)).unwrap();
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o444);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_damaged_and_oversized_chunks_are_refused() {
        let (dir, s) = store("faults");
        let data = lcg(4, 10_000);
        let id = DigestKind::Sha512_256.digest(&data);
        assert!(matches!(s.get(&id, DigestKind::Sha512_256, 1 << 20), Err(StoreError::Missing(_))));
        s.put(&id, &data, Compression::Zstd).unwrap();
        // Valid zstd of other bytes under this name.
        let path = s.chunk_path(&id);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, compress(&lcg(5, 10_000), Compression::Zstd).unwrap()).unwrap();
        let e = s.get(&id, DigestKind::Sha512_256, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("is damaged: its bytes hash to"), "{e}");
        std::fs::write(&path, b"garbage").unwrap();
        let e = s.get(&id, DigestKind::Sha512_256, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("neither zstd, xz nor gzip"), "{e}");
        std::fs::write(&path, compress(&data, Compression::Zstd).unwrap()).unwrap();
        let e = s.get(&id, DigestKind::Sha512_256, 9_999).unwrap_err();
        assert!(e.to_string().contains("larger than 9999 bytes"), "{e}");
        // An uncompressed chunk file is read when there is no .cacnk.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(path.with_extension(""), &data).unwrap();
        assert_eq!(s.get(&id, DigestKind::Sha512_256, 1 << 20).unwrap(), data);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
