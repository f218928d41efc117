//! Writing an image from the verified bundle into a slot: streamed once
//! (bundle → device) with SHA-256 computed on a second thread, while a third
//! thread reads each written window back from the medium and hashes it again;
//! synced, then size and both digests are checked before anything may be
//! activated.

use crate::error::{Error, Result, failed};
use rota_bundle::manifest::Compression;
use rota_bundle::squashfs::BundleFs;
// OpenSSL's SHA-256 uses the CPU's SHA instructions (about 1.7× sha2's here).
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
/// Read size for the read-back check.
const READBACK_CHUNK: usize = 4 << 20;

fn hasher(rx: Receiver<Vec<u8>>) -> String {
    let mut h = Sha256::new();
    for chunk in rx {
        h.update(&chunk);
    }
    hex::encode(h.finish())
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
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel(HASH_QUEUE);
        let worker = scope.spawn(move || hasher(rx));
        let mut tee = Tee { inner: out, tx: Some(tx), written: 0, progress };
        let r = src.copy_to(&mut tee);
        tee.tx = None;
        let digest = worker.join().expect("hash thread");
        let n = r?;
        tee.flush().map_err(|e| Error::Failed(format!("Failed writing image: {e}")))?;
        Ok((n, digest, tee.inner))
    })
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
        Some(c) => stream_decompressed(src, c, stdin, progress).map(|(stored, _)| stored),
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

/// Streams `src` into `out`, decompressing with `compression` on the way:
/// returns (bytes, sha256) of the stream as stored and of what reached `out`.
fn stream_decompressed<W: Write>(
    src: &ImageSource<'_>,
    compression: Compression,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<((u64, String), (u64, String))> {
    let bad = |e: String| Error::Failed(format!("Failed to decompress '{}': {e}", src.name()));
    let out_failed = Cell::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel(HASH_QUEUE);
        let worker = scope.spawn(move || hasher(rx));
        let mut quiet = |_| {};
        let plain =
            Tee { inner: Watched { inner: out, failed: &out_failed }, tx: Some(tx), written: 0, progress: &mut quiet };
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
        let digest = worker.join().expect("hash thread");
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
}

impl WindowWriter<'_> {
    fn send(&mut self) -> std::io::Result<()> {
        if self.pos > self.sent {
            let w = (self.sent, self.pos);
            self.sent = self.pos;
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
        let n = (&mut &*self.file).write(buf)?;
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

/// Waits until `[offset, offset+len)` of `file` has been written to the
/// device (the whole file's data where the range call is unsupported).
fn write_out(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain syscall on an open descriptor, no memory involved.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, flags) };
    if rc == 0 { Ok(()) } else { file.sync_data() }
}

/// The read-back verifier: for each window written, waits for its writeback,
/// drops its (now clean) cached pages so the bytes come from the medium, reads
/// and hashes them. Returns (bytes, sha256) of everything read back.
fn verify_windows(written: &File, reader: &File, windows: Receiver<(u64, u64)>) -> std::io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; READBACK_CHUNK];
    let mut done = 0;
    advise(reader, 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    for (start, end) in windows {
        debug_assert_eq!(start, done);
        write_out(written, start, end - start)?;
        hash_from_medium(reader, start, end, &mut buf, &mut h)?;
        done = end;
    }
    Ok((done, hex::encode(h.finish())))
}

/// Drops the (clean, already written-out) cached pages of `[start, end)` so
/// the bytes come from the medium, then reads and hashes them into `h`.
fn hash_from_medium(reader: &File, start: u64, end: u64, buf: &mut [u8], h: &mut Sha256) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    advise(reader, start, end - start, libc::POSIX_FADV_DONTNEED);
    let mut at = start;
    while at < end {
        let want = (end - at).min(buf.len() as u64) as usize;
        reader.read_exact_at(&mut buf[..want], at)?;
        h.update(&buf[..want]);
        at += want as u64;
    }
    Ok(())
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
    let mut h = Sha256::new();
    let mut buf = vec![0u8; READBACK_CHUNK.min(len as usize).max(1)];
    hash_from_medium(file, offset, offset + len, &mut buf, &mut h)?;
    Ok(hex::encode(h.finish()))
}

/// Reads `len` bytes at `offset` of `file` (the synced device `dev`) back
/// from the medium and checks them against `expected` (SHA-256). Every
/// writer that reads back (flash, boot regions, adaptive updates) reports a
/// mismatch in the same words as the image copy.
pub fn check_read_back(file: &File, dev: &Path, offset: u64, len: u64, expected: &str) -> Result<()> {
    let back = read_back_sha256(file, offset, len).map_err(|e| Error::io("Failed to read back", dev, e))?;
    if back != expected {
        return Err(read_back_mismatch(dev, offset, (len, &back), (len, expected)));
    }
    Ok(())
}

/// The error for bytes read back from `dev` (starting at `offset`) that
/// differ from what was written: (length, SHA-256) of each.
fn read_back_mismatch(dev: &Path, offset: u64, back: (u64, &str), written: (u64, &str)) -> Error {
    let at = if offset == 0 { String::new() } else { format!(" at offset {offset}") };
    Error::Failed(format!(
        "Read-back check of '{}'{at} failed: sha256 {} of {} bytes instead of {} of {} bytes",
        dev.display(),
        back.1,
        back.0,
        written.1,
        written.0
    ))
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
    if let Some(size) = expected_size
        && size != bytes
    {
        return failed(format!("Written size ({bytes}) != image size ({size})"));
    }
    if let Some(exp) = expected_sha256
        && exp != sha256
    {
        return failed(format!("Image '{}' has sha256 {sha256} but the manifest says {exp}", src.name()));
    }
    Ok(())
}

/// Copies the image `src` (manifest `size`/`sha256`, stored with
/// `compression`) to `device`: streamed once with SHA-256 alongside (and
/// decompressed on the way), each written window read back from the medium
/// and hashed by another thread while the copy goes on, then fsync and the
/// size, digest and read-back checks.
pub fn copy_image(
    src: &ImageSource<'_>,
    compression: Option<Compression>,
    device: &Path,
    expected_size: Option<u64>,
    expected_sha256: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let file = open_device(device, if compression.is_none() { expected_size.unwrap_or(0) } else { 0 })?;
    let reader = File::open(device)
        .map_err(|e| Error::Failed(format!("Failed to open '{}' for reading back: {e}", device.display())))?;
    let readback_fail = |e: std::io::Error| Error::Failed(format!("Failed to read back '{}': {e}", device.display()));
    let (streamed, back) = std::thread::scope(|scope| {
        let (tx, rx) = sync_channel(WINDOW_QUEUE);
        let (file, reader) = (&file, &reader);
        let verifier = scope.spawn(move || verify_windows(file, reader, rx));
        let mut out = std::io::BufWriter::with_capacity(1 << 20, WindowWriter { file, pos: 0, sent: 0, tx: Some(tx) });
        let streamed = match compression {
            None => stream_hashed(src, &mut out, progress).map(|(n, sha, _)| ((n, sha.clone()), (n, sha))),
            Some(c) => stream_decompressed(src, c, &mut out, progress),
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
    let ((bytes, sha256), written) = streamed.map_err(|e| match e {
        Error::Failed(m) => Error::Failed(m),
        other => Error::Failed(format!("Failed writing image: {other}")),
    })?;
    file.sync_all().map_err(|e| Error::Failed(format!("Failed to sync '{}': {e}", device.display())))?;
    drop(file);
    check_manifest(src, bytes, &sha256, expected_size, expected_sha256)?;
    if back != written {
        return Err(read_back_mismatch(device, 0, (back.0, &back.1), (written.0, &written.1)));
    }
    Ok(())
}
