//! A read-only OpenSSL `BIO` backed by a Rust reader, so CMS signing and
//! detached verification stream the payload instead of loading it whole.

use libc::{c_char, c_int, c_long, c_void};
use openssl_sys::{BIO, BIO_METHOD};
use std::io::{self, Read};

struct State<'a> {
    reader: &'a mut dyn Read,
    error: Option<io::Error>,
}

unsafe extern "C" fn bio_read(bio: *mut BIO, buf: *mut c_char, len: c_int) -> c_int {
    if len <= 0 {
        return 0;
    }
    // SAFETY: the data pointer is set to a live `State` for the whole life of the BIO.
    let state = unsafe { &mut *(openssl_sys::BIO_get_data(bio) as *mut State<'_>) };
    let out = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, len as usize) };
    loop {
        match state.reader.read(out) {
            Ok(n) => return n as c_int,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                state.error = Some(e);
                return -1;
            }
        }
    }
}

unsafe extern "C" fn bio_ctrl(_bio: *mut BIO, cmd: c_int, _num: c_long, _ptr: *mut c_void) -> c_long {
    if cmd == openssl_sys::BIO_CTRL_FLUSH { 1 } else { 0 }
}

unsafe extern "C" fn bio_create(bio: *mut BIO) -> c_int {
    unsafe { openssl_sys::BIO_set_init(bio, 1) };
    1
}

unsafe extern "C" fn bio_destroy(_bio: *mut BIO) -> c_int {
    1
}

/// Runs `f` with a BIO that reads from `reader`. Returns `f`'s result and
/// the first I/O error the reader reported, if any.
pub fn with_read_bio<R>(reader: &mut dyn Read, f: impl FnOnce(*mut BIO) -> R) -> (R, Option<io::Error>) {
    let mut state = State { reader, error: None };
    unsafe {
        let method: *mut BIO_METHOD = openssl_sys::BIO_meth_new(openssl_sys::BIO_TYPE_NONE, c"rota-reader".as_ptr());
        assert!(!method.is_null(), "BIO_meth_new failed");
        openssl_sys::BIO_meth_set_read__fixed_rust(method, Some(bio_read));
        openssl_sys::BIO_meth_set_ctrl__fixed_rust(method, Some(bio_ctrl));
        openssl_sys::BIO_meth_set_create__fixed_rust(method, Some(bio_create));
        openssl_sys::BIO_meth_set_destroy__fixed_rust(method, Some(bio_destroy));
        let bio = openssl_sys::BIO_new(method);
        assert!(!bio.is_null(), "BIO_new failed");
        openssl_sys::BIO_set_data(bio, (&mut state as *mut State<'_>).cast());
        let r = f(bio);
        super::ffi::BIO_free(bio);
        openssl_sys::BIO_meth_free(method);
        (r, state.error)
    }
}
