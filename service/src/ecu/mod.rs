//! Multi-ECU system updates: this ECU's part, as `[ecu]` configures it. A
//! secondary serves the ECU interface (`rota-ecu-v1.proto`) to its main
//! over mutually authenticated TLS.

pub mod secondary;
pub mod state;

use crate::config::{EcuRole, EcuSection};
use crate::dbus::Service;
use crate::dbus::installer::Installer;
use std::sync::Arc;
use zbus::object_server::InterfaceRef;

/// Starts this ECU's part in system updates inside the service: a
/// secondary listens for its main. Errors are configuration errors.
pub async fn start(service: Arc<Service>, installer: InterfaceRef<Installer>, ecu: EcuSection) -> Result<(), String> {
    let EcuRole::Secondary { listen, main_cert } = &ecu.role else {
        return Ok(());
    };
    let tls = rota_ecu::tls::TlsConfig { cert: ecu.cert.clone(), key: ecu.key.clone(), peer: main_cert.clone() };
    let acceptor = rota_ecu::tls::acceptor(&tls).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("ECU interface: cannot listen on {listen}: {e}"))?;
    let secondary = secondary::Secondary::start(service, installer, ecu.clone()).await.map_err(|e| e.to_string())?;
    tracing::info!("ECU interface of '{}' listening on {listen}", ecu.id);
    tokio::spawn(async move {
        let served = rota_ecu::server::serve(
            listener,
            acceptor,
            secondary,
            |addr, reason| tracing::warn!("ECU interface: refused {addr}: {reason}"),
            std::future::pending(),
        )
        .await;
        if let Err(e) = served {
            tracing::error!("{e}");
        }
    });
    Ok(())
}
