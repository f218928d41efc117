//! CMS EnvelopedData around the signature of crypt bundles (spec §1.4):
//! encrypt to many recipients (RSA key transport, EC key agreement), decrypt
//! with one private key, and list who can decrypt.

use super::{ffi, openssl_reason};
use crate::error::{Error, Result};
use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::{X509, X509NameRef};
use std::path::Path;

/// Loads all certificates of one or more PEM files (each may hold many).
pub fn load_recipients(paths: &[impl AsRef<Path>]) -> Result<Vec<X509>> {
    let mut out = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let pem = std::fs::read(p).map_err(|_| Error::Key(format!("Failed to load cert file '{}'", p.display())))?;
        let parse_error = |e: &openssl::error::ErrorStack| {
            Error::Key(format!("Failed to parse cert file '{}': {}", p.display(), openssl_reason(e)))
        };
        let certs = X509::stack_from_pem(&pem).map_err(|e| parse_error(&e))?;
        if certs.is_empty() {
            // OpenSSL's own reason for a file without one (no start line,
            // "Expecting: CERTIFICATE"), as RAUC passes it on.
            return Err(X509::from_pem(&pem).err().map_or_else(
                || Error::Key(format!("Failed to parse cert file '{}': no certificate", p.display())),
                |e| parse_error(&e),
            ));
        }
        out.extend(certs);
    }
    Ok(out)
}

/// Wraps `signed_data` (DER SignedData) in an EnvelopedData for `recipients`
/// (AES-256-CBC content encryption).
pub fn encrypt(signed_data: &[u8], recipients: &[X509]) -> Result<Vec<u8>> {
    let mut stack = Stack::new().map_err(|e| Error::Other(e.to_string()))?;
    for r in recipients {
        stack.push(r.clone()).map_err(|e| Error::Other(e.to_string()))?;
    }
    let env = CmsContentInfo::encrypt(&stack, signed_data, openssl::symm::Cipher::aes_256_cbc(), CMSOptions::BINARY)
        .map_err(|e| Error::Key(format!("Failed to encrypt CMS: {}", openssl_reason(&e))))?;
    env.to_der().map_err(|e| Error::Other(e.to_string()))
}

/// The one text every failure to decrypt an EnvelopedData gives. Telling
/// a bad padding from a wrong key length or a failed content decryption
/// would be an oracle on the device's private key (Bleichenbacher), and
/// these texts reach D-Bus callers (`LastError`, `Inspect`).
pub const DECRYPT_FAILED: &str =
    "Failed to decrypt CMS EnvelopedData: it is not encrypted for this key, or it is damaged";

/// Decrypts an EnvelopedData with `key` (and its certificate, if known)
/// into the SignedData it wraps. OpenSSL's countermeasure against
/// padding oracles stays on: a recipient key that does not fit yields a
/// random content key, not an error of its own. Every failure, including a
/// result that is no CMS SignedData, is [`DECRYPT_FAILED`].
pub fn decrypt(enveloped: &[u8], key: &PKey<Private>, cert: Option<&X509>) -> Result<Vec<u8>> {
    let cms = CmsContentInfo::from_der(enveloped)
        .map_err(|e| Error::Format(format!("Failed to parse CMS: {}", openssl_reason(&e))))?;
    let fail = || {
        // The reasons stay in this process: not even the log gets them.
        openssl::error::ErrorStack::get();
        Error::Decrypt(DECRYPT_FAILED.to_string())
    };
    let plain = unsafe {
        let out = openssl_sys::BIO_new(openssl_sys::BIO_s_mem());
        if out.is_null() {
            return Err(fail());
        }
        let ok = openssl_sys::CMS_decrypt(
            cms.as_ptr(),
            key.as_ptr(),
            cert.map_or(std::ptr::null_mut(), |c| c.as_ptr()),
            std::ptr::null_mut(),
            out,
            openssl_sys::CMS_BINARY,
        );
        let result = if ok == 1 {
            let mut ptr: *mut libc::c_char = std::ptr::null_mut();
            let len = openssl_sys::BIO_ctrl(out, ffi::BIO_CTRL_INFO, 0, (&mut ptr as *mut *mut libc::c_char).cast());
            Some(std::slice::from_raw_parts(ptr as *const u8, len.max(0) as usize).to_vec())
        } else {
            None
        };
        ffi::BIO_free(out);
        result
    };
    // A random content key (the countermeasure) decrypts to garbage that
    // now and then has valid padding, and so does altered ciphertext (1 in
    // about 256 alterations of the last blocks): the result is then no
    // SignedData, or one whose signature no longer matches its content.
    // Both must fail as a bad padding does, or the error tells the padding
    // apart (a CBC padding oracle on the signed manifest, which holds the
    // payload key). A bundle whose signature holds is no such alteration:
    // its signer is judged by the keyring later, with its own messages.
    match plain {
        Some(p) if is_intact_signed_data(&p) => Ok(p),
        _ => Err(fail()),
    }
}

/// Whether `der` is a CMS ContentInfo holding SignedData whose every
/// signature matches its inline content, by the certificates it carries (no
/// trust decision: that is the keyring's, later). Errors are dropped: they
/// must not reach anyone.
fn is_intact_signed_data(der: &[u8]) -> bool {
    let Ok(cms) = CmsContentInfo::from_der(der) else { return false };
    let signed = unsafe { openssl_sys::OBJ_obj2nid(ffi::CMS_get0_type(cms.as_ptr())) == openssl_sys::NID_pkcs7_signed };
    let ok = signed
        && unsafe {
            openssl_sys::CMS_verify(
                cms.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                openssl_sys::CMS_BINARY | openssl_sys::CMS_NO_SIGNER_CERT_VERIFY,
            ) == 1
        };
    openssl::error::ErrorStack::get();
    ok
}

/// Who an EnvelopedData is encrypted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// `RSA key transport` or `key agreement`.
    pub kind: &'static str,
    /// Issuer of the recipient certificate (when identified by issuer and serial).
    pub issuer: Option<String>,
    /// Serial number in hex (when identified by issuer and serial).
    pub serial: Option<String>,
    /// Subject key identifier in hex (when identified by key id).
    pub key_id: Option<String>,
}

fn octets(p: *mut openssl_sys::ASN1_OCTET_STRING) -> Option<String> {
    if p.is_null() {
        return None;
    }
    unsafe {
        let s = p as *const openssl_sys::ASN1_STRING;
        let data = openssl_sys::ASN1_STRING_get0_data(s);
        let len = openssl_sys::ASN1_STRING_length(s);
        Some(hex::encode(std::slice::from_raw_parts(data, len.max(0) as usize)))
    }
}

fn serial_hex(p: *mut openssl_sys::ASN1_INTEGER) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let bn = unsafe { openssl::asn1::Asn1IntegerRef::from_ptr(p) }.to_bn().ok()?;
    bn.to_hex_str().ok().map(|s| s.to_string())
}

fn name(p: *mut openssl_sys::X509_NAME) -> Option<String> {
    if p.is_null() {
        return None;
    }
    Some(super::certinfo::name_oneline(unsafe { X509NameRef::from_ptr(p) }))
}

/// Lists the recipients of an EnvelopedData.
pub fn recipients(enveloped: &[u8]) -> Result<Vec<Recipient>> {
    let cms = CmsContentInfo::from_der(enveloped)
        .map_err(|e| Error::Format(format!("Failed to parse CMS: {}", openssl_reason(&e))))?;
    let mut out = Vec::new();
    unsafe {
        let ris = ffi::CMS_get0_RecipientInfos(cms.as_ptr());
        for i in 0..ffi::sk_num(ris) {
            let ri: *mut ffi::CMS_RecipientInfo = ffi::sk_value(ris, i);
            match ffi::CMS_RecipientInfo_type(ri) {
                ffi::CMS_RECIPINFO_TRANS => {
                    let (mut kid, mut iss, mut sno) =
                        (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
                    ffi::CMS_RecipientInfo_ktri_get0_signer_id(ri, &mut kid, &mut iss, &mut sno);
                    out.push(Recipient {
                        kind: "RSA key transport",
                        issuer: name(iss),
                        serial: serial_hex(sno),
                        key_id: octets(kid),
                    });
                }
                ffi::CMS_RECIPINFO_AGREE => {
                    let reks = ffi::CMS_RecipientInfo_kari_get0_reks(ri);
                    for j in 0..ffi::sk_num(reks) {
                        let rek: *mut ffi::CMS_RecipientEncryptedKey = ffi::sk_value(reks, j);
                        let (mut kid, mut iss, mut sno) =
                            (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
                        let (mut tm, mut other) = (std::ptr::null_mut(), std::ptr::null_mut());
                        ffi::CMS_RecipientEncryptedKey_get0_id(rek, &mut kid, &mut tm, &mut other, &mut iss, &mut sno);
                        out.push(Recipient {
                            kind: "key agreement",
                            issuer: name(iss),
                            serial: serial_hex(sno),
                            key_id: octets(kid),
                        });
                    }
                }
                _ => out.push(Recipient { kind: "other", issuer: None, serial: None, key_id: None }),
            }
        }
    }
    Ok(out)
}
