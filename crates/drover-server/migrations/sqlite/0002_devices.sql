-- Devices, enrollment tokens, pre-authorized keys and groups.
-- Rows that change from several places carry a `version` for
-- compare-and-swap updates. Flat documents (tags, inventory, desired
-- configuration) are JSON objects of string values stored as TEXT.

CREATE TABLE devices (
    id             TEXT PRIMARY KEY,
    public_key     TEXT NOT NULL UNIQUE,
    enrollment     TEXT NOT NULL CHECK (enrollment IN ('pending', 'accepted', 'rejected', 'revoked')),
    hostname       TEXT,
    tags           TEXT NOT NULL DEFAULT '{}',
    inventory      TEXT NOT NULL DEFAULT '{}',
    inventory_hash TEXT,
    desired        TEXT NOT NULL DEFAULT '{}',
    reported       TEXT,
    agent_version  TEXT,
    cert_serial    TEXT,
    cert_not_after BIGINT,
    enrolled_via   TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    last_seen      BIGINT,
    version        BIGINT NOT NULL
);

CREATE TABLE enroll_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '{}',
    uses_left   BIGINT,
    expires_at  BIGINT,
    created_at  BIGINT NOT NULL,
    created_by  TEXT,
    revoked_at  BIGINT,
    version     BIGINT NOT NULL
);

CREATE TABLE preauthorized_keys (
    public_key TEXT PRIMARY KEY,
    device_id  TEXT NOT NULL,
    tags       TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    created_by TEXT
);

CREATE TABLE device_groups (
    name       TEXT PRIMARY KEY,
    query      TEXT,
    members    TEXT NOT NULL DEFAULT '[]',
    desired    TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version    BIGINT NOT NULL
);
