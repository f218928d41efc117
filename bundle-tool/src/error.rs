//! The error type of bundle operations; its messages follow RAUC's wording.

use crate::keyfile::KeyFileError;
use std::io;

/// Everything that can go wrong while reading, verifying or writing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The container is malformed (trailer, sizes, alignment, CMS type).
    #[error("Invalid bundle format: {0}")]
    Format(String),
    /// The signature did not verify; the text carries OpenSSL's reason.
    #[error("signature verification failed: {0}")]
    Signature(String),
    /// The manifest is invalid.
    #[error("{0}")]
    Manifest(#[from] KeyFileError),
    /// The payload does not match the signed data.
    #[error("{0}")]
    Payload(String),
    /// Decryption of an encrypted CMS failed or no key was available.
    #[error("{0}")]
    Decrypt(String),
    /// Bad keys, certificates or keyrings given by the user.
    #[error("{0}")]
    Key(String),
    /// An I/O or transport failure.
    #[error("{0}")]
    Io(String),
    /// Anything else, with a complete message.
    #[error("{0}")]
    Other(String),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        // Verity failures travel through io::Error; keep their text intact.
        Error::Io(e.to_string())
    }
}

/// Result alias for bundle operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `Failed to <what> '<path>': <cause>` for file-system failures.
pub(crate) fn io_error(what: &str, path: &std::path::Path, e: io::Error) -> Error {
    Error::Io(format!("Failed to {what} '{}': {e}", path.display()))
}

/// Builds an [`Error::Other`] from anything printable.
pub fn other(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}
