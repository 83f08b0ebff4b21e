-- Releases, their content-addressed artifacts and deployments.
-- Artifact bytes live in the object store (DATA/artifacts by default);
-- this table records which are complete. Booleans are 0/1 integers on both
-- backends so one SQL text serves both.

CREATE TABLE artifacts (
    sha256     TEXT PRIMARY KEY,
    size       BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE releases (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    device_types TEXT NOT NULL,
    manifest     TEXT NOT NULL,
    key_list     TEXT,
    created_at   BIGINT NOT NULL,
    created_by   TEXT
);

CREATE TABLE deployments (
    id              TEXT PRIMARY KEY,
    release_id      TEXT NOT NULL REFERENCES releases (id),
    target          TEXT NOT NULL,
    allow_downgrade BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    created_by      TEXT
);

CREATE TABLE deployment_devices (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    device_id     TEXT NOT NULL,
    state         TEXT NOT NULL,
    progress      BIGINT,
    reason        TEXT,
    message       TEXT,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, device_id)
);

CREATE INDEX deployment_devices_by_device ON deployment_devices (device_id);

-- The deployment each device should follow now (the newest one naming it).
CREATE TABLE device_targets (
    device_id     TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    set_at        BIGINT NOT NULL
);
