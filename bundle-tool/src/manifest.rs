//! The bundle manifest (`manifest.raucm`, spec §2): strict parsing, RAUC's
//! normalized serialization (§2.9) and the manifest hash (§2.10).

use crate::keyfile::{self, GroupReader, KeyFile, KeyFileError};
use crate::semver::SemVer;
use sha2::{Digest, Sha256};
use std::fmt;

/// Errors in a manifest carry the line they refer to, when known.
pub type ManifestError = KeyFileError;

fn err(message: impl Into<String>) -> ManifestError {
    KeyFileError::new(message)
}

fn err_at(line: usize, message: impl Into<String>) -> ManifestError {
    KeyFileError { line: Some(line), message: message.into(), origin: 0 }
}

/// The RAUC feature level rota implements; `min-rauc-version` is compared with it.
pub const RAUC_COMPAT_VERSION: &str = "1.16";

/// The bundle container format (spec §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleFormat {
    /// squashfs with a detached signature over it.
    Plain,
    /// squashfs plus dm-verity hash tree, manifest inside the signature.
    Verity,
    /// Encrypted squashfs plus hash tree over the ciphertext.
    Crypt,
}

impl BundleFormat {
    /// The name used in manifests and output.
    pub fn as_str(self) -> &'static str {
        match self {
            BundleFormat::Plain => "plain",
            BundleFormat::Verity => "verity",
            BundleFormat::Crypt => "crypt",
        }
    }

    /// Parses a format name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "plain" => Some(BundleFormat::Plain),
            "verity" => Some(BundleFormat::Verity),
            "crypt" => Some(BundleFormat::Crypt),
            _ => None,
        }
    }
}

impl fmt::Display for BundleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Image types (spec §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    /// ext4 filesystem image.
    Ext4,
    /// vfat filesystem image.
    Vfat,
    /// UBIFS image.
    Ubifs,
    /// squashfs image.
    Squashfs,
    /// Raw bytes.
    Raw,
    /// tar archive (optionally compressed).
    Tar,
    /// No content: an empty filesystem is created.
    Emptyfs,
    /// casync directory index.
    Caidx,
    /// casync archive.
    Catar,
    /// casync blob index of an ext4 image.
    Ext4Caibx,
    /// casync blob index of a vfat image.
    VfatCaibx,
    /// casync blob index of a UBIFS image.
    UbifsCaibx,
    /// casync blob index of a squashfs image.
    SquashfsCaibx,
    /// casync blob index of a raw image.
    RawCaibx,
    /// rota's file tree: a signed file index and content-addressed files
    /// (beyond RAUC), installed file by file into a filesystem slot.
    Tree,
}

const IMAGE_TYPES: [(ImageType, &str); 15] = [
    (ImageType::Ext4, "ext4"),
    (ImageType::Vfat, "vfat"),
    (ImageType::Ubifs, "ubifs"),
    (ImageType::Squashfs, "squashfs"),
    (ImageType::Raw, "raw"),
    (ImageType::Tar, "tar"),
    (ImageType::Emptyfs, "emptyfs"),
    (ImageType::Caidx, "caidx"),
    (ImageType::Catar, "catar"),
    (ImageType::Ext4Caibx, "ext4-caibx"),
    (ImageType::VfatCaibx, "vfat-caibx"),
    (ImageType::UbifsCaibx, "ubifs-caibx"),
    (ImageType::SquashfsCaibx, "squashfs-caibx"),
    (ImageType::RawCaibx, "raw-caibx"),
    (ImageType::Tree, "tree"),
];

/// Filename patterns tried in order when `type=` is absent (spec §2.6).
const FILENAME_PATTERNS: [(&str, ImageType); 17] = [
    ("*.ext4.caibx", ImageType::Ext4Caibx),
    ("*.vfat.caibx", ImageType::VfatCaibx),
    ("*.ubifs.caibx", ImageType::UbifsCaibx),
    ("*.img.caibx", ImageType::RawCaibx),
    ("*.squashfs.caibx", ImageType::SquashfsCaibx),
    ("*.squashfs-*.caibx", ImageType::SquashfsCaibx),
    ("*.catar", ImageType::Catar),
    ("*.caidx", ImageType::Caidx),
    ("*.tar*", ImageType::Tar),
    ("*.tgz", ImageType::Tar),
    ("*.ext4", ImageType::Ext4),
    ("*.vfat", ImageType::Vfat),
    ("*.img", ImageType::Raw),
    ("*.squashfs-*", ImageType::Squashfs),
    ("*.squashfs", ImageType::Squashfs),
    ("*.ubifs", ImageType::Ubifs),
    ("*.tree", ImageType::Tree),
];

impl ImageType {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        IMAGE_TYPES.iter().find(|(t, _)| *t == self).map(|(_, n)| *n).expect("every type is listed")
    }

    /// Parses a `type=` value.
    pub fn parse(s: &str) -> Option<Self> {
        IMAGE_TYPES.iter().find(|(_, n)| *n == s).map(|(t, _)| *t)
    }

    /// Derives the type from a filename with RAUC's ordered glob table; beyond
    /// RAUC, a name the table does not know that ends in a compression suffix
    /// (`rootfs.ext4.zst`) has the type of the name without it, if that is a
    /// raw or filesystem image type.
    pub fn from_filename(name: &str) -> Option<Self> {
        FILENAME_PATTERNS.iter().find(|(pat, _)| glob_match(pat, name)).map(|(_, t)| *t).or_else(|| {
            let (stem, _) = Compression::split(name)?;
            Self::from_filename(stem).filter(|t| t.may_be_compressed())
        })
    }

    /// Whether a file of this type may be stored stream-compressed (raw and
    /// filesystem images; tar archives are decompressed by tar itself).
    pub fn may_be_compressed(self) -> bool {
        matches!(self, Self::Raw | Self::Ext4 | Self::Vfat | Self::Squashfs | Self::Ubifs)
    }
}

/// Stream compression of a raw or filesystem image file, named by the file's
/// suffix and undone while the image is written (beyond RAUC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `.gz`
    Gzip,
    /// `.xz`
    Xz,
    /// `.zst`
    Zstd,
}

const COMPRESSION_SUFFIXES: [(&str, Compression); 3] =
    [(".gz", Compression::Gzip), (".xz", Compression::Xz), (".zst", Compression::Zstd)];

impl Compression {
    /// The name without its compression suffix, and the compression it names.
    pub fn split(name: &str) -> Option<(&str, Compression)> {
        COMPRESSION_SUFFIXES
            .iter()
            .find_map(|(suffix, c)| name.strip_suffix(suffix).filter(|s| !s.is_empty()).map(|s| (s, *c)))
    }
}

impl fmt::Display for ImageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Matches a pattern whose only wildcard is `*` (any run of characters).
fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == text;
    }
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(p) => rest = &rest[p + mid.len()..],
            None => return false,
        }
    }
    true
}

/// The `[update]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateInfo {
    /// Must equal the system's compatible string.
    pub compatible: String,
    /// Bundle version (free text, semver for `min-bundle-version`).
    pub version: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Build identifier.
    pub build: Option<String>,
    /// Oldest RAUC feature level able to install this bundle (kept in bundles, unlike RAUC).
    pub min_rauc_version: Option<String>,
}

/// Verity parameters of the signed (inline) manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerityParams {
    /// Root hash of the hash tree.
    pub hash: [u8; 32],
    /// Salt prepended to every hashed block.
    pub salt: [u8; 32],
    /// Size of the hash tree in bytes.
    pub size: u64,
}

/// The `[bundle]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSection {
    /// Container format.
    pub format: BundleFormat,
    /// Whether `format=` was written (RAUC writes `format=plain` only then).
    pub format_explicit: bool,
    /// Verity parameters (inline manifests of verity and crypt bundles).
    pub verity: Option<VerityParams>,
    /// AES-256 payload key (inline manifests of crypt bundles).
    pub crypt_key: Option<[u8; 32]>,
}

impl Default for BundleSection {
    fn default() -> Self {
        BundleSection { format: BundleFormat::Plain, format_explicit: false, verity: None, crypt_key: None }
    }
}

/// The `[hooks]` section (bundle-wide hooks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleHooks {
    /// Hook executable relative to the bundle root.
    pub filename: Option<String>,
    /// Enabled hooks (only `install-check` exists).
    pub hooks: Vec<String>,
}

/// The `[handler]` section (full custom handler).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handler {
    /// Handler executable relative to the bundle root.
    pub filename: Option<String>,
    /// Extra arguments, shell-word split at run time.
    pub args: Option<String>,
}

/// Slot hooks enabled for one image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageHooks {
    /// `pre-install`.
    pub pre_install: bool,
    /// `install` (replaces the built-in write).
    pub install: bool,
    /// `post-install`.
    pub post_install: bool,
}

impl ImageHooks {
    /// The enabled hooks in RAUC's canonical order.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.pre_install {
            v.push("pre-install");
        }
        if self.install {
            v.push("install");
        }
        if self.post_install {
            v.push("post-install");
        }
        v
    }
}

/// One `[image.*]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// Target slot class (or artifact repository).
    pub slotclass: String,
    /// Artifact name for `[image.<repo>/<artifact>]` sections.
    pub artifact: Option<String>,
    /// Variant this image is meant for.
    pub variant: Option<String>,
    /// Image file in the bundle root.
    pub filename: Option<String>,
    /// `type=` as written (`None` means: derived from the filename).
    pub explicit_type: Option<ImageType>,
    /// Lowercase hex SHA-256 of the image file.
    pub sha256: Option<String>,
    /// Size in bytes.
    pub size: Option<u64>,
    /// Slot hooks.
    pub hooks: ImageHooks,
    /// Adaptive methods (e.g. `block-hash-index`).
    pub adaptive: Vec<String>,
    /// Conversions for artifacts.
    pub convert: Vec<String>,
    /// Names produced by `convert`.
    pub converted: Vec<String>,
}

impl Image {
    /// The output of converter `method` (`converted=` entry at the same
    /// place as `method` in `convert=`), when the two lists agree.
    pub fn converted_for(&self, method: &str) -> Option<&str> {
        if self.convert.len() != self.converted.len() {
            return None;
        }
        self.convert.iter().position(|m| m == method).map(|i| self.converted[i].as_str())
    }

    /// The group name this image is written under, e.g. `image.rootfs.variant`.
    pub fn group_name(&self) -> String {
        let mut n = format!("image.{}", self.slotclass);
        if let Some(a) = &self.artifact {
            n.push('/');
            n.push_str(a);
        }
        if let Some(v) = &self.variant {
            n.push('.');
            n.push_str(v);
        }
        n
    }

    /// The image type: explicit, else derived from the filename.
    pub fn image_type(&self) -> Option<ImageType> {
        self.explicit_type.or_else(|| self.filename.as_deref().and_then(ImageType::from_filename))
    }

    /// The stream compression of the image file: a compression suffix on the
    /// filename of a raw or filesystem image (see [`ImageType::from_filename`]).
    pub fn compression(&self) -> Option<Compression> {
        self.image_type()
            .filter(|t| t.may_be_compressed())
            .and(self.filename.as_deref())
            .and_then(Compression::split)
            .map(|(_, c)| c)
    }
}

/// A `[meta.<label>]` group: free key/value pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaGroup {
    /// The label after `meta.`.
    pub label: String,
    /// Key/value pairs in file order.
    pub entries: Vec<(String, String)>,
}

/// What a manifest is being parsed for; the rules differ slightly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestOrigin {
    /// An author's input to `bundle`: no `sha256`, `size` or `converted` allowed.
    Input,
    /// A manifest read from a bundle (inline or internal).
    Bundle,
}

/// A complete manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// `[update]`.
    pub update: UpdateInfo,
    /// `[bundle]`.
    pub bundle: BundleSection,
    /// `[hooks]`.
    pub hooks: BundleHooks,
    /// `[handler]`.
    pub handler: Handler,
    /// `[image.*]` in file order.
    pub images: Vec<Image>,
    /// `[meta.*]` in file order.
    pub meta: Vec<MetaGroup>,
}

/// Which copy of the manifest is being serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestCopy {
    /// The signed inline copy (verity/crypt): carries verity and crypt keys.
    Inline,
    /// The copy inside the squashfs: `[bundle]` has `format=` only.
    Internal,
}

fn is_meta_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_hex32(s: &str, key: &str, line: usize) -> Result<[u8; 32], ManifestError> {
    let valid = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let bytes = if valid { hex::decode(s).ok() } else { None };
    bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
        err_at(line, format!("Invalid value for key '{key}' in group '[bundle]': expected 64 lowercase hex characters"))
    })
}

impl Manifest {
    /// Parses manifest text strictly (unknown keys and groups are errors).
    pub fn parse(text: &str, origin: ManifestOrigin) -> Result<Manifest, ManifestError> {
        let kf = KeyFile::parse(text)?;
        let mut m = Manifest::default();
        let mut have_update = false;
        for group in &kf.groups {
            let name = group.name.as_str();
            let mut r = GroupReader::new(group);
            match name {
                "update" => {
                    have_update = true;
                    m.update.compatible = r.string("compatible")?.unwrap_or_default();
                    m.update.version = r.string("version")?;
                    m.update.description = r.string("description")?;
                    m.update.build = r.string("build")?;
                    if let Some(e) = r.take("min-rauc-version") {
                        let v = keyfile::unescape_string(&e.raw).map_err(|msg| err_at(e.line, msg))?;
                        // A bundle's is checked as it is read; an input
                        // manifest's once the bundle tool has said what it
                        // creates (`check_min_rauc_version`), as RAUC does.
                        if origin == ManifestOrigin::Bundle {
                            check_min_rauc_version(&v).map_err(|msg| err_at(e.line, msg))?;
                        }
                        m.update.min_rauc_version = Some(v);
                    }
                }
                "bundle" => {
                    if let Some(e) = r.take("format") {
                        let v = keyfile::unescape_string(&e.raw).map_err(|msg| err_at(e.line, msg))?;
                        m.bundle.format = BundleFormat::parse(&v)
                            .ok_or_else(|| err_at(e.line, format!("Invalid format value '{v}' in group '[bundle]'")))?;
                        m.bundle.format_explicit = true;
                    }
                    if m.bundle.format != BundleFormat::Plain {
                        let hash =
                            r.take("verity-hash").map(|e| parse_hex32(&e.raw, "verity-hash", e.line)).transpose()?;
                        let salt =
                            r.take("verity-salt").map(|e| parse_hex32(&e.raw, "verity-salt", e.line)).transpose()?;
                        let size = match r.take("verity-size") {
                            Some(e) => {
                                let n = keyfile::parse_u64(&e.raw).filter(|n| *n > 0 && n % 4096 == 0).ok_or_else(|| {
                                    err_at(e.line, format!("Invalid value '{}' for key 'verity-size': must be a non-zero multiple of 4096", e.raw))
                                })?;
                                Some(n)
                            }
                            None => None,
                        };
                        match (hash, salt, size) {
                            (Some(hash), Some(salt), Some(size)) => {
                                m.bundle.verity = Some(VerityParams { hash, salt, size })
                            }
                            (None, None, None) => {}
                            _ => {
                                return Err(err_at(
                                    group.line,
                                    "Incomplete verity parameters in group '[bundle]': 'verity-hash', 'verity-salt' and 'verity-size' go together",
                                ));
                            }
                        }
                    }
                    if m.bundle.format == BundleFormat::Crypt
                        && let Some(e) = r.take("crypt-key")
                    {
                        m.bundle.crypt_key = Some(parse_hex32(&e.raw, "crypt-key", e.line)?);
                    }
                }
                "hooks" => {
                    m.hooks.filename = r.string("filename")?;
                    if let Some(list) = r.list("hooks")? {
                        for h in list {
                            if h != "install-check" {
                                return Err(err_at(
                                    group.entry("hooks").map_or(group.line, |e| e.line),
                                    format!("install hook type '{h}' not supported"),
                                ));
                            }
                            if !m.hooks.hooks.contains(&h) {
                                m.hooks.hooks.push(h);
                            }
                        }
                    }
                }
                "handler" => {
                    m.handler.filename = r.string("filename")?;
                    m.handler.args = r.string("args")?;
                    if m.handler.args.is_some() && m.handler.filename.is_none() {
                        return Err(err_at(
                            group.line,
                            "Handler 'args' given without handler 'filename' in group '[handler]'",
                        ));
                    }
                }
                "rollout" => {
                    r.take_all();
                }
                _ if name.starts_with("image.") => m.images.push(parse_image(&mut r, group.line, origin)?),
                _ if name.starts_with("meta.") => {
                    let label = &name["meta.".len()..];
                    if !is_meta_name(label) {
                        return Err(err_at(
                            group.line,
                            format!(
                                "Invalid metadata label '{label}': only ASCII letters, digits, '-' and '_' are allowed"
                            ),
                        ));
                    }
                    let mut mg = MetaGroup { label: label.to_string(), entries: Vec::new() };
                    for e in r.take_all() {
                        if !is_meta_name(&e.key) {
                            return Err(err_at(
                                e.line,
                                format!("Invalid metadata key '{}' in group '[{name}]'", e.key),
                            ));
                        }
                        let v = keyfile::unescape_string(&e.raw).map_err(|msg| err_at(e.line, msg))?;
                        mg.entries.push((e.key.clone(), v));
                    }
                    m.meta.push(mg);
                }
                _ => return Err(err_at(group.line, format!("Invalid group '[{name}]'"))),
            }
            r.finish()?;
        }
        if !have_update || m.update.compatible.is_empty() {
            return Err(err("Missing key 'compatible' in group '[update]'"));
        }
        if !m.hooks.hooks.is_empty() && m.hooks.filename.is_none() {
            return Err(err("Hooks used, but no hook 'filename' defined in [hooks] section"));
        }
        let any_slot_hooks = m.images.iter().any(|i| i.hooks != ImageHooks::default());
        if any_slot_hooks && m.hooks.filename.is_none() {
            return Err(err("Hooks used, but no hook 'filename' defined in [hooks] section"));
        }
        Ok(m)
    }

    /// Serializes in RAUC's normalized order (spec §2.9).
    pub fn to_keyfile(&self, copy: ManifestCopy) -> KeyFile {
        let mut kf = KeyFile::default();
        let u = kf.group_mut("update");
        u.set_string("compatible", &self.update.compatible);
        for (k, v) in [
            ("version", &self.update.version),
            ("description", &self.update.description),
            ("build", &self.update.build),
            ("min-rauc-version", &self.update.min_rauc_version),
        ] {
            if let Some(v) = v {
                u.set_string(k, v);
            }
        }
        if self.bundle.format != BundleFormat::Plain || self.bundle.format_explicit {
            let b = kf.group_mut("bundle");
            let inline = copy == ManifestCopy::Inline;
            if inline
                && self.bundle.format == BundleFormat::Crypt
                && let Some(key) = &self.bundle.crypt_key
            {
                b.set_string("crypt-key", &hex::encode(key));
            }
            b.set_string("format", self.bundle.format.as_str());
            if inline && let Some(v) = &self.bundle.verity {
                b.set_string("verity-hash", &hex::encode(v.hash));
                b.set_string("verity-salt", &hex::encode(v.salt));
                b.set_string("verity-size", &v.size.to_string());
            }
        }
        if self.handler.filename.is_some() || self.handler.args.is_some() {
            let h = kf.group_mut("handler");
            if let Some(f) = &self.handler.filename {
                h.set_string("filename", f);
            }
            if let Some(a) = &self.handler.args {
                h.set_string("args", a);
            }
        }
        if self.hooks.filename.is_some() || !self.hooks.hooks.is_empty() {
            let h = kf.group_mut("hooks");
            if let Some(f) = &self.hooks.filename {
                h.set_string("filename", f);
            }
            if !self.hooks.hooks.is_empty() {
                h.set_list("hooks", &self.hooks.hooks);
            }
        }
        for img in &self.images {
            let g = kf.group_mut(&img.group_name());
            if let Some(s) = &img.sha256 {
                g.set_string("sha256", s);
            }
            if let Some(s) = img.size {
                g.set_string("size", &s.to_string());
            }
            if let Some(f) = &img.filename {
                g.set_string("filename", f);
            }
            if let Some(t) = img.explicit_type {
                g.set_string("type", t.as_str());
            }
            let hooks = img.hooks.names();
            for (key, list) in [
                ("hooks", hooks.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
                ("adaptive", img.adaptive.clone()),
                ("convert", img.convert.clone()),
                ("converted", img.converted.clone()),
            ] {
                if !list.is_empty() {
                    g.set_list(key, &list);
                }
            }
        }
        for mg in &self.meta {
            let g = kf.group_mut(&format!("meta.{}", mg.label));
            for (k, v) in &mg.entries {
                g.set_string(k, v);
            }
        }
        kf
    }

    /// The normalized text of the given copy.
    pub fn to_text(&self, copy: ManifestCopy) -> String {
        self.to_keyfile(copy).to_text()
    }

    /// Checks the rules every manifest read from a bundle must satisfy
    /// (spec §2.11), given the bundle's format.
    pub fn check_bundle_rules(&self, format: BundleFormat) -> Result<(), ManifestError> {
        for img in &self.images {
            if img.filename.is_some() {
                match &img.sha256 {
                    Some(s) if is_sha256_hex(s) => {}
                    Some(s) => {
                        return Err(err(format!("Invalid sha256 '{s}' for image '{}'", img.group_name())));
                    }
                    None => {
                        return Err(err(format!("Missing 'sha256' for image '[{}]'", img.group_name())));
                    }
                }
                if img.size.is_none() && !img.hooks.install {
                    return Err(err(format!("Missing 'size' for image '[{}]'", img.group_name())));
                }
            }
            if img.converted.len() != img.convert.len() {
                return Err(err(format!(
                    "Number of 'converted' entries does not match 'convert' for image '[{}]'",
                    img.group_name()
                )));
            }
        }
        if format == BundleFormat::Plain {
            if self.images.iter().any(|i| i.artifact.is_some()) {
                return Err(err("Artifacts are not supported in bundles using plain format"));
            }
            if self.images.iter().any(|i| !i.convert.is_empty()) {
                return Err(err("Converters are not supported in bundles using plain format"));
            }
        }
        Ok(())
    }

    /// Images used on a system with the given variant, one per slot class, in
    /// manifest order (spec §2.8). Artifact images are not included.
    pub fn select_images(&self, variant: Option<&str>) -> Result<Vec<&Image>, String> {
        let mut classes: Vec<&str> = Vec::new();
        for img in self.images.iter().filter(|i| i.artifact.is_none()) {
            if !classes.contains(&img.slotclass.as_str()) {
                classes.push(&img.slotclass);
            }
        }
        classes
            .into_iter()
            .map(|class| {
                let candidates = self.images.iter().filter(|i| i.artifact.is_none() && i.slotclass == class);
                let mut default = None;
                for img in candidates {
                    match (&img.variant, variant) {
                        (Some(v), Some(sys)) if v == sys => return Ok(img),
                        (None, _) if default.is_none() => default = Some(img),
                        _ => {}
                    }
                }
                default.ok_or_else(|| format!("Failed to find matching variant of image for slot class '{class}'"))
            })
            .collect()
    }

    /// `RAUC_META_<LABEL>_<KEY>` environment pairs (spec §2.7).
    pub fn meta_env(&self) -> Vec<(String, String)> {
        let norm = |s: &str| s.to_ascii_uppercase().replace('-', "_");
        self.meta
            .iter()
            .flat_map(|g| {
                g.entries.iter().map(move |(k, v)| (format!("RAUC_META_{}_{}", norm(&g.label), norm(k)), v.clone()))
            })
            .collect()
    }

    /// Checks the bundle's compatible against the system's.
    pub fn check_compatible(&self, system_compatible: &str) -> Result<(), String> {
        if self.update.compatible == system_compatible {
            Ok(())
        } else {
            Err(format!(
                "Compatible mismatch: Expected '{system_compatible}' but bundle manifest has '{}'",
                self.update.compatible
            ))
        }
    }

    /// Checks the bundle version against `[system] min-bundle-version`.
    pub fn check_min_bundle_version(&self, min: &str) -> Result<(), String> {
        let min_v = SemVer::parse(min).ok_or_else(|| format!("Failed to parse 'min-bundle-version' '{min}'"))?;
        let Some(version) = &self.update.version else {
            return Err(format!("Version mismatch: Expected at least '{min}' but bundle manifest has no version"));
        };
        match SemVer::parse(version) {
            Some(v) if v >= min_v => Ok(()),
            Some(_) => Err(format!("Version mismatch: Expected at least '{min}' but bundle manifest has '{version}'")),
            None => Err(format!("Version mismatch: Failed to parse bundle version '{version}'")),
        }
    }
}

/// SHA-256 over the exact manifest bytes, lowercase hex (spec §2.10).
pub fn manifest_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The manifest text without its secret: the `crypt-key` line of the
/// `[bundle]` group, which only the device that decrypted the bundle may
/// know. Everything else stays as it was, byte for byte.
pub fn without_secrets(text: &str) -> String {
    let mut group = "";
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            group = name;
        } else if group == "bundle" && t.split_once('=').is_some_and(|(k, _)| k.trim() == "crypt-key") {
            continue;
        }
        out.push_str(line);
    }
    out
}

impl Manifest {
    /// Checks `min-rauc-version`, if set: a version, not newer than the
    /// RAUC level rota implements, and above 1.13 (the key is 1.14's).
    pub fn check_min_rauc_version(&self) -> Result<(), String> {
        self.update.min_rauc_version.as_deref().map_or(Ok(()), check_min_rauc_version)
    }
}

fn check_min_rauc_version(v: &str) -> Result<(), String> {
    let parsed = SemVer::parse(v).ok_or_else(|| {
        format!("Failed to parse 'min-rauc-version'. Expected 'Major[.Minor[.Patch]][-pre_release]]', got '{v}'")
    })?;
    let current = SemVer::parse(RAUC_COMPAT_VERSION).expect("constant");
    if parsed > current {
        return Err(format!(
            "Minimum RAUC version in manifest ({v}) is newer than current version ({RAUC_COMPAT_VERSION})"
        ));
    }
    if parsed <= SemVer::parse("1.13").expect("constant") {
        return Err(format!("Minimum RAUC version field in manifest is only supported since 1.14 (not '{v}')"));
    }
    Ok(())
}

fn parse_image(r: &mut GroupReader<'_>, line: usize, origin: ManifestOrigin) -> Result<Image, ManifestError> {
    let name = r.name();
    let rest = &name["image.".len()..];
    let (target, variant) = match rest.split_once('.') {
        Some((t, v)) => (t, Some(v.to_string())),
        None => (rest, None),
    };
    let (slotclass, artifact) = match target.split_once('/') {
        Some((repo, a)) => (repo.to_string(), Some(a.to_string())),
        None => (target.to_string(), None),
    };
    if slotclass.is_empty() || artifact.as_deref() == Some("") || variant.as_deref() == Some("") {
        return Err(err_at(line, format!("Invalid group '[{name}]'")));
    }
    let mut img = Image { slotclass, artifact, variant, ..Image::default() };
    img.filename = r.string("filename")?;
    if let Some(f) = &img.filename
        && f.contains('/')
    {
        return Err(err_at(line, format!("Image filename '{f}' in group '[{name}]' must not contain '/'")));
    }
    if let Some(hooks) = r.list("hooks")? {
        for h in hooks {
            match h.as_str() {
                "pre-install" => img.hooks.pre_install = true,
                "install" => img.hooks.install = true,
                "post-install" => img.hooks.post_install = true,
                _ => return Err(err_at(line, format!("slot hook type '{h}' not supported"))),
            }
        }
        if img.hooks.install && (img.hooks.pre_install || img.hooks.post_install) {
            return Err(err_at(
                line,
                format!(
                    "An 'install' hook cannot be combined with 'pre-install' or 'post-install' in group '[{name}]'"
                ),
            ));
        }
    }
    if let Some(t) = r.string("type")? {
        if img.artifact.is_some() {
            return Err(err_at(line, format!("Key 'type' is not allowed for artifact image '[{name}]'")));
        }
        match ImageType::parse(&t) {
            Some(ty) => img.explicit_type = Some(ty),
            None if img.hooks.install => {}
            None => return Err(err_at(line, format!("Unsupported image type '{t}'"))),
        }
    }
    let sha = r.string("sha256")?;
    let size_entry = r.take("size");
    let converted = r.list("converted")?;
    if origin == ManifestOrigin::Input {
        if sha.is_some() || size_entry.is_some() || converted.is_some() {
            let key = if sha.is_some() {
                "sha256"
            } else if size_entry.is_some() {
                "size"
            } else {
                "converted"
            };
            return Err(err_at(
                line,
                format!(
                    "Key '{key}' in group '[{name}]' is generated by the bundle tool and must not be set in the input manifest"
                ),
            ));
        }
    } else {
        if let Some(s) = &sha
            && !is_sha256_hex(s)
        {
            return Err(err_at(line, format!("Invalid sha256 '{s}' for image '[{name}]'")));
        }
        img.sha256 = sha;
        img.size = match size_entry {
            Some(e) => Some(
                keyfile::parse_u64(&e.raw)
                    .ok_or_else(|| err_at(e.line, format!("Invalid size '{}' for image '[{name}]'", e.raw)))?,
            ),
            None => None,
        };
        img.converted = converted.unwrap_or_default();
    }
    img.adaptive = r.list("adaptive")?.unwrap_or_default();
    img.convert = r.list("convert")?.unwrap_or_default();
    for c in &img.convert {
        if !matches!(c.as_str(), "tar-extract" | "composefs" | "keep") {
            return Err(err_at(line, format!("Unsupported converter '{c}' in group '[{name}]'")));
        }
    }
    // Legacy per-image keys: accepted and dropped.
    for legacy in ["version", "description", "build"] {
        r.take(legacy);
    }
    if img.explicit_type == Some(ImageType::Emptyfs) && img.filename.is_some() {
        return Err(err_at(line, format!("Image '[{name}]' of type 'emptyfs' must not have a filename")));
    }
    let needs_filename = !img.hooks.install && img.explicit_type != Some(ImageType::Emptyfs);
    if img.filename.is_none() && (needs_filename || !img.adaptive.is_empty() || !img.convert.is_empty()) {
        return Err(err_at(line, format!("Missing 'filename' for image '[{name}]'")));
    }
    if img.artifact.is_none() && !img.hooks.install && img.image_type().is_none() {
        let f = img.filename.as_deref().unwrap_or_default();
        return Err(err_at(
            line,
            format!("No 'type=' set and unable to map extension of file '{f}' to known image type"),
        ));
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBSERVED: &str = "[update]
compatible=Test Config
version=2024.08-1
description=Spec test bundle
build=20240824

[bundle]
format=verity
verity-hash=3429e221c64004558430edf2c5f784a018027aec51a1e7d986bbf7eae42bc5e3
verity-salt=674ce3109fd9a74c093b4ef7690281bd3a77b102ab15a8e468bdbcc1c9bc4c93
verity-size=4096

[hooks]
filename=hook.sh
hooks=install-check;

[image.rootfs]
sha256=98db1bd96b3b1f1a528850b5b14b6759b9956e0a18d315ce0a68f1deb262c2ee
size=262144
filename=rootfs.ext4
hooks=pre-install;post-install;
adaptive=block-hash-index;

[image.appfs]
sha256=cf9628d72751595ce554b62745488ad52bd49529165acb235c7fec87db77a833
size=65536
filename=appfs.img
type=raw

[meta.version]
channel=beta
release-notes=foo bar
";

    #[test]
    fn observed_inline_manifest_round_trips_byte_for_byte() {
        let m = Manifest::parse(OBSERVED, ManifestOrigin::Bundle).unwrap();
        assert_eq!(m.bundle.format, BundleFormat::Verity);
        assert_eq!(m.images.len(), 2);
        assert_eq!(m.images[0].image_type(), Some(ImageType::Ext4));
        assert_eq!(m.images[0].explicit_type, None);
        assert_eq!(m.images[1].explicit_type, Some(ImageType::Raw));
        assert_eq!(m.to_text(ManifestCopy::Inline), OBSERVED);
        let internal = m.to_text(ManifestCopy::Internal);
        assert!(internal.contains("[bundle]\nformat=verity\n\n[hooks]"), "{internal}");
        assert!(!internal.contains("verity-"));
    }

    #[test]
    fn normalizes_input_order() {
        let input = "[image.rootfs]\nfilename=r.img\nhooks=post-install;pre-install\n[hooks]\nfilename=h.sh\n[update]\nbuild=b\ncompatible=c\n";
        let mut m = Manifest::parse(input, ManifestOrigin::Input).unwrap();
        m.images[0].sha256 = Some("0".repeat(64));
        m.images[0].size = Some(4096);
        assert_eq!(
            m.to_text(ManifestCopy::Internal),
            format!(
                "[update]\ncompatible=c\nbuild=b\n\n[hooks]\nfilename=h.sh\n\n[image.rootfs]\nsha256={}\nsize=4096\nfilename=r.img\nhooks=pre-install;post-install;\n",
                "0".repeat(64)
            )
        );
    }

    #[test]
    fn plain_format_written_only_when_explicit() {
        let m = Manifest::parse("[update]\ncompatible=c\n[image.a]\nfilename=a.img\n", ManifestOrigin::Input).unwrap();
        assert!(!m.to_text(ManifestCopy::Internal).contains("[bundle]"));
        let m = Manifest::parse("[update]\ncompatible=c\n[bundle]\nformat=plain\n", ManifestOrigin::Input).unwrap();
        assert!(m.to_text(ManifestCopy::Internal).contains("[bundle]\nformat=plain\n"));
    }

    #[test]
    fn crypt_key_order() {
        let text = format!(
            "[update]\ncompatible=c\n\n[bundle]\ncrypt-key={k}\nformat=crypt\nverity-hash={k}\nverity-salt={k}\nverity-size=8192\n",
            k = "ab".repeat(32)
        );
        let m = Manifest::parse(&text, ManifestOrigin::Bundle).unwrap();
        assert_eq!(m.bundle.crypt_key, Some([0xab; 32]));
        assert_eq!(m.to_text(ManifestCopy::Inline), text);
        assert_eq!(m.to_text(ManifestCopy::Internal), "[update]\ncompatible=c\n\n[bundle]\nformat=crypt\n");
    }

    #[test]
    fn the_crypt_key_is_left_out_of_a_shown_manifest() {
        let k = "ab".repeat(32);
        let text = format!(
            "[update]\ncompatible=c\ndescription=crypt-key=kept-here\n\n[bundle]\ncrypt-key = {k}\nformat=crypt\n# crypt-key={k}\n[image.a]\nfilename=a.img\n"
        );
        let shown = without_secrets(&text);
        assert!(!shown.contains(&format!("= {k}")), "{shown}");
        assert_eq!(shown, text.replace(&format!("crypt-key = {k}\n"), ""));
        let m = Manifest::parse(&shown, ManifestOrigin::Bundle).unwrap();
        assert_eq!((m.bundle.format, m.bundle.crypt_key), (BundleFormat::Crypt, None));
    }

    #[test]
    fn min_rauc_version_is_kept() {
        let m = Manifest::parse("[update]\ncompatible=c\nmin-rauc-version=1.14\n", ManifestOrigin::Input).unwrap();
        assert!(m.to_text(ManifestCopy::Internal).contains("min-rauc-version=1.14\n"));
        let check = |v: &str| {
            let text = format!("[update]\ncompatible=c\nmin-rauc-version={v}\n");
            let input = Manifest::parse(&text, ManifestOrigin::Input).unwrap().check_min_rauc_version();
            let bundled = Manifest::parse(&text, ManifestOrigin::Bundle).map(|_| ()).map_err(|e| e.message);
            assert_eq!(input, bundled, "{v}");
            input
        };
        let newer = |v: &str| {
            format!("Minimum RAUC version in manifest ({v}) is newer than current version ({RAUC_COMPAT_VERSION})")
        };
        let old = |v: &str| format!("Minimum RAUC version field in manifest is only supported since 1.14 (not '{v}')");
        assert_eq!(check("9.0"), Err(newer("9.0")));
        assert_eq!(check("1000-rc.1+21000101"), Err(newer("1000-rc.1+21000101")));
        assert_eq!(check("1.13"), Err(old("1.13")));
        assert_eq!(check("1.13.0"), Err(old("1.13.0")));
        assert_eq!(check("1.2"), Err(old("1.2")));
        // RAUC compares with 1.13 itself, so a later 1.13.x passes.
        assert_eq!(check("1.13.9"), Ok(()));
        assert_eq!(check("1.14-dev"), Ok(()), "a pre-release of 1.14 is above 1.13");
        assert_eq!(check("1.14"), Ok(()));
        assert_eq!(
            check("bad_version"),
            Err("Failed to parse 'min-rauc-version'. Expected 'Major[.Minor[.Patch]][-pre_release]]', got 'bad_version'".into())
        );
    }

    fn parse_err(text: &str) -> String {
        Manifest::parse(text, ManifestOrigin::Bundle).unwrap_err().message
    }

    #[test]
    fn strict_errors_use_spec_wording() {
        assert_eq!(parse_err("[update]\ncompatible=c\nfoo=1\n"), "Invalid key 'foo' in group '[update]'");
        assert_eq!(parse_err("[update]\ncompatible=c\n[weird]\n"), "Invalid group '[weird]'");
        assert_eq!(parse_err("[update]\ncompatible=\n"), "Missing value for key 'compatible'");
        assert_eq!(
            parse_err("[update]\ncompatible=c\n[bundle]\nformat=zip\n"),
            "Invalid format value 'zip' in group '[bundle]'"
        );
        assert_eq!(
            parse_err("[update]\ncompatible=c\n[bundle]\nverity-hash=00\n"),
            "Invalid key 'verity-hash' in group '[bundle]'"
        );
        assert_eq!(
            parse_err(&format!("[update]\ncompatible=c\n[bundle]\nformat=verity\ncrypt-key={}\n", "0".repeat(64))),
            "Invalid key 'crypt-key' in group '[bundle]'"
        );
        assert_eq!(
            parse_err("[update]\ncompatible=c\n[hooks]\nfilename=h\nhooks=install-check;bogus\n"),
            "install hook type 'bogus' not supported"
        );
        assert_eq!(
            parse_err("[update]\ncompatible=c\n[hooks]\nhooks=install-check\n"),
            "Hooks used, but no hook 'filename' defined in [hooks] section"
        );
        assert_eq!(
            parse_err("[update]\ncompatible=c\n[hooks]\nfilename=h\n[image.a]\nfilename=a.img\nhooks=later\n"),
            "slot hook type 'later' not supported"
        );
        assert_eq!(
            parse_err("[update]\ncompatible=c\n[image.a]\nfilename=a.img\ntype=zip\n"),
            "Unsupported image type 'zip'"
        );
        assert_eq!(
            parse_err("[update]\ncompatible=c\n[image.a]\nfilename=a.bin\n"),
            "No 'type=' set and unable to map extension of file 'a.bin' to known image type"
        );
        assert!(parse_err("[update]\nversion=1\n").contains("compatible"));
    }

    #[test]
    fn input_manifest_must_not_carry_generated_keys() {
        let e = Manifest::parse("[update]\ncompatible=c\n[image.a]\nfilename=a.img\nsize=1\n", ManifestOrigin::Input)
            .unwrap_err();
        assert!(e.message.contains("'size'"), "{}", e.message);
    }

    #[test]
    fn filename_type_mapping_follows_rauc_order() {
        let cases = [
            ("root.ext4.caibx", "ext4-caibx"),
            ("a.img.caibx", "raw-caibx"),
            ("a.squashfs-xz.caibx", "squashfs-caibx"),
            ("a.catar", "catar"),
            ("rootfs.tar.gz", "tar"),
            ("x.tgz", "tar"),
            ("a.ext4", "ext4"),
            ("a.vfat", "vfat"),
            ("a.img", "raw"),
            ("a.squashfs-lz4", "squashfs"),
            ("a.squashfs", "squashfs"),
            ("a.ubifs", "ubifs"),
        ];
        for (f, t) in cases {
            assert_eq!(ImageType::from_filename(f).map(|t| t.as_str()), Some(t), "{f}");
        }
        assert_eq!(ImageType::from_filename("a.bin"), None);
    }

    #[test]
    fn compressed_images_keep_their_inner_type() {
        let img =
            |f: &str, t: Option<ImageType>| Image { filename: Some(f.into()), explicit_type: t, ..Default::default() };
        for (f, t, c) in [
            ("root.ext4.zst", ImageType::Ext4, Compression::Zstd),
            ("root.img.gz", ImageType::Raw, Compression::Gzip),
            ("boot.vfat.xz", ImageType::Vfat, Compression::Xz),
            ("a.squashfs.zst", ImageType::Squashfs, Compression::Zstd),
        ] {
            assert_eq!(img(f, None).image_type(), Some(t), "{f}");
            assert_eq!(img(f, None).compression(), Some(c), "{f}");
        }
        // An explicit raw type with a compression suffix is compressed too.
        assert_eq!(img("firmware.bin.gz", Some(ImageType::Raw)).compression(), Some(Compression::Gzip));
        // Tar archives are tar's business; unknown inner names stay unmapped.
        assert_eq!(img("root.tar.gz", None).compression(), None);
        assert_eq!(ImageType::from_filename("notes.txt.gz"), None);
        assert_eq!(ImageType::from_filename("a.caidx.gz"), None);
        assert_eq!(ImageType::from_filename(".gz"), None);
        assert_eq!(ImageType::from_filename("root.img.bz2"), None);
        assert_eq!(img("root.ext4", None).compression(), None);
    }

    #[test]
    fn variants_are_selected_per_class() {
        let text = "[update]\ncompatible=c\n[image.rootfs.v1]\nfilename=v1.img\n[image.rootfs]\nfilename=def.img\n[image.rootfs.v2]\nfilename=v2.img\n[image.only.x]\nfilename=x.img\n";
        let m = Manifest::parse(text, ManifestOrigin::Input).unwrap();
        let pick =
            |v| m.select_images(v).map(|imgs| imgs.iter().map(|i| i.filename.clone().unwrap()).collect::<Vec<_>>());
        assert_eq!(pick(Some("v2")).unwrap_err(), "Failed to find matching variant of image for slot class 'only'");
        let m2 = Manifest::parse(
            "[update]\ncompatible=c\n[image.rootfs.v1]\nfilename=v1.img\n[image.rootfs]\nfilename=def.img\n",
            ManifestOrigin::Input,
        )
        .unwrap();
        let pick2 = |v| m2.select_images(v).unwrap().iter().map(|i| i.filename.clone().unwrap()).collect::<Vec<_>>();
        assert_eq!(pick2(Some("v1")), vec!["v1.img"]);
        assert_eq!(pick2(Some("v9")), vec!["def.img"]);
        assert_eq!(pick2(None), vec!["def.img"]);
        assert_eq!(pick(Some("x")).unwrap(), vec!["def.img", "x.img"]);
        assert_eq!(pick(None).unwrap_err(), "Failed to find matching variant of image for slot class 'only'");
    }

    #[test]
    fn checks_compatible_and_version() {
        let m = Manifest::parse("[update]\ncompatible=Other\nversion=2024.08-1\n", ManifestOrigin::Bundle).unwrap();
        assert_eq!(
            m.check_compatible("Test Config").unwrap_err(),
            "Compatible mismatch: Expected 'Test Config' but bundle manifest has 'Other'"
        );
        assert!(m.check_compatible("Other").is_ok());
        assert!(m.check_min_bundle_version("2024.08").is_err());
        assert!(m.check_min_bundle_version("2024.7").is_ok());
        assert_eq!(
            m.check_min_bundle_version("2025").unwrap_err(),
            "Version mismatch: Expected at least '2025' but bundle manifest has '2024.08-1'"
        );
    }

    #[test]
    fn meta_env_names() {
        let m = Manifest::parse("[update]\ncompatible=c\n[meta.my-label]\nrelease-notes=x\n", ManifestOrigin::Bundle)
            .unwrap();
        assert_eq!(m.meta_env(), vec![("RAUC_META_MY_LABEL_RELEASE_NOTES".to_string(), "x".to_string())]);
        assert!(Manifest::parse("[update]\ncompatible=c\n[meta.a.b]\nk=v\n", ManifestOrigin::Bundle).is_err());
    }

    #[test]
    fn bundle_rules() {
        let m = Manifest::parse("[update]\ncompatible=c\n[image.a]\nfilename=a.img\n", ManifestOrigin::Bundle).unwrap();
        assert!(m.check_bundle_rules(BundleFormat::Verity).unwrap_err().message.contains("sha256"));
        let m = Manifest::parse("[update]\ncompatible=c\n[image.repo/art]\nfilename=a.tar\n", ManifestOrigin::Input)
            .unwrap();
        assert!(m.check_bundle_rules(BundleFormat::Plain).is_err());
    }
}
