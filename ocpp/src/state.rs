//! What survives a reboot or a restart of rota-ocpp: the firmware request
//! being carried out and how far it got, one JSON file in the state
//! directory, replaced atomically (written, synced, renamed, directory
//! synced).

use crate::messages::{v16, v201};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// Which message asked for the update; statuses go back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// 1.6 core `UpdateFirmware`: `FirmwareStatusNotification` with 7 statuses.
    Core16,
    /// 1.6 security extension `SignedUpdateFirmware`: `SignedFirmwareStatusNotification`.
    Signed16,
    /// 2.0.1 `UpdateFirmware`: `FirmwareStatusNotification` with `requestId`.
    V201,
}

/// A firmware update the CSMS asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// How it was asked for.
    pub channel: Channel,
    /// The CSMS's id for it (signed 1.6 and 2.0.1).
    pub request_id: Option<i64>,
    /// The bundle's URL.
    pub location: String,
    /// Not fetched before this time.
    #[serde(with = "time::serde::rfc3339")]
    pub retrieve_at: OffsetDateTime,
    /// Installed at this time (verified before).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub install_at: Option<OffsetDateTime>,
    /// Further tries after a failed download.
    pub retries: u32,
    /// Seconds between tries.
    pub retry_interval_sec: u64,
    /// The signing certificate (PEM) the CSMS named.
    pub signing_certificate: Option<String>,
    /// Base64 signature over the bundle file.
    pub signature: Option<String>,
}

/// Retries when the CSMS names none.
pub const DEFAULT_RETRIES: u32 = 2;
/// Seconds between tries when the CSMS names none.
pub const DEFAULT_RETRY_INTERVAL: u64 = 30;

fn retries(n: Option<i64>) -> u32 {
    n.map_or(DEFAULT_RETRIES, |n| n.clamp(0, 100) as u32)
}

fn interval(n: Option<i64>) -> u64 {
    n.map_or(DEFAULT_RETRY_INTERVAL, |n| n.clamp(0, 86_400) as u64)
}

impl From<v16::UpdateFirmwareRequest> for UpdateRequest {
    fn from(r: v16::UpdateFirmwareRequest) -> UpdateRequest {
        UpdateRequest {
            channel: Channel::Core16,
            request_id: None,
            location: r.location,
            retrieve_at: r.retrieve_date,
            install_at: None,
            retries: retries(r.retries),
            retry_interval_sec: interval(r.retry_interval),
            signing_certificate: None,
            signature: None,
        }
    }
}

impl UpdateRequest {
    /// A request with an id and optional signing data (2.0.1's shape, which
    /// signed 1.6 requests convert to), answered on `channel`.
    pub fn signed(channel: Channel, r: v201::UpdateFirmwareRequest) -> UpdateRequest {
        UpdateRequest {
            channel,
            request_id: Some(r.request_id),
            location: r.firmware.location,
            retrieve_at: r.firmware.retrieve_date_time,
            install_at: r.firmware.install_date_time,
            retries: retries(r.retries),
            retry_interval_sec: interval(r.retry_interval),
            signing_certificate: r.firmware.signing_certificate,
            signature: r.firmware.signature,
        }
    }
}

/// How far an update got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    /// Accepted, not yet written: carried out (again) after a restart.
    Accepted,
    /// Written and activated; the station reboots from `boot_slot_before`.
    Rebooting {
        /// The slot booted when the update was written.
        boot_slot_before: String,
    },
    /// The new slot failed its health check and was marked bad; the
    /// station reboots into the old one.
    Reverting,
}

/// The saved state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// The request.
    pub request: UpdateRequest,
    /// How far it got.
    pub phase: Phase,
}

/// The state file in a directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// The store in `dir` (made when missing).
    pub fn new(dir: &Path) -> std::io::Result<StateStore> {
        std::fs::create_dir_all(dir)?;
        Ok(StateStore { dir: dir.to_path_buf() })
    }

    fn path(&self) -> PathBuf {
        self.dir.join("update.json")
    }

    /// The saved state; an unreadable file is reported and set aside (kept
    /// as `update.json.bad`) so that the station still starts.
    pub fn load(&self) -> Option<Saved> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::error!("cannot read {}: {e}", path.display());
                return None;
            }
        };
        match serde_json::from_str(&text) {
            Ok(saved) => Some(saved),
            Err(e) => {
                tracing::error!("{} is damaged ({e}): set aside as update.json.bad", path.display());
                let _ = std::fs::rename(&path, self.dir.join("update.json.bad"));
                None
            }
        }
    }

    /// Replaces the saved state.
    pub fn save(&self, saved: &Saved) -> std::io::Result<()> {
        let tmp = self.dir.join("update.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(saved).expect("state serializes").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.path())?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Forgets the saved state.
    pub fn clear(&self) -> std::io::Result<()> {
        match std::fs::remove_file(self.path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> UpdateRequest {
        UpdateRequest {
            channel: Channel::V201,
            request_id: Some(5),
            location: "http://h/b.raucb".into(),
            retrieve_at: OffsetDateTime::from_unix_timestamp(1_796_616_000).unwrap(),
            install_at: None,
            retries: 2,
            retry_interval_sec: 30,
            signing_certificate: None,
            signature: None,
        }
    }

    #[test]
    fn state_round_trips_and_a_damaged_file_is_set_aside() {
        let dir = std::env::temp_dir().join(format!("rota-ocpp-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = StateStore::new(&dir).unwrap();
        assert_eq!(store.load(), None);
        let saved = Saved { request: request(), phase: Phase::Rebooting { boot_slot_before: "A".into() } };
        store.save(&saved).unwrap();
        assert_eq!(store.load(), Some(saved));
        store.clear().unwrap();
        store.clear().unwrap();
        assert_eq!(store.load(), None);
        std::fs::write(dir.join("update.json"), "{half").unwrap();
        assert_eq!(store.load(), None);
        assert!(dir.join("update.json.bad").exists());
        assert!(!dir.join("update.json").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
