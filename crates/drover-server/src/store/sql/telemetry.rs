//! [`TelemetryStore`] on both backends. Reads share one SQL text
//! (`$N` placeholders); the two bulk inserts of the hot path differ: rows
//! travel as one JSON parameter read by `json_each` on SQLite and as arrays
//! read by `UNNEST` on PostgreSQL, because thousands of separate
//! parameters per statement are very slow through sqlx's SQLite driver.
//!
//! Writing a group of batches is one transaction: one indexed search finds
//! which (boot, seq) are stored already (a resent batch), the rest is
//! inserted in bulk (`ON CONFLICT DO NOTHING`, with the inserted count
//! checked), and only those new points reach the rollups. Rollups are
//! read-modify-write: the touched buckets are read, merged with the new
//! points in Rust (sketches cannot be merged in portable SQL) and written
//! back with an upsert. This relies on one writer per device at a time,
//! which the control channel gives (one live channel per device, its
//! batches handled in order, one ingestion writer per server); a concurrent
//! writer is detected by the inserted count and the transaction abandoned.
//!
//! Integers that go into SQL text (series ids, bucket starts, boot keys)
//! are formatted from `i64`, never from device input, so there is nothing
//! to inject; device text (labels) only travels as JSON strings or binds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use async_trait::async_trait;
use sqlx::Row;

use super::{Pool, SqlStore};
use crate::store::telemetry::{
    Agg, AggregateRead, Buckets, DeviceTelemetry, PointWrite, PruneReport, Resolution, Sketch,
    StoredEvent, StoredPoint, TelemetrySettings, TelemetryStore, TelemetryWrite, WriteOutcome,
    clock_code, clock_from_code,
};
use crate::store::{StoreError, StoreResult};

/// Points or rollup rows per bulk statement.
const BULK_ROWS: usize = 2000;
/// Rows per multi-row `INSERT` of events (10 parameters each).
const EVENT_ROWS: usize = 200;
/// Series whose touched rollup buckets are read per statement.
const ROLLUP_SERIES: usize = 200;
/// Series per pruning statement.
const PRUNE_SERIES: usize = 200;
/// Above this many groups an aggregate is read in one statement grouped by
/// series (instead of one statement per group).
const GROUPS_PER_STATEMENT: usize = 16;

const ROLLUP_TABLES: [(&str, i64); 2] = [
    ("telemetry_rollup_1m", 60_000),
    ("telemetry_rollup_1h", 3_600_000),
];

/// `($1, $2, …), (…)` for `rows` rows of `cols` parameters.
fn placeholders(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "${}", r * cols + c + 1);
        }
        s.push(')');
    }
    s
}

/// `1, 2, 3` from integers.
fn int_list(ids: &[i64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{id}");
    }
    s
}

fn decode_sketch(bytes: &[u8]) -> StoreResult<Sketch> {
    Sketch::decode(bytes).map_err(|e| StoreError::Corrupt(format!("rollup sketch: {e}")))
}

fn bucket_of(time_ms: i64, width: i64) -> i64 {
    time_ms - time_ms.rem_euclid(width)
}

/// Per (series, bucket start) of width `width`: the aggregate of `points`
/// ((series, time, value) of newly stored points).
fn rollup_parts(points: &[(i64, i64, f64)], width: i64) -> BTreeMap<(i64, i64), Agg> {
    let mut parts: BTreeMap<(i64, i64), Agg> = BTreeMap::new();
    for &(series, time, value) in points {
        parts
            .entry((series, bucket_of(time, width)))
            .or_insert_with(|| Agg::empty(true))
            .add(value);
    }
    parts
}

/// A float as JSON (finite: a sum can overflow to infinity, JSON has none).
fn json_f64(out: &mut String, v: f64) {
    let v = if v.is_nan() {
        0.0
    } else {
        v.clamp(f64::MIN, f64::MAX)
    };
    let _ = write!(out, "{v:?}");
}

/// `[[series, time, boot, seq, value, labels, clock], …]` for `json_each`.
fn points_json(chunk: &[(i64, &PointWrite)]) -> String {
    let mut out = String::with_capacity(chunk.len() * 64);
    out.push('[');
    for (i, (boot_key, p)) in chunk.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "[{},{},{},{},",
            p.series_id, p.time_ms, boot_key, p.seq
        );
        json_f64(&mut out, p.value);
        out.push(',');
        match &p.labels {
            Some(l) => out.push_str(&serde_json::to_string(l).expect("strings serialize")),
            None => out.push_str("null"),
        }
        let _ = write!(out, ",{}]", clock_code(p.clock));
    }
    out.push(']');
    out
}

/// `[[series, bucket, count, sum, min, max, "sketch hex"], …]` for `json_each`.
fn rollups_json(chunk: &[(&(i64, i64), &Agg)]) -> String {
    let mut out = String::with_capacity(chunk.len() * 96);
    out.push('[');
    for (i, ((series, bucket), a)) in chunk.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "[{series},{bucket},{},", a.count);
        for v in [a.sum, a.min, a.max] {
            json_f64(&mut out, v);
            out.push(',');
        }
        out.push('"');
        out.push_str(&hex::encode(
            a.sketch.as_ref().map(Sketch::encode).unwrap_or_default(),
        ));
        out.push_str("\"]");
    }
    out.push(']');
    out
}

/// Inserts points in bulk: one parameter on SQLite (a JSON array read by
/// `json_each`), arrays read by
/// `UNNEST` on PostgreSQL. Sending thousands of separate parameters is far
/// slower with sqlx's SQLite driver (see docs/benchmarks.md).
const SQLITE_POINTS: &str = "INSERT INTO telemetry_points (series_id, time_ms, boot_key, seq, value, labels, clock)
     SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4, j.value ->> 5, j.value ->> 6
     FROM json_each($1) j WHERE true
     ON CONFLICT DO NOTHING";
const POSTGRES_POINTS: &str = "INSERT INTO telemetry_points (series_id, time_ms, boot_key, seq, value, labels, clock)
     SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::float8[], $6::text[], $7::smallint[])
     ON CONFLICT DO NOTHING";
const ROLLUP_SET: &str =
    "ON CONFLICT (series_id, bucket) DO UPDATE SET count = excluded.count, sum = excluded.sum,
     min = excluded.min, max = excluded.max, sketch = excluded.sketch";

/// Folds into `$parts` what `$table` already holds for the same buckets.
macro_rules! merge_stored_rollups {
    ($tx:expr, $table:expr, $parts:expr) => {{
        let table: &str = $table;
        let parts: &mut BTreeMap<(i64, i64), Agg> = $parts;
        // Per series, the range from its first to its last touched bucket.
        // (A row-value `IN (VALUES …)` would be neater, but SQLite scans the
        // whole table for it; ORed key ranges are index searches on both.)
        let mut ranges: Vec<(i64, i64, i64)> = Vec::new();
        for &(series, bucket) in parts.keys() {
            match ranges.last_mut() {
                Some(r) if r.0 == series => r.2 = bucket,
                _ => ranges.push((series, bucket, bucket)),
            }
        }
        for chunk in ranges.chunks(ROLLUP_SERIES) {
            let mut cond = String::with_capacity(chunk.len() * 64);
            for (i, (s, lo, hi)) in chunk.iter().enumerate() {
                if i > 0 {
                    cond.push_str(" OR ");
                }
                let _ = write!(
                    cond,
                    "(series_id = {s} AND bucket >= {lo} AND bucket <= {hi})"
                );
            }
            let sql = format!(
                "SELECT series_id, bucket, count, sum, min, max, sketch FROM {table} WHERE {cond}"
            );
            let rows = sqlx::query(&sql).fetch_all(&mut *$tx).await?;
            for row in &rows {
                let key = (row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?);
                let Some(part) = parts.get_mut(&key) else {
                    continue;
                };
                part.merge(&Agg {
                    count: row.try_get::<i64, _>(2)?.max(0) as u64,
                    sum: row.try_get(3)?,
                    min: row.try_get(4)?,
                    max: row.try_get(5)?,
                    sketch: Some(decode_sketch(&row.try_get::<Vec<u8>, _>(6)?)?),
                });
            }
        }
    }};
}

/// The points not stored yet (each (boot, seq) once), counted as new in
/// their batch's outcome and collected as (series, time, value) for the
/// rollups.
fn new_points<'a>(
    points: &[(i64, &'a PointWrite)],
    existing: &HashSet<(i64, i64)>,
    owner: &HashMap<(i64, i64), usize>,
    outcomes: &mut [WriteOutcome],
    fresh: &mut Vec<(i64, i64, f64)>,
) -> Vec<(i64, &'a PointWrite)> {
    let mut seen = HashSet::with_capacity(points.len());
    let mut out = Vec::with_capacity(points.len());
    for &(boot, p) in points {
        let key = (boot, p.seq);
        if existing.contains(&key) || !seen.insert(key) {
            continue;
        }
        if let Some(&i) = owner.get(&key) {
            outcomes[i].new_points += 1;
        }
        fresh.push((p.series_id, p.time_ms, p.value));
        out.push((boot, p));
    }
    out
}

/// Every point found new must have been inserted; if another writer got
/// some in between (two connections of one device on two replicas), the
/// rollups would count them twice, so the transaction is abandoned and the
/// caller retries (the retry finds them stored).
fn check_inserted(inserted: u64, expected: usize) -> StoreResult<()> {
    if inserted == expected as u64 {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "{} of {expected} telemetry points were stored by a concurrent writer; retry the batch",
            expected as u64 - inserted.min(expected as u64)
        )))
    }
}

/// The `(boot_key, seq)` of `$points` already stored: one search of the
/// dedup key per boot's seq range (usually nothing, unless a batch is resent).
macro_rules! stored_already {
    ($tx:expr, $points:expr) => {{
        let mut ranges: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for (boot, p) in $points.iter() {
            let r = ranges.entry(*boot).or_insert((p.seq, p.seq));
            r.0 = r.0.min(p.seq);
            r.1 = r.1.max(p.seq);
        }
        let ranges: Vec<(i64, (i64, i64))> = ranges.into_iter().collect();
        let mut found: HashSet<(i64, i64)> = HashSet::new();
        for chunk in ranges.chunks(ROLLUP_SERIES) {
            let mut cond = String::with_capacity(chunk.len() * 64);
            for (i, (b, (lo, hi))) in chunk.iter().enumerate() {
                if i > 0 {
                    cond.push_str(" OR ");
                }
                let _ = write!(cond, "(boot_key = {b} AND seq >= {lo} AND seq <= {hi})");
            }
            let sql = format!("SELECT boot_key, seq FROM telemetry_points WHERE {cond}");
            for row in sqlx::query(&sql).fetch_all(&mut *$tx).await? {
                found.insert((row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?));
            }
        }
        found
    }};
}

/// Events, the per-device counters and the commit: the same SQL on both.
macro_rules! finish_write {
    ($tx:expr, $writes:expr, $events:expr, $owner:expr, $outcomes:expr) => {{
        for chunk in $events.chunks(EVENT_ROWS) {
            let sql = format!(
                "INSERT INTO telemetry_events (boot_key, seq, device_id, time_ms, name, severity, message, labels, clock, received_at)
                 VALUES {} ON CONFLICT DO NOTHING RETURNING boot_key, seq",
                placeholders(chunk.len(), 10)
            );
            let mut q = sqlx::query(&sql);
            for (boot_key, device, received_at, ev) in chunk {
                q = q
                    .bind(*boot_key)
                    .bind(ev.seq)
                    .bind(device.as_str())
                    .bind(ev.time_ms)
                    .bind(ev.name.as_str())
                    .bind(ev.severity.as_str())
                    .bind(ev.message.as_str())
                    .bind(ev.labels.as_deref())
                    .bind(clock_code(ev.clock))
                    .bind(*received_at);
            }
            for row in q.fetch_all(&mut *$tx).await? {
                let key = (row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?);
                if let Some(&i) = $owner.get(&key) {
                    $outcomes[i].new_events += 1;
                }
            }
        }
        for (w, o) in $writes.iter().zip($outcomes.iter_mut()) {
            let total = w.points.len() + w.events.len();
            o.duplicates = total - (o.new_points + o.new_events).min(total);
            // A batch whose records were all seen before was counted when it
            // first came; its drop count is not added again.
            let dropped = if !w.had_records || o.new_points + o.new_events > 0 {
                i64::try_from(w.dropped).unwrap_or(i64::MAX)
            } else {
                0
            };
            sqlx::query(
                "INSERT INTO telemetry_devices (device_id, dropped_total, last_batch_at) VALUES ($1, $2, $3)
                 ON CONFLICT (device_id) DO UPDATE SET
                   dropped_total = telemetry_devices.dropped_total + excluded.dropped_total,
                   last_batch_at = excluded.last_batch_at",
            )
            .bind(w.device_id.as_str())
            .bind(dropped)
            .bind(w.received_at)
            .execute(&mut *$tx)
            .await?;
        }
        $tx.commit().await?;
    }};
}

/// Reads one rollup or raw aggregate statement into (key, bucket, agg)
/// rows; `$key` says whether the first column is a series id.
macro_rules! fetch_aggregate_rows {
    ($p:expr, $sql:expr, $read:expr, $with_series:expr) => {{
        let read: &AggregateRead = $read;
        let rows = sqlx::query($sql)
            .bind(read.since_ms)
            .bind(read.until_ms)
            .bind(read.step_ms)
            .fetch_all($p)
            .await?;
        let mut out: Vec<(i64, i64, Agg)> = Vec::with_capacity(rows.len());
        let off = usize::from($with_series);
        for row in &rows {
            let series = if $with_series {
                row.try_get::<i64, _>(0)?
            } else {
                0
            };
            let bucket: i64 = row.try_get(off)?;
            let count: i64 = row.try_get(off + 1)?;
            out.push((
                series,
                bucket,
                Agg {
                    count: count.max(0) as u64,
                    sum: row.try_get(off + 2)?,
                    min: row.try_get(off + 3)?,
                    max: row.try_get(off + 4)?,
                    sketch: None,
                },
            ));
        }
        out
    }};
}

#[async_trait]
impl TelemetryStore for SqlStore {
    async fn device_series(&self, device_id: &str) -> StoreResult<Vec<(String, i64)>> {
        on_pool!(self, p => {
            let rows = sqlx::query("SELECT name, id FROM telemetry_series WHERE device_id = $1")
                .bind(device_id)
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<StoreResult<Vec<_>>>()
        })
    }

    async fn create_series(
        &self,
        device_id: &str,
        names: &[String],
        limit: usize,
        now: i64,
    ) -> StoreResult<Vec<(String, i64)>> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let rows = sqlx::query("SELECT name, id FROM telemetry_series WHERE device_id = $1")
                .bind(device_id)
                .fetch_all(&mut *tx)
                .await?;
            let mut known: HashMap<String, i64> = HashMap::with_capacity(rows.len());
            for r in &rows {
                known.insert(r.try_get(0)?, r.try_get(1)?);
            }
            let mut count = known.len();
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                if let Some(id) = known.get(name) {
                    out.push((name.clone(), *id));
                    continue;
                }
                if count >= limit {
                    continue;
                }
                let inserted = sqlx::query(
                    "INSERT INTO telemetry_series (device_id, name, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (device_id, name) DO NOTHING RETURNING id",
                )
                .bind(device_id)
                .bind(name)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let id: i64 = match inserted {
                    Some(r) => r.try_get(0)?,
                    None => sqlx::query("SELECT id FROM telemetry_series WHERE device_id = $1 AND name = $2")
                        .bind(device_id)
                        .bind(name)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get(0)?,
                };
                known.insert(name.clone(), id);
                count += 1;
                out.push((name.clone(), id));
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    async fn boot_key(&self, device_id: &str, boot_id: &str, now: i64) -> StoreResult<i64> {
        on_pool!(self, p => {
            let inserted = sqlx::query(
                "INSERT INTO telemetry_boots (device_id, boot_id, first_seen) VALUES ($1, $2, $3)
                 ON CONFLICT (device_id, boot_id) DO NOTHING RETURNING id",
            )
            .bind(device_id)
            .bind(boot_id)
            .bind(now)
            .fetch_optional(p)
            .await?;
            match inserted {
                Some(r) => Ok(r.try_get::<i64, _>(0)?),
                None => Ok(sqlx::query("SELECT id FROM telemetry_boots WHERE device_id = $1 AND boot_id = $2")
                    .bind(device_id)
                    .bind(boot_id)
                    .fetch_one(p)
                    .await?
                    .try_get::<i64, _>(0)?),
            }
        })
    }

    async fn write_telemetry(&self, writes: &[TelemetryWrite]) -> StoreResult<Vec<WriteOutcome>> {
        let mut outcomes = vec![WriteOutcome::default(); writes.len()];
        // Which batch each (boot, seq) came from, to count what was new.
        let mut owner: HashMap<(i64, i64), usize> = HashMap::new();
        let mut points = Vec::new();
        let mut events = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            for pt in &w.points {
                owner.entry((w.boot_key, pt.seq)).or_insert(i);
                points.push((w.boot_key, pt));
            }
            for ev in &w.events {
                owner.entry((w.boot_key, ev.seq)).or_insert(i);
                events.push((w.boot_key, &w.device_id, w.received_at, ev));
            }
        }
        // (series, time, value) of every newly stored point.
        let mut fresh: Vec<(i64, i64, f64)> = Vec::with_capacity(points.len());
        match &self.pool {
            Pool::Sqlite(p) => {
                let mut tx = p.begin().await?;
                let existing = stored_already!(tx, points);
                let new = new_points(&points, &existing, &owner, &mut outcomes, &mut fresh);
                let mut inserted = 0;
                for chunk in new.chunks(BULK_ROWS) {
                    inserted += sqlx::query(SQLITE_POINTS)
                        .bind(points_json(chunk))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                check_inserted(inserted, new.len())?;
                for (table, width) in ROLLUP_TABLES {
                    let mut parts = rollup_parts(&fresh, width);
                    merge_stored_rollups!(tx, table, &mut parts);
                    let all: Vec<(&(i64, i64), &Agg)> = parts.iter().collect();
                    let sql = format!(
                        "INSERT INTO {table} (series_id, bucket, count, sum, min, max, sketch)
                         SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4,
                                j.value ->> 5, unhex(j.value ->> 6)
                         FROM json_each($1) j WHERE true {ROLLUP_SET}"
                    );
                    for chunk in all.chunks(BULK_ROWS) {
                        sqlx::query(&sql)
                            .bind(rollups_json(chunk))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                finish_write!(tx, writes, events, owner, outcomes);
            }
            Pool::Postgres(p) => {
                let mut tx = p.begin().await?;
                let existing = stored_already!(tx, points);
                let new = new_points(&points, &existing, &owner, &mut outcomes, &mut fresh);
                let mut inserted = 0;
                for chunk in new.chunks(BULK_ROWS) {
                    inserted += sqlx::query(POSTGRES_POINTS)
                        .bind(chunk.iter().map(|(_, p)| p.series_id).collect::<Vec<i64>>())
                        .bind(chunk.iter().map(|(_, p)| p.time_ms).collect::<Vec<i64>>())
                        .bind(chunk.iter().map(|(b, _)| *b).collect::<Vec<i64>>())
                        .bind(chunk.iter().map(|(_, p)| p.seq).collect::<Vec<i64>>())
                        .bind(chunk.iter().map(|(_, p)| p.value).collect::<Vec<f64>>())
                        .bind(
                            chunk
                                .iter()
                                .map(|(_, p)| p.labels.clone())
                                .collect::<Vec<Option<String>>>(),
                        )
                        .bind(
                            chunk
                                .iter()
                                .map(|(_, p)| clock_code(p.clock))
                                .collect::<Vec<i16>>(),
                        )
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                check_inserted(inserted, new.len())?;
                for (table, width) in ROLLUP_TABLES {
                    let mut parts = rollup_parts(&fresh, width);
                    merge_stored_rollups!(tx, table, &mut parts);
                    let all: Vec<(&(i64, i64), &Agg)> = parts.iter().collect();
                    let sql = format!(
                        "INSERT INTO {table} (series_id, bucket, count, sum, min, max, sketch)
                         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::float8[],
                                              $5::float8[], $6::float8[], $7::bytea[]) {ROLLUP_SET}"
                    );
                    for chunk in all.chunks(BULK_ROWS) {
                        sqlx::query(&sql)
                            .bind(chunk.iter().map(|(k, _)| k.0).collect::<Vec<i64>>())
                            .bind(chunk.iter().map(|(k, _)| k.1).collect::<Vec<i64>>())
                            .bind(
                                chunk
                                    .iter()
                                    .map(|(_, a)| a.count as i64)
                                    .collect::<Vec<i64>>(),
                            )
                            .bind(chunk.iter().map(|(_, a)| a.sum).collect::<Vec<f64>>())
                            .bind(chunk.iter().map(|(_, a)| a.min).collect::<Vec<f64>>())
                            .bind(chunk.iter().map(|(_, a)| a.max).collect::<Vec<f64>>())
                            .bind(
                                chunk
                                    .iter()
                                    .map(|(_, a)| {
                                        a.sketch.as_ref().map(Sketch::encode).unwrap_or_default()
                                    })
                                    .collect::<Vec<Vec<u8>>>(),
                            )
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                finish_write!(tx, writes, events, owner, outcomes);
            }
        }
        Ok(outcomes)
    }

    async fn series_named(&self, name: &str) -> StoreResult<Vec<(String, i64)>> {
        on_pool!(self, p => {
            let rows = sqlx::query("SELECT device_id, id FROM telemetry_series WHERE name = $1 ORDER BY device_id")
                .bind(name)
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<StoreResult<Vec<_>>>()
        })
    }

    async fn series_points(
        &self,
        series_id: i64,
        since_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredPoint>> {
        on_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT t.time_ms, t.value, b.boot_id, t.seq, t.clock, t.labels
                 FROM telemetry_points t JOIN telemetry_boots b ON b.id = t.boot_key
                 WHERE t.series_id = $1 AND t.time_ms >= $2 AND t.time_ms < $3
                 ORDER BY t.time_ms, t.boot_key, t.seq LIMIT $4",
            )
            .bind(series_id)
            .bind(since_ms)
            .bind(until_ms)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(StoredPoint {
                        time_ms: r.try_get(0)?,
                        value: r.try_get(1)?,
                        boot_id: r.try_get(2)?,
                        seq: r.try_get(3)?,
                        clock: clock_from_code(r.try_get(4)?),
                        labels: r.try_get(5)?,
                    })
                })
                .collect::<StoreResult<Vec<_>>>()
        })
    }

    async fn device_events(
        &self,
        device_id: &str,
        since_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>> {
        on_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT e.time_ms, b.boot_id, e.seq, e.name, e.severity, e.message, e.clock, e.labels, e.received_at
                 FROM telemetry_events e JOIN telemetry_boots b ON b.id = e.boot_key
                 WHERE e.device_id = $1 AND e.time_ms >= $2 AND e.time_ms < $3
                 ORDER BY e.time_ms, e.boot_key, e.seq LIMIT $4",
            )
            .bind(device_id)
            .bind(since_ms)
            .bind(until_ms)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(StoredEvent {
                        time_ms: r.try_get(0)?,
                        boot_id: r.try_get(1)?,
                        seq: r.try_get(2)?,
                        name: r.try_get(3)?,
                        severity: r.try_get(4)?,
                        message: r.try_get(5)?,
                        clock: clock_from_code(r.try_get(6)?),
                        labels: r.try_get(7)?,
                        received_at: r.try_get(8)?,
                    })
                })
                .collect::<StoreResult<Vec<_>>>()
        })
    }

    async fn aggregate(&self, read: &AggregateRead) -> StoreResult<Vec<Buckets>> {
        if read.step_ms <= 0 || read.step_ms % read.resolution.bucket_ms() != 0 {
            return Err(StoreError::Database(format!(
                "aggregate step {} ms is not a multiple of the {} resolution",
                read.step_ms,
                read.resolution.as_str()
            )));
        }
        let mut out: Vec<BTreeMap<i64, Agg>> = vec![BTreeMap::new(); read.groups.len()];
        let (table, time_col) = match read.resolution {
            Resolution::Raw => ("telemetry_points", "time_ms"),
            Resolution::Minute => ("telemetry_rollup_1m", "bucket"),
            Resolution::Hour => ("telemetry_rollup_1h", "bucket"),
        };
        if read.sketches {
            // Percentiles: fetch sketches (or raw values) and merge here.
            let series_group: HashMap<i64, usize> = read
                .groups
                .iter()
                .enumerate()
                .flat_map(|(g, ids)| ids.iter().map(move |id| (*id, g)))
                .collect();
            let ids: Vec<i64> = series_group.keys().copied().collect();
            for chunk in ids.chunks(1000) {
                let cols = match read.resolution {
                    Resolution::Raw => "series_id, time_ms, value",
                    _ => "series_id, bucket, count, sum, min, max, sketch",
                };
                let sql = format!(
                    "SELECT {cols} FROM {table} WHERE series_id IN ({}) AND {time_col} >= $1 AND {time_col} < $2",
                    int_list(chunk)
                );
                on_pool!(self, p => {
                    let rows = sqlx::query(&sql)
                        .bind(read.since_ms)
                        .bind(read.until_ms)
                        .fetch_all(p)
                        .await?;
                    for row in &rows {
                        let series: i64 = row.try_get(0)?;
                        let time: i64 = row.try_get(1)?;
                        let Some(&g) = series_group.get(&series) else { continue };
                        let slot = out[g]
                            .entry(bucket_of(time, read.step_ms))
                            .or_insert_with(|| Agg::empty(true));
                        match read.resolution {
                            Resolution::Raw => slot.add(row.try_get(2)?),
                            _ => {
                                let count = row.try_get::<i64, _>(2)?.max(0) as u64;
                                if count > 0 {
                                    slot.count += count;
                                    slot.sum += row.try_get::<f64, _>(3)?;
                                    slot.min = slot.min.min(row.try_get(4)?);
                                    slot.max = slot.max.max(row.try_get(5)?);
                                    if let Some(sk) = &mut slot.sketch {
                                        let bytes: &[u8] = row.try_get(6)?;
                                        sk.merge_encoded(bytes).map_err(|e| {
                                            StoreError::Corrupt(format!("rollup sketch: {e}"))
                                        })?;
                                    }
                                }
                            }
                        }
                    }
                    Ok::<_, StoreError>(())
                })?;
            }
        } else {
            let (count, sum, min, max) = match read.resolution {
                Resolution::Raw => ("COUNT(*)", "SUM(value)", "MIN(value)", "MAX(value)"),
                _ => (
                    "CAST(SUM(count) AS BIGINT)",
                    "SUM(sum)",
                    "MIN(min)",
                    "MAX(max)",
                ),
            };
            let bucket = format!("({time_col} / $3) * $3");
            let per_group = read.groups.len() <= GROUPS_PER_STATEMENT;
            let batches: Vec<(Option<usize>, Vec<i64>)> = if per_group {
                read.groups
                    .iter()
                    .enumerate()
                    .filter(|(_, ids)| !ids.is_empty())
                    .map(|(g, ids)| (Some(g), ids.clone()))
                    .collect()
            } else {
                let all: Vec<i64> = read.groups.iter().flatten().copied().collect();
                all.chunks(1000).map(|c| (None, c.to_vec())).collect()
            };
            let series_group: HashMap<i64, usize> = read
                .groups
                .iter()
                .enumerate()
                .flat_map(|(g, ids)| ids.iter().map(move |id| (*id, g)))
                .collect();
            for (group, ids) in batches {
                let (select_series, group_series) = if group.is_some() {
                    ("", "")
                } else {
                    ("series_id, ", "series_id, ")
                };
                let sql = format!(
                    "SELECT {select_series}{bucket} AS b, {count}, {sum}, {min}, {max} FROM {table}
                     WHERE series_id IN ({}) AND {time_col} >= $1 AND {time_col} < $2
                     GROUP BY {group_series}b",
                    int_list(&ids)
                );
                let rows =
                    on_pool!(self, p => fetch_aggregate_rows!(p, &sql, read, group.is_none()));
                for (series, b, agg) in rows {
                    let g = match group {
                        Some(g) => g,
                        None => match series_group.get(&series) {
                            Some(&g) => g,
                            None => continue,
                        },
                    };
                    out[g]
                        .entry(b)
                        .or_insert_with(|| Agg::empty(false))
                        .merge(&agg);
                }
            }
        }
        Ok(out.into_iter().map(|m| m.into_iter().collect()).collect())
    }

    async fn device_telemetry(&self, device_id: &str) -> StoreResult<DeviceTelemetry> {
        on_pool!(self, p => {
            let row = sqlx::query("SELECT dropped_total, last_batch_at FROM telemetry_devices WHERE device_id = $1")
                .bind(device_id)
                .fetch_optional(p)
                .await?;
            let series: i64 = sqlx::query("SELECT COUNT(*) FROM telemetry_series WHERE device_id = $1")
                .bind(device_id)
                .fetch_one(p)
                .await?
                .try_get(0)?;
            Ok(match row {
                Some(r) => DeviceTelemetry {
                    dropped_total: r.try_get(0)?,
                    last_batch_at: Some(r.try_get(1)?),
                    series,
                },
                None => DeviceTelemetry { series, ..Default::default() },
            })
        })
    }

    async fn prune_telemetry(
        &self,
        now: i64,
        settings: &TelemetrySettings,
    ) -> StoreResult<PruneReport> {
        let mut report = PruneReport::default();
        let (series, devices): (Vec<i64>, Vec<String>) = on_pool!(self, p => {
            let s = sqlx::query("SELECT id FROM telemetry_series ORDER BY id").fetch_all(p).await?;
            let d = sqlx::query("SELECT DISTINCT device_id FROM telemetry_boots").fetch_all(p).await?;
            Ok::<_, StoreError>((
                s.iter().map(|r| r.try_get(0)).collect::<Result<Vec<i64>, _>>()?,
                d.iter().map(|r| r.try_get(0)).collect::<Result<Vec<String>, _>>()?,
            ))
        })?;
        // Series by series (a bounded transaction each round), walking the
        // (series, time) keys, so pruning never scans a whole table nor
        // holds the write lock for long.
        let targets = [
            ("telemetry_points", "time_ms", Resolution::Raw),
            ("telemetry_rollup_1m", "bucket", Resolution::Minute),
            ("telemetry_rollup_1h", "bucket", Resolution::Hour),
        ];
        for (table, col, res) in targets {
            let cutoff = now.saturating_sub(res.retention_ms(settings));
            for chunk in series.chunks(PRUNE_SERIES) {
                let sql = format!(
                    "DELETE FROM {table} WHERE series_id IN ({}) AND {col} < $1",
                    int_list(chunk)
                );
                let n = on_pool!(self, p => sqlx::query(&sql).bind(cutoff).execute(p).await?.rows_affected());
                match res {
                    Resolution::Raw => report.points += n,
                    Resolution::Minute => report.minute_rows += n,
                    Resolution::Hour => report.hour_rows += n,
                }
            }
        }
        let cutoff = now.saturating_sub(settings.raw_retention_ms);
        for device in &devices {
            let n = on_pool!(self, p => sqlx::query("DELETE FROM telemetry_events WHERE device_id = $1 AND time_ms < $2")
                .bind(device)
                .bind(cutoff)
                .execute(p)
                .await?
                .rows_affected());
            report.events += n;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_then_columns() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(int_list(&[3, -1, 7]), "3, -1, 7");
        assert_eq!(bucket_of(125_000, 60_000), 120_000);
        assert_eq!(bucket_of(60_000, 60_000), 60_000);
    }
}
