//! Opening a bundle (spec §1.6): read the trailer and CMS, decrypt an
//! EnvelopedData, verify the signature, parse the manifest and set up the
//! verified payload reader. Nothing past [`Bundle::open`] sees an unverified byte.

use crate::container::{DEFAULT_MAX_SIGNATURE_SIZE, Layout, PLAIN_MAX_PAYLOAD};
use crate::error::{Error, Result};
use crate::manifest::{BundleFormat, Manifest, ManifestOrigin, manifest_hash};
use crate::reader::{ChunkDigester, CryptReader, PinnedReader, VerityReader};
use crate::signature::{self, SignatureInfo, VerifyOptions, envelope};
use crate::source::http::{HttpOptions, HttpSource, RemoteInfo};
use crate::source::{FileSource, ReadAt, Slice};
use crate::squashfs::BundleFs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// How to open a bundle.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Signature verification policy.
    pub verify: VerifyOptions,
    /// `max-bundle-signature-size`.
    pub max_signature_size: u64,
    /// `[system] bundle-formats`; `None` allows all.
    pub allowed_formats: Option<Vec<BundleFormat>>,
    /// Private key (PEM) for encrypted crypt bundles.
    pub decryption_key: Option<PathBuf>,
    /// Certificate matching the decryption key (optional).
    pub decryption_cert: Option<PathBuf>,
    /// Skip the exclusive-access checks of plain bundles (`--trust-environment`).
    pub trust_environment: bool,
    /// Transport settings for `http(s)://` sources.
    pub http: HttpOptions,
    /// Where plain bundles from `http(s)://` go (they cannot be streamed);
    /// `None` refuses them.
    pub download: Option<Download>,
    /// The local bundle, already opened (by a service, with the rights of
    /// the caller who named it): read instead of opening the path again.
    pub opened: Option<Arc<std::fs::File>>,
    /// Descriptors that paths in these options refer to (`/proc/self/fd/N`:
    /// copies of a caller's TLS files), open as long as the options live.
    pub keep_open: Vec<Arc<std::os::fd::OwnedFd>>,
}

/// Where [`Bundle::open_with_steps`] is in the signature check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureStep {
    /// The signature (and for plain bundles the payload digest) is being checked.
    Begin,
    /// The signature check passed; the rest of the bundle check follows.
    Passed,
}

/// Downloading remote plain bundles: into an unnamed temporary file (gone
/// when closed, also after a crash) in `dir`, at most `max_size` bytes
/// (`max-bundle-download-size`).
#[derive(Debug, Clone)]
pub struct Download {
    /// Directory of the temporary file.
    pub dir: PathBuf,
    /// Largest bundle accepted.
    pub max_size: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            verify: VerifyOptions::default(),
            max_signature_size: DEFAULT_MAX_SIGNATURE_SIZE,
            allowed_formats: None,
            decryption_key: None,
            decryption_cert: None,
            trust_environment: false,
            http: HttpOptions::default(),
            download: None,
            opened: None,
            keep_open: Vec::new(),
        }
    }
}

/// Whether `location` names a remote bundle.
pub fn is_remote(location: &str) -> bool {
    ["http://", "https://"].iter().any(|s| location.starts_with(s))
}

/// Opens the regular file at `path` (a link to one is fine) for reading,
/// never anything else: a fifo would block the reader, a device may act on
/// being opened. The type is checked before the file is opened (without
/// blocking) and again on what was opened.
pub fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let not_regular = || io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
    let before = std::fs::metadata(path)?;
    if !before.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::File::options().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    let opened = file.metadata()?;
    if !opened.is_file() || (opened.dev(), opened.ino()) != (before.dev(), before.ino()) {
        return Err(not_regular());
    }
    // Reads of a regular file never block: back to ordinary blocking mode.
    // SAFETY: fcntl on an open descriptor.
    if unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_SETFL, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Turns a `file:` URI into a path as RAUC does (GLib's conversion, no
/// host part); other strings are paths already.
pub fn local_path(location: &str) -> Result<PathBuf> {
    if crate::uri::scheme(location) != Some("file") {
        return Ok(PathBuf::from(location));
    }
    match crate::uri::filename_from_uri(location) {
        Ok((path, None)) => Ok(path),
        Ok((_, Some(_))) => Err(Error::Other(FILE_URI_WITH_HOST.to_string())),
        Err(e) => Err(Error::Other(format!("Conversion error: {e}"))),
    }
}

/// RAUC's refusal of `file://host/…`.
pub const FILE_URI_WITH_HOST: &str = "file URI with hostname detected. Did you forget to add a leading / ?";

/// A bundle argument as RAUC's `install`, `info` and `mount` resolve it: a
/// `file:` URI becomes its path, a relative path is made absolute, and a
/// local bundle must exist (`No such file: <path>`); other URIs are kept.
pub fn resolve_location(arg: &str) -> Result<String> {
    let path = match crate::uri::scheme(arg) {
        Some("file") => local_path(arg)?,
        Some(_) => return Ok(arg.to_string()),
        None => std::path::absolute(arg).unwrap_or_else(|_| PathBuf::from(arg)),
    };
    if !path.exists() {
        return Err(Error::Other(format!("No such file: {}", path.display())));
    }
    Ok(path.to_string_lossy().into_owned())
}

/// The verified parts of a bundle, as either format path finds them.
struct Verified {
    format: BundleFormat,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signature: SignatureInfo,
    payload: Arc<dyn ReadAt>,
    verity: Option<Arc<PayloadVerity>>,
    unusable: Option<String>,
}

fn parse_manifest(bytes: &[u8], what: &str) -> Result<Manifest> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::Format(format!("{what} is not valid UTF-8")))?;
    Ok(Manifest::parse(text, ManifestOrigin::Bundle)?)
}

/// The verity layer over a bundle's payload.
type PayloadVerity = VerityReader<Slice<Arc<dyn ReadAt>>>;

/// An opened (and, unless disabled, verified) bundle.
pub struct Bundle {
    location: String,
    source: Arc<dyn ReadAt>,
    remote: Option<RemoteInfo>,
    http: Option<Arc<HttpSource>>,
    layout: Layout,
    format: BundleFormat,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signature: SignatureInfo,
    signed_data: Vec<u8>,
    enveloped: Option<Vec<u8>>,
    payload: Arc<dyn ReadAt>,
    verity: Option<Arc<PayloadVerity>>,
    /// Why the payload cannot be used, though the signature holds.
    unusable: Option<String>,
}

fn inline_manifest_check(m: &Manifest) -> Result<()> {
    match m.bundle.format {
        BundleFormat::Plain => {
            Err(Error::Format("Bundle format 'plain' not allowed for external manifest".to_string()))
        }
        _ => Ok(()),
    }
}

/// What a signed manifest lacks to reach its payload, in RAUC's words; as
/// in RAUC, such a bundle still opens (`info`, `replace-signature`) and
/// fails where its payload is first needed.
fn payload_parameters_missing(m: &Manifest) -> Option<String> {
    let format = m.bundle.format;
    if format == BundleFormat::Crypt && m.bundle.crypt_key.is_none() {
        return Some("Missing key for crypt bundle".to_string());
    }
    if m.bundle.verity.is_none() {
        return Some(format!("Missing hash for {format} bundle"));
    }
    None
}

/// The payload of a bundle whose manifest cannot reach it.
struct NoPayload;

impl ReadAt for NoPayload {
    fn size(&self) -> u64 {
        0
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        crate::source::check_range(offset, buf.len(), 0)
    }
}

fn check_format_allowed(format: BundleFormat, allowed: &Option<Vec<BundleFormat>>) -> Result<()> {
    match allowed {
        Some(list) if !list.contains(&format) => Err(Error::Other(format!("Bundle format '{format}' not allowed"))),
        _ => Ok(()),
    }
}

/// Two sources back to back.
struct Concat<A, B> {
    first: A,
    second: B,
}

impl<A: ReadAt, B: ReadAt> Concat<A, B> {
    /// Reads `offset..offset + buf.len()` with `read` from the part or parts holding it.
    fn read_split(
        &self,
        offset: u64,
        buf: &mut [u8],
        read: impl Fn(&dyn ReadAt, u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        crate::source::check_range(offset, buf.len(), self.size())?;
        let split = self.first.size();
        let end = offset + buf.len() as u64;
        if end <= split {
            return read(&self.first, offset, buf);
        }
        if offset >= split {
            return read(&self.second, offset - split, buf);
        }
        let (a, b) = buf.split_at_mut((split - offset) as usize);
        read(&self.first, offset, a)?;
        read(&self.second, 0, b)
    }
}

impl<A: ReadAt, B: ReadAt> ReadAt for Concat<A, B> {
    fn size(&self) -> u64 {
        self.first.size() + self.second.size()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_split(offset, buf, |s, o, b| s.read_exact_at(o, b))
    }

    fn advise_scattered(&self, scattered: bool) {
        self.first.advise_scattered(scattered);
        self.second.advise_scattered(scattered);
    }

    fn read_exact_at_unverified(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_split(offset, buf, |s, o, b| s.read_exact_at_unverified(o, b))
    }
}

/// Buffers in flight between the signature check and the pinning thread.
const PIN_BUFFERS: usize = 3;
/// Size of each of them: one read of the payload.
const PIN_READ: usize = 1 << 20;

/// Reads a source in 1 MiB steps (OpenSSL asks for 4 KiB at a time) and
/// hands every buffer, once OpenSSL has taken it, to the thread that pins
/// the payload (see [`pin_while`]).
struct DigestingReader<'a> {
    source: &'a dyn ReadAt,
    pos: u64,
    end: u64,
    buffer: Option<Vec<u8>>,
    filled: usize,
    consumed: usize,
    pin: SyncSender<(Vec<u8>, usize)>,
    free: Receiver<Vec<u8>>,
}

impl Read for DigestingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.filled == self.consumed {
            let n = (self.end - self.pos).min(PIN_READ as u64) as usize;
            if n == 0 {
                return Ok(0);
            }
            if let Some(done) = self.buffer.take() {
                self.pin.send((done, self.filled)).map_err(|_| io::Error::other("pinning stopped"))?;
            }
            let mut next = self.free.recv().map_err(|_| io::Error::other("pinning stopped"))?;
            self.source.read_exact_at(self.pos, &mut next[..n])?;
            self.pos += n as u64;
            (self.buffer, self.filled, self.consumed) = (Some(next), n, 0);
        }
        let data = self.buffer.as_ref().expect("a filled buffer");
        let n = (self.filled - self.consumed).min(buf.len());
        buf[..n].copy_from_slice(&data[self.consumed..self.consumed + n]);
        self.consumed += n;
        Ok(n)
    }
}

/// Runs `check` with a reader of the first `end` bytes of `source` while
/// another thread records the [`ChunkDigester`] digests of every byte the
/// check read (its SHA-256 and the pins' BLAKE3 on two cores).
fn pin_while<T>(
    source: &dyn ReadAt,
    end: u64,
    check: impl FnOnce(&mut dyn Read) -> Result<T>,
) -> Result<(T, Vec<[u8; 32]>)> {
    std::thread::scope(|scope| {
        let (pin, pinned) = sync_channel::<(Vec<u8>, usize)>(PIN_BUFFERS);
        let (give_back, free) = sync_channel::<Vec<u8>>(PIN_BUFFERS);
        for _ in 0..PIN_BUFFERS {
            give_back.send(vec![0; PIN_READ]).expect("room for every buffer");
        }
        let pinning = scope.spawn(move || {
            let mut digester = ChunkDigester::default();
            for (buf, n) in pinned {
                digester.update(&buf[..n]);
                // Room for it: there are only PIN_BUFFERS buffers.
                let _ = give_back.send(buf);
            }
            digester.finish()
        });
        let mut reader = DigestingReader { source, pos: 0, end, buffer: None, filled: 0, consumed: 0, pin, free };
        let checked = check(&mut reader);
        if let Some(last) = reader.buffer.take() {
            let _ = reader.pin.send((last, reader.filled));
        }
        drop(reader);
        let digests = pinning.join().expect("pinning thread");
        Ok((checked?, digests))
    })
}

impl Bundle {
    /// Opens a local path, `file://` URI or `http(s)://` URL.
    pub fn open(location: &str, opts: &OpenOptions) -> Result<Bundle> {
        Self::open_with_steps(location, opts, &mut |_| {})
    }

    /// [`Bundle::open`], telling `step` when the signature check begins and
    /// when it has passed, as RAUC's `Verifying signature` step: everything
    /// before it (reaching the server, reading the container and its
    /// signature, decrypting) fails outside that step.
    pub fn open_with_steps(location: &str, opts: &OpenOptions, step: &mut dyn FnMut(SignatureStep)) -> Result<Bundle> {
        if is_remote(location) {
            let http = Arc::new(HttpSource::open(location, opts.http.clone()).map_err(Error::Io)?);
            let mut b = Self::open_verified(location, http.clone(), None, opts, step)?;
            b.remote = Some(http.remote_info().clone());
            b.http = Some(http);
            return Ok(b);
        }
        let path = local_path(location)?;
        let file = match &opts.opened {
            Some(f) => f.try_clone(),
            None => open_regular(&path),
        }
        .map_err(|e| Error::Io(format!("Failed to open bundle '{}': {e}", path.display())))?;
        let source = FileSource::from_file(file)
            .map_err(|e| Error::Io(format!("Failed to open bundle '{}': {e}", path.display())))?;
        let source = Arc::new(source);
        Self::open_verified(&path.to_string_lossy(), source.clone(), Some(source), opts, step)
    }

    /// Copies the whole remote bundle into an unnamed temporary file and
    /// opens the copy like a local file.
    fn open_downloaded(
        location: &str,
        source: &dyn ReadAt,
        download: &Download,
        opts: &OpenOptions,
        step: &mut dyn FnMut(SignatureStep),
    ) -> Result<Bundle> {
        let location = &crate::source::http::shown_url(location);
        let size = source.size();
        if size > download.max_size {
            return Err(Error::Io(format!(
                "Failed to download bundle {location}: its size ({size} bytes) exceeds max-bundle-download-size ({} bytes)",
                download.max_size
            )));
        }
        let fail = |e: io::Error| Error::Io(format!("Failed to download bundle {location}: {e}"));
        tracing::info!("Downloading plain bundle {location} ({size} bytes) to {}", download.dir.display());
        let mut file = tempfile::tempfile_in(&download.dir).map_err(fail)?;
        let mut buf = vec![0u8; 4 << 20];
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(buf.len() as u64) as usize;
            source.read_exact_at(pos, &mut buf[..n]).map_err(|e| Error::Io(e.to_string()))?;
            std::io::Write::write_all(&mut file, &buf[..n]).map_err(fail)?;
            pos += n as u64;
        }
        let file = Arc::new(FileSource::from_file(file).map_err(fail)?);
        // Nobody else can reach the unnamed file, and its payload is pinned while verifying.
        let opts = OpenOptions { trust_environment: true, ..opts.clone() };
        Self::open_verified(location, file.clone(), Some(file), &opts, step)
    }

    /// Opens a bundle from any source; `file` enables the plain-bundle exclusivity checks.
    pub fn open_source(
        location: &str,
        source: Arc<dyn ReadAt>,
        file: Option<Arc<FileSource>>,
        opts: &OpenOptions,
    ) -> Result<Bundle> {
        Self::open_verified(location, source, file, opts, &mut |_| {})
    }

    fn open_verified(
        location: &str,
        source: Arc<dyn ReadAt>,
        file: Option<Arc<FileSource>>,
        opts: &OpenOptions,
        step: &mut dyn FnMut(SignatureStep),
    ) -> Result<Bundle> {
        tracing::info!("Reading bundle: {}", crate::source::http::shown_url(location));
        // Without verification there is no signature step (as in RAUC).
        let mut silent = |_: SignatureStep| {};
        let step: &mut dyn FnMut(SignatureStep) = if opts.verify.no_verify { &mut silent } else { step };
        let remote = file.is_none();
        let layout = Layout::read(source.as_ref(), opts.max_signature_size)?;
        // Streamed bundles must be aligned; verity and crypt ones are checked
        // when verified, plain ones are downloaded when a download is allowed.
        if remote && opts.download.is_none() {
            layout.require_aligned()?;
        } else if !layout.payload_aligned() {
            tracing::info!("Payload size ({}) is not a multiple of 4096 bytes", layout.payload_size);
        }
        let cms = layout.read_signature(source.as_ref())?;
        let (signed_data, enveloped) = if signature::is_enveloped(&cms) {
            let key_path = opts.decryption_key.as_ref().ok_or_else(|| {
                Error::Decrypt("Encrypted bundle detected, but no decryption key given. Use --key=<PEMFILE|PKCS11-URL> to provide one.".to_string())
            })?;
            let key = signature::load_private_key(key_path)?;
            let cert = opts.decryption_cert.as_deref().map(signature::load_cert).transpose()?;
            (envelope::decrypt(&cms, &key, cert.as_ref())?, Some(cms))
        } else {
            (cms, None)
        };
        let parsed = signature::parse_signed_data(&signed_data)?;
        let detached = signature::encapsulated_content(&parsed).is_none();
        drop(parsed);
        tracing::info!("Verifying bundle signature... ");
        let encrypted = enveloped.is_some();
        let v = if detached {
            // Plain bundles cannot be streamed: their signature covers the whole payload.
            if let (None, Some(download), false) = (&file, &opts.download, encrypted) {
                // Refused before the download, not after it.
                check_format_allowed(BundleFormat::Plain, &opts.allowed_formats)?;
                return Self::open_downloaded(location, source.as_ref(), download, opts, step);
            }
            Self::verify_plain(&source, file, layout, &signed_data, encrypted, opts, step)?
        } else {
            Self::verify_inline(&source, layout, &signed_data, encrypted, opts, step)?
        };
        Ok(Bundle {
            location: location.to_string(),
            source,
            remote: None,
            http: None,
            layout,
            format: v.format,
            manifest: v.manifest,
            manifest_bytes: v.manifest_bytes,
            signature: v.signature,
            signed_data,
            enveloped,
            payload: v.payload,
            verity: v.verity,
            unusable: v.unusable,
        })
    }

    /// verity and crypt: the manifest is the signed content; payload blocks are checked as read.
    fn verify_inline(
        source: &Arc<dyn ReadAt>,
        layout: Layout,
        signed_data: &[u8],
        encrypted: bool,
        opts: &OpenOptions,
        step: &mut dyn FnMut(SignatureStep),
    ) -> Result<Verified> {
        step(SignatureStep::Begin);
        let signature = signature::verify(signed_data, None, &opts.verify)?;
        step(SignatureStep::Passed);
        let manifest_bytes = signature.content.clone().expect("inline signature has content");
        let manifest = parse_manifest(&manifest_bytes, "Signed manifest")?;
        inline_manifest_check(&manifest)?;
        let format = manifest.bundle.format;
        check_format_allowed(format, &opts.allowed_formats)?;
        if encrypted && format != BundleFormat::Crypt {
            return Err(Error::Format(format!("Encrypted signature found in a bundle using {format} format")));
        }
        let problem = payload_parameters_missing(&manifest)
            .or_else(|| manifest.check_bundle_rules(format).err().map(|e| e.to_string()));
        if let Some(problem) = problem {
            let payload: Arc<dyn ReadAt> = Arc::new(NoPayload);
            return Ok(Verified {
                format,
                manifest,
                manifest_bytes,
                signature,
                payload,
                verity: None,
                unusable: Some(problem),
            });
        }
        layout.require_aligned()?;
        let v = manifest.bundle.verity.expect("checked");
        if v.size > layout.payload_size {
            return Err(Error::Format(format!(
                "Verity size ({}) exceeds payload size ({})",
                v.size, layout.payload_size
            )));
        }
        let data_size = layout.payload_size - v.size;
        if data_size <= 4096 {
            return Err(Error::Format(format!("squashfs size ({data_size}) must be larger than 4096 bytes")));
        }
        if !data_size.is_multiple_of(4096) {
            return Err(Error::Format(format!("squashfs size ({data_size}) is not a multiple of 4096 bytes")));
        }
        let slice = Slice::new(source.clone(), 0, layout.payload_size)?;
        let verity =
            Arc::new(VerityReader::new(slice, data_size, &v.salt, v.hash).map_err(|e| Error::Format(e.to_string()))?);
        let payload: Arc<dyn ReadAt> = match manifest.bundle.crypt_key {
            Some(key) if format == BundleFormat::Crypt => Arc::new(CryptReader::new(verity.clone(), key)),
            _ => verity.clone(),
        };
        Ok(Verified { format, manifest, manifest_bytes, signature, payload, verity: Some(verity), unusable: None })
    }

    /// plain: the detached signature covers the payload, which is pinned to the
    /// digests taken while verifying; the manifest is read from the squashfs.
    fn verify_plain(
        source: &Arc<dyn ReadAt>,
        file: Option<Arc<FileSource>>,
        layout: Layout,
        signed_data: &[u8],
        encrypted: bool,
        opts: &OpenOptions,
        step: &mut dyn FnMut(SignatureStep),
    ) -> Result<Verified> {
        check_format_allowed(BundleFormat::Plain, &opts.allowed_formats)?;
        let Some(file) = file else {
            return Err(Error::Format("Bundle format 'plain' not supported in streaming mode".to_string()));
        };
        if encrypted {
            return Err(Error::Format("Encrypted signature found in a bundle using plain format".to_string()));
        }
        if layout.payload_size > PLAIN_MAX_PAYLOAD {
            return Err(Error::Format(format!(
                "Bundle payload size {} exceeds maximum for bundles using plain format (2 GiB)",
                layout.payload_size
            )));
        }
        let slice: Arc<dyn ReadAt> = Arc::new(Slice::new(source.clone(), 0, layout.payload_size)?);
        let (signature, payload): (SignatureInfo, Arc<dyn ReadAt>) = if opts.verify.no_verify {
            (signature::verify(signed_data, None, &opts.verify)?, slice)
        } else {
            let _lease = if opts.trust_environment { None } else { Some(crate::exclusive::ensure(file.file())?) };
            step(SignatureStep::Begin);
            let (sig, digests) = pin_while(slice.as_ref(), layout.payload_size, |reader| {
                signature::verify(signed_data, Some(reader), &opts.verify)
            })?;
            (sig, Arc::new(PinnedReader::new(slice, digests)?))
        };
        step(SignatureStep::Passed);
        let manifest_bytes = BundleFs::open(payload.clone())?
            .read_file("manifest.raucm")
            .map_err(|e| Error::Other(format!("Failed to read manifest from bundle: {e}")))?;
        let manifest = parse_manifest(&manifest_bytes, "manifest.raucm")?;
        if manifest.bundle.format != BundleFormat::Plain {
            return Err(Error::Format(format!(
                "Bundle with detached signature declares format '{}' in its manifest",
                manifest.bundle.format
            )));
        }
        manifest.check_bundle_rules(BundleFormat::Plain)?;
        Ok(Verified {
            format: BundleFormat::Plain,
            manifest,
            manifest_bytes,
            signature,
            payload,
            verity: None,
            unusable: None,
        })
    }

    /// Path or URL the bundle was opened from.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Container format.
    pub fn format(&self) -> BundleFormat {
        self.format
    }

    /// Sizes of payload and signature.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The manifest used for installation (inline for verity/crypt).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The exact manifest bytes (what the manifest hash covers).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// Lowercase hex SHA-256 of the manifest bytes (spec §2.10).
    pub fn manifest_hash(&self) -> String {
        manifest_hash(&self.manifest_bytes)
    }

    /// Signature details (chains, verified or not).
    pub fn signature(&self) -> &SignatureInfo {
        &self.signature
    }

    /// The SignedData DER (decrypted, for encrypted crypt bundles).
    pub fn signed_data(&self) -> &[u8] {
        &self.signed_data
    }

    /// The EnvelopedData DER, for encrypted crypt bundles.
    pub fn enveloped(&self) -> Option<&[u8]> {
        self.enveloped.as_deref()
    }

    /// Whether the CMS was an EnvelopedData.
    pub fn was_encrypted(&self) -> bool {
        self.enveloped.is_some()
    }

    /// The raw (unverified!) bundle source: only for copying payload bytes
    /// that are verified separately.
    pub fn raw_source(&self) -> &Arc<dyn ReadAt> {
        &self.source
    }

    /// Server facts for remote bundles.
    pub fn remote_info(&self) -> Option<&RemoteInfo> {
        self.remote.as_ref()
    }

    /// HTTP transfer counters (requests, bytes) for remote bundles.
    pub fn http_stats(&self) -> Option<(u64, u64)> {
        self.http.as_ref().map(|h| h.stats())
    }

    /// Logs what streaming transferred so far (nothing for local bundles).
    pub fn log_http_stats(&self) {
        if let Some((requests, bytes)) = self.http_stats() {
            let pct = bytes as f64 * 100.0 / self.layout.bundle_size.max(1) as f64;
            let retries = self.http.as_ref().map_or(0, |h| h.retries());
            tracing::info!(
                "downloaded {bytes} bytes in {requests} requests, {retries} retried ({pct:.1}% of the full bundle)"
            );
        }
    }

    /// Fails when the signed manifest cannot reach the payload or breaks a
    /// rule of bundled manifests (RAUC's "Checking manifest contents" step).
    pub fn check_manifest_contents(&self) -> Result<()> {
        match &self.unusable {
            Some(problem) => Err(Error::Payload(problem.clone())),
            None => Ok(()),
        }
    }

    /// The verified squashfs bytes (decrypted for crypt bundles).
    pub fn payload(&self) -> Result<Arc<dyn ReadAt>> {
        self.check_manifest_contents()?;
        Ok(self.payload.clone())
    }

    /// The whole payload as stored (ciphertext and hash tree included), the
    /// data part read through the verifier; for copying into a new container.
    pub fn payload_source(&self) -> Result<Arc<dyn ReadAt>> {
        self.check_manifest_contents()?;
        Ok(match &self.verity {
            Some(v) => {
                let data = v.size();
                let tree = Slice::new(self.source.clone(), data, self.layout.payload_size - data)
                    .expect("tree lies inside the payload");
                Arc::new(Concat { first: v.clone(), second: tree })
            }
            None => self.payload.clone(),
        })
    }

    /// Checks every payload byte now (plain bundles were checked at open).
    pub fn check_payload(&self) -> Result<()> {
        self.check_manifest_contents()?;
        if let Some(v) = &self.verity {
            tracing::info!("Verifying bundle payload... ");
            v.check_all().map_err(|e| Error::Payload(e.to_string()))?;
        }
        Ok(())
    }

    /// Opens the squashfs for listing, reading and extracting files.
    pub fn filesystem(&self) -> Result<BundleFs> {
        self.check_manifest_contents()?;
        BundleFs::open(self.payload.clone())
    }

    /// Reads one file of the bundle.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        self.filesystem()?.read_file(path)
    }

    /// Extracts the bundle content to `dest` (which must not exist); on any
    /// failure nothing is left behind.
    pub fn extract(&self, dest: &Path) -> Result<()> {
        if dest.exists() {
            return Err(Error::Other(format!("output directory '{}' exists", dest.display())));
        }
        // Files are verified as they are read; the blocks no file touched are checked afterwards.
        let result = self.filesystem().and_then(|fs| fs.extract_to(dest)).and_then(|_| self.check_payload());
        if result.is_err() {
            let _ = std::fs::remove_dir_all(dest);
        }
        result
    }
}
