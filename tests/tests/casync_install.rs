//! casync bundles end to end (issue 20): bundles converted by Debian's
//! `rauc convert` (which runs the real `casync make`) install with rota from
//! nginx and from a local store; bundles converted by rota pass Debian's
//! `rauc info`, carry the index `casync make` writes for the same image, and
//! install. Images are real ext4 filesystems, the new release 5 % changed,
//! seeded from the booted slot: most chunks come from there, not the store.
//! No `casync` or `desync` process is ever started by rota (a trap on PATH
//! records any). Missing, damaged, lying and stalling chunks fail the
//! install with a clear message and leave the booted slot and the
//! bootloader as they were.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::device::{Device, grub_selected, grubenv};
use testkit::nginx::{Nginx, web_root};
use testkit::{Content, Run, peer_rauc, pki_file, rota, rota_bundle, run, serial, sha256_hex, signer_args, target_dir};

const SLOT: usize = 8 << 20;

/// A fresh work directory `name` and two releases of a root filesystem
/// made in it: ext4 images of one tree, the second with 5 % of its files
/// changed, made reproducible (fixed UUID, hash seed and time).
fn releases(name: &str) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let dir = target_dir().join("test-bundles/casync-install").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let tree = dir.join("tree");
    let _ = fs::remove_dir_all(&tree);
    testkit::rootfs::generate(&tree, 400, 8 << 10, 1);
    let mkfs = |out: &Path| {
        let _ = fs::remove_file(out);
        run(Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", "1700000000")
            .args(["-q", "-F", "-U", "0e3c1d2a-5b4f-4e6d-8a9b-0c1d2e3f4a5b", "-E"])
            .arg("lazy_itable_init=0,lazy_journal_init=0,hash_seed=6c0b4d8e-2f1a-4c3b-9d5e-7f8a9b0c1d2e")
            .arg("-d")
            .arg(&tree)
            .arg(out)
            .arg("8M"))
        .ok();
        fs::read(out).unwrap()
    };
    let v1 = mkfs(&dir.join("v1.ext4"));
    testkit::rootfs::change(&tree, 5, 2);
    let v2 = mkfs(&dir.join("v2.ext4"));
    (dir, v1, v2)
}

/// A device whose booted slot A holds `booted`; slot B holds other bytes.
fn device(name: &str, booted: &[u8], extra: &str) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\n\
         [keyring]\npath={}\n{extra}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\ntype=ext4\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\ntype=ext4\nbootname=B\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(target_dir().join("test-devices/casync-install").join(name), &conf);
    d.grub_env(&["A", "B"]);
    let mut a = booted.to_vec();
    a.resize(SLOT, 0);
    fs::write(d.path("rootfs0.img"), a).unwrap();
    d.slot_file("rootfs1.img", SLOT, 0x5A);
    d.boot("root=/dev/null rauc.slot=A");
    d
}

/// A signed bundle of `format` holding `image` as `rootfs.ext4`, and
/// release notes (a converted verity bundle must stay over 4 KiB: RAUC
/// and rota both refuse a verity payload of a single block).
fn bundle(dir: &Path, format: &str, image: &[u8]) -> PathBuf {
    let c = Content::new(dir.join(format!("content-{format}")));
    c.file("rootfs.ext4", image);
    c.file("release-notes.bin", &testkit::pseudo_random(16 << 10, 3));
    c.manifest(&format!(
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat={format}\n[image.rootfs]\nfilename=rootfs.ext4\n"
    ));
    let out = dir.join(format!("{format}.raucb"));
    let _ = fs::remove_file(&out);
    rota_bundle(&c.dir, &out, "release").ok();
    out
}

/// Debian's `rauc convert` of `input` to `output` (its store next to it), with `extra` options.
fn rauc_convert(input: &Path, output: &Path, extra: &[&str]) {
    let _ = fs::remove_file(output);
    let _ = fs::remove_dir_all(output.with_extension("castr"));
    let keyring = format!("--keyring={}", pki_file("keyring.pem").display());
    run(peer_rauc().arg("convert").args(signer_args("release")).arg(keyring).args(extra).arg(input).arg(output)).ok();
}

/// rota's `convert` of `input` to `output`.
fn rota_convert(input: &Path, output: &Path, extra: &[&str]) -> Run {
    let _ = fs::remove_file(output);
    let keyring = format!("--keyring={}", pki_file("keyring.pem").display());
    run(rota().arg("convert").args(signer_args("release")).arg(keyring).args(extra).arg(input).arg(output))
}

/// A directory with `casync` and `desync` stand-ins that record being run.
fn trap(dir: &Path) -> PathBuf {
    let bin = dir.join("trap-bin");
    fs::create_dir_all(&bin).unwrap();
    for name in ["casync", "desync"] {
        let p = bin.join(name);
        fs::write(&p, format!("#!/bin/sh\necho \"{name} $*\" >> {}\nexit 1\n", dir.join("trapped").display())).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let _ = fs::remove_file(dir.join("trapped"));
    bin
}

/// `rota install <what>` on `d` with the trap first on PATH.
fn install(d: &Device, what: &str) -> Run {
    let bin = trap(&d.dir);
    let mut cmd = d.rota();
    let path = cmd.get_envs().find(|(k, _)| *k == "PATH").and_then(|(_, v)| v).unwrap().to_owned();
    let path = format!("{}:{}", bin.display(), path.to_string_lossy());
    // The trap works: a casync found on this PATH is the recording one.
    run(Command::new("sh").args(["-c", "casync --version"]).env("PATH", &path));
    assert!(fs::read_to_string(d.dir.join("trapped")).unwrap_or_default().contains("casync --version"));
    fs::remove_file(d.dir.join("trapped")).unwrap();
    cmd.env("PATH", &path);
    let r = run(cmd.arg("install").arg(what));
    let trapped = fs::read_to_string(d.dir.join("trapped")).unwrap_or_default();
    assert!(trapped.is_empty(), "rota started casync/desync: {trapped}");
    r
}

fn selected(d: &Device) -> String {
    grub_selected(&grubenv(&d.path("grubenv"))).unwrap_or_default()
}

fn assert_installed(d: &Device, image: &[u8], booted: &[u8], case: &str) {
    let b = fs::read(d.path("rootfs1.img")).unwrap();
    assert!(b[..image.len()] == image[..], "{case}: slot B does not hold the new image");
    assert_eq!(selected(d), "B", "{case}: not activated");
    let a = fs::read(d.path("rootfs0.img")).unwrap();
    assert!(a[..booted.len()] == booted[..], "{case}: the booted slot changed");
}

fn assert_untouched(d: &Device, booted: &[u8], case: &str) {
    assert_eq!(selected(d), "A", "{case}: the bootloader was changed");
    let a = fs::read(d.path("rootfs0.img")).unwrap();
    assert!(a[..booted.len()] == booted[..], "{case}: the booted slot changed");
}

/// Bytes nginx sent for chunk files (the combined log's size field).
fn chunk_bytes(nginx: &Nginx) -> u64 {
    nginx
        .access_log()
        .lines()
        .filter(|l| l.contains(".cacnk"))
        .filter_map(|l| l.split('"').nth(2)?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Bytes from seeds and from the store, as an installer summary gives them.
fn seeded_and_stored(summary: &str) -> (u64, u64) {
    let bytes = |after: &str| -> u64 {
        let rest = summary.split(after).next().unwrap();
        rest.rsplit('(').next().unwrap().split(' ').next().unwrap().parse().unwrap()
    };
    (bytes(" bytes) from seeds"), bytes(" bytes) from the store"))
}

/// The lines of `r`'s output mentioning where chunks came from.
fn summary(r: &Run) -> String {
    format!("{}{}", r.stdout, r.stderr).lines().filter(|l| l.contains("from seeds")).collect::<Vec<_>>().join("\n")
}

#[test]
fn bundles_rauc_converted_install_from_nginx_and_locally_seeded_from_the_booted_slot() {
    let _s = serial();
    let (dir, v1, v2) = releases("rauc");
    let (_t, www) = web_root();
    for format in ["verity", "plain"] {
        let converted = www.join(format!("{format}-casync.raucb"));
        rauc_convert(&bundle(&dir, format, &v2), &converted, &[]);
        assert!(www.join(format!("{format}-casync.castr")).is_dir(), "rauc convert made a store");
    }
    let nginx = Nginx::serve(&www);
    // Verity from nginx: the index streamed with the bundle, chunks fetched.
    let d = device("rauc-http", &v1, "");
    let r = install(&d, &nginx.url("/verity-casync.raucb")).ok();
    assert_installed(&d, &v2, &v1, "rauc-converted verity bundle from nginx");
    let fetched = chunk_bytes(&nginx);
    assert!(fetched > 0, "no chunk came from the store");
    assert!(fetched < v2.len() as u64 / 4, "{fetched} bytes fetched for a 5 % change of {} bytes", v2.len());
    assert!(summary(&r).contains("from the store"), "{}", r.stderr);
    // Plain, locally: the store next to the bundle.
    let d = device("rauc-local", &v1, "");
    install(&d, &www.join("plain-casync.raucb").display().to_string()).ok();
    assert_installed(&d, &v2, &v1, "rauc-converted plain bundle from a local store");
    // `[casync] storepath` wins over the bundle's location.
    let moved = dir.join("elsewhere.castr");
    let _ = fs::remove_dir_all(&moved);
    run(Command::new("cp").arg("-a").arg(www.join("plain-casync.castr")).arg(&moved)).ok();
    let lone = dir.join("lone.raucb");
    fs::copy(www.join("plain-casync.raucb"), &lone).unwrap();
    let d = device("rauc-storepath", &v1, &format!("[casync]\nstorepath={}\n", moved.display()));
    install(&d, &lone.display().to_string()).ok();
    assert_installed(&d, &v2, &v1, "store from [casync] storepath");
}

#[test]
fn bundles_rota_converted_pass_rauc_info_carry_casyncs_index_and_install() {
    let _s = serial();
    let (dir, v1, v2) = releases("rota");
    // The index casync itself makes of the image.
    fs::write(dir.join("v2.ext4"), &v2).unwrap();
    run(Command::new("casync")
        .arg("make")
        .arg(format!("--store={}", dir.join("casync.castr").display()))
        .arg(dir.join("casync.caibx"))
        .arg(dir.join("v2.ext4")))
    .ok();
    let casyncs = fs::read(dir.join("casync.caibx")).unwrap();
    for format in ["plain", "verity"] {
        let out = dir.join(format!("{format}-casync.raucb"));
        let _ = fs::remove_dir_all(out.with_extension("castr"));
        rota_convert(&bundle(&dir, format, &v2), &out, &[]).ok();
        let info =
            run(peer_rauc().arg(format!("--keyring={}", pki_file("keyring.pem").display())).arg("info").arg(&out)).ok();
        assert!(info.stdout.contains("rootfs.ext4.caibx"), "{format}: {}", info.stdout);
        assert!(info.stdout.contains(&sha256_hex(&v2)), "{format}: the manifest keeps the image's digest");
        let index = cat(&out, "rootfs.ext4.caibx");
        assert!(index == casyncs, "{format}: the index differs from casync make's");
        // Every chunk casync made is in rota's store under the same name.
        for entry in walk(&dir.join("casync.castr")) {
            let rel = entry.strip_prefix(dir.join("casync.castr")).unwrap();
            assert!(out.with_extension("castr").join(rel).exists(), "{format}: chunk {} missing", rel.display());
        }
        let d = device(&format!("rota-{format}"), &v1, "");
        install(&d, &out.display().to_string()).ok();
        assert_installed(&d, &v2, &v1, &format!("rota-converted {format} bundle"));
    }
    // The output exists: refused, as RAUC refuses it, and left alone.
    let out = dir.join("plain-casync.raucb");
    let before = fs::read(&out).unwrap();
    let keyring = format!("--keyring={}", pki_file("keyring.pem").display());
    let r =
        run(rota().arg("convert").args(signer_args("release")).arg(keyring).arg(bundle(&dir, "plain", &v2)).arg(&out))
            .fails();
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert_eq!(fs::read(&out).unwrap(), before);
    // Converting with a signer the keyring does not trust fails before anything is written.
    let untrusted = dir.join("untrusted.raucb");
    let r = run(rota()
        .arg("convert")
        .args(signer_args("release"))
        .arg(format!("--keyring={}", pki_file("other-root.pem").display()))
        .arg(bundle(&dir, "plain", &v2))
        .arg(&untrusted));
    let r = r.fails();
    assert!(!untrusted.exists(), "{}", r.stderr);
}

/// The bytes of file `name` in the squashfs payload of `bundle`.
fn cat(bundle: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("unsquashfs").arg("-cat").arg(bundle).arg(name).output().unwrap();
    assert!(out.status.success(), "unsquashfs -cat {name}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// Work directory `name` with the two releases, the new one as a
/// rota-converted verity bundle `good.raucb` (store next to it); returns
/// (bundle, store, old release, new release, the chunks the old release
/// cannot supply, as store paths).
fn converted(name: &str) -> (PathBuf, PathBuf, Vec<u8>, Vec<u8>, Vec<PathBuf>) {
    let (dir, v1, v2) = releases(name);
    let good = dir.join("good.raucb");
    rota_convert(&bundle(&dir, "verity", &v2), &good, &[]).ok();
    let store = good.with_extension("castr");
    let index = casync::index::Index::read(&cat(&good, "rootfs.ext4.caibx")[..]).unwrap();
    let old = casync::index::Index::of_blob(&v1, index.sizes, index.digest_kind());
    let needed = index
        .items
        .iter()
        .filter(|i| !old.items.iter().any(|o| o.id == i.id))
        .map(|i| store.join(casync::store::chunk_name(&i.id)))
        .collect();
    (good, store, v1, v2, needed)
}

#[test]
fn missing_damaged_lying_and_stalling_chunks_fail_clearly_and_activate_nothing() {
    use testkit::httpd::Server;
    let _s = serial();
    // Chunks the booted slot cannot supply: those a fault must hit.
    let (good, store, v1, v2, needed) = converted("faults");
    let chunks = walk(&store);
    assert!(!needed.is_empty() && chunks.len() > needed.len());
    let victim = &needed[needed.len() / 2];
    let case = |name: &str, extra: &str, location: &str, says: &[&str]| {
        let d = device(name, &v1, extra);
        let r = install(&d, location).fails();
        for s in says {
            assert!(r.stderr.contains(s), "{name}: expected '{s}' in: {}", r.stderr);
        }
        assert_untouched(&d, &v1, name);
        let status = run(d.rota().args(["status", "--detailed", "--output-format=json"])).ok().stdout;
        assert!(status.contains("\"failed\""), "{name}: slot status not failed: {status}");
    };
    let saved = fs::read(victim).unwrap();
    // Missing.
    fs::remove_file(victim).unwrap();
    case(
        "missing",
        "",
        &good.display().to_string(),
        &["Failed to reassemble 'rootfs.ext4.caibx'", "is missing from the store"],
    );
    // Damaged: bytes that do not decompress.
    fs::write(victim, b"not a chunk").unwrap();
    case("damaged", "", &good.display().to_string(), &["is damaged", "neither zstd, xz nor gzip"]);
    // Lying: a valid chunk of other bytes under this name.
    let other = chunks.iter().find(|c| *c != victim).unwrap();
    fs::write(victim, fs::read(other).unwrap()).unwrap();
    case("lying", "", &good.display().to_string(), &["is damaged: its bytes hash to"]);
    fs::write(victim, &saved).unwrap();
    // Over HTTP: the same store served in-process, one chunk lying, then stalling.
    let server = Server::start();
    server.put("/good.raucb", fs::read(&good).unwrap());
    for c in &chunks {
        let rel = c.strip_prefix(&store).unwrap().display().to_string();
        server.put(&format!("/good.castr/{rel}"), fs::read(c).unwrap());
    }
    let rel = victim.strip_prefix(&store).unwrap().display().to_string();
    server.put(&format!("/good.castr/{rel}"), fs::read(other).unwrap());
    let quick = "[streaming]\nretries=1\nretry-pause-ms=50\nstall-timeout-sec=2\n";
    case("http-lying", quick, &server.url("/good.raucb"), &["is damaged: its bytes hash to"]);
    server.hold_path(&format!("/good.castr/{rel}"));
    case("http-stalling", quick, &server.url("/good.raucb"), &["could not be fetched", "operation timed out"]);
    server.release();
    // Nothing was left half-written and then activated; a good store still installs.
    server.put(&format!("/good.castr/{rel}"), saved);
    let d = device("http-good", &v1, quick);
    install(&d, &server.url("/good.raucb")).ok();
    assert_installed(&d, &v2, &v1, "the repaired store over HTTP");
    // Chunks were fetched several at a time.
    assert!(server.max_concurrent() > 1, "one request at a time");
}

fn losetup(file: &Path) -> String {
    run(Command::new("losetup").args(["-f", "--show"]).arg(file)).ok().stdout.trim().to_string()
}

/// Every entry below `root` with its type, mode, owner, mtime (seconds)
/// and content digest or target (fifos and devices are not opened).
fn digest(root: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel == "lost+found" {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_file() {
                sha256_hex(&fs::read(&p).unwrap())
            } else if m.file_type().is_fifo() {
                "fifo".into()
            } else {
                format!("dev {}", m.rdev())
            };
            let time = if m.is_dir() { 0 } else { m.mtime() };
            out.push(format!("{rel} {:o} {}:{} {time} {what}", m.mode(), m.uid(), m.gid()));
        }
    }
    out.sort();
    out
}

/// [`digest`] of the file system on `dev`.
fn fs_digest(dev: &str, at: &Path) -> Vec<String> {
    fs::create_dir_all(at).unwrap();
    run(Command::new("mount").args(["-o", "ro"]).arg(dev).arg(at)).ok();
    let d = digest(at);
    run(Command::new("umount").arg(at)).ok();
    d
}

#[test]
fn directory_indexes_rauc_and_rota_make_alike_install_into_ext4_seeded_from_the_booted_tree() {
    let _s = serial();
    let dir = target_dir().join("test-bundles/casync-install/caidx");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let tree = dir.join("tree");
    testkit::rootfs::generate(&tree, 300, 8 << 10, 4);
    let v1 = dir.join("v1");
    run(Command::new("cp").arg("-a").arg(&tree).arg(&v1)).ok();
    testkit::rootfs::change(&tree, 5, 5);
    // The bundle: the new tree as a tar, as a rootfs recipe would ship it.
    let c = Content::new(dir.join("content"));
    run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("-cf")
        .arg(c.dir.join("root.tar"))
        .arg("-C")
        .arg(&tree)
        .arg("."))
    .ok();
    c.file("release-notes.bin", &testkit::pseudo_random(16 << 10, 3));
    // An app tree shipped as a catar Debian's casync made (not converted:
    // rauc convert would run tar on it).
    let app = dir.join("app");
    fs::create_dir_all(app.join("bin")).unwrap();
    fs::write(app.join("bin/app"), testkit::pseudo_random(50_000, 8)).unwrap();
    fs::set_permissions(app.join("bin/app"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("bin/app", app.join("run")).unwrap();
    run(Command::new("casync").arg("make").arg("--with=unix").arg(c.dir.join("app.catar")).arg(&app)).ok();
    let manifest =
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=root.tar\n";
    // Debian's rauc convert (1.8: no --ignore-image, and it would run tar
    // on a catar) gets the rootfs alone; rota must make the same .caidx.
    c.manifest(manifest);
    let (_t, www) = web_root();
    let root_only = dir.join("root-only.raucb");
    let _ = fs::rename(c.dir.join("app.catar"), dir.join("app.catar"));
    rota_bundle(&c.dir, &root_only, "release").ok();
    let theirs = dir.join("rauc.raucb");
    rauc_convert(&root_only, &theirs, &[]);
    let mine = dir.join("mine.raucb");
    rota_convert(&root_only, &mine, &[]).ok();
    assert!(cat(&mine, "root.tar.caidx") == cat(&theirs, "root.tar.caidx"), "the .caidx differs from rauc convert's");
    // What is installed: both images, the catar left as it is.
    fs::rename(dir.join("app.catar"), c.dir.join("app.catar")).unwrap();
    c.manifest(&format!("{manifest}[image.appfs]\nfilename=app.catar\n"));
    let plain = dir.join("b.raucb");
    rota_bundle(&c.dir, &plain, "release").ok();
    rota_convert(&plain, &www.join("rota.raucb"), &["--ignore-image=appfs"]).ok();
    // ext4 slots on loop devices; the booted one holds the old tree.
    let d = Device::new(target_dir().join("test-devices/casync-install/caidx"), "");
    let files = [
        d.slot_file("r0.img", 24 << 20, 0),
        d.slot_file("r1.img", 24 << 20, 0),
        d.slot_file("a0.img", 4 << 20, 0),
        d.slot_file("a1.img", 4 << 20, 0),
    ];
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&v1).arg(&files[0])).ok();
    let loops: Vec<String> = files.iter().map(|f| losetup(f)).collect();
    d.write_conf(&format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\nmountprefix={}\n\
         [keyring]\npath={}\n[slot.rootfs.0]\ndevice={}\ntype=ext4\nbootname=A\n[slot.rootfs.1]\ndevice={}\ntype=ext4\nbootname=B\n\
         [slot.appfs.0]\ndevice={}\ntype=ext4\nparent=rootfs.0\n[slot.appfs.1]\ndevice={}\ntype=ext4\nparent=rootfs.1\n",
        d.path("mnt").display(),
        pki_file("keyring.pem").display(),
        loops[0],
        loops[1],
        loops[2],
        loops[3]
    ));
    d.grub_env(&["A", "B"]);
    d.boot("root=/dev/null rauc.slot=A");
    let nginx = Nginx::serve(&www);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Without its store the update cannot be completed: refused, nothing switched.
        fs::rename(www.join("rota.castr"), www.join("away.castr")).unwrap();
        let r = install(&d, &nginx.url("/rota.raucb")).fails();
        assert!(
            r.stderr.contains("Failed to unpack 'root.tar.caidx'") && r.stderr.contains("is missing from the store"),
            "{}",
            r.stderr
        );
        assert_eq!(selected(&d), "A");
        fs::rename(www.join("away.castr"), www.join("rota.castr")).unwrap();
        let r = install(&d, &nginx.url("/rota.raucb")).ok();
        assert_eq!(selected(&d), "B");
        assert_eq!(fs_digest(&loops[1], &d.path("check")), digest(&tree), "slot B does not hold the new tree");
        assert_eq!(fs_digest(&loops[3], &d.path("check")), digest(&app), "appfs.1 does not hold the catar's tree");
        // Most of the stream came from the booted tree, the rest was fetched.
        let (seeded, stored) = seeded_and_stored(&summary(&r));
        assert!(stored * 5 < seeded + stored, "{}", summary(&r));
        assert!(chunk_bytes(&nginx) > 0);
        assert!(!d.path("mnt/rootfs.0-seed").exists() || !testkit::mounted_below(&d.path("mnt")), "seed left mounted");
    }));
    for l in &loops {
        run(Command::new("losetup").args(["-d", l]));
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn the_kept_index_seeds_the_next_update_and_a_changed_booted_slot_is_caught_chunk_by_chunk() {
    let _s = serial();
    let (dir, v1, v2) = releases("kept");
    let b1 = dir.join("v1-casync.raucb");
    let b2 = dir.join("v2-casync.raucb");
    for (sub, image, out) in [("v1", &v1, &b1), ("v2", &v2, &b2)] {
        fs::create_dir_all(dir.join(sub)).unwrap();
        rota_convert(&bundle(&dir.join(sub), "verity", image), out, &[]).ok();
    }
    let other = testkit::pseudo_random(v1.len(), 9);
    let d = device("kept", &other, "");
    let kept = |d: &Device| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d.path("data/casync"))
            .map(|r| r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    // Booted A: v1 goes to B, and its index is kept under v1's digest.
    let r = install(&d, &b1.display().to_string()).ok();
    assert!(!r.stderr.contains("by its kept index"), "nothing kept yet: {}", r.stderr);
    assert_eq!(kept(&d), vec![format!("{}.caibx", sha256_hex(&v1))]);
    // Booted B: v2 goes to A, seeded from B by the kept index (no read of B first).
    d.boot("root=/dev/null rauc.slot=B");
    let r = install(&d, &b2.display().to_string()).ok();
    assert!(r.stderr.contains("rootfs1.img by its kept index"), "{}", r.stderr);
    let (seeded, stored) = seeded_and_stored(&summary(&r));
    assert!(stored < seeded, "{}", summary(&r));
    assert!(fs::read(d.path("rootfs0.img")).unwrap()[..v2.len()] == v2[..]);
    let mut want = vec![format!("{}.caibx", sha256_hex(&v1)), format!("{}.caibx", sha256_hex(&v2))];
    want.sort();
    assert_eq!(kept(&d), want, "the indexes of what the slots hold, and nothing else");
    // The booted slot changed since (a writable file system, a bad block):
    // its chunks there no longer match their IDs and come from the store.
    // The target lost what its kept index says it holds, too.
    let mut b = fs::read(d.path("rootfs1.img")).unwrap();
    b[1 << 20..3 << 20].fill(0xEE);
    fs::write(d.path("rootfs1.img"), &b).unwrap();
    fs::write(d.path("rootfs0.img"), &other).unwrap();
    let r = install(&d, &b2.display().to_string()).ok();
    assert!(r.stderr.contains("by its kept index"), "{}", r.stderr);
    let (_, stored_now) = seeded_and_stored(&summary(&r));
    assert!(stored_now > stored, "{} after {}", summary(&r), stored);
    assert!(fs::read(d.path("rootfs0.img")).unwrap()[..v2.len()] == v2[..], "slot A does not hold v2");
}

#[test]
fn cancel_ends_a_casync_install_waiting_for_a_chunk() {
    use testkit::bus::{Bus, Service};
    use testkit::httpd::Server;
    let _s = serial();
    let (good, store, v1, _, needed) = converted("cancel");
    let server = Server::start();
    server.put("/good.raucb", fs::read(&good).unwrap());
    for c in walk(&store) {
        let rel = c.strip_prefix(&store).unwrap().display().to_string();
        server.put(&format!("/good.castr/{rel}"), fs::read(&c).unwrap());
    }
    let held = format!("/good.castr/{}", needed[0].strip_prefix(&store).unwrap().display());
    server.hold_path(&held);
    let d = device("cancel", &v1, "");
    let bus = Bus::start();
    let _svc = Service::start(&d, &bus, &[]);
    let mut client = d.rota();
    client.envs(bus.env()).arg("install").arg(server.url("/good.raucb"));
    client.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = client.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !server.requests().iter().any(|r| r.path == held) {
        assert!(std::time::Instant::now() < deadline, "the held chunk was never asked for");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    run(&mut bus.busctl(&["call", "de.pengutronix.rauc", "/", "dev.rota.Installer1", "Cancel"])).ok();
    let out = child.wait_with_output().unwrap();
    server.release();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(format!("{stdout}{stderr}").contains("Installation cancelled"), "{stdout}{stderr}");
    assert_eq!(selected(&d), "A", "nothing activated");
}
