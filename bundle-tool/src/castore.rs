//! casync chunk stores as rota reaches them (casync-format spec §6, §8.3):
//! where a bundle's store is, and opening it as a local `.castr`
//! directory or over HTTP(S) through the range reader's client (its TLS
//! options, headers, proxies, retries and cancellation), with several
//! chunks in flight. Every chunk is checked against its ID before use.

use crate::source::http::HttpOptions;
use crate::source::http::objects::HttpObjects;
use casync::digest::{ChunkId, DigestKind};
use casync::store::{ChunkSource, LocalStore, StoreError, chunk_name, unpack};

/// The store of the bundle at `bundle` (path or URL): `storepath` when the
/// configuration sets one, else the bundle's location with `.raucb`
/// replaced by (or, without it, followed by) `.castr`.
pub fn store_location(bundle: &str, storepath: Option<&str>) -> String {
    if let Some(s) = storepath {
        return s.to_string();
    }
    match bundle.strip_suffix(".raucb") {
        Some(stem) => format!("{stem}.castr"),
        None => format!("{bundle}.castr"),
    }
}

/// Most bytes a stored chunk of at most `max` bytes may take compressed
/// (zstd, xz and gzip stay well under this even for random bytes).
fn stored_limit(max: u64) -> u64 {
    max + max / 8 + 4096
}

/// A chunk store behind an `http://` or `https://` URL.
pub struct HttpStore {
    base: String,
    objects: HttpObjects,
    /// Largest chunk of the index being extracted (bounds prefetched bodies).
    max: u64,
}

impl HttpStore {
    /// The store at `base` (a URL), reached with `opts`; `max` is the
    /// largest chunk size of the indexes it serves.
    pub fn open(base: &str, opts: &HttpOptions, max: u64) -> Result<HttpStore, String> {
        Ok(HttpStore { base: base.trim_end_matches('/').to_string(), objects: HttpObjects::new(opts)?, max })
    }

    fn url(&self, id: &ChunkId) -> String {
        format!("{}/{}", self.base, chunk_name(id))
    }

    /// Requests and body bytes so far.
    pub fn stats(&self) -> (u64, u64) {
        self.objects.stats()
    }
}

impl ChunkSource for HttpStore {
    fn get(&self, id: &ChunkId, digest: DigestKind, max: u64) -> Result<Vec<u8>, StoreError> {
        match self.objects.get(&self.url(id), stored_limit(max)) {
            Ok(Some(stored)) => unpack(id, &stored, true, digest, max),
            Ok(None) => Err(StoreError::Missing(*id)),
            Err(reason) => Err(StoreError::Fetch { id: *id, reason }),
        }
    }

    fn prefetch(&self, ids: &[ChunkId]) {
        for id in ids {
            self.objects.start(&self.url(id), stored_limit(self.max));
        }
    }
}

/// A store of either kind.
pub enum Store {
    /// A local directory.
    Local(LocalStore),
    /// An HTTP(S) store.
    Http(HttpStore),
}

impl Store {
    /// The store at `location` (URL or path); `max` as for [`HttpStore::open`].
    pub fn open(location: &str, http: &HttpOptions, max: u64) -> Result<Store, String> {
        if crate::bundle::is_remote(location) {
            HttpStore::open(location, http, max).map(Store::Http)
        } else {
            let path = crate::bundle::local_path(location).map_err(|e| e.to_string())?;
            Ok(Store::Local(LocalStore::new(path)))
        }
    }

    /// The store as a chunk source.
    pub fn source(&self) -> &dyn ChunkSource {
        match self {
            Store::Local(s) => s,
            Store::Http(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_sits_next_to_the_bundle_unless_configured() {
        assert_eq!(store_location("/b/up.raucb", None), "/b/up.castr");
        assert_eq!(store_location("http://h/up.raucb", None), "http://h/up.castr");
        assert_eq!(store_location("/b/up.bin", None), "/b/up.bin.castr");
        assert_eq!(store_location("/b/up.raucb", Some("https://cdn/store")), "https://cdn/store");
    }
}
