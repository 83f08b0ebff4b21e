//! The device-facing endpoints under `/v1`: enrollment, the fleet CA, and
//! the control channel. Devices authenticate with their certificate, not
//! with API tokens, so these routes sit outside the operator API layers.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drover_proto::device::{EnrollRequest, MAX_FRAME_BYTES};
use serde::Serialize;
use tracing::Instrument;

use super::{ApiJson, AppState};
use crate::error::{ApiError, ApiResult};
use crate::http::PeerCertificate;
use crate::pki::peer_device;
use crate::store::Enrollment;

fn rate_limited(what: &'static str) -> ApiError {
    metrics::counter!("drover_device_rate_limited_total", "what" => what).increment(1);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many attempts from this address; back off and retry",
    )
}

/// `POST /v1/enroll`.
pub async fn enroll(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<Response> {
    if !state.devices.limiter.allow(peer.ip()) {
        return Err(rate_limited("enroll"));
    }
    let (status, body) = state.devices.enroll(&req).await?;
    Ok((status, axum::Json(body)).into_response())
}

#[derive(Serialize)]
pub struct CaDocument {
    ca_pem: String,
    fingerprint: String,
}

/// `GET /v1/ca`: the fleet CA certificate. Agents compare its SHA-256 with
/// the fingerprint in their enrollment token before trusting it.
pub async fn ca(State(state): State<AppState>) -> axum::Json<CaDocument> {
    axum::Json(CaDocument {
        ca_pem: state.devices.ca.cert_pem().to_string(),
        fingerprint: state.devices.ca.fingerprint(),
    })
}

/// `GET /v1/device/connect`: upgrades to the control channel after checking
/// the client certificate and the device's standing.
pub async fn connect(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Option<Extension<PeerCertificate>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let refused = |code: &'static str, status: StatusCode, message: String| {
        metrics::counter!("drover_device_connect_refused_total", "reason" => code).increment(1);
        tracing::info!(%peer, code, %message, "device connection refused");
        ApiError::new(status, code, message)
    };
    if !state.devices.limiter.allow(peer.ip()) {
        return Err(rate_limited("connect"));
    }
    let Some(Extension(cert)) = cert else {
        return Err(refused(
            "certificate_required",
            StatusCode::UNAUTHORIZED,
            "the control channel needs the device certificate from enrollment (mutual TLS)".into(),
        ));
    };
    let Some(me) = peer_device(&cert.0) else {
        return Err(refused(
            "bad_certificate",
            StatusCode::UNAUTHORIZED,
            "the client certificate cannot be read".into(),
        ));
    };
    let device = state.store.get_device(&me.device_id).await?;
    match device.as_ref().map(|d| d.enrollment) {
        Some(Enrollment::Accepted)
            if device.as_ref().is_some_and(|d| d.public_key == me.spki_hex) => {}
        Some(Enrollment::Revoked) => {
            return Err(refused(
                "device_revoked",
                StatusCode::FORBIDDEN,
                format!("device {} was revoked", me.device_id),
            ));
        }
        Some(Enrollment::Rejected) => {
            return Err(refused(
                "device_rejected",
                StatusCode::FORBIDDEN,
                format!("device {} was rejected", me.device_id),
            ));
        }
        _ => {
            return Err(refused(
                "unknown_device",
                StatusCode::FORBIDDEN,
                format!("device {} is not enrolled", me.device_id),
            ));
        }
    }
    let ws = ws.map_err(|e| ApiError::bad_request(format!("not a WebSocket upgrade: {e}")))?;
    let devices = state.devices.clone();
    let span = tracing::info_span!("device", device_id = %me.device_id, %peer);
    Ok(ws
        // Small buffers: an idle connection should cost a few KiB, not the
        // 128 KiB default (see DESIGN.md performance notes).
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "device upgrade failed"))
        .on_upgrade(move |socket| {
            crate::devices::channel::run(devices, socket, me.device_id, me.serial).instrument(span)
        }))
}

/// `GET /v1/artifacts/{sha256}`: release payloads for devices (mutual TLS
/// with an accepted device's certificate), with HTTP Range so interrupted
/// downloads resume. Immutable: cacheable forever by gateways and mirrors.
pub async fn artifact(
    State(state): State<AppState>,
    cert: Option<Extension<PeerCertificate>>,
    axum::extract::Path(sha256): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    use axum::http::header;
    let Some(me) = cert.as_ref().and_then(|Extension(c)| peer_device(&c.0)) else {
        return Err(ApiError::unauthorized(
            "certificate_required",
            "artifacts are served to enrolled devices (mutual TLS with the device certificate)",
        ));
    };
    match state.store.get_device(&me.device_id).await? {
        Some(d) if d.enrollment == Enrollment::Accepted && d.public_key == me.spki_hex => {}
        _ => {
            return Err(ApiError::forbidden(format!(
                "device {} may not download artifacts (not an accepted device)",
                me.device_id
            )));
        }
    }
    if !drover_release::is_sha256_hex(&sha256) {
        return Err(ApiError::bad_request(
            "an artifact is named by its SHA-256: 64 lower-case hex digits",
        ));
    }
    let Some(record) = state.store.get_artifact(&sha256).await? else {
        return Err(ApiError::not_found(format!("no artifact {sha256}")));
    };
    let size = record.size as u64;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(h) => match crate::artifacts::parse_range(h, size) {
            Ok(r) => r,
            Err(crate::artifacts::Unsatisfiable) => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                )
                    .into_response());
            }
        },
        None => None,
    };
    let (status, span) = match range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r),
        None => (StatusCode::OK, 0..size),
    };
    let stream = state
        .artifacts
        .read(&sha256, span.clone())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, %sha256, "artifact recorded but unreadable");
            ApiError::internal()
        })?;
    metrics::counter!("drover_artifact_bytes_served_total").increment(span.end - span.start);
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, (span.end - span.start).into());
    h.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{sha256}\"")) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) =
            header::HeaderValue::from_str(&format!("bytes {}-{}/{size}", span.start, span.end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}
