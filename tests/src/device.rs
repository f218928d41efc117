//! A simulated device for device-side tests: file-backed slots, a
//! `system.conf`, a kernel command line file (`ROTA_CMDLINE_PATH`) and the
//! recording fakes of `tests/fakes` first on `PATH` (see its README: only
//! hardware-bound tools are faked; GRUB uses the real `grub-editenv`).

use crate::{Run, WorkDir, rota, rota_as_rauc, run, workspace};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One simulated device in a directory (removed with the device when the
/// test passes, see [`WorkDir`]).
pub struct Device {
    /// Root directory of the device.
    pub dir: PathBuf,
    _work: WorkDir,
}

impl Device {
    /// A device in `dir` (emptied first) with `system.conf` = `conf`.
    pub fn new(dir: impl Into<PathBuf>, conf: &str) -> Device {
        let work = WorkDir::new(dir);
        let dir = work.path().to_path_buf();
        fs::create_dir_all(dir.join("fake")).unwrap();
        let d = Device { dir, _work: work };
        d.write_conf(conf);
        d.boot("rauc.slot=A");
        d
    }

    /// Replaces `system.conf`.
    pub fn write_conf(&self, conf: &str) {
        fs::write(self.conf(), conf).unwrap();
    }

    /// Path of `system.conf`.
    pub fn conf(&self) -> PathBuf {
        self.dir.join("system.conf")
    }

    /// Path of a file in the device directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates a file-backed slot image of `size` bytes filled with `byte`.
    pub fn slot_file(&self, name: &str, size: usize, byte: u8) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, vec![byte; size]).unwrap();
        p
    }

    /// A GRUB environment (`grubenv`, real `grub-editenv`) with A and B
    /// both good and A first, and the files of the A/B root and app slots
    /// (`rootfs0.img` … `appfs1.img`, `size` bytes of `byte`).
    pub fn grub_ab(&self, size: usize, byte: u8) {
        self.grub_env(&["A", "B"]);
        for f in ["rootfs0.img", "rootfs1.img", "appfs0.img", "appfs1.img"] {
            self.slot_file(f, size, byte);
        }
    }

    /// A GRUB environment (`grubenv`) booting `bootnames` in this order,
    /// each good with no pending tries.
    pub fn grub_env(&self, bootnames: &[&str]) {
        let env = self.path("grubenv");
        run(Command::new("grub-editenv").arg(&env).arg("create")).ok();
        let mut set = vec!["set".to_string(), format!("ORDER={}", bootnames.join(" "))];
        for b in bootnames {
            set.extend([format!("{b}_OK=1"), format!("{b}_TRY=0")]);
        }
        run(Command::new("grub-editenv").arg(&env).args(&set)).ok();
    }

    /// Sets the kernel command line the device "booted" with.
    pub fn boot(&self, cmdline: &str) {
        fs::write(self.path("cmdline"), format!("{cmdline}\n")).unwrap();
    }

    /// Directory the fakes keep their state in.
    pub fn fake_state(&self) -> PathBuf {
        self.path("fake")
    }

    /// Writes a fake's state file.
    pub fn fake_file(&self, name: &str, text: &str) {
        fs::write(self.fake_state().join(name), text).unwrap();
    }

    /// Reads a fake's state file.
    pub fn fake_read(&self, name: &str) -> String {
        fs::read_to_string(self.fake_state().join(name)).unwrap_or_default()
    }

    /// The calls the fakes recorded so far, and clears the record.
    pub fn take_calls(&self) -> Vec<String> {
        let p = self.fake_state().join("calls.log");
        let text = fs::read_to_string(&p).unwrap_or_default();
        let _ = fs::remove_file(&p);
        text.lines().map(str::to_string).collect()
    }

    fn prepare(&self, cmd: Command) -> Command {
        self.prepare_in(cmd, &self.dir)
    }

    /// `cmd` with the device environment, the device seen at `dir` (a copy
    /// of it, or a file system serving it).
    fn prepare_in(&self, mut cmd: Command, dir: &Path) -> Command {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("ROTA_CMDLINE_PATH", dir.join("cmdline"))
            .env("FAKE_STATE", dir.join("fake"))
            .env("PATH", format!("{}:{path}", fakes_dir().display()))
            .env_remove("DBUS_STARTER_BUS_TYPE")
            // Hermetic: no system bus, so no service (e.g. an activatable
            // Debian rauc) is found there; service tests put a private bus
            // in as the session bus.
            .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/rota-test-no-system-bus")
            .arg(format!("--conf={}", dir.join("system.conf").display()))
            .current_dir(dir);
        cmd
    }

    /// `rota` on the device as seen at `dir` (see `prepare_in`).
    pub fn rota_in(&self, dir: &Path) -> Command {
        self.prepare_in(rota(), dir)
    }

    /// `rota --conf=<device conf>` with the device environment.
    pub fn rota(&self) -> Command {
        self.prepare(rota())
    }

    /// The same, invoked as `rauc`.
    pub fn rauc(&self) -> Command {
        self.prepare(rota_as_rauc())
    }

    /// Runs `rota <args>` on the device.
    pub fn run(&self, args: &[&str]) -> Run {
        run(self.rota().args(args))
    }
}

/// The directory of the recording fakes.
pub fn fakes_dir() -> PathBuf {
    workspace().join("tests/fakes")
}

/// `grub-editenv <env> list` as `KEY=value` lines.
pub fn grubenv(env: &Path) -> Vec<String> {
    let out = run(Command::new("grub-editenv").arg(env).arg("list")).ok();
    out.stdout.lines().map(str::to_string).collect()
}

/// The slot GRUB boots with environment `env` (lines of [`grubenv`]): the
/// first of `ORDER` that is OK and has no pending tries (the test
/// environments keep `TRY` at 0).
pub fn grub_selected(env: &[String]) -> Option<String> {
    let get = |k: &str| env.iter().find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_string));
    let order = get("ORDER")?;
    order
        .split(' ')
        .find(|s| get(&format!("{s}_OK")).as_deref() == Some("1") && get(&format!("{s}_TRY")).as_deref() == Some("0"))
        .map(str::to_string)
}
