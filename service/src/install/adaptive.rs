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

use super::write::{ImageSource, check_read_back, open_device_rw};
use crate::config::SlotConfig;
use crate::error::{Error, Result, failed};
use crate::system::{SlotState, System};
use rota_bundle::manifest::Image;
use rota_bundle::squashfs::BundleFs;
use rota_bundle::squashfs::data::BlockMap;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

mod plan;
use plan::{Digests, Indexes, Planned};

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

/// The index file of a slot's current content: cached under its installed
/// image's digest (then `true`), else computed into `fresh` by reading the slot.
fn slot_index(cache_root: &Path, slot: &SlotConfig, installed: Option<&str>, fresh: &Path) -> Result<(PathBuf, bool)> {
    let size = std::fs::File::open(&slot.device)
        .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
        .map_err(|e| Error::Failed(format!("Failed to open '{}': {e}", slot.device.display())))?;
    // RAUC's bound: an index of at most 2^27 - 1 entries (below 4 GiB).
    if size / BLOCK > MAX_INDEX_ENTRIES {
        return failed(format!("image/partition size ({size}) is too large"));
    }
    if let Some(sha) = installed {
        let cached = slot_cache_dir(cache_root, slot).join(format!("hash-{sha}")).join(INDEX_NAME);
        if cached.is_file() {
            return Ok((cached, true));
        }
    }
    plan::hash_device(&slot.device, fresh).map_err(Error::Failed)?;
    Ok((fresh.to_path_buf(), false))
}

/// The most blocks a slot's hash index covers.
const MAX_INDEX_ENTRIES: u64 = 0x7ff_ffff;

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
    seed: Option<(File, &'a Path)>,
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

    /// Block `p` of the target or the seed into `buf`, if it really has digest `h`.
    fn local(&mut self, planned: Planned, h: &Digest32, buf: &mut [u8]) -> Result<bool> {
        let found = match (planned, &self.seed) {
            (Planned::Target(p), _) => Self::read_block(&self.target, self.target_path, p, buf)? && sha(buf) == *h,
            (Planned::Seed(p), Some((seed, path))) => Self::read_block(seed, path, p, buf)? && sha(buf) == *h,
            _ => false,
        };
        match planned {
            Planned::Target(_) if found => self.counts.from_target += 1,
            Planned::Seed(_) if found => self.counts.from_seed += 1,
            _ => {}
        }
        Ok(found)
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
/// `block-hash-index` and the system keeps a data directory; `installed`
/// is the digest of the image the slot held before this installation
/// started (its status is cleared while it is written). Returns whether it
/// did; on any error it logs a warning and returns `false`, and the caller
/// copies the image in full.
pub fn install(
    system: &System,
    slot: &SlotConfig,
    image: &Image,
    src: &ImageSource<'_>,
    installed: Option<&str>,
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
    match write(system, root, slot, image, fs, name, installed, &cancelled, progress) {
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
    installed: Option<&str>,
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
        // Work files next to the staged index, removed before it is kept.
        let work = staging.join("work");
        std::fs::create_dir_all(&work).map_err(|e| Error::io("Failed to create", &work, e))?;
        let (old, cached) = slot_index(root, slot, installed, &work.join("target.index"))
            .map_err(|e| e.context(&format!("failed to open target slot hash index for {}", slot.name)))?;
        let seed_slot = system.slots.iter().find(|s| s.config.class == slot.class && s.state == SlotState::Booted);
        let seed = match seed_slot {
            Some(s) => {
                let installed = system.load_status(s).sha256;
                let (index, _) = slot_index(root, &s.config, installed.as_deref(), &work.join("seed.index"))
                    .map_err(|e| e.context(&format!("failed to open active slot hash index for {}", s.config.name)))?;
                let file = File::open(&s.config.device)
                    .map_err(|e| Error::Failed(format!("Failed to open '{}': {e}", s.config.device.display())))?;
                Some((file, &s.config.device, index))
            }
            None => None,
        };
        let map = fs.block_map(name)?;
        if map.file_size() != size {
            return failed(format!("image '{name}' holds {} bytes, the manifest says {size}", map.file_size()));
        }
        // Plan: where each block comes from, and the squashfs blocks
        // holding image blocks the device lacks.
        let bs = map.block_size();
        if bs % BLOCK != 0 {
            return failed(format!("squashfs block size {bs} is not a multiple of {BLOCK}"));
        }
        let indexes = Indexes { image: &index_path, target: &old, seed: seed.as_ref().map(|(_, _, i)| i.as_path()) };
        let plan_path = work.join("plan");
        let needed = plan::make(&indexes, n, bs / BLOCK, plan::LOOKUP_BUDGET, &plan_path)
            .map_err(|e| Error::io("Failed to plan into", &plan_path, e))?;
        let mut planned = plan::Plan::open(&plan_path).map_err(|e| Error::io("Failed to read", &plan_path, e))?;
        let target = open_device_rw(&slot.device, size)?;
        let mut w = Writer {
            fs,
            map,
            target,
            target_path: &slot.device,
            seed: seed.map(|(f, p, _)| (f, p.as_path())),
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
                let source = planned.next_block().map_err(|e| Error::io("Failed to read", &plan_path, e))?;
                let zero = *h == ZERO_BLOCK;
                if (zero && current.iter().all(|b| *b == 0)) || (!zero && sha(current) == *h) {
                    w.counts.unchanged += 1;
                    continue;
                }
                if zero {
                    buf.fill(0);
                    w.counts.zeros += 1;
                } else if !w.local(source, h, &mut buf)? {
                    w.read_from_bundle(c, h, &mut buf)?;
                }
                w.target
                    .write_all_at(&buf, c * BLOCK)
                    .map_err(|e| Error::Failed(format!("Failed writing '{}': {e}", slot.device.display())))?;
            }
            progress((first + count) * BLOCK);
        }
        w.target.sync_all().map_err(|e| Error::io("Failed to sync", &slot.device, e))?;
        let reader = File::open(&slot.device).map_err(|e| Error::io("Failed to open", &slot.device, e))?;
        check_read_back(&reader, &slot.device, 0, size, digest)?;
        let c = &w.counts;
        tracing::info!(
            "Adaptive update of {}: {} of {n} blocks unchanged, {} from the target, {} from the seed, {} zero, {} from the bundle ({} bytes read from it); the target's index {}",
            slot.name,
            c.unchanged,
            c.from_target,
            c.from_seed,
            c.zeros,
            c.from_bundle,
            c.bundle_bytes,
            if cached { "kept from its last update" } else { "read from the slot" }
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(staging.join("work"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_block_digest() {
        assert_eq!(sha(&[0u8; 4096]), ZERO_BLOCK);
    }
}
