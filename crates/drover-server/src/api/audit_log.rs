//! `/api/v1/audit`: read the audit log, newest first.

use axum::extract::State;
use drover_proto::api::{AuditEntry, AuditPage, ErrorBody, Role};
use serde::Deserialize;

use super::{ApiQuery, AppState};
use crate::auth::Caller;
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::store::AuditQuery;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// How many entries, 1–1000 (default 100).
    limit: Option<u32>,
    /// Only entries older than this id (from `next_before`).
    before: Option<i64>,
    /// Only calls made with this token id.
    actor: Option<String>,
    /// Only this action, e.g. `tokens.create`.
    action: Option<String>,
}

/// Read the audit log: every mutating call, who made it and how it ended.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    security(("bearer" = ["viewer"])),
    params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> ApiResult<axum::Json<AuditPage>> {
    caller.require(Role::Viewer)?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is out of range: use 1 to 1000"
        )));
    }
    let records = state
        .store
        .list_audit(&AuditQuery {
            before: p.before,
            actor: p.actor,
            action: p.action,
            limit,
        })
        .await?;
    let next_before = (records.len() == limit as usize)
        .then(|| records.last().map(|r| r.id))
        .flatten();
    let entries = records
        .into_iter()
        .map(|r| AuditEntry {
            id: r.id,
            at: rfc3339(r.entry.at),
            actor: r.entry.actor,
            actor_name: r.entry.actor_name,
            action: r.entry.action,
            target: r.entry.target,
            method: r.entry.method,
            path: r.entry.path,
            status: r.entry.status,
            outcome: r.entry.outcome,
            detail: r.entry.detail,
        })
        .collect();
    Ok(axum::Json(AuditPage {
        entries,
        next_before,
    }))
}
