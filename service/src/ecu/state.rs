//! The transaction state an ECU keeps across reboots: which system update
//! it takes part in, how far it got, and what it had booted before.

use crate::error::{Error, Result};
use rota_ecu::proto::State;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::path::{Path, PathBuf};

/// A step of the transaction lifecycle (`rota-ecu-v1.proto`'s `State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// No transaction.
    #[default]
    Idle,
    /// Fetching, verifying and writing.
    Preparing,
    /// Written, nothing activated.
    Prepared,
    /// Activated; rebooting into it.
    Switching,
    /// Booted the new slot; the health check runs.
    BootedNew,
    /// Booted the new slot and healthy.
    Healthy,
    /// The health check failed, or the old slot came up after the switch.
    Unhealthy,
    /// Marked good: final.
    Committed,
    /// The old slot is active again; rebooting into it.
    Reverting,
    /// Back on the old slot.
    Reverted,
    /// Preparing failed; nothing was activated.
    Failed,
}

impl Step {
    /// The protocol's name for it.
    pub fn proto(self) -> State {
        match self {
            Step::Idle => State::Idle,
            Step::Preparing => State::Preparing,
            Step::Prepared => State::Prepared,
            Step::Switching => State::Switching,
            Step::BootedNew => State::BootedNew,
            Step::Healthy => State::Healthy,
            Step::Unhealthy => State::Unhealthy,
            Step::Committed => State::Committed,
            Step::Reverting => State::Reverting,
            Step::Reverted => State::Reverted,
            Step::Failed => State::Failed,
        }
    }

    /// Whether the transaction can still be reverted here.
    pub fn revertible(self) -> bool {
        !matches!(self, Step::Idle | Step::Committed)
    }
}

/// What the ECU keeps in `<state directory>/transaction.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Record {
    /// The transaction (SHA-256 of its signed system manifest).
    pub transaction_id: String,
    /// Its system version.
    pub system_version: u64,
    /// Where it stands.
    pub step: Step,
    /// Why it failed, or why the ECU is unhealthy.
    pub error: String,
    /// Progress of preparing, in percent.
    pub progress: u32,
    /// The slot the bundle was written to.
    pub target_slot: Option<String>,
    /// Its bootname.
    pub target_bootname: Option<String>,
    /// The bootname booted when the transaction began.
    pub previous_bootname: Option<String>,
    /// The system version of the last committed transaction.
    pub committed_system_version: Option<u64>,
}

/// The record's file below `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("transaction.json")
}

/// What a JSON record file held.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored<T> {
    /// No file.
    Missing,
    /// The record.
    Read(T),
    /// The file did not parse; it was kept beside itself as `<name>.broken`
    /// and this says so.
    Broken(String),
}

/// Reads the JSON record at `path`, keeping one that does not parse as
/// `<path>.broken` (a service that refused to start over it would also
/// refuse RAUC's interface, and an operator could not look at it).
pub fn load_json<T: DeserializeOwned>(path: &Path) -> Result<Stored<T>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::Missing),
        Err(e) => return Err(Error::Failed(format!("Failed to read ECU state {}: {e}", path.display()))),
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok(Stored::Read(v)),
        Err(e) => {
            let broken = PathBuf::from(format!("{}.broken", path.display()));
            std::fs::rename(path, &broken).map_err(|e| {
                Error::Failed(format!("Failed to keep ECU state {} as {}: {e}", path.display(), broken.display()))
            })?;
            let text = format!("ECU state {} was unreadable ({e}); kept as {}", path.display(), broken.display());
            tracing::warn!("{text}");
            Ok(Stored::Broken(text))
        }
    }
}

/// Reads the record; none yet, or one that does not parse (kept as
/// `transaction.json.broken`), is an idle one.
pub fn load(dir: &Path) -> Result<Record> {
    Ok(match load_json(&path(dir))? {
        Stored::Read(r) => r,
        Stored::Missing | Stored::Broken(_) => Record::default(),
    })
}

/// Writes the record atomically and durably.
pub fn save(dir: &Path, record: &Record) -> Result<()> {
    save_json(&path(dir), record)
}

/// Writes `value` as JSON to `path` (in the ECU state directory, made if
/// missing) atomically and durably.
pub fn save_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Failed(format!("Failed to create ECU state directory {}: {e}", dir.display())))?;
    let text = serde_json::to_vec_pretty(value).expect("ECU state serialises");
    crate::status::write_atomic(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_broken_ones_count_as_idle() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Record::default());
        let r = Record {
            transaction_id: "ab".into(),
            system_version: 7,
            step: Step::Switching,
            target_slot: Some("rootfs.1".into()),
            committed_system_version: Some(6),
            ..Default::default()
        };
        save(dir.path(), &r).unwrap();
        assert_eq!(load(dir.path()).unwrap(), r);
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(text.contains("\"step\": \"switching\""), "{text}");
        std::fs::write(path(dir.path()), "{ not json").unwrap();
        assert_eq!(load(dir.path()).unwrap(), Record::default());
        assert!(dir.path().join("transaction.json.broken").exists());
    }
}
