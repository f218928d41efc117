//! Running the external programs that talk to bootloaders and storage
//! (grub-editenv, fw_setenv, barebox-state, efibootmgr, mkfs, mount, …).
//! They are looked up on `PATH`, so tests can put recording fakes first.

use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};

/// Runs a configured reboot command (`argv`, already split) on a blocking
/// thread; its failure as a message.
pub async fn run_reboot_command(argv: &[String]) -> std::result::Result<(), String> {
    let Some((cmd, args)) = argv.split_first() else { return Err("No reboot command configured".into()) };
    let (cmd, args) = (cmd.clone(), args.to_vec());
    let ran = tokio::task::spawn_blocking(move || (Command::new(&cmd).args(&args).status(), cmd)).await;
    match ran {
        Ok((Ok(s), _)) if s.success() => Ok(()),
        Ok((Ok(s), cmd)) => Err(format!("Reboot command {cmd} failed: {s}")),
        Ok((Err(e), cmd)) => Err(format!("Failed to run reboot command {cmd}: {e}")),
        Err(e) => Err(format!("Failed to run the reboot command: {e}")),
    }
}

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

/// How a child that did not exit 0 ended, in GLib's words (which RAUC's
/// messages carry): `Child process exited with code N` or `… killed by a signal`.
pub fn exit_reason(status: ExitStatus) -> String {
    match status.code() {
        Some(c) => format!("Child process exited with code {c}"),
        None => "Child process was killed by a signal".to_string(),
    }
}

/// Fails with [`exit_reason`] unless `status` is a zero exit.
pub fn check_exit(status: ExitStatus) -> Result<()> {
    if status.success() { Ok(()) } else { Err(Error::Failed(exit_reason(status))) }
}

/// Runs `program args…` (no stdin); fails unless it exits 0.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    run_with_input(program, args, None)
}

/// Runs `program args…` with `input` on stdin (none: empty stdin); fails
/// unless it exits 0, naming the command and what it wrote to stderr.
pub fn run_with_input<S: AsRef<OsStr>>(program: &str, args: &[S], input: Option<&[u8]>) -> Result<Output> {
    tracing::debug!("running {}", describe(program, args));
    let start = |e: std::io::Error| Error::Failed(format!("Failed to start {program}: {e}"));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(start)?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        // A child that exits without reading all input is judged by its exit status.
        let _ = stdin.write_all(data);
    }
    let out = child.wait_with_output().map_err(start)?;
    let output = Output {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if !out.status.success() {
        let reason = exit_reason(out.status);
        let detail = output.stderr.trim();
        return Err(Error::Failed(if detail.is_empty() {
            format!("{} failed: {reason}", describe(program, args))
        } else {
            format!("{} failed: {reason}: {detail}", describe(program, args))
        }));
    }
    Ok(output)
}
