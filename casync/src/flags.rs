//! Feature flags (spec §4): which metadata an archive carries, how chunks
//! are named, what the encoder leaves out. Values are casync's bits;
//! [`normalize`] gives the one form casync stores, [`parse_with`] reads
//! `--with=`/`--without=` words and presets.

/// uid/gid stored, each below 65535.
pub const UID16: u64 = 0x1;
/// uid/gid stored, each below 2^32 − 1 and not 65535.
pub const UID32: u64 = 0x2;
/// USER and GROUP name records.
pub const USER_NAMES: u64 = 0x4;
/// mtime to the second.
pub const SEC_TIME: u64 = 0x8;
/// mtime to the microsecond.
pub const USEC_TIME: u64 = 0x10;
/// mtime to the nanosecond.
pub const NSEC_TIME: u64 = 0x20;
/// mtime to two seconds (FAT).
pub const SEC2_TIME: u64 = 0x40;
/// Only whether an entry is writable.
pub const READ_ONLY: u64 = 0x80;
/// All permission bits (07777).
pub const PERMISSIONS: u64 = 0x100;
/// Symbolic links.
pub const SYMLINKS: u64 = 0x200;
/// Block and character devices.
pub const DEVICE_NODES: u64 = 0x400;
/// FIFOs.
pub const FIFOS: u64 = 0x800;
/// Unix sockets.
pub const SOCKETS: u64 = 0x1000;
/// FAT hidden attribute.
pub const FLAG_HIDDEN: u64 = 0x2000;
/// FAT system attribute.
pub const FLAG_SYSTEM: u64 = 0x4000;
/// FAT archive attribute.
pub const FLAG_ARCHIVE: u64 = 0x8000;
/// chattr +a.
pub const FLAG_APPEND: u64 = 0x10000;
/// chattr +A.
pub const FLAG_NOATIME: u64 = 0x20000;
/// chattr +c.
pub const FLAG_COMPR: u64 = 0x40000;
/// chattr +C.
pub const FLAG_NOCOW: u64 = 0x80000;
/// chattr +d.
pub const FLAG_NODUMP: u64 = 0x100000;
/// chattr +D.
pub const FLAG_DIRSYNC: u64 = 0x200000;
/// chattr +i.
pub const FLAG_IMMUTABLE: u64 = 0x400000;
/// chattr +S.
pub const FLAG_SYNC: u64 = 0x800000;
/// chattr +m (no compression).
pub const FLAG_NOCOMP: u64 = 0x1000000;
/// chattr +P.
pub const FLAG_PROJINHERIT: u64 = 0x2000000;
/// btrfs subvolume.
pub const SUBVOLUME: u64 = 0x4000000;
/// btrfs read-only subvolume.
pub const SUBVOLUME_RO: u64 = 0x8000000;
/// `user.*` and `trusted.*` extended attributes.
pub const XATTRS: u64 = 0x10000000;
/// POSIX ACLs.
pub const ACL: u64 = 0x20000000;
/// SELinux labels.
pub const SELINUX: u64 = 0x40000000;
/// File capabilities.
pub const FCAPS: u64 = 0x80000000;
/// Project quota id.
pub const QUOTA_PROJID: u64 = 0x100000000;
/// Honour `.caexclude` files when encoding.
pub const EXCLUDE_FILE: u64 = 0x1000000000000000;
/// Chunk IDs are SHA-512/256.
pub const SHA512_256: u64 = 0x2000000000000000;
/// Do not cross mount points when encoding.
pub const EXCLUDE_SUBMOUNTS: u64 = 0x4000000000000000;
/// Leave out entries with chattr +d.
pub const EXCLUDE_NODUMP: u64 = 0x8000000000000000;

/// The FAT attribute bits.
pub const FAT_ATTRS: u64 = FLAG_HIDDEN | FLAG_SYSTEM | FLAG_ARCHIVE;
/// The chattr bits.
pub const CHATTR: u64 = FLAG_APPEND
    | FLAG_NOATIME
    | FLAG_COMPR
    | FLAG_NOCOW
    | FLAG_NODUMP
    | FLAG_DIRSYNC
    | FLAG_IMMUTABLE
    | FLAG_SYNC
    | FLAG_NOCOMP
    | FLAG_PROJINHERIT;
/// Every bit casync knows.
pub const ALL_KNOWN: u64 = 0xF000_0001_FFFF_FFFF;
/// `--with=unix`: what RAUC converts archives with.
pub const UNIX: u64 = UID16 | PERMISSIONS | SEC_TIME | SYMLINKS | DEVICE_NODES | FIFOS | SOCKETS;
/// `--with=fat`.
pub const FAT: u64 = SEC2_TIME | READ_ONLY | FAT_ATTRS;
/// `--with=best`.
pub const BEST: u64 = UID32
    | USER_NAMES
    | NSEC_TIME
    | SYMLINKS
    | DEVICE_NODES
    | FIFOS
    | SOCKETS
    | FAT_ATTRS
    | CHATTR
    | SUBVOLUME
    | SUBVOLUME_RO
    | XATTRS
    | ACL
    | SELINUX
    | FCAPS
    | QUOTA_PROJID;
/// casync make's default for archives: best without flag-nodump, plus
/// exclude-nodump, exclude-file and SHA-512/256 (Debian's build).
pub const DEFAULT_ARCHIVE: u64 = (BEST & !FLAG_NODUMP) | EXCLUDE_NODUMP | EXCLUDE_FILE | SHA512_256;

/// The bits that say how finely mtime is kept.
const TIMES: u64 = SEC_TIME | USEC_TIME | NSEC_TIME | SEC2_TIME;

/// `flags` in the one form casync stores: redundant bits dropped, implied ones added.
pub fn normalize(mut f: u64) -> u64 {
    if f & UID32 != 0 {
        f &= !UID16;
    }
    if f & NSEC_TIME != 0 {
        f &= !(USEC_TIME | SEC_TIME | SEC2_TIME);
    } else if f & USEC_TIME != 0 {
        f &= !(SEC_TIME | SEC2_TIME);
    } else if f & SEC_TIME != 0 {
        f &= !SEC2_TIME;
    }
    if f & ACL != 0 {
        f &= !(PERMISSIONS | READ_ONLY);
        if f & (UID16 | UID32 | USER_NAMES) == 0 {
            f |= UID32 | USER_NAMES;
        }
    } else if f & PERMISSIONS != 0 {
        f &= !READ_ONLY;
    }
    if f & EXCLUDE_NODUMP != 0 {
        f &= !FLAG_NODUMP;
    }
    if f & SUBVOLUME_RO != 0 {
        f |= SUBVOLUME;
    }
    f
}

/// Why stored flags are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagsError {
    /// Bits casync does not know.
    #[error("unknown feature flags {0:#x}")]
    Unknown(u64),
    /// Not in normal form.
    #[error("feature flags {0:#x} are not normalised (casync stores {1:#x})")]
    NotNormal(u64, u64),
    /// A `--with`/`--without` word casync does not know.
    #[error("unknown feature '{0}'")]
    Word(String),
}

/// Checks flags read from an index or archive as casync does.
pub fn check(f: u64) -> Result<u64, FlagsError> {
    if f & !ALL_KNOWN != 0 {
        return Err(FlagsError::Unknown(f & !ALL_KNOWN));
    }
    if f & ACL != 0 && f & (UID16 | UID32 | USER_NAMES) == 0 {
        return Err(FlagsError::NotNormal(f, normalize(f)));
    }
    let n = normalize(f);
    if n != f {
        return Err(FlagsError::NotNormal(f, n));
    }
    Ok(f)
}

/// Nanoseconds mtime is kept to under `f` (`None`: not kept, stored as 0).
pub fn time_granularity(f: u64) -> Option<u64> {
    match f & TIMES {
        t if t & NSEC_TIME != 0 => Some(1),
        t if t & USEC_TIME != 0 => Some(1_000),
        t if t & SEC_TIME != 0 => Some(1_000_000_000),
        t if t & SEC2_TIME != 0 => Some(2_000_000_000),
        _ => None,
    }
}

const WORDS: &[(&str, u64)] = &[
    ("16bit-uids", UID16),
    ("32bit-uids", UID32),
    ("user-names", USER_NAMES),
    ("sec-time", SEC_TIME),
    ("usec-time", USEC_TIME),
    ("nsec-time", NSEC_TIME),
    ("2sec-time", SEC2_TIME),
    ("read-only", READ_ONLY),
    ("permissions", PERMISSIONS),
    ("symlinks", SYMLINKS),
    ("device-nodes", DEVICE_NODES),
    ("fifos", FIFOS),
    ("sockets", SOCKETS),
    ("flag-hidden", FLAG_HIDDEN),
    ("flag-system", FLAG_SYSTEM),
    ("flag-archive", FLAG_ARCHIVE),
    ("flag-append", FLAG_APPEND),
    ("flag-noatime", FLAG_NOATIME),
    ("flag-compr", FLAG_COMPR),
    ("flag-nocow", FLAG_NOCOW),
    ("flag-nodump", FLAG_NODUMP),
    ("flag-dirsync", FLAG_DIRSYNC),
    ("flag-immutable", FLAG_IMMUTABLE),
    ("flag-sync", FLAG_SYNC),
    ("flag-nocomp", FLAG_NOCOMP),
    ("flag-projinherit", FLAG_PROJINHERIT),
    ("subvolume", SUBVOLUME),
    ("subvolume-ro", SUBVOLUME_RO),
    ("xattrs", XATTRS),
    ("acl", ACL),
    ("selinux", SELINUX),
    ("fcaps", FCAPS),
    ("quota-projid", QUOTA_PROJID),
    ("unix", UNIX),
    ("fat", FAT),
    ("chattr", CHATTR),
    ("fat-attrs", FAT_ATTRS),
    ("best", BEST),
];

/// The bits of one `--with=`/`--without=` word or preset.
pub fn parse_word(word: &str) -> Result<u64, FlagsError> {
    WORDS.iter().find(|(w, _)| *w == word).map(|(_, b)| *b).ok_or_else(|| FlagsError::Word(word.to_string()))
}

/// Archive flags as `casync make` computes them from its options: the
/// `--with` words (none: the default set), minus the `--without` words,
/// plus the exclude and digest bits, normalised.
pub fn archive_flags(with: &[&str], without: &[&str], sha512_256: bool) -> Result<u64, FlagsError> {
    let mut f = if with.is_empty() {
        DEFAULT_ARCHIVE & !(EXCLUDE_NODUMP | EXCLUDE_FILE | SHA512_256)
    } else {
        with.iter().try_fold(0, |acc, w| parse_word(w).map(|b| acc | b))?
    };
    for w in without {
        f &= !parse_word(w)?;
    }
    f |= EXCLUDE_NODUMP | EXCLUDE_FILE;
    if sha512_256 {
        f |= SHA512_256;
    }
    Ok(normalize(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_values_casync_stores() {
        assert_eq!(archive_flags(&["unix"], &[], true).unwrap(), 0xB000_0000_0000_1F09);
        assert_eq!(archive_flags(&[], &[], true).unwrap(), 0xB000_0001_FFEF_FE26);
        assert_eq!(normalize(DEFAULT_ARCHIVE), DEFAULT_ARCHIVE);
        assert_eq!(normalize(UID16 | UID32 | NSEC_TIME | SEC_TIME), UID32 | NSEC_TIME);
        assert_eq!(normalize(ACL | PERMISSIONS), ACL | UID32 | USER_NAMES);
        assert_eq!(normalize(SUBVOLUME_RO), SUBVOLUME | SUBVOLUME_RO);
        assert!(check(0xB000_0000_0000_1F09).is_ok());
        assert_eq!(check(UID16 | UID32), Err(FlagsError::NotNormal(3, 2)));
        assert!(matches!(check(1 << 40), Err(FlagsError::Unknown(_))));
        assert!(matches!(check(ACL), Err(FlagsError::NotNormal(..))));
        assert_eq!(time_granularity(UNIX), Some(1_000_000_000));
        assert_eq!(time_granularity(FAT), Some(2_000_000_000));
        assert_eq!(time_granularity(0), None);
        assert_eq!(parse_word("nope"), Err(FlagsError::Word("nope".into())));
    }
}
