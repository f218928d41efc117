//! Whole files over HTTP(S) (a remote chunk store's `.cacnk` files) with
//! the range reader's client and rules: TLS options, headers, proxies,
//! retries with pauses, stall and speed limits, cancellation. Fetches can
//! be started ahead of need; at most `max_in_flight` run at once.

use super::{CANCELLED, CancelCheck, Client, HttpOptions, HttpStats, Target, header_map, shown_url};
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};

/// What one fetch gives: the body, `None` when the server has no such file.
pub type Fetched = Result<Option<Vec<u8>>, String>;

/// A client for whole files, several in flight.
pub struct HttpObjects {
    target: Arc<Target>,
    runtime: Option<tokio::runtime::Runtime>,
    permits: Arc<tokio::sync::Semaphore>,
    started: Mutex<HashMap<String, Receiver<Fetched>>>,
    cancel: Option<CancelCheck>,
}

impl HttpObjects {
    /// A client with `opts` (its window and read-ahead settings do not apply).
    pub fn new(opts: &HttpOptions) -> Result<HttpObjects, String> {
        let client = Client::build(opts)?;
        let mut headers = header_map(&opts.headers)?;
        if let Ok(ua) = HeaderValue::from_str(&opts.user_agent) {
            headers.insert(http::header::USER_AGENT, ua);
        }
        let runtime = super::runtime()?;
        let target = Target::new(opts, client, String::new(), headers, Arc::new(HttpStats::default()));
        Ok(HttpObjects {
            target: Arc::new(target),
            runtime: Some(runtime),
            permits: Arc::new(tokio::sync::Semaphore::new(opts.max_in_flight.max(1))),
            started: Mutex::new(HashMap::new()),
            cancel: opts.cancel.clone(),
        })
    }

    fn spawn(&self, url: &str, limit: u64) -> Receiver<Fetched> {
        let (tx, rx) = channel();
        let (target, permits, url) = (self.target.clone(), self.permits.clone(), url.to_string());
        self.runtime.as_ref().expect("runtime until drop").spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else { return };
            let _ = tx.send(target.fetch_object(&url, limit).await);
        });
        rx
    }

    /// Starts fetching `url` (at most `limit` bytes) unless it is already
    /// under way; [`HttpObjects::get`] collects it.
    pub fn start(&self, url: &str, limit: u64) {
        let mut started = self.started.lock().expect("started lock");
        if !started.contains_key(url) {
            let rx = self.spawn(url, limit);
            started.insert(url.to_string(), rx);
        }
    }

    /// The file at `url` (at most `limit` bytes): collected when it was
    /// started, fetched now otherwise. Errors name the URL without credentials.
    pub fn get(&self, url: &str, limit: u64) -> Fetched {
        let rx = self.started.lock().expect("started lock").remove(url);
        let rx = rx.unwrap_or_else(|| self.spawn(url, limit));
        loop {
            match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(r) => return r.map_err(|e| format!("{}: {e}", shown_url(url))),
                Err(RecvTimeoutError::Disconnected) => return Err("HTTP runtime stopped".into()),
                Err(RecvTimeoutError::Timeout) if CancelCheck::cancelled(&self.cancel) => {
                    return Err(CANCELLED.into());
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Requests and body bytes so far.
    pub fn stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.target.stats.requests.load(Relaxed), self.target.stats.bytes.load(Relaxed))
    }
}

impl Drop for HttpObjects {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
