//! What gets written where (spec §6.3, §6.5 steps 1–3, §4.2): the target
//! slot group, one plan per image with its write method, and the one guard
//! that keeps the booted slot, its group and mounted slots from being written.

use crate::config::SlotType;
use crate::error::{Error, Result, failed};
use crate::status::SlotStatus;
use crate::system::{SlotState, System};
use rota_bundle::manifest::{Image, ImageType, Manifest};

/// How an image reaches its slot (spec §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Byte copy to the device (raw slots, filesystem images into filesystem slots).
    Copy,
    /// Byte copy of a filesystem image; hooks see the slot mounted.
    ImageToFs,
    /// mkfs, mount, extract the archive (or nothing for `emptyfs`), unmount.
    ArchiveToFs,
    /// The image's `install` hook does everything.
    Hook,
    /// A bootloader region of a whole disk (switch halves, or primary and fallback).
    BootRegion(super::bootregion::Kind),
    /// Raw NAND, NOR or a UBI volume through mtd-utils; hooks see `ubifs` slots mounted.
    Flash(super::flash::Kind),
    /// The inactive eMMC boot partition, then the card switched to it.
    Emmc,
    /// A tree image (file index and contents) updating the slot's filesystem file by file.
    TreeToFs,
}

impl Method {
    /// Whether the image must be stored uncompressed for this method.
    fn needs_plain_image(self) -> bool {
        match self {
            Method::BootRegion(_) | Method::Emmc => true,
            Method::Flash(k) => k.needs_plain_image(),
            _ => false,
        }
    }
}

/// One image to write into one slot.
#[derive(Debug, Clone)]
pub struct Plan<'m> {
    /// The manifest image.
    pub image: &'m Image,
    /// Index into `System::slots`.
    pub slot: usize,
    /// How it is written.
    pub method: Method,
}

/// The write method for `image` into a slot of `slot_type`, or RAUC's error.
pub fn method_for(image: &Image, slot_type: SlotType) -> Result<Method> {
    if image.hooks.install {
        return Ok(Method::Hook);
    }
    use super::bootregion::Kind;
    use super::flash::Kind as Flash;
    use ImageType as I;
    use SlotType as S;
    let Some(t) = image.image_type() else {
        return failed(format!(
            "Unable to map extension of file '{}' to known image type",
            image.filename.as_deref().unwrap_or("")
        ));
    };
    let m = match (t, slot_type) {
        (I::Raw | I::Ext4 | I::Vfat | I::Squashfs, S::Raw) => Some(Method::Copy),
        (I::Raw, S::Jffs2) => Some(Method::Copy),
        (I::Raw | I::Ext4, S::Ext4) | (I::Raw | I::Vfat, S::Vfat) => Some(Method::ImageToFs),
        (I::Tar, S::Ext4 | S::Vfat) | (I::Emptyfs, S::Ext4) => Some(Method::ArchiveToFs),
        (I::Raw | I::Vfat, S::BootMbrSwitch) => Some(Method::BootRegion(Kind::MbrSwitch)),
        (I::Raw | I::Ext4 | I::Vfat, S::BootGptSwitch) => Some(Method::BootRegion(Kind::GptSwitch)),
        (I::Raw, S::BootRawFallback) => Some(Method::BootRegion(Kind::RawFallback)),
        (I::Raw | I::Squashfs | I::Ubifs, S::Ubivol) | (I::Raw | I::Ubifs, S::Ubifs) => {
            Some(Method::Flash(Flash::UbiVolume))
        }
        (I::Raw, S::Nor) => Some(Method::Flash(Flash::Nor)),
        (I::Raw, S::Nand) => Some(Method::Flash(Flash::Nand)),
        (I::Tar, S::Ubifs | S::Jffs2) => Some(Method::ArchiveToFs),
        (I::Raw, S::BootEmmc) => Some(Method::Emmc),
        (I::Tree, S::Ext4 | S::Vfat) => Some(Method::TreeToFs),
        // casync blob indexes: the reassembled image is written as RAUC's
        // handler table says (raw, except ext4 into ext4), flash through
        // the flash writers.
        (I::Ext4Caibx, S::Ext4) => Some(Method::ImageToFs),
        (I::RawCaibx, S::Ext4 | S::Vfat | S::Jffs2) => Some(Method::Copy),
        (I::Ext4Caibx | I::VfatCaibx | I::RawCaibx | I::SquashfsCaibx, S::Raw) => Some(Method::Copy),
        (I::RawCaibx, S::Nor) => Some(Method::Flash(Flash::Nor)),
        (I::RawCaibx, S::Nand) => Some(Method::Flash(Flash::Nand)),
        (I::SquashfsCaibx | I::UbifsCaibx | I::RawCaibx, S::Ubivol) | (I::UbifsCaibx | I::RawCaibx, S::Ubifs) => {
            Some(Method::Flash(Flash::UbiVolume))
        }
        (I::Caidx, S::Ext4 | S::Ubifs | S::Vfat) | (I::Catar, S::Ext4) => Some(Method::ArchiveToFs),
        _ => None,
    };
    let m =
        m.ok_or_else(|| Error::Failed(format!("Unsupported image type '{t}' for slot type '{}'", slot_type.as_str())))?;
    if m.needs_plain_image() && image.compression().is_some() {
        return failed(format!(
            "Compressed image '{}' cannot be written to slot type '{}'",
            image.filename.as_deref().unwrap_or(""),
            slot_type.as_str()
        ));
    }
    Ok(m)
}

/// The single guard for every write: never the booted slot, nothing in its
/// group, nothing mounted (unless `allow-mounted` and an install hook does the write).
pub fn check_writable(system: &System, slot: usize, by_install_hook: bool) -> Result<()> {
    let s = &system.slots[slot];
    let booted = system.booted();
    let same_group = booted.is_some_and(|b| {
        let root_of = |name: &str, parent: &Option<String>| parent.clone().unwrap_or_else(|| name.to_string());
        root_of(&b.config.name, &b.config.parent) == root_of(&s.config.name, &s.config.parent)
    });
    if s.state != SlotState::Inactive || same_group {
        return failed(format!("Refusing to write slot {}: it belongs to the booted slot group", s.config.name));
    }
    if s.config.readonly {
        return failed(format!("Slot {} is readonly", s.config.name));
    }
    if s.mount_point.is_some() {
        let d = s.config.device.display();
        if !s.config.allow_mounted {
            return failed(format!("Destination device '{d}' already mounted"));
        }
        if !by_install_hook {
            return failed(format!("Mounted device '{d}' may only be updated by a custom install hook"));
        }
    }
    Ok(())
}

fn timestamp_key(st: &SlotStatus) -> Option<std::time::SystemTime> {
    st.installed_timestamp.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok())
}

/// The target group (spec §6.3): for each root class one inactive slot,
/// plus its children. With a central status file the first slot that
/// failed or was never installed, else the least recently installed; with
/// per-slot status files the first one. "First" is in the order RAUC walks
/// its slots, and root classes come in RAUC's order too, so that A/B/C
/// systems pick the slot RAUC picks. Returns indices into `System::slots`.
pub fn target_group(system: &System) -> Vec<usize> {
    let order = system.table_order();
    let roots = crate::slot_order::root_classes(
        order.iter().map(|&i| &system.slots[i].config).filter(|c| c.parent.is_none()).map(|c| c.class.as_str()),
    );
    let per_slot = system.central().is_none();
    let mut chosen: Vec<usize> = Vec::new();
    for class in roots {
        let mut candidates = order.iter().copied().filter(|&i| {
            let s = &system.slots[i];
            s.config.class == class
                && s.config.parent.is_none()
                && s.state == SlotState::Inactive
                && check_writable(system, i, false).is_ok()
        });
        if per_slot {
            chosen.extend(candidates.next());
            continue;
        }
        let mut best: Option<(usize, std::time::SystemTime)> = None;
        let mut pick = None;
        for i in candidates {
            let st = system.load_status(&system.slots[i]);
            match timestamp_key(&st) {
                _ if st.status.as_deref() == Some("failed") => {
                    pick = Some(i);
                    break;
                }
                None => {
                    pick = Some(i);
                    break;
                }
                Some(t) => {
                    if best.is_none_or(|(_, bt)| t < bt) {
                        best = Some((i, t));
                    }
                }
            }
        }
        chosen.extend(pick.or(best.map(|(i, _)| i)));
    }
    order
        .into_iter()
        .filter(|&i| {
            let s = &system.slots[i].config;
            let root = s.parent.as_deref().unwrap_or(&s.name);
            chosen.iter().any(|&c| system.slots[c].config.name == root)
        })
        .collect()
}

/// One artifact image to install into one repository.
#[derive(Debug, Clone)]
pub struct ArtifactPlan<'m> {
    /// The manifest image (`[image.<repo>/<artifact>]`).
    pub image: &'m Image,
    /// Index into the configuration's artifact repositories.
    pub repo: usize,
}

/// One plan per artifact image (variants are not supported for artifacts).
pub fn artifact_plans<'m>(system: &System, manifest: &'m Manifest) -> Result<Vec<ArtifactPlan<'m>>> {
    let mut out = Vec::new();
    for image in manifest.images.iter().filter(|i| i.variant.is_none()) {
        let Some(artifact) = &image.artifact else {
            continue;
        };
        let Some(repo) = system.config.artifacts.iter().position(|r| r.name == image.slotclass) else {
            return failed(format!("No target repo '{}' for artifact image '{artifact}' found", image.slotclass));
        };
        out.push(ArtifactPlan { image, repo });
    }
    Ok(out)
}

/// One plan per selected image (spec §6.5 step 1), every error before
/// anything is written. An empty list is for the caller to judge (a bundle
/// may carry only artifacts).
pub fn plans<'m>(system: &System, group: &[usize], images: &[&'m Image]) -> Result<Vec<Plan<'m>>> {
    let mut out = Vec::new();
    for image in images {
        let f = image.filename.as_deref().unwrap_or("");
        let Some(&slot) = group.iter().find(|&&i| system.slots[i].config.class == image.slotclass) else {
            return failed(format!("No target slot for class '{}' of image '{f}' found", image.slotclass));
        };
        if system.slots[slot].config.readonly {
            return failed(format!("Target slot for class '{}' of image '{f}' is readonly", image.slotclass));
        }
        let method = method_for(image, system.slots[slot].config.slot_type)?;
        out.push(Plan { image, slot, method });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::flash::Kind as Flash;

    fn method(filename: &str, slot_type: SlotType) -> std::result::Result<Method, String> {
        let image = Image { filename: Some(filename.into()), ..Default::default() };
        method_for(&image, slot_type).map_err(|e| e.to_string())
    }

    #[test]
    fn flash_and_emmc_rows_of_the_handler_table() {
        assert_eq!(method("a.img", SlotType::Nand), Ok(Method::Flash(Flash::Nand)));
        assert_eq!(method("a.img.zst", SlotType::Nand), Ok(Method::Flash(Flash::Nand)));
        assert_eq!(method("a.img", SlotType::Nor), Ok(Method::Flash(Flash::Nor)));
        assert_eq!(method("a.squashfs", SlotType::Ubivol), Ok(Method::Flash(Flash::UbiVolume)));
        assert_eq!(method("a.ubifs", SlotType::Ubifs), Ok(Method::Flash(Flash::UbiVolume)));
        assert_eq!(method("a.tar.xz", SlotType::Ubifs), Ok(Method::ArchiveToFs));
        assert_eq!(method("a.tar", SlotType::Jffs2), Ok(Method::ArchiveToFs));
        assert_eq!(method("a.img", SlotType::Jffs2), Ok(Method::Copy));
        assert_eq!(method("a.img", SlotType::BootEmmc), Ok(Method::Emmc));
        assert_eq!(method("a.ext4", SlotType::Nand), Err("Unsupported image type 'ext4' for slot type 'nand'".into()));
        assert_eq!(
            method("a.squashfs", SlotType::Ubifs),
            Err("Unsupported image type 'squashfs' for slot type 'ubifs'".into())
        );
        assert_eq!(
            method("a.img.gz", SlotType::Nor),
            Err("Compressed image 'a.img.gz' cannot be written to slot type 'nor'".into())
        );
        assert_eq!(
            method("a.img.xz", SlotType::BootEmmc),
            Err("Compressed image 'a.img.xz' cannot be written to slot type 'boot-emmc'".into())
        );
    }
}
