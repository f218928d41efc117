//! Tree images into FAT slots, without mounting them: every access goes
//! through mtools, so this works on kernels without a vfat driver (and in
//! containers). FAT holds files and directories only: a tree with
//! symbolic links, device nodes, fifos or sockets, or with names FAT cannot
//! store, is refused before anything is written. Owners, modes and xattrs
//! have no place on FAT and are dropped (as for tar archives into vfat
//! slots); hard-linked files become copies; times keep FAT's two-second
//! resolution.
//!
//! The target is updated in place: each file already right at its path
//! stays (read and hashed through mtools), what the new tree lacks is
//! deleted, the other contents are put together in a local staging
//! directory (from an interrupted run, the target's own files, the cache,
//! the booted slot, and only then the bundle) and copied in with one
//! `mcopy`. Every file written is then read back from the synced device
//! and checked.

use super::index::Installed;
use super::{Found, Run, content, place};
use crate::config::SlotConfig;
use crate::confined::Root;
use crate::error::{Error, Result, failed};
use rota_bundle::tree::{Entry, Kind};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Characters a FAT long name cannot hold (besides control characters).
const FORBIDDEN: &str = "\"*:<>?\\|";

/// Refuses a tree FAT cannot store: objects other than files and
/// directories, names that are not UTF-8, hold forbidden characters, end in
/// a dot or space or are too long, and paths that differ only in case.
pub fn check_tree(entries: impl Iterator<Item = Entry>, image: &str) -> Result<()> {
    let mut folded = HashSet::new();
    let mut dropped = false;
    for e in entries {
        let shown = String::from_utf8_lossy(&e.path);
        let what = match e.kind {
            Kind::Dir | Kind::File => None,
            Kind::Symlink => Some("the symbolic link"),
            Kind::Char | Kind::Block => Some("the device node"),
            Kind::Fifo => Some("the fifo"),
            Kind::Socket => Some("the socket"),
        };
        if let Some(what) = what {
            return failed(format!("Tree image '{image}' holds {what} '/{shown}', which a vfat slot cannot store"));
        }
        dropped |= !e.xattrs.is_empty() || e.uid != 0 || e.gid != 0;
        if e.path.is_empty() {
            continue;
        }
        let Ok(path) = std::str::from_utf8(&e.path) else {
            return failed(format!("Tree image '{image}' holds the path '/{shown}', which is not UTF-8 as FAT needs"));
        };
        let leaf = path.rsplit('/').next().unwrap_or(path);
        if leaf.chars().any(|c| c < ' ' || FORBIDDEN.contains(c))
            || leaf.ends_with(['.', ' '])
            || leaf.encode_utf16().count() > 255
        {
            return failed(format!("Tree image '{image}' holds the name '/{path}', which FAT cannot store"));
        }
        if !folded.insert(path.to_lowercase()) {
            return failed(format!(
                "Tree image '{image}' holds '/{path}' and another path that differs only in case, which FAT does not tell apart"
            ));
        }
    }
    if dropped {
        tracing::info!("Tree image '{image}': owners and extended attributes are not stored on FAT");
    }
    Ok(())
}

/// An mtools command on the FAT filesystem of `dev`.
fn mtool(program: &str, dev: &Path) -> Command {
    let mut c = Command::new(program);
    c.env("MTOOLS_SKIP_CHECK", "1").env("LC_ALL", "C.UTF-8").arg("-i").arg(dev).stdin(Stdio::null());
    c
}

/// Runs `cmd`; its standard output, or an error naming `what` and what it wrote to stderr.
fn output(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| Error::Failed(format!("Failed to start {program}: {e}")))?;
    if !out.status.success() {
        return failed(format!("Failed to {what}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(out.stdout)
}

/// `rel` (index bytes) as an mtools path.
fn fat_path(rel: &[u8]) -> OsString {
    let mut p = OsString::from("::/");
    p.push(OsStr::from_bytes(rel));
    p
}

/// The data area of the FAT filesystem on `dev`, from its boot sector:
/// (bytes per cluster, clusters).
fn geometry(dev: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 512];
    std::fs::File::open(dev)
        .and_then(|f| f.read_exact_at(&mut b, 0))
        .map_err(|e| Error::io("Failed to read the boot sector of", dev, e))?;
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let u32_at = |o: usize| u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]));
    let (sector, per_cluster) = (u16_at(11), u64::from(b[13]));
    if sector == 0 || per_cluster == 0 {
        return failed(format!("'{}' holds no FAT boot sector", dev.display()));
    }
    let total = if u16_at(19) != 0 { u16_at(19) } else { u32_at(32) };
    let fat = if u16_at(22) != 0 { u16_at(22) } else { u32_at(36) };
    let root_dir = (u16_at(17) * 32).div_ceil(sector);
    let data = total.saturating_sub(u16_at(14) + u64::from(b[16]) * fat + root_dir);
    Ok((sector * per_cluster, data / per_cluster))
}

/// Refuses, before anything is written, a tree that cannot fit the FAT
/// filesystem on `dev`: each file takes whole clusters (hard links become
/// copies), each directory below the root at least one.
fn check_room(dev: &Path, plan: &super::index::Plan, name: &str) -> Result<()> {
    let (cluster, clusters) = geometry(dev)?;
    let (mut need, mut files) = (0u64, 0u64);
    for i in 0..plan.len() {
        let item = plan.item(i);
        match item.kind {
            Kind::File => {
                need += item.size.div_ceil(cluster);
                files += 1;
            }
            Kind::Dir if !plan.path(i).is_empty() => need += 1,
            _ => {}
        }
    }
    if need <= clusters {
        return Ok(());
    }
    let size = rota_bundle::info::format_size;
    failed(format!(
        "the slot is too small for tree image '{name}': its filesystem holds {} in {clusters} clusters of {}, \
         the tree takes at least {need} of them ({}) in {files} files ({} entries)",
        size(clusters * cluster),
        size(cluster),
        size(need * cluster),
        plan.len()
    ))
}

/// Whether the slot holds a FAT filesystem mtools can read (after
/// `fsck.fat -a` repaired what it can).
fn usable(slot: &SlotConfig) -> bool {
    let checked = Command::new("fsck.fat")
        .arg("-a")
        .arg(&slot.device)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| matches!(s.code(), Some(0 | 1)));
    checked && output(mtool("mdir", &slot.device).args(["-a", "::/"]), "list").is_ok()
}

/// The objects of the target, (path, is a directory), sorted by path.
fn list(dev: &Path) -> Result<Vec<(Vec<u8>, bool)>> {
    let out = mtool("mdir", dev).args(["-/", "-b", "-a", "::/"]).output();
    let out = out.map_err(|e| Error::Failed(format!("Failed to start mdir: {e}")))?;
    // An empty root directory is reported as an error with nothing listed.
    if !out.status.success() && !out.stdout.is_empty() {
        return failed(format!("Failed to list '{}': {}", dev.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    let mut objects = Vec::new();
    for line in out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some(rest) = line.strip_prefix(b"::/") else {
            return failed(format!(
                "Unexpected mdir output for '{}': {}",
                dev.display(),
                String::from_utf8_lossy(line)
            ));
        };
        match rest.strip_suffix(b"/") {
            Some(dir) => objects.push((dir.to_vec(), true)),
            None => objects.push((rest.to_vec(), false)),
        }
    }
    objects.sort();
    Ok(objects)
}

/// Reads file `rel` of the FAT filesystem on `dev` into `out`; returns its length and SHA-256.
fn read_file(dev: &Path, rel: &[u8], out: &mut dyn Write) -> Result<(u64, String)> {
    let mut child = mtool("mcopy", dev)
        .arg("-n")
        .arg(fat_path(rel))
        .arg("-")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Failed(format!("Failed to start mcopy: {e}")))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut len = 0u64;
    let shown = || format!("'::/{}' of '{}'", String::from_utf8_lossy(rel), dev.display());
    let copied = loop {
        match stdout.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                h.update(&buf[..n]);
                len += n as u64;
                if let Err(e) = out.write_all(&buf[..n]) {
                    break Err(Error::Failed(format!("Failed to store {}: {e}", shown())));
                }
            }
            Err(e) => break Err(Error::Failed(format!("Failed to read {}: {e}", shown()))),
        }
    };
    drop(stdout);
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let status = child.wait().map_err(|e| Error::Failed(format!("Failed to read {}: {e}", shown())))?;
    copied?;
    if !status.success() {
        return failed(format!("Failed to read {}: {}", shown(), err.trim()));
    }
    Ok((len, hex::encode(h.finalize())))
}

/// Copies file `rel` of the FAT filesystem on `dev` (the target, or a
/// booted slot that is not mounted) into the staging directory as content
/// `sha`; returns whether it holds that content.
pub(super) fn stage_from_fat(staging: &Root, dev: &Path, rel: &[u8], sha: &str) -> Result<bool> {
    let part = format!("{sha}.part");
    let part = part.as_bytes();
    let mut w = content::HashingWriter::new(content::create(staging, part)?);
    let read = read_file(dev, rel, &mut w);
    let (_, got, _) = w.finish().map_err(|e| place::fail("Failed to write", staging, part, e))?;
    if read.is_ok_and(|(_, h)| h == sha) && got == sha {
        staging.rename(part, staging, sha.as_bytes()).map_err(|e| place::fail("Failed to move", staging, part, e))?;
        return Ok(true);
    }
    place::remove(staging, part)?;
    Ok(false)
}

/// Runs one mtools program over `paths` on `dev`, a few hundred at a time.
fn each_batch(program: &str, dev: &Path, paths: &[Vec<u8>], what: &str) -> Result<()> {
    for batch in paths.chunks(256) {
        let mut cmd = mtool(program, dev);
        cmd.args(batch.iter().map(|p| fat_path(p)));
        output(&mut cmd, what)?;
    }
    Ok(())
}

/// Writes the device's cached blocks out and drops them, so that what is
/// read next comes from the medium.
fn sync_and_drop(dev: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dev).map_err(|e| Error::io("Failed to open", dev, e))?;
    f.sync_all().map_err(|e| Error::io("Failed to sync", dev, e))?;
    // SAFETY: advisory call on an open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(())
}

impl Run<'_, '_> {
    /// Updates the FAT filesystem of the target slot to the plan's tree;
    /// `earlier` holds the target's contents by path from its kept index.
    /// The staging directory is local (`ctx.staging`), the new objects are
    /// laid out below `ctx.root` before they are copied in.
    pub(super) fn install_fat(
        &mut self,
        earlier: &Installed,
        drop_kept_index: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let slot = self.job.slot;
        let dev = slot.device.as_path();
        if !usable(slot) {
            tracing::info!("Slot {} holds no usable FAT filesystem: formatting it", slot.name);
            super::super::archive::mkfs(slot)?;
        }
        check_room(dev, self.ctx.plan, self.ctx.name)?;
        drop_kept_index()?;
        super::prune_staging(&self.ctx.staging, self.ctx.plan)?;
        let plan = self.ctx.plan;
        let listed = list(dev)?;
        // Files of the new tree already right at their path stay.
        let candidates: Vec<usize> = listed
            .iter()
            .filter(|(_, dir)| !dir)
            .filter_map(|(p, _)| plan.lookup(p).filter(|&i| plan.item(i).kind == Kind::File))
            .collect();
        let kept = &mut self.kept;
        let ctx = &self.ctx;
        super::in_parallel(
            super::LOCAL_WORKERS,
            &candidates,
            |&i| {
                ctx.control.check()?;
                // A file that cannot be read is replaced like a changed one.
                Ok(read_file(dev, plan.path(i), &mut std::io::sink()).ok())
            },
            |&i, read| {
                kept[i] = read.is_some_and(|(len, sha)| len == plan.item(i).size && sha == plan.sha(i));
                Ok(())
            },
        )?;
        // Whatever else the target holds goes; files whose content the new
        // tree wants elsewhere (known from the kept index) are staged first.
        let (mut files, mut dirs): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
        for (p, is_dir) in &listed {
            let doomed = dirs.iter().any(|d| p.starts_with(d) && p.get(d.len()) == Some(&b'/'));
            let wanted = plan.lookup(p);
            if *is_dir {
                if !doomed && wanted.is_none_or(|i| plan.item(i).kind != Kind::Dir) {
                    dirs.push(p.clone());
                }
                continue;
            }
            if wanted.is_some_and(|i| self.kept[i]) {
                continue;
            }
            if let Some(c) = earlier.content_at(p) {
                let sha = plan.digest_hex(c);
                if !self.ctx.has_staged(&sha)? {
                    stage_from_fat(&self.ctx.staging, dev, p, &sha)?;
                }
            }
            if !doomed {
                files.push(p.clone());
            }
        }
        self.ctx.control.check()?;
        each_batch("mdel", dev, &files, "delete files of the old tree")?;
        each_batch("mdeltree", dev, &dirs, "delete directories of the old tree")?;
        // Contents the target still lacks: staged locally, else fetched.
        self.resolve_fat()?;
        self.lay_out()?;
        self.persist()?;
        self.set_dir_times()?;
        let root = &self.ctx.root;
        let names = root.names(b"").map_err(|e| place::fail("Failed to read directory", root, b"", e))?;
        let top: Vec<OsString> = names.iter().map(|n| root.shown(n).into_os_string()).collect();
        if !top.is_empty() {
            let mut cmd = mtool("mcopy", dev);
            cmd.args(["-s", "-m", "-Q", "-D", "o"]).args(top).arg("::/");
            output(&mut cmd, &format!("copy files into '{}'", dev.display()))?;
        }
        sync_and_drop(dev)?;
        self.read_back_fat()
    }

    /// Stages the content of every file not kept, from a local copy where
    /// one is found (the target's kept files included), else from the bundle.
    fn resolve_fat(&mut self) -> Result<()> {
        let plan = self.ctx.plan;
        let dev = self.job.slot.device.as_path();
        // Entries of the target that stay, by content.
        let mut on_target: HashMap<u32, usize> = HashMap::new();
        for i in (0..plan.len()).filter(|&i| self.kept[i]) {
            on_target.entry(plan.content(i)).or_insert(i);
        }
        // One entry stages each content, a first file of its hard-link
        // group where it can (only those are counted); the others copy it.
        let files = (0..plan.len()).filter(|&i| plan.item(i).kind == Kind::File);
        let (leaders, followers): (Vec<usize>, Vec<usize>) = files.partition(|&i| plan.is_leader(i));
        let mut staged_by = vec![false; plan.contents()];
        let mut stagers = Vec::new();
        for i in leaders.into_iter().chain(followers) {
            let size = plan.item(i).size;
            if self.kept[i] {
                if plan.is_leader(i) {
                    self.stats.reused += 1;
                    self.stats.bytes_reused += size;
                    super::done(&mut self.at, self.progress, size);
                }
            } else if !std::mem::replace(&mut staged_by[plan.content(i) as usize], true) {
                stagers.push(i);
            } else if plan.is_leader(i) {
                self.stats.copied += 1;
                self.stats.bytes_copied += size;
                super::done(&mut self.at, self.progress, size);
            }
        }
        let ctx = &self.ctx;
        let mut fetch = Vec::new();
        let (stats, at, progress) = (&mut self.stats, &mut self.at, &mut *self.progress);
        super::in_parallel(
            super::LOCAL_WORKERS,
            &stagers,
            |&i| {
                ctx.control.check()?;
                let sha = plan.sha(i);
                if ctx.stage_locally(i, &sha)? {
                    return Ok(Found::Local);
                }
                match on_target.get(&plan.content(i)) {
                    Some(&k) if stage_from_fat(&ctx.staging, dev, plan.path(k), &sha)? => Ok(Found::Local),
                    _ => Ok(Found::Fetch),
                }
            },
            |&i, found| {
                if matches!(found, Found::Fetch) {
                    fetch.push(i);
                } else if plan.is_leader(i) {
                    let size = plan.item(i).size;
                    stats.copied += 1;
                    stats.bytes_copied += size;
                    super::done(at, progress, size);
                }
                Ok(())
            },
        )?;
        self.fetch(fetch)
    }

    /// Lays the new objects out below `ctx.root` as the target gets them:
    /// every directory, each file not kept (its staged content moved there
    /// or copied for a second user), with the index's times.
    fn lay_out(&mut self) -> Result<()> {
        let plan = self.ctx.plan;
        let (root, staging) = (&self.ctx.root, &self.ctx.staging);
        let mut first: HashMap<u32, &[u8]> = HashMap::new();
        for i in 0..plan.len() {
            if i % 256 == 0 {
                self.ctx.control.check()?;
            }
            let (item, rel) = (plan.item(i), plan.path(i));
            match item.kind {
                Kind::Dir if !rel.is_empty() => {
                    root.mkdir(rel, 0o755).map_err(|err| place::fail("Failed to create", root, rel, err))?
                }
                Kind::File if !self.kept[i] => {
                    let sha = plan.sha(i);
                    match first.get(&plan.content(i)) {
                        Some(from) => {
                            let mut src =
                                root.open_file(from).map_err(|err| place::fail("Failed to open", root, from, err))?;
                            let out = content::create(root, rel)?;
                            let got = content::copy_checked(&mut src, out)
                                .map_err(|err| place::fail("Failed to write", root, rel, err))?;
                            if got.as_deref() != Some(sha.as_str()) {
                                return failed(format!("Staged content {sha} changed while in use"));
                            }
                        }
                        None => {
                            staging
                                .rename(sha.as_bytes(), root, rel)
                                .map_err(|err| place::fail("Failed to move", staging, sha.as_bytes(), err))?;
                            first.insert(plan.content(i), rel);
                        }
                    }
                    place::set_mtime(root, rel, item.mtime)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads every file this install wrote back from the device and checks it.
    fn read_back_fat(&mut self) -> Result<()> {
        let plan = self.ctx.plan;
        let dev = self.job.slot.device.as_path();
        let written: Vec<usize> = (0..plan.len())
            .filter(|&i| plan.item(i).kind == Kind::File && !self.kept[i] && !self.is_persisted(plan.path(i)))
            .collect();
        let ctx = &self.ctx;
        super::in_parallel(
            super::LOCAL_WORKERS,
            &written,
            |&i| {
                ctx.control.check()?;
                let (sha, size) = (plan.sha(i), plan.item(i).size);
                let (len, got) = read_file(dev, plan.path(i), &mut std::io::sink())?;
                if got != sha || len != size {
                    return failed(format!(
                        "Read-back check of '::/{}' on '{}' failed: sha256 {got} of {len} bytes instead of {sha} of {size} bytes",
                        String::from_utf8_lossy(plan.path(i)),
                        dev.display(),
                    ));
                }
                Ok(())
            },
            |_, ()| Ok(()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{check_tree, geometry, mtool, output};
    use rota_bundle::tree::{Entry, Kind};
    use std::process::Command;

    #[test]
    fn the_data_area_is_read_from_the_boot_sector_of_fat12_16_and_32() {
        let dir = tempfile::tempdir().unwrap();
        for (bits, mib) in [("12", 2), ("16", 16), ("32", 40)] {
            let img = dir.path().join(format!("fat{bits}.img"));
            std::fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
            let made = Command::new("mkfs.vfat").args(["-F", bits]).arg(&img).output().unwrap();
            assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
            let (cluster, clusters) = geometry(&img).unwrap();
            // An empty filesystem has all its clusters free, but FAT32's root directory's.
            let listed = output(mtool("mdir", &img).arg("::/"), "list").unwrap();
            let listed = String::from_utf8(listed).unwrap();
            let free_line = listed.lines().find(|l| l.contains("bytes free")).unwrap();
            let free: u64 = free_line.chars().filter(char::is_ascii_digit).collect::<String>().parse().unwrap();
            let root = if bits == "32" { 1 } else { 0 };
            assert_eq!((clusters - root) * cluster, free, "FAT{bits}");
        }
        std::fs::write(dir.path().join("zeros"), [0u8; 512]).unwrap();
        let e = geometry(&dir.path().join("zeros")).unwrap_err().to_string();
        assert!(e.ends_with("zeros' holds no FAT boot sector"), "{e}");
    }

    fn entry(path: &[u8], kind: Kind) -> Entry {
        Entry {
            path: path.to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            sha256: None,
            target: None,
            rdev: 0,
            xattrs: Default::default(),
            link_group: 0,
        }
    }

    fn refusal(path: &[u8], kind: Kind) -> String {
        let tree = [entry(b"", Kind::Dir), entry(b"a", Kind::Dir), entry(path, kind)];
        check_tree(tree.into_iter(), "boot.tree").map_or_else(|e| e.to_string(), |()| "accepted".into())
    }

    #[test]
    fn only_what_fat_can_hold_is_accepted() {
        assert_eq!(refusal(b"a/Long name, with spaces (1).txt", Kind::File), "accepted");
        assert_eq!(refusal("a/größe".as_bytes(), Kind::Dir), "accepted");
        for (kind, what) in [
            (Kind::Symlink, "the symbolic link"),
            (Kind::Char, "the device node"),
            (Kind::Block, "the device node"),
            (Kind::Fifo, "the fifo"),
            (Kind::Socket, "the socket"),
        ] {
            assert_eq!(
                refusal(b"a/x", kind),
                format!("Tree image 'boot.tree' holds {what} '/a/x', which a vfat slot cannot store")
            );
        }
        for name in ["a/x:y", "a/tab\there", "a/end.", "a/end ", "a/q?", "a/p|ipe"] {
            assert_eq!(
                refusal(name.as_bytes(), Kind::File),
                format!("Tree image 'boot.tree' holds the name '/{name}', which FAT cannot store")
            );
        }
        assert_eq!(
            refusal(&[b"a/".as_slice(), &[b'x'; 256]].concat(), Kind::File),
            format!("Tree image 'boot.tree' holds the name '/a/{}', which FAT cannot store", "x".repeat(256))
        );
        assert!(refusal(b"a/\xff", Kind::File).ends_with("which is not UTF-8 as FAT needs"));
        assert_eq!(
            refusal(b"A", Kind::File),
            "Tree image 'boot.tree' holds '/A' and another path that differs only in case, which FAT does not tell apart"
        );
    }
}
