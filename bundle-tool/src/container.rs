//! The container every format shares (spec §1.1):
//! `payload ‖ CMS (DER) ‖ CMS size as big-endian u64`.

use crate::error::{Error, Result};
use crate::source::ReadAt;
use std::io::Write;

/// Bytes of the size trailer.
pub const TRAILER_SIZE: u64 = 8;
/// Default `max-bundle-signature-size`.
pub const DEFAULT_MAX_SIGNATURE_SIZE: u64 = 65536;
/// Largest payload of a plain bundle (`INT32_MAX`).
pub const PLAIN_MAX_PAYLOAD: u64 = i32::MAX as u64;

/// Where payload and signature lie in a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Total bundle size.
    pub bundle_size: u64,
    /// Payload size `P` (squashfs, plus hash tree for verity/crypt).
    pub payload_size: u64,
    /// CMS size `S`.
    pub signature_size: u64,
}

impl Layout {
    /// Reads and checks the trailer. Texts as RAUC's (the caller's prefix
    /// `Invalid bundle format: ` comes from [`Error::Format`]).
    pub fn read(source: &dyn ReadAt, max_signature_size: u64) -> Result<Layout> {
        let size = source.size();
        if size < TRAILER_SIZE {
            return Err(Error::Format(format!("Bundle size ({size}) is too small")));
        }
        let mut trailer = [0u8; 8];
        source.read_small_at(size - TRAILER_SIZE, &mut trailer)?;
        let sig = u64::from_be_bytes(trailer);
        if sig == 0 {
            return Err(Error::Format("Signature size is 0".to_string()));
        }
        if sig > size - TRAILER_SIZE {
            return Err(Error::Format(format!("Signature size ({sig}) exceeds bundle size")));
        }
        if sig > max_signature_size {
            return Err(Error::Format(format!(
                "Signature size ({sig}) exceeds max-bundle-signature-size ({max_signature_size})"
            )));
        }
        Ok(Layout { bundle_size: size, payload_size: size - TRAILER_SIZE - sig, signature_size: sig })
    }

    /// Whether the payload is 4 KiB aligned (required for verity, streaming and mounting).
    pub fn payload_aligned(&self) -> bool {
        self.payload_size.is_multiple_of(4096)
    }

    /// Fails unless the payload is 4 KiB aligned.
    pub fn require_aligned(&self) -> Result<()> {
        if self.payload_aligned() {
            Ok(())
        } else {
            Err(Error::Format(format!("Payload size ({}) is not a multiple of 4096 bytes", self.payload_size)))
        }
    }

    /// Reads the CMS bytes.
    pub fn read_signature(&self, source: &dyn ReadAt) -> Result<Vec<u8>> {
        let mut sig = vec![0u8; self.signature_size as usize];
        source.read_small_at(self.payload_size, &mut sig)?;
        Ok(sig)
    }
}

/// Appends `cms` and its size trailer.
pub fn write_signature(out: &mut impl Write, cms: &[u8]) -> std::io::Result<()> {
    out.write_all(cms)?;
    out.write_all(&(cms.len() as u64).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(payload: usize, sig: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; payload];
        write_signature(&mut v, sig).unwrap();
        v
    }

    #[test]
    fn layout_of_a_well_formed_bundle() {
        let b = bundle(8192, &[1, 2, 3]);
        let l = Layout::read(&b, DEFAULT_MAX_SIGNATURE_SIZE).unwrap();
        assert_eq!((l.payload_size, l.signature_size), (8192, 3));
        assert_eq!(l.read_signature(&b).unwrap(), vec![1, 2, 3]);
        assert!(l.payload_aligned());
    }

    #[test]
    fn malformed_trailers_use_rauc_texts() {
        let msg = |b: Vec<u8>, max| Layout::read(&b, max).unwrap_err().to_string();
        assert_eq!(msg(vec![0; 5], 65536), "Invalid bundle format: Bundle size (5) is too small");
        assert_eq!(msg(vec![0; 16], 65536), "Invalid bundle format: Signature size is 0");
        let mut b = vec![0u8; 16];
        b[8..].copy_from_slice(&100u64.to_be_bytes());
        assert_eq!(msg(b, 65536), "Invalid bundle format: Signature size (100) exceeds bundle size");
        assert_eq!(
            msg(bundle(4096, &[0; 300]), 200),
            "Invalid bundle format: Signature size (300) exceeds max-bundle-signature-size (200)"
        );
        let l = Layout::read(&bundle(4000, &[1]), 65536).unwrap();
        assert!(l.require_aligned().unwrap_err().to_string().contains("not a multiple of 4096 bytes"));
    }
}
