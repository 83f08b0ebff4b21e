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
