//! rota's dm-verity trees equal what `veritysetup format --no-superblock`
//! (cryptsetup-bin) builds: same root hash, same tree bytes.

use rota_bundle::verity::{self, Geometry};
use std::fs;
use std::process::Command;
use testkit::*;

fn veritysetup(data: &std::path::Path, hash: &std::path::Path, salt: &[u8]) -> String {
    let r = run(Command::new("veritysetup")
        .args(["format", "--no-superblock", "--hash=sha256", "--data-block-size=4096", "--hash-block-size=4096"])
        .arg(format!("--salt={}", hex::encode(salt)))
        .arg(data)
        .arg(hash))
    .ok();
    let line = r.stdout.lines().find(|l| l.starts_with("Root hash:")).expect("veritysetup prints the root hash");
    line.split_whitespace().last().unwrap().to_string()
}

#[test]
fn root_hash_and_tree_match_veritysetup() {
    let t = tempfile::tempdir().unwrap();
    for (i, blocks) in [1usize, 2, 3, 1000, 40_000].into_iter().enumerate() {
        let data = pseudo_random(blocks * 4096, 100 + i as u64);
        let salt = pseudo_random(32, 200 + i as u64);
        let (dp, hp) = (t.path().join(format!("d{blocks}")), t.path().join(format!("h{blocks}")));
        fs::write(&dp, &data).unwrap();
        let expected_root = veritysetup(&dp, &hp, &salt);
        let (root, tree) = verity::build_tree(&data, &salt).unwrap();
        assert_eq!(hex::encode(root), expected_root, "root hash for {blocks} blocks");
        assert_eq!(tree, fs::read(&hp).unwrap(), "tree bytes for {blocks} blocks");
        assert_eq!(tree.len() as u64, Geometry::new(blocks as u64).tree_size());
    }
}

#[test]
fn bundle_tree_matches_veritysetup() {
    // The tree inside a real bundle, rebuilt by veritysetup from its squashfs.
    let t = tempfile::tempdir().unwrap();
    let c = Content::standard(t.path().join("c"), "verity");
    let b = t.path().join("b.raucb");
    rota_bundle(&c.dir, &b, "release").ok();
    let j: serde_json::Value = serde_json::from_str(
        &run(rota()
            .arg("info")
            .arg("--output-format=json-2")
            .arg(format!("--keyring={}", pki_file("keyring.pem").display()))
            .arg(&b))
        .ok()
        .stdout,
    )
    .unwrap();
    let size = j["bundle"]["verity-size"].as_u64().unwrap() as usize;
    let salt = hex::decode(j["bundle"]["verity-salt"].as_str().unwrap()).unwrap();
    let bytes = fs::read(&b).unwrap();
    let payload = split_bundle(&bytes).0;
    let data_len = payload - size;
    let (dp, hp) = (t.path().join("sq"), t.path().join("tree"));
    fs::write(&dp, &bytes[..data_len]).unwrap();
    let root = veritysetup(&dp, &hp, &salt);
    assert_eq!(root, j["bundle"]["verity-hash"].as_str().unwrap());
    assert_eq!(fs::read(&hp).unwrap(), &bytes[data_len..payload]);
}
