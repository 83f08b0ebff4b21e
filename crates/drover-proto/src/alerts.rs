//! Documents of the alerts API (docs/monitoring.md, "Alerts"): alert rules
//! (`/api/v1/alert-rules`), alerts with their history (`/api/v1/alerts`)
//! and the body of the webhook notifications the server sends.
//!
//! Times are RFC 3339 with the Unix milliseconds beside them. Webhook
//! secrets go in with a rule and never come back out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a measured value is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Comparison {
    #[serde(rename = ">")]
    Above,
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = "<=")]
    AtMost,
}

impl Comparison {
    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Above => ">",
            Comparison::AtLeast => ">=",
            Comparison::Below => "<",
            Comparison::AtMost => "<=",
        }
    }

    /// Whether `value OP threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Above => value > threshold,
            Comparison::AtLeast => value >= threshold,
            Comparison::Below => value < threshold,
            Comparison::AtMost => value <= threshold,
        }
    }
}

fn above() -> Comparison {
    Comparison::Above
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AlertCondition {
    /// A metrics query (`p95(cpu) by tag.site where group = "eu-gateways"`)
    /// computed over the last `window`; one alert per `by` value whose
    /// value compares true with `threshold`.
    Metric {
        query: String,
        /// Span the aggregate covers at each evaluation, e.g. `5m`.
        window: String,
        #[serde(default = "above")]
        op: Comparison,
        threshold: f64,
    },
    /// Accepted devices (of `group`, or all) not heard from for longer than
    /// `silent_for`; one alert per device.
    Offline {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        silent_for: String,
    },
    /// The percentage of a group's devices (or of all accepted devices)
    /// that started a new boot within `window`, compared with `threshold`.
    Reboots {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        window: String,
        #[serde(default = "above")]
        op: Comparison,
        /// Percent, 0 to 100.
        threshold: f64,
    },
}

/// Where a rule's notifications go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// `http://` or `https://` URL that receives a POST per notification.
    pub url: String,
    /// Key of the HMAC-SHA256 signature in `X-Drover-Signature` (at least
    /// 16 bytes).
    pub secret: String,
}

/// Body of `POST /api/v1/alert-rules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewAlertRule {
    /// Unique; letters, digits and `_ . -`.
    pub name: String,
    pub condition: AlertCondition,
    /// How long the condition must hold before the alert fires (`10m`);
    /// default `0s`: at the first evaluation that sees it.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_duration: Option<String>,
    #[serde(default)]
    pub webhooks: Vec<NewWebhook>,
}

/// A webhook as shown (its secret never is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Webhook {
    pub url: String,
}

/// A stored alert rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertRule {
    pub id: String,
    pub name: String,
    pub condition: AlertCondition,
    /// As given, e.g. `10m`.
    #[serde(rename = "for")]
    pub for_duration: String,
    pub for_ms: i64,
    pub webhooks: Vec<Webhook>,
    pub created_at: String,
    pub created_by: Option<String>,
}

/// Body of `GET /api/v1/alert-rules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertRuleList {
    pub rules: Vec<AlertRule>,
}

/// One alert: a rule's condition for one `by` value (or device, or group),
/// from the first evaluation that saw it to the one that saw it end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    pub id: i64,
    pub rule_id: String,
    pub rule_name: String,
    /// `pending` (condition holds, `for` not reached), `firing` or `resolved`.
    pub state: String,
    /// What the alert is about: the `by` value of a metric rule (empty
    /// without `by`), the device of an offline rule, the group of a reboot rule.
    pub key: String,
    pub labels: BTreeMap<String, String>,
    /// The last value the condition measured (seconds of silence for an
    /// offline rule, percent for a reboot rule).
    pub value: Option<f64>,
    /// When the condition was first seen.
    pub started_at: String,
    pub started_at_ms: i64,
    pub fired_at: Option<String>,
    pub resolved_at: Option<String>,
    pub acked_by: Option<String>,
    pub acked_at: Option<String>,
}

/// Body of `GET /api/v1/alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertList {
    pub alerts: Vec<Alert>,
}

/// One change of an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertChange {
    pub at: String,
    pub at_ms: i64,
    /// `pending`, `firing`, `resolved` or `acked`.
    pub state: String,
    pub value: Option<f64>,
    /// Who acknowledged, or why an alert was closed without its condition ending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One webhook notification and how its delivery went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Notification {
    pub id: i64,
    pub url: String,
    /// `firing` or `resolved`.
    pub event: String,
    /// `pending` (will be tried, again), `delivered` or `failed` (gave up).
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
}

/// Body of `GET /api/v1/alerts/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertDetail {
    pub alert: Alert,
    /// Oldest first.
    pub history: Vec<AlertChange>,
    pub notifications: Vec<Notification>,
}

/// The JSON body POSTed to a webhook. Verify `X-Drover-Signature` before
/// trusting it (docs/monitoring.md, "Verifying a webhook").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookPayload {
    /// Unique per notification: the same id on every retry, so a receiver
    /// can drop duplicates.
    pub notification_id: i64,
    /// `firing` or `resolved`.
    pub event: String,
    /// When the alert changed to `event`.
    pub at: String,
    pub at_ms: i64,
    /// The value measured at that change.
    pub value: Option<f64>,
    pub alert: Alert,
}
