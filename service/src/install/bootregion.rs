//! Bootloader slots inside a region of a whole disk (spec §4.4–4.5):
//! `boot-mbr-switch` and `boot-gpt-switch` write the half of the region the
//! first partition entry does not point at, then move the entry there;
//! `boot-raw-fallback` keeps a primary and a fallback copy, each written
//! with its 512-byte header last. Every copy is read back from the medium
//! and checked against the manifest digest before anything is switched.

use super::hooks::SlotHook;
use super::write::{Job, check_manifest, check_read_back, stream_hashed, zero_range};
use crate::config::SlotConfig;
use crate::error::{Error, Result, failed};
use crate::tools;
use rota_bundle::manifest::Image;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Sector (and boot header) size.
const SECTOR: u64 = 512;
/// libfdisk's default alignment grain for GPT partitions.
const GPT_GRAIN: u64 = 1 << 20;

/// A `Write` placing the stream at `offset` of the device; with `hold`, the
/// first sector is kept back to be written last.
struct OffsetWriter<'a> {
    file: &'a File,
    offset: u64,
    pos: u64,
    hold: Option<Vec<u8>>,
}

impl Write for OffsetWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        if let Some(h) = &mut self.hold
            && (h.len() as u64) < SECTOR
        {
            let take = rest.len().min(SECTOR as usize - h.len());
            h.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            self.pos += take as u64;
        }
        self.file.write_all_at(rest, self.offset + self.pos)?;
        self.pos += rest.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn open_rw(dev: &Path) -> Result<File> {
    OpenOptions::new().read(true).write(true).open(dev).map_err(|e| Error::io("Failed to open", dev, e))
}

/// The slot's region (start, size) and the size of each half.
fn halves(slot: &SlotConfig) -> Result<(u64, u64, u64)> {
    let Some((start, size)) = slot.region else {
        return failed(format!("Slot {} has no region-start/region-size", slot.name));
    };
    if start % SECTOR != 0 || size % (2 * SECTOR) != 0 {
        return failed(format!("Region of slot {} is not aligned to {SECTOR}-byte sectors", slot.name));
    }
    Ok((start, size, size / 2))
}

fn check_fits(image: &Image, half: u64) -> Result<()> {
    if image.compression().is_some() {
        return failed("Compressed images cannot be written to boot region slots");
    }
    let size = image.size.unwrap_or(0);
    if size > half {
        return failed(format!(
            "Image '{}' ({size} bytes) does not fit into half of the region ({half} bytes)",
            image.filename.as_deref().unwrap_or("")
        ));
    }
    Ok(())
}

/// The region of a job: (start, size, half size), checked.
struct Region {
    start: u64,
    size: u64,
    half: u64,
}

/// Zeroes `[offset, offset+len)` of `file`, writes the image there (header
/// last when `header_last`), syncs, and checks the copy read back from the medium.
fn write_copy(
    job: &Job<'_>,
    file: &File,
    (offset, len): (u64, u64),
    header_last: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let (dev, src, image) = (job.slot.device.as_path(), job.src, job.image);
    zero_range(file, dev, offset, len)?;
    let out = OffsetWriter { file, offset, pos: 0, hold: header_last.then(Vec::new) };
    let (bytes, sha, out) = stream_hashed(src, out, progress)?;
    check_manifest(src, bytes, &sha, image.size, image.sha256.as_deref())?;
    file.sync_data().map_err(|e| Error::io("Failed to sync", dev, e))?;
    if let Some(header) = out.hold {
        file.write_all_at(&header, offset).map_err(|e| Error::io("Failed to write header to", dev, e))?;
        file.sync_data().map_err(|e| Error::io("Failed to sync", dev, e))?;
    }
    check_read_back(file, dev, offset, bytes, &sha)
}

/// Which boot region slot type a job is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `boot-mbr-switch`.
    MbrSwitch,
    /// `boot-gpt-switch`.
    GptSwitch,
    /// `boot-raw-fallback`.
    RawFallback,
}

/// Writes `job` into its boot region slot (checks first, nothing written on failure).
pub fn write(kind: Kind, job: &Job<'_>, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let (start, size, half) = halves(job.slot)?;
    if kind == Kind::GptSwitch && (start % GPT_GRAIN != 0 || size % (2 * GPT_GRAIN) != 0) {
        return failed(format!(
            "Region of slot {} is not aligned to the partition grain ({GPT_GRAIN} bytes)",
            job.slot.name
        ));
    }
    check_fits(job.image, half)?;
    let region = Region { start, size, half };
    match kind {
        Kind::MbrSwitch => mbr_switch(job, &region, progress),
        Kind::GptSwitch => gpt_switch(job, &region, progress),
        Kind::RawFallback => raw_fallback(job, &region, progress),
    }
}

fn run_hook(job: &Job<'_>, hook: SlotHook, env: &[(String, String)]) -> Result<()> {
    job.hooks.map_or(Ok(()), |h| h.run_with(hook, None, env))
}

/// Both halves, the one whose header is clear first.
fn raw_fallback(job: &Job<'_>, r: &Region, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let dev = &job.slot.device;
    let file = open_rw(dev)?;
    let mut header = [0u8; SECTOR as usize];
    file.read_exact_at(&mut header, r.start).map_err(|e| Error::io("Failed to read", dev, e))?;
    let clear = header.iter().all(|&b| b == 0) || header.iter().all(|&b| b == 0xFF);
    let order = if clear { [r.start, r.start + r.half] } else { [r.start + r.half, r.start] };
    let env = vec![
        ("RAUC_BOOT_REGION_START".to_string(), r.start.to_string()),
        ("RAUC_BOOT_REGION_SIZE".to_string(), r.size.to_string()),
    ];
    run_hook(job, SlotHook::PreInstall, &env)?;
    let total = job.image.size.unwrap_or(0);
    for (i, offset) in order.into_iter().enumerate() {
        let base = i as u64 * total;
        write_copy(job, &file, (offset, r.half), true, &mut |n| progress((base + n) / 2))?;
    }
    run_hook(job, SlotHook::PostInstall, &env)
}

/// Which half a partition starting at `entry_start` occupies, or an error.
fn active_half(slot: &SlotConfig, entry_start: u64, start: u64, half: u64) -> Result<u64> {
    if entry_start == start {
        Ok(0)
    } else if entry_start == start + half {
        Ok(1)
    } else {
        failed(format!(
            "First partition of '{}' starts at byte {entry_start}, which is neither half of the region of slot {}",
            slot.device.display(),
            slot.name
        ))
    }
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

/// CHS address of `lba` in the classic 255-head, 63-sector geometry
/// (saturated at cylinder 1023).
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let c = lba / (HEADS * SECTORS);
    if c > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let h = (lba / SECTORS) % HEADS;
    let s = lba % SECTORS + 1;
    [h as u8, (s as u8) | (((c >> 2) & 0xC0) as u8), (c & 0xFF) as u8]
}

/// Sets MBR entry 0 to `lba` / `sectors` (with CHS) in `mbr`.
fn set_mbr_entry0(mbr: &mut [u8; 512], lba: u64, sectors: u64) {
    let e = &mut mbr[446..462];
    e[1..4].copy_from_slice(&chs(lba));
    e[5..8].copy_from_slice(&chs(lba + sectors - 1));
    e[8..12].copy_from_slice(&(lba as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
}

/// Writes the inactive half, then points MBR entry 0 at it with one 512-byte write.
fn mbr_switch(job: &Job<'_>, r: &Region, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let (slot, dev) = (job.slot, &job.slot.device);
    let file = open_rw(dev)?;
    let mut mbr = [0u8; 512];
    file.read_exact_at(&mut mbr, 0).map_err(|e| Error::io("Failed to read MBR of", dev, e))?;
    if mbr[510..512] != [0x55, 0xAA] {
        return failed(format!("No valid MBR found on '{}'", dev.display()));
    }
    let entry = |i: usize| {
        let e = &mbr[446 + 16 * i..462 + 16 * i];
        let lba = u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")) as u64;
        let sectors = u32::from_le_bytes(e[12..16].try_into().expect("4 bytes")) as u64;
        (e[4], lba * SECTOR, sectors * SECTOR)
    };
    for i in 1..4 {
        let (kind, s, len) = entry(i);
        if kind != 0 && overlap((s, len), (r.start, r.size)) {
            return failed(format!("Region of slot {} overlaps MBR partition {}", slot.name, i + 1));
        }
    }
    let offset = switch_halves(job, r, entry(0).1, &file, progress)?;
    set_mbr_entry0(&mut mbr, offset / SECTOR, r.half / SECTOR);
    file.write_all_at(&mbr, 0).map_err(|e| Error::io("Failed to write MBR of", dev, e))?;
    file.sync_all().map_err(|e| Error::io("Failed to sync", dev, e))
}

/// The common middle of both switches: find the inactive half next to the
/// first partition at `first`, run the hooks around writing it; returns its offset.
fn switch_halves(job: &Job<'_>, r: &Region, first: u64, file: &File, progress: &mut dyn FnMut(u64)) -> Result<u64> {
    let inactive = 1 - active_half(job.slot, first, r.start, r.half)?;
    let offset = r.start + inactive * r.half;
    let env = vec![
        ("RAUC_BOOT_PARTITION_ACTIVATING".to_string(), inactive.to_string()),
        ("RAUC_BOOT_PARTITION_START".to_string(), offset.to_string()),
        ("RAUC_BOOT_PARTITION_SIZE".to_string(), r.half.to_string()),
    ];
    run_hook(job, SlotHook::PreInstall, &env)?;
    write_copy(job, file, (offset, r.half), false, progress)?;
    run_hook(job, SlotHook::PostInstall, &env)?;
    Ok(offset)
}

/// The GPT partitions of `dev` (start, size in bytes), in table order, via `sfdisk --json`.
fn gpt_partitions(dev: &Path) -> Result<Vec<(u64, u64)>> {
    let out = tools::run("sfdisk", &["--json".as_ref(), dev.as_os_str()])?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .map_err(|e| Error::Failed(format!("Failed to parse the partition table of '{}': {e}", dev.display())))?;
    let table = &v["partitiontable"];
    if table["label"] != "gpt" {
        return failed(format!("No GPT found on '{}'", dev.display()));
    }
    let sector = table["sectorsize"].as_u64().unwrap_or(SECTOR);
    Ok(table["partitions"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| (p["start"].as_u64().unwrap_or(0) * sector, p["size"].as_u64().unwrap_or(0) * sector))
                .collect()
        })
        .unwrap_or_default())
}

/// Writes the inactive half, then moves GPT entry 1 there (primary and
/// backup table, with `sfdisk`).
fn gpt_switch(job: &Job<'_>, r: &Region, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let (slot, dev) = (job.slot, &job.slot.device);
    let parts = gpt_partitions(dev)?;
    let Some(&(first, _)) = parts.first() else {
        return failed(format!("No partition entry 1 on '{}'", dev.display()));
    };
    if let Some(i) = parts.iter().skip(1).position(|&p| overlap(p, (r.start, r.size))) {
        return failed(format!("Region of slot {} overlaps GPT partition {}", slot.name, i + 2));
    }
    let offset = {
        let file = open_rw(dev)?;
        switch_halves(job, r, first, &file, progress)?
    };
    let script = format!("{},{}\n", offset / SECTOR, r.half / SECTOR);
    let args = [
        "--quiet".as_ref(),
        "--no-reread".as_ref(),
        "--no-tell-kernel".as_ref(),
        "-N".as_ref(),
        "1".as_ref(),
        dev.as_os_str(),
    ];
    tools::run_with_input("sfdisk", &args, Some(script.as_bytes()))
        .map_err(|e| e.context(&format!("Failed to update the GPT of '{}'", dev.display())))?;
    File::open(dev).and_then(|f| f.sync_all()).map_err(|e| Error::io("Failed to sync", dev, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_addresses() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(63 * 255 * 1024), [0xFE, 0xFF, 0xFF]);
        // Cylinder 300: high bits go into the sector byte.
        assert_eq!(chs(63 * 255 * 300), [0, 1 | 0x40, 44]);
    }
}
