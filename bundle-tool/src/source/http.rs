//! A bundle on an HTTP(S) server, read with range requests.
//!
//! Reads are served from aligned windows (512 KiB by default, one verity leaf
//! block's worth of data) fetched on a background runtime, several at once,
//! with read-ahead when access is sequential. Every response must be `206`
//! with a `Content-Range` that matches the request exactly.

pub mod objects;
mod spellings;
mod transport;

use super::ReadAt;
use http::header::{CONTENT_RANGE, ETAG, HeaderMap, HeaderName, HeaderValue, LAST_MODIFIED, RANGE};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use transport::{Client, SendError};

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Client certificate (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub tls_key: Option<PathBuf>,
    /// CA file that replaces the system trust store.
    pub tls_ca: Option<PathBuf>,
    /// Accept any server certificate.
    pub tls_no_verify: bool,
    /// `Name: value` headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// Headers sent with the first request only (RAUC's info headers, §10.1).
    pub info_headers: Vec<(String, String)>,
    /// `User-Agent` of the first request.
    pub user_agent: String,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Longest pause allowed while a response body is arriving.
    pub stall_timeout: Duration,
    /// Bytes per range request (multiple of 4096).
    pub window: usize,
    /// Range requests in flight at once.
    pub max_in_flight: usize,
    /// Windows fetched ahead of a sequential reader.
    pub read_ahead: usize,
    /// Windows kept in memory.
    pub cache_windows: usize,
    /// Attempts per request after the first failure (a failure after some
    /// bytes arrived resumes from there and starts this count again).
    pub retries: u32,
    /// Pause before the first retry; it doubles with every further attempt.
    pub retry_pause: Duration,
    /// Longest pause between attempts.
    pub max_retry_pause: Duration,
    /// Attempts per request in all, resumed ones included: a server that
    /// sends a byte and hangs up cannot keep a request going for ever.
    pub max_attempts: u32,
    /// Longest a request may take from its first attempt to its last byte,
    /// retries and pauses included.
    pub request_timeout: Duration,
    /// Slowest transfer accepted (bytes per second, 0: any), measured over
    /// each `stall_timeout`: a server trickling bytes is given up on.
    pub min_speed: u64,
    /// Asked at every wait: once it says so, reads fail with [`CANCELLED`].
    pub cancel: Option<CancelCheck>,
}

/// The error text of a read given up because its work was cancelled.
pub const CANCELLED: &str = "cancelled";

/// Whether the work a source serves was cancelled (an installation's
/// `Cancel`); asked by every wait of the source.
#[derive(Clone)]
pub struct CancelCheck(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl CancelCheck {
    fn cancelled(c: &Option<CancelCheck>) -> bool {
        c.as_ref().is_some_and(|c| (c.0)())
    }
}

impl std::fmt::Debug for CancelCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CancelCheck")
    }
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_no_verify: false,
            headers: Vec::new(),
            info_headers: Vec::new(),
            user_agent: crate::cli::user_agent(&crate::cli::program_name(std::env::args_os().next().as_ref())),
            connect_timeout: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(60),
            window: 512 * 1024,
            max_in_flight: 4,
            read_ahead: 4,
            cache_windows: 24,
            retries: 5,
            retry_pause: Duration::from_secs(1),
            max_retry_pause: Duration::from_secs(30),
            max_attempts: 20,
            request_timeout: Duration::from_secs(600),
            min_speed: 256,
            cancel: None,
        }
    }
}

/// `url` without a `user:password@` part, for showing (messages, logs,
/// `info`, D-Bus properties): credentials are only ever sent.
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Where later requests go once the first one ended at `effective` (after
/// redirects, without credentials): there, with the `user:password@` of
/// `asked` when it is still the same host and port (never to another).
fn request_url(asked: &str, effective: &str) -> String {
    let (Ok(a), Ok(mut e)) = (url::Url::parse(asked), url::Url::parse(effective)) else { return effective.into() };
    if same_host(asked, effective) && (!a.username().is_empty() || a.password().is_some()) {
        let _ = e.set_username(a.username());
        let _ = e.set_password(a.password());
    }
    e.to_string()
}

/// Whether URLs `a` and `b` name the same host and port (credentials for
/// one may go to the other).
fn same_host(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => transport::same_host(&a, &b),
        _ => false,
    }
}

/// Parses a `Name: value` header argument.
pub fn parse_header(arg: &str) -> Result<(String, String), String> {
    match arg.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim().to_string(), value.trim().to_string())),
        _ => Err(format!("Invalid HTTP header '{arg}': expected 'Name: value'")),
    }
}

/// What the first response told us about the bundle.
#[derive(Debug, Clone, Default)]
pub struct RemoteInfo {
    /// URL after redirects.
    pub effective_url: String,
    /// Total size from `Content-Range`.
    pub size: u64,
    /// `ETag`, if sent.
    pub etag: Option<String>,
    /// `Last-Modified`, if sent.
    pub last_modified: Option<String>,
    /// `Date`, if sent.
    pub date: Option<String>,
}

/// Transfer counters.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Range requests sent (including retries).
    pub requests: AtomicU64,
    /// Body bytes received.
    pub bytes: AtomicU64,
    /// Requests that failed and were tried again.
    pub retries: AtomicU64,
}

/// Interleaved sequential streams recognised for read-ahead.
const MAX_STREAMS: usize = 4;

/// Bytes a stream of contiguous reads must have read before it is treated
/// as sequential (whole windows and read-ahead); reads before that, and
/// scattered reads (an adaptive install's changed blocks), fetch exactly
/// the 4 KiB-aligned range they need.
const STREAM_MIN: u64 = 16 * 1024;

/// Bytes of exactly fetched ranges kept for scattered reads (verity hash
/// blocks and the start of a stream are read again).
const PIECE_BYTES: usize = 4 << 20;

/// A stream of contiguous reads.
#[derive(Clone, Copy)]
struct Stream {
    /// Where the last read ended.
    end: u64,
    /// Bytes read contiguously so far.
    run: u64,
}

/// At most this share (1/n) of the cache holds pinned windows.
const MAX_PINNED_SHARE: usize = 4;

/// Evicted windows remembered (to recognise windows read again).
const EVICTED_REMEMBERED: usize = 256;

/// Most windows fetched with one request when a read needs several.
const MAX_COALESCED_WINDOWS: u64 = 8;

enum Window {
    Pending,
    /// The window's bytes: `len` bytes at `start` of a response body that
    /// may hold several windows (shared, not copied).
    Ready(Arc<Vec<u8>>, usize, usize),
    Failed(String),
}

struct State {
    windows: HashMap<u64, Window>,
    /// Windows read at least once, least recently read first: evicted first.
    used: VecDeque<u64>,
    /// Windows arrived (or failed) but not read yet, oldest first: read-ahead
    /// the reader has not reached. Evicted only when nothing used is left.
    fresh: VecDeque<u64>,
    /// Windows read again after they had been evicted (a verity hash
    /// tree's upper levels): kept while other windows come and go.
    pinned: VecDeque<u64>,
    /// Windows evicted after they had been read, most recent last: a read
    /// of one of them makes it pinned, and read-ahead does not fetch them.
    evicted: VecDeque<u64>,
    /// Windows requested and not arrived yet.
    pending: usize,
    in_flight: usize,
    /// Recent streams of contiguous reads (a verity reader interleaves data
    /// with hash-tree reads, so there are several), most recent last.
    heads: VecDeque<Stream>,
    /// Recently fetched exact ranges of scattered reads, most recent last.
    pieces: VecDeque<(u64, Arc<Vec<u8>>)>,
    /// Exact ranges being fetched for scattered reads (start, end): a read
    /// needing bytes of one waits for it instead of fetching them again
    /// (several workers reading files in one 512 KiB stretch need the
    /// same verity hash block at once).
    piece_fetches: Vec<(u64, u64)>,
}

struct Shared {
    target: Target,
    info: RemoteInfo,
    opts: HttpOptions,
    /// Reads are scattered (see [`ReadAt::advise_scattered`]): never whole windows or read-ahead.
    scattered: AtomicBool,
    state: Mutex<State>,
    ready: Condvar,
}

/// A bundle behind an `http://` or `https://` URL.
pub struct HttpSource {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

fn header_map(pairs: &[(String, String)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("Invalid HTTP header name '{k}'"))?;
        let value = HeaderValue::from_str(v).map_err(|_| format!("Invalid value for HTTP header '{k}'"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn describe_status(status: u16) -> String {
    match status {
        200 => "range requests not supported by server".to_string(),
        204 => "no content".to_string(),
        304 => "not modified".to_string(),
        401 => "unauthorized".to_string(),
        404 => "not found".to_string(),
        other => format!("unexpected HTTP response code {other}"),
    }
}

/// Parses `bytes a-b/total`.
fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

enum FetchError {
    /// No connection could be made (worth another attempt).
    NoResponse(String),
    /// Worth another attempt (network trouble, 5xx).
    Transient(String),
    /// Retrying will not help.
    Fatal(String),
}

/// Where range requests go, and what to count them in.
#[derive(Clone)]
struct Target {
    client: Client,
    url: String,
    headers: HeaderMap,
    stats: Arc<HttpStats>,
    retries: u32,
    retry_pause: Duration,
    max_retry_pause: Duration,
    max_attempts: u32,
    request_timeout: Duration,
    stall: Duration,
    min_speed: u64,
    cancel: Option<CancelCheck>,
    /// The version every response must be of (see [`identity`]).
    identity: Option<(HeaderName, String)>,
}

/// The slowest transfer accepted: at least `min_speed` bytes per second
/// over each measuring period (one stall timeout).
struct SpeedCheck {
    start: tokio::time::Instant,
    bytes: u64,
    period: Duration,
    min_speed: u64,
}

impl SpeedCheck {
    fn new(period: Duration, min_speed: u64) -> SpeedCheck {
        SpeedCheck { start: tokio::time::Instant::now(), bytes: 0, period, min_speed }
    }

    /// Counts `n` bytes that arrived; fails a transfer too slow over the
    /// period that just ended, when more bytes are still expected.
    fn add(&mut self, n: u64, more_expected: bool) -> Result<(), FetchError> {
        self.bytes += n;
        let elapsed = self.start.elapsed();
        if elapsed >= self.period && more_expected {
            if self.bytes < self.min_speed.saturating_mul(elapsed.as_secs()) {
                return Err(FetchError::Transient(format!(
                    "transfer slower than {} bytes/s for {} s",
                    self.min_speed,
                    elapsed.as_secs()
                )));
            }
            *self = SpeedCheck::new(self.period, self.min_speed);
        }
        Ok(())
    }
}

/// A successful range response.
struct Fetched {
    body: Vec<u8>,
    headers: HeaderMap,
    url: String,
}

/// What identifies the version of the file that was opened: its ETag, else
/// its Last-Modified time. Every later response must name the same one, so
/// that bytes of a file replaced on the server are never mixed in. (Asking
/// with `If-Match` would let the server refuse instead, but RAUC sends no
/// conditional headers and servers may tell requests apart by them.)
fn identity(info: &RemoteInfo) -> Option<(HeaderName, String)> {
    match (&info.etag, &info.last_modified) {
        (Some(tag), _) => Some((ETAG, tag.clone())),
        (None, Some(lm)) => Some((LAST_MODIFIED, lm.clone())),
        (None, None) => None,
    }
}

impl Target {
    fn new(opts: &HttpOptions, client: Client, url: String, headers: HeaderMap, stats: Arc<HttpStats>) -> Target {
        Target {
            client,
            url,
            headers,
            stats,
            retries: opts.retries,
            retry_pause: opts.retry_pause,
            max_retry_pause: opts.max_retry_pause,
            max_attempts: opts.max_attempts.max(1),
            request_timeout: opts.request_timeout,
            stall: opts.stall_timeout,
            min_speed: opts.min_speed,
            cancel: opts.cancel.clone(),
            identity: None,
        }
    }

    /// One attempt at `bytes=from-end` (inclusive), checked for `206` and an
    /// exact `Content-Range`; the body is appended to `body` as it arrives, so
    /// what came before a failure is kept.
    async fn fetch_once(
        &self,
        from: u64,
        end: u64,
        expect_total: Option<u64>,
        body: &mut Vec<u8>,
    ) -> Result<(HeaderMap, String), FetchError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut headers = self.headers.clone();
        if let Ok(range) = HeaderValue::from_str(&format!("bytes={from}-{end}")) {
            headers.insert(RANGE, range);
        }
        let mut resp = self.client.get(&self.url, &headers).await.map_err(|e| match e {
            SendError::Tls(m) => FetchError::Fatal(format!("TLS handshake failed: {m}")),
            SendError::Connect(m) => FetchError::NoResponse(m),
            SendError::Transient(m) => FetchError::Transient(m),
            SendError::Fatal(m) => FetchError::Fatal(m),
        })?;
        let status = resp.status;
        if status == 412 {
            return Err(FetchError::Fatal("bundle changed on the server since it was opened".to_string()));
        }
        if status != 206 {
            let msg = describe_status(status);
            let retry = status >= 500 || status == 408 || status == 429;
            return Err(if retry { FetchError::Transient(msg) } else { FetchError::Fatal(msg) });
        }
        if let Some((name, value)) = &self.identity {
            let now = resp.headers.get(name).and_then(|v| v.to_str().ok());
            if now.is_some_and(|now| now != value) {
                return Err(FetchError::Fatal("bundle changed on the server since it was opened".to_string()));
            }
        }
        let cr = resp.headers.get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let Some((a, b, total)) = cr.as_deref().and_then(parse_content_range) else {
            let shown = cr.as_deref().unwrap_or("(missing)");
            return Err(FetchError::Fatal(format!("invalid Content-Range in response: {shown}")));
        };
        if expect_total.is_some_and(|t| t != total) {
            return Err(FetchError::Fatal(format!(
                "bundle changed on the server since it was opened (size {total} instead of {})",
                expect_total.unwrap_or_default()
            )));
        }
        if a != from || b != end {
            return Err(FetchError::Fatal(format!(
                "server answered range {a}-{b}/{total} for requested range {from}-{end}{}",
                expect_total.map(|t| format!("/{t}")).unwrap_or_default()
            )));
        }
        let url = std::mem::take(&mut resp.url);
        let headers = std::mem::take(&mut resp.headers);
        let want = (end - from + 1) as usize;
        let mut got = 0;
        let mut speed = SpeedCheck::new(self.stall, self.min_speed);
        loop {
            let chunk = resp.chunk().await.map_err(|e| FetchError::Transient(format!("transfer failed: {e}")))?;
            let Some(chunk) = chunk else { break };
            self.stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if got + chunk.len() > want {
                return Err(FetchError::Fatal(format!("server sent more than the {want} bytes requested")));
            }
            got += chunk.len();
            body.extend_from_slice(&chunk);
            if CancelCheck::cancelled(&self.cancel) {
                return Err(FetchError::Fatal(CANCELLED.to_string()));
            }
            speed.add(chunk.len() as u64, got < want)?;
        }
        if got != want {
            return Err(FetchError::Transient(format!("short response: got {got} of {want} bytes")));
        }
        Ok((headers, url))
    }

    /// Bytes `start..=end`, retrying transient failures with a doubling pause
    /// and resuming after the bytes already received, within the attempt cap
    /// and the request's deadline; errors are final texts.
    async fn fetch(&self, start: u64, end: u64, expect_total: Option<u64>) -> Result<Fetched, String> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let late = || format!("no complete response within {} s", self.request_timeout.as_secs());
        let mut body = Vec::with_capacity((end - start + 1) as usize);
        let (mut attempt, mut total) = (0, 0);
        let mut pause = self.retry_pause;
        loop {
            if CancelCheck::cancelled(&self.cancel) {
                return Err(CANCELLED.to_string());
            }
            let before = body.len();
            total += 1;
            let once = self.fetch_once(start + before as u64, end, expect_total, &mut body);
            let Ok(outcome) = tokio::time::timeout_at(deadline, once).await else { return Err(late()) };
            match outcome {
                Ok((headers, url)) => return Ok(Fetched { body, headers, url }),
                Err(FetchError::Transient(m) | FetchError::NoResponse(m))
                    if (attempt < self.retries || body.len() > before) && total < self.max_attempts =>
                {
                    if body.len() > before {
                        // Progress: resume, with a fresh count for the rest.
                        attempt = 0;
                        pause = self.retry_pause;
                    }
                    attempt += 1;
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("request failed: {m} (retrying {attempt}/{})", self.retries);
                    if !self.pause(pause, deadline).await {
                        return Err(if CancelCheck::cancelled(&self.cancel) { CANCELLED.to_string() } else { late() });
                    }
                    pause = (pause * 2).min(self.max_retry_pause);
                }
                Err(FetchError::NoResponse(m)) => return Err(format!("server not responding: {m}")),
                Err(FetchError::Transient(m)) => return Err(format!("{m} (gave up after {total} attempts)")),
                Err(FetchError::Fatal(m)) => return Err(m),
            }
        }
    }

    /// Waits `pause` unless the work is cancelled or `deadline` comes
    /// first; returns whether the pause ran its course.
    async fn pause(&self, pause: Duration, deadline: tokio::time::Instant) -> bool {
        let until = tokio::time::Instant::now() + pause;
        if until > deadline {
            return false;
        }
        while tokio::time::Instant::now() < until {
            if CancelCheck::cancelled(&self.cancel) {
                return false;
            }
            tokio::time::sleep_until(until.min(tokio::time::Instant::now() + CANCEL_POLL)).await;
        }
        true
    }
}

impl Target {
    /// One attempt at a whole file (`GET` without a range): `Ok(None)` for
    /// 404, the body when it is `200` and at most `limit` bytes.
    async fn fetch_object_once(&self, url: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut resp = self.client.get(url, &self.headers).await.map_err(|e| match e {
            SendError::Tls(m) => FetchError::Fatal(format!("TLS handshake failed: {m}")),
            SendError::Connect(m) => FetchError::NoResponse(m),
            SendError::Transient(m) => FetchError::Transient(m),
            SendError::Fatal(m) => FetchError::Fatal(m),
        })?;
        match resp.status {
            200 => {}
            404 | 410 => return Ok(None),
            s => {
                let msg = format!("unexpected HTTP response code {s}");
                let retry = s >= 500 || s == 408 || s == 429;
                return Err(if retry { FetchError::Transient(msg) } else { FetchError::Fatal(msg) });
            }
        }
        let mut body = Vec::new();
        let mut speed = SpeedCheck::new(self.stall, self.min_speed);
        loop {
            let chunk = resp.chunk().await.map_err(|e| FetchError::Transient(format!("transfer failed: {e}")))?;
            let Some(chunk) = chunk else { break };
            self.stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(FetchError::Fatal(format!("larger than {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
            if CancelCheck::cancelled(&self.cancel) {
                return Err(FetchError::Fatal(CANCELLED.to_string()));
            }
            speed.add(chunk.len() as u64, true)?;
        }
        Ok(Some(body))
    }

    /// A whole file, with the retries, pauses, attempt cap and deadline of
    /// [`Target::fetch`] (a failed attempt starts over: no range to resume).
    async fn fetch_object(&self, url: &str, limit: u64) -> Result<Option<Vec<u8>>, String> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let late = || format!("no complete response within {} s", self.request_timeout.as_secs());
        let (mut attempt, mut pause) = (0, self.retry_pause);
        loop {
            if CancelCheck::cancelled(&self.cancel) {
                return Err(CANCELLED.to_string());
            }
            let Ok(outcome) = tokio::time::timeout_at(deadline, self.fetch_object_once(url, limit)).await else {
                return Err(late());
            };
            match outcome {
                Ok(body) => return Ok(body),
                Err(FetchError::Transient(m) | FetchError::NoResponse(m))
                    if attempt < self.retries && attempt + 1 < self.max_attempts =>
                {
                    attempt += 1;
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("request for {} failed: {m} (retrying {attempt}/{})", shown_url(url), self.retries);
                    if !self.pause(pause, deadline).await {
                        return Err(if CancelCheck::cancelled(&self.cancel) { CANCELLED.to_string() } else { late() });
                    }
                    pause = (pause * 2).min(self.max_retry_pause);
                }
                Err(FetchError::NoResponse(m)) => return Err(format!("server not responding: {m}")),
                Err(FetchError::Transient(m)) => return Err(format!("{m} (gave up after {} attempts)", attempt + 1)),
                Err(FetchError::Fatal(m)) => return Err(m),
            }
        }
    }
}

/// The runtime HTTP work runs on: one worker thread of its own.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rota-http")
        .enable_all()
        .build()
        .map_err(|e| format!("failed to start HTTP runtime: {e}"))
}

/// How often a wait looks whether its work was cancelled.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// Runs `fut` on `rt` and waits for it from this (non-async) thread, unless
/// `cancel` says the work was cancelled first (the task then ends at its own
/// next check).
fn wait_for<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    cancel: &Option<CancelCheck>,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    loop {
        match rx.recv_timeout(CANCEL_POLL) {
            Ok(v) => return Ok(v),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err("HTTP runtime stopped".into()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if CancelCheck::cancelled(cancel) => {
                return Err(CANCELLED.into());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

impl HttpSource {
    /// Connects, checks that ranges work and learns the size (`Range: bytes=0-3`).
    pub fn open(url: &str, opts: HttpOptions) -> Result<HttpSource, String> {
        let shown = shown_url(url);
        let fail = |m: String| format!("Failed to stream bundle {shown}: {m}");
        if opts.window == 0 || !opts.window.is_multiple_of(4096) {
            return Err(fail("range window must be a non-zero multiple of 4096".into()));
        }
        let client = Client::build(&opts).map_err(fail)?;
        let headers = header_map(&opts.headers).map_err(fail)?;
        let mut first_headers = headers.clone();
        first_headers.extend(header_map(&opts.info_headers).map_err(fail)?);
        if let Ok(ua) = HeaderValue::from_str(&opts.user_agent) {
            first_headers.insert(http::header::USER_AGENT, ua);
        }
        let runtime = runtime().map_err(fail)?;
        let stats = Arc::new(HttpStats::default());
        let probe_target = Target::new(&opts, client.clone(), url.to_string(), first_headers, stats.clone());
        let probe = wait_for(&runtime, &opts.cancel, async move { probe_target.fetch(0, 3, None).await })
            .map_err(fail)?
            .map_err(fail)?;
        let get = |name| probe.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_string);
        let total = get(CONTENT_RANGE).as_deref().and_then(parse_content_range).map(|(_, _, t)| t).unwrap_or(0);
        let info = RemoteInfo {
            effective_url: shown_url(&probe.url),
            size: total,
            etag: get(ETAG),
            last_modified: get(LAST_MODIFIED),
            date: get(http::header::DATE),
        };
        let mut headers = headers;
        if !same_host(url, &probe.url) {
            // Redirected to another host: the caller's credentials were for the first.
            transport::strip_credentials(&mut headers);
        }
        let mut target = Target::new(&opts, client, request_url(url, &probe.url), headers, stats);
        target.identity = identity(&info);
        let shared = Arc::new(Shared {
            target,
            info,
            opts,
            scattered: AtomicBool::new(false),
            state: Mutex::new(State {
                windows: HashMap::new(),
                used: VecDeque::new(),
                fresh: VecDeque::new(),
                pinned: VecDeque::new(),
                evicted: VecDeque::new(),
                pending: 0,
                in_flight: 0,
                heads: VecDeque::new(),
                pieces: VecDeque::new(),
                piece_fetches: Vec::new(),
            }),
            ready: Condvar::new(),
        });
        Ok(HttpSource { shared, runtime: Some(runtime) })
    }

    /// What the server reported at open.
    pub fn remote_info(&self) -> &RemoteInfo {
        &self.shared.info
    }

    /// Requests and bytes transferred so far.
    pub fn stats(&self) -> (u64, u64) {
        let s = &self.shared.target.stats;
        (s.requests.load(Ordering::Relaxed), s.bytes.load(Ordering::Relaxed))
    }

    /// Requests that failed and were tried again so far.
    pub fn retries(&self) -> u64 {
        self.shared.target.stats.retries.load(Ordering::Relaxed)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime lives as long as the source")
    }

    /// Waits for a fetch to end (the state changes), failing with
    /// [`CANCELLED`] once the work is cancelled.
    fn wait<'a>(&self, st: std::sync::MutexGuard<'a, State>) -> io::Result<std::sync::MutexGuard<'a, State>> {
        let (st, _) = self.shared.ready.wait_timeout(st, CANCEL_POLL).expect("state lock");
        if CancelCheck::cancelled(&self.shared.opts.cancel) {
            return Err(self.stream_error(CANCELLED));
        }
        Ok(st)
    }

    fn stream_error(&self, m: &str) -> io::Error {
        io::Error::other(format!("Failed to stream bundle {}: {m}", self.shared.info.effective_url))
    }

    fn window_count(&self) -> u64 {
        self.shared.info.size.div_ceil(self.shared.opts.window as u64)
    }

    /// Marks `w` pending and starts fetching it if it is not known yet.
    fn request(&self, st: &mut State, w: u64) {
        self.request_run(st, w, 1);
    }

    /// Marks the unknown windows of `first..first+count` pending and fetches
    /// each consecutive run of them with one request.
    fn request_run(&self, st: &mut State, first: u64, count: u64) {
        let end = (first + count).min(self.window_count());
        let mut w = first;
        while w < end {
            if st.windows.contains_key(&w) {
                w += 1;
                continue;
            }
            let mut n = 1;
            while w + n < end && n < MAX_COALESCED_WINDOWS && !st.windows.contains_key(&(w + n)) {
                n += 1;
            }
            self.spawn_fetch(st, w, n);
            w += n;
        }
    }

    fn spawn_fetch(&self, st: &mut State, first: u64, n: u64) {
        for w in first..first + n {
            st.windows.insert(w, Window::Pending);
        }
        st.pending += n as usize;
        st.in_flight += 1;
        let shared = self.shared.clone();
        self.runtime().spawn(async move {
            let win = shared.opts.window as u64;
            let start = first * win;
            let end = ((first + n) * win).min(shared.info.size) - 1;
            let outcome = shared.target.fetch(start, end, Some(shared.info.size)).await;
            let mut st = shared.state.lock().expect("state lock");
            st.in_flight -= 1;
            st.pending -= n as usize;
            match outcome {
                Ok(f) => {
                    let body = Arc::new(f.body);
                    for (i, start) in (0..body.len()).step_by(win as usize).enumerate() {
                        let len = (body.len() - start).min(win as usize);
                        st.windows.insert(first + i as u64, Window::Ready(body.clone(), start, len));
                        st.fresh.push_back(first + i as u64);
                    }
                }
                Err(m) => {
                    for w in first..first + n {
                        st.windows.insert(w, Window::Failed(m.clone()));
                        st.fresh.push_back(w);
                    }
                }
            }
            shared.ready.notify_all();
        });
    }

    /// Records that window `w` was read: it moves to the back of the used
    /// list (read-ahead becomes used on its first read), or of the pinned
    /// list when it had been read and evicted before.
    fn touch(&self, st: &mut State, w: u64) {
        if let Some(i) = st.fresh.iter().position(|&x| x == w) {
            st.fresh.remove(i);
        } else if let Some(i) = st.used.iter().position(|&x| x == w) {
            st.used.remove(i);
        } else if let Some(i) = st.pinned.iter().position(|&x| x == w) {
            st.pinned.remove(i);
            st.pinned.push_back(w);
            return;
        }
        if let Some(i) = st.evicted.iter().position(|&x| x == w) {
            st.evicted.remove(i);
            st.pinned.push_back(w);
            if st.pinned.len() > self.shared.opts.cache_windows / MAX_PINNED_SHARE
                && let Some(old) = st.pinned.pop_front()
            {
                st.used.push_back(old);
            }
            return;
        }
        st.used.push_back(w);
    }

    /// Drops windows until the cache holds at most `cache_windows`: the least
    /// recently read first, then unread read-ahead (oldest first: a stream
    /// the reader left), pinned windows last. `keep` is never dropped.
    fn evict(&self, st: &mut State, keep: &[u64]) {
        let limit = self.shared.opts.cache_windows;
        // Read-ahead no stream is heading for (the reader jumped past it or
        // left that stream) would otherwise hold its place in the cache.
        let win = self.shared.opts.window as u64;
        let heads: Vec<u64> = st.heads.iter().map(|s| s.end.saturating_sub(1) / win).collect();
        let stale = |w: &u64| !keep.contains(w) && !heads.iter().any(|&h| *w > h && *w <= h + limit as u64);
        while let Some(i) = st.fresh.iter().position(stale) {
            if let Some(w) = st.fresh.remove(i) {
                st.windows.remove(&w);
            }
        }
        while st.used.len() + st.fresh.len() + st.pinned.len() > limit {
            let evictable = |list: &VecDeque<u64>| list.iter().position(|w| !keep.contains(w));
            let (w, was_read) = if let Some(i) = evictable(&st.used) {
                (st.used.remove(i), true)
            } else if let Some(i) = evictable(&st.fresh) {
                (st.fresh.remove(i), false)
            } else if let Some(i) = evictable(&st.pinned) {
                (st.pinned.remove(i), true)
            } else {
                break;
            };
            let Some(w) = w else { break };
            st.windows.remove(&w);
            if was_read {
                st.evicted.push_back(w);
                if st.evicted.len() > EVICTED_REMEMBERED {
                    st.evicted.pop_front();
                }
            }
        }
    }

    /// Copies into `buf` (bytes `offset..`) from the kept exact range that
    /// holds byte `at`, up to that range's end or `buf`'s; returns where the
    /// copy ended, or `None` when no kept range holds `at` (or, with
    /// `whole`, none holds all of `at..` up to `buf`'s end).
    fn copy_piece(st: &mut State, offset: u64, at: u64, buf: &mut [u8], whole: bool) -> Option<u64> {
        let end = offset + buf.len() as u64;
        let holds = |s: u64, len: u64| s <= at && if whole { end <= s + len } else { at < s + len };
        let i = st.pieces.iter().position(|(s, p)| holds(*s, p.len() as u64))?;
        let piece = st.pieces.remove(i).expect("position is valid");
        let to = end.min(piece.0 + piece.1.len() as u64);
        buf[(at - offset) as usize..(to - offset) as usize]
            .copy_from_slice(&piece.1[(at - piece.0) as usize..(to - piece.0) as usize]);
        st.pieces.push_back(piece);
        Some(to)
    }

    /// Bytes `start..=last`, fetched now (retries included) and waited for.
    fn fetch_now(&self, start: u64, last: u64) -> io::Result<Vec<u8>> {
        self.fetch_now_from(self.shared.target.clone(), start, last)
    }

    /// [`Self::fetch_now`] with `target`'s headers.
    fn fetch_now_from(&self, target: Target, start: u64, last: u64) -> io::Result<Vec<u8>> {
        let total = self.shared.info.size;
        let fetched =
            wait_for(
                self.runtime(),
                &self.shared.opts.cancel,
                async move { target.fetch(start, last, Some(total)).await },
            )
            .map_err(|m| self.stream_error(&m))?
            .map_err(|m| self.stream_error(&m))?;
        Ok(fetched.body)
    }

    /// Reads `offset..offset + buf.len()` (a scattered read) from kept exact
    /// ranges where they hold it, waiting for ranges being fetched that hold
    /// it, fetching exactly the 4 KiB blocks of the rest; small enough
    /// ranges are kept for reads of them again.
    fn read_piece(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let mut at = offset;
        while at < end {
            let mut st = self.shared.state.lock().expect("state lock");
            if let Some(to) = Self::copy_piece(&mut st, offset, at, buf, false) {
                at = to;
                continue;
            }
            if st.piece_fetches.iter().any(|&(s, e)| s <= at && at < e) {
                // Kept when it arrives (or fetched here if it failed or was not kept).
                drop(self.wait(st)?);
                continue;
            }
            // Up to the next kept or coming range, if one starts before the end.
            let upto = st
                .pieces
                .iter()
                .map(|(s, _)| *s)
                .chain(st.piece_fetches.iter().map(|&(s, _)| s))
                .filter(|s| *s > at && *s < end)
                .min()
                .unwrap_or(end);
            let start = at & !4095;
            let last = upto.next_multiple_of(4096).min(self.size()) - 1;
            st.piece_fetches.push((start, last + 1));
            drop(st);
            let fetched = self.fetch_now(start, last);
            let mut st = self.shared.state.lock().expect("state lock");
            st.piece_fetches.retain(|&r| r != (start, last + 1));
            self.shared.ready.notify_all();
            let body = fetched?;
            buf[(at - offset) as usize..(upto - offset) as usize]
                .copy_from_slice(&body[(at - start) as usize..(upto - start) as usize]);
            at = upto;
            if body.len() <= PIECE_BYTES {
                st.pieces.push_back((start, Arc::new(body)));
                while st.pieces.iter().map(|(_, p)| p.len()).sum::<usize>() > PIECE_BYTES {
                    st.pieces.pop_front();
                }
            }
        }
        Ok(())
    }

    /// Whether read-ahead may request `n` more windows: windows in flight and
    /// read ahead but not read yet must leave room in the cache for the
    /// windows being read, or they would be evicted before they are used.
    fn room_for_read_ahead(&self, st: &State, n: u64, reading: usize) -> bool {
        st.pending + st.fresh.len() + st.pinned.len() + n as usize + reading <= self.shared.opts.cache_windows
    }
}

impl ReadAt for HttpSource {
    fn size(&self) -> u64 {
        self.shared.info.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        super::check_range(offset, buf.len(), self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        let win = self.shared.opts.window as u64;
        let first = offset / win;
        let last = (offset + buf.len() as u64 - 1) / win;
        let needed: Vec<u64> = (first..=last).collect();
        let mut st = self.shared.state.lock().expect("state lock");
        let end = offset + buf.len() as u64;
        // A read continues a stream when it starts where the stream ended,
        // or in its last 4 KiB block (the verity layer reads whole blocks).
        let continues = |h: &Stream| offset <= h.end && offset + 4096 >= h.end && end > h.end;
        let stream = match st.heads.iter().position(continues) {
            Some(i) => st.heads.remove(i).map(|h| h.run).unwrap_or(0),
            None => 0,
        };
        st.heads.push_back(Stream { end, run: stream + buf.len() as u64 });
        if st.heads.len() > MAX_STREAMS {
            st.heads.pop_front();
        }
        let sequential = stream >= STREAM_MIN && !self.shared.scattered.load(Ordering::Relaxed);
        // Windows of a scattered read that are not in the cache are not
        // fetched whole: only the bytes the read needs are.
        let mut exact: Vec<u64> = Vec::new();
        if !sequential {
            if Self::copy_piece(&mut st, offset, offset, buf, true).is_some() {
                return Ok(());
            }
            exact = needed.iter().copied().filter(|w| !st.windows.contains_key(w)).collect();
        } else {
            self.request_run(&mut st, first, last - first + 1);
            // Stay ahead by at least two reads of this size, fetched in
            // requests of one read's size, several at once.
            let step = needed.len() as u64;
            let ahead = (self.shared.opts.read_ahead as u64).max(2 * step);
            let mut w = last + 1;
            while w <= last + ahead
                && st.in_flight < self.shared.opts.max_in_flight
                && !st.evicted.contains(&w)
                && self.room_for_read_ahead(&st, step, needed.len())
            {
                self.request_run(&mut st, w, step);
                w += step;
            }
        }
        for &w in needed.iter().filter(|w| !exact.contains(w)) {
            loop {
                match st.windows.get(&w) {
                    Some(Window::Ready(body, start, len)) => {
                        let data = &body[*start..*start + *len];
                        let wstart = w * win;
                        let from = offset.max(wstart);
                        let to = (offset + buf.len() as u64).min(wstart + data.len() as u64);
                        buf[(from - offset) as usize..(to - offset) as usize]
                            .copy_from_slice(&data[(from - wstart) as usize..(to - wstart) as usize]);
                        self.touch(&mut st, w);
                        break;
                    }
                    Some(Window::Failed(m)) => {
                        let m = m.clone();
                        st.windows.remove(&w);
                        st.fresh.retain(|&x| x != w);
                        return Err(self.stream_error(&m));
                    }
                    Some(Window::Pending) => st = self.wait(st)?,
                    None => self.request(&mut st, w),
                }
            }
        }
        self.evict(&mut st, &needed);
        drop(st);
        // Consecutive windows read exactly are fetched with one request.
        let mut i = 0;
        while i < exact.len() {
            let mut j = i + 1;
            while j < exact.len() && exact[j] == exact[j - 1] + 1 {
                j += 1;
            }
            let from = offset.max(exact[i] * win);
            let to = end.min((exact[j - 1] + 1) * win);
            self.read_piece(from, &mut buf[(from - offset) as usize..(to - offset) as usize])?;
            i = j;
        }
        Ok(())
    }

    fn advise_scattered(&self, scattered: bool) {
        self.shared.scattered.store(scattered, Ordering::Relaxed);
    }

    /// Fetched with `Cache-Control: no-cache` (and HTTP/1.0's `Pragma`), so
    /// a caching proxy passes the request to the origin.
    fn read_fresh_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        super::check_range(offset, buf.len(), self.size())?;
        if buf.is_empty() {
            return Ok(true);
        }
        let mut target = self.shared.target.clone();
        target.headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        target.headers.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
        let last = offset + buf.len() as u64 - 1;
        buf.copy_from_slice(&self.fetch_now_from(target, offset, last)?);
        // What this source kept of these bytes is what failed: forget it.
        let mut st = self.shared.state.lock().expect("state lock");
        let win = self.shared.opts.window as u64;
        for w in offset / win..=last / win {
            if matches!(st.windows.get(&w), Some(Window::Ready(..))) {
                st.windows.remove(&w);
                st.fresh.retain(|&x| x != w);
                st.used.retain(|&x| x != w);
                st.pinned.retain(|&x| x != w);
            }
        }
        st.pieces.retain(|(s, p)| s + p.len() as u64 <= offset || *s > last);
        Ok(true)
    }

    fn read_small_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        super::check_range(offset, buf.len(), self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        buf.copy_from_slice(&self.fetch_now(offset, offset + buf.len() as u64 - 1)?);
        Ok(())
    }

    /// Exactly these bytes, from a kept range holding them all or else
    /// fetched with one request (no rounding to 4 KiB blocks: nothing
    /// checks blocks here).
    fn read_exact_at_unverified(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        super::check_range(offset, buf.len(), self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        if Self::copy_piece(&mut self.shared.state.lock().expect("state lock"), offset, offset, buf, true).is_some() {
            return Ok(());
        }
        self.read_small_at(offset, buf)
    }
}

impl Drop for HttpSource {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_shown_and_only_sent_to_their_host() {
        assert_eq!(shown_url("https://fleet:s%3Acret@u.example/b.raucb"), "https://u.example/b.raucb");
        assert_eq!(shown_url("https://u.example/b.raucb"), "https://u.example/b.raucb");
        assert_eq!(shown_url("not a url"), "not a url");
        let asked = "https://fleet:pw@u.example/latest.raucb";
        assert_eq!(request_url(asked, "https://u.example/b.raucb"), "https://fleet:pw@u.example/b.raucb");
        assert_eq!(request_url(asked, "https://u.example:8443/b.raucb"), "https://u.example:8443/b.raucb");
        assert_eq!(request_url(asked, "https://cdn.example/b.raucb"), "https://cdn.example/b.raucb");
    }

    #[test]
    fn content_range_and_headers_parse() {
        assert_eq!(parse_content_range("bytes 0-3/1000"), Some((0, 3, 1000)));
        assert_eq!(parse_content_range("bytes 0-3/*"), None);
        assert_eq!(parse_header("X-Token: abc: d").unwrap(), ("X-Token".to_string(), "abc: d".to_string()));
        assert!(parse_header("nocolon").is_err());
    }
}
