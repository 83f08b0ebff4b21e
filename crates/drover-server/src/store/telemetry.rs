//! Records and store calls for telemetry (docs/monitoring.md): raw metric
//! points and events deduplicated by (device, boot, seq), 1-minute and
//! 1-hour rollups kept up to date as points arrive (late ones included),
//! retention, and the reads behind per-device history and fleet aggregates.
//!
//! The store does not validate records: `devices::telemetry` checks names,
//! values, times and the cardinality limit first and hands over only what
//! may be stored. The store must never count a point twice in a rollup: a
//! rollup is only updated with the rows its own insert reported as new.

pub mod sketch;

use async_trait::async_trait;
use drover_proto::telemetry::ClockQuality;

pub use sketch::Sketch;

use super::StoreResult;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Retention and limits of telemetry. The defaults are those of
/// docs/monitoring.md.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// Raw points and events are kept this long (by their own time). Points
    /// older than this on arrival are refused as `too_old`.
    pub raw_retention_ms: i64,
    /// 1-minute rollups are kept this long.
    pub minute_retention_ms: i64,
    /// 1-hour rollups are kept this long.
    pub hour_retention_ms: i64,
    /// Distinct metric names one device may have; points of further names
    /// are refused as `cardinality_limit`.
    pub max_series_per_device: usize,
    /// Points more than this far ahead of the server's clock are refused as
    /// `in_the_future`.
    pub max_future_ms: i64,
    /// How often expired data is deleted.
    pub prune_interval_ms: i64,
    /// Most batches written in one transaction by the ingestion writer.
    pub max_batches_per_transaction: usize,
    /// Batches waiting for the writer before devices are made to wait.
    pub queue_batches: usize,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            raw_retention_ms: 7 * DAY_MS,
            minute_retention_ms: 30 * DAY_MS,
            hour_retention_ms: 365 * DAY_MS,
            max_series_per_device: 500,
            max_future_ms: 10 * MINUTE_MS,
            prune_interval_ms: 10 * MINUTE_MS,
            max_batches_per_transaction: 64,
            queue_batches: 1024,
        }
    }
}

/// Where aggregates are read from, by how fine the data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    Raw,
    Minute,
    Hour,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Raw => "raw",
            Resolution::Minute => "1m",
            Resolution::Hour => "1h",
        }
    }

    /// Width of one stored bucket (raw points have none: 1 ms).
    pub fn bucket_ms(self) -> i64 {
        match self {
            Resolution::Raw => 1,
            Resolution::Minute => MINUTE_MS,
            Resolution::Hour => HOUR_MS,
        }
    }

    /// How long this resolution is kept.
    pub fn retention_ms(self, s: &TelemetrySettings) -> i64 {
        match self {
            Resolution::Raw => s.raw_retention_ms,
            Resolution::Minute => s.minute_retention_ms,
            Resolution::Hour => s.hour_retention_ms,
        }
    }
}

/// Clock quality as stored (small integer).
pub fn clock_code(c: ClockQuality) -> i16 {
    match c {
        ClockQuality::Synced => 0,
        ClockQuality::Corrected => 1,
        ClockQuality::Unsynced => 2,
    }
}

pub fn clock_from_code(c: i16) -> ClockQuality {
    match c {
        0 => ClockQuality::Synced,
        1 => ClockQuality::Corrected,
        _ => ClockQuality::Unsynced,
    }
}

/// Count, sum, min, max and (when asked for) a quantile sketch of a set of
/// points. Merging two equals computing over the union.
#[derive(Debug, Clone, PartialEq)]
pub struct Agg {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub sketch: Option<Sketch>,
}

impl Agg {
    pub fn empty(with_sketch: bool) -> Agg {
        Agg {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sketch: with_sketch.then(Sketch::new),
        }
    }

    pub fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if let Some(s) = &mut self.sketch {
            s.add(v);
        }
    }

    /// Adds `other` in. A sketch is kept only if both sides have one.
    pub fn merge(&mut self, other: &Agg) {
        if other.count == 0 {
            return;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        match (&mut self.sketch, &other.sketch) {
            (Some(a), Some(b)) => a.merge(b),
            (Some(_), None) => self.sketch = None,
            _ => {}
        }
    }

    /// The value of `aggregate` over these points (`None` when there are
    /// none, or a percentile without a sketch). Percentiles are clamped to
    /// [min, max] so the sketch's rounding never leaves the observed range.
    pub fn value(&self, aggregate: drover_metricsql::Aggregate) -> Option<f64> {
        use drover_metricsql::Aggregate as A;
        if self.count == 0 {
            return None;
        }
        Some(match aggregate {
            A::Count => self.count as f64,
            A::Sum => self.sum,
            A::Avg => self.sum / self.count as f64,
            A::Min => self.min,
            A::Max => self.max,
            A::P50 | A::P95 => {
                let q = aggregate.quantile()?;
                self.sketch.as_ref()?.quantile(q)?.clamp(self.min, self.max)
            }
        })
    }
}

/// A metric point ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct PointWrite {
    pub seq: i64,
    pub time_ms: i64,
    pub series_id: i64,
    pub value: f64,
    /// Labels as a JSON object, if any.
    pub labels: Option<String>,
    pub clock: ClockQuality,
}

/// An event ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct EventWrite {
    pub seq: i64,
    pub time_ms: i64,
    pub name: String,
    pub severity: String,
    pub message: String,
    pub labels: Option<String>,
    pub clock: ClockQuality,
}

/// The checked records of one batch of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryWrite {
    pub device_id: String,
    /// From [`TelemetryStore::boot_key`].
    pub boot_key: i64,
    pub points: Vec<PointWrite>,
    pub events: Vec<EventWrite>,
    /// Records the device dropped (added to its counter unless every record
    /// of the batch was a duplicate: then the batch was counted before).
    pub dropped: u64,
    /// Whether the batch held any record at all (checked or not).
    pub had_records: bool,
    pub received_at: i64,
}

/// What writing one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteOutcome {
    pub new_points: usize,
    pub new_events: usize,
    /// Records already stored (a resent batch).
    pub duplicates: usize,
}

/// A stored point, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    pub time_ms: i64,
    pub value: f64,
    pub boot_id: String,
    pub seq: i64,
    pub clock: ClockQuality,
    pub labels: Option<String>,
}

/// A stored event, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub time_ms: i64,
    pub boot_id: String,
    pub seq: i64,
    pub name: String,
    pub severity: String,
    pub message: String,
    pub clock: ClockQuality,
    pub labels: Option<String>,
    pub received_at: i64,
}

/// Telemetry bookkeeping of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceTelemetry {
    /// Records the device reported dropping because its buffer was full.
    pub dropped_total: i64,
    pub last_batch_at: Option<i64>,
    /// Distinct metric names.
    pub series: i64,
}

/// Rows deleted by one pruning pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PruneReport {
    pub points: u64,
    pub events: u64,
    pub minute_rows: u64,
    pub hour_rows: u64,
}

/// An aggregate read: which series, from which resolution, over which
/// range, in buckets of `step_ms` aligned to multiples of `step_ms` since
/// the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateRead {
    /// Series ids of each group; one result per group, same order.
    pub groups: Vec<Vec<i64>>,
    pub resolution: Resolution,
    /// Points (or rollup buckets starting) at or after this time.
    pub since_ms: i64,
    /// Points (or rollup buckets starting) before this time.
    pub until_ms: i64,
    /// A multiple of the resolution's bucket width.
    pub step_ms: i64,
    /// Whether percentiles are needed (reads and merges sketches).
    pub sketches: bool,
}

/// One group's buckets, in time order: (bucket start, aggregate).
pub type Buckets = Vec<(i64, Agg)>;

#[async_trait]
pub trait TelemetryStore {
    /// A device's metric names and their series ids.
    async fn device_series(&self, device_id: &str) -> StoreResult<Vec<(String, i64)>>;
    /// Creates series for `names` (existing ones are returned as they are)
    /// as long as the device stays within `limit` series. Returns the ids
    /// of the names that have a series; the others are over the limit.
    async fn create_series(
        &self,
        device_id: &str,
        names: &[String],
        limit: usize,
        now: i64,
    ) -> StoreResult<Vec<(String, i64)>>;
    /// The integer key of a device's boot, created on first sight.
    async fn boot_key(&self, device_id: &str, boot_id: &str, now: i64) -> StoreResult<i64>;
    /// Stores the batches in one transaction: new points and events are
    /// inserted, duplicates skipped, rollups of the new points updated.
    async fn write_telemetry(&self, writes: &[TelemetryWrite]) -> StoreResult<Vec<WriteOutcome>>;
    /// (device id, series id) of every device that has metric `name`.
    async fn series_named(&self, name: &str) -> StoreResult<Vec<(String, i64)>>;
    /// Raw points of one series in `[since, until)`, in time order (then
    /// boot and seq), at most `limit`.
    async fn series_points(
        &self,
        series_id: i64,
        since_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredPoint>>;
    /// Events of one device in `[since, until)`, in time order, at most `limit`.
    async fn device_events(
        &self,
        device_id: &str,
        since_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>>;
    /// Aggregates per group and bucket (empty buckets are left out).
    async fn aggregate(&self, read: &AggregateRead) -> StoreResult<Vec<Buckets>>;
    async fn device_telemetry(&self, device_id: &str) -> StoreResult<DeviceTelemetry>;
    /// Deletes what is older than its retention at `now`.
    async fn prune_telemetry(
        &self,
        now: i64,
        settings: &TelemetrySettings,
    ) -> StoreResult<PruneReport>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_metricsql::Aggregate;

    #[test]
    fn merged_aggregates_equal_one_pass_over_all_points() {
        let values = [3.0, -1.5, 8.25, 0.0, 4.0, 4.0, 100.0];
        let mut all = Agg::empty(true);
        values.iter().for_each(|v| all.add(*v));
        let (mut a, mut b) = (Agg::empty(true), Agg::empty(true));
        values[..3].iter().for_each(|v| a.add(*v));
        values[3..].iter().for_each(|v| b.add(*v));
        b.merge(&a);
        assert_eq!(b.count, all.count);
        assert_eq!(b.min, -1.5);
        assert_eq!(b.max, 100.0);
        assert!((b.sum - all.sum).abs() < 1e-9);
        assert_eq!(b.sketch, all.sketch);
        assert_eq!(b.value(Aggregate::Count), Some(7.0));
        assert!((b.value(Aggregate::Avg).unwrap() - 117.75 / 7.0).abs() < 1e-9);
        let p50 = b.value(Aggregate::P50).unwrap();
        assert!((p50 - 4.0).abs() <= 0.04, "{p50}");
        assert_eq!(Agg::empty(false).value(Aggregate::Max), None);
        let mut no_sketch = Agg::empty(false);
        no_sketch.add(1.0);
        assert_eq!(no_sketch.value(Aggregate::P95), None);
    }
}
