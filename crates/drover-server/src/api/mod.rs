//! The operator REST API under `/api/v1`, plus `/healthz` and `/metrics`.
//!
//! Routes are declared with `utoipa` so the OpenAPI document served at
//! `/api/v1/openapi.json` is built from the same code that routes requests
//! and cannot drift. Each operation names the role it needs in its security
//! requirement (`bearer: [role]`), and the handler enforces that same role;
//! a test walks the document and checks every route against every role.
//!
//! Layers, outermost first: request metrics and tracing, authentication (puts
//! a [`Caller`] or an [`AuthRejection`] in the request), audit (records every
//! mutating call that is not already audited by its handler), handlers.

mod alerts;
mod audit_log;
mod device_endpoints;
mod devices;
mod enroll_tokens;
mod extract;
mod groups;
mod metrics;
mod middleware;
mod releases;
mod rules;
mod system;
mod tokens;
pub mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::devices::Devices;
use crate::error::ApiError;
use crate::store::Store;

pub use extract::{ApiJson, ApiQuery, AuditCtx, Audited};

/// Largest request body the API accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub devices: Arc<Devices>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub(crate) touched: Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
    /// The URL devices use, put into enrollment tokens.
    pub public_url: String,
    /// Release payloads and delta patches.
    pub artifacts: crate::artifacts::Artifacts,
}

impl AppState {
    pub fn new(
        devices: Arc<Devices>,
        public_url: String,
        artifacts: crate::artifacts::Artifacts,
    ) -> Self {
        AppState {
            store: devices.store.clone(),
            devices,
            metrics: crate::telemetry::prometheus(),
            touched: Default::default(),
            public_url,
            artifacts,
        }
    }

    /// A state with a throw-away fleet CA and default device settings, for
    /// tests that drive the router directly.
    pub fn for_tests(store: Arc<dyn Store>) -> Self {
        let (ca, _) = crate::pki::FleetCa::generate().expect("generate a CA");
        let devices = Devices::new(store, Arc::new(ca), Default::default());
        let dir = std::env::temp_dir().join(format!(
            "drover-test-artifacts-{}",
            crate::auth::random_hex(8)
        ));
        let artifacts = crate::artifacts::Artifacts::local(&dir).expect("artifact folder");
        Self::new(
            Arc::new(devices),
            "https://127.0.0.1:8443".into(),
            artifacts,
        )
    }
}

/// The name of each mutating operation as written in the audit log.
/// One table, used by handlers and by the audit layer for calls that fail
/// before a handler runs (bad JSON, wrong role).
const ACTIONS: &[(Method, &str, &str)] = &[
    (Method::POST, "/api/v1/tokens", "tokens.create"),
    (Method::DELETE, "/api/v1/tokens/{id}", "tokens.revoke"),
    (
        Method::POST,
        "/api/v1/enroll-tokens",
        "enroll_tokens.create",
    ),
    (
        Method::DELETE,
        "/api/v1/enroll-tokens/{id}",
        "enroll_tokens.revoke",
    ),
    (
        Method::POST,
        "/api/v1/devices/{id}/accept",
        "devices.accept",
    ),
    (
        Method::POST,
        "/api/v1/devices/{id}/reject",
        "devices.reject",
    ),
    (
        Method::POST,
        "/api/v1/devices/{id}/revoke",
        "devices.revoke",
    ),
    (Method::POST, "/api/v1/devices/{id}/tags", "devices.tag"),
    (
        Method::PUT,
        "/api/v1/devices/{id}/desired",
        "devices.set_desired",
    ),
    (
        Method::POST,
        "/api/v1/devices/preauthorize",
        "devices.preauthorize",
    ),
    (Method::POST, "/api/v1/groups", "groups.create"),
    (
        Method::PUT,
        "/api/v1/groups/{name}/rules",
        "groups.set_rules",
    ),
    (
        Method::DELETE,
        "/api/v1/groups/{name}/rules",
        "groups.delete_rules",
    ),
    (
        Method::PUT,
        "/api/v1/devices/{id}/rules",
        "devices.set_rules",
    ),
    (
        Method::DELETE,
        "/api/v1/devices/{id}/rules",
        "devices.delete_rules",
    ),
    (
        Method::PUT,
        "/api/v1/artifacts/{sha256}",
        "artifacts.upload",
    ),
    (Method::POST, "/api/v1/releases", "releases.publish"),
    (Method::POST, "/api/v1/deployments", "deployments.create"),
    (Method::DELETE, "/api/v1/groups/{name}", "groups.delete"),
    (
        Method::PUT,
        "/api/v1/groups/{name}/desired",
        "groups.set_desired",
    ),
    (Method::POST, "/api/v1/alert-rules", "alert_rules.create"),
    (
        Method::DELETE,
        "/api/v1/alert-rules/{id}",
        "alert_rules.delete",
    ),
    (Method::POST, "/api/v1/alerts/{id}/ack", "alerts.ack"),
];

pub(crate) fn action_name(method: &Method, route: &str) -> String {
    ACTIONS
        .iter()
        .find(|(m, r, _)| m == method && *r == route)
        .map(|(_, _, a)| (*a).to_string())
        .unwrap_or_else(|| format!("{method} {route}"))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Drover operator API",
        description = "Manage a Drover fleet. Authenticate with `Authorization: Bearer <token>`; \
                       each operation lists the least role it needs (viewer < operator < admin) \
                       in its `bearer` security requirement. Errors are always \
                       `{\"error\": {\"code\", \"message\"}}`."
    ),
    modifiers(&BearerScheme),
    components(schemas(drover_proto::api::ErrorBody))
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Builds the whole HTTP application and its OpenAPI document.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = api_routes().split_for_parts();
    let openapi = Arc::new(openapi);

    let api = api
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::audit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::authenticate,
        ));

    Router::new()
        .merge(api)
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = openapi.clone();
                async move { axum::Json((*doc).clone()) }
            }),
        )
        .route("/healthz", axum::routing::get(system::healthz))
        .route("/v1/enroll", axum::routing::post(device_endpoints::enroll))
        .route("/v1/ca", axum::routing::get(device_endpoints::ca))
        .route(
            "/v1/artifacts/{sha256}",
            axum::routing::get(device_endpoints::artifact),
        )
        .route(
            "/v1/device/connect",
            axum::routing::get(device_endpoints::connect),
        )
        .route("/metrics", axum::routing::get(system::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(middleware::observe))
        .with_state(state)
}

/// The OpenAPI document, without serving anything (for docs and tests).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// Every authenticated `/api/v1` route, each with its OpenAPI description.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::whoami))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::get_token, tokens::revoke_token))
        .routes(routes!(audit_log::list_audit))
        .routes(routes!(enroll_tokens::create, enroll_tokens::list))
        .routes(routes!(enroll_tokens::revoke))
        .routes(routes!(devices::list))
        .routes(routes!(devices::show))
        .routes(routes!(devices::accept))
        .routes(routes!(devices::reject))
        .routes(routes!(devices::revoke))
        .routes(routes!(devices::tags))
        .routes(routes!(devices::set_desired))
        .routes(routes!(devices::preauthorize))
        .routes(routes!(devices::preauthorized))
        .routes(routes!(groups::create, groups::list))
        .routes(routes!(groups::show, groups::delete))
        .routes(routes!(groups::set_desired))
        .routes(routes!(
            rules::put_group,
            rules::get_group,
            rules::delete_group
        ))
        .routes(routes!(
            rules::put_device,
            rules::get_device,
            rules::delete_device
        ))
        .routes(routes!(releases::artifact_head, releases::artifact_put))
        .routes(routes!(releases::create_release, releases::list_releases))
        .routes(routes!(releases::show_release))
        .routes(routes!(
            releases::create_deployment,
            releases::list_deployments
        ))
        .routes(routes!(releases::show_deployment))
        .routes(routes!(metrics::query))
        .routes(routes!(metrics::device_metrics))
        .routes(routes!(metrics::device_events))
        .routes(routes!(alerts::create_rule, alerts::list_rules))
        .routes(routes!(alerts::delete_rule))
        .routes(routes!(alerts::list_alerts))
        .routes(routes!(alerts::show_alert))
        .routes(routes!(alerts::ack_alert))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such route: {method} {}. The API is described at /api/v1/openapi.json",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not allowed on {}; see /api/v1/openapi.json",
            uri.path()
        ),
    )
}
