//! Content-addressed artifact bytes (release payloads and delta patches)
//! through `object_store`: a local folder (`DATA/artifacts`) by default, an
//! S3-compatible bucket at scale. An artifact is named by its SHA-256 and
//! never changes, so any cache or mirror may keep it forever.
//!
//! Uploads stream into a multipart upload while hashing; on a hash or size
//! mismatch the upload is aborted and nothing becomes visible. Downloads of
//! a local artifact read the file directly in large chunks (the generic
//! `object_store` stream reads 8 KiB at a time, which halves throughput;
//! see docs/decisions/019-artifacts-through-object-store.md).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Largest artifact accepted (64 GiB: root file system images).
pub const MAX_ARTIFACT_BYTES: u64 = 64 << 30;

/// Read size when serving local artifacts.
const CHUNK: usize = 256 * 1024;

pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the body hashes to {got}, not {expected}: the upload was damaged or named wrongly")]
    HashMismatch { expected: String, got: String },
    #[error("the body has {got} bytes but Content-Length said {expected}")]
    SizeMismatch { expected: u64, got: u64 },
    #[error("the server's artifact storage is full")]
    StorageFull,
    #[error("the upload was interrupted: {0}")]
    Body(String),
    #[error("artifact storage failed: {0}")]
    Storage(String),
}

#[derive(Clone)]
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    /// Set when the store is a local folder: downloads read files directly.
    local: Option<Arc<LocalFileSystem>>,
}

fn location(sha256: &str) -> object_store::path::Path {
    object_store::path::Path::from(format!("sha256/{}/{sha256}", &sha256[..2]))
}

fn storage_error(e: object_store::Error) -> UploadError {
    let text = e.to_string();
    if text.contains("No space left") || text.contains("os error 28") {
        UploadError::StorageFull
    } else {
        UploadError::Storage(text)
    }
}

impl Artifacts {
    /// A local folder, created if missing.
    pub fn local(dir: &Path) -> std::io::Result<Artifacts> {
        drover_fs::ensure_dir(dir, 0o700)?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .with_automatic_cleanup(true);
        let fs = Arc::new(fs);
        Ok(Artifacts {
            store: fs.clone(),
            local: Some(fs),
        })
    }

    /// Any `object_store` backend (S3, GCS, Azure, memory).
    pub fn remote(store: Arc<dyn ObjectStore>) -> Artifacts {
        Artifacts { store, local: None }
    }

    /// Streams `body` into the store under `sha256`, checking that it has
    /// exactly `expected_len` bytes and hashes to `sha256`.
    pub async fn upload<S, E>(
        &self,
        sha256: &str,
        expected_len: u64,
        mut body: S,
    ) -> Result<(), UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let upload = self
            .store
            .put_multipart(&location(sha256))
            .await
            .map_err(storage_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut got: u64 = 0;
        let failure = loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    got += chunk.len() as u64;
                    if got > expected_len {
                        break Some(UploadError::SizeMismatch {
                            expected: expected_len,
                            got,
                        });
                    }
                    hasher.update(&chunk);
                    if let Err(e) = writer.wait_for_capacity(4).await {
                        break Some(storage_error(e));
                    }
                    writer.write(&chunk);
                }
                Some(Err(e)) => break Some(UploadError::Body(e.to_string())),
                None => break None,
            }
        };
        let failure = failure.or_else(|| {
            if got != expected_len {
                return Some(UploadError::SizeMismatch {
                    expected: expected_len,
                    got,
                });
            }
            let digest = hex::encode(hasher.finish());
            (digest != sha256).then(|| UploadError::HashMismatch {
                expected: sha256.to_string(),
                got: digest,
            })
        });
        if let Some(e) = failure {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer.finish().await.map_err(storage_error)?;
        Ok(())
    }

    /// Whether the bytes of `sha256` are present, and their size.
    pub async fn size(&self, sha256: &str) -> Option<u64> {
        self.store
            .head(&location(sha256))
            .await
            .ok()
            .map(|m| m.size)
    }

    fn local_path(&self, sha256: &str) -> Option<PathBuf> {
        self.local
            .as_ref()
            .and_then(|fs| fs.path_to_filesystem(&location(sha256)).ok())
    }

    /// The bytes in `range` of `sha256`.
    pub async fn read(&self, sha256: &str, range: Range<u64>) -> std::io::Result<ByteStream> {
        if let Some(path) = self.local_path(sha256) {
            let mut file = tokio::fs::File::open(&path).await?;
            file.seek(std::io::SeekFrom::Start(range.start)).await?;
            let remaining = range.end - range.start;
            let stream = futures_util::stream::unfold(
                (file, remaining),
                |(mut file, remaining)| async move {
                    if remaining == 0 {
                        return None;
                    }
                    let want = remaining.min(CHUNK as u64) as usize;
                    let mut buf = vec![0u8; want];
                    match file.read(&mut buf).await {
                        Ok(0) => Some((
                            Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "artifact file is shorter than recorded",
                            )),
                            (file, 0),
                        )),
                        Ok(n) => {
                            buf.truncate(n);
                            Some((Ok(Bytes::from(buf)), (file, remaining - n as u64)))
                        }
                        Err(e) => Some((Err(e), (file, 0))),
                    }
                },
            );
            return Ok(Box::pin(stream));
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        let got = self
            .store
            .get_opts(&location(sha256), opts)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Box::pin(got.into_stream().map(|r| {
            r.map_err(|e| std::io::Error::other(e.to_string()))
        })))
    }
}

/// A `Range` header that cannot be satisfied: answer 416.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Parses a `Range` header against an artifact of `size` bytes. `Ok(None)`:
/// no (usable) range, serve everything; `Err(Unsatisfiable)`: 416.
/// Only single byte ranges are supported, which is what resuming needs.
pub fn parse_range(header: &str, size: u64) -> Result<Option<Range<u64>>, Unsatisfiable> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multiple ranges: allowed to ignore (RFC 9110 14.2).
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
        if n == 0 {
            return Err(Unsatisfiable);
        }
        size.saturating_sub(n)..size
    } else {
        let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
        let end = if b.is_empty() {
            size
        } else {
            let last: u64 = b.parse().map_err(|_| Unsatisfiable)?;
            if last < start {
                return Err(Unsatisfiable);
            }
            (last + 1).min(size)
        };
        start..end
    };
    if range.start >= size {
        return Err(Unsatisfiable);
    }
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some(0..10)));
        assert_eq!(parse_range("bytes=10-", 100), Ok(Some(10..100)));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some(90..100)));
        assert_eq!(parse_range("bytes=90-200", 100), Ok(Some(90..100)));
        assert_eq!(parse_range("bytes=100-", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=5-1", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=x-", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("items=1-2", 100), Ok(None));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
    }

    fn body(parts: &[&[u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::copy_from_slice(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn uploads_are_checked_and_a_bad_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::local(dir.path()).unwrap();
        let data = b"hello world".repeat(1000);
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &data));
        let bad = a
            .upload(
                &sha,
                data.len() as u64,
                body(&[&data[..10], b"X", &data[11..]]),
            )
            .await;
        assert!(matches!(bad, Err(UploadError::HashMismatch { .. })));
        assert_eq!(a.size(&sha).await, None);
        let short = a.upload(&sha, data.len() as u64 + 1, body(&[&data])).await;
        assert!(matches!(short, Err(UploadError::SizeMismatch { .. })));
        let long = a.upload(&sha, 5, body(&[&data])).await;
        assert!(matches!(long, Err(UploadError::SizeMismatch { .. })));
        assert_eq!(a.size(&sha).await, None);
        a.upload(
            &sha,
            data.len() as u64,
            body(&[&data[..5000], &data[5000..]]),
        )
        .await
        .unwrap();
        assert_eq!(a.size(&sha).await, Some(data.len() as u64));
        let mut got = Vec::new();
        let mut s = a.read(&sha, 100..9000).await.unwrap();
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, &data[100..9000]);
    }
}
