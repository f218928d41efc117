//! TLS contexts for the ECU link: this ECU's identity (certificate and key)
//! and the one peer certificate (or CA) it trusts. A pinned leaf works as
//! its own trust anchor (partial chains are allowed), so an operator can name
//! exactly the certificate a peer must present.

use crate::Error;
use openssl::ssl::{
    AlpnError, SslAcceptor, SslConnector, SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use std::path::{Path, PathBuf};

/// ALPN protocol list with HTTP/2 only, as gRPC over TLS uses.
const ALPN_H2: &[u8] = b"\x02h2";

/// Who this ECU is and whom it trusts.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// This ECU's certificate (PEM, may carry intermediates after it).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The certificate, or CA certificates, a peer must verify against (PEM).
    pub peer: PathBuf,
}

fn tls(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tls(format!("Failed to load {what} '{}': {e}", path.display()))
}

fn setup(e: impl std::fmt::Display) -> Error {
    Error::Tls(format!("TLS setup failed: {e}"))
}

/// Puts identity and trust of `config` into `b`, peers required.
fn configure(b: &mut SslContextBuilder, config: &TlsConfig) -> Result<(), Error> {
    b.set_certificate_chain_file(&config.cert).map_err(|e| tls("ECU certificate", &config.cert, e))?;
    b.set_private_key_file(&config.key, SslFiletype::PEM).map_err(|e| tls("ECU key", &config.key, e))?;
    b.check_private_key()
        .map_err(|e| Error::Tls(format!("ECU key '{}' does not match its certificate: {e}", config.key.display())))?;
    let pem = std::fs::read(&config.peer).map_err(|e| tls("peer certificate", &config.peer, e))?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| tls("peer certificate", &config.peer, e))?;
    if certs.is_empty() {
        return Err(tls("peer certificate", &config.peer, "no certificate in it"));
    }
    let mut store = X509StoreBuilder::new().map_err(setup)?;
    for c in certs {
        store.add_cert(c).map_err(setup)?;
    }
    b.set_verify_cert_store(store.build()).map_err(setup)?;
    b.verify_param_mut().set_flags(X509VerifyFlags::PARTIAL_CHAIN).map_err(setup)?;
    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    b.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(setup)?;
    Ok(())
}

/// The server side: presents this ECU's certificate, requires the peer's.
pub fn acceptor(config: &TlsConfig) -> Result<SslAcceptor, Error> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(setup)?;
    configure(&mut b, config)?;
    b.set_alpn_select_callback(|_, client| openssl::ssl::select_next_proto(ALPN_H2, client).ok_or(AlpnError::NOACK));
    Ok(b.build())
}

/// The client side: presents this ECU's certificate, requires the peer's.
pub fn connector(config: &TlsConfig) -> Result<SslConnector, Error> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(setup)?;
    configure(&mut b, config)?;
    b.set_alpn_protos(ALPN_H2).map_err(setup)?;
    Ok(b.build())
}
