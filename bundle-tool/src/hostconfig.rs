//! The parts of `system.conf` that bundle commands consult (spec §3.1):
//! keyring, decryption key, signature size limit, allowed formats and
//! streaming TLS settings. `info` and `extract` use a config when one is
//! found; a missing file means built-in defaults, a broken one is an error.

use crate::container::DEFAULT_MAX_SIGNATURE_SIZE;
use crate::error::{Error, Result};
use crate::keyfile::{self, KeyFile};
use crate::manifest::BundleFormat;
use crate::signature::{Keyring, Purpose};
use crate::source::http::HttpOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where RAUC looks for `system.conf`, first existing wins.
pub const SEARCH_PATHS: [&str; 3] = ["/etc/rauc/system.conf", "/run/rauc/system.conf", "/usr/lib/rauc/system.conf"];

/// Settings bundle commands take from `system.conf`.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The file read, if any.
    pub path: Option<PathBuf>,
    /// `[keyring]`.
    pub keyring: Keyring,
    /// `[system] max-bundle-signature-size`.
    pub max_signature_size: u64,
    /// `[system] bundle-formats` (`None`: all).
    pub bundle_formats: Option<Vec<BundleFormat>>,
    /// `[encryption] key`.
    pub decryption_key: Option<PathBuf>,
    /// `[encryption] cert`.
    pub decryption_cert: Option<PathBuf>,
    /// `[streaming] tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// `[streaming] tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `[streaming] tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `[streaming] send-headers`, validated, in order.
    pub send_headers: Vec<String>,
    /// The system variant (`variant-name`, `variant-file` or `variant-dtb`).
    pub variant: Option<String>,
    /// `[streaming]` transfer tuning (rota's own keys).
    pub transfer: Transfer,
}

/// How hard range requests try (`[streaming]` keys of rota's own:
/// `retries`, `retry-pause-ms`, `stall-timeout-sec`, `connect-timeout-sec`,
/// `max-attempts`, `request-timeout-sec`, `min-bytes-per-sec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Attempts after the first failure of a request.
    pub retries: u32,
    /// Pause before the first retry (doubling after that).
    pub retry_pause: Duration,
    /// Longest silence while a response arrives.
    pub stall_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Attempts per request in all, however much each one delivered.
    pub max_attempts: u32,
    /// Longest a request may take, its retries included.
    pub request_timeout: Duration,
    /// Slowest transfer accepted, measured over each stall timeout.
    pub min_speed: u64,
}

impl Default for Transfer {
    fn default() -> Self {
        let h = HttpOptions::default();
        Transfer {
            retries: h.retries,
            retry_pause: h.retry_pause,
            stall_timeout: h.stall_timeout,
            connect_timeout: h.connect_timeout,
            max_attempts: h.max_attempts,
            request_timeout: h.request_timeout,
            min_speed: h.min_speed,
        }
    }
}

/// The `[streaming]` keys of [`Transfer`] and their bounds: the one place
/// both configuration readers take them from.
pub const TRANSFER_KEYS: [(&str, u64, u64); 7] = [
    ("retries", 0, 100),
    ("retry-pause-ms", 0, 600_000),
    ("stall-timeout-sec", 1, 3600),
    ("connect-timeout-sec", 1, 3600),
    ("max-attempts", 1, 1000),
    ("request-timeout-sec", 1, 86_400),
    ("min-bytes-per-sec", 0, 1 << 30),
];

impl Transfer {
    /// Sets the key `key` (one of [`TRANSFER_KEYS`]) from its text.
    pub fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        let (_, min, max) = TRANSFER_KEYS
            .iter()
            .find(|(k, _, _)| *k == key)
            .ok_or_else(|| format!("Unknown key '{key}' in group '[streaming]'"))?;
        let n = keyfile::parse_u64(value)
            .filter(|n| (min..=max).contains(&n))
            .ok_or_else(|| format!("Key '{key}' in group '[streaming]' must be a number from {min} to {max}"))?;
        match key {
            "retries" => self.retries = n as u32,
            "retry-pause-ms" => self.retry_pause = Duration::from_millis(n),
            "stall-timeout-sec" => self.stall_timeout = Duration::from_secs(n),
            "max-attempts" => self.max_attempts = n as u32,
            "request-timeout-sec" => self.request_timeout = Duration::from_secs(n),
            "min-bytes-per-sec" => self.min_speed = n,
            _ => self.connect_timeout = Duration::from_secs(n),
        }
        Ok(())
    }
}

/// What the automatic headers report, as far as it is known.
#[derive(Debug, Clone, Default)]
pub struct HeaderFacts {
    /// System variant.
    pub variant: Option<String>,
    /// `RAUC_SYSTEM_VERSION` from the system-info handler.
    pub system_version: Option<String>,
    /// `RAUC_SYSTEM_SERIAL` from the system-info handler.
    pub serial: Option<String>,
    /// The installation's transaction id (installs only).
    pub transaction_id: Option<String>,
    /// Every `RAUC_HTTP_<NAME>=value` of the system-info handler, as (`NAME`, value).
    pub extra: Vec<(String, String)>,
}

/// Automatic header names RAUC knows (spec §3.4).
pub const AUTOMATIC_HEADERS: [&str; 7] =
    ["boot-id", "machine-id", "system-version", "serial", "variant", "transaction-id", "uptime"];

fn first_line(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// The automatic headers (spec §10.1) as `(header name, value)`: those of
/// `names` whose value is known, in `names` order, then one `RAUC-<NAME>`
/// per system-info `RAUC_HTTP_<NAME>` (`_` becomes `-`).
pub fn automatic_headers(names: &[String], facts: &HeaderFacts) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = names
        .iter()
        .filter_map(|n| {
            let (header, value) = match n.as_str() {
                "boot-id" => ("RAUC-Boot-ID", first_line("/proc/sys/kernel/random/boot_id")),
                "machine-id" => ("RAUC-Machine-ID", first_line("/etc/machine-id")),
                "system-version" => ("RAUC-System-Version", facts.system_version.clone()),
                "serial" => ("RAUC-Serial", facts.serial.clone()),
                "variant" => ("RAUC-Variant", facts.variant.clone()),
                "transaction-id" => ("RAUC-Transaction-ID", facts.transaction_id.clone()),
                "uptime" => (
                    "RAUC-Uptime",
                    first_line("/proc/uptime").and_then(|l| l.split_whitespace().next().map(str::to_string)),
                ),
                _ => return None,
            };
            value.filter(|v| !v.is_empty()).map(|v| (header.to_string(), v))
        })
        .collect();
    headers.extend(facts.extra.iter().map(|(name, v)| (format!("RAUC-{}", name.replace('_', "-")), v.clone())));
    headers
}

/// The variant in a `variant-file`: one trailing newline removed,
/// surrounding blanks trimmed with a warning (spec §3.2).
pub fn read_variant_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Other(format!("Failed to read variant file '{}': {e}", path.display())))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    if text.trim() != text {
        tracing::warn!("Variant file '{}' has surrounding blanks; trimmed", path.display());
    }
    Ok(text.trim().to_string())
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            path: None,
            keyring: Keyring::default(),
            max_signature_size: DEFAULT_MAX_SIGNATURE_SIZE,
            bundle_formats: None,
            decryption_key: None,
            decryption_cert: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            send_headers: Vec::new(),
            variant: None,
            transfer: Transfer::default(),
        }
    }
}

/// Applies one `-C SECTION:KEY=VALUE` override to a parsed key file.
pub fn apply_override(kf: &mut KeyFile, spec: &str) -> Result<()> {
    let (section, key, value) = split_override(spec).map_err(Error::Other)?;
    kf.group_mut(section).set_raw(key, value);
    Ok(())
}

/// `SECTION:KEY=VALUE` in its parts: split at the first `=`, then the part
/// before it at the first `:`, as RAUC does (so the value may hold both).
fn split_override(spec: &str) -> std::result::Result<(&str, &str, &str), String> {
    let Some((target, value)) = spec.split_once('=') else {
        return Err("Error in parsing override: Missing '='".to_string());
    };
    let Some((section, key)) = target.split_once(':') else {
        return Err("Error in parsing override: Missing ':'".to_string());
    };
    if section.is_empty() || key.is_empty() {
        return Err(format!("Error in parsing override: {FORMAT_HINT}"));
    }
    Ok((section, key, value))
}

const FORMAT_HINT: &str = "you must specify it in format SECTION:KEY=VALUE";

/// Checks a `-C` occurrence as the command line is parsed (`None`: `-C`
/// without a value).
pub fn check_override(spec: Option<&str>) -> std::result::Result<(), String> {
    match spec {
        None => Err(format!("Error in parsing override: {FORMAT_HINT}")),
        Some(s) => split_override(s).map(|_| ()),
    }
}

/// Parses `bundle-formats`: a fixed list, or only `+fmt`/`-fmt` changes to the default.
pub fn parse_bundle_formats(value: &str) -> Result<Vec<BundleFormat>> {
    let all = [BundleFormat::Plain, BundleFormat::Verity, BundleFormat::Crypt];
    let words: Vec<&str> = value.split_whitespace().collect();
    let modifiers = words.iter().filter(|w| w.starts_with(['+', '-'])).count();
    if modifiers != 0 && modifiers != words.len() {
        return Err(Error::Other(format!(
            "Invalid bundle-formats '{value}': use either a list of formats or only +/- modifiers"
        )));
    }
    let parse = |w: &str| {
        BundleFormat::parse(w).ok_or_else(|| Error::Other(format!("Invalid bundle format '{w}' in bundle-formats")))
    };
    let mut set: Vec<BundleFormat> = if modifiers == 0 { Vec::new() } else { all.to_vec() };
    for w in words {
        if let Some(f) = w.strip_prefix('+') {
            let f = parse(f)?;
            if !set.contains(&f) {
                set.push(f);
            }
        } else if let Some(f) = w.strip_prefix('-') {
            let f = parse(f)?;
            set.retain(|x| *x != f);
        } else {
            let f = parse(w)?;
            if !set.contains(&f) {
                set.push(f);
            }
        }
    }
    if set.is_empty() {
        return Err(Error::Other(format!("Invalid bundle-formats '{value}': no format left")));
    }
    Ok(set)
}

/// Resolves a configured path against the config file's directory, unless
/// it is absolute or a PKCS#11 URI (spec §3.1).
pub fn resolve(base: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() || value.starts_with("pkcs11:") { p.to_path_buf() } else { base.join(p) }
}

impl HostConfig {
    /// HTTP options from this configuration: its TLS files and transfer
    /// tuning, and the automatic headers `facts` allow.
    pub fn http_options(&self, facts: &HeaderFacts) -> HttpOptions {
        HttpOptions {
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            info_headers: automatic_headers(&self.send_headers, facts),
            retries: self.transfer.retries,
            retry_pause: self.transfer.retry_pause,
            stall_timeout: self.transfer.stall_timeout,
            connect_timeout: self.transfer.connect_timeout,
            max_attempts: self.transfer.max_attempts,
            request_timeout: self.transfer.request_timeout,
            min_speed: self.transfer.min_speed,
            ..HttpOptions::default()
        }
    }

    /// Loads `explicit` (which must exist) or the first file of
    /// [`SEARCH_PATHS`]; then applies `-C` overrides.
    pub fn load(explicit: Option<&Path>, overrides: &[String]) -> Result<HostConfig> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => SEARCH_PATHS.iter().map(PathBuf::from).find(|p| p.exists()),
        };
        let mut kf = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::Other(format!("Failed to load system config '{}': {e}", p.display())))?;
                KeyFile::parse(&text).map_err(|e| {
                    Error::Other(format!(
                        "Failed to load system config '{}': line {}: {e}",
                        p.display(),
                        e.line.unwrap_or(0)
                    ))
                })?
            }
            None => KeyFile::default(),
        };
        for o in overrides {
            apply_override(&mut kf, o)?;
        }
        let base = path.as_deref().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
        let mut c = HostConfig { path: path.clone(), ..HostConfig::default() };
        let get = |g: &str, k: &str| -> Result<Option<String>> {
            match kf.group(g).and_then(|g| g.entry(k)) {
                Some(e) => keyfile::unescape_string(&e.raw).map(Some).map_err(Error::Other),
                None => Ok(None),
            }
        };
        let get_bool = |g: &str, k: &str| -> Result<bool> {
            match get(g, k)? {
                Some(v) => keyfile::parse_bool(&v)
                    .ok_or_else(|| Error::Other(format!("Invalid boolean '{v}' for key '{k}' in group '[{g}]'"))),
                None => Ok(false),
            }
        };
        c.keyring.path = get("keyring", "path")?.map(|v| resolve(&base, &v));
        c.keyring.directory = get("keyring", "directory")?.map(|v| resolve(&base, &v));
        c.keyring.check_crl = get_bool("keyring", "check-crl")?;
        c.keyring.allow_partial_chain = get_bool("keyring", "allow-partial-chain")?;
        c.keyring.use_bundle_signing_time = get_bool("keyring", "use-bundle-signing-time")?;
        c.keyring.check_purpose = get("keyring", "check-purpose")?.map(|p| Purpose::parse(&p)).transpose()?;
        if let Some(e) = kf.group("keyring").and_then(|g| g.entry("allowed-signer-cns")) {
            c.keyring.allowed_signer_cns = keyfile::parse_list(&e.raw).map_err(Error::Other)?;
        }
        if let Some(v) = get("system", "max-bundle-signature-size")? {
            c.max_signature_size = keyfile::parse_u64(&v)
                .filter(|n| *n > 0)
                .ok_or_else(|| Error::Other(format!("Invalid max-bundle-signature-size '{v}'")))?;
        }
        c.bundle_formats = get("system", "bundle-formats")?.map(|v| parse_bundle_formats(&v)).transpose()?;
        c.decryption_key = get("encryption", "key")?.map(|v| resolve(&base, &v));
        c.decryption_cert = get("encryption", "cert")?.map(|v| resolve(&base, &v));
        c.tls_ca = get("streaming", "tls-ca")?.map(PathBuf::from);
        c.tls_cert = get("streaming", "tls-cert")?.map(PathBuf::from);
        c.tls_key = get("streaming", "tls-key")?.map(PathBuf::from);
        if let Some(e) = kf.group("streaming").and_then(|g| g.entry("send-headers")) {
            for name in keyfile::parse_list(&e.raw).map_err(Error::Other)? {
                if !AUTOMATIC_HEADERS.contains(&name.as_str()) {
                    return Err(Error::Other(format!("Automatic HTTP header '{name}' not supported")));
                }
                c.send_headers.push(name);
            }
        }
        for (key, _, _) in TRANSFER_KEYS {
            if let Some(v) = get("streaming", key)? {
                c.transfer.set(key, &v).map_err(Error::Other)?;
            }
        }
        c.variant = match (
            get("system", "variant-name")?,
            get("system", "variant-file")?,
            get_bool("system", "variant-dtb")?,
        ) {
            (Some(name), _, _) => Some(name),
            (None, Some(file), _) => Some(read_variant_file(Path::new(&file))?),
            (None, None, true) => first_line("/sys/firmware/devicetree/base/compatible")
                .map(|c| c.split('\0').next().unwrap_or_default().to_string()),
            _ => None,
        };
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_errors() {
        let mut kf = KeyFile::default();
        apply_override(&mut kf, "slot.rootfs.0:device=/dev/sda3").unwrap();
        assert_eq!(kf.group("slot.rootfs.0").unwrap().entry("device").unwrap().raw, "/dev/sda3");
        assert_eq!(apply_override(&mut kf, "a:b").unwrap_err().to_string(), "Error in parsing override: Missing '='");
        assert_eq!(apply_override(&mut kf, "ab=c").unwrap_err().to_string(), "Error in parsing override: Missing ':'");
    }

    #[test]
    fn bundle_formats() {
        use BundleFormat::*;
        assert_eq!(parse_bundle_formats("plain verity").unwrap(), vec![Plain, Verity]);
        assert_eq!(parse_bundle_formats("-plain").unwrap(), vec![Verity, Crypt]);
        assert!(parse_bundle_formats("verity -plain").is_err());
        assert!(parse_bundle_formats("-plain -verity -crypt").is_err());
    }

    #[test]
    fn send_headers_are_validated_and_filled() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("system.conf");
        std::fs::write(
            &conf,
            "[system]\nvariant-name=v7\n[streaming]\nsend-headers=uptime;variant;system-version;boot-id\n",
        )
        .unwrap();
        let c = HostConfig::load(Some(&conf), &[]).unwrap();
        let facts = HeaderFacts { variant: c.variant.clone(), ..Default::default() };
        let h = automatic_headers(&c.send_headers, &facts);
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["RAUC-Uptime", "RAUC-Variant", "RAUC-Boot-ID"]);
        assert_eq!(h[1].1, "v7");
        // System-info values fill their headers; RAUC_HTTP_* ones always follow.
        let facts = HeaderFacts {
            system_version: Some("2024.08-1".into()),
            extra: vec![("MY_INFO".into(), "abc".into())],
            ..facts
        };
        let h = automatic_headers(&c.send_headers, &facts);
        assert_eq!(h[2], ("RAUC-System-Version".to_string(), "2024.08-1".to_string()));
        assert_eq!(h.last().unwrap(), &("RAUC-MY-INFO".to_string(), "abc".to_string()));
        std::fs::write(&conf, "[streaming]\nsend-headers=boot-id;shoe-size\n").unwrap();
        let e = HostConfig::load(Some(&conf), &[]).unwrap_err().to_string();
        assert_eq!(e, "Automatic HTTP header 'shoe-size' not supported");
    }

    #[test]
    fn transfer_tuning_is_read_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("system.conf");
        std::fs::write(&conf, "[streaming]\nretries=2\nretry-pause-ms=50\nstall-timeout-sec=3\n").unwrap();
        let c = HostConfig::load(Some(&conf), &[]).unwrap();
        let h = c.http_options(&HeaderFacts::default());
        assert_eq!((h.retries, h.retry_pause, h.stall_timeout), (2, Duration::from_millis(50), Duration::from_secs(3)));
        std::fs::write(&conf, "[streaming]\nstall-timeout-sec=0\n").unwrap();
        let e = HostConfig::load(Some(&conf), &[]).unwrap_err().to_string();
        assert_eq!(e, "Key 'stall-timeout-sec' in group '[streaming]' must be a number from 1 to 3600");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("system.conf");
        std::fs::write(&conf, "[system]\ncompatible=x\nbootloader=noop\n[keyring]\npath=ca.pem\ncheck-crl=true\n[encryption]\nkey=/abs/key.pem\n").unwrap();
        let c = HostConfig::load(Some(&conf), &["keyring:allow-partial-chain=true".to_string()]).unwrap();
        assert_eq!(c.keyring.path.as_deref(), Some(dir.path().join("ca.pem").as_path()));
        assert!(c.keyring.check_crl && c.keyring.allow_partial_chain);
        assert_eq!(c.decryption_key.as_deref(), Some(Path::new("/abs/key.pem")));
    }
}
