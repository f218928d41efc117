//! Header names spelt on the wire as given. hyper lowercases the names of
//! the headers it writes, unless a request carries the spellings as hyper
//! records them for a message it parsed (what a proxy built on hyper uses
//! to pass names on unchanged). That record is not public, so it is made
//! the way hyper makes it: by parsing, here a response naming each header
//! that hyper reads from an in-memory connection.

use http::Extensions;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Request extensions that make hyper spell each of `names` as given (a
/// name listed twice is spelt so for two values).
pub(super) async fn of(names: &[String]) -> Result<Extensions, String> {
    for n in names {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(format!("'{n}'"));
        }
    }
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(ours))
        .await
        .map_err(|e| e.to_string())?;
    let answer = async move {
        // The request first (its end is an empty line), then the answer.
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.ends_with(b"\r\n\r\n") {
            match theirs.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let mut text = String::from("HTTP/1.1 204 No Content\r\n");
        for n in names {
            text.push_str(n);
            text.push_str(": -\r\n");
        }
        text.push_str("\r\n");
        let _ = theirs.write_all(text.as_bytes()).await;
        let _ = theirs.shutdown().await;
    };
    let ask = async move {
        let req = hyper::Request::get("/").body(Empty::new()).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string());
        drop(sender);
        resp
    };
    let (_, _, resp) = tokio::join!(conn, answer, ask);
    Ok(resp?.into_parts().0.extensions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// The bytes hyper writes for a request carrying the spellings.
    #[tokio::test]
    async fn requests_carry_the_names_as_given() {
        let names: Vec<String> = ["RAUC-Boot-ID", "X-fleet", "X-fleet", "Range", "User-Agent", "Host"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ext = of(&names).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                seen.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
            String::from_utf8(seen).unwrap()
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::get("/b.raucb")
            .header("host", "example")
            .header("rauc-boot-id", "1")
            .header("x-fleet", "a")
            .header("x-fleet", "b")
            .header("x-other", "c")
            .header("range", "bytes=0-3")
            .body(Empty::new())
            .unwrap();
        *req.extensions_mut() = ext;
        sender.send_request(req).await.unwrap();
        let text = server.await.unwrap();
        for line in ["Host: example", "RAUC-Boot-ID: 1", "X-fleet: a", "X-fleet: b", "x-other: c", "Range: bytes=0-3"] {
            assert!(text.contains(&format!("\r\n{line}\r\n")), "{line} in {text}");
        }
        assert!(of(&["Bad Name".to_string()]).await.is_err());
    }
}
