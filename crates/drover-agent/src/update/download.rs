//! Resumable, verified artifact downloads: `GET {server}/v1/artifacts/{sha256}`
//! into `DATA/update/<sha256>.part`, renamed to `DATA/update/<sha256>` only
//! once size and SHA-256 match the signed manifest.
//!
//! - Resume: an existing part file is re-hashed (restoring the hasher) and
//!   the rest asked for with `Range: bytes=N-`, also after an agent restart.
//! - The server may answer 200 (whole body: start over), 206 (checked
//!   against `Content-Range`), 416 (the part is unusable: start over), 404
//!   (artifact not there yet: retry later) or fail (retry later).
//! - Free space is checked before starting (`disk_full`); running out of
//!   space mid-way removes the part file (`disk_full`); more bytes than the
//!   manifest says or a wrong hash remove it too (`hash_mismatch`).
//! - Bandwidth is capped with a token bucket.
//!
//! The transport sits behind [`ArtifactSource`]: devices use [`MtlsSource`]
//! (the agent's own HTTPS client with the device certificate); tests may use
//! [`PlainHttpSource`]. Integrity never depends on the transport: every byte
//! is checked against the signed hash. This module never installs anything.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::https::{self, StreamingResponse};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where artifacts come from.
pub trait ArtifactSource: Send + Sync {
    /// `GET /v1/artifacts/{sha256}`, with `Range: bytes={from}-` when
    /// `from > 0`.
    fn fetch(&self, sha256: &str, from: u64) -> BoxFuture<'_, Result<StreamingResponse, String>>;
}

fn range_headers(from: u64) -> Vec<(&'static str, String)> {
    if from > 0 {
        vec![("range", format!("bytes={from}-"))]
    } else {
        Vec::new()
    }
}

/// Produces the TLS client configuration (with the device certificate) for
/// each download, so a renewed certificate is picked up.
pub type TlsProvider = dyn Fn() -> Result<Arc<rustls::ClientConfig>, String> + Send + Sync;

/// The device's server over mTLS.
pub struct MtlsSource {
    /// Server URL (`https://host:port`).
    pub url: String,
    pub tls: Box<TlsProvider>,
    /// Source address (the simulator spreads devices over 127.0.0.0/8).
    pub bind: Option<IpAddr>,
}

impl MtlsSource {
    /// Reads the identity from `data` for each download (real devices).
    pub fn from_data_dir(url: String, data: PathBuf) -> MtlsSource {
        MtlsSource {
            url,
            tls: Box::new(move || {
                crate::identity::Identity::load(&data)?
                    .ok_or_else(|| "this device is not enrolled".to_string())?
                    .tls()
            }),
            bind: None,
        }
    }
}

impl ArtifactSource for MtlsSource {
    fn fetch(&self, sha256: &str, from: u64) -> BoxFuture<'_, Result<StreamingResponse, String>> {
        let path = format!("/v1/artifacts/{sha256}");
        Box::pin(async move {
            let tls = (self.tls)()?;
            https::get_streaming_tls(&self.url, tls, self.bind, &path, &range_headers(from)).await
        })
    }
}

/// Plain HTTP to `addr` (tests; a local mirror). Hashes still protect
/// integrity, but nothing authenticates the device or the server.
pub struct PlainHttpSource {
    pub addr: SocketAddr,
}

impl ArtifactSource for PlainHttpSource {
    fn fetch(&self, sha256: &str, from: u64) -> BoxFuture<'_, Result<StreamingResponse, String>> {
        let path = format!("/v1/artifacts/{sha256}");
        Box::pin(async move {
            let tcp = tokio::time::timeout(
                Duration::from_secs(20),
                tokio::net::TcpStream::connect(self.addr),
            )
            .await
            .map_err(|_| format!("connecting to {} timed out", self.addr))?
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
            https::get_streaming(tcp, &self.addr.to_string(), &path, &range_headers(from)).await
        })
    }
}

/// Why a download stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadError {
    /// Stable reason code (docs/updates.md).
    pub reason: &'static str,
    pub message: String,
    /// Worth trying again later (network, server); otherwise final.
    pub retry: bool,
}

impl DownloadError {
    fn retry(reason: &'static str, message: impl Into<String>) -> DownloadError {
        DownloadError {
            reason,
            message: message.into(),
            retry: true,
        }
    }
    fn fatal(reason: &'static str, message: impl Into<String>) -> DownloadError {
        DownloadError {
            reason,
            message: message.into(),
            retry: false,
        }
    }
    fn io(what: &str, e: &std::io::Error) -> DownloadError {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            DownloadError::fatal(
                "disk_full",
                format!("{what}: {e}; free some space and deploy again"),
            )
        } else {
            DownloadError::fatal("io_error", format!("{what}: {e}"))
        }
    }
}

impl std::fmt::Display for DownloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.reason)
    }
}

#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// 0: no cap.
    pub max_bytes_per_sec: u64,
    /// Space to leave free beyond the artifact.
    pub min_free_bytes: u64,
    /// Give up on a connection that sends nothing for this long.
    pub idle_timeout: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            max_bytes_per_sec: 0,
            min_free_bytes: 0,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Bytes available to unprivileged writers on the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path contains a NUL byte"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// A token bucket holding at most one second of bandwidth.
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
        Bucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    async fn take(&mut self, n: usize) {
        if self.rate <= 0.0 {
            return;
        }
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-self.tokens / self.rate)).await;
        }
    }
}

/// `DATA/update/<sha256>` and its part file.
pub fn artifact_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(sha256)
}

pub fn part_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.part"))
}

/// Hashes the first bytes of a part file (to resume), returning the hasher
/// and the length.
async fn rehash(path: &Path) -> Result<(ring::digest::Context, u64), DownloadError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((ctx, 0)),
            Err(e) => {
                return Err(DownloadError::io(
                    &format!("cannot read {}", path.display()),
                    &e,
                ));
            }
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        loop {
            let got = f
                .read(&mut buf)
                .map_err(|e| DownloadError::io(&format!("cannot read {}", path.display()), &e))?;
            if got == 0 {
                return Ok((ctx, n));
            }
            ctx.update(&buf[..got]);
            n += got as u64;
        }
    })
    .await
    .map_err(|e| DownloadError::fatal("io_error", format!("hashing task failed: {e}")))?
}

/// SHA-256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            break;
        }
        ctx.update(&buf[..got]);
        n += got as u64;
    }
    Ok((drover_release::hex(ctx.finish().as_ref()), n))
}

/// Parses `Content-Range: bytes START-END/TOTAL` (RFC 9110 §14.4).
fn content_range(headers: &hyper::HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let v = headers.get("content-range")?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((a.parse().ok()?, b.parse().ok()?, total))
}

/// Fetches artifact `sha256` of `size` bytes into `dir`, resuming a part
/// file; returns the verified file. `progress` gets the bytes done so far.
pub async fn download(
    source: &dyn ArtifactSource,
    dir: &Path,
    sha256: &str,
    size: u64,
    opts: &DownloadOptions,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<PathBuf, DownloadError> {
    if !drover_release::is_sha256_hex(sha256) {
        return Err(DownloadError::fatal(
            "manifest_malformed",
            format!("artifact name {sha256:?} is not a SHA-256 hex digest"),
        ));
    }
    drover_fs::ensure_dir(dir, 0o700)
        .map_err(|e| DownloadError::io(&format!("cannot create {}", dir.display()), &e))?;
    let done = artifact_path(dir, sha256);
    let part = part_path(dir, sha256);
    match std::fs::metadata(&done) {
        Ok(m) if m.len() == size => return Ok(done),
        Ok(_) => {
            let _ = std::fs::remove_file(&done);
        }
        Err(_) => {}
    }
    let (mut ctx, mut have) = rehash(&part).await?;
    if have > size {
        tracing::warn!(
            sha256,
            have,
            size,
            "part file longer than the artifact; starting over"
        );
        remove(&part);
        ctx = ring::digest::Context::new(&ring::digest::SHA256);
        have = 0;
    }
    let free = free_bytes(dir).map_err(|e| {
        DownloadError::io(&format!("cannot check free space on {}", dir.display()), &e)
    })?;
    let need = (size - have).saturating_add(opts.min_free_bytes);
    if free < need {
        return Err(DownloadError::fatal(
            "disk_full",
            format!(
                "{} has {free} bytes free; the download needs {} more plus {} kept free (`min_free_bytes`)",
                dir.display(),
                size - have,
                opts.min_free_bytes
            ),
        ));
    }
    progress(have);
    if have < size {
        let mut resp = source
            .fetch(sha256, have)
            .await
            .map_err(|e| DownloadError::retry("download_failed", e))?;
        match resp.status.as_u16() {
            200 => {
                if have > 0 {
                    tracing::info!(sha256, "the server sent the whole artifact; starting over");
                }
                have = 0;
                ctx = ring::digest::Context::new(&ring::digest::SHA256);
            }
            206 => match content_range(&resp.headers) {
                Some((start, _, total)) if start == have && total.is_none_or(|t| t == size) => {}
                other => {
                    remove(&part);
                    return Err(DownloadError::retry(
                        "download_failed",
                        format!(
                            "the server answered a range request for bytes {have}- of {size} with Content-Range {other:?}; starting over"
                        ),
                    ));
                }
            },
            416 => {
                remove(&part);
                return Err(DownloadError::retry(
                    "download_failed",
                    format!("the server cannot resume at byte {have} (416); starting over"),
                ));
            }
            404 => {
                return Err(DownloadError::retry(
                    "artifact_missing",
                    format!("the server has no artifact {sha256} (404); is the release published?"),
                ));
            }
            s => {
                return Err(DownloadError::retry(
                    "download_failed",
                    format!("the server answered {s} for artifact {sha256}"),
                ));
            }
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(have == 0)
            .append(have > 0)
            .open(&part)
            .await
            .map_err(|e| DownloadError::io(&format!("cannot open {}", part.display()), &e))?;
        let mut bucket = Bucket::new(opts.max_bytes_per_sec);
        loop {
            let chunk = match https::next_chunk(&mut resp.body, opts.idle_timeout).await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    let _ = file.flush().await;
                    return Err(DownloadError::retry(
                        "download_failed",
                        format!("{e} after {have} of {size} bytes; resuming later"),
                    ));
                }
            };
            if have + chunk.len() as u64 > size {
                drop(file);
                remove(&part);
                return Err(DownloadError::fatal(
                    "hash_mismatch",
                    format!(
                        "the server sent more than the {size} bytes the signed manifest names for {sha256}"
                    ),
                ));
            }
            if let Err(e) = file.write_all(&chunk).await {
                drop(file);
                remove(&part);
                return Err(DownloadError::io(
                    &format!("cannot write {}", part.display()),
                    &e,
                ));
            }
            ctx.update(&chunk);
            have += chunk.len() as u64;
            progress(have);
            bucket.take(chunk.len()).await;
        }
        let synced = async {
            file.flush().await?;
            file.sync_all().await
        }
        .await;
        if let Err(e) = synced {
            drop(file);
            remove(&part);
            return Err(DownloadError::io(
                &format!("cannot write {}", part.display()),
                &e,
            ));
        }
        if have < size {
            return Err(DownloadError::retry(
                "download_failed",
                format!("the connection closed after {have} of {size} bytes; resuming later"),
            ));
        }
    }
    let got = drover_release::hex(ctx.finish().as_ref());
    if got != sha256 {
        remove(&part);
        return Err(DownloadError::fatal(
            "hash_mismatch",
            format!(
                "the downloaded artifact has SHA-256 {got}, the signed manifest says {sha256}; it was deleted"
            ),
        ));
    }
    std::fs::rename(&part, &done)
        .and_then(|_| std::fs::File::open(dir)?.sync_all())
        .map_err(|e| DownloadError::io(&format!("cannot store {}", done.display()), &e))?;
    Ok(done)
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a download file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_token_bucket_holds_the_rate_to_the_cap() {
        // 1 MiB at 64 KiB/s: one second of burst, then 15 more seconds.
        let mut b = Bucket::new(64 * 1024);
        let start = Instant::now();
        for _ in 0..64 {
            b.take(16 * 1024).await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(15), "{took:?}");
        assert!(took < Duration::from_secs(17), "{took:?}");
        // No cap: no waiting.
        let mut b = Bucket::new(0);
        let start = Instant::now();
        b.take(1 << 30).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn content_ranges_parse() {
        let h = |v: &str| {
            let mut headers = hyper::HeaderMap::new();
            headers.insert("content-range", v.parse().unwrap());
            headers
        };
        assert_eq!(content_range(&h("bytes 5-9/10")), Some((5, 9, Some(10))));
        assert_eq!(content_range(&h("bytes 5-9/*")), Some((5, 9, None)));
        assert_eq!(content_range(&h("bytes */10")), None);
        assert_eq!(content_range(&hyper::HeaderMap::new()), None);
    }
}
