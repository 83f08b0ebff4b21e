//! `/api/v1/metrics/query` and `/api/v1/devices/{id}/metrics|events`:
//! fleet aggregates in the metrics query language and one device's history
//! (docs/monitoring.md). Read-only, viewer and up.
//!
//! Which data an aggregate reads follows from its time range: raw points
//! up to 1 hour, 1-minute rollups up to 2 days, 1-hour rollups beyond, and
//! always a resolution whose retention still covers the start.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drover_metricsql::{GroupBy, MetricsQuery, format_duration_ms, parse_duration_ms};
use drover_proto::api::{ErrorBody, Role};
use drover_proto::metrics::{
    DeviceEvent, DeviceEvents, DeviceMetrics, MetricBucket, MetricPoint, MetricSeries,
    MetricsQueryResult, QueryErrorBody, QueryErrorDetail,
};
use serde::Deserialize;

use super::{ApiQuery, AppState, validate};
use crate::auth::Caller;
use crate::clock::{now_ms, rfc3339};
use crate::devices::{effective, view};
use crate::error::{ApiError, ApiResult};
use crate::store::telemetry::{AggregateRead, Resolution, TelemetrySettings};

/// Most buckets one series of an aggregate may have.
pub const MAX_BUCKETS: i64 = 10_000;
/// Default and largest number of points or events in one history answer.
pub const DEFAULT_LIMIT: u32 = 10_000;
pub const MAX_LIMIT: u32 = 100_000;
/// Longest range that reads raw points, then 1-minute rollups.
const RAW_UP_TO_MS: i64 = 3_600_000;
const MINUTE_UP_TO_MS: i64 = 2 * 86_400_000;

/// A time given as a duration before now (`6h`) or as RFC 3339.
fn parse_time(what: &str, text: &str, now: i64) -> ApiResult<i64> {
    let t = text.trim();
    if t.starts_with(|c: char| c.is_ascii_digit()) && !t.contains('-') && !t.contains(':') {
        let ago =
            parse_duration_ms(t).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))?;
        return Ok(now - ago);
    }
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map(|dt| (dt.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{what} {t:?} is neither a duration before now (e.g. 6h, 30m, 2d) nor an RFC 3339 time (e.g. 2026-11-27T10:00:00Z)"
            ))
        })
}

/// `[since, until)` from the parameters; `until` defaults to now.
fn range(since: Option<&str>, until: Option<&str>, default_since_ms: i64) -> ApiResult<(i64, i64)> {
    let now = now_ms();
    let until = match until {
        Some(u) => parse_time("until", u, now)?,
        None => now,
    };
    let since = match since {
        Some(s) => parse_time("since", s, now)?,
        None => until - default_since_ms,
    };
    if since >= until {
        return Err(ApiError::bad_request(format!(
            "since ({}) must be before until ({})",
            rfc3339(since),
            rfc3339(until)
        )));
    }
    Ok((since, until))
}

fn clock_name(c: drover_proto::telemetry::ClockQuality) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn labels(json: Option<&str>) -> BTreeMap<String, String> {
    json.and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

/// The resolution, step and aligned start of an aggregate over `[since, until)`.
fn plan(
    since: i64,
    until: i64,
    step: Option<i64>,
    now: i64,
    settings: &TelemetrySettings,
) -> ApiResult<(Resolution, i64, i64)> {
    let span = until - since;
    let mut res = if span <= RAW_UP_TO_MS {
        Resolution::Raw
    } else if span <= MINUTE_UP_TO_MS {
        Resolution::Minute
    } else {
        Resolution::Hour
    };
    // Older than a resolution keeps: read the next coarser one.
    while res != Resolution::Hour && since < now - res.retention_ms(settings) {
        res = match res {
            Resolution::Raw => Resolution::Minute,
            _ => Resolution::Hour,
        };
    }
    let default_step = match res {
        Resolution::Raw => 10_000,
        other => other.bucket_ms(),
    };
    let step = step.unwrap_or(default_step);
    let unit = res.bucket_ms().max(1_000);
    if step < unit || step % unit != 0 {
        return Err(ApiError::bad_request(format!(
            "a step of {} does not fit the {} data read for a range of {}: use a multiple of {}",
            format_duration_ms(step),
            res.as_str(),
            format_duration_ms(span),
            format_duration_ms(unit)
        )));
    }
    // A step that whole rollup buckets fit in reads the coarsest such
    // rollups that still hold the start (24 h in 1 h steps: 24 rows per
    // series instead of 1,440).
    for coarser in [Resolution::Hour, Resolution::Minute] {
        if coarser.bucket_ms() > res.bucket_ms()
            && step % coarser.bucket_ms() == 0
            && (coarser == Resolution::Hour || since >= now - coarser.retention_ms(settings))
        {
            res = coarser;
            break;
        }
    }
    let start = since - since.rem_euclid(step);
    let buckets = (until - start + step - 1) / step;
    if buckets > MAX_BUCKETS {
        return Err(ApiError::bad_request(format!(
            "{buckets} buckets of {} each are too many (at most {MAX_BUCKETS}): use a larger step or a shorter range",
            format_duration_ms(step)
        )));
    }
    Ok((res, step, start))
}

/// A parse error as 400 with the column.
fn query_error(src: &str, e: &drover_metricsql::ParseError) -> Response {
    let body = QueryErrorBody {
        error: QueryErrorDetail {
            code: "invalid_query".into(),
            message: format!("invalid query: {e}\n{}", e.render(src)),
            column: e.column,
            reason: e.message.clone(),
        },
    };
    let mut resp = (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    resp.extensions_mut().insert(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        e.to_string(),
    ));
    resp
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct QueryParams {
    /// `AGG(metric) [by device | by tag.KEY | by inventory.KEY] [where DEVICE-QUERY]`,
    /// e.g. `avg(cpu) by tag.region where group = "eu-gateways"`.
    q: String,
    /// Start: a duration before now (`6h`) or an RFC 3339 time. Default 1h.
    since: Option<String>,
    /// End (exclusive): a duration before now or an RFC 3339 time. Default now.
    until: Option<String>,
    /// Bucket width, e.g. `5m`; a multiple of the data read (10s raw, 1m, 1h). Default: that width.
    step: Option<String>,
}

/// Aggregate a metric over devices, grouped by device, tag or inventory value.
#[utoipa::path(get, path = "/api/v1/metrics/query", tag = "metrics",
    security(("bearer" = ["viewer"])),
    params(QueryParams),
    responses((status = 200, body = MetricsQueryResult), (status = 400, body = QueryErrorBody)))]
pub async fn query(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<QueryParams>,
) -> Result<axum::Json<MetricsQueryResult>, Response> {
    caller
        .require(Role::Viewer)
        .map_err(IntoResponse::into_response)?;
    let parsed = MetricsQuery::parse(&p.q).map_err(|e| query_error(&p.q, &e))?;
    answer(&state, &parsed, &p)
        .await
        .map(axum::Json)
        .map_err(IntoResponse::into_response)
}

async fn answer(
    state: &AppState,
    q: &MetricsQuery,
    p: &QueryParams,
) -> ApiResult<MetricsQueryResult> {
    let settings = state.devices.telemetry.settings().clone();
    let (since, until) = range(p.since.as_deref(), p.until.as_deref(), 3_600_000)?;
    let step = p
        .step
        .as_deref()
        .map(|s| parse_duration_ms(s).map_err(|e| ApiError::bad_request(format!("step: {e}"))))
        .transpose()?;
    let (resolution, step, start) = plan(since, until, step, now_ms(), &settings)?;

    // Devices selected by `where`, and the group each falls in.
    let groups = state.devices.groups().await?;
    let devices = state.store.list_devices().await?;
    let mut group_of: BTreeMap<String, Option<String>> = BTreeMap::new();
    for d in &devices {
        let conn = state.devices.connection(&d.id);
        if let Some(filter) = &q.filter {
            let eff = effective(d, &groups, conn);
            if !filter.matches(&view(d, conn, &eff.groups)) {
                continue;
            }
        }
        let key = match &q.group_by {
            None => None,
            Some(GroupBy::Device) => Some(d.id.clone()),
            Some(GroupBy::Tag(k)) => d.tags.get(k).cloned(),
            Some(GroupBy::Inventory(k)) => d.inventory.get(k).cloned(),
        };
        group_of.insert(d.id.clone(), key);
    }
    let mut members: BTreeMap<Option<String>, Vec<i64>> = BTreeMap::new();
    for (device, series) in state.store.series_named(&q.metric).await? {
        if let Some(key) = group_of.get(&device) {
            members.entry(key.clone()).or_default().push(series);
        }
    }
    let keys: Vec<Option<String>> = members.keys().cloned().collect();
    let read = AggregateRead {
        groups: members.values().cloned().collect(),
        resolution,
        since_ms: start,
        until_ms: until,
        step_ms: step,
        sketches: q.aggregate.quantile().is_some(),
    };
    let results = state.store.aggregate(&read).await?;
    let series = keys
        .into_iter()
        .zip(read.groups.iter())
        .zip(results)
        .map(|((group, ids), buckets)| MetricSeries {
            group,
            devices: ids.len() as u32,
            buckets: buckets
                .into_iter()
                .filter_map(|(b, agg)| {
                    Some(MetricBucket {
                        start: rfc3339(b),
                        start_ms: b,
                        value: agg.value(q.aggregate)?,
                        count: agg.count,
                    })
                })
                .collect(),
        })
        .collect();
    Ok(MetricsQueryResult {
        query: q.to_string(),
        aggregate: q.aggregate.as_str().into(),
        metric: q.metric.clone(),
        group_by: q.group_by.as_ref().map(ToString::to_string),
        since: rfc3339(start),
        since_ms: start,
        until: rfc3339(until),
        until_ms: until,
        step_ms: step,
        source: resolution.as_str().into(),
        matched_devices: group_of.len() as u32,
        series,
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// The metric; without it, the answer lists the device's metric names.
    name: Option<String>,
    /// Start: a duration before now (`1h`) or an RFC 3339 time. Default 1h.
    since: Option<String>,
    /// End (exclusive). Default now.
    until: Option<String>,
    /// Most points (default 10,000, at most 100,000).
    limit: Option<u32>,
}

/// One device's points of one metric, in time order (or its metric names).
#[utoipa::path(get, path = "/api/v1/devices/{id}/metrics", tag = "metrics",
    security(("bearer" = ["viewer"])),
    params(("id" = String, Path, description = "Device id"), HistoryParams),
    responses((status = 200, body = DeviceMetrics), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn device_metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<HistoryParams>,
) -> ApiResult<axum::Json<DeviceMetrics>> {
    caller.require(Role::Viewer)?;
    known_device(&state, &id).await?;
    let (since, until) = range(p.since.as_deref(), p.until.as_deref(), 3_600_000)?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let status = state.store.device_telemetry(&id).await?;
    let series = state.store.device_series(&id).await?;
    let mut out = DeviceMetrics {
        device_id: id.clone(),
        name: p.name.clone(),
        since: rfc3339(since),
        until: rfc3339(until),
        names: Vec::new(),
        points: Vec::new(),
        truncated: false,
        dropped_total: status.dropped_total,
        last_batch_at: status.last_batch_at.map(rfc3339),
    };
    let Some(name) = &p.name else {
        out.names = series.into_iter().map(|(n, _)| n).collect();
        out.names.sort();
        return Ok(axum::Json(out));
    };
    if !drover_metricsql::valid_metric_name(name) {
        return Err(ApiError::bad_request(format!(
            "{name:?} is not a metric name: use 1-128 letters, digits or _ . - / :, starting with a letter or _"
        )));
    }
    if let Some((_, series_id)) = series.iter().find(|(n, _)| n == name) {
        let mut points = state
            .store
            .series_points(*series_id, since, until, limit + 1)
            .await?;
        out.truncated = points.len() > limit as usize;
        points.truncate(limit as usize);
        out.points = points
            .into_iter()
            .map(|pt| MetricPoint {
                time: rfc3339(pt.time_ms),
                time_ms: pt.time_ms,
                value: pt.value,
                clock: clock_name(pt.clock),
                boot_id: pt.boot_id,
                seq: pt.seq,
                labels: labels(pt.labels.as_deref()),
            })
            .collect();
    }
    Ok(axum::Json(out))
}

async fn known_device(state: &AppState, id: &str) -> ApiResult<()> {
    validate::device_id(id)?;
    match state.store.get_device(id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!(
            "no device {id}; `drover devices list` shows them"
        ))),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Start: a duration before now (`1d`) or an RFC 3339 time. Default 1d.
    since: Option<String>,
    /// End (exclusive). Default now.
    until: Option<String>,
    /// Most events (default 10,000, at most 100,000).
    limit: Option<u32>,
}

/// One device's events, in time order.
#[utoipa::path(get, path = "/api/v1/devices/{id}/events", tag = "metrics",
    security(("bearer" = ["viewer"])),
    params(("id" = String, Path, description = "Device id"), EventParams),
    responses((status = 200, body = DeviceEvents), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn device_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<EventParams>,
) -> ApiResult<axum::Json<DeviceEvents>> {
    caller.require(Role::Viewer)?;
    known_device(&state, &id).await?;
    let (since, until) = range(p.since.as_deref(), p.until.as_deref(), 86_400_000)?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut events = state
        .store
        .device_events(&id, since, until, limit + 1)
        .await?;
    let truncated = events.len() > limit as usize;
    events.truncate(limit as usize);
    Ok(axum::Json(DeviceEvents {
        device_id: id,
        since: rfc3339(since),
        until: rfc3339(until),
        truncated,
        events: events
            .into_iter()
            .map(|e| DeviceEvent {
                time: rfc3339(e.time_ms),
                time_ms: e.time_ms,
                name: e.name,
                severity: e.severity,
                message: e.message,
                clock: clock_name(e.clock),
                boot_id: e.boot_id,
                seq: e.seq,
                labels: labels(e.labels.as_deref()),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn the_range_picks_the_data_and_the_step() {
        let s = TelemetrySettings::default();
        let h = 3_600_000;
        assert_eq!(
            plan(NOW - h, NOW, None, NOW, &s).unwrap().0,
            Resolution::Raw
        );
        assert_eq!(plan(NOW - h, NOW, None, NOW, &s).unwrap().1, 10_000);
        assert_eq!(
            plan(NOW - 6 * h, NOW, None, NOW, &s).unwrap().0,
            Resolution::Minute
        );
        assert_eq!(
            plan(NOW - 48 * h, NOW, None, NOW, &s).unwrap().0,
            Resolution::Minute
        );
        assert_eq!(
            plan(NOW - 49 * h, NOW, None, NOW, &s).unwrap().0,
            Resolution::Hour
        );
        // A short range older than raw retention reads the 1-minute rollups.
        let old = NOW - s.raw_retention_ms - h;
        assert_eq!(
            plan(old, old + 600_000, None, NOW, &s).unwrap().0,
            Resolution::Minute
        );
        let (res, step, start) = plan(NOW - 6 * h + 1, NOW, Some(300_000), NOW, &s).unwrap();
        assert_eq!((res, step), (Resolution::Minute, 300_000));
        assert_eq!(start % 300_000, 0);
        assert!(start <= NOW - 6 * h + 1);
        let e = plan(NOW - 6 * h, NOW, Some(10_000), NOW, &s).unwrap_err();
        assert!(e.message.contains("use a multiple of 1m"), "{}", e.message);
        let e = plan(NOW - 40 * h, NOW, Some(60_000), NOW, &s).unwrap();
        assert_eq!((e.0, e.1), (Resolution::Minute, 60_000));
        // Steps that whole rollup buckets fit in read those rollups.
        assert_eq!(
            plan(NOW - 24 * h, NOW, Some(h), NOW, &s).unwrap().0,
            Resolution::Hour
        );
        assert_eq!(
            plan(NOW - h, NOW, Some(300_000), NOW, &s).unwrap().0,
            Resolution::Minute
        );
        assert_eq!(
            plan(NOW - h, NOW, Some(30_000), NOW, &s).unwrap().0,
            Resolution::Raw
        );
        let e = plan(NOW - 500 * 24 * h, NOW, Some(h), NOW, &s).unwrap_err();
        assert!(e.message.contains("too many"), "{}", e.message);
    }

    #[test]
    fn times_are_durations_before_now_or_rfc3339() {
        assert_eq!(parse_time("since", "6h", NOW).unwrap(), NOW - 6 * 3_600_000);
        assert_eq!(
            parse_time("since", "2023-11-14T22:13:20.123Z", NOW).unwrap(),
            1_700_000_000_123
        );
        let e = parse_time("since", "yesterday", NOW).unwrap_err();
        assert!(e.message.contains("neither a duration"), "{}", e.message);
        let e = parse_time("until", "5x", NOW).unwrap_err();
        assert!(
            e.message.starts_with("until: unknown unit"),
            "{}",
            e.message
        );
    }
}
