//! Slot status (spec §7): what was installed into each slot and when it was
//! activated, kept centrally in one key file (`central.raucs`) or per slot as
//! `slot.raucs` inside the slot's own filesystem.

use crate::config::StatusMode;
use crate::error::{Error, Result};
use rota_bundle::keyfile::{self, Group, KeyFile};
use std::path::{Path, PathBuf};

/// Status of one slot; all fields optional, as RAUC's readers are lenient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotStatus {
    /// `bundle.compatible`.
    pub bundle_compatible: Option<String>,
    /// `bundle.version`.
    pub bundle_version: Option<String>,
    /// `bundle.description`.
    pub bundle_description: Option<String>,
    /// `bundle.build`.
    pub bundle_build: Option<String>,
    /// `bundle.hash`.
    pub bundle_hash: Option<String>,
    /// `status`: `ok`, `failed` or `pending`.
    pub status: Option<String>,
    /// `sha256` of the installed image.
    pub sha256: Option<String>,
    /// `size` of the installed image.
    pub size: Option<u64>,
    /// `installed.transaction`.
    pub installed_transaction: Option<String>,
    /// `installed.timestamp`.
    pub installed_timestamp: Option<String>,
    /// `installed.count`.
    pub installed_count: u64,
    /// `activated.timestamp`.
    pub activated_timestamp: Option<String>,
    /// `activated.count`.
    pub activated_count: u64,
}

impl SlotStatus {
    fn field(&mut self, key: &str) -> Option<&mut Option<String>> {
        Some(match key {
            "bundle.compatible" => &mut self.bundle_compatible,
            "bundle.version" => &mut self.bundle_version,
            "bundle.description" => &mut self.bundle_description,
            "bundle.build" => &mut self.bundle_build,
            "bundle.hash" => &mut self.bundle_hash,
            "status" => &mut self.status,
            "sha256" => &mut self.sha256,
            "installed.transaction" => &mut self.installed_transaction,
            "installed.timestamp" => &mut self.installed_timestamp,
            "activated.timestamp" => &mut self.activated_timestamp,
            _ => return None,
        })
    }

    /// Reads a status group; garbage numbers count as 0, unknown keys are ignored.
    pub fn from_group(g: &Group) -> SlotStatus {
        let mut s = SlotStatus::default();
        for e in &g.entries {
            let value = keyfile::unescape_string(&e.raw).unwrap_or_else(|_| e.raw.clone());
            match e.key.as_str() {
                "size" => s.size = value.parse().ok(),
                "installed.count" => s.installed_count = value.parse().unwrap_or(0),
                "activated.count" => s.activated_count = value.parse().unwrap_or(0),
                k => {
                    if let Some(f) = s.field(k) {
                        *f = Some(value);
                    }
                }
            }
        }
        for ts in [&s.installed_timestamp, &s.activated_timestamp].into_iter().flatten() {
            if humantime::parse_rfc3339(ts).is_err() {
                tracing::warn!("Failed to parse timestamp '{ts}' in slot status");
            }
        }
        s
    }

    /// The `bundle.*` keys and `status`, in RAUC's order, with their values.
    pub fn bundle_and_status(&self) -> [(&'static str, &Option<String>); 6] {
        [
            ("bundle.compatible", &self.bundle_compatible),
            ("bundle.version", &self.bundle_version),
            ("bundle.description", &self.bundle_description),
            ("bundle.build", &self.bundle_build),
            ("bundle.hash", &self.bundle_hash),
            ("status", &self.status),
        ]
    }

    /// Writes the status into a group, in RAUC's key order.
    pub fn to_group(&self, name: &str) -> Group {
        let mut g = Group::new(name);
        for (key, value) in self.bundle_and_status().into_iter().chain([("sha256", &self.sha256)]) {
            if let Some(v) = value {
                g.set_string(key, v);
            }
        }
        if let Some(n) = self.size {
            g.set_raw("size", n.to_string());
        }
        for (key, value) in
            [("installed.transaction", &self.installed_transaction), ("installed.timestamp", &self.installed_timestamp)]
        {
            if let Some(v) = value {
                g.set_string(key, v);
            }
        }
        if self.installed_count > 0 {
            g.set_raw("installed.count", self.installed_count.to_string());
        }
        if let Some(t) = &self.activated_timestamp {
            g.set_string("activated.timestamp", t);
        }
        if self.activated_count > 0 {
            g.set_raw("activated.count", self.activated_count.to_string());
        }
        g
    }
}

/// The current time as RAUC writes it: `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn now_timestamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Writes `data` to the configured file `path` atomically (temporary file
/// in the same directory, fsync, rename), where its links lead: a status
/// file linked into another partition stays a link to the new content.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let fail = |e: std::io::Error| Error::Failed(format!("Failed to write status file {}: {e}", path.display()));
    crate::files::replace(&crate::files::resolve_links(path).map_err(fail)?, data).map_err(fail)
}

/// The central status file.
#[derive(Debug, Clone)]
pub struct CentralFile {
    /// Its path.
    pub path: PathBuf,
}

impl CentralFile {
    /// Reads the file: a missing one is empty; one that is not text or not
    /// a key file is kept as `<file>.broken` and counts as empty; one that
    /// cannot be read is an error (writing then would lose what it holds).
    fn load(&self) -> Result<KeyFile> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KeyFile::default()),
            Err(e) => {
                return Err(Error::Failed(format!("Failed to read status file {}: {e}", self.path.display())));
            }
        };
        let parsed = String::from_utf8(bytes)
            .map_err(|_| "not UTF-8 text".to_string())
            .and_then(|text| KeyFile::parse(&text).map_err(|e| e.to_string()));
        parsed.or_else(|e| {
            let broken = PathBuf::from(format!("{}.broken", self.path.display()));
            tracing::warn!("Status file {} is unparsable ({e}); moved to {}", self.path.display(), broken.display());
            std::fs::rename(&self.path, &broken).map_err(|err| {
                Error::Failed(format!(
                    "Failed to keep unparsable status file {} as {}: {err}",
                    self.path.display(),
                    broken.display()
                ))
            })?;
            Ok(KeyFile::default())
        })
    }

    /// Reads the file as [`Self::load`] does; one that cannot be read counts as empty (with a warning).
    pub fn read(&self) -> KeyFile {
        self.load().unwrap_or_else(|e| {
            tracing::warn!("{e}");
            KeyFile::default()
        })
    }

    /// Changes the file under the lock of its directory: `f` gets what it
    /// holds, and the result is written back. Refused when it cannot be read.
    fn change(&self, f: impl FnOnce(&mut KeyFile)) -> Result<()> {
        let target = crate::files::resolve_links(&self.path)
            .map_err(|e| Error::Failed(format!("Failed to write status file {}: {e}", self.path.display())))?;
        let dir = crate::files::dir_of(&target);
        crate::files::create_private_dir(dir)
            .map_err(|e| Error::Failed(format!("Failed to create status directory {}: {e}", dir.display())))?;
        let _lock = crate::files::DirLock::take(dir)
            .map_err(|e| Error::Failed(format!("Failed to lock status directory {}: {e}", dir.display())))?;
        let mut kf = self.load()?;
        f(&mut kf);
        write_atomic(&target, kf.to_text().as_bytes())
    }

    /// The status of `slot` (empty if unknown).
    pub fn slot(&self, slot: &str) -> SlotStatus {
        self.read().group(&format!("slot.{slot}")).map(SlotStatus::from_group).unwrap_or_default()
    }

    /// Replaces the status of the given slots, keeping every other group.
    pub fn update(&self, slots: &[(&str, &SlotStatus)]) -> Result<()> {
        self.change(|kf| {
            for (name, status) in slots {
                let gname = format!("slot.{name}");
                let g = status.to_group(&gname);
                match kf.groups.iter_mut().find(|x| x.name == gname) {
                    Some(existing) => *existing = g,
                    None => kf.groups.push(g),
                }
            }
        })
    }

    /// Sets a key of the `[system]` group.
    pub fn set_system(&self, key: &str, value: &str) -> Result<()> {
        self.change(|kf| {
            if !kf.groups.iter().any(|g| g.name == "system") {
                kf.groups.insert(0, Group::new("system"));
            }
            kf.group_mut("system").set_string(key, value);
        })
    }

    /// A key of the `[system]` group.
    pub fn system(&self, key: &str) -> Option<String> {
        let kf = self.read();
        kf.group("system").and_then(|g| g.entry(key)).map(|e| keyfile::unescape_string(&e.raw).unwrap_or_default())
    }
}

/// Name of the per-slot status file in a slot's root directory.
pub const PER_SLOT_FILE: &str = "slot.raucs";

/// Largest `slot.raucs` read (a status takes a few hundred bytes).
const PER_SLOT_MAX: u64 = 1 << 20;

/// Reads `slot.raucs` from a mounted slot filesystem (missing: empty). The
/// slot's content is not trusted: only a regular file is read (a link, a
/// fifo or a device there counts as no status), and at most 1 MiB of it.
pub fn read_per_slot(root: &Path) -> SlotStatus {
    let read = || -> std::io::Result<String> {
        let file = crate::confined::Root::open(root)?.open_file(PER_SLOT_FILE.as_bytes())?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, PER_SLOT_MAX), &mut text)?;
        Ok(text)
    };
    read()
        .map_err(|e| {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("Ignoring the status in {}: {e}", root.display());
            }
        })
        .ok()
        .and_then(|t| KeyFile::parse(&t).ok())
        .and_then(|kf| kf.group("slot").map(SlotStatus::from_group))
        .unwrap_or_default()
}

/// Writes `slot.raucs` into a mounted slot filesystem. Whatever the slot
/// held at that name, a link included, is replaced: nothing in a slot's
/// content leads the write elsewhere.
pub fn write_per_slot(root: &Path, status: &SlotStatus) -> Result<()> {
    let kf = KeyFile { groups: vec![status.to_group("slot")] };
    let path = root.join(PER_SLOT_FILE);
    crate::files::replace(&path, kf.to_text().as_bytes())
        .map_err(|e| Error::Failed(format!("Failed to write status file {}: {e}", path.display())))
}

/// Whether `mode` keeps a central file, and its path.
pub fn central(mode: &StatusMode) -> Option<CentralFile> {
    match mode {
        StatusMode::Central(p) => Some(CentralFile { path: p.clone() }),
        StatusMode::PerSlot => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_rauc_key_order() {
        let s = SlotStatus {
            bundle_compatible: Some("Test Config".into()),
            bundle_version: Some("2024.09-1".into()),
            bundle_hash: Some("2b16".into()),
            status: Some("ok".into()),
            sha256: Some("98db".into()),
            size: Some(262144),
            installed_transaction: Some("c22d".into()),
            installed_timestamp: Some("2026-11-22T03:26:56Z".into()),
            installed_count: 3,
            activated_timestamp: Some("2026-11-22T03:26:56Z".into()),
            activated_count: 4,
            ..SlotStatus::default()
        };
        let kf = KeyFile { groups: vec![s.to_group("slot.rootfs.1")] };
        assert_eq!(
            kf.to_text(),
            "[slot.rootfs.1]\nbundle.compatible=Test Config\nbundle.version=2024.09-1\nbundle.hash=2b16\nstatus=ok\n\
             sha256=98db\nsize=262144\ninstalled.transaction=c22d\ninstalled.timestamp=2026-11-22T03:26:56Z\n\
             installed.count=3\nactivated.timestamp=2026-11-22T03:26:56Z\nactivated.count=4\n"
        );
        assert_eq!(SlotStatus::from_group(&kf.groups[0]), s);
    }

    #[test]
    fn central_file_keeps_foreign_groups_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let c = CentralFile { path: dir.path().join("central.raucs") };
        c.set_system("boot-id", "abc").unwrap();
        let s = SlotStatus { status: Some("ok".into()), installed_count: 1, ..Default::default() };
        c.update(&[("rootfs.0", &s)]).unwrap();
        assert_eq!(c.slot("rootfs.0"), s);
        assert_eq!(c.system("boot-id").as_deref(), Some("abc"));
        std::fs::write(&c.path, "not a key file").unwrap();
        assert_eq!(c.slot("rootfs.0"), SlotStatus::default());
        assert!(dir.path().join("central.raucs.broken").exists());
        let g = KeyFile::parse("[slot.a.0]\ninstalled.count=garbage\nsize=x\n").unwrap();
        assert_eq!(SlotStatus::from_group(&g.groups[0]).installed_count, 0);
    }

    #[test]
    fn a_central_file_that_cannot_be_read_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let c = CentralFile { path: dir.path().join("central.raucs") };
        let s = SlotStatus { status: Some("ok".into()), ..Default::default() };
        // Not text: kept whole as .broken, and the update goes on.
        std::fs::write(&c.path, b"[slot.rootfs.0]\nstatus=ok\n\xff\xfe").unwrap();
        c.update(&[("rootfs.1", &s)]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("central.raucs.broken")).unwrap().last(), Some(&0xfe));
        assert_eq!(c.slot("rootfs.1"), s);
        // Unreadable (here: a directory in its place): the update is refused, nothing is lost.
        std::fs::remove_file(&c.path).unwrap();
        std::fs::create_dir(&c.path).unwrap();
        std::fs::write(c.path.join("keep"), b"x").unwrap();
        let e = c.update(&[("rootfs.1", &s)]).unwrap_err().to_string();
        assert!(e.starts_with(&format!("Failed to read status file {}", c.path.display())), "{e}");
        assert!(c.path.join("keep").exists());
    }

    #[test]
    fn a_linked_central_file_is_written_where_the_link_leads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::os::unix::fs::symlink("data/central.raucs", dir.path().join("central.raucs")).unwrap();
        let c = CentralFile { path: dir.path().join("central.raucs") };
        c.set_system("boot-id", "abc").unwrap();
        assert!(std::fs::symlink_metadata(&c.path).unwrap().file_type().is_symlink());
        assert!(std::fs::read_to_string(dir.path().join("data/central.raucs")).unwrap().contains("boot-id=abc"));
    }
}
