//! `[ecu]` and `[secondary.<id>]` (rota's own): this device's part in
//! multi-ECU system updates. A main ECU lists its secondaries (id, address,
//! the certificate each must present); a secondary says where it listens and
//! which main certificate it trusts. Both name their own TLS identity.

use super::load::{ConfigError, Origins};
use super::sections::Reader;
use rota_bundle::keyfile::{Group, KeyFile, KeyFileError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default time an ECU has to prepare (fetch, verify, write).
pub const DEFAULT_PREPARE_TIMEOUT_SEC: u64 = 3600;
/// Default time an ECU has from its switch to reporting healthy.
pub const DEFAULT_HEALTH_TIMEOUT_SEC: u64 = 900;

/// One secondary of a main ECU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryConfig {
    /// Its ECU id (`[secondary.<id>]`).
    pub id: String,
    /// `address`: where its ECU interface listens (`host:port`).
    pub address: String,
    /// `cert`: the certificate (or CA) it must present.
    pub cert: PathBuf,
}

/// What this ECU is in a system update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EcuRole {
    /// Takes system updates and drives the secondaries.
    Main {
        /// Its secondaries in configuration order.
        secondaries: Vec<SecondaryConfig>,
        /// `proxy-listen`: the caching range proxy's address, if secondaries
        /// fetch through it.
        proxy_listen: Option<SocketAddr>,
        /// `proxy-cache-size`: bytes the proxy keeps.
        proxy_cache_size: u64,
        /// `prepare-timeout-sec`.
        prepare_timeout_sec: u64,
        /// `health-timeout-sec`.
        health_timeout_sec: u64,
    },
    /// Takes commands from its main.
    Secondary {
        /// `listen`: the ECU interface's address.
        listen: SocketAddr,
        /// `main-cert`: the certificate (or CA) the main must present.
        main_cert: PathBuf,
    },
}

/// `[ecu]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcuSection {
    /// `id`: this ECU's id in system manifests.
    pub id: String,
    /// `role` and what it needs.
    pub role: EcuRole,
    /// `cert`: this ECU's TLS certificate.
    pub cert: PathBuf,
    /// `key`: its private key.
    pub key: PathBuf,
    /// `health-check`: run after booting into a new slot during a system
    /// update; exit 0 means healthy.
    pub health_check: Option<PathBuf>,
    /// `reboot-command`, shell-split: how this ECU reboots into a switched
    /// or reverted slot (default `reboot`).
    pub reboot_command: Vec<String>,
    /// Where the ECU keeps its transaction state (`<data-directory>/ecu`).
    pub state_directory: PathBuf,
}

/// Default `proxy-cache-size`.
pub const DEFAULT_PROXY_CACHE_SIZE: u64 = 1 << 30;

fn required(r: &mut Reader<'_>, key: &str, what: &str) -> Result<String, ConfigError> {
    r.string(key)?.ok_or_else(|| r.group_error(format!("Key '{key}' in group '[{}]' is required {what}", r.group.name)))
}

fn socket_addr(r: &Reader<'_>, key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        r.bad(
            r.entry(key).expect("read"),
            format!("Key '{key}' in group '[{}]': '{v}' is not an IP address and port", r.group.name),
        )
    })
}

fn secondary(r: &mut Reader<'_>, id: &str, base: &Path) -> Result<SecondaryConfig, ConfigError> {
    if !rota_bundle::system_manifest::is_ecu_id(id) {
        return Err(r.group_error(format!("Invalid ECU id '{id}' in group '[secondary.{id}]'")));
    }
    let address = required(r, "address", "")?;
    if !address.contains(':') {
        return Err(r.bad(
            r.entry("address").expect("read"),
            format!("Key 'address' in group '[secondary.{id}]': '{address}' has no port"),
        ));
    }
    let cert = required(r, "cert", "")?;
    Ok(SecondaryConfig { id: id.to_string(), address, cert: rota_bundle::hostconfig::resolve(base, &cert) })
}

/// Reads `[ecu]` and the `[secondary.*]` groups; `None` without `[ecu]`.
pub(super) fn ecu_section(
    kf: &KeyFile,
    origins: &Origins,
    base: &Path,
    data_directory: Option<&Path>,
) -> Result<Option<EcuSection>, ConfigError> {
    let secondary_groups: Vec<&Group> = kf.groups.iter().filter(|g| g.name.starts_with("secondary.")).collect();
    let Some(group) = kf.group("ecu") else {
        return match secondary_groups.first() {
            Some(g) => Err(origins.error(KeyFileError::at_group(
                g,
                format!("Group '[{}]' needs an '[ecu]' group with role=main", g.name),
            ))),
            None => Ok(None),
        };
    };
    let mut r = Reader::new(group, origins);
    let id = required(&mut r, "id", "")?;
    if !rota_bundle::system_manifest::is_ecu_id(&id) {
        return Err(r.bad(r.entry("id").expect("read"), format!("Invalid ECU id '{id}' in group '[ecu]'")));
    }
    let role_name = required(&mut r, "role", "(main or secondary)")?;
    let cert =
        r.path("cert", Some(base))?.ok_or_else(|| r.group_error("Key 'cert' in group '[ecu]' is required".into()))?;
    let key =
        r.path("key", Some(base))?.ok_or_else(|| r.group_error("Key 'key' in group '[ecu]' is required".into()))?;
    let health_check = r.path("health-check", Some(base))?;
    let reboot_command = match r.string("reboot-command")? {
        Some(v) => shell_words::split(&v).map_err(|e| {
            r.bad(r.entry("reboot-command").expect("read"), format!("Key 'reboot-command' in group '[ecu]': {e}"))
        })?,
        None => vec!["reboot".to_string()],
    };
    let Some(data_directory) = data_directory else {
        return Err(r.group_error(
            "Group '[ecu]' requires a data-directory in '[system]' (it keeps the transaction state)".into(),
        ));
    };
    let state_directory = data_directory.join("ecu");
    let role = match role_name.as_str() {
        "main" => {
            let proxy_listen = match r.string("proxy-listen")? {
                Some(v) => Some(socket_addr(&r, "proxy-listen", &v)?),
                None => None,
            };
            let proxy_cache_size = r.size("proxy-cache-size")?.unwrap_or(DEFAULT_PROXY_CACHE_SIZE);
            let prepare_timeout_sec = r.uint("prepare-timeout-sec")?.unwrap_or(DEFAULT_PREPARE_TIMEOUT_SEC);
            let health_timeout_sec = r.uint("health-timeout-sec")?.unwrap_or(DEFAULT_HEALTH_TIMEOUT_SEC);
            r.finish()?;
            let mut secondaries: Vec<SecondaryConfig> = Vec::new();
            for g in secondary_groups {
                let mut r = Reader::new(g, origins);
                let s = secondary(&mut r, &g.name["secondary.".len()..], base)?;
                if s.id == id {
                    return Err(r.group_error(format!("Secondary '{}' has the main ECU's own id", s.id)));
                }
                r.finish()?;
                secondaries.push(s);
            }
            EcuRole::Main { secondaries, proxy_listen, proxy_cache_size, prepare_timeout_sec, health_timeout_sec }
        }
        "secondary" => {
            let listen = required(&mut r, "listen", "for role=secondary")?;
            let listen = socket_addr(&r, "listen", &listen)?;
            let main_cert = r.path("main-cert", Some(base))?.ok_or_else(|| {
                r.group_error("Key 'main-cert' in group '[ecu]' is required for role=secondary".into())
            })?;
            r.finish()?;
            if let Some(g) = secondary_groups.first() {
                return Err(origins.error(KeyFileError::at_group(
                    g,
                    format!("Group '[{}]' is for role=main; this ECU is a secondary", g.name),
                )));
            }
            EcuRole::Secondary { listen, main_cert }
        }
        other => {
            return Err(r.bad(
                r.entry("role").expect("read"),
                format!("Key 'role' in group '[ecu]': '{other}' is neither main nor secondary"),
            ));
        }
    };
    Ok(Some(EcuSection { id, role, cert, key, health_check, reboot_command, state_directory }))
}
