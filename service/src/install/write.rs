//! Writing an image from the verified bundle into a slot: streamed once
//! (bundle → device) while a second thread reads each written window back
//! from the medium and hashes it; synced, then size and digest are checked
//! before anything may be activated.
//!
//! One cryptographic pass over the bytes is enough. A bundle's reader
//! checks what it returns (hash tree or signature), except for the blocks
//! of an image stored as is with a manifest digest: those are passed on
//! unchecked, and the image is checked end to end instead — its read-back
//! from the medium must have the signed manifest's SHA-256. On the way the
//! stream is digested with BLAKE3 (a quarter of SHA-256's cost here): a
//! decompressed image, or one without a manifest digest, is read back and
//! compared by that; after a failed end-to-end check it tells a bad medium
//! from bytes that changed between reads.

use crate::error::{Error, Result, failed};
use rota_bundle::manifest::Compression;
use rota_bundle::squashfs::BundleFs;
// OpenSSL's SHA-256 uses the CPU's SHA instructions.
use openssl::sha::Sha256;
use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Chunks in flight between the copy and the hashing thread.
const HASH_QUEUE: usize = 32;
/// Small writes into the slot are gathered up to this size; larger ones
/// (squashfs blocks of 128 KiB and more) go to the device without a copy.
const WRITE_BUFFER: usize = 128 << 10;
/// Read size for the read-back check.
const READBACK_CHUNK: usize = 4 << 20;

/// The hash a stream or a read-back is digested with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    /// SHA-256, the manifest's digest.
    Sha256,
    /// BLAKE3 (about 3.5× SHA-256 here): for comparing the medium with the
    /// stream written to it.
    Blake3,
}

impl Algorithm {
    /// The name messages give it.
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        }
    }
}

/// A running digest of one of the [`Algorithm`]s.
enum Digester {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Digester {
    fn new(algorithm: Algorithm) -> Digester {
        match algorithm {
            Algorithm::Sha256 => Digester::Sha256(Sha256::new()),
            Algorithm::Blake3 => Digester::Blake3(Box::default()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Digester::Sha256(h) => h.update(data),
            Digester::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest in lower-case hex.
    fn finish(self) -> String {
        match self {
            Digester::Sha256(h) => hex::encode(h.finish()),
            Digester::Blake3(h) => h.finalize().to_hex().to_string(),
        }
    }
}

fn hasher(rx: Receiver<Vec<u8>>, algorithm: Algorithm) -> String {
    let mut h = Digester::new(algorithm);
    for chunk in rx {
        h.update(&chunk);
    }
    h.finish()
}

/// A `Write` that forwards everything to `inner` and a copy to the hasher.
pub struct Tee<'a, W: Write> {
    inner: W,
    tx: Option<SyncSender<Vec<u8>>>,
    written: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(tx) = &self.tx {
            let _ = tx.send(buf[..n].to_vec());
        }
        self.written += n as u64;
        (self.progress)(self.written);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Where an image's bytes come from.
#[derive(Clone, Copy)]
pub enum ImageSource<'a> {
    /// A file of the verified bundle's payload.
    Bundle(&'a BundleFs, &'a str),
    /// A local file (`write-slot`).
    File(&'a Path),
    /// A casync blob image reassembled from seeds and its chunk store.
    Casync(&'a super::casync::BlobImage),
    /// A casync directory index: its archive stream, or its tree unpacked.
    CasyncArchive(&'a super::casync::ArchiveImage),
    /// Another source whose copy stops once its installation is cancelled.
    Guarded(&'a ImageSource<'a>, &'a super::control::InstallControl),
}

impl ImageSource<'_> {
    /// The file name as shown in messages (bundle path or local path).
    pub fn name(&self) -> String {
        match self {
            ImageSource::Bundle(_, p) => p.to_string(),
            ImageSource::File(p) => p.display().to_string(),
            ImageSource::Casync(b) => b.name().to_string(),
            ImageSource::CasyncArchive(a) => a.name().to_string(),
            ImageSource::Guarded(inner, _) => inner.name(),
        }
    }

    /// The image as a local file: the file itself, or its path inside the
    /// bundle mounted at `bundle_dir`.
    pub fn local_path(&self, bundle_dir: Option<&Path>) -> Option<PathBuf> {
        match self {
            ImageSource::Bundle(_, p) => bundle_dir.map(|d| d.join(p)),
            ImageSource::File(p) => Some(p.to_path_buf()),
            ImageSource::Casync(_) | ImageSource::CasyncArchive(_) => None,
            ImageSource::Guarded(inner, _) => inner.local_path(bundle_dir),
        }
    }

    /// The installation control that guards this source, if any.
    pub fn control(&self) -> Option<&super::control::InstallControl> {
        match self {
            ImageSource::Guarded(_, control) => Some(control),
            _ => None,
        }
    }

    /// The casync directory index behind this source, if it is one.
    pub fn casync_archive(&self) -> Option<&super::casync::ArchiveImage> {
        match self {
            ImageSource::CasyncArchive(a) => Some(a),
            ImageSource::Guarded(inner, _) => inner.casync_archive(),
            _ => None,
        }
    }

    /// [`ImageSource::copy_to`] for a caller that compares the whole stream
    /// with the manifest's SHA-256 before anything is activated: a bundle's
    /// blocks stored as is then skip the payload's own check (the digest is
    /// signed too, and one pass over the bytes is enough).
    fn copy_digest_checked(&self, out: &mut dyn Write) -> Result<u64> {
        match self {
            ImageSource::Bundle(fs, p) => Ok(fs.copy_file_digest_checked(p, out)?),
            ImageSource::Guarded(inner, control) => {
                let r = inner.copy_digest_checked(&mut super::control::Guarded { out, control });
                control.check()?;
                r
            }
            other => other.copy_to(out),
        }
    }

    fn copy_to(&self, out: &mut dyn Write) -> Result<u64> {
        match self {
            ImageSource::Bundle(fs, p) => Ok(fs.copy_file(p, out)?),
            ImageSource::File(p) => {
                let mut f =
                    File::open(p).map_err(|e| Error::Failed(format!("Failed to open '{}': {e}", p.display())))?;
                std::io::copy(&mut f, out).map_err(|e| Error::Failed(format!("Failed writing image: {e}")))
            }
            ImageSource::Casync(b) => b.copy_to(out),
            ImageSource::CasyncArchive(a) => a.copy_to(out),
            ImageSource::Guarded(inner, control) => {
                let r = inner.copy_to(&mut super::control::Guarded { out, control });
                // A cancelled copy says so, whatever layer reported the refused write.
                control.check()?;
                r
            }
        }
    }
}

/// One image going into one slot, for the slot types with their own write
/// procedure (boot regions, flash, eMMC boot partitions).
pub struct Job<'a> {
    /// The slot.
    pub slot: &'a crate::config::SlotConfig,
    /// Where the image comes from.
    pub src: &'a ImageSource<'a>,
    /// The image as a local file, when it is one (`write-slot`, or the
    /// bundle mounted through the verified view): for tools that want a path.
    pub file: Option<PathBuf>,
    /// The manifest image.
    pub image: &'a rota_bundle::manifest::Image,
    /// The image's slot hooks, if any.
    pub hooks: Option<&'a super::hooks::SlotHooks>,
}

/// Streams `src` into `out`, hashing alongside; returns (bytes, sha256) of
/// the stream and `out`.
pub fn stream_hashed<W: Write>(
    src: &ImageSource<'_>,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, String, W)> {
    stream_digested(src, out, Algorithm::Sha256, false, progress)
}

/// Streams `src` into `out`, digested with `algorithm` on another thread;
/// returns (bytes, digest) of the stream and `out`. `checked_by_caller`:
/// the caller compares the whole stream with the manifest's SHA-256 before
/// anything is activated (see [`ImageSource::copy_digest_checked`]).
fn stream_digested<W: Write>(
    src: &ImageSource<'_>,
    out: W,
    algorithm: Algorithm,
    checked_by_caller: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, String, W)> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel(HASH_QUEUE);
        let worker = scope.spawn(move || hasher(rx, algorithm));
        let mut tee = Tee { inner: out, tx: Some(tx), written: 0, progress };
        let r = if checked_by_caller { src.copy_digest_checked(&mut tee) } else { src.copy_to(&mut tee) };
        tee.tx = None;
        let digest = worker.join().expect("hash thread");
        let n = r?;
        tee.flush().map_err(|e| Error::Failed(format!("Failed writing image: {e}")))?;
        Ok((n, digest, tee.inner))
    })
}

/// A sink that digests what it is given with SHA-256 and BLAKE3 at once.
struct BothDigests(Digester, Digester, u64);

impl Write for BothDigests {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        self.1.update(buf);
        self.2 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `cmd` with the image streamed to its stdin (decompressed on the way
/// when `compression` is given); returns (bytes, sha256) of the stream as
/// stored once the command exited 0. `verb` says what the command does
/// with it, for the error message.
pub fn pipe_image(
    src: &ImageSource<'_>,
    compression: Option<Compression>,
    mut cmd: Command,
    verb: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, String)> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!("running {cmd:?} with '{}' on stdin", src.name());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Failed(format!("Failed to start {program}: {e}")))?;
    let stdin = child.stdin.take().expect("piped");
    // The pipe is dropped before waiting, or the child waits for more input.
    let streamed = match compression {
        None => stream_hashed(src, stdin, progress).map(|(n, sha, _)| (n, sha)),
        Some(c) => stream_decompressed(src, c, stdin, None, progress).map(|(stored, _)| stored),
    };
    let out = child.wait_with_output().map_err(|e| Error::Failed(format!("Failed to run {program}: {e}")))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let reason = crate::tools::exit_reason(out.status);
        let detail = if why.is_empty() { reason } else { format!("{reason}: {why}") };
        return failed(format!("Failed to {verb} '{}': {program} failed: {detail}", src.name()));
    }
    streamed
}

/// The decoders behind [`Decompressor`].
enum Codec<W: Write> {
    Gzip(flate2::write::MultiGzDecoder<W>),
    Xz(liblzma::write::XzDecoder<W>),
    Zstd(zstd::stream::write::Decoder<'static, W>),
}

/// A push-mode decompressor in front of the slot writer; remembers the last
/// error its input caused (a corrupt stream, or the writer behind it failing).
struct Decompressor<W: Write> {
    codec: Codec<W>,
    error: Option<String>,
}

impl<W: Write> Decompressor<W> {
    fn new(c: Compression, out: W) -> std::io::Result<Self> {
        let codec = match c {
            Compression::Gzip => Codec::Gzip(flate2::write::MultiGzDecoder::new(out)),
            Compression::Xz => Codec::Xz(liblzma::write::XzDecoder::new_multi_decoder(out)),
            Compression::Zstd => Codec::Zstd(zstd::stream::write::Decoder::new(out)?),
        };
        Ok(Decompressor { codec, error: None })
    }

    /// Writes out everything still buffered after the last input byte and
    /// returns the writer behind.
    fn finish(self) -> std::io::Result<W> {
        match self.codec {
            Codec::Gzip(d) => d.finish(),
            Codec::Xz(d) => d.finish(),
            Codec::Zstd(mut d) => d.flush().map(|_| d.into_inner()),
        }
    }
}

impl<W: Write> Write for Decompressor<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = match &mut self.codec {
            Codec::Gzip(d) => d.write(buf),
            Codec::Xz(d) => d.write(buf),
            Codec::Zstd(d) => d.write(buf),
        };
        if let Err(e) = &r {
            self.error = Some(e.to_string());
        }
        r
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.codec {
            Codec::Gzip(d) => d.flush(),
            Codec::Xz(d) => d.flush(),
            Codec::Zstd(d) => d.flush(),
        }
    }
}

/// A writer that notes whether writing to it ever failed.
struct Watched<'c, W: Write> {
    inner: W,
    failed: &'c Cell<bool>,
}

impl<W: Write> Write for Watched<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        if r.is_err() {
            self.failed.set(true);
        }
        r
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Bytes of a stream and its digest, if one was taken.
type Streamed = (u64, Option<String>);

/// Streams `src` into `out`, decompressing with `compression` on the way:
/// returns (bytes, sha256) of the stream as stored, and (bytes, digest with
/// `plain_digest`, if any) of what reached `out`.
fn stream_decompressed<W: Write>(
    src: &ImageSource<'_>,
    compression: Compression,
    out: W,
    plain_digest: Option<Algorithm>,
    progress: &mut dyn FnMut(u64),
) -> Result<((u64, String), Streamed)> {
    let bad = |e: String| Error::Failed(format!("Failed to decompress '{}': {e}", src.name()));
    let out_failed = Cell::new(false);
    std::thread::scope(|scope| {
        let (tx, worker) = match plain_digest {
            Some(algorithm) => {
                let (tx, rx) = sync_channel(HASH_QUEUE);
                (Some(tx), Some(scope.spawn(move || hasher(rx, algorithm))))
            }
            None => (None, None),
        };
        let mut quiet = |_| {};
        let plain = Tee { inner: Watched { inner: out, failed: &out_failed }, tx, written: 0, progress: &mut quiet };
        let mut d = Decompressor::new(compression, plain).map_err(|e| bad(e.to_string()))?;
        let streamed = match stream_hashed(src, &mut d, progress) {
            Ok((n, sha, _)) => (n, sha),
            // Failing input to a decoder whose output side did not fail: a corrupt stream.
            Err(e) => return Err(d.error.take().filter(|_| !out_failed.get()).map_or(e, bad)),
        };
        let mut plain = d.finish().map_err(|e| match out_failed.get() {
            true => Error::Failed(format!("Failed writing image: {e}")),
            false => bad(e.to_string()),
        })?;
        plain.tx = None;
        let digest = worker.map(|w| w.join().expect("hash thread"));
        Ok((streamed, (plain.written, digest)))
    })
}

/// Opens a slot device for writing: block devices exclusively and size-checked.
pub fn open_device(device: &Path, image_size: u64) -> Result<File> {
    open_device_for(device, image_size, false)
}

/// [`open_device`] for reading too (an adaptive update takes blocks from
/// the target itself).
pub fn open_device_rw(device: &Path, image_size: u64) -> Result<File> {
    open_device_for(device, image_size, true)
}

fn open_device_for(device: &Path, image_size: u64, read: bool) -> Result<File> {
    let meta = std::fs::metadata(device)
        .map_err(|e| Error::Failed(format!("Destination device '{}' not found: {e}", device.display())))?;
    let block = meta.file_type().is_block_device();
    let mut opts = OpenOptions::new();
    opts.write(true).read(read);
    if block {
        opts.custom_flags(libc::O_EXCL);
    }
    let mut f = opts.open(device).map_err(|e| Error::Failed(format!("Failed to open '{}': {e}", device.display())))?;
    if block {
        let size = f
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::Failed(format!("Failed to size '{}': {e}", device.display())))?;
        f.seek(SeekFrom::Start(0)).map_err(|e| Error::Failed(format!("Failed to seek '{}': {e}", device.display())))?;
        if size < image_size {
            return failed(format!("Slot ({size} bytes) is too small for image ({image_size} bytes)."));
        }
    }
    Ok(f)
}

/// Bytes per read-back window: once a window is written, the verifier thread
/// waits for its writeback, drops its cached pages and reads it back.
const WINDOW: u64 = 16 << 20;
/// Windows queued for the verifier before the writer waits (bounds how far
/// the writer runs ahead of the read-back, not memory).
const WINDOW_QUEUE: usize = 8;

/// A `Write` into the slot that hands each completed window of the output
/// to the read-back verifier.
struct WindowWriter<'a> {
    file: &'a File,
    pos: u64,
    sent: u64,
    tx: Option<SyncSender<(u64, u64)>>,
    /// The slot's path and the first write it refused, said once for
    /// whichever layer (squashfs copy, decompressor, buffer) meets it.
    device: &'a Path,
    refused: &'a std::cell::RefCell<Option<String>>,
}

impl WindowWriter<'_> {
    fn send(&mut self) -> std::io::Result<()> {
        if self.pos > self.sent {
            let w = (self.sent, self.pos);
            self.sent = self.pos;
            // The window's writeback starts now, so the medium is kept busy
            // while the verifier still reads earlier windows back.
            start_write_out(self.file, w.0, w.1 - w.0);
            if let Some(tx) = &self.tx
                && tx.send(w).is_err()
            {
                return Err(std::io::Error::other("read-back check stopped"));
            }
        }
        Ok(())
    }

    /// Hands over the last, partial window and ends the verifier's input.
    fn finish(mut self) -> std::io::Result<()> {
        let r = self.send();
        self.tx = None;
        r
    }
}

impl Write for WindowWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = (&mut &*self.file).write(buf).inspect_err(|e| {
            let mut refused = self.refused.borrow_mut();
            if refused.is_none() && e.kind() != std::io::ErrorKind::Interrupted {
                *refused = Some(format!("Failed to write '{}' at byte {}: {e}", self.device.display(), self.pos));
            }
        })?;
        self.pos += n as u64;
        if self.pos - self.sent >= WINDOW {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn advise(file: &File, offset: u64, len: u64, advice: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor; advice only, no memory involved.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), offset as libc::off_t, len as libc::off_t, advice) };
    if rc != 0 {
        tracing::debug!("posix_fadvise({advice}): error {rc}");
    }
}

/// `sync_file_range(2)` of `[offset, offset+len)` of `file` with `flags`.
fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor, no memory involved.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, flags) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Starts the writeback of `[offset, offset+len)` of `file` without waiting
/// for it (a hint: [`write_out`] waits for it later, whatever happened here).
fn start_write_out(file: &File, offset: u64, len: u64) {
    if let Err(e) = sync_range(file, offset, len, libc::SYNC_FILE_RANGE_WRITE) {
        tracing::debug!("sync_file_range(WRITE): {e}");
    }
}

/// Waits until `[offset, offset+len)` of `file` has been written to the
/// device (the whole file's data where the range call is unsupported).
fn write_out(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    sync_range(file, offset, len, flags).or_else(|_| file.sync_data())
}

/// Read-back buffers in flight between the thread reading the medium and
/// the one digesting (so the medium is read while the last piece is hashed).
const READ_BUFFERS: usize = 2;

/// The read-back verifier: for each window written, waits for its writeback,
/// then reads the window back from the medium (on a second thread) and
/// digests it with `algorithm`. Returns (bytes, digest) of everything read
/// back.
fn verify_windows(
    written: &File,
    reader: &File,
    windows: Receiver<(u64, u64)>,
    algorithm: Algorithm,
) -> std::io::Result<(u64, String)> {
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = sync_channel::<(ReadBuf, std::ops::Range<usize>)>(READ_BUFFERS);
        let (free_tx, free_rx) = sync_channel::<ReadBuf>(READ_BUFFERS);
        for _ in 0..READ_BUFFERS {
            free_tx.send(ReadBuf::new()).expect("room for every buffer");
        }
        let reading = scope.spawn(move || -> std::io::Result<u64> {
            let mut medium = Medium::new(reader);
            let mut done = 0;
            for (start, end) in windows {
                debug_assert_eq!(start, done);
                write_out(written, start, end - start)?;
                let mut pos = start;
                while pos < end {
                    let mut buf = free_rx.recv().expect("the digesting side outlives this thread");
                    let (range, next) = medium.read(pos, end, &mut buf)?;
                    full_tx.send((buf, range)).expect("the digesting side outlives this thread");
                    pos = next;
                }
                done = end;
            }
            Ok(done)
        });
        let mut h = Digester::new(algorithm);
        for (buf, range) in full_rx {
            h.update(buf.get(range));
            // Room for it: there are only READ_BUFFERS buffers.
            let _ = free_tx.send(buf);
        }
        let done = reading.join().expect("read-back thread")?;
        Ok((done, h.finish()))
    })
}

/// Alignment of direct reads (offsets, lengths and the buffer): the largest
/// logical block size of common media.
const DIRECT_ALIGN: usize = 4096;

/// A buffer of `READBACK_CHUNK` bytes at an address direct reads accept.
struct ReadBuf {
    mem: Vec<u8>,
    skew: usize,
}

impl ReadBuf {
    fn new() -> ReadBuf {
        let mem = vec![0; READBACK_CHUNK + DIRECT_ALIGN];
        let skew = mem.as_ptr().align_offset(DIRECT_ALIGN);
        ReadBuf { mem, skew }
    }

    fn slice(&mut self) -> &mut [u8] {
        &mut self.mem[self.skew..self.skew + READBACK_CHUNK]
    }

    fn get(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.mem[self.skew + range.start..self.skew + range.end]
    }
}

/// Reads synced bytes back from the medium, not from the page cache: with
/// `O_DIRECT` where the file system allows it (no copy through the cache),
/// else by dropping the (clean) cached pages before reading them.
struct Medium<'f> {
    cached: &'f File,
    direct: Option<File>,
    /// A direct read has succeeded: a refusal from now on is an error.
    proven: bool,
}

impl<'f> Medium<'f> {
    fn new(file: &'f File) -> Medium<'f> {
        use std::os::fd::AsRawFd;
        // A second descriptor of the same open file, with O_DIRECT.
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let mut medium = Medium { cached: file, direct: None, proven: false };
        match direct {
            Ok(d) => medium.direct = Some(d),
            Err(e) => medium.use_page_cache(format_args!("no O_DIRECT ({e})")),
        }
        medium
    }

    /// Reads from now on through the page cache, dropping pages first.
    fn use_page_cache(&mut self, why: std::fmt::Arguments) {
        tracing::debug!("reading back through the page cache: {why}");
        self.direct = None;
        advise(self.cached, 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }

    /// Reads the bytes from `pos` on (up to `end` at most) into `buf`:
    /// returns where in `buf` they lie and the position after them.
    fn read(&mut self, pos: u64, end: u64, buf: &mut ReadBuf) -> std::io::Result<(std::ops::Range<usize>, u64)> {
        if self.direct.is_some() {
            match self.read_direct(pos, end, buf) {
                // Not every file system takes direct reads; nothing has been
                // read yet when the first one is refused.
                Err(DirectError::Refused(e)) => self.use_page_cache(format_args!("direct read refused ({e})")),
                Err(DirectError::Io(e)) => return Err(e),
                Ok(r) => return Ok(r),
            }
        }
        self.read_cached(pos, end, buf)
    }

    fn read_direct(
        &mut self,
        pos: u64,
        end: u64,
        buf: &mut ReadBuf,
    ) -> std::result::Result<(std::ops::Range<usize>, u64), DirectError> {
        use std::os::unix::fs::FileExt;
        let file = self.direct.as_ref().expect("direct descriptor");
        let base = pos - pos % DIRECT_ALIGN as u64;
        let want = ((end - base) as usize).next_multiple_of(DIRECT_ALIGN).min(READBACK_CHUNK);
        let n = match file.read_at(&mut buf.slice()[..want], base) {
            Ok(n) => n,
            Err(e) if !self.proven && e.raw_os_error() == Some(libc::EINVAL) => return Err(DirectError::Refused(e)),
            Err(e) => return Err(DirectError::Io(e)),
        };
        self.proven = true;
        // Reads stop short only at the end of the file, which `end` never passes.
        let got = base + n as u64;
        if got <= pos {
            return Err(DirectError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the medium ends at {got}, before {end}"),
            )));
        }
        let upto = got.min(end);
        Ok(((pos - base) as usize..(upto - base) as usize, upto))
    }

    fn read_cached(&mut self, pos: u64, end: u64, buf: &mut ReadBuf) -> std::io::Result<(std::ops::Range<usize>, u64)> {
        use std::os::unix::fs::FileExt;
        let want = (end - pos).min(READBACK_CHUNK as u64) as usize;
        advise(self.cached, pos, want as u64, libc::POSIX_FADV_DONTNEED);
        self.cached.read_exact_at(&mut buf.slice()[..want], pos)?;
        Ok((0..want, pos + want as u64))
    }

    /// Reads `[start, end)` back and digests it into `h`, on this thread.
    fn digest(&mut self, start: u64, end: u64, h: &mut Digester) -> std::io::Result<()> {
        let mut buf = ReadBuf::new();
        let mut pos = start;
        while pos < end {
            let (range, next) = self.read(pos, end, &mut buf)?;
            h.update(buf.get(range));
            pos = next;
        }
        Ok(())
    }
}

/// Why a direct read failed: refused (use the page cache) or a real error.
enum DirectError {
    Refused(std::io::Error),
    Io(std::io::Error),
}

/// Zeroes `[offset, offset+len)` of `file` (the device `dev`, for messages)
/// in 1 MiB writes.
pub fn zero_range(file: &File, dev: &Path, offset: u64, len: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done).map_err(|e| Error::io("Failed to clear", dev, e))?;
        done += n as u64;
    }
    Ok(())
}

/// SHA-256 of `len` bytes at `offset` of `file` as the medium holds them;
/// the range must have been synced.
pub fn read_back_sha256(file: &File, offset: u64, len: u64) -> std::io::Result<String> {
    let mut h = Digester::new(Algorithm::Sha256);
    Medium::new(file).digest(offset, offset + len, &mut h)?;
    Ok(h.finish())
}

/// Reads `len` bytes at `offset` of `file` (the synced device `dev`) back
/// from the medium and checks them against `expected` (SHA-256). Every
/// writer that reads back (flash, boot regions, adaptive updates) reports a
/// mismatch in the same words as the image copy.
pub fn check_read_back(file: &File, dev: &Path, offset: u64, len: u64, expected: &str) -> Result<()> {
    let back = read_back_sha256(file, offset, len).map_err(|e| Error::io("Failed to read back", dev, e))?;
    if back != expected {
        return Err(read_back_mismatch(dev, offset, Algorithm::Sha256, (len, &back), (len, expected)));
    }
    Ok(())
}

/// The error for bytes read back from `dev` (starting at `offset`) that
/// differ from what was written: (length, digest with `algorithm`) of each.
fn read_back_mismatch(dev: &Path, offset: u64, algorithm: Algorithm, back: (u64, &str), written: (u64, &str)) -> Error {
    let at = if offset == 0 { String::new() } else { format!(" at offset {offset}") };
    Error::Failed(format!(
        "Read-back check of '{}'{at} failed: {} {} of {} bytes instead of {} of {} bytes",
        dev.display(),
        algorithm.name(),
        back.1,
        back.0,
        written.1,
        written.0
    ))
}

/// Checks a stream of `bytes` against the manifest's `size` of the image.
fn check_size(bytes: u64, expected_size: Option<u64>) -> Result<()> {
    match expected_size {
        Some(size) if size != bytes => failed(format!("Written size ({bytes}) != image size ({size})")),
        _ => Ok(()),
    }
}

/// Checks a stream of `bytes` with digest `sha256`, read from `src`, against
/// the manifest's `size` and `sha256` of the image (each when given).
pub fn check_manifest(
    src: &ImageSource<'_>,
    bytes: u64,
    sha256: &str,
    expected_size: Option<u64>,
    expected_sha256: Option<&str>,
) -> Result<()> {
    check_size(bytes, expected_size)?;
    if let Some(exp) = expected_sha256
        && exp != sha256
    {
        return failed(format!("Image '{}' has sha256 {sha256} but the manifest says {exp}", src.name()));
    }
    Ok(())
}

/// Copies the image `src` (manifest `size`/`sha256`, stored with
/// `compression`) to `device`: streamed once (decompressed on the way), each
/// written window read back from the medium and digested by another thread
/// while the copy goes on, then fsync and the size and digest checks.
///
/// The stream is digested with BLAKE3 on the way. An image stored as is
/// with a manifest digest is checked end to end: its read-back must have the
/// manifest's SHA-256. Should it not, the image is read from the bundle once
/// more, verified, to tell a wrong image (the manifest's message), bytes that
/// changed between reads (their BLAKE3 differs) and a medium that did not
/// keep what it was given (the read-back message) apart. Any other image's
/// read-back is compared with the stream's BLAKE3.
///
/// Bytes that changed between reads (a cache on the way handed out bad ones
/// and the verified second read went past it) do not fail the install: the
/// image is written once more, every block verified as it is read.
pub fn copy_image(
    src: &ImageSource<'_>,
    compression: Option<Compression>,
    device: &Path,
    expected_size: Option<u64>,
    expected_sha256: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    match copy_image_once(src, compression, device, expected_size, expected_sha256, true, progress)? {
        Copied::Done => Ok(()),
        Copied::ChangedBetweenReads => {
            tracing::warn!(
                "Image '{}' as first read did not have its signed sha256 (a second read had): writing it again, verified",
                src.name()
            );
            match copy_image_once(src, compression, device, expected_size, expected_sha256, false, progress)? {
                Copied::Done => Ok(()),
                Copied::ChangedBetweenReads => failed(format!(
                    "bundle payload is corrupted: image '{}' as first read does not have its signed sha256 (a second read has)",
                    src.name()
                )),
            }
        }
    }
}

/// How one pass of [`copy_image`] ended, when it did not fail.
enum Copied {
    Done,
    /// The image as streamed was not the signed one, a verified read is.
    ChangedBetweenReads,
}

/// One pass of [`copy_image`]; `trust_end_to_end`: the stream may skip the
/// bundle's block checks, as the image's SHA-256 is compared end to end.
fn copy_image_once(
    src: &ImageSource<'_>,
    compression: Option<Compression>,
    device: &Path,
    expected_size: Option<u64>,
    expected_sha256: Option<&str>,
    trust_end_to_end: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<Copied> {
    let file = open_device(device, if compression.is_none() { expected_size.unwrap_or(0) } else { 0 })?;
    let reader = File::open(device)
        .map_err(|e| Error::Failed(format!("Failed to open '{}' for reading back: {e}", device.display())))?;
    let readback_fail = |e: std::io::Error| Error::Failed(format!("Failed to read back '{}': {e}", device.display()));
    let end_to_end = compression.is_none() && expected_sha256.is_some();
    let back_algorithm = if end_to_end { Algorithm::Sha256 } else { Algorithm::Blake3 };
    let refused = std::cell::RefCell::new(None);
    let (streamed, back) = std::thread::scope(|scope| {
        let (tx, rx) = sync_channel(WINDOW_QUEUE);
        let (file, reader) = (&file, &reader);
        let verifier = scope.spawn(move || verify_windows(file, reader, rx, back_algorithm));
        let window = WindowWriter { file, pos: 0, sent: 0, tx: Some(tx), device, refused: &refused };
        let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, window);
        let streamed = match compression {
            None => stream_digested(src, &mut out, Algorithm::Blake3, end_to_end && trust_end_to_end, progress)
                .map(|(n, d, _)| (None, (n, Some(d)))),
            Some(c) => stream_decompressed(src, c, &mut out, Some(Algorithm::Blake3), progress)
                .map(|(stored, written)| (Some(stored), written)),
        }
        .and_then(|r| {
            let w = out.into_inner().map_err(|e| Error::Failed(format!("Failed writing image: {}", e.error())))?;
            w.finish().map_err(|e| Error::Failed(format!("Failed writing image: {e}")))?;
            Ok(r)
        });
        (streamed, verifier.join().expect("read-back thread"))
    });
    // A failed read-back stops the writer too; its own error is the cause.
    let back = back.map_err(readback_fail)?;
    let (stored, (bytes, digest)) = streamed.map_err(|e| match (refused.take(), e) {
        (Some(refused), _) => Error::Failed(format!("Failed writing image: {refused}")),
        (None, Error::Failed(m)) => Error::Failed(m),
        (None, other) => Error::Failed(format!("Failed writing image: {other}")),
    })?;
    let written = digest.expect("the stream is digested");
    file.sync_all().map_err(|e| Error::Failed(format!("Failed to sync '{}': {e}", device.display())))?;
    drop(file);
    match &stored {
        Some((stored_bytes, stored_sha)) => {
            check_manifest(src, *stored_bytes, stored_sha, expected_size, expected_sha256)?
        }
        None => check_size(bytes, expected_size)?,
    }
    if !end_to_end {
        if back != (bytes, written.clone()) {
            return Err(read_back_mismatch(device, 0, back_algorithm, (back.0, &back.1), (bytes, &written)));
        }
        return Ok(Copied::Done);
    }
    let expected = expected_sha256.expect("end-to-end check has a digest");
    if back == (bytes, expected.to_string()) {
        return Ok(Copied::Done);
    }
    // The image, the bytes read from the bundle or the medium: which is
    // wrong? A second, verified read of the image tells (on failure only).
    let mut both = BothDigests(Digester::new(Algorithm::Sha256), Digester::new(Algorithm::Blake3), 0);
    src.copy_to(&mut both)?;
    let BothDigests(sha, again, n) = both;
    check_manifest(src, n, &sha.finish(), expected_size, expected_sha256)?;
    if again.finish() != written {
        return Ok(Copied::ChangedBetweenReads);
    }
    Err(read_back_mismatch(device, 0, back_algorithm, (back.0, &back.1), (bytes, expected)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(algorithm: Algorithm, data: &[u8]) -> String {
        let mut h = Digester::new(algorithm);
        h.update(data);
        h.finish()
    }

    #[test]
    fn digesters_give_the_published_digests() {
        assert_eq!(
            digest_of(Algorithm::Sha256, b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // BLAKE3's test vector for the empty input.
        assert_eq!(
            digest_of(Algorithm::Blake3, b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }
}
