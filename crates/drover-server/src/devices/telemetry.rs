//! The telemetry side of [`Devices`]: checks the batches devices send on
//! the control channel, stores them through one ingestion writer, and
//! answers each with a [`TelemetryAck`] (docs/monitoring.md).
//!
//! Checking happens on the connection's task and needs no database: names,
//! values, labels and the accepted time window. Everything that passes goes
//! to a bounded queue drained by one writer task, which resolves boots and
//! series (enforcing the per-device cardinality limit) from its caches and
//! writes everything it has drained in one transaction. When thousands of
//! devices flush their backlog at once they therefore share transactions
//! instead of each opening one, and a full queue makes connections wait
//! (backpressure up to the devices) instead of growing without bound.
//!
//! A batch is acknowledged only after its transaction committed; a failed
//! write closes the channel like any other store failure, and the device
//! resends later. Rejected records are acknowledged with their reason: they
//! would never be accepted, so resending them would only block the buffer.
//! The writer also deletes expired data every `prune_interval_ms`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use drover_proto::telemetry::{
    MAX_BATCH_RECORDS, MAX_EVENT_MESSAGE_BYTES, MAX_LABELS, Record, RecordBody, Rejected,
    TelemetryAck, TelemetryBatch,
};
use tokio::sync::{mpsc, oneshot};

use super::Devices;
use crate::store::telemetry::{
    EventWrite, PointWrite, PruneReport, TelemetrySettings, TelemetryWrite, WriteOutcome,
};
use crate::store::{Store, StoreError, StoreResult};

/// Rejection reasons, as sent in [`Rejected::reason`].
pub mod reason {
    pub const BAD_NAME: &str = "bad_name";
    pub const NOT_A_NUMBER: &str = "not_a_number";
    pub const IN_THE_FUTURE: &str = "in_the_future";
    pub const TOO_OLD: &str = "too_old";
    pub const CARDINALITY_LIMIT: &str = "cardinality_limit";
    pub const BAD_LABEL: &str = "bad_label";
    pub const BAD_SEVERITY: &str = "bad_severity";
    pub const MESSAGE_TOO_LONG: &str = "message_too_long";
    pub const BAD_SEQ: &str = "bad_seq";
}

/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// Longest boot id, in bytes.
pub const MAX_BOOT_ID_BYTES: usize = 64;
/// Device entries the writer's series cache holds before it starts over.
const SERIES_CACHE_DEVICES: usize = 20_000;

/// Why a whole batch was refused (the channel closes with `bad_telemetry`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("a telemetry batch holds at most {MAX_BATCH_RECORDS} records, this one {0}")]
    TooLarge(usize),
    #[error(
        "the boot id must be 1-{MAX_BOOT_ID_BYTES} printable ASCII characters (/proc/sys/kernel/random/boot_id)"
    )]
    BadBootId,
}

/// Why ingesting a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A metric point that passed the checks; its series is not known yet.
#[derive(Debug, Clone, PartialEq)]
struct CheckedPoint {
    seq: i64,
    time_ms: i64,
    name: String,
    value: f64,
    labels: Option<String>,
    clock: drover_proto::telemetry::ClockQuality,
}

/// The result of checking a batch without the database.
#[derive(Debug, Clone, PartialEq)]
struct Checked {
    points: Vec<CheckedPoint>,
    events: Vec<EventWrite>,
    rejected: Vec<Rejected>,
    /// Records repeated within the batch (kept once).
    repeated: usize,
}

fn label_ok(k: &str, v: &str) -> bool {
    drover_metricsql::valid_metric_name(k)
        && v.len() <= MAX_LABEL_VALUE_BYTES
        && !v.chars().any(char::is_control)
}

/// Checks every record of `batch` against `settings` at server time `now`.
fn check(
    batch: &TelemetryBatch,
    now: i64,
    settings: &TelemetrySettings,
) -> Result<Checked, BatchError> {
    if batch.records.len() > MAX_BATCH_RECORDS {
        return Err(BatchError::TooLarge(batch.records.len()));
    }
    let b = batch.boot_id.as_bytes();
    if b.is_empty() || b.len() > MAX_BOOT_ID_BYTES || !b.iter().all(|c| c.is_ascii_graphic()) {
        return Err(BatchError::BadBootId);
    }
    let mut out = Checked {
        points: Vec::with_capacity(batch.records.len()),
        events: Vec::new(),
        rejected: Vec::new(),
        repeated: 0,
    };
    let mut seen = HashSet::with_capacity(batch.records.len());
    for r in &batch.records {
        if !seen.insert(r.seq) {
            out.repeated += 1;
            continue;
        }
        match check_record(r, now, settings) {
            Ok(Some(p)) => out.points.push(p),
            Ok(None) => {
                if let RecordBody::Event {
                    name,
                    severity,
                    message,
                } = &r.body
                {
                    out.events.push(EventWrite {
                        seq: r.seq as i64,
                        time_ms: r.time_ms,
                        name: name.clone(),
                        severity: severity.clone(),
                        message: message.clone(),
                        labels: labels_json(r),
                        clock: r.clock,
                    });
                }
            }
            Err(reason) => out.rejected.push(Rejected {
                seq: r.seq,
                reason: reason.to_string(),
            }),
        }
    }
    Ok(out)
}

fn labels_json(r: &Record) -> Option<String> {
    (!r.labels.is_empty()).then(|| serde_json::to_string(&r.labels).expect("labels serialize"))
}

/// `Ok(Some(point))`, `Ok(None)` for a good event, or the rejection reason.
fn check_record(
    r: &Record,
    now: i64,
    s: &TelemetrySettings,
) -> Result<Option<CheckedPoint>, &'static str> {
    if i64::try_from(r.seq).is_err() {
        return Err(reason::BAD_SEQ);
    }
    let name = match &r.body {
        RecordBody::Metric { name, .. } | RecordBody::Event { name, .. } => name,
    };
    if !drover_metricsql::valid_metric_name(name) {
        return Err(reason::BAD_NAME);
    }
    if let RecordBody::Metric { value, .. } = &r.body
        && !value.is_finite()
    {
        return Err(reason::NOT_A_NUMBER);
    }
    if r.time_ms > now.saturating_add(s.max_future_ms) {
        return Err(reason::IN_THE_FUTURE);
    }
    if r.time_ms < now.saturating_sub(s.raw_retention_ms) {
        return Err(reason::TOO_OLD);
    }
    if r.labels.len() > MAX_LABELS || !r.labels.iter().all(|(k, v)| label_ok(k, v)) {
        return Err(reason::BAD_LABEL);
    }
    match &r.body {
        RecordBody::Metric { name, value } => Ok(Some(CheckedPoint {
            seq: r.seq as i64,
            time_ms: r.time_ms,
            name: name.clone(),
            value: *value,
            labels: labels_json(r),
            clock: r.clock,
        })),
        RecordBody::Event {
            severity, message, ..
        } => {
            if !matches!(severity.as_str(), "info" | "warning" | "critical") {
                Err(reason::BAD_SEVERITY)
            } else if message.len() > MAX_EVENT_MESSAGE_BYTES {
                Err(reason::MESSAGE_TOO_LONG)
            } else {
                Ok(None)
            }
        }
    }
}

/// One checked batch waiting for the writer.
struct Job {
    device_id: String,
    boot_id: String,
    checked: Checked,
    dropped: u64,
    had_records: bool,
    received_at: i64,
    reply: oneshot::Sender<StoreResult<JobDone>>,
}

struct JobDone {
    outcome: WriteOutcome,
    /// Seqs refused for the cardinality limit.
    over_limit: Vec<u64>,
}

/// The ingestion queue and its settings; lives in [`Devices`].
pub struct Ingest {
    settings: TelemetrySettings,
    queue: OnceLock<mpsc::Sender<Job>>,
}

impl Ingest {
    pub fn new(settings: TelemetrySettings) -> Ingest {
        Ingest {
            settings,
            queue: OnceLock::new(),
        }
    }

    pub fn settings(&self) -> &TelemetrySettings {
        &self.settings
    }

    /// The queue, starting the writer task on first use (inside the runtime
    /// that serves devices; the task ends when the queue is dropped).
    fn queue(&self, store: &Arc<dyn Store>) -> &mpsc::Sender<Job> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.settings.queue_batches.max(1));
            tokio::spawn(writer(store.clone(), self.settings.clone(), rx));
            tx
        })
    }
}

impl Devices {
    /// Checks, stores and acknowledges one batch from `device_id`.
    pub async fn ingest_telemetry(
        &self,
        device_id: &str,
        batch: &TelemetryBatch,
    ) -> Result<TelemetryAck, IngestError> {
        let now = crate::clock::now_ms();
        let settings = self.telemetry.settings();
        let checked = check(batch, now, settings).inspect_err(|_| {
            metrics::counter!("drover_telemetry_batches_refused_total").increment(1);
        })?;
        let up_to_seq = batch.records.iter().map(|r| r.seq).max().unwrap_or(0);
        let mut rejected = checked.rejected.clone();
        let repeated = checked.repeated;
        let (reply, done) = oneshot::channel();
        let job = Job {
            device_id: device_id.to_string(),
            boot_id: batch.boot_id.clone(),
            checked,
            dropped: batch.dropped,
            had_records: !batch.records.is_empty(),
            received_at: now,
            reply,
        };
        let gone = || StoreError::Unavailable("the telemetry writer has stopped".into());
        self.telemetry
            .queue(&self.store)
            .send(job)
            .await
            .map_err(|_| gone())?;
        let done = done.await.map_err(|_| gone())??;
        rejected.extend(done.over_limit.iter().map(|&seq| Rejected {
            seq,
            reason: reason::CARDINALITY_LIMIT.to_string(),
        }));
        rejected.sort_by_key(|r| r.seq);
        for r in &rejected {
            metrics::counter!("drover_telemetry_rejected_total", "reason" => r.reason.clone())
                .increment(1);
        }
        let o = done.outcome;
        metrics::counter!("drover_telemetry_records_total", "outcome" => "stored")
            .increment((o.new_points + o.new_events) as u64);
        metrics::counter!("drover_telemetry_records_total", "outcome" => "duplicate")
            .increment((o.duplicates + repeated) as u64);
        if batch.dropped > 0 {
            metrics::counter!("drover_telemetry_device_dropped_total").increment(batch.dropped);
            tracing::warn!(
                dropped = batch.dropped,
                "device reports telemetry dropped from its full buffer"
            );
        }
        if !rejected.is_empty() {
            tracing::info!(
                rejected = rejected.len(),
                first_reason = %rejected[0].reason,
                "telemetry records refused"
            );
        }
        Ok(TelemetryAck {
            boot_id: batch.boot_id.clone(),
            up_to_seq,
            rejected,
        })
    }

    /// Deletes expired telemetry now (the writer also does every
    /// `prune_interval_ms`).
    pub async fn prune_telemetry(&self, now: i64) -> StoreResult<PruneReport> {
        self.store
            .prune_telemetry(now, self.telemetry.settings())
            .await
    }
}

/// What the writer remembers between transactions.
#[derive(Default)]
struct Caches {
    boots: HashMap<(String, String), i64>,
    /// Device → metric name → series id.
    series: HashMap<String, HashMap<String, i64>>,
}

/// Drains the queue: everything waiting (up to the per-transaction limit)
/// is written in one transaction.
async fn writer(store: Arc<dyn Store>, settings: TelemetrySettings, mut rx: mpsc::Receiver<Job>) {
    let mut caches = Caches::default();
    let every = Duration::from_millis(settings.prune_interval_ms.max(1_000) as u64);
    let mut prune = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            job = rx.recv() => {
                let Some(job) = job else { return };
                let mut jobs = vec![job];
                while jobs.len() < settings.max_batches_per_transaction.max(1) {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                metrics::histogram!("drover_telemetry_batches_per_transaction").record(jobs.len() as f64);
                write_jobs(store.as_ref(), &settings, &mut caches, jobs).await;
            }
            _ = prune.tick() => {
                match store.prune_telemetry(crate::clock::now_ms(), &settings).await {
                    Ok(r) => tracing::info!(points = r.points, events = r.events, minute_rows = r.minute_rows, hour_rows = r.hour_rows, "pruned expired telemetry"),
                    Err(e) => tracing::warn!(error = %e, "could not prune expired telemetry"),
                }
            }
        }
    }
}

/// `write_telemetry`, tried again a few times when the database is busy.
/// SQLite refuses a deferred transaction that read before another
/// connection committed a write (SQLITE_BUSY without waiting for the busy
/// timeout); the write is idempotent (deduplicated by (device, boot, seq)),
/// so trying again is safe.
async fn write_retrying(
    store: &dyn Store,
    writes: &[TelemetryWrite],
) -> StoreResult<Vec<crate::store::telemetry::WriteOutcome>> {
    let mut attempt = 0u64;
    loop {
        match store.write_telemetry(writes).await {
            Err(StoreError::Unavailable(e)) if attempt < 5 => {
                attempt += 1;
                metrics::counter!("drover_telemetry_write_retries_total").increment(1);
                tracing::debug!(error = %e, attempt, "telemetry write busy; trying again");
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            other => return other,
        }
    }
}

/// Resolves, writes and answers `jobs`; when a shared transaction fails,
/// each job is retried alone so one bad batch cannot fail the others.
async fn write_jobs(store: &dyn Store, s: &TelemetrySettings, caches: &mut Caches, jobs: Vec<Job>) {
    let mut ready: Vec<(Job, Vec<u64>)> = Vec::with_capacity(jobs.len());
    let mut writes: Vec<TelemetryWrite> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut resolved = resolve(store, s, caches, &job).await;
        for attempt in 1..=5u64 {
            // Busy, as for writes (see `write_retrying`).
            if !matches!(resolved, Err(StoreError::Unavailable(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            resolved = resolve(store, s, caches, &job).await;
        }
        match resolved {
            Ok((write, over)) => {
                ready.push((job, over));
                writes.push(write);
            }
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
    if ready.is_empty() {
        return;
    }
    match write_retrying(store, &writes).await {
        Ok(outcomes) => {
            for ((job, over), outcome) in ready.into_iter().zip(outcomes) {
                let _ = job.reply.send(Ok(JobDone {
                    outcome,
                    over_limit: over,
                }));
            }
        }
        Err(e) if ready.len() == 1 => {
            let (job, _) = ready.pop().expect("one job");
            let _ = job.reply.send(Err(e));
        }
        Err(e) => {
            tracing::warn!(error = %e, batches = ready.len(), "shared telemetry transaction failed; writing batches one by one");
            for ((job, over), write) in ready.into_iter().zip(writes) {
                let r = write_retrying(store, std::slice::from_ref(&write))
                    .await
                    .map(|mut o| JobDone {
                        outcome: o.pop().unwrap_or_default(),
                        over_limit: over,
                    });
                let _ = job.reply.send(r);
            }
        }
    }
}

/// The boot key and series ids of a job's points; points of names over
/// the device's cardinality limit are left out and reported.
async fn resolve(
    store: &dyn Store,
    s: &TelemetrySettings,
    caches: &mut Caches,
    job: &Job,
) -> StoreResult<(TelemetryWrite, Vec<u64>)> {
    let boot_key = match caches
        .boots
        .get(&(job.device_id.clone(), job.boot_id.clone()))
    {
        Some(k) => *k,
        None => {
            let k = store
                .boot_key(&job.device_id, &job.boot_id, job.received_at)
                .await?;
            if caches.boots.len() >= SERIES_CACHE_DEVICES * 4 {
                caches.boots.clear();
            }
            caches
                .boots
                .insert((job.device_id.clone(), job.boot_id.clone()), k);
            k
        }
    };
    if !caches.series.contains_key(&job.device_id) {
        if caches.series.len() >= SERIES_CACHE_DEVICES {
            caches.series.clear();
        }
        let known = store.device_series(&job.device_id).await?;
        caches
            .series
            .insert(job.device_id.clone(), known.into_iter().collect());
    }
    let known = caches
        .series
        .get_mut(&job.device_id)
        .expect("just inserted");
    let mut missing: Vec<String> = Vec::new();
    for p in &job.checked.points {
        if !known.contains_key(&p.name) && !missing.contains(&p.name) {
            missing.push(p.name.clone());
        }
    }
    if !missing.is_empty() && known.len() < s.max_series_per_device {
        for (name, id) in store
            .create_series(
                &job.device_id,
                &missing,
                s.max_series_per_device,
                job.received_at,
            )
            .await?
        {
            known.insert(name, id);
        }
    }
    let mut over = Vec::new();
    let mut points = Vec::with_capacity(job.checked.points.len());
    for p in &job.checked.points {
        match known.get(&p.name) {
            Some(&series_id) => points.push(PointWrite {
                seq: p.seq,
                time_ms: p.time_ms,
                series_id,
                value: p.value,
                labels: p.labels.clone(),
                clock: p.clock,
            }),
            None => over.push(p.seq as u64),
        }
    }
    Ok((
        TelemetryWrite {
            device_id: job.device_id.clone(),
            boot_key,
            points,
            events: job.checked.events.clone(),
            dropped: job.dropped,
            had_records: job.had_records,
            received_at: job.received_at,
        },
        over,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::telemetry::{ClockQuality, Priority};

    const NOW: i64 = 1_800_000_000_000;

    fn metric(seq: u64, time_ms: i64, name: &str, value: f64) -> Record {
        Record {
            seq,
            time_ms,
            mono_ms: 1_000,
            clock: ClockQuality::Synced,
            priority: Priority::Low,
            labels: Default::default(),
            body: RecordBody::Metric {
                name: name.into(),
                value,
            },
        }
    }

    fn batch(records: Vec<Record>) -> TelemetryBatch {
        TelemetryBatch {
            boot_id: "5d1e0a4c-0b9f-4a39-9b8e-2f64c0e1d2a3".into(),
            records,
            dropped: 0,
        }
    }

    fn reasons(c: &Checked) -> Vec<(u64, &str)> {
        c.rejected
            .iter()
            .map(|r| (r.seq, r.reason.as_str()))
            .collect()
    }

    #[test]
    fn bad_records_are_refused_with_their_reason_and_good_ones_kept() {
        let s = TelemetrySettings::default();
        let mut labelled = metric(8, NOW, "cpu", 1.0);
        labelled.labels.insert("bad key".into(), "v".into());
        let event = |seq, severity: &str, message: String| Record {
            body: RecordBody::Event {
                name: "crash".into(),
                severity: severity.into(),
                message,
            },
            ..metric(seq, NOW, "x", 0.0)
        };
        let c = check(
            &batch(vec![
                metric(1, NOW, "cpu", 0.5),
                metric(2, NOW, "cpu load", 0.5),
                metric(3, NOW, "cpu", f64::NAN),
                metric(4, NOW, "cpu", f64::INFINITY),
                metric(5, NOW + s.max_future_ms + 1, "cpu", 1.0),
                metric(6, NOW - s.raw_retention_ms - 1, "cpu", 1.0),
                metric(7, 0, "cpu", 1.0),
                labelled,
                event(9, "info", "ok".into()),
                event(10, "fatal", "x".into()),
                event(11, "warning", "x".repeat(MAX_EVENT_MESSAGE_BYTES + 1)),
                metric(1, NOW, "cpu", 0.7),
                metric(u64::MAX, NOW, "cpu", 1.0),
            ]),
            NOW,
            &s,
        )
        .unwrap();
        assert_eq!(
            reasons(&c),
            [
                (2, reason::BAD_NAME),
                (3, reason::NOT_A_NUMBER),
                (4, reason::NOT_A_NUMBER),
                (5, reason::IN_THE_FUTURE),
                (6, reason::TOO_OLD),
                (7, reason::TOO_OLD),
                (8, reason::BAD_LABEL),
                (10, reason::BAD_SEVERITY),
                (11, reason::MESSAGE_TOO_LONG),
                (u64::MAX, reason::BAD_SEQ),
            ]
        );
        assert_eq!(c.points.len(), 1);
        assert_eq!(c.points[0].value, 0.5, "the first of a repeated seq wins");
        assert_eq!(c.repeated, 1);
        assert_eq!(c.events.len(), 1);
        assert_eq!(c.events[0].seq, 9);
    }

    #[test]
    fn whole_batches_are_refused_for_size_and_boot_id() {
        let s = TelemetrySettings::default();
        let big = batch(
            (0..=MAX_BATCH_RECORDS as u64)
                .map(|i| metric(i + 1, NOW, "cpu", 1.0))
                .collect(),
        );
        assert_eq!(
            check(&big, NOW, &s),
            Err(BatchError::TooLarge(MAX_BATCH_RECORDS + 1))
        );
        let mut b = batch(vec![]);
        b.boot_id = "has space".into();
        assert_eq!(check(&b, NOW, &s), Err(BatchError::BadBootId));
        b.boot_id = String::new();
        assert_eq!(check(&b, NOW, &s), Err(BatchError::BadBootId));
    }
}
