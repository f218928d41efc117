//! `write-slot <SLOT> <IMAGE>` (spec §4.6): one local image into one slot
//! with the slot type's write method — the same verified write as an install,
//! read-back included — but no hooks, no status update and no bootloader
//! change. The write guard of installs applies: never the booted slot group,
//! never a mounted slot.

use crate::install::engine::write_image;
use crate::install::plan::{self, Plan};
use crate::install::write::ImageSource;
use rota_bundle::cli::{CliError, Context, fail};
use rota_bundle::manifest::{Image, ImageType};
use std::path::Path;

pub(super) fn run(ctx: &Context) -> Result<(), CliError> {
    let (slot_name, image_path) = (ctx.arg(0), Path::new(ctx.arg(1)));
    let explicit_type = match ctx.args.value("image-type") {
        Some(t) => match ImageType::parse(t) {
            Some(t) => Some(t),
            None => return fail(format!("Unsupported image type '{t}'")),
        },
        None => None,
    };
    let system = super::setup(ctx)?;
    let Some(index) = system.slots.iter().position(|s| s.config.name == slot_name) else {
        return fail("No matching slot found for given slot name");
    };
    let slot = &system.slots[index].config;
    if slot.readonly {
        return fail("Reject writing to readonly slot");
    }
    if !image_path.is_file() {
        return fail(format!("No such file: {}", image_path.display()));
    }
    let image = Image {
        slotclass: slot.class.clone(),
        filename: image_path.file_name().map(|n| n.to_string_lossy().into_owned()),
        explicit_type,
        ..Default::default()
    };
    let method = plan::method_for(&image, slot.slot_type)?;
    plan::check_writable(&system, index, false)?;
    let src = ImageSource::File(image_path);
    write_image(&system, Some(&src), &Plan { image: &image, slot: index, method }, None, None, None, &mut |_| {})?;
    println!("Slot written successfully");
    Ok(())
}
