//! The firmware signing certificate of a signed update: it must chain to
//! the configured manufacturer root and not be on its CRL (OCPP 2.0.1
//! L01.FR.02/.03, 1.6 security extension's SignedUpdateFirmware).

use openssl::ssl::SslFiletype;
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509, X509StoreContext, X509VerifyResult};
use std::path::Path;

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The certificate chains to the manufacturer root.
    Valid,
    /// It does not, or cannot be read (the reason).
    Invalid(String),
    /// It is on the manufacturer's CRL.
    Revoked,
}

/// Checks `pem` against the roots in `root` (PEM) and, when given, the CRL in `crl` (PEM).
pub fn check(pem: &str, root: Option<&Path>, crl: Option<&Path>) -> Verdict {
    let Some(root) = root else {
        return Verdict::Invalid("no manufacturer root is configured to check it against".to_string());
    };
    let cert = match X509::from_pem(pem.as_bytes()) {
        Ok(c) => c,
        Err(e) => return Verdict::Invalid(format!("not a PEM certificate: {e}")),
    };
    let result = (|| -> Result<X509VerifyResult, String> {
        let text = |p: &Path| p.to_str().map(str::to_string).ok_or_else(|| format!("{}: not UTF-8", p.display()));
        let mut builder = X509StoreBuilder::new().map_err(|e| e.to_string())?;
        let lookup = builder.add_lookup(X509Lookup::file()).map_err(|e| e.to_string())?;
        lookup.load_cert_file(text(root)?, SslFiletype::PEM).map_err(|e| format!("{}: {e}", root.display()))?;
        if let Some(crl) = crl {
            lookup.load_crl_file(text(crl)?, SslFiletype::PEM).map_err(|e| format!("{}: {e}", crl.display()))?;
            builder.set_flags(X509VerifyFlags::CRL_CHECK).map_err(|e| e.to_string())?;
        }
        let store = builder.build();
        let chain = openssl::stack::Stack::new().map_err(|e| e.to_string())?;
        let mut ctx = X509StoreContext::new().map_err(|e| e.to_string())?;
        ctx.init(&store, &cert, &chain, |c| {
            c.verify_cert()?;
            Ok(c.error())
        })
        .map_err(|e| e.to_string())
    })();
    match result {
        Err(e) => Verdict::Invalid(e),
        Ok(r) if r == X509VerifyResult::OK => Verdict::Valid,
        Ok(r) if r.as_raw() == openssl_sys::X509_V_ERR_CERT_REVOKED => Verdict::Revoked,
        Ok(r) => Verdict::Invalid(r.error_string().to_string()),
    }
}
