//! `rota`: the device side of the update service — configuration, slots,
//! bootloader backends, slot status, the install engine — and the
//! device commands of the multi-call command line.
#![deny(missing_docs)]

pub mod artifacts;
pub mod bootloader;
pub mod bootslot;
pub mod bundleview;
pub mod cli;
pub mod config;
pub mod confined;
pub mod dbus;
pub mod ecu;
pub mod error;
pub mod eventlog;
pub mod files;
pub mod install;
pub mod mark;
pub mod mounts;
pub mod polling;
pub mod report;
pub mod runtime;
pub mod slot_order;
pub mod status;
pub mod system;
pub mod tools;
