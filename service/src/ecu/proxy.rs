//! The main's caching range proxy: secondaries stream their bundles through
//! it, so each byte of a bundle crosses the origin link once however many
//! ECUs install it.
//!
//! It serves only the bundle URLs of the running system update, each at
//! `/bundle/<SHA-256 of its URL>` (never an open proxy), as HTTP/1.1 range
//! responses. Bytes are kept on disk in 1 MiB chunks under the ECU state
//! directory; a chunk being fetched is shared by every request that needs it;
//! past `proxy-cache-size` the least recently used chunks go. A request with
//! `Cache-Control: no-cache` (what a client sends when bytes it got failed
//! verification) drops the chunks it covers and fetches them again. Nothing
//! is verified here: each ECU verifies its bundle as always.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use rota_bundle::source::ReadAt;
use rota_bundle::source::http::{HttpOptions, HttpSource};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{OnceCell, Semaphore, watch};

/// Bytes per cached chunk.
pub const CHUNK: u64 = 1 << 20;
/// Origin requests at once.
const ORIGIN_FETCHES: usize = 6;
/// Chunks fetched ahead of the furthest one asked for.
const READ_AHEAD: u64 = 3;

type Body = BoxBody<Bytes, io::Error>;
/// The outcome of a chunk's fetch: the chunk, opened (its waiters read it
/// even if it is evicted before they get to it), or why not.
type Done = watch::Receiver<Option<Result<Arc<std::fs::File>, String>>>;

/// A bundle the proxy may serve.
struct Bundle {
    url: String,
    source: OnceCell<Arc<HttpSource>>,
}

enum Chunk {
    /// On disk: its length and when it was last used.
    Ready { len: u64, used: u64 },
    /// Being fetched; done once the channel holds the outcome.
    Fetching(Done),
}

#[derive(Default)]
struct Cache {
    bundles: HashMap<String, Arc<Bundle>>,
    chunks: HashMap<(String, u64), Chunk>,
    clock: u64,
    /// Bytes of ready chunks.
    used: u64,
    /// Chunks being fetched.
    fetching: u64,
}

impl Cache {
    /// The next tick of the clock that orders uses (least recent first).
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

struct Inner {
    dir: PathBuf,
    limit: u64,
    http: HttpOptions,
    base: String,
    cache: Mutex<Cache>,
    fetches: Semaphore,
}

/// The proxy; clones share it.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

/// The path of `url` on the proxy.
pub fn key(url: &str) -> String {
    hex::encode(openssl::sha::sha256(url.as_bytes()))
}

impl Proxy {
    /// Listens on `listen` and serves from `dir` (emptied first: chunks are
    /// not kept across restarts) at most `limit` bytes, fetching from the
    /// origin with `http`.
    pub async fn start(listen: SocketAddr, dir: PathBuf, limit: u64, http: HttpOptions) -> Result<Proxy, String> {
        if listen.ip().is_unspecified() {
            return Err(format!("proxy-listen {listen}: secondaries need an address to reach, not an unspecified one"));
        }
        let clear = dir.clone();
        tokio::task::spawn_blocking(move || {
            match std::fs::remove_dir_all(&clear) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            std::fs::create_dir_all(&clear)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("Download cache {}: {e}", dir.display()))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("Download cache proxy: cannot listen on {listen}: {e}"))?;
        let proxy = Proxy {
            inner: Arc::new(Inner {
                dir,
                limit: limit.max(CHUNK),
                http,
                base: format!("http://{listen}/bundle/"),
                cache: Mutex::new(Cache::default()),
                fetches: Semaphore::new(ORIGIN_FETCHES),
            }),
        };
        tracing::info!("Download cache proxy listening on {listen}");
        let p = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let _ = tcp.set_nodelay(true);
                let p = p.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let p = p.clone();
                        async move { Ok::<_, Infallible>(p.respond(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(proxy)
    }

    /// Serves exactly these bundle URLs from now on (the running system
    /// update's); chunks of others are dropped.
    pub fn serve_only(&self, urls: &[String]) {
        let mut c = self.inner.cache.lock().expect("cache lock");
        let keep: HashMap<String, Arc<Bundle>> = urls
            .iter()
            .map(|u| {
                let k = key(u);
                let b = c.bundles.get(&k).cloned();
                (k, b.unwrap_or_else(|| Arc::new(Bundle { url: u.clone(), source: OnceCell::new() })))
            })
            .collect();
        let gone: Vec<(String, u64)> = c.chunks.keys().filter(|(k, _)| !keep.contains_key(k)).cloned().collect();
        for id in gone {
            self.drop_chunk(&mut c, &id);
        }
        c.bundles = keep;
    }

    /// Where a secondary fetches `url` through the proxy.
    pub fn url_for(&self, url: &str) -> String {
        format!("{}{}", self.inner.base, key(url))
    }

    fn chunk_path(&self, (k, i): &(String, u64)) -> PathBuf {
        self.inner.dir.join(k).join(i.to_string())
    }

    /// Forgets a ready chunk and removes its file (a reader that opened it
    /// goes on reading).
    fn drop_chunk(&self, c: &mut Cache, id: &(String, u64)) -> bool {
        let Some(Chunk::Ready { len, .. }) = c.chunks.get(id) else { return false };
        c.used -= len;
        c.chunks.remove(id);
        let _ = std::fs::remove_file(self.chunk_path(id));
        true
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Body> {
        match self.answer(&req).await {
            Ok(r) => r,
            Err((status, text)) => {
                if status != StatusCode::NOT_FOUND {
                    tracing::warn!("Download cache proxy: {} {}: {text}", req.method(), req.uri().path());
                }
                let body =
                    http_body_util::Full::new(Bytes::from(format!("{text}\n"))).map_err(|never| match never {}).boxed();
                let mut r = Response::new(body);
                *r.status_mut() = status;
                r
            }
        }
    }

    async fn answer(&self, req: &Request<Incoming>) -> Result<Response<Body>, (StatusCode, String)> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err((StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD".into()));
        }
        let k = req.uri().path().strip_prefix("/bundle/").unwrap_or_default().to_string();
        let bundle = self.inner.cache.lock().expect("cache lock").bundles.get(&k).cloned();
        let Some(bundle) = bundle else {
            return Err((StatusCode::NOT_FOUND, "not a bundle of the running system update".into()));
        };
        let source = self.source(&bundle).await.map_err(|e| (StatusCode::BAD_GATEWAY, e))?;
        let size = source.size();
        let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
        let (first, last, partial) = match range {
            None => (0, size.saturating_sub(1), false),
            Some(r) => match parse_range(r, size) {
                Some((a, b)) => (a, b, true),
                None => {
                    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
                    *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                    resp.headers_mut().insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
                    return Ok(resp);
                }
            },
        };
        let fresh = req
            .headers()
            .get_all(header::CACHE_CONTROL)
            .iter()
            .chain(req.headers().get_all(header::PRAGMA))
            .any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache")));
        let len = if size == 0 { 0 } else { last - first + 1 };
        if fresh && len > 0 {
            let mut c = self.inner.cache.lock().expect("cache lock");
            for i in first / CHUNK..=last / CHUNK {
                if self.drop_chunk(&mut c, &(k.clone(), i)) {
                    tracing::info!(
                        "Download cache proxy: a client asked past the cache: dropped chunk {i} of {}",
                        bundle.url
                    );
                }
            }
        }
        let mut resp = if req.method() == Method::HEAD || len == 0 {
            Response::new(Empty::new().map_err(|never| match never {}).boxed())
        } else {
            Response::new(self.body(k, source.clone(), first, last))
        };
        let h = resp.headers_mut();
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CONTENT_LENGTH, hv(&len.to_string()));
        let info = source.remote_info();
        if let Some(e) = &info.etag {
            h.insert(header::ETAG, hv(e));
        }
        if let Some(m) = &info.last_modified {
            h.insert(header::LAST_MODIFIED, hv(m));
        }
        if partial {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            resp.headers_mut().insert(header::CONTENT_RANGE, hv(&format!("bytes {first}-{last}/{size}")));
        }
        Ok(resp)
    }

    /// The bundle's origin, opened once (the first request waits for it).
    async fn source(&self, bundle: &Bundle) -> Result<Arc<HttpSource>, String> {
        bundle
            .source
            .get_or_try_init(|| async {
                let (url, http) = (bundle.url.clone(), self.inner.http.clone());
                tokio::task::spawn_blocking(move || HttpSource::open(&url, http).map(Arc::new))
                    .await
                    .map_err(|e| e.to_string())?
            })
            .await
            .cloned()
    }

    /// `first..=last` of bundle `k`, chunk by chunk as each is there.
    fn body(&self, k: String, source: Arc<HttpSource>, first: u64, last: u64) -> Body {
        let me = self.clone();
        let frames = futures_util::stream::unfold(Some(first), move |at| {
            let (me, k, source) = (me.clone(), k.clone(), source.clone());
            async move {
                let at = at?;
                let i = at / CHUNK;
                let end = last.min((i + 1) * CHUNK - 1);
                let read = async {
                    let file = me.chunk(&k, i, &source).await?;
                    let (from, n) = (at - i * CHUNK, (end - at + 1) as usize);
                    tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0; n];
                        file.read_exact_at(&mut buf, from).map(|_| buf)
                    })
                    .await
                    .map_err(io::Error::other)?
                };
                match read.await {
                    Ok(buf) => Some((Ok(Frame::data(Bytes::from(buf))), (end < last).then_some(end + 1))),
                    Err(e) => {
                        tracing::warn!("Download cache proxy: bundle {k} at {at}: {e}");
                        Some((Err(e), None))
                    }
                }
            }
        });
        BodyExt::boxed(StreamBody::new(frames))
    }

    /// Chunk `i` of bundle `k`, opened: from the cache, from a fetch in
    /// flight, or fetched now; the next chunks are fetched ahead.
    async fn chunk(&self, k: &str, i: u64, source: &Arc<HttpSource>) -> io::Result<Arc<std::fs::File>> {
        let chunks = source.size().div_ceil(CHUNK);
        for ahead in i + 1..(i + 1 + READ_AHEAD).min(chunks) {
            self.start_fetch(k, ahead, source, true);
        }
        loop {
            let waiting = {
                let mut c = self.inner.cache.lock().expect("cache lock");
                let now = c.tick();
                match c.chunks.get_mut(&(k.to_string(), i)) {
                    Some(Chunk::Ready { used, .. }) => {
                        *used = now;
                        // Opened under the lock: eviction cannot remove it in between.
                        return std::fs::File::open(self.chunk_path(&(k.to_string(), i))).map(Arc::new);
                    }
                    Some(Chunk::Fetching(done)) => done.clone(),
                    None => {
                        drop(c);
                        self.start_fetch(k, i, source, false);
                        continue;
                    }
                }
            };
            let mut done = waiting;
            let outcome = done.wait_for(Option::is_some).await.map_err(io::Error::other)?.clone();
            return outcome.expect("waited for an outcome").map_err(io::Error::other);
        }
    }

    /// Fetches chunk `i` of bundle `k` from the origin unless it is there
    /// or on its way. A fetch `ahead` of the readers is left out while the
    /// chunks in flight would take a quarter of the cache: fetched ahead of
    /// need into a cache too small to keep them, they would be fetched twice.
    fn start_fetch(&self, k: &str, i: u64, source: &Arc<HttpSource>, ahead: bool) {
        let id = (k.to_string(), i);
        let tx = {
            let mut c = self.inner.cache.lock().expect("cache lock");
            if c.chunks.contains_key(&id) || (ahead && (c.fetching + 1) * CHUNK * 4 > self.inner.limit) {
                return;
            }
            let (tx, rx) = watch::channel(None);
            c.chunks.insert(id.clone(), Chunk::Fetching(rx));
            c.fetching += 1;
            tx
        };
        let (me, source) = (self.clone(), source.clone());
        // Its own task: a requester that hangs up does not cancel a fetch
        // others wait for.
        tokio::spawn(async move {
            let outcome = me.fetch(&id, &source).await;
            let mut c = me.inner.cache.lock().expect("cache lock");
            c.fetching -= 1;
            let opened = match outcome {
                Ok(len) => {
                    let file = std::fs::File::open(me.chunk_path(&id))
                        .map(Arc::new)
                        .map_err(|e| format!("Download cache {}: {e}", me.chunk_path(&id).display()));
                    let used = c.tick();
                    c.chunks.insert(id.clone(), Chunk::Ready { len, used });
                    c.used += len;
                    me.evict(&mut c);
                    file
                }
                Err(e) => {
                    c.chunks.remove(&id);
                    Err(e)
                }
            };
            drop(c);
            let _ = tx.send(Some(opened));
        });
    }

    async fn fetch(&self, id: &(String, u64), source: &Arc<HttpSource>) -> Result<u64, String> {
        let _slot = self.inner.fetches.acquire().await.map_err(|e| e.to_string())?;
        let from = id.1 * CHUNK;
        let len = CHUNK.min(source.size() - from);
        let (path, source) = (self.chunk_path(id), source.clone());
        tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let mut buf = vec![0; len as usize];
            source.read_small_at(from, &mut buf).map_err(|e| e.to_string())?;
            write_chunk(&path, &buf).map_err(|e| format!("Download cache {}: {e}", path.display()))?;
            Ok(len)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Drops least recently used chunks until the cache fits its bound.
    fn evict(&self, c: &mut Cache) {
        while c.used > self.inner.limit {
            let oldest = c
                .chunks
                .iter()
                .filter_map(|(id, ch)| match ch {
                    Chunk::Ready { used, .. } => Some((*used, id.clone())),
                    Chunk::Fetching(_) => None,
                })
                .min();
            let Some((_, id)) = oldest else { break };
            self.drop_chunk(c, &id);
        }
    }
}

fn write_chunk(path: &Path, data: &[u8]) -> io::Result<()> {
    std::fs::create_dir_all(path.parent().expect("chunk in a bundle directory"))?;
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// One `bytes=` range of a `size`-byte body, inclusive; `None` if it cannot
/// be served (several ranges, or none inside the body).
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        return (n > 0).then(|| (size.saturating_sub(n), size - 1));
    }
    let first: u64 = a.parse().ok()?;
    let last = if b.is_empty() { size - 1 } else { b.parse::<u64>().ok()?.min(size - 1) };
    (first <= last && first < size).then_some((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(parse_range("bytes=0-3", 10), Some((0, 3)));
        assert_eq!(parse_range("bytes=4-", 10), Some((4, 9)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(parse_range("bytes=5-100", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=10-11", 10), None);
        assert_eq!(parse_range("bytes=3-2", 10), None);
        assert_eq!(parse_range("bytes=0-1,4-5", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
        assert_eq!(parse_range("bytes=-0", 10), None);
    }
}
