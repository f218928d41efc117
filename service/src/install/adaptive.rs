//! Adaptive updates with `block-hash-index` (spec §10.3): an image whose
//! bundle carries the SHA-256 of each of its 4 KiB blocks is put together
//! from blocks the device already has — in the target slot (where they are,
//! or elsewhere), in the booted slot of the same class, or earlier in the
//! new image — and only the rest is read from the bundle, so a streamed
//! install fetches just the squashfs blocks holding changed data.
//!
//! Every block taken from a slot is hashed again before use (slots may have
//! changed since their index was made), blocks already right are not
//! written, and the written image is read back from the medium and checked
//! against the manifest's digest. Any error leaves the caller to do a full
//! copy, as RAUC does.

use super::write::{ImageSource, open_device};
use crate::config::SlotConfig;
use crate::error::{Error, Result, failed};
use crate::system::{SlotState, System};
use rota_bundle::manifest::Image;
use rota_bundle::squashfs::BundleFs;
use rota_bundle::squashfs::data::BlockMap;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Bytes per indexed block.
const BLOCK: u64 = 4096;
/// Bits of a lookup key that hold the block number (spec: at most 0x7FFFFFF blocks).
const INDEX_BITS: u32 = 27;
/// SHA-256 of 4096 zero bytes: such blocks are written without any read.
const ZERO_BLOCK: [u8; 32] = [
    0xad, 0x7f, 0xac, 0xb2, 0x58, 0x6f, 0xc6, 0xe9, 0x66, 0xc0, 0x04, 0xd7, 0xd1, 0xd1, 0x6b, 0x02, 0x4f, 0x58, 0x05,
    0xff, 0x7c, 0xb4, 0x7c, 0x7a, 0x85, 0xda, 0xbd, 0x8b, 0x48, 0x89, 0x2c, 0xa7,
];
/// Blocks read from the target per step of the write pass.
const CHUNK_BLOCKS: u64 = 256;
/// Most squashfs blocks read from the bundle with one call.
const MAX_RUN_BLOCKS: u64 = 32;
/// Name of the index file, in the bundle (after the image name) and in the cache.
const INDEX_NAME: &str = "block-hash-index";

type Digest32 = [u8; 32];

fn sha(block: &[u8]) -> Digest32 {
    Sha256::digest(block).into()
}

/// Digests of a sequence of blocks, sorted for lookups: each key is the
/// digest's first bits above the block number; candidates are checked
/// against the full digest by hashing the block again.
struct Lookup(Vec<u64>);

impl Lookup {
    fn key_prefix(h: &Digest32) -> u64 {
        u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) >> INDEX_BITS
    }

    fn key(h: &Digest32, block: u64) -> u64 {
        (Self::key_prefix(h) << INDEX_BITS) | block
    }

    fn from_keys(mut keys: Vec<u64>) -> Lookup {
        keys.truncate(1 << INDEX_BITS);
        keys.sort_unstable();
        Lookup(keys)
    }

    /// Blocks whose digest may be `h`, in ascending order.
    fn candidates(&self, h: &Digest32) -> impl Iterator<Item = u64> + '_ {
        let lo = Self::key_prefix(h) << INDEX_BITS;
        let hi = lo | ((1 << INDEX_BITS) - 1);
        let start = self.0.partition_point(|k| *k < lo);
        self.0[start..].iter().take_while(move |k| **k <= hi).map(|k| k & ((1 << INDEX_BITS) - 1))
    }
}

/// The digests of an index file in block order, read as they are used (an
/// index holds 32 bytes per 4 KiB block: 64 MiB for an 8 GiB image).
struct Digests(BufReader<File>);

impl Digests {
    fn open(path: &Path) -> std::io::Result<Digests> {
        Ok(Digests(BufReader::with_capacity(1 << 16, File::open(path)?)))
    }
}

impl Iterator for Digests {
    type Item = std::io::Result<Digest32>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut h = [0u8; 32];
        match self.0.read_exact(&mut h) {
            Ok(()) => Some(Ok(h)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// A lookup over the digests of an index file.
fn index_lookup(path: &Path) -> std::io::Result<Lookup> {
    let digests: std::io::Result<Vec<u64>> =
        Digests::open(path)?.enumerate().map(|(i, h)| h.map(|h| Lookup::key(&h, i as u64))).collect();
    Ok(Lookup::from_keys(digests?))
}

/// A lookup over the digests of every whole 4 KiB block of `device`.
fn hash_device(device: &Path) -> Result<Lookup> {
    let f = File::open(device).map_err(|e| Error::Failed(format!("Failed to open '{}': {e}", device.display())))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut keys = Vec::new();
    let mut block = vec![0u8; BLOCK as usize];
    loop {
        match r.read_exact(&mut block) {
            Ok(()) => keys.push(Lookup::key(&sha(&block), keys.len() as u64)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Lookup::from_keys(keys)),
            Err(e) => return failed(format!("Failed to read '{}': {e}", device.display())),
        }
    }
}

/// The index of a slot: cached under its installed image's digest, else
/// computed by reading the slot.
fn slot_index(cache_root: &Path, slot: &SlotConfig, installed: Option<&str>) -> Result<Lookup> {
    if let Some(sha) = installed {
        let cached = slot_cache_dir(cache_root, slot).join(format!("hash-{sha}")).join(INDEX_NAME);
        if let Ok(lookup) = index_lookup(&cached) {
            tracing::debug!("using cached block-hash-index of {}", slot.name);
            return Ok(lookup);
        }
    }
    hash_device(&slot.device)
}

fn slot_cache_dir(cache_root: &Path, slot: &SlotConfig) -> PathBuf {
    cache_root.join(format!("slot.{}", slot.name))
}

/// What an adaptive write did, block by block.
#[derive(Debug, Default)]
struct Counts {
    unchanged: u64,
    zeros: u64,
    from_target: u64,
    from_seed: u64,
    from_bundle: u64,
    bundle_bytes: u64,
}

/// The squashfs blocks of the image read from the bundle last.
struct Run {
    first: u64,
    data: Vec<u8>,
}

/// One adaptive write of an image into a slot.
struct Writer<'a> {
    fs: &'a BundleFs,
    map: BlockMap,
    target: File,
    target_path: &'a Path,
    seed: Option<(File, Lookup)>,
    old: Lookup,
    image: Lookup,
    /// Squashfs blocks the plan expects to read from the bundle.
    needed: Vec<bool>,
    run: Option<Run>,
    counts: Counts,
}

impl Writer<'_> {
    fn read_block(file: &File, path: &Path, block: u64, buf: &mut [u8]) -> Result<bool> {
        match file.read_exact_at(buf, block * BLOCK) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => failed(format!("Failed to read '{}': {e}", path.display())),
        }
    }

    /// A block with digest `h` from the device: the new image's earlier
    /// blocks (already written), the target's old content after `c`, or
    /// the seed slot; `None` when none of them really holds it.
    fn local(&mut self, c: u64, h: &Digest32, buf: &mut [u8]) -> Result<bool> {
        let earlier: Vec<u64> = self.image.candidates(h).filter(|j| *j < c).collect();
        let later: Vec<u64> = self.old.candidates(h).filter(|p| *p > c).collect();
        for p in earlier.into_iter().chain(later) {
            if Self::read_block(&self.target, self.target_path, p, buf)? && sha(buf) == *h {
                self.counts.from_target += 1;
                return Ok(true);
            }
        }
        if let Some((seed, lookup)) = &self.seed {
            for p in lookup.candidates(h) {
                if seed.read_exact_at(buf, p * BLOCK).is_ok() && sha(buf) == *h {
                    self.counts.from_seed += 1;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Block `c` of the image from the bundle, reading the squashfs block
    /// holding it together with the following ones the plan also needs.
    fn read_from_bundle(&mut self, c: u64, h: &Digest32, buf: &mut [u8]) -> Result<()> {
        let bs = self.map.block_size();
        let s = c * BLOCK / bs;
        let held = self.run.as_ref().is_some_and(|r| s >= r.first && (s - r.first) * bs < r.data.len() as u64);
        if !held {
            let total = self.map.file_size().div_ceil(bs);
            let mut count = 1;
            while s + count < total && count < MAX_RUN_BLOCKS && self.needed[(s + count) as usize] {
                count += 1;
            }
            let data = self.fs.read_blocks(&self.map, s, count)?;
            self.counts.bundle_bytes += self.map.stored_bytes(s, count);
            self.run = Some(Run { first: s, data });
        }
        let run = self.run.as_ref().expect("run was just read");
        let at = (c * BLOCK - run.first * bs) as usize;
        buf.copy_from_slice(&run.data[at..at + BLOCK as usize]);
        if sha(buf) != *h {
            return failed(format!("block {c} of the image does not match its block-hash-index"));
        }
        self.counts.from_bundle += 1;
        Ok(())
    }
}

/// Why an image is not installed adaptively, or `None` when it can be.
fn unsuitable(image: &Image, data_dir: Option<&Path>) -> Option<&'static str> {
    if !image.adaptive.iter().any(|m| m == INDEX_NAME) {
        return Some("");
    }
    if data_dir.is_none() {
        return Some("no data-directory configured");
    }
    if image.compression().is_some() {
        return Some("image is stream-compressed");
    }
    match image.size {
        Some(size) if size > 0 && size % BLOCK == 0 => None,
        _ => Some("image size is not a non-zero multiple of 4096"),
    }
}

/// Installs `image` into `slot` adaptively when the image has a
/// `block-hash-index` and the system keeps a data directory. Returns
/// whether it did; on any error it logs a warning and returns `false`, and
/// the caller copies the image in full.
pub fn install(
    system: &System,
    slot: &SlotConfig,
    image: &Image,
    src: &ImageSource<'_>,
    progress: &mut dyn FnMut(u64),
) -> bool {
    let data_dir = system.config.system.data_directory.as_deref();
    match unsuitable(image, data_dir) {
        Some("") => return false,
        Some(why) => {
            tracing::info!("Adaptive update of {} not possible ({why}): copying the full image", slot.name);
            return false;
        }
        None => {}
    }
    let (fs, name, check) = match src {
        ImageSource::Bundle(fs, p) => (*fs, *p, None),
        ImageSource::Guarded(ImageSource::Bundle(fs, p), control) => (*fs, *p, Some(*control)),
        _ => return false,
    };
    let cancelled = || check.map_or(Ok(()), |c| c.check());
    let root = data_dir.expect("checked above");
    match write(system, root, slot, image, fs, name, &cancelled, progress) {
        Ok(()) => true,
        Err(e) => {
            // A cancelled install is not continued with a full copy.
            if cancelled().is_err() {
                return false;
            }
            tracing::warn!("Continuing after adaptive mode error: {e}");
            false
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write(
    system: &System,
    root: &Path,
    slot: &SlotConfig,
    image: &Image,
    fs: &BundleFs,
    name: &str,
    cancelled: &dyn Fn() -> Result<()>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let size = image.size.expect("checked by unsuitable");
    let digest = image.sha256.as_deref().unwrap_or_default();
    let n = size / BLOCK;
    let dir = slot_cache_dir(root, slot);
    let staging = dir.join(format!("hash-{digest}.new"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| Error::io("Failed to create", &staging, e))?;
    let result = (|| {
        // The bundle's index, kept aside: it becomes the target's cache.
        let index_path = staging.join(INDEX_NAME);
        let mut f = File::create(&index_path).map_err(|e| Error::io("Failed to create", &index_path, e))?;
        fs.copy_file(&format!("{name}.{INDEX_NAME}"), &mut f)?;
        f.flush().map_err(|e| Error::io("Failed to write", &index_path, e))?;
        let entries =
            std::fs::metadata(&index_path).map_err(|e| Error::io("Failed to read", &index_path, e))?.len() / 32;
        if entries != n {
            return failed(format!("block-hash-index has {entries} entries for {n} blocks"));
        }
        let read_err = |e| Error::io("Failed to read", &index_path, e);
        let wanted = || Digests::open(&index_path).map_err(read_err);
        let target_slot = system.slots.iter().find(|s| s.config.name == slot.name);
        let installed = target_slot.map(|s| system.load_status(s)).and_then(|st| st.sha256);
        let old = slot_index(root, slot, installed.as_deref())?;
        let seed = match system.slots.iter().find(|s| s.config.class == slot.class && s.state == SlotState::Booted) {
            Some(s) => {
                let installed = system.load_status(s).sha256;
                let lookup = slot_index(root, &s.config, installed.as_deref())?;
                let file = File::open(&s.config.device)
                    .map_err(|e| Error::Failed(format!("Failed to open '{}': {e}", s.config.device.display())))?;
                Some((file, lookup))
            }
            None => None,
        };
        let image_lookup = index_lookup(&index_path).map_err(read_err)?;
        let map = fs.block_map(name)?;
        if map.file_size() != size {
            return failed(format!("image '{name}' holds {} bytes, the manifest says {size}", map.file_size()));
        }
        // Plan: the squashfs blocks holding image blocks the device lacks.
        let bs = map.block_size();
        let mut needed = vec![false; map.file_size().div_ceil(bs) as usize];
        let known = |l: &Lookup, h: &Digest32| l.candidates(h).next().is_some();
        for (c, h) in wanted()?.enumerate() {
            let h = &h.map_err(read_err)?;
            let local = *h == ZERO_BLOCK
                || known(&old, h)
                || seed.as_ref().is_some_and(|(_, l)| known(l, h))
                || image_lookup.candidates(h).any(|j| j < c as u64);
            if !local {
                needed[(c as u64 * BLOCK / bs) as usize] = true;
            }
        }
        let target = open_device(&slot.device, size)?;
        let mut w = Writer {
            fs,
            map,
            target,
            target_path: &slot.device,
            seed,
            old,
            image: image_lookup,
            needed,
            run: None,
            counts: Counts::default(),
        };
        let reader = File::open(&slot.device).map_err(|e| Error::io("Failed to open", &slot.device, e))?;
        let mut chunk = vec![0u8; (CHUNK_BLOCKS * BLOCK) as usize];
        let mut buf = vec![0u8; BLOCK as usize];
        let mut digests = wanted()?;
        for first in (0..n).step_by(CHUNK_BLOCKS as usize) {
            cancelled()?;
            let count = CHUNK_BLOCKS.min(n - first);
            let old_bytes = &mut chunk[..(count * BLOCK) as usize];
            let have = read_upto(&reader, old_bytes, first * BLOCK)
                .map_err(|e| Error::Failed(format!("Failed to read '{}': {e}", slot.device.display())))?;
            old_bytes[have..].fill(0xff);
            for c in first..first + count {
                let h = &digests
                    .next()
                    .ok_or_else(|| Error::Failed("block-hash-index ended early".into()))?
                    .map_err(read_err)?;
                let at = ((c - first) * BLOCK) as usize;
                let current = &old_bytes[at..at + BLOCK as usize];
                let zero = *h == ZERO_BLOCK;
                if (zero && current.iter().all(|b| *b == 0)) || (!zero && sha(current) == *h) {
                    w.counts.unchanged += 1;
                    continue;
                }
                if zero {
                    buf.fill(0);
                    w.counts.zeros += 1;
                } else if !w.local(c, h, &mut buf)? {
                    w.read_from_bundle(c, h, &mut buf)?;
                }
                w.target
                    .write_all_at(&buf, c * BLOCK)
                    .map_err(|e| Error::Failed(format!("Failed writing '{}': {e}", slot.device.display())))?;
            }
            progress((first + count) * BLOCK);
        }
        w.target.sync_all().map_err(|e| Error::io("Failed to sync", &slot.device, e))?;
        let back = read_back(&w.target, &slot.device, size)?;
        if back != digest {
            return failed(format!(
                "Read-back check of '{}' failed: sha256 {back} instead of {digest}",
                slot.device.display()
            ));
        }
        let c = &w.counts;
        tracing::info!(
            "Adaptive update of {}: {} of {n} blocks unchanged, {} from the target, {} from the seed, {} zero, {} from the bundle ({} bytes read from it)",
            slot.name,
            c.unchanged,
            c.from_target,
            c.from_seed,
            c.zeros,
            c.from_bundle,
            c.bundle_bytes
        );
        Ok(())
    })();
    match result {
        Ok(()) => {
            // The bundle's index now describes the slot: keep it as its cache.
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.path() != staging {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
            let cache = dir.join(format!("hash-{digest}"));
            std::fs::rename(&staging, &cache).map_err(|e| Error::io("Failed to store", &cache, e))?;
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Reads into `buf` from `offset` until it is full or the file ends;
/// returns the bytes read.
fn read_upto(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// SHA-256 of the first `size` bytes of `file`, read from the medium (its
/// cached pages dropped first).
fn read_back(file: &File, path: &Path, size: u64) -> Result<String> {
    // SAFETY: advisory call on an open descriptor.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, size as libc::off_t, libc::POSIX_FADV_DONTNEED) };
    let reader = File::open(path).map_err(|e| Error::io("Failed to open", path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, reader.take(size));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let k = r.read(&mut buf).map_err(|e| Error::io("Failed to read back", path, e))?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        total += k as u64;
    }
    if total != size {
        return failed(format!("Read-back check of '{}' failed: {total} of {size} bytes", path.display()));
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_block_digest() {
        assert_eq!(sha(&[0u8; 4096]), ZERO_BLOCK);
    }

    #[test]
    fn lookup_finds_every_block_of_a_digest() {
        let l = Lookup::from_keys((0u8..50).map(|i| Lookup::key(&sha(&[i % 7; 16]), u64::from(i))).collect());
        let found: Vec<u64> = l.candidates(&sha(&[3u8; 16])).collect();
        assert_eq!(found, vec![3, 10, 17, 24, 31, 38, 45]);
        assert_eq!(l.candidates(&sha(b"absent")).count(), 0);
    }
}
