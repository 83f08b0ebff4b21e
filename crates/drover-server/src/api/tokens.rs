//! `/api/v1/tokens`: create, list, show and revoke operator API tokens.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_proto::api::{CreateToken, CreatedToken, ErrorBody, Role, TokenInfo, TokenList};

use super::{ApiJson, AppState, AuditCtx, Audited};
use crate::auth::{Caller, mint_token};
use crate::clock::{now_ms, rfc3339};
use crate::error::{ApiError, ApiResult};
use crate::store::{RevokeOutcome, TokenRecord};

/// Longest token lifetime accepted: ten years.
const MAX_EXPIRES_IN_SECS: u64 = 10 * 365 * 24 * 3600;

pub fn token_info(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role,
        created_at: rfc3339(t.created_at),
        created_by: t.created_by.clone(),
        expires_at: t.expires_at.map(rfc3339),
        revoked_at: t.revoked_at.map(rfc3339),
        last_used_at: t.last_used_at.map(rfc3339),
    }
}

/// Checks a token name: 1–64 of letters, digits, space, `-`, `_`, `.`, `@`.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || " -_.@".contains(c);
    if name.trim().is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(ApiError::bad_request(format!(
            "token name {name:?} is not allowed: use 1-64 letters, digits, spaces or - _ . @"
        )));
    }
    Ok(())
}

/// Create an API token. The secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    security(("bearer" = ["admin"])),
    request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody),
               (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    ctx: AuditCtx,
    ApiJson(req): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Extension<Audited>, axum::Json<CreatedToken>)> {
    ctx.caller.require(Role::Admin)?;
    validate_name(&req.name)?;
    let now = now_ms();
    let expires_at = match req.expires_in_secs {
        None => None,
        Some(s) if (60..=MAX_EXPIRES_IN_SECS).contains(&s) => Some(now + (s as i64) * 1000),
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "expires_in_secs {s} is out of range: use 60 to {MAX_EXPIRES_IN_SECS} seconds, or leave it out for a token that does not expire"
            )));
        }
    };
    let minted = mint_token();
    let record = TokenRecord {
        id: minted.id.clone(),
        name: req.name.clone(),
        role: req.role,
        secret_hash: minted.secret_hash,
        created_at: now,
        created_by: Some(ctx.caller.token_id.clone()),
        expires_at,
        revoked_at: None,
        last_used_at: None,
    };
    let audit = ctx.success(
        StatusCode::CREATED,
        Some(&record.id),
        serde_json::json!({ "name": record.name, "role": record.role, "expires_at": expires_at.map(rfc3339) }),
    );
    state.store.create_token(&record, Some(&audit)).await?;
    tracing::info!(token_id = %record.id, role = %record.role, by = %ctx.caller.token_id, "API token created");
    Ok((
        StatusCode::CREATED,
        Extension(Audited),
        axum::Json(CreatedToken {
            info: token_info(&record),
            token: minted.bearer,
        }),
    ))
}

/// List every API token (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    security(("bearer" = ["admin"])),
    responses((status = 200, body = TokenList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::Json<TokenList>> {
    caller.require(Role::Admin)?;
    let tokens = state.store.list_tokens().await?;
    Ok(axum::Json(TokenList {
        tokens: tokens.iter().map(token_info).collect(),
    }))
}

/// Show one API token.
#[utoipa::path(get, path = "/api/v1/tokens/{id}", tag = "tokens",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "token id")),
    responses((status = 200, body = TokenInfo), (status = 404, body = ErrorBody)))]
pub async fn get_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TokenInfo>> {
    caller.require(Role::Admin)?;
    let token = state.store.get_token(&id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no API token {id:?}; `drover tokens list` shows them"
        ))
    })?;
    Ok(axum::Json(token_info(&token)))
}

/// Revoke an API token at once. The last usable admin token cannot be revoked.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "token id")),
    responses((status = 200, body = TokenInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<(Extension<Audited>, axum::Json<TokenInfo>)> {
    ctx.caller.require(Role::Admin)?;
    let now = now_ms();
    let audit = ctx.success(StatusCode::OK, Some(&id), serde_json::json!({}));
    match state.store.revoke_token(&id, now, &audit).await? {
        RevokeOutcome::Revoked(t) => {
            tracing::info!(token_id = %id, by = %ctx.caller.token_id, "API token revoked");
            Ok((Extension(Audited), axum::Json(token_info(&t))))
        }
        RevokeOutcome::NotFound => Err(ApiError::not_found(format!(
            "no API token {id:?}; `drover tokens list` shows them"
        ))),
        RevokeOutcome::AlreadyRevoked(t) => Err(ApiError::conflict(format!(
            "token {id} was already revoked at {}",
            t.revoked_at.map(rfc3339).unwrap_or_default()
        ))),
        RevokeOutcome::LastAdmin => Err(ApiError::conflict(format!(
            "token {id} is the last usable admin token; create another admin token first, or nobody could manage tokens"
        ))),
    }
}
