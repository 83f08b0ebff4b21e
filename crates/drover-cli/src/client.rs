//! HTTP client for the operator API: TLS pinned to the fleet CA when one is
//! given, bearer token, and server errors turned into [`CliError`]s.

use std::sync::Arc;
use std::time::Duration;

use drover_proto::api::ErrorBody;
use reqwest::{Method, StatusCode};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{CliError, CliResult, Kind};

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// System trust store, for servers with a certificate from a public CA.
fn system_roots() -> Vec<CertificateDer<'static>> {
    let path = std::env::var("SSL_CERT_FILE")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
    std::fs::read(path)
        .ok()
        .map(|pem| {
            CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect()
        })
        .unwrap_or_default()
}

impl Client {
    /// `ca_pem`: the CA to trust (the fleet CA); `None` trusts the system store.
    pub fn new(server: &str, token: &str, ca_pem: Option<&str>) -> CliResult<Client> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(CliError::usage(format!(
                "server URL {server:?} must start with https:// (or http:// for an --insecure-http server)"
            )));
        }
        let certs: Vec<CertificateDer<'static>> = match ca_pem {
            Some(pem) => {
                let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
                    .filter_map(Result::ok)
                    .collect();
                if certs.is_empty() {
                    return Err(CliError::usage(
                        "the CA certificate file holds no PEM certificate: pass the server's DATA/ca.crt",
                    ));
                }
                certs
            }
            None => system_roots(),
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in certs {
            // A broken system certificate is skipped, not fatal.
            let _ = roots.add(c);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::failed(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("drover-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::failed(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            token: token.to_string(),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> CliResult<T> {
        self.send::<(), T>(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> CliResult<T> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> CliResult<T> {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> CliResult<T> {
        self.send::<(), T>(Method::DELETE, path, None).await
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> CliResult<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| unreachable(&self.base, &e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| unreachable(&self.base, &e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                CliError::failed(format!("the server's answer is not what this CLI expects ({e}); are CLI and server the same version?"))
            });
        }
        Err(api_error(status, &bytes))
    }
}

/// Methods for `drover release publish`: existence checks and streamed
/// uploads of large artifacts.
impl Client {
    /// `HEAD path`: `Ok(true)` on 2xx, `Ok(false)` on 404.
    pub async fn exists(&self, path: &str) -> CliResult<bool> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .head(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| unreachable(&self.base, &e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(true);
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        // A HEAD answer has no body: say what the status means.
        let (code, message) = match status {
            StatusCode::UNAUTHORIZED => {
                ("unauthorized", "the token was refused (401): log in again")
            }
            StatusCode::FORBIDDEN => ("forbidden", "the token lacks the right for this (403)"),
            _ => ("http_error", "the server could not answer"),
        };
        let kind = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Kind::Auth,
            _ => Kind::Failed,
        };
        Err(CliError::new(
            kind,
            code,
            format!("HEAD {path}: {message} ({status})"),
        ))
    }

    /// `PUT path` with `len` bytes read from `file` (positioned where the
    /// bytes start) as the body, streamed in 64 KiB chunks; `progress` is
    /// called with each chunk's length. The time limit grows with the size
    /// (5 min plus 1 s per 32 KiB), so only a link slower than about
    /// 256 kbit/s on average times out.
    pub async fn put_file<T: DeserializeOwned>(
        &self,
        path: &str,
        file: tokio::fs::File,
        len: u64,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> CliResult<T> {
        let url = format!("{}{path}", self.base);
        let body = reqwest::Body::wrap(FileBody {
            file,
            remaining: len,
            progress: Box::new(progress),
        });
        let req = self
            .http
            .put(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .timeout(Duration::from_secs(300 + len / (32 * 1024)))
            .body(body);
        self.finish(req).await.map(|(_, v)| v)
    }

    /// `POST path` with a JSON body, returning the status too (to tell 201
    /// "created" from 200 "already there").
    pub async fn post_with_status<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> CliResult<(StatusCode, T)> {
        let url = format!("{}{path}", self.base);
        let req = self.http.post(&url).bearer_auth(&self.token).json(body);
        self.finish(req).await
    }

    async fn finish<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> CliResult<(StatusCode, T)> {
        let resp = req.send().await.map_err(|e| unreachable(&self.base, &e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| unreachable(&self.base, &e))?;
        if status.is_success() {
            let value = serde_json::from_slice(&bytes).map_err(|e| {
                CliError::failed(format!("the server's answer is not what this CLI expects ({e}); are CLI and server the same version?"))
            })?;
            return Ok((status, value));
        }
        Err(api_error(status, &bytes))
    }
}

/// A request body that reads a bounded range of a file as it is sent.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    progress: Box<dyn Fn(u64) + Send + Sync>,
}

impl http_body::Body for FileBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        use std::task::Poll;
        use tokio::io::AsyncRead;
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this.remaining.min(64 * 1024) as usize;
        let mut buf = vec![0u8; want];
        let mut rb = tokio::io::ReadBuf::new(&mut buf);
        match std::pin::Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file ended before the artifact did",
                    ))));
                }
                buf.truncate(n);
                this.remaining -= n as u64;
                (this.progress)(n as u64);
                Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from(buf)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> CliError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (
            "http_error".into(),
            format!("the server answered {status} without an error document"),
        ),
    };
    let kind = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Kind::Auth,
        StatusCode::NOT_FOUND => Kind::NotFound,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => Kind::Usage,
        _ => Kind::Failed,
    };
    CliError::new(kind, &code, message)
}

fn unreachable(base: &str, e: &reqwest::Error) -> CliError {
    // The innermost cause says what really happened (refused, bad certificate…).
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let hint = if cause.to_string().contains("certificate")
        || cause.to_string().contains("UnknownIssuer")
    {
        "; pass --ca-cert DATA/ca.crt (the server's fleet CA) to trust it"
    } else {
        "; is the server running, and is the URL right?"
    };
    CliError::new(
        Kind::Unreachable,
        "unreachable",
        format!("cannot reach {base}: {cause}{hint}"),
    )
}

/// Percent-encodes a query-string or path value.
pub fn escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
