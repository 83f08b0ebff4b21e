//! Server-side alerts (docs/monitoring.md, "Alerts"; decision 023): rules
//! are checked ([`check_rule`]), evaluated on an interval
//! ([`Alerting::evaluate_at`]) and their changes announced to webhooks
//! ([`webhook`]).
//!
//! Evaluation model: at each tick every rule yields the set of keys whose
//! condition holds now (one per `by` value of a metric rule, per silent
//! device of an offline rule, one per group of a reboot rule). A key new to
//! the set opens an alert, `pending` until the condition has held for the
//! rule's `for` (then `firing`; at once without `for`); a key that left the
//! set resolves its firing alert, or drops its pending one (it never
//! fired). Firing and resolved changes queue one notification per webhook
//! in the same transaction.
//!
//! This module never sends HTTP itself while evaluating, and never trusts
//! a stored condition blindly: one that no longer parses is skipped with a
//! warning, not a crash of the evaluator.

pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use drover_metricsql::{GroupBy, MetricsQuery, parse_duration_ms};
use drover_proto::alerts::{Alert, AlertCondition, Comparison, NewAlertRule};
use tokio::sync::watch;

use crate::clock::rfc3339;
use crate::devices::{Devices, effective, is_member, view};
use crate::store::alerts::{
    AlertChange, AlertRecord, AlertRuleRecord, AlertState, NewDelivery, WebhookTarget,
};
use crate::store::telemetry::{Agg, AggregateRead, Resolution};
use crate::store::{DeviceRecord, Enrollment, GroupRecord, Store, StoreResult};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Most webhooks per rule.
pub const MAX_WEBHOOKS: usize = 8;
/// Shortest webhook secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// Timings of evaluation and delivery.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// How often every rule is evaluated.
    pub evaluate_interval: Duration,
    /// How often the webhook queue is checked for due notifications.
    pub delivery_poll_interval: Duration,
    /// Attempts per notification before it is marked `failed`.
    pub max_attempts: i64,
    /// Wait after the first failed attempt; doubled after each further one.
    pub backoff_base: Duration,
    /// Longest wait between two attempts.
    pub backoff_max: Duration,
    /// Time allowed for one webhook request (connect, send, answer).
    pub request_timeout: Duration,
    /// How often the fleet gauges of `/metrics` are recomputed.
    pub fleet_gauges_interval: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            evaluate_interval: Duration::from_secs(15),
            delivery_poll_interval: Duration::from_secs(1),
            max_attempts: 10,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(600),
            request_timeout: Duration::from_secs(10),
            fleet_gauges_interval: Duration::from_secs(30),
        }
    }
}

impl AlertSettings {
    /// Defaults, with `DROVER_ALERT_EVALUATE_INTERVAL_SECS` and
    /// `DROVER_FLEET_GAUGES_INTERVAL_SECS` applied when set to a positive
    /// number of seconds (others are ignored with a warning).
    pub fn from_env() -> AlertSettings {
        let mut s = AlertSettings::default();
        let secs = |name: &str| match std::env::var(name) {
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => Some(Duration::from_secs(n)),
                _ => {
                    tracing::warn!(%name, value = %v, "ignored: expected a positive number of seconds");
                    None
                }
            },
            Err(_) => None,
        };
        if let Some(d) = secs("DROVER_ALERT_EVALUATE_INTERVAL_SECS") {
            s.evaluate_interval = d;
        }
        if let Some(d) = secs("DROVER_FLEET_GAUGES_INTERVAL_SECS") {
            s.fleet_gauges_interval = d;
        }
        s
    }

    /// Wait before attempt `attempts + 1`, after `attempts` failed ones.
    pub fn backoff_ms(&self, attempts: i64) -> i64 {
        let base = self.backoff_base.as_millis() as i64;
        let max = self.backoff_max.as_millis() as i64;
        let shift = (attempts - 1).clamp(0, 30) as u32;
        base.saturating_mul(1i64 << shift).min(max)
    }
}

/// A rule that does not make sense, with the column for query errors.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub message: String,
    /// The query's parse error, when that was the problem.
    pub query_error: Option<drover_metricsql::ParseError>,
}

impl RuleError {
    fn new(message: impl Into<String>) -> RuleError {
        RuleError {
            message: message.into(),
            query_error: None,
        }
    }
}

/// A condition ready to evaluate.
#[derive(Debug, Clone)]
pub enum Condition {
    Metric {
        query: MetricsQuery,
        window_ms: i64,
        op: Comparison,
        threshold: f64,
    },
    Offline {
        group: Option<String>,
        silent_for_ms: i64,
    },
    Reboots {
        group: Option<String>,
        window_ms: i64,
        op: Comparison,
        threshold: f64,
    },
}

fn duration(what: &str, text: &str, min_ms: i64, max_ms: i64) -> Result<i64, RuleError> {
    let ms = parse_duration_ms(text).map_err(|e| RuleError::new(format!("{what}: {e}")))?;
    if ms < min_ms || ms > max_ms {
        return Err(RuleError::new(format!(
            "{what} {text:?} is out of range: use {} to {}",
            drover_metricsql::format_duration_ms(min_ms),
            drover_metricsql::format_duration_ms(max_ms)
        )));
    }
    Ok(ms)
}

fn threshold(value: f64, range: Option<(f64, f64)>) -> Result<f64, RuleError> {
    if !value.is_finite() {
        return Err(RuleError::new(format!(
            "threshold {value} is not a finite number"
        )));
    }
    if let Some((lo, hi)) = range
        && !(lo..=hi).contains(&value)
    {
        return Err(RuleError::new(format!(
            "threshold {value} is a percentage of the group: use {lo} to {hi}"
        )));
    }
    Ok(value)
}

fn known_group(group: &Option<String>, groups: &[GroupRecord]) -> Result<(), RuleError> {
    match group {
        Some(g) if !groups.iter().any(|r| &r.name == g) => Err(RuleError::new(format!(
            "unknown group {g:?}: `drover groups list` shows the groups (or leave `group` out for every accepted device)"
        ))),
        _ => Ok(()),
    }
}

/// Parses a stored or submitted condition. `groups`: check that named
/// groups exist (when submitting); `None` skips that check.
pub fn parse_condition(
    c: &AlertCondition,
    groups: Option<&[GroupRecord]>,
) -> Result<Condition, RuleError> {
    Ok(match c {
        AlertCondition::Metric {
            query,
            window,
            op,
            threshold: t,
        } => {
            let parsed = MetricsQuery::parse(query).map_err(|e| RuleError {
                message: format!("invalid query: {e}\n{}", e.render(query)),
                query_error: Some(e),
            })?;
            Condition::Metric {
                query: parsed,
                window_ms: duration("window", window, 10_000, DAY_MS)?,
                op: *op,
                threshold: threshold(*t, None)?,
            }
        }
        AlertCondition::Offline { group, silent_for } => {
            if let Some(gs) = groups {
                known_group(group, gs)?;
            }
            Condition::Offline {
                group: group.clone(),
                silent_for_ms: duration("silent_for", silent_for, MINUTE_MS, 30 * DAY_MS)?,
            }
        }
        AlertCondition::Reboots {
            group,
            window,
            op,
            threshold: t,
        } => {
            if let Some(gs) = groups {
                known_group(group, gs)?;
            }
            Condition::Reboots {
                group: group.clone(),
                window_ms: duration("window", window, MINUTE_MS, 7 * DAY_MS)?,
                op: *op,
                threshold: threshold(*t, Some((0.0, 100.0)))?,
            }
        }
    })
}

fn valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Checks a submitted rule: returns the `for` in milliseconds and the
/// webhooks to store.
pub fn check_rule(
    rule: &NewAlertRule,
    groups: &[GroupRecord],
) -> Result<(i64, Vec<WebhookTarget>), RuleError> {
    if !valid_rule_name(&rule.name) {
        return Err(RuleError::new(format!(
            "rule name {:?} is not valid: use 1-64 letters, digits or _ . -",
            rule.name
        )));
    }
    parse_condition(&rule.condition, Some(groups))?;
    let for_ms = match &rule.for_duration {
        None => 0,
        Some(f) if f.trim() == "0" || f.trim() == "0s" => 0,
        Some(f) => duration("for", f, 1_000, 7 * DAY_MS)?,
    };
    if rule.webhooks.len() > MAX_WEBHOOKS {
        return Err(RuleError::new(format!(
            "{} webhooks are too many: at most {MAX_WEBHOOKS} per rule",
            rule.webhooks.len()
        )));
    }
    let mut hooks = Vec::new();
    for h in &rule.webhooks {
        let scheme = drover_proto::url::split(&h.url)
            .map(|(scheme, _, _)| scheme)
            .map_err(|e| {
                RuleError::new(format!(
                    "webhook URL {:?} must start with https:// or http:// and name a host ({e})",
                    h.url
                ))
            })?;
        if scheme != "http" && scheme != "https" {
            return Err(RuleError::new(format!(
                "webhook URL {:?} must start with https:// or http://",
                h.url
            )));
        }
        if h.secret.len() < MIN_SECRET_BYTES {
            return Err(RuleError::new(format!(
                "the secret of webhook {} is too short: use at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)",
                h.url
            )));
        }
        hooks.push(WebhookTarget {
            url: h.url.clone(),
            secret: h.secret.clone(),
        });
    }
    Ok((for_ms, hooks))
}

/// The API document of a stored alert.
pub fn alert_doc(a: &AlertRecord) -> Alert {
    Alert {
        id: a.id,
        rule_id: a.rule_id.clone(),
        rule_name: a.rule_name.clone(),
        state: a.state.as_str().into(),
        key: a.key.clone(),
        labels: serde_json::from_str(&a.labels).unwrap_or_default(),
        value: a.value,
        started_at: rfc3339(a.started_at),
        started_at_ms: a.started_at,
        fired_at: a.fired_at.map(rfc3339),
        resolved_at: a.resolved_at.map(rfc3339),
        acked_by: a.acked_by.clone(),
        acked_at: a.acked_at.map(rfc3339),
    }
}

/// What one evaluation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvalReport {
    pub rules: usize,
    pub opened: usize,
    pub fired: usize,
    pub resolved: usize,
    pub dropped: usize,
    /// Rules skipped because they no longer parse or their data failed to load.
    pub skipped: usize,
}

/// What the condition measured for one key that holds.
struct Breach {
    value: f64,
    labels: BTreeMap<String, String>,
}

/// Devices and groups read once per evaluation.
struct Fleet {
    devices: Vec<DeviceRecord>,
    groups: Arc<Vec<GroupRecord>>,
}

/// The evaluator and the webhook sender of one server.
pub struct Alerting {
    pub store: Arc<dyn Store>,
    pub devices: Arc<Devices>,
    pub settings: AlertSettings,
    http: reqwest::Client,
}

impl Alerting {
    pub fn new(devices: Arc<Devices>, settings: AlertSettings) -> Alerting {
        Alerting {
            store: devices.store.clone(),
            http: webhook::client(&settings),
            devices,
            settings,
        }
    }

    /// Evaluates every rule as of `now` (Unix ms) and records the changes.
    pub async fn evaluate_at(&self, now: i64) -> StoreResult<EvalReport> {
        let rules = self.store.list_alert_rules().await?;
        let mut report = EvalReport {
            rules: rules.len(),
            ..Default::default()
        };
        if rules.is_empty() {
            return Ok(report);
        }
        let mut open: HashMap<(String, String), AlertRecord> = self
            .store
            .open_alerts()
            .await?
            .into_iter()
            .map(|a| ((a.rule_id.clone(), a.key.clone()), a))
            .collect();
        let fleet = Fleet {
            devices: self.store.list_devices().await?,
            groups: self.devices.groups().await?,
        };
        for rule in &rules {
            let cond = serde_json::from_str::<AlertCondition>(&rule.condition)
                .map_err(|e| e.to_string())
                .and_then(|c| parse_condition(&c, None).map_err(|e| e.message));
            let cond = match cond {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(rule = %rule.name, error = %e, "alert rule skipped: its condition does not parse");
                    report.skipped += 1;
                    continue;
                }
            };
            let breaches = match self.breaches(&cond, &fleet, now).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(rule = %rule.name, error = %e, "alert rule skipped this round");
                    report.skipped += 1;
                    // Keep its open alerts as they are.
                    open.retain(|(r, _), _| r != &rule.id);
                    continue;
                }
            };
            let offline = matches!(cond, Condition::Offline { .. });
            self.apply(rule, breaches, &mut open, now, offline, &mut report)
                .await?;
        }
        metrics::counter!("drover_alert_evaluations_total").increment(1);
        Ok(report)
    }

    async fn apply(
        &self,
        rule: &AlertRuleRecord,
        breaches: BTreeMap<String, Breach>,
        open: &mut HashMap<(String, String), AlertRecord>,
        now: i64,
        offline: bool,
        report: &mut EvalReport,
    ) -> StoreResult<()> {
        let notify = |event: &str| -> Vec<NewDelivery> {
            rule.webhooks
                .iter()
                .map(|t| NewDelivery {
                    target: t.clone(),
                    event: event.into(),
                })
                .collect()
        };
        for (key, b) in &breaches {
            let change = match open.remove(&(rule.id.clone(), key.clone())) {
                None => {
                    let state = if rule.for_ms == 0 {
                        AlertState::Firing
                    } else {
                        AlertState::Pending
                    };
                    report.opened += 1;
                    if state == AlertState::Firing {
                        report.fired += 1;
                    }
                    let change = AlertChange::Open {
                        rule_id: rule.id.clone(),
                        rule_name: rule.name.clone(),
                        key: key.clone(),
                        labels: serde_json::to_string(&b.labels).expect("strings serialize"),
                        state,
                        value: Some(b.value),
                        at: now,
                    };
                    let hooks = if state == AlertState::Firing {
                        notify("firing")
                    } else {
                        Vec::new()
                    };
                    self.store.record_alert_change(&change, &hooks).await?;
                    continue;
                }
                Some(a) if a.state == AlertState::Pending && now - a.started_at >= rule.for_ms => {
                    report.fired += 1;
                    (
                        AlertChange::Move {
                            id: a.id,
                            from: AlertState::Pending,
                            to: AlertState::Firing,
                            value: Some(b.value),
                            at: now,
                            note: None,
                        },
                        notify("firing"),
                    )
                }
                // Offline values grow every tick: not worth a write each.
                Some(a) if offline || a.value == Some(b.value) => continue,
                Some(a) => (
                    AlertChange::Move {
                        id: a.id,
                        from: a.state,
                        to: a.state,
                        value: Some(b.value),
                        at: now,
                        note: None,
                    },
                    Vec::new(),
                ),
            };
            self.store.record_alert_change(&change.0, &change.1).await?;
        }
        let ended: Vec<AlertRecord> = open
            .iter()
            .filter(|((r, k), _)| r == &rule.id && !breaches.contains_key(k))
            .map(|(_, a)| a.clone())
            .collect();
        for a in ended {
            open.remove(&(a.rule_id.clone(), a.key.clone()));
            match a.state {
                AlertState::Pending => {
                    report.dropped += 1;
                    self.store
                        .record_alert_change(&AlertChange::Drop { id: a.id }, &[])
                        .await?;
                }
                _ => {
                    report.resolved += 1;
                    let change = AlertChange::Move {
                        id: a.id,
                        from: a.state,
                        to: AlertState::Resolved,
                        value: a.value,
                        at: now,
                        note: None,
                    };
                    self.store
                        .record_alert_change(&change, &notify("resolved"))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// The keys whose condition holds at `now`.
    async fn breaches(
        &self,
        cond: &Condition,
        fleet: &Fleet,
        now: i64,
    ) -> StoreResult<BTreeMap<String, Breach>> {
        let mut out = BTreeMap::new();
        match cond {
            Condition::Metric {
                query,
                window_ms,
                op,
                threshold,
            } => {
                for (key, value) in self.metric_values(query, *window_ms, fleet, now).await? {
                    if op.holds(value, *threshold) {
                        let mut labels = BTreeMap::new();
                        if let Some(by) = &query.group_by {
                            labels.insert(by.to_string(), key.clone());
                        }
                        out.insert(key, Breach { value, labels });
                    }
                }
            }
            Condition::Offline {
                group,
                silent_for_ms,
            } => {
                for d in self.members(group.as_deref(), fleet) {
                    if self.devices.registry.is_online(&d.id) {
                        continue;
                    }
                    let last = self.devices.last_seen(d).unwrap_or(d.created_at);
                    let silent = now - last;
                    if silent > *silent_for_ms {
                        let mut labels = BTreeMap::from([("device".to_string(), d.id.clone())]);
                        if let Some(h) = &d.hostname {
                            labels.insert("hostname".into(), h.clone());
                        }
                        out.insert(
                            d.id.clone(),
                            Breach {
                                value: (silent / 1000) as f64,
                                labels,
                            },
                        );
                    }
                }
            }
            Condition::Reboots {
                group,
                window_ms,
                op,
                threshold,
            } => {
                let members: Vec<&DeviceRecord> = self.members(group.as_deref(), fleet);
                if members.is_empty() {
                    return Ok(out);
                }
                let rebooted: std::collections::HashSet<String> = self
                    .store
                    .rebooted_devices(now - window_ms, now + 1)
                    .await?
                    .into_iter()
                    .collect();
                let n = members.iter().filter(|d| rebooted.contains(&d.id)).count();
                let pct = 100.0 * n as f64 / members.len() as f64;
                if op.holds(pct, *threshold) {
                    let key = group.clone().unwrap_or_default();
                    let mut labels = BTreeMap::new();
                    if let Some(g) = group {
                        labels.insert("group".into(), g.clone());
                    }
                    labels.insert("rebooted".into(), n.to_string());
                    labels.insert("devices".into(), members.len().to_string());
                    out.insert(key, Breach { value: pct, labels });
                }
            }
        }
        Ok(out)
    }

    /// Accepted devices of `group` (all accepted devices without one).
    fn members<'a>(&self, group: Option<&str>, fleet: &'a Fleet) -> Vec<&'a DeviceRecord> {
        let g = group.map(|name| fleet.groups.iter().find(|g| g.name == name));
        if let Some(None) = g {
            tracing::warn!(group = ?group, "an alert rule names a group that no longer exists");
            return Vec::new();
        }
        fleet
            .devices
            .iter()
            .filter(|d| d.enrollment == Enrollment::Accepted)
            .filter(|d| match g {
                Some(Some(g)) => is_member(g, d, self.devices.connection(&d.id)),
                _ => true,
            })
            .collect()
    }

    /// The query's value over `[now - window, now)` per `by` value
    /// (`""` without `by`). Groups without points are left out.
    async fn metric_values(
        &self,
        q: &MetricsQuery,
        window_ms: i64,
        fleet: &Fleet,
        now: i64,
    ) -> StoreResult<Vec<(String, f64)>> {
        let mut group_of: HashMap<&str, String> = HashMap::new();
        for d in &fleet.devices {
            let conn = self.devices.connection(&d.id);
            if let Some(filter) = &q.filter {
                let eff = effective(d, &fleet.groups, conn);
                if !filter.matches(&view(d, conn, &eff.groups)) {
                    continue;
                }
            }
            let key = match &q.group_by {
                None => Some(String::new()),
                Some(GroupBy::Device) => Some(d.id.clone()),
                Some(GroupBy::Tag(k)) => d.tags.get(k).cloned(),
                Some(GroupBy::Inventory(k)) => d.inventory.get(k).cloned(),
            };
            if let Some(key) = key {
                group_of.insert(&d.id, key);
            }
        }
        let mut members: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (device, series) in self.store.series_named(&q.metric).await? {
            if let Some(key) = group_of.get(device.as_str()) {
                members.entry(key.clone()).or_default().push(series);
            }
        }
        if members.is_empty() {
            return Ok(Vec::new());
        }
        // Raw points up to an hour (exact window); 1-minute rollups beyond
        // (the window starts at a whole minute).
        let (resolution, since, step) = if window_ms <= HOUR_MS {
            (Resolution::Raw, now - window_ms, window_ms)
        } else {
            let since = now - window_ms;
            let step = (window_ms + MINUTE_MS - 1) / MINUTE_MS * MINUTE_MS;
            (
                Resolution::Minute,
                since - since.rem_euclid(MINUTE_MS),
                step,
            )
        };
        let keys: Vec<String> = members.keys().cloned().collect();
        let read = AggregateRead {
            groups: members.into_values().collect(),
            resolution,
            since_ms: since,
            until_ms: now,
            step_ms: step,
            sketches: q.aggregate.quantile().is_some(),
        };
        let results = self.store.aggregate(&read).await?;
        Ok(keys
            .into_iter()
            .zip(results)
            .filter_map(|(key, buckets)| {
                let mut all = Agg::empty(read.sketches);
                for (_, agg) in &buckets {
                    all.merge(agg);
                }
                Some((key, all.value(q.aggregate)?))
            })
            .collect())
    }
}

/// Evaluates every `evaluate_interval` until `stop`.
pub async fn run_evaluator(alerting: Arc<Alerting>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(alerting.settings.evaluate_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match alerting.evaluate_at(crate::clock::now_ms()).await {
                    Ok(r) if r.fired + r.resolved > 0 => {
                        tracing::info!(fired = r.fired, resolved = r.resolved, "alerts changed");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        metrics::counter!("drover_alert_evaluation_failures_total").increment(1);
                        tracing::warn!(error = %e, "alert evaluation failed; retrying at the next interval");
                    }
                }
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}
