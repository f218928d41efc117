//! Which slot is running (spec §6.1): the override option, the kernel
//! command line (`rauc.slot=`, `rauc.external`, `root=`), and bootloader hints.
//!
//! The command line is read from `/proc/cmdline`, or from the file named by
//! `ROTA_CMDLINE_PATH` (tests and simulated devices use it); RAUC's test
//! hook `RAUC_TEST_CMDLINE` gives the command line itself.

use crate::bootloader::Bootloader;
use crate::error::{Error, Result};
use std::path::PathBuf;

/// Boot-slot string meaning "booted from something that is not a slot".
pub const EXTERNAL: &str = "_external_";

/// Environment variable that replaces `/proc/cmdline`.
pub const CMDLINE_ENV: &str = "ROTA_CMDLINE_PATH";

/// RAUC's test hook: the kernel command line itself.
pub const RAUC_CMDLINE_ENV: &str = "RAUC_TEST_CMDLINE";

/// The kernel command line.
pub fn read_cmdline() -> Result<String> {
    if let Some(line) = std::env::var_os(RAUC_CMDLINE_ENV) {
        return Ok(line.to_string_lossy().into_owned());
    }
    let path = std::env::var_os(CMDLINE_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/proc/cmdline"));
    std::fs::read_to_string(&path).map_err(|e| Error::Failed(format!("Failed to read {}: {e}", path.display())))
}

fn disk_link(value: &str) -> String {
    for (prefix, dir) in [("PARTLABEL=", "by-partlabel"), ("PARTUUID=", "by-partuuid"), ("UUID=", "by-uuid")] {
        if let Some(id) = value.strip_prefix(prefix) {
            return format!("/dev/disk/{dir}/{id}");
        }
    }
    value.to_string()
}

/// Finds the boot-slot string: `override_slot`, then the command line, then
/// the bootloader's hint, then the root device (resolved to a real path).
pub fn detect(override_slot: Option<&str>, bootloader: &dyn Bootloader) -> Result<String> {
    if let Some(o) = override_slot {
        return Ok(o.to_string());
    }
    let cmdline = read_cmdline()?;
    if cmdline.contains("rauc.external") {
        return Ok(EXTERNAL.to_string());
    }
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    if words.contains(&"root=/dev/nfs") {
        return Ok(EXTERNAL.to_string());
    }
    if let Some(s) = words.iter().find_map(|w| w.strip_prefix("rauc.slot=")) {
        return Ok(s.to_string());
    }
    if let Some(h) = bootloader.current_hint() {
        return Ok(h);
    }
    let root = words
        .iter()
        .find_map(|w| w.strip_prefix("root="))
        .or_else(|| words.iter().find_map(|w| w.strip_prefix("systemd.verity_root_data=")));
    match root {
        Some(r) => {
            let dev = disk_link(r);
            Ok(std::fs::canonicalize(&dev).map(|p| p.to_string_lossy().into_owned()).unwrap_or(dev))
        }
        None => Err(Error::Failed("Could not find any root device or rauc slot information in /proc/cmdline".into())),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn disk_links() {
        assert_eq!(super::disk_link("PARTUUID=abc-02"), "/dev/disk/by-partuuid/abc-02");
        assert_eq!(super::disk_link("/dev/sda2"), "/dev/sda2");
    }
}
