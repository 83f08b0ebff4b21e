//! [`AlertStore`] on both backends (same SQL text, `$N` placeholders).

use async_trait::async_trait;
use sqlx::Row;

use super::{Pool, SqlStore};
use crate::store::alerts::{
    AlertChange, AlertHistoryRecord, AlertRecord, AlertRuleRecord, AlertState, AlertStore,
    DeliveryOutcome, DeliveryRecord, FleetCounts, NewDelivery, WebhookTarget,
};
use crate::store::{NewAudit, StoreError, StoreResult};

const RULE_COLUMNS: &str = "id, name, condition, for_ms, webhooks, created_at, created_by";

macro_rules! rule_from_row {
    ($row:expr) => {{
        let row = $row;
        let hooks: String = row.try_get("webhooks")?;
        Ok::<_, StoreError>(AlertRuleRecord {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            condition: row.try_get("condition")?,
            for_ms: row.try_get("for_ms")?,
            webhooks: serde_json::from_str::<Vec<WebhookTarget>>(&hooks)
                .map_err(|e| StoreError::Corrupt(format!("alert rule webhooks: {e}")))?,
            created_at: row.try_get("created_at")?,
            created_by: row.try_get("created_by")?,
        })
    }};
}

const ALERT_COLUMNS: &str = "id, rule_id, rule_name, alert_key, labels, state, value, started_at, fired_at, resolved_at, acked_by, acked_at";

macro_rules! alert_from_row {
    ($row:expr) => {{
        let row = $row;
        let state: String = row.try_get("state")?;
        Ok::<_, StoreError>(AlertRecord {
            id: row.try_get("id")?,
            rule_id: row.try_get("rule_id")?,
            rule_name: row.try_get("rule_name")?,
            key: row.try_get("alert_key")?,
            labels: row.try_get("labels")?,
            state: AlertState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("alert state {state:?}")))?,
            value: row.try_get("value")?,
            started_at: row.try_get("started_at")?,
            fired_at: row.try_get("fired_at")?,
            resolved_at: row.try_get("resolved_at")?,
            acked_by: row.try_get("acked_by")?,
            acked_at: row.try_get("acked_at")?,
        })
    }};
}

const DELIVERY_COLUMNS: &str = "id, instance_id, url, secret, event, event_at, value, state, attempts, next_attempt_at, last_error, delivered_at";

macro_rules! delivery_from_row {
    ($row:expr) => {{
        let row = $row;
        Ok::<_, StoreError>(DeliveryRecord {
            id: row.try_get("id")?,
            instance_id: row.try_get("instance_id")?,
            url: row.try_get("url")?,
            secret: row.try_get("secret")?,
            event: row.try_get("event")?,
            event_at: row.try_get("event_at")?,
            value: row.try_get("value")?,
            state: row.try_get("state")?,
            attempts: row.try_get("attempts")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            last_error: row.try_get("last_error")?,
            delivered_at: row.try_get("delivered_at")?,
        })
    }};
}

/// (text, count) pairs of a grouped count.
macro_rules! counts {
    ($p:expr, $sql:expr) => {{
        let rows = sqlx::query($sql).fetch_all($p).await?;
        rows.iter()
            .map(|r| {
                Ok::<_, StoreError>((
                    r.try_get::<Option<String>, _>(0)?.unwrap_or_default(),
                    r.try_get::<i64, _>(1)?,
                ))
            })
            .collect::<StoreResult<Vec<_>>>()
    }};
}

#[async_trait]
impl AlertStore for SqlStore {
    async fn create_alert_rule(&self, r: &AlertRuleRecord, audit: &NewAudit) -> StoreResult<bool> {
        let hooks = serde_json::to_string(&r.webhooks).expect("serializes");
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "INSERT INTO alert_rules (id, name, condition, for_ms, webhooks, created_at, created_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(&r.id)
            .bind(&r.name)
            .bind(&r.condition)
            .bind(r.for_ms)
            .bind(&hooks)
            .bind(r.created_at)
            .bind(&r.created_by)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Ok(false);
            }
            insert_audit!(&mut *tx, audit)?;
            tx.commit().await?;
            Ok(true)
        })
    }

    async fn list_alert_rules(&self) -> StoreResult<Vec<AlertRuleRecord>> {
        fetch_all!(
            self,
            format!("SELECT {RULE_COLUMNS} FROM alert_rules ORDER BY created_at, id"),
            rule_from_row
        )
    }

    async fn get_alert_rule(&self, id_or_name: &str) -> StoreResult<Option<AlertRuleRecord>> {
        let rows = fetch_all!(
            self,
            format!("SELECT {RULE_COLUMNS} FROM alert_rules WHERE id = $1 OR name = $1"),
            rule_from_row,
            id_or_name
        )?;
        Ok(rows.into_iter().next())
    }

    async fn delete_alert_rule(&self, id: &str, at: i64, audit: &NewAudit) -> StoreResult<bool> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let open = sqlx::query(
                "UPDATE alert_instances SET state = 'resolved', resolved_at = $2
                 WHERE rule_id = $1 AND state <> 'resolved' RETURNING id",
            )
            .bind(id)
            .bind(at)
            .fetch_all(&mut *tx)
            .await?;
            for row in &open {
                sqlx::query(
                    "INSERT INTO alert_history (instance_id, at, state, value, note)
                     VALUES ($1, $2, 'resolved', NULL, 'rule deleted')",
                )
                .bind(row.try_get::<i64, _>(0)?)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            let n = sqlx::query("DELETE FROM alert_rules WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Ok(false);
            }
            insert_audit!(&mut *tx, audit)?;
            tx.commit().await?;
            Ok(true)
        })
    }

    async fn open_alerts(&self) -> StoreResult<Vec<AlertRecord>> {
        fetch_all!(
            self,
            format!(
                "SELECT {ALERT_COLUMNS} FROM alert_instances WHERE state <> 'resolved' ORDER BY id"
            ),
            alert_from_row
        )
    }

    async fn record_alert_change(
        &self,
        change: &AlertChange,
        notify: &[NewDelivery],
    ) -> StoreResult<Option<i64>> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let (id, at, value, state, note) = match change {
                AlertChange::Open { rule_id, rule_name, key, labels, state, value, at } => {
                    let fired = (*state == AlertState::Firing).then_some(*at);
                    let id: i64 = sqlx::query(
                        "INSERT INTO alert_instances (rule_id, rule_name, alert_key, labels, state, value, started_at, fired_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                    )
                    .bind(rule_id)
                    .bind(rule_name)
                    .bind(key)
                    .bind(labels)
                    .bind(state.as_str())
                    .bind(*value)
                    .bind(*at)
                    .bind(fired)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
                    (id, *at, *value, *state, None)
                }
                AlertChange::Move { id, from, to, value, at, note } => {
                    let n = sqlx::query(
                        "UPDATE alert_instances SET state = $3, value = $4,
                             fired_at = CASE WHEN $3 = 'firing' AND fired_at IS NULL THEN $5 ELSE fired_at END,
                             resolved_at = CASE WHEN $3 = 'resolved' THEN $5 ELSE resolved_at END
                         WHERE id = $1 AND state = $2",
                    )
                    .bind(*id)
                    .bind(from.as_str())
                    .bind(to.as_str())
                    .bind(*value)
                    .bind(*at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 0 {
                        return Ok(None);
                    }
                    if from == to {
                        // Only the value changed: no history row.
                        tx.commit().await?;
                        return Ok(Some(*id));
                    }
                    (*id, *at, *value, *to, note.clone())
                }
                AlertChange::Drop { id } => {
                    sqlx::query(
                        "DELETE FROM alert_history WHERE instance_id = $1
                         AND EXISTS (SELECT 1 FROM alert_instances WHERE id = $1 AND state = 'pending')",
                    )
                        .bind(*id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM alert_instances WHERE id = $1 AND state = 'pending'")
                        .bind(*id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    return Ok(Some(*id));
                }
            };
            sqlx::query(
                "INSERT INTO alert_history (instance_id, at, state, value, note) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(at)
            .bind(state.as_str())
            .bind(value)
            .bind(note)
            .execute(&mut *tx)
            .await?;
            for d in notify {
                sqlx::query(
                    "INSERT INTO webhook_deliveries (instance_id, url, secret, event, event_at, value, state, attempts, next_attempt_at, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $5, $5)",
                )
                .bind(id)
                .bind(&d.target.url)
                .bind(&d.target.secret)
                .bind(&d.event)
                .bind(at)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Some(id))
        })
    }

    async fn list_alerts(
        &self,
        state: Option<AlertState>,
        limit: u32,
    ) -> StoreResult<Vec<AlertRecord>> {
        on_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {ALERT_COLUMNS} FROM alert_instances WHERE ($1 IS NULL OR state = $1)
                 ORDER BY id DESC LIMIT $2"
            ))
            .bind(state.map(AlertState::as_str))
            .bind(i64::from(limit))
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| alert_from_row!(r)).collect()
        })
    }

    async fn get_alert(&self, id: i64) -> StoreResult<Option<AlertRecord>> {
        on_pool!(self, p => {
            let row = sqlx::query(&format!("SELECT {ALERT_COLUMNS} FROM alert_instances WHERE id = $1"))
                .bind(id)
                .fetch_optional(p)
                .await?;
            row.as_ref().map(|r| alert_from_row!(r)).transpose()
        })
    }

    async fn alert_history(&self, id: i64) -> StoreResult<Vec<AlertHistoryRecord>> {
        on_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT at, state, value, note FROM alert_history WHERE instance_id = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(AlertHistoryRecord {
                        at: r.try_get("at")?,
                        state: r.try_get("state")?,
                        value: r.try_get("value")?,
                        note: r.try_get("note")?,
                    })
                })
                .collect()
        })
    }

    async fn alert_deliveries(&self, id: i64) -> StoreResult<Vec<DeliveryRecord>> {
        on_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE instance_id = $1 ORDER BY id"
            ))
            .bind(id)
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| delivery_from_row!(r)).collect()
        })
    }

    async fn ack_alert(
        &self,
        id: i64,
        by: &str,
        at: i64,
        audit: &NewAudit,
    ) -> StoreResult<Option<AlertRecord>> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "UPDATE alert_instances SET acked_by = $2, acked_at = $3 WHERE id = $1 AND acked_at IS NULL",
            )
            .bind(id)
            .bind(by)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                sqlx::query(
                    "INSERT INTO alert_history (instance_id, at, state, value, note) VALUES ($1, $2, 'acked', NULL, $3)",
                )
                .bind(id)
                .bind(at)
                .bind(by)
                .execute(&mut *tx)
                .await?;
            }
            let row = sqlx::query(&format!("SELECT {ALERT_COLUMNS} FROM alert_instances WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else { return Ok(None) };
            let alert = alert_from_row!(&row)?;
            insert_audit!(&mut *tx, audit)?;
            tx.commit().await?;
            Ok(Some(alert))
        })
    }

    async fn due_deliveries(&self, now: i64, limit: u32) -> StoreResult<Vec<DeliveryRecord>> {
        on_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
                 WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $2"
            ))
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| delivery_from_row!(r)).collect()
        })
    }

    async fn finish_delivery(&self, id: i64, outcome: &DeliveryOutcome) -> StoreResult<()> {
        let (state, next, error, delivered) = match outcome {
            DeliveryOutcome::Delivered { at } => ("delivered", None, None, Some(*at)),
            DeliveryOutcome::Retry { next_at, error } => {
                ("pending", Some(*next_at), Some(error.as_str()), None)
            }
            DeliveryOutcome::GaveUp { error } => ("failed", None, Some(error.as_str()), None),
        };
        on_pool!(self, p => {
            sqlx::query(
                "UPDATE webhook_deliveries SET state = $2, attempts = attempts + 1,
                     next_attempt_at = COALESCE($3, next_attempt_at),
                     last_error = COALESCE($4, last_error), delivered_at = $5
                 WHERE id = $1",
            )
            .bind(id)
            .bind(state)
            .bind(next)
            .bind(error)
            .bind(delivered)
            .execute(p)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    async fn next_delivery_at(&self) -> StoreResult<Option<i64>> {
        on_pool!(self, p => {
            let row = sqlx::query(
                "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE state = 'pending'",
            )
            .fetch_one(p)
            .await?;
            Ok(row.try_get::<Option<i64>, _>(0)?)
        })
    }

    async fn rebooted_devices(&self, since: i64, until: i64) -> StoreResult<Vec<String>> {
        on_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT DISTINCT b.device_id FROM telemetry_boots b
                 WHERE b.first_seen >= $1 AND b.first_seen < $2
                   AND EXISTS (SELECT 1 FROM telemetry_boots e
                               WHERE e.device_id = b.device_id AND e.id < b.id)
                 ORDER BY b.device_id",
            )
            .bind(since)
            .bind(until)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| Ok(r.try_get::<String, _>(0)?))
                .collect()
        })
    }

    async fn fleet_counts(&self) -> StoreResult<FleetCounts> {
        on_pool!(self, p => {
            Ok(FleetCounts {
                by_enrollment: counts!(
                    p,
                    "SELECT enrollment, COUNT(*) FROM devices GROUP BY enrollment ORDER BY enrollment"
                )?,
                by_agent_version: counts!(
                    p,
                    "SELECT agent_version, COUNT(*) FROM devices WHERE enrollment = 'accepted'
                     GROUP BY agent_version ORDER BY agent_version"
                )?,
                firing_by_rule: counts!(
                    p,
                    "SELECT rule_name, COUNT(*) FROM alert_instances WHERE state = 'firing'
                     GROUP BY rule_name ORDER BY rule_name"
                )?,
                deployment_devices_by_state: counts!(
                    p,
                    "SELECT d.state, COUNT(*) FROM device_targets t
                     JOIN deployment_devices d
                       ON d.deployment_id = t.deployment_id AND d.device_id = t.device_id
                     GROUP BY d.state ORDER BY d.state"
                )?,
            })
        })
    }
}
