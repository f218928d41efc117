//! What the service does once when it starts (spec §7.3, §7.5): log how
//! the system came up — booted into a slot, from an external source, or a
//! restart within the same boot — and publish the runtime links under
//! `/run/rauc` that let other programs find the active slots and the
//! artifact repositories without parsing `system.conf`.

use crate::bootslot::EXTERNAL;
use crate::error::{Error, Result};
use crate::eventlog::{self, Event, ids};
use crate::system::{SlotState, System};
use std::path::Path;

/// Where the runtime links live.
pub const RUN_DIR: &str = "/run/rauc";

/// The kernel's id of this boot.
pub fn current_boot_id() -> Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::Failed(format!("Failed to read the boot id: {e}")))
}

/// The file under the runtime directory that holds the id of the boot in
/// which the booted slot was marked good through the service.
const BOOTED_GOOD: &str = "booted-marked-good";

/// Remembers, for this boot, that the booted slot was marked good (or, with
/// `good` false, bad) through the service: a restarted service then polls
/// without waiting for the next mark (the runtime directory is gone with the boot).
pub fn record_booted_good(run_dir: &Path, good: bool) -> Result<()> {
    let path = run_dir.join(BOOTED_GOOD);
    if !good {
        return crate::files::remove_any(&path).map_err(|e| Error::io("Failed to remove", &path, e));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io("Failed to create", run_dir, e))?;
    crate::status::write_atomic(&path, current_boot_id()?.as_bytes())
}

/// Whether the booted slot was marked good through the service in this boot.
pub fn booted_marked_good(run_dir: &Path) -> bool {
    let recorded = std::fs::read_to_string(run_dir.join(BOOTED_GOOD)).unwrap_or_default();
    current_boot_id().is_ok_and(|id| recorded.trim() == id)
}

fn service_event(system: &System, message: &str) {
    let event = Event { kind: "service", message: message.to_string(), message_id: None, fields: vec![] };
    eventlog::emit(&system.config.logs, &event);
}

/// Logs the boot (spec §7.3): with a central status file, the boot id of
/// the last start is compared with `boot_id` — the same id is a service
/// restart, a new one a boot (into the booted slot, or from an external
/// source), after which the new id is saved. Without a central status file
/// there is nothing to compare with: "Service started".
pub fn record_boot(system: &System, boot_id: &str) -> Result<()> {
    let Some(central) = system.central() else {
        service_event(system, "Service started");
        return Ok(());
    };
    if central.system("boot-id").as_deref() == Some(boot_id) {
        service_event(system, "Service restarted");
        return Ok(());
    }
    let event = match system.booted() {
        Some(slot) if system.boot_slot != EXTERNAL => {
            let c = &slot.config;
            let bootname = system.bootname_of(c).unwrap_or("");
            let hash = system.load_status(slot).bundle_hash.unwrap_or_else(|| "unknown".to_string());
            Event {
                kind: "boot",
                message: format!("Booted into {} ({bootname})", c.name),
                message_id: Some(ids::BOOTED),
                fields: vec![
                    ("SLOT_NAME", c.name.clone()),
                    ("SLOT_BOOTNAME", bootname.to_string()),
                    ("BOOT_ID", boot_id.to_string()),
                    ("BUNDLE_HASH", hash),
                ],
            }
        }
        _ => Event {
            kind: "boot",
            message: "Booted from external source".to_string(),
            message_id: Some(ids::BOOTED_EXTERNAL),
            fields: vec![("BOOT_ID", boot_id.to_string())],
        },
    };
    eventlog::emit(&system.config.logs, &event);
    central.set_system("boot-id", boot_id)
}

/// Points `link` at `target`, replacing whatever was there in one rename.
fn replace_link(target: &Path, link: &Path) -> Result<()> {
    let tmp = link.with_extension("tmp-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| Error::io("Failed to create link", &tmp, e))?;
    std::fs::rename(&tmp, link).map_err(|e| Error::io("Failed to create link", link, e))
}

/// Makes `dir` hold exactly the links `wanted` (name, target).
fn sync_links(dir: &Path, wanted: &[(String, &Path)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("Failed to create", dir, e))?;
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("Failed to read", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if is_link && !wanted.iter().any(|(n, _)| *n == name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for (name, target) in wanted {
        replace_link(target, &dir.join(name))?;
    }
    Ok(())
}

/// Creates the runtime links (spec §7.5) under `run_dir`:
/// `slots/active/<class>` → device of the booted or active slot of each
/// class, `artifacts/<repo>` → the repository's path. Links left from an
/// earlier start that no longer apply are removed.
pub fn create_links(system: &System, run_dir: &Path) -> Result<()> {
    let active: Vec<(String, &Path)> = system
        .slots
        .iter()
        .filter(|s| matches!(s.state, SlotState::Booted | SlotState::Active))
        .map(|s| (s.config.class.clone(), s.config.device.as_path()))
        .collect();
    sync_links(&run_dir.join("slots/active"), &active)?;
    let repos: Vec<(String, &Path)> =
        system.config.artifacts.iter().map(|r| (r.name.clone(), r.path.as_path())).collect();
    sync_links(&run_dir.join("artifacts"), &repos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_text;

    fn system(dir: &Path, boot: &str, extra: &str) -> System {
        std::fs::create_dir_all(dir.join("repo")).unwrap();
        let text = format!(
            "[system]\ncompatible=t\nbootloader=noop\nstatusfile={0}/central.raucs\n\
             [log.events]\nfilename={0}/events.log\nformat=short\n\
             [slot.rootfs.0]\ndevice={0}/a\nbootname=A\n[slot.rootfs.1]\ndevice={0}/b\nbootname=B\n\
             [slot.appfs.0]\ndevice={0}/app-a\nparent=rootfs.0\n[slot.appfs.1]\ndevice={0}/app-b\nparent=rootfs.1\n\
             [artifacts.containers]\npath={0}/repo\ntype=trees\n{extra}",
            dir.display()
        );
        let config = load_text(&text, "system.conf", dir).unwrap();
        System::setup(config, Some(boot)).unwrap()
    }

    fn events(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("events.log")).unwrap_or_default()
    }

    #[test]
    fn links_point_at_the_active_slots_and_the_repositories() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("slots/active")).unwrap();
        std::os::unix::fs::symlink("/nowhere", run.join("slots/active/gone")).unwrap();
        create_links(&system(dir.path(), "B", ""), &run).unwrap();
        let link = |p: &str| std::fs::read_link(run.join(p)).unwrap();
        assert_eq!(link("slots/active/rootfs"), dir.path().join("b"));
        assert_eq!(link("slots/active/appfs"), dir.path().join("app-b"));
        assert_eq!(link("artifacts/containers"), dir.path().join("repo"));
        assert!(!run.join("slots/active/gone").exists(), "stale link removed");
        // After booting the other slot the links follow.
        create_links(&system(dir.path(), "A", ""), &run).unwrap();
        assert_eq!(link("slots/active/rootfs"), dir.path().join("a"));
    }

    #[test]
    fn boot_events_compare_boot_ids() {
        let dir = tempfile::tempdir().unwrap();
        let s = system(dir.path(), "A", "");
        record_boot(&s, "id-1").unwrap();
        record_boot(&s, "id-1").unwrap();
        record_boot(&s, "id-2").unwrap();
        let lines: Vec<String> =
            events(dir.path()).lines().map(|l| l.split_once(": ").unwrap().1.to_string()).collect();
        assert_eq!(lines, ["Booted into rootfs.0 (A)", "Service restarted", "Booted into rootfs.0 (A)"]);
        let central = std::fs::read_to_string(dir.path().join("central.raucs")).unwrap();
        assert!(central.contains("[system]\nboot-id=id-2"), "{central}");

        let s = system(dir.path(), EXTERNAL, "");
        record_boot(&s, "id-3").unwrap();
        assert!(events(dir.path()).ends_with(": Booted from external source\n"));
    }

    #[test]
    fn without_central_status_the_service_just_started() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[system]\ncompatible=t\nbootloader=noop\n[log.events]\nfilename={0}/events.log\nformat=short\n\
             [slot.rootfs.0]\ndevice={0}/a\nbootname=A\n",
            dir.path().display()
        );
        let s = System::setup(load_text(&text, "system.conf", dir.path()).unwrap(), Some("A")).unwrap();
        record_boot(&s, "id-1").unwrap();
        assert!(events(dir.path()).ends_with(": Service started\n"));
    }
}
