//! Bootloader backends (spec §5): marking slots good or bad, choosing the
//! primary slot, and asking for the state of each. Only slots with a
//! `bootname` are handled; the backends speak in boot names.

mod barebox;
mod custom;
mod efi;
mod grub;
mod uboot;

use crate::config::{BootloaderKind, SlotConfig, SystemConfig};
use crate::error::{Result, failed};

/// Default boot attempts when `boot-attempts` / `boot-attempts-primary` are 0.
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// One bootloader backend.
pub trait Bootloader: Send + Sync {
    /// Marks `bootname` good (`true`) or bad (`false`).
    fn set_state(&self, bootname: &str, good: bool) -> Result<()>;
    /// Makes `bootname` the slot booted next.
    fn set_primary(&self, bootname: &str) -> Result<()>;
    /// Whether `bootname` is currently good.
    fn get_state(&self, bootname: &str) -> Result<bool>;
    /// The boot name the bootloader will boot next.
    fn get_primary(&self) -> Result<String>;
    /// The boot name the bootloader says is running, if it can tell (spec §6.1 step 3).
    fn current_hint(&self) -> Option<String> {
        None
    }
}

/// The backend that does nothing (`bootloader=noop`).
struct Noop;

impl Bootloader for Noop {
    fn set_state(&self, bootname: &str, good: bool) -> Result<()> {
        tracing::info!("noop bootloader: not marking {bootname} {}", if good { "good" } else { "bad" });
        Ok(())
    }
    fn set_primary(&self, bootname: &str) -> Result<()> {
        tracing::info!("noop bootloader: not making {bootname} primary");
        Ok(())
    }
    fn get_state(&self, _bootname: &str) -> Result<bool> {
        failed("the noop bootloader cannot tell slot states")
    }
    fn get_primary(&self) -> Result<String> {
        failed("the noop bootloader cannot tell the primary slot")
    }
}

/// Boot names of the bootable slots, in configuration order.
fn bootnames(slots: &[SlotConfig]) -> Vec<String> {
    slots.iter().filter_map(|s| s.bootname.clone()).collect()
}

/// `n`, or the default when the configuration says 0.
fn attempts(n: u32) -> u32 {
    if n == 0 { DEFAULT_ATTEMPTS } else { n }
}

/// The backend selected by `config`.
pub fn for_config(config: &SystemConfig) -> Box<dyn Bootloader> {
    let s = &config.system;
    let names = bootnames(&config.slots);
    match s.bootloader {
        BootloaderKind::Grub => Box::new(grub::Grub { env: s.grubenv.clone(), bootnames: names }),
        BootloaderKind::Uboot => Box::new(uboot::Uboot {
            bootnames: names,
            attempts: attempts(s.boot_attempts),
            attempts_primary: attempts(s.boot_attempts_primary),
        }),
        BootloaderKind::Barebox => Box::new(barebox::Barebox {
            statename: s.barebox_statename.clone(),
            dtb: s.barebox_dtbpath.clone(),
            bootnames: names,
            attempts: attempts(s.boot_attempts),
            attempts_primary: attempts(s.boot_attempts_primary),
        }),
        BootloaderKind::Efi => Box::new(efi::Efi {
            use_bootnext: s.efi_use_bootnext,
            slots: config.slots.iter().filter(|s| s.bootname.is_some()).cloned().collect(),
        }),
        BootloaderKind::Custom => Box::new(custom::Custom {
            script: config.handlers.bootloader_custom_backend.clone().expect("checked when the config was read"),
            bootnames: names,
        }),
        BootloaderKind::Noop => Box::new(Noop),
    }
}
