//! The websocket link to the CSMS (OCPP-J 1.6 §3–4, OCPP 2.0.1 part 4 and
//! the security profiles of part 2 / the 1.6 security extension): the
//! station's URL is the CSMS URL with the station id appended, the
//! subprotocol names the version, profile 1 and 2 send HTTP basic
//! authentication (user = station id), profile 2 and 3 use TLS (`wss://`)
//! checked against a CA file, profile 3 adds a client certificate.
//!
//! One call of the station is outstanding at a time, as OCPP-J asks; calls
//! of the CSMS arrive on [`Link::next_call`] and are answered with
//! [`Link::answer`].

use crate::Protocol;
use crate::messages::Action;
use crate::rpc::{ErrorCode, Frame};
use futures_util::SinkExt;
use futures_util::stream::{SplitSink, StreamExt};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How to reach the CSMS.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The CSMS's websocket URL (`ws://…` or `wss://…`), without the station id.
    pub csms: String,
    /// The station's identity, appended to the URL.
    pub station_id: String,
    /// The OCPP version.
    pub protocol: Protocol,
    /// Basic authentication password (security profiles 1 and 2).
    pub password: Option<String>,
    /// CA certificates (PEM) the CSMS's certificate must chain to (`wss://`);
    /// the system's store when unset.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for security profile 3.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// How long a call may wait for its answer.
    pub call_timeout: Duration,
}

/// Why the link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The connection could not be made or was lost.
    #[error("CSMS connection: {0}")]
    Connection(String),
    /// A configuration file could not be used.
    #[error("{0}")]
    Config(String),
    /// The CSMS answered a call with a `CALLERROR`.
    #[error("the CSMS refused {action}: {code}: {description}")]
    Refused {
        /// The action called.
        action: String,
        /// The error code.
        code: String,
        /// The CSMS's text.
        description: String,
    },
    /// The CSMS's answer did not fit the action's response.
    #[error("the CSMS's answer to {action} is malformed: {reason}")]
    BadResponse {
        /// The action called.
        action: String,
        /// What is wrong.
        reason: String,
    },
    /// No answer in time.
    #[error("the CSMS did not answer {0} in time")]
    Timeout(String),
}

/// A call from the CSMS, to be answered with [`Link::answer`].
#[derive(Debug, Clone)]
pub struct IncomingCall {
    /// Message id.
    pub id: String,
    /// The action.
    pub action: String,
    /// The request's JSON object.
    pub payload: Value,
}

type Pending = Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<Frame>>>>;
type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// An open OCPP-J connection.
pub struct Link {
    protocol: Protocol,
    sink: Arc<Mutex<Sink>>,
    pending: Pending,
    calls: mpsc::Receiver<IncomingCall>,
    /// Held while a call of ours is outstanding.
    one_at_a_time: Mutex<()>,
    next_id: AtomicU64,
    id_prefix: String,
    call_timeout: Duration,
}

impl Link {
    /// Opens the websocket to the CSMS.
    pub async fn connect(cfg: &LinkConfig) -> Result<Link, LinkError> {
        let url = format!("{}/{}", cfg.csms.trim_end_matches('/'), cfg.station_id);
        let conn = |e: &dyn std::fmt::Display| LinkError::Connection(format!("{url}: {e}"));
        let mut request = url.as_str().into_client_request().map_err(|e| conn(&e))?;
        let headers = request.headers_mut();
        headers.insert("Sec-WebSocket-Protocol", HeaderValue::from_static(cfg.protocol.subprotocol()));
        if let Some(password) = &cfg.password {
            let token = openssl::base64::encode_block(format!("{}:{password}", cfg.station_id).as_bytes());
            let value = HeaderValue::from_str(&format!("Basic {token}")).map_err(|e| conn(&e))?;
            headers.insert("Authorization", value);
        }
        let connector = if url.starts_with("wss://") { Some(tls_connector(cfg)?) } else { None };
        let (stream, response) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            false,
            connector.map(tokio_tungstenite::Connector::NativeTls),
        )
        .await
        .map_err(|e| conn(&e))?;
        let chosen = response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok());
        if chosen != Some(cfg.protocol.subprotocol()) {
            return Err(LinkError::Connection(format!(
                "{url}: the CSMS does not speak {} (it chose {})",
                cfg.protocol,
                chosen.unwrap_or("no subprotocol")
            )));
        }
        let (sink, mut source) = stream.split();
        let sink = Arc::new(Mutex::new(sink));
        let pending: Pending = Arc::default();
        let (calls_tx, calls) = mpsc::channel(16);
        let protocol = cfg.protocol;
        let reader_pending = pending.clone();
        let reader_sink = sink.clone();
        tokio::spawn(async move {
            while let Some(msg) = source.next().await {
                let text = match msg {
                    Ok(Message::Text(t)) => t.to_string(),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                match Frame::parse(&text) {
                    Ok(Frame::Call { id, action, payload }) => {
                        if calls_tx.send(IncomingCall { id, action, payload }).await.is_err() {
                            break;
                        }
                    }
                    Ok(answer) => {
                        let waiter = reader_pending.lock().unwrap().remove(answer.id());
                        match waiter {
                            Some(w) => {
                                let _ = w.send(answer);
                            }
                            None => tracing::warn!("CSMS answered unknown message id {}", answer.id()),
                        }
                    }
                    Err(e) => {
                        tracing::warn!("CSMS sent {e}");
                        if let Some(id) = e.id() {
                            let code = match e {
                                crate::rpc::FrameError::UnknownType { .. } => ErrorCode::MessageTypeNotSupported,
                                _ => ErrorCode::RpcFrameworkError,
                            };
                            let reply = Frame::error(id, code, protocol, e.to_string()).to_text();
                            let _ = reader_sink.lock().await.send(Message::text(reply)).await;
                        }
                    }
                }
            }
            // Calls waiting for answers end with the connection.
            reader_pending.lock().unwrap().clear();
        });
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(Link {
            protocol,
            sink,
            pending,
            calls,
            one_at_a_time: Mutex::new(()),
            next_id: AtomicU64::new(1),
            id_prefix: format!("{:x}", now.as_micros()),
            call_timeout: cfg.call_timeout,
        })
    }

    /// The version spoken.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Sends `request` and waits for the CSMS's answer.
    pub async fn call<A: Action>(&self, request: &A) -> Result<A::Response, LinkError> {
        let action = A::ACTION.to_string();
        let payload = serde_json::to_value(request).expect("messages serialize");
        let _turn = self.one_at_a_time.lock().await;
        let id = format!("{}-{}", self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id.clone(), tx);
        let text = Frame::Call { id: id.clone(), action: action.clone(), payload }.to_text();
        let sent = self.sink.lock().await.send(Message::text(text)).await;
        if let Err(e) = sent {
            self.pending.lock().unwrap().remove(&id);
            return Err(LinkError::Connection(e.to_string()));
        }
        let answer = match tokio::time::timeout(self.call_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                return Err(LinkError::Connection(format!("closed while waiting for the answer to {action}")));
            }
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                return Err(LinkError::Timeout(action));
            }
        };
        match answer {
            Frame::CallResult { payload, .. } => {
                serde_json::from_value(payload).map_err(|e| LinkError::BadResponse { action, reason: e.to_string() })
            }
            Frame::CallError { code, description, .. } => Err(LinkError::Refused { action, code, description }),
            Frame::Call { .. } => unreachable!("calls are not answers"),
        }
    }

    /// The next call of the CSMS; `None` once the connection is closed.
    pub async fn next_call(&mut self) -> Option<IncomingCall> {
        self.calls.recv().await
    }

    /// Answers `call` with a response object or an error.
    pub async fn answer(
        &self,
        call: &IncomingCall,
        result: Result<Value, (ErrorCode, String)>,
    ) -> Result<(), LinkError> {
        let frame = match result {
            Ok(payload) => Frame::CallResult { id: call.id.clone(), payload },
            Err((code, text)) => Frame::error(&call.id, code, self.protocol, text),
        };
        self.sink
            .lock()
            .await
            .send(Message::text(frame.to_text()))
            .await
            .map_err(|e| LinkError::Connection(e.to_string()))
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.sink.lock().await.close().await;
    }
}

/// TLS for `wss://`: the configured CA (else the system's) and, for
/// security profile 3, the client certificate.
fn tls_connector(cfg: &LinkConfig) -> Result<native_tls::TlsConnector, LinkError> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| LinkError::Config(format!("{}: {e}", p.display())));
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(ca) = &cfg.ca_file {
        let pem = read(ca)?;
        let certs = openssl::x509::X509::stack_from_pem(&pem)
            .map_err(|e| LinkError::Config(format!("{}: no PEM certificates: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(LinkError::Config(format!("{}: no PEM certificates", ca.display())));
        }
        builder.disable_built_in_roots(true);
        for cert in certs {
            let der = cert.to_der().map_err(|e| LinkError::Config(e.to_string()))?;
            let cert = native_tls::Certificate::from_der(&der).map_err(|e| LinkError::Config(e.to_string()))?;
            builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &cfg.client_cert {
        let identity = native_tls::Identity::from_pkcs8(&read(cert)?, &read(key)?)
            .map_err(|e| LinkError::Config(format!("client certificate {}: {e}", cert.display())))?;
        builder.identity(identity);
    }
    builder.build().map_err(|e| LinkError::Config(format!("TLS setup: {e}")))
}
