//! Multi-ECU system updates: this ECU's part, as `[ecu]` configures it.
//! Every ECU keeps a transaction record for its own slots ([`secondary`]);
//! a secondary serves it to its main over mutually authenticated TLS
//! (`rota-ecu-v1.proto`), a main drives the whole system update
//! ([`main`]) and offers it on D-Bus as `dev.rota.System1`.

pub mod main;
pub mod proxy;
pub mod secondary;
pub mod state;

use crate::config::{EcuRole, EcuSection};
use crate::dbus::Service;
use crate::dbus::installer::Installer;
use crate::dbus::system_update::{self, SystemUpdate};
use std::sync::Arc;
use zbus::object_server::InterfaceRef;

/// Starts this ECU's part in system updates inside the service on `conn`.
/// Errors are configuration errors.
pub async fn start(
    service: Arc<Service>,
    conn: &zbus::Connection,
    installer: InterfaceRef<Installer>,
    ecu: EcuSection,
) -> Result<(), String> {
    let local =
        secondary::Secondary::start(service.clone(), installer, ecu.clone()).await.map_err(|e| e.to_string())?;
    match &ecu.role {
        EcuRole::Secondary { listen, main_cert } => {
            let tls =
                rota_ecu::tls::TlsConfig { cert: ecu.cert.clone(), key: ecu.key.clone(), peer: main_cert.clone() };
            let acceptor = rota_ecu::tls::acceptor(&tls).map_err(|e| e.to_string())?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("ECU interface: cannot listen on {listen}: {e}"))?;
            tracing::info!("ECU interface of '{}' listening on {listen}", ecu.id);
            tokio::spawn(async move {
                let served = rota_ecu::server::serve(
                    listener,
                    acceptor,
                    local,
                    |addr, reason| tracing::warn!("ECU interface: refused {addr}: {reason}"),
                    std::future::pending(),
                )
                .await;
                if let Err(e) = served {
                    tracing::error!("{e}");
                }
            });
        }
        EcuRole::Main { proxy_listen, proxy_cache_size, .. } => {
            let proxy = match proxy_listen {
                Some(listen) => {
                    let http = service.system.config.host_config().http_options(&service.system.header_facts(None));
                    let dir = ecu.state_directory.join("cache");
                    Some(proxy::Proxy::start(*listen, dir, *proxy_cache_size, http).await?)
                }
                None => None,
            };
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let changed = Arc::new(move |r| {
                let _ = tx.send(r);
            });
            let driver = main::Driver::start(service, ecu.clone(), local, proxy, changed).map_err(|e| e.to_string())?;
            let record = driver.record().await;
            conn.object_server()
                .at(rota_dbus::OBJECT_PATH, SystemUpdate::new(driver, record))
                .await
                .map_err(|e| format!("D-Bus: {e}"))?;
            let iref = conn
                .object_server()
                .interface::<_, SystemUpdate>(rota_dbus::OBJECT_PATH)
                .await
                .map_err(|e| format!("D-Bus: {e}"))?;
            tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    system_update::announce(&iref, r).await;
                }
            });
            tracing::info!("System updates of '{}' on dev.rota.System1", ecu.id);
        }
    }
    Ok(())
}
