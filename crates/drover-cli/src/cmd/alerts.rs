//! `drover alerts list|show|ack` and `drover alerts rules create|list|delete`
//! (docs/monitoring.md, "Alerts").
//!
//! Rules are checked by the server, which answers a bad query with its
//! column and a bad group, duration or webhook with what to change; this
//! command only builds the request and prints. Webhook secrets are sent,
//! never printed.

use clap::{Args, Subcommand, ValueEnum};
use drover_proto::alerts::{
    Alert, AlertCondition, AlertDetail, AlertList, AlertRule, AlertRuleList, Comparison,
    NewAlertRule, NewWebhook,
};

use crate::client::{Client, escape};
use crate::cmd::metrics::fmt_value;
use crate::error::{CliError, CliResult};
use crate::output::{self, or_dash};

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Alerts, newest first.
    List(ListArgs),
    /// One alert with its history and webhook notifications.
    Show {
        /// Alert id (from `drover alerts list`).
        id: i64,
    },
    /// Acknowledge an alert (records who and when).
    Ack {
        /// Alert id.
        id: i64,
    },
    /// Alert rules.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateFilter {
    Pending,
    Firing,
    Resolved,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only alerts in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateFilter>,
    /// Most alerts to show.
    #[arg(long)]
    pub limit: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Create a rule: exactly one of --query, --offline-after, --reboots.
    Create(Box<CreateArgs>),
    /// List rules.
    List,
    /// Delete a rule (by id or name); its open alerts are resolved.
    Delete {
        /// Rule id or name.
        rule: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Op {
    #[value(name = ">")]
    Above,
    #[value(name = ">=")]
    AtLeast,
    #[value(name = "<")]
    Below,
    #[value(name = "<=")]
    AtMost,
}

impl From<Op> for Comparison {
    fn from(o: Op) -> Comparison {
        match o {
            Op::Above => Comparison::Above,
            Op::AtLeast => Comparison::AtLeast,
            Op::Below => Comparison::Below,
            Op::AtMost => Comparison::AtMost,
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Rule name (letters, digits, _ . -).
    pub name: String,
    /// Metric rule: a metrics query, e.g. `p95(cpu) by device where group = "eu-gateways"`.
    #[arg(long, conflicts_with_all = ["offline_after", "reboots"])]
    pub query: Option<String>,
    /// Offline rule: fire for each device silent longer than this (e.g. 15m).
    #[arg(long, conflicts_with = "reboots")]
    pub offline_after: Option<String>,
    /// Reboot rule: the percentage of the group's devices that rebooted
    /// within --window is compared with --threshold.
    #[arg(long)]
    pub reboots: bool,
    /// Span the value is computed over (metric rules: default 5m; reboot rules: default 1h).
    #[arg(long)]
    pub window: Option<String>,
    /// Comparison with the threshold.
    #[arg(long, value_enum, default_value = ">")]
    pub op: Op,
    /// Threshold (a percentage for reboot rules).
    #[arg(long, allow_negative_numbers = true)]
    pub threshold: Option<f64>,
    /// Group the offline or reboot rule watches (default: every accepted device).
    #[arg(long)]
    pub group: Option<String>,
    /// How long the condition must hold before the alert fires (e.g. 10m).
    #[arg(long = "for")]
    pub for_duration: Option<String>,
    /// Webhook URL notified on firing and resolved (repeatable).
    #[arg(long)]
    pub webhook: Vec<String>,
    /// Secret that signs webhook bodies (at least 16 bytes).
    #[arg(
        long,
        env = "DROVER_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub webhook_secret: Option<String>,
}

fn condition(a: &CreateArgs) -> CliResult<AlertCondition> {
    let need_threshold = || {
        a.threshold.ok_or_else(|| {
            CliError::usage("give --threshold: the value the measurement is compared with")
        })
    };
    if let Some(query) = &a.query {
        if a.group.is_some() {
            return Err(CliError::usage(
                "--group is for offline and reboot rules; put `where group = \"NAME\"` in --query instead",
            ));
        }
        return Ok(AlertCondition::Metric {
            query: query.clone(),
            window: a.window.clone().unwrap_or_else(|| "5m".into()),
            op: a.op.into(),
            threshold: need_threshold()?,
        });
    }
    if let Some(after) = &a.offline_after {
        return Ok(AlertCondition::Offline {
            group: a.group.clone(),
            silent_for: after.clone(),
        });
    }
    if a.reboots {
        return Ok(AlertCondition::Reboots {
            group: a.group.clone(),
            window: a.window.clone().unwrap_or_else(|| "1h".into()),
            op: a.op.into(),
            threshold: need_threshold()?,
        });
    }
    Err(CliError::usage(
        "say what the rule watches: --query 'p95(cpu) by device', --offline-after 15m, or --reboots --threshold 5",
    ))
}

fn new_rule(a: &CreateArgs) -> CliResult<NewAlertRule> {
    let webhooks = match (&a.webhook_secret, a.webhook.is_empty()) {
        (_, true) => Vec::new(),
        (Some(secret), false) => a
            .webhook
            .iter()
            .map(|url| NewWebhook {
                url: url.clone(),
                secret: secret.clone(),
            })
            .collect(),
        (None, false) => {
            return Err(CliError::usage(
                "a --webhook needs --webhook-secret (or DROVER_WEBHOOK_SECRET): the key that signs its bodies",
            ));
        }
    };
    Ok(NewAlertRule {
        name: a.name.clone(),
        condition: condition(a)?,
        for_duration: a.for_duration.clone(),
        webhooks,
    })
}

/// One line describing a condition, as a human reads it.
pub fn describe(c: &AlertCondition) -> String {
    match c {
        AlertCondition::Metric {
            query,
            window,
            op,
            threshold,
        } => format!(
            "{query} over {window} {} {}",
            op.as_str(),
            fmt_value(*threshold)
        ),
        AlertCondition::Offline { group, silent_for } => format!(
            "device of {} silent > {silent_for}",
            group.as_deref().unwrap_or("(all)")
        ),
        AlertCondition::Reboots {
            group,
            window,
            op,
            threshold,
        } => format!(
            "% of {} rebooted in {window} {} {}",
            group.as_deref().unwrap_or("(all)"),
            op.as_str(),
            fmt_value(*threshold)
        ),
    }
}

fn alert_row(a: &Alert) -> Vec<String> {
    let state = if a.acked_by.is_some() && a.state != "resolved" {
        format!("{} (acked)", a.state)
    } else {
        a.state.clone()
    };
    vec![
        a.id.to_string(),
        a.rule_name.clone(),
        if a.key.is_empty() {
            "-".into()
        } else {
            a.key.clone()
        },
        state,
        a.value.map(fmt_value).unwrap_or_else(|| "-".into()),
        a.started_at.clone(),
        or_dash(a.resolved_at.as_deref()),
    ]
}

const ALERT_HEADER: [&str; 7] = ["id", "rule", "key", "state", "value", "since", "resolved"];

pub async fn run(client: &Client, cmd: AlertsCommand, json: bool) -> CliResult<()> {
    match cmd {
        AlertsCommand::List(a) => {
            let mut path = "/api/v1/alerts?".to_string();
            if let Some(s) = a.state {
                let s = match s {
                    StateFilter::Pending => "pending",
                    StateFilter::Firing => "firing",
                    StateFilter::Resolved => "resolved",
                };
                path.push_str(&format!("state={s}&"));
            }
            if let Some(l) = a.limit {
                path.push_str(&format!("limit={l}"));
            }
            let list: AlertList = client.get(path.trim_end_matches(['&', '?'])).await?;
            if json {
                return output::json(&list);
            }
            output::table(&ALERT_HEADER, list.alerts.iter().map(alert_row).collect());
            Ok(())
        }
        AlertsCommand::Show { id } => {
            let d: AlertDetail = client.get(&format!("/api/v1/alerts/{id}")).await?;
            if json {
                return output::json(&d);
            }
            output::table(&ALERT_HEADER, vec![alert_row(&d.alert)]);
            if !d.alert.labels.is_empty() {
                let labels: Vec<String> = d
                    .alert
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!("\nlabels: {}", labels.join(", "));
            }
            if let (Some(by), Some(at)) = (&d.alert.acked_by, &d.alert.acked_at) {
                println!("acknowledged by {by} at {at}");
            }
            println!("\nhistory:");
            output::table(
                &["time", "state", "value", "note"],
                d.history
                    .iter()
                    .map(|h| {
                        vec![
                            h.at.clone(),
                            h.state.clone(),
                            h.value.map(fmt_value).unwrap_or_else(|| "-".into()),
                            or_dash(h.note.as_deref()),
                        ]
                    })
                    .collect(),
            );
            if !d.notifications.is_empty() {
                println!("\nnotifications:");
                output::table(
                    &["id", "event", "url", "state", "attempts", "last error"],
                    d.notifications
                        .iter()
                        .map(|n| {
                            vec![
                                n.id.to_string(),
                                n.event.clone(),
                                n.url.clone(),
                                n.state.clone(),
                                n.attempts.to_string(),
                                or_dash(n.last_error.as_deref()),
                            ]
                        })
                        .collect(),
                );
            }
            Ok(())
        }
        AlertsCommand::Ack { id } => {
            let a: Alert = client
                .post(&format!("/api/v1/alerts/{id}/ack"), &serde_json::json!({}))
                .await?;
            if json {
                return output::json(&a);
            }
            println!(
                "alert {} ({}, {}) acknowledged by {} at {}",
                a.id,
                a.rule_name,
                a.state,
                or_dash(a.acked_by.as_deref()),
                or_dash(a.acked_at.as_deref())
            );
            Ok(())
        }
        AlertsCommand::Rules(RulesCommand::Create(a)) => {
            let rule: AlertRule = client.post("/api/v1/alert-rules", &new_rule(&a)?).await?;
            if json {
                return output::json(&rule);
            }
            println!(
                "created alert rule {} ({}): {}",
                rule.name,
                rule.id,
                describe(&rule.condition)
            );
            Ok(())
        }
        AlertsCommand::Rules(RulesCommand::List) => {
            let list: AlertRuleList = client.get("/api/v1/alert-rules").await?;
            if json {
                return output::json(&list);
            }
            output::table(
                &["id", "name", "condition", "for", "webhooks"],
                list.rules
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            r.name.clone(),
                            describe(&r.condition),
                            r.for_duration.clone(),
                            r.webhooks.len().to_string(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        AlertsCommand::Rules(RulesCommand::Delete { rule }) => {
            let r: AlertRule = client
                .delete(&format!("/api/v1/alert-rules/{}", escape(&rule)))
                .await?;
            if json {
                return output::json(&r);
            }
            println!("deleted alert rule {} ({})", r.name, r.id);
            Ok(())
        }
    }
}
