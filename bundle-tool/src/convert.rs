//! `convert`: a signed bundle into a casync bundle plus chunk store, as
//! `rauc convert` makes them (casync-format spec §8.1), in-process with
//! casync-rs instead of running `casync make`: each image is streamed out
//! of the verified input, cut into chunks that go into `<output>.castr`,
//! and replaced by its `.caibx` index; the manifest keeps the image's
//! SHA-256 and size (installs check the reassembled image against them),
//! loses the verity fields, and the result is signed in the input's format.

use crate::bundle::{Bundle, OpenOptions};
use crate::create::{SigningOptions, check_new_output, is_tree_image, seal};
use crate::error::{Error, Result};
use casync::blob::Maker;
use casync::chunker::ChunkSizes;
use casync::digest::DigestKind;
use casync::store::{Compression, LocalStore};
use std::path::{Path, PathBuf};

/// What `convert` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Signer of the new bundle.
    pub signing: SigningOptions,
    /// How the input was opened and verified (its keyring also checks the output).
    pub open: OpenOptions,
    /// Slot classes whose images stay as they are (`--ignore-image`).
    pub ignore_images: Vec<String>,
    /// `casync make` options (`--casync-args`, split).
    pub casync_args: Vec<String>,
    /// Extra `mksquashfs` arguments (`--mksquashfs-args`, split).
    pub mksquashfs_args: Vec<String>,
}

/// What a conversion made.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The chunk store.
    pub store: PathBuf,
    /// Chunks written to the store (the others were there already).
    pub new_chunks: u64,
    /// Warnings for the user.
    pub warnings: Vec<String>,
}

/// How chunks are made: the `casync make` options RAUC passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MakeArgs {
    /// `--chunk-size=AVG` or `MIN:AVG:MAX`.
    pub sizes: ChunkSizes,
    /// `--digest=sha512-256|sha256`.
    pub digest: DigestKind,
    /// `--compression=zstd|xz|gzip`.
    pub compression: Compression,
    /// `--with=` words (archives), after RAUC's own `unix`.
    pub with: Vec<String>,
    /// `--without=` words (archives).
    pub without: Vec<String>,
}

impl Default for MakeArgs {
    fn default() -> MakeArgs {
        MakeArgs {
            sizes: ChunkSizes::default(),
            digest: DigestKind::Sha512_256,
            compression: Compression::Zstd,
            with: Vec::new(),
            without: Vec::new(),
        }
    }
}

impl MakeArgs {
    /// The feature flags of archive indexes: RAUC's `--with=unix` plus the
    /// words given, minus the `--without` ones.
    pub fn archive_flags(&self) -> Result<u64> {
        let with: Vec<&str> = std::iter::once("unix").chain(self.with.iter().map(String::as_str)).collect();
        let without: Vec<&str> = self.without.iter().map(String::as_str).collect();
        casync::flags::archive_flags(&with, &without, self.digest == DigestKind::Sha512_256)
            .map_err(|e| Error::Other(format!("Invalid casync argument: {e}")))
    }
}

/// A size as casync reads one: bytes, or with a K, M or G suffix (×1024).
fn parse_size(text: &str) -> Option<u64> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let factor = match unit {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Reads the `casync make` options of `--casync-args`; anything else is
/// refused rather than silently ignored.
pub fn parse_make_args(args: &[String]) -> Result<MakeArgs> {
    let mut out = MakeArgs::default();
    let bad = |m: String| Err(Error::Other(format!("Invalid casync argument: {m}")));
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, value) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let takes_value = matches!(name, "--chunk-size" | "--digest" | "--compression" | "--with" | "--without");
        if !takes_value {
            return bad(format!("'{arg}' is not supported (chunk-size, digest, compression, with, without are)"));
        }
        let Some(value) = value.or_else(|| it.next().cloned()) else {
            return bad(format!("'{name}' needs a value"));
        };
        match name {
            "--chunk-size" => {
                let parts: Option<Vec<u64>> = value.split(':').map(parse_size).collect();
                let sizes = match parts.as_deref() {
                    Some([avg]) => ChunkSizes::from_avg(*avg),
                    Some([min, avg, max]) => ChunkSizes { min: *min, avg: *avg, max: *max }.checked(),
                    _ => return bad(format!("chunk size '{value}' is neither AVG nor MIN:AVG:MAX")),
                };
                out.sizes = sizes.map_err(|e| Error::Other(format!("Invalid casync argument: {e}")))?;
            }
            "--digest" => {
                out.digest = match value.as_str() {
                    "sha512-256" => DigestKind::Sha512_256,
                    "sha256" => DigestKind::Sha256,
                    _ => return bad(format!("unknown digest '{value}' (sha512-256 or sha256)")),
                }
            }
            "--compression" => {
                out.compression = match value.as_str() {
                    "zstd" => Compression::Zstd,
                    "xz" => Compression::Xz,
                    "gzip" => Compression::Gzip,
                    _ => return bad(format!("unknown compression '{value}' (zstd, xz or gzip)")),
                }
            }
            "--with" | "--without" => {
                casync::flags::parse_word(&value).map_err(|e| Error::Other(format!("Invalid casync argument: {e}")))?;
                if name == "--with" { out.with.push(value) } else { out.without.push(value) }
            }
            _ => unreachable!("only options that take a value get here"),
        }
    }
    Ok(out)
}

/// Whether RAUC treats the image as a directory archive (`*.tar*`, `*.catar`).
fn is_archive(filename: &str) -> bool {
    filename.contains(".tar") || filename.ends_with(".catar")
}

/// GNU tar's decompression option for an archive named `filename`.
pub fn tar_compression_flag(filename: &str) -> Option<&'static str> {
    const FLAGS: &[(&[&str], &str)] = &[
        (&[".gz", ".tgz", ".taz"], "-z"),
        (&[".Z", ".taZ"], "-Z"),
        (&[".bz2", ".tbz", ".tbz2", ".tz2"], "-j"),
        (&[".lz"], "--lzip"),
        (&[".lzma", ".tlz"], "--lzma"),
        (&[".lzo"], "--lzop"),
        (&[".xz", ".txz"], "-J"),
        (&[".zst", ".tzst"], "--zstd"),
    ];
    FLAGS.iter().find(|(suffixes, _)| suffixes.iter().any(|s| filename.ends_with(s))).map(|(_, flag)| *flag)
}

/// Whether this process can give unpacked files any owner: root, or under
/// fakeroot or bitbake's pseudo (which answer for the files they made).
fn can_own_files() -> bool {
    let pseudo = std::env::var_os("PSEUDO_LOCALSTATEDIR").is_some()
        && std::env::var("PSEUDO_DISABLED").map_or(true, |v| v != "1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root || pseudo || std::env::var_os("FAKEROOTKEY").is_some()
}

/// Unpacks the archive image `name` of the bundle `fs` into `dir`: a tar
/// through GNU tar with numeric owners (as RAUC unpacks it), a catar with
/// casync-rs's decoder.
fn unpack_archive(fs: &crate::squashfs::BundleFs, name: &str, dir: &Path) -> Result<()> {
    let fail = |m: String| Error::Other(format!("Failed to unpack '{name}': {m}"));
    let (reader, mut writer) = std::io::pipe().map_err(|e| fail(e.to_string()))?;
    std::thread::scope(|scope| {
        let feeder = scope.spawn(move || fs.copy_file(name, &mut writer));
        let unpacked = if name.ends_with(".catar") {
            casync::catar::decode::extract(std::io::BufReader::new(reader), dir)
                .map(|_| ())
                .map_err(|e| fail(e.to_string()))
        } else {
            let mut cmd = std::process::Command::new("tar");
            cmd.args(["xf", "-", "-C"]).arg(dir).arg("--numeric-owner");
            if let Some(flag) = tar_compression_flag(name) {
                cmd.arg(flag);
            }
            let out = cmd.stdin(reader).output().map_err(|e| fail(format!("tar: {e}")))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(fail(format!("tar: {}", String::from_utf8_lossy(&out.stderr).trim())))
            }
        };
        let fed = feeder.join().expect("archive feeder thread");
        unpacked?;
        fed.map(|_| ()).map_err(|e| fail(e.to_string()))
    })
}

/// The store `convert` writes for `output`: `X.raucb` → `X.castr`, else `output` + `.castr`.
pub fn store_path(output: &Path) -> PathBuf {
    PathBuf::from(crate::castore::store_location(&output.to_string_lossy(), None))
}

/// `convert <IN> <OUT>` of the opened (and verified) input `bundle`: see
/// the module text. `say` hears the progress lines RAUC prints. Nothing is
/// left at `output` on failure; chunks already put into the store stay
/// (the store is shared and append-only).
pub fn convert(bundle: &Bundle, output: &Path, opts: &ConvertOptions, say: &mut dyn FnMut(&str)) -> Result<Converted> {
    check_new_output(output)?;
    let make = parse_make_args(&opts.casync_args)?;
    let signer = opts.signing.signer()?;
    bundle.check_payload()?;
    let store_dir = store_path(output);
    let mut warnings = Vec::new();
    if store_dir.exists() {
        warnings.push(format!("Store path '{}' already exists, appending new chunks", store_dir.display()));
    }
    let mut manifest = bundle.manifest().clone();
    let mut converting = Vec::new();
    for image in &manifest.images {
        let Some(name) = image.filename.as_deref() else { continue };
        if opts.ignore_images.contains(&image.slotclass) {
            say(&format!("Skipping conversion of {name} as requested"));
            continue;
        }
        if is_tree_image(name) {
            return Err(Error::Other(format!(
                "Tree image '{name}' is a file-level delta already and cannot be converted to casync; skip it with --ignore-image={}",
                image.slotclass
            )));
        }
        if is_archive(name) && !can_own_files() {
            return Err(Error::Other(format!(
                "Archive image '{name}' must be unpacked with its owners: run convert as root or under fakeroot or pseudo, or skip it with --ignore-image={}",
                image.slotclass
            )));
        }
        converting.push(name.to_string());
    }
    let fs = bundle.filesystem()?;
    let work = tempfile::Builder::new()
        .prefix("rota-casync-")
        .tempdir()
        .map_err(|e| Error::Io(format!("Failed to create tmp dir: {e}")))?;
    let content = work.path().join("content");
    fs.extract_files_to(&content, &|path| !converting.iter().any(|c| c == path))?;
    let store = LocalStore::new(&store_dir);
    let mut new_chunks = 0;
    for image in manifest.images.iter_mut() {
        let Some(name) = image.filename.clone().filter(|n| converting.contains(n)) else { continue };
        let converted = |e: &dyn std::fmt::Display| Error::Other(format!("Failed to convert '{name}': {e}"));
        let (idx_name, index) = if is_archive(&name) {
            let idx_name = format!("{name}.caidx");
            say(&format!("Converting {name} to casync directory tree idx {idx_name}"));
            let tree = work.path().join("archive");
            std::fs::create_dir(&tree).map_err(|e| converted(&e))?;
            unpack_archive(&fs, &name, &tree)?;
            let flags = make.archive_flags()?;
            let index = casync::archive::make(&tree, flags, make.sizes, make.digest, Some((&store, make.compression)))
                .map_err(|e| converted(&e))?;
            let _ = std::fs::remove_dir_all(&tree);
            (idx_name, index)
        } else {
            let idx_name = format!("{name}.caibx");
            say(&format!("Converting {name} to casync blob idx {idx_name}"));
            let mut maker = Maker::new(make.sizes, make.digest, Some((&store, make.compression)));
            fs.copy_file(&name, &mut maker).map_err(|e| converted(&e))?;
            new_chunks += maker.stored_new();
            (idx_name, maker.finish().map_err(|e| converted(&e))?)
        };
        let idx_path = content.join(&idx_name);
        let mut bytes = Vec::new();
        index.write(&mut bytes)?;
        std::fs::write(&idx_path, bytes).map_err(|e| crate::error::io_error("write", &idx_path, e))?;
        image.filename = Some(idx_name);
    }
    manifest.bundle.verity = None;
    let keyring = (!opts.open.verify.keyring.is_empty()).then(|| opts.open.verify.keyring.clone());
    warnings.extend(seal(&content, &mut manifest, &opts.mksquashfs_args, &[], &signer, keyring.as_ref(), output)?);
    Ok(Converted { store: store_dir, new_chunks, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<MakeArgs> {
        parse_make_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn casync_make_options_are_read_as_casync_reads_them() {
        assert_eq!(args(&[]).unwrap(), MakeArgs::default());
        let a = args(&["--chunk-size=64000"]).unwrap();
        assert_eq!(a.sizes, ChunkSizes { min: 16000, avg: 64000, max: 256000 });
        let a = args(&["--chunk-size", "16K:64K:256K", "--digest=sha256", "--compression=xz"]).unwrap();
        assert_eq!((a.sizes, a.digest, a.compression), (ChunkSizes::default(), DigestKind::Sha256, Compression::Xz));
        let a = args(&["--with=xattrs", "--without=sec-time"]).unwrap();
        assert_eq!(a.archive_flags().unwrap(), 0xB000_0000_1000_1F01);
        assert_eq!(MakeArgs::default().archive_flags().unwrap(), 0xB000_0000_0000_1F09);
        for (bad, says) in [
            (&["--store=/x"][..], "'--store=/x' is not supported"),
            (&["--chunk-size=1:2"], "neither AVG nor MIN:AVG:MAX"),
            (&["--chunk-size=64:16:256"], "min <= avg <= max"),
            (&["--digest=md5"], "unknown digest 'md5'"),
            (&["--compression"], "'--compression' needs a value"),
            (&["--with=colour"], "unknown feature 'colour'"),
        ] {
            let e = args(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn archives_and_stores_are_named_as_rauc_names_them() {
        assert!(is_archive("root.tar.xz") && is_archive("root.tar") && is_archive("r.catar"));
        assert!(!is_archive("root.ext4") && !is_archive("root.img"));
        assert_eq!(store_path(Path::new("/o/c.raucb")), PathBuf::from("/o/c.castr"));
        assert_eq!(store_path(Path::new("/o/c")), PathBuf::from("/o/c.castr"));
    }
}
