//! Extractors that turn every malformed request into the API's one error
//! shape, and the audit context handlers use to record their changes.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use drover_proto::api::AuditOutcome;

use super::{MAX_BODY_BYTES, action_name};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::store::NewAudit;

/// `axum::Json` whose rejections are [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query` whose rejections are [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::bad_request(format!(
                "the JSON body does not fit this operation: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.body_text())
            )),
            JsonRejection::JsonSyntaxError(e) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!(
                    "the body is not valid JSON: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| e.body_text())
                ),
            ),
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body is larger than the {MAX_BODY_BYTES} bytes this API accepts"
                ),
            ),
            other => ApiError::bad_request(format!(
                "cannot read the request body: {}",
                other.body_text()
            )),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(format!("bad query string: {}", r.body_text()))
    }
}

/// Marks a response whose change the handler already audited in the same
/// transaction, so the audit layer does not record it twice.
#[derive(Debug, Clone, Copy)]
pub struct Audited;

/// Who is calling which mutating operation: builds audit entries.
#[derive(Debug, Clone)]
pub struct AuditCtx {
    pub caller: Caller,
    pub method: Method,
    pub path: String,
    pub action: String,
}

impl AuditCtx {
    /// A successful change's entry, to write in the change's transaction.
    pub fn success(
        &self,
        status: StatusCode,
        target: Option<&str>,
        detail: serde_json::Value,
    ) -> NewAudit {
        NewAudit {
            at: crate::clock::now_ms(),
            actor: self.caller.token_id.clone(),
            actor_name: self.caller.name.clone(),
            action: self.action.clone(),
            target: target.map(str::to_string),
            method: self.method.to_string(),
            path: self.path.clone(),
            status: status.as_u16(),
            outcome: AuditOutcome::Success,
            detail,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuditCtx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string());
        Ok(AuditCtx {
            action: action_name(&parts.method, &route),
            caller,
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
        })
    }
}
