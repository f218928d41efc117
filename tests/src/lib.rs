//! Test kit shared by rota's integration tests: the binaries under test, a
//! real OpenSSL PKI, bundle content builders, command runners and HTTP
//! servers (nginx, and an in-process one that can misbehave on purpose).

pub mod bus;
pub mod charger;
pub mod csms;
pub mod device;
pub mod ecu;
pub mod httpd;
pub mod medium;
pub mod netns;
pub mod nginx;
pub mod pkcs11;
pub mod powercut;
pub mod proxy;
pub mod rootfs;
pub mod trees;

use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_path_buf()
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"))
}

/// A test's working directory: emptied when made, removed when dropped
/// unless the test is failing (then it stays, to be looked at). Removal stays
/// on the directory's own file system (`rm --one-file-system`), so nothing
/// still mounted below it is descended into. Keeps a whole run of the suite
/// within the disk a CI machine has: each test leaves nothing behind.
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// `path`, emptied (made if missing).
    pub fn new(path: impl Into<PathBuf>) -> WorkDir {
        let path = path.into();
        remove_tree(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        WorkDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            remove_tree(&self.path);
        }
    }
}

/// Removes `path` and what is below it on its own file system; a missing
/// path is fine. What cannot go (a mount point still in use) is reported
/// on stderr and left.
pub fn remove_tree(path: &Path) {
    if fs::symlink_metadata(path).is_err() {
        return;
    }
    let out = Command::new("rm").args(["-rf", "--one-file-system", "--"]).arg(path).output().expect("run rm");
    if !out.status.success() {
        eprintln!("removing {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
}

/// Runs `f` while holding an exclusive lock on `target/<name>.lock`, so
/// parallel test binaries do not race on shared fixtures.
fn with_lock<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let dir = target_dir();
    fs::create_dir_all(&dir).expect("target dir");
    let lock = fs::File::create(dir.join(format!("{name}.lock"))).expect("lock file");
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock");
    let r = f();
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
    r
}

/// Path of a workspace binary, built (once per process) if needed; with
/// `ROTA_BIN_DIR` set (a benchmark's release build), the one there.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("ROTA_BIN_DIR") {
        return workspace().join(dir).join(name);
    }
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "--bins", "-p", "rota", "-p", "rota-bundle", "-p", "rota-ocpp"])
            .current_dir(workspace())
            .status()
            .expect("run cargo build");
        assert!(st.success(), "building the binaries under test failed");
    });
    target_dir().join("debug").join(name)
}

/// `rota` (the multi-call binary).
pub fn rota() -> Command {
    Command::new(bin("rota"))
}

/// The `rota` binary invoked under the name `rauc` (through a symlink).
pub fn rota_as_rauc() -> Command {
    static LINK: OnceLock<PathBuf> = OnceLock::new();
    let link = LINK.get_or_init(|| {
        let dir = target_dir().join("rauc-alias");
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join("rauc");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(bin("rota"), &link).unwrap();
        link
    });
    Command::new(link)
}

/// Debian's `rauc` (1.8), the interop peer.
pub fn peer_rauc() -> Command {
    assert!(
        Path::new("/usr/bin/rauc").exists(),
        "Debian's rauc is not installed: run scripts/test, or apt-get install rauc"
    );
    // RAUC leaves the `arch-XXXXXX` directories it makes in `convert` in
    // its TMPDIR: keep them below the target directory, emptied per run.
    static TMP: OnceLock<PathBuf> = OnceLock::new();
    let tmp = TMP.get_or_init(|| {
        let base = target_dir().join("tmp");
        // Those of test processes that have ended go first.
        for e in fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = e.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix("peer-rauc-"));
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        let dir = base.join(format!("peer-rauc-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    });
    let mut rauc = Command::new("/usr/bin/rauc");
    rauc.env("TMPDIR", tmp);
    rauc
}

/// The test PKI (see `tests/pki/make-pki.sh`), made once per checkout.
pub fn pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = target_dir().join("test-pki");
        let script = workspace().join("tests/pki/make-pki.sh");
        // Rebuilt whenever the generator changes.
        let stamp = sha256_hex(&fs::read(&script).expect("make-pki.sh"));
        with_lock("test-pki", || {
            if fs::read_to_string(dir.join(".stamp")).unwrap_or_default() != stamp {
                let tmp = target_dir().join("test-pki.tmp");
                let _ = fs::remove_dir_all(&tmp);
                let st = Command::new("sh").arg(&script).arg(&tmp).status().expect("run make-pki.sh");
                assert!(st.success(), "make-pki.sh failed");
                fs::write(tmp.join(".stamp"), &stamp).unwrap();
                let _ = fs::remove_dir_all(&dir);
                fs::rename(&tmp, &dir).expect("install test PKI");
            }
        });
        dir
    })
}

/// A file of the test PKI.
pub fn pki_file(name: &str) -> PathBuf {
    pki().join(name)
}

/// Finished command with convenient accessors.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Panics with both streams unless the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "command failed\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// Panics unless the command failed with exit code 1.
    #[track_caller]
    pub fn fails(self) -> Run {
        assert_eq!(self.code, 1, "command should fail with 1\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

/// Runs a command to completion.
pub fn run(cmd: &mut Command) -> Run {
    let Output { status, stdout, stderr } = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs a command to completion unless it runs longer than `limit`: then it
/// is killed and the test fails (a command that blocks must be seen, not
/// waited for).
#[track_caller]
pub fn run_within(cmd: &mut Command, limit: std::time::Duration) -> Run {
    let (out, err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{cmd:?} still ran after {limit:?}: blocked\n{}", read_all(err));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Run { code: status.code().unwrap_or(-1), stdout: read_all(out), stderr: read_all(err) }
}

/// Everything in `f` (an unnamed file a child wrote), from its start.
fn read_all(mut f: fs::File) -> String {
    use std::io::{Read, Seek};
    let mut s = String::new();
    f.rewind().unwrap();
    f.read_to_string(&mut s).unwrap();
    s
}

/// A small deterministic generator (xorshift64): test cases drawn from it
/// are reproducible from the seed a test prints.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `(payload length, signature length)` from a bundle's trailer.
pub fn split_bundle(bytes: &[u8]) -> (usize, usize) {
    let sig = u64::from_be_bytes(bytes[bytes.len() - 8..].try_into().expect("8-byte trailer")) as usize;
    (bytes.len() - 8 - sig, sig)
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A bundle input directory being assembled.
pub struct Content {
    /// The directory.
    pub dir: PathBuf,
}

impl Content {
    /// An empty content directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Content {
        let dir = dir.into();
        fs::create_dir_all(&dir).unwrap();
        Content { dir }
    }

    /// Adds a file with pseudo-random content; returns its bytes.
    pub fn image(&self, name: &str, len: usize, seed: u64) -> Vec<u8> {
        let data = pseudo_random(len, seed);
        fs::write(self.dir.join(name), &data).unwrap();
        data
    }

    /// Adds a file with the given content.
    pub fn file(&self, name: &str, data: &[u8]) -> &Content {
        fs::write(self.dir.join(name), data).unwrap();
        self
    }

    /// Writes `manifest.raucm`.
    pub fn manifest(&self, text: &str) -> &Content {
        self.file("manifest.raucm", text.as_bytes())
    }

    /// The standard two-image content used across tests: `rootfs.img`
    /// (256 KiB) and `appfs.img` (64 KiB), with the given `[bundle] format`.
    pub fn standard(dir: impl Into<PathBuf>, format: &str) -> Content {
        let c = Content::new(dir);
        c.image("rootfs.img", 256 * 1024, 1);
        c.image("appfs.img", 64 * 1024, 2);
        c.manifest(&format!(
            "[update]\ncompatible=Test Config\nversion=2024.08-1\ndescription=Spec test bundle\nbuild=20240824\n\n[bundle]\nformat={format}\n\n[image.rootfs]\nfilename=rootfs.img\n\n[image.appfs]\nfilename=appfs.img\n"
        ));
        c
    }
}

/// `--cert`, `--key` and `--intermediate` arguments for signer `name` of the test PKI.
pub fn signer_args(name: &str) -> Vec<String> {
    vec![
        format!("--cert={}", pki_file(&format!("{name}.pem")).display()),
        format!("--key={}", pki_file(&format!("{name}.key")).display()),
        format!("--intermediate={}", pki_file("inter.pem").display()),
    ]
}

/// Signs `content` into `out` with rota, using signer `signer` of the test PKI
/// (`release`, `expired`, …) and the intermediate.
pub fn rota_bundle(content: &Path, out: &Path, signer: &str) -> Run {
    run(rota().arg("bundle").args(signer_args(signer)).arg(content).arg(out))
}

/// Signs `content` into `out` with Debian's rauc.
pub fn peer_bundle(content: &Path, out: &Path, signer: &str) -> Run {
    run(peer_rauc().arg("bundle").args(signer_args(signer)).arg(content).arg(out))
}

/// `cmd` with `--keyring=<test root>` appended.
pub fn with_keyring(cmd: &mut Command) -> &mut Command {
    cmd.arg(format!("--keyring={}", pki_file("keyring.pem").display()))
}

/// Recursively lists files under `dir` with their SHA-256 (relative path → hash).
pub fn tree_digest(dir: &Path) -> Vec<(String, String)> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                out.push((rel, "dir".into()));
                walk(base, &p, out);
            } else if md.file_type().is_symlink() {
                out.push((rel, format!("-> {}", fs::read_link(&p).unwrap().display())));
            } else {
                out.push((rel, sha256_hex(&fs::read(&p).unwrap())));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// Serializes tests that must not run concurrently (e.g. heavy I/O).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `prog` is on `PATH`.
pub fn have(prog: impl AsRef<OsStr>) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {} >/dev/null", prog.as_ref().to_string_lossy()))
        .status()
        .is_ok_and(|s| s.success())
}

/// The mount points at or below `dir` (per `/proc/self/mountinfo`).
pub fn mounts_below(dir: &Path) -> Vec<String> {
    mounts_below_seen_by("self", dir)
}

/// The same, as process `pid` ("self" for this one) sees its mounts: in
/// its own mount namespace, if it has one.
pub fn mounts_below_seen_by(pid: &str, dir: &Path) -> Vec<String> {
    let Ok(real) = fs::canonicalize(dir) else { return Vec::new() };
    let table = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|t| Path::new(t).starts_with(&real))
        .map(str::to_string)
        .collect()
}

/// Waits, 20 s at most, until a file system is mounted on `path`, whose
/// device was `before` (`st_dev`); `what` names the server in the panic.
pub fn wait_mounted(path: &Path, before: u64, what: &str) {
    use std::os::unix::fs::MetadataExt;
    let t0 = std::time::Instant::now();
    while fs::metadata(path).map(|m| m.dev()).unwrap_or(before) == before {
        assert!(t0.elapsed().as_secs() < 20, "{what} did not mount");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether anything is mounted at or below `dir`.
pub fn mounted_below(dir: &Path) -> bool {
    !mounts_below(dir).is_empty()
}

/// Loop devices whose backing file lies below `dir` (per sysfs).
pub fn loops_below(dir: &Path) -> Vec<String> {
    let Ok(dir) = fs::canonicalize(dir) else { return Vec::new() };
    fs::read_dir("/sys/block")
        .expect("sysfs")
        .flatten()
        .filter_map(|e| {
            let backing = fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            Path::new(backing.trim()).starts_with(&dir).then(|| format!("{:?}: {}", e.file_name(), backing.trim()))
        })
        .collect()
}

/// Signs `input` with OpenSSL's own `cms -sign` as the release signer (its
/// intermediate included), DER into `output`; `flags` add to the command
/// (`-nodetach`, `-noattr`, ...). An independent signer for the tests.
pub fn openssl_cms_sign(input: &Path, output: &Path, flags: &[&str]) {
    run(Command::new("openssl")
        .args(["cms", "-sign", "-binary", "-outform", "DER"])
        .args(flags)
        .arg("-signer")
        .arg(pki_file("release.pem"))
        .arg("-inkey")
        .arg(pki_file("release.key"))
        .arg("-certfile")
        .arg(pki_file("inter.pem"))
        .arg("-in")
        .arg(input)
        .arg("-out")
        .arg(output))
    .ok();
}
