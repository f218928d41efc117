//! The messages of the firmware-update flow, as serde structs named and
//! shaped as the OCPP 1.6J (with the security extension) and 2.0.1 JSON
//! schemas have them (`spec/everest-ocpp.md` §2). Fields a CSMS may add
//! beyond these (such as 2.0.1's `customData`) are ignored when read.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A request type: its action name and the type of its response.
pub trait Action: Serialize + DeserializeOwned {
    /// The action name in the `CALL` frame.
    const ACTION: &'static str;
    /// What the receiver answers.
    type Response: Serialize + DeserializeOwned;
}

/// An empty response (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Empty {}

/// Answers to a `BootNotification`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistrationStatus {
    /// The CSMS accepts the station.
    Accepted,
    /// The CSMS is not ready yet: ask again after `interval`.
    Pending,
    /// The CSMS refuses the station: ask again after `interval`.
    Rejected,
}

/// Answers to an update request (signed 1.6 and 2.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateFirmwareStatus {
    /// The update will be carried out.
    Accepted,
    /// The update cannot be carried out.
    Rejected,
    /// Accepted, and the update that was running is cancelled.
    AcceptedCanceled,
    /// The signing certificate is not valid.
    InvalidCertificate,
    /// The signing certificate was revoked.
    RevokedCertificate,
}

/// Answers to a `TriggerMessage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TriggerMessageStatus {
    /// The message will be sent.
    Accepted,
    /// The message will not be sent.
    Rejected,
    /// The requested message is unknown to the station.
    NotImplemented,
}

/// `SecurityEventNotification` (2.0.1, and the 1.6 security extension).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityEventNotificationRequest {
    /// The event (`FirmwareUpdated`, `InvalidFirmwareSignature`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    /// Details for technicians.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tech_info: Option<String>,
}

impl Action for SecurityEventNotificationRequest {
    const ACTION: &'static str = "SecurityEventNotification";
    type Response = Empty;
}

/// `Heartbeat` (both versions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    /// The CSMS's clock.
    #[serde(with = "time::serde::rfc3339")]
    pub current_time: OffsetDateTime,
}

impl Action for HeartbeatRequest {
    const ACTION: &'static str = "Heartbeat";
    type Response = HeartbeatResponse;
}

/// OCPP 1.6J messages (core and the security extension).
pub mod v16 {
    use super::*;
    pub use super::{HeartbeatRequest, HeartbeatResponse, SecurityEventNotificationRequest};
    use crate::status::{CoreFirmwareStatus, FirmwareStatus};

    /// `BootNotification.req`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct BootNotificationRequest {
        /// Vendor (at most 20 characters).
        pub charge_point_vendor: String,
        /// Model (at most 20 characters).
        pub charge_point_model: String,
        /// Serial number of the charge point.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub charge_point_serial_number: Option<String>,
        /// Firmware version (at most 50 characters).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub firmware_version: Option<String>,
    }

    /// `BootNotification.conf`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct BootNotificationResponse {
        /// Whether the station is accepted.
        pub status: RegistrationStatus,
        /// The CSMS's clock.
        #[serde(with = "time::serde::rfc3339")]
        pub current_time: OffsetDateTime,
        /// Heartbeat interval, or the time to wait before asking again (seconds).
        pub interval: i64,
    }

    impl Action for BootNotificationRequest {
        const ACTION: &'static str = "BootNotification";
        type Response = BootNotificationResponse;
    }

    /// `UpdateFirmware.req` (core).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct UpdateFirmwareRequest {
        /// Where the firmware is.
        pub location: String,
        /// Not before this time.
        #[serde(with = "time::serde::rfc3339")]
        pub retrieve_date: OffsetDateTime,
        /// How often to try fetching.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub retries: Option<i64>,
        /// Seconds between tries.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub retry_interval: Option<i64>,
    }

    impl Action for UpdateFirmwareRequest {
        const ACTION: &'static str = "UpdateFirmware";
        type Response = Empty;
    }

    /// `FirmwareStatusNotification.req` (core).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct FirmwareStatusNotificationRequest {
        /// The status.
        pub status: CoreFirmwareStatus,
    }

    impl Action for FirmwareStatusNotificationRequest {
        const ACTION: &'static str = "FirmwareStatusNotification";
        type Response = Empty;
    }

    /// The firmware of a `SignedUpdateFirmware.req`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Firmware {
        /// Where the firmware is (at most 512 characters).
        pub location: String,
        /// Not before this time.
        #[serde(with = "time::serde::rfc3339")]
        pub retrieve_date_time: OffsetDateTime,
        /// Install at this time (else right after the download).
        #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none", default)]
        pub install_date_time: Option<OffsetDateTime>,
        /// The PEM certificate that signed the firmware.
        pub signing_certificate: String,
        /// Base64 signature over the firmware file.
        pub signature: String,
    }

    /// `SignedUpdateFirmware.req` (security extension).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct SignedUpdateFirmwareRequest {
        /// How often to try fetching.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub retries: Option<i64>,
        /// Seconds between tries.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub retry_interval: Option<i64>,
        /// The request's id, echoed in every status.
        pub request_id: i64,
        /// The firmware.
        pub firmware: Firmware,
    }

    /// `SignedUpdateFirmware.conf`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct SignedUpdateFirmwareResponse {
        /// The answer.
        pub status: UpdateFirmwareStatus,
    }

    impl Action for SignedUpdateFirmwareRequest {
        const ACTION: &'static str = "SignedUpdateFirmware";
        type Response = SignedUpdateFirmwareResponse;
    }

    /// `SignedFirmwareStatusNotification.req` (security extension).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct SignedFirmwareStatusNotificationRequest {
        /// The status.
        pub status: FirmwareStatus,
        /// The request it belongs to (absent for `Idle` with none running).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub request_id: Option<i64>,
    }

    impl Action for SignedFirmwareStatusNotificationRequest {
        const ACTION: &'static str = "SignedFirmwareStatusNotification";
        type Response = Empty;
    }

    /// `TriggerMessage.req` (core).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct TriggerMessageRequest {
        /// The message wanted (`FirmwareStatusNotification`, …).
        pub requested_message: String,
        /// The connector it is about.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub connector_id: Option<i64>,
    }

    /// `TriggerMessage.conf` and `ExtendedTriggerMessage.conf`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct TriggerMessageResponse {
        /// The answer.
        pub status: TriggerMessageStatus,
    }

    impl Action for TriggerMessageRequest {
        const ACTION: &'static str = "TriggerMessage";
        type Response = TriggerMessageResponse;
    }

    /// `ExtendedTriggerMessage.req` (security extension; same shape as
    /// `TriggerMessage.req`, its `FirmwareStatusNotification` asks for the
    /// signed notification).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ExtendedTriggerMessageRequest {
        /// The message wanted.
        pub requested_message: String,
        /// The connector it is about.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub connector_id: Option<i64>,
    }

    impl Action for ExtendedTriggerMessageRequest {
        const ACTION: &'static str = "ExtendedTriggerMessage";
        type Response = TriggerMessageResponse;
    }
}

/// OCPP 2.0.1 messages.
pub mod v201 {
    use super::*;
    pub use super::{HeartbeatRequest, HeartbeatResponse, SecurityEventNotificationRequest};
    use crate::status::FirmwareStatus;

    /// The station described in a `BootNotificationRequest`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ChargingStation {
        /// Model (at most 20 characters).
        pub model: String,
        /// Vendor (at most 50 characters).
        pub vendor_name: String,
        /// Serial number.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub serial_number: Option<String>,
        /// Firmware version (at most 50 characters).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub firmware_version: Option<String>,
    }

    /// Why the station booted.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum BootReason {
        /// The application restarted.
        ApplicationReset,
        /// A firmware update rebooted it.
        FirmwareUpdate,
        /// A local reset.
        LocalReset,
        /// Power came on.
        PowerUp,
        /// The CSMS asked for a reset.
        RemoteReset,
        /// A scheduled reset.
        ScheduledReset,
        /// A `TriggerMessage` asked for it.
        Triggered,
        /// Unknown.
        Unknown,
        /// A watchdog reset the station.
        Watchdog,
    }

    /// `BootNotificationRequest`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct BootNotificationRequest {
        /// The station.
        pub charging_station: ChargingStation,
        /// Why it booted.
        pub reason: BootReason,
    }

    /// `BootNotificationResponse`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct BootNotificationResponse {
        /// The CSMS's clock.
        #[serde(with = "time::serde::rfc3339")]
        pub current_time: OffsetDateTime,
        /// Heartbeat interval, or the time to wait before asking again (seconds).
        pub interval: i64,
        /// Whether the station is accepted.
        pub status: RegistrationStatus,
    }

    impl Action for BootNotificationRequest {
        const ACTION: &'static str = "BootNotification";
        type Response = BootNotificationResponse;
    }

    /// The firmware of an `UpdateFirmwareRequest`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Firmware {
        /// Where the firmware is (at most 512 characters).
        pub location: String,
        /// Not before this time.
        #[serde(with = "time::serde::rfc3339")]
        pub retrieve_date_time: OffsetDateTime,
        /// Install at this time (else right after the download).
        #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none", default)]
        pub install_date_time: Option<OffsetDateTime>,
        /// The PEM certificate that signed the firmware.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub signing_certificate: Option<String>,
        /// Base64 signature over the firmware file.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub signature: Option<String>,
    }

    /// `UpdateFirmwareRequest`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct UpdateFirmwareRequest {
        /// How often to try fetching.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub retries: Option<i64>,
        /// Seconds between tries.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub retry_interval: Option<i64>,
        /// The request's id, echoed in every status.
        pub request_id: i64,
        /// The firmware.
        pub firmware: Firmware,
    }

    /// Why an answer is what it is.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct StatusInfo {
        /// A reason code (at most 20 characters).
        pub reason_code: String,
        /// More text (at most 512 characters).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub additional_info: Option<String>,
    }

    /// `UpdateFirmwareResponse`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct UpdateFirmwareResponse {
        /// The answer.
        pub status: UpdateFirmwareStatus,
        /// Why.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub status_info: Option<StatusInfo>,
    }

    impl Action for UpdateFirmwareRequest {
        const ACTION: &'static str = "UpdateFirmware";
        type Response = UpdateFirmwareResponse;
    }

    /// `FirmwareStatusNotificationRequest`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct FirmwareStatusNotificationRequest {
        /// The status.
        pub status: FirmwareStatus,
        /// The request it belongs to (required unless `Idle` is sent for a
        /// `TriggerMessage` with no update running).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub request_id: Option<i64>,
        /// Vendor data (`vendorId` and more): rota-ocpp sends the
        /// installation's `progress` in percent here.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub custom_data: Option<serde_json::Value>,
    }

    impl Action for FirmwareStatusNotificationRequest {
        const ACTION: &'static str = "FirmwareStatusNotification";
        type Response = Empty;
    }

    /// `TriggerMessageRequest`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct TriggerMessageRequest {
        /// The message wanted (`FirmwareStatusNotification`, …).
        pub requested_message: String,
        /// The EVSE it is about.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub evse: Option<serde_json::Value>,
    }

    /// `TriggerMessageResponse`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct TriggerMessageResponse {
        /// The answer.
        pub status: TriggerMessageStatus,
        /// Why.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub status_info: Option<StatusInfo>,
    }

    impl Action for TriggerMessageRequest {
        const ACTION: &'static str = "TriggerMessage";
        type Response = TriggerMessageResponse;
    }
}

impl From<v16::SignedUpdateFirmwareRequest> for v201::UpdateFirmwareRequest {
    /// The same request in 2.0.1's shape (where signing data is optional).
    fn from(r: v16::SignedUpdateFirmwareRequest) -> v201::UpdateFirmwareRequest {
        v201::UpdateFirmwareRequest {
            retries: r.retries,
            retry_interval: r.retry_interval,
            request_id: r.request_id,
            firmware: v201::Firmware {
                location: r.firmware.location,
                retrieve_date_time: r.firmware.retrieve_date_time,
                install_date_time: r.firmware.install_date_time,
                signing_certificate: Some(r.firmware.signing_certificate),
                signature: Some(r.firmware.signature),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::FirmwareStatus;
    use serde_json::json;

    #[test]
    fn a_core_update_request_reads_with_any_rfc3339_time() {
        let r: v16::UpdateFirmwareRequest = serde_json::from_value(json!({
            "location": "https://fw.example/charger.raucb",
            "retrieveDate": "2026-12-07T05:00:00.123456+01:00",
            "retries": 3,
        }))
        .unwrap();
        assert_eq!(r.retries, Some(3));
        assert_eq!(r.retry_interval, None);
        // `date -u -d 2026-12-07T05:00:00+01:00 +%s`
        assert_eq!(r.retrieve_date.unix_timestamp(), 1_796_616_000);
        let missing = serde_json::from_value::<v16::UpdateFirmwareRequest>(json!({"location": "x"}));
        assert!(missing.unwrap_err().to_string().contains("retrieveDate"));
    }

    #[test]
    fn signed_and_201_requests_read_as_the_schemas_name_them() {
        let firmware = json!({
            "location": "https://fw.example/b.raucb",
            "retrieveDateTime": "2026-12-07T05:00:00Z",
            "installDateTime": "2026-12-07T06:00:00Z",
            "signingCertificate": "-----BEGIN CERTIFICATE-----\n...",
            "signature": "c2lnbmF0dXJl",
        });
        let s: v16::SignedUpdateFirmwareRequest =
            serde_json::from_value(json!({"requestId": 42, "retryInterval": 30, "firmware": firmware})).unwrap();
        assert_eq!(s.request_id, 42);
        assert_eq!(s.retry_interval, Some(30));
        assert!(s.firmware.install_date_time.is_some());
        let u: v201::UpdateFirmwareRequest = serde_json::from_value(json!({
            "requestId": 7,
            "firmware": {"location": "https://fw.example/b.raucb", "retrieveDateTime": "2026-12-07T05:00:00Z"},
            "customData": {"vendorId": "x"},
        }))
        .unwrap();
        assert_eq!(u.firmware.signature, None);
        assert_eq!(u.firmware.install_date_time, None);
    }

    #[test]
    fn notifications_write_only_what_is_set() {
        let n = v201::FirmwareStatusNotificationRequest {
            status: FirmwareStatus::Installing,
            request_id: Some(7),
            custom_data: None,
        };
        assert_eq!(serde_json::to_value(&n).unwrap(), json!({"status": "Installing", "requestId": 7}));
        let idle = v16::SignedFirmwareStatusNotificationRequest { status: FirmwareStatus::Idle, request_id: None };
        assert_eq!(serde_json::to_value(&idle).unwrap(), json!({"status": "Idle"}));
        let r = v201::UpdateFirmwareResponse { status: UpdateFirmwareStatus::AcceptedCanceled, status_info: None };
        assert_eq!(serde_json::to_value(&r).unwrap(), json!({"status": "AcceptedCanceled"}));
        let boot = v201::BootNotificationRequest {
            charging_station: v201::ChargingStation {
                model: "M".into(),
                vendor_name: "V".into(),
                serial_number: None,
                firmware_version: Some("2026.12".into()),
            },
            reason: v201::BootReason::FirmwareUpdate,
        };
        assert_eq!(
            serde_json::to_value(&boot).unwrap(),
            json!({"chargingStation": {"model": "M", "vendorName": "V", "firmwareVersion": "2026.12"}, "reason": "FirmwareUpdate"})
        );
        assert_eq!(<v16::SignedUpdateFirmwareRequest as Action>::ACTION, "SignedUpdateFirmware");
    }
}
