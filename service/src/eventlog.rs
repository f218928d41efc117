//! Event logging (spec §11.2): every event goes to the normal log and to the
//! `[log.*]` files that subscribe to its type, in their format, with rotation.

use crate::config::{LogConfig, LogFormat};
use crate::status::now_timestamp;
use std::io::Write;
use std::path::PathBuf;

/// One event.
#[derive(Debug, Clone)]
pub struct Event {
    /// `install`, `boot`, `mark`, `service` or `writeslot`.
    pub kind: &'static str,
    /// The message text.
    pub message: String,
    /// journald catalog id, if the event has one.
    pub message_id: Option<&'static str>,
    /// Extra fields in record order (`SLOT_NAME`, `BOOT_ID`, …).
    pub fields: Vec<(&'static str, String)>,
}

/// Message ids of the events (spec §11.2).
pub mod ids {
    /// Booted into a slot.
    pub const BOOTED: &str = "e60e0addd3454cb8b796eae0d497af96";
    /// Booted from an external source.
    pub const BOOTED_EXTERNAL: &str = "dd237efdad1945d9b1e471bc2b994532";
    /// Installation started.
    pub const INSTALL_STARTED: &str = "b05410e8a93345389cd061aab1e9516d";
    /// Installation succeeded.
    pub const INSTALL_SUCCEEDED: &str = "0163db5468ac4237b090d28490c301ed";
    /// Installation failed.
    pub const INSTALL_FAILED: &str = "c48141f7fd49443aafff862b4809168f";
    /// Installation rejected.
    pub const INSTALL_REJECTED: &str = "60bea7e4fea549ccad68af457308b13a";
    /// Slot marked active.
    pub const MARK_ACTIVE: &str = "8b5e7435e1054d86858278e7544fe6da";
    /// Slot marked good.
    pub const MARK_GOOD: &str = "3304e15a7a9a447885eb208ba7ae3a05";
    /// Slot marked bad.
    pub const MARK_BAD: &str = "ccb0e584a47043d7a5316994bce77ae5";
}

fn label(field: &str) -> Option<&'static str> {
    Some(match field {
        "TRANSACTION_ID" => "transaction ID",
        "BOOT_ID" => "boot ID",
        "BUNDLE_HASH" => "bundle hash",
        "BUNDLE_VERSION" => "bundle version",
        "SLOT_NAME" => "slot",
        "SLOT_BOOTNAME" => "bootname",
        _ => return None,
    })
}

/// Formats `event` at time `ts` in `format` (one record, ending in a newline).
pub fn format(event: &Event, ts: &str, format: LogFormat) -> String {
    match format {
        LogFormat::Short => format!("{ts}: {}\n", event.message),
        LogFormat::Readable => {
            let mut s = format!("{ts}: {}\n", event.message);
            for (k, v) in &event.fields {
                if let Some(l) = label(k) {
                    s.push_str(&format!("{:22}{l}: {v}\n", ""));
                }
            }
            s
        }
        LogFormat::Json | LogFormat::JsonPretty => {
            let mut obj = serde_json::Map::new();
            obj.insert("TS".into(), ts.into());
            obj.insert("MESSAGE".into(), event.message.clone().into());
            if let Some(id) = event.message_id {
                obj.insert("MESSAGE_ID".into(), id.into());
            }
            obj.insert("PRIORITY".into(), "5".into());
            obj.insert("GLIB_DOMAIN".into(), "rauc-event".into());
            obj.insert("RAUC_EVENT_TYPE".into(), event.kind.into());
            for (k, v) in &event.fields {
                obj.insert((*k).into(), v.clone().into());
            }
            let v = serde_json::Value::Object(obj);
            if format == LogFormat::Json {
                format!("{v}\n")
            } else {
                format!("{}\n", rota_bundle::info::to_pretty_json(&v))
            }
        }
    }
}

fn rotated(base: &std::path::Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", base.display()))
}

fn write_to(log: &LogConfig, record: &str) -> std::io::Result<()> {
    if log.max_size > 0 {
        let size = std::fs::metadata(&log.filename).map(|m| m.len()).unwrap_or(0);
        if size > 0 && size + record.len() as u64 > log.max_size {
            for n in (1..log.max_files).rev() {
                let from = if n == 1 { log.filename.clone() } else { rotated(&log.filename, n - 1) };
                if from.exists() {
                    std::fs::rename(&from, rotated(&log.filename, n))?;
                }
            }
            if log.max_files <= 1 {
                std::fs::remove_file(&log.filename)?;
            }
        }
    }
    if let Some(dir) = log.filename.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&log.filename)?;
    f.write_all(record.as_bytes())
}

/// Sends `event` to the log and every subscribed logger; a failing logger only warns.
pub fn emit(logs: &[LogConfig], event: &Event) {
    tracing::info!(target: "rauc-event", "{}", event.message);
    let ts = now_timestamp();
    for log in logs {
        if !log.events.is_empty() && !log.events.iter().any(|e| e == event.kind) {
            continue;
        }
        if let Err(e) = write_to(log, &format(event, &ts, log.format)) {
            tracing::warn!("Failed to write event log {}: {e}", log.filename.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booted() -> Event {
        Event {
            kind: "boot",
            message: "Booted into rootfs.0 (A)".into(),
            message_id: Some(ids::BOOTED),
            fields: vec![
                ("SLOT_NAME", "rootfs.0".into()),
                ("SLOT_BOOTNAME", "A".into()),
                ("BOOT_ID", "fe22".into()),
                ("BUNDLE_HASH", "unknown".into()),
            ],
        }
    }

    #[test]
    fn formats_match_the_spec() {
        let ts = "2026-11-22T03:27:18Z";
        assert_eq!(
            format(&booted(), ts, LogFormat::Readable),
            "2026-11-22T03:27:18Z: Booted into rootfs.0 (A)\n                      slot: rootfs.0\n                      bootname: A\n                      boot ID: fe22\n                      bundle hash: unknown\n"
        );
        assert_eq!(format(&booted(), ts, LogFormat::Short), "2026-11-22T03:27:18Z: Booted into rootfs.0 (A)\n");
        assert_eq!(
            format(&booted(), ts, LogFormat::Json),
            "{\"TS\":\"2026-11-22T03:27:18Z\",\"MESSAGE\":\"Booted into rootfs.0 (A)\",\"MESSAGE_ID\":\"e60e0addd3454cb8b796eae0d497af96\",\"PRIORITY\":\"5\",\"GLIB_DOMAIN\":\"rauc-event\",\"RAUC_EVENT_TYPE\":\"boot\",\"SLOT_NAME\":\"rootfs.0\",\"SLOT_BOOTNAME\":\"A\",\"BOOT_ID\":\"fe22\",\"BUNDLE_HASH\":\"unknown\"}\n"
        );
    }

    #[test]
    fn rotates_before_exceeding_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogConfig {
            name: "t".into(),
            filename: dir.path().join("ev.log"),
            format: LogFormat::Short,
            events: vec![],
            max_size: 100,
            max_files: 3,
        };
        for _ in 0..8 {
            emit(std::slice::from_ref(&log), &booted());
        }
        assert!(dir.path().join("ev.log.1").exists());
        assert!(dir.path().join("ev.log.2").exists());
        assert!(!dir.path().join("ev.log.3").exists());
        assert!(std::fs::metadata(&log.filename).unwrap().len() <= 100);
    }
}
