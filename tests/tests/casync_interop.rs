//! casync-rs against Debian's `casync` (2+20201210): for the same bytes and
//! parameters, `casync make` writes the very index casync-rs writes, and
//! casync-rs reads casync's index back to the same chunks. Inputs: random
//! data with an insertion, a real ext4 image with files, and casync's
//! SHA-256 and chunk-size options.

use casync::chunker::ChunkSizes;
use casync::digest::DigestKind;
use casync::index::Index;
use std::fs;
use std::path::Path;
use std::process::Command;
use testkit::{WorkDir, pseudo_random, run, target_dir};

/// `casync make` of `input` with `args`: the index bytes it wrote.
fn casync_make(dir: &Path, input: &Path, args: &[&str]) -> Vec<u8> {
    let index = dir.join("out.caibx");
    let _ = fs::remove_file(&index);
    run(Command::new("casync")
        .arg("make")
        .arg(format!("--store={}", dir.join("store.castr").display()))
        .args(args)
        .arg(&index)
        .arg(input))
    .ok();
    fs::read(index).unwrap()
}

fn ours(data: &[u8], sizes: ChunkSizes, digest: DigestKind) -> Vec<u8> {
    let mut out = Vec::new();
    Index::of_blob(data, sizes, digest).write(&mut out).unwrap();
    out
}

fn same_as_casync(dir: &Path, name: &str, data: &[u8], sizes: ChunkSizes, digest: DigestKind, args: &[&str]) {
    let input = dir.join(name);
    fs::write(&input, data).unwrap();
    let theirs = casync_make(dir, &input, args);
    let mine = ours(data, sizes, digest);
    let read = Index::read(&theirs[..]).unwrap();
    assert_eq!(read, Index::of_blob(data, sizes, digest), "{name}: casync's index read back");
    assert_eq!(read.stream_size(), data.len() as u64);
    assert!(mine == theirs, "{name} {args:?}: the index files differ");
}

#[test]
fn blob_indexes_match_casync_for_random_data_and_an_insertion() {
    let work = WorkDir::new(target_dir().join("casync-interop/random"));
    let dir = work.path();
    let a = pseudo_random(3 << 20, 11);
    let d = ChunkSizes::default();
    same_as_casync(dir, "a.bin", &a, d, DigestKind::Sha512_256, &[]);
    let mut b = a[..1_000_000].to_vec();
    b.extend(pseudo_random(777, 12));
    b.extend(&a[1_000_000..]);
    same_as_casync(dir, "b.bin", &b, d, DigestKind::Sha512_256, &[]);
    same_as_casync(dir, "a256.bin", &a, d, DigestKind::Sha256, &["--digest=sha256"]);
    let small = ChunkSizes::from_avg(16384).unwrap();
    same_as_casync(dir, "small.bin", &a, small, DigestKind::Sha512_256, &["--chunk-size=16384"]);
    let odd = ChunkSizes { min: 5000, avg: 20000, max: 90000 };
    same_as_casync(dir, "odd.bin", &a, odd, DigestKind::Sha512_256, &["--chunk-size=5000:20000:90000"]);
    // Tiny inputs: below min, a single byte, nothing.
    same_as_casync(dir, "tiny.bin", &a[..1000], d, DigestKind::Sha512_256, &[]);
    same_as_casync(dir, "one.bin", &a[..1], d, DigestKind::Sha512_256, &[]);
    same_as_casync(dir, "empty.bin", &[], d, DigestKind::Sha512_256, &[]);
}

#[test]
fn blob_indexes_match_casync_for_an_ext4_image() {
    let work = WorkDir::new(target_dir().join("casync-interop/ext4"));
    let dir = work.path();
    // A filesystem image with files in it, as a rootfs slot image would be.
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("usr/lib")).unwrap();
    for i in 0..40 {
        fs::write(tree.join(format!("usr/lib/lib{i}.so")), pseudo_random(20_000 + i * 997, i as u64)).unwrap();
    }
    fs::write(tree.join("usr/lib/zeros"), vec![0u8; 300_000]).unwrap();
    let image = dir.join("rootfs.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("8M"))
    .ok();
    let data = fs::read(&image).unwrap();
    same_as_casync(dir, "rootfs.ext4", &data, ChunkSizes::default(), DigestKind::Sha512_256, &[]);
}

#[test]
fn stores_cross_over_both_ways() {
    use casync::blob;
    use casync::store::{Compression, LocalStore};
    let work = WorkDir::new(target_dir().join("casync-interop/stores"));
    let dir = work.path();
    let data = pseudo_random(2 << 20, 21);
    let input = dir.join("in.bin");
    fs::write(&input, &data).unwrap();
    // casync-rs makes the store and index, in each compression; casync extracts.
    for (name, how) in [("zstd", Compression::Zstd), ("xz", Compression::Xz), ("gzip", Compression::Gzip)] {
        let store_dir = dir.join(format!("ours-{name}.castr"));
        let store = LocalStore::new(&store_dir);
        let index = blob::make(&data[..], ChunkSizes::default(), DigestKind::Sha512_256, Some((&store, how))).unwrap();
        let index_path = dir.join(format!("ours-{name}.caibx"));
        index.write(fs::File::create(&index_path).unwrap()).unwrap();
        let out = dir.join(format!("out-{name}.bin"));
        run(Command::new("casync")
            .arg("extract")
            .arg(format!("--store={}", store_dir.display()))
            .arg(&index_path)
            .arg(&out))
        .ok();
        assert!(fs::read(&out).unwrap() == data, "casync extracted other bytes from our {name} store");
    }
    // casync makes them; casync-rs extracts.
    let theirs = casync_make(dir, &input, &[]);
    let index = Index::read(&theirs[..]).unwrap();
    let store = LocalStore::new(dir.join("store.castr"));
    let mut out = Vec::new();
    blob::extract(&index, &store, &mut out).unwrap();
    assert!(out == data, "casync-rs extracted other bytes from casync's store");
    // A chunk in casync's store replaced by another valid chunk: refused by name.
    let victim = store.chunk_path(&index.items[3].id);
    let other = store.chunk_path(&index.items[4].id);
    fs::remove_file(&victim).unwrap();
    fs::copy(&other, &victim).unwrap();
    let e = blob::extract(&index, &store, std::io::sink()).unwrap_err();
    assert!(e.to_string().contains(&format!("chunk {} is damaged", index.items[3].id)), "{e}");
    fs::remove_file(&victim).unwrap();
    let e = blob::extract(&index, &store, std::io::sink()).unwrap_err();
    assert_eq!(e.to_string(), format!("chunk {} is missing from the store", index.items[3].id));
}

#[test]
fn seeded_extraction_needs_only_the_new_chunks_as_casync_does() {
    use casync::blob;
    use casync::seed::Seed;
    use casync::store::LocalStore;
    let work = WorkDir::new(target_dir().join("casync-interop/seed"));
    let dir = work.path();
    // An old image and a new one with 5 % of its 64 KiB blocks rewritten.
    let old = pseudo_random(4 << 20, 31);
    let mut new = old.clone();
    for (n, block) in new.chunks_mut(64 << 10).enumerate().filter(|(n, _)| n % 20 == 7) {
        block[100..4200].copy_from_slice(&pseudo_random(4100, 100 + n as u64));
    }
    let old_path = dir.join("old.img");
    let new_path = dir.join("new.img");
    fs::write(&old_path, &old).unwrap();
    fs::write(&new_path, &new).unwrap();
    let new_index = Index::read(&casync_make(dir, &new_path, &[])[..]).unwrap();
    let old_index = Index::read(&casync_make(dir, &old_path, &[])[..]).unwrap();
    // The delta store: casync's chunks of the new image that the old one lacks.
    let full = LocalStore::new(dir.join("store.castr"));
    let delta_dir = dir.join("delta.castr");
    let mut delta_bytes = 0;
    for item in new_index.items.iter().filter(|i| !old_index.items.iter().any(|o| o.id == i.id)) {
        let to = LocalStore::new(&delta_dir).chunk_path(&item.id);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(full.chunk_path(&item.id), &to).unwrap();
        delta_bytes += item.size;
    }
    assert!(delta_bytes > 0 && delta_bytes < new.len() as u64 / 2, "{delta_bytes}");
    let index_path = dir.join("new.caibx");
    new_index.write(fs::File::create(&index_path).unwrap()).unwrap();
    // casync with the old image as seed ...
    let theirs = dir.join("casync-out.img");
    run(Command::new("casync")
        .arg("extract")
        .arg(format!("--store={}", delta_dir.display()))
        .arg(format!("--seed={}", old_path.display()))
        .arg(&index_path)
        .arg(&theirs))
    .ok();
    assert!(fs::read(&theirs).unwrap() == new);
    // ... and casync-rs, from the same delta store and seed.
    let seed = Seed::open(&old_path, new_index.sizes, new_index.digest_kind()).unwrap();
    let mut ours = Vec::new();
    let stats = blob::extract_seeded(&new_index, &LocalStore::new(&delta_dir), &[&seed], &mut ours).unwrap();
    assert!(ours == new);
    assert_eq!(stats.bytes_from_store, delta_bytes);
    assert_eq!(stats.bytes_from_seeds + stats.bytes_from_store, new.len() as u64);
}
