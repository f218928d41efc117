//! Filesystem slots filled from an archive (spec §4.2 TAR-EXT4, TAR-VFAT,
//! TAR-UBIFS, TAR-JFFS2, `emptyfs`, casync's CAIDX/CATAR): mkfs (for JFFS2
//! an erase), mount, extract — a tar stream from the verified bundle
//! through GNU tar (xattrs and file capabilities kept, except on FAT), a
//! catar stream or a casync directory index with casync-rs — unmount.

use super::write::{ImageSource, pipe_image};
use crate::config::{SlotConfig, SlotType};
use crate::error::{Error, Result, failed};
use crate::mounts;
use crate::tools;
use std::path::Path;
use std::process::Command;

/// The FAT label RAUC derives from a slot name (`rootfs.1` → `ROOTFS_1`).
pub fn vfat_label(slot_name: &str) -> String {
    slot_name
        .chars()
        .take(11)
        .map(|c| if "*?.,;:/\\|+=<>[]\"".contains(c) { '_' } else { c.to_ascii_uppercase() })
        .collect()
}

/// Creates the slot's filesystem.
pub fn mkfs(slot: &SlotConfig) -> Result<()> {
    let dev = slot.device.to_string_lossy().into_owned();
    let mut args: Vec<String> = Vec::new();
    let program = match slot.slot_type {
        SlotType::Ext4 => {
            args.push("-F".into());
            if slot.name.len() <= 16 {
                args.extend(["-L".into(), slot.name.clone()]);
            }
            args.push("-I256".into());
            "mkfs.ext4"
        }
        SlotType::Vfat => {
            args.extend(["-n".into(), vfat_label(&slot.name)]);
            "mkfs.vfat"
        }
        SlotType::Ubifs => {
            args.push("-y".into());
            "mkfs.ubifs"
        }
        // JFFS2 needs no mkfs: an erased device mounts as an empty filesystem.
        SlotType::Jffs2 => {
            return tools::run(
                "flash_erase",
                &["--quiet".as_ref(), slot.device.as_os_str(), "0".as_ref(), "0".as_ref()],
            )
            .map(|_| ());
        }
        other => return failed(format!("Cannot create a filesystem on slot type '{}'", other.as_str())),
    };
    args.extend(slot.extra_mkfs_opts.iter().cloned());
    args.push(dev);
    tools::run(program, &args).map(|_| ())
}

use rota_bundle::convert::tar_compression_flag as compression_flag;

/// Unpacks the archive `src` into `dir` (see [`extract_tar`]): a casync
/// directory index from its seeds and store, a `.catar` with casync-rs's
/// decoder, anything else with tar. Returns (bytes, sha256) of the stream
/// as stored in the bundle; for a directory index, whose chunks were each
/// checked against their IDs and whose manifest digest describes the
/// archive it was made from, the digest is empty.
pub fn extract_archive(
    src: &ImageSource<'_>,
    dir: &Path,
    keep_metadata: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, String)> {
    if let Some(a) = src.casync_archive() {
        return a.unpack(dir, src.control(), progress).map(|n| (n, String::new()));
    }
    if !src.name().ends_with(".catar") {
        return extract_tar(src, dir, keep_metadata, progress);
    }
    let (reader, writer) = std::io::pipe().map_err(|e| Error::Failed(format!("Failed to create a pipe: {e}")))?;
    std::thread::scope(|scope| {
        let decoder = scope.spawn(move || casync::catar::decode::extract(std::io::BufReader::new(reader), dir));
        let streamed = super::write::stream_hashed(src, writer, progress).map(|(n, sha, _)| (n, sha));
        let decoded = decoder.join().expect("catar decoder thread");
        let decoded = decoded.map_err(|e| Error::Failed(format!("Failed to extract '{}': {e}", src.name())));
        match (decoded, streamed) {
            (Ok(_), streamed) => streamed,
            // The stream's own failure (cancelled, unreadable) is the cause,
            // unless it only failed because the decoder stopped reading.
            (Err(_), Err(s)) if !s.to_string().contains("Broken pipe") => Err(s),
            (Err(d), _) => Err(d),
        }
    })
}

/// Extracts the archive `src` into `dir`, with owners, ACLs, xattrs and file
/// capabilities when `keep_metadata` (not on FAT); returns (bytes, sha256)
/// of the archive stream.
pub fn extract_tar(
    src: &ImageSource<'_>,
    dir: &Path,
    keep_metadata: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, String)> {
    let mut cmd = Command::new("tar");
    cmd.arg("xf").arg("-").arg("-C").arg(dir).arg("--numeric-owner");
    if keep_metadata {
        cmd.args(["--xattrs", "--xattrs-include=*", "--acls"]);
    } else {
        cmd.args(["--no-same-owner", "--no-same-permissions"]);
    }
    let path = src.name();
    if let Some(flag) = compression_flag(&path) {
        cmd.arg(flag);
    }
    pipe_image(src, None, cmd, "extract", progress)
}

/// Fills a FAT filesystem without mounting it (mtools): the archive is
/// unpacked into a private temporary directory, then copied in with `mcopy`.
/// Works on kernels without vfat support (containers).
fn fill_vfat(src: &ImageSource<'_>, slot: &SlotConfig, progress: &mut dyn FnMut(u64)) -> Result<(u64, String)> {
    let tmp = tempfile::tempdir().map_err(|e| Error::Failed(format!("Failed to create a temporary directory: {e}")))?;
    let r = extract_archive(src, tmp.path(), false, progress)?;
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(tmp.path())
        .map_err(|e| Error::Failed(format!("Failed to read extracted archive: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    if !entries.is_empty() {
        let mut args: Vec<std::ffi::OsString> =
            vec!["-s".into(), "-p".into(), "-Q".into(), "-i".into(), slot.device.clone().into()];
        args.extend(entries.into_iter().map(Into::into));
        args.push("::/".into());
        let out = Command::new("mcopy")
            .args(&args)
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .map_err(|e| Error::Failed(format!("Failed to start mcopy: {e}")))?;
        if !out.status.success() {
            return failed(format!(
                "Failed to copy files into '{}': {}",
                slot.device.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    std::fs::File::open(&slot.device)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::Failed(format!("Failed to sync '{}': {e}", slot.device.display())))?;
    Ok(r)
}

/// A post-install slot hook, called with the filesystem mounted.
pub type PostHook<'a> = Option<&'a dyn Fn(&Path) -> Result<()>>;

/// mkfs, mount at `mount_dir`, extract (`src = None`: empty filesystem),
/// `verify` the archive stream (bytes, sha256), run `post` while mounted,
/// sync, unmount. FAT slots are filled without mounting and mounted only
/// for a post hook.
pub fn install_archive(
    src: Option<&ImageSource<'_>>,
    slot: &SlotConfig,
    mount_dir: &Path,
    verify: &dyn Fn(u64, &str) -> Result<()>,
    post: PostHook<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    mkfs(slot)?;
    if slot.slot_type == SlotType::Vfat {
        if let Some(s) = src {
            let (n, sha) = fill_vfat(s, slot, progress)?;
            verify(n, &sha)?;
        }
        return match post {
            Some(post) => mounts::with_slot_mounted(slot, mount_dir, post),
            None => Ok(()),
        };
    }
    mounts::with_slot_mounted(slot, mount_dir, |dir| {
        let r = match src {
            Some(s) => extract_archive(s, dir, true, progress).and_then(|(n, sha)| verify(n, &sha)),
            None => Ok(()),
        };
        let r = match (r, post) {
            (Ok(()), Some(post)) => post(dir),
            (r, _) => r,
        };
        let synced = tools::run("sync", &["-f".as_ref(), dir.as_os_str()]).map(|_| ());
        r.and(synced)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels() {
        assert_eq!(super::vfat_label("rootfs.1"), "ROOTFS_1");
        assert_eq!(super::vfat_label("bootloader.10"), "BOOTLOADER_");
    }

    #[test]
    fn tar_compression_follows_the_filename_suffix() {
        use super::compression_flag as f;
        assert_eq!(f("root.tar"), None);
        assert_eq!(f("root.tgz"), Some("-z"));
        assert_eq!(f("root.tar.Z"), Some("-Z"));
        assert_eq!(f("root.tar.z"), None);
        assert_eq!(f("root.tbz2"), Some("-j"));
        assert_eq!(f("root.tar.lz"), Some("--lzip"));
        assert_eq!(f("root.tlz"), Some("--lzma"));
        assert_eq!(f("root.tar.lzo"), Some("--lzop"));
        assert_eq!(f("root.txz"), Some("-J"));
        assert_eq!(f("root.tar.zst"), Some("--zstd"));
    }
}
