//! Calling a secondary's ECU interface over mutually authenticated TLS.

use crate::Error;
use crate::proto::ecu_client::EcuClient;
use hyper_util::rt::TokioIo;
use openssl::ssl::SslConnector;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long to wait for the server's verdict on this ECU's certificate.
const VERDICT_WAIT: Duration = Duration::from_secs(5);

/// A client of one secondary.
pub type Client = EcuClient<Channel>;

async fn tls_connect(connector: &SslConnector, uri: Uri) -> std::io::Result<TokioIo<SslStream<TcpStream>>> {
    let other = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let authority = uri.authority().ok_or_else(|| other(&"no address"))?.to_string();
    let tcp = TcpStream::connect(&authority).await?;
    tcp.set_nodelay(true)?;
    // The peer is identified by the certificate it must present, not by a
    // host name: an ECU is reached by address.
    let mut cfg = connector.configure().map_err(|e| other(&e))?;
    cfg.set_verify_hostname(false);
    cfg.set_use_server_name_indication(false);
    let ssl = cfg.into_ssl("ecu").map_err(|e| other(&e))?;
    let mut stream = SslStream::new(ssl, tcp).map_err(|e| other(&e))?;
    if let Err(e) = Pin::new(&mut stream).connect().await {
        let verify = stream.ssl().verify_result();
        return Err(other(&match verify.as_raw() {
            0 => format!("TLS handshake with {authority} failed: {e}"),
            _ => format!("TLS handshake with {authority} failed: certificate verify failed: {}", verify.error_string()),
        }));
    }
    // With TLS 1.3 the server checks this ECU's certificate after the
    // client's side of the handshake is done: its verdict arrives as the
    // first record, an alert or (HTTP/2 servers speak first) its SETTINGS.
    // Waiting for that record turns a refusal into a clear error here
    // instead of a reset connection on the first call.
    if let Ok(Err(e)) = tokio::time::timeout(VERDICT_WAIT, Pin::new(&mut stream).peek(&mut [0u8; 1])).await {
        return Err(other(&format!("{authority} refused this ECU's certificate: {e}")));
    }
    Ok(TokioIo::new(stream))
}

/// Connects to the ECU interface at `address` (`host:port`), giving up
/// after `connect_timeout`; each call then has `call_timeout`.
pub async fn connect(
    address: &str,
    connector: SslConnector,
    connect_timeout: Duration,
    call_timeout: Duration,
) -> Result<Client, Error> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| Error::Transport(format!("Invalid ECU address '{address}': {e}")))?
        .connect_timeout(connect_timeout)
        .timeout(call_timeout);
    let connector = Arc::new(connector);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |uri: Uri| {
            let connector = connector.clone();
            async move { tls_connect(&connector, uri).await }
        }))
        .await
        .map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = s.to_string();
                source = s.source();
            }
            Error::Transport(format!("Connecting to ECU at {address} failed: {text}"))
        })?;
    Ok(EcuClient::new(channel))
}
