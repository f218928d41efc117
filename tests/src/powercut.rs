//! Power cuts, simulated (RELIABILITY.md, campaign "power cuts").
//!
//! `rota-journal-fs` serves a device directory through FUSE and appends every
//! change it passes on to a journal: the entries that existed when it
//! started, then creations, links, removals, renames, truncations, writes
//! and the `fsync`/`fdatasync` of files and directories. [`medium_after`]
//! rebuilds from the journal what a medium could hold had power been lost
//! after any of its operations:
//!
//! - a write is on the medium once its file has been synced after it
//!   (`fsync` or `fdatasync` of that file, which is what reaches a FUSE file
//!   system: `syncfs`, `sync` and `sync_file_range` do not, so they are
//!   given no credit); before that it may be lost, kept, or kept in part
//!   (any of its 4 KiB sectors), in any order with the others;
//! - changes of names and sizes (create, link, unlink, rename, truncate) reach
//!   the medium in order, as a journaling file system commits them: all those
//!   before the last sync of any file or directory are there, of the later
//!   ones any first part.
//!
//! This is the model of ext4 with `data=ordered` and a disk with a volatile
//! write cache that honours flushes, without ext4's own shortcut of flushing
//! a file's data when it replaces another by rename.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
}

/// One journaled operation. Entries are named by the file system's inode
/// numbers (1 is the root), stable for the life of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// An entry present when the file system started (its content is in the
    /// copy of the directory taken then).
    Exists {
        /// Its inode.
        ino: u64,
        /// Its directory.
        parent: u64,
        /// Its name.
        name: Vec<u8>,
        /// What it is.
        kind: Kind,
    },
    /// A new entry (`create`, `mknod`, `mkdir`, `symlink`).
    Create {
        /// Its inode.
        ino: u64,
        /// Its directory.
        parent: u64,
        /// Its name.
        name: Vec<u8>,
        /// What it is.
        kind: Kind,
    },
    /// A second name for an inode.
    Link {
        /// The inode.
        ino: u64,
        /// The new name's directory.
        parent: u64,
        /// The new name.
        name: Vec<u8>,
    },
    /// A name removed (`unlink`, `rmdir`).
    Unlink {
        /// Its directory.
        parent: u64,
        /// The name.
        name: Vec<u8>,
    },
    /// A name moved, replacing what the new name held.
    Rename {
        /// The old name's directory.
        parent: u64,
        /// The old name.
        name: Vec<u8>,
        /// The new name's directory.
        to_parent: u64,
        /// The new name.
        to_name: Vec<u8>,
    },
    /// A file's size set.
    Truncate {
        /// The file.
        ino: u64,
        /// Its new size.
        size: u64,
    },
    /// Bytes written.
    Write {
        /// The file.
        ino: u64,
        /// Where.
        offset: u64,
        /// What.
        data: Vec<u8>,
    },
    /// A file synced (`fsync` or `fdatasync`).
    Fsync {
        /// The file.
        ino: u64,
    },
    /// A directory synced.
    FsyncDir {
        /// The directory.
        ino: u64,
    },
}

impl Op {
    /// Whether the op syncs something (a barrier for name changes).
    pub fn is_sync(&self) -> bool {
        matches!(self, Op::Fsync { .. } | Op::FsyncDir { .. })
    }

    /// Whether the op changes names or sizes (committed in order).
    fn is_metadata(&self) -> bool {
        matches!(
            self,
            Op::Create { .. } | Op::Link { .. } | Op::Unlink { .. } | Op::Rename { .. } | Op::Truncate { .. }
        )
    }
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u64(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_kind(out: &mut Vec<u8>, k: &Kind) {
    match k {
        Kind::File => out.push(0),
        Kind::Dir => out.push(1),
        Kind::Symlink(t) => {
            out.push(2);
            put_bytes(out, t);
        }
    }
}

/// The journal's bytes of `op`.
pub fn encode(op: &Op) -> Vec<u8> {
    let mut o = Vec::new();
    match op {
        Op::Exists { ino, parent, name, kind } | Op::Create { ino, parent, name, kind } => {
            o.push(if matches!(op, Op::Exists { .. }) { 1 } else { 2 });
            put_u64(&mut o, *ino);
            put_u64(&mut o, *parent);
            put_bytes(&mut o, name);
            put_kind(&mut o, kind);
        }
        Op::Link { ino, parent, name } => {
            o.push(3);
            put_u64(&mut o, *ino);
            put_u64(&mut o, *parent);
            put_bytes(&mut o, name);
        }
        Op::Unlink { parent, name } => {
            o.push(4);
            put_u64(&mut o, *parent);
            put_bytes(&mut o, name);
        }
        Op::Rename { parent, name, to_parent, to_name } => {
            o.push(5);
            put_u64(&mut o, *parent);
            put_bytes(&mut o, name);
            put_u64(&mut o, *to_parent);
            put_bytes(&mut o, to_name);
        }
        Op::Truncate { ino, size } => {
            o.push(6);
            put_u64(&mut o, *ino);
            put_u64(&mut o, *size);
        }
        Op::Write { ino, offset, data } => {
            o.push(7);
            put_u64(&mut o, *ino);
            put_u64(&mut o, *offset);
            put_bytes(&mut o, data);
        }
        Op::Fsync { ino } => {
            o.push(8);
            put_u64(&mut o, *ino);
        }
        Op::FsyncDir { ino } => {
            o.push(9);
            put_u64(&mut o, *ino);
        }
    }
    o
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (v, rest) = self.b.split_first()?;
        self.b = rest;
        Some(*v)
    }
    fn u64(&mut self) -> Option<u64> {
        let v = self.b.get(..8)?;
        self.b = &self.b[8..];
        Some(u64::from_le_bytes(v.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = usize::try_from(self.u64()?).ok()?;
        let v = self.b.get(..n)?.to_vec();
        self.b = &self.b[n..];
        Some(v)
    }
    fn kind(&mut self) -> Option<Kind> {
        Some(match self.u8()? {
            0 => Kind::File,
            1 => Kind::Dir,
            2 => Kind::Symlink(self.bytes()?),
            _ => return None,
        })
    }
    fn op(&mut self) -> Option<Op> {
        Some(match self.u8()? {
            t @ (1 | 2) => {
                let (ino, parent, name, kind) = (self.u64()?, self.u64()?, self.bytes()?, self.kind()?);
                if t == 1 { Op::Exists { ino, parent, name, kind } } else { Op::Create { ino, parent, name, kind } }
            }
            3 => Op::Link { ino: self.u64()?, parent: self.u64()?, name: self.bytes()? },
            4 => Op::Unlink { parent: self.u64()?, name: self.bytes()? },
            5 => {
                Op::Rename { parent: self.u64()?, name: self.bytes()?, to_parent: self.u64()?, to_name: self.bytes()? }
            }
            6 => Op::Truncate { ino: self.u64()?, size: self.u64()? },
            7 => Op::Write { ino: self.u64()?, offset: self.u64()?, data: self.bytes()? },
            8 => Op::Fsync { ino: self.u64()? },
            9 => Op::FsyncDir { ino: self.u64()? },
            _ => return None,
        })
    }
}

/// Appends ops to a journal file.
pub struct JournalWriter {
    out: BufWriter<fs::File>,
}

impl JournalWriter {
    /// A new, empty journal at `path`.
    pub fn create(path: &Path) -> io::Result<JournalWriter> {
        Ok(JournalWriter { out: BufWriter::with_capacity(1 << 20, fs::File::create(path)?) })
    }

    /// Appends `op`.
    pub fn append(&mut self, op: &Op) -> io::Result<()> {
        self.out.write_all(&encode(op))
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The ops of the journal at `path`, in order.
pub fn read_journal(path: &Path) -> Vec<Op> {
    let mut bytes = Vec::new();
    fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).expect("read the journal");
    let mut r = Reader { b: &bytes };
    let mut ops = Vec::new();
    while !r.b.is_empty() {
        ops.push(r.op().unwrap_or_else(|| panic!("journal {} damaged after {} ops", path.display(), ops.len())));
    }
    ops
}

/// What of the writes and name changes not yet synced the medium keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Loss {
    /// Nothing is lost: the cache was written out just before power went.
    Nothing,
    /// Everything not synced is lost.
    Unsynced,
    /// A random part, from this seed: each unsynced write is lost, kept, or
    /// kept in some of its 4 KiB sectors; a random first part of the name
    /// changes since the last sync is kept.
    Random(u64),
}

/// A power cut: after the first `at` ops of the journal, losing `loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cut {
    /// Ops that happened before power went.
    pub at: usize,
    /// What of the unsynced part the medium keeps.
    pub loss: Loss,
}

/// The cuts to try for a journal: just before and just after every sync,
/// each losing everything unsynced and nothing, the end of the journal, and
/// `random` more at random points losing a random part (from `seed`).
pub fn cut_points(ops: &[Op], random: usize, seed: u64) -> Vec<Cut> {
    let first = ops.iter().take_while(|o| matches!(o, Op::Exists { .. })).count();
    let mut cuts = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if op.is_sync() {
            for at in [i, i + 1] {
                cuts.push(Cut { at, loss: Loss::Unsynced });
                cuts.push(Cut { at, loss: Loss::Nothing });
            }
        }
    }
    cuts.push(Cut { at: first, loss: Loss::Unsynced });
    cuts.push(Cut { at: ops.len(), loss: Loss::Unsynced });
    let mut rng = crate::Rng::new(seed);
    for _ in 0..random {
        let at = first + rng.below((ops.len() - first + 1) as u64) as usize;
        cuts.push(Cut { at, loss: Loss::Random(rng.next()) });
    }
    // A sync at the start or end, or a random pick, can repeat a cut: try each once.
    let mut seen = std::collections::HashSet::new();
    cuts.retain(|c| seen.insert(*c));
    cuts
}

struct Node {
    kind: Kind,
    data: Vec<u8>,
}

/// Writes into `out` (which must not exist) what the medium holds after
/// `cut` of the journal `ops`, whose file system started on the content now
/// copied in `base`.
pub fn medium_after(ops: &[Op], base: &Path, cut: Cut, out: &Path) {
    let ops = &ops[..cut.at];
    let mut rng = crate::Rng::new(match cut.loss {
        Loss::Random(s) => s,
        _ => 0,
    });
    let last_sync = ops.iter().rposition(Op::is_sync);
    let mut synced: HashMap<u64, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Op::Fsync { ino } = op {
            synced.insert(*ino, i);
        }
    }
    let meta: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].is_metadata()).collect();
    let required = meta.iter().filter(|&&i| last_sync.is_some_and(|s| i < s)).count();
    let kept_meta = match cut.loss {
        Loss::Nothing => meta.len(),
        Loss::Unsynced => required,
        Loss::Random(_) => required + rng.below((meta.len() - required + 1) as u64) as usize,
    };
    let meta_cutoff = if kept_meta == meta.len() { usize::MAX } else { meta[kept_meta] };

    let mut nodes: HashMap<u64, Node> = HashMap::new();
    nodes.insert(1, Node { kind: Kind::Dir, data: Vec::new() });
    let mut names: BTreeMap<(u64, Vec<u8>), u64> = BTreeMap::new();
    let mut paths: HashMap<u64, PathBuf> = HashMap::from([(1, PathBuf::new())]);
    for (i, op) in ops.iter().enumerate() {
        if op.is_metadata() && i >= meta_cutoff {
            continue;
        }
        match op {
            Op::Exists { ino, parent, name, kind } => {
                let path = paths[parent].join(std::ffi::OsStr::from_bytes(name));
                let data =
                    if *kind == Kind::File { fs::read(base.join(&path)).expect("base copy") } else { Vec::new() };
                paths.insert(*ino, path);
                nodes.insert(*ino, Node { kind: kind.clone(), data });
                names.insert((*parent, name.clone()), *ino);
            }
            Op::Create { ino, parent, name, kind } => {
                nodes.insert(*ino, Node { kind: kind.clone(), data: Vec::new() });
                names.insert((*parent, name.clone()), *ino);
            }
            Op::Link { ino, parent, name } => {
                names.insert((*parent, name.clone()), *ino);
            }
            Op::Unlink { parent, name } => {
                names.remove(&(*parent, name.clone()));
            }
            Op::Rename { parent, name, to_parent, to_name } => {
                if let Some(ino) = names.remove(&(*parent, name.clone())) {
                    names.insert((*to_parent, to_name.clone()), ino);
                }
            }
            Op::Truncate { ino, size } => {
                if let Some(n) = nodes.get_mut(ino) {
                    n.data.resize(*size as usize, 0);
                }
            }
            Op::Write { ino, offset, data } => {
                let durable = synced.get(ino).is_some_and(|&s| s > i);
                let Some(n) = nodes.get_mut(ino) else { continue };
                let mut put = |from: usize, to: usize| {
                    let at = *offset as usize + from;
                    if n.data.len() < at + (to - from) {
                        n.data.resize(at + (to - from), 0);
                    }
                    n.data[at..at + (to - from)].copy_from_slice(&data[from..to]);
                };
                let choice = match (durable, cut.loss) {
                    (true, _) | (false, Loss::Nothing) => 1,
                    (false, Loss::Unsynced) => 0,
                    (false, Loss::Random(_)) => rng.below(3),
                };
                match choice {
                    0 => {}
                    1 => put(0, data.len()),
                    _ => {
                        // Torn: some of its sectors (4 KiB of the file) only.
                        let mut from = 0;
                        while from < data.len() {
                            let edge = ((*offset as usize + from) / 4096 + 1) * 4096 - *offset as usize;
                            let to = edge.min(data.len());
                            if rng.below(2) == 0 {
                                put(from, to);
                            }
                            from = to;
                        }
                    }
                }
            }
            Op::Fsync { .. } | Op::FsyncDir { .. } => {}
        }
    }
    // Whatever no name reaches is gone, as an orphan inode is after fsck.
    fs::create_dir(out).expect("the cut's directory");
    materialize(1, out, &nodes, &names);
}

fn materialize(dir: u64, at: &Path, nodes: &HashMap<u64, Node>, names: &BTreeMap<(u64, Vec<u8>), u64>) {
    for ((_, name), ino) in names.range((dir, Vec::new())..(dir + 1, Vec::new())) {
        let Some(node) = nodes.get(ino) else { continue };
        let path = at.join(std::ffi::OsStr::from_bytes(name));
        match &node.kind {
            Kind::File => fs::write(&path, &node.data).expect("write a file of the cut"),
            Kind::Dir => {
                fs::create_dir(&path).expect("make a directory of the cut");
                materialize(*ino, &path, nodes, names);
            }
            Kind::Symlink(t) => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(t), &path).expect("link of the cut")
            }
        }
    }
}

/// Runs `f` with `dir` served by `rota-journal-fs` (at `program`) on a
/// sibling directory, which `f` gets; returns the journal of what `f` did,
/// and leaves in `base` (replaced) a copy of `dir` as it was before.
pub fn record(program: &Path, dir: &Path, base: &Path, f: impl FnOnce(&Path)) -> Vec<Op> {
    use std::os::unix::fs::MetadataExt;
    let _ = fs::remove_dir_all(base);
    crate::run(std::process::Command::new("cp").arg("-a").arg(dir).arg(base)).ok();
    let live = dir.with_extension("live");
    let journal = dir.with_extension("journal");
    let _ = fs::create_dir_all(&live);
    let before = fs::metadata(&live).expect("mount point").dev();
    let server = std::process::Command::new(program)
        .arg(dir)
        .arg(&live)
        .arg(&journal)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start rota-journal-fs");
    crate::wait_mounted(&live, before, "rota-journal-fs");
    // Unmounted however `f` ends.
    struct Mounted<'a>(&'a Path);
    impl Drop for Mounted<'_> {
        fn drop(&mut self) {
            if std::process::Command::new("umount").arg(self.0).status().map(|s| !s.success()).unwrap_or(true) {
                let _ = std::process::Command::new("umount").arg("-l").arg(self.0).status();
            }
        }
    }
    let mounted = Mounted(&live);
    f(&live);
    drop(mounted);
    let out = server.wait_with_output().expect("rota-journal-fs ends");
    assert!(out.status.success(), "rota-journal-fs: {}", String::from_utf8_lossy(&out.stderr));
    let _ = fs::remove_dir(&live);
    let ops = read_journal(&journal);
    let _ = fs::remove_file(&journal);
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn ops_survive_the_journal() {
        let ops = vec![
            Op::Exists { ino: 2, parent: 1, name: n("a"), kind: Kind::Symlink(n("b")) },
            Op::Create { ino: 3, parent: 1, name: n("t"), kind: Kind::File },
            Op::Write { ino: 3, offset: 5, data: n("xyz") },
            Op::Rename { parent: 1, name: n("t"), to_parent: 1, to_name: n("s") },
            Op::Truncate { ino: 3, size: 2 },
            Op::Link { ino: 3, parent: 1, name: n("u") },
            Op::Unlink { parent: 1, name: n("u") },
            Op::Fsync { ino: 3 },
            Op::FsyncDir { ino: 1 },
        ];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let mut w = JournalWriter::create(&p).unwrap();
        for op in &ops {
            w.append(op).unwrap();
        }
        w.flush().unwrap();
        assert_eq!(read_journal(&p), ops);
    }

    /// The atomic replacement every status writer does: a temporary file,
    /// written, synced, renamed over the old one, the directory synced.
    fn replace(new: &[u8]) -> Vec<Op> {
        vec![
            Op::Exists { ino: 2, parent: 1, name: n("status"), kind: Kind::File },
            Op::Create { ino: 3, parent: 1, name: n(".tmp"), kind: Kind::File },
            Op::Write { ino: 3, offset: 0, data: new.to_vec() },
            Op::Fsync { ino: 3 },
            Op::Rename { parent: 1, name: n(".tmp"), to_parent: 1, to_name: n("status") },
            Op::FsyncDir { ino: 1 },
        ]
    }

    #[test]
    fn an_atomic_replacement_leaves_old_or_new_at_every_cut_and_a_bare_write_does_not() {
        let base = tempfile::tempdir().unwrap();
        fs::write(base.path().join("status"), b"old").unwrap();
        let ops = replace(b"new content");
        let cuts = cut_points(&ops, 200, 7);
        assert!(cuts.len() > 100);
        for cut in &cuts {
            let out = tempfile::tempdir().unwrap();
            let to = out.path().join("m");
            medium_after(&ops, base.path(), *cut, &to);
            let got = fs::read(to.join("status")).unwrap();
            assert!(got == b"old" || got == b"new content", "{cut:?}: {got:?}");
        }
        // Without the sync before the rename, some cut leaves the new name
        // on an empty or torn file: the model must see that.
        let mut unsafe_ops = ops.clone();
        unsafe_ops.remove(3);
        let torn = cut_points(&unsafe_ops, 200, 7).into_iter().any(|cut| {
            let out = tempfile::tempdir().unwrap();
            let to = out.path().join("m");
            medium_after(&unsafe_ops, base.path(), cut, &to);
            let got = fs::read(to.join("status")).unwrap();
            got != b"old" && got != b"new content"
        });
        assert!(torn, "the model keeps unsynced data through a rename");
    }
}
