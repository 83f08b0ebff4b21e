-- Foundation schema (SQLite). Keep in step with ../postgres/0001_foundation.sql.
-- Conventions every later table follows: text ids chosen by the server,
-- times as BIGINT Unix milliseconds (UTC), JSON documents as TEXT.

CREATE TABLE server_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    secret_hash  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    created_by   TEXT REFERENCES api_tokens (id),
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT
);

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    method     TEXT NOT NULL,
    path       TEXT NOT NULL,
    status     BIGINT NOT NULL,
    outcome    TEXT NOT NULL CHECK (outcome IN ('success', 'denied', 'failed')),
    detail     TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_action ON audit_log (action, id);
