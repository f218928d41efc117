//! The error type of device operations. Messages follow RAUC's wording
//! (spec §5–7, §14) so that scripts matching on them keep working.

use crate::config::ConfigError;

/// Everything a device operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot be used.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Opening, verifying or reading the bundle failed.
    #[error("{0}")]
    Bundle(#[from] rota_bundle::error::Error),
    /// The bundle was refused (compatible mismatch, install-check hook).
    #[error("{0}")]
    Rejected(String),
    /// Anything else, with a complete message.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// A failed file operation: `<what> '<path>': <reason>`.
    pub fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> Error {
        Error::Failed(format!("{what} '{}': {e}", path.display()))
    }

    /// Prefixes the message with `context: `, keeping the kind.
    pub fn context(self, context: &str) -> Error {
        match self {
            Error::Rejected(m) => Error::Rejected(format!("{context}: {m}")),
            other => Error::Failed(format!("{context}: {other}")),
        }
    }
}

/// Result alias for device operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Fails with `message`.
pub fn failed<T>(message: impl Into<String>) -> Result<T> {
    Err(Error::Failed(message.into()))
}

/// The system's text for an I/O error, as C's `strerror` (and GLib's
/// messages) give it: without Rust's ` (os error N)`.
pub fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => text.strip_suffix(&format!(" (os error {code})")).unwrap_or(&text).to_string(),
        None => text,
    }
}
