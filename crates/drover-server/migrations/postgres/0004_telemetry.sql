-- Telemetry: raw metric points, events and their rollups (docs/monitoring.md).
-- Same tables as the SQLite migration; see the comments there.
-- Clock quality: 0 synced, 1 corrected, 2 unsynced.

CREATE TABLE telemetry_series (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (device_id, name)
);
CREATE INDEX telemetry_series_by_name ON telemetry_series (name, device_id);

CREATE TABLE telemetry_boots (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  TEXT NOT NULL,
    boot_id    TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    UNIQUE (device_id, boot_id)
);

-- The primary key is the deduplication key; reads and pruning go through
-- the (series, time) index, which carries the value for index-only scans.
CREATE TABLE telemetry_points (
    boot_key  BIGINT NOT NULL,
    seq       BIGINT NOT NULL,
    series_id BIGINT NOT NULL,
    time_ms   BIGINT NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    labels    TEXT,
    clock     SMALLINT NOT NULL,
    PRIMARY KEY (boot_key, seq)
);
CREATE INDEX telemetry_points_by_series ON telemetry_points (series_id, time_ms) INCLUDE (value);

CREATE TABLE telemetry_events (
    boot_key    BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    device_id   TEXT NOT NULL,
    time_ms     BIGINT NOT NULL,
    name        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    message     TEXT NOT NULL,
    labels      TEXT,
    clock       SMALLINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (boot_key, seq)
);
CREATE INDEX telemetry_events_by_device ON telemetry_events (device_id, time_ms);

CREATE TABLE telemetry_rollup_1m (
    series_id BIGINT NOT NULL,
    bucket    BIGINT NOT NULL,
    count     BIGINT NOT NULL,
    sum       DOUBLE PRECISION NOT NULL,
    min       DOUBLE PRECISION NOT NULL,
    max       DOUBLE PRECISION NOT NULL,
    sketch    BYTEA NOT NULL,
    PRIMARY KEY (series_id, bucket)
);

CREATE TABLE telemetry_rollup_1h (
    series_id BIGINT NOT NULL,
    bucket    BIGINT NOT NULL,
    count     BIGINT NOT NULL,
    sum       DOUBLE PRECISION NOT NULL,
    min       DOUBLE PRECISION NOT NULL,
    max       DOUBLE PRECISION NOT NULL,
    sketch    BYTEA NOT NULL,
    PRIMARY KEY (series_id, bucket)
);

CREATE TABLE telemetry_devices (
    device_id     TEXT PRIMARY KEY,
    dropped_total BIGINT NOT NULL,
    last_batch_at BIGINT NOT NULL
);
