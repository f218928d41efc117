//! Human-facing facts about certificates: one-line names, SPKI hashes,
//! validity dates (as `rauc info` shows them).

use super::ffi;
use foreign_types::ForeignTypeRef;
use openssl::x509::{X509NameRef, X509Ref};
use sha2::{Digest, Sha256};

/// `O = Org, CN = Name` style one-line rendering of an X.509 name.
pub fn name_oneline(name: &X509NameRef) -> String {
    ffi::print_to_string(|bio| unsafe { ffi::X509_NAME_print_ex(bio, name.as_ptr(), 0, ffi::XN_FLAG_ONELINE_UTF8) })
        .unwrap_or_default()
}

/// SHA-256 over the DER SubjectPublicKeyInfo, uppercase hex pairs joined by `:`.
pub fn spki_hash(cert: &X509Ref) -> String {
    let der = cert.public_key().and_then(|k| k.public_key_to_der()).unwrap_or_default();
    Sha256::digest(&der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Printable facts about one certificate of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject, one line.
    pub subject: String,
    /// Issuer, one line.
    pub issuer: String,
    /// SPKI hash (see [`spki_hash`]).
    pub spki_sha256: String,
    /// `notBefore` as OpenSSL prints it (`Nov 22 04:49:18 2026 GMT`).
    pub not_before: String,
    /// `notAfter`.
    pub not_after: String,
    /// The certificate in PEM.
    pub pem: String,
    /// OpenSSL's text dump of the certificate.
    pub text: String,
}

impl CertInfo {
    /// Collects the facts of `cert`.
    pub fn of(cert: &X509Ref) -> CertInfo {
        CertInfo {
            subject: name_oneline(cert.subject_name()),
            issuer: name_oneline(cert.issuer_name()),
            spki_sha256: spki_hash(cert),
            not_before: cert.not_before().to_string(),
            not_after: cert.not_after().to_string(),
            pem: cert.to_pem().map(|p| String::from_utf8_lossy(&p).into_owned()).unwrap_or_default(),
            text: cert.to_text().map(|p| String::from_utf8_lossy(&p).into_owned()).unwrap_or_default(),
        }
    }
}
