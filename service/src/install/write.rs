//! Writing an image from the verified bundle into a slot: streamed once
//! (bundle → device) with SHA-256 computed on a second thread, synced, its
//! size and digest checked against the manifest, then read back from the
//! device and hashed again before anything may be activated.

use crate::error::{Error, Result, failed};
use rota_bundle::squashfs::BundleFs;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
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
    hex::encode(h.finalize())
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

/// Streams `path` from the bundle into `out`, hashing alongside; returns
/// (bytes, sha256) of the stream and `out`.
pub fn stream_hashed<W: Write>(
    fs: &BundleFs,
    path: &str,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, String, W)> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel(HASH_QUEUE);
        let worker = scope.spawn(move || hasher(rx));
        let mut tee = Tee { inner: out, tx: Some(tx), written: 0, progress };
        let r = fs.copy_file(path, &mut tee);
        tee.tx = None;
        let digest = worker.join().expect("hash thread");
        let n = r?;
        tee.flush().map_err(|e| Error::Failed(format!("Failed writing image: {e}")))?;
        Ok((n, digest, tee.inner))
    })
}

/// Opens a slot device for writing: block devices exclusively and size-checked.
pub fn open_device(device: &Path, image_size: u64) -> Result<File> {
    let meta = std::fs::metadata(device)
        .map_err(|e| Error::Failed(format!("Destination device '{}' not found: {e}", device.display())))?;
    let block = meta.file_type().is_block_device();
    let mut opts = OpenOptions::new();
    opts.write(true);
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

/// Hashes the first `len` bytes of `device` as they are stored now.
pub fn read_back(device: &Path, len: u64) -> Result<String> {
    let fail = |e: std::io::Error| Error::Failed(format!("Failed to read back '{}': {e}", device.display()));
    let mut f = File::open(device).map_err(fail)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; READBACK_CHUNK];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..want]).map_err(fail)?;
        h.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(hex::encode(h.finalize()))
}

/// What a finished image write produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of the bytes written.
    pub sha256: String,
}

/// Copies image `path` (manifest `size`/`sha256`) to `device`: stream with
/// hashing, fsync, size and digest check, read-back check.
pub fn copy_image(
    fs: &BundleFs,
    path: &str,
    device: &Path,
    expected_size: Option<u64>,
    expected_sha256: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<Written> {
    let file = open_device(device, expected_size.unwrap_or(0))?;
    let out = std::io::BufWriter::with_capacity(1 << 20, file);
    let (bytes, sha256, out) = stream_hashed(fs, path, out, progress).map_err(|e| match e {
        Error::Failed(m) => Error::Failed(m),
        other => Error::Failed(format!("Failed writing image: {other}")),
    })?;
    let file = out.into_inner().map_err(|e| Error::Failed(format!("Failed writing image: {}", e.error())))?;
    file.sync_all().map_err(|e| Error::Failed(format!("Failed to sync '{}': {e}", device.display())))?;
    drop(file);
    if let Some(size) = expected_size
        && size != bytes
    {
        return failed(format!("Written size ({bytes}) != image size ({size})"));
    }
    if let Some(exp) = expected_sha256
        && exp != sha256
    {
        return failed(format!("Image '{path}' has sha256 {sha256} but the manifest says {exp}"));
    }
    let back = read_back(device, bytes)?;
    if back != sha256 {
        return failed(format!("Read-back check of '{}' failed: sha256 {back} instead of {sha256}", device.display()));
    }
    Ok(Written { bytes, sha256 })
}
