//! The target context (spec §6.1–6.2): configuration, bootloader, the booted
//! slot and every slot's state, the variant, and what the system-info
//! handler reports. Built once per command (or at service start).

use crate::bootloader::{self, Bootloader};
use crate::bootslot::{self, EXTERNAL};
use crate::config::{SlotConfig, SystemConfig, VariantSource};
use crate::error::{Error, Result, failed};
use crate::mounts;
use crate::status::{self, CentralFile, SlotStatus};
use rota_bundle::hostconfig::HeaderFacts;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A slot's role in the running system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// The slot the system runs from.
    Booted,
    /// A child of the booted slot.
    Active,
    /// Everything else: candidates for installation.
    Inactive,
}

impl SlotState {
    /// The name used in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Booted => "booted",
            SlotState::Active => "active",
            SlotState::Inactive => "inactive",
        }
    }
}

/// A configured slot with its runtime state.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The configuration.
    pub config: SlotConfig,
    /// Booted, active or inactive.
    pub state: SlotState,
    /// Where the slot is mounted, if it is.
    pub mount_point: Option<PathBuf>,
}

/// Everything a device command needs to know about the system.
pub struct System {
    /// The configuration.
    pub config: SystemConfig,
    /// The bootloader backend.
    pub bootloader: Box<dyn Bootloader>,
    /// The boot-slot string (§6.1): a boot name, slot name, device, or `_external_`.
    pub boot_slot: String,
    /// Slots in configuration order.
    pub slots: Vec<Slot>,
    /// The variant (configured, or from the system-info handler).
    pub variant: String,
    /// `RAUC_*` variables reported by the system-info handler.
    pub system_info: Vec<(String, String)>,
    /// Do not mount slots to read their per-slot status (while an
    /// installation may be writing one of them).
    pub skip_status_mounts: bool,
}

/// Runs `program` with `env`, reading stdout and stderr merged, line by line.
pub fn run_merged(program: &Path, args: &[String], env: &[(String, String)], mut line: impl FnMut(&str)) -> Result<()> {
    let (reader, writer) =
        std::io::pipe().map_err(|e| Error::Failed(format!("Failed to create pipe for {}: {e}", program.display())))?;
    let writer2 = writer.try_clone().map_err(|e| Error::Failed(format!("Failed to create pipe: {e}")))?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(writer).stderr(writer2);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| Error::Failed(format!("Failed to start {}: {e}", program.display())))?;
    drop(cmd);
    for l in BufReader::new(reader).lines() {
        match l {
            Ok(l) => line(&l),
            Err(_) => break,
        }
    }
    let status = child.wait().map_err(|e| Error::Failed(format!("Failed to run {}: {e}", program.display())))?;
    crate::tools::check_exit(status)
}

/// The `RAUC_*` values of the system-info handler (if one is configured)
/// and the variant they leave: the handler's `RAUC_SYSTEM_VARIANT`, else
/// the configured one.
fn system_info(config: &SystemConfig) -> Result<(Vec<(String, String)>, String)> {
    let mut values = Vec::new();
    if let Some(handler) = &config.handlers.system_info {
        if !handler.exists() {
            return failed(format!("System-info handler '{}' does not exist", handler.display()));
        }
        run_merged(handler, &[], &[], |l| {
            if l.starts_with("RAUC_")
                && let Some((k, v)) = l.split_once('=')
            {
                values.push((k.to_string(), v.to_string()));
            }
        })
        .map_err(|e| e.context("Failed to run system-info handler"))?;
    }
    let variant = match values.iter().find(|(k, _)| k == "RAUC_SYSTEM_VARIANT") {
        Some((_, v)) => v.clone(),
        None => read_variant(&config.system.variant)?,
    };
    Ok((values, variant))
}

fn header_facts(values: &[(String, String)], variant: Option<&str>, transaction_id: Option<&str>) -> HeaderFacts {
    let value = |key: &str| values.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    HeaderFacts {
        variant: variant.map(str::to_string),
        system_version: value("RAUC_SYSTEM_VERSION"),
        serial: value("RAUC_SYSTEM_SERIAL"),
        transaction_id: transaction_id.map(str::to_string),
        extra: values
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("RAUC_HTTP_").map(|n| (n.to_string(), v.clone())))
            .collect(),
    }
}

/// What the automatic HTTP headers report for a system set up from
/// `config` without the rest of the device context (the system-info
/// handler runs): for `info` with an explicit configuration, as RAUC
/// configures its target then.
pub fn target_header_facts(config: &SystemConfig) -> Result<HeaderFacts> {
    let (values, variant) = system_info(config)?;
    Ok(header_facts(&values, Some(&variant).filter(|v| !v.is_empty()).map(String::as_str), None))
}

fn read_variant(source: &VariantSource) -> Result<String> {
    Ok(match source {
        VariantSource::None => String::new(),
        VariantSource::Name(n) => n.clone(),
        VariantSource::File(f) => rota_bundle::hostconfig::read_variant_file(f)?,
        VariantSource::Dtb => std::fs::read("/sys/firmware/devicetree/base/compatible")
            .map(|b| String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned())
            .map_err(|e| Error::Failed(format!("Failed to read the device tree compatible: {e}")))?,
    })
}

/// Computes every slot's state from the boot-slot string.
pub fn slot_states(configs: &[SlotConfig], boot_slot: &str) -> Result<Vec<SlotState>> {
    let matches = |s: &SlotConfig| {
        s.bootname.as_deref() == Some(boot_slot)
            || s.name == boot_slot
            || std::fs::canonicalize(&s.device).is_ok_and(|p| p == Path::new(boot_slot))
            || s.device == Path::new(boot_slot)
    };
    let booted = configs.iter().position(matches);
    let Some(b) = booted else {
        if boot_slot == EXTERNAL {
            return Ok(vec![SlotState::Inactive; configs.len()]);
        }
        return failed(format!("Did not find booted slot (matching '{boot_slot}')"));
    };
    let booted_name = &configs[b].name;
    Ok(configs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if i == b {
                SlotState::Booted
            } else if s.parent.as_ref() == Some(booted_name) {
                SlotState::Active
            } else {
                SlotState::Inactive
            }
        })
        .collect())
}

impl System {
    /// The variant images are chosen for, if the system has one.
    pub fn variant(&self) -> Option<&str> {
        (!self.variant.is_empty()).then_some(self.variant.as_str())
    }

    /// Sets up the context: boot slot (`override_slot` first), slot states,
    /// mount points, variant and system-info handler.
    pub fn setup(config: SystemConfig, override_slot: Option<&str>) -> Result<System> {
        Self::setup_with(config, override_slot, true)
    }

    /// [`System::setup`] for commands that work without knowing the booted
    /// slot (`write-slot`, as RAUC's): when it cannot be found, every slot
    /// counts as inactive and the boot slot is empty.
    pub fn setup_without_boot(config: SystemConfig, override_slot: Option<&str>) -> Result<System> {
        Self::setup_with(config, override_slot, false)
    }

    fn setup_with(config: SystemConfig, override_slot: Option<&str>, need_boot: bool) -> Result<System> {
        let bootloader = bootloader::for_config(&config);
        let (system_info, variant) = system_info(&config)?;
        let found = bootslot::detect(override_slot, bootloader.as_ref())
            .and_then(|b| slot_states(&config.slots, &b).map(|states| (b, states)));
        let (boot_slot, states) = match found {
            Ok(found) => found,
            Err(e) if !need_boot => {
                tracing::debug!("{e}");
                (String::new(), vec![SlotState::Inactive; config.slots.len()])
            }
            Err(e) => return Err(e),
        };
        let table = mounts::table();
        let slots = config
            .slots
            .iter()
            .zip(states)
            .map(|(c, state)| Slot { config: c.clone(), state, mount_point: mounts::mount_point_of(&table, &c.device) })
            .collect();
        Ok(System { config, bootloader, boot_slot, slots, variant, system_info, skip_status_mounts: false })
    }

    /// A copy for other work (the service keeps one per request): the same
    /// configuration, boot slot, slot states, variant and system-info values
    /// (the handler is not run again), its own bootloader backend and a
    /// fresh look at the mount table.
    pub fn fork(&self) -> System {
        let mut s = System {
            config: self.config.clone(),
            bootloader: bootloader::for_config(&self.config),
            boot_slot: self.boot_slot.clone(),
            slots: self.slots.clone(),
            variant: self.variant.clone(),
            system_info: self.system_info.clone(),
            skip_status_mounts: self.skip_status_mounts,
        };
        s.refresh_mounts();
        s
    }

    /// Locks the slots an installation may write (the inactive ones) and
    /// unmounts what a killed installation left at rota's own mount points
    /// (see [`mounts::release_stale`]); fails when another installation
    /// holds a slot. The locks are held for as long as the result lives.
    pub fn lock_writable_slots(&self) -> Result<mounts::SlotLocks> {
        let writable = self.slots.iter().filter(|s| s.state == SlotState::Inactive).map(|s| &s.config);
        let locks = mounts::lock_slots(writable)?;
        mounts::release_stale(&locks, &self.config.system.mount_prefix, self.slots.iter().map(|s| &s.config));
        Ok(locks)
    }

    /// Re-reads the mount table (spec §6.4 step 2).
    pub fn refresh_mounts(&mut self) {
        let table = mounts::table();
        for s in &mut self.slots {
            s.mount_point = mounts::mount_point_of(&table, &s.config.device);
        }
    }

    /// A value the system-info handler reported.
    pub fn info(&self, key: &str) -> Option<&str> {
        self.system_info.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// What the automatic HTTP headers report for this system (with the
    /// transaction id of an installation).
    pub fn header_facts(&self, transaction_id: Option<&str>) -> HeaderFacts {
        header_facts(&self.system_info, self.variant(), transaction_id)
    }

    /// `RAUC_SYSTEM_VERSION` from the system-info handler.
    pub fn system_version(&self) -> Option<&str> {
        self.info("RAUC_SYSTEM_VERSION")
    }

    /// The slot named `name`.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.config.name == name)
    }

    /// Indices into [`System::slots`] in the order RAUC walks its slot
    /// table (see [`crate::slot_order`]).
    pub fn table_order(&self) -> Vec<usize> {
        let names: Vec<&str> = self.slots.iter().map(|s| s.config.name.as_str()).collect();
        crate::slot_order::table_order(&names)
    }

    /// The booted slot, if one matched.
    pub fn booted(&self) -> Option<&Slot> {
        self.slots.iter().find(|s| s.state == SlotState::Booted)
    }

    /// The boot name of `slot` (its own, or its parent's for children).
    pub fn bootname_of<'a>(&'a self, slot: &'a SlotConfig) -> Option<&'a str> {
        slot.effective_bootname(&self.config.slots)
    }

    /// The central status file, if the configuration keeps one.
    pub fn central(&self) -> Option<CentralFile> {
        status::central(&self.config.system.status)
    }

    /// The stored status of `slot`: central file, or `slot.raucs` inside
    /// the slot's filesystem (mounted read-only for the read if needed).
    pub fn load_status(&self, slot: &Slot) -> SlotStatus {
        if let Some(c) = self.central() {
            return c.slot(&slot.config.name);
        }
        if !slot.config.slot_type.is_mountable() {
            return SlotStatus::default();
        }
        if let Some(mp) = &slot.mount_point {
            return status::read_per_slot(mp);
        }
        if self.skip_status_mounts {
            return SlotStatus::default();
        }
        let dir = self.config.system.mount_prefix.join(&slot.config.name);
        match mounts::mount_slot(&slot.config, &dir, &["ro"]) {
            Ok(()) => {
                let s = status::read_per_slot(&dir);
                if let Err(e) = mounts::umount(&dir) {
                    tracing::warn!("{e}");
                }
                s
            }
            Err(e) => {
                tracing::debug!("Cannot read status of {}: {e}", slot.config.name);
                SlotStatus::default()
            }
        }
    }

    /// Saves the status of `slot` (central file, or per slot with the slot mounted).
    pub fn save_status(&self, slot: &Slot, status: &SlotStatus) -> Result<()> {
        if let Some(c) = self.central() {
            return c.update(&[(&slot.config.name, status)]);
        }
        if !slot.config.slot_type.is_mountable() {
            tracing::debug!("Not saving status of {}: no central status file and not mountable", slot.config.name);
            return Ok(());
        }
        if let Some(mp) = &slot.mount_point {
            return status::write_per_slot(mp, status);
        }
        let dir = self.config.system.mount_prefix.join(&slot.config.name);
        mounts::mount_slot(&slot.config, &dir, &[])?;
        let r = status::write_per_slot(&dir, status);
        mounts::umount(&dir)?;
        r
    }

    /// The boot status of `slot` as status output shows it: `good`, `bad` or `unknown`.
    pub fn boot_status(&self, slot: &SlotConfig) -> Option<&'static str> {
        let b = slot.bootname.as_deref()?;
        Some(match self.bootloader.get_state(b) {
            Ok(true) => "good",
            Ok(false) => "bad",
            Err(e) => {
                tracing::debug!("Failed to get boot state of {b}: {e}");
                "unknown"
            }
        })
    }

    /// The slot name the bootloader will boot next.
    pub fn primary(&self) -> Result<String> {
        let b = self.bootloader.get_primary()?;
        self.config
            .slots
            .iter()
            .find(|s| s.bootname.as_deref() == Some(&b))
            .map(|s| s.name.clone())
            .ok_or_else(|| Error::Failed(format!("Bootloader returned unknown primary '{b}'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_text;

    fn config() -> SystemConfig {
        load_text(
            "[system]\ncompatible=c\nbootloader=noop\n[slot.rootfs.0]\ndevice=/dev/a\nbootname=A\n\
             [slot.rootfs.1]\ndevice=/dev/b\nbootname=B\n[slot.appfs.0]\ndevice=/dev/c\nparent=rootfs.0\n\
             [slot.appfs.1]\ndevice=/dev/d\nparent=rootfs.1\n",
            "t",
            Path::new("/"),
        )
        .unwrap()
    }

    #[test]
    fn states_from_bootname_name_or_device() {
        use SlotState::*;
        let c = config();
        assert_eq!(slot_states(&c.slots, "A").unwrap(), [Booted, Inactive, Active, Inactive]);
        assert_eq!(slot_states(&c.slots, "rootfs.1").unwrap(), [Inactive, Booted, Inactive, Active]);
        assert_eq!(slot_states(&c.slots, "/dev/b").unwrap(), [Inactive, Booted, Inactive, Active]);
        assert_eq!(slot_states(&c.slots, EXTERNAL).unwrap(), [Inactive; 4]);
        assert_eq!(slot_states(&c.slots, "Z").unwrap_err().to_string(), "Did not find booted slot (matching 'Z')");
    }
}
