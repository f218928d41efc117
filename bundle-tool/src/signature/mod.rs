//! CMS signatures with OpenSSL (spec §1.5): signing with certificate, key and
//! intermediates, appending signers, and verifying against a keyring with
//! CRLs, partial chains, purposes, signing time and allowed signer CNs.
//! OpenSSL's own failure reasons reach the user unchanged.

pub mod bio;
pub mod certinfo;
pub mod envelope;
pub(crate) mod ffi;
pub mod trust;

use crate::error::{Error, Result};
use certinfo::CertInfo;
use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::cms::CmsContentInfo;
use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreRef;
use openssl::x509::{X509, X509Ref, X509StoreContext};
use std::io::Read;
use std::path::{Path, PathBuf};
pub use trust::{Keyring, Purpose};

/// RAUC's rendering of an OpenSSL failure: the first queued error's extra
/// data when it has some (`Verify error: certificate revoked`), otherwise
/// OpenSSL's `error:<code>:<library>::<reason>` string.
pub fn openssl_reason(stack: &ErrorStack) -> String {
    let errors = stack.errors();
    for e in errors {
        tracing::debug!("OpenSSL: {e}");
    }
    match errors.first() {
        Some(e) => match e.data() {
            Some(d) if !d.is_empty() => d.to_string(),
            _ => format!(
                "error:{:08X}:{}::{}",
                e.code(),
                e.library().unwrap_or(""),
                e.reason().unwrap_or("unknown error")
            ),
        },
        None => "unknown OpenSSL error".to_string(),
    }
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Key(format!("Failed to read {what} '{}': {e}", path.display())))
}

/// `path` as a PKCS#11 URI, if it is one.
fn pkcs11_uri(path: &Path) -> Option<&str> {
    path.to_str().filter(|s| crate::pkcs11::is_uri(s))
}

/// Loads a private key from a PEM file (`RAUC_KEY_PASSPHRASE` unlocks
/// encrypted keys) or a PKCS#11 token.
pub fn load_private_key(path: &Path) -> Result<PKey<Private>> {
    if let Some(uri) = pkcs11_uri(path) {
        return crate::pkcs11::private_key(uri).map_err(Error::Key);
    }
    let pem = read_file(path, "key")?;
    let key = match std::env::var("RAUC_KEY_PASSPHRASE") {
        Ok(pass) => PKey::private_key_from_pem_passphrase(&pem, pass.as_bytes()),
        Err(_) => PKey::private_key_from_pem(&pem),
    };
    key.map_err(|e| Error::Key(format!("Failed to load key '{}': {}", path.display(), openssl_reason(&e))))
}

/// Loads the first certificate of a PEM file, or a certificate from a PKCS#11 token.
pub fn load_cert(path: &Path) -> Result<X509> {
    if let Some(uri) = pkcs11_uri(path) {
        return crate::pkcs11::certificate(uri).map_err(Error::Key);
    }
    let pem = read_file(path, "certificate")?;
    X509::from_pem(&pem)
        .map_err(|e| Error::Key(format!("Failed to load certificate '{}': {}", path.display(), openssl_reason(&e))))
}

/// Loads every certificate of the given PEM files.
pub fn load_certs(paths: &[PathBuf]) -> Result<Vec<X509>> {
    let mut out = Vec::new();
    for p in paths {
        let pem = read_file(p, "certificate")?;
        let certs = X509::stack_from_pem(&pem)
            .map_err(|e| Error::Key(format!("Failed to load certificate '{}': {}", p.display(), openssl_reason(&e))))?;
        if certs.is_empty() {
            return Err(Error::Key(format!("Failed to load certificate '{}': Expecting: CERTIFICATE", p.display())));
        }
        out.extend(certs);
    }
    Ok(out)
}

/// A signing identity: certificate, key and intermediates to embed.
pub struct Signer {
    cert: X509,
    key: PKey<Private>,
    intermediates: Vec<X509>,
}

impl Signer {
    /// Loads the signer from PEM files or PKCS#11 tokens.
    pub fn load(cert: &Path, key: &Path, intermediates: &[PathBuf]) -> Result<Signer> {
        Ok(Signer { cert: load_cert(cert)?, key: load_private_key(key)?, intermediates: load_certs(intermediates)? })
    }

    /// The signer certificate.
    pub fn cert(&self) -> &X509 {
        &self.cert
    }

    fn sign_bio(&self, bio: *mut openssl_sys::BIO, detached: bool) -> Result<CmsContentInfo> {
        let mut extra = Stack::<X509>::new().map_err(|e| Error::Other(e.to_string()))?;
        for c in &self.intermediates {
            extra.push(c.clone()).map_err(|e| Error::Other(e.to_string()))?;
        }
        let mut flags = openssl_sys::CMS_BINARY | openssl_sys::CMS_NOSMIMECAP;
        if detached {
            flags |= openssl_sys::CMS_DETACHED;
        }
        unsafe {
            let cms = openssl_sys::CMS_sign(self.cert.as_ptr(), self.key.as_ptr(), extra.as_ptr(), bio, flags);
            if cms.is_null() {
                return Err(Error::Key(format!("failed to create signature: {}", openssl_reason(&ErrorStack::get()))));
            }
            Ok(CmsContentInfo::from_ptr(cms))
        }
    }

    /// SignedData with `content` encapsulated (verity/crypt manifests).
    pub fn sign_inline(&self, content: &[u8]) -> Result<Vec<u8>> {
        let mut r: &[u8] = content;
        let (cms, io) = bio::with_read_bio(&mut r, |b| self.sign_bio(b, false));
        if let Some(e) = io {
            return Err(Error::Io(e.to_string()));
        }
        cms?.to_der().map_err(|e| Error::Other(e.to_string()))
    }

    /// Detached SignedData over everything `content` yields (plain payloads).
    pub fn sign_detached(&self, content: &mut dyn Read) -> Result<Vec<u8>> {
        let (cms, io) = bio::with_read_bio(content, |b| self.sign_bio(b, true));
        if let Some(e) = io {
            return Err(Error::Io(format!("failed to read data to sign: {e}")));
        }
        cms?.to_der().map_err(|e| Error::Other(e.to_string()))
    }

    /// Whether this signer's certificate (with the intermediates it embeds)
    /// chains up to `keyring` now; the error names OpenSSL's reason.
    pub fn check_chain(&self, keyring: &Keyring) -> Result<()> {
        let store = keyring.build_store(None, false)?;
        let mut extra = Stack::<X509>::new().map_err(|e| Error::Other(e.to_string()))?;
        for c in &self.intermediates {
            extra.push(c.clone()).map_err(|e| Error::Other(e.to_string()))?;
        }
        let mut ctx = openssl::x509::X509StoreContext::new().map_err(|e| Error::Other(e.to_string()))?;
        let verdict = ctx
            .init(&store, &self.cert, &extra, |c| Ok(c.verify_cert()?.then_some(()).ok_or(c.error())))
            .map_err(|e| Error::Other(e.to_string()))?;
        verdict
            .map_err(|e| Error::Signature(format!("signature verification failed: Verify error: {}", e.error_string())))
    }

    /// Adds this signer to an existing SignedData, reusing the content digest
    /// of the signature already there (`resign --append`).
    pub fn append_to(&self, cms_der: &[u8]) -> Result<Vec<u8>> {
        let cms = parse_signed_data(cms_der)?;
        unsafe {
            let flags = openssl_sys::CMS_BINARY | openssl_sys::CMS_NOSMIMECAP | openssl_sys::CMS_REUSE_DIGEST;
            let si = ffi::CMS_add1_signer(cms.as_ptr(), self.cert.as_ptr(), self.key.as_ptr(), std::ptr::null(), flags);
            if si.is_null() {
                return Err(Error::Key(format!("failed to add signer: {}", openssl_reason(&ErrorStack::get()))));
            }
            let present = cms_certificates(&cms);
            for c in &self.intermediates {
                let already = present.iter().any(|p| p.to_der().ok() == c.to_der().ok());
                if !already && ffi::CMS_add1_cert(cms.as_ptr(), c.as_ptr()) != 1 {
                    return Err(Error::Key(format!(
                        "failed to add intermediate certificate: {}",
                        openssl_reason(&ErrorStack::get())
                    )));
                }
            }
        }
        cms.to_der().map_err(|e| Error::Other(e.to_string()))
    }
}

/// How to verify a signature.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Trust anchors and policy.
    pub keyring: Keyring,
    /// Skip verification entirely (`--no-verify`).
    pub no_verify: bool,
    /// Ignore certificate validity periods (`--no-check-time`).
    pub no_check_time: bool,
}

/// The outcome of reading a SignedData.
#[derive(Debug, Clone)]
pub struct SignatureInfo {
    /// Encapsulated content (inline signatures), `None` when detached.
    pub content: Option<Vec<u8>>,
    /// Whether the signature was verified (false with `--no-verify`).
    pub verified: bool,
    /// One chain per signer, leaf first (with `--no-verify`: the embedded certificates).
    pub chains: Vec<Vec<CertInfo>>,
    /// Number of SignerInfos.
    pub signer_count: usize,
}

impl SignatureInfo {
    /// Space-separated SPKI hashes of the first signer's chain (`RAUC_BUNDLE_SPKI_HASHES`).
    pub fn spki_hashes(&self) -> String {
        self.chains
            .first()
            .map(|c| c.iter().map(|i| i.spki_sha256.clone()).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }
}

fn nid_of(obj: *const openssl_sys::ASN1_OBJECT) -> i32 {
    if obj.is_null() { 0 } else { unsafe { openssl_sys::OBJ_obj2nid(obj) } }
}

fn sn_of(obj: *const openssl_sys::ASN1_OBJECT) -> String {
    let nid = nid_of(obj);
    unsafe {
        let p = openssl_sys::OBJ_nid2sn(nid);
        if p.is_null() { "undefined".into() } else { std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned() }
    }
}

/// Parses DER CMS and checks it is SignedData.
pub fn parse_signed_data(der: &[u8]) -> Result<CmsContentInfo> {
    let cms = CmsContentInfo::from_der(der)
        .map_err(|e| Error::Format(format!("failed to parse signature: {}", openssl_reason(&e))))?;
    let ty = unsafe { ffi::CMS_get0_type(cms.as_ptr()) };
    if nid_of(ty) != openssl_sys::NID_pkcs7_signed {
        return Err(Error::Format(format!("Expected CMS of type 'pkcs7-signedData' but got '{}'", sn_of(ty))));
    }
    Ok(cms)
}

/// True if `der` is a CMS EnvelopedData (an encrypted crypt bundle signature).
pub fn is_enveloped(der: &[u8]) -> bool {
    CmsContentInfo::from_der(der)
        .is_ok_and(|cms| nid_of(unsafe { ffi::CMS_get0_type(cms.as_ptr()) }) == ffi::NID_PKCS7_ENVELOPED)
}

/// The encapsulated content, if any (no verification).
pub fn encapsulated_content(cms: &CmsContentInfo) -> Option<Vec<u8>> {
    unsafe {
        let pp = ffi::CMS_get0_content(cms.as_ptr());
        if pp.is_null() || (*pp).is_null() {
            return None;
        }
        let s = *pp as *const openssl_sys::ASN1_STRING;
        let data = openssl_sys::ASN1_STRING_get0_data(s);
        let len = openssl_sys::ASN1_STRING_length(s);
        Some(std::slice::from_raw_parts(data, len.max(0) as usize).to_vec())
    }
}

fn cms_certificates(cms: &CmsContentInfo) -> Vec<X509> {
    unsafe {
        let sk = ffi::CMS_get1_certs(cms.as_ptr());
        if sk.is_null() {
            return Vec::new();
        }
        Stack::<X509>::from_ptr(sk).into_iter().collect()
    }
}

fn signer_infos(cms: &CmsContentInfo) -> Vec<*mut ffi::CMS_SignerInfo> {
    unsafe {
        let sis = ffi::CMS_get0_SignerInfos(cms.as_ptr());
        (0..ffi::sk_num(sis)).map(|i| ffi::sk_value(sis, i)).collect()
    }
}

/// The signer certificate set on a SignerInfo (after verification or matching).
fn signer_cert(si: *mut ffi::CMS_SignerInfo) -> Option<X509> {
    let mut cert: *mut openssl_sys::X509 = std::ptr::null_mut();
    unsafe {
        ffi::CMS_SignerInfo_get0_algs(si, std::ptr::null_mut(), &mut cert, std::ptr::null_mut(), std::ptr::null_mut());
        if cert.is_null() { None } else { Some(X509Ref::from_ptr(cert).to_owned()) }
    }
}

/// The signingTime attribute of the only signer, as Unix seconds; the
/// failures in RAUC's words.
fn signing_time(cms: &CmsContentInfo) -> Result<i64> {
    let sis = signer_infos(cms);
    if sis.len() != 1 {
        return Err(Error::Signature(
            "multiple signerInfos are not supported with 'use-bundle-signing-time'".to_string(),
        ));
    }
    unsafe {
        let obj = openssl_sys::OBJ_nid2obj(openssl_sys::NID_pkcs9_signingTime);
        if ffi::CMS_signed_get_attr_by_OBJ(sis[0], obj, -1) < 0 {
            return Err(Error::Signature("Bundle signing time attribute not found in signature".to_string()));
        }
        let mut t = ffi::CMS_signed_get0_data_by_OBJ(sis[0], obj, -3, openssl_sys::V_ASN1_UTCTIME);
        if t.is_null() {
            t = ffi::CMS_signed_get0_data_by_OBJ(sis[0], obj, -3, openssl_sys::V_ASN1_GENERALIZEDTIME);
        }
        if t.is_null() {
            return Err(Error::Signature("Bundle signing time attribute has unexpected type".to_string()));
        }
        let mut tm: libc::tm = std::mem::zeroed();
        if ffi::ASN1_TIME_to_tm(t as *const openssl_sys::ASN1_TIME, &mut tm) != 1 {
            return Err(Error::Signature("Failed to convert bundle signing time to struct tm".to_string()));
        }
        Ok(libc::timegm(&mut tm) as i64)
    }
}

fn build_chain(store: &X509StoreRef, cert: &X509, untrusted: &Stack<X509>) -> Result<Vec<X509>> {
    let mut ctx = X509StoreContext::new().map_err(|e| Error::Other(e.to_string()))?;
    let chain = ctx
        .init(store, cert, untrusted, |c| {
            c.verify_cert()?;
            Ok(c.chain().map(|ch| ch.iter().map(|x| x.to_owned()).collect::<Vec<_>>()))
        })
        .map_err(|e| Error::Signature(openssl_reason(&e)))?;
    Ok(chain.unwrap_or_else(|| vec![cert.clone()]))
}

/// Verifies a SignedData. `detached` streams the signed content of a
/// detached signature (plain bundles); inline content is returned.
pub fn verify(cms_der: &[u8], detached: Option<&mut dyn Read>, opts: &VerifyOptions) -> Result<SignatureInfo> {
    let cms = parse_signed_data(cms_der)?;
    let content = encapsulated_content(&cms);
    let signer_count = signer_infos(&cms).len();
    let embedded = cms_certificates(&cms);
    if opts.no_verify {
        unsafe {
            let mut sk = Stack::<X509>::new().map_err(|e| Error::Other(e.to_string()))?;
            for c in &embedded {
                sk.push(c.clone()).map_err(|e| Error::Other(e.to_string()))?;
            }
            ffi::CMS_set1_signers_certs(cms.as_ptr(), sk.as_ptr(), 0);
            openssl::error::ErrorStack::get();
        }
        let chains = signer_infos(&cms).into_iter().filter_map(signer_cert).map(|c| vec![CertInfo::of(&c)]).collect();
        return Ok(SignatureInfo { content, verified: false, chains, signer_count });
    }
    if detached.is_none() && content.is_none() {
        return Err(Error::Signature("signature has no content and no detached data was given".to_string()));
    }
    let verify_time = if opts.keyring.use_bundle_signing_time { Some(signing_time(&cms)?) } else { None };
    let store = opts.keyring.build_store(verify_time, opts.no_check_time)?;
    let flags = openssl_sys::CMS_BINARY;
    let ok = unsafe {
        match detached {
            Some(reader) => {
                let (ok, io) = bio::with_read_bio(reader, |b| {
                    openssl_sys::CMS_verify(
                        cms.as_ptr(),
                        std::ptr::null_mut(),
                        store.as_ptr(),
                        b,
                        std::ptr::null_mut(),
                        flags,
                    )
                });
                if let Some(e) = io {
                    ErrorStack::get();
                    return Err(Error::Io(format!("failed to read signed data: {e}")));
                }
                ok
            }
            None => openssl_sys::CMS_verify(
                cms.as_ptr(),
                std::ptr::null_mut(),
                store.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                flags,
            ),
        }
    };
    if ok != 1 {
        return Err(Error::Signature(openssl_reason(&ErrorStack::get())));
    }
    let mut untrusted = Stack::<X509>::new().map_err(|e| Error::Other(e.to_string()))?;
    for c in &embedded {
        untrusted.push(c.clone()).map_err(|e| Error::Other(e.to_string()))?;
    }
    let signer_certs = signer_infos(&cms)
        .into_iter()
        .map(|si| signer_cert(si).ok_or_else(|| Error::Signature("signer certificate not found".to_string())))
        .collect::<Result<Vec<X509>>>()?;
    let by: Vec<String> =
        signer_certs.iter().map(|c| format!("'{}'", certinfo::name_oneline(c.subject_name()))).collect();
    let kind = if content.is_some() { "inline" } else { "detached" };
    tracing::info!("Verified {kind} signature by {}", by.join(", "));
    // Every signature checks out, but which signer's chain would the
    // bundle be trusted for? RAUC takes exactly one, and so does rota.
    if signer_certs.len() != 1 {
        return Err(Error::Signature(format!("Unsupported number of signers: {}", signer_certs.len())));
    }
    let mut chains = Vec::new();
    for cert in &signer_certs {
        let chain = build_chain(&store, cert, &untrusted)?;
        opts.keyring.check_chain_purpose(&chain)?;
        chains.push(chain.iter().map(|c| CertInfo::of(c)).collect::<Vec<_>>());
    }
    if !opts.keyring.allowed_signer_cns.is_empty() {
        let allowed = signer_certs
            .iter()
            .filter_map(|c| trust::common_name(c))
            .any(|cn| opts.keyring.allowed_signer_cns.contains(&cn));
        if !allowed {
            return Err(Error::Signature("No signature CN matching allowed-signer-cns found".to_string()));
        }
    }
    Ok(SignatureInfo { content, verified: true, chains, signer_count })
}
