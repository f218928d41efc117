//! A bundle fetched whole, for updates whose request carries a detached
//! `signature` over the firmware file (signed 1.6 always, 2.0.1 when
//! given): the file lands in the state directory, the signature is checked
//! with the signing certificate's key over exactly those bytes, and rota
//! installs that file. Without a signature rota streams the URL itself.

use openssl::hash::MessageDigest;
use openssl::sign::Verifier;
use openssl::x509::X509;
use std::io::{Read, Write};
use std::path::Path;

/// Why a download failed.
#[derive(Debug)]
pub enum FetchError {
    /// The server could not be reached or answered with an error: worth another try.
    Network(String),
    /// The bundle is larger than `[update] max-download-size`.
    TooLarge(u64),
    /// The file could not be written.
    Local(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Network(e) => write!(f, "{e}"),
            FetchError::TooLarge(max) => write!(f, "the bundle is larger than max-download-size ({max} bytes)"),
            FetchError::Local(e) => write!(f, "{e}"),
        }
    }
}

/// Fetches `url` into `dest` (replaced), at most `max` bytes.
pub async fn fetch(url: &str, dest: &Path, max: u64) -> Result<u64, FetchError> {
    let net = |e: &dyn std::fmt::Display| FetchError::Network(format!("{url}: {e}"));
    let local = |e: std::io::Error| FetchError::Local(format!("{}: {e}", dest.display()));
    let client = reqwest::Client::builder().build().map_err(|e| net(&e))?;
    let mut response = client.get(url).send().await.map_err(|e| net(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(net(&format!("HTTP {status}")));
    }
    if response.content_length().is_some_and(|n| n > max) {
        return Err(FetchError::TooLarge(max));
    }
    let mut file = std::fs::File::create(dest).map_err(local)?;
    let mut total = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(|e| net(&e))? {
        total += chunk.len() as u64;
        if total > max {
            drop(file);
            let _ = std::fs::remove_file(dest);
            return Err(FetchError::TooLarge(max));
        }
        file.write_all(&chunk).map_err(local)?;
    }
    file.sync_all().map_err(local)?;
    Ok(total)
}

/// Checks the base64 `signature` over `file` with the key of the PEM
/// `certificate` (RSA or ECDSA, SHA-256, as OCPP firmware signatures are made).
pub fn verify_signature(file: &Path, certificate: &str, signature: &str) -> Result<(), String> {
    let cert = X509::from_pem(certificate.as_bytes()).map_err(|e| format!("signing certificate: {e}"))?;
    let key = cert.public_key().map_err(|e| format!("signing certificate's key: {e}"))?;
    let compact: String = signature.chars().filter(|c| !c.is_whitespace()).collect();
    let sig = openssl::base64::decode_block(&compact).map_err(|e| format!("signature is not base64: {e}"))?;
    let mut verifier = Verifier::new(MessageDigest::sha256(), &key).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("{}: {e}", file.display()))?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n]).map_err(|e| e.to_string())?;
    }
    match verifier.verify(&sig) {
        Ok(true) => Ok(()),
        Ok(false) => Err("the firmware signature does not match the bundle".to_string()),
        Err(e) => Err(format!("the firmware signature cannot be checked: {e}")),
    }
}
