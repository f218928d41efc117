//! Firmware statuses (`spec/everest-ocpp.md` §2): the 14 of OCPP 2.0.1 and
//! of the 1.6 security extension's `SignedFirmwareStatusNotification`, and
//! the 7 of 1.6 core's `FirmwareStatusNotification` they map onto.

use serde::{Deserialize, Serialize};

/// A firmware status of OCPP 2.0.1 and of signed 1.6 updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FirmwareStatus {
    /// The firmware was fetched.
    Downloaded,
    /// Fetching the firmware failed (after all retries).
    DownloadFailed,
    /// The firmware is being fetched.
    Downloading,
    /// Fetching waits for `retrieveDateTime`.
    DownloadScheduled,
    /// Fetching is paused (the network is down) and will go on.
    DownloadPaused,
    /// No update is running.
    Idle,
    /// Installing failed.
    InstallationFailed,
    /// The firmware is being installed.
    Installing,
    /// The firmware was installed and runs.
    Installed,
    /// The station reboots to finish the installation.
    InstallRebooting,
    /// Installing waits for `installDateTime`.
    InstallScheduled,
    /// The installed firmware could not be verified.
    InstallVerificationFailed,
    /// The firmware's signature is wrong.
    InvalidSignature,
    /// The firmware's signature was verified.
    SignatureVerified,
}

/// The firmware statuses of OCPP 1.6 core's `FirmwareStatusNotification`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoreFirmwareStatus {
    /// The firmware was fetched.
    Downloaded,
    /// Fetching the firmware failed.
    DownloadFailed,
    /// The firmware is being fetched.
    Downloading,
    /// No update is running.
    Idle,
    /// Installing failed.
    InstallationFailed,
    /// The firmware is being installed.
    Installing,
    /// The firmware was installed.
    Installed,
}

impl FirmwareStatus {
    /// Every status, in the order the 2.0.1 specification lists them.
    pub const ALL: [FirmwareStatus; 14] = [
        FirmwareStatus::Downloaded,
        FirmwareStatus::DownloadFailed,
        FirmwareStatus::Downloading,
        FirmwareStatus::DownloadScheduled,
        FirmwareStatus::DownloadPaused,
        FirmwareStatus::Idle,
        FirmwareStatus::InstallationFailed,
        FirmwareStatus::Installing,
        FirmwareStatus::Installed,
        FirmwareStatus::InstallRebooting,
        FirmwareStatus::InstallScheduled,
        FirmwareStatus::InstallVerificationFailed,
        FirmwareStatus::InvalidSignature,
        FirmwareStatus::SignatureVerified,
    ];

    /// Whether the update ends with this status (as libocpp treats them).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            FirmwareStatus::DownloadFailed
                | FirmwareStatus::InstallationFailed
                | FirmwareStatus::Installed
                | FirmwareStatus::InstallVerificationFailed
                | FirmwareStatus::InvalidSignature
        )
    }

    /// The 1.6 core status a CSMS is told, or `None` where 1.6 core has no
    /// word for the change and the status sent before still holds: a
    /// scheduled download has not begun, a paused one is still
    /// downloading, a verified signature or a scheduled install leaves the
    /// firmware downloaded, and the reboot is part of installing. A bad
    /// signature and a failed verification of the installed firmware are
    /// installations that failed (the download itself succeeded).
    pub fn core(self) -> Option<CoreFirmwareStatus> {
        use CoreFirmwareStatus as C;
        match self {
            FirmwareStatus::Downloaded => Some(C::Downloaded),
            FirmwareStatus::DownloadFailed => Some(C::DownloadFailed),
            FirmwareStatus::Downloading => Some(C::Downloading),
            FirmwareStatus::Idle => Some(C::Idle),
            FirmwareStatus::InstallationFailed
            | FirmwareStatus::InvalidSignature
            | FirmwareStatus::InstallVerificationFailed => Some(C::InstallationFailed),
            FirmwareStatus::Installing => Some(C::Installing),
            FirmwareStatus::Installed => Some(C::Installed),
            FirmwareStatus::DownloadScheduled
            | FirmwareStatus::DownloadPaused
            | FirmwareStatus::SignatureVerified
            | FirmwareStatus::InstallScheduled
            | FirmwareStatus::InstallRebooting => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialize_as_their_ocpp_names() {
        let names: Vec<String> = FirmwareStatus::ALL.iter().map(|s| serde_json::to_string(s).unwrap()).collect();
        assert_eq!(
            names.join(","),
            r#""Downloaded","DownloadFailed","Downloading","DownloadScheduled","DownloadPaused","Idle","InstallationFailed","Installing","Installed","InstallRebooting","InstallScheduled","InstallVerificationFailed","InvalidSignature","SignatureVerified""#
        );
        let back: FirmwareStatus = serde_json::from_str(r#""InstallRebooting""#).unwrap();
        assert_eq!(back, FirmwareStatus::InstallRebooting);
        assert!(serde_json::from_str::<CoreFirmwareStatus>(r#""InstallRebooting""#).is_err());
    }

    #[test]
    fn every_status_maps_to_core_and_the_core_statuses_are_all_reached() {
        let mut reached: Vec<CoreFirmwareStatus> = FirmwareStatus::ALL.iter().filter_map(|s| s.core()).collect();
        reached.sort_by_key(|c| format!("{c:?}"));
        reached.dedup();
        assert_eq!(reached.len(), 7);
        // The end states stay end states in 1.6 core.
        for s in FirmwareStatus::ALL.iter().filter(|s| s.is_final()) {
            let core = s.core().unwrap();
            assert!(
                matches!(
                    core,
                    CoreFirmwareStatus::DownloadFailed
                        | CoreFirmwareStatus::InstallationFailed
                        | CoreFirmwareStatus::Installed
                ),
                "{s:?} -> {core:?}"
            );
        }
        assert_eq!(FirmwareStatus::InvalidSignature.core(), Some(CoreFirmwareStatus::InstallationFailed));
        assert_eq!(FirmwareStatus::DownloadPaused.core(), None);
    }
}
