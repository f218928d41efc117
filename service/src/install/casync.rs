//! casync images (casync-format spec §8.3, §10): blob indexes (`*.caibx`)
//! are reassembled into the image, directory indexes (`*.caidx`) unpacked
//! into a fresh file system, instead of read from the bundle. Each
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

/// The index `name` of the bundle `fs`, read and checked, its store, and
/// the booted slot of the class of slot `slot` (the seed), if any.
fn opened<'s>(
    system: &'s System,
    fs: &BundleFs,
    name: &str,
    slot: usize,
    setup: &StoreSetup,
) -> Result<(Index, Store, Option<&'s crate::system::Slot>)> {
    let bytes = fs.read_file(name).map_err(|e| Error::Failed(format!("Failed to read '{name}': {e}")))?;
    let index = Index::read(&bytes[..]).map_err(|e| Error::Failed(format!("Invalid casync index '{name}': {e}")))?;
    let store = Store::open(&setup.location, &setup.http, index.sizes.max)
        .map_err(|e| Error::Failed(format!("Failed to open casync store '{}': {e}", setup.location)))?;
    let class = &system.slots[slot].config.class;
    let booted = system
        .slots
        .iter()
        .find(|s| &s.config.class == class && matches!(s.state, SlotState::Booted | SlotState::Active));
    Ok((index, store, booted))
}

/// Where the indexes of installed blob images are kept, by the SHA-256 of
/// the image: `<data-directory>/casync/<sha256>.caibx` (no data directory,
/// no cache).
fn index_cache(system: &System) -> Option<std::path::PathBuf> {
    system.config.system.data_directory.as_ref().map(|d| d.join("casync"))
}

/// The kept index of the image with digest `sha256`, if there is one cut
/// like `like` (same chunk sizes and digest).
fn cached_index(system: &System, sha256: Option<&str>, like: &Index) -> Option<Index> {
    let path = index_cache(system)?.join(format!("{}.caibx", sha256?));
    let index = Index::read(std::fs::File::open(&path).ok()?).ok()?;
    (index.sizes == like.sizes && index.digest_kind() == like.digest_kind()).then_some(index)
}

/// A seed of slot device `device` from the kept index `cached`; `None` if
/// the device cannot be opened.
fn seed_from(device: &std::path::Path, cached: &Index, output: bool) -> Option<Seed> {
    tracing::info!("Seeding from {} by its kept index", device.display());
    Seed::from_index(device, cached, output).ok()
}

impl BlobImage {
    /// Opens image `name` of the bundle `fs` for slot `slot` (index into
    /// `system.slots`), whose image before this installation had the digest
    /// `installed`: reads and checks the index, opens the store and makes
    /// the seeds. A slot whose image rota installed from a casync bundle
    /// has its index kept (see [`BlobImage::remember`]) and is a seed
    /// without being read first; otherwise the booted slot and the target
    /// are read and cut (both at once). The target is read only when the
    /// booted slot is: it would otherwise decide the wait alone.
    pub fn open(
        system: &System,
        fs: &BundleFs,
        name: &str,
        slot: usize,
        installed: Option<&str>,
        setup: &StoreSetup,
    ) -> Result<BlobImage> {
        let (index, store, booted) = opened(system, fs, name, slot, setup)?;
        let target = &system.slots[slot].config;
        if booted.is_none() {
            tracing::info!("No casync seed slot available for {}", target.class);
        }
        let booted_cached = booted.and_then(|b| cached_index(system, system.load_status(b).sha256.as_deref(), &index));
        let target_cached = cached_index(system, installed, &index);
        let scan_target = booted_cached.is_none();
        let (from_booted, from_target) = std::thread::scope(|scope| {
            let (index, cached) = (&index, booted_cached.as_ref());
            let b = booted.map(|b| {
                scope.spawn(move || match cached {
                    Some(c) => seed_from(&b.config.device, c, false),
                    None => seed(&b.config.device, index, false),
                })
            });
            let t = match &target_cached {
                Some(c) => seed_from(&target.device, c, true),
                None if scan_target => seed(&target.device, index, true),
                None => None,
            };
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

    /// Keeps this index as that of the image with digest `sha256` (just
    /// written and checked), and drops the kept indexes of images no slot
    /// holds any more. Only a cache: failures are logged.
    pub fn remember(&self, system: &System, sha256: &str) {
        let Some(dir) = index_cache(system) else { return };
        let keep: Vec<String> = system
            .slots
            .iter()
            .filter_map(|s| system.load_status(s).sha256)
            .chain(std::iter::once(sha256.to_string()))
            .collect();
        let r = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".{sha256}.tmp"));
            let mut bytes = Vec::new();
            self.index.write(&mut bytes)?;
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, dir.join(format!("{sha256}.caibx")))?;
            for e in std::fs::read_dir(&dir)? {
                let p = e?.path();
                let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                if !keep.contains(&stem) {
                    std::fs::remove_file(&p)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            tracing::warn!("Failed to keep the casync index of {}: {e}", self.name);
        }
    }

    /// Writes the image into `out`; returns its length.
    pub fn copy_to(&self, out: &mut dyn Write) -> Result<u64> {
        let seeds: Vec<&Seed> = self.seeds.iter().collect();
        let stats = blob::extract_seeded(&self.index, self.store.source(), &seeds, out).map_err(|e| {
            Error::Failed(format!("Failed to reassemble '{}' from store {}: {e}", self.name, self.location))
        })?;
        *self.stats.lock().expect("stats lock") = stats;
        Ok(stats.bytes())
    }

    /// Where the chunks came from, in words.
    pub fn summary(&self) -> String {
        summary(&self.name, &self.store, *self.stats.lock().expect("stats lock"))
    }
}

/// Whether `image` is a casync directory index (`*.caidx`).
pub fn is_archive_index(image: &Image) -> bool {
    image.image_type() == Some(ImageType::Caidx)
}

/// The booted slot's file system mounted read-only for seeding, unmounted
/// when dropped.
struct SeedMount(std::path::PathBuf);

impl Drop for SeedMount {
    fn drop(&mut self) {
        if let Err(e) = crate::mounts::umount_or_detach(&self.0) {
            tracing::warn!("Failed to unmount seed {}: {e}", self.0.display());
        }
    }
}

/// A directory index image ready to be unpacked into a file system: its
/// index, store and the booted slot's tree as a seed.
pub struct ArchiveImage {
    name: String,
    location: String,
    index: Index,
    store: Store,
    seed: Option<Seed>,
    stats: Mutex<Stats>,
    // Dropped last: the seed reads files below it until then.
    _mount: Option<SeedMount>,
}

impl ArchiveImage {
    /// Opens image `name` of the bundle `fs` for slot `slot`: reads and
    /// checks the index, opens the store and encodes the booted slot of
    /// the class as a seed (its mount point, or mounted read-only for the
    /// installation when it is not mounted).
    pub fn open(system: &System, fs: &BundleFs, name: &str, slot: usize, setup: &StoreSetup) -> Result<ArchiveImage> {
        let (index, store, booted) = opened(system, fs, name, slot, setup)?;
        let target = &system.slots[slot].config;
        let mut mount = None;
        let seed_dir = match booted {
            None => {
                tracing::info!("No casync seed slot available for {}", target.class);
                None
            }
            Some(b) => match &b.mount_point {
                Some(mp) => Some(mp.clone()),
                None => {
                    let dir = system.config.system.mount_prefix.join(format!("{}-seed", b.config.name));
                    match crate::mounts::mount_slot(&b.config, &dir, &["ro"]) {
                        Ok(()) => {
                            mount = Some(SeedMount(dir.clone()));
                            Some(dir)
                        }
                        Err(e) => {
                            tracing::warn!("Failed mounting {} for seeding: {e}", b.config.name);
                            None
                        }
                    }
                }
            },
        };
        let seed = seed_dir.and_then(|d| match Seed::open_tree(&d, index.flags, index.sizes, index.digest_kind()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("Not seeding from {}: {e}", d.display());
                None
            }
        });
        let location = rota_bundle::source::http::shown_url(&setup.location);
        Ok(ArchiveImage {
            name: name.to_string(),
            location,
            index,
            store,
            seed,
            stats: Mutex::new(Stats::default()),
            _mount: mount,
        })
    }

    /// The index file's name in the bundle.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn seeds(&self) -> Vec<&Seed> {
        self.seed.iter().collect()
    }

    /// Recreates the archived tree in the (fresh, mounted) directory `dir`;
    /// returns the bytes of the archive stream. Stops once `control` (the
    /// installation's) is cancelled.
    pub fn unpack(
        &self,
        dir: &std::path::Path,
        control: Option<&super::control::InstallControl>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let mut report = |n: u64| {
            progress(n);
            match control {
                Some(c) if c.is_cancelled() => Err(std::io::Error::other("cancelled")),
                _ => Ok(()),
            }
        };
        let r = casync::archive::extract(&self.index, self.store.source(), &self.seeds(), dir, &mut report);
        if let Some(c) = control {
            c.check()?;
        }
        let (done, stats) = r.map_err(|e| {
            Error::Failed(format!("Failed to unpack '{}' from store {}: {e}", self.name, self.location))
        })?;
        *self.stats.lock().expect("stats lock") = stats;
        Ok(done.bytes)
    }

    /// Writes the archive stream itself into `out`; returns its length.
    pub fn copy_to(&self, out: &mut dyn Write) -> Result<u64> {
        let stats = blob::extract_seeded(&self.index, self.store.source(), &self.seeds(), out).map_err(|e| {
            Error::Failed(format!("Failed to reassemble '{}' from store {}: {e}", self.name, self.location))
        })?;
        Ok(stats.bytes())
    }

    /// Where the chunks came from, in words.
    pub fn summary(&self) -> String {
        summary(&self.name, &self.store, *self.stats.lock().expect("stats lock"))
    }
}

/// "<name>: N chunks (B bytes) from seeds, …" for an image's extraction.
fn summary(name: &str, store: &Store, s: Stats) -> String {
    let fetched = match store {
        Store::Http(h) => format!(", {} bytes downloaded", h.stats().1),
        Store::Local(_) => String::new(),
    };
    let repeated = match s.chunks_repeated {
        0 => String::new(),
        n => format!(", {n} chunks ({} bytes) repeated", s.bytes_repeated),
    };
    format!(
        "{name}: {} chunks ({} bytes) from seeds, {} chunks ({} bytes) from the store{repeated}{fetched}",
        s.chunks_from_seeds, s.bytes_from_seeds, s.chunks_from_store, s.bytes_from_store
    )
}
