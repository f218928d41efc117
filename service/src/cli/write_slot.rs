//! `write-slot <SLOT> <IMAGE>` (spec §4.6): one local image into one slot
//! with the slot type's write method — the same verified write as an install,
//! read-back included — but no hooks, no status update and no bootloader
//! change. The write guard of installs applies: never the booted slot group,
//! never a mounted slot.

use crate::install::engine::write_image;
use crate::install::plan::{self, Plan};
use crate::install::write::ImageSource;
use crate::system::System;
use rota_bundle::cli::{CliError, Context, fail};
use rota_bundle::manifest::{Image, ImageType};
use std::path::Path;

pub(super) fn run(ctx: &Context) -> Result<(), CliError> {
    let (slot_name, image_path) = (ctx.arg(0), Path::new(ctx.arg(1)));
    // As RAUC: the image first (opened, its type known), then the slot.
    if let Err(e) = std::fs::File::open(image_path) {
        return fail(format!("Error opening file “{}”: {}", image_path.display(), crate::error::strerror(&e)));
    }
    let explicit_type = match ctx.args.value("image-type").or(ctx.args.value("image-type-compat")) {
        Some(t) => match ImageType::parse(t) {
            Some(t) => Some(t),
            None => return fail(format!("Unsupported image type '{t}'")),
        },
        None => None,
    };
    let image = Image {
        filename: image_path.file_name().map(|n| n.to_string_lossy().into_owned()),
        explicit_type,
        ..Default::default()
    };
    if image.image_type().is_none() {
        return fail(format!("Unable to map extension of file '{}' to known image type", image_path.display()));
    }
    let config = super::load_config(ctx)?;
    let system = System::setup_without_boot(config, ctx.args.value("override-boot-slot"))?;
    let Some(index) = system.slots.iter().position(|s| s.config.name == slot_name) else {
        let mut text = format!("No matching slot found for given slot name '{slot_name}'.\nAvailable slots:");
        for s in &system.slots {
            text.push_str(&format!("\n  {} ({})", s.config.name, s.config.slot_type.as_str()));
        }
        return fail(text);
    };
    let slot = &system.slots[index].config;
    if slot.readonly {
        return fail("Reject writing to readonly slot");
    }
    let image = Image { slotclass: slot.class.clone(), ..image };
    let method = plan::method_for(&image, slot.slot_type)?;
    // The installs' guard, where the booted slot is known.
    if !system.boot_slot.is_empty() {
        plan::check_writable(&system, index, false)?;
    }
    let src = ImageSource::File(image_path);
    let plan = Plan { image: &image, slot: index, method };
    if let Err(e) = write_image(&system, Some(&src), &plan, None, None, None, &mut |_| {}) {
        return fail(format!("Failed to write slot: {e}"));
    }
    println!("Slot written successfully");
    Ok(())
}
