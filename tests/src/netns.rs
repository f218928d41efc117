//! Hosts on one machine, each in its own network namespace, joined by veth
//! links to a bridge in a "switch" namespace: a LAN for tests of what
//! crosses a network (ECUs talking to each other). A link can be cut and
//! mended. Unix sockets (a private bus, for one) stay reachable, as they
//! live in the file system.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Runs `ip` with `args`; panics with its message when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A network namespace, deleted when its owner is dropped.
pub struct Netns {
    /// Its name (`/run/netns/<name>`).
    pub name: String,
    owned: bool,
}

impl Netns {
    /// A fresh namespace `name` (a stale one of that name is removed first)
    /// with its loopback up.
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        Netns { name: name.to_string(), owned: true }
    }

    /// Another handle on this namespace, which does not delete it.
    pub fn handle(&self) -> Netns {
        Netns { name: self.name.clone(), owned: false }
    }

    /// Runs `f` on a thread inside this namespace (sockets it opens live
    /// there; the caller's thread stays where it is).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.try_run(f).unwrap_or_else(|e| panic!("entering namespace {}: {e}", self.name))
    }

    /// [`Netns::run`], or why the namespace could not be entered (it is gone).
    pub fn try_run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path)?;
                // SAFETY: setns on an fd we own; it changes this thread only.
                if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .expect("thread in the namespace")
        })
    }

    /// Makes `cmd` run inside this namespace.
    pub fn enter(&self, cmd: &mut Command) {
        let path = std::ffi::CString::new(format!("/run/netns/{}", self.name)).expect("no NUL");
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made (open, setns, close) on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let r = libc::setns(fd, libc::CLONE_NEWNET);
                libc::close(fd);
                if r != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

/// A LAN: hosts on 10.77.0.0/24 behind one bridge.
pub struct Lan {
    hosts: Vec<(String, Netns)>,
    /// The namespace holding the bridge and the hosts' link ends.
    switch: Netns,
}

impl Lan {
    /// An empty LAN whose namespaces are named `<prefix>-…`.
    pub fn new(prefix: &str) -> Lan {
        let switch = Netns::new(&format!("{prefix}-switch"));
        ip(&["-n", &switch.name, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch.name, "link", "set", "br0", "up"]);
        Lan { hosts: Vec::new(), switch }
    }

    /// Adds host `id` in namespace `<prefix>-<id>`; returns its address.
    pub fn host(&mut self, prefix: &str, id: &str) -> String {
        let n = self.hosts.len() + 1;
        let ns = Netns::new(&format!("{prefix}-{id}"));
        let port = format!("v{n}");
        ip(&[
            "link",
            "add",
            &port,
            "netns",
            &self.switch.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        ip(&["-n", &self.switch.name, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.switch.name, "link", "set", &port, "up"]);
        let addr = format!("10.77.0.{n}");
        ip(&["-n", &ns.name, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        self.hosts.push((id.to_string(), ns));
        addr
    }

    /// The namespace of host `id`.
    pub fn netns(&self, id: &str) -> &Netns {
        &self.hosts.iter().find(|(h, _)| h == id).expect("a host of this LAN").1
    }

    fn port(&self, id: &str) -> String {
        format!("v{}", self.hosts.iter().position(|(h, _)| h == id).expect("a host of this LAN") + 1)
    }

    /// Cuts host `id`'s link: nothing reaches it or leaves it.
    pub fn cut(&self, id: &str) {
        ip(&["-n", &self.switch.name, "link", "set", &self.port(id), "down"]);
    }

    /// Mends host `id`'s link.
    pub fn mend(&self, id: &str) {
        ip(&["-n", &self.switch.name, "link", "set", &self.port(id), "up"]);
    }
}
