//! Keys and certificates on PKCS#11 tokens (HSMs, TPM-backed tokens, smart
//! cards), named by `pkcs11:` URIs (RFC 7512) and reached through OpenSSL's
//! `pkcs11` engine (libp11, Debian package `libengine-pkcs11-openssl`), as
//! RAUC does. Keys never leave the token: OpenSSL hands their signing and
//! decryption to the engine, so they serve CMS signing, bundle decryption
//! and TLS client authentication alike.
//!
//! `RAUC_PKCS11_MODULE` names the token's PKCS#11 module (without it the
//! engine uses p11-kit's proxy); `RAUC_PKCS11_PIN` logs in, as does a
//! `pin-value` attribute in the URI.

use foreign_types::ForeignType;
use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use std::ffi::{CString, c_char, c_int, c_long, c_void};
use std::sync::{Mutex, OnceLock};

/// Whether `value` names an object on a token rather than a file.
pub fn is_uri(value: &str) -> bool {
    value.starts_with("pkcs11:")
}

/// `uri` with the value of a `pin-value` attribute hidden, for messages.
pub fn redacted(uri: &str) -> String {
    let (mut out, mut rest) = match uri.strip_prefix("pkcs11:") {
        Some(r) => ("pkcs11:".to_string(), r),
        None => (String::new(), uri),
    };
    loop {
        let end = rest.find(['?', ';', '&']).unwrap_or(rest.len());
        let part = &rest[..end];
        out.push_str(if part.starts_with("pin-value=") { "pin-value=***" } else { part });
        let Some(sep) = rest[end..].chars().next() else { break };
        out.push(sep);
        rest = &rest[end + 1..];
    }
    out
}

/// OpenSSL's opaque `ENGINE`.
type RawEngine = c_void;

unsafe extern "C" {
    fn ENGINE_by_id(id: *const c_char) -> *mut RawEngine;
    fn ENGINE_ctrl_cmd_string(e: *mut RawEngine, cmd: *const c_char, arg: *const c_char, optional: c_int) -> c_int;
    fn ENGINE_ctrl_cmd(
        e: *mut RawEngine,
        cmd: *const c_char,
        i: c_long,
        p: *mut c_void,
        f: Option<unsafe extern "C" fn()>,
        optional: c_int,
    ) -> c_int;
    fn ENGINE_init(e: *mut RawEngine) -> c_int;
    fn ENGINE_free(e: *mut RawEngine) -> c_int;
    fn ENGINE_load_private_key(
        e: *mut RawEngine,
        key_id: *const c_char,
        ui: *mut c_void,
        data: *mut c_void,
    ) -> *mut openssl_sys::EVP_PKEY;
}

/// The argument of libp11's `LOAD_CERT_CTRL` command.
#[repr(C)]
struct LoadCert {
    uri: *const c_char,
    cert: *mut openssl_sys::X509,
}

/// The initialised engine, kept for the life of the process (keys loaded
/// through it refer to it). Engine commands are not thread-safe: one at a time.
struct Engine(*mut RawEngine);

// SAFETY: the pointer is only used under the mutex below.
unsafe impl Send for Engine {}

fn engine() -> Result<&'static Mutex<Engine>, String> {
    static ENGINE: OnceLock<Result<Mutex<Engine>, String>> = OnceLock::new();
    ENGINE.get_or_init(|| open_engine().map(Mutex::new)).as_ref().map_err(Clone::clone)
}

fn reason() -> String {
    crate::signature::openssl_reason(&ErrorStack::get())
}

fn open_engine() -> Result<Engine, String> {
    openssl_sys::init();
    let id = CString::new("pkcs11").expect("no NUL");
    // SAFETY: plain OpenSSL calls on a pointer checked for NULL; on failure the
    // structural reference is released.
    unsafe {
        let e = ENGINE_by_id(id.as_ptr());
        if e.is_null() {
            return Err(format!(
                "OpenSSL engine 'pkcs11' not available (install libengine-pkcs11-openssl): {}",
                reason()
            ));
        }
        let set = |cmd: &str, value: &str| -> Result<(), String> {
            let c = CString::new(cmd).expect("no NUL");
            let v = CString::new(value).map_err(|_| format!("{cmd} contains a NUL byte"))?;
            if ENGINE_ctrl_cmd_string(e, c.as_ptr(), v.as_ptr(), 0) != 1 {
                return Err(format!("OpenSSL engine 'pkcs11' refused {cmd}: {}", reason()));
            }
            Ok(())
        };
        let configured = (|| {
            if let Ok(module) = std::env::var("RAUC_PKCS11_MODULE") {
                set("MODULE_PATH", &module)?;
            }
            if ENGINE_init(e) != 1 {
                return Err(format!("Failed to initialise OpenSSL engine 'pkcs11': {}", reason()));
            }
            if let Ok(pin) = std::env::var("RAUC_PKCS11_PIN") {
                set("PIN", &pin)?;
            }
            Ok(())
        })();
        // ENGINE_init took a functional reference of its own.
        if let Err(m) = configured {
            ENGINE_free(e);
            return Err(m);
        }
        Ok(Engine(e))
    }
}

/// Loads the private key `uri` names (it stays on the token).
pub fn private_key(uri: &str) -> Result<PKey<Private>, String> {
    let fail = |m: String| format!("Failed to load key '{}': {m}", redacted(uri));
    let engine = engine().map_err(fail)?;
    let c = CString::new(uri).map_err(|_| fail("the URI contains a NUL byte".into()))?;
    let e = engine.lock().expect("not poisoned");
    // SAFETY: the engine is initialised; a non-NULL result is a new reference we own.
    let key = unsafe { ENGINE_load_private_key(e.0, c.as_ptr(), std::ptr::null_mut(), std::ptr::null_mut()) };
    if key.is_null() {
        return Err(fail(reason()));
    }
    // SAFETY: owned, non-NULL EVP_PKEY holding a private key.
    Ok(unsafe { PKey::from_ptr(key) })
}

/// Loads the certificate `uri` names.
pub fn certificate(uri: &str) -> Result<X509, String> {
    let fail = |m: String| format!("Failed to load certificate '{}': {m}", redacted(uri));
    let engine = engine().map_err(fail)?;
    let c = CString::new(uri).map_err(|_| fail("the URI contains a NUL byte".into()))?;
    let cmd = CString::new("LOAD_CERT_CTRL").expect("no NUL");
    let mut arg = LoadCert { uri: c.as_ptr(), cert: std::ptr::null_mut() };
    let e = engine.lock().expect("not poisoned");
    // SAFETY: libp11 fills `arg.cert` with a new reference on success.
    let ok = unsafe { ENGINE_ctrl_cmd(e.0, cmd.as_ptr(), 0, (&mut arg as *mut LoadCert).cast(), None, 0) };
    if ok != 1 || arg.cert.is_null() {
        return Err(fail(reason()));
    }
    // SAFETY: owned, non-NULL X509.
    Ok(unsafe { X509::from_ptr(arg.cert) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_hidden_in_messages() {
        assert_eq!(
            redacted("pkcs11:token=rota;object=client;type=private?pin-value=1234&module-name=x"),
            "pkcs11:token=rota;object=client;type=private?pin-value=***&module-name=x"
        );
        assert_eq!(redacted("pkcs11:object=a;pin-value=9"), "pkcs11:object=a;pin-value=***");
        assert_eq!(redacted("pkcs11:object=a"), "pkcs11:object=a");
        assert_eq!(redacted("pkcs11:pin-value=9;object=a"), "pkcs11:pin-value=***;object=a");
        assert!(is_uri("pkcs11:object=a") && !is_uri("/etc/rauc/key.pem"));
    }
}
