//! rota-ocpp's settings: a key file (`--config`, sections `[csms]`,
//! `[station]`, `[update]`) and command-line options, which win over it.
//!
//! ```ini
//! [csms]
//! url=wss://csms.example/ocpp
//! id=CP-0001
//! protocol=ocpp2.0.1
//! password-file=/etc/rota-ocpp/password
//! ca=/etc/rota-ocpp/csms-ca.pem
//! client-cert=/etc/rota-ocpp/station.pem
//! client-key=/etc/rota-ocpp/station.key
//!
//! [station]
//! vendor=Example
//! model=Wallbox 22
//! state-dir=/var/lib/rota-ocpp
//!
//! [update]
//! manufacturer-root=/etc/rota-ocpp/manufacturer-root.pem
//! health-check=/usr/libexec/charger-health
//! reboot-command=systemctl reboot
//! ```

use crate::Protocol;
use crate::link::LinkConfig;
use std::path::PathBuf;
use std::time::Duration;

/// Everything rota-ocpp is told.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach the CSMS.
    pub link: LinkConfig,
    /// `BootNotification`'s vendor.
    pub vendor: String,
    /// `BootNotification`'s model.
    pub model: String,
    /// `BootNotification`'s serial number.
    pub serial: Option<String>,
    /// Where the running request survives reboots (and bundles are downloaded).
    pub state_dir: PathBuf,
    /// CA certificates (PEM) a signed update's `signingCertificate` must chain to.
    pub manufacturer_root: Option<PathBuf>,
    /// A CRL (PEM) of that CA: certificates on it are `RevokedCertificate`.
    pub manufacturer_crl: Option<PathBuf>,
    /// Run after booting the new slot; exit status 0 means healthy.
    pub health_check: Option<String>,
    /// How long the health check may take.
    pub health_timeout: Duration,
    /// Reboots the station (a shell command).
    pub reboot_command: String,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
    /// Largest bundle downloaded to check a detached `signature` over it.
    pub max_download_size: u64,
}

/// A setting that cannot be used, with where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

const USAGE: &str = "usage: rota-ocpp [--config FILE] [--csms URL] [--id CHARGER_ID] \
[--protocol ocpp1.6|ocpp2.0.1] [--state-dir DIR] [--password-file FILE] [--ca FILE] \
[--client-cert FILE --client-key FILE]";

impl Config {
    /// Reads the command line (without the program name).
    pub fn from_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Config, ConfigError> {
        use lexopt::prelude::*;
        let mut parser = lexopt::Parser::from_args(args);
        let mut cli: Vec<(String, String)> = Vec::new();
        let mut file = None;
        let bad = |e: lexopt::Error| ConfigError(format!("{e}\n{USAGE}"));
        while let Some(arg) = parser.next().map_err(bad)? {
            match arg {
                Long("config") => file = Some(PathBuf::from(parser.value().map_err(bad)?)),
                Long("help") => return Err(ConfigError(USAGE.to_string())),
                Long(
                    name @ ("csms" | "id" | "protocol" | "state-dir" | "password-file" | "ca" | "client-cert"
                    | "client-key"),
                ) => {
                    let name = name.to_string();
                    let value = parser.value().map_err(bad)?.string().map_err(bad)?;
                    cli.push((name, value));
                }
                other => return Err(bad(other.unexpected())),
            }
        }
        let text = match &file {
            Some(path) => read_config_file(path)?,
            None => String::new(),
        };
        Config::build(&text, &cli)
    }

    /// Settings from key-file `text` with command-line `overrides` (by option name).
    pub fn build(text: &str, overrides: &[(String, String)]) -> Result<Config, ConfigError> {
        let ini = ini::Ini::load_from_str(text).map_err(|e| ConfigError(format!("config file: {e}")))?;
        let cli = |name: &str| overrides.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let get = |section: &str, key: &str| ini.get_from(Some(section), key).map(str::to_string);
        let setting = |option: &str, section: &str, key: &str| cli(option).or_else(|| get(section, key));
        let required = |option: &str, section: &str, key: &str| {
            setting(option, section, key)
                .ok_or_else(|| ConfigError(format!("no {key} in [{section}] and no --{option}\n{USAGE}")))
        };
        let seconds = |section: &str, key: &str, default: u64| -> Result<Duration, ConfigError> {
            match get(section, key) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => v
                    .parse()
                    .map(Duration::from_secs)
                    .map_err(|_| ConfigError(format!("[{section}] {key}: '{v}' is no number of seconds"))),
            }
        };
        let csms = required("csms", "csms", "url")?;
        if !(csms.starts_with("ws://") || csms.starts_with("wss://")) {
            return Err(ConfigError(format!("CSMS URL '{csms}' is neither ws:// nor wss://")));
        }
        let station_id = required("id", "csms", "id")?;
        let protocol: Protocol = required("protocol", "csms", "protocol")?.parse().map_err(ConfigError)?;
        let password = match (setting("password-file", "csms", "password-file"), get("csms", "password")) {
            (Some(path), _) => {
                let text =
                    std::fs::read_to_string(&path).map_err(|e| ConfigError(format!("password file {path}: {e}")))?;
                Some(text.trim_end_matches(['\n', '\r']).to_string())
            }
            (None, p) => p,
        };
        let client_cert =
            match (setting("client-cert", "csms", "client-cert"), setting("client-key", "csms", "client-key")) {
                (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
                (None, None) => None,
                _ => return Err(ConfigError("client-cert and client-key go together".to_string())),
            };
        let max_download_size = match get("update", "max-download-size") {
            None => 4 << 30,
            Some(v) => {
                v.parse().map_err(|_| ConfigError(format!("[update] max-download-size: '{v}' is no byte count")))?
            }
        };
        Ok(Config {
            link: LinkConfig {
                csms,
                station_id,
                protocol,
                password,
                ca_file: setting("ca", "csms", "ca").map(PathBuf::from),
                client_cert,
                call_timeout: seconds("csms", "call-timeout-sec", 30)?,
            },
            vendor: get("station", "vendor").unwrap_or_else(|| "rota".to_string()),
            model: get("station", "model").unwrap_or_else(|| "rota-ocpp".to_string()),
            serial: get("station", "serial"),
            state_dir: PathBuf::from(required("state-dir", "station", "state-dir")?),
            manufacturer_root: get("update", "manufacturer-root").map(PathBuf::from),
            manufacturer_crl: get("update", "manufacturer-crl").map(PathBuf::from),
            health_check: get("update", "health-check"),
            health_timeout: seconds("update", "health-timeout-sec", 300)?,
            reboot_command: get("update", "reboot-command").unwrap_or_else(|| "systemctl reboot".to_string()),
            reconnect_max: seconds("csms", "reconnect-max-sec", 60)?,
            max_download_size,
        })
    }
}

/// Reads the config file, which must be a regular file (not a link to
/// somewhere else, not a FIFO that would block).
fn read_config_file(path: &std::path::Path) -> Result<String, ConfigError> {
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(ConfigError(format!("config file {} is not a regular file", path.display())));
    }
    std::fs::read_to_string(path).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_file_gives_settings_and_options_win() {
        let text = "[csms]\nurl=ws://127.0.0.1:9000/ocpp\nid=CP-1\nprotocol=ocpp1.6\npassword=pw\n\
                    [station]\nstate-dir=/var/lib/rota-ocpp\nvendor=Example\n[update]\nhealth-check=/bin/true\n";
        let c = Config::build(text, &o(&[("id", "CP-2"), ("protocol", "ocpp2.0.1")])).unwrap();
        assert_eq!(c.link.station_id, "CP-2");
        assert_eq!(c.link.protocol, Protocol::Ocpp201);
        assert_eq!(c.link.password.as_deref(), Some("pw"));
        assert_eq!(c.vendor, "Example");
        assert_eq!(c.model, "rota-ocpp");
        assert_eq!(c.health_check.as_deref(), Some("/bin/true"));
        assert_eq!(c.reboot_command, "systemctl reboot");
        assert_eq!(c.link.call_timeout, Duration::from_secs(30));
    }

    #[test]
    fn missing_and_wrong_settings_are_named() {
        let e = Config::build("", &o(&[("csms", "ws://x"), ("id", "A")])).unwrap_err();
        assert!(e.0.starts_with("no protocol in [csms] and no --protocol"), "{e}");
        let e = Config::build("", &o(&[("csms", "http://x"), ("id", "A"), ("protocol", "ocpp1.6")])).unwrap_err();
        assert_eq!(e.0, "CSMS URL 'http://x' is neither ws:// nor wss://");
        let e = Config::build("", &o(&[("csms", "ws://x"), ("id", "A"), ("protocol", "ocpp3")])).unwrap_err();
        assert_eq!(e.0, "unknown OCPP protocol 'ocpp3' (ocpp1.6 or ocpp2.0.1)");
        let all = o(&[("csms", "ws://x"), ("id", "A"), ("protocol", "ocpp1.6"), ("state-dir", "/s")]);
        let e = Config::build("[csms]\ncall-timeout-sec=soon\n", &all).unwrap_err();
        assert_eq!(e.0, "[csms] call-timeout-sec: 'soon' is no number of seconds");
        let mut half = all.clone();
        half.push(("client-cert".into(), "/c.pem".into()));
        assert_eq!(Config::build("", &half).unwrap_err().0, "client-cert and client-key go together");
    }

    #[test]
    fn the_command_line_is_read_and_a_config_that_is_no_file_is_refused() {
        let args = ["--csms", "ws://h/ocpp", "--id=CP-9", "--protocol", "ocpp1.6", "--state-dir", "/tmp/s"];
        let c = Config::from_args(args.iter().map(Into::into)).unwrap();
        assert_eq!(c.link.csms, "ws://h/ocpp");
        assert_eq!(c.link.station_id, "CP-9");
        let e = Config::from_args(["--bogus"].iter().map(Into::into)).unwrap_err();
        assert!(e.0.contains("--bogus") && e.0.contains("usage:"), "{e}");
        let dir = std::env::temp_dir().join(format!("rota-ocpp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("link.conf");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        let e = Config::from_args(["--config".into(), link.clone().into_os_string()]).unwrap_err();
        assert!(e.0.ends_with("is not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
