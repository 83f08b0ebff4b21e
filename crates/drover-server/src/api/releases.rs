//! `/api/v1/artifacts`, `/api/v1/releases` and `/api/v1/deployments`:
//! publishing signed releases and pointing devices at them.
//!
//! The server stores releases exactly as signed and checks only their
//! shape and that their artifacts are complete; it holds no release key and
//! its opinion of a signature does not matter: devices verify with their own
//! root keys (docs/updates.md).

use std::collections::BTreeMap;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use drover_proto::api::{
    ArtifactInfo, CreateDeployment, CreateRelease, DeploymentDevice, DeploymentInfo,
    DeploymentList, ErrorBody, ReleaseInfo, ReleaseList, ReleasePayload, Role,
};
use drover_release::{SignedKeyList, SignedManifest};

use super::{ApiJson, AppState, AuditCtx, Audited, validate};
use crate::artifacts::{MAX_ARTIFACT_BYTES, UploadError};
use crate::auth::Caller;
use crate::clock::{now_ms, rfc3339};
use crate::devices::is_member;
use crate::error::{ApiError, ApiResult};
use crate::store::{
    ArtifactRecord, DeploymentDeviceRecord, DeploymentRecord, Enrollment, ReleaseRecord,
};

/// Most devices one deployment may name explicitly.
const MAX_DEVICES: usize = 10_000;

fn check_sha(sha256: &str) -> ApiResult<()> {
    if drover_release::is_sha256_hex(sha256) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "an artifact is named by its SHA-256: 64 lower-case hex digits",
        ))
    }
}

/// Whether an artifact is stored (`drover release publish` asks before uploading).
#[utoipa::path(head, path = "/api/v1/artifacts/{sha256}", tag = "releases",
    security(("bearer" = ["viewer"])),
    params(("sha256" = String, Path, description = "SHA-256 of the artifact")),
    responses((status = 200, description = "stored"), (status = 404, description = "not stored")))]
pub async fn artifact_head(
    State(state): State<AppState>,
    caller: Caller,
    Path(sha256): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    check_sha(&sha256)?;
    match state.store.get_artifact(&sha256).await? {
        Some(a) => Ok((
            StatusCode::OK,
            [(header::CONTENT_LENGTH, a.size.to_string())],
        )
            .into_response()),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

/// Upload an artifact (a payload or a delta patch) as the raw request body.
/// The server hashes it while storing; a body that does not hash to the
/// name is refused and nothing is kept.
#[utoipa::path(put, path = "/api/v1/artifacts/{sha256}", tag = "releases",
    security(("bearer" = ["operator"])),
    params(("sha256" = String, Path, description = "SHA-256 of the body")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = ArtifactInfo), (status = 200, body = ArtifactInfo, description = "already stored"),
        (status = 411, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn artifact_put(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(sha256): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Extension<Audited>, axum::Json<ArtifactInfo>)> {
    ctx.caller.require(Role::Operator)?;
    check_sha(&sha256)?;
    let len: u64 = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "length_required",
                "send the artifact with a Content-Length header",
            )
        })?;
    if len > MAX_ARTIFACT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("an artifact is at most {MAX_ARTIFACT_BYTES} bytes"),
        ));
    }
    if let Some(a) = state.store.get_artifact(&sha256).await? {
        return Ok((
            StatusCode::OK,
            Extension(Audited),
            axum::Json(ArtifactInfo {
                sha256,
                size: a.size as u64,
                created: false,
            }),
        ));
    }
    state
        .artifacts
        .upload(&sha256, len, body.into_data_stream())
        .await
        .map_err(|e| match e {
            UploadError::HashMismatch { .. } | UploadError::SizeMismatch { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "hash_mismatch",
                e.to_string(),
            ),
            UploadError::StorageFull => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                "the server's artifact storage is full; free space on it, then upload again",
            ),
            UploadError::Body(m) => {
                ApiError::bad_request(format!("the upload was interrupted: {m}"))
            }
            UploadError::Storage(m) => {
                tracing::error!(error = %m, "artifact storage failed");
                ApiError::internal()
            }
        })?;
    let audit = ctx.success(
        StatusCode::CREATED,
        Some(&sha256),
        serde_json::json!({ "size": len }),
    );
    state
        .store
        .put_artifact(&ArtifactRecord {
            sha256: sha256.clone(),
            size: len as i64,
            created_at: now_ms(),
        })
        .await?;
    state.store.append_audit(&audit).await?;
    Ok((
        StatusCode::CREATED,
        Extension(Audited),
        axum::Json(ArtifactInfo {
            sha256,
            size: len,
            created: true,
        }),
    ))
}

fn release_info(r: &ReleaseRecord) -> ReleaseInfo {
    let signed = SignedManifest::from_json(&r.manifest).ok();
    let manifest = signed.as_ref().and_then(|s| s.parse_unverified().ok());
    ReleaseInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        version: r.version.clone(),
        device_types: r.device_types.clone(),
        payloads: manifest
            .as_ref()
            .map(|m| {
                m.payloads
                    .iter()
                    .map(|p| ReleasePayload {
                        kind: p.kind.clone(),
                        sha256: p.sha256.clone(),
                        size: p.size,
                        delta_sha256: p.delta.as_ref().map(|d| d.sha256.clone()),
                        delta_base_version: p.delta.as_ref().map(|d| d.base_version.clone()),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        signed_by: signed
            .map(|s| s.signatures.iter().map(|s| s.key_id.clone()).collect())
            .unwrap_or_default(),
        provenance: manifest
            .and_then(|m| m.provenance)
            .map(|p| serde_json::to_value(p).expect("serializes"))
            .unwrap_or(serde_json::Value::Null),
        created_at: rfc3339(r.created_at),
        created_by: r.created_by.clone(),
    }
}

/// Publish a release signed offline (`drover release build`). Every
/// payload (and delta patch) must have been uploaded first.
#[utoipa::path(post, path = "/api/v1/releases", tag = "releases",
    security(("bearer" = ["operator"])),
    request_body = CreateRelease,
    responses((status = 201, body = ReleaseInfo), (status = 200, body = ReleaseInfo, description = "the same release was already published"),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_release(
    State(state): State<AppState>,
    ctx: AuditCtx,
    ApiJson(req): ApiJson<CreateRelease>,
) -> ApiResult<(StatusCode, Extension<Audited>, axum::Json<ReleaseInfo>)> {
    ctx.caller.require(Role::Operator)?;
    let signed: SignedManifest = serde_json::from_value(req.manifest)
        .map_err(|e| ApiError::bad_request(format!("`manifest` is not a signed manifest: {e}")))?;
    let text = signed.to_json();
    let signed = SignedManifest::from_json(&text).map_err(ApiError::bad_request)?;
    if signed.signatures.is_empty() {
        return Err(ApiError::bad_request(
            "the manifest carries no signature; sign it with `drover release build --key`",
        ));
    }
    let manifest = signed.parse_unverified().map_err(ApiError::bad_request)?;
    let key_list = match req.key_list {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            let kl: SignedKeyList = serde_json::from_value(v).map_err(|e| {
                ApiError::bad_request(format!("`key_list` is not a signed key list: {e}"))
            })?;
            let text = serde_json::to_string(&kl).expect("serializes");
            if text.len() > 32 * 1024 {
                return Err(ApiError::bad_request("the key list is larger than 32 KiB"));
            }
            Some(text)
        }
    };
    for p in &manifest.payloads {
        let mut needed = vec![(p.sha256.as_str(), p.size, "payload")];
        if let Some(d) = &p.delta {
            needed.push((d.sha256.as_str(), d.size, "delta patch"));
        }
        for (sha, size, what) in needed {
            match state.store.get_artifact(sha).await? {
                Some(a) if a.size as u64 == size => {}
                Some(a) => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "artifact_mismatch",
                        format!(
                            "the {what} {sha} is stored with {} bytes but the manifest says {size}",
                            a.size
                        ),
                    ));
                }
                None => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "artifact_missing",
                        format!(
                            "the {what} {sha} is not uploaded; `drover release publish` uploads payloads before the manifest"
                        ),
                    ));
                }
            }
        }
    }
    let id = format!("{}@{}", manifest.name, manifest.version);
    let record = ReleaseRecord {
        id: id.clone(),
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        device_types: manifest.device_types.clone(),
        manifest: text,
        key_list,
        created_at: now_ms(),
        created_by: Some(ctx.caller.name.clone()),
    };
    let audit = ctx.success(
        StatusCode::CREATED,
        Some(&id),
        serde_json::json!({ "signed_by": signed.signatures.iter().map(|s| &s.key_id).collect::<Vec<_>>() }),
    );
    if state.store.create_release(&record, &audit).await? {
        return Ok((
            StatusCode::CREATED,
            Extension(Audited),
            axum::Json(release_info(&record)),
        ));
    }
    let existing = state
        .store
        .get_release(&id)
        .await?
        .ok_or_else(ApiError::internal)?;
    if existing.manifest == record.manifest && existing.key_list == record.key_list {
        return Ok((
            StatusCode::OK,
            Extension(Audited),
            axum::Json(release_info(&existing)),
        ));
    }
    Err(ApiError::conflict(format!(
        "release {id} is already published with a different manifest; releases never change: build a new version"
    )))
}

/// List published releases.
#[utoipa::path(get, path = "/api/v1/releases", tag = "releases",
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = ReleaseList)))]
pub async fn list_releases(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::Json<ReleaseList>> {
    caller.require(Role::Viewer)?;
    let releases = state.store.list_releases().await?;
    Ok(axum::Json(ReleaseList {
        releases: releases.iter().map(release_info).collect(),
    }))
}

/// One release.
#[utoipa::path(get, path = "/api/v1/releases/{id}", tag = "releases",
    security(("bearer" = ["viewer"])),
    params(("id" = String, Path, description = "`name@version`")),
    responses((status = 200, body = ReleaseInfo), (status = 404, body = ErrorBody)))]
pub async fn show_release(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<ReleaseInfo>> {
    caller.require(Role::Viewer)?;
    let r = state.store.get_release(&id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no release {id}; `drover releases list` shows them (ids are name@version)"
        ))
    })?;
    Ok(axum::Json(release_info(&r)))
}

fn deployment_info(
    d: &DeploymentRecord,
    devices: &[DeploymentDeviceRecord],
    detail: bool,
) -> DeploymentInfo {
    let mut counts = BTreeMap::new();
    for dd in devices {
        *counts.entry(dd.state.as_str().to_string()).or_insert(0u64) += 1;
    }
    DeploymentInfo {
        id: d.id.clone(),
        release: d.release_id.clone(),
        target: d.target.clone(),
        allow_downgrade: d.allow_downgrade,
        created_at: rfc3339(d.created_at),
        created_by: d.created_by.clone(),
        counts,
        devices: if detail {
            devices
                .iter()
                .map(|dd| DeploymentDevice {
                    device_id: dd.device_id.clone(),
                    state: dd.state,
                    progress: dd.progress,
                    reason: dd.reason.clone(),
                    message: dd.message.clone(),
                    updated_at: rfc3339(dd.updated_at),
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// Make a release the target of devices or of a group's current members.
/// Devices online now get it at once; offline ones when they reconnect.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "releases",
    security(("bearer" = ["operator"])),
    request_body = CreateDeployment,
    responses((status = 201, body = DeploymentInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_deployment(
    State(state): State<AppState>,
    ctx: AuditCtx,
    ApiJson(req): ApiJson<CreateDeployment>,
) -> ApiResult<(StatusCode, Extension<Audited>, axum::Json<DeploymentInfo>)> {
    ctx.caller.require(Role::Operator)?;
    let release = state
        .store
        .get_release(&req.release)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no release {}; publish it with `drover release publish` (ids are name@version)",
                req.release
            ))
        })?;
    let (target, mut ids) = match (&req.group, req.devices.is_empty()) {
        (Some(_), false) => {
            return Err(ApiError::bad_request("name devices or a group, not both"));
        }
        (None, true) => {
            return Err(ApiError::bad_request(
                "name the devices (`--device ID`) or a group (`--group NAME`) to deploy to",
            ));
        }
        (Some(group), true) => {
            validate::group_name(group)?;
            let g = state.store.get_group(group).await?.ok_or_else(|| {
                ApiError::not_found(format!("no group {group}; `drover groups list` shows them"))
            })?;
            let devices = state.store.list_devices().await?;
            let ids: Vec<String> = devices
                .iter()
                .filter(|d| d.enrollment == Enrollment::Accepted)
                .filter(|d| is_member(&g, d, state.devices.connection(&d.id)))
                .map(|d| d.id.clone())
                .collect();
            if ids.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "group {group} has no accepted devices right now"
                )));
            }
            (format!("group:{group}"), ids)
        }
        (None, false) => {
            if req.devices.len() > MAX_DEVICES {
                return Err(ApiError::bad_request(format!(
                    "at most {MAX_DEVICES} devices by id; use a group for more"
                )));
            }
            for id in &req.devices {
                validate::device_id(id).map_err(|e| ApiError::bad_request(e.message))?;
                match state.store.get_device(id).await? {
                    Some(d) if d.enrollment == Enrollment::Accepted => {}
                    Some(d) => {
                        return Err(ApiError::bad_request(format!(
                            "device {id} is {}; only accepted devices get updates",
                            d.enrollment.as_str()
                        )));
                    }
                    None => {
                        return Err(ApiError::not_found(format!(
                            "no device {id}; `drover devices list` shows them"
                        )));
                    }
                }
            }
            (
                format!("device:{}", req.devices.join(",")),
                req.devices.clone(),
            )
        }
    };
    ids.sort();
    ids.dedup();
    let deployment = DeploymentRecord {
        id: format!("dep_{}", crate::auth::random_hex(6)),
        release_id: release.id.clone(),
        target: target.chars().take(2000).collect(),
        allow_downgrade: req.allow_downgrade,
        created_at: now_ms(),
        created_by: Some(ctx.caller.name.clone()),
    };
    let audit = ctx.success(
        StatusCode::CREATED,
        Some(&deployment.id),
        serde_json::json!({ "release": release.id, "target": target, "devices": ids.len(), "allow_downgrade": req.allow_downgrade }),
    );
    state
        .store
        .create_deployment(&deployment, &ids, &audit)
        .await?;
    state.devices.targets_changed();
    for id in &ids {
        if let Err(e) = state.devices.reconcile(Some(id)).await {
            tracing::warn!(error = %e, device_id = %id, "could not push the deployment; the device gets it when it reconnects");
            break;
        }
    }
    let devices = state.store.deployment_devices(&deployment.id).await?;
    Ok((
        StatusCode::CREATED,
        Extension(Audited),
        axum::Json(deployment_info(&deployment, &devices, false)),
    ))
}

/// Recent deployments, newest first, with device counts per state.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "releases",
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = DeploymentList)))]
pub async fn list_deployments(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::Json<DeploymentList>> {
    caller.require(Role::Viewer)?;
    let mut out = Vec::new();
    for d in state.store.list_deployments(100).await? {
        let devices = state.store.deployment_devices(&d.id).await?;
        out.push(deployment_info(&d, &devices, false));
    }
    Ok(axum::Json(DeploymentList { deployments: out }))
}

/// One deployment with every device's state and reason.
#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "releases",
    security(("bearer" = ["viewer"])),
    params(("id" = String, Path, description = "Deployment id (`dep_…`)")),
    responses((status = 200, body = DeploymentInfo), (status = 404, body = ErrorBody)))]
pub async fn show_deployment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<DeploymentInfo>> {
    caller.require(Role::Viewer)?;
    let d = state.store.get_deployment(&id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no deployment {id}; `drover deployments list` shows them"
        ))
    })?;
    let devices = state.store.deployment_devices(&id).await?;
    Ok(axum::Json(deployment_info(&d, &devices, true)))
}
