//! Artifact repositories (spec §3.8, §6.5 step 6): directories of files or
//! trees installed from bundles next to the slots. Each installed instance
//! lives at `<repo>/.artifact-<name>-<sha256>`; the visible entry
//! `<repo>/<name>` is a relative symlink to the active instance, switched
//! atomically. An install stages its instances first and switches the
//! links only past its point of no return, so the running system keeps its
//! artifacts if it fails; instances no link points to are removed after that.

use crate::config::{ArtifactRepoConfig, ArtifactRepoType};
use crate::error::{Error, Result, failed};
use crate::install::write::{ImageSource, stream_hashed};
use std::path::{Path, PathBuf};

/// Prefix of the hidden instance entries.
const INSTANCE_PREFIX: &str = ".artifact-";

/// One installed instance of an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Artifact name.
    pub name: String,
    /// SHA-256 of the image it was installed from.
    pub digest: String,
    /// Whether `<repo>/<name>` points at it.
    pub active: bool,
}

/// Splits `.artifact-<name>-<hex digest>` into name and digest.
fn parse_instance(entry: &str) -> Option<(&str, &str)> {
    let rest = entry.strip_prefix(INSTANCE_PREFIX)?;
    let (name, digest) = rest.rsplit_once('-')?;
    let hex = !digest.is_empty() && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && !name.is_empty()).then_some((name, digest))
}

fn instance_entry(name: &str, digest: &str) -> String {
    format!("{INSTANCE_PREFIX}{name}-{digest}")
}

/// The instances in `repo`, sorted by name then digest.
pub fn instances(repo: &ArtifactRepoConfig) -> Result<Vec<Instance>> {
    let dir = std::fs::read_dir(&repo.path).map_err(|e| Error::io("Failed to read artifact repo", &repo.path, e))?;
    let mut out = Vec::new();
    for entry in dir.filter_map(|e| e.ok()) {
        let file_name = entry.file_name();
        // Temporary `<instance>.tmp` entries do not parse: their "digest" is not hex.
        let Some((name, digest)) = file_name.to_str().and_then(parse_instance) else {
            continue;
        };
        let link = std::fs::read_link(repo.path.join(name)).ok();
        let active = link.is_some_and(|l| l == Path::new(&instance_entry(name, digest)));
        out.push(Instance { name: name.to_string(), digest: digest.to_string(), active });
    }
    out.sort_by(|a, b| (&a.name, &a.digest).cmp(&(&b.name, &b.digest)));
    Ok(out)
}

/// Checks that every repository of `system` can be read, as RAUC does
/// before `status`, at the service's start and when an installation plans
/// its artifacts: `Failed to initialize artifact repos: …`.
pub fn init(system: &crate::system::System) -> Result<()> {
    for repo in &system.config.artifacts {
        if let Err(e) = std::fs::read_dir(&repo.path) {
            return failed(format!(
                "Failed to initialize artifact repos: Error opening directory “{}”: {}",
                repo.path.display(),
                crate::error::strerror(&e)
            ));
        }
    }
    Ok(())
}

/// Whether an instance of `name` with `digest` is installed.
pub fn has_instance(repo: &ArtifactRepoConfig, name: &str, digest: &str) -> bool {
    repo.path.join(instance_entry(name, digest)).exists()
}

fn sync_dir(dir: &Path, fs_too: bool) -> Result<()> {
    let f = std::fs::File::open(dir).map_err(|e| Error::io("Failed to open artifact repo", dir, e))?;
    if fs_too {
        crate::files::syncfs(dir).map_err(|e| Error::io("Failed to sync artifact repo", dir, e))?;
    }
    f.sync_all().map_err(|e| Error::io("Failed to sync artifact repo", dir, e))
}

/// Installs artifact `name` from `src` as a new instance: written to a
/// temporary entry, checked against `digest` (the manifest's sha256 of the
/// image), synced, then renamed into place. Trees are unpacked with tar.
pub fn install(
    repo: &ArtifactRepoConfig,
    name: &str,
    digest: &str,
    src: &ImageSource<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    install_with(repo, name, digest, |tmp| {
        let written = write_instance(repo, tmp, src, progress)?;
        if written.1 != digest {
            return failed(format!("Image '{}' has sha256 {} but the manifest says {digest}", src.name(), written.1));
        }
        Ok(())
    })
}

/// Installs tree artifact `name` (`digest`: the sha256 of the archive it
/// was extracted from) from the directory `dir` of the verified bundle
/// `fs`, which a `tar-extract` converter made when the bundle was built:
/// copied with owners, modes, times and links as they are in the bundle.
pub fn install_extracted(
    repo: &ArtifactRepoConfig,
    name: &str,
    digest: &str,
    fs: &rota_bundle::squashfs::BundleFs,
    dir: &str,
) -> Result<()> {
    install_with(repo, name, digest, |tmp| {
        fs.extract_dir_to(dir, tmp).map_err(|e| Error::Failed(format!("Failed to copy tree '{dir}': {e}")))
    })
}

/// The instance of `name` with `digest` as `write` makes it in a temporary
/// entry, synced and renamed into place; nothing is left behind on failure.
fn install_with(
    repo: &ArtifactRepoConfig,
    name: &str,
    digest: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let target = repo.path.join(instance_entry(name, digest));
    let tmp = repo.path.join(format!("{}.tmp", instance_entry(name, digest)));
    crate::files::remove_any(&tmp).map_err(|e| Error::io("Failed to remove", &tmp, e))?;
    if let Err(e) = write(&tmp) {
        // Cancelled or failed halfway: nothing is left behind.
        let _ = crate::files::remove_any(&tmp);
        return Err(e);
    }
    sync_dir(&repo.path, true)?;
    std::fs::rename(&tmp, &target).map_err(|e| Error::io("Failed to rename artifact to", &target, e))?;
    sync_dir(&repo.path, false)
}

/// Writes the artifact from `src` to `tmp` (a file, or a tree unpacked
/// with tar); returns its length and SHA-256.
fn write_instance(
    repo: &ArtifactRepoConfig,
    tmp: &Path,
    src: &ImageSource<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, String)> {
    Ok(match repo.repo_type {
        ArtifactRepoType::Files => {
            let file = std::fs::File::create(tmp).map_err(|e| Error::io("Failed to create", tmp, e))?;
            let (n, sha, file) = stream_hashed(src, file, progress)?;
            file.sync_all().map_err(|e| Error::io("Failed to sync", tmp, e))?;
            (n, sha)
        }
        ArtifactRepoType::Trees => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(tmp).map_err(|e| Error::io("Failed to create", tmp, e))?;
            crate::install::archive::extract_tar(src, tmp, true, progress)?
        }
    })
}

/// Removes the instance of `name` with `digest` unless a link points to it
/// (one an install staged and then gave up on).
pub fn discard(repo: &ArtifactRepoConfig, name: &str, digest: &str) -> Result<()> {
    let entry = instance_entry(name, digest);
    if std::fs::read_link(repo.path.join(name)).is_ok_and(|l| l == Path::new(&entry)) {
        return Ok(());
    }
    let path = repo.path.join(entry);
    crate::files::remove_any(&path).map_err(|e| Error::io("Failed to remove", &path, e))?;
    sync_dir(&repo.path, false)
}

/// Points `<repo>/<name>` at the instance with `digest`, atomically
/// (a new link renamed over the old one).
pub fn activate(repo: &ArtifactRepoConfig, name: &str, digest: &str) -> Result<()> {
    let link = repo.path.join(name);
    let tmp = repo.path.join(format!(".{name}.link.tmp"));
    crate::files::remove_any(&tmp).map_err(|e| Error::io("Failed to remove", &tmp, e))?;
    std::os::unix::fs::symlink(instance_entry(name, digest), &tmp)
        .map_err(|e| Error::io("Failed to create symlink", &tmp, e))?;
    std::fs::rename(&tmp, &link).map_err(|e| Error::io("Failed to update symlink", &link, e))
}

/// Removes the links of artifacts not in `keep` (those the bundle no
/// longer ships for this repo).
pub fn deactivate_others(repo: &ArtifactRepoConfig, keep: &[&str]) -> Result<()> {
    for inst in instances(repo)?.into_iter().filter(|i| i.active && !keep.contains(&i.name.as_str())) {
        let link = repo.path.join(&inst.name);
        std::fs::remove_file(&link).map_err(|e| Error::io("Failed to remove symlink", &link, e))?;
    }
    Ok(())
}

/// Removes unreferenced instances, temporary leftovers and anything else
/// that is neither an instance nor a symlink; then syncs the repo. An
/// unreferenced instance with a file some process still has open stays
/// until a later installation, as with RAUC.
pub fn prune(repo: &ArtifactRepoConfig) -> Result<()> {
    let active: Vec<Instance> = instances(repo)?.into_iter().filter(|i| i.active).collect();
    let dir = std::fs::read_dir(&repo.path).map_err(|e| Error::io("Failed to read artifact repo", &repo.path, e))?;
    for entry in dir.filter_map(|e| e.ok()) {
        let path: PathBuf = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        match parse_instance(&file_name) {
            Some((name, digest)) if !active.iter().any(|i| i.name == name && i.digest == digest) => {
                let where_ = format!("artifact '{name}' with hash '{digest}' from repo '{}'", repo.name);
                if let Some(open) = open_file_in(&path)? {
                    tracing::info!("Skipping removal of {where_}: File {} is currently open", open.display());
                    continue;
                }
                tracing::info!("Removing unused {where_}");
            }
            Some(_) => continue,
            None if entry.file_type().is_ok_and(|t| t.is_symlink()) && !file_name.ends_with(".link.tmp") => continue,
            None => tracing::info!("Removing unexpected data in artifact repo: {}", path.display()),
        }
        crate::files::remove_any(&path).map_err(|e| Error::io("Failed to remove", &path, e))?;
    }
    sync_dir(&repo.path, true)
}

/// The first regular file under `path` (itself, or in the tree below it,
/// not following links nor leaving its file system) that another process
/// has open: a write lease (fcntl(2)) is only granted on a file nobody
/// else has open.
fn open_file_in(path: &Path) -> Result<Option<PathBuf>> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let check = |p: &Path| -> Result<bool> {
        let file = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(p)
            .map_err(|e| Error::io("Failed to open", p, e))?;
        // SAFETY: fcntl on a descriptor we own; the lease ends when it closes.
        if unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_SETLEASE, libc::F_WRLCK) } == 0 {
            return Ok(false);
        }
        match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EAGAIN) => Ok(true),
            e => failed(format!("Failed to check if {} is open: {e}", p.display())),
        }
    };
    let top = std::fs::symlink_metadata(path).map_err(|e| Error::io("Failed to inspect", path, e))?;
    let mut pending = vec![path.to_path_buf()];
    while let Some(p) = pending.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(|e| Error::io("Failed to inspect", &p, e))?;
        if md.dev() != top.dev() {
            continue;
        }
        if md.is_file() && check(&p)? {
            return Ok(Some(p));
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| Error::io("Failed to read", &p, e))? {
                pending.push(e.map_err(|e| Error::io("Failed to read", &p, e))?.path());
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names() {
        assert_eq!(parse_instance(".artifact-app-a-b-0f3a"), Some(("app-a-b", "0f3a")));
        assert_eq!(parse_instance(".artifact-app-0F3A"), None);
        assert_eq!(parse_instance(".artifact--0f"), None);
        assert_eq!(parse_instance("app"), None);
        assert_eq!(parse_instance(".artifact-app-"), None);
    }

    fn repo(dir: &Path, repo_type: ArtifactRepoType) -> ArtifactRepoConfig {
        ArtifactRepoConfig { name: "r".into(), path: dir.to_path_buf(), repo_type, description: None }
    }

    #[test]
    fn open_files_are_found_deep_in_a_tree_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/deep"), b"x").unwrap();
        std::fs::write(dir.path().join("outside"), b"y").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), tree.join("link")).unwrap();
        let fifo = std::ffi::CString::new(tree.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(open_file_in(&tree).unwrap(), None);
        let _outside = std::fs::File::open(dir.path().join("outside")).unwrap();
        assert_eq!(open_file_in(&tree).unwrap(), None, "a link's target is not the tree's");
        let _deep = std::fs::File::open(tree.join("a/b/deep")).unwrap();
        assert_eq!(open_file_in(&tree).unwrap(), Some(tree.join("a/b/deep")));
    }

    #[test]
    fn install_activate_and_prune_files() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), ArtifactRepoType::Files);
        let src_dir = tempfile::tempdir().unwrap();
        let mut ids = Vec::new();
        for content in [b"one".as_slice(), b"two".as_slice()] {
            let f = src_dir.path().join("a.bin");
            std::fs::write(&f, content).unwrap();
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(content));
            install(&r, "app", &digest, &ImageSource::File(&f), &mut |_| {}).unwrap();
            activate(&r, "app", &digest).unwrap();
            ids.push(digest);
        }
        std::fs::write(dir.path().join("stray"), b"x").unwrap();
        prune(&r).unwrap();
        let inst = instances(&r).unwrap();
        assert_eq!(inst, [Instance { name: "app".into(), digest: ids[1].clone(), active: true }]);
        assert_eq!(std::fs::read(dir.path().join("app")).unwrap(), b"two");
        assert!(!dir.path().join("stray").exists());
        // A digest that does not match leaves nothing behind.
        let f = src_dir.path().join("a.bin");
        let err = install(&r, "app", &"0".repeat(64), &ImageSource::File(&f), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("but the manifest says"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        deactivate_others(&r, &[]).unwrap();
        // An instance with a file open elsewhere stays until it is closed.
        let held = std::fs::File::open(dir.path().join(format!(".artifact-app-{}", ids[1]))).unwrap();
        prune(&r).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(held);
        // A child another test thread forks holds a copy of every open file
        // until it execs, which also keeps the lease from being taken: try
        // again for a moment, as a later install's prune would.
        for _ in 0..100 {
            prune(&r).unwrap();
            if std::fs::read_dir(dir.path()).unwrap().count() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
