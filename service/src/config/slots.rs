//! `[slot.<class>.<idx>]` sections (spec §3.7): slot types, parents, boot
//! names and the keys that only some slot types accept.

use super::load::{ConfigError, Origins};
use super::sections::Reader;
use super::{BootloaderKind, SystemSection};
use rota_bundle::keyfile::{KeyFile, KeyFileError};
use std::path::{Path, PathBuf};

/// How a slot's device is written (spec §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotType {
    /// A raw partition or file.
    Raw,
    /// An ext4 filesystem.
    Ext4,
    /// A FAT filesystem.
    Vfat,
    /// A UBIFS volume.
    Ubifs,
    /// A raw UBI volume.
    Ubivol,
    /// A NAND MTD device.
    Nand,
    /// A NOR MTD device.
    Nor,
    /// A JFFS2 filesystem on MTD (documented by RAUC, rejected there by mistake).
    Jffs2,
    /// The two eMMC boot partitions.
    BootEmmc,
    /// Two halves of a region switched through MBR entry 0.
    BootMbrSwitch,
    /// Two halves of a region switched through GPT entry 1.
    BootGptSwitch,
    /// Primary and fallback copy in two halves of a region.
    BootRawFallback,
}

impl SlotType {
    /// Every slot type with its configuration name.
    pub const ALL: [(SlotType, &'static str); 12] = [
        (SlotType::Raw, "raw"),
        (SlotType::Ext4, "ext4"),
        (SlotType::Vfat, "vfat"),
        (SlotType::Ubifs, "ubifs"),
        (SlotType::Ubivol, "ubivol"),
        (SlotType::Nand, "nand"),
        (SlotType::Nor, "nor"),
        (SlotType::Jffs2, "jffs2"),
        (SlotType::BootEmmc, "boot-emmc"),
        (SlotType::BootMbrSwitch, "boot-mbr-switch"),
        (SlotType::BootGptSwitch, "boot-gpt-switch"),
        (SlotType::BootRawFallback, "boot-raw-fallback"),
    ];

    /// Parses a configuration name.
    pub fn parse(name: &str) -> Option<SlotType> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(t, _)| *t)
    }

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(t, _)| *t == self).map(|(_, n)| *n).expect("every type is listed")
    }

    /// Whether the slot holds a filesystem that can be mounted.
    pub fn is_mountable(self) -> bool {
        matches!(self, SlotType::Ext4 | SlotType::Vfat | SlotType::Ubifs | SlotType::Jffs2)
    }

    /// Whether the slot is split into halves of a region.
    pub fn uses_region(self) -> bool {
        matches!(self, SlotType::BootMbrSwitch | SlotType::BootGptSwitch | SlotType::BootRawFallback)
    }
}

/// One configured slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConfig {
    /// `<class>.<idx>`.
    pub name: String,
    /// The class (e.g. `rootfs`).
    pub class: String,
    /// The index part of the name.
    pub index: String,
    /// `device`, resolved against the config directory.
    pub device: PathBuf,
    /// `type`.
    pub slot_type: SlotType,
    /// `description`.
    pub description: Option<String>,
    /// `bootname`.
    pub bootname: Option<String>,
    /// The root parent's name (grand-parents collapsed).
    pub parent: Option<String>,
    /// `readonly`.
    pub readonly: bool,
    /// `allow-mounted`.
    pub allow_mounted: bool,
    /// `install-same` (or its legacy synonyms).
    pub install_same: bool,
    /// `resize`.
    pub resize: bool,
    /// `extra-mkfs-opts`, shell-split.
    pub extra_mkfs_opts: Vec<String>,
    /// `extra-mount-opts`.
    pub extra_mount_opts: Option<String>,
    /// `region-start` and `region-size`.
    pub region: Option<(u64, u64)>,
    /// `size-limit` (0: none).
    pub size_limit: u64,
    /// `efi-loader`.
    pub efi_loader: Option<String>,
    /// `efi-cmdline`.
    pub efi_cmdline: Option<String>,
}

impl SlotConfig {
    /// `bootname` of the slot or, for a child, of its parent.
    pub fn effective_bootname<'a>(&'a self, slots: &'a [SlotConfig]) -> Option<&'a str> {
        match &self.parent {
            Some(p) => slots.iter().find(|s| &s.name == p).and_then(|s| s.bootname.as_deref()),
            None => self.bootname.as_deref(),
        }
    }
}

struct RawSlot {
    config: SlotConfig,
    parent_raw: Option<(String, usize)>,
}

fn parse_one(r: &mut Reader<'_>, base: &Path, system: &SystemSection) -> Result<RawSlot, ConfigError> {
    let gname = r.group.name.clone();
    let parts: Vec<&str> = gname.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(r.group_error(format!("Invalid slot name format: {gname}")));
    }
    let (class, index) = (parts[1].to_string(), parts[2].to_string());
    let name = format!("{class}.{index}");
    let device = r
        .path("device", Some(base))?
        .ok_or_else(|| r.group_error(format!("Key 'device' in group '[{gname}]' is required")))?;
    let slot_type = match r.string("type")? {
        None => SlotType::Raw,
        Some(t) => SlotType::parse(&t).ok_or_else(|| {
            r.bad(
                r.entry("type").expect("read"),
                format!("Unsupported slot type '{t}' for slot {name} selected in system config"),
            )
        })?,
    };
    let description = r.string("description")?;
    let bootname = r.string("bootname")?;
    if let Some(b) = &bootname
        && b.chars().any(char::is_whitespace)
    {
        return Err(r.bad(
            r.entry("bootname").expect("read"),
            format!("Bootname '{b}' of slot {name} must not contain whitespace"),
        ));
    }
    let parent_raw = r.string("parent")?.map(|p| (p, r.entry("parent").expect("read").line));
    let readonly = r.boolean("readonly", false)?;
    let allow_mounted = r.boolean("allow-mounted", false)?;
    let mut install_same = true;
    for key in ["install-same", "force-install-same", "ignore-checksum"] {
        if r.entry(key).is_some() {
            install_same = r.boolean(key, true)?;
        }
    }
    let resize = r.boolean("resize", false)?;
    let extra_mkfs_opts = match r.string("extra-mkfs-opts")? {
        Some(o) => shell_words::split(&o).map_err(|e| {
            r.bad(r.entry("extra-mkfs-opts").expect("read"), format!("Key 'extra-mkfs-opts' in group '[{gname}]': {e}"))
        })?,
        None => Vec::new(),
    };
    let extra_mount_opts = r.string("extra-mount-opts")?;
    let region = if slot_type.uses_region() {
        let start = r.size("region-start")?;
        let size = r.size("region-size")?;
        match (start, size) {
            (Some(s), Some(z)) => Some((s, z)),
            (None, _) => {
                return Err(r.group_error(format!(
                    "Key 'region-start' in group '[{gname}]' is required for slot type '{}'",
                    slot_type.as_str()
                )));
            }
            (_, None) => {
                return Err(r.group_error(format!(
                    "Key 'region-size' in group '[{gname}]' is required for slot type '{}'",
                    slot_type.as_str()
                )));
            }
        }
    } else {
        None
    };
    let size_limit = if slot_type == SlotType::BootEmmc { r.size("size-limit")?.unwrap_or(0) } else { 0 };
    if slot_type == SlotType::BootEmmc {
        let dev = device.to_string_lossy();
        if dev.ends_with("boot0") || dev.ends_with("boot1") {
            return Err(r.bad(
                r.entry("device").expect("read"),
                format!("Key 'device' in group '[{gname}]': boot-emmc slots need the base device, not '{dev}'"),
            ));
        }
    }
    let (efi_loader, efi_cmdline) = if system.bootloader == BootloaderKind::Efi {
        (r.string("efi-loader")?, r.string("efi-cmdline")?)
    } else {
        (None, None)
    };
    Ok(RawSlot {
        config: SlotConfig {
            name,
            class,
            index,
            device,
            slot_type,
            description,
            bootname,
            parent: None,
            readonly,
            allow_mounted,
            install_same,
            resize,
            extra_mkfs_opts,
            extra_mount_opts,
            region,
            size_limit,
            efi_loader,
            efi_cmdline,
        },
        parent_raw,
    })
}

/// Parses every slot group, resolves parents to their root and checks boot names.
pub(super) fn parse_slots(
    kf: &KeyFile,
    origins: &Origins,
    base: &Path,
    system: &SystemSection,
) -> Result<Vec<super::SlotConfig>, ConfigError> {
    let mut raw = Vec::new();
    let mut groups = Vec::new();
    for g in kf.groups.iter().filter(|g| g.name.starts_with("slot.")) {
        let mut r = Reader::new(g, origins);
        raw.push(parse_one(&mut r, base, system)?);
        r.finish()?;
        groups.push(g);
    }
    let err = |i: usize, key: &str, message: String| -> ConfigError {
        let g = groups[i];
        let e = match g.entry(key) {
            Some(e) => KeyFileError::at_entry(e, message),
            None => KeyFileError::at_group(g, message),
        };
        origins.error(e)
    };
    // Parents: must exist; chains collapse to the root; loops are errors.
    let mut slots: Vec<SlotConfig> = raw.iter().map(|r| r.config.clone()).collect();
    for i in 0..raw.len() {
        let Some((first, _)) = &raw[i].parent_raw else {
            continue;
        };
        let mut seen = vec![i];
        let mut current = first.clone();
        loop {
            let Some(j) = raw.iter().position(|r| r.config.name == current) else {
                return Err(err(
                    i,
                    "parent",
                    format!("Parent slot '{current}' of slot {} not found", raw[i].config.name),
                ));
            };
            if seen.contains(&j) {
                return Err(err(i, "parent", format!("Slot {} has a parent loop", raw[i].config.name)));
            }
            seen.push(j);
            match &raw[j].parent_raw {
                Some((p, _)) => current = p.clone(),
                None => break,
            }
        }
        if raw[i].config.bootname.is_some() {
            return Err(err(i, "bootname", format!("Child slot {} must not have a bootname", raw[i].config.name)));
        }
        slots[i].parent = Some(current);
    }
    for i in 0..slots.len() {
        if let Some(b) = &slots[i].bootname
            && let Some(j) = slots[..i].iter().position(|s| s.bootname.as_ref() == Some(b))
        {
            return Err(err(
                i,
                "bootname",
                format!("Bootname '{b}' of slot {} is already used by slot {}", slots[i].name, slots[j].name),
            ));
        }
    }
    Ok(slots)
}
