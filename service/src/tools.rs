//! Running the external programs that talk to bootloaders and storage
//! (grub-editenv, fw_setenv, barebox-state, efibootmgr, mkfs, mount, …).
//! They are looked up on `PATH`, so tests can put recording fakes first.

use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::process::{Command, Stdio};

/// What a finished program printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

fn describe<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Runs `program args…` (no stdin); fails unless it exits 0.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    tracing::debug!("running {}", describe(program, args));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Failed(format!("Failed to start {program}: {e}")))?;
    let output = Output {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if !out.status.success() {
        let reason = match out.status.code() {
            Some(c) => format!("Child process exited with code {c}"),
            None => "Child process was killed by a signal".to_string(),
        };
        let detail = output.stderr.trim();
        return Err(Error::Failed(if detail.is_empty() {
            format!("{} failed: {reason}", describe(program, args))
        } else {
            format!("{} failed: {reason}: {detail}", describe(program, args))
        }));
    }
    Ok(output)
}
