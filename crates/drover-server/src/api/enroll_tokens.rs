//! `/api/v1/enroll-tokens`: tokens that let devices enroll unattended.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_proto::api::{
    CreateEnrollToken, CreatedEnrollToken, EnrollTokenInfo, EnrollTokenList, ErrorBody, Role,
};
use drover_proto::device::EnrollmentToken;

use super::{ApiJson, AppState, AuditCtx, Audited, validate};
use crate::auth::{Caller, mint_secret};
use crate::clock::{now_ms, rfc3339};
use crate::devices::enrollment::ENROLL_SECRET_PREFIX;
use crate::error::{ApiError, ApiResult};
use crate::store::{Change, EnrollTokenRecord};

const MAX_EXPIRES_IN_SECS: u64 = 10 * 365 * 24 * 3600;

fn info(t: &EnrollTokenRecord) -> EnrollTokenInfo {
    EnrollTokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        tags: t.tags.clone(),
        uses_left: t.uses_left,
        expires_at: t.expires_at.map(rfc3339),
        created_at: rfc3339(t.created_at),
        created_by: t.created_by.clone(),
        revoked_at: t.revoked_at.map(rfc3339),
    }
}

/// Create an enrollment token; the printed token carries the server URL and
/// the fleet CA fingerprint, so a device needs nothing else.
#[utoipa::path(post, path = "/api/v1/enroll-tokens", tag = "enrollment",
    security(("bearer" = ["operator"])),
    request_body = CreateEnrollToken,
    responses((status = 201, body = CreatedEnrollToken), (status = 400, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ctx: AuditCtx,
    ApiJson(req): ApiJson<CreateEnrollToken>,
) -> ApiResult<(
    StatusCode,
    Extension<Audited>,
    axum::Json<CreatedEnrollToken>,
)> {
    ctx.caller.require(Role::Operator)?;
    let name = req.name.unwrap_or_else(|| "enroll".into());
    super::tokens::validate_name(&name)?;
    validate::tags(&req.tags)?;
    let now = now_ms();
    let expires_at = match req.expires_in_secs {
        None => None,
        Some(s) if (60..=MAX_EXPIRES_IN_SECS).contains(&s) => Some(now + s as i64 * 1000),
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "expires_in_secs {s} is out of range: use 60 to {MAX_EXPIRES_IN_SECS}"
            )));
        }
    };
    let uses_left = match req.uses {
        Some(0) => {
            return Err(ApiError::bad_request(
                "uses must be at least 1 (or absent for unlimited)",
            ));
        }
        Some(n) if n > 10_000_000 => {
            return Err(ApiError::bad_request("uses must be at most 10000000"));
        }
        other => other.map(|n| n as i64),
    };
    let minted = mint_secret(ENROLL_SECRET_PREFIX);
    let record = EnrollTokenRecord {
        id: minted.id.clone(),
        name,
        secret_hash: minted.secret_hash,
        tags: req.tags,
        uses_left,
        expires_at,
        created_at: now,
        created_by: Some(ctx.caller.token_id.clone()),
        revoked_at: None,
        version: 1,
    };
    let audit = ctx.success(
        StatusCode::CREATED,
        Some(&record.id),
        serde_json::json!({ "name": record.name, "tags": record.tags, "uses": uses_left }),
    );
    state
        .store
        .apply(
            &[Change::PutEnrollToken {
                token: record.clone(),
                expected_version: None,
            }],
            Some(&audit),
        )
        .await?;
    let token = EnrollmentToken {
        url: state.public_url.clone(),
        ca: state.devices.ca.fingerprint(),
        secret: minted.bearer,
        release_roots: Vec::new(),
    };
    Ok((
        StatusCode::CREATED,
        Extension(Audited),
        axum::Json(CreatedEnrollToken {
            info: info(&record),
            token: token.encode(),
        }),
    ))
}

/// List enrollment tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/enroll-tokens", tag = "enrollment",
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = EnrollTokenList)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::Json<EnrollTokenList>> {
    caller.require(Role::Viewer)?;
    let tokens = state.store.list_enroll_tokens().await?;
    Ok(axum::Json(EnrollTokenList {
        tokens: tokens.iter().map(info).collect(),
    }))
}

/// Revoke an enrollment token: no more devices can enroll with it.
#[utoipa::path(delete, path = "/api/v1/enroll-tokens/{id}", tag = "enrollment",
    security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "enrollment token id")),
    responses((status = 200, body = EnrollTokenInfo), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<(Extension<Audited>, axum::Json<EnrollTokenInfo>)> {
    ctx.caller.require(Role::Operator)?;
    for _ in 0..5 {
        let Some(t) = state.store.get_enroll_token(&id).await? else {
            return Err(ApiError::not_found(format!(
                "no enrollment token {id:?}; `drover enroll-tokens list` shows them"
            )));
        };
        if t.revoked_at.is_some() {
            return Err(ApiError::conflict(format!(
                "enrollment token {id} is already revoked"
            )));
        }
        let mut revoked = t.clone();
        revoked.revoked_at = Some(now_ms());
        let audit = ctx.success(StatusCode::OK, Some(&id), serde_json::json!({}));
        if state
            .store
            .apply(
                &[Change::PutEnrollToken {
                    token: revoked.clone(),
                    expected_version: Some(t.version),
                }],
                Some(&audit),
            )
            .await?
        {
            return Ok((Extension(Audited), axum::Json(info(&revoked))));
        }
    }
    Err(ApiError::conflict(
        "the token changed while revoking it; try again",
    ))
}
