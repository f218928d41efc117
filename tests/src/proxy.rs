//! An HTTP proxy for tests, on 127.0.0.1: `CONNECT` tunnels (for `https://`)
//! and absolute-form requests (for `http://`, forwarded with
//! `Connection: close`). It records each request line and its
//! `Proxy-Authorization`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `CONNECT host:port` or `GET http://host:port/path`.
    pub line: String,
    /// The `Proxy-Authorization` value, if any.
    pub auth: Option<String>,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts on an ephemeral port.
    pub fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        Proxy { addr, seen, stop }
    }

    /// `http://user:password@127.0.0.1:<port>`.
    pub fn url(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@{}", self.addr)
    }

    /// The requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(client: TcpStream, seen: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Ok(());
        }
        let h = h.trim_end().to_string();
        if h.is_empty() {
            break;
        }
        headers.push(h);
    }
    let value = |name: &str| {
        headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
    seen.lock().unwrap().push(Seen { line: format!("{method} {target}"), auth: value("proxy-authorization") });
    let mut client_w = client;
    let upstream = if method == "CONNECT" {
        let up = TcpStream::connect(&target)?;
        client_w.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")?;
        up
    } else {
        let rest = target.strip_prefix("http://").unwrap_or(&target);
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut up = TcpStream::connect(host)?;
        let mut head = format!("{method} {} HTTP/1.1\r\n", if path.is_empty() { "/" } else { path });
        for h in &headers {
            let name = h.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
            if !name.starts_with("proxy-") && name != "connection" {
                head += &format!("{h}\r\n");
            }
        }
        head += "Connection: close\r\n\r\n";
        up.write_all(head.as_bytes())?;
        up
    };
    let mut up_r = upstream.try_clone()?;
    let mut up_w = upstream;
    let back = thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Both);
    });
    let mut buf = [0u8; 65536];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if up_w.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = up_w.shutdown(Shutdown::Write);
    let _ = back.join();
    Ok(())
}
