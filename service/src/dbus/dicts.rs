//! The `a{sv}` dictionaries of the D-Bus API (spec §8.3, §8.4, §8.1
//! `GetArtifactStatus`), built from the same reports the command line prints.

use crate::report::SlotReport;
use rota_dbus::Dict;
use serde_json::Value;
use std::collections::HashMap;
use zbus::{OwnedVariant, Variant};

/// A variant made owned (status values never carry file descriptors).
pub(super) fn owned(v: Variant<'static>) -> OwnedVariant {
    OwnedVariant::try_from(v).expect("no file descriptors in a status value")
}

/// A JSON object as `a{sv}`: strings `s`, numbers `t`, booleans `b`, lists
/// of strings (and empty lists) `as`, lists of objects `aa{sv}`, objects `a{sv}`.
pub fn dict_of(object: &serde_json::Map<String, Value>) -> Dict {
    object.iter().filter_map(|(k, v)| Some((k.clone(), owned(variant_of(v)?)))).collect()
}

fn variant_of(v: &Value) -> Option<Variant<'static>> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => Variant::from(*b),
        Value::Number(n) => Variant::from(n.as_u64()?),
        Value::String(s) => Variant::from(s.clone()),
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            let dicts: Vec<Dict> = items.iter().filter_map(Value::as_object).map(dict_of).collect();
            Variant::from(dicts)
        }
        Value::Array(items) => {
            let strings: Vec<String> = items.iter().map(|i| i.as_str().unwrap_or_default().to_string()).collect();
            Variant::from(strings)
        }
        Value::Object(o) => Variant::from(dict_of(o)),
    })
}

/// The `InspectBundle` result from the json-2 document: as [`dict_of`],
/// except `meta`, which is `a{sa{ss}}`.
pub fn inspect_dict(info: &Value) -> Dict {
    let Some(object) = info.as_object() else {
        return Dict::new();
    };
    let mut out = dict_of(object);
    if let Some(meta) = object.get("meta").and_then(Value::as_object) {
        let groups: HashMap<String, HashMap<String, String>> = meta
            .iter()
            .map(|(label, entries)| {
                let entries = entries
                    .as_object()
                    .map(|e| e.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                (label.clone(), entries)
            })
            .collect();
        out.insert("meta".into(), owned(Variant::from(groups)));
    }
    out
}

/// One slot of `GetSlotStatus` (spec §8.4): keys only where they apply,
/// counts as `u`, the size as `t`.
pub fn slot_dict(slot: &SlotReport) -> Dict {
    let mut d = Dict::new();
    let mut put = |k: &str, v: Variant<'static>| {
        d.insert(k.to_string(), owned(v));
    };
    put("class", slot.class.clone().into());
    put("device", slot.device.clone().into());
    put("type", slot.slot_type.clone().into());
    put("state", slot.state.clone().into());
    let st = &slot.status;
    let slot_keys = [
        ("bootname", &slot.bootname),
        ("description", &slot.description),
        ("parent", &slot.parent),
        ("mountpoint", &slot.mountpoint),
        ("boot-status", &slot.boot_status),
    ];
    let status_keys = st.bundle_and_status().into_iter().chain([("installed.transaction", &st.installed_transaction)]);
    for (k, v) in slot_keys.into_iter().chain(status_keys) {
        if let Some(v) = v {
            put(k, v.clone().into());
        }
    }
    if let Some(sha) = &st.sha256 {
        put("sha256", sha.clone().into());
        put("size", st.size.unwrap_or(0).into());
    }
    if let Some(ts) = &st.installed_timestamp {
        put("installed.timestamp", ts.clone().into());
        put("installed.count", (st.installed_count as u32).into());
    }
    if let Some(ts) = &st.activated_timestamp {
        put("activated.timestamp", ts.clone().into());
        put("activated.count", (st.activated_count as u32).into());
    }
    d
}

/// Everything `info` shows, for `dev.rota.Installer1.Inspect`: the
/// manifest text without its secret (a crypt bundle's `crypt-key` never
/// leaves the service), the `manifest-hash` of the signed text, `format`,
/// `encrypted`, `verified`, the signer `chains` (`aaa{ss}`) and the
/// `recipients` (`aa{ss}`).
pub fn bundle_info_dict(info: &rota_bundle::info::BundleInfo, manifest_text: &str) -> Dict {
    let chains: Vec<Vec<HashMap<String, String>>> = info
        .chains
        .iter()
        .map(|chain| {
            chain
                .iter()
                .map(|c| {
                    [
                        ("subject", &c.subject),
                        ("issuer", &c.issuer),
                        ("spki-sha256", &c.spki_sha256),
                        ("not-before", &c.not_before),
                        ("not-after", &c.not_after),
                        ("pem", &c.pem),
                        ("text", &c.text),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect()
                })
                .collect()
        })
        .collect();
    let recipients: Vec<HashMap<String, String>> = info
        .recipients
        .iter()
        .map(|r| {
            let mut m = HashMap::from([("kind".to_string(), r.kind.to_string())]);
            for (k, v) in [("issuer", &r.issuer), ("serial", &r.serial), ("key-id", &r.key_id)] {
                if let Some(v) = v {
                    m.insert(k.to_string(), v.clone());
                }
            }
            m
        })
        .collect();
    let mut d = Dict::new();
    let shown = rota_bundle::manifest::without_secrets(manifest_text);
    d.insert("manifest".into(), owned(Variant::from(shown)));
    d.insert("manifest-hash".into(), owned(Variant::from(info.manifest_hash.clone())));
    d.insert("format".into(), owned(Variant::from(info.format.as_str().to_string())));
    d.insert("encrypted".into(), info.encrypted.into());
    d.insert("verified".into(), info.verified.into());
    d.insert("chains".into(), owned(Variant::from(chains)));
    d.insert("recipients".into(), owned(Variant::from(recipients)));
    let trees: HashMap<String, HashMap<String, u64>> = info
        .trees
        .iter()
        .map(|(name, t)| (name.clone(), t.fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
        .collect();
    d.insert("trees".into(), owned(Variant::from(trees)));
    d
}

/// The recipient kinds the envelope reader names.
const RECIPIENT_KINDS: [&str; 3] = ["RSA key transport", "key agreement", "other"];

/// The reverse of [`bundle_info_dict`].
pub fn bundle_info_from_dict(d: &Dict) -> Result<rota_bundle::info::BundleInfo, String> {
    use rota_bundle::manifest::{BundleFormat, Manifest, ManifestOrigin, manifest_hash};
    use rota_bundle::signature::certinfo::CertInfo;
    use rota_bundle::signature::envelope::Recipient;
    let get = |k: &str| d.get(k).ok_or_else(|| format!("Inspect result lacks '{k}'"));
    let text = String::try_from(get("manifest")?.try_clone().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let format = String::try_from(get("format")?.try_clone().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let manifest = Manifest::parse(&text, ManifestOrigin::Bundle).map_err(|e| e.to_string())?;
    // The hash of the signed text (which the shown one may lack a secret of);
    // a service without it sent the signed text itself.
    let hash = match d.get("manifest-hash") {
        Some(v) => String::try_from(v.try_clone().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?,
        None => manifest_hash(text.as_bytes()),
    };
    let flag = |k: &str| get(k).and_then(|v| bool::try_from(&**v).map_err(|e| e.to_string()));
    let chains: Vec<Vec<HashMap<String, String>>> =
        get("chains")?.try_clone().ok().and_then(|v| Vec::try_from(v).ok()).ok_or("Inspect result: bad 'chains'")?;
    let recipients: Vec<HashMap<String, String>> = get("recipients")?
        .try_clone()
        .ok()
        .and_then(|v| Vec::try_from(v).ok())
        .ok_or("Inspect result: bad 'recipients'")?;
    let field = |m: &HashMap<String, String>, k: &str| m.get(k).cloned().unwrap_or_default();
    Ok(rota_bundle::info::BundleInfo {
        format: BundleFormat::parse(&format).ok_or_else(|| format!("Inspect result: unknown format '{format}'"))?,
        manifest_hash: hash,
        manifest,
        encrypted: flag("encrypted")?,
        verified: flag("verified")?,
        chains: chains
            .iter()
            .map(|chain| {
                chain
                    .iter()
                    .map(|c| CertInfo {
                        subject: field(c, "subject"),
                        issuer: field(c, "issuer"),
                        spki_sha256: field(c, "spki-sha256"),
                        not_before: field(c, "not-before"),
                        not_after: field(c, "not-after"),
                        pem: field(c, "pem"),
                        text: field(c, "text"),
                    })
                    .collect()
            })
            .collect(),
        recipients: recipients
            .iter()
            .map(|r| Recipient {
                kind: RECIPIENT_KINDS.into_iter().find(|k| r.get("kind").is_some_and(|v| v == k)).unwrap_or("other"),
                issuer: r.get("issuer").cloned(),
                serial: r.get("serial").cloned(),
                key_id: r.get("key-id").cloned(),
            })
            .collect(),
        trees: trees_from_dict(d),
    })
}

/// The tree counts of an `Inspect` result (none from a service without them).
fn trees_from_dict(d: &Dict) -> std::collections::BTreeMap<String, rota_bundle::tree::TreeSummary> {
    let Some(trees) = d.get("trees").and_then(|v| v.try_clone().ok()) else { return Default::default() };
    let trees: HashMap<String, HashMap<String, u64>> = trees.try_into().unwrap_or_default();
    trees
        .into_iter()
        .map(|(name, f)| (name, rota_bundle::tree::TreeSummary::from_fields(|k| f.get(k).copied())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_maps_to_dbus_types() {
        let v = json!({"s": "x", "t": 5, "as": ["a"], "empty": [], "aa": [{"k": "v"}], "o": {"n": 1}, "none": null});
        let d = dict_of(v.as_object().unwrap());
        let sig = |k: &str| d[k].value_signature().to_string();
        assert_eq!(sig("s"), "s");
        assert_eq!(sig("t"), "t");
        assert_eq!(sig("as"), "as");
        assert_eq!(sig("empty"), "as");
        assert_eq!(sig("aa"), "aa{sv}");
        assert_eq!(sig("o"), "a{sv}");
        assert!(!d.contains_key("none"));
        let i = inspect_dict(&json!({"meta": {"g": {"k": "v"}}, "manifest-hash": "h"}));
        assert_eq!(i["meta"].value_signature().to_string(), "a{sa{ss}}");
    }
}
