//! Serving the ECU interface: TCP connections are accepted, each TLS
//! handshake runs on its own task (a slow or hostile peer holds up nobody),
//! and only connections whose peer certificate verified reach gRPC.

use crate::Error;
use crate::proto::ecu_server::{Ecu, EcuServer};
use openssl::ssl::{Ssl, SslAcceptor};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;
use tonic::transport::server::Connected;

/// Longest time a peer may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server.
const ACCEPT_QUEUE: usize = 16;

/// Who is on the other end of an authenticated connection; handlers find it
/// in a request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The subject of the certificate it presented, one line.
    pub subject: String,
}

/// A connection whose peer passed the TLS handshake.
pub struct Authenticated {
    stream: SslStream<TcpStream>,
    peer: Peer,
}

impl Connected for Authenticated {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Authenticated {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Authenticated {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The one-line subject of a certificate.
pub fn subject_line(cert: &openssl::x509::X509Ref) -> String {
    cert.subject_name()
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            format!("{key}={}", String::from_utf8_lossy(e.data().as_slice()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn handshake(acceptor: &SslAcceptor, tcp: TcpStream, addr: SocketAddr) -> Result<Authenticated, String> {
    let ssl = Ssl::new(acceptor.context()).map_err(|e| e.to_string())?;
    let mut stream = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, Pin::new(&mut stream).accept()).await {
        Err(_) => Err("TLS handshake timed out".into()),
        Ok(Err(e)) => {
            let verify = stream.ssl().verify_result();
            Err(match verify.as_raw() {
                0 => e.to_string(),
                _ => format!("{e}: certificate verify failed: {}", verify.error_string()),
            })
        }
        Ok(Ok(())) => {
            let subject = stream.ssl().peer_certificate().map(|c| subject_line(&c)).unwrap_or_default();
            Ok(Authenticated { stream, peer: Peer { addr, subject } })
        }
    }
}

/// Serves `service` on `listener` until `shutdown` completes; peers must
/// pass `acceptor`'s checks. `refused` hears about every refused peer.
pub async fn serve<S: Ecu>(
    listener: TcpListener,
    acceptor: SslAcceptor,
    service: S,
    refused: impl Fn(SocketAddr, &str) + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let acceptor = Arc::new(acceptor);
    let refused = Arc::new(refused);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Authenticated, std::io::Error>>(ACCEPT_QUEUE);
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("ECU interface: accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, tx, refused) = (acceptor.clone(), tx.clone(), refused.clone());
            tokio::spawn(async move {
                match handshake(&acceptor, tcp, addr).await {
                    Ok(conn) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(reason) => {
                        tracing::warn!("ECU interface: refused {addr}: {reason}");
                        refused(addr, &reason);
                    }
                }
            });
        }
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let result = tonic::transport::Server::builder()
        .add_service(EcuServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Transport(format!("ECU interface: {e}")));
    accept_loop.abort();
    result
}
