//! Interpreting the merged key file: every section and key of spec §3, strict
//! about unknown keys and groups.

use super::load::{ConfigError, Origins};
use super::slots::parse_slots;
use super::*;
use rota_bundle::container::DEFAULT_MAX_SIGNATURE_SIZE;
use rota_bundle::hostconfig::{AUTOMATIC_HEADERS, parse_bundle_formats, resolve};
use rota_bundle::keyfile::{Entry, Group, GroupReader, KeyFile, KeyFileError, parse_size};
use rota_bundle::signature::Purpose;
use std::path::Path;

/// Default `max-bundle-download-size`.
pub const DEFAULT_MAX_DOWNLOAD_SIZE: u64 = 8 * 1024 * 1024;

const GLOBAL_GROUPS: [&str; 10] =
    ["system", "keyring", "streaming", "polling", "encryption", "casync", "tree", "autoinstall", "handlers", "ecu"];

/// Helpers around a [`GroupReader`] that produce config errors.
pub(super) struct Reader<'a> {
    pub(super) inner: GroupReader<'a>,
    pub(super) group: &'a Group,
    origins: &'a Origins,
}

impl<'a> Reader<'a> {
    pub(super) fn new(group: &'a Group, origins: &'a Origins) -> Self {
        Reader { inner: GroupReader::new(group), group, origins }
    }

    pub(super) fn err(&self, e: KeyFileError) -> ConfigError {
        self.origins.error(e)
    }

    /// An error about `entry`.
    pub(super) fn bad(&self, entry: &Entry, message: String) -> ConfigError {
        self.err(KeyFileError::at_entry(entry, message))
    }

    /// An error about the whole group (e.g. a missing required key).
    pub(super) fn group_error(&self, message: String) -> ConfigError {
        self.err(KeyFileError::at_group(self.group, message))
    }

    pub(super) fn string(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        self.inner.string(key).map_err(|e| self.origins.error(e))
    }

    pub(super) fn list(&mut self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        self.inner.list(key).map_err(|e| self.origins.error(e))
    }

    pub(super) fn boolean(&mut self, key: &str, default: bool) -> Result<bool, ConfigError> {
        Ok(self.inner.boolean(key).map_err(|e| self.origins.error(e))?.unwrap_or(default))
    }

    pub(super) fn uint(&mut self, key: &str) -> Result<Option<u64>, ConfigError> {
        self.inner.uint(key).map_err(|e| self.origins.error(e))
    }

    /// The entry of `key` without consuming it (for error positions).
    pub(super) fn entry(&self, key: &str) -> Option<&'a Entry> {
        self.group.entry(key)
    }

    /// A size with optional K/M/G/T suffix.
    pub(super) fn size(&mut self, key: &str) -> Result<Option<u64>, ConfigError> {
        let Some(v) = self.string(key)? else {
            return Ok(None);
        };
        let e = self.entry(key).expect("just read");
        parse_size(&v)
            .map(Some)
            .ok_or_else(|| self.bad(e, format!("Key '{key}' in group '[{}]': invalid size '{v}'", self.group.name)))
    }

    /// A path, resolved against the config directory when `base` is given.
    pub(super) fn path(&mut self, key: &str, base: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.string(key)?.map(|v| match base {
            Some(b) => resolve(b, &v),
            None => PathBuf::from(v),
        }))
    }

    /// Rejects every key not consumed.
    pub(super) fn finish(self) -> Result<(), ConfigError> {
        let origins = self.origins;
        self.inner.finish().map_err(|e| origins.error(e))
    }
}

fn group_of<'a>(kf: &'a KeyFile, name: &str, empty: &'a Group) -> &'a Group {
    kf.group(name).unwrap_or(empty)
}

fn system_section(r: &mut Reader<'_>, base: &Path, has_slots_group: bool) -> Result<SystemSection, ConfigError> {
    let exists = r.group.line > 0 || !r.group.entries.is_empty();
    let compatible = r.string("compatible")?;
    let bootloader_raw = r.inner.string_or_empty("bootloader").map_err(|e| r.err(e))?;
    let compatible = match compatible {
        Some(c) => c,
        None if exists => return Err(r.group_error("System compatible string is not set".into())),
        None if has_slots_group => return Err(ConfigError::plain("System compatible string is not set")),
        None => return Err(ConfigError::plain("Missing group '[system]'")),
    };
    let bootloader = match bootloader_raw.as_deref() {
        None | Some("") => return Err(r.group_error("No bootloader selected in system config".into())),
        Some(b) => BootloaderKind::parse(b).ok_or_else(|| {
            r.bad(
                r.entry("bootloader").expect("read"),
                format!("Unsupported bootloader '{b}' selected in system config"),
            )
        })?,
    };
    let min_bundle_version = r.string("min-bundle-version")?;
    if let Some(v) = &min_bundle_version
        && rota_bundle::semver::SemVer::parse(v).is_none()
    {
        return Err(r.bad(
            r.entry("min-bundle-version").expect("read"),
            format!("Key 'min-bundle-version' in group '[system]': '{v}' is not a semantic version"),
        ));
    }
    let bundle_formats = match r.string("bundle-formats")? {
        Some(v) => {
            Some(parse_bundle_formats(&v).map_err(|e| r.bad(r.entry("bundle-formats").expect("read"), e.to_string()))?)
        }
        None => None,
    };
    let mount_prefix = r.path("mountprefix", None)?.unwrap_or_else(|| PathBuf::from("/mnt/rauc/"));
    let data_directory = r.path("data-directory", Some(base))?;
    let status = match r.string("statusfile")? {
        Some(v) if v == "per-slot" => {
            if data_directory.is_some() {
                return Err(r.bad(
                    r.entry("statusfile").expect("read"),
                    "Key 'statusfile' in group '[system]': 'per-slot' cannot be combined with 'data-directory'".into(),
                ));
            }
            StatusMode::PerSlot
        }
        Some(v) => StatusMode::Central(resolve(base, &v)),
        None => match &data_directory {
            Some(d) => StatusMode::Central(d.join("central.raucs")),
            None => StatusMode::PerSlot,
        },
    };
    let activate_installed = r.boolean("activate-installed", true)?;
    let positive = |r: &mut Reader<'_>, key: &str, default: u64| -> Result<u64, ConfigError> {
        match r.uint(key)? {
            Some(0) => Err(
                r.bad(r.entry(key).expect("read"), format!("Key '{key}' in group '[system]' must be greater than 0"))
            ),
            Some(n) => Ok(n),
            None => Ok(default),
        }
    };
    let max_bundle_download_size = positive(r, "max-bundle-download-size", DEFAULT_MAX_DOWNLOAD_SIZE)?;
    let max_bundle_signature_size = positive(r, "max-bundle-signature-size", DEFAULT_MAX_SIGNATURE_SIZE)?;
    let name = r.string("variant-name")?;
    let file = r.path("variant-file", None)?;
    let dtb = r.boolean("variant-dtb", false)?;
    let variant = match (name, file, dtb) {
        (None, None, false) => VariantSource::None,
        (Some(n), None, false) => VariantSource::Name(n),
        (None, Some(f), false) => VariantSource::File(f),
        (None, None, true) => VariantSource::Dtb,
        _ => {
            let e = ["variant-name", "variant-file", "variant-dtb"]
                .iter()
                .filter_map(|k| r.entry(k))
                .max_by_key(|e| (e.origin, e.line))
                .expect("two present");
            return Err(r.bad(
                e,
                format!(
                    "Key '{}' in group '[system]': only one of variant-name, variant-file and variant-dtb may be set",
                    e.key
                ),
            ));
        }
    };
    let attempts = |r: &mut Reader<'_>, key: &str| -> Result<u32, ConfigError> {
        let Some(n) = r.uint(key)? else {
            return Ok(0);
        };
        let e = r.entry(key).expect("read");
        if !matches!(bootloader, BootloaderKind::Uboot | BootloaderKind::Barebox) {
            return Err(r.bad(
                e,
                format!("Key '{key}' in group '[system]' is only supported for the uboot and barebox bootloaders"),
            ));
        }
        u32::try_from(n).map_err(|_| r.bad(e, format!("Key '{key}' in group '[system]': value {n} is too large")))
    };
    let boot_attempts = attempts(r, "boot-attempts")?;
    let boot_attempts_primary = attempts(r, "boot-attempts-primary")?;
    let perform_pre_check = r.boolean("perform-pre-check", false)?;
    let prevent_late_fallback = r.boolean("prevent-late-fallback", false)?;
    // Keys of other bootloaders stay unconsumed and fail as invalid keys.
    let mut grubenv = PathBuf::from("/boot/grub/grubenv");
    let mut barebox_statename = None;
    let mut barebox_dtbpath = None;
    let mut efi_use_bootnext = true;
    match bootloader {
        BootloaderKind::Grub => {
            if let Some(p) = r.path("grubenv", Some(base))? {
                grubenv = p;
            }
        }
        BootloaderKind::Barebox => {
            barebox_statename = r.string("barebox-statename")?;
            barebox_dtbpath = r.path("barebox-dtbpath", None)?;
        }
        BootloaderKind::Efi => efi_use_bootnext = r.boolean("efi-use-bootnext", true)?,
        _ => {}
    }
    Ok(SystemSection {
        compatible,
        bootloader,
        min_bundle_version,
        bundle_formats,
        mount_prefix,
        data_directory,
        status,
        activate_installed,
        max_bundle_download_size,
        max_bundle_signature_size,
        variant,
        boot_attempts,
        boot_attempts_primary,
        perform_pre_check,
        prevent_late_fallback,
        grubenv,
        barebox_statename,
        barebox_dtbpath,
        efi_use_bootnext,
    })
}

fn keyring_section(r: &mut Reader<'_>, base: &Path) -> Result<Keyring, ConfigError> {
    let mut k = Keyring {
        path: r.path("path", Some(base))?,
        directory: r.path("directory", Some(base))?,
        check_crl: r.boolean("check-crl", false)?,
        allow_partial_chain: r.boolean("allow-partial-chain", false)?,
        use_bundle_signing_time: r.boolean("use-bundle-signing-time", false)?,
        ..Keyring::default()
    };
    if let Some(p) = r.string("check-purpose")? {
        k.check_purpose =
            Some(Purpose::parse(&p).map_err(|e| r.bad(r.entry("check-purpose").expect("read"), e.to_string()))?);
    }
    k.allowed_signer_cns = r.list("allowed-signer-cns")?.unwrap_or_default();
    Ok(k)
}

fn streaming_section(r: &mut Reader<'_>) -> Result<StreamingSection, ConfigError> {
    let mut s = StreamingSection {
        sandbox_user: r.string("sandbox-user")?,
        tls_cert: r.path("tls-cert", None)?,
        tls_key: r.path("tls-key", None)?,
        tls_ca: r.path("tls-ca", None)?,
        send_headers: Vec::new(),
        transfer: Default::default(),
    };
    for (key, _, _) in rota_bundle::hostconfig::TRANSFER_KEYS {
        if let Some(v) = r.string(key)? {
            let e = r.entry(key).expect("read");
            s.transfer.set(key, &v).map_err(|m| r.bad(e, m))?;
        }
    }
    for name in r.list("send-headers")?.unwrap_or_default() {
        if !AUTOMATIC_HEADERS.contains(&name.as_str()) {
            return Err(
                r.bad(r.entry("send-headers").expect("read"), format!("Automatic HTTP header '{name}' not supported"))
            );
        }
        s.send_headers.push(name);
    }
    Ok(s)
}

fn tree_section(r: &mut Reader<'_>, has_data_directory: bool) -> Result<TreeSection, ConfigError> {
    let persist = r.list("persist")?.unwrap_or_default();
    for p in &persist {
        let safe = p.starts_with('/') && p.len() > 1 && !p.split('/').any(|c| c == "." || c == "..");
        if !safe {
            let e = r.entry("persist").expect("read");
            return Err(r.bad(e, format!("Key 'persist' in group '[tree]': '{p}' is not an absolute path below '/'")));
        }
    }
    let cache_size = r.size("cache-size")?.unwrap_or(0);
    if cache_size > 0 && !has_data_directory {
        let e = r.entry("cache-size").expect("read");
        return Err(r.bad(e, "Key 'cache-size' in group '[tree]' requires a data-directory".into()));
    }
    Ok(TreeSection { persist, cache_size })
}

fn criteria(r: &mut Reader<'_>, key: &str, allowed: &[&str]) -> Result<Vec<String>, ConfigError> {
    let list = r.list(key)?.unwrap_or_default();
    for c in &list {
        if !allowed.contains(&c.as_str()) {
            return Err(r.bad(
                r.entry(key).expect("read"),
                format!("Key '{key}' in group '[polling]': unknown criterion '{c}'"),
            ));
        }
    }
    Ok(list)
}

fn polling_section(r: &mut Reader<'_>) -> Result<PollingSection, ConfigError> {
    let url = r.string("url")?.ok_or_else(|| r.group_error("Key 'url' in group '[polling]' is required".into()))?;
    if !url.starts_with("http") {
        return Err(r.bad(
            r.entry("url").expect("read"),
            format!("Key 'url' in group '[polling]': '{url}' is not an http(s) URL"),
        ));
    }
    let interval_sec = r.uint("interval-sec")?.unwrap_or(86400);
    if interval_sec < 60 {
        return Err(r.bad(
            r.entry("interval-sec").expect("read"),
            "Key 'interval-sec' in group '[polling]' must be at least 60".into(),
        ));
    }
    let max_interval_sec = r.uint("max-interval-sec")?.unwrap_or(4 * interval_sec);
    if max_interval_sec <= interval_sec {
        let e = r.entry("max-interval-sec").expect("only an explicit value can be too small");
        return Err(r.bad(e, "Key 'max-interval-sec' in group '[polling]' must be greater than 'interval-sec'".into()));
    }
    let inhibit_files = r.list("inhibit-files")?.unwrap_or_default().into_iter().map(PathBuf::from).collect();
    let mut candidate_criteria = criteria(r, "candidate-criteria", &["higher-semver", "different-version"])?;
    if candidate_criteria.is_empty() {
        candidate_criteria.push("higher-semver".into());
    }
    let install_criteria = criteria(r, "install-criteria", &["always", "higher-semver", "different-version"])?;
    let reboot_criteria = criteria(r, "reboot-criteria", &["updated-slots", "updated-artifacts", "failed-update"])?;
    let reboot_cmd = match r.string("reboot-cmd")? {
        Some(c) => shell_words::split(&c).map_err(|e| {
            r.bad(r.entry("reboot-cmd").expect("read"), format!("Key 'reboot-cmd' in group '[polling]': {e}"))
        })?,
        None => vec!["reboot".to_string()],
    };
    Ok(PollingSection {
        url,
        interval_sec,
        max_interval_sec,
        inhibit_files,
        candidate_criteria,
        install_criteria,
        reboot_criteria,
        reboot_cmd,
    })
}

fn casync_section(r: &mut Reader<'_>) -> Result<CasyncSection, ConfigError> {
    Ok(CasyncSection {
        storepath: r.string("storepath")?,
        tmppath: r.path("tmppath", None)?,
        install_args: match r.string("install-args")? {
            Some(a) => shell_words::split(&a).map_err(|e| {
                r.bad(r.entry("install-args").expect("read"), format!("Key 'install-args' in group '[casync]': {e}"))
            })?,
            None => Vec::new(),
        },
        use_desync: r.boolean("use-desync", false)?,
    })
}

fn handlers_section(
    r: &mut Reader<'_>,
    base: &Path,
    bootloader: BootloaderKind,
) -> Result<HandlersSection, ConfigError> {
    let h = HandlersSection {
        system_info: r.path("system-info", Some(base))?,
        pre_install: r.path("pre-install", Some(base))?,
        post_install: r.path("post-install", Some(base))?,
        bootloader_custom_backend: if bootloader == BootloaderKind::Custom {
            r.path("bootloader-custom-backend", Some(base))?
        } else {
            None
        },
    };
    Ok(h)
}

fn artifacts_section(
    r: &mut Reader<'_>,
    name: &str,
    base: &Path,
    slot_classes: &[&str],
) -> Result<ArtifactRepoConfig, ConfigError> {
    if name.is_empty() || name.contains('.') {
        return Err(r.group_error(format!("Invalid artifacts repository name format: {}", r.group.name)));
    }
    if slot_classes.contains(&name) {
        return Err(r.group_error(format!("Repository name '{name}' is already used as a slot class name")));
    }
    // Whether the directory exists is checked where it is used (status,
    // service start, installation), as RAUC does.
    let path =
        r.path("path", Some(base))?.ok_or_else(|| r.group_error(format!("Missing path for repository '{name}'")))?;
    let repo_type = match r.string("type")?.as_deref() {
        Some("files") => ArtifactRepoType::Files,
        Some("trees") => ArtifactRepoType::Trees,
        Some(other) => {
            return Err(
                r.bad(r.entry("type").expect("read"), format!("Unsupported artifacts repository type '{other}'"))
            );
        }
        None => return Err(r.group_error(format!("Missing type for repository '{name}'"))),
    };
    let description = r.string("description")?;
    if let Some(e) = r.entry("parent-class") {
        return Err(r.bad(
            e,
            format!("Key 'parent-class' in group '[{}]': parent classes are not supported yet", r.group.name),
        ));
    }
    Ok(ArtifactRepoConfig { name: name.to_string(), path, repo_type, description })
}

fn log_section(r: &mut Reader<'_>, name: &str, data_directory: Option<&Path>) -> Result<LogConfig, ConfigError> {
    let raw = r.string("filename")?.ok_or_else(|| r.group_error(format!("Missing filename for logger {name}")))?;
    let filename = if Path::new(&raw).is_absolute() {
        PathBuf::from(&raw)
    } else {
        match data_directory {
            Some(d) => d.join(&raw),
            None => {
                return Err(r.bad(
                    r.entry("filename").expect("read"),
                    format!("Relative filename '{raw}' for logger {name} requires a data-directory"),
                ));
            }
        }
    };
    let format = match r.string("format")?.as_deref() {
        None | Some("readable") => LogFormat::Readable,
        Some("short") => LogFormat::Short,
        Some("json") => LogFormat::Json,
        Some("json-pretty") => LogFormat::JsonPretty,
        Some(f) => return Err(r.bad(r.entry("format").expect("read"), format!("Unknown log format '{f}'"))),
    };
    let mut events = r.list("events")?.unwrap_or_default();
    const KNOWN: [&str; 6] = ["all", "install", "boot", "mark", "service", "writeslot"];
    if let Some(bad) = events.iter().find(|e| !KNOWN.contains(&e.as_str())) {
        return Err(r.bad(r.entry("events").expect("read"), format!("Unsupported event type '{bad}'")));
    }
    if events.iter().any(|e| e == "all") {
        if events.len() > 1 {
            return Err(
                r.bad(r.entry("events").expect("read"), "Event type 'all' cannot be combined with others".into())
            );
        }
        events.clear();
    }
    let max_size = r.size("max-size")?.unwrap_or(0);
    let max_files = r.uint("max-files")?.unwrap_or(10);
    if !(1..=1000).contains(&max_files) {
        return Err(r.bad(r.entry("max-files").expect("read"), "Key 'max-files' must be between 1 and 1000".into()));
    }
    Ok(LogConfig { name: name.to_string(), filename, format, events, max_size, max_files: max_files as u32 })
}

/// Builds the configuration from the merged key file.
pub(super) fn interpret(kf: &KeyFile, origins: &Origins, base: &Path) -> Result<SystemConfig, ConfigError> {
    for g in &kf.groups {
        let known = GLOBAL_GROUPS.contains(&g.name.as_str())
            || g.name.starts_with("slot.")
            || g.name.starts_with("artifacts.")
            || g.name.starts_with("log.")
            || g.name.starts_with("secondary.");
        if !known {
            return Err(origins.error(KeyFileError::at_group(g, format!("Invalid group '[{}]'", g.name))));
        }
    }
    let empty = Group::new("");
    let has_slots = kf.groups.iter().any(|g| g.name.starts_with("slot."));
    let system_group = kf.group("system").cloned().unwrap_or_else(|| Group::new("system"));
    let mut r = Reader::new(&system_group, origins);
    let system = system_section(&mut r, base, has_slots).map_err(|mut e| {
        if e.origin.is_none() {
            e.origin = origins.main();
        }
        e
    })?;
    r.finish()?;

    let mut r = Reader::new(group_of(kf, "keyring", &empty), origins);
    let keyring = keyring_section(&mut r, base)?;
    r.finish()?;
    let mut r = Reader::new(group_of(kf, "streaming", &empty), origins);
    let streaming = streaming_section(&mut r)?;
    r.finish()?;
    let polling = match kf.group("polling") {
        Some(g) => {
            let mut r = Reader::new(g, origins);
            let p = polling_section(&mut r)?;
            r.finish()?;
            Some(p)
        }
        None => None,
    };
    let mut r = Reader::new(group_of(kf, "encryption", &empty), origins);
    let encryption_key = r.path("key", Some(base))?;
    let encryption_cert = r.path("cert", Some(base))?;
    r.finish()?;
    let mut r = Reader::new(group_of(kf, "casync", &empty), origins);
    let casync = casync_section(&mut r)?;
    r.finish()?;
    let mut r = Reader::new(group_of(kf, "tree", &empty), origins);
    let tree = tree_section(&mut r, system.data_directory.is_some())?;
    r.finish()?;
    let mut r = Reader::new(group_of(kf, "autoinstall", &empty), origins);
    let autoinstall = r.path("path", Some(base))?;
    r.finish()?;
    let handlers_group = kf.group("handlers");
    let mut r = Reader::new(handlers_group.unwrap_or(&empty), origins);
    let handlers = handlers_section(&mut r, base, system.bootloader)?;
    r.finish()?;
    if system.bootloader == BootloaderKind::Custom && handlers.bootloader_custom_backend.is_none() {
        let g = handlers_group.unwrap_or(&system_group);
        return Err(origins.error(KeyFileError::at_group(
            g,
            "Key 'bootloader-custom-backend' in group '[handlers]' is required for bootloader=custom".to_string(),
        )));
    }

    let ecu = super::ecu::ecu_section(kf, origins, base, system.data_directory.as_deref())?;
    let slots = parse_slots(kf, origins, base, &system)?;
    let classes: Vec<&str> = slots.iter().map(|s| s.class.as_str()).collect();
    let mut artifacts = Vec::new();
    let mut logs = Vec::new();
    for g in &kf.groups {
        if let Some(name) = g.name.strip_prefix("artifacts.") {
            let mut r = Reader::new(g, origins);
            artifacts.push(artifacts_section(&mut r, name, base, &classes)?);
            r.finish()?;
        } else if let Some(name) = g.name.strip_prefix("log.") {
            let mut r = Reader::new(g, origins);
            logs.push(log_section(&mut r, name, system.data_directory.as_deref())?);
            r.finish()?;
        }
    }
    Ok(SystemConfig {
        path: None,
        sources: Vec::new(),
        system,
        keyring,
        streaming,
        polling,
        encryption_key,
        encryption_cert,
        casync,
        tree,
        autoinstall,
        handlers,
        slots,
        artifacts,
        logs,
        ecu,
    })
}
