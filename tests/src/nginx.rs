//! A real nginx on 127.0.0.1 serving a directory, for as long as the value lives.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx.
pub struct Nginx {
    child: Child,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Its scratch directory (config, logs).
    pub dir: tempfile::TempDir,
    scheme: &'static str,
}

fn tls_lines(tls: Option<&Tls<'_>>) -> String {
    let Some(t) = tls else { return String::new() };
    let mut s = format!("    ssl_certificate {};\n    ssl_certificate_key {};\n", t.cert.display(), t.key.display());
    if let Some(ca) = t.client_ca {
        s.push_str(&format!("    ssl_verify_client on;\n    ssl_client_certificate {};\n", ca.display()));
    }
    s
}

fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx is not installed: run scripts/test, or apt-get install nginx-light");
}

/// The request headers [`Nginx::header_log`] records (nginx variable names,
/// i.e. lower-case with `_` for `-`).
pub const LOGGED_HEADERS: [&str; 13] = [
    "range",
    "user_agent",
    "if_match",
    "authorization",
    "x_fleet",
    "rauc_boot_id",
    "rauc_machine_id",
    "rauc_system_version",
    "rauc_serial",
    "rauc_variant",
    "rauc_transaction_id",
    "rauc_uptime",
    "rauc_my_info",
];

/// nginx `log_format` of the header log: status, path, then `name=value`
/// per logged header, tab-separated.
fn header_log_format() -> String {
    let mut f = "$status\t$uri".to_string();
    for h in LOGGED_HEADERS {
        f.push_str(&format!("\t{h}=$http_{h}"));
    }
    f
}

/// One request from the header log.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Response status.
    pub status: u16,
    /// Request path.
    pub uri: String,
    /// Logged headers that were present (nginx logs absent ones as `-`).
    pub headers: std::collections::BTreeMap<String, String>,
}

impl Logged {
    /// The value of logged header `name` (nginx spelling), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Bytes the `Range: bytes=a-b` header asked for (0 without one).
    pub fn range_len(&self) -> u64 {
        crate::httpd::range_len(self.header("range"))
    }
}

impl Nginx {
    /// Bytes asked for with ranges of `uri`, over all logged requests.
    pub fn served(&self, uri: &str) -> u64 {
        self.header_log().iter().filter(|l| l.uri == uri).map(Logged::range_len).sum()
    }
}

/// TLS settings for [`Nginx::serve_tls`].
pub struct Tls<'a> {
    /// Server certificate (PEM).
    pub cert: &'a Path,
    /// Server key (PEM).
    pub key: &'a Path,
    /// When set, clients must present a certificate issued by this CA.
    pub client_ca: Option<&'a Path>,
}

impl Nginx {
    /// Serves `root` over plain HTTP with range support (nginx's default).
    pub fn serve(root: &Path) -> Nginx {
        Self::start(root, None)
    }

    /// Serves `root` over HTTPS.
    pub fn serve_tls(root: &Path, tls: Tls<'_>) -> Nginx {
        Self::start(root, Some(tls))
    }

    fn start(root: &Path, tls: Option<Tls<'_>>) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log {d}/access.log;\n  log_format headers escape=none '{}';\n  access_log {d}/headers.log headers;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  sendfile on;\n  server {{\n    listen 127.0.0.1:{port}{};\n    root {};\n{}  }}\n}}\n",
            header_log_format(),
            if tls.is_some() { " ssl" } else { "" },
            root.display(),
            tls_lines(tls.as_ref()),
        );
        fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, port, dir, scheme: if tls.is_some() { "https" } else { "http" } }
    }

    /// URL of `path` (starting with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// The requests so far with the headers of [`LOGGED_HEADERS`].
    pub fn header_log(&self) -> Vec<Logged> {
        let text = fs::read_to_string(self.dir.path().join("headers.log")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let mut f = l.split('\t');
                let status = f.next().unwrap_or_default().parse().unwrap_or(0);
                let uri = f.next().unwrap_or_default().to_string();
                let headers = f
                    .filter_map(|kv| kv.split_once('='))
                    .filter(|(_, v)| *v != "-" && !v.is_empty())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                Logged { status, uri, headers }
            })
            .collect()
    }

    /// The access log so far.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

/// An empty web root, `www` in a fresh temporary directory (removed with
/// the returned guard).
pub fn web_root() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let www = t.path().join("www");
    fs::create_dir(&www).unwrap();
    (t, www)
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
