//! `/api/v1/devices`: list, inspect, accept/reject/revoke, tag, and set the
//! desired configuration of devices; pre-authorize keys.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_proto::api::{
    DesiredView, DeviceDetail, DeviceList, DeviceSummary, Drift, ErrorBody, Preauthorize,
    PreauthorizedKey, ReportedView, Role, SetDesired, TagChange,
};
use serde::Deserialize;

use super::{ApiJson, ApiQuery, AppState, AuditCtx, Audited, validate};
use crate::auth::Caller;
use crate::clock::{now_ms, rfc3339};
use crate::devices::{Effective, effective, view};
use crate::error::{ApiError, ApiResult};
use crate::pki::device_id_for_spki;
use crate::store::{ApplyStatus, Change, DeviceRecord, Enrollment, GroupRecord, PreauthRecord};

fn summary(
    d: &DeviceRecord,
    connection: &str,
    eff: &Effective,
    last_seen: Option<i64>,
) -> DeviceSummary {
    DeviceSummary {
        id: d.id.clone(),
        hostname: d.hostname.clone(),
        enrollment: d.enrollment.as_str().into(),
        connection: connection.into(),
        tags: d.tags.clone(),
        agent_version: d.agent_version.clone(),
        last_seen: last_seen.map(rfc3339),
        in_sync: d
            .reported
            .as_ref()
            .is_some_and(|r| r.revision == eff.revision && r.status == ApplyStatus::Applied),
    }
}

fn drift(
    desired: &drover_proto::api::Document,
    reported: Option<&drover_proto::api::Document>,
) -> Vec<Drift> {
    let empty = Default::default();
    let reported = reported.unwrap_or(&empty);
    let mut keys: Vec<&String> = desired.keys().chain(reported.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| desired.get(*k) != reported.get(*k))
        .map(|k| Drift {
            key: k.clone(),
            desired: desired.get(k).cloned(),
            reported: reported.get(k).cloned(),
        })
        .collect()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only devices matching this query (docs/query.md), e.g. `tag.region = eu and status = online`.
    query: Option<String>,
}

/// List devices, optionally filtered by a query.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices",
    security(("bearer" = ["viewer"])),
    params(ListParams),
    responses((status = 200, body = DeviceList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<axum::Json<DeviceList>> {
    caller.require(Role::Viewer)?;
    let query = p
        .query
        .as_deref()
        .filter(|q| !q.trim().is_empty())
        .map(validate::query)
        .transpose()?;
    let groups = state.devices.groups().await?.as_ref().clone();
    let devices = state.store.list_devices().await?;
    let mut out = Vec::new();
    for d in &devices {
        let conn = state.devices.connection(&d.id);
        let eff = effective(d, &groups, conn);
        if let Some(q) = &query
            && !q.matches(&view(d, conn, &eff.groups))
        {
            continue;
        }
        out.push(summary(d, conn, &eff, state.devices.last_seen(d)));
    }
    Ok(axum::Json(DeviceList { devices: out }))
}

async fn load(state: &AppState, id: &str) -> ApiResult<(DeviceRecord, Vec<GroupRecord>)> {
    validate::device_id(id)?;
    let device = state.store.get_device(id).await?.ok_or_else(|| {
        ApiError::not_found(format!("no device {id}; `drover devices list` shows them"))
    })?;
    Ok((device, state.devices.groups().await?.as_ref().clone()))
}

fn detail(state: &AppState, d: &DeviceRecord, groups: &[GroupRecord]) -> DeviceDetail {
    let conn = state.devices.connection(&d.id);
    let eff = effective(d, groups, conn);
    DeviceDetail {
        summary: summary(d, conn, &eff, state.devices.last_seen(d)),
        inventory: d.inventory.clone(),
        device_desired: d.desired.clone(),
        drift: drift(&eff.config, d.reported.as_ref().map(|r| &r.config)),
        desired: DesiredView {
            revision: eff.revision.clone(),
            config: eff.config.clone(),
            groups: eff.groups.clone(),
        },
        reported: d.reported.as_ref().map(|r| ReportedView {
            revision: r.revision.clone(),
            status: match r.status {
                ApplyStatus::Applied => "applied".into(),
                ApplyStatus::Failed => "failed".into(),
            },
            config: r.config.clone(),
            error: r.error.clone(),
            at: rfc3339(r.at),
        }),
        enrolled_via: d.enrolled_via.clone(),
        certificate_expires_at: d.cert_not_after.map(rfc3339),
        created_at: rfc3339(d.created_at),
    }
}

/// Show one device: inventory, desired vs reported configuration and drift.
#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices",
    security(("bearer" = ["viewer"])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceDetail), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<DeviceDetail>> {
    caller.require(Role::Viewer)?;
    let (d, groups) = load(&state, &id).await?;
    Ok(axum::Json(detail(&state, &d, &groups)))
}

/// Reads, edits and writes a device with its audit entry, retrying on races.
async fn mutate(
    state: &AppState,
    ctx: &AuditCtx,
    id: &str,
    detail_json: serde_json::Value,
    edit: impl Fn(&mut DeviceRecord) -> Result<(), ApiError>,
) -> ApiResult<DeviceRecord> {
    validate::device_id(id)?;
    for _ in 0..5 {
        let Some(mut d) = state.store.get_device(id).await? else {
            return Err(ApiError::not_found(format!(
                "no device {id}; `drover devices list` shows them"
            )));
        };
        let version = d.version;
        edit(&mut d)?;
        d.updated_at = now_ms();
        let audit = ctx.success(StatusCode::OK, Some(id), detail_json.clone());
        if state
            .store
            .apply(
                &[Change::PutDevice {
                    device: d.clone(),
                    expected_version: Some(version),
                }],
                Some(&audit),
            )
            .await?
        {
            d.version = version + 1;
            return Ok(d);
        }
    }
    Err(ApiError::conflict(format!(
        "device {id} kept changing while updating it; try again"
    )))
}

async fn respond(
    state: &AppState,
    d: DeviceRecord,
) -> ApiResult<(Extension<Audited>, axum::Json<DeviceDetail>)> {
    // Tags and documents may change what the device should run.
    if let Err(e) = state.devices.reconcile(Some(&d.id)).await {
        tracing::warn!(error = %e, "could not push desired state");
    }
    let groups = state.devices.groups().await?.as_ref().clone();
    Ok((Extension(Audited), axum::Json(detail(state, &d, &groups))))
}

/// Accept a pending device; it gets its certificate when it next asks.
#[utoipa::path(post, path = "/api/v1/devices/{id}/accept", tag = "devices",
    security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceDetail), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn accept(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<(Extension<Audited>, axum::Json<DeviceDetail>)> {
    decide_pending(&state, &ctx, &id, Enrollment::Accepted).await
}

/// Reject a pending device: it can never enroll with this key.
#[utoipa::path(post, path = "/api/v1/devices/{id}/reject", tag = "devices",
    security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceDetail), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn reject(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<(Extension<Audited>, axum::Json<DeviceDetail>)> {
    decide_pending(&state, &ctx, &id, Enrollment::Rejected).await
}

/// Accepts or rejects a pending device (an operator's decision).
async fn decide_pending(
    state: &AppState,
    ctx: &AuditCtx,
    id: &str,
    to: Enrollment,
) -> ApiResult<(Extension<Audited>, axum::Json<DeviceDetail>)> {
    ctx.caller.require(Role::Operator)?;
    let d = mutate(state, ctx, id, serde_json::json!({}), |d| {
        match d.enrollment {
            Enrollment::Pending => {
                d.enrollment = to;
                if to == Enrollment::Accepted {
                    d.enrolled_via = Some("operator".into());
                }
                Ok(())
            }
            other => Err(ApiError::conflict(format!(
                "device {} is {}, not pending{}",
                d.id,
                other.as_str(),
                if to == Enrollment::Rejected {
                    "; revoke an accepted device instead"
                } else {
                    ""
                }
            ))),
        }
    })
    .await?;
    respond(state, d).await
}

/// Revoke a device: its live connection closes within seconds and it can
/// never connect or enroll again with this key.
#[utoipa::path(post, path = "/api/v1/devices/{id}/revoke", tag = "devices",
    security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceDetail), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<(Extension<Audited>, axum::Json<DeviceDetail>)> {
    ctx.caller.require(Role::Operator)?;
    let d = mutate(&state, &ctx, &id, serde_json::json!({}), |d| {
        match d.enrollment {
            Enrollment::Revoked => Err(ApiError::conflict(format!(
                "device {} is already revoked",
                d.id
            ))),
            _ => {
                d.enrollment = Enrollment::Revoked;
                Ok(())
            }
        }
    })
    .await?;
    state
        .devices
        .registry
        .close(&id, "device_revoked", "an operator revoked this device");
    metrics::counter!("drover_device_revocations_total").increment(1);
    respond(&state, d).await
}

/// Set or remove tags.
#[utoipa::path(post, path = "/api/v1/devices/{id}/tags", tag = "devices",
    security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "device id")),
    request_body = TagChange,
    responses((status = 200, body = DeviceDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn tags(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(id): Path<String>,
    ApiJson(change): ApiJson<TagChange>,
) -> ApiResult<(Extension<Audited>, axum::Json<DeviceDetail>)> {
    ctx.caller.require(Role::Operator)?;
    validate::tags(&change.set)?;
    for k in &change.remove {
        validate::key("tag", k)?;
    }
    if change.set.is_empty() && change.remove.is_empty() {
        return Err(ApiError::bad_request(
            "nothing to change: give tags to set or remove",
        ));
    }
    let detail_json = serde_json::json!({ "set": change.set, "remove": change.remove });
    let d = mutate(&state, &ctx, &id, detail_json, |d| {
        for k in &change.remove {
            d.tags.remove(k);
        }
        d.tags
            .extend(change.set.iter().map(|(k, v)| (k.clone(), v.clone())));
        validate::tags(&d.tags)
    })
    .await?;
    respond(&state, d).await
}

/// Replace the device's own desired configuration (groups add theirs).
#[utoipa::path(put, path = "/api/v1/devices/{id}/desired", tag = "devices",
    security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "device id")),
    request_body = SetDesired,
    responses((status = 200, body = DeviceDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_desired(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetDesired>,
) -> ApiResult<(Extension<Audited>, axum::Json<DeviceDetail>)> {
    ctx.caller.require(Role::Operator)?;
    validate::document(
        "configuration",
        &req.config,
        drover_proto::device::MAX_CONFIG_ENTRIES,
        4096,
    )?;
    let d = mutate(
        &state,
        &ctx,
        &id,
        serde_json::json!({ "config": req.config }),
        |d| {
            d.desired = req.config.clone();
            Ok(())
        },
    )
    .await?;
    respond(&state, d).await
}

/// Allow a device key in advance: the device is accepted on first contact.
#[utoipa::path(post, path = "/api/v1/devices/preauthorize", tag = "devices",
    security(("bearer" = ["operator"])),
    request_body = Preauthorize,
    responses((status = 201, body = PreauthorizedKey), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn preauthorize(
    State(state): State<AppState>,
    ctx: AuditCtx,
    ApiJson(req): ApiJson<Preauthorize>,
) -> ApiResult<(StatusCode, Extension<Audited>, axum::Json<PreauthorizedKey>)> {
    use rustls_pki_types::SubjectPublicKeyInfoDer;
    use rustls_pki_types::pem::PemObject;
    ctx.caller.require(Role::Operator)?;
    validate::tags(&req.tags)?;
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(req.public_key_pem.as_bytes()).map_err(|e| {
        ApiError::bad_request(format!("public_key_pem is not a PEM public key ({e}); `drover-agent key` prints the device's"))
    })?;
    let spki = spki.as_ref().to_vec();
    let parsed = {
        use x509_parser::prelude::FromDer;
        x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki)
    };
    if !matches!(parsed, Ok((rest, _)) if rest.is_empty()) {
        return Err(ApiError::bad_request(
            "public_key_pem does not hold a valid public key",
        ));
    }
    let device_id = device_id_for_spki(&spki);
    let public_key = hex::encode(&spki);
    if let Some(existing) = state.store.get_device(&device_id).await? {
        return Err(ApiError::conflict(format!(
            "device {device_id} already exists ({})",
            existing.enrollment.as_str()
        )));
    }
    let rec = PreauthRecord {
        public_key,
        device_id: device_id.clone(),
        tags: req.tags,
        created_at: now_ms(),
        created_by: Some(ctx.caller.token_id.clone()),
    };
    let audit = ctx.success(
        StatusCode::CREATED,
        Some(&device_id),
        serde_json::json!({ "tags": rec.tags }),
    );
    state
        .store
        .apply(&[Change::PutPreauth(rec.clone())], Some(&audit))
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(_) => ApiError::conflict(format!(
                "the key of device {device_id} is already pre-authorized"
            )),
            other => other.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Extension(Audited),
        axum::Json(PreauthorizedKey {
            device_id,
            tags: rec.tags,
            created_at: rfc3339(rec.created_at),
        }),
    ))
}

/// Keys allowed in advance that have not enrolled yet.
#[utoipa::path(get, path = "/api/v1/devices/preauthorized", tag = "devices",
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = Vec<PreauthorizedKey>)))]
pub async fn preauthorized(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::Json<Vec<PreauthorizedKey>>> {
    caller.require(Role::Viewer)?;
    let keys = state.store.list_preauth().await?;
    Ok(axum::Json(
        keys.into_iter()
            .map(|k| PreauthorizedKey {
                device_id: k.device_id,
                tags: k.tags,
                created_at: rfc3339(k.created_at),
            })
            .collect(),
    ))
}
