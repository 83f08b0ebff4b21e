//! Liveness, metrics and "who am I".

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use drover_proto::api::{ErrorBody, Health, Role, WhoAmI};

use super::AppState;
use crate::auth::Caller;
use crate::error::ApiResult;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `GET /healthz`: 200 when the server and its database answer, 503 otherwise.
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let (code, status, database) = match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok", "ok".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, "degraded", e.to_string()),
    };
    (
        code,
        axum::Json(Health {
            status: status.into(),
            database,
            version: VERSION.into(),
        }),
    )
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Who the presented token belongs to.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "system",
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
pub async fn whoami(caller: Caller) -> ApiResult<axum::Json<WhoAmI>> {
    caller.require(Role::Viewer)?;
    Ok(axum::Json(WhoAmI {
        token_id: caller.token_id,
        name: caller.name,
        role: caller.role,
        server_version: VERSION.into(),
    }))
}
