//! Flash slots (spec §4.2 NAND, FLASHCP, UBIVOL, UBIFS-IMG): raw NAND
//! through `flash_erase` + `nandwrite`, NOR through `flashcp`, UBI volumes
//! through one `ubiupdatevol` volume update. These are the mtd-utils tools
//! of the procedures RAUC documents; as external programs they are also
//! what tests replace with recording fakes on machines without flash.
//!
//! Every image is hashed as it streams and checked against the manifest;
//! NOR and UBI volumes are read back from the device and checked again
//! (beyond RAUC). NAND is not read back: its bad-block skipping and ECC
//! make a plain read of the MTD device differ from what was written.

use super::write::{ImageSource, Job, check_manifest, check_read_back, pipe_image, stream_hashed};
use crate::error::{Error, Result, failed};
use crate::tools;
use std::fs::File;
use std::path::Path;
use std::process::Command;

/// Which flash procedure a job takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `nand`: erase the whole device, write with page padding.
    Nand,
    /// `nor`: `flashcp --erase-all`, which verifies what it wrote.
    Nor,
    /// `ubivol` and `ubifs` (image): one atomic UBI volume update.
    UbiVolume,
}

impl Kind {
    /// Whether the image must be stored uncompressed: the tool wants a file
    /// (`flashcp`) or the size up front (UBI volume updates).
    pub fn needs_plain_image(self) -> bool {
        matches!(self, Kind::Nor | Kind::UbiVolume)
    }
}

/// Writes `job` with the procedure of `kind`.
pub fn write(kind: Kind, job: &Job<'_>, progress: &mut dyn FnMut(u64)) -> Result<()> {
    match kind {
        Kind::Nand => nand(job, progress),
        Kind::Nor => nor(job, progress),
        Kind::UbiVolume => ubi_volume(job, progress),
    }
}

fn nand(job: &Job<'_>, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let dev = job.slot.device.as_os_str();
    tools::run("flash_erase", &["--quiet".as_ref(), dev, "0".as_ref(), "0".as_ref()])?;
    let mut cmd = Command::new("nandwrite");
    cmd.args(["--pad", "--quiet"]).arg(dev).arg("-");
    let (bytes, sha) = pipe_image(job.src, job.image.compression(), cmd, "write", progress)?;
    check_manifest(job.src, bytes, &sha, job.image.size, job.image.sha256.as_deref())
}

/// Reads back `len` bytes from the start of `dev` and compares their
/// SHA-256 with `sha` (what was sent to the device).
fn read_back(dev: &Path, len: u64, sha: &str) -> Result<()> {
    let f = File::open(dev).map_err(|e| Error::io("Failed to open", dev, e))?;
    check_read_back(&f, dev, 0, len, sha)
}

fn nor(job: &Job<'_>, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let Some(file) = &job.file else {
        return failed("Writing NOR flash needs the image as a file, but the bundle is not mounted");
    };
    // Check the image before it reaches the flash, then what the flash holds.
    let (bytes, sha, _) = stream_hashed(&ImageSource::File(file), std::io::sink(), &mut |n| progress(n / 2))?;
    check_manifest(job.src, bytes, &sha, job.image.size, job.image.sha256.as_deref())?;
    let dev = job.slot.device.as_path();
    tools::run("flashcp", &["--erase-all".as_ref(), file.as_os_str(), dev.as_os_str()])?;
    read_back(dev, bytes, &sha)?;
    progress(bytes);
    Ok(())
}

fn ubi_volume(job: &Job<'_>, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let size = match (job.image.size, &job.file) {
        (Some(size), _) => size,
        (None, Some(f)) => std::fs::metadata(f).map_err(|e| Error::io("Failed to read", f, e))?.len(),
        (None, None) => return failed("A UBI volume update needs the image size, which the manifest does not give"),
    };
    let dev = job.slot.device.as_path();
    let mut cmd = Command::new("ubiupdatevol");
    cmd.arg(dev).arg(format!("--size={size}")).arg("-");
    let (bytes, sha) = pipe_image(job.src, None, cmd, "write", progress)?;
    check_manifest(job.src, bytes, &sha, Some(size), job.image.sha256.as_deref())?;
    read_back(dev, bytes, &sha)
}
