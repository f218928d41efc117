//! rota's ECU interface: the gRPC protocol a main ECU drives its secondaries
//! with (`dbus-interfaces/rota-ecu-v1.proto`), carried over mutually
//! authenticated TLS from OpenSSL. Each side presents its own certificate
//! and accepts only a peer whose certificate verifies against the one its
//! configuration names (a pinned leaf or a CA); anyone else is refused in
//! the handshake, before any call runs.
#![deny(missing_docs)]

pub mod client;
pub mod server;
pub mod tls;

/// The generated protocol types, client and server of `rota.ecu.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("rota.ecu.v1");
}

/// What can go wrong setting up or using the ECU link.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate, key or trust file did not load, or TLS setup failed.
    #[error("{0}")]
    Tls(String),
    /// Connecting to a peer or serving failed.
    #[error("{0}")]
    Transport(String),
}
