//! Hooks and handlers (spec §6.6–6.8): the environment each one gets, the
//! `install-check` bundle hook, slot hooks around every image write, the
//! `pre-install`/`post-install` system handlers and the full custom
//! handler, whose output lines follow the handler protocol (§6.7).

use crate::error::{Error, Result, failed};
use crate::system::{Slot, System, run_merged};
use crate::tools::{check_exit, exit_reason};
use rota_bundle::manifest::{Image, ImageHooks, Manifest};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Environment variables added for a child (name, value), in a stable order.
pub type Env = Vec<(String, String)>;

fn push(env: &mut Env, key: impl Into<String>, value: impl Into<String>) {
    env.push((key.into(), value.into()));
}

/// `RAUC_SYSTEM_COMPATIBLE`, `RAUC_SYSTEM_VARIANT`, `RAUC_SYSTEM_VERSION`.
fn system_values(system: &System) -> Env {
    let mut env = Env::new();
    push(&mut env, "RAUC_SYSTEM_COMPATIBLE", system.config.system.compatible.as_str());
    push(&mut env, "RAUC_SYSTEM_VARIANT", system.variant.as_str());
    push(&mut env, "RAUC_SYSTEM_VERSION", system.system_version().unwrap_or(""));
    env
}

fn mount_prefix(system: &System) -> String {
    system.config.system.mount_prefix.to_string_lossy().into_owned()
}

/// The environment of the system handlers and the full custom handler.
pub fn handler_env(system: &System, manifest: &Manifest, bundle_dir: &Path, txn: &str, group: &[usize]) -> Env {
    let mut env = Env::new();
    let config = system.config.path.as_deref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    push(&mut env, "RAUC_SYSTEM_CONFIG", config);
    env.extend(system_values(system));
    push(&mut env, "RAUC_CURRENT_BOOTNAME", system.boot_slot.as_str());
    push(&mut env, "RAUC_MOUNT_PREFIX", mount_prefix(system));
    let fixed: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
    for (k, v) in &system.system_info {
        if !fixed.contains(k) {
            push(&mut env, k.as_str(), v.as_str());
        }
    }
    let dir = bundle_dir.to_string_lossy();
    push(&mut env, "RAUC_BUNDLE_MOUNT_POINT", dir.as_ref());
    push(&mut env, "RAUC_UPDATE_SOURCE", dir.as_ref());
    push(&mut env, "RAUC_TRANSACTION_ID", txn);
    // Slots are numbered in the order RAUC walks them (see `slot_order`).
    let order = system.table_order();
    let numbers: Vec<String> = (1..=order.len()).map(|n| n.to_string()).collect();
    push(&mut env, "RAUC_SLOTS", numbers.join(" "));
    let targets: Vec<String> =
        order.iter().enumerate().filter(|(_, i)| group.contains(i)).map(|(n, _)| (n + 1).to_string()).collect();
    push(&mut env, "RAUC_TARGET_SLOTS", targets.join(" "));
    for (n, &i) in order.iter().enumerate() {
        let n = n + 1;
        let c = &system.slots[i].config;
        if group.contains(&i)
            && let Some(image) = manifest.images.iter().find(|im| im.slotclass == c.class)
        {
            push(&mut env, format!("RAUC_IMAGE_NAME_{n}"), image.filename.as_deref().unwrap_or(""));
            push(&mut env, format!("RAUC_IMAGE_DIGEST_{n}"), image.sha256.as_deref().unwrap_or(""));
            push(&mut env, format!("RAUC_IMAGE_CLASS_{n}"), c.class.as_str());
        }
        push(&mut env, format!("RAUC_SLOT_NAME_{n}"), c.name.as_str());
        push(&mut env, format!("RAUC_SLOT_CLASS_{n}"), c.class.as_str());
        push(&mut env, format!("RAUC_SLOT_TYPE_{n}"), c.slot_type.as_str());
        push(&mut env, format!("RAUC_SLOT_DEVICE_{n}"), c.device.to_string_lossy());
        push(&mut env, format!("RAUC_SLOT_BOOTNAME_{n}"), c.bootname.as_deref().unwrap_or(""));
        push(&mut env, format!("RAUC_SLOT_PARENT_{n}"), c.parent.as_deref().unwrap_or(""));
    }
    env.extend(manifest.meta_env());
    env
}

/// What a handler output line becomes (spec §6.7): a status message, or
/// the line itself prefixed with `# `.
pub fn output_message(line: &str) -> String {
    let Some(rest) = line.strip_prefix("<< ") else {
        return format!("# {line}");
    };
    let (word, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    match word {
        "handler" => format!("Handler status: {tail}"),
        "bootloader" => format!("Bootloader status: {tail}"),
        "error" => format!("Error: {tail}"),
        "debug" => format!("Debug: {tail}"),
        "image" => match tail.split_once(' ') {
            Some((name, status)) => format!("Image '{name}' status: {status}"),
            None => format!("Unknown handler output: {line}"),
        },
        _ => format!("Unknown handler output: {line}"),
    }
}

/// Runs a system handler or the custom handler with `env` added, turning
/// every output line into a message (spec §6.7).
pub fn run_handler(program: &Path, args: &[String], env: &Env, messages: &mut dyn FnMut(&str)) -> Result<()> {
    run_merged(program, args, env, |line| messages(&output_message(line)))
}

/// The bundle hook executable, if the manifest names one.
pub fn hook_program(manifest: &Manifest, bundle_dir: &Path) -> Option<PathBuf> {
    manifest.hooks.filename.as_ref().map(|f| bundle_dir.join(f))
}

/// The `install-check` hook (spec §6.4 step 10): exit 0 accepts, an exit
/// code of 10 or more rejects with the last line the hook wrote to stderr.
pub fn install_check(system: &System, manifest: &Manifest, program: &Path) -> Result<()> {
    let mut env = system_values(system);
    push(&mut env, "RAUC_MF_COMPATIBLE", manifest.update.compatible.as_str());
    push(&mut env, "RAUC_MF_VERSION", manifest.update.version.as_deref().unwrap_or(""));
    push(&mut env, "RAUC_MF_BUILD", manifest.update.build.as_deref().unwrap_or(""));
    push(&mut env, "RAUC_MOUNT_PREFIX", mount_prefix(system));
    env.extend(manifest.meta_env());
    let mut child = Command::new(program)
        .arg("install-check")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Failed(format!("Install-check hook failed: Failed to start {}: {e}", program.display())))?;
    let mut last = None;
    for line in BufReader::new(child.stderr.take().expect("piped")).lines().map_while(|l| l.ok()) {
        tracing::info!("install-check hook: {line}");
        if !line.is_empty() {
            last = Some(line);
        }
    }
    let status = child.wait().map_err(|e| Error::Failed(format!("Install-check hook failed: {e}")))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(c) if c >= 10 => Err(Error::Rejected(match last {
            Some(l) => format!("Bundle rejected: Hook returned: '{l}'"),
            None => format!("Bundle rejected: Hook returned with exit code {c}: {}", exit_reason(status)),
        })),
        _ => failed(format!("Install-check hook failed: {}", exit_reason(status))),
    }
}

/// Which slot hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotHook {
    /// Before the image is written.
    PreInstall,
    /// Instead of the built-in write.
    Install,
    /// After the image was written.
    PostInstall,
}

impl SlotHook {
    /// The argument the hook executable is called with.
    pub fn argument(self) -> &'static str {
        match self {
            SlotHook::PreInstall => "slot-pre-install",
            SlotHook::Install => "slot-install",
            SlotHook::PostInstall => "slot-post-install",
        }
    }

    fn enabled(self, hooks: &ImageHooks) -> bool {
        match self {
            SlotHook::PreInstall => hooks.pre_install,
            SlotHook::Install => hooks.install,
            SlotHook::PostInstall => hooks.post_install,
        }
    }
}

/// The slot hooks of one image in one target slot, ready to run.
pub struct SlotHooks {
    program: PathBuf,
    enabled: ImageHooks,
    env: Env,
}

impl SlotHooks {
    /// The hooks `image` enables for `slot`; `None` when it enables none or
    /// the manifest names no hook executable.
    pub fn new(
        system: &System,
        manifest: &Manifest,
        bundle_dir: &Path,
        spki_hashes: &str,
        slot: &Slot,
        image: &Image,
    ) -> Option<SlotHooks> {
        let program = hook_program(manifest, bundle_dir)?;
        let h = image.hooks;
        if !(h.pre_install || h.install || h.post_install) {
            return None;
        }
        let c = &slot.config;
        let mut env = system_values(system);
        push(&mut env, "RAUC_SLOT_NAME", c.name.as_str());
        push(&mut env, "RAUC_SLOT_CLASS", c.class.as_str());
        push(&mut env, "RAUC_SLOT_TYPE", c.slot_type.as_str());
        push(&mut env, "RAUC_SLOT_DEVICE", c.device.to_string_lossy());
        push(&mut env, "RAUC_SLOT_STATE", slot.state.as_str());
        push(&mut env, "RAUC_SLOT_BOOTNAME", system.bootname_of(c).unwrap_or(""));
        push(&mut env, "RAUC_SLOT_PARENT", c.parent.as_deref().unwrap_or(""));
        let image_path = image.filename.as_ref().map(|f| bundle_dir.join(f).to_string_lossy().into_owned());
        push(&mut env, "RAUC_IMAGE_NAME", image_path.unwrap_or_default());
        push(&mut env, "RAUC_IMAGE_SIZE", image.size.unwrap_or(0).to_string());
        push(&mut env, "RAUC_IMAGE_DIGEST", image.sha256.as_deref().unwrap_or(""));
        push(&mut env, "RAUC_IMAGE_CLASS", image.slotclass.as_str());
        push(&mut env, "RAUC_MOUNT_PREFIX", mount_prefix(system));
        push(&mut env, "RAUC_BUNDLE_MOUNT_POINT", bundle_dir.to_string_lossy());
        push(&mut env, "RAUC_BUNDLE_SPKI_HASHES", spki_hashes);
        Some(SlotHooks { program, enabled: h, env })
    }

    /// Whether `hook` is enabled.
    pub fn has(&self, hook: SlotHook) -> bool {
        hook.enabled(&self.enabled)
    }

    /// Runs `hook` if enabled, with the slot's mount point when it is mounted.
    pub fn run(&self, hook: SlotHook, mount_point: Option<&Path>) -> Result<()> {
        self.run_with(hook, mount_point, &[])
    }

    /// Like [`SlotHooks::run`], with `extra` variables (boot slot types, spec §4.3–4.5).
    pub fn run_with(&self, hook: SlotHook, mount_point: Option<&Path>, extra: &[(String, String)]) -> Result<()> {
        if !self.has(hook) {
            return Ok(());
        }
        let mut cmd = Command::new(&self.program);
        cmd.arg(hook.argument()).stdin(Stdio::null()).envs(self.env.iter().chain(extra).map(|(k, v)| (k, v)));
        if let Some(mp) = mount_point {
            cmd.env("RAUC_SLOT_MOUNT_POINT", mp);
        }
        let status = cmd.status().map_err(|e| {
            Error::Failed(format!("failed to run slot hook: Failed to start {}: {e}", self.program.display()))
        })?;
        check_exit(status).map_err(|e| e.context("failed to run slot hook"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_protocol() {
        assert_eq!(output_message("<< handler started"), "Handler status: started");
        assert_eq!(output_message("<< image rootfs.img done"), "Image 'rootfs.img' status: done");
        assert_eq!(output_message("<< bootloader switched to B"), "Bootloader status: switched to B");
        assert_eq!(output_message("<< error disk on fire"), "Error: disk on fire");
        assert_eq!(output_message("<< debug x=1"), "Debug: x=1");
        assert_eq!(output_message("<< image lonely"), "Unknown handler output: << image lonely");
        assert_eq!(output_message("<< frobnicate"), "Unknown handler output: << frobnicate");
        assert_eq!(output_message("copying 10%"), "# copying 10%");
        assert_eq!(output_message("<<no space"), "# <<no space");
    }
}
