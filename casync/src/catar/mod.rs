//! The `.catar` archive format (spec §5): one directory tree as a stream of
//! records — ENTRY (type, permissions, owner, mtime, attributes), optional
//! metadata (names, xattrs, ACLs, SELinux label, capabilities, project id),
//! the content (PAYLOAD, SYMLINK, DEVICE) and, per directory, its children
//! (FILENAME + node) closed by a GOODBYE lookup table. [`encode`] writes it
//! from a directory as `casync make` does, byte for byte for the same
//! feature flags; [`decode`] checks a stream and recreates the tree.

pub mod decode;
pub mod encode;
mod linux;

use siphasher::sip::SipHasher24;
use std::hash::Hasher;

/// ENTRY record.
pub const ENTRY: u64 = 0x1396_fabc_ea5b_bb51;
/// USER name record.
pub const USER: u64 = 0xf453_131a_aeea_ccb3;
/// GROUP name record.
pub const GROUP: u64 = 0x25eb_6ac9_6939_6a52;
/// XATTR record.
pub const XATTR: u64 = 0xb815_7091_f80b_c486;
/// Named user entry of the access ACL.
pub const ACL_USER: u64 = 0x297d_c88b_2ef1_2faf;
/// Named group entry of the access ACL.
pub const ACL_GROUP: u64 = 0x36f2_acb5_6cb3_dd0b;
/// Owning-group permissions under an access ACL with a mask.
pub const ACL_GROUP_OBJ: u64 = 0x2304_7110_441f_38f3;
/// Default ACL of a directory: owner, group, other and mask permissions.
pub const ACL_DEFAULT: u64 = 0xfe3e_eda6_823c_8cd0;
/// Named user entry of the default ACL.
pub const ACL_DEFAULT_USER: u64 = 0xbdf0_3df9_bd01_0a91;
/// Named group entry of the default ACL.
pub const ACL_DEFAULT_GROUP: u64 = 0xa0cb_1168_782d_1f51;
/// File capabilities (`security.capability`).
pub const FCAPS: u64 = 0xf726_7db0_afed_0629;
/// Project quota id.
pub const QUOTA_PROJID: u64 = 0x161b_af2d_8772_a72b;
/// SELinux label.
pub const SELINUX: u64 = 0x46fa_f060_2fd2_6c59;
/// Symlink target.
pub const SYMLINK: u64 = 0x664a_6fb6_830e_0d6c;
/// Device numbers.
pub const DEVICE: u64 = 0xac3d_ace3_69df_e643;
/// File contents.
pub const PAYLOAD: u64 = 0x8b9e_1d93_d6dc_ffc9;
/// Name of the next child.
pub const FILENAME: u64 = 0x6dbb_6ebc_b316_1f0b;
/// End of a directory, with its lookup table.
pub const GOODBYE: u64 = 0xdfd3_5c5e_8327_c403;
/// Marker in the GOODBYE tail.
pub const GOODBYE_TAIL_MARKER: u64 = 0x5744_6fa5_3370_2943;

/// ACL permission bits.
pub const ACL_READ: u64 = 4;
/// ACL permission bits.
pub const ACL_WRITE: u64 = 2;
/// ACL permission bits.
pub const ACL_EXECUTE: u64 = 1;
/// ACL_DEFAULT's mask when the default ACL has none.
pub const ACL_NO_MASK: u64 = u64::MAX;

/// Largest user, group or ACL name, with its NUL.
pub const NAME_MAX: usize = 256;
/// Largest file name, with its NUL.
pub const FILENAME_MAX: usize = 256;
/// Largest symlink target, with its NUL.
pub const SYMLINK_MAX: usize = 4096;
/// Largest xattr name (without NUL).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest xattr value, and capability blob.
pub const XATTR_VALUE_MAX: usize = 64 << 10;
/// Largest SELinux label, with its NUL.
pub const SELINUX_MAX: usize = 4096;

/// The key of the GOODBYE hashes.
const GOODBYE_KEY: [u8; 16] =
    [0xb3, 0x84, 0x1d, 0x0f, 0x2b, 0x44, 0x74, 0x85, 0xc1, 0x2e, 0xc2, 0xd1, 0x30, 0xed, 0x36, 0x27];

/// SipHash-2-4 of a child's name, as its GOODBYE item stores it.
pub fn name_hash(name: &[u8]) -> u64 {
    let mut h = SipHasher24::new_with_key(&GOODBYE_KEY);
    h.write(name);
    h.finish()
}

/// One GOODBYE item: a child's name hash, where its FILENAME record starts
/// and how many bytes its FILENAME and subtree take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoodbyeItem {
    /// [`name_hash`] of its name.
    pub hash: u64,
    /// Archive position of its FILENAME record.
    pub start: u64,
    /// Bytes up to the next sibling's FILENAME (or the GOODBYE).
    pub size: u64,
}

/// The items in the order a GOODBYE table stores them: sorted by hash
/// (then position) and laid out as an implicit binary search tree (the
/// children of slot i at 2i+1 and 2i+2), filled in order.
pub fn goodbye_order(mut items: Vec<GoodbyeItem>) -> Vec<GoodbyeItem> {
    items.sort_by_key(|i| (i.hash, i.start));
    let n = items.len();
    let mut out = vec![GoodbyeItem { hash: 0, start: 0, size: 0 }; n];
    let mut next = 0;
    // In-order walk of the implicit tree, iterative (depth is log2 n).
    let mut stack = Vec::new();
    let mut at = 0usize;
    loop {
        while at < n {
            stack.push(at);
            at = 2 * at + 1;
        }
        let Some(slot) = stack.pop() else { break };
        out[slot] = items[next];
        next += 1;
        at = 2 * slot + 2;
    }
    out
}

/// Why an archive could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CatarError {
    /// Reading the tree or the stream, or writing either, failed.
    #[error("{path}: {source}")]
    Io {
        /// What was being read or written.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The tree holds something the flags cannot represent.
    #[error("{path}: {reason}")]
    Unrepresentable {
        /// The entry.
        path: String,
        /// Why.
        reason: String,
    },
    /// The stream is no valid archive.
    #[error("invalid archive at byte {at}: {reason}")]
    Invalid {
        /// Position of the offending record.
        at: u64,
        /// What is wrong.
        reason: String,
    },
}

impl CatarError {
    fn io(path: impl std::fmt::Display, source: std::io::Error) -> CatarError {
        CatarError::Io { path: path.to_string(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goodbye_hashes_and_order_match_the_spec() {
        for (name, hash) in [
            ("a.txt", 0x30db_b40a_1277_8187u64),
            ("b", 0x9007_6953_95e7_df8f),
            ("empty", 0x0185_0bd3_837c_51b2),
            ("link", 0xf922_bf6d_7bb3_dfaf),
            ("c.bin", 0xc9c6_fbc8_c6fb_fccd),
        ] {
            assert_eq!(name_hash(name.as_bytes()), hash, "{name}");
        }
        let item = |i: u64| GoodbyeItem { hash: i, start: i, size: 0 };
        let order: Vec<u64> = goodbye_order((0..4).map(item).collect()).iter().map(|i| i.hash).collect();
        assert_eq!(order, vec![2, 1, 3, 0]);
        let order: Vec<u64> = goodbye_order((0..7).map(item).collect()).iter().map(|i| i.hash).collect();
        assert_eq!(order, vec![3, 1, 5, 0, 2, 4, 6]);
    }
}
