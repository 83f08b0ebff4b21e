-- Alerts (docs/monitoring.md, "Alerts"; decision 023): rules, the alerts
-- they raise with every change kept, and the webhook notifications
-- waiting to be delivered (a persisted queue: a restart loses none).
-- Times are Unix milliseconds of the server's clock.

CREATE TABLE alert_rules (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    -- The condition as JSON (drover_proto::alerts::AlertCondition).
    condition  TEXT NOT NULL,
    for_ms     BIGINT NOT NULL,
    -- [{"url", "secret"}, …]: the secret signs the body, so it is kept.
    webhooks   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT
);

-- One row per alert: a rule's condition for one key, from the first
-- evaluation that saw it (pending) to the one that saw it end (resolved).
CREATE TABLE alert_instances (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id     TEXT NOT NULL,
    rule_name   TEXT NOT NULL,
    alert_key   TEXT NOT NULL,
    labels      TEXT NOT NULL,
    state       TEXT NOT NULL,
    value       DOUBLE PRECISION,
    started_at  BIGINT NOT NULL,
    fired_at    BIGINT,
    resolved_at BIGINT,
    acked_by    TEXT,
    acked_at    BIGINT
);
-- At most one open alert per rule and key.
CREATE UNIQUE INDEX alert_instances_open ON alert_instances (rule_id, alert_key)
    WHERE state <> 'resolved';
CREATE INDEX alert_instances_by_state ON alert_instances (state, id);

CREATE TABLE alert_history (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id BIGINT NOT NULL REFERENCES alert_instances (id),
    at          BIGINT NOT NULL,
    state       TEXT NOT NULL,
    value       DOUBLE PRECISION,
    note        TEXT
);
CREATE INDEX alert_history_by_instance ON alert_history (instance_id, id);

-- The webhook queue. A row is written in the transaction that changes the
-- alert, and left as 'delivered' or 'failed' (attempts used up) as a record.
CREATE TABLE webhook_deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id     BIGINT NOT NULL REFERENCES alert_instances (id),
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,
    event           TEXT NOT NULL,
    event_at        BIGINT NOT NULL,
    value           DOUBLE PRECISION,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_by_instance ON webhook_deliveries (instance_id);
