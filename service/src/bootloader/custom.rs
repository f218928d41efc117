//! A user-supplied script speaking RAUC's custom backend protocol:
//! `get-primary`, `set-primary <b>`, `get-state <b>`, `set-state <b> good|bad`,
//! `get-current`.

use super::Bootloader;
use crate::error::{Result, failed};
use crate::tools;
use std::path::PathBuf;

pub(super) struct Custom {
    pub(super) script: PathBuf,
    pub(super) bootnames: Vec<String>,
}

impl Custom {
    fn call(&self, args: &[&str]) -> Result<String> {
        Ok(tools::run(&self.script.to_string_lossy(), args)?.stdout)
    }
}

impl Bootloader for Custom {
    fn set_state(&self, b: &str, good: bool) -> Result<()> {
        self.call(&["set-state", b, if good { "good" } else { "bad" }]).map(|_| ())
    }

    fn set_primary(&self, b: &str) -> Result<()> {
        self.call(&["set-primary", b]).map(|_| ())
    }

    fn get_state(&self, b: &str) -> Result<bool> {
        match self.call(&["get-state", b])?.trim() {
            "good" => Ok(true),
            "bad" => Ok(false),
            other => failed(format!("Unexpected state '{other}' from custom bootloader backend")),
        }
    }

    fn get_primary(&self) -> Result<String> {
        let out = self.call(&["get-primary"])?;
        let b = out.trim();
        if self.bootnames.iter().any(|n| n == b) {
            Ok(b.to_string())
        } else {
            failed(format!("Custom bootloader backend returned unknown primary '{b}'"))
        }
    }

    fn current_hint(&self) -> Option<String> {
        let out = self.call(&["get-current"]).ok()?;
        out.lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty())
    }
}
