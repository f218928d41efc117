//! rota-ocpp's websocket link against a CSMS built on PyPI's `ocpp`
//! (`tests/ocpp/csms.py`): both versions' subprotocols, calls both ways
//! checked by the library's own schema validation, basic authentication
//! (security profile 1), and the errors a station must tell apart.

use rota_ocpp::Protocol;
use rota_ocpp::link::{Link, LinkConfig, LinkError};
use rota_ocpp::messages::{TriggerMessageStatus, v16, v201};
use serde_json::{Value, json};
use std::time::Duration;
use testkit::csms::Csms;
use testkit::target_dir;

fn config(csms: &Csms, id: &str, protocol: Protocol, password: Option<&str>) -> LinkConfig {
    LinkConfig {
        csms: csms.url(),
        station_id: id.into(),
        protocol,
        password: password.map(str::to_string),
        ca_file: None,
        client_cert: None,
        call_timeout: Duration::from_secs(10),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn log(name: &str) -> std::path::PathBuf {
    let dir = target_dir().join("ocpp-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.jsonl"))
}

fn is(m: &Value, kind: &str, action: &str) -> bool {
    m["kind"] == kind && m["action"] == action
}

#[test]
fn ocpp16_boot_trigger_and_heartbeat_with_basic_auth() {
    let trigger = r#"TriggerMessage={"requested_message": "Heartbeat"}"#.to_string();
    let csms = Csms::start(log("link16"), &["--password=s3cret".into(), format!("--after-boot={trigger}")]);
    rt().block_on(async {
        let mut link = Link::connect(&config(&csms, "CP-16", Protocol::Ocpp16, Some("s3cret"))).await.unwrap();
        let boot = v16::BootNotificationRequest {
            charge_point_vendor: "rota".into(),
            charge_point_model: "test-charger".into(),
            charge_point_serial_number: None,
            firmware_version: Some("2026.12.0".into()),
        };
        let answer = link.call(&boot).await.unwrap();
        assert_eq!(answer.status, rota_ocpp::messages::RegistrationStatus::Accepted);
        assert_eq!(answer.interval, 300);
        let call = link.next_call().await.unwrap();
        assert_eq!(call.action, "TriggerMessage");
        let request: v16::TriggerMessageRequest = serde_json::from_value(call.payload.clone()).unwrap();
        assert_eq!(request.requested_message, "Heartbeat");
        let reply = v16::TriggerMessageResponse { status: TriggerMessageStatus::Accepted };
        link.answer(&call, Ok(serde_json::to_value(reply).unwrap())).await.unwrap();
        link.call(&v16::HeartbeatRequest {}).await.unwrap();
        link.close().await;
    });
    let boot = csms.wait_for("the boot", |m| is(m, "call", "BootNotification"));
    assert_eq!(boot["station"], "CP-16");
    assert_eq!(boot["payload"]["firmwareVersion"], "2026.12.0");
    let result = csms.wait_for("the trigger's answer", |m| is(m, "result", "TriggerMessage"));
    assert_eq!(result["payload"], json!({"status": "Accepted"}));
    csms.wait_for("the heartbeat", |m| is(m, "call", "Heartbeat"));
}

#[test]
fn ocpp201_boot_trigger_and_a_status_pass_the_schema_checks() {
    let trigger = r#"TriggerMessage={"requested_message": "FirmwareStatusNotification"}"#.to_string();
    let csms = Csms::start(log("link201"), &[format!("--after-boot={trigger}")]);
    rt().block_on(async {
        let mut link = Link::connect(&config(&csms, "CS-201", Protocol::Ocpp201, None)).await.unwrap();
        let boot = v201::BootNotificationRequest {
            charging_station: v201::ChargingStation {
                model: "test-charger".into(),
                vendor_name: "rota".into(),
                serial_number: None,
                firmware_version: None,
            },
            reason: v201::BootReason::PowerUp,
        };
        let answer = link.call(&boot).await.unwrap();
        assert_eq!(answer.status, rota_ocpp::messages::RegistrationStatus::Accepted);
        // A status the station sends must pass the library's schema check.
        let status = v201::FirmwareStatusNotificationRequest {
            status: rota_ocpp::status::FirmwareStatus::Idle,
            request_id: None,
            custom_data: Some(json!({"vendorId": "dev.rota", "progress": 0})),
        };
        let call = link.next_call().await.unwrap();
        assert_eq!(call.action, "TriggerMessage");
        let reply = v201::TriggerMessageResponse { status: TriggerMessageStatus::Accepted, status_info: None };
        link.answer(&call, Ok(serde_json::to_value(reply).unwrap())).await.unwrap();
        link.call(&status).await.unwrap();
        link.close().await;
    });
    let boot = csms.wait_for("the boot", |m| is(m, "call", "BootNotification"));
    assert_eq!(boot["payload"]["reason"], "PowerUp");
    assert_eq!(boot["payload"]["chargingStation"]["vendorName"], "rota");
    let n = csms.wait_for("the status", |m| is(m, "call", "FirmwareStatusNotification"));
    assert_eq!(n["payload"]["status"], "Idle");
}

#[test]
fn a_wrong_password_is_refused_before_any_call_and_a_dead_csms_is_named() {
    let csms = Csms::start(log("link-refused"), &["--password=s3cret".into()]);
    rt().block_on(async {
        let err = Link::connect(&config(&csms, "CP-1", Protocol::Ocpp16, Some("wrong"))).await.err().unwrap();
        assert!(matches!(err, LinkError::Connection(_)), "{err}");
        assert!(err.to_string().contains("401"), "{err}");
        let err = Link::connect(&config(&csms, "CP-1", Protocol::Ocpp16, None)).await.err().unwrap();
        assert!(err.to_string().contains("401"), "{err}");
    });
    // Nothing listening: a connection error naming the URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = config(&csms, "CP-1", Protocol::Ocpp16, None);
    cfg.csms = format!("ws://127.0.0.1:{port}/ocpp");
    let err = rt().block_on(Link::connect(&cfg)).err().unwrap();
    assert!(err.to_string().contains(&format!("ws://127.0.0.1:{port}/ocpp/CP-1")), "{err}");
    assert!(csms.messages().is_empty(), "{:?}", csms.messages());
}

fn tls_csms(name: &str, client_ca: bool) -> Csms {
    let mut args = vec![
        format!("--tls-cert={}", testkit::pki_file("server.pem").display()),
        format!("--tls-key={}", testkit::pki_file("server.key").display()),
        "--password=s3cret".to_string(),
    ];
    if client_ca {
        args.push(format!("--client-ca={}", testkit::pki_file("keyring.pem").display()));
    }
    Csms::start(log(name), &args)
}

async fn boot16(link: &Link) -> Result<(), LinkError> {
    let boot = v16::BootNotificationRequest {
        charge_point_vendor: "rota".into(),
        charge_point_model: "tls".into(),
        charge_point_serial_number: None,
        firmware_version: None,
    };
    link.call(&boot).await.map(|_| ())
}

fn boot201() -> v201::BootNotificationRequest {
    v201::BootNotificationRequest {
        charging_station: v201::ChargingStation {
            model: "m".into(),
            vendor_name: "v".into(),
            serial_number: None,
            firmware_version: None,
        },
        reason: v201::BootReason::PowerUp,
    }
}

#[test]
fn security_profile_2_tls_with_the_csms_ca_and_basic_auth() {
    let csms = tls_csms("link-tls", false);
    assert!(csms.url().starts_with("wss://"));
    let mut cfg = config(&csms, "CP-TLS", Protocol::Ocpp16, Some("s3cret"));
    cfg.ca_file = Some(testkit::pki_file("keyring.pem"));
    rt().block_on(async {
        let link = Link::connect(&cfg).await.unwrap();
        boot16(&link).await.unwrap();
        link.close().await;
    });
    csms.wait_for("the boot", |m| is(m, "call", "BootNotification"));
    // A CSMS certificate from another CA is refused before anything is sent.
    cfg.ca_file = Some(testkit::pki_file("other-root.pem"));
    let err = rt().block_on(Link::connect(&cfg)).err().unwrap();
    assert!(matches!(err, LinkError::Connection(_)), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    // A CA file that holds no certificate is a configuration error.
    let empty = target_dir().join("ocpp-tests/empty.pem");
    std::fs::write(&empty, "").unwrap();
    cfg.ca_file = Some(empty);
    let err = rt().block_on(Link::connect(&cfg)).err().unwrap();
    assert!(matches!(err, LinkError::Config(_)), "{err}");
    assert_eq!(csms.messages().iter().filter(|m| m["action"] == "BootNotification").count(), 1);
}

#[test]
fn security_profile_3_client_certificates() {
    let csms = tls_csms("link-mtls", true);
    let mut cfg = config(&csms, "CP-MTLS", Protocol::Ocpp201, Some("s3cret"));
    cfg.ca_file = Some(testkit::pki_file("keyring.pem"));
    // Without a client certificate the CSMS ends the handshake.
    let refused = rt().block_on(async {
        match Link::connect(&cfg).await {
            Err(e) => Some(e),
            // TLS 1.3 reports the missing certificate after the handshake: on the first call.
            Ok(link) => link.call(&boot201()).await.err(),
        }
    });
    assert!(refused.is_some());
    cfg.client_cert = Some((testkit::pki_file("client.pem"), testkit::pki_file("client.key")));
    rt().block_on(async {
        let link = Link::connect(&cfg).await.unwrap();
        link.call(&boot201()).await.unwrap();
        link.close().await;
    });
    let boots: Vec<Value> = csms.messages().into_iter().filter(|m| is(m, "call", "BootNotification")).collect();
    assert_eq!(boots.len(), 1, "{boots:?}");
}
