//! GRUB through `grub-editenv` (one `set` call per operation).
//!
//! `grub-editenv` truncates the environment file and writes it again, so an
//! interruption (power loss, or a reader racing the write) could see an
//! invalid block. Changes are therefore made on a copy next to the file, which
//! is synced and renamed over it: readers and the next boot see either the
//! old or the new environment. A configured path that is a link (say into
//! the EFI partition) is followed: the file GRUB reads is the one replaced.
//! Each change runs under a lock of that file's directory, so the service
//! and the command line never lose each other's changes.

use super::Bootloader;
use crate::error::{Error, Result, failed};
use crate::tools;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

pub(super) struct Grub {
    pub(super) env: PathBuf,
    pub(super) bootnames: Vec<String>,
}

impl Grub {
    fn list(&self) -> Result<HashMap<String, String>> {
        let out = tools::run("grub-editenv", &[self.env.as_os_str(), "list".as_ref()])?;
        Ok(out.stdout.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn set(&self, pairs: &[String]) -> Result<()> {
        let fail = |e: std::io::Error| Error::io("Failed to update GRUB environment", &self.env, e);
        let env = crate::files::resolve_links(&self.env).map_err(fail)?;
        let dir = crate::files::dir_of(&env);
        let _lock = crate::files::DirLock::take(dir).map_err(fail)?;
        let tmp = tempfile::Builder::new().prefix(".rota-grubenv-").tempfile_in(dir).map_err(fail)?;
        let mode = match std::fs::metadata(&env) {
            Ok(meta) => {
                std::fs::copy(&env, tmp.path()).map_err(fail)?;
                meta.permissions()
            }
            // A missing file is created by grub-editenv, as when editing in place.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::remove_file(tmp.path()).map_err(fail)?;
                std::fs::Permissions::from_mode(0o644)
            }
            Err(e) => return Err(fail(e)),
        };
        let mut args = vec![tmp.path().to_string_lossy().into_owned(), "set".to_string()];
        args.extend(pairs.iter().cloned());
        tools::run("grub-editenv", &args)?;
        std::fs::set_permissions(tmp.path(), mode).map_err(fail)?;
        std::fs::File::open(tmp.path()).and_then(|f| f.sync_all()).map_err(fail)?;
        tmp.persist(&env).map_err(|e| fail(e.error))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
    }

    fn is_good(env: &HashMap<String, String>, b: &str) -> Result<bool> {
        let order = env
            .get("ORDER")
            .ok_or_else(|| crate::error::Error::Failed("Unable to obtain ORDER from grubenv".into()))?;
        let ok = env.get(&format!("{b}_OK"));
        let try_ = env.get(&format!("{b}_TRY"));
        let (Some(ok), Some(try_)) = (ok, try_) else {
            return failed(format!("Unable to obtain {b}_OK or {b}_TRY from grubenv"));
        };
        Ok(order.split_whitespace().any(|o| o == b) && ok == "1" && try_ == "0")
    }
}

impl Bootloader for Grub {
    fn set_state(&self, b: &str, good: bool) -> Result<()> {
        let ok = if good { "1" } else { "0" };
        self.set(&[format!("{b}_OK={ok}"), format!("{b}_TRY=0")])
    }

    fn set_primary(&self, b: &str) -> Result<()> {
        let mut order = vec![b.to_string()];
        order.extend(self.bootnames.iter().filter(|n| *n != b).cloned());
        self.set(&[format!("{b}_OK=1"), format!("{b}_TRY=0"), format!("ORDER={}", order.join(" "))])
    }

    fn get_state(&self, b: &str) -> Result<bool> {
        Self::is_good(&self.list()?, b)
    }

    fn get_primary(&self) -> Result<String> {
        let env = self.list()?;
        let order = env.get("ORDER").cloned().unwrap_or_default();
        for b in order.split_whitespace() {
            if Self::is_good(&env, b).unwrap_or(false) {
                return Ok(b.to_string());
            }
        }
        failed("Unable to find primary boot slot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_from_several_writers_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("grubenv");
        let grub = |_| Grub { env: env.clone(), bootnames: vec!["A".into(), "B".into()] };
        std::thread::scope(|s| {
            for w in 0..4 {
                let g = grub(w);
                s.spawn(move || {
                    for i in 0..10 {
                        g.set(&[format!("W{w}_{i}=1")]).unwrap();
                    }
                });
            }
        });
        let all = grub(0).list().unwrap();
        let missing: Vec<String> =
            (0..4).flat_map(|w| (0..10).map(move |i| format!("W{w}_{i}"))).filter(|k| !all.contains_key(k)).collect();
        assert!(missing.is_empty(), "lost: {missing:?}");
    }
}
