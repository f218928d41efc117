//! The system mount table (which slot is mounted where) and mounting slots
//! with the external `mount` tool, as RAUC does (spec §4.1, §6.2).

use crate::error::{Error, Result};
use crate::tools;
use std::path::{Path, PathBuf};

/// One mounted filesystem.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The source as the kernel reports it; loop devices are replaced by their backing file.
    pub source: String,
    /// Where it is mounted.
    pub target: PathBuf,
    /// The filesystem type (`fuse.rota` for a bundle view's payload file).
    pub fstype: String,
}

/// Resolves the `\NNN` octal escapes of mountinfo fields (space, tab, newline, backslash).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn loop_backing_file(source: &str) -> Option<String> {
    let name = source.strip_prefix("/dev/")?;
    let base = match name.find('p') {
        Some(p) if name.starts_with("loop") && p > 4 => &name[..p],
        _ => name,
    };
    if !base.starts_with("loop") {
        return None;
    }
    let f = std::fs::read_to_string(format!("/sys/block/{base}/loop/backing_file")).ok()?;
    Some(f.trim_end().to_string())
}

/// Reads `/proc/self/mountinfo`.
pub fn table() -> Vec<Mount> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let target = unescape(fields.get(4)?);
            let fstype = unescape(fields.get(sep + 1)?);
            let source = unescape(fields.get(sep + 2)?);
            let source = loop_backing_file(&source).unwrap_or(source);
            Some(Mount { source, target: PathBuf::from(target), fstype })
        })
        .collect()
}

/// Where `device` is mounted (first mount found), comparing names and real paths.
pub fn mount_point_of(mounts: &[Mount], device: &Path) -> Option<PathBuf> {
    let dev = device.to_string_lossy();
    let real = std::fs::canonicalize(device).ok();
    mounts
        .iter()
        .find(|m| m.source == dev || real.as_deref().is_some_and(|r| Path::new(&m.source) == r))
        .map(|m| m.target.clone())
}

/// Whether something is mounted on `dir` (compared by real path).
pub fn is_mount_point(dir: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(dir) else {
        return false;
    };
    table().iter().any(|m| m.target == real)
}

/// Mounts `device` on `dir` (created 0700 if missing) with `mount [-t type] [-o opts]`.
pub fn mount(device: &Path, dir: &Path, fstype: Option<&str>, options: &[&str]) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Failed(format!("Failed to create mount point {}: {e}", dir.display())))?;
    let mut args: Vec<String> = Vec::new();
    if let Some(t) = fstype {
        args.extend(["-t".into(), t.into()]);
    }
    let opts: Vec<&str> = options.iter().copied().filter(|o| !o.is_empty()).collect();
    if !opts.is_empty() {
        args.extend(["-o".into(), opts.join(",")]);
    }
    args.push(device.to_string_lossy().into_owned());
    args.push(dir.to_string_lossy().into_owned());
    tools::run("mount", &args).map(|_| ())
}

/// What `mount` is given as the source of `slot`: its device, except for
/// `jffs2`, which is mounted by the MTD device's name (`mtd3`, spec §4.2).
fn slot_source(slot: &crate::config::SlotConfig) -> std::path::PathBuf {
    match (slot.slot_type, slot.device.file_name()) {
        (crate::config::SlotType::Jffs2, Some(name)) => name.into(),
        _ => slot.device.clone(),
    }
}

/// Mounts `slot` at `dir` with its type, its `extra-mount-opts` and `options`.
pub fn mount_slot(slot: &crate::config::SlotConfig, dir: &Path, options: &[&str]) -> Result<()> {
    let mut opts: Vec<&str> = options.to_vec();
    opts.extend(slot.extra_mount_opts.as_deref());
    mount(&slot_source(slot), dir, Some(slot.slot_type.as_str()), &opts)
}

/// Mounts `slot` (its type, its `extra-mount-opts`) at `dir` while `f`
/// runs, and unmounts it again even when `f` fails (whose error comes first).
pub fn with_slot_mounted<T>(
    slot: &crate::config::SlotConfig,
    dir: &Path,
    f: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    mount_slot(slot, dir, &[])?;
    let r = f(dir);
    let u = umount(dir);
    let r = r?;
    u.map(|()| r)
}

/// Exclusive locks on the devices of the slots an installation may write,
/// held while it runs. Their holder may treat the slots' mounts at rota's
/// own mount points as left behind by a killed installation.
pub struct SlotLocks {
    _files: Vec<std::fs::File>,
}

/// Locks the devices of `slots` (missing devices are skipped: the install
/// reports them), or fails when another installation holds one.
pub fn lock_slots<'a>(slots: impl Iterator<Item = &'a crate::config::SlotConfig>) -> Result<SlotLocks> {
    use std::os::fd::AsRawFd;
    let mut files = Vec::new();
    for slot in slots {
        let Ok(file) = std::fs::File::open(&slot.device) else { continue };
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::Failed(format!("Slot {} is being written by another installation", slot.name)));
        }
        files.push(file);
    }
    Ok(SlotLocks { _files: files })
}

/// Unmounts what a killed installation left mounted: any of `slots` mounted
/// at `<prefix>/<slot name>`, and what a bundle view left under `<prefix>`
/// when no live view holds it (see [`crate::bundleview::release_unused`]).
/// Needs the [`SlotLocks`] of the slots the system may write. Returns what
/// it removed.
pub fn release_stale<'a>(
    _locks: &SlotLocks,
    prefix: &Path,
    slots: impl Iterator<Item = &'a crate::config::SlotConfig>,
) -> Vec<PathBuf> {
    let Ok(prefix) = std::fs::canonicalize(prefix) else { return Vec::new() };
    let mounts = table();
    let mut stale = Vec::new();
    for slot in slots {
        let dir = prefix.join(&slot.name);
        let own = |m: &&Mount| m.target == dir && mount_point_of(std::slice::from_ref(*m), &slot.device).is_some();
        if mounts.iter().any(|m| own(&m)) {
            stale.push(dir);
        }
    }
    for dir in &stale {
        tracing::warn!("Unmounting {}, left mounted by an interrupted installation", dir.display());
        if let Err(e) = umount_or_detach(dir) {
            tracing::warn!("{e}");
        }
    }
    for what in crate::bundleview::release_unused(&prefix) {
        tracing::warn!("Removed {what}, left by an interrupted bundle view");
        stale.push(PathBuf::from(what));
    }
    stale
}

/// Unmounts `dir` and removes the (then empty) directory; when it is busy
/// (a process still inside), detaches it lazily instead (it goes once the
/// last user leaves). Returns whether it had to be lazy.
pub fn umount_or_detach(dir: &Path) -> Result<bool> {
    match tools::run("umount", &[dir]) {
        Ok(_) => {
            let _ = std::fs::remove_dir(dir);
            Ok(false)
        }
        Err(e) => {
            tools::run("umount", &["-l".as_ref(), dir.as_os_str()])
                .map_err(|l| Error::Failed(format!("{e}; a lazy unmount failed too: {l}")))?;
            Ok(true)
        }
    }
}

/// Unmounts `dir` and removes the (then empty) directory.
pub fn umount(dir: &Path) -> Result<()> {
    tools::run("umount", &[dir])?;
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn octal_escapes() {
        assert_eq!(super::unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(super::unescape("/plain"), "/plain");
        assert_eq!(super::unescape("/mnt/größe\\011x"), "/mnt/größe\tx");
    }
}
