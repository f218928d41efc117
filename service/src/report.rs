//! The system status report behind `rauc status` (spec §9.5) in its four
//! output formats. Slots appear, and are numbered, in the order RAUC walks
//! its slot table (see [`crate::slot_order`]), so scripts written against
//! RAUC's numbers keep working.

use crate::status::SlotStatus;
use crate::system::System;
use rota_bundle::info::{format_size, shell_quote, to_pretty_json};
use serde_json::{Map, Value, json};

/// One slot as the report shows it.
#[derive(Debug, Clone)]
pub struct SlotReport {
    /// `<class>.<idx>`.
    pub name: String,
    /// Class.
    pub class: String,
    /// Device path.
    pub device: String,
    /// Slot type.
    pub slot_type: String,
    /// Boot name.
    pub bootname: Option<String>,
    /// `booted`, `active` or `inactive`.
    pub state: String,
    /// Parent slot name.
    pub parent: Option<String>,
    /// Mount point.
    pub mountpoint: Option<String>,
    /// `good`, `bad` or `unknown` for bootable slots.
    pub boot_status: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// Stored slot status.
    pub status: SlotStatus,
}

/// An artifact repository as the report shows it.
#[derive(Debug, Clone)]
pub struct RepoReport {
    /// Name.
    pub name: String,
    /// Path.
    pub path: String,
    /// `files` or `trees`.
    pub repo_type: String,
    /// Description from the configuration.
    pub description: Option<String>,
    /// Artifacts (name, instances), sorted by name.
    pub artifacts: Vec<(String, Vec<crate::artifacts::Instance>)>,
}

impl RepoReport {
    /// The repository as JSON status output and `GetArtifactStatus` show it:
    /// `name`, `description`?, `path`, `type`, `artifacts` (each `name`,
    /// `instances` with `checksum` and `references`).
    pub fn json(&self) -> Value {
        let artifacts: Vec<Value> = self
            .artifacts
            .iter()
            .map(|(name, instances)| {
                let instances: Vec<Value> = instances
                    .iter()
                    .map(|i| {
                        let refs: Vec<&str> = if i.active { vec![""] } else { vec![] };
                        json!({"checksum": i.digest, "references": refs})
                    })
                    .collect();
                json!({"name": name, "instances": instances})
            })
            .collect();
        let mut m = Map::new();
        m.insert("name".into(), self.name.clone().into());
        if let Some(d) = &self.description {
            m.insert("description".into(), d.clone().into());
        }
        m.insert("path".into(), self.path.clone().into());
        m.insert("type".into(), self.repo_type.clone().into());
        m.insert("artifacts".into(), Value::Array(artifacts));
        Value::Object(m)
    }
}

/// The artifact repositories as the report shows them, in the order RAUC
/// walks its table of them (keyed by name, like the slots').
pub fn gather_repos(system: &System) -> Vec<RepoReport> {
    let repos = &system.config.artifacts;
    let names: Vec<&str> = repos.iter().map(|r| r.name.as_str()).collect();
    crate::slot_order::table_order(&names)
        .into_iter()
        .map(|i| &repos[i])
        .map(|r| RepoReport {
            name: r.name.clone(),
            path: r.path.to_string_lossy().into_owned(),
            repo_type: r.repo_type.as_str().to_string(),
            description: r.description.clone(),
            artifacts: group_instances(crate::artifacts::instances(r).unwrap_or_else(|e| {
                tracing::warn!("{e}");
                Vec::new()
            })),
        })
        .collect()
}

/// Groups instances (sorted by name) per artifact name.
fn group_instances(instances: Vec<crate::artifacts::Instance>) -> Vec<(String, Vec<crate::artifacts::Instance>)> {
    let mut out: Vec<(String, Vec<crate::artifacts::Instance>)> = Vec::new();
    for i in instances {
        match out.last_mut() {
            Some((name, v)) if *name == i.name => v.push(i),
            _ => out.push((i.name.clone(), vec![i])),
        }
    }
    out
}

/// Everything `status` shows.
#[derive(Debug, Clone)]
pub struct StatusReport {
    /// System compatible.
    pub compatible: String,
    /// Variant.
    pub variant: String,
    /// System version from the system-info handler.
    pub system_version: Option<String>,
    /// Boot-slot string.
    pub booted: String,
    /// Primary slot name, if the bootloader tells.
    pub boot_primary: Option<String>,
    /// Slots.
    pub slots: Vec<SlotReport>,
    /// Artifact repositories.
    pub repos: Vec<RepoReport>,
}

/// `status` output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFormat {
    /// Human-readable.
    Readable,
    /// `sh` variable assignments.
    Shell,
    /// Compact JSON.
    Json,
    /// json-glib style pretty JSON.
    JsonPretty,
}

impl StatusFormat {
    /// Parses `--output-format`.
    pub fn parse(s: &str) -> Result<StatusFormat, String> {
        match s {
            "readable" => Ok(StatusFormat::Readable),
            "shell" => Ok(StatusFormat::Shell),
            "json" => Ok(StatusFormat::Json),
            "json-pretty" => Ok(StatusFormat::JsonPretty),
            other => Err(format!("Unknown output format: '{other}'")),
        }
    }
}

impl StatusReport {
    /// Gathers the report from the running system.
    pub fn gather(system: &System) -> StatusReport {
        let boot_primary = match system.primary() {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!("Failed to get primary: {e}");
                None
            }
        };
        let slots = StatusReport::gather_slots(system);
        StatusReport {
            compatible: system.config.system.compatible.clone(),
            variant: system.variant.clone(),
            system_version: system.system_version().map(str::to_string),
            booted: system.boot_slot.clone(),
            boot_primary,
            slots,
            repos: gather_repos(system),
        }
    }

    /// Every configured slot with its state and stored status, in the
    /// order RAUC walks its slot table.
    pub fn gather_slots(system: &System) -> Vec<SlotReport> {
        system
            .table_order()
            .into_iter()
            .map(|i| &system.slots[i])
            .map(|s| SlotReport {
                name: s.config.name.clone(),
                class: s.config.class.clone(),
                device: s.config.device.to_string_lossy().into_owned(),
                slot_type: s.config.slot_type.as_str().to_string(),
                bootname: s.config.bootname.clone(),
                state: s.state.as_str().to_string(),
                parent: s.config.parent.clone(),
                mountpoint: s.mount_point.as_ref().map(|m| m.to_string_lossy().into_owned()),
                boot_status: system.boot_status(&s.config).map(str::to_string),
                description: s.config.description.clone(),
                status: system.load_status(s),
            })
            .collect()
    }

    fn slot(&self, name: &str) -> Option<&SlotReport> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// Renders the report.
    pub fn render(&self, format: StatusFormat, detailed: bool) -> String {
        match format {
            StatusFormat::Readable => self.readable(detailed),
            StatusFormat::Shell => self.shell(detailed),
            StatusFormat::Json => format!("{}\n", self.json(detailed)),
            StatusFormat::JsonPretty => format!("{}\n", to_pretty_json(&self.json(detailed))),
        }
    }

    fn slot_label(&self, name: &str) -> String {
        match self.slot(name).and_then(|s| s.bootname.as_deref()) {
            Some(b) => format!("{name} ({b})"),
            None => name.to_string(),
        }
    }

    fn readable(&self, detailed: bool) -> String {
        let utf8 = ["LC_ALL", "LC_CTYPE", "LANG"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .is_some_and(|l| l.to_ascii_uppercase().contains("UTF-8") || l.to_ascii_uppercase().contains("UTF8"));
        let (primary_mark, other_mark) = if utf8 { ("⏺", "○") } else { ("x", "o") };
        let booted_label = match self.slots.iter().find(|s| s.state == "booted") {
            Some(s) => format!("{} ({})", s.name, self.booted),
            None => self.booted.clone(),
        };
        let mut out = String::new();
        out.push_str("=== System Info ===\n");
        out.push_str(&format!("Compatible:     {}\n", self.compatible));
        out.push_str(&format!("Variant:        {}\n", self.variant));
        out.push_str(&format!("System Version: {}\n", self.system_version.as_deref().unwrap_or("")));
        out.push_str(&format!("Booted from:    {booted_label}\n\n"));
        out.push_str("=== Bootloader ===\n");
        match &self.boot_primary {
            Some(p) => out.push_str(&format!("Activated: {}\n\n", self.slot_label(p))),
            None => out.push_str("Activated: none\n\n"),
        }
        out.push_str("=== Slot States ===\n");
        // RAUC's layout: per root class (in its order), each slot of the
        // class followed by the slots below it, then a blank line.
        let roots =
            crate::slot_order::root_classes(self.slots.iter().filter(|s| s.parent.is_none()).map(|s| s.class.as_str()));
        for class in roots {
            for top in self.slots.iter().filter(|s| s.class == class) {
                self.readable_slot(&mut out, top, primary_mark, other_mark, detailed);
                for child in self.slots.iter().filter(|s| s.name != top.name && self.root_of(s) == top.name) {
                    self.readable_slot(&mut out, child, primary_mark, other_mark, detailed);
                }
                out.push('\n');
            }
        }
        if !self.repos.is_empty() {
            out.push_str("=== Artifact Repo States ===\n");
        }
        for r in &self.repos {
            out.push_str(&format!("[{}] ({})\n  type: {}\n", r.name, r.path, r.repo_type));
            if r.artifacts.is_empty() {
                out.push_str("  artifacts: (none)\n");
            } else {
                out.push_str("  artifacts:\n");
            }
            for (name, instances) in &r.artifacts {
                out.push_str(&format!("    [{name}]\n"));
                for i in instances {
                    let state = if i.active { "active" } else { "inactive" };
                    out.push_str(&format!("      checksum: {}\n        {state}\n", i.digest));
                }
            }
            out.push('\n');
        }
        // Trailing white space goes, as RAUC strips it.
        let end = out.trim_end().len();
        out.truncate(end);
        out.push('\n');
        out
    }

    /// The root slot above `s` (itself for a root slot).
    fn root_of<'a>(&'a self, s: &'a SlotReport) -> &'a str {
        let mut name = s.name.as_str();
        let mut parent = s.parent.as_deref();
        // Bounded: a configuration has no cycles, but a report from a
        // service need not be trusted that far.
        for _ in 0..self.slots.len() {
            let Some(p) = parent else { break };
            name = p;
            parent = self.slot(p).and_then(|s| s.parent.as_deref());
        }
        name
    }

    fn readable_slot(&self, out: &mut String, s: &SlotReport, primary_mark: &str, other_mark: &str, detailed: bool) {
        let mark = match &s.bootname {
            Some(_) if self.boot_primary.as_deref() == Some(&s.name) => primary_mark,
            Some(_) => other_mark,
            None => " ",
        };
        let indent = if s.parent.is_some() { "   " } else { " " };
        out.push_str(&format!("{mark}{indent}[{}] ({}, {}, {})\n", s.name, s.device, s.slot_type, s.state));
        let field = "      ";
        if let Some(b) = &s.bootname {
            out.push_str(&format!("{field}bootname: {b}\n"));
        }
        if let Some(d) = &s.description {
            out.push_str(&format!("{field}description: {d}\n"));
        }
        if let Some(m) = &s.mountpoint {
            out.push_str(&format!("{field}mounted: {m}\n"));
        }
        if s.bootname.is_some() {
            out.push_str(&format!("{field}boot status: {}\n", s.boot_status.as_deref().unwrap_or("unknown")));
        }
        if !detailed {
            return;
        }
        let st = &s.status;
        let (i2, i3) = ("          ", "              ");
        out.push_str(&format!("{field}slot status:\n"));
        out.push_str(&format!("{i2}bundle:\n"));
        out.push_str(&format!("{i3}compatible={}\n", st.bundle_compatible.as_deref().unwrap_or("")));
        for (k, v) in [
            ("version", &st.bundle_version),
            ("description", &st.bundle_description),
            ("build", &st.bundle_build),
            ("hash", &st.bundle_hash),
        ] {
            if let Some(v) = v {
                out.push_str(&format!("{i3}{k}={v}\n"));
            }
        }
        if let Some(sha) = &st.sha256 {
            out.push_str(&format!("{i2}checksum:\n{i3}sha256={sha}\n"));
            let size = st.size.unwrap_or(0);
            out.push_str(&format!("{i3}size={} ({size} bytes)\n", format_size(size)));
        }
        out.push_str(&format!("{i2}installed:\n"));
        if let Some(ts) = &st.installed_timestamp {
            out.push_str(&format!("{i3}timestamp={ts}\n{i3}count={}\n", st.installed_count));
        }
        if let Some(t) = &st.installed_transaction {
            out.push_str(&format!("{i3}transaction={t}\n"));
        }
        if let Some(ts) = &st.activated_timestamp {
            out.push_str(&format!("{i2}activated:\n{i3}timestamp={ts}\n{i3}count={}\n", st.activated_count));
        }
        if let Some(s) = &st.status {
            out.push_str(&format!("{i2}status={s}\n"));
        }
    }

    fn shell(&self, detailed: bool) -> String {
        let q = |s: &str| shell_quote(s);
        let o = |s: &Option<String>| shell_quote(s.as_deref().unwrap_or(""));
        let mut out = String::new();
        out.push_str(&format!("RAUC_SYSTEM_COMPATIBLE={}\n", q(&self.compatible)));
        out.push_str(&format!("RAUC_SYSTEM_VARIANT={}\n", q(&self.variant)));
        out.push_str(&format!("RAUC_SYSTEM_VERSION={}\n", o(&self.system_version)));
        out.push_str(&format!("RAUC_SYSTEM_BOOTED_BOOTNAME={}\n", q(&self.booted)));
        out.push_str(&format!("RAUC_BOOT_PRIMARY={}\n", o(&self.boot_primary)));
        let names: Vec<&str> = self.slots.iter().map(|s| s.name.as_str()).collect();
        out.push_str(&format!("RAUC_SYSTEM_SLOTS={}\n", q(&names.join(" "))));
        let nums: Vec<String> = (1..=self.slots.len()).map(|n| n.to_string()).collect();
        out.push_str(&format!("RAUC_SLOTS={}\n", q(&nums.join(" "))));
        for (i, s) in self.slots.iter().enumerate() {
            let n = i + 1;
            out.push_str(&format!("RAUC_SLOT_STATE_{n}={}\n", q(&s.state)));
            out.push_str(&format!("RAUC_SLOT_CLASS_{n}={}\n", q(&s.class)));
            out.push_str(&format!("RAUC_SLOT_DEVICE_{n}={}\n", q(&s.device)));
            out.push_str(&format!("RAUC_SLOT_TYPE_{n}={}\n", q(&s.slot_type)));
            out.push_str(&format!("RAUC_SLOT_BOOTNAME_{n}={}\n", o(&s.bootname)));
            out.push_str(&format!("RAUC_SLOT_PARENT_{n}={}\n", o(&s.parent)));
            out.push_str(&format!("RAUC_SLOT_MOUNTPOINT_{n}={}\n", o(&s.mountpoint)));
            out.push_str(&format!("RAUC_SLOT_BOOT_STATUS_{n}={}\n", o(&s.boot_status)));
            if detailed {
                let st = &s.status;
                let fields: [(&str, String); 12] = [
                    ("BUNDLE_COMPATIBLE", o(&st.bundle_compatible)),
                    ("BUNDLE_VERSION", o(&st.bundle_version)),
                    ("BUNDLE_DESCRIPTION", o(&st.bundle_description)),
                    ("BUNDLE_BUILD", o(&st.bundle_build)),
                    ("BUNDLE_HASH", o(&st.bundle_hash)),
                    ("CHECKSUM_SHA256", o(&st.sha256)),
                    ("CHECKSUM_SIZE", st.size.unwrap_or(0).to_string()),
                    ("INSTALLED_TIMESTAMP", o(&st.installed_timestamp)),
                    ("INSTALLED_COUNT", st.installed_count.to_string()),
                    ("ACTIVATED_TIMESTAMP", o(&st.activated_timestamp)),
                    ("ACTIVATED_COUNT", st.activated_count.to_string()),
                    ("STATUS", o(&st.status)),
                ];
                for (k, v) in fields {
                    out.push_str(&format!("RAUC_SLOT_STATUS_{k}_{n}={v}\n"));
                }
            }
        }
        let repo_nums: Vec<String> = (1..=self.repos.len()).map(|n| n.to_string()).collect();
        out.push_str(&format!("RAUC_REPOS={}\n", q(&repo_nums.join(" "))));
        for (i, r) in self.repos.iter().enumerate() {
            let n = i + 1;
            out.push_str(&format!("RAUC_REPO_NAME_{n}={}\n", q(&r.name)));
            out.push_str(&format!("RAUC_REPO_PATH_{n}={}\n", q(&r.path)));
            out.push_str(&format!("RAUC_REPO_TYPE_{n}={}\n", q(&r.repo_type)));
            out.push_str(&format!("RAUC_REPO_PARENT_CLASS_{n}=''\n"));
            let nums: Vec<String> = (1..=r.artifacts.len()).map(|a| a.to_string()).collect();
            out.push_str(&format!("RAUC_REPO_ARTIFACTS_{n}={}\n", q(&nums.join(" "))));
            for (a, (name, instances)) in r.artifacts.iter().enumerate() {
                let a = a + 1;
                out.push_str(&format!("RAUC_REPO_ARTIFACT_NAME_{n}_{a}={}\n", q(name)));
                let nums: Vec<String> = (1..=instances.len()).map(|i| i.to_string()).collect();
                out.push_str(&format!("RAUC_REPO_ARTIFACT_INSTANCES_{n}_{a}={}\n", q(&nums.join(" "))));
                for (i, inst) in instances.iter().enumerate() {
                    let i = i + 1;
                    out.push_str(&format!("RAUC_REPO_ARTIFACT_INSTANCE_CHECKSUM_{n}_{a}_{i}={}\n", q(&inst.digest)));
                    let active = if inst.active { "1" } else { "0" };
                    out.push_str(&format!("RAUC_REPO_ARTIFACT_INSTANCE_ACTIVE_{n}_{a}_{i}={}\n", q(active)));
                }
            }
        }
        out
    }

    fn json(&self, detailed: bool) -> Value {
        let opt = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
        let slots: Vec<Value> = self
            .slots
            .iter()
            .map(|s| {
                let mut m = Map::new();
                m.insert("class".into(), s.class.clone().into());
                m.insert("device".into(), s.device.clone().into());
                m.insert("type".into(), s.slot_type.clone().into());
                m.insert("bootname".into(), opt(&s.bootname));
                m.insert("state".into(), s.state.clone().into());
                m.insert("parent".into(), opt(&s.parent));
                m.insert("mountpoint".into(), opt(&s.mountpoint));
                m.insert("boot_status".into(), opt(&s.boot_status));
                if detailed {
                    m.insert("slot_status".into(), slot_status_json(&s.status));
                }
                json!({ s.name.clone(): Value::Object(m) })
            })
            .collect();
        let repos: Vec<Value> = self.repos.iter().map(RepoReport::json).collect();
        let mut m = Map::new();
        m.insert("compatible".into(), self.compatible.clone().into());
        m.insert("variant".into(), self.variant.clone().into());
        m.insert("system_version".into(), opt(&self.system_version));
        m.insert("booted".into(), self.booted.clone().into());
        m.insert("boot_primary".into(), opt(&self.boot_primary));
        m.insert("slots".into(), Value::Array(slots));
        m.insert("artifact-repositories".into(), Value::Array(repos));
        Value::Object(m)
    }
}

fn slot_status_json(st: &SlotStatus) -> Value {
    let mut bundle = Map::new();
    bundle.insert("compatible".into(), st.bundle_compatible.clone().map(Value::String).unwrap_or(Value::Null));
    for (k, v) in [
        ("version", &st.bundle_version),
        ("description", &st.bundle_description),
        ("build", &st.bundle_build),
        ("hash", &st.bundle_hash),
    ] {
        if let Some(v) = v {
            bundle.insert(k.into(), v.clone().into());
        }
    }
    let mut m = Map::new();
    m.insert("bundle".into(), Value::Object(bundle));
    if let Some(sha) = &st.sha256 {
        m.insert("checksum".into(), json!({"sha256": sha, "size": st.size.unwrap_or(0)}));
    }
    if let Some(ts) = &st.installed_timestamp {
        m.insert("installed".into(), json!({"timestamp": ts, "count": st.installed_count}));
    }
    if let Some(ts) = &st.activated_timestamp {
        m.insert("activated".into(), json!({"timestamp": ts, "count": st.activated_count}));
    }
    if let Some(s) = &st.status {
        m.insert("status".into(), s.clone().into());
    }
    Value::Object(m)
}
