//! `boot-emmc` slots (spec §4.3): the two hardware boot partitions of an
//! eMMC. The one the card does not boot from is unlocked (`force_ro` in
//! sysfs), cleared, written, read back and locked again; then the card's
//! PARTITION_CONFIG register is switched to it and read back.
//!
//! The register is read and written with `mmc` from mmc-utils (EXT_CSD
//! read, `bootpart enable`) rather than raw MMC ioctls, so machines without
//! an eMMC can test the procedure with a recording fake of `mmc`. The sysfs
//! root can be moved with `ROTA_SYSFS_PATH` for the same reason.

use super::hooks::SlotHook;
use super::write::{Job, copy_image, zero_range};
use crate::error::{Error, Result, failed};
use crate::tools;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// How `mmc extcsd read` prints the register.
const PARTITION_CONFIG_LABEL: &str = "[PARTITION_CONFIG: 0x";
/// BOOT_ACK: the card acknowledges boot; kept across the switch.
const BOOT_ACK: u8 = 0x40;

/// The PARTITION_CONFIG byte (EXT_CSD 179) in `mmc extcsd read` output.
pub fn parse_partition_config(text: &str) -> Option<u8> {
    let at = text.find(PARTITION_CONFIG_LABEL)? + PARTITION_CONFIG_LABEL.len();
    let hex: String = text[at..].chars().take_while(char::is_ascii_hexdigit).collect();
    u8::from_str_radix(&hex, 16).ok()
}

/// The boot partition (0 or 1) the card boots from, given PARTITION_CONFIG.
/// A card that is not boot-enabled counts as booting from boot1, so boot0
/// is written first (as RAUC does).
pub fn active_boot_partition(config: u8, dev: &Path) -> Result<u8> {
    match (config >> 3) & 7 {
        1 => Ok(0),
        2 => Ok(1),
        0 => {
            tracing::warn!("eMMC '{}' has no boot partition enabled; treating boot1 as active", dev.display());
            Ok(1)
        }
        7 => failed(format!("eMMC '{}' boots from its user area, not from a boot partition", dev.display())),
        v => failed(format!("eMMC '{}' has reserved boot partition value {v} in PARTITION_CONFIG", dev.display())),
    }
}

fn read_partition_config(dev: &Path) -> Result<u8> {
    let out = tools::run("mmc", &["extcsd".as_ref(), "read".as_ref(), dev.as_os_str()])?;
    parse_partition_config(&out.stdout).ok_or_else(|| {
        Error::Failed(format!("Failed to read PARTITION_CONFIG of '{}': not in the EXT_CSD output", dev.display()))
    })
}

fn sysfs() -> PathBuf {
    std::env::var_os("ROTA_SYSFS_PATH").map_or_else(|| PathBuf::from("/sys"), PathBuf::from)
}

fn set_force_ro(path: &Path, ro: bool) -> Result<()> {
    std::fs::write(path, if ro { "1" } else { "0" }).map_err(|e| Error::io("Failed to write", path, e))
}

/// Zeroes the first `len` bytes of `dev`.
fn clear(dev: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(dev).map_err(|e| Error::io("Failed to open", dev, e))?;
    zero_range(&f, dev, 0, len)?;
    f.sync_data().map_err(|e| Error::io("Failed to sync", dev, e))
}

fn size_of(dev: &Path) -> Result<u64> {
    let mut f = std::fs::File::open(dev).map_err(|e| Error::io("Failed to open", dev, e))?;
    f.seek(SeekFrom::End(0)).map_err(|e| Error::io("Failed to size", dev, e))
}

/// Writes `job` into the inactive boot partition and switches the card to it.
pub fn write(job: &Job<'_>, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let slot = job.slot;
    let base = std::fs::canonicalize(&slot.device).map_err(|e| Error::io("Failed to resolve", &slot.device, e))?;
    let name = base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let active = active_boot_partition(read_partition_config(&base)?, &base)?;
    let k = (active + 1) % 2;
    let part = base.with_file_name(format!("{name}boot{k}"));
    let force_ro = sysfs().join("block").join(format!("{name}boot{k}")).join("force_ro");
    let part_size = size_of(&part)?;
    let limit = if slot.size_limit > 0 { slot.size_limit.min(part_size) } else { part_size };
    let size = job.image.size.unwrap_or(0);
    if size > limit {
        return failed(format!(
            "Image '{}' ({size} bytes) does not fit into boot partition '{}' ({limit} bytes)",
            job.src.name(),
            part.display()
        ));
    }
    let env = vec![
        ("RAUC_BOOT_PARTITION_ACTIVATING".to_string(), k.to_string()),
        ("RAUC_BOOT_SIZE_LIMIT".to_string(), slot.size_limit.to_string()),
    ];
    let hook = |h: SlotHook| job.hooks.map_or(Ok(()), |hooks| hooks.run_with(h, None, &env));
    set_force_ro(&force_ro, false)?;
    let written = hook(SlotHook::PreInstall)
        .and_then(|()| clear(&part, limit))
        .and_then(|()| copy_image(job.src, None, &part, job.image.size, job.image.sha256.as_deref(), progress))
        .and_then(|()| hook(SlotHook::PostInstall));
    // Lock the partition again whatever happened.
    let locked = set_force_ro(&force_ro, true);
    written?;
    locked?;
    // Switch through the partition just written (the kernel may serve a
    // stale EXT_CSD otherwise), then check on the base device.
    let old = read_partition_config(&base)?;
    let ack = if old & BOOT_ACK != 0 { "1" } else { "0" };
    let enable = (k + 1).to_string();
    tools::run("mmc", &["bootpart".as_ref(), "enable".as_ref(), enable.as_ref(), ack.as_ref(), part.as_os_str()])?;
    let now = read_partition_config(&base)?;
    if (now >> 3) & 7 != k + 1 {
        return failed(format!(
            "Failed to switch '{}' to boot partition {k}: PARTITION_CONFIG still reads 0x{now:02x}",
            base.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_config_from_mmc_output() {
        let text = "Boot Partition Size [BOOT_SIZE_MULTI: 0x20]\nBoot configuration bytes [PARTITION_CONFIG: 0x48]\n";
        assert_eq!(parse_partition_config(text), Some(0x48));
        assert_eq!(parse_partition_config("nothing"), None);
    }

    #[test]
    fn active_partition_from_the_register() {
        let dev = Path::new("/dev/mmcblk0");
        assert_eq!(active_boot_partition(0x48, dev).unwrap(), 0);
        assert_eq!(active_boot_partition(0x10, dev).unwrap(), 1);
        assert_eq!(active_boot_partition(0x00, dev).unwrap(), 1);
        assert!(active_boot_partition(0x38, dev).unwrap_err().to_string().contains("user area"));
        assert!(active_boot_partition(0x18, dev).unwrap_err().to_string().contains("reserved boot partition value 3"));
    }
}
