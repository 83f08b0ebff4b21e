//! Request layers: metrics and tracing, authentication, and the audit log.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use drover_proto::api::AuditOutcome;
use tracing::Instrument;

use super::{AppState, Audited, action_name};
use crate::auth::{AuthRejection, Caller, constant_time_eq, parse_token, sha256_hex};
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::store::NewAudit;

/// How often a token's `last_used_at` is written at most.
const TOUCH_INTERVAL_MS: i64 = 60_000;

/// One span and one counter per request, labelled by route (not raw path,
/// so the metric's cardinality stays bounded).
pub async fn observe(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("request", %method, path = %req.uri().path());
    let started = std::time::Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.in_scope(|| {
        tracing::debug!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "answered"
        )
    });
    metrics::counter!("drover_http_requests_total",
        "method" => method.to_string(), "route" => route, "status" => status.to_string())
    .increment(1);
    resp
}

fn is_mutating(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Resolves the bearer token into a [`Caller`], or records why not. The
/// handler's extractor turns a missing caller into the 401 answer, so routes
/// without authentication needs stay reachable.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    match resolve_caller(&state, req.headers().get(header::AUTHORIZATION)).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
        }
        Err(AuthFailure::Rejected(reason, err)) => {
            metrics::counter!("drover_api_auth_failures_total", "reason" => reason).increment(1);
            tracing::info!(reason, "API request without a valid token");
            req.extensions_mut().insert(AuthRejection(err));
        }
        Err(AuthFailure::Store(err)) => return err.into_response(),
    }
    next.run(req).await
}

enum AuthFailure {
    Rejected(&'static str, ApiError),
    Store(ApiError),
}

async fn resolve_caller(
    state: &AppState,
    header: Option<&axum::http::HeaderValue>,
) -> Result<Caller, AuthFailure> {
    let Some(value) = header else {
        return Err(AuthFailure::Rejected(
            "missing",
            ApiError::unauthorized(
                "missing_token",
                "no API token: send `Authorization: Bearer <token>` (the CLI does after `drover login`)",
            ),
        ));
    };
    let bearer = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some((id, secret)) = bearer.and_then(parse_token) else {
        return Err(AuthFailure::Rejected(
            "malformed",
            ApiError::unauthorized(
                "invalid_token",
                "the Authorization header is not `Bearer drv_…`: copy the whole token as it was printed",
            ),
        ));
    };
    let unknown = || {
        AuthFailure::Rejected(
            "unknown",
            ApiError::unauthorized(
                "invalid_token",
                "this API token is not known to this server: check the token and the server URL",
            ),
        )
    };
    let record = state
        .store
        .get_token(id)
        .await
        .map_err(|e| AuthFailure::Store(e.into()))?
        .ok_or_else(unknown)?;
    if !constant_time_eq(&sha256_hex(secret.as_bytes()), &record.secret_hash) {
        return Err(unknown());
    }
    let now = now_ms();
    if let Some(at) = record.revoked_at {
        return Err(AuthFailure::Rejected(
            "revoked",
            ApiError::unauthorized(
                "token_revoked",
                format!(
                    "token {id} was revoked at {}: ask an admin for a new token",
                    crate::clock::rfc3339(at)
                ),
            ),
        ));
    }
    if let Some(at) = record.expires_at.filter(|at| *at <= now) {
        return Err(AuthFailure::Rejected(
            "expired",
            ApiError::unauthorized(
                "token_expired",
                format!(
                    "token {id} expired at {}: ask an admin for a new token",
                    crate::clock::rfc3339(at)
                ),
            ),
        ));
    }
    let due = {
        let mut touched = state.touched.lock().unwrap_or_else(|p| p.into_inner());
        let last = touched
            .get(id)
            .copied()
            .or(record.last_used_at)
            .unwrap_or(0);
        let due = now - last >= TOUCH_INTERVAL_MS;
        if due {
            touched.insert(id.to_string(), now);
        }
        due
    };
    if due && let Err(e) = state.store.touch_token(id, now).await {
        // Losing a last-used time is harmless; the request goes on.
        tracing::warn!(error = %e, token_id = id, "could not record token use");
    }
    Ok(Caller {
        token_id: record.id,
        name: record.name,
        role: record.role,
    })
}

/// Writes an audit entry for every authenticated mutating call that its
/// handler did not audit itself: refusals, bad input and failures.
pub async fn audit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let caller = req.extensions().get::<Caller>().cloned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let (Some(caller), true) = (caller, is_mutating(&method)) else {
        return resp;
    };
    if resp.extensions().get::<Audited>().is_some() {
        return resp;
    }
    let status = resp.status();
    let outcome = match status {
        StatusCode::FORBIDDEN => AuditOutcome::Denied,
        s if s.is_success() => AuditOutcome::Success,
        _ => AuditOutcome::Failed,
    };
    if outcome == AuditOutcome::Success {
        tracing::warn!(%method, %path, "a change was not audited by its handler; recording it now");
    }
    let reason = resp
        .extensions()
        .get::<ApiError>()
        .map(|e| serde_json::json!({ "error": { "code": e.code, "message": e.message } }));
    let entry = NewAudit {
        at: now_ms(),
        actor: caller.token_id,
        actor_name: caller.name,
        action: action_name(&method, route.as_deref().unwrap_or(&path)),
        target: None,
        method: method.to_string(),
        path,
        status: status.as_u16(),
        outcome,
        detail: reason.unwrap_or_else(|| serde_json::json!({})),
    };
    if let Err(e) = state.store.append_audit(&entry).await {
        metrics::counter!("drover_audit_write_failures_total").increment(1);
        tracing::error!(error = %e, action = %entry.action, "could not write audit entry");
    }
    resp
}
