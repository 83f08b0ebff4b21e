//! `/api/v1/alert-rules` and `/api/v1/alerts` (docs/monitoring.md,
//! "Alerts"): rules are created and deleted by operators, read by viewers;
//! alerts are read by viewers and acknowledged by operators. Every change is
//! audited in its own transaction. Webhook secrets are write-only.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drover_proto::alerts::{
    AlertChange, AlertCondition, AlertDetail, AlertList, AlertRule, AlertRuleList, NewAlertRule,
    Notification, Webhook,
};
use drover_proto::api::{ErrorBody, Role};
use drover_proto::metrics::{QueryErrorBody, QueryErrorDetail};
use serde::Deserialize;

use super::{ApiJson, ApiQuery, AppState, AuditCtx, Audited};
use crate::alerts::{alert_doc, check_rule};
use crate::auth::Caller;
use crate::clock::{now_ms, rfc3339};
use crate::error::{ApiError, ApiResult};
use crate::store::alerts::{AlertRuleRecord, AlertState};

/// Default and largest number of alerts in one list.
const DEFAULT_LIMIT: u32 = 500;
const MAX_LIMIT: u32 = 10_000;

fn rule_doc(r: &AlertRuleRecord) -> ApiResult<AlertRule> {
    let condition: AlertCondition = serde_json::from_str(&r.condition).map_err(|e| {
        tracing::error!(rule = %r.id, error = %e, "stored alert condition does not parse");
        ApiError::internal()
    })?;
    Ok(AlertRule {
        id: r.id.clone(),
        name: r.name.clone(),
        condition,
        for_duration: drover_metricsql::format_duration_ms(r.for_ms),
        for_ms: r.for_ms,
        webhooks: r
            .webhooks
            .iter()
            .map(|w| Webhook { url: w.url.clone() })
            .collect(),
        created_at: rfc3339(r.created_at),
        created_by: r.created_by.clone(),
    })
}

/// A rule error as 400; a bad query also carries its column.
fn rule_error(e: crate::alerts::RuleError) -> Response {
    let Some(q) = &e.query_error else {
        return ApiError::bad_request(e.message).into_response();
    };
    let body = QueryErrorBody {
        error: QueryErrorDetail {
            code: "invalid_query".into(),
            message: e.message.clone(),
            column: q.column,
            reason: q.message.clone(),
        },
    };
    let mut resp = (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    resp.extensions_mut().insert(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        e.message,
    ));
    resp
}

/// Create an alert rule.
#[utoipa::path(post, path = "/api/v1/alert-rules", tag = "alerts",
    security(("bearer" = ["operator"])),
    request_body = NewAlertRule,
    responses((status = 201, body = AlertRule), (status = 400, body = QueryErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create_rule(
    State(state): State<AppState>,
    ctx: AuditCtx,
    req: Result<ApiJson<NewAlertRule>, ApiError>,
) -> Result<(StatusCode, Extension<Audited>, axum::Json<AlertRule>), Response> {
    // The role first: a viewer learns nothing from how its body was wrong.
    let inner = async {
        ctx.caller.require(Role::Operator)?;
        let ApiJson(req) = req?;
        let groups = state.devices.groups().await?;
        Ok::<_, ApiError>((req, groups))
    };
    let (req, groups) = inner.await.map_err(IntoResponse::into_response)?;
    let (for_ms, webhooks) = check_rule(&req, &groups).map_err(rule_error)?;
    let record = AlertRuleRecord {
        id: format!("r-{}", crate::auth::random_hex(6)),
        name: req.name.clone(),
        condition: serde_json::to_string(&req.condition).expect("conditions serialize"),
        for_ms,
        webhooks,
        created_at: now_ms(),
        created_by: Some(ctx.caller.name.clone()),
    };
    let audit = ctx.success(
        StatusCode::CREATED,
        Some(&record.id),
        serde_json::json!({
            "name": record.name,
            "condition": req.condition,
            "for_ms": for_ms,
            "webhooks": record.webhooks.iter().map(|w| &w.url).collect::<Vec<_>>(),
        }),
    );
    let created = state
        .store
        .create_alert_rule(&record, &audit)
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    if !created {
        return Err(ApiError::conflict(format!(
            "an alert rule named {:?} exists; delete it first or choose another name",
            record.name
        ))
        .into_response());
    }
    let doc = rule_doc(&record).map_err(IntoResponse::into_response)?;
    Ok((StatusCode::CREATED, Extension(Audited), axum::Json(doc)))
}

/// List alert rules.
#[utoipa::path(get, path = "/api/v1/alert-rules", tag = "alerts",
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = AlertRuleList)))]
pub async fn list_rules(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::Json<AlertRuleList>> {
    caller.require(Role::Viewer)?;
    let rules = state
        .store
        .list_alert_rules()
        .await?
        .iter()
        .map(rule_doc)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(axum::Json(AlertRuleList { rules }))
}

/// Delete an alert rule (by id or name); its open alerts are resolved
/// without notification.
#[utoipa::path(delete, path = "/api/v1/alert-rules/{id}", tag = "alerts",
    security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "Rule id or name")),
    responses((status = 200, body = AlertRule), (status = 404, body = ErrorBody)))]
pub async fn delete_rule(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<(Extension<Audited>, axum::Json<AlertRule>)> {
    ctx.caller.require(Role::Operator)?;
    let not_found = || {
        ApiError::not_found(format!(
            "no alert rule {id:?}; `drover alerts rules list` shows them"
        ))
    };
    let rule = state
        .store
        .get_alert_rule(&id)
        .await?
        .ok_or_else(not_found)?;
    let audit = ctx.success(
        StatusCode::OK,
        Some(&rule.id),
        serde_json::json!({ "name": rule.name }),
    );
    if !state
        .store
        .delete_alert_rule(&rule.id, now_ms(), &audit)
        .await?
    {
        return Err(not_found());
    }
    Ok((Extension(Audited), axum::Json(rule_doc(&rule)?)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// `pending`, `firing` or `resolved`; all when left out.
    state: Option<String>,
    /// Most alerts, newest first (default 500, at most 10,000).
    limit: Option<u32>,
}

/// List alerts, newest first.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts",
    security(("bearer" = ["viewer"])),
    params(ListParams),
    responses((status = 200, body = AlertList), (status = 400, body = ErrorBody)))]
pub async fn list_alerts(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<axum::Json<AlertList>> {
    caller.require(Role::Viewer)?;
    let filter = p
        .state
        .as_deref()
        .map(|s| {
            AlertState::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unknown alert state {s:?}: use pending, firing or resolved"
                ))
            })
        })
        .transpose()?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let alerts = state.store.list_alerts(filter, limit).await?;
    Ok(axum::Json(AlertList {
        alerts: alerts.iter().map(alert_doc).collect(),
    }))
}

fn alert_id(id: &str) -> ApiResult<i64> {
    id.parse::<i64>().map_err(|_| {
        ApiError::bad_request(format!(
            "{id:?} is not an alert id: use the number `drover alerts list` shows"
        ))
    })
}

/// One alert with its history and notifications.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts",
    security(("bearer" = ["viewer"])),
    params(("id" = i64, Path, description = "Alert id")),
    responses((status = 200, body = AlertDetail), (status = 404, body = ErrorBody)))]
pub async fn show_alert(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<AlertDetail>> {
    caller.require(Role::Viewer)?;
    let id = alert_id(&id)?;
    let alert = state.store.get_alert(id).await?.ok_or_else(|| {
        ApiError::not_found(format!("no alert {id}; `drover alerts list` shows them"))
    })?;
    let history = state.store.alert_history(id).await?;
    let deliveries = state.store.alert_deliveries(id).await?;
    Ok(axum::Json(AlertDetail {
        alert: alert_doc(&alert),
        history: history
            .into_iter()
            .map(|h| AlertChange {
                at: rfc3339(h.at),
                at_ms: h.at,
                state: h.state,
                value: h.value,
                note: h.note,
            })
            .collect(),
        notifications: deliveries
            .into_iter()
            .map(|d| Notification {
                id: d.id,
                url: d.url,
                event: d.event,
                state: d.state,
                attempts: d.attempts,
                last_error: d.last_error,
                delivered_at: d.delivered_at.map(rfc3339),
            })
            .collect(),
    }))
}

/// Acknowledge an alert (recorded with who and when; the first ack stays).
#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", tag = "alerts",
    security(("bearer" = ["operator"])),
    params(("id" = i64, Path, description = "Alert id")),
    responses((status = 200, body = drover_proto::alerts::Alert), (status = 404, body = ErrorBody)))]
pub async fn ack_alert(
    State(state): State<AppState>,
    ctx: AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<(Extension<Audited>, axum::Json<drover_proto::alerts::Alert>)> {
    ctx.caller.require(Role::Operator)?;
    let id = alert_id(&id)?;
    let audit = ctx.success(StatusCode::OK, Some(&id.to_string()), serde_json::json!({}));
    let alert = state
        .store
        .ack_alert(id, &ctx.caller.name, now_ms(), &audit)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("no alert {id}; `drover alerts list` shows them"))
        })?;
    Ok((Extension(Audited), axum::Json(alert_doc(&alert))))
}
