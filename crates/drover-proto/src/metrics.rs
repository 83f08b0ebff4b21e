//! Documents of the metrics API (docs/monitoring.md): one device's history
//! (`GET /api/v1/devices/{id}/metrics`, `…/events`) and fleet aggregates
//! (`GET /api/v1/metrics/query`). Times are RFC 3339 with the Unix
//! milliseconds beside them, so scripts need not parse dates.

use serde::{Deserialize, Serialize};

/// One stored metric point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricPoint {
    /// When the device recorded it (its original time).
    pub time: String,
    pub time_ms: i64,
    pub value: f64,
    /// `synced`, `corrected` or `unsynced`: how far the device trusted its clock.
    pub clock: String,
    pub boot_id: String,
    pub seq: i64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Body of `GET /api/v1/devices/{id}/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceMetrics {
    pub device_id: String,
    /// The metric asked for; `None` when only the names were listed.
    pub name: Option<String>,
    pub since: String,
    pub until: String,
    /// The device's metric names (when no name was given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Points in time order.
    #[serde(default)]
    pub points: Vec<MetricPoint>,
    /// More points matched than `limit`; ask again from the last time.
    #[serde(default)]
    pub truncated: bool,
    /// Records the device reported dropping because its buffer was full.
    pub dropped_total: i64,
    /// When the server last stored a batch from this device.
    pub last_batch_at: Option<String>,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceEvent {
    pub time: String,
    pub time_ms: i64,
    pub name: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    pub message: String,
    pub clock: String,
    pub boot_id: String,
    pub seq: i64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Body of `GET /api/v1/devices/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceEvents {
    pub device_id: String,
    pub since: String,
    pub until: String,
    /// Events in time order.
    pub events: Vec<DeviceEvent>,
    pub truncated: bool,
}

/// One time bucket of an aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricBucket {
    /// Start of the bucket (it covers `step_ms` from here).
    pub start: String,
    pub start_ms: i64,
    /// The aggregate over every point of the series' devices in the bucket.
    pub value: f64,
    /// How many points went into it.
    pub count: u64,
}

/// The buckets of one group-by value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricSeries {
    /// The group-by value (tag value, inventory value or device id); `None`
    /// for devices without that tag, and for a query without `by`.
    pub group: Option<String>,
    /// Devices in this group that have the metric.
    pub devices: u32,
    /// Buckets in time order; buckets without points are left out.
    pub buckets: Vec<MetricBucket>,
}

/// Body of `GET /api/v1/metrics/query`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsQueryResult {
    /// The query in canonical form.
    pub query: String,
    pub aggregate: String,
    pub metric: String,
    /// `device`, `tag.KEY` or `inventory.KEY`.
    pub group_by: Option<String>,
    /// Start of the first bucket (the requested start, aligned down to the step).
    pub since: String,
    pub since_ms: i64,
    pub until: String,
    pub until_ms: i64,
    pub step_ms: i64,
    /// What was read: `raw` points, `1m` or `1h` rollups.
    pub source: String,
    /// Devices that matched the `where` part (with or without the metric).
    pub matched_devices: u32,
    pub series: Vec<MetricSeries>,
}

/// The error body of a query that does not parse: the usual
/// `{"error": {"code", "message"}}` plus the column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueryErrorBody {
    pub error: QueryErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueryErrorDetail {
    /// `invalid_query`.
    pub code: String,
    /// `column N: reason`, then the query line with a caret under the column.
    pub message: String,
    /// 1-based, counting characters.
    pub column: usize,
    /// The reason alone.
    pub reason: String,
}
