//! Power cuts (RELIABILITY.md, campaign "power cuts"): the whole device —
//! slot images, GRUB environment, status and data directory — lives on
//! `rota-journal-fs`, which journals every write, sync, rename and removal.
//! From the journal of an install, a mark-good/mark-active, an adaptive
//! install and a tree install, the test rebuilds what the medium could hold
//! after power was lost at every sync boundary (losing everything unsynced,
//! or nothing) and at random points (losing a random part, torn and out of
//! order), and "boots" each of those media:
//!
//! - GRUB's environment reads and selects a slot; the slot it selects holds
//!   a complete image (the old one or the new one, never a mix);
//! - the slot booted during the operation is bit-identical;
//! - `rota status` and `rota status mark-good` succeed on the selected slot;
//! - the next install succeeds and its slot is selected, holding its image.
//!
//! The medium is a mock (a FUSE file system and a model of what a disk keeps,
//! `testkit::powercut`): a test cannot cut this machine's power.
//! `ROTA_POWERCUT_RANDOM` sets the random cuts per operation (quick default
//! 4) and `ROTA_POWERCUT_SEED` their seed.

use rota_bundle::tree::FileIndex;
use std::fs;
use std::path::{Path, PathBuf};
use testkit::device::{Device, grub_selected};
use testkit::powercut::{Op, cut_points, medium_after, record};
use testkit::trees::{ext4, scan_image, tree_difference};
use testkit::{Content, WorkDir, pki_file, pseudo_random, rota_bundle, run, serial, sha256_hex, target_dir};

const SLOT: usize = 1 << 20;

fn journal_fs() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rota-journal-fs"))
}

fn random_cuts() -> usize {
    std::env::var("ROTA_POWERCUT_RANDOM").ok().and_then(|v| v.parse().ok()).unwrap_or(4)
}

fn seed() -> u64 {
    std::env::var("ROTA_POWERCUT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x00c0_ffee)
}

/// A device with raw A/B root slots (A holding `a`, B holding `b`), GRUB and
/// a data directory, booted from A.
fn raw_device(name: &str, a: &[u8], b: &[u8]) -> Device {
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\n\
         [keyring]\npath={}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(target_dir().join("test-devices/power-cut").join(name), &conf);
    d.grub_env(&["A", "B"]);
    fs::write(d.path("rootfs0.img"), a).unwrap();
    fs::write(d.path("rootfs1.img"), b).unwrap();
    d
}

/// A signed bundle of `format` holding `image` (`extra` in its image
/// section), in `test-bundles/power-cut/<name>.raucb`.
fn image_bundle(name: &str, format: &str, image: &[u8], extra: &str) -> PathBuf {
    let dir = target_dir().join("test-bundles/power-cut").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    fs::write(c.dir.join("rootfs.img"), image).unwrap();
    c.manifest(&format!(
        "[update]\ncompatible=Test Config\nversion=2\n[bundle]\nformat={format}\n\
         [image.rootfs]\nfilename=rootfs.img\n{extra}"
    ));
    let out = dir.with_extension("raucb");
    let _ = fs::remove_file(&out);
    rota_bundle(&c.dir, &out, "release").ok();
    out
}

/// What every medium after a cut of one operation must show.
struct Expect<'a> {
    /// The slot booted while the operation ran, and its image file.
    booted: (&'a str, &'a str),
    /// The digest of that image file.
    booted_sha: String,
    /// Whether the slot (bootname) GRUB selects holds a complete image.
    complete: &'a dyn Fn(&str, &Path) -> Result<(), String>,
    /// The next bundle to install, and whether the slot (image file) it went
    /// to holds its content.
    next: &'a Path,
    next_done: &'a dyn Fn(&Path) -> Result<(), String>,
    /// When GRUB selects this slot (bootname, slot name), the status must
    /// record this image digest for it.
    recorded: Option<(&'a str, &'a str, &'a str)>,
}

/// The `sha256` the central status file of the medium at `dir` records for
/// slot `slot`.
fn recorded_sha(dir: &Path, slot: &str) -> Option<String> {
    let text = fs::read_to_string(dir.join("data/central.raucs")).ok()?;
    let section = text.split(&format!("[slot.{slot}]\n")).nth(1)?.split("\n[").next()?;
    section.lines().find_map(|l| l.strip_prefix("sha256=")).map(str::to_string)
}

fn other(bootname: &str) -> &'static str {
    if bootname == "A" { "B" } else { "A" }
}

fn image_of(bootname: &str) -> &'static str {
    if bootname == "A" { "rootfs0.img" } else { "rootfs1.img" }
}

/// "Boots" the device whose medium after a cut is `dir`, and checks it;
/// returns whether a status file had to be recovered.
fn boot(d: &Device, dir: &Path, e: &Expect) -> Result<bool, String> {
    let env = std::process::Command::new("grub-editenv").arg(dir.join("grubenv")).arg("list").output().unwrap();
    if !env.status.success() {
        return Err(format!("GRUB's environment does not read: {}", String::from_utf8_lossy(&env.stderr)));
    }
    let env: Vec<String> = String::from_utf8_lossy(&env.stdout).lines().map(str::to_string).collect();
    let selected = grub_selected(&env).ok_or_else(|| format!("GRUB selects no slot: {env:?}"))?;
    let booted_sha = sha256_hex(&fs::read(dir.join(e.booted.1)).unwrap());
    if booted_sha != e.booted_sha {
        return Err(format!("the booted slot {} changed", e.booted.0));
    }
    (e.complete)(&selected, dir).map_err(|m| format!("GRUB selects {selected}: {m}"))?;
    if let Some((bootname, slot, sha)) = e.recorded
        && selected == bootname
        && recorded_sha(dir, slot).as_deref() != Some(sha)
    {
        return Err(format!("GRUB selects {selected}, but the status does not record its image"));
    }
    fs::write(dir.join("cmdline"), format!("rauc.slot={selected}\n")).unwrap();
    let cmd = |args: &[&str]| {
        let out = d.rota_in(dir).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() { Ok(text) } else { Err(format!("`rota {}` failed: {text}", args.join(" "))) }
    };
    let status = cmd(&["status", "--detailed"])?;
    // A status file the cut left unparsable is set aside, and says so.
    let recovered = dir.join("data/central.raucs.broken").exists();
    if recovered && !status.contains("is unparsable") {
        return Err(format!("a broken status file was set aside without a word: {status}"));
    }
    cmd(&["status", "mark-good"])?;
    cmd(&["install", &e.next.display().to_string()])?;
    let env = testkit::device::grubenv(&dir.join("grubenv"));
    let target = other(&selected);
    if grub_selected(&env).as_deref() != Some(target) {
        return Err(format!("after the next install GRUB does not select {target}: {env:?}"));
    }
    (e.next_done)(&dir.join(image_of(target))).map_err(|m| format!("after the next install, {target}: {m}"))?;
    Ok(recovered)
}

/// Records `action` on `d`, then boots the medium after every cut of its
/// journal; returns the cuts tried. Panics listing every violation.
fn campaign(name: &str, d: &Device, action: impl FnOnce(&Path), e: &Expect) -> usize {
    let base = d.dir.with_extension("base");
    let ops = record(journal_fs(), &d.dir, &base, action);
    let syncs = ops.iter().filter(|o| o.is_sync()).count();
    let writes = ops.iter().filter(|o| matches!(o, Op::Write { .. })).count();
    let cuts = cut_points(&ops, random_cuts(), seed());
    let mut violations = Vec::new();
    let mut recovered = 0;
    for (i, cut) in cuts.iter().enumerate() {
        let dir = d.dir.with_extension(format!("cut{i}"));
        let _ = fs::remove_dir_all(&dir);
        medium_after(&ops, &base, *cut, &dir);
        match boot(d, &dir, e) {
            Ok(r) => {
                recovered += usize::from(r);
                testkit::remove_tree(&dir)
            }
            Err(m) => violations.push(format!("{cut:?} (kept in {}): {m}", dir.display())),
        }
    }
    testkit::remove_tree(&base);
    eprintln!(
        "power cuts, {name}: {} ops ({writes} writes, {syncs} syncs), {} cuts, {} violations, \
         {recovered} status files recovered",
        ops.len(),
        cuts.len(),
        violations.len()
    );
    assert!(violations.is_empty(), "{name} (seed {:#x}):\n{}", seed(), violations.join("\n"));
    // Status files are replaced atomically and synced: no cut breaks one.
    assert_eq!(recovered, 0, "{name}: status files broken by a power cut");
    assert!(syncs > 0, "{name}: nothing was synced: did the operation reach the journaling file system?");
    cuts.len()
}

/// For installs from A into B: A must hold its image (digest `a`), and B,
/// when selected, the new one (digest `b`) whole.
fn target_complete(slot: &str, dir: &Path, a: &str, b: &str) -> Result<(), String> {
    let got = sha256_hex(&fs::read(dir.join(image_of(slot))).unwrap());
    match slot {
        "A" if got == a => Ok(()),
        "B" if got == b => Ok(()),
        _ => Err("not all of its new image".into()),
    }
}

/// [`campaign`] on a device with raw slots, booted from `booted`: after any
/// cut, A must hold `images[0]` and B, when selected, `images[1]` (B is
/// where installs go; the status must then record its digest); `next` is the
/// next bundle and the image it holds.
fn raw_campaign(
    name: &str,
    d: &Device,
    booted: &str,
    images: [&[u8]; 2],
    next: (&Path, &[u8]),
    action: impl FnOnce(&Path),
) -> usize {
    let [a, b] = images.map(sha256_hex);
    let complete = |slot: &str, dir: &Path| target_complete(slot, dir, &a, &b);
    let e = Expect {
        booted: (booted, image_of(booted)),
        booted_sha: if booted == "A" { a.clone() } else { b.clone() },
        complete: &complete,
        next: next.0,
        next_done: &sha_is(sha256_hex(next.1)),
        recorded: Some(("B", "rootfs.1", &b)),
    };
    campaign(name, d, action, &e)
}

fn sha_is(want: String) -> impl Fn(&Path) -> Result<(), String> {
    move |p: &Path| {
        let got = sha256_hex(&fs::read(p).unwrap());
        if got == want { Ok(()) } else { Err(format!("{} holds neither image", p.display())) }
    }
}

#[test]
fn image_installs_survive_a_power_cut_at_every_sync_and_at_random() {
    let _s = serial();
    let (v1, v2, v3) = (pseudo_random(SLOT, 1), pseudo_random(SLOT, 2), pseudo_random(SLOT, 3));
    let next = image_bundle("next", "verity", &v3, "");
    let mut total = 0;
    for format in ["verity", "plain"] {
        let b = image_bundle(&format!("v2-{format}"), format, &v2, "");
        // B holds an older image: selected, it must hold all of v2.
        let d = raw_device(&format!("install-{format}"), &v1, &pseudo_random(SLOT, 4));
        let action = |live: &Path| {
            run(d.rota_in(live).arg("install").arg(&b)).ok();
        };
        total += raw_campaign(&format!("{format} install"), &d, "A", [&v1, &v2], (&next, &v3), action);
    }
    eprintln!("power cuts, image installs: {total} cuts, no violation");
}

#[test]
fn marking_slots_survives_a_power_cut_at_every_sync_and_at_random() {
    let _s = serial();
    let (v1, v2, v3) = (pseudo_random(SLOT, 11), pseudo_random(SLOT, 12), pseudo_random(SLOT, 13));
    let next = image_bundle("next-mark", "verity", &v3, "");
    // Installed v2 into B and booted it: now mark it good, then go back to A.
    let d = raw_device("mark", &v1, &v1);
    let b = image_bundle("v2-mark", "verity", &v2, "");
    d.run(&["install", &b.display().to_string()]).ok();
    d.boot("rauc.slot=B");
    let action = |live: &Path| {
        run(d.rota_in(live).args(["status", "mark-good"])).ok();
        run(d.rota_in(live).args(["status", "mark-active", "other"])).ok();
        run(d.rota_in(live).args(["status", "mark-bad", "other"])).ok();
    };
    raw_campaign("mark-good, mark-active, mark-bad", &d, "B", [&v1, &v2], (&next, &v3), action);
}

#[test]
fn adaptive_installs_survive_a_power_cut_at_every_sync_and_at_random() {
    let _s = serial();
    // v2 differs from v1 in one block of 64 KiB: most of it comes from the
    // slots, through the block-hash index, whose copy the data directory keeps.
    let v1 = pseudo_random(SLOT, 21);
    let mut v2 = v1.clone();
    v2[SLOT / 2..SLOT / 2 + 65536].copy_from_slice(&pseudo_random(65536, 22));
    let v3 = pseudo_random(SLOT, 23);
    let adaptive = "adaptive=block-hash-index\n";
    let b = image_bundle("v2-adaptive", "verity", &v2, adaptive);
    let next = image_bundle("next-adaptive", "verity", &v3, adaptive);
    let d = raw_device("adaptive", &v1, &pseudo_random(SLOT, 24));
    let action = |live: &Path| {
        let r = run(d.rota_in(live).arg("install").arg(&b)).ok();
        assert!(format!("{}{}", r.stdout, r.stderr).contains("Adaptive update of rootfs.1"), "{}", r.stderr);
    };
    raw_campaign("adaptive install", &d, "A", [&v1, &v2], (&next, &v3), action);
}

#[test]
fn tree_installs_survive_a_power_cut_at_every_sync_and_at_random() {
    let _s = serial();
    let work = WorkDir::new(target_dir().join("test-bundles/power-cut/tree"));
    let (v1, v2, v3) = (work.path().join("v1"), work.path().join("v2"), work.path().join("v3"));
    testkit::rootfs::generate(&v1, 120, 4096, 31);
    testkit::trees::sh(&format!("cp -a {} {} && cp -a {} {}", v1.display(), v2.display(), v1.display(), v3.display()));
    testkit::rootfs::change(&v2, 20, 32);
    testkit::rootfs::change(&v3, 20, 33);
    let (b, next) = (work.path().join("v2.raucb"), work.path().join("v3.raucb"));
    let _ = (fs::remove_file(&b), fs::remove_file(&next));
    testkit::trees::bundle_as(&v2, &b, "verity");
    testkit::trees::bundle_as(&v3, &next, "verity");
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\ndata-directory=data\nmountprefix=mnt\n\
         [keyring]\npath={}\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\ntype=ext4\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\ntype=ext4\nbootname=B\n",
        pki_file("keyring.pem").display()
    );
    let d = Device::new(target_dir().join("test-devices/power-cut/tree"), &conf);
    d.grub_env(&["A", "B"]);
    ext4(&d.path("rootfs0.img"), Some(&v1), 16);
    ext4(&d.path("rootfs1.img"), Some(&v1), 16);
    let s1 = sha256_hex(&fs::read(d.path("rootfs0.img")).unwrap());
    let [i2, i3] = [&v2, &v3].map(|t| FileIndex::scan(t).unwrap());
    // A slot that does not even mount fails here too (scan_image panics).
    let same = |img: &Path, want: &FileIndex| tree_difference(&scan_image(img), want);
    let b_before = sha256_hex(&fs::read(d.path("rootfs1.img")).unwrap());
    // A is checked bit for bit as the booted slot; B, if selected, must be
    // untouched or hold all of v2.
    let complete = |slot: &str, dir: &Path| {
        let img = dir.join(image_of(slot));
        if slot == "A" || sha256_hex(&fs::read(&img).unwrap()) == b_before { Ok(()) } else { same(&img, &i2) }
    };
    let next_done = |img: &Path| same(img, &i3);
    let e = Expect {
        booted: ("A", "rootfs0.img"),
        booted_sha: s1,
        complete: &complete,
        next: &next,
        next_done: &next_done,
        recorded: None,
    };
    let action = |live: &Path| {
        let r = run(d.rota_in(live).arg("install").arg(&b)).ok();
        assert!(format!("{}{}", r.stdout, r.stderr).contains("Tree update of rootfs.1"), "{}", r.stderr);
    };
    campaign("tree install", &d, action, &e);
}
