//! Artifact repositories (spec §3.8, §6.5 step 6): files and trees installed
//! next to the slots, reused when unchanged, switched by symlink, pruned when
//! no longer shipped; shown by `status` in every format.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::device::{Device, grubenv};
use testkit::{Content, pki_file, rota_bundle, run, sha256_hex, target_dir};

fn device(name: &str) -> Device {
    let dir = target_dir().join("test-devices").join(name);
    let conf = format!(
        "[system]\ncompatible=Test Config\nbootloader=grub\ngrubenv=grubenv\n[keyring]\npath={}\n\
         [artifacts.apps]\npath={}\ntype=files\ndescription=Charger apps\n[artifacts.web]\npath={}\ntype=trees\n\
         [slot.rootfs.0]\ndevice=rootfs0.img\nbootname=A\n[slot.rootfs.1]\ndevice=rootfs1.img\nbootname=B\n",
        pki_file("keyring.pem").display(),
        dir.join("repos/apps").display(),
        dir.join("repos/web").display(),
    );
    let d = Device::new(&dir, &conf);
    fs::create_dir_all(d.path("repos/apps")).unwrap();
    fs::create_dir_all(d.path("repos/web")).unwrap();
    d.grub_env(&["A", "B"]);
    for f in ["rootfs0.img", "rootfs1.img"] {
        d.slot_file(f, 512 * 1024, 0xAA);
    }
    d
}

/// A verity bundle with `files` (name, content) and a `web.tar` holding
/// `index.html` = `page`, and the given image sections.
fn bundle(name: &str, files: &[(&str, &[u8])], page: Option<&str>, images: &str) -> PathBuf {
    let dir = target_dir().join("test-bundles").join(name);
    let _ = fs::remove_dir_all(&dir);
    let c = Content::new(dir.join("content"));
    c.image("rootfs.img", 64 * 1024, 1);
    for (f, data) in files {
        c.file(f, data);
    }
    if let Some(page) = page {
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("css")).unwrap();
        fs::write(tree.join("index.html"), page).unwrap();
        fs::write(tree.join("css/site.css"), "body{}\n").unwrap();
        run(Command::new("tar").arg("-cf").arg(c.dir.join("web.tar")).arg("-C").arg(&tree).arg(".")).ok();
    }
    c.manifest(&format!("[update]\ncompatible=Test Config\nversion=1\n[bundle]\nformat=verity\n{images}"));
    let b = dir.join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    b
}

fn link(repo: &Path, name: &str) -> Option<String> {
    fs::read_link(repo.join(name)).ok().map(|p| p.display().to_string())
}

fn entries(repo: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(repo).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn artifacts_install_reuse_switch_and_prune() {
    let d = device("artifacts");
    let apps = d.path("repos/apps");
    let web = d.path("repos/web");
    let (a1, b1) = (b"app a v1".as_slice(), b"app b v1".as_slice());
    let images = "[image.rootfs]\nfilename=rootfs.img\n[image.apps/app-a]\nfilename=app-a.bin\n\
                  [image.apps/app-b]\nfilename=app-b.bin\n[image.web/site]\nfilename=web.tar\n";
    let b = bundle("artifacts-1", &[("app-a.bin", a1), ("app-b.bin", b1)], Some("<h1>v1</h1>\n"), images);
    let out = run(d.rota().arg("install").arg(&b)).ok().stdout;
    for line in
        ["Checking repo 'apps'", "Copying artifact image to repo 'apps'", "Copying artifact image to repo 'web'"]
    {
        assert!(out.contains(&format!("% {line}\n")), "{line}:\n{out}");
    }
    let (sa, sb) = (sha256_hex(a1), sha256_hex(b1));
    assert_eq!(link(&apps, "app-a"), Some(format!(".artifact-app-a-{sa}")));
    assert_eq!(fs::read(apps.join("app-a")).unwrap(), a1);
    assert_eq!(fs::read(apps.join("app-b")).unwrap(), b1);
    assert_eq!(fs::read_to_string(web.join("site/index.html")).unwrap(), "<h1>v1</h1>\n");
    assert_eq!(fs::read_to_string(web.join("site/css/site.css")).unwrap(), "body{}\n");
    assert_eq!(grubenv(&d.path("grubenv")).iter().find(|l| l.starts_with("ORDER=")).unwrap(), "ORDER=B A");
    let old_site = link(&web, "site").unwrap();

    // Status shows the repositories in every format.
    let v: serde_json::Value = serde_json::from_str(&d.run(&["status", "--output-format=json"]).ok().stdout).unwrap();
    // Repositories come in RAUC's order (its table keyed by name walks
    // "web" before "apps").
    let repos = &v["artifact-repositories"];
    assert_eq!(repos[0]["name"], "web");
    assert_eq!(repos[1]["name"], "apps");
    assert_eq!(repos[1]["description"], "Charger apps");
    assert_eq!(repos[1]["artifacts"][0]["name"], "app-a");
    assert_eq!(repos[1]["artifacts"][0]["instances"][0]["checksum"], sa.as_str());
    assert_eq!(repos[1]["artifacts"][0]["instances"][0]["references"], serde_json::json!([""]));
    let shell = d.run(&["status", "--output-format=shell"]).ok().stdout;
    assert!(shell.contains("RAUC_REPOS='1 2'\n"), "{shell}");
    assert!(shell.contains("RAUC_REPO_NAME_2='apps'\n"), "{shell}");
    assert!(shell.contains("RAUC_REPO_ARTIFACTS_2='1 2'\n"), "{shell}");
    assert!(shell.contains(&format!("RAUC_REPO_ARTIFACT_INSTANCE_CHECKSUM_2_2_1='{sb}'\n")), "{shell}");
    assert!(shell.contains("RAUC_REPO_ARTIFACT_INSTANCE_ACTIVE_2_2_1='1'\n"), "{shell}");
    let readable = d.run(&["status"]).ok().stdout;
    assert!(readable.contains("=== Artifact Repo States ===\n[web] ("), "{readable}");
    assert!(readable.contains("\n[apps] ("), "{readable}");
    assert!(readable.contains(&format!("    [app-a]\n      checksum: {sa}\n        active\n")), "{readable}");

    // Next bundle: app-a unchanged (reused), app-b dropped, the site changed.
    let images = "[image.apps/app-a]\nfilename=app-a.bin\n[image.web/site]\nfilename=web.tar\n";
    let b = bundle("artifacts-2", &[("app-a.bin", a1)], Some("<h1>v2</h1>\n"), images);
    let out = run(d.rota().arg("install").arg(&b)).ok().stdout;
    assert!(out.contains("% Reusing artifact image in repo 'apps'\n"), "{out}");
    assert_eq!(entries(&apps), [format!(".artifact-app-a-{sa}"), "app-a".to_string()], "app-b unlinked and pruned");
    assert_eq!(fs::read_to_string(web.join("site/index.html")).unwrap(), "<h1>v2</h1>\n");
    assert_ne!(link(&web, "site").unwrap(), old_site);
    assert_eq!(entries(&web).len(), 2, "old site pruned: {:?}", entries(&web));
    assert_eq!(
        grubenv(&d.path("grubenv")).iter().find(|l| l.starts_with("ORDER=")).unwrap(),
        "ORDER=B A",
        "an artifact-only bundle switches no slot"
    );

    // An artifact for a repository the system does not have.
    let b = bundle("artifacts-3", &[("x.bin", b"x")], None, "[image.nowhere/x]\nfilename=x.bin\n");
    let r = run(d.rota().arg("install").arg(&b)).fails();
    assert!(
        r.stderr.contains("LastError: Installation error: No target repo 'nowhere' for artifact image 'x' found"),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read(apps.join("app-a")).unwrap(), a1);
}

#[test]
fn a_failed_install_leaves_the_running_systems_artifacts_as_they_were() {
    let d = device("artifacts-failed");
    let apps = d.path("repos/apps");
    let images = "[image.rootfs]\nfilename=rootfs.img\n[image.apps/app-a]\nfilename=app-a.bin\n\
                  [image.apps/app-b]\nfilename=app-b.bin\n";
    let v1 = bundle("artifacts-failed-1", &[("app-a.bin", b"app a v1"), ("app-b.bin", b"app b v1")], None, images);
    run(d.rota().arg("install").arg(&v1)).ok();
    let before = (link(&apps, "app-a"), link(&apps, "app-b"), entries(&apps));
    // Version 2: its second artifact cannot be read from the server (app-a
    // was staged by then), in a bundle streamed from it.
    let (a2, b2) = (testkit::pseudo_random(3 << 20, 7), testkit::pseudo_random(3 << 20, 8));
    let v2 = bundle("artifacts-failed-2", &[("app-a.bin", &a2), ("app-b.bin", &b2)], None, images);
    let bytes = fs::read(&v2).unwrap();
    let at = bytes.windows(64).position(|w| w == &b2[1 << 20..(1 << 20) + 64]).expect("app-b stored as it is");
    let srv = testkit::httpd::Server::start();
    srv.put("/b.raucb", bytes);
    srv.inject(testkit::httpd::Fault::Status(404), at as u64, 1000);
    let r = run(d.rota().arg("install").arg(srv.url("/b.raucb")));
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("Failed updating artifact 'app-b'"), "{}", r.stderr);
    // The links, and everything else in the repo, are as before: no new
    // instance, no temporary leftover.
    assert_eq!((link(&apps, "app-a"), link(&apps, "app-b"), entries(&apps)), before);
    assert_eq!(fs::read(apps.join("app-a")).unwrap(), b"app a v1");
}

#[test]
fn a_missing_repository_directory_is_reported_where_it_is_used() {
    // As RAUC: the configuration loads; status, the service and installations say so.
    let d = device("artifacts-missing");
    fs::remove_dir(d.path("repos/web")).unwrap();
    let message = format!(
        "Failed to initialize artifact repos: Error opening directory “{}”: No such file or directory",
        d.path("repos/web").display()
    );
    let r = run(d.rota().arg("status")).fails();
    assert!(r.stderr.contains(&message), "{}", r.stderr);
    let r = run(d.rota().arg("service")).fails();
    assert!(r.stderr.contains(&message), "{}", r.stderr);
    let b = bundle("artifacts-missing", &[("app-a.bin", b"a")], None, "[image.rootfs]\nfilename=rootfs.img\n");
    let r = run(d.rota().arg("install").arg(&b)).fails();
    assert!(r.stderr.contains(&message), "{}", r.stderr);
    // A command that needs no repository works.
    fs::write(d.path("new.img"), vec![1u8; 4096]).unwrap();
    run(d.rota().args(["write-slot", "rootfs.1"]).arg(d.path("new.img"))).ok();
}

#[test]
fn converted_tree_artifacts_install_from_the_extracted_tree_with_owners_and_modes() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = device("artifacts-converted");
    let web = d.path("repos/web");
    // tar-extract: the bundle holds web.tar.extracted/ and no web.tar; the
    // tree keeps the owners and modes of the archive.
    let images = "[image.rootfs]\nfilename=rootfs.img\n[image.web/site]\nfilename=web.tar\nconvert=tar-extract\n";
    let b = bundle("artifacts-converted-1", &[], Some("<h1>extracted</h1>\n"), images);
    let listing = run(Command::new("unsquashfs").arg("-lls").arg(&b)).ok().stdout;
    assert!(
        listing.contains("web.tar.extracted/index.html") && !listing.contains("squashfs-root/web.tar\n"),
        "{listing}"
    );
    let info = run(d.rota().args(["info", "--output-format=json"]).arg(&b)).ok().stdout;
    assert!(info.contains("\"converted\":[\"web.tar.extracted\"]"), "{info}");
    run(d.rota().arg("install").arg(&b)).ok();
    assert_eq!(fs::read_to_string(web.join("site/index.html")).unwrap(), "<h1>extracted</h1>\n");
    assert_eq!(fs::read_to_string(web.join("site/css/site.css")).unwrap(), "body{}\n");
    let meta = fs::metadata(web.join("site/index.html")).unwrap();
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (0, 0o644));
    // tar-extract;keep: both outputs are in the bundle; the tree is installed from the extracted one.
    let images = "[image.rootfs]\nfilename=rootfs.img\n[image.web/site]\nfilename=web.tar\nconvert=tar-extract;keep\n";
    let b = bundle("artifacts-converted-2", &[], Some("<h1>kept</h1>\n"), images);
    let listing = run(Command::new("unsquashfs").arg("-lls").arg(&b)).ok().stdout;
    assert!(listing.contains("squashfs-root/web.tar\n") && listing.contains("web.tar.extracted/index.html"));
    run(d.rota().arg("install").arg(&b)).ok();
    assert_eq!(fs::read_to_string(web.join("site/index.html")).unwrap(), "<h1>kept</h1>\n");
    // A files repository cannot take an extracted tree: refused by name, nothing changes.
    let images = "[image.rootfs]\nfilename=rootfs.img\n[image.apps/app]\nfilename=web.tar\nconvert=tar-extract\n";
    let b = bundle("artifacts-converted-3", &[], Some("<h1>x</h1>\n"), images);
    let r = run(d.rota().arg("install").arg(&b)).fails();
    assert!(r.stderr.contains("Image 'apps/app' has unsupported format for repo type 'files'"), "{}", r.stderr);
    assert!(!d.path("repos/apps/app").exists());
    assert_eq!(fs::read_to_string(web.join("site/index.html")).unwrap(), "<h1>kept</h1>\n");
}
