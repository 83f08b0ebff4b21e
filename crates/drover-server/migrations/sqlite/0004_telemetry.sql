-- Telemetry: raw metric points, events and their rollups (docs/monitoring.md).
--
-- Devices and boots are interned to integer keys so the hot tables stay
-- narrow. A point is unique by (boot_key, seq): a boot belongs to one
-- device, so this is the (device, boot, seq) deduplication key of the
-- protocol. Times are Unix milliseconds as the device recorded them.
-- Clock quality: 0 synced, 1 corrected, 2 unsynced.

-- One row per (device, metric name); its count per device is the
-- cardinality that TelemetrySettings::max_series_per_device limits.
CREATE TABLE telemetry_series (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id  TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (device_id, name)
);
CREATE INDEX telemetry_series_by_name ON telemetry_series (name, device_id);

CREATE TABLE telemetry_boots (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id  TEXT NOT NULL,
    boot_id    TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    UNIQUE (device_id, boot_id)
);

-- Clustered by series and time (WITHOUT ROWID), which is how every read
-- and the pruning walk it; the unique index is the deduplication key.
CREATE TABLE telemetry_points (
    series_id BIGINT NOT NULL,
    time_ms   BIGINT NOT NULL,
    boot_key  BIGINT NOT NULL,
    seq       BIGINT NOT NULL,
    value     REAL NOT NULL,
    labels    TEXT,
    clock     INTEGER NOT NULL,
    PRIMARY KEY (series_id, time_ms, boot_key, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX telemetry_points_dedup ON telemetry_points (boot_key, seq);

CREATE TABLE telemetry_events (
    boot_key    BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    device_id   TEXT NOT NULL,
    time_ms     BIGINT NOT NULL,
    name        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    message     TEXT NOT NULL,
    labels      TEXT,
    clock       INTEGER NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (boot_key, seq)
);
CREATE INDEX telemetry_events_by_device ON telemetry_events (device_id, time_ms);

-- Rollups per series and bucket start (1 min and 1 h): count, sum, min,
-- max and a quantile sketch (store/telemetry/sketch.rs, 1 % relative error).
CREATE TABLE telemetry_rollup_1m (
    series_id BIGINT NOT NULL,
    bucket    BIGINT NOT NULL,
    count     BIGINT NOT NULL,
    sum       REAL NOT NULL,
    min       REAL NOT NULL,
    max       REAL NOT NULL,
    sketch    BLOB NOT NULL,
    PRIMARY KEY (series_id, bucket)
) WITHOUT ROWID;

CREATE TABLE telemetry_rollup_1h (
    series_id BIGINT NOT NULL,
    bucket    BIGINT NOT NULL,
    count     BIGINT NOT NULL,
    sum       REAL NOT NULL,
    min       REAL NOT NULL,
    max       REAL NOT NULL,
    sketch    BLOB NOT NULL,
    PRIMARY KEY (series_id, bucket)
) WITHOUT ROWID;

-- Per device: records the device reported dropping from its full buffer.
CREATE TABLE telemetry_devices (
    device_id     TEXT PRIMARY KEY,
    dropped_total BIGINT NOT NULL,
    last_batch_at BIGINT NOT NULL
);
