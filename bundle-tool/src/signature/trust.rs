//! Trust anchors and verification policy: the `[keyring]` section of
//! `system.conf` (spec §3.3) turned into an OpenSSL `X509_STORE`.

use super::ffi;
use crate::error::{Error, Result};
use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::x509::X509;
use openssl::x509::X509Ref;
use openssl::x509::store::{X509Lookup, X509Store, X509StoreBuilder};
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509PurposeId, X509PurposeRef};
use std::ffi::CString;
use std::path::PathBuf;

/// Certificate purpose to require of signers (`check-purpose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// One of OpenSSL's purposes, by its numeric id.
    OpenSsl(i32),
    /// RAUC's own `codesign-rauc`: extendedKeyUsage codeSigning on the signer.
    CodeSign,
}

impl Purpose {
    /// Parses a `check-purpose` value; unknown names use RAUC's error text.
    pub fn parse(name: &str) -> Result<Purpose> {
        let openssl_name = match name {
            "codesign" | "codesign-rauc" => return Ok(Purpose::CodeSign),
            "any" => "any",
            "sslclient" => "sslclient",
            "sslserver" => "sslserver",
            "nssslserver" => "nssslserver",
            "smimesign" => "smimesign",
            "smimeencrypt" => "smimeencrypt",
            _ => {
                return Err(Error::Key(format!("failed to configure X509 purpose '{name}'")));
            }
        };
        let idx = X509PurposeRef::get_by_sname(openssl_name)
            .map_err(|_| Error::Key(format!("failed to configure X509 purpose '{name}'")))?;
        let purpose = X509PurposeRef::from_idx(idx)
            .map_err(|_| Error::Key(format!("failed to configure X509 purpose '{name}'")))?;
        Ok(Purpose::OpenSsl(purpose.purpose().as_raw()))
    }
}

/// Where trust anchors come from and how strictly chains are checked.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    /// PEM file with CA certificates (and CRLs).
    pub path: Option<PathBuf>,
    /// OpenSSL hashed certificate directory.
    pub directory: Option<PathBuf>,
    /// Check CRLs for every certificate of the chain.
    pub check_crl: bool,
    /// Intermediates in the keyring act as trust anchors.
    pub allow_partial_chain: bool,
    /// Verify at the CMS signing time instead of now.
    pub use_bundle_signing_time: bool,
    /// Required certificate purpose (`None`: OpenSSL's CMS default, S/MIME signing).
    pub check_purpose: Option<Purpose>,
    /// Accept only signers whose CN is in this list (empty: any).
    pub allowed_signer_cns: Vec<String>,
}

impl Keyring {
    /// A keyring of just one PEM file.
    pub fn from_path(path: impl Into<PathBuf>) -> Keyring {
        Keyring { path: Some(path.into()), ..Keyring::default() }
    }

    /// True if neither a file nor a directory is configured.
    pub fn is_empty(&self) -> bool {
        self.path.is_none() && self.directory.is_none()
    }

    /// Builds the OpenSSL store. `verify_time` replaces "now" (signing time);
    /// `no_check_time` ignores validity periods altogether.
    pub fn build_store(&self, verify_time: Option<i64>, no_check_time: bool) -> Result<X509Store> {
        if self.is_empty() {
            return Err(Error::Key("No keyring file or directory provided".to_string()));
        }
        let mut b = X509StoreBuilder::new().map_err(|e| Error::Key(e.to_string()))?;
        if let Some(path) = &self.path {
            let text = std::fs::read(path)
                .map_err(|e| Error::Key(format!("Failed to load keyring file '{}': {e}", path.display())))?;
            let lookup = b.add_lookup(X509Lookup::file()).map_err(|e| Error::Key(e.to_string()))?;
            let cpath = CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(|_| Error::Key("keyring path contains NUL".into()))?;
            let n = unsafe { ffi::X509_load_cert_crl_file(lookup.as_ptr(), cpath.as_ptr(), ffi::X509_FILETYPE_PEM) };
            if n <= 0 {
                let reason = super::openssl_reason(&openssl::error::ErrorStack::get());
                return Err(Error::Key(format!("Failed to load keyring file '{}': {reason}", path.display())));
            }
            if !self.check_crl && contains_crl(&text) {
                tracing::warn!("keyring '{}' contains a CRL, but check-crl is disabled", path.display());
            }
        }
        if let Some(dir) = &self.directory {
            if !dir.is_dir() {
                return Err(Error::Key(format!(
                    "Failed to load keyring directory '{}': not a directory",
                    dir.display()
                )));
            }
            let lookup = b.add_lookup(X509Lookup::hash_dir()).map_err(|e| Error::Key(e.to_string()))?;
            let d = dir.to_str().ok_or_else(|| Error::Key("keyring directory is not valid UTF-8".into()))?;
            lookup
                .add_dir(d, openssl::ssl::SslFiletype::PEM)
                .map_err(|e| Error::Key(format!("Failed to load keyring directory '{d}': {e}")))?;
        }
        let mut flags = X509VerifyFlags::empty();
        if self.check_crl {
            flags |=
                X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL | X509VerifyFlags::EXTENDED_CRL_SUPPORT;
        }
        if self.allow_partial_chain {
            flags |= X509VerifyFlags::PARTIAL_CHAIN;
        }
        if no_check_time {
            flags |= X509VerifyFlags::NO_CHECK_TIME;
        }
        b.set_flags(flags).map_err(|e| Error::Key(e.to_string()))?;
        match self.check_purpose {
            Some(Purpose::OpenSsl(id)) => {
                b.set_purpose(X509PurposeId::from_raw(id)).map_err(|e| Error::Key(e.to_string()))?
            }
            Some(Purpose::CodeSign) => b.set_purpose(X509PurposeId::ANY).map_err(|e| Error::Key(e.to_string()))?,
            None => {}
        }
        if let Some(t) = verify_time.filter(|_| !no_check_time) {
            let mut param = X509VerifyParam::new().map_err(|e| Error::Key(e.to_string()))?;
            param.set_time(t as libc::time_t);
            b.set_param(&param).map_err(|e| Error::Key(e.to_string()))?;
        }
        Ok(b.build())
    }

    /// Extra checks OpenSSL cannot do for us: RAUC's code-signing purpose.
    pub fn check_chain_purpose(&self, chain: &[X509]) -> Result<()> {
        if self.check_purpose != Some(Purpose::CodeSign) {
            return Ok(());
        }
        let fail = |m: String| Error::Signature(format!("Verify error: {m}"));
        for (depth, cert) in chain.iter().enumerate() {
            let ptr = cert.as_ptr();
            let (flags, xku, ku) = unsafe {
                let f = openssl_sys::X509_get_extension_flags(ptr);
                (f, openssl_sys::X509_get_extended_key_usage(ptr), openssl_sys::X509_get_key_usage(ptr))
            };
            let has_eku = flags & openssl_sys::EXFLAG_XKUSAGE != 0;
            let codesign = xku & openssl_sys::XKU_CODE_SIGN != 0;
            if depth == 0 {
                if !has_eku || !codesign {
                    return Err(fail("unsuitable certificate purpose".into()));
                }
                if flags & openssl_sys::EXFLAG_KUSAGE == 0 {
                    tracing::warn!("signer certificate has no keyUsage extension");
                } else if ku & openssl_sys::X509v3_KU_DIGITAL_SIGNATURE == 0 {
                    return Err(fail("unsuitable certificate purpose".into()));
                }
            } else if has_eku && !codesign {
                return Err(fail("unsuitable certificate purpose".into()));
            }
        }
        Ok(())
    }
}

fn contains_crl(pem: &[u8]) -> bool {
    pem.windows(b"BEGIN X509 CRL".len()).any(|w| w == b"BEGIN X509 CRL")
}

/// The common name of a certificate's subject, if it has exactly one usable one.
pub fn common_name(cert: &X509Ref) -> Option<String> {
    let entry = cert.subject_name().entries_by_nid(openssl::nid::Nid::COMMONNAME).next()?;
    let bytes = entry.data().as_slice();
    if bytes.contains(&0) {
        return None;
    }
    String::from_utf8(bytes.to_vec()).ok()
}
