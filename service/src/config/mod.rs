//! `system.conf` (spec §3): the device's configuration, read from one file,
//! then the `system.conf.d/*.conf` drop-ins next to it in lexical order
//! (later keys win), then `-C SECTION:KEY=VALUE` overrides. Every error names
//! the file and line it comes from.

mod ecu;
mod load;
mod sections;
mod slots;

pub use ecu::{EcuRole, EcuSection, SecondaryConfig};
pub use load::{ConfigError, SEARCH_PATHS, load, load_text};
pub use slots::{SlotConfig, SlotType};

use rota_bundle::hostconfig::HostConfig;
use rota_bundle::manifest::BundleFormat;
use rota_bundle::signature::Keyring;
use std::path::PathBuf;

/// The bootloader backend (`[system] bootloader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootloaderKind {
    /// barebox-state.
    Barebox,
    /// grub-editenv.
    Grub,
    /// fw_printenv / fw_setenv.
    Uboot,
    /// efibootmgr.
    Efi,
    /// A script speaking the custom backend protocol.
    Custom,
    /// No bootloader interaction.
    Noop,
}

impl BootloaderKind {
    /// Parses the configuration name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "barebox" => Self::Barebox,
            "grub" => Self::Grub,
            "uboot" => Self::Uboot,
            "efi" => Self::Efi,
            "custom" => Self::Custom,
            "noop" => Self::Noop,
            _ => return None,
        })
    }

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Barebox => "barebox",
            Self::Grub => "grub",
            Self::Uboot => "uboot",
            Self::Efi => "efi",
            Self::Custom => "custom",
            Self::Noop => "noop",
        }
    }
}

/// Where the slot status lives (spec §7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusMode {
    /// One key file for all slots.
    Central(PathBuf),
    /// `slot.raucs` inside each mountable slot's filesystem.
    PerSlot,
}

/// Where the system variant comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VariantSource {
    /// No variant configured.
    None,
    /// `variant-name`.
    Name(String),
    /// `variant-file`: the file's content.
    File(PathBuf),
    /// `variant-dtb`: the device tree's first compatible string.
    Dtb,
}

/// `[system]`.
#[derive(Debug, Clone)]
pub struct SystemSection {
    /// `compatible` (required).
    pub compatible: String,
    /// `bootloader` (required).
    pub bootloader: BootloaderKind,
    /// `min-bundle-version`.
    pub min_bundle_version: Option<String>,
    /// `bundle-formats` (`None`: all).
    pub bundle_formats: Option<Vec<BundleFormat>>,
    /// `mountprefix`.
    pub mount_prefix: PathBuf,
    /// `data-directory`.
    pub data_directory: Option<PathBuf>,
    /// `statusfile` / `data-directory` resolved to a storage mode.
    pub status: StatusMode,
    /// `activate-installed`.
    pub activate_installed: bool,
    /// `max-bundle-download-size`.
    pub max_bundle_download_size: u64,
    /// `max-bundle-signature-size`.
    pub max_bundle_signature_size: u64,
    /// `variant-name` / `variant-file` / `variant-dtb`.
    pub variant: VariantSource,
    /// `boot-attempts` (0 = default 3).
    pub boot_attempts: u32,
    /// `boot-attempts-primary` (0 = default 3).
    pub boot_attempts_primary: u32,
    /// `perform-pre-check`.
    pub perform_pre_check: bool,
    /// `prevent-late-fallback`.
    pub prevent_late_fallback: bool,
    /// `grubenv`.
    pub grubenv: PathBuf,
    /// `barebox-statename`.
    pub barebox_statename: Option<String>,
    /// `barebox-dtbpath`.
    pub barebox_dtbpath: Option<PathBuf>,
    /// `efi-use-bootnext`.
    pub efi_use_bootnext: bool,
}

/// `[streaming]`.
#[derive(Debug, Clone, Default)]
pub struct StreamingSection {
    /// `sandbox-user`.
    pub sandbox_user: Option<String>,
    /// `tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// `send-headers`, validated.
    pub send_headers: Vec<String>,
    /// rota's transfer tuning keys (`retries`, `retry-pause-ms`, …).
    pub transfer: rota_bundle::hostconfig::Transfer,
}

/// `[polling]`.
#[derive(Debug, Clone)]
pub struct PollingSection {
    /// `url`.
    pub url: String,
    /// `interval-sec`.
    pub interval_sec: u64,
    /// `max-interval-sec`.
    pub max_interval_sec: u64,
    /// `inhibit-files`.
    pub inhibit_files: Vec<PathBuf>,
    /// `candidate-criteria`.
    pub candidate_criteria: Vec<String>,
    /// `install-criteria`.
    pub install_criteria: Vec<String>,
    /// `reboot-criteria`.
    pub reboot_criteria: Vec<String>,
    /// `reboot-cmd`, shell-split.
    pub reboot_cmd: Vec<String>,
}

/// `[tree]` (rota's own): how tree images are installed.
#[derive(Debug, Clone, Default)]
pub struct TreeSection {
    /// `persist`: absolute paths copied from the booted slot into a freshly
    /// installed tree (files, or directories with their contents), as
    /// ota-client's persist list.
    pub persist: Vec<String>,
    /// `cache-size`: bytes of contents fetched from bundles kept in
    /// `<data-directory>/tree-cache` for later installs (0: no cache).
    pub cache_size: u64,
}

/// `[casync]`.
#[derive(Debug, Clone, Default)]
pub struct CasyncSection {
    /// `storepath`.
    pub storepath: Option<String>,
    /// `tmppath`.
    pub tmppath: Option<PathBuf>,
    /// `install-args`, shell-split.
    pub install_args: Vec<String>,
    /// `use-desync`.
    pub use_desync: bool,
}

/// `[handlers]`.
#[derive(Debug, Clone, Default)]
pub struct HandlersSection {
    /// `system-info`.
    pub system_info: Option<PathBuf>,
    /// `pre-install`.
    pub pre_install: Option<PathBuf>,
    /// `post-install`.
    pub post_install: Option<PathBuf>,
    /// `bootloader-custom-backend`.
    pub bootloader_custom_backend: Option<PathBuf>,
}

/// Kind of an artifact repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactRepoType {
    /// Single files.
    Files,
    /// Directory trees.
    Trees,
}

impl ArtifactRepoType {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Files => "files",
            Self::Trees => "trees",
        }
    }
}

/// `[artifacts.<repo>]`.
#[derive(Debug, Clone)]
pub struct ArtifactRepoConfig {
    /// Repository name.
    pub name: String,
    /// `path` (an existing directory).
    pub path: PathBuf,
    /// `type`.
    pub repo_type: ArtifactRepoType,
    /// `description`.
    pub description: Option<String>,
}

/// Output format of an event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Timestamp, message, one indented line per field.
    Readable,
    /// Timestamp and message.
    Short,
    /// One JSON object per line.
    Json,
    /// Pretty-printed JSON objects.
    JsonPretty,
}

/// `[log.<name>]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Logger name.
    pub name: String,
    /// `filename`, resolved.
    pub filename: PathBuf,
    /// `format`.
    pub format: LogFormat,
    /// `events` (empty: all).
    pub events: Vec<String>,
    /// `max-size` (0: unlimited).
    pub max_size: u64,
    /// `max-files`.
    pub max_files: u32,
}

/// The whole device configuration.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// The main file as given (`RAUC_SYSTEM_CONFIG`); `None` when built from overrides only.
    pub path: Option<PathBuf>,
    /// Every file read (main file, then drop-ins), for change detection.
    pub sources: Vec<PathBuf>,
    /// `[system]`.
    pub system: SystemSection,
    /// `[keyring]`.
    pub keyring: Keyring,
    /// `[streaming]`.
    pub streaming: StreamingSection,
    /// `[polling]`, if present.
    pub polling: Option<PollingSection>,
    /// `[encryption] key`.
    pub encryption_key: Option<PathBuf>,
    /// `[encryption] cert`.
    pub encryption_cert: Option<PathBuf>,
    /// `[casync]`.
    pub casync: CasyncSection,
    /// `[tree]`.
    pub tree: TreeSection,
    /// `[autoinstall] path`.
    pub autoinstall: Option<PathBuf>,
    /// `[handlers]`.
    pub handlers: HandlersSection,
    /// Slots in configuration order.
    pub slots: Vec<SlotConfig>,
    /// Artifact repositories in configuration order.
    pub artifacts: Vec<ArtifactRepoConfig>,
    /// Event loggers.
    pub logs: Vec<LogConfig>,
    /// `[ecu]` with `[secondary.*]`: this device's part in multi-ECU updates.
    pub ecu: Option<EcuSection>,
}

impl SystemConfig {
    /// The slot called `name` (`<class>.<idx>`).
    pub fn slot(&self, name: &str) -> Option<&SlotConfig> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// The settings the bundle library needs to open bundles.
    pub fn host_config(&self) -> HostConfig {
        HostConfig {
            path: self.path.clone(),
            keyring: self.keyring.clone(),
            max_signature_size: self.system.max_bundle_signature_size,
            bundle_formats: self.system.bundle_formats.clone(),
            decryption_key: self.encryption_key.clone(),
            decryption_cert: self.encryption_cert.clone(),
            tls_ca: self.streaming.tls_ca.clone(),
            tls_cert: self.streaming.tls_cert.clone(),
            tls_key: self.streaming.tls_key.clone(),
            send_headers: self.streaming.send_headers.clone(),
            variant: None,
            transfer: self.streaming.transfer.clone(),
        }
    }

    /// How the device opens a bundle: the configured keyring, formats and
    /// decryption key (`key` wins), and `http`, built from [`Self::host_config`];
    /// remote plain bundles are downloaded to the temporary directory, up
    /// to `max-bundle-download-size`.
    pub fn open_options(
        &self,
        http: rota_bundle::source::http::HttpOptions,
        key: Option<PathBuf>,
    ) -> rota_bundle::bundle::OpenOptions {
        let conf = self.host_config();
        rota_bundle::bundle::OpenOptions {
            verify: rota_bundle::signature::VerifyOptions {
                keyring: conf.keyring,
                no_verify: false,
                no_check_time: false,
            },
            max_signature_size: conf.max_signature_size,
            allowed_formats: conf.bundle_formats,
            decryption_key: key.or(conf.decryption_key),
            decryption_cert: conf.decryption_cert,
            trust_environment: false,
            http,
            download: Some(rota_bundle::bundle::Download {
                dir: std::env::temp_dir(),
                max_size: self.system.max_bundle_download_size,
            }),
            opened: None,
            keep_open: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
