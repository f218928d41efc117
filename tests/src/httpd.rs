//! A small in-process HTTP/1.1 file server for tests. It honours single
//! `Range` requests (and `If-Match` against a content-derived ETag) like a
//! real server and can be told to misbehave — always ([`Mode`]) or for a few
//! requests touching a given byte ([`Fault`]) — to test client behaviour.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// How the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Honest range support.
    Normal,
    /// Ignore `Range` and send `200` with the whole file.
    IgnoreRange,
    /// Answer every request with this status and an empty body.
    Status(u16),
    /// Send `206` with a `Content-Range` that does not match the request.
    WrongRange,
}

/// A misbehaviour for requests whose range covers a chosen byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Send this many body bytes, then close the connection.
    Reset(usize),
    /// Send this many body bytes, then go silent for this long and close.
    Stall(usize, std::time::Duration),
    /// A complete response that announces and sends only this many bytes.
    Short(usize),
    /// Answer with this status and an empty body.
    Status(u16),
    /// Ignore `Range`: `200` with the whole file.
    IgnoreRange,
    /// `206` with a `Content-Range` one byte off.
    WrongRange,
    /// Flip the bits of the body byte at the chosen offset.
    Corrupt,
    /// Send the body one byte at a time, this long apart (until the client
    /// gives up).
    Trickle(std::time::Duration),
}

/// Bytes a `Range: bytes=a-b` header value asks for (0 for none).
pub fn range_len(range: Option<&str>) -> u64 {
    let parse = || {
        let (a, b) = range?.strip_prefix("bytes=")?.split_once('-')?;
        Some(b.parse::<u64>().ok()? - a.parse::<u64>().ok()? + 1)
    };
    parse().unwrap_or(0)
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Request path.
    pub path: String,
    /// Header names (lower-case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// Header names as they were spelt, in order.
    pub spelt: Vec<String>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let n = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str())
    }

    /// Bytes the `Range: bytes=a-b` header asked for (0 without one).
    pub fn range_len(&self) -> u64 {
        range_len(self.header("range"))
    }
}

#[derive(Default)]
struct State {
    files: HashMap<String, Arc<Vec<u8>>>,
    /// Each file's ETag, derived from its content once when it is put.
    etags: HashMap<String, String>,
    /// Paths answered with `302 Found` and this `Location`.
    redirects: HashMap<String, String>,
    requests: Vec<Request>,
    delay: std::time::Duration,
    active: usize,
    max_active: usize,
    /// Ranges overlapping these bytes wait until it is cleared.
    hold: Option<(u64, u64)>,
    /// Requests for these paths wait until the hold is cleared.
    held_paths: Vec<String>,
    /// Pending faults: what, at which byte, how many more times.
    faults: Vec<(Fault, u64, usize)>,
    /// Faults served so far.
    faults_served: usize,
}

/// A running server; stops when dropped.
pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    mode: Arc<Mutex<Mode>>,
    stop: Arc<AtomicBool>,
    netns: Option<crate::netns::Netns>,
}

impl Server {
    /// Waits (up to a minute) until a request for a range that overlaps
    /// the bytes `from..to` arrived.
    pub fn wait_for_range(&self, from: u64, to: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let overlaps = |r: &Request| {
            let range = r.header("range").and_then(|v| v.strip_prefix("bytes=")).and_then(|v| v.split_once('-'));
            range.is_some_and(|(a, b)| a.parse::<u64>().unwrap() < to && b.parse::<u64>().unwrap() >= from)
        };
        while !self.requests().iter().any(overlaps) {
            assert!(std::time::Instant::now() < deadline, "no request reached bytes {from}..{to}");
            thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Starts on an ephemeral port of 127.0.0.1.
    pub fn start() -> Server {
        Server::start_on(TcpListener::bind("127.0.0.1:0").expect("bind"), None)
    }

    /// Starts on `addr` inside network namespace `netns` (a host of a
    /// [`crate::netns::Lan`]: an origin server the ECUs reach over the LAN).
    pub fn start_in(netns: &crate::netns::Netns, addr: &str) -> Server {
        let listener = netns.run(|| TcpListener::bind(addr).expect("bind in the namespace"));
        Server::start_on(listener, Some(netns.handle()))
    }

    fn start_on(listener: TcpListener, netns: Option<crate::netns::Netns>) -> Server {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, m, st) = (state.clone(), mode.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s, m) = (s.clone(), m.clone());
                thread::spawn(move || {
                    let _ = serve_connection(conn, &s, &m);
                });
            }
        });
        Server { addr, state, mode, stop, netns }
    }

    /// Serves `data` at `path` (e.g. `/b.raucb`).
    pub fn put(&self, path: &str, data: Vec<u8>) {
        let mut st = self.state.lock().unwrap();
        st.etags.insert(path.to_string(), etag_of(&data));
        st.files.insert(path.to_string(), Arc::new(data));
    }

    /// Answers requests for `path` with `302 Found` to `location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.state.lock().unwrap().redirects.insert(path.to_string(), location.to_string());
    }

    /// Changes the behaviour for subsequent requests.
    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Waits this long before answering each request (makes overlap visible).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Holds back every range overlapping bytes `start..end` of a file
    /// until [`Server::release`]: a transfer that stops mid-way, on purpose.
    pub fn hold(&self, start: u64, end: u64) {
        self.state.lock().unwrap().hold = Some((start, end));
    }

    /// Holds back every request for `path` until [`Server::release`]: a
    /// server that accepts the request and then says nothing.
    pub fn hold_path(&self, path: &str) {
        self.state.lock().unwrap().held_paths.push(path.to_string());
    }

    /// Lets held ranges and paths through.
    pub fn release(&self) {
        let mut st = self.state.lock().unwrap();
        st.hold = None;
        st.held_paths.clear();
    }

    /// Misbehaves `times` times, for the next requests whose range covers byte `at`.
    pub fn inject(&self, fault: Fault, at: u64, times: usize) {
        self.state.lock().unwrap().faults.push((fault, at, times));
    }

    /// How many injected faults were served.
    pub fn faults_served(&self) -> usize {
        self.state.lock().unwrap().faults_served
    }

    /// The most requests that were being answered at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.state.lock().unwrap().max_active
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        match &self.netns {
            // A namespace already gone took the listener with it.
            Some(ns) => drop(ns.try_run(|| drop(TcpStream::connect(self.addr)))),
            None => drop(TcpStream::connect(self.addr)),
        }
    }
}

fn parse_range(v: &str, len: u64) -> Option<(u64, u64)> {
    let spec = v.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a: u64 = a.parse().ok()?;
    let b: u64 = if b.is_empty() { len - 1 } else { b.parse().ok()? };
    (a <= b && b < len).then_some((a, b))
}

fn serve_connection(conn: TcpStream, state: &Mutex<State>, mode: &Mutex<Mode>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let mut headers = Vec::new();
        let mut spelt = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                spelt.push(k.trim().to_string());
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let req = Request { path: path.clone(), headers, spelt };
        let (file, delay, redirect) = {
            let mut st = state.lock().unwrap();
            st.requests.push(req.clone());
            st.active += 1;
            st.max_active = st.max_active.max(st.active);
            let etag = st.etags.get(&path).cloned().unwrap_or_default();
            (st.files.get(&path).cloned().map(|f| (f, etag)), st.delay, st.redirects.get(&path).cloned())
        };
        if let Some(location) = redirect {
            state.lock().unwrap().active -= 1;
            write!(out, "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        thread::sleep(delay);
        while state.lock().unwrap().held_paths.contains(&path) {
            thread::sleep(std::time::Duration::from_millis(10));
        }
        let end = file.as_ref().and_then(|(d, _)| req.header("range").and_then(|r| parse_range(r, d.len() as u64)));
        while end.is_some_and(|(a, b)| state.lock().unwrap().hold.is_some_and(|(s, e)| a < e && b >= s)) {
            thread::sleep(std::time::Duration::from_millis(10));
        }
        let fault = end.and_then(|(a, b)| {
            let mut st = state.lock().unwrap();
            let i = st.faults.iter().position(|(_, at, n)| *n > 0 && (a..=b).contains(at))?;
            st.faults[i].2 -= 1;
            st.faults_served += 1;
            let (f, at, _) = st.faults[i].clone();
            Some((f, at - a))
        });
        let result = match fault {
            Some((f, at)) => misbehave(&mut out, &req, file.expect("range implies file"), end.unwrap(), f, at),
            None => respond(&mut out, &req, &method, file, mode),
        };
        state.lock().unwrap().active -= 1;
        result?;
    }
}

fn respond(
    out: &mut TcpStream,
    req: &Request,
    method: &str,
    file: Option<(Arc<Vec<u8>>, String)>,
    mode: &Mutex<Mode>,
) -> std::io::Result<()> {
    let mode = mode.lock().unwrap().clone();
    let head = method == "HEAD";
    let Some((data, tag)) = file else {
        return write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    };
    let len = data.len() as u64;
    let range = req.header("range").and_then(|r| parse_range(r, len));
    match (mode, range) {
        (Mode::Status(code), _) => write!(out, "HTTP/1.1 {code} Status\r\nContent-Length: 0\r\n\r\n")?,
        (Mode::IgnoreRange, _) | (_, None) => {
            write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")?;
            if !head {
                out.write_all(&data)?;
            }
        }
        (Mode::WrongRange, Some((a, b))) => partial(out, req, (&data, &tag), a + 1, (b + 1).min(len - 1), head, false)?,
        (Mode::Normal, Some((a, b))) => partial(out, req, (&data, &tag), a, b, head, true)?,
    }
    out.flush()
}

/// An ETag derived from the content, so that a replaced file gets a new one.
fn etag_of(data: &[u8]) -> String {
    let sum = data.iter().enumerate().fold(0u64, |h, (i, b)| h.wrapping_mul(31).wrapping_add(*b as u64 ^ i as u64));
    format!("\"{:x}-{sum:x}\"", data.len())
}

/// Answers a range request the way `fault` says; `at` is the chosen byte's
/// offset within the range.
fn misbehave(
    out: &mut TcpStream,
    req: &Request,
    (data, tag): (Arc<Vec<u8>>, String),
    (a, b): (u64, u64),
    fault: Fault,
    at: u64,
) -> std::io::Result<()> {
    let len = data.len();
    let body = &data[a as usize..=b as usize];
    let head = |out: &mut TcpStream, n: usize| {
        write!(
            out,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{len}\r\nContent-Length: {n}\r\nETag: {tag}\r\n\r\n",
        )
    };
    match fault {
        Fault::Reset(n) => {
            head(out, body.len())?;
            out.write_all(&body[..n.min(body.len())])?;
            out.flush()?;
            out.shutdown(std::net::Shutdown::Both)?;
            Err(std::io::Error::other("reset on purpose"))
        }
        Fault::Stall(n, pause) => {
            head(out, body.len())?;
            out.write_all(&body[..n.min(body.len())])?;
            out.flush()?;
            thread::sleep(pause);
            out.shutdown(std::net::Shutdown::Both)?;
            Err(std::io::Error::other("stalled on purpose"))
        }
        Fault::Short(n) => {
            head(out, n.min(body.len()))?;
            out.write_all(&body[..n.min(body.len())])?;
            out.flush()
        }
        Fault::Status(code) => {
            write!(out, "HTTP/1.1 {code} Status\r\nContent-Length: 0\r\n\r\n")?;
            out.flush()
        }
        Fault::IgnoreRange => {
            write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")?;
            out.write_all(&data)?;
            out.flush()
        }
        Fault::WrongRange => partial(out, req, (&data, &tag), a + 1, (b + 1).min(len as u64 - 1), false, true),
        Fault::Corrupt => {
            let mut body = body.to_vec();
            body[at as usize] ^= 0xff;
            head(out, body.len())?;
            out.write_all(&body)?;
            out.flush()
        }
        Fault::Trickle(gap) => {
            head(out, body.len())?;
            for byte in body {
                out.write_all(&[*byte])?;
                out.flush()?;
                thread::sleep(gap);
            }
            Ok(())
        }
    }
}

/// Writes a `206` with bytes `a..=b` of `data`, whose ETag is `tag` (`412`
/// when `If-Match` names another version).
fn partial(
    out: &mut TcpStream,
    req: &Request,
    (data, tag): (&[u8], &str),
    a: u64,
    b: u64,
    head: bool,
    etag: bool,
) -> std::io::Result<()> {
    if etag && req.header("if-match").is_some_and(|m| m != tag) {
        return write!(out, "HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\n\r\n");
    }
    let etag = if etag { format!("ETag: {tag}\r\n") } else { String::new() };
    write!(
        out,
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}\r\nContent-Length: {}\r\n{etag}\r\n",
        data.len(),
        b - a + 1
    )?;
    if !head {
        out.write_all(&data[a as usize..=b as usize])?;
    }
    Ok(())
}

/// A verity bundle `name` (in `test-bundles/<name>`) with one rootfs image
/// of `size` random bytes, served at `/b.raucb` by a server that holds back
/// the bytes `hold` (from, to) until released: the bundle, the image, the server.
pub fn held_bundle(name: &str, size: usize, hold: (u64, u64)) -> (std::path::PathBuf, Vec<u8>, Server) {
    let dir = crate::target_dir().join("test-bundles").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let c = crate::Content::new(dir.join("content"));
    let image = c.image("rootfs.img", size, 31);
    c.manifest(
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.img\n",
    );
    let b = dir.join("b.raucb");
    crate::rota_bundle(&c.dir, &b, "release").ok();
    let server = Server::start();
    server.put("/b.raucb", std::fs::read(&b).unwrap());
    server.hold(hold.0, hold.1);
    (b, image, server)
}
