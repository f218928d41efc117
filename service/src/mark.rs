//! Marking slots good, bad or active (spec §5.3): `status mark-*` and D-Bus `Mark`.

use crate::error::{Error, Result, failed};
use crate::eventlog::{self, Event, ids};
use crate::status::now_timestamp;
use crate::system::{SlotState, System};

/// What a mark does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkState {
    /// Bootable; boot attempts reset.
    Good,
    /// Not bootable.
    Bad,
    /// Booted next (primary).
    Active,
}

impl MarkState {
    /// Parses `good`, `bad` or `active`.
    pub fn parse(s: &str) -> Result<MarkState> {
        match s {
            "good" => Ok(MarkState::Good),
            "bad" => Ok(MarkState::Bad),
            "active" => Ok(MarkState::Active),
            other => failed(format!("unknown slot state '{other}'")),
        }
    }

    /// The name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            MarkState::Good => "good",
            MarkState::Bad => "bad",
            MarkState::Active => "active",
        }
    }
}

/// The slots `identifier` selects: `booted`, `other` or `<class>.<idx>`.
pub fn select(system: &System, identifier: &str) -> Result<Vec<usize>> {
    match identifier {
        "booted" => {
            let i = system.slots.iter().position(|s| s.state == SlotState::Booted);
            i.map(|i| vec![i]).ok_or_else(|| Error::Failed("Did not find booted slot".into()))
        }
        "other" => {
            let booted = system.booted().ok_or_else(|| Error::Failed("Did not find booted slot".into()))?;
            let class = booted.config.class.clone();
            let others: Vec<usize> = (0..system.slots.len())
                .filter(|&i| {
                    let s = &system.slots[i];
                    s.config.class == class
                        && s.config.parent.is_none()
                        && s.config.bootname.is_some()
                        && s.state != SlotState::Booted
                })
                .collect();
            if others.is_empty() {
                return failed("No other bootable slot of the same class found");
            }
            Ok(others)
        }
        name => {
            let parts: Vec<&str> = name.split('.').collect();
            if parts.len() != 2 {
                return failed(format!("Invalid slot name format: '{name}'"));
            }
            let Some(i) = system.slots.iter().position(|s| s.config.name == name) else {
                return failed(format!("No slot with class {} and name {name} found", parts[0]));
            };
            if system.slots[i].config.bootname.is_none() {
                return failed(format!("Slot {name} has no bootname set"));
            }
            Ok(vec![i])
        }
    }
}

fn mark_event(system: &System, idx: usize, state: MarkState, hash: Option<String>) {
    let slot = &system.slots[idx].config;
    let (id, kind) = match state {
        MarkState::Good => (ids::MARK_GOOD, "good"),
        MarkState::Bad => (ids::MARK_BAD, "bad"),
        MarkState::Active => (ids::MARK_ACTIVE, "active"),
    };
    let mut fields =
        vec![("SLOT_NAME", slot.name.clone()), ("SLOT_BOOTNAME", slot.bootname.clone().unwrap_or_default())];
    if state == MarkState::Active {
        fields.push(("BUNDLE_HASH", hash.unwrap_or_else(|| "unknown".into())));
    }
    eventlog::emit(
        &system.config.logs,
        &Event { kind: "mark", message: format!("Marked slot {} as {kind}", slot.name), message_id: Some(id), fields },
    );
}

fn apply(system: &System, slots: &[usize], state: MarkState) -> Result<()> {
    for &i in slots {
        let slot = &system.slots[i];
        let b = slot
            .config
            .bootname
            .as_deref()
            .ok_or_else(|| Error::Failed(format!("Slot {} has no bootname set", slot.config.name)))?;
        match state {
            MarkState::Good | MarkState::Bad => {
                system.bootloader.set_state(b, state == MarkState::Good).map_err(|e| {
                    Error::Failed(format!("Failed marking slot {} as {}: {e}", slot.config.name, state.as_str()))
                })?
            }
            MarkState::Active => {
                system
                    .bootloader
                    .set_primary(b)
                    .map_err(|e| Error::Failed(format!("Failed marking slot {} as active: {e}", slot.config.name)))?;
                let mut st = system.load_status(slot);
                st.activated_timestamp = Some(now_timestamp());
                st.activated_count += 1;
                let hash = st.bundle_hash.clone();
                if let Err(e) = system.save_status(slot, &st) {
                    tracing::warn!("Failed to save status of {}: {e}", slot.config.name);
                }
                mark_event(system, i, state, hash);
                continue;
            }
        }
        mark_event(system, i, state, None);
    }
    Ok(())
}

/// Marks the slots `identifier` selects; returns the names of the slots
/// marked and RAUC's result message (`marked slot(s) rootfs.0 as good`).
pub fn mark(system: &System, state: MarkState, identifier: &str) -> Result<(Vec<String>, String)> {
    let slots = select(system, identifier)?;
    if slots.len() > 1 {
        match state {
            MarkState::Good => return failed("cannot mark multiple slots as good"),
            MarkState::Active => return failed("cannot activate multiple slots"),
            MarkState::Bad => {}
        }
    }
    apply(system, &slots, state)?;
    if state == MarkState::Good && identifier == "booted" && system.config.system.prevent_late_fallback {
        match select(system, "other") {
            Ok(others) => apply(system, &others, MarkState::Bad)?,
            Err(e) => tracing::info!("prevent-late-fallback: {e}"),
        }
    }
    let names: Vec<String> = slots.iter().map(|&i| system.slots[i].config.name.clone()).collect();
    let message = format!("marked slot(s) {} as {}", names.join(" "), state.as_str());
    Ok((names, message))
}
