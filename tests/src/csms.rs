//! A CSMS for OCPP tests: `tests/ocpp/csms.py`, built on PyPI's `ocpp`
//! (pinned below, in a venv under the target directory made on first use).

use crate::{target_dir, workspace};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The PyPI packages the CSMS runs on.
pub const PACKAGES: [&str; 2] = ["ocpp==2.1.0", "websockets==15.0.1"];

/// The venv's Python, with [`PACKAGES`] installed.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = target_dir().join("ocpp-venv");
        let stamp = venv.join(PACKAGES.join(" ").replace(['=', ' '], "_"));
        if !stamp.exists() {
            let _ = std::fs::remove_dir_all(&venv);
            let ok = Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(&venv).status().unwrap().success();
            assert!(ok, "python3 -m venv failed (apt-get install python3-venv)");
            let ok =
                Command::new(venv.join("bin/pip")).args(["install", "-q"]).args(PACKAGES).status().unwrap().success();
            assert!(ok, "pip install {PACKAGES:?} failed");
            std::fs::write(&stamp, "").unwrap();
        }
        venv.join("bin/python")
    })
    .clone()
}

/// A running CSMS, stopped when dropped.
pub struct Csms {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
    tls: bool,
    args: Vec<String>,
}

impl Csms {
    /// Starts the CSMS with extra arguments (`--password`, `--after-boot`,
    /// `--tls-cert`/`--tls-key`/`--client-ca`),
    /// logging into `log`.
    pub fn start(log: PathBuf, args: &[String]) -> Csms {
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(log.with_extension("commands"));
        let (child, port) = Csms::spawn(&log, args, 0);
        let tls = args.iter().any(|a| a.starts_with("--tls-cert"));
        Csms { child, port, log, tls, args: args.to_vec() }
    }

    fn spawn(log: &std::path::Path, args: &[String], port: u16) -> (Child, u16) {
        let mut child = Command::new(python())
            .arg(workspace().join("tests/ocpp/csms.py"))
            .arg("--log")
            .arg(log)
            .arg("--commands")
            .arg(log.with_extension("commands"))
            .arg(format!("--port={port}"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the CSMS");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the CSMS printed no port: {line:?}"));
        (child, port)
    }

    /// Stops the CSMS (its stations lose the connection).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port (asyncio servers reuse the
    /// address), logging on into the same log.
    pub fn restart(&mut self) {
        self.stop();
        let (child, port) = Csms::spawn(&self.log, &self.args, self.port);
        assert_eq!(port, self.port);
        self.child = child;
    }

    /// Its websocket URL (the station id is appended by the station).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}/ocpp", self.port)
    }

    /// Sends a call (`ACTION=JSON`, the library's snake_case fields) to the
    /// stations connected and booted now, or to the first that is, if none.
    pub fn command(&self, line: &str) {
        use std::io::Write;
        let path = self.log.with_extension("commands");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(f, "{line}").unwrap();
    }

    /// The statuses the station reported (`FirmwareStatusNotification` and
    /// `SignedFirmwareStatusNotification`), each with its `requestId`.
    pub fn statuses(&self) -> Vec<(String, Option<i64>)> {
        self.messages()
            .iter()
            .filter(|m| {
                m["kind"] == "call" && m["action"].as_str().is_some_and(|a| a.ends_with("FirmwareStatusNotification"))
            })
            .map(|m| (m["payload"]["status"].as_str().unwrap().to_string(), m["payload"]["requestId"].as_i64()))
            .collect()
    }

    /// Everything logged so far.
    pub fn messages(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Waits until a logged message satisfies `pred` and returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(m) = self.messages().into_iter().find(&pred) {
                return m;
            }
            assert!(Instant::now() < deadline, "the CSMS never saw {what}: {:#?}", self.messages());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Csms {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
