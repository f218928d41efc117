//! A private D-Bus for service tests: a real `dbus-daemon` (session
//! configuration) per test, and `rota service` running on it for a
//! simulated [`Device`].

use crate::device::Device;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A private `dbus-daemon`, stopped when dropped.
pub struct Bus {
    /// Its address (`unix:path=…`).
    pub address: String,
    pid: i32,
    /// Whether programs see it as their system bus (else as the session bus).
    system: bool,
}

impl Bus {
    /// Starts a private session bus.
    pub fn start() -> Bus {
        Bus::spawn(&["--session"], false)
    }

    /// Starts a private bus with the configuration file `config`, which
    /// programs get as their system bus.
    pub fn start_system(config: &std::path::Path) -> Bus {
        Bus::spawn(&[&format!("--config-file={}", config.display())], true)
    }

    fn spawn(config: &[&str], system: bool) -> Bus {
        let out = Command::new("dbus-daemon")
            .args(config)
            .args(["--print-address=1", "--print-pid=1", "--fork", "--nopidfile"])
            .output()
            .expect("run dbus-daemon");
        assert!(out.status.success(), "dbus-daemon: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let address = lines.next().expect("address").trim().to_string();
        let pid = lines.next().expect("pid").trim().parse().expect("pid");
        Bus { address, pid, system }
    }

    /// The environment that puts a program on this bus (as its session bus,
    /// with `DBUS_STARTER_BUS_TYPE=session`, or as its system bus).
    pub fn env(&self) -> Vec<(&'static str, &str)> {
        if self.system {
            vec![("DBUS_SYSTEM_BUS_ADDRESS", self.address.as_str())]
        } else {
            vec![("DBUS_SESSION_BUS_ADDRESS", self.address.as_str()), ("DBUS_STARTER_BUS_TYPE", "session")]
        }
    }

    /// `busctl --address=<bus>` with `args`.
    pub fn busctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new("busctl");
        c.arg(format!("--address={}", self.address)).args(args);
        c
    }

    /// Whether `name` has an owner on this bus.
    pub fn has_name(&self, name: &str) -> bool {
        self.busctl(&["status", name]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of the daemon this bus started.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
    }
}

/// `rota service` for a device on a private bus; killed when dropped.
pub struct Service {
    child: Option<Child>,
}

impl Service {
    /// Starts the service of `d` on `bus` with extra environment `env`, and
    /// waits until it owns `de.pengutronix.rauc`.
    pub fn start(d: &Device, bus: &Bus, env: &[(&str, &str)]) -> Service {
        Service::start_in(d, bus, env, None)
    }

    /// [`Service::start`] inside network namespace `netns`, if one is given.
    pub fn start_in(d: &Device, bus: &Bus, env: &[(&str, &str)], netns: Option<&crate::netns::Netns>) -> Service {
        let mut cmd = d.rota();
        if let Some(ns) = netns {
            ns.enter(&mut cmd);
        }
        cmd.envs(bus.env()).envs(env.iter().copied()).env("ROTA_RUN_DIR", d.path("run")).arg("service");
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(d.path("service.log")).expect("log file"));
        let mut child = cmd.spawn().expect("start rota service");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bus.has_name("de.pengutronix.rauc") {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("rota service exited with {st}: {}", std::fs::read_to_string(d.path("service.log")).unwrap());
            }
            assert!(Instant::now() < deadline, "rota service did not take its name");
            std::thread::sleep(Duration::from_millis(20));
        }
        Service { child: Some(child) }
    }

    /// Stops the service with SIGTERM and returns how it exited.
    pub fn stop(self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// Sends `signal` to the service.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: plain kill(2) of our child.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// File descriptors the service holds open, once the count has settled
    /// (two equal counts 200 ms apart): a worker thread may still be
    /// closing what a call opened.
    pub fn settled_fds(&self) -> usize {
        let count = || std::fs::read_dir(format!("/proc/{}/fd", self.pid())).expect("the service runs").count();
        let mut last = count();
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(200));
            let now = count();
            if now == last {
                return now;
            }
            last = now;
        }
        last
    }

    /// Whether the service still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none()))
    }

    /// Waits for the service to end and returns how it exited.
    pub fn wait(mut self) -> ExitStatus {
        self.child.take().expect("running").wait().expect("wait for rota service")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `<interface name="…">` element of an introspection document.
pub fn interface_element<'a>(xml: &'a str, name: &str) -> &'a str {
    let start = xml.find(&format!("<interface name=\"{name}\">")).expect("interface present");
    let end = xml[start..].find("</interface>").expect("interface closed") + start + "</interface>".len();
    &xml[start..end]
}

/// A zbus connection to `rota service` (`de.pengutronix.rauc` on `/`) on a
/// test bus, with the calls service tests make; every call must be
/// answered within the bound it was made with, else the test fails.
pub struct Client {
    /// The connection, for calls of other shapes.
    pub conn: zbus::Connection,
    answer: Duration,
}

impl Client {
    /// Connects to `bus`; calls must be answered within `answer`.
    pub async fn connect(bus: &Bus, answer: Duration) -> Client {
        let conn = zbus::connection::Builder::address(bus.address.as_str()).build().await.expect("connect to the bus");
        Client { conn, answer }
    }

    /// `iface.method(body)` on the service's object; panics, naming `what`,
    /// unless it is answered in time.
    pub async fn call<B>(&self, iface: &str, method: &str, body: &B, what: &str) -> zbus::Result<zbus::Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let call = self.conn.call_method(Some("de.pengutronix.rauc"), "/", Some(iface), method, body);
        match tokio::time::timeout(self.answer, call).await {
            Ok(answer) => answer,
            Err(_) => panic!("{what}: {iface}.{method} not answered within {:?}", self.answer),
        }
    }

    /// A property of `de.pengutronix.rauc.Installer`.
    pub async fn property(&self, name: &str) -> zbus::OwnedVariant {
        let body = ("de.pengutronix.rauc.Installer", name);
        let msg = self.call("org.freedesktop.DBus.Properties", "Get", &body, name).await.expect("Get succeeds");
        msg.body().deserialize().expect("a variant")
    }

    /// A string property of `de.pengutronix.rauc.Installer`.
    pub async fn text(&self, name: &str) -> String {
        String::try_from(self.property(name).await).expect("a string")
    }

    /// Waits (at most `within`, failing `what` after) until no
    /// installation runs; its `LastError`.
    pub async fn idle(&self, within: Duration, what: &str) -> String {
        let deadline = tokio::time::Instant::now() + within;
        while self.text("Operation").await != "idle" {
            assert!(tokio::time::Instant::now() < deadline, "{what}: the installation does not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.text("LastError").await
    }
}
