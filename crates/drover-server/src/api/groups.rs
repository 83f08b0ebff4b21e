//! `/api/v1/groups`: static and dynamic device groups and their desired
//! configuration documents.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_proto::api::{CreateGroup, ErrorBody, GroupInfo, GroupList, Role, SetDesired};

use super::{ApiJson, AppState, AuditCtx, Audited, validate};
use crate::auth::Caller;
use crate::clock::{now_ms, rfc3339};
use crate::devices::is_member;
use crate::error::{ApiError, ApiResult};
use crate::store::{Change, DeviceRecord, GroupRecord};

/// Most static members one group may list.
const MAX_STATIC_MEMBERS: usize = 10_000;

fn info(state: &AppState, g: &GroupRecord, devices: &[DeviceRecord]) -> GroupInfo {
    GroupInfo {
        name: g.name.clone(),
        query: g.query.clone(),
        static_members: g.members.clone(),
        members: devices
            .iter()
            .filter(|d| is_member(g, d, state.devices.connection(&d.id)))
            .map(|d| d.id.clone())
            .collect(),
        desired: g.desired.clone(),
        created_at: rfc3339(g.created_at),
        updated_at: rfc3339(g.updated_at),
    }
}

async fn reconcile_all(state: &AppState) {
    state.devices.groups_changed();
    if let Err(e) = state.devices.reconcile(None).await {
        tracing::warn!(error = %e, "could not push desired state");
    }
}

/// Create a group from a query (dynamic), a device list (static), or both.
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups",
    security(("bearer" = ["operator"])),
    request_body = CreateGroup,
    responses((status = 201, body = GroupInfo), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ctx: AuditCtx,
    ApiJson(req): ApiJson<CreateGroup>,
) -> ApiResult<(StatusCode, Extension<Audited>, axum::Json<GroupInfo>)> {
    ctx.caller.require(Role::Operator)?;
    validate::group_name(&req.name)?;
    if req.query.is_none() && req.devices.is_empty() {
        return Err(ApiError::bad_request(
            "a group needs a query, devices, or both",
        ));
    }
    let query = match &req.query {
        Some(q) => Some(validate::query(q)?.to_string()),
        None => None,
    };
    if req.devices.len() > MAX_STATIC_MEMBERS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_STATIC_MEMBERS} static members"
        )));
    }
    let mut members = req.devices.clone();
    members.sort();
    members.dedup();
    for id in &members {
        validate::device_id(id).map_err(|e| ApiError::bad_request(e.message))?;
        if state.store.get_device(id).await?.is_none() {
            return Err(ApiError::bad_request(format!(
                "no device {id}; `drover devices list` shows them"
            )));
        }
    }
    let now = now_ms();
    let group = GroupRecord {
        name: req.name.clone(),
        query,
        members,
        desired: Default::default(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let audit = ctx.success(
        StatusCode::CREATED,
        Some(&group.name),
        serde_json::json!({ "query": group.query, "devices": group.members }),
    );
    state
        .store
        .apply(
            &[Change::PutGroup {
                group: group.clone(),
                expected_version: None,
            }],
            Some(&audit),
        )
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(_) => {
                ApiError::conflict(format!("group {} already exists", group.name))
            }
            other => other.into(),
        })?;
    reconcile_all(&state).await;
    let devices = state.store.list_devices().await?;
    Ok((
        StatusCode::CREATED,
        Extension(Audited),
        axum::Json(info(&state, &group, &devices)),
    ))
}

/// List groups with their current members.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = GroupList)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::Json<GroupList>> {
    caller.require(Role::Viewer)?;
    let groups = state.devices.groups().await?.as_ref().clone();
    let devices = state.store.list_devices().await?;
    Ok(axum::Json(GroupList {
        groups: groups.iter().map(|g| info(&state, g, &devices)).collect(),
    }))
}

async fn load(state: &AppState, name: &str) -> ApiResult<GroupRecord> {
    state.store.get_group(name).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no group {name:?}; `drover groups list` shows them"
        ))
    })
}

/// Show one group with its current members.
#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups",
    security(("bearer" = ["viewer"])),
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, body = GroupInfo), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<GroupInfo>> {
    caller.require(Role::Viewer)?;
    let g = load(&state, &name).await?;
    let devices = state.store.list_devices().await?;
    Ok(axum::Json(info(&state, &g, &devices)))
}

/// Delete a group (devices stay; they lose the group's configuration).
#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups",
    security(("bearer" = ["operator"])),
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, body = GroupInfo), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(name): Path<String>,
) -> ApiResult<(Extension<Audited>, axum::Json<GroupInfo>)> {
    ctx.caller.require(Role::Operator)?;
    let g = load(&state, &name).await?;
    let devices = state.store.list_devices().await?;
    let before = info(&state, &g, &devices);
    let audit = ctx.success(StatusCode::OK, Some(&name), serde_json::json!({}));
    if !state
        .store
        .apply(&[Change::DeleteGroup { name: name.clone() }], Some(&audit))
        .await?
    {
        return Err(ApiError::not_found(format!("no group {name:?}")));
    }
    reconcile_all(&state).await;
    Ok((Extension(Audited), axum::Json(before)))
}

/// Replace the group's desired configuration document.
#[utoipa::path(put, path = "/api/v1/groups/{name}/desired", tag = "groups",
    security(("bearer" = ["operator"])),
    params(("name" = String, Path, description = "group name")),
    request_body = SetDesired,
    responses((status = 200, body = GroupInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_desired(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SetDesired>,
) -> ApiResult<(Extension<Audited>, axum::Json<GroupInfo>)> {
    ctx.caller.require(Role::Operator)?;
    validate::document(
        "configuration",
        &req.config,
        drover_proto::device::MAX_CONFIG_ENTRIES,
        4096,
    )?;
    for _ in 0..5 {
        let g = load(&state, &name).await?;
        let mut updated = g.clone();
        updated.desired = req.config.clone();
        updated.updated_at = now_ms();
        let audit = ctx.success(
            StatusCode::OK,
            Some(&name),
            serde_json::json!({ "config": req.config }),
        );
        if state
            .store
            .apply(
                &[Change::PutGroup {
                    group: updated.clone(),
                    expected_version: Some(g.version),
                }],
                Some(&audit),
            )
            .await?
        {
            reconcile_all(&state).await;
            let devices = state.store.list_devices().await?;
            return Ok((
                Extension(Audited),
                axum::Json(info(&state, &updated, &devices)),
            ));
        }
    }
    Err(ApiError::conflict(format!(
        "group {name} kept changing; try again"
    )))
}
