//! Hooks and handlers (spec §6.4–6.8): the `install-check` hook, slot hooks,
//! `system-info`/`pre-install`/`post-install` handlers and the full custom
//! handler. Every script dumps its `RAUC_*` environment, which is compared
//! with the variables §6.6 lists — all of them, and nothing else.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::device::{Device, grubenv};
use testkit::{Content, Run, pki_file, rota_bundle, run, serial, sha256_hex, target_dir};

/// One script for every hook: dumps its environment to `$HOOK_DUMP`, checks
/// it can read its image from the mounted bundle, and exits as told.
const HOOK: &str = r#"#!/bin/sh
d="$HOOK_DUMP"
env | grep '^RAUC_' | sort > "$d/$1.${RAUC_SLOT_NAME:-bundle}.env"
case "$1" in
install-check)
    [ -n "$CHECK_MSG" ] && echo "$CHECK_MSG" >&2
    exit ${CHECK_EXIT:-0};;
slot-pre-install|slot-post-install)
    [ -n "$RAUC_SLOT_MOUNT_POINT" ] && cat "$RAUC_SLOT_MOUNT_POINT/version" > "$d/$1.$RAUC_SLOT_NAME.version"
    sha256sum < "$RAUC_IMAGE_NAME" | cut -d' ' -f1 > "$d/$1.$RAUC_SLOT_NAME.sha"
    exit ${SLOT_HOOK_EXIT:-0};;
slot-install)
    dd if="$RAUC_IMAGE_NAME" of="$RAUC_SLOT_DEVICE" conv=notrunc,fsync status=none;;
esac
"#;

/// The system handlers and the custom handler: dump environment and argv,
/// speak the handler protocol, exit as told.
fn handler_script(name: &str) -> String {
    format!(
        "#!/bin/sh\nenv | grep '^RAUC_' | sort > \"$HOOK_DUMP/{name}.env\"\necho \"$@\" > \"$HOOK_DUMP/{name}.args\"\n\
         echo '<< handler {name} running'\necho 'plain output'\necho '<< image rootfs.img done' >&2\n\
         exit ${{{}_EXIT:-0}}\n",
        name.to_uppercase().replace('-', "_")
    )
}

const SYSTEM_INFO: &str = "#!/bin/sh\necho RAUC_SYSTEM_SERIAL=SN-0042\necho RAUC_SYSTEM_VERSION=7.1\n\
echo RAUC_CUSTOM_BOARD=rev-c\necho ignored line\n";

const AB: &str = "[slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n\
[slot.appfs.0]\ndevice=appfs0.img\nparent=rootfs.0\n[slot.appfs.1]\ndevice=appfs1.img\nparent=rootfs.1\n";

fn executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A device with GRUB, raw file slots (or `slots`), the handlers named in
/// `handlers` (`pre-install`, `post-install`, `system-info`) and its own mount prefix.
fn device(name: &str, handlers: &[&str], slots: &str) -> Device {
    let dir = target_dir().join("test-devices").join(name);
    let mut section = String::from("[handlers]\n");
    for h in handlers {
        section.push_str(&format!("{h}={}\n", dir.join(format!("{h}.sh")).display()));
    }
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\nmountprefix={}\n\
         [keyring]\npath={}\n{section}{slots}",
        dir.join("mnt").display(),
        pki_file("keyring.pem").display()
    );
    let d = Device::new(&dir, &conf);
    for h in handlers {
        let text = if *h == "system-info" { SYSTEM_INFO.to_string() } else { handler_script(h) };
        executable(&d.path(&format!("{h}.sh")), &text);
    }
    fs::create_dir_all(d.path("dump")).unwrap();
    d.grub_ab(512 * 1024, 0xAA);
    d
}

/// The standard content plus the hook script and `extra` manifest text
/// (appended after `[bundle]`); `images` replaces the image sections.
fn bundle(name: &str, compatible: &str, extra: &str, images: &str) -> (PathBuf, Content) {
    let dir = target_dir().join("test-bundles").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::standard(dir.join("content"), "verity");
    executable(&c.dir.join("hook.sh"), HOOK);
    executable(&c.dir.join("custom-handler.sh"), &handler_script("custom-handler"));
    c.manifest(&format!(
        "[update]\ncompatible={compatible}\nversion=2024.08-1\nbuild=20240824\n[bundle]\nformat=verity\n{extra}\n{images}\
         [meta.release-info]\nbuild-id=42\nchannel-name=beta\n"
    ));
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    (b, c)
}

const IMAGES: &str = "[image.rootfs]\nfilename=rootfs.img\n[image.appfs]\nfilename=appfs.img\n";

fn install(d: &Device, bundle: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = d.rota();
    cmd.env("HOOK_DUMP", d.path("dump")).envs(env.iter().copied()).arg("install").args(args).arg(bundle);
    run(&mut cmd)
}

fn dump(d: &Device, name: &str) -> BTreeMap<String, String> {
    let text = fs::read_to_string(d.path("dump").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    text.lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn expect(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn primary(d: &Device) -> String {
    grubenv(&d.path("grubenv"))
        .into_iter()
        .find_map(|l| l.strip_prefix("ORDER=").map(|o| o.split(' ').next().unwrap().to_string()))
        .unwrap()
}

/// SHA-256 of a certificate's DER SubjectPublicKeyInfo, via the openssl tool.
fn spki_hash(cert: &Path) -> String {
    let pubkey = run(Command::new("openssl").args(["x509", "-noout", "-pubkey", "-in"]).arg(cert)).ok().stdout;
    let tmp = target_dir().join("test-bundles/spki.pem");
    fs::write(&tmp, pubkey).unwrap();
    let der = Command::new("openssl").args(["pkey", "-pubin", "-outform", "DER", "-in"]).arg(&tmp).output().unwrap();
    assert!(der.status.success());
    // RAUC's notation: upper-case hex pairs separated by colons.
    let hex = sha256_hex(&der.stdout).to_uppercase();
    hex.as_bytes().chunks(2).map(|p| std::str::from_utf8(p).unwrap()).collect::<Vec<_>>().join(":")
}

#[test]
fn every_handler_and_hook_gets_exactly_the_documented_environment() {
    let _g = serial();
    let d = device("hooks-env", &["system-info", "pre-install", "post-install"], AB);
    let hooked =
        "[image.rootfs]\nfilename=rootfs.img\nhooks=pre-install;post-install\n[image.appfs]\nfilename=appfs.img\n";
    let (b, c) = bundle("hooks-env", "Test Config", "[hooks]\nfilename=hook.sh\nhooks=install-check\n", hooked);
    let txn = "0b1c2d3e-4f50-4162-8374-8596a7b8c9d0";
    let r = install(&d, &b, &[], &[&format!("--transaction-id={txn}")]).ok();
    // Handler output protocol (§6.7), from both handlers.
    for line in [
        "Handler status: pre-install running",
        "Handler status: post-install running",
        "# plain output",
        "Image 'rootfs.img' status: done",
    ] {
        assert!(r.stdout.lines().any(|l| l == line), "missing {line:?} in\n{}", r.stdout);
    }
    assert_eq!(primary(&d), "B");

    let mnt = d.path("mnt").display().to_string();
    let bundle_dir = format!("{mnt}/bundle");
    let root_sha = sha256_hex(&fs::read(c.dir.join("rootfs.img")).unwrap());
    let app_sha = sha256_hex(&fs::read(c.dir.join("appfs.img")).unwrap());
    let dev = |f: &str| d.path(f).display().to_string();
    let system = [
        ("RAUC_SYSTEM_COMPATIBLE", "Test Config".to_string()),
        ("RAUC_SYSTEM_VARIANT", String::new()),
        ("RAUC_SYSTEM_VERSION", "7.1".to_string()),
    ];
    let meta =
        [("RAUC_META_RELEASE_INFO_BUILD_ID", "42".to_string()), ("RAUC_META_RELEASE_INFO_CHANNEL_NAME", "beta".into())];
    let mut handler = vec![
        ("RAUC_SYSTEM_CONFIG", d.conf().display().to_string()),
        ("RAUC_CURRENT_BOOTNAME", "A".into()),
        ("RAUC_MOUNT_PREFIX", mnt.clone()),
        ("RAUC_SYSTEM_SERIAL", "SN-0042".into()),
        ("RAUC_CUSTOM_BOARD", "rev-c".into()),
        ("RAUC_BUNDLE_MOUNT_POINT", bundle_dir.clone()),
        ("RAUC_UPDATE_SOURCE", bundle_dir.clone()),
        ("RAUC_TRANSACTION_ID", txn.into()),
        ("RAUC_SLOTS", "1 2 3 4".into()),
        ("RAUC_TARGET_SLOTS", "1 2".into()),
        ("RAUC_IMAGE_NAME_1", "rootfs.img".into()),
        ("RAUC_IMAGE_DIGEST_1", root_sha.clone()),
        ("RAUC_IMAGE_CLASS_1", "rootfs".into()),
        ("RAUC_IMAGE_NAME_2", "appfs.img".into()),
        ("RAUC_IMAGE_DIGEST_2", app_sha.clone()),
        ("RAUC_IMAGE_CLASS_2", "appfs".into()),
    ];
    // Numbered in the order RAUC walks its slot table (tests/slot_order.rs
    // checks that order against Debian's rauc).
    let slots = [
        ("rootfs.1", "rootfs", "rootfs1.img", "B", ""),
        ("appfs.1", "appfs", "appfs1.img", "", "rootfs.1"),
        ("rootfs.0", "rootfs", "rootfs0.img", "A", ""),
        ("appfs.0", "appfs", "appfs0.img", "", "rootfs.0"),
    ];
    let mut owned: Vec<(String, String)> = Vec::new();
    for (i, (name, class, file, bootname, parent)) in slots.iter().enumerate() {
        let n = i + 1;
        owned.push((format!("RAUC_SLOT_NAME_{n}"), name.to_string()));
        owned.push((format!("RAUC_SLOT_CLASS_{n}"), class.to_string()));
        owned.push((format!("RAUC_SLOT_TYPE_{n}"), "raw".into()));
        owned.push((format!("RAUC_SLOT_DEVICE_{n}"), dev(file)));
        owned.push((format!("RAUC_SLOT_BOOTNAME_{n}"), bootname.to_string()));
        owned.push((format!("RAUC_SLOT_PARENT_{n}"), parent.to_string()));
    }
    handler.extend(system.iter().cloned());
    handler.extend(meta.iter().cloned());
    let mut want = expect(&handler);
    want.extend(owned);
    assert_eq!(dump(&d, "pre-install.env"), want);
    assert_eq!(dump(&d, "post-install.env"), want);
    assert_eq!(fs::read_to_string(d.path("dump/pre-install.args")).unwrap(), "\n", "system handlers get no arguments");

    let mut check = vec![
        ("RAUC_MF_COMPATIBLE", "Test Config".to_string()),
        ("RAUC_MF_VERSION", "2024.08-1".into()),
        ("RAUC_MF_BUILD", "20240824".into()),
        ("RAUC_MOUNT_PREFIX", mnt.clone()),
    ];
    check.extend(system.iter().cloned());
    check.extend(meta.iter().cloned());
    assert_eq!(dump(&d, "install-check.bundle.env"), expect(&check));

    let leaf = spki_hash(&pki_file("release.pem"));
    let spki = dump(&d, "slot-pre-install.rootfs.1.env")["RAUC_BUNDLE_SPKI_HASHES"].clone();
    assert_eq!(spki.split(' ').next(), Some(leaf.as_str()), "leaf first");
    assert_eq!(spki.split(' ').nth(1), Some(spki_hash(&pki_file("inter.pem")).as_str()));
    let mut slot = vec![
        ("RAUC_SLOT_NAME", "rootfs.1".to_string()),
        ("RAUC_SLOT_CLASS", "rootfs".into()),
        ("RAUC_SLOT_TYPE", "raw".into()),
        ("RAUC_SLOT_DEVICE", dev("rootfs1.img")),
        ("RAUC_SLOT_STATE", "inactive".into()),
        ("RAUC_SLOT_BOOTNAME", "B".into()),
        ("RAUC_SLOT_PARENT", String::new()),
        ("RAUC_IMAGE_NAME", format!("{bundle_dir}/rootfs.img")),
        ("RAUC_IMAGE_SIZE", (256 * 1024).to_string()),
        ("RAUC_IMAGE_DIGEST", root_sha.clone()),
        ("RAUC_IMAGE_CLASS", "rootfs".into()),
        ("RAUC_MOUNT_PREFIX", mnt.clone()),
        ("RAUC_BUNDLE_MOUNT_POINT", bundle_dir.clone()),
        ("RAUC_BUNDLE_SPKI_HASHES", spki),
    ];
    slot.extend(system.iter().cloned());
    assert_eq!(dump(&d, "slot-pre-install.rootfs.1.env"), expect(&slot));
    assert_eq!(dump(&d, "slot-post-install.rootfs.1.env"), expect(&slot));
    // The hooks read the image through the mounted, verified bundle.
    assert_eq!(fs::read_to_string(d.path("dump/slot-pre-install.rootfs.1.sha")).unwrap().trim(), root_sha);
    assert!(!d.path("dump/slot-pre-install.appfs.1.env").exists(), "appfs has no hooks");
    // The bundle is unmounted afterwards.
    assert!(!fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&bundle_dir));
}

#[test]
fn install_check_hook_decides_instead_of_the_compatible() {
    let _g = serial();
    let d = device("hooks-check", &[], AB);
    let hooks = "[hooks]\nfilename=hook.sh\nhooks=install-check\n";
    let (b, c) = bundle("hooks-check", "Other Board", hooks, IMAGES);
    let before = (fs::read(d.path("rootfs1.img")).unwrap(), grubenv(&d.path("grubenv")));

    let r = install(&d, &b, &[("CHECK_EXIT", "10"), ("CHECK_MSG", "wrong board revision")], &[]).fails();
    assert!(r.stderr.contains("LastError: Bundle rejected: Hook returned: 'wrong board revision'"), "{}", r.stderr);
    let r = install(&d, &b, &[("CHECK_EXIT", "11")], &[]).fails();
    assert!(
        r.stderr
            .contains("LastError: Bundle rejected: Hook returned with exit code 11: Child process exited with code 11"),
        "{}",
        r.stderr
    );
    let r = install(&d, &b, &[("CHECK_EXIT", "3"), ("CHECK_MSG", "oops")], &[]).fails();
    assert!(
        r.stderr.contains("LastError: Install-check hook failed: Child process exited with code 3"),
        "{}",
        r.stderr
    );
    assert_eq!((fs::read(d.path("rootfs1.img")).unwrap(), grubenv(&d.path("grubenv"))), before, "nothing changed");

    // Accepted by the hook although the compatible differs.
    install(&d, &b, &[], &[]).ok();
    let root = fs::read(c.dir.join("rootfs.img")).unwrap();
    assert_eq!(fs::read(d.path("rootfs1.img")).unwrap()[..root.len()], root[..]);
    assert_eq!(primary(&d), "B");
}

#[test]
fn install_hook_writes_the_slot_itself() {
    let _g = serial();
    let d = device("hooks-install", &[], AB);
    let images = "[image.rootfs]\nfilename=rootfs.img\nhooks=install\n[image.appfs]\nfilename=appfs.img\n";
    let (b, c) = bundle("hooks-install", "Test Config", "[hooks]\nfilename=hook.sh\n", images);
    install(&d, &b, &[], &[]).ok();
    let root = fs::read(c.dir.join("rootfs.img")).unwrap();
    assert_eq!(fs::read(d.path("rootfs1.img")).unwrap()[..root.len()], root[..]);
    assert!(d.path("dump/slot-install.rootfs.1.env").exists());
    assert_eq!(primary(&d), "B");
}

#[test]
fn failing_slot_hook_fails_the_slot_and_activates_nothing() {
    let _g = serial();
    let d = device("hooks-fail", &[], AB);
    let images = "[image.rootfs]\nfilename=rootfs.img\nhooks=pre-install\n[image.appfs]\nfilename=appfs.img\n";
    let (b, _) = bundle("hooks-fail", "Test Config", "[hooks]\nfilename=hook.sh\n", images);
    let booted = fs::read(d.path("rootfs0.img")).unwrap();
    let r = install(&d, &b, &[("SLOT_HOOK_EXIT", "1")], &[]).fails();
    assert!(
        r.stderr.contains(
            "LastError: Installation error: Failed updating slot rootfs.1: failed to run slot hook: Child process exited with code 1"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read(d.path("rootfs1.img")).unwrap(), vec![0xAA; 512 * 1024], "pre-install hook ran before writing");
    assert_eq!(fs::read(d.path("rootfs0.img")).unwrap(), booted);
    assert_eq!(primary(&d), "A");
    assert!(grubenv(&d.path("grubenv")).contains(&"B_OK=0".to_string()), "target stays marked bad");
    install(&d, &b, &[], &[]).ok();
    assert_eq!(primary(&d), "B");
}

#[test]
fn system_handler_failures() {
    let _g = serial();
    let d = device("hooks-handlers", &["pre-install", "post-install"], AB);
    let (b, c) = bundle("hooks-handlers", "Test Config", "", IMAGES);
    let before = (fs::read(d.path("rootfs1.img")).unwrap(), grubenv(&d.path("grubenv")));
    let r = install(&d, &b, &[("PRE_INSTALL_EXIT", "2")], &[]).fails();
    assert!(
        r.stderr.contains("LastError: Pre-install handler error: Child process exited with code 2"),
        "{}",
        r.stderr
    );
    assert_eq!((fs::read(d.path("rootfs1.img")).unwrap(), grubenv(&d.path("grubenv"))), before);
    // A failing post-install handler fails the install, after the slots were written (as RAUC does).
    let r = install(&d, &b, &[("POST_INSTALL_EXIT", "4")], &[]).fails();
    assert!(
        r.stderr.contains("LastError: Post-install handler error: Child process exited with code 4"),
        "{}",
        r.stderr
    );
    let root = fs::read(c.dir.join("rootfs.img")).unwrap();
    assert_eq!(fs::read(d.path("rootfs1.img")).unwrap()[..root.len()], root[..]);
}

#[test]
fn full_custom_handler_replaces_the_slot_update() {
    let _g = serial();
    let d = device("hooks-custom", &[], AB);
    let handler = "[handler]\nfilename=custom-handler.sh\nargs=--mode 'two words'\n";
    let (b, _) = bundle("hooks-custom", "Test Config", handler, IMAGES);
    let before = (fs::read(d.path("rootfs1.img")).unwrap(), grubenv(&d.path("grubenv")));
    let r = install(&d, &b, &[], &["--handler-args=--extra x"]).ok();
    assert!(r.stdout.contains(" 40% Launching update handler\n"), "{}", r.stdout);
    assert!(r.stdout.contains("Handler status: custom-handler running"), "{}", r.stdout);
    assert_eq!(fs::read_to_string(d.path("dump/custom-handler.args")).unwrap(), "--mode two words --extra x\n");
    let env = dump(&d, "custom-handler.env");
    assert_eq!(env["RAUC_TARGET_SLOTS"], "1 2");
    assert_eq!(env["RAUC_BUNDLE_MOUNT_POINT"], d.path("mnt/bundle").display().to_string());
    // rota wrote nothing and switched nothing: that is the handler's job.
    assert_eq!((fs::read(d.path("rootfs1.img")).unwrap(), grubenv(&d.path("grubenv"))), before);
    let r = install(&d, &b, &[("CUSTOM_HANDLER_EXIT", "5")], &[]).fails();
    assert!(
        r.stderr.contains("LastError: Installation error: Handler error: Child process exited with code 5"),
        "{}",
        r.stderr
    );
}

/// ext4 image into an ext4 slot: the pre hook sees the old filesystem
/// mounted, the post hook the new one; a tar slot's post hook sees the files.
#[test]
fn slot_hooks_see_the_filesystem_mounted() {
    let _g = serial();
    let dir = target_dir().join("test-bundles/hooks-ext4");
    let _ = fs::remove_dir_all(&dir);
    let mk = |name: &str, version: &str, out: &Path, size: &str| {
        let tree = dir.join(name);
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("version"), version).unwrap();
        run(Command::new("mkfs.ext4").args(["-q", "-d"]).arg(&tree).arg(out).arg(size)).ok();
        tree
    };
    let c = Content::new(dir.join("content"));
    c.image("padding.bin", 16 * 1024, 3);
    executable(&c.dir.join("hook.sh"), HOOK);
    let tree = mk("new", "new\n", &c.dir.join("root.ext4"), "4M");
    run(Command::new("tar").arg("-cf").arg(c.dir.join("app.tar")).arg("-C").arg(&tree).arg(".")).ok();
    c.manifest(
        "[update]\ncompatible=Test Config\n[bundle]\nformat=verity\n[hooks]\nfilename=hook.sh\n\
         [image.rootfs]\nfilename=root.ext4\nhooks=pre-install;post-install\n\
         [image.appfs]\nfilename=app.tar\nhooks=post-install\n",
    );
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();

    let slots = "[slot.rootfs.0]\ndevice=r0.ext4\ntype=ext4\nbootname=A\n[slot.rootfs.1]\ndevice=r1.ext4\ntype=ext4\nbootname=B\n\
                 [slot.appfs.0]\ndevice=a0.ext4\ntype=ext4\nparent=rootfs.0\n[slot.appfs.1]\ndevice=a1.ext4\ntype=ext4\nparent=rootfs.1\n";
    let d = device("hooks-ext4", &[], slots);
    for f in ["r0", "r1", "a0", "a1"] {
        mk(&format!("old-{f}"), "old\n", &d.path(&format!("{f}.ext4")), "8M");
    }
    install(&d, &b, &[], &[]).ok();
    let read = |n: &str| fs::read_to_string(d.path("dump").join(n)).unwrap();
    assert_eq!(read("slot-pre-install.rootfs.1.version"), "old\n");
    assert_eq!(read("slot-post-install.rootfs.1.version"), "new\n");
    assert_eq!(read("slot-post-install.appfs.1.version"), "new\n");
    let mp = dump(&d, "slot-post-install.appfs.1.env")["RAUC_SLOT_MOUNT_POINT"].clone();
    assert_eq!(mp, d.path("mnt/appfs.1").display().to_string());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&d.path("mnt").display().to_string()), "everything unmounted:\n{mounts}");
    assert_eq!(primary(&d), "B");
}
