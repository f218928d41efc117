//! The install engine (spec §6): verify the bundle, choose the target slot
//! group, run handlers and hooks, write every image, check what was written,
//! record slot status, and only then switch the bootloader.

pub mod adaptive;
pub mod archive;
pub mod bootregion;
pub mod casync;
pub mod control;
pub mod emmc;
pub mod engine;
pub mod flash;
pub mod hooks;
pub mod plan;
pub mod progress;
pub mod tree;
pub mod write;
