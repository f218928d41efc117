//! `mount <BUNDLE>`: verifies the bundle and shows its content read-only at
//! `<mountprefix>/bundle` until `umount <dir>`. A FUSE view needs a process
//! behind it, so a detached copy of this program serves the view; this
//! process returns as soon as the view is mounted.

use crate::bundleview::BundleView;
use rota_bundle::bundle::Bundle;
use rota_bundle::cli::{CliError, Context};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Set in the environment of the detached copy that serves the view.
const SERVE_ENV: &str = "ROTA_SERVE_BUNDLE_VIEW";

pub(super) fn run(ctx: &Context) -> Result<(), CliError> {
    if std::env::var_os(SERVE_ENV).is_some() {
        return serve(ctx);
    }
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    let exe = std::env::current_exe().map_err(|e| CliError::from(format!("Failed to find own executable: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg0(argv0).args(argv).env(SERVE_ENV, "1").stdin(Stdio::null()).stdout(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; the child leaves our session so it
    // outlives this process and the terminal.
    unsafe {
        cmd.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let mut child = cmd.spawn().map_err(|e| CliError::from(format!("Failed to start the bundle view: {e}")))?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    let _ = BufReader::new(stdout).read_line(&mut line);
    if line.starts_with("Mounted bundle at ") {
        print!("{line}");
        return Ok(());
    }
    // The copy failed and has said why on stderr.
    let code = child.wait().ok().and_then(|s| s.code()).filter(|&c| c != 0).unwrap_or(1);
    Err(CliError { message: String::new(), code })
}

/// The detached copy: opens and verifies the bundle, mounts the view, reports,
/// then serves reads until someone unmounts it.
fn serve(ctx: &Context) -> Result<(), CliError> {
    let loc = super::install::location(ctx.arg(0))?;
    let config = super::load_config(ctx)?;
    let opts = super::open_options(ctx, &config, &Default::default())?;
    let bundle = Bundle::open(&loc, &opts)?;
    let dir = config.system.mount_prefix.join("bundle");
    let view = BundleView::mount(bundle.payload()?, &dir)?;
    let d = view.path().display();
    println!("Mounted bundle at {d}. Use 'umount {d}' to unmount.");
    let _ = std::io::stdout().flush();
    // Nobody reads our output any more.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto the standard descriptors with a valid open fd.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
    view.serve_until_unmounted();
    Ok(())
}
