//! Records and store calls for alerts (docs/monitoring.md, "Alerts"):
//! rules, alert instances with their history, the webhook delivery queue,
//! and the cheap counts behind the fleet gauges of `/metrics`.
//!
//! The store does not decide anything: `crate::alerts` evaluates rules and
//! says which alert changes how; the store writes each change, its history
//! row and its notifications in one transaction, so a notification is
//! queued if and only if the change it announces is stored.

use async_trait::async_trait;

use super::{NewAudit, StoreResult};

/// A stored rule. `condition` is the JSON of
/// `drover_proto::alerts::AlertCondition`, checked before it was stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleRecord {
    pub id: String,
    pub name: String,
    pub condition: String,
    pub for_ms: i64,
    pub webhooks: Vec<WebhookTarget>,
    pub created_at: i64,
    pub created_by: Option<String>,
}

/// Where one rule's notifications go.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: String,
}

/// States of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<AlertState> {
        Some(match s {
            "pending" => AlertState::Pending,
            "firing" => AlertState::Firing,
            "resolved" => AlertState::Resolved,
            _ => return None,
        })
    }
}

/// A stored alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    pub id: i64,
    pub rule_id: String,
    pub rule_name: String,
    pub key: String,
    /// JSON object of strings.
    pub labels: String,
    pub state: AlertState,
    pub value: Option<f64>,
    pub started_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub acked_by: Option<String>,
    pub acked_at: Option<i64>,
}

/// One row of an alert's history.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertHistoryRecord {
    pub at: i64,
    /// An [`AlertState`] name, or `acked`.
    pub state: String,
    pub value: Option<f64>,
    pub note: Option<String>,
}

/// A change the evaluator decided.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertChange {
    /// A new alert (pending, or firing at once when the rule has no `for`).
    Open {
        rule_id: String,
        rule_name: String,
        key: String,
        labels: String,
        state: AlertState,
        value: Option<f64>,
        at: i64,
    },
    /// An open alert moves on (or only its value changes, `to == from`).
    Move {
        id: i64,
        /// The state the evaluator read: nothing is written if it changed since.
        from: AlertState,
        to: AlertState,
        value: Option<f64>,
        at: i64,
        note: Option<String>,
    },
    /// A pending alert whose condition ended before `for`: it never fired,
    /// so it is removed rather than kept as history.
    Drop { id: i64 },
}

/// A notification to queue with a change.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub target: WebhookTarget,
    /// `firing` or `resolved`.
    pub event: String,
}

/// A queued or finished notification.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    pub id: i64,
    pub instance_id: i64,
    pub url: String,
    pub secret: String,
    pub event: String,
    pub event_at: i64,
    pub value: Option<f64>,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    Delivered {
        at: i64,
    },
    /// Try again at `next_at`.
    Retry {
        next_at: i64,
        error: String,
    },
    /// Attempts used up.
    GaveUp {
        error: String,
    },
}

/// Counts for the fleet gauges, each one grouped query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetCounts {
    /// (enrollment state, count).
    pub by_enrollment: Vec<(String, i64)>,
    /// (agent version or "", count) of accepted devices.
    pub by_agent_version: Vec<(String, i64)>,
    /// (rule name, count) of firing alerts.
    pub firing_by_rule: Vec<(String, i64)>,
    /// (update state, count) of devices, by their current deployment.
    pub deployment_devices_by_state: Vec<(String, i64)>,
}

#[async_trait]
pub trait AlertStore {
    /// Stores a rule with its audit entry; `false` (nothing written) if a
    /// rule with that name exists.
    async fn create_alert_rule(
        &self,
        rule: &AlertRuleRecord,
        audit: &NewAudit,
    ) -> StoreResult<bool>;
    async fn list_alert_rules(&self) -> StoreResult<Vec<AlertRuleRecord>>;
    /// By id or name.
    async fn get_alert_rule(&self, id_or_name: &str) -> StoreResult<Option<AlertRuleRecord>>;
    /// Deletes a rule and resolves its open alerts at `at` (history note
    /// `rule deleted`, no notification), with the audit entry; `false` if
    /// there was no such rule.
    async fn delete_alert_rule(&self, id: &str, at: i64, audit: &NewAudit) -> StoreResult<bool>;

    /// Pending and firing alerts of every rule.
    async fn open_alerts(&self) -> StoreResult<Vec<AlertRecord>>;
    /// Writes one change, its history row and its notifications (due at
    /// once) in one transaction. Returns the alert's id, or `None` when a
    /// `Move` found the alert no longer in `from` (nothing written).
    async fn record_alert_change(
        &self,
        change: &AlertChange,
        notify: &[NewDelivery],
    ) -> StoreResult<Option<i64>>;
    /// Newest first; only `state` when given.
    async fn list_alerts(
        &self,
        state: Option<AlertState>,
        limit: u32,
    ) -> StoreResult<Vec<AlertRecord>>;
    async fn get_alert(&self, id: i64) -> StoreResult<Option<AlertRecord>>;
    /// Oldest first.
    async fn alert_history(&self, id: i64) -> StoreResult<Vec<AlertHistoryRecord>>;
    async fn alert_deliveries(&self, id: i64) -> StoreResult<Vec<DeliveryRecord>>;
    /// Records who acknowledged an alert (a history row, and the audit
    /// entry); `None` if there is no such alert. Acknowledging again keeps
    /// the first acknowledgement.
    async fn ack_alert(
        &self,
        id: i64,
        by: &str,
        at: i64,
        audit: &NewAudit,
    ) -> StoreResult<Option<AlertRecord>>;

    /// Pending deliveries due at `now`, oldest first.
    async fn due_deliveries(&self, now: i64, limit: u32) -> StoreResult<Vec<DeliveryRecord>>;
    /// Records an attempt (counts it).
    async fn finish_delivery(&self, id: i64, outcome: &DeliveryOutcome) -> StoreResult<()>;
    /// When the next pending delivery is due, if any.
    async fn next_delivery_at(&self) -> StoreResult<Option<i64>>;

    /// Devices that started a boot first seen in `[since, until)` after
    /// an earlier boot (a device's first boot is not a reboot).
    async fn rebooted_devices(&self, since: i64, until: i64) -> StoreResult<Vec<String>>;
    async fn fleet_counts(&self) -> StoreResult<FleetCounts>;
}
