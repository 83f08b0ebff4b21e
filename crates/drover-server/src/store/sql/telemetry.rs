//! [`TelemetryStore`] on both backends (same SQL text, `$N` placeholders).
//!
//! Ingestion is built for throughput: the points of all batches in one call
//! go into multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING` statements
//! inside one transaction, and only the rows the database reports as new
//! reach the rollups. Rollups are read-modify-write: the touched buckets are
//! read, merged with the new points in Rust (sketches cannot be merged in
//! portable SQL) and written back with an upsert. This relies on one writer
//! per device at a time, which the control channel gives (one live channel
//! per device, its batches handled in order, one ingestion writer per
//! server).
//!
//! Integers that go into SQL text (series ids, bucket starts) are formatted
//! from `i64`, never from device input, so there is nothing to inject.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use async_trait::async_trait;
use sqlx::Row;

use super::{Pool, SqlStore};
use crate::store::telemetry::{
    Agg, AggregateRead, Buckets, DeviceTelemetry, PruneReport, Resolution, Sketch, StoredEvent,
    StoredPoint, TelemetrySettings, TelemetryStore, TelemetryWrite, WriteOutcome, clock_code,
    clock_from_code,
};
use crate::store::{StoreError, StoreResult};

/// Rows per multi-row `INSERT` of points (7 parameters each).
const POINT_ROWS: usize = 400;
/// Rows per multi-row `INSERT` of events (10 parameters each).
const EVENT_ROWS: usize = 200;
/// Rollup buckets read or written per statement.
const ROLLUP_ROWS: usize = 300;
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

/// Merges the new points into the rollup table `$table` of bucket width
/// `$width`, inside transaction `$tx`.
macro_rules! update_rollups {
    ($tx:expr, $table:expr, $width:expr, $points:expr) => {{
        let table: &str = $table;
        let width: i64 = $width;
        let mut parts: BTreeMap<(i64, i64), Agg> = BTreeMap::new();
        for &(series, time, value) in $points.iter() {
            parts
                .entry((series, bucket_of(time, width)))
                .or_insert_with(|| Agg::empty(true))
                .add(value);
        }
        let keys: Vec<(i64, i64)> = parts.keys().copied().collect();
        for chunk in keys.chunks(ROLLUP_ROWS) {
            let mut values = String::with_capacity(chunk.len() * 24);
            for (i, (s, b)) in chunk.iter().enumerate() {
                if i > 0 {
                    values.push_str(", ");
                }
                let _ = write!(values, "({s}, {b})");
            }
            let sql = format!(
                "SELECT series_id, bucket, count, sum, min, max, sketch FROM {table}
                 WHERE (series_id, bucket) IN (VALUES {values})"
            );
            let rows = sqlx::query(&sql).fetch_all(&mut *$tx).await?;
            for row in &rows {
                let key = (row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?);
                let stored = Agg {
                    count: row.try_get::<i64, _>(2)?.max(0) as u64,
                    sum: row.try_get(3)?,
                    min: row.try_get(4)?,
                    max: row.try_get(5)?,
                    sketch: Some(decode_sketch(&row.try_get::<Vec<u8>, _>(6)?)?),
                };
                if let Some(part) = parts.get_mut(&key) {
                    part.merge(&stored);
                }
            }
            let sql = format!(
                "INSERT INTO {table} (series_id, bucket, count, sum, min, max, sketch) VALUES {}
                 ON CONFLICT (series_id, bucket) DO UPDATE SET count = excluded.count, sum = excluded.sum,
                 min = excluded.min, max = excluded.max, sketch = excluded.sketch",
                placeholders(chunk.len(), 7)
            );
            let mut q = sqlx::query(&sql);
            for key in chunk {
                let a = &parts[key];
                q = q
                    .bind(key.0)
                    .bind(key.1)
                    .bind(a.count as i64)
                    .bind(a.sum)
                    .bind(a.min)
                    .bind(a.max)
                    .bind(a.sketch.as_ref().map(Sketch::encode).unwrap_or_default());
            }
            q.execute(&mut *$tx).await?;
        }
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
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            // (series, time, value) of every newly stored point.
            let mut fresh: Vec<(i64, i64, f64)> = Vec::with_capacity(points.len());
            for chunk in points.chunks(POINT_ROWS) {
                let sql = format!(
                    "INSERT INTO telemetry_points (series_id, time_ms, boot_key, seq, value, labels, clock) VALUES {}
                     ON CONFLICT DO NOTHING RETURNING boot_key, seq, series_id, time_ms, value",
                    placeholders(chunk.len(), 7)
                );
                let mut q = sqlx::query(&sql);
                for (boot_key, pt) in chunk {
                    q = q
                        .bind(pt.series_id)
                        .bind(pt.time_ms)
                        .bind(*boot_key)
                        .bind(pt.seq)
                        .bind(pt.value)
                        .bind(pt.labels.as_deref())
                        .bind(clock_code(pt.clock));
                }
                for row in q.fetch_all(&mut *tx).await? {
                    let key = (row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?);
                    if let Some(&i) = owner.get(&key) {
                        outcomes[i].new_points += 1;
                    }
                    fresh.push((row.try_get(2)?, row.try_get(3)?, row.try_get(4)?));
                }
            }
            for chunk in events.chunks(EVENT_ROWS) {
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
                for row in q.fetch_all(&mut *tx).await? {
                    let key = (row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?);
                    if let Some(&i) = owner.get(&key) {
                        outcomes[i].new_events += 1;
                    }
                }
            }
            for (table, width) in ROLLUP_TABLES {
                update_rollups!(tx, table, width, fresh);
            }
            for (w, o) in writes.iter().zip(outcomes.iter_mut()) {
                let total = w.points.len() + w.events.len();
                o.duplicates = total - (o.new_points + o.new_events).min(total);
                // A batch whose records were all seen before was counted
                // when it first came; its drop count is not added again.
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
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(())
        })?;
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
                            _ => slot.merge(&Agg {
                                count: row.try_get::<i64, _>(2)?.max(0) as u64,
                                sum: row.try_get(3)?,
                                min: row.try_get(4)?,
                                max: row.try_get(5)?,
                                sketch: Some(decode_sketch(&row.try_get::<Vec<u8>, _>(6)?)?),
                            }),
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
