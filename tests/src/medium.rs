//! `rota-flaky-medium` (a FUSE file that misbehaves on purpose) mounted over
//! a slot's device file, for read-back and write-fault tests.

use crate::run;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The medium serving a backing file on the slot file `dev`; unmounted when
/// dropped.
pub struct FlakyMedium {
    dev: PathBuf,
    server: Option<Child>,
}

impl FlakyMedium {
    /// Copies `dev` to `backing` and serves it on `dev` with `faults` (the
    /// medium's `decay@N`, `eio@N`, `enospc@N`, `short@N`, `read-eio@N`,
    /// `fsync-eio`; none for an honest medium). `program` is the path of the
    /// `rota-flaky-medium` binary.
    pub fn mount(program: &Path, dev: &Path, backing: &Path, faults: &[String]) -> FlakyMedium {
        fs::copy(dev, backing).expect("copy the slot to the backing file");
        let before = fs::metadata(dev).expect("the slot file").dev();
        let server = Command::new(program)
            .arg(backing)
            .arg(dev)
            .args(faults)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rota-flaky-medium");
        let medium = FlakyMedium { dev: dev.to_path_buf(), server: Some(server) };
        crate::wait_mounted(dev, before, "the flaky medium");
        medium
    }

    /// Unmounts; returns what the medium served and did.
    pub fn unmount(mut self) -> Served {
        run(Command::new("umount").arg(&self.dev)).ok();
        let out = self.server.take().expect("mounted").wait_with_output().expect("the medium ends");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let count = |k: &str| {
            err.split(k)
                .nth(1)
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("{err}"))
        };
        Served { reads: count("reads="), writes: count("writes="), faults: count("faults=") }
    }
}

/// What a [`FlakyMedium`] served until it was unmounted.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    /// Reads that reached the medium.
    pub reads: u64,
    /// Writes that reached the medium.
    pub writes: u64,
    /// Faults it injected (failed, cut short or altered operations).
    pub faults: u64,
}

impl Drop for FlakyMedium {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = Command::new("umount").arg("-l").arg(&self.dev).status();
            let _ = server.wait();
        }
    }
}
