//! U-Boot through `fw_printenv` / `fw_setenv`. Unlike RAUC (two separate
//! `fw_setenv` calls), every change is one `fw_setenv --script` call, so
//! the environment is rewritten once, atomically.

use super::Bootloader;
use crate::error::{Error, Result, failed};
use crate::tools;
use std::io::Write;

pub(super) struct Uboot {
    pub(super) bootnames: Vec<String>,
    pub(super) attempts: u32,
    pub(super) attempts_primary: u32,
}

fn left_key(b: &str) -> String {
    format!("BOOT_{b}_LEFT")
}

impl Uboot {
    fn get(&self, key: &str) -> Result<String> {
        let out = tools::run("fw_printenv", &[key])?;
        match out.stdout.strip_prefix(&format!("{key}=")) {
            Some(v) => Ok(v.trim_end().to_string()),
            None => {
                failed(format!("Failed to read U-Boot variable {key}: unexpected output '{}'", out.stdout.trim_end()))
            }
        }
    }

    fn order(&self) -> Option<Vec<String>> {
        self.get("BOOT_ORDER").ok().map(|o| o.split_whitespace().map(str::to_string).collect())
    }

    fn left(&self, b: &str) -> Result<u64> {
        let v = self.get(&left_key(b))?;
        u64::from_str_radix(v.trim(), 16).map_err(|_| Error::Failed(format!("Invalid value '{v}' of {}", left_key(b))))
    }

    /// Sets all `pairs` in one `fw_setenv --script` run.
    fn set(&self, pairs: &[(String, String)]) -> Result<()> {
        let mut script = tempfile::NamedTempFile::new()
            .map_err(|e| Error::Failed(format!("Failed to create U-Boot script: {e}")))?;
        for (k, v) in pairs {
            writeln!(script, "{k} {v}").map_err(|e| Error::Failed(format!("Failed to write U-Boot script: {e}")))?;
        }
        script.flush().map_err(|e| Error::Failed(format!("Failed to write U-Boot script: {e}")))?;
        tools::run("fw_setenv", &["--script".as_ref(), script.path().as_os_str()]).map(|_| ())
    }
}

impl Bootloader for Uboot {
    fn set_state(&self, b: &str, good: bool) -> Result<()> {
        if good {
            return self.set(&[(left_key(b), format!("{:x}", self.attempts))]);
        }
        let mut pairs = Vec::new();
        if let Some(order) = self.order() {
            let rest: Vec<String> = order.into_iter().filter(|o| o != b).collect();
            pairs.push(("BOOT_ORDER".to_string(), rest.join(" ")));
        }
        pairs.push((left_key(b), "0".to_string()));
        self.set(&pairs)
    }

    fn set_primary(&self, b: &str) -> Result<()> {
        let previous = self.order().unwrap_or_else(|| self.bootnames.clone());
        let mut order = vec![b.to_string()];
        order.extend(previous.into_iter().filter(|o| o != b));
        self.set(&[(left_key(b), format!("{:x}", self.attempts_primary)), ("BOOT_ORDER".to_string(), order.join(" "))])
    }

    fn get_state(&self, b: &str) -> Result<bool> {
        let order = self.order().ok_or_else(|| Error::Failed("Failed to read U-Boot variable BOOT_ORDER".into()))?;
        Ok(order.iter().any(|o| o == b) && self.left(b)? > 0)
    }

    fn get_primary(&self) -> Result<String> {
        let order = self.order().ok_or_else(|| Error::Failed("Failed to read U-Boot variable BOOT_ORDER".into()))?;
        for b in order {
            if self.left(&b).unwrap_or(0) > 0 {
                return Ok(b);
            }
        }
        failed("Unable to find primary boot slot")
    }
}
