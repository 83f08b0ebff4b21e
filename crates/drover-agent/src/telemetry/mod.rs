//! Telemetry on the device (docs/monitoring.md, "On the device"): collect
//! metrics and events, keep them in the offline buffer, send them in
//! batches while connected, delete them once acknowledged.
//!
//! - [`clock`]: time stamps, clock quality, boot id.
//! - [`buffer`]: `DATA/telemetry.redb`, bounded, survives kill -9.
//! - [`collect`]: system metrics and service states.
//! - [`statsd`]: custom metrics (StatsD on 127.0.0.1, drop-in folder).
//! - [`events`]: log patterns and watched processes.
//!
//! [`TelemetryHandle::spawn`] runs all of it in one task, like the update
//! engine; the control channel tells it when a connection is up, takes
//! batches from it and hands it the acks.
//!
//! **Sending and acks.** The server answers each batch with
//! `up_to_seq` = the highest seq of that batch, having stored (or
//! refused) every record of it. The task remembers each batch in flight
//! (its boot and highest seq, and the exact records it held) and on an ack
//! deletes exactly the records of the matching batch, nothing else. So
//! batches need not be acknowledged in seq order: a batch of fresh records
//! can go out while older backlog of the same boot is still unsent, and an
//! ack for the fresh batch never deletes unsent backlog. At most
//! `max_in_flight_batches` are in flight; backlog batches (oldest first)
//! go at most `backlog_batches_per_sec`, and after every collection one
//! batch of the newest records goes right away, so fresh data still flows
//! while a long backlog drains. A connection that drops forgets every
//! batch in flight (their records are simply sent again; the server drops
//! duplicates by boot and seq).
//!
//! This task never blocks the control channel on the network and never
//! deletes a record that is neither acknowledged nor dropped for room.

pub mod buffer;
pub mod clock;
pub mod collect;
pub mod events;
pub mod statsd;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::device::{AgentMessage, MAX_FRAME_BYTES, encode};
use drover_proto::telemetry::{
    MAX_BATCH_RECORDS, Priority, RecordBody, TelemetryAck, TelemetryBatch,
};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use buffer::{Buffer, BufferError, Key, NewRecord, Pick};
use clock::{Clock, ClockWatch, MIN_PLAUSIBLE_MS, Stamp};
use collect::{Collector, Point, ServiceCheck};
use events::{Event, LogPattern, LogTail, ProcessWatch};
use statsd::Aggregator;

/// The `[telemetry]` section of agent.toml (reference in docs/agent.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Collect and send telemetry at all.
    pub enabled: bool,
    /// System metrics, custom metrics and buffer health, every this long.
    pub interval_secs: u64,
    /// Service states (the only check that may start a subprocess).
    pub services_interval_secs: u64,
    /// Log patterns and watched processes.
    pub events_interval_secs: u64,
    /// The offline buffer's bound (records' encoded bytes).
    pub max_buffer_bytes: u64,
    /// Mount points whose usage is reported.
    pub mounts: Vec<PathBuf>,
    /// Services whose state is reported (`service.active`).
    pub services: Vec<String>,
    /// Process names watched for disappearance and restarts.
    pub processes: Vec<String>,
    pub log_patterns: Vec<LogPattern>,
    /// UDP port of the StatsD listener on 127.0.0.1; 0 turns it off.
    pub statsd_port: u16,
    /// Drop-in metrics folder; default `DATA/metrics.d`.
    pub dropin_dir: Option<PathBuf>,
    /// Distinct custom metric names kept per interval.
    pub max_custom_names: usize,
    /// Events kept per log pattern per poll; the rest are counted.
    pub max_events_per_poll: usize,
    pub max_in_flight_batches: usize,
    pub backlog_batches_per_sec: u32,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            interval_secs: 10,
            services_interval_secs: 60,
            events_interval_secs: 5,
            max_buffer_bytes: 16 * 1024 * 1024,
            mounts: vec![PathBuf::from("/")],
            services: Vec::new(),
            processes: Vec::new(),
            log_patterns: Vec::new(),
            statsd_port: 8125,
            dropin_dir: None,
            max_custom_names: 200,
            max_events_per_poll: 100,
            max_in_flight_batches: 4,
            backlog_batches_per_sec: 20,
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("interval_secs", self.interval_secs),
            ("services_interval_secs", self.services_interval_secs),
            ("events_interval_secs", self.events_interval_secs),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.max_buffer_bytes < 64 * 1024 {
            return Err(format!(
                "max_buffer_bytes must be at least 65536 (64 KiB), not {}",
                self.max_buffer_bytes
            ));
        }
        if !(1..=16).contains(&self.max_in_flight_batches) {
            return Err("max_in_flight_batches must be 1-16".into());
        }
        if self.backlog_batches_per_sec == 0 {
            return Err("backlog_batches_per_sec must be at least 1".into());
        }
        for s in self.services.iter().chain(&self.processes) {
            if s.is_empty() || s.contains('/') || s.chars().any(char::is_control) {
                return Err(format!(
                    "service and process names must be plain names without '/', not {s:?}"
                ));
            }
        }
        for p in &self.log_patterns {
            p.validate()?;
        }
        Ok(())
    }
}

/// What the telemetry task needs.
pub struct TelemetryParts {
    pub data_dir: PathBuf,
    pub config: TelemetryConfig,
    pub clock: Arc<dyn Clock>,
    /// This boot (`clock::boot_id()` on a device).
    pub boot_id: String,
    /// `/proc` and `/sys` (other folders in tests).
    pub proc_dir: PathBuf,
    pub sys_dir: PathBuf,
}

/// Counts for tests and logs.
#[derive(Debug, Default)]
pub struct TelemetryStats {
    pub batches_sent: std::sync::atomic::AtomicU64,
    pub records_acked: std::sync::atomic::AtomicU64,
    pub records_stored: std::sync::atomic::AtomicU64,
}

/// The control channel's side of the telemetry task.
pub struct TelemetryHandle {
    epoch: watch::Sender<u64>,
    current: u64,
    acks: mpsc::UnboundedSender<(u64, TelemetryAck)>,
    batches: mpsc::Receiver<(u64, TelemetryBatch)>,
    pub stats: Arc<TelemetryStats>,
}

impl TelemetryHandle {
    /// Opens the buffer and starts the task on the current runtime.
    /// Fails when the buffer is used by another process or cannot be
    /// created; a damaged buffer file is moved aside and started anew.
    pub fn spawn(parts: TelemetryParts) -> Result<TelemetryHandle, String> {
        let path = parts.data_dir.join(buffer::FILE);
        let cfg = parts.config.clone();
        let buf = match Buffer::open(&path, &parts.boot_id, cfg.max_buffer_bytes) {
            Ok(b) => b,
            Err(e @ BufferError::InUse(_)) => return Err(e.to_string()),
            Err(e) => {
                let aside =
                    path.with_extension(format!("redb.damaged-{}", clock::SystemClock.wall_ms()));
                tracing::error!(error = %e, moved_to = %aside.display(), "the telemetry buffer cannot be opened; moving it aside and starting a new one (its records are lost)");
                std::fs::rename(&path, &aside)
                    .map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
                Buffer::open(&path, &parts.boot_id, cfg.max_buffer_bytes)
                    .map_err(|e| e.to_string())?
            }
        };
        let statsd = if cfg.statsd_port == 0 {
            None
        } else {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], cfg.statsd_port));
            match std::net::UdpSocket::bind(addr)
                .and_then(|s| s.set_nonblocking(true).map(|_| s))
                .and_then(tokio::net::UdpSocket::from_std)
            {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, port = cfg.statsd_port, "cannot listen for StatsD metrics on 127.0.0.1; custom metrics come only from the drop-in folder (set [telemetry].statsd_port)");
                    None
                }
            }
        };
        let (epoch_tx, epoch_rx) = watch::channel(0);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(cfg.max_in_flight_batches + 1);
        let stats = Arc::new(TelemetryStats::default());
        let service_check = ServiceCheck::detect();
        tracing::info!(
            buffered = buf.len(),
            dropped = buf.dropped(),
            boot_count = buf.boot_count(),
            services = ?service_check,
            "telemetry buffer open"
        );
        let task = Task {
            collector: Collector::new(&parts.proc_dir, &parts.sys_dir, &cfg.mounts),
            custom: Aggregator::new(cfg.max_custom_names),
            dropin: cfg
                .dropin_dir
                .clone()
                .unwrap_or_else(|| parts.data_dir.join("metrics.d")),
            tails: cfg.log_patterns.iter().cloned().map(LogTail::new).collect(),
            procs: ProcessWatch::new(&parts.proc_dir, cfg.processes.clone()),
            proc_dir: parts.proc_dir.clone(),
            service_check,
            services_up: Vec::new(),
            suppressed: 0,
            buffer: Arc::new(Mutex::new(buf)),
            clock: parts.clock,
            watch: ClockWatch::default(),
            epoch: 0,
            flights: Vec::new(),
            flying: HashSet::new(),
            idle: false,
            hold_current: false,
            out: out_tx,
            stats: stats.clone(),
            cfg,
        };
        tokio::spawn(task.run(epoch_rx, ack_rx, statsd));
        Ok(TelemetryHandle {
            epoch: epoch_tx,
            current: 0,
            acks: ack_tx,
            batches: out_rx,
            stats,
        })
    }

    /// A connection is up: batches from now on belong to it.
    pub fn connected(&mut self) {
        // Anything queued for an earlier connection is stale.
        while self.batches.try_recv().is_ok() {}
        self.current = self.epoch.borrow().wrapping_add(1).max(1);
        self.epoch.send_replace(self.current);
    }

    pub fn disconnected(&mut self) {
        self.current = 0;
        self.epoch.send_replace(0);
    }

    /// The next batch to send on the current connection.
    pub async fn next_batch(&mut self) -> AgentMessage {
        loop {
            match self.batches.recv().await {
                Some((e, b)) if e == self.current && e != 0 => {
                    return AgentMessage::Telemetry(b);
                }
                Some(_) => continue,
                None => std::future::pending().await,
            }
        }
    }

    /// An ack read from the current connection.
    pub fn ack(&self, ack: TelemetryAck) {
        let _ = self.acks.send((self.current, ack));
    }
}

/// A batch sent and not yet acknowledged.
struct Flight {
    epoch: u64,
    boot_id: String,
    up_to: u64,
    keys: Vec<Key>,
    dropped: u64,
}

struct Task {
    cfg: TelemetryConfig,
    collector: Collector,
    custom: Aggregator,
    dropin: PathBuf,
    tails: Vec<LogTail>,
    procs: ProcessWatch,
    proc_dir: PathBuf,
    service_check: ServiceCheck,
    services_up: Vec<bool>,
    /// Log events over `max_events_per_poll`, reported with the metrics.
    suppressed: u64,
    buffer: Arc<Mutex<Buffer>>,
    clock: Arc<dyn Clock>,
    watch: ClockWatch,
    epoch: u64,
    flights: Vec<Flight>,
    flying: HashSet<Key>,
    /// Nothing eligible to send until something changes.
    idle: bool,
    /// The wall clock is implausible now: this boot's records wait.
    hold_current: bool,
    out: mpsc::Sender<(u64, TelemetryBatch)>,
    stats: Arc<TelemetryStats>,
}

/// Room for the batch envelope (`type`, `boot_id`, `dropped`) in a frame.
const ENVELOPE_BYTES: usize = 512;

impl Task {
    async fn run(
        mut self,
        mut epoch: watch::Receiver<u64>,
        mut acks: mpsc::UnboundedReceiver<(u64, TelemetryAck)>,
        statsd: Option<tokio::net::UdpSocket>,
    ) {
        let every = |secs: u64| {
            let mut i = tokio::time::interval(Duration::from_secs(secs.max(1)));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        };
        let mut sample = every(self.cfg.interval_secs);
        let mut events = every(self.cfg.events_interval_secs);
        let mut services = every(self.cfg.services_interval_secs);
        let mut backlog = tokio::time::interval(Duration::from_secs_f64(
            1.0 / self.cfg.backlog_batches_per_sec.max(1) as f64,
        ));
        backlog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut packet = vec![0u8; 8192];
        loop {
            let can_send = self.epoch != 0
                && !self.idle
                && self.flights.len() < self.cfg.max_in_flight_batches;
            tokio::select! {
                _ = sample.tick() => {
                    self.collect().await;
                    self.send(Pick::Newest);
                }
                _ = events.tick() => self.poll_events().await,
                _ = services.tick(), if !self.cfg.services.is_empty() => {
                    self.services_up = collect::services(self.service_check, &self.proc_dir, &self.cfg.services).await;
                }
                r = async { statsd.as_ref().expect("guarded").recv_from(&mut packet).await }, if statsd.is_some() => {
                    if let Ok((n, _)) = r {
                        self.custom.feed(&packet[..n]);
                    }
                }
                a = acks.recv() => match a {
                    Some((e, ack)) => self.on_ack(e, ack),
                    None => return,
                },
                r = epoch.changed() => {
                    if r.is_err() {
                        return;
                    }
                    self.epoch = *epoch.borrow_and_update();
                    self.flights.clear();
                    self.flying.clear();
                    self.idle = false;
                }
                _ = backlog.tick(), if can_send => self.send(Pick::Oldest),
            }
        }
    }

    /// Stores `records` (durably, off the runtime thread: it fsyncs).
    async fn store(&mut self, records: Vec<NewRecord>) {
        if records.is_empty() {
            return;
        }
        let buffer = self.buffer.clone();
        let flying = self.flying.clone();
        let r = tokio::task::spawn_blocking(move || {
            buffer.lock().expect("buffer lock").push(records, &flying)
        })
        .await;
        match r {
            Ok(Ok(report)) => {
                self.idle = false;
                self.stats
                    .records_stored
                    .fetch_add(report.stored as u64, std::sync::atomic::Ordering::Relaxed);
                if report.dropped > 0 {
                    tracing::warn!(
                        dropped = report.dropped,
                        "telemetry buffer full: dropped the oldest lowest-priority records (counted and reported)"
                    );
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot store telemetry records"),
            Err(e) => tracing::error!(error = %e, "the telemetry store task failed"),
        }
    }

    fn stamp(&mut self) -> Stamp {
        let s = self.watch.stamp(self.clock.as_ref());
        self.hold_current = s.time_ms < MIN_PLAUSIBLE_MS;
        s
    }

    async fn collect(&mut self) {
        let stamp = self.stamp();
        if stamp.good() && self.buffer.lock().expect("buffer lock").unsynced_pending() {
            let buffer = self.buffer.clone();
            let r = tokio::task::spawn_blocking(move || {
                buffer.lock().expect("buffer lock").correct(&stamp)
            })
            .await;
            match r {
                Ok(Ok(n)) if n > 0 => {
                    tracing::info!(
                        records = n,
                        "the clock is good again: corrected records made while it was not"
                    );
                    self.idle = false;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot correct telemetry times"),
                Err(e) => tracing::error!(error = %e, "the telemetry store task failed"),
            }
        }
        let mut low = self.collector.sample(stamp.mono_ms);
        {
            let b = self.buffer.lock().expect("buffer lock");
            low.push(Point::new(
                "agent.buffer_used_pct",
                (10_000.0 * b.bytes() as f64 / b.max_bytes().max(1) as f64).round() / 100.0,
            ));
            low.push(Point::new("agent.buffer_records", b.len() as f64));
            low.push(Point::new("agent.dropped", b.dropped() as f64));
            low.push(Point::new("boot.count", b.boot_count() as f64));
        }
        low.push(Point::new("agent.clock_steps", self.watch.steps as f64));
        if self.suppressed > 0 {
            low.push(Point::new(
                "agent.events_suppressed",
                self.suppressed as f64,
            ));
            self.suppressed = 0;
        }
        self.custom.read_dropin(&self.dropin);
        let mut normal = self.custom.flush();
        for (name, up) in self.cfg.services.iter().zip(&self.services_up) {
            normal.push(
                Point::new("service.active", if *up { 1.0 } else { 0.0 }).label("service", name),
            );
        }
        let mut records = metrics(low, Priority::Low, stamp);
        records.extend(metrics(normal, Priority::Normal, stamp));
        self.store(records).await;
    }

    async fn poll_events(&mut self) {
        let mut out: Vec<Event> = Vec::new();
        for t in &mut self.tails {
            let mut mine = Vec::new();
            self.suppressed += t.poll(self.cfg.max_events_per_poll, &mut mine);
            out.extend(mine);
        }
        self.procs.poll(&mut out);
        if out.is_empty() {
            return;
        }
        let stamp = self.stamp();
        let records = out
            .into_iter()
            .map(|e| NewRecord {
                stamp,
                priority: Priority::High,
                labels: e.labels,
                body: RecordBody::Event {
                    name: e.name,
                    severity: e.severity.to_string(),
                    message: e.message,
                },
            })
            .collect();
        self.store(records).await;
        self.send(Pick::Newest);
    }

    /// Sends one batch from `pick` if the window has room.
    fn send(&mut self, pick: Pick) {
        if self.epoch == 0 || self.flights.len() >= self.cfg.max_in_flight_batches {
            return;
        }
        let b = self.buffer.lock().expect("buffer lock");
        let mut max_records = MAX_BATCH_RECORDS;
        let selected = loop {
            let s = match b.select(
                pick,
                &self.flying,
                self.hold_current,
                max_records,
                MAX_FRAME_BYTES - ENVELOPE_BYTES,
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the telemetry buffer");
                    return;
                }
            };
            // The byte estimate is per record; check the real frame.
            match s {
                Some(s)
                    if encode(&AgentMessage::Telemetry(TelemetryBatch {
                        boot_id: s.boot_id.clone(),
                        records: s.records.clone(),
                        dropped: u64::MAX,
                    }))
                    .len()
                        > MAX_FRAME_BYTES
                        && s.records.len() > 1 =>
                {
                    max_records = s.records.len() / 2;
                }
                other => break other,
            }
        };
        let carries_dropped = self.flights.iter().any(|f| f.dropped > 0);
        let dropped = if carries_dropped { 0 } else { b.dropped() };
        let batch = match selected {
            Some(s) => {
                let up_to = s.records.last().map_or(0, |r| r.seq);
                (
                    TelemetryBatch {
                        boot_id: s.boot_id,
                        records: s.records,
                        dropped,
                    },
                    up_to,
                    s.keys,
                )
            }
            // Only a dropped count to report (everything else went).
            None if dropped > 0 && !carries_dropped => (
                TelemetryBatch {
                    boot_id: b.boot_id().to_string(),
                    records: Vec::new(),
                    dropped,
                },
                0,
                Vec::new(),
            ),
            None => {
                if pick == Pick::Oldest {
                    self.idle = true;
                }
                return;
            }
        };
        drop(b);
        let (batch, up_to, keys) = batch;
        let flight = Flight {
            epoch: self.epoch,
            boot_id: batch.boot_id.clone(),
            up_to,
            keys,
            dropped: batch.dropped,
        };
        if self.out.try_send((self.epoch, batch)).is_err() {
            // The channel is not taking batches now; try again later.
            return;
        }
        self.stats
            .batches_sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.flying.extend(flight.keys.iter().copied());
        self.flights.push(flight);
    }

    fn on_ack(&mut self, epoch: u64, ack: TelemetryAck) {
        let Some(i) = self
            .flights
            .iter()
            .position(|f| f.epoch == epoch && f.boot_id == ack.boot_id && f.up_to == ack.up_to_seq)
        else {
            tracing::debug!(boot_id = %ack.boot_id, up_to_seq = ack.up_to_seq, "telemetry ack for no batch in flight; ignored");
            return;
        };
        let f = self.flights.remove(i);
        if !ack.rejected.is_empty() {
            tracing::warn!(
                rejected = ack.rejected.len(),
                first_seq = ack.rejected[0].seq,
                first_reason = %ack.rejected[0].reason,
                "the server refused telemetry records (they are deleted; see docs/monitoring.md for the reasons)"
            );
        }
        for k in &f.keys {
            self.flying.remove(k);
        }
        let r = self
            .buffer
            .lock()
            .expect("buffer lock")
            .ack(&f.keys, f.dropped);
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot delete acknowledged telemetry");
        }
        self.stats
            .records_acked
            .fetch_add(f.keys.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // More backlog goes at the backlog rate.
        self.idle = false;
    }
}

/// Metric records of one round; non-finite values are left out (JSON has
/// no NaN, and the server would refuse them).
fn metrics(points: Vec<Point>, priority: Priority, stamp: Stamp) -> Vec<NewRecord> {
    points
        .into_iter()
        .filter(|p| p.value.is_finite())
        .map(|p| NewRecord {
            stamp,
            priority,
            labels: p.labels,
            body: RecordBody::Metric {
                name: p.name,
                value: p.value,
            },
        })
        .collect()
}
