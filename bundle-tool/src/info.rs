//! `info` output (spec §9.4): readable, shell, json, json-pretty and json-2
//! (the `InspectBundle` dictionary), built from a bundle's verified facts.

use crate::bundle::Bundle;
use crate::manifest::{BundleFormat, Image, Manifest};
use crate::signature::certinfo::CertInfo;
use crate::signature::envelope::Recipient;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;

/// An output format of `info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Labelled text for people.
    Readable,
    /// `KEY='value'` lines for `eval` in POSIX shells.
    Shell,
    /// Compact JSON.
    Json,
    /// JSON indented like json-glib.
    JsonPretty,
    /// The `InspectBundle` dictionary as pretty JSON.
    Json2,
}

impl OutputFormat {
    /// Parses `--output-format`; unknown names give RAUC's error text.
    pub fn parse(s: &str) -> Result<OutputFormat, String> {
        match s {
            "readable" => Ok(OutputFormat::Readable),
            "shell" => Ok(OutputFormat::Shell),
            "json" => Ok(OutputFormat::Json),
            "json-pretty" => Ok(OutputFormat::JsonPretty),
            "json-2" => Ok(OutputFormat::Json2),
            other => Err(format!("Unknown output format: '{other}'")),
        }
    }
}

/// Everything `info` shows about a bundle.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    /// The manifest in use.
    pub manifest: Manifest,
    /// Container format.
    pub format: BundleFormat,
    /// Whether the CMS was encrypted (crypt bundles).
    pub encrypted: bool,
    /// Manifest hash.
    pub manifest_hash: String,
    /// Whether the signature was verified.
    pub verified: bool,
    /// Certificate chains, one per signer.
    pub chains: Vec<Vec<CertInfo>>,
    /// Recipients of an encrypted CMS.
    pub recipients: Vec<Recipient>,
    /// The counts of each tree image, by file name (indexes that cannot be
    /// read are left out: installing them fails with the reason).
    pub trees: std::collections::BTreeMap<String, crate::tree::TreeSummary>,
}

impl BundleInfo {
    /// Collects the facts of an opened bundle.
    pub fn of(bundle: &Bundle) -> BundleInfo {
        let recipients =
            bundle.enveloped().and_then(|e| crate::signature::envelope::recipients(e).ok()).unwrap_or_default();
        BundleInfo {
            manifest: bundle.manifest().clone(),
            format: bundle.format(),
            encrypted: bundle.was_encrypted(),
            manifest_hash: bundle.manifest_hash(),
            verified: bundle.signature().verified,
            chains: bundle.signature().chains.clone(),
            recipients,
            trees: tree_summaries(bundle),
        }
    }

    /// The counts of `img`, when it is a tree image.
    pub fn tree(&self, img: &Image) -> Option<&crate::tree::TreeSummary> {
        self.trees.get(img.filename.as_deref()?)
    }
}

/// Reads the index of every tree image of `bundle` and counts it.
fn tree_summaries(bundle: &Bundle) -> std::collections::BTreeMap<String, crate::tree::TreeSummary> {
    let mut out = std::collections::BTreeMap::new();
    for img in bundle.manifest().images.iter().filter(|i| i.image_type() == Some(crate::manifest::ImageType::Tree)) {
        let Some(name) = &img.filename else { continue };
        let summary =
            bundle.read_file(name).ok().and_then(|text| crate::tree::FileIndex::summarize(&mut &text[..]).ok());
        if let Some(summary) = summary {
            out.insert(name.clone(), summary);
        }
    }
    out
}

/// GLib's `g_format_size`: decimal units, one decimal place.
pub fn format_size(size: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if size < 1000 {
        return if size == 1 { "1 byte".to_string() } else { format!("{size} bytes") };
    }
    let mut factor = 1000f64;
    for (i, unit) in UNITS.iter().enumerate() {
        let next = factor * 1000.0;
        if (size as f64) < next || i == UNITS.len() - 1 {
            return format!("{:.1} {unit}", size as f64 / factor);
        }
        factor = next;
    }
    unreachable!("the last unit always matches")
}

/// POSIX single-quoting (`'` becomes `'\''`).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

const BOLD: &str = "\x1b[1m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

fn quoted_or_null(v: &Option<String>) -> String {
    format!("'{}'", v.as_deref().unwrap_or("(null)"))
}

fn image_type_text(img: &Image) -> Option<String> {
    match (img.explicit_type, img.image_type()) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(t)) => Some(format!("{t} (detected)")),
        (None, None) => None,
    }
}

fn quote_each(items: &[String]) -> String {
    items.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(" ")
}

/// The readable text (HEAD layout).
pub fn readable(info: &BundleInfo, dump_cert: bool, dump_recipients: bool) -> String {
    let m = &info.manifest;
    let mut o = String::new();
    let _ = writeln!(o, "{:<16}'{}'", "Compatible:", m.update.compatible);
    let _ = writeln!(o, "{:<16}{}", "Version:", quoted_or_null(&m.update.version));
    let _ = writeln!(o, "{:<16}{}", "Description:", quoted_or_null(&m.update.description));
    let _ = writeln!(o, "{:<16}{}", "Build:", quoted_or_null(&m.update.build));
    let _ = writeln!(o, "{:<16}'{}'", "Hooks:", m.hooks.hooks.join(" "));
    let _ = write!(o, "{:<16}{}", "Bundle Format:", info.format);
    if info.format == BundleFormat::Crypt {
        if info.encrypted {
            let _ = write!(o, " {GREEN}[encrypted CMS]{RESET}");
        } else {
            let _ = write!(o, " {YELLOW}[unencrypted CMS]{RESET}");
        }
    }
    o.push('\n');
    if info.format == BundleFormat::Crypt {
        let _ = writeln!(o, "  {:<14}'<hidden>'", "Crypt Key:");
    }
    if let Some(v) = &m.bundle.verity {
        let _ = writeln!(o, "  {:<14}'{}'", "Verity Salt:", hex::encode(v.salt));
        let _ = writeln!(o, "  {:<14}'{}'", "Verity Hash:", hex::encode(v.hash));
        let _ = writeln!(o, "  {:<14}{}", "Verity Size:", v.size);
    }
    let _ = writeln!(o, "{:<16}'{}'", "Manifest Hash:", info.manifest_hash);
    if !m.meta.is_empty() {
        o.push_str("\nMetadata:\n");
        for g in &m.meta {
            let _ = writeln!(o, "  {}:", g.label);
            for (k, v) in &g.entries {
                let _ = writeln!(o, "    {k}: {v}");
            }
        }
    }
    let n = m.images.len();
    let _ = writeln!(o, "\n{n} Image{}:", if n == 1 { "" } else { "s" });
    for img in &m.images {
        let _ = writeln!(o, "  {BOLD}[{}]{RESET}", img.slotclass);
        if let Some(v) = &img.variant {
            let _ = writeln!(o, "    {:<11}{v}", "Variant:");
        }
        if let Some(a) = &img.artifact {
            let _ = writeln!(o, "    {:<11}{a}", "Artifact:");
        }
        let _ = writeln!(o, "    {:<11}{}", "Filename:", img.filename.as_deref().unwrap_or("(no image file)"));
        if let Some(t) = image_type_text(img) {
            let _ = writeln!(o, "    {:<11}{t}", "Type:");
        }
        let _ = writeln!(o, "    {:<11}{}", "Checksum:", img.sha256.as_deref().unwrap_or(""));
        let size = img.size.unwrap_or(0);
        let _ = writeln!(o, "    {:<11}{} ({size} bytes)", "Size:", format_size(size));
        let _ = writeln!(o, "    {:<11}{}", "Hooks:", img.hooks.names().join(" "));
        if !img.adaptive.is_empty() {
            let _ = writeln!(o, "    {:<11}{}", "Adaptive:", img.adaptive.join(" "));
        }
        if let Some(t) = info.tree(img) {
            let _ = writeln!(
                o,
                "    {:<11}{} files ({}, {} distinct contents), {} directories, {} symlinks, {} special files, {} hard links",
                "Tree:",
                t.files,
                format_size(t.bytes),
                t.contents,
                t.directories,
                t.symlinks,
                t.special,
                t.hard_links
            );
        }
        if !img.convert.is_empty() {
            let _ = writeln!(o, "    {:<11}{}", "Convert:", img.convert.join(" "));
        }
        if !img.converted.is_empty() {
            let _ = writeln!(o, "    {:<11}{}", "Converted:", quote_each(&img.converted));
        }
    }
    o.push('\n');
    if info.verified {
        for chain in &info.chains {
            o.push_str("Certificate Chain:\n");
            for (i, c) in chain.iter().enumerate() {
                let _ = writeln!(o, "{i:2} Subject: {}", c.subject);
                let _ = writeln!(o, "   Issuer: {}", c.issuer);
                let _ = writeln!(o, "   SPKI sha256: {}", c.spki_sha256);
                let _ = writeln!(o, "   Not Before: {}", c.not_before);
                let _ = writeln!(o, "   Not After:  {}", c.not_after);
            }
        }
    } else {
        o.push_str("Signature unverified\n");
    }
    if dump_cert {
        for c in info.chains.iter().filter_map(|ch| ch.first()) {
            o.push('\n');
            o.push_str(&c.text);
        }
    }
    if dump_recipients {
        let n = info.recipients.len();
        let _ = writeln!(o, "\n{n} Recipient{}:", if n == 1 { "" } else { "s" });
        for (i, r) in info.recipients.iter().enumerate() {
            let _ = writeln!(o, "{i:2} Type: {}", r.kind);
            if let Some(iss) = &r.issuer {
                let _ = writeln!(o, "   Issuer: {iss}");
            }
            if let Some(s) = &r.serial {
                let _ = writeln!(o, "   Serial: {s}");
            }
            if let Some(k) = &r.key_id {
                let _ = writeln!(o, "   Key ID: {k}");
            }
        }
    }
    o
}

/// `KEY='value'` lines (HEAD naming).
pub fn shell(info: &BundleInfo) -> String {
    let m = &info.manifest;
    let q = |v: &Option<String>| shell_quote(v.as_deref().unwrap_or(""));
    let mut o = String::new();
    let _ = writeln!(o, "RAUC_MF_COMPATIBLE={}", shell_quote(&m.update.compatible));
    let _ = writeln!(o, "RAUC_MF_VERSION={}", q(&m.update.version));
    let _ = writeln!(o, "RAUC_MF_DESCRIPTION={}", q(&m.update.description));
    let _ = writeln!(o, "RAUC_MF_BUILD={}", q(&m.update.build));
    let _ = writeln!(o, "RAUC_MF_HASH={}", shell_quote(&info.manifest_hash));
    let _ = writeln!(o, "RAUC_MF_FORMAT={}", shell_quote(info.format.as_str()));
    let _ = writeln!(o, "RAUC_MF_IMAGES={}", shell_quote(&m.images.len().to_string()));
    let _ = writeln!(o, "RAUC_MF_HOOKS={}", shell_quote(&m.hooks.hooks.join(" ")));
    for (k, v) in m.meta_env() {
        let _ = writeln!(o, "{k}={}", shell_quote(&v));
    }
    for (i, img) in m.images.iter().enumerate() {
        let _ = writeln!(o, "RAUC_IMAGE_NAME_{i}={}", q(&img.filename));
        let _ = writeln!(o, "RAUC_IMAGE_CLASS_{i}={}", shell_quote(&img.slotclass));
        let _ = writeln!(o, "RAUC_IMAGE_ARTIFACT_{i}={}", q(&img.artifact));
        let _ = writeln!(o, "RAUC_IMAGE_VARIANT_{i}={}", q(&img.variant));
        let _ = writeln!(o, "RAUC_IMAGE_DIGEST_{i}={}", q(&img.sha256));
        let _ = writeln!(o, "RAUC_IMAGE_SIZE_{i}={}", shell_quote(&img.size.unwrap_or(0).to_string()));
        let _ = writeln!(o, "RAUC_IMAGE_HOOKS_{i}={}", shell_quote(&img.hooks.names().join(" ")));
        for (key, list) in [("ADAPTIVE", &img.adaptive), ("CONVERT", &img.convert), ("CONVERTED", &img.converted)] {
            if !list.is_empty() {
                let _ = writeln!(o, "RAUC_IMAGE_{key}_{i}={}", shell_quote(&list.join(" ")));
            }
        }
        for (k, v) in info.tree(img).map(|t| t.fields()).into_iter().flatten() {
            let key = k.replace('-', "_").to_uppercase();
            let _ = writeln!(o, "RAUC_IMAGE_TREE_{key}_{i}={}", shell_quote(&v.to_string()));
        }
    }
    o
}

fn opt_str(v: &Option<String>) -> Value {
    v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

/// A tree image's counts as a JSON object.
fn tree_value(t: &crate::tree::TreeSummary) -> Value {
    Value::Object(t.fields().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
}

/// The `json`/`json-pretty` document.
pub fn json_value(info: &BundleInfo) -> Value {
    let m = &info.manifest;
    let images: Vec<Value> = m
        .images
        .iter()
        .map(|img| {
            let mut o = Map::new();
            o.insert("artifact".into(), opt_str(&img.artifact));
            o.insert("variant".into(), opt_str(&img.variant));
            o.insert("filename".into(), opt_str(&img.filename));
            o.insert("type".into(), img.image_type().map_or(Value::Null, |t| Value::String(t.to_string())));
            o.insert("checksum".into(), opt_str(&img.sha256));
            o.insert("size".into(), json!(img.size.unwrap_or(0)));
            o.insert("hooks".into(), json!(img.hooks.names()));
            o.insert("adaptive".into(), json!(img.adaptive));
            if !img.convert.is_empty() {
                o.insert("convert".into(), json!(img.convert));
            }
            if !img.converted.is_empty() {
                o.insert("converted".into(), json!(img.converted));
            }
            if let Some(t) = info.tree(img) {
                o.insert("tree".into(), tree_value(t));
            }
            let mut wrap = Map::new();
            wrap.insert(img.slotclass.clone(), Value::Object(o));
            Value::Object(wrap)
        })
        .collect();
    let mut root = Map::new();
    root.insert("compatible".into(), json!(m.update.compatible));
    root.insert("version".into(), opt_str(&m.update.version));
    root.insert("description".into(), opt_str(&m.update.description));
    root.insert("build".into(), opt_str(&m.update.build));
    root.insert("format".into(), json!(info.format.as_str()));
    root.insert("hooks".into(), json!(m.hooks.hooks));
    root.insert("hash".into(), json!(info.manifest_hash));
    root.insert("images".into(), Value::Array(images));
    Value::Object(root)
}

/// The `InspectBundle` dictionary (json-2 and D-Bus), keys in RAUC's order.
pub fn inspect_value(info: &BundleInfo) -> Value {
    let m = &info.manifest;
    let mut update = Map::new();
    update.insert("compatible".into(), json!(m.update.compatible));
    for (k, v) in [("version", &m.update.version), ("description", &m.update.description), ("build", &m.update.build)] {
        if let Some(v) = v {
            update.insert(k.into(), json!(v));
        }
    }
    let mut root = Map::new();
    root.insert("update".into(), Value::Object(update));
    if let Some(f) = &m.hooks.filename {
        root.insert("hooks".into(), json!({ "filename": f, "hooks": m.hooks.hooks }));
    }
    if m.handler.filename.is_some() {
        let mut h = Map::new();
        h.insert("filename".into(), opt_str(&m.handler.filename));
        if let Some(a) = &m.handler.args {
            h.insert("args".into(), json!(a));
        }
        root.insert("handler".into(), Value::Object(h));
    }
    let images: Vec<Value> = m
        .images
        .iter()
        .map(|img| {
            let mut o = Map::new();
            o.insert("slot-class".into(), json!(img.slotclass));
            for (k, v) in [("artifact", &img.artifact), ("variant", &img.variant), ("filename", &img.filename)] {
                if let Some(v) = v {
                    o.insert(k.into(), json!(v));
                }
            }
            if let Some(t) = img.image_type() {
                o.insert("type".into(), json!(t.as_str()));
            }
            if let Some(c) = &img.sha256 {
                o.insert("checksum".into(), json!(c));
            }
            if let Some(s) = img.size.filter(|s| *s > 0) {
                o.insert("size".into(), json!(s));
            }
            o.insert("hooks".into(), json!(img.hooks.names()));
            for (k, list) in [("adaptive", &img.adaptive), ("convert", &img.convert), ("converted", &img.converted)] {
                if !list.is_empty() {
                    o.insert(k.into(), json!(list));
                }
            }
            if let Some(t) = info.tree(img) {
                o.insert("tree".into(), tree_value(t));
            }
            Value::Object(o)
        })
        .collect();
    root.insert("images".into(), Value::Array(images));
    root.insert("manifest-hash".into(), json!(info.manifest_hash));
    let mut bundle = Map::new();
    bundle.insert("format".into(), json!(info.format.as_str()));
    if let Some(v) = &m.bundle.verity {
        bundle.insert("verity-hash".into(), json!(hex::encode(v.hash)));
        bundle.insert("verity-salt".into(), json!(hex::encode(v.salt)));
        bundle.insert("verity-size".into(), json!(v.size));
    }
    root.insert("bundle".into(), Value::Object(bundle));
    let mut meta = Map::new();
    for g in &m.meta {
        let entries: Map<String, Value> = g.entries.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        meta.insert(g.label.clone(), Value::Object(entries));
    }
    root.insert("meta".into(), Value::Object(meta));
    Value::Object(root)
}

/// json-glib's pretty layout: two-space indent, `"key" : value`.
pub fn to_pretty_json(v: &Value) -> String {
    let mut out = String::new();
    write_pretty(v, 0, &mut out);
    out
}

fn write_pretty(v: &Value, depth: usize, out: &mut String) {
    let pad = |n: usize| "  ".repeat(n);
    match v {
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Object(map) => {
            out.push_str("{\n");
            for (i, (k, val)) in map.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(" : ");
                write_pretty(val, depth + 1, out);
                if i + 1 < map.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push_str(&pad(depth));
            out.push('}');
        }
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) => {
            out.push_str("[\n");
            for (i, val) in items.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                write_pretty(val, depth + 1, out);
                if i + 1 < items.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push_str(&pad(depth));
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Renders `info` in the chosen format (with a trailing newline).
pub fn render(info: &BundleInfo, format: OutputFormat, dump_cert: bool, dump_recipients: bool) -> String {
    match format {
        OutputFormat::Readable => readable(info, dump_cert, dump_recipients),
        OutputFormat::Shell => shell(info),
        OutputFormat::Json => format!("{}\n", json_value(info)),
        OutputFormat::JsonPretty => format!("{}\n", to_pretty_json(&json_value(info))),
        OutputFormat::Json2 => format!("{}\n", to_pretty_json(&inspect_value(info))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ManifestOrigin;

    fn sample() -> BundleInfo {
        let text = "[update]\ncompatible=Test Config\nversion=2024.08-1\n\n[bundle]\nformat=verity\nverity-hash=3429e221c64004558430edf2c5f784a018027aec51a1e7d986bbf7eae42bc5e3\nverity-salt=674ce3109fd9a74c093b4ef7690281bd3a77b102ab15a8e468bdbcc1c9bc4c93\nverity-size=4096\n\n[image.rootfs]\nsha256=98db1bd96b3b1f1a528850b5b14b6759b9956e0a18d315ce0a68f1deb262c2ee\nsize=262144\nfilename=rootfs.ext4\nadaptive=block-hash-index;\n\n[meta.version]\nchannel=it's beta\n";
        BundleInfo {
            manifest: Manifest::parse(text, ManifestOrigin::Bundle).unwrap(),
            format: BundleFormat::Verity,
            encrypted: false,
            manifest_hash: "ab".repeat(32),
            verified: false,
            chains: vec![],
            recipients: vec![],
            trees: Default::default(),
        }
    }

    #[test]
    fn tree_images_show_their_counts_in_every_format() {
        let text = "[update]\ncompatible=Test Config\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nsha256=98db1bd96b3b1f1a528850b5b14b6759b9956e0a18d315ce0a68f1deb262c2ee\nsize=100\nfilename=rootfs.tree\n";
        let mut info = sample();
        info.manifest = Manifest::parse(text, ManifestOrigin::Bundle).unwrap();
        let t = crate::tree::TreeSummary {
            files: 3000,
            bytes: 45_000_000,
            contents: 2900,
            directories: 80,
            symlinks: 3,
            special: 3,
            hard_links: 3,
        };
        info.trees.insert("rootfs.tree".into(), t);
        let r = readable(&info, false, false);
        assert!(
            r.contains("    Tree:      3000 files (45.0 MB, 2900 distinct contents), 80 directories, 3 symlinks, 3 special files, 3 hard links\n"),
            "{r}"
        );
        let sh = shell(&info);
        assert!(
            sh.contains("RAUC_IMAGE_TREE_FILES_0='3000'\n") && sh.contains("RAUC_IMAGE_TREE_HARD_LINKS_0='3'\n"),
            "{sh}"
        );
        let j = json_value(&info);
        assert_eq!(j["images"][0]["rootfs"]["tree"]["files"], 3000);
        assert_eq!(j["images"][0]["rootfs"]["tree"]["hard-links"], 3);
        let j2 = inspect_value(&info);
        assert_eq!(j2["images"][0]["tree"]["bytes"], 45_000_000);
        // Other images show nothing of the kind.
        assert!(!readable(&sample(), false, false).contains("Tree:"));
    }

    #[test]
    fn sizes_like_glib() {
        assert_eq!(format_size(1), "1 byte");
        assert_eq!(format_size(999), "999 bytes");
        assert_eq!(format_size(262144), "262.1 kB");
        assert_eq!(format_size(65536), "65.5 kB");
        assert_eq!(format_size(1_073_741_824), "1.1 GB");
    }

    #[test]
    fn readable_layout() {
        let r = readable(&sample(), false, false);
        assert!(
            r.starts_with("Compatible:     'Test Config'\nVersion:        '2024.08-1'\nDescription:    '(null)'\n"),
            "{r}"
        );
        assert!(r.contains("Bundle Format:  verity\n  Verity Salt:  '674c"), "{r}");
        assert!(r.contains("  Verity Size:  4096\nManifest Hash:  'abab"), "{r}");
        assert!(r.contains("\nMetadata:\n  version:\n    channel: it's beta\n"), "{r}");
        assert!(
            r.contains(
                "1 Image:\n  \x1b[1m[rootfs]\x1b[0m\n    Filename:  rootfs.ext4\n    Type:      ext4 (detected)\n"
            ),
            "{r}"
        );
        assert!(
            r.contains("    Size:      262.1 kB (262144 bytes)\n    Hooks:     \n    Adaptive:  block-hash-index\n"),
            "{r}"
        );
        assert!(r.ends_with("Signature unverified\n"), "{r}");
    }

    #[test]
    fn shell_output_is_valid_sh() {
        let s = shell(&sample());
        assert!(s.contains("RAUC_MF_IMAGES='1'\n"));
        assert!(s.contains("RAUC_META_VERSION_CHANNEL='it'\\''s beta'\n"));
        assert!(s.contains("RAUC_IMAGE_ADAPTIVE_0='block-hash-index'\n"));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{s}\nprintf %s \"$RAUC_META_VERSION_CHANNEL|$RAUC_MF_DESCRIPTION\""))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's beta|");
    }

    #[test]
    fn json_forms() {
        let j = json_value(&sample()).to_string();
        assert!(j.starts_with("{\"compatible\":\"Test Config\",\"version\":\"2024.08-1\",\"description\":null,\"build\":null,\"format\":\"verity\",\"hooks\":[],\"hash\":\"abab"), "{j}");
        assert!(j.contains("\"images\":[{\"rootfs\":{\"artifact\":null,\"variant\":null,\"filename\":\"rootfs.ext4\",\"type\":\"ext4\""), "{j}");
        let p = to_pretty_json(&json_value(&sample()));
        assert!(p.starts_with("{\n  \"compatible\" : \"Test Config\",\n"), "{p}");
        assert!(p.contains("  \"hooks\" : [],\n"), "{p}");
        let back: Value = serde_json::from_str(&p).unwrap();
        assert_eq!(back, json_value(&sample()));
        let i = inspect_value(&sample());
        let keys: Vec<&String> = i.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["update", "images", "manifest-hash", "bundle", "meta"]);
        assert_eq!(i["bundle"]["verity-size"], json!(4096));
        assert!(i["bundle"].get("crypt-key").is_none());
    }
}
