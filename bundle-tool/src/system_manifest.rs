//! The system manifest of a multi-ECU update: which ECU gets which bundle,
//! the system version that orders updates, and the priorities updates and
//! reboots run in. It travels as CMS SignedData with the manifest text
//! inside, signed like a bundle and checked against the same keyring before
//! anything it names is fetched.
//!
//! ```text
//! [system]
//! format=1                    # optional; only 1 is understood
//! compatible=Example Charger  # the whole system's compatible
//! version=42                  # system version: an integer that only grows
//! allow-downgrade=false       # optional: lets a bundle version go down
//! description=Release 2.1     # optional
//!
//! [ecu.main]                  # one group per ECU, [ecu.<id>]
//! bundle=https://updates.example.com/main-2.1.0.raucb
//! manifest-hash=<SHA-256 of the bundle's manifest, 64 lowercase hex>
//! compatible=Example Charger Main
//! version=2.1.0               # the bundle's version, a semantic version
//! update-priority=10          # optional, 0: higher ones prepare first
//! reboot-priority=0           # optional, 0: higher ones switch first
//! ```

use crate::error::{Error, Result};
use crate::keyfile::{GroupReader, KeyFile, KeyFileError};
use crate::semver::SemVer;
use crate::signature::{self, SignatureInfo, Signer, VerifyOptions};
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// The one format version this code reads and writes.
pub const FORMAT: u64 = 1;
/// Longest ECU identifier.
pub const MAX_ECU_ID: usize = 64;
/// Largest signed system manifest accepted (the text is a few KiB at most).
pub const MAX_SIZE: usize = 1 << 20;

/// What one ECU is to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcuUpdate {
    /// The ECU's identifier (`[ecu.<id>]`).
    pub id: String,
    /// Where the ECU fetches its bundle: an `http(s)://` URL or a path.
    pub bundle: String,
    /// SHA-256 of the bundle's manifest, lowercase hex: the ECU installs
    /// only a bundle with exactly this manifest (`require-manifest-hash`).
    pub manifest_hash: String,
    /// The bundle's compatible, which must be the ECU's.
    pub compatible: String,
    /// The bundle's version.
    pub version: String,
    /// Groups of ECUs prepare in descending order of this.
    pub update_priority: u32,
    /// Groups of ECUs switch and reboot in descending order of this.
    pub reboot_priority: u32,
}

/// A parsed system manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemManifest {
    /// The system's compatible: the main ECU's `[system] compatible`.
    pub compatible: String,
    /// The system version; an update must carry a higher one than installed.
    pub version: u64,
    /// Whether a bundle version may be lower than the ECU's installed one.
    pub allow_downgrade: bool,
    /// Free text.
    pub description: Option<String>,
    /// The ECUs in file order.
    pub ecus: Vec<EcuUpdate>,
}

/// What is installed, for the anti-rollback check.
#[derive(Debug, Clone, Default)]
pub struct Installed {
    /// The system version of the last committed system update.
    pub system_version: Option<u64>,
    /// The booted bundle version of each ECU that reported one.
    pub ecu_versions: BTreeMap<String, String>,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::Manifest(KeyFileError::new(message))
}

/// Whether `id` can name an ECU: 1 to [`MAX_ECU_ID`] letters, digits, `-`, `_`, `.`.
pub fn is_ecu_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ECU_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn priority(r: &mut GroupReader<'_>, key: &str) -> Result<u32> {
    match r.uint(key)? {
        None => Ok(0),
        Some(v) => u32::try_from(v)
            .map_err(|_| invalid(format!("Key '{key}' in group '[{}]' is larger than {}", r.name(), u32::MAX))),
    }
}

fn required(r: &mut GroupReader<'_>, key: &str) -> Result<String> {
    r.string(key)?.ok_or_else(|| invalid(format!("Missing key '{key}' in group '[{}]'", r.name())))
}

impl EcuUpdate {
    fn parse(id: &str, r: &mut GroupReader<'_>) -> Result<EcuUpdate> {
        let e = EcuUpdate {
            id: id.to_string(),
            bundle: required(r, "bundle")?,
            manifest_hash: required(r, "manifest-hash")?,
            compatible: required(r, "compatible")?,
            version: required(r, "version")?,
            update_priority: priority(r, "update-priority")?,
            reboot_priority: priority(r, "reboot-priority")?,
        };
        let hex =
            e.manifest_hash.len() == 64 && e.manifest_hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex {
            return Err(invalid(format!(
                "Invalid value for key 'manifest-hash' in group '[{}]': expected 64 lowercase hex characters",
                r.name()
            )));
        }
        if SemVer::parse(&e.version).is_none() {
            return Err(invalid(format!(
                "Invalid value for key 'version' in group '[{}]': '{}' is not a semantic version",
                r.name(),
                e.version
            )));
        }
        Ok(e)
    }
}

impl SystemManifest {
    /// Parses manifest text strictly: unknown groups and keys are errors,
    /// as they are in bundle manifests.
    pub fn parse(text: &str) -> Result<SystemManifest> {
        let kf = KeyFile::parse(text)?;
        let mut system = None;
        let mut ecus = Vec::new();
        for group in &kf.groups {
            let mut r = GroupReader::new(group);
            if group.name == "system" {
                if let Some(format) = r.uint("format")?
                    && format != FORMAT
                {
                    return Err(invalid(format!(
                        "Unsupported system manifest format {format} (this is format {FORMAT})"
                    )));
                }
                system = Some(SystemManifest {
                    compatible: required(&mut r, "compatible")?,
                    version: r.uint("version")?.ok_or_else(|| invalid("Missing key 'version' in group '[system]'"))?,
                    allow_downgrade: r.boolean("allow-downgrade")?.unwrap_or(false),
                    description: r.string("description")?,
                    ecus: Vec::new(),
                });
            } else if let Some(id) = group.name.strip_prefix("ecu.") {
                if !is_ecu_id(id) {
                    return Err(Error::Manifest(KeyFileError::at_group(
                        group,
                        format!("Invalid ECU id '{id}': 1 to {MAX_ECU_ID} letters, digits, '-', '_' or '.'"),
                    )));
                }
                ecus.push(EcuUpdate::parse(id, &mut r)?);
            } else {
                return Err(Error::Manifest(KeyFileError::at_group(
                    group,
                    format!("Invalid group '[{}]' in system manifest", group.name),
                )));
            }
            r.finish()?;
        }
        let mut m = system.ok_or_else(|| invalid("Missing group '[system]' in system manifest"))?;
        if ecus.is_empty() {
            return Err(invalid("System manifest names no ECU: at least one '[ecu.<id>]' group is needed"));
        }
        m.ecus = ecus;
        Ok(m)
    }

    /// The manifest as text, in the form [`SystemManifest::parse`] reads.
    pub fn to_text(&self) -> String {
        let mut kf = KeyFile::default();
        let s = kf.group_mut("system");
        s.set_raw("format", FORMAT.to_string());
        s.set_string("compatible", &self.compatible);
        s.set_raw("version", self.version.to_string());
        if self.allow_downgrade {
            s.set_raw("allow-downgrade", "true");
        }
        if let Some(d) = &self.description {
            s.set_string("description", d);
        }
        for e in &self.ecus {
            let g = kf.group_mut(&format!("ecu.{}", e.id));
            g.set_string("bundle", &e.bundle);
            g.set_string("manifest-hash", &e.manifest_hash);
            g.set_string("compatible", &e.compatible);
            g.set_string("version", &e.version);
            g.set_raw("update-priority", e.update_priority.to_string());
            g.set_raw("reboot-priority", e.reboot_priority.to_string());
        }
        kf.to_text()
    }

    /// The update of ECU `id`.
    pub fn ecu(&self, id: &str) -> Option<&EcuUpdate> {
        self.ecus.iter().find(|e| e.id == id)
    }

    /// The ECUs grouped by `key`, highest first; file order within a group.
    fn groups_by(&self, key: impl Fn(&EcuUpdate) -> u32) -> Vec<Vec<&EcuUpdate>> {
        let mut sorted: Vec<&EcuUpdate> = self.ecus.iter().collect();
        sorted.sort_by_key(|e| Reverse(key(e)));
        let mut groups: Vec<Vec<&EcuUpdate>> = Vec::new();
        for e in sorted {
            match groups.last_mut() {
                Some(g) if key(g[0]) == key(e) => g.push(e),
                _ => groups.push(vec![e]),
            }
        }
        groups
    }

    /// The ECUs in the groups they prepare in: highest update priority
    /// first, each group's ECUs together.
    pub fn update_groups(&self) -> Vec<Vec<&EcuUpdate>> {
        self.groups_by(|e| e.update_priority)
    }

    /// The ECUs in the groups they switch and reboot in: highest reboot
    /// priority first.
    pub fn reboot_groups(&self) -> Vec<Vec<&EcuUpdate>> {
        self.groups_by(|e| e.reboot_priority)
    }

    /// The anti-rollback rule: the system version must be higher than the
    /// installed one, and no ECU's bundle version lower than what it runs
    /// (by semantic version) unless the manifest allows downgrades.
    pub fn check_rollback(&self, installed: &Installed) -> Result<()> {
        if let Some(current) = installed.system_version
            && self.version <= current
        {
            return Err(Error::Other(format!(
                "Refusing system version {}: not newer than the installed system version {current}",
                self.version
            )));
        }
        if self.allow_downgrade {
            return Ok(());
        }
        for e in &self.ecus {
            let Some(current) = installed.ecu_versions.get(&e.id) else { continue };
            // Both parse: the manifest's is checked on parsing; an installed
            // version that is not a semantic version cannot be compared.
            let (Some(new), Some(old)) = (SemVer::parse(&e.version), SemVer::parse(current)) else { continue };
            if new < old {
                return Err(Error::Other(format!(
                    "Refusing ECU '{}': bundle version {} is lower than the installed {current} \
                     and the system manifest does not allow downgrades",
                    e.id, e.version
                )));
            }
        }
        Ok(())
    }
}

/// A system manifest whose signature was checked.
#[derive(Debug, Clone)]
pub struct SignedSystemManifest {
    /// The parsed manifest.
    pub manifest: SystemManifest,
    /// The exact signed text.
    pub text: Vec<u8>,
    /// The signature as verified.
    pub signature: SignatureInfo,
}

/// Reads a signed system manifest from `path` (a regular file), at most one
/// byte more than [`MAX_SIZE`], so that [`open`] refuses a larger one.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = crate::bundle::open_regular(path)
        .map_err(|e| Error::Io(format!("Failed to open system manifest '{}': {e}", path.display())))?;
    let mut der = Vec::new();
    f.take(MAX_SIZE as u64 + 1)
        .read_to_end(&mut der)
        .map_err(|e| Error::Io(format!("Failed to read system manifest '{}': {e}", path.display())))?;
    Ok(der)
}

/// Signs manifest text (checked by parsing first) as CMS SignedData with
/// the text inside (DER).
pub fn sign(text: &str, signer: &Signer) -> Result<Vec<u8>> {
    SystemManifest::parse(text)?;
    signer.sign_inline(text.as_bytes())
}

/// Verifies a signed system manifest (DER CMS SignedData) against
/// `verify`'s keyring and parses the text it carries.
pub fn open(der: &[u8], verify: &VerifyOptions) -> Result<SignedSystemManifest> {
    if der.len() > MAX_SIZE {
        return Err(Error::Other(format!(
            "Invalid system manifest: {} bytes, larger than the {MAX_SIZE} bytes allowed",
            der.len()
        )));
    }
    let signature = signature::verify(der, None, verify)?;
    let text = signature
        .content
        .clone()
        .ok_or_else(|| Error::Other("Invalid system manifest: its signature carries no content".into()))?;
    let s = std::str::from_utf8(&text).map_err(|_| invalid("System manifest is not UTF-8 text"))?;
    Ok(SignedSystemManifest { manifest: SystemManifest::parse(s)?, text, signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn text(extra_system: &str) -> String {
        format!(
            "[system]\ncompatible=Charger\nversion=7\n{extra_system}\n\
             [ecu.main]\nbundle=https://o/main.raucb\nmanifest-hash={HASH}\ncompatible=Main\nversion=2.1.0\n\
             update-priority=1\nreboot-priority=0\n\
             [ecu.display]\nbundle=https://o/display.raucb\nmanifest-hash={HASH}\ncompatible=Display\nversion=1.0\n\
             reboot-priority=5\n\
             [ecu.pay]\nbundle=/srv/pay.raucb\nmanifest-hash={HASH}\ncompatible=Pay\nversion=3.0.0-rc1\n"
        )
    }

    #[test]
    fn parses_and_writes_back() {
        let m = SystemManifest::parse(&text("description=R 2")).unwrap();
        assert_eq!((m.compatible.as_str(), m.version, m.allow_downgrade), ("Charger", 7, false));
        assert_eq!(m.description.as_deref(), Some("R 2"));
        assert_eq!(m.ecus.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["main", "display", "pay"]);
        assert_eq!(m.ecu("pay").unwrap().update_priority, 0);
        assert_eq!(SystemManifest::parse(&m.to_text()).unwrap(), m);
    }

    #[test]
    fn an_oversized_manifest_is_refused_before_its_signature_is_read() {
        let e = open(&vec![0; MAX_SIZE + 1], &VerifyOptions::default()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("Invalid system manifest: {} bytes, larger than the {MAX_SIZE} bytes allowed", MAX_SIZE + 1)
        );
    }

    #[test]
    fn groups_run_highest_priority_first_in_file_order() {
        let m = SystemManifest::parse(&text("")).unwrap();
        let ids = |g: Vec<Vec<&EcuUpdate>>| -> Vec<Vec<String>> {
            g.into_iter().map(|g| g.into_iter().map(|e| e.id.clone()).collect()).collect()
        };
        assert_eq!(ids(m.update_groups()), [vec!["main".to_string()], vec!["display".into(), "pay".into()]]);
        assert_eq!(ids(m.reboot_groups()), [vec!["display".to_string()], vec!["main".into(), "pay".into()]]);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let cases = [
            (text("").replace("version=7\n", ""), "Missing key 'version' in group '[system]'"),
            (text("format=2"), "Unsupported system manifest format 2"),
            (text("colour=red"), "Invalid key 'colour' in group '[system]'"),
            (text("").replace("[ecu.pay]", "[ecu.p ay]"), "Invalid ECU id 'p ay'"),
            (text("").replace("[ecu.pay]", "[ecus]"), "Invalid group '[ecus]' in system manifest"),
            (text("").replacen(HASH, &HASH.to_uppercase(), 1), "expected 64 lowercase hex characters"),
            (text("").replace("version=1.0\n", "version=one\n"), "'one' is not a semantic version"),
            (text("").replace("compatible=Pay\n", ""), "Missing key 'compatible' in group '[ecu.pay]'"),
            (text("").replace("reboot-priority=5", "reboot-priority=4294967296"), "larger than 4294967295"),
            ("[system]\ncompatible=C\nversion=1\n".to_string(), "names no ECU"),
            (text("").replace("[system]", "[sys]"), "Invalid group '[sys]'"),
        ];
        for (t, want) in cases {
            let e = SystemManifest::parse(&t).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    #[test]
    fn anti_rollback() {
        let m = SystemManifest::parse(&text("")).unwrap();
        let mut installed = Installed { system_version: Some(6), ..Default::default() };
        m.check_rollback(&installed).unwrap();
        installed.system_version = Some(7);
        let e = m.check_rollback(&installed).unwrap_err().to_string();
        assert_eq!(e, "Refusing system version 7: not newer than the installed system version 7");
        installed.system_version = Some(8);
        assert!(m.check_rollback(&installed).is_err());

        installed.system_version = Some(1);
        installed.ecu_versions.insert("main".into(), "2.1.0".into());
        installed.ecu_versions.insert("pay".into(), "3.0.0-rc0".into());
        m.check_rollback(&installed).unwrap();
        installed.ecu_versions.insert("pay".into(), "3.0.0".into());
        let e = m.check_rollback(&installed).unwrap_err().to_string();
        assert!(e.starts_with("Refusing ECU 'pay': bundle version 3.0.0-rc1 is lower than the installed 3.0.0"), "{e}");
        let allowed = SystemManifest::parse(&text("allow-downgrade=true")).unwrap();
        allowed.check_rollback(&installed).unwrap();
        installed.system_version = Some(7);
        assert!(allowed.check_rollback(&installed).is_err(), "the system version never goes back");
    }
}
