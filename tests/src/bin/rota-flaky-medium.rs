//! A slot medium that misbehaves on purpose, for read-back and write-fault
//! tests: a one-file FUSE file system mounted on a regular file (the slot's
//! device path), keeping what is written in a backing file. This is a mock
//! of bad flash and full or failing disks, which this machine does not have.
//!
//! Usage: `rota-flaky-medium BACKING MOUNTFILE [FAULT ...]` (foreground; ends
//! when MOUNTFILE is unmounted). With no FAULT the medium is honest. Faults:
//!
//! - `decay@N`: once the byte at offset N has been written, every later read
//!   returns it with its lowest bit flipped, as a block that decayed or was
//!   misdirected on the medium would;
//! - `eio@N`: every write that covers byte N fails with EIO (a bad block);
//! - `enospc@N`: the medium holds N bytes: a write that crosses N is cut
//!   short at N, one that starts at or after N fails with ENOSPC;
//! - `short@N`: the first write that covers byte N is taken only up to N,
//!   or only its first half when it begins at N (a short write, which a
//!   writer must finish);
//! - `read-eio@N`: once byte N has been written, reads that cover it fail
//!   with EIO;
//! - `fsync-eio`: every fsync fails with EIO.
//!
//! Reads, writes and injected faults are counted on stderr at exit, so a
//! test can tell they reached the medium and that the fault happened.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, MountOption, OpenFlags,
    ReplyAttr, ReplyData, ReplyEmpty, ReplyOpen, ReplyWrite, Request, WriteFlags,
};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the medium does wrong.
#[derive(Default)]
struct Faults {
    decay_at: Option<u64>,
    eio_at: Option<u64>,
    full_at: Option<u64>,
    short_at: Option<u64>,
    read_eio_at: Option<u64>,
    fsync_eio: bool,
}

impl Faults {
    fn parse(args: &[String]) -> Result<Faults, String> {
        let mut f = Faults::default();
        for a in args {
            if a == "fsync-eio" {
                f.fsync_eio = true;
                continue;
            }
            let (kind, at) = a.split_once('@').ok_or_else(|| format!("unknown fault '{a}'"))?;
            let at: u64 = at.parse().map_err(|_| format!("bad offset in '{a}'"))?;
            let slot = match kind {
                "decay" => &mut f.decay_at,
                "eio" => &mut f.eio_at,
                "enospc" => &mut f.full_at,
                "short" => &mut f.short_at,
                "read-eio" => &mut f.read_eio_at,
                _ => return Err(format!("unknown fault '{a}'")),
            };
            *slot = Some(at);
        }
        Ok(f)
    }
}

struct Medium {
    backing: File,
    faults: Faults,
    /// The byte at `decay_at` has been written: reads of it lie from now on.
    decayed: AtomicBool,
    /// The byte at `read_eio_at` has been written: reads of it fail from now on.
    unreadable: AtomicBool,
    /// The short write has happened.
    cut_short: AtomicBool,
    /// Reads and writes served, and faults injected.
    counts: Arc<[AtomicU64; 3]>,
}

impl Medium {
    fn injected(&self) {
        self.counts[2].fetch_add(1, Ordering::Relaxed);
    }
}

impl Medium {
    fn attr(&self) -> FileAttr {
        let size = self.backing.metadata().map(|m| m.len()).unwrap_or(0);
        FileAttr {
            ino: INodeNo(1),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for Medium {
    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo(1) {
            reply.attr(&Duration::ZERO, &self.attr());
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Some(size) = size
            && let Err(e) = self.backing.set_len(size)
        {
            return reply.error(Errno::from(e));
        }
        reply.attr(&Duration::ZERO, &self.attr());
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel caches the file as usual (writes go through at once):
        // a read-back served from that cache would miss the decay.
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.counts[0].fetch_add(1, Ordering::Relaxed);
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match self.backing.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return reply.error(Errno::from(e)),
            }
        }
        buf.truncate(got);
        let range = offset..offset + got as u64;
        let covers = |at: Option<u64>| at.filter(|a| range.contains(a));
        if self.unreadable.load(Ordering::Relaxed) && covers(self.faults.read_eio_at).is_some() {
            self.injected();
            return reply.error(Errno::EIO);
        }
        if let Some(at) = covers(self.faults.decay_at)
            && self.decayed.load(Ordering::Relaxed)
        {
            self.injected();
            buf[(at - offset) as usize] ^= 1;
        }
        reply.data(&buf);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.counts[1].fetch_add(1, Ordering::Relaxed);
        let range = offset..offset + data.len() as u64;
        let covers = |at: Option<u64>| at.filter(|a| range.contains(a));
        if covers(self.faults.eio_at).is_some() {
            self.injected();
            return reply.error(Errno::EIO);
        }
        let mut take = data.len();
        if let Some(full) = self.faults.full_at {
            if offset >= full {
                self.injected();
                return reply.error(Errno::ENOSPC);
            }
            take = take.min((full - offset) as usize);
        }
        if let Some(at) = covers(self.faults.short_at)
            && take > 1
            && !self.cut_short.swap(true, Ordering::Relaxed)
        {
            self.injected();
            let cut = if at > offset { (at - offset) as usize } else { take / 2 };
            take = take.min(cut);
        }
        if let Err(e) = self.backing.write_all_at(&data[..take], offset) {
            return reply.error(Errno::from(e));
        }
        let written = offset..offset + take as u64;
        if self.faults.decay_at.is_some_and(|a| written.contains(&a)) {
            self.decayed.store(true, Ordering::Relaxed);
        }
        if self.faults.read_eio_at.is_some_and(|a| written.contains(&a)) {
            self.unreadable.store(true, Ordering::Relaxed);
        }
        reply.written(take as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if self.faults.fsync_eio {
            self.injected();
            return reply.error(Errno::EIO);
        }
        match self.backing.sync_data() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(Errno::from(e)),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: rota-flaky-medium BACKING MOUNTFILE [FAULT ...]");
        std::process::exit(2)
    };
    let [_, backing, mountfile, faults @ ..] = &args[..] else { usage() };
    let faults = Faults::parse(faults).unwrap_or_else(|e| {
        eprintln!("{e}");
        usage()
    });
    let backing = File::options().read(true).write(true).open(backing).expect("open the backing file");
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let medium = Medium {
        backing,
        faults,
        decayed: AtomicBool::new(false),
        unreadable: AtomicBool::new(false),
        cut_short: AtomicBool::new(false),
        counts: counts.clone(),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![MountOption::FSName("rota-flaky-medium".into()), MountOption::DefaultPermissions];
    config.n_threads = Some(2);
    // Until a test unmounts the file.
    fuser::mount(medium, mountfile, &config).expect("serve the medium");
    let [reads, writes, faults] = counts.as_ref().each_ref().map(|c| c.load(Ordering::Relaxed));
    eprintln!("reads={reads} writes={writes} faults={faults}");
}
