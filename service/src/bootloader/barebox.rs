//! barebox through `barebox-state` (bootchooser priorities and attempts).

use super::Bootloader;
use crate::error::{Error, Result, failed};
use crate::tools;
use std::path::PathBuf;

pub(super) struct Barebox {
    pub(super) statename: Option<String>,
    pub(super) dtb: Option<PathBuf>,
    pub(super) bootnames: Vec<String>,
    pub(super) attempts: u32,
    pub(super) attempts_primary: u32,
}

impl Barebox {
    fn call(&self, middle: Vec<String>) -> Result<String> {
        let mut args = Vec::new();
        if let Some(n) = &self.statename {
            args.extend(["-n".to_string(), n.clone()]);
        }
        args.extend(middle);
        if let Some(d) = &self.dtb {
            args.extend(["-i".to_string(), d.to_string_lossy().into_owned()]);
        }
        Ok(tools::run("barebox-state", &args)?.stdout)
    }

    /// (priority, remaining attempts) of `b`.
    fn read(&self, b: &str) -> Result<(u64, u64)> {
        let out = self.call(vec![
            "-g".into(),
            format!("bootstate.{b}.priority"),
            "-g".into(),
            format!("bootstate.{b}.remaining_attempts"),
        ])?;
        let nums: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        match nums[..] {
            [p, a] => Ok((p, a)),
            _ => failed(format!("Unexpected barebox-state output for {b}: '{}'", out.trim())),
        }
    }

    fn set(&self, vars: &[(String, u64)]) -> Result<()> {
        let mut args = Vec::new();
        for (k, v) in vars {
            args.push("-s".to_string());
            args.push(format!("{k}={v}"));
        }
        self.call(args).map(|_| ())
    }
}

impl Bootloader for Barebox {
    fn set_state(&self, b: &str, good: bool) -> Result<()> {
        if good {
            self.set(&[(format!("bootstate.{b}.remaining_attempts"), self.attempts.into())])
        } else {
            self.set(&[(format!("bootstate.{b}.priority"), 0), (format!("bootstate.{b}.remaining_attempts"), 0)])
        }
    }

    fn set_primary(&self, b: &str) -> Result<()> {
        let mut vars = Vec::new();
        for n in &self.bootnames {
            let prio = if n == b {
                20
            } else if self.read(n)?.0 > 0 {
                10
            } else {
                0
            };
            vars.push((format!("bootstate.{n}.priority"), prio));
        }
        vars.push((format!("bootstate.{b}.remaining_attempts"), self.attempts_primary.into()));
        self.set(&vars)
    }

    fn get_state(&self, b: &str) -> Result<bool> {
        let (p, a) = self.read(b)?;
        Ok(p > 0 && a > 0)
    }

    fn get_primary(&self) -> Result<String> {
        let mut best: Option<(u64, &String)> = None;
        for n in &self.bootnames {
            let (p, a) = self.read(n)?;
            if a > 0 && p > 0 && best.is_none_or(|(bp, _)| p > bp) {
                best = Some((p, n));
            }
        }
        best.map(|(_, n)| n.clone()).ok_or_else(|| Error::Failed("Unable to find primary boot slot".into()))
    }

    fn current_hint(&self) -> Option<String> {
        let cmdline = crate::bootslot::read_cmdline().ok()?;
        cmdline.split_whitespace().find_map(|w| {
            w.strip_prefix("bootstate.active=").or_else(|| w.strip_prefix("bootchooser.active=")).map(str::to_string)
        })
    }
}
