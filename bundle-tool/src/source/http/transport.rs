//! How a GET reaches the server: hyper with an OpenSSL connector of our own
//! (`hyper-openssl`), so that requests go out as curl, and so RAUC, sends
//! them. reqwest cannot do three things this needs: trust a CA file's
//! certificates as anchors, an intermediate one included (OpenSSL's partial
//! chains, curl's default), hold a client key that lives on a PKCS#11 token
//! (native-tls only takes key bytes), and send header names spelt as given
//! (`RAUC-Boot-ID`, not `rauc-boot-id`: HTTP/1 servers may tell them apart,
//! RAUC's own test server does). Redirects, `user:password@` credentials,
//! proxies from the environment and timeouts are handled here.

use super::HttpOptions;
use crate::signature;
use http::header::{
    ACCEPT, AUTHORIZATION, COOKIE, HeaderMap, HeaderValue, LOCATION, PROXY_AUTHORIZATION, WWW_AUTHENTICATE,
};
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper::body::{Bytes, Incoming};
use hyper_openssl::client::legacy::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Redirects followed per request, as RAUC (curl) does.
const MAX_REDIRECTS: usize = 8;

/// Headers of our own on the wire, spelt as curl spells them.
const WIRE_NAMES: [&str; 8] = [
    "Host",
    "User-Agent",
    "Accept",
    "Range",
    "If-Match",
    "If-Unmodified-Since",
    "Authorization",
    "Proxy-Authorization",
];

/// Why a request got no usable response.
pub(super) enum SendError {
    /// The TLS handshake failed (certificates): retrying will not help.
    Tls(String),
    /// No connection could be made.
    Connect(String),
    /// The request failed on its way (timeouts, resets): worth another try.
    Transient(String),
    /// Retrying will not help.
    Fatal(String),
}

/// The configured HTTP client: hyper's pooled client on an OpenSSL
/// connector (clones share the pool).
#[derive(Clone)]
pub(super) struct Client {
    client: hyper_util::client::legacy::Client<HttpsConnector<ProxyConnector>, Empty<Bytes>>,
    proxies: Arc<Matcher>,
    stall: Duration,
    /// Header names as they are to be spelt on the wire.
    names: Arc<[String]>,
    /// The spellings in the form hyper writes requests with (made once).
    spellings: Arc<tokio::sync::OnceCell<http::Extensions>>,
}

/// Status, headers and the body still to read.
pub(super) struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The URL that answered, after redirects.
    pub url: String,
    body: Body,
}

struct Body {
    body: Incoming,
    stall: Duration,
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("Failed to read {what} '{}': {e}", path.display()))
}

impl Client {
    /// The client for `opts`.
    pub(super) fn build(opts: &HttpOptions) -> Result<Client, String> {
        match (&opts.tls_cert, &opts.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                Err("TLS client certificate and key must be given together".to_string())
            }
            _ => Client::build_checked(opts),
        }
    }
}

impl Response {
    /// The next piece of the body; `None` at its end.
    pub(super) async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        let Body { body, stall } = &mut self.body;
        loop {
            let frame =
                tokio::time::timeout(*stall, body.frame()).await.map_err(|_| "operation timed out".to_string())?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(error_chain(&e)),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// Connections for the client: direct, or through the proxy the
/// environment names for the destination (`http_proxy`, `https_proxy`,
/// `all_proxy`, `no_proxy`, as curl reads them): `https://` through a
/// `CONNECT` tunnel, `http://` as absolute-form requests to the proxy.
#[derive(Clone)]
struct ProxyConnector {
    http: HttpConnector,
    proxies: Arc<Matcher>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = ProxyStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<ProxyStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let intercept = self.proxies.intercept(&dst);
        Box::pin(async move {
            match intercept {
                None => Ok(ProxyStream { io: http.call(dst).await?, proxied: false }),
                Some(via) if dst.scheme_str() == Some("https") => {
                    let mut tunnel = Tunnel::new(via.uri().clone(), http);
                    if let Some(auth) = via.basic_auth() {
                        tunnel = tunnel.with_auth(auth.clone());
                    }
                    Ok(ProxyStream { io: tunnel.call(dst).await?, proxied: false })
                }
                Some(via) => Ok(ProxyStream { io: http.call(via.uri().clone()).await?, proxied: true }),
            }
        })
    }
}

/// A connection, possibly to a proxy that takes absolute-form requests.
struct ProxyStream {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for ProxyStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for ProxyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ProxyStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Client {
    fn build_checked(opts: &HttpOptions) -> Result<Client, String> {
        let ssl_err =
            |e: openssl::error::ErrorStack| format!("Failed to set up TLS: {}", signature::openssl_reason(&e));
        let mut ssl = SslConnector::builder(SslMethod::tls_client()).map_err(ssl_err)?;
        ssl.set_alpn_protos(b"\x02h2\x08http/1.1").map_err(ssl_err)?;
        if let Some(ca) = &opts.tls_ca {
            let pem = read_file(ca, "CA file")?;
            let certs = X509::stack_from_pem(&pem).map_err(|e| format!("Invalid CA file '{}': {e}", ca.display()))?;
            // The CA file replaces the system trust store; each of its
            // certificates is an anchor, an intermediate one too (curl's
            // default, and so RAUC's).
            let mut store = X509StoreBuilder::new().map_err(ssl_err)?;
            for c in certs {
                store.add_cert(c).map_err(ssl_err)?;
            }
            store.set_flags(X509VerifyFlags::PARTIAL_CHAIN).map_err(ssl_err)?;
            ssl.set_cert_store(store.build());
        }
        if opts.tls_no_verify {
            ssl.set_verify(SslVerifyMode::NONE);
        }
        if let (Some(cert), Some(key)) = (&opts.tls_cert, &opts.tls_key) {
            let cert = signature::load_cert(cert).map_err(|e| e.to_string())?;
            let key = signature::load_private_key(key).map_err(|e| e.to_string())?;
            ssl.set_certificate(&cert).map_err(ssl_err)?;
            ssl.set_private_key(&key).map_err(ssl_err)?;
            ssl.check_private_key().map_err(|e| {
                format!("TLS client key does not match the certificate: {}", signature::openssl_reason(&e))
            })?;
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(opts.connect_timeout));
        let proxies = Arc::new(Matcher::from_env());
        let connector = ProxyConnector { http, proxies: proxies.clone() };
        let mut https = HttpsConnector::with_connector(connector, ssl).map_err(ssl_err)?;
        if opts.tls_no_verify {
            https.set_callback(|c, _| {
                c.set_verify_hostname(false);
                Ok(())
            });
        }
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(opts.max_in_flight.max(1))
            .build(https);
        // Every name a request may carry, each as often as it may appear.
        let mut names: Vec<String> = opts.headers.iter().chain(&opts.info_headers).map(|(k, _)| k.clone()).collect();
        names.extend(WIRE_NAMES.iter().map(|n| n.to_string()));
        let spellings = Arc::new(tokio::sync::OnceCell::new());
        Ok(Client { client, proxies, stall: opts.stall_timeout, names: names.into(), spellings })
    }

    /// GETs `url` with `headers`, following redirects.
    pub(super) async fn get(&self, url: &str, headers: &HeaderMap) -> Result<Response, SendError> {
        let spellings = self
            .spellings
            .get_or_try_init(|| super::spellings::of(&self.names))
            .await
            .map_err(|e| SendError::Fatal(format!("invalid HTTP header names: {e}")))?;
        let mut url = url::Url::parse(url)
            .map_err(|e| SendError::Fatal(format!("invalid URL '{}': {e}", super::shown_url(url))))?;
        let mut headers = headers.clone();
        for _ in 0..=MAX_REDIRECTS {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(SendError::Fatal(format!("unsupported URL scheme '{}'", url.scheme())));
            }
            let (uri, auth) = without_credentials(&url);
            let mut req = hyper::Request::get(uri.as_str());
            *req.extensions_mut().expect("a valid request") = spellings.clone();
            let h = req.headers_mut().expect("a valid request");
            h.insert(ACCEPT, HeaderValue::from_static("*/*"));
            h.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
            if let Some(auth) = auth {
                h.insert(AUTHORIZATION, auth);
            }
            // An http:// request to a proxy carries the proxy's credentials.
            if uri.scheme() == "http"
                && let Ok(dst) = uri.as_str().parse::<Uri>()
                && let Some(auth) = self.proxies.intercept(&dst).and_then(|i| i.basic_auth().cloned())
            {
                h.insert(PROXY_AUTHORIZATION, auth);
            }
            let req = req.body(Empty::new()).map_err(|e| SendError::Fatal(format!("invalid request: {e}")))?;
            let resp = tokio::time::timeout(self.stall, self.client.request(req))
                .await
                .map_err(|_| SendError::Transient("operation timed out".to_string()))?
                .map_err(|e| {
                    if is_tls_failure(&e) {
                        SendError::Tls(error_chain(&e))
                    } else if e.is_connect() {
                        SendError::Connect(error_chain(&e))
                    } else {
                        SendError::Transient(error_chain(&e))
                    }
                })?;
            let status = resp.status().as_u16();
            let location = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok());
            if let (301 | 302 | 303 | 307 | 308, Some(location)) = (status, location) {
                let next = url
                    .join(location)
                    .map_err(|e| SendError::Fatal(format!("invalid redirect to '{location}': {e}")))?;
                if !same_host(&next, &url) {
                    // Credentials go to the host they were given for, not where it sends us.
                    strip_credentials(&mut headers);
                }
                url = next;
                continue;
            }
            let (parts, body) = resp.into_parts();
            return Ok(Response {
                status,
                headers: parts.headers,
                // Without `user:password@`.
                url: without_credentials(&url).0.to_string(),
                body: Body { body, stall: self.stall },
            });
        }
        Err(SendError::Fatal(format!("more than {MAX_REDIRECTS} redirects")))
    }
}

/// Drops the headers that carry credentials (as curl does when a redirect
/// leaves the host): `Authorization`, `Cookie`,
/// `Proxy-Authorization`, `WWW-Authenticate`.
pub(super) fn strip_credentials(headers: &mut HeaderMap) {
    for name in [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, WWW_AUTHENTICATE] {
        headers.remove(name);
    }
}

/// Whether `a` and `b` name the same host and port.
pub(super) fn same_host(a: &url::Url, b: &url::Url) -> bool {
    a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// `url` without `user:password@`, and those as a Basic `Authorization` value.
fn without_credentials(url: &url::Url) -> (url::Url, Option<HeaderValue>) {
    if url.username().is_empty() && url.password().is_none() {
        return (url.clone(), None);
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let pair = format!("{}:{}", decode(url.username()), decode(url.password().unwrap_or_default()));
    let value = HeaderValue::from_str(&format!("Basic {}", openssl::base64::encode_block(pair.as_bytes()))).ok();
    let mut bare = url.clone();
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    (bare, value)
}

/// The error and its causes, each text once (libraries often repeat their source).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        src = s.source();
    }
    parts.join(": ")
}

/// Whether OpenSSL failed the TLS handshake (certificate checks and the like):
/// retrying will not help, and the server did respond.
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        if s.is::<openssl::ssl::Error>()
            || s.is::<openssl::error::ErrorStack>()
            || s.to_string().contains("SSL routines")
        {
            return true;
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_become_basic_authorization() {
        let url = url::Url::parse("https://fleet%40x:p%3Ass@updates.example/b.raucb").unwrap();
        let (bare, auth) = without_credentials(&url);
        assert_eq!(bare.as_str(), "https://updates.example/b.raucb");
        let expected = format!("Basic {}", openssl::base64::encode_block(b"fleet@x:p:ss"));
        assert_eq!(auth.unwrap().to_str().unwrap(), expected);
        let plain = url::Url::parse("http://updates.example/b.raucb").unwrap();
        assert!(without_credentials(&plain).1.is_none());
    }
}
