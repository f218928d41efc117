//! `rota`: the device side of the update service — configuration, slots,
//! bootloader backends, slot status, the install engine — and the
//! device commands of the multi-call command line.
#![deny(missing_docs)]

pub mod config;
pub mod error;
