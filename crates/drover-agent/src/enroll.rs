//! Enrollment from the device's side: pin the fleet CA, send a CSR for the
//! device's own key, store the certificate (or learn it is pending).

use std::path::Path;

use drover_proto::api::ErrorBody;
use drover_proto::device::{EnrollRequest, EnrollResponse, EnrollStatus, EnrollmentToken};
use serde::Deserialize;

use crate::https;
use crate::identity::{self, ServerInfo};

/// How the device knows it talks to the right server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// An operator's enrollment token: URL, CA fingerprint and secret.
    Token(EnrollmentToken),
    /// No token: a URL and the CA fingerprint (the device then waits as
    /// pending, unless its key was pre-authorized).
    Pinned { url: String, ca_fingerprint: String },
}

impl Trust {
    fn url(&self) -> &str {
        match self {
            Trust::Token(t) => &t.url,
            Trust::Pinned { url, .. } => url,
        }
    }
    fn fingerprint(&self) -> String {
        match self {
            Trust::Token(t) => t.ca.to_lowercase(),
            Trust::Pinned { ca_fingerprint, .. } => ca_fingerprint.to_lowercase(),
        }
    }
    fn secret(&self) -> Option<String> {
        match self {
            Trust::Token(t) => Some(t.secret.clone()),
            Trust::Pinned { .. } => None,
        }
    }
}

/// Why enrollment did not happen.
#[derive(Debug, Clone, PartialEq)]
pub enum EnrollError {
    /// The server said no (bad token, revoked, rejected): `code` is its reason.
    Refused { code: String, message: String },
    /// Network, TLS, or a server that is not the pinned one.
    Failed(String),
}

impl std::fmt::Display for EnrollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnrollError::Refused { code, message } => {
                write!(f, "the server refused enrollment ({code}): {message}")
            }
            EnrollError::Failed(m) => f.write_str(m),
        }
    }
}

#[derive(Deserialize)]
struct CaDocument {
    ca_pem: String,
}

/// Fetches the fleet CA and checks it against the pinned fingerprint.
pub async fn fetch_pinned_ca(url: &str, fingerprint: &str) -> Result<String, EnrollError> {
    let (status, body) = https::request(
        url,
        identity::fingerprint_only_tls(),
        hyper::Method::GET,
        "/v1/ca",
        None,
    )
    .await
    .map_err(EnrollError::Failed)?;
    if !status.is_success() {
        return Err(EnrollError::Failed(format!(
            "{url} answered {status} for its CA; is it a Drover server?"
        )));
    }
    let doc: CaDocument = serde_json::from_slice(&body).map_err(|e| {
        EnrollError::Failed(format!(
            "{url} sent no CA document ({e}); is it a Drover server?"
        ))
    })?;
    // Keep only the certificate that matches the pin: a CA document with
    // extra certificates must not add trust anchors.
    identity::pinned_certificate(&doc.ca_pem, fingerprint).ok_or_else(|| {
        let presented = identity::pem_fingerprint(&doc.ca_pem).unwrap_or_else(|| "no single certificate".into());
        EnrollError::Failed(format!(
            "{url} presents fleet CA {presented}, but the token pins {fingerprint}: refusing to enroll with a server that is not the expected one"
        ))
    })
}

/// Asks the server for a certificate for `key` (one `POST /v1/enroll`),
/// trusting only `ca_pem`. Nothing is written: the simulator keeps its
/// devices in memory, [`enroll`] stores the result.
pub async fn request_certificate(
    url: &str,
    ca_pem: &str,
    key: &rcgen::KeyPair,
    secret: Option<String>,
    hostname: Option<String>,
) -> Result<EnrollResponse, EnrollError> {
    let req = EnrollRequest {
        csr_pem: identity::csr_pem(key).map_err(EnrollError::Failed)?,
        token: secret,
        hostname,
    };
    let tls = identity::client_tls(ca_pem, None).map_err(EnrollError::Failed)?;
    let body = Some(serde_json::to_vec(&req).expect("serializes"));
    let (status, body) = https::request(url, tls, hyper::Method::POST, "/v1/enroll", body)
        .await
        .map_err(EnrollError::Failed)?;
    if !status.is_success() {
        let parsed = serde_json::from_slice::<ErrorBody>(&body).ok();
        // Only a client error is the server's final word; overload (429)
        // and server errors are worth asking again later.
        let permanent = status.is_client_error() && status != hyper::StatusCode::TOO_MANY_REQUESTS;
        return Err(match parsed {
            Some(b) if permanent => EnrollError::Refused {
                code: b.error.code,
                message: b.error.message,
            },
            Some(b) => EnrollError::Failed(format!(
                "the server cannot enroll devices right now ({}): {}",
                b.error.code, b.error.message
            )),
            None => EnrollError::Failed(format!("the server answered {status}")),
        });
    }
    let resp: EnrollResponse = serde_json::from_slice(&body)
        .map_err(|e| EnrollError::Failed(format!("unexpected enrollment answer: {e}")))?;
    if resp.device_id != identity::device_id(key) {
        return Err(EnrollError::Failed(
            "the server answered for another device id".into(),
        ));
    }
    if let Some(cert) = &resp.certificate_pem {
        // Check the certificate is for our key before anyone uses it.
        identity::client_tls(ca_pem, Some((cert, &key.serialize_pem())))
            .map_err(EnrollError::Failed)?;
    }
    Ok(resp)
}

/// Sends the enrollment request; stores server facts and, when accepted,
/// the certificate. Safe to repeat (a pending device asks again this way).
pub async fn enroll(
    data: &Path,
    trust: &Trust,
    hostname: Option<String>,
) -> Result<EnrollResponse, EnrollError> {
    let key = identity::load_or_create_key(data).map_err(EnrollError::Failed)?;
    let url = trust.url().trim_end_matches('/').to_string();
    let fingerprint = trust.fingerprint();
    // Reuse the pinned CA if this device already has it.
    let ca_path = data.join(identity::CA_FILE);
    let ca_pem = match std::fs::read_to_string(&ca_path) {
        Ok(pem) if identity::pem_fingerprint(&pem).as_deref() == Some(fingerprint.as_str()) => pem,
        _ => {
            let pem = fetch_pinned_ca(&url, &fingerprint).await?;
            drover_fs::write_atomic(&ca_path, pem.as_bytes(), 0o644).map_err(|e| {
                EnrollError::Failed(format!("cannot write {}: {e}", ca_path.display()))
            })?;
            pem
        }
    };
    let mut info = ServerInfo {
        url: url.clone(),
        ca_fingerprint: fingerprint,
        cert_expires_at_ms: None,
        cert_received_at_ms: None,
    };
    // A certificate left from an earlier key (the key was lost and made
    // anew) would stop `run` later: it belongs to a device that is gone.
    let cert_path = data.join(identity::CERT_FILE);
    if let Ok(old_cert) = std::fs::read_to_string(&cert_path)
        && identity::client_tls(&ca_pem, Some((&old_cert, &key.serialize_pem()))).is_err()
    {
        let _ = std::fs::remove_file(&cert_path);
    }
    let resp = request_certificate(&url, &ca_pem, &key, trust.secret(), hostname).await?;
    // Release root keys come from the operator's token, never from the
    // server: keep them for the update engine.
    if let Trust::Token(t) = trust
        && !t.release_roots.is_empty()
    {
        crate::update::engine::save_roots(data, &t.release_roots).map_err(EnrollError::Failed)?;
    }
    // Remember the server only once it answered: a refused token must not
    // leave a device that later asks again without it (and goes pending).
    if resp.status == EnrollStatus::Pending {
        identity::save_server(data, &info).map_err(EnrollError::Failed)?;
    }
    if resp.status == EnrollStatus::Accepted {
        let Some(cert) = &resp.certificate_pem else {
            return Err(EnrollError::Failed("accepted without a certificate".into()));
        };
        drover_fs::write_atomic(&data.join(identity::CERT_FILE), cert.as_bytes(), 0o644)
            .map_err(|e| EnrollError::Failed(format!("cannot write the certificate: {e}")))?;
        info.cert_expires_at_ms = resp.certificate_expires_at_ms;
        info.cert_received_at_ms = Some(now_ms());
        identity::save_server(data, &info).map_err(EnrollError::Failed)?;
    }
    Ok(resp)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
