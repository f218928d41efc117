//! Generated root file systems for tree-image tests and benchmarks:
//! thousands of files of mixed sizes and compressibility in package-like
//! directories, with every kind of object an image holds (symbolic and hard
//! links, device nodes, a fifo, set-uid and capability-carrying files, user
//! xattrs, foreign owners, a sparse file, a non-UTF-8 name), and the changes
//! a new version brings (rewritten, added, removed and moved files, changed
//! metadata).

use crate::Rng;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// File content: random bytes (like compressed or machine code) or
/// word-like text that compresses, chosen by `rng`.
fn content(rng: &mut Rng, len: usize) -> Vec<u8> {
    if rng.below(2) == 0 {
        return crate::pseudo_random(len, rng.next());
    }
    const WORDS: &[&str] = &["charger", "session", "evse", "ocpp", "meter", "value", "connector", "state", "update"];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        out.push(if rng.below(8) == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// A size with mean about `mean`: half small, most of the rest around the
/// mean, a few large.
fn size(rng: &mut Rng, mean: usize) -> usize {
    match rng.below(20) {
        0..=9 => rng.below(4096) as usize,
        10..=18 => 4096 + rng.below((2 * mean) as u64) as usize,
        _ => 4 * mean + rng.below((8 * mean) as u64) as usize,
    }
}

/// The regular files the generator made and [`change`] may rewrite (the
/// special fixtures are left alone), sorted.
pub fn plain_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("usr/lib")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() && e.file_name().to_string_lossy().starts_with("file") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Fills `root` (created) with `files` regular files of about `mean` bytes
/// each plus the special fixtures.
pub fn generate(root: &Path, files: usize, mean: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let packages = (files / 40).max(1);
    for i in 0..files {
        let dir = root.join(format!("usr/lib/pkg{:03}", i % packages));
        fs::create_dir_all(&dir).unwrap();
        let len = size(&mut rng, mean);
        fs::write(dir.join(format!("file{i:05}.dat")), content(&mut rng, len)).unwrap();
    }
    for d in ["usr/bin", "etc", "dev", "var/lib/app", "var/empty", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-link")).unwrap();
    for n in 1..=3 {
        let first = root.join("usr/lib/multi1");
        if n == 1 {
            fs::write(&first, content(&mut rng, 10_000)).unwrap();
        } else {
            fs::hard_link(&first, root.join(format!("usr/lib/multi{n}"))).unwrap();
        }
    }
    symlink("pkg000/file00000.dat", root.join("usr/lib/libfirst.so")).unwrap();
    symlink("/usr/bin/tool", root.join("etc/tool")).unwrap();
    symlink("../nowhere", root.join("etc/dangling")).unwrap();
    fs::write(root.join("etc/hostname"), b"charger\n").unwrap();
    fs::write(root.join("etc/empty"), b"").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"etc/caf\xe9")), b"latin-1 name\n").unwrap();
    fs::write(root.join("var/lib/app/secret"), b"0600\n").unwrap();
    fs::set_permissions(root.join("var/lib/app/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let r = root.display();
    sh(&format!(
        "mknod {r}/dev/null c 1 3 && mknod {r}/dev/loop7 b 7 7 && mkfifo {r}/dev/initctl && \
         chown 12:34 {r}/etc/hostname && chown -R 1000:1000 {r}/var/lib/app && \
         setfattr -n user.origin -v rota {r}/etc/hostname && setcap cap_net_raw+ep {r}/usr/bin/tool && \
         truncate -s 16M {r}/var/sparse && printf middle | dd of={r}/var/sparse bs=1 seek=1048576 conv=notrunc status=none && \
         printf end >> {r}/var/sparse"
    ));
}

/// What [`change`] did.
#[derive(Debug, Default)]
pub struct Changes {
    /// Files with new content (rewritten or added), relative paths.
    pub new_content: Vec<PathBuf>,
    /// Bytes of those files.
    pub bytes: u64,
}

/// Turns the tree at `root` into its next version: `percent` % of the plain
/// files rewritten, a few added, removed and moved, metadata changed on some.
pub fn change(root: &Path, percent: usize, seed: u64) -> Changes {
    let mut rng = Rng::new(seed);
    let files = plain_files(root);
    let mut changes = Changes::default();
    let want = files.len() * percent / 100;
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < want {
        picked.insert(rng.below(files.len() as u64) as usize);
    }
    let rel = |p: &Path| p.strip_prefix(root).unwrap().to_path_buf();
    for &i in &picked {
        let old = fs::metadata(&files[i]).unwrap().len() as usize;
        let len = (old + rng.below(2048) as usize).max(1);
        fs::write(&files[i], content(&mut rng, len)).unwrap();
        changes.new_content.push(rel(&files[i]));
        changes.bytes += len as u64;
    }
    // Added files in a new package.
    let added = root.join("usr/lib/pkg-new");
    fs::create_dir_all(&added).unwrap();
    for n in 0..(want / 10).max(2) {
        let p = added.join(format!("file-new{n}.dat"));
        let len = size(&mut rng, 8192);
        fs::write(&p, content(&mut rng, len)).unwrap();
        changes.new_content.push(rel(&p));
        changes.bytes += len as u64;
    }
    // Removed and moved (same content at a new path) files, among the unchanged ones.
    let unchanged: Vec<&PathBuf> =
        files.iter().enumerate().filter(|(i, _)| !picked.contains(i)).map(|(_, p)| p).collect();
    fs::remove_file(unchanged[1]).unwrap();
    fs::rename(unchanged[3], root.join("usr/lib/moved.dat")).unwrap();
    // Metadata only.
    let r = root.display();
    fs::set_permissions(unchanged[5], fs::Permissions::from_mode(0o700)).unwrap();
    sh(&format!(
        "chown 7:7 '{}' && setfattr -n user.origin -v rota-next {r}/etc/hostname && \
         ln -sfn /usr/bin/tool-link {r}/etc/tool && \
         if [ -L {r}/etc/dangling ]; then rm {r}/etc/dangling && mkdir {r}/etc/dangling; \
         else rmdir {r}/etc/dangling && ln -s ../nowhere {r}/etc/dangling; fi",
        unchanged[6].display()
    ));
    changes
}
