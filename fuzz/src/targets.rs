// The bodies of rota's fuzz targets, shared by the cargo-fuzz binaries
// (`fuzz/fuzz_targets/`) and by the corpus replay in the test suite
// (`tests/tests/fuzz_corpora.rs`, which includes this file): each takes
// any bytes and must neither panic nor hang; errors are fine.

use rota_bundle::bundle::{Bundle, OpenOptions};
use rota_bundle::keyfile::KeyFile;
use rota_bundle::manifest::{Manifest, ManifestCopy, ManifestOrigin};
use rota_bundle::signature::VerifyOptions;
use rota_bundle::source::ReadAt;
use rota_bundle::squashfs::{BundleFs, EntryKind};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by name (the corpus directory of each).
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("open_bundle", open_bundle),
    ("system_conf", system_conf),
    ("slot_status", slot_status),
    ("tree_index", tree_index),
    ("casync_index", casync_index),
    ("casync_archive", casync_archive),
    ("http_response", http_response),
];

/// Runs `target` over the first inputs of its corpus (in `corpus`) before
/// fuzzing starts, so state a library sets up once (thread pools, caches)
/// exists before libFuzzer starts counting allocations per input, and is
/// not reported as a leak of whichever input first needed it.
pub fn warm_up(name: &str, corpus: &Path) {
    let Some((_, target)) = TARGETS.iter().find(|(n, _)| *n == name) else { return };
    let Ok(entries) = std::fs::read_dir(corpus.join(name)) else { return };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files.iter().take(32) {
        if let Ok(data) = std::fs::read(f) {
            target(&data);
        }
    }
}

/// The scratch directory of process `pid`.
fn scratch_base(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("rota-fuzz-{pid}"))
}

/// Removes `dir`, clearing first the immutable and append-only flags an
/// extracted archive may have set (only when a plain removal fails: that is
/// rare, and running `chattr` per input would slow fuzzing down).
fn remove_tree(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_err() && dir.exists() {
        let _ = std::process::Command::new("chattr").args(["-R", "-f", "-i", "-a"]).arg(dir).status();
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A directory of this process for targets that need files, emptied per run.
/// Scratch directories of processes that have ended are removed on first use.
fn scratch(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let base = DIR.get_or_init(|| {
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name();
                let pid = name.to_str().and_then(|n| n.strip_prefix("rota-fuzz-")).and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    remove_tree(&e.path());
                }
            }
        }
        let d = scratch_base(std::process::id());
        std::fs::create_dir_all(&d).expect("scratch directory");
        d
    });
    let dir = base.join(name);
    remove_tree(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Removes this process's scratch directory (the corpus replay calls it when
/// done; a fuzzing process's is removed by the next one).
pub fn remove_scratch() {
    remove_tree(&scratch_base(std::process::id()));
}

/// Splits `data` into at most `n` parts at lines holding only `%%`.
fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.windows(4).position(|w| w == b"\n%%\n") {
            Some(i) => {
                out.push(&rest[..i + 1]);
                rest = &rest[i + 4..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

/// The manifest parser, as author input and as a bundle's manifest:
/// whatever parses writes out and parses again to the same text.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for origin in [ManifestOrigin::Input, ManifestOrigin::Bundle] {
        if let Ok(m) = Manifest::parse(text, origin) {
            // An author's manifest is checked further by the bundle tool
            // before it goes into a bundle (as RAUC does).
            if origin == ManifestOrigin::Input && m.check_min_rauc_version().is_err() {
                continue;
            }
            let written = m.to_text(ManifestCopy::Inline);
            let again = Manifest::parse(&written, ManifestOrigin::Bundle)
                .unwrap_or_else(|e| panic!("normalized manifest does not parse: {e}\n{written}"));
            assert_eq!(again.to_text(ManifestCopy::Inline), written, "normalization is not stable");
            let _ = m.select_images(Some("v"));
            let _ = m.meta_env();
        }
    }
}

fn read_everything(fs: &BundleFs) {
    for e in fs.entries().into_iter().take(64) {
        if let EntryKind::File(size) = e.kind
            && size < 8 << 20
        {
            let _ = fs.read_file(&e.path);
        }
    }
}

/// Any bytes as a bundle (signature not checked, so the manifest, the
/// verity and crypt readers, the squashfs parser and every file are
/// reached), and as a bare squashfs.
pub fn open_bundle(data: &[u8]) {
    let opts =
        OpenOptions { verify: VerifyOptions { no_verify: true, ..VerifyOptions::default() }, ..OpenOptions::default() };
    let source: Arc<dyn ReadAt> = Arc::new(data.to_vec());
    if let Ok(bundle) = Bundle::open_source("fuzz", source.clone(), None, &opts) {
        let _ = bundle.check_payload();
        if let Ok(fs) = bundle.filesystem() {
            read_everything(&fs);
        }
    }
    if let Ok(fs) = BundleFs::open(source) {
        read_everything(&fs);
    }
}

/// `system.conf` with drop-ins: the parts of `data` (split at `%%` lines)
/// are the main file and up to three `system.conf.d/*.conf` fragments.
pub fn system_conf(data: &[u8]) {
    let dir = scratch("system_conf");
    let split = parts(data, 4);
    let main = dir.join("system.conf");
    std::fs::write(&main, split[0]).expect("write system.conf");
    if split.len() > 1 {
        let d = dir.join("system.conf.d");
        std::fs::create_dir_all(&d).expect("drop-in directory");
        for (i, p) in split[1..].iter().enumerate() {
            std::fs::write(d.join(format!("{i:02}.conf")), p).expect("write drop-in");
        }
    }
    if let Ok(config) = rota::config::load(Some(&main), &[]) {
        let _ = config.host_config();
    }
    if let Ok(text) = std::str::from_utf8(split[0]) {
        let _ = rota::config::load_text(text, "system.conf", Path::new("/nonexistent"));
    }
}

/// Slot status files: a per-slot `slot.raucs` read from a slot's root as
/// the service reads it, and the same text as a central status file's
/// groups.
pub fn slot_status(data: &[u8]) {
    let dir = scratch("slot_status");
    std::fs::write(dir.join("slot.raucs"), data).expect("write slot.raucs");
    let status = rota::status::read_per_slot(&dir);
    let _ = status.to_group("slot");
    if let Ok(kf) = KeyFile::parse(&String::from_utf8_lossy(data)) {
        for g in &kf.groups {
            let s = rota::status::SlotStatus::from_group(g);
            let _ = s.bundle_and_status();
        }
    }
}

/// A tree image's file index.
pub fn tree_index(data: &[u8]) {
    let _ = rota_bundle::tree::FileIndex::read_from(&mut &data[..]);
}

/// A casync index (`.caibx`/`.caidx`).
pub fn casync_index(data: &[u8]) {
    let _ = casync::index::Index::read(data);
}

/// A casync archive (`.catar`) extracted into an empty directory: nothing
/// may land outside it.
pub fn casync_archive(data: &[u8]) {
    let dir = scratch("casync_archive");
    let dest = dir.join("dest");
    std::fs::create_dir_all(&dest).expect("destination");
    let _ = casync::catar::decode::extract(data, &dest);
    let outside: Vec<_> = std::fs::read_dir(&dir).expect("scratch").flatten().map(|e| e.file_name()).collect();
    assert_eq!(outside, [std::ffi::OsString::from("dest")], "the archive wrote outside its destination");
}

/// Any bytes as every response of an HTTP server to the range reader: the
/// status line, headers, `Content-Range`, redirects and bodies.
pub fn http_response(data: &[u8]) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/b.raucb", listener.local_addr().expect("address"));
    listener.set_nonblocking(false).expect("blocking");
    let response = data.to_vec();
    let server = std::thread::spawn(move || {
        // A few connections at most: the client gives up long before.
        for _ in 0..4 {
            let Ok((mut conn, _)) = listener.accept() else { return };
            let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(&response);
            if request.starts_with(b"STOP") {
                return;
            }
        }
    });
    let opts = rota_bundle::source::http::HttpOptions {
        retries: 1,
        retry_pause: Duration::from_millis(1),
        max_retry_pause: Duration::from_millis(1),
        max_attempts: 3,
        connect_timeout: Duration::from_millis(200),
        stall_timeout: Duration::from_millis(100),
        request_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    if let Ok(source) = rota_bundle::source::http::HttpSource::open(&url, opts) {
        let size = source.size();
        let mut buf = vec![0u8; 4096.min(size as usize)];
        let _ = source.read_exact_at(0, &mut buf);
        if size > 8192 {
            let _ = source.read_exact_at(size - 4096, &mut buf);
        }
    }
    // Wake the server if it still waits for a connection.
    if let Ok(mut c) = std::net::TcpStream::connect(url.trim_start_matches("http://").trim_end_matches("/b.raucb")) {
        let _ = c.write_all(b"STOP");
    }
    let _ = server.join();
}
