//! libcrypto functions the `openssl-sys` crate does not declare. All exist in
//! OpenSSL 1.1 and 3.x.
#![allow(non_camel_case_types, missing_docs)]

use libc::{c_char, c_int, c_ulong, c_void};
use openssl_sys::{
    ASN1_INTEGER, ASN1_OBJECT, ASN1_OCTET_STRING, ASN1_TIME, BIO, CMS_ContentInfo, EVP_MD, EVP_PKEY, X509, X509_ALGOR,
    X509_LOOKUP, X509_NAME, stack_st_X509,
};

pub enum CMS_SignerInfo {}
pub enum CMS_RecipientInfo {}
pub enum CMS_RecipientEncryptedKey {}
pub enum OPENSSL_STACK_OPAQUE {}

/// `ASN1_STRFLGS_RFC2253 | ASN1_STRFLGS_ESC_QUOTE | XN_FLAG_SEP_CPLUS_SPC | XN_FLAG_SPC_EQ`
/// without `ASN1_STRFLGS_ESC_MSB`, so UTF-8 names print as text.
pub const XN_FLAG_ONELINE_UTF8: c_ulong = 0x0082_031f & !0x4;
pub const CMS_RECIPINFO_TRANS: c_int = 0;
pub const CMS_RECIPINFO_AGREE: c_int = 1;
pub const BIO_CTRL_INFO: c_int = 3;
pub const NID_PKCS7_ENVELOPED: c_int = 23;
pub const X509_FILETYPE_PEM: c_int = 1;

unsafe extern "C" {
    pub fn CMS_get0_SignerInfos(cms: *mut CMS_ContentInfo) -> *mut OPENSSL_STACK_OPAQUE;
    pub fn CMS_SignerInfo_get0_algs(
        si: *mut CMS_SignerInfo,
        pk: *mut *mut EVP_PKEY,
        signer: *mut *mut X509,
        pdig: *mut *mut X509_ALGOR,
        psig: *mut *mut X509_ALGOR,
    );
    pub fn CMS_set1_signers_certs(cms: *mut CMS_ContentInfo, certs: *mut stack_st_X509, flags: u32) -> c_int;
    pub fn CMS_get1_certs(cms: *mut CMS_ContentInfo) -> *mut stack_st_X509;
    pub fn CMS_get0_type(cms: *const CMS_ContentInfo) -> *const ASN1_OBJECT;
    pub fn CMS_get0_content(cms: *mut CMS_ContentInfo) -> *mut *mut ASN1_OCTET_STRING;
    pub fn CMS_signed_get_attr_by_OBJ(si: *const CMS_SignerInfo, obj: *const ASN1_OBJECT, lastpos: c_int) -> c_int;
    pub fn CMS_signed_get0_data_by_OBJ(
        si: *mut CMS_SignerInfo,
        oid: *const ASN1_OBJECT,
        lastpos: c_int,
        typ: c_int,
    ) -> *mut c_void;
    pub fn CMS_add1_signer(
        cms: *mut CMS_ContentInfo,
        signer: *mut X509,
        pk: *mut EVP_PKEY,
        md: *const EVP_MD,
        flags: u32,
    ) -> *mut CMS_SignerInfo;
    pub fn CMS_add1_cert(cms: *mut CMS_ContentInfo, cert: *mut X509) -> c_int;
    pub fn CMS_get0_RecipientInfos(cms: *mut CMS_ContentInfo) -> *mut OPENSSL_STACK_OPAQUE;
    pub fn CMS_RecipientInfo_type(ri: *mut CMS_RecipientInfo) -> c_int;
    pub fn CMS_RecipientInfo_ktri_get0_signer_id(
        ri: *mut CMS_RecipientInfo,
        keyid: *mut *mut ASN1_OCTET_STRING,
        issuer: *mut *mut X509_NAME,
        sno: *mut *mut ASN1_INTEGER,
    ) -> c_int;
    pub fn CMS_RecipientInfo_kari_get0_reks(ri: *mut CMS_RecipientInfo) -> *mut OPENSSL_STACK_OPAQUE;
    pub fn CMS_RecipientEncryptedKey_get0_id(
        rek: *mut CMS_RecipientEncryptedKey,
        keyid: *mut *mut ASN1_OCTET_STRING,
        tm: *mut *mut c_void,
        other: *mut *mut c_void,
        issuer: *mut *mut X509_NAME,
        sno: *mut *mut ASN1_INTEGER,
    ) -> c_int;
    pub fn X509_NAME_print_ex(out: *mut BIO, nm: *const X509_NAME, indent: c_int, flags: c_ulong) -> c_int;
    pub fn X509_load_cert_crl_file(ctx: *mut X509_LOOKUP, file: *const c_char, typ: c_int) -> c_int;
    pub fn ASN1_TIME_to_tm(s: *const ASN1_TIME, tm: *mut libc::tm) -> c_int;
    pub fn BIO_free(bio: *mut BIO) -> c_int;
}

/// Number of entries of an OpenSSL stack.
pub unsafe fn sk_num(sk: *mut OPENSSL_STACK_OPAQUE) -> usize {
    if sk.is_null() {
        return 0;
    }
    unsafe { openssl_sys::OPENSSL_sk_num(sk.cast()) }.max(0) as usize
}

/// Entry `i` of an OpenSSL stack.
pub unsafe fn sk_value<T>(sk: *mut OPENSSL_STACK_OPAQUE, i: usize) -> *mut T {
    unsafe { openssl_sys::OPENSSL_sk_value(sk.cast(), i as c_int).cast() }
}

/// Prints with a memory BIO and returns the text.
pub fn print_to_string(f: impl FnOnce(*mut BIO) -> c_int) -> Option<String> {
    unsafe {
        let bio = openssl_sys::BIO_new(openssl_sys::BIO_s_mem());
        if bio.is_null() {
            return None;
        }
        let ok = f(bio) >= 0;
        let mut ptr: *mut c_char = std::ptr::null_mut();
        let len = openssl_sys::BIO_ctrl(bio, BIO_CTRL_INFO, 0, (&mut ptr as *mut *mut c_char).cast());
        let text = if ok && len >= 0 && !ptr.is_null() {
            let bytes = std::slice::from_raw_parts(ptr as *const u8, len as usize);
            Some(String::from_utf8_lossy(bytes).into_owned())
        } else {
            None
        };
        BIO_free(bio);
        text
    }
}
