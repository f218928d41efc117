//! Flipping any bit of a bundle — payload, hash tree, signature, trailer —
//! makes it fail with a clear error, and no read ever returns a byte that
//! differs from what was signed.

use rota_bundle::bundle::{Bundle, OpenOptions};
use rota_bundle::signature::{Keyring, VerifyOptions};
use rota_bundle::source::ReadAt;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use testkit::*;

fn options() -> OpenOptions {
    OpenOptions {
        verify: VerifyOptions { keyring: Keyring::from_path(pki_file("keyring.pem")), ..VerifyOptions::default() },
        ..OpenOptions::default()
    }
}

const KNOWN_PREFIXES: [&str; 3] =
    ["Invalid bundle format: ", "signature verification failed: ", "bundle payload is corrupted"];

fn is_clear(msg: &str) -> bool {
    KNOWN_PREFIXES.iter().any(|p| msg.starts_with(p))
}

/// Reads every regular file through the lazy (per-block verified) path.
fn read_all(bundle: &Bundle) -> BTreeMap<String, Result<Vec<u8>, String>> {
    let mut out = BTreeMap::new();
    let Ok(fs) = bundle.filesystem() else { return out };
    for e in fs.entries() {
        if let rota_bundle::squashfs::EntryKind::File(_) = e.kind {
            out.insert(e.path.clone(), fs.read_file(&e.path).map_err(|e| e.to_string()));
        }
    }
    out
}

/// Builds a signed bundle of three files in `dir`; returns its path and bytes.
fn signed_bundle(dir: &Path, format: &str) -> (std::path::PathBuf, Vec<u8>) {
    let c = Content::new(dir.join("content"));
    c.image("rootfs.img", 512 * 1024, 11);
    c.image("appfs.img", 128 * 1024, 12);
    let text: String = (0..20_000).map(|i| format!("line {i} of a compressible log\n")).collect();
    c.file("notes.txt", text.as_bytes());
    c.manifest(&format!("[update]\ncompatible=Test Config\n\n[bundle]\nformat={format}\n\n[image.rootfs]\nfilename=rootfs.img\n\n[image.appfs]\nfilename=appfs.img\n"));
    let path = dir.join(format!("{format}.raucb"));
    rota_bundle(&c.dir, &path, "release").ok();
    let bytes = fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn every_flipped_bit_of_a_verity_bundle_is_rejected() {
    let t = tempfile::tempdir().unwrap();
    let (path, original) = signed_bundle(t.path(), "verity");
    let opts = options();

    let good = Bundle::open(&path.to_string_lossy(), &opts).unwrap();
    good.check_payload().unwrap();
    let good_files: BTreeMap<String, Vec<u8>> = read_all(&good).into_iter().map(|(k, v)| (k, v.unwrap())).collect();
    assert!(good_files.len() >= 4, "{:?}", good_files.keys());
    let payload = good.layout().payload_size as usize;
    let tree = good.manifest().bundle.verity.unwrap().size as usize;
    let data = payload - tree;
    let total = original.len();

    // Offsets in every region, from a fixed seed so failures reproduce.
    let rnd = pseudo_random(4096, 99);
    let pick = |i: usize, lo: usize, hi: usize| {
        lo + (u64::from_le_bytes(rnd[i * 8..i * 8 + 8].try_into().unwrap()) as usize) % (hi - lo)
    };
    let mut flips: Vec<(usize, u8, &str)> = Vec::new();
    for i in 0..120 {
        flips.push((pick(i, 0, data), (i % 8) as u8, "payload"));
    }
    for i in 120..160 {
        flips.push((pick(i, data, payload), (i % 8) as u8, "hash tree"));
    }
    for i in 160..200 {
        flips.push((pick(i, payload, total - 8), (i % 8) as u8, "signature"));
    }
    for (k, off) in (total - 8..total).enumerate() {
        flips.push((off, (k % 8) as u8, "trailer"));
        flips.push((off, 7 - (k % 8) as u8, "trailer"));
    }
    assert!(flips.len() >= 200);

    let mut by_region: BTreeMap<&str, usize> = BTreeMap::new();
    for (off, bit, region) in &flips {
        let mut bytes = original.clone();
        bytes[*off] ^= 1 << bit;
        let src: Arc<dyn ReadAt> = Arc::new(bytes);
        let err = match Bundle::open_source("tampered", src, None, &opts) {
            Err(e) => e.to_string(),
            Ok(b) => {
                // The manifest is signed: it cannot have changed.
                assert_eq!(b.manifest(), good.manifest(), "flip at {off} ({region})");
                for (name, result) in read_all(&b) {
                    if let Ok(bytes) = result {
                        assert_eq!(
                            Some(&bytes),
                            good_files.get(&name),
                            "flip at {off} ({region}) returned changed bytes of {name}"
                        );
                    }
                }
                match b.check_payload() {
                    Err(e) => e.to_string(),
                    Ok(()) => panic!("flip at {off} bit {bit} ({region}) was not detected"),
                }
            }
        };
        assert!(is_clear(&err), "flip at {off} ({region}): unclear error {err:?}");
        if *region == "payload" || *region == "hash tree" {
            assert!(err.starts_with("bundle payload is corrupted"), "flip at {off} ({region}): {err}");
        }
        *by_region.entry(region).or_default() += 1;
    }
    eprintln!("rejected flips by region: {by_region:?}");
}

#[test]
fn flipped_bits_of_a_plain_bundle_are_rejected() {
    let t = tempfile::tempdir().unwrap();
    let (_, original) = signed_bundle(t.path(), "plain");
    let rnd = pseudo_random(1024, 7);
    let tampered = t.path().join("t.raucb");
    for i in 0..40 {
        let off = (u64::from_le_bytes(rnd[i * 8..i * 8 + 8].try_into().unwrap()) as usize) % original.len();
        let mut bytes = original.clone();
        bytes[off] ^= 1 << (i % 8);
        fs::write(&tampered, &bytes).unwrap();
        match Bundle::open(&tampered.to_string_lossy(), &options()) {
            Ok(_) => panic!("flip at {off} of a plain bundle was accepted"),
            Err(e) => assert!(is_clear(&e.to_string()), "flip at {off}: {e}"),
        }
    }
}

#[test]
fn a_plain_bundle_changed_after_verification_yields_errors_not_bytes() {
    let t = tempfile::tempdir().unwrap();
    let (path, _) = signed_bundle(t.path(), "plain");
    let b = Bundle::open(&path.to_string_lossy(), &options()).unwrap();
    let before = read_all(&b);
    // Rewrite the whole payload region with other bytes after verification.
    let mut bytes = fs::read(&path).unwrap();
    let p = b.layout().payload_size as usize;
    for x in &mut bytes[4096..p - 4096] {
        *x ^= 0x5a;
    }
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes[..p], 0).unwrap();
    drop(f);
    let fsys = b.filesystem();
    match fsys {
        Err(e) => assert!(e.to_string().contains("changed after its signature was verified"), "{e}"),
        Ok(fsys) => {
            let err = fsys.read_file("rootfs.img").unwrap_err().to_string();
            assert!(err.contains("changed after its signature was verified"), "{err}");
        }
    }
    assert!(before.values().all(|r| r.is_ok()));
}
