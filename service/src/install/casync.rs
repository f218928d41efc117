//! casync blob images (`*.caibx`, casync-format spec §8.3, §10): the image
//! is reassembled from its index instead of read from the bundle. Each
//! chunk comes from a seed — the booted slot of the same class, or the old
//! content of the target where it lies at or after the write position — or
//! else from the chunk store (next to the bundle, or `[casync] storepath`;
//! a local directory or HTTP(S) through the range reader's client, several
//! chunks in flight). Every chunk is checked against its ID before it is
//! written; the reassembled stream then goes through the same write path as
//! any image (SHA-256 and size against the manifest, read-back, status).
//! No `casync` or `desync` process is involved, so `[casync] install-args`,
//! `tmppath` and `use-desync` have nothing to configure.

use crate::error::{Error, Result};
use crate::system::{SlotState, System};
use casync::blob::{self, Stats};
use casync::index::Index;
use casync::seed::Seed;
use rota_bundle::castore::{Store, store_location};
use rota_bundle::manifest::{Image, ImageType};
use rota_bundle::source::http::HttpOptions;
use rota_bundle::squashfs::BundleFs;
use std::io::Write;
use std::sync::Mutex;

/// Where an installation's chunk store is and how to reach it.
#[derive(Clone)]
pub struct StoreSetup {
    /// Path or URL of the store.
    pub location: String,
    /// HTTP options of the bundle's own requests (TLS, headers, cancellation).
    pub http: HttpOptions,
}

impl StoreSetup {
    /// The store for the bundle at `bundle` (path or URL) on `system`.
    pub fn new(system: &System, bundle: &str, http: HttpOptions) -> StoreSetup {
        StoreSetup { location: store_location(bundle, system.config.casync.storepath.as_deref()), http }
    }
}

/// Whether `image` is a casync blob index.
pub fn is_blob_index(image: &Image) -> bool {
    matches!(
        image.image_type(),
        Some(
            ImageType::RawCaibx
                | ImageType::Ext4Caibx
                | ImageType::VfatCaibx
                | ImageType::UbifsCaibx
                | ImageType::SquashfsCaibx
        )
    )
}

/// A blob image ready to be written: its index, store and seeds.
pub struct BlobImage {
    name: String,
    location: String,
    index: Index,
    store: Store,
    seeds: Vec<Seed>,
    stats: Mutex<Stats>,
}

/// Reads a seed, or says why it is not used (a seed only saves downloads).
fn seed(path: &std::path::Path, index: &Index, output: bool) -> Option<Seed> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).ok()?;
    if meta.file_type().is_char_device() {
        tracing::info!("Cannot use {} as seed device (character device)", path.display());
        return None;
    }
    let (sizes, digest) = (index.sizes, index.digest_kind());
    let r = if output { Seed::open_output(path, sizes, digest) } else { Seed::open(path, sizes, digest) };
    match r {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("Not seeding from {}: {e}", path.display());
            None
        }
    }
}

impl BlobImage {
    /// Opens image `name` of the bundle `fs` for slot `slot` (index into
    /// `system.slots`): reads and checks the index, opens the store and
    /// reads the seeds (both at once).
    pub fn open(system: &System, fs: &BundleFs, name: &str, slot: usize, setup: &StoreSetup) -> Result<BlobImage> {
        let bytes = fs.read_file(name).map_err(|e| Error::Failed(format!("Failed to read '{name}': {e}")))?;
        let index =
            Index::read(&bytes[..]).map_err(|e| Error::Failed(format!("Invalid casync index '{name}': {e}")))?;
        let store = Store::open(&setup.location, &setup.http, index.sizes.max)
            .map_err(|e| Error::Failed(format!("Failed to open casync store '{}': {e}", setup.location)))?;
        let target = &system.slots[slot].config;
        let booted = system
            .slots
            .iter()
            .find(|s| s.config.class == target.class && matches!(s.state, SlotState::Booted | SlotState::Active));
        if booted.is_none() {
            tracing::info!("No casync seed slot available for {}", target.class);
        }
        let (from_booted, from_target) = std::thread::scope(|scope| {
            let b = booted.map(|b| scope.spawn(|| seed(&b.config.device, &index, false)));
            let t = seed(&target.device, &index, true);
            (b.and_then(|h| h.join().expect("seed thread")), t)
        });
        let seeds = from_booted.into_iter().chain(from_target).collect();
        let location = rota_bundle::source::http::shown_url(&setup.location);
        Ok(BlobImage { name: name.to_string(), location, index, store, seeds, stats: Mutex::new(Stats::default()) })
    }

    /// The index file's name in the bundle.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes the image into `out`; returns its length.
    pub fn copy_to(&self, out: &mut dyn Write) -> Result<u64> {
        let seeds: Vec<&Seed> = self.seeds.iter().collect();
        let stats = blob::extract_seeded(&self.index, self.store.source(), &seeds, out).map_err(|e| {
            Error::Failed(format!("Failed to reassemble '{}' from store {}: {e}", self.name, self.location))
        })?;
        *self.stats.lock().expect("stats lock") = stats;
        Ok(stats.bytes_from_seeds + stats.bytes_from_store)
    }

    /// Where the chunks came from, in words.
    pub fn summary(&self) -> String {
        let s = *self.stats.lock().expect("stats lock");
        let fetched = match &self.store {
            Store::Http(h) => format!(", {} bytes downloaded", h.stats().1),
            Store::Local(_) => String::new(),
        };
        format!(
            "{}: {} chunks ({} bytes) from seeds, {} chunks ({} bytes) from the store{fetched}",
            self.name, s.chunks_from_seeds, s.bytes_from_seeds, s.chunks_from_store, s.bytes_from_store
        )
    }
}
