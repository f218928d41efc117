//! The plan of an adaptive write: for every block of the new image, where
//! the device may already hold it. Memory stays bounded whatever the image
//! size: the digests are streamed from index files, lookups are built for
//! one slice of the digest space at a time (as many passes as the budget
//! asks for), and the plan itself (8 bytes per block) goes to a file that
//! the write pass streams in block order.

use super::{BLOCK, Digest32, INDEX_BITS, ZERO_BLOCK, sha};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes of lookup entries held at once while planning (8 per block of the
/// slice in the image, the target and the seed).
pub(super) const LOOKUP_BUDGET: u64 = 12 << 20;

/// Digests of a sequence of blocks, sorted for lookups: each key is the
/// digest's first bits above the block number; candidates are checked
/// against the full digest by hashing the block again.
pub(super) struct Lookup(Vec<u64>);

impl Lookup {
    fn key_prefix(h: &Digest32) -> u64 {
        u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) >> INDEX_BITS
    }

    fn key(h: &Digest32, block: u64) -> u64 {
        (Self::key_prefix(h) << INDEX_BITS) | block
    }

    fn from_keys(mut keys: Vec<u64>) -> Lookup {
        keys.sort_unstable();
        Lookup(keys)
    }

    /// Blocks whose digest may be `h`, in ascending order.
    fn candidates(&self, h: &Digest32) -> impl DoubleEndedIterator<Item = u64> + '_ {
        let lo = Self::key_prefix(h) << INDEX_BITS;
        let hi = lo | ((1 << INDEX_BITS) - 1);
        let start = self.0.partition_point(|k| *k < lo);
        let end = self.0.partition_point(|k| *k <= hi);
        self.0[start..end].iter().map(|k| k & ((1 << INDEX_BITS) - 1))
    }
}

/// The digests of an index file in block order, read as they are used (an
/// index holds 32 bytes per 4 KiB block: 64 MiB for an 8 GiB image).
pub(super) struct Digests(BufReader<File>);

impl Digests {
    /// Reads the index file at `path`.
    pub(super) fn open(path: &Path) -> std::io::Result<Digests> {
        Ok(Digests(BufReader::with_capacity(1 << 16, File::open(path)?)))
    }
}

impl Iterator for Digests {
    type Item = std::io::Result<Digest32>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut h = [0u8; 32];
        match self.0.read_exact(&mut h) {
            Ok(()) => Some(Ok(h)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// Writes the digest of every whole 4 KiB block of `device` to `out`.
pub(super) fn hash_device(device: &Path, out: &Path) -> Result<(), String> {
    let f = File::open(device).map_err(|e| format!("Failed to open '{}': {e}", device.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let file = File::create(out).map_err(|e| format!("Failed to create '{}': {e}", out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 16, file);
    let mut block = vec![0u8; BLOCK as usize];
    loop {
        match r.read_exact(&mut block) {
            Ok(()) => w.write_all(&sha(&block)).map_err(|e| format!("Failed to write '{}': {e}", out.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("Failed to read '{}': {e}", device.display())),
        }
    }
    w.flush().map_err(|e| format!("Failed to write '{}': {e}", out.display()))
}

/// Where a block of the new image is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Planned {
    /// Read from the bundle.
    Bundle,
    /// Zeros.
    Zero,
    /// This block of the target: written earlier in this pass, or old
    /// content not yet overwritten.
    Target(u64),
    /// This block of the seed (the booted slot of the class).
    Seed(u64),
}

const KIND_SHIFT: u32 = 62;

impl Planned {
    fn encode(self) -> u64 {
        match self {
            Planned::Bundle => 0,
            Planned::Zero => 1 << KIND_SHIFT,
            Planned::Target(p) => (2 << KIND_SHIFT) | p,
            Planned::Seed(p) => (3 << KIND_SHIFT) | p,
        }
    }

    fn decode(v: u64) -> Planned {
        let p = v & ((1 << KIND_SHIFT) - 1);
        match v >> KIND_SHIFT {
            0 => Planned::Bundle,
            1 => Planned::Zero,
            2 => Planned::Target(p),
            _ => Planned::Seed(p),
        }
    }
}

/// The index files a plan is made from.
pub(super) struct Indexes<'a> {
    /// The new image's (from the bundle).
    pub image: &'a Path,
    /// The target slot's current content.
    pub target: &'a Path,
    /// The seed slot's, if there is one.
    pub seed: Option<&'a Path>,
}

/// Which slice of the digest space `h` falls into, of `slices`.
fn slice_of(h: &Digest32, slices: u64) -> u64 {
    u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")) % slices
}

/// A lookup over the non-zero digests of slice `slice` of an index file
/// (only blocks below `limit`).
fn slice_lookup(path: &Path, slice: u64, slices: u64, limit: u64) -> std::io::Result<Lookup> {
    let mut keys = Vec::new();
    for (i, h) in Digests::open(path)?.enumerate() {
        let h = h?;
        if i as u64 >= limit {
            break;
        }
        if h != ZERO_BLOCK && slice_of(&h, slices) == slice {
            keys.push(Lookup::key(&h, i as u64));
        }
    }
    Ok(Lookup::from_keys(keys))
}

/// Plans the `n` blocks of the image into `out` (8 bytes per block) with at
/// most `budget` bytes of lookups at a time; returns which groups of
/// `per_group` blocks (the image's squashfs blocks) hold a block that must
/// come from the bundle.
pub(super) fn make(idx: &Indexes<'_>, n: u64, per_group: u64, budget: u64, out: &Path) -> std::io::Result<Vec<bool>> {
    let file = File::create(out)?;
    file.set_len(n * 8)?;
    let limit = 1u64 << INDEX_BITS;
    let entries = 3 * n;
    let slices = (entries * 8).div_ceil(budget.max(8)).max(1);
    let mut needed = vec![false; n.div_ceil(per_group) as usize];
    for slice in 0..slices {
        let image = slice_lookup(idx.image, slice, slices, limit)?;
        let target = slice_lookup(idx.target, slice, slices, limit)?;
        let seed = idx.seed.map(|p| slice_lookup(p, slice, slices, limit)).transpose()?;
        let mut batch: Vec<(u64, u64)> = Vec::new();
        for (c, h) in Digests::open(idx.image)?.enumerate() {
            let (c, h) = (c as u64, h?);
            let planned = if h == ZERO_BLOCK {
                if slice != 0 {
                    continue;
                }
                Planned::Zero
            } else if slice_of(&h, slices) != slice {
                continue;
            } else if let Some(j) = image.candidates(&h).next().filter(|j| *j < c) {
                // Written earlier in this pass.
                Planned::Target(j)
            } else if let Some(p) = target.candidates(&h).next_back().filter(|p| *p >= c) {
                // Old content not yet overwritten (p == c: already right).
                Planned::Target(p)
            } else if let Some(p) = seed.as_ref().and_then(|s| s.candidates(&h).next()) {
                Planned::Seed(p)
            } else {
                needed[(c / per_group) as usize] = true;
                Planned::Bundle
            };
            if planned != Planned::Bundle {
                batch.push((c, planned.encode()));
            }
            if batch.len() >= 4096 {
                flush(&file, &mut batch)?;
            }
        }
        flush(&file, &mut batch)?;
    }
    Ok(needed)
}

fn flush(file: &File, batch: &mut Vec<(u64, u64)>) -> std::io::Result<()> {
    for (c, v) in batch.drain(..) {
        file.write_all_at(&v.to_le_bytes(), c * 8)?;
    }
    Ok(())
}

/// The plan file read in block order.
pub(super) struct Plan(BufReader<File>);

impl Plan {
    /// Reads the plan at `path`.
    pub(super) fn open(path: &Path) -> std::io::Result<Plan> {
        Ok(Plan(BufReader::with_capacity(1 << 16, File::open(path)?)))
    }

    /// The source of the next block.
    pub(super) fn next_block(&mut self) -> std::io::Result<Planned> {
        let mut v = [0u8; 8];
        self.0.read_exact(&mut v)?;
        Ok(Planned::decode(u64::from_le_bytes(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_every_block_of_a_digest() {
        let l = Lookup::from_keys((0u8..50).map(|i| Lookup::key(&sha(&[i % 7; 16]), u64::from(i))).collect());
        let found: Vec<u64> = l.candidates(&sha(&[3u8; 16])).collect();
        assert_eq!(found, vec![3, 10, 17, 24, 31, 38, 45]);
        assert_eq!(l.candidates(&sha(b"absent")).count(), 0);
    }

    fn write_index(path: &Path, blocks: &[u8]) {
        let digests: Vec<u8> =
            blocks.iter().flat_map(|b| if *b == 0 { ZERO_BLOCK } else { sha(&[*b; 4096]) }).collect();
        std::fs::write(path, digests).unwrap();
    }

    fn read_plan(path: &Path, n: usize) -> Vec<Planned> {
        let mut p = Plan::open(path).unwrap();
        (0..n).map(|_| p.next_block().unwrap()).collect()
    }

    #[test]
    fn every_source_is_planned_and_slicing_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (image, target, seed) = (dir.path().join("i"), dir.path().join("t"), dir.path().join("s"));
        // Blocks named by their fill byte (0 = zeros).
        write_index(&image, &[1, 2, 1, 0, 9, 4, 8, 5]);
        write_index(&target, &[1, 7, 7, 7, 7, 7, 7, 4]);
        write_index(&seed, &[8, 8, 9, 3]);
        let idx = Indexes { image: &image, target: &target, seed: Some(&seed) };
        let whole = dir.path().join("whole");
        let needed = make(&idx, 8, 2, u64::MAX, &whole).unwrap();
        use Planned::*;
        let expected = [Target(0), Bundle, Target(0), Zero, Seed(2), Target(7), Seed(0), Bundle];
        assert_eq!(read_plan(&whole, 8), expected);
        assert_eq!(needed, [true, false, false, true]);
        // One lookup entry at a time: many slices, the same plan.
        let sliced = dir.path().join("sliced");
        assert_eq!(make(&idx, 8, 2, 8, &sliced).unwrap(), needed);
        assert_eq!(read_plan(&sliced, 8), expected);
        // Old content already overwritten is not planned: block 0 of the
        // target cannot serve block 5.
        write_index(&target, &[4, 7, 7, 7, 7, 7, 7, 7]);
        let idx = Indexes { image: &image, target: &target, seed: None };
        let plan = dir.path().join("p");
        make(&idx, 8, 2, u64::MAX, &plan).unwrap();
        assert_eq!(read_plan(&plan, 8)[5], Bundle);
    }

    /// The process's peak resident memory in KiB, since `reset`.
    fn peak_kib(reset: bool) -> u64 {
        if reset {
            std::fs::write("/proc/self/clear_refs", "5").unwrap();
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Planning an 8 GiB image (2 Mi blocks) against a target and a seed of
    /// the same size: the peak memory stays near the lookup budget, where
    /// whole-image lookups would take 48 MiB. Run alone (peak memory is per
    /// process) by `bench/run stream`:
    /// `cargo test --release -p rota planning_memory -- --ignored --nocapture`.
    #[test]
    #[ignore = "writes 192 MiB of index files; a measurement run alone by bench/run stream"]
    fn planning_memory_of_an_8_gib_image() {
        let n: u64 = 2 << 20;
        let dir = tempfile::tempdir_in(std::env::var_os("ROTA_PLAN_DIR").unwrap_or("/var/tmp".into())).unwrap();
        let write = |name: &str, f: &dyn Fn(u64) -> u64| {
            let path = dir.path().join(name);
            let mut w = std::io::BufWriter::new(File::create(&path).unwrap());
            for i in 0..n {
                w.write_all(&sha(&f(i).to_le_bytes())).unwrap();
            }
            w.flush().unwrap();
            path
        };
        // 5 % of the image is new; the target is an older release, the seed the booted one.
        let image = write("image", &|i| if i % 20 == 0 { i | 1 << 40 } else { i });
        let target = write("target", &|i| if i % 7 == 0 { i | 1 << 41 } else { i });
        let seed = write("seed", &|i| i);
        let idx = Indexes { image: &image, target: &target, seed: Some(&seed) };
        let before = peak_kib(true);
        let started = std::time::Instant::now();
        let needed = make(&idx, n, 32, LOOKUP_BUDGET, &dir.path().join("plan")).unwrap();
        let peak = peak_kib(false);
        println!(
            "planning {n} blocks: peak {:.1} MiB (before: {:.1} MiB), {:.1} s, {} of {} squashfs blocks needed",
            peak as f64 / 1024.0,
            before as f64 / 1024.0,
            started.elapsed().as_secs_f64(),
            needed.iter().filter(|b| **b).count(),
            needed.len()
        );
        assert!(peak < 40 * 1024, "planning peaked at {peak} KiB");
        let first = read_plan(&dir.path().join("plan"), 8);
        assert_eq!((first[0], first[1], first[7]), (Planned::Bundle, Planned::Target(1), Planned::Seed(7)));
    }
}
