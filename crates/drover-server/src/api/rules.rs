//! `/api/v1/groups/{name}/rules` and `/api/v1/devices/{id}/rules`: the
//! agent-side rule sets (docs/rules.md) of groups and single devices.
//!
//! A set is parsed and checked with the same parser the agent runs
//! (`drover-rules`) before it is stored; a refused set is answered 400
//! `invalid_rules` with the line, column and reason, and nothing changes.
//! Which set a device runs (its own, else its first group's) is decided in
//! `devices::rules`. This module never stores a set it could not parse.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_proto::api::{ErrorBody, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiJson, AppState, AuditCtx, Audited, validate};
use crate::auth::Caller;
use crate::clock::{now_ms, rfc3339};
use crate::devices::rules::{device_scope, effective_rules, group_scope};
use crate::error::{ApiError, ApiResult};
use crate::store::RuleSetRecord;

/// `PUT …/rules` body: the rule set file's text.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRules {
    /// The rule set (TOML, docs/rules.md), at most 32 KiB.
    pub text: String,
}

/// A stored rule set.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct RuleSetInfo {
    /// `group:NAME` or `device:ID`.
    pub scope: String,
    pub version: String,
    /// Names of its rules, in file order.
    pub rules: Vec<String>,
    /// Hex SHA-256 of the text.
    pub sha256: String,
    pub updated_at: String,
    pub updated_by: Option<String>,
    pub text: String,
}

/// What a device runs and reports.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct DeviceRules {
    pub device_id: String,
    /// The device's own set, if it has one.
    pub own: Option<RuleSetInfo>,
    /// The scope of the set the device should run (its own, else its
    /// first group's in name order), if any.
    pub effective_source: Option<String>,
    pub effective_version: Option<String>,
    /// What the device last reported (inventory `rules.version`,
    /// `rules.source`, `rules.error`).
    pub reported_version: Option<String>,
    pub reported_source: Option<String>,
    pub reported_error: Option<String>,
}

fn info(r: &RuleSetRecord) -> RuleSetInfo {
    RuleSetInfo {
        scope: r.scope.clone(),
        version: r.version.clone(),
        rules: drover_rules::parse(&r.text)
            .map(|s| s.rules.into_iter().map(|r| r.name).collect())
            .unwrap_or_default(),
        sha256: r.sha256.clone(),
        updated_at: rfc3339(r.updated_at),
        updated_by: r.updated_by.clone(),
        text: r.text.clone(),
    }
}

/// Parses `text` as the agent will; a refusal names the line and reason.
fn parse(text: &str) -> ApiResult<drover_rules::RuleSet> {
    drover_rules::parse(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_rules",
            format!("the rule set is refused, nothing was changed: {e}"),
        )
    })
}

async fn store(
    state: &AppState,
    ctx: &AuditCtx,
    scope: String,
    target: &str,
    text: String,
) -> ApiResult<RuleSetRecord> {
    let set = parse(&text)?;
    let record = RuleSetRecord {
        scope,
        version: set.version.clone(),
        sha256: crate::auth::sha256_hex(text.as_bytes()),
        text,
        updated_at: now_ms(),
        updated_by: Some(ctx.caller.name.clone()),
    };
    let audit = ctx.success(
        StatusCode::OK,
        Some(target),
        serde_json::json!({
            "version": record.version,
            "sha256": record.sha256,
            "rules": set.rules.len(),
        }),
    );
    state.store.put_rule_set(&record, &audit).await?;
    state.devices.rule_sets_changed();
    Ok(record)
}

async fn push(state: &AppState, only: Option<&str>) {
    if let Err(e) = state.devices.reconcile(only).await {
        tracing::warn!(error = %e, "could not push desired state");
    }
}

async fn known_group(state: &AppState, name: &str) -> ApiResult<()> {
    match state.store.get_group(name).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!(
            "no group {name:?}; `drover groups list` shows them"
        ))),
    }
}

async fn known_device(state: &AppState, id: &str) -> ApiResult<crate::store::DeviceRecord> {
    validate::device_id(id)?;
    state.store.get_device(id).await?.ok_or_else(|| {
        ApiError::not_found(format!("no device {id}; `drover devices list` shows them"))
    })
}

/// Replace the group's rule set (parsed and checked first).
#[utoipa::path(put, path = "/api/v1/groups/{name}/rules", tag = "rules",
    security(("bearer" = ["operator"])),
    params(("name" = String, Path, description = "group name")),
    request_body = SetRules,
    responses((status = 200, body = RuleSetInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_group(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SetRules>,
) -> ApiResult<(Extension<Audited>, axum::Json<RuleSetInfo>)> {
    ctx.caller.require(Role::Operator)?;
    known_group(&state, &name).await?;
    let record = store(&state, &ctx, group_scope(&name), &name, req.text).await?;
    push(&state, None).await;
    Ok((Extension(Audited), axum::Json(info(&record))))
}

/// The group's rule set.
#[utoipa::path(get, path = "/api/v1/groups/{name}/rules", tag = "rules",
    security(("bearer" = ["viewer"])),
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, body = RuleSetInfo), (status = 404, body = ErrorBody)))]
pub async fn get_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<RuleSetInfo>> {
    caller.require(Role::Viewer)?;
    match state.store.get_rule_set(&group_scope(&name)).await? {
        Some(r) => Ok(axum::Json(info(&r))),
        None => Err(ApiError::not_found(format!(
            "group {name:?} has no rule set; `drover rules apply FILE --group {name}` stores one"
        ))),
    }
}

/// Delete the group's rule set (its devices fall back to their own or
/// their next group's).
#[utoipa::path(delete, path = "/api/v1/groups/{name}/rules", tag = "rules",
    security(("bearer" = ["operator"])),
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, body = RuleSetInfo), (status = 404, body = ErrorBody)))]
pub async fn delete_group(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(name): Path<String>,
) -> ApiResult<(Extension<Audited>, axum::Json<RuleSetInfo>)> {
    ctx.caller.require(Role::Operator)?;
    delete(&state, &ctx, group_scope(&name), &name).await
}

async fn delete(
    state: &AppState,
    ctx: &AuditCtx,
    scope: String,
    target: &str,
) -> ApiResult<(Extension<Audited>, axum::Json<RuleSetInfo>)> {
    let Some(before) = state.store.get_rule_set(&scope).await? else {
        return Err(ApiError::not_found(format!("{scope} has no rule set")));
    };
    let audit = ctx.success(
        StatusCode::OK,
        Some(target),
        serde_json::json!({ "version": before.version }),
    );
    if !state.store.delete_rule_set(&scope, &audit).await? {
        return Err(ApiError::not_found(format!("{scope} has no rule set")));
    }
    state.devices.rule_sets_changed();
    push(state, None).await;
    Ok((Extension(Audited), axum::Json(info(&before))))
}

/// Replace the device's own rule set (it wins over its groups').
#[utoipa::path(put, path = "/api/v1/devices/{id}/rules", tag = "rules",
    security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "device id")),
    request_body = SetRules,
    responses((status = 200, body = RuleSetInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_device(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetRules>,
) -> ApiResult<(Extension<Audited>, axum::Json<RuleSetInfo>)> {
    ctx.caller.require(Role::Operator)?;
    known_device(&state, &id).await?;
    let record = store(&state, &ctx, device_scope(&id), &id, req.text).await?;
    push(&state, Some(&id)).await;
    Ok((Extension(Audited), axum::Json(info(&record))))
}

/// The device's own rule set, the one it should run, and what it reports.
#[utoipa::path(get, path = "/api/v1/devices/{id}/rules", tag = "rules",
    security(("bearer" = ["viewer"])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceRules), (status = 404, body = ErrorBody)))]
pub async fn get_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<DeviceRules>> {
    caller.require(Role::Viewer)?;
    let device = known_device(&state, &id).await?;
    let own = state.store.get_rule_set(&device_scope(&id)).await?;
    let groups = state.devices.groups().await?;
    let eff = crate::devices::effective(&device, &groups, state.devices.connection(&id));
    let sets = state.devices.rule_sets().await?;
    let chosen = effective_rules(&sets, &id, &eff.groups);
    let inv = |k: &str| device.inventory.get(k).cloned();
    Ok(axum::Json(DeviceRules {
        device_id: id.clone(),
        own: own.as_ref().map(info),
        effective_source: chosen.map(|(t, _)| t.source.clone()),
        effective_version: chosen.map(|(t, _)| t.version.clone()),
        reported_version: inv("rules.version"),
        reported_source: inv("rules.source"),
        reported_error: inv("rules.error"),
    }))
}

/// Delete the device's own rule set (it falls back to its groups').
#[utoipa::path(delete, path = "/api/v1/devices/{id}/rules", tag = "rules",
    security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = RuleSetInfo), (status = 404, body = ErrorBody)))]
pub async fn delete_device(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<(Extension<Audited>, axum::Json<RuleSetInfo>)> {
    ctx.caller.require(Role::Operator)?;
    validate::device_id(&id)?;
    delete(&state, &ctx, device_scope(&id), &id).await
}
