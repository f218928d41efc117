//! Host-side bundle operations (spec §1.8, §9.2): `bundle`, `resign`,
//! `replace-signature`, `extract-signature` and `encrypt`. Squashfs images are
//! made by `mksquashfs`, like RAUC does (parity for `--mksquashfs-args`).

use crate::bundle::{Bundle, OpenOptions};
use crate::container::{self, DEFAULT_MAX_SIGNATURE_SIZE, PLAIN_MAX_PAYLOAD};
use crate::error::{Error, Result, io_error as io_err};
use crate::manifest::{BundleFormat, Manifest, ManifestCopy, ManifestOrigin, VerityParams};
use crate::reader::crypt_sectors;
use crate::signature::{self, Keyring, Signer, VerifyOptions, envelope};
use crate::source::ReadAt;
use crate::verity::{self, BLOCK_SIZE, HashBlockSink, TreeBuilder};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions as FsOpen};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Name of the scratch copy of the input directory (as RAUC names it).
pub const WORKDIR_NAME: &str = ".rauc-workdir";
/// Largest image `block-hash-index` supports, in 4 KiB blocks.
pub const MAX_INDEX_BLOCKS: u64 = 0x7FF_FFFF;

/// Who signs and how the result is checked.
#[derive(Debug, Clone, Default)]
pub struct SigningOptions {
    /// Signer certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Signer key (PEM).
    pub key: Option<PathBuf>,
    /// Intermediate certificates to embed.
    pub intermediates: Vec<PathBuf>,
    /// Keyring the new signature is checked against (`--signing-keyring`, else `--keyring`).
    pub keyring: Option<Keyring>,
}

impl SigningOptions {
    pub(crate) fn signer(&self) -> Result<Signer> {
        let cert = self.cert.as_ref().ok_or_else(|| Error::Key("Certificate missing: use --cert".to_string()))?;
        let key = self.key.as_ref().ok_or_else(|| Error::Key("Key missing: use --key".to_string()))?;
        let signer = Signer::load(cert, key, &self.intermediates)?;
        // Fail before any long work if certificate and key do not belong together.
        signer.sign_inline(b"")?;
        Ok(signer)
    }
}

/// Options of `bundle`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Signing identity.
    pub signing: SigningOptions,
    /// Extra `mksquashfs` arguments (already split).
    pub mksquashfs_args: Vec<String>,
}

/// What `bundle` made.
#[derive(Debug, Clone)]
pub struct Created {
    /// Container format.
    pub format: BundleFormat,
    /// The signed manifest.
    pub manifest: Manifest,
    /// Warnings for the user (expiring certificates, large signatures).
    pub warnings: Vec<String>,
}

/// Removes a file when dropped unless disarmed (no half-written bundle survives).
struct Cleanup(Option<PathBuf>);

impl Cleanup {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if p.is_dir() {
                let _ = fs::remove_dir_all(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
}

pub(crate) fn check_new_output(output: &Path) -> Result<()> {
    if output.symlink_metadata().is_ok() {
        return Err(Error::Other(format!("bundle {} already exists", output.display())));
    }
    Ok(())
}

fn temp_path(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    output.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Mirrors `input` into `work` with hard links (copies across filesystems),
/// rejecting what RAUC rejects: absolute symlinks, symlinks with `/`, hidden
/// top-level directories and special files.
fn mirror_input(input: &Path, work: &Path, top: bool, trees: &[String]) -> Result<()> {
    fs::create_dir(work).map_err(|e| io_err("create", work, e))?;
    let mut entries: Vec<_> = fs::read_dir(input)
        .map_err(|e| io_err("read", input, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| io_err("read", input, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if top && (name == WORKDIR_NAME || trees.iter().any(|t| name == t.as_str())) {
            continue;
        }
        let src = entry.path();
        let dst = work.join(&name);
        let ft = entry.file_type().map_err(|e| io_err("stat", &src, e))?;
        let shown = name.to_string_lossy();
        let refused = |what: &str| Err(Error::Other(format!("{what} bundle contents ({shown})")));
        if ft.is_symlink() {
            // What a link leaving its directory should mean is unclear, so
            // only links to a name in the same directory are taken.
            let target = fs::read_link(&src).map_err(|e| io_err("read link", &src, e))?;
            if target.is_absolute() {
                return refused("absolute symlinks are not supported as");
            }
            if target.to_string_lossy().contains('/') {
                return refused("symlinks containing slashes are not supported as");
            }
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| io_err("create symlink", &dst, e))?;
        } else if ft.is_dir() {
            if top && shown.starts_with('.') {
                return refused("hidden directories are not supported as top-level");
            }
            mirror_input(&src, &dst, false, &[])?;
        } else if ft.is_file() {
            if fs::hard_link(&src, &dst).is_err() {
                fs::copy(&src, &dst).map_err(|e| io_err("copy", &src, e))?;
            }
        } else {
            return refused("only regular files are supported as");
        }
    }
    Ok(())
}

/// Whether an image file name names a `tree` image.
pub fn is_tree_image(filename: &str) -> bool {
    filename.ends_with(".tree")
}

/// The tree images a manifest in `input` names that are there (none when
/// the manifest cannot be read: the main pass reports that).
fn tree_images(input: &Path) -> Vec<String> {
    let Ok(text) = fs::read_to_string(input.join("manifest.raucm")) else { return Vec::new() };
    let Ok(m) = Manifest::parse(&text, ManifestOrigin::Input) else { return Vec::new() };
    m.images.iter().filter_map(|i| i.filename.clone()).filter(|f| is_tree_image(f) && input.join(f).exists()).collect()
}

/// Unpacks the tar archive `archive` (compression detected by GNU tar)
/// into a temporary directory, owners, modes, xattrs and file capabilities
/// kept.
fn unpack_tree(archive: &Path, name: &str, group: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("rota-tree-")
        .tempdir()
        .map_err(|e| Error::Other(format!("Failed to create a temporary directory: {e}")))?;
    let out = Command::new("tar")
        .args(["-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-f"])
        .arg(archive)
        .arg("-C")
        .arg(dir.path())
        .output()
        .map_err(|e| Error::Other(format!("Failed to run tar: {e}")))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "Tree image '{name}' of '[{group}]' is neither a directory nor a tar archive: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(dir)
}

/// Indexes the tree at `src` into `work/<name>` and writes each distinct
/// file content once into its contents file (see [`crate::tree::CONTENT_ALIGN`]).
fn stage_tree(src: &Path, work: &Path, name: &str) -> Result<()> {
    let index = crate::tree::FileIndex::scan(src).map_err(Error::Other)?;
    let contents = index.contents();
    let offsets = crate::tree::content_offsets(contents.iter().map(|c| c.1));
    let data = work.join(crate::tree::contents_file(name));
    let mut out = fs::File::create(&data).map_err(|e| io_err("create", &data, e))?;
    let mut end = 0;
    for ((_, size, e), at) in contents.iter().zip(offsets) {
        let from = crate::tree::FileIndex::path_under(src, e);
        let mut input = fs::File::open(&from).map_err(|e| io_err("open", &from, e))?;
        out.seek(SeekFrom::Start(at)).map_err(|e| io_err("write", &data, e))?;
        let copied = std::io::copy(&mut input, &mut out).map_err(|e| io_err("copy", &from, e))?;
        if copied != *size {
            return Err(Error::Other(format!("'{}' changed while the bundle was made", from.display())));
        }
        end = at + size;
    }
    out.set_len(end).map_err(|e| io_err("write", &data, e))?;
    let path = work.join(name);
    let mut out = std::io::BufWriter::new(fs::File::create(&path).map_err(|e| io_err("create", &path, e))?);
    index.write_to(&mut out).and_then(|()| out.flush()).map_err(|e| io_err("write", &path, e))?;
    Ok(())
}

/// Hashes an image; also writes its `block-hash-index` when `index` is given.
fn hash_image(path: &Path, index: Option<&Path>) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| io_err("open image", path, e))?;
    let mut sha = Sha256::new();
    let mut idx_out = match index {
        Some(p) => Some(std::io::BufWriter::new(File::create(p).map_err(|e| io_err("create", p, e))?)),
        None => None,
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read(&mut buf[filled..]).map_err(|e| io_err("read image", path, e))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        sha.update(&buf[..filled]);
        size += filled as u64;
        if let Some(out) = idx_out.as_mut() {
            if filled % BLOCK_SIZE != 0 {
                return Err(Error::Other(format!(
                    "Image '{}' size is not a multiple of 4096 bytes, as block-hash-index requires",
                    path.display()
                )));
            }
            let digests: Vec<[u8; 32]> =
                buf[..filled].par_chunks(BLOCK_SIZE).map(|b| Sha256::digest(b).into()).collect();
            for d in digests {
                out.write_all(&d).map_err(|e| Error::Io(e.to_string()))?;
            }
        }
        if filled < buf.len() {
            break;
        }
    }
    if let Some(mut out) = idx_out {
        if size == 0 || size / BLOCK_SIZE as u64 > MAX_INDEX_BLOCKS {
            return Err(Error::Other(format!(
                "Image '{}' cannot have a block-hash-index: size must be non-zero and at most {MAX_INDEX_BLOCKS} blocks",
                path.display()
            )));
        }
        out.flush().map_err(|e| Error::Io(e.to_string()))?;
    }
    Ok((hex::encode(sha.finalize()), size))
}

/// `mksquashfs` of a bundle's content; `keep_metadata` keeps owners and
/// xattrs (a `tar-extract` converter put files into the bundle as they are
/// to be installed).
fn run_mksquashfs(content: &Path, out: &Path, extra: &[String], keep_metadata: bool) -> Result<()> {
    let args: &[&str] = if keep_metadata { &["-noappend"] } else { &["-noappend", "-all-root", "-no-xattrs"] };
    mksquashfs(content, out, args, extra, "")
}

/// Runs `mksquashfs content out` quietly with `args` and `extra`; a
/// failure says what it was for (`purpose`, e.g. " to …").
fn mksquashfs(content: &Path, out: &Path, args: &[&str], extra: &[String], purpose: &str) -> Result<()> {
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(content).arg(out).args(args).args(["-no-progress", "-quiet"]).args(extra);
    let output = cmd.output().map_err(|e| Error::Other(format!("Failed to run mksquashfs: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::Other(format!("mksquashfs failed{purpose} ({}): {}", output.status, stderr.trim())));
    }
    Ok(())
}

/// The squashfs at `path`, read back (the bundle tool made it: no check).
fn open_squashfs(path: &Path) -> Result<crate::squashfs::BundleFs> {
    let source = crate::source::FileSource::open(path).map_err(|e| io_err("open", path, e))?;
    crate::squashfs::BundleFs::open(std::sync::Arc::new(source))
}

/// Where each stored block of the file `map` describes lies.
fn layout(map: &crate::squashfs::data::BlockMap) -> Vec<(u64, u64, bool)> {
    (0..map.stored_blocks()).map(|b| map.stored_block(b)).collect()
}

/// Adds to the squashfs at `squashfs`, for each tree image, the SHA-256 of
/// each stored block of its contents file ([`crate::tree::block_sums_file`]),
/// appended with `mksquashfs` so that nothing already laid out moves (checked).
fn append_block_sums(squashfs: &Path, trees: &[String]) -> Result<()> {
    let sums_dir = tempfile::tempdir().map_err(|e| Error::Io(e.to_string()))?;
    let maps = {
        let fs = open_squashfs(squashfs)?;
        let file = File::open(squashfs).map_err(|e| io_err("open", squashfs, e))?;
        let mut maps = Vec::new();
        for tree in trees {
            let map = fs.block_map(&crate::tree::contents_file(tree))?;
            let mut sums = Vec::with_capacity(32 * map.stored_blocks() as usize);
            let mut block = Vec::new();
            for b in 0..map.stored_blocks() {
                let (start, end, _) = map.stored_block(b);
                if start == end {
                    // A sparse block: nothing is read, so nothing is checked;
                    // a filler unlike any other keeps the file incompressible
                    // (stored as it is, so a device reads single sums).
                    sums.extend_from_slice(&Sha256::digest(format!("sparse block {b}")));
                    continue;
                }
                block.resize((end - start) as usize, 0);
                file.read_exact_at(&mut block, start).map_err(|e| io_err("read", squashfs, e))?;
                sums.extend_from_slice(&Sha256::digest(&block));
            }
            let path = sums_dir.path().join(crate::tree::block_sums_file(tree));
            fs::write(&path, &sums).map_err(|e| io_err("write", &path, e))?;
            maps.push(layout(&map));
        }
        maps
    };
    // Without -noappend: added to the existing filesystem, after its data.
    mksquashfs(sums_dir.path(), squashfs, &["-no-recovery", "-all-root", "-no-xattrs"], &[], " to append block sums")?;
    let fs = open_squashfs(squashfs)?;
    for (tree, before) in trees.iter().zip(maps) {
        let map = fs.block_map(&crate::tree::contents_file(tree))?;
        let sums = fs.block_map(&crate::tree::block_sums_file(tree))?;
        if layout(&map) != before || sums.file_size() != 32 * map.stored_blocks() {
            return Err(Error::Other(format!("mksquashfs moved the contents of tree image '{tree}' while appending")));
        }
    }
    Ok(())
}

struct FileSink<'a> {
    file: &'a File,
    base: u64,
}

impl HashBlockSink for FileSink<'_> {
    fn put(&mut self, offset: u64, block: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(block, self.base + offset)
    }
}

/// Encrypts `[0, data_size)` of `file` in place, sector by sector (crypt bundles).
fn encrypt_in_place(file: &File, data_size: u64, key: &[u8; 32]) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < data_size {
        let n = (data_size - off).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], off)?;
        buf[..n]
            .par_chunks_mut(64 * BLOCK_SIZE)
            .enumerate()
            .try_for_each(|(i, chunk)| crypt_sectors(key, (off / BLOCK_SIZE as u64) + (i * 64) as u64, chunk, true))?;
        file.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Appends the dm-verity tree of `[0, data_size)`; returns the parameters.
pub fn append_verity_tree(file: &File, data_size: u64) -> Result<VerityParams> {
    let mut salt = [0u8; 32];
    openssl::rand::rand_bytes(&mut salt).map_err(|e| Error::Other(e.to_string()))?;
    let blocks = data_size / BLOCK_SIZE as u64;
    let mut builder = TreeBuilder::new(blocks, &salt);
    let mut sink = FileSink { file, base: data_size };
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < data_size {
        let n = (data_size - off).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], off)?;
        let digests: Vec<[u8; 32]> = buf[..n].par_chunks(BLOCK_SIZE).map(|b| verity::salted_digest(&salt, b)).collect();
        for d in &digests {
            builder.push_digest(d, &mut sink)?;
        }
        off += n as u64;
    }
    let size = builder.geometry().tree_size();
    let hash = builder.finish(&mut sink)?;
    file.set_len(data_size + size)?;
    Ok(VerityParams { hash, salt, size })
}

fn signature_warnings(cms_len: usize) -> Vec<String> {
    if cms_len as u64 > DEFAULT_MAX_SIGNATURE_SIZE {
        vec![format!(
            "The signature ({cms_len} bytes) is larger than the default max-bundle-signature-size ({DEFAULT_MAX_SIGNATURE_SIZE}); targets need a larger max-bundle-signature-size"
        )]
    } else {
        Vec::new()
    }
}

/// Opens the finished bundle with `keyring` and warns about chain
/// certificates that expire within 30 days.
fn check_new_bundle(path: &Path, keyring: &Keyring, open: &OpenOptions) -> Result<Vec<String>> {
    let mut o = open.clone();
    o.verify = VerifyOptions { keyring: keyring.clone(), no_verify: false, no_check_time: open.verify.no_check_time };
    o.max_signature_size = u64::MAX;
    o.trust_environment = true;
    let b = Bundle::open(&path.to_string_lossy(), &o)?;
    let soon = openssl::asn1::Asn1Time::days_from_now(30).map_err(|e| Error::Other(e.to_string()))?;
    let mut warnings = Vec::new();
    for chain in &b.signature().chains {
        for c in chain {
            if let Ok(cert) = openssl::x509::X509::from_pem(c.pem.as_bytes())
                && cert.not_after() < soon
            {
                warnings
                    .push(format!("Certificate '{}' in the signing chain expires soon ({})", c.subject, c.not_after));
            }
        }
    }
    Ok(warnings)
}

/// Runs an image's bundle-time converters (`convert=`, RAUC 1.15) in the
/// staged content `work`, after its digest was taken: `tar-extract`
/// unpacks the archive into `<name>.extracted/` (numeric owners kept),
/// `keep` leaves the input in the bundle, which otherwise goes. Returns
/// the `converted=` names, one per method.
fn convert_image(work: &Path, name: &str, methods: &[String]) -> Result<Vec<String>> {
    let mut converted = Vec::new();
    for method in methods {
        match method.as_str() {
            "tar-extract" => {
                let out = format!("{name}.extracted");
                let dir = work.join(&out);
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| Error::Other(format!("failed to create directory '{}': {e}", dir.display())))?;
                let result = Command::new("tar")
                    .arg("--numeric-owner")
                    .arg("-xf")
                    .arg(work.join(name))
                    .arg("-C")
                    .arg(&dir)
                    .output()
                    .map_err(|e| Error::Other(format!("failed to run tar extract: {e}")))?;
                if !result.status.success() {
                    let why = String::from_utf8_lossy(&result.stderr);
                    return Err(Error::Other(format!("failed to run tar extract: {}", why.trim())));
                }
                converted.push(out);
            }
            "keep" => converted.push(name.to_string()),
            "composefs" => {
                return Err(Error::Other("Convert method 'composefs' is not supported by rota".to_string()));
            }
            other => return Err(Error::Other(format!("Unsupported convert method: {other}"))),
        }
    }
    if !methods.iter().any(|m| m == "keep") {
        let input = work.join(name);
        fs::remove_file(&input).map_err(|e| {
            Error::Other(format!("Failed to remove input artifact image after conversion '{}': {e}", input.display()))
        })?;
    }
    Ok(converted)
}

/// `bundle <INPUTDIR> <BUNDLE>`; `announce` learns the format once the
/// manifest is read.
pub fn create(
    input: &Path,
    output: &Path,
    opts: &CreateOptions,
    announce: &mut dyn FnMut(BundleFormat),
) -> Result<Created> {
    check_new_output(output)?;
    let input_abs = fs::canonicalize(input).map_err(|e| io_err("open input directory", input, e))?;
    if !input_abs.is_dir() {
        return Err(Error::Other(format!("Input '{}' is not a directory", input.display())));
    }
    let out_parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let out_parent_abs = fs::canonicalize(out_parent).map_err(|e| io_err("open output directory", out_parent, e))?;
    if out_parent_abs.starts_with(&input_abs) {
        return Err(Error::Other(format!(
            "Output bundle '{}' must not be inside the input directory",
            output.display()
        )));
    }
    let work = input_abs.join(WORKDIR_NAME);
    if work.exists() {
        fs::remove_dir_all(&work).map_err(|e| io_err("remove stale", &work, e))?;
    }
    let _work_guard = Cleanup(Some(work.clone()));
    // Tree images are directories of the input; they reach the bundle as a
    // file index and content-addressed files, not as they are.
    let trees = tree_images(&input_abs);
    mirror_input(&input_abs, &work, true, &trees)?;

    let manifest_path = work.join("manifest.raucm");
    let text = fs::read_to_string(&manifest_path).map_err(|e| io_err("read manifest", &manifest_path, e))?;
    let mut manifest = Manifest::parse(&text, ManifestOrigin::Input)?;
    if !manifest.bundle.format_explicit {
        tracing::warn!(
            "No format specified in manifest, using 'plain'. Consider 'verity' for streaming and verified installs."
        );
    }
    let format = manifest.bundle.format;
    announce(format);
    // As RAUC: the manifest's checks and the signing material once the
    // format is announced, still before any work is done.
    manifest.check_min_rauc_version().map_err(Error::Other)?;
    let signer = opts.signing.signer()?;
    for hook_file in [&manifest.hooks.filename, &manifest.handler.filename].into_iter().flatten() {
        if !work.join(hook_file).is_file() {
            return Err(Error::Other(format!("Hook or handler file '{hook_file}' not found in input directory")));
        }
    }
    if format == BundleFormat::Plain && manifest.images.iter().any(|i| i.artifact.is_some()) {
        return Err(Error::Other("Artifacts are not supported in bundles using plain format".to_string()));
    }
    if format == BundleFormat::Plain && manifest.images.iter().any(|i| !i.convert.is_empty()) {
        return Err(Error::Other("Image converters are not supported in plain bundles".to_string()));
    }
    for img in &mut manifest.images {
        for m in &img.adaptive {
            if m != "block-hash-index" {
                return Err(Error::Other(format!("Unsupported adaptive method: {m}")));
            }
        }
        let Some(name) = img.filename.clone() else {
            continue;
        };
        if is_tree_image(&name) {
            if !img.adaptive.is_empty() {
                return Err(Error::Other(format!(
                    "Tree image '{name}' of '[{}]' cannot be adaptive",
                    img.group_name()
                )));
            }
            let src = input_abs.join(&name);
            if src.is_dir() {
                stage_tree(&src, &work, &name)?;
            } else if src.is_file() {
                let unpacked = unpack_tree(&src, &name, &img.group_name())?;
                stage_tree(unpacked.path(), &work, &name)?;
            } else {
                return Err(Error::Other(format!(
                    "Tree image '{name}' of '[{}]' must be a directory or a tar archive in the input directory",
                    img.group_name()
                )));
            }
        }
        let path = work.join(&name);
        if !path.is_file() {
            return Err(Error::Other(format!(
                "Image file '{name}' of '[{}]' not found in input directory",
                img.group_name()
            )));
        }
        let index = if img.adaptive.iter().any(|m| m == "block-hash-index") {
            let idx = work.join(format!("{name}.block-hash-index"));
            let _ = fs::remove_file(&idx);
            Some(idx)
        } else {
            None
        };
        let (sha, size) = hash_image(&path, index.as_deref())?;
        img.sha256 = Some(sha);
        img.size = Some(size);
        if !img.convert.is_empty() {
            img.converted = convert_image(&work, &name, &img.convert)?;
        }
    }
    let warnings =
        seal(&work, &mut manifest, &opts.mksquashfs_args, &trees, &signer, opts.signing.keyring.as_ref(), output)?;
    Ok(Created { format, manifest, warnings })
}

/// The last steps of making a bundle, shared by `bundle` and `convert`:
/// `manifest` written into the staged content `work`, squashed (tree
/// images' block sums appended), sealed in the manifest's format (verity
/// tree, encryption), signed, checked against `keyring` when given and
/// moved to `output`. Returns the warnings.
pub(crate) fn seal(
    work: &Path,
    manifest: &mut Manifest,
    mksquashfs_args: &[String],
    trees: &[String],
    signer: &Signer,
    keyring: Option<&Keyring>,
    output: &Path,
) -> Result<Vec<String>> {
    let format = manifest.bundle.format;
    let manifest_path = work.join("manifest.raucm");
    // Replace (never write through) the hard link to the author's manifest.
    fs::remove_file(&manifest_path).map_err(|e| io_err("replace", &manifest_path, e))?;
    fs::write(&manifest_path, manifest.to_text(ManifestCopy::Internal))
        .map_err(|e| io_err("write", &manifest_path, e))?;

    let tmp = temp_path(output);
    let mut out_guard = Cleanup(Some(tmp.clone()));
    // Contents of a tree image are read one by one: without fragments, the
    // tail of the contents file shares no compressed block with other files.
    let mut squashfs_args = mksquashfs_args.to_vec();
    if !trees.is_empty() && !squashfs_args.iter().any(|a| a == "-no-fragments") {
        squashfs_args.push("-no-fragments".into());
    }
    let keep_metadata = manifest.images.iter().any(|i| i.convert.iter().any(|c| c == "tar-extract"));
    run_mksquashfs(work, &tmp, &squashfs_args, keep_metadata)?;
    if !trees.is_empty() {
        append_block_sums(&tmp, trees)?;
    }
    let file = FsOpen::new().read(true).write(true).open(&tmp).map_err(|e| io_err("open", &tmp, e))?;
    let data_size = file.metadata()?.len();
    if data_size % BLOCK_SIZE as u64 != 0 {
        return Err(Error::Other(format!("squashfs size ({data_size}) is not a multiple of 4096 bytes")));
    }
    let cms = match format {
        BundleFormat::Plain => {
            if data_size > PLAIN_MAX_PAYLOAD {
                return Err(Error::Other(format!(
                    "Bundle payload size {data_size} exceeds maximum for bundles using plain format (2 GiB)"
                )));
            }
            let mut r = std::io::BufReader::with_capacity(1 << 20, &file);
            signer.sign_detached(&mut r)?
        }
        BundleFormat::Verity | BundleFormat::Crypt => {
            if data_size <= BLOCK_SIZE as u64 {
                return Err(Error::Other(format!("squashfs size ({data_size}) must be larger than 4096 bytes")));
            }
            if format == BundleFormat::Crypt {
                let mut key = [0u8; 32];
                openssl::rand::rand_bytes(&mut key).map_err(|e| Error::Other(e.to_string()))?;
                encrypt_in_place(&file, data_size, &key)?;
                manifest.bundle.crypt_key = Some(key);
            }
            manifest.bundle.verity = Some(append_verity_tree(&file, data_size)?);
            signer.sign_inline(manifest.to_text(ManifestCopy::Inline).as_bytes())?
        }
    };
    let mut w = &file;
    w.seek(SeekFrom::End(0))?;
    container::write_signature(&mut w, &cms).map_err(|e| io_err("write", &tmp, e))?;
    file.sync_all()?;
    drop(file);
    let mut warnings = signature_warnings(cms.len());
    if let Some(k) = keyring {
        warnings.extend(check_new_bundle(&tmp, k, &OpenOptions::default())?);
    }
    check_new_output(output)?;
    fs::rename(&tmp, output).map_err(|e| io_err("create", output, e))?;
    out_guard.disarm();
    Ok(warnings)
}

/// Copies the first `len` bytes of `source` into a new file at `out`.
fn copy_payload(source: &dyn ReadAt, len: u64, out: &mut File) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        source.read_exact_at(off, &mut buf[..n])?;
        out.write_all(&buf[..n])?;
        off += n as u64;
    }
    Ok(())
}

fn new_output(tmp: &Path) -> Result<File> {
    FsOpen::new().write(true).read(true).create_new(true).mode(0o644).open(tmp).map_err(|e| io_err("create", tmp, e))
}

fn finish_output(file: File, tmp: &Path, output: &Path, mut guard: Cleanup) -> Result<()> {
    file.sync_all()?;
    drop(file);
    check_new_output(output)?;
    fs::rename(tmp, output).map_err(|e| io_err("create", output, e))?;
    guard.disarm();
    Ok(())
}

/// Options of `resign`.
#[derive(Debug, Clone, Default)]
pub struct ResignOptions {
    /// New signer.
    pub signing: SigningOptions,
    /// How to open (and verify) the input.
    pub open: OpenOptions,
    /// Add a signer instead of replacing the signature.
    pub append: bool,
}

/// `resign <IN> <OUT>`: verifies input signature and payload, copies the
/// payload, writes a new (or an additional) signature over the same content.
pub fn resign(input: &str, output: &Path, opts: &ResignOptions) -> Result<Vec<String>> {
    check_new_output(output)?;
    let signer = opts.signing.signer()?;
    let bundle = Bundle::open(input, &opts.open)?;
    bundle.check_payload()?;
    let cms = if opts.append {
        signer.append_to(bundle.signed_data())?
    } else if bundle.format() == BundleFormat::Plain {
        let payload = bundle.payload()?;
        let mut r = crate::source::Cursor::with_capacity(payload, 1 << 20);
        signer.sign_detached(&mut r)?
    } else {
        signer.sign_inline(bundle.manifest_bytes())?
    };
    let mut warnings = signature_warnings(cms.len());
    if bundle.was_encrypted() {
        warnings.push("The input was encrypted; the resigned bundle is not. Run 'encrypt' on it again.".to_string());
    }
    let tmp = temp_path(output);
    let guard = Cleanup(Some(tmp.clone()));
    let mut file = new_output(&tmp)?;
    copy_payload(bundle.payload_source()?.as_ref(), bundle.layout().payload_size, &mut file)?;
    container::write_signature(&mut file, &cms)?;
    match &opts.signing.keyring {
        // Bundles with more than one signer cannot be verified (RAUC does
        // not either), so the new signer's certificate is checked alone.
        Some(k) if opts.append => signer.check_chain(k)?,
        Some(k) => {
            file.sync_all()?;
            warnings.extend(check_new_bundle(&tmp, k, &opts.open)?);
        }
        None => {}
    }
    finish_output(file, &tmp, output, guard)?;
    Ok(warnings)
}

/// `replace-signature <IN> <SIG> <OUT>`: the payload of IN with the DER CMS
/// from SIG. IN is opened (and verified) with `open` first; the result is
/// verified with `keyring` whenever one is given.
pub fn replace_signature(
    input: &str,
    sig: &Path,
    output: &Path,
    keyring: Option<&Keyring>,
    open: &OpenOptions,
) -> Result<()> {
    check_new_output(output)?;
    // The bundle whose signature is replaced passes the usual checks first.
    drop(Bundle::open(input, open)?);
    let cms = fs::read(sig).map_err(|e| io_err("read signature", sig, e))?;
    if !signature::is_enveloped(&cms) {
        signature::parse_signed_data(&cms)?;
    }
    let path = crate::bundle::local_path(input)?;
    let source = crate::source::FileSource::open(&path).map_err(|e| io_err("open bundle", &path, e))?;
    let layout = container::Layout::read(&source, u64::MAX)?;
    let tmp = temp_path(output);
    let guard = Cleanup(Some(tmp.clone()));
    let mut file = new_output(&tmp)?;
    copy_payload(&source, layout.payload_size, &mut file)?;
    container::write_signature(&mut file, &cms)?;
    file.sync_all()?;
    if let Some(k) = keyring {
        let mut o = open.clone();
        o.verify = VerifyOptions { keyring: k.clone(), no_verify: false, ..o.verify.clone() };
        o.trust_environment = true;
        let b = Bundle::open(&tmp.to_string_lossy(), &o)?;
        // The payload is checked against what the new manifest says of it;
        // a manifest that cannot reach it is kept, as RAUC keeps it (its
        // installs fail where the payload is first needed).
        match b.check_manifest_contents() {
            Ok(()) => b.check_payload()?,
            Err(e) => tracing::warn!("The new signed manifest cannot be used to install: {e}"),
        }
    } else {
        tracing::info!("No keyring given, not verifying the new signature");
    }
    finish_output(file, &tmp, output, guard)
}

/// `extract-signature <BUNDLE> <OUTSIG>`: writes the (decrypted) SignedData, mode 0600.
pub fn extract_signature(input: &str, output: &Path, open: &OpenOptions) -> Result<()> {
    let bundle = Bundle::open(input, open)?;
    let mut f =
        FsOpen::new().write(true).create_new(true).mode(0o600).open(output).map_err(|e| io_err("create", output, e))?;
    f.write_all(bundle.signed_data()).map_err(|e| io_err("write", output, e))?;
    Ok(())
}

/// `encrypt <IN> <OUT> --to CERT…`: wraps a crypt bundle's signature in an
/// EnvelopedData for the recipients; the payload is reused byte for byte.
pub fn encrypt(input: &str, output: &Path, recipients: &[PathBuf], open: &OpenOptions) -> Result<usize> {
    check_new_output(output)?;
    if recipients.is_empty() {
        return Err(Error::Other("No recipient certificates given: use --to".to_string()));
    }
    let certs = envelope::load_recipients(recipients)?;
    let bundle = Bundle::open(input, open)?;
    if bundle.format() != BundleFormat::Crypt {
        return Err(Error::Other("Refused to encrypt input bundle that is not in 'crypt' format.".to_string()));
    }
    let env = envelope::encrypt(bundle.signed_data(), &certs)?;
    let tmp = temp_path(output);
    let guard = Cleanup(Some(tmp.clone()));
    let mut file = new_output(&tmp)?;
    copy_payload(bundle.payload_source()?.as_ref(), bundle.layout().payload_size, &mut file)?;
    container::write_signature(&mut file, &env)?;
    finish_output(file, &tmp, output, guard)?;
    Ok(env.len())
}
