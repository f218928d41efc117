//! `rota-bundle`: the RAUC-compatible bundle format as a library.
//!
//! Bundles are signed squashfs images in one of three containers (`plain`,
//! `verity`, `crypt`). This crate reads them in user space with every byte
//! verified before it reaches the caller, and creates them with `mksquashfs`.
#![deny(missing_docs)]

pub mod bundle;
pub mod castore;
pub mod cli;
pub mod container;
pub mod convert;
pub mod create;
pub mod error;
pub mod exclusive;
pub mod hostconfig;
pub mod info;
pub mod keyfile;
pub mod manifest;
pub mod pkcs11;
pub mod reader;
pub mod semver;
pub mod signature;
pub mod source;
pub mod sparse;
pub mod squashfs;
pub mod system_manifest;
pub mod tree;
pub mod uri;
pub mod verity;
