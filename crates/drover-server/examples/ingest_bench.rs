//! Telemetry benchmark (bench/ingest.sh runs it; docs/benchmarks.md has the
//! figures). Two parts, each on SQLite and/or PostgreSQL:
//!
//! 1. `ingest`: points/s through the server's ingestion path
//!    (`Devices::ingest_telemetry`: checks, the bounded queue, the writer's
//!    shared transactions, deduplication, rollups), with one task per
//!    simulated device as the control channels would run; then the same
//!    points through a raw batched-insert baseline into the same database
//!    (one multi-row `INSERT … ON CONFLICT DO NOTHING` per batch, 64 batches
//!    per transaction, a table with the same dedup key and nothing else).
//! 2. `query`: fills the store with DEVICES × 24 h of one metric at 10 s
//!    (8.64 M points for 1,000 devices) through the store's write path,
//!    then times typical API queries through the HTTP router (p50/p95).
//!
//! Usage: `ingest_bench [ingest|query|all] [sqlite|postgres|both]`.
//! Knobs (environment): `DEVICES` (1000), `BATCHES_PER_DEVICE` (2),
//! `QUERY_DEVICES` (1000), `QUERY_HOURS` (24), `RUNS` (15), `WORK` (temp dir).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use drover_proto::api::Role;
use drover_proto::telemetry::{ClockQuality, Priority, Record, RecordBody, TelemetryBatch};
use drover_server::api::{AppState, router};
use drover_server::clock::now_ms;
use drover_server::devices::Devices;
use drover_server::store::telemetry::{PointWrite, TelemetryWrite};
use drover_server::store::{
    Change, DeviceRecord, Enrollment, SqlStore, Store, TelemetryStore, TokenRecord,
};
use sqlx::Connection;
use tower::ServiceExt;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const METRICS: u64 = 10;
const STEP_MS: i64 = 10_000;

async fn fresh_url(backend: &str, dir: &std::path::Path) -> String {
    match backend {
        "sqlite" => format!("sqlite:{}", dir.join("bench.db").display()),
        _ => drover_testkit::postgres_url().await,
    }
}

/// Batches of 500 records: 10 metrics × 50 timestamps, per device.
fn batches_for(device: u64, per_device: u64, t0: i64) -> Vec<TelemetryBatch> {
    (0..per_device)
        .map(|b| {
            let mut records = Vec::with_capacity(500);
            for t in 0..50u64 {
                let tick = b * 50 + t;
                for m in 0..METRICS {
                    let seq = tick * METRICS + m + 1;
                    records.push(Record {
                        seq,
                        time_ms: t0 + tick as i64 * STEP_MS,
                        mono_ms: tick * STEP_MS as u64,
                        clock: ClockQuality::Synced,
                        priority: Priority::Low,
                        labels: Default::default(),
                        body: RecordBody::Metric {
                            name: format!("metric{m}"),
                            value: ((device * 31 + seq * 7) % 1000) as f64 / 10.0,
                        },
                    });
                }
            }
            TelemetryBatch {
                boot_id: format!("boot-{device}"),
                records,
                dropped: 0,
            }
        })
        .collect()
}

async fn ingest(backend: &str) {
    let n_devices = env_num("DEVICES", 1000);
    let per_device = env_num("BATCHES_PER_DEVICE", 2);
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_url(backend, dir.path()).await;
    let store = Arc::new(SqlStore::connect(&url).await.unwrap());
    let (ca, _) = drover_server::pki::FleetCa::generate().unwrap();
    let devices = Arc::new(Devices::new(
        store.clone(),
        Arc::new(ca),
        Default::default(),
    ));
    let t0 = now_ms() - 2 * 3_600_000;
    let all: Vec<Vec<TelemetryBatch>> = (0..n_devices)
        .map(|d| batches_for(d, per_device, t0))
        .collect();
    let points = n_devices * per_device * 500;

    // Through the ingestion path, one task per device.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (d, batches) in all.iter().cloned().enumerate() {
        let devices = devices.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("{d:024x}");
            for b in &batches {
                let ack = devices.ingest_telemetry(&id, b).await.unwrap();
                assert!(ack.rejected.is_empty());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let path_secs = started.elapsed().as_secs_f64();
    // Every point stored once.
    let stored = {
        let series = store.series_named("metric0").await.unwrap();
        let mut n = 0;
        for (_, s) in series.iter().take(3) {
            n += store
                .series_points(*s, 0, i64::MAX, 1_000_000)
                .await
                .unwrap()
                .len();
        }
        n
    };
    assert_eq!(stored as u64, 3 * per_device * 50, "points of 3 series");

    if std::env::var_os("PATH_ONLY").is_some() {
        println!(
            "ingest {backend}: path {path_secs:.2} s = {:.0} points/s",
            points as f64 / path_secs
        );
        return;
    }
    // The baseline: the same points, raw multi-row inserts.
    let base_secs = baseline(backend, &url, &all).await;
    let bulk_secs = baseline_bulk(backend, &url, &all).await;
    let path_rate = points as f64 / path_secs;
    let base_rate = points as f64 / base_secs;
    let bulk_rate = points as f64 / bulk_secs;
    println!(
        "ingest {backend}: {points} points from {n_devices} devices in batches of 500: \
         path {path_secs:.2} s = {path_rate:.0} points/s; baseline multi-row VALUES {base_secs:.2} s = {base_rate:.0} points/s \
         (ratio path/baseline {:.2}); baseline one-parameter bulk insert {bulk_secs:.2} s = {bulk_rate:.0} points/s (ratio {:.2})",
        path_rate / base_rate,
        path_rate / bulk_rate
    );
    store.close().await;
}

async fn baseline(backend: &str, url: &str, all: &[Vec<TelemetryBatch>]) -> f64 {
    let create = match backend {
        "sqlite" => {
            "CREATE TABLE bench_raw (device_id TEXT NOT NULL, boot_id TEXT NOT NULL, seq BIGINT NOT NULL,
             time_ms BIGINT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (device_id, boot_id, seq))"
        }
        _ => {
            "CREATE TABLE bench_raw (device_id TEXT NOT NULL, boot_id TEXT NOT NULL, seq BIGINT NOT NULL,
             time_ms BIGINT NOT NULL, name TEXT NOT NULL, value DOUBLE PRECISION NOT NULL, PRIMARY KEY (device_id, boot_id, seq))"
        }
    };
    let mut sql = String::from(
        "INSERT INTO bench_raw (device_id, boot_id, seq, time_ms, name, value) VALUES ",
    );
    for r in 0..500 {
        if r > 0 {
            sql.push_str(", ");
        }
        let b = r * 6;
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, ${})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6
        ));
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    // Interleave devices as they would arrive: round by round.
    let rounds = all.first().map(|b| b.len()).unwrap_or(0);
    let order: Vec<(usize, &TelemetryBatch)> = (0..rounds)
        .flat_map(|r| all.iter().enumerate().map(move |(d, b)| (d, &b[r])))
        .collect();
    macro_rules! run {
        ($conn:expr) => {{
            let mut conn = $conn;
            sqlx::query(create).execute(&mut conn).await.unwrap();
            let started = Instant::now();
            for group in order.chunks(64) {
                let mut tx = conn.begin().await.unwrap();
                for (d, b) in group {
                    let id = format!("{d:024x}");
                    let mut q = sqlx::query(&sql);
                    for r in &b.records {
                        let RecordBody::Metric { name, value } = &r.body else {
                            continue;
                        };
                        q = q
                            .bind(id.as_str())
                            .bind(b.boot_id.as_str())
                            .bind(r.seq as i64)
                            .bind(r.time_ms)
                            .bind(name.as_str())
                            .bind(*value);
                    }
                    q.execute(&mut *tx).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
            started.elapsed().as_secs_f64()
        }};
    }
    match backend {
        "sqlite" => {
            use std::str::FromStr;
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .unwrap()
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
            run!(sqlx::SqliteConnection::connect_with(&opts).await.unwrap())
        }
        _ => run!(sqlx::PgConnection::connect(url).await.unwrap()),
    }
}

/// The same points, one statement per batch with the rows in one
/// parameter: a JSON array read by `json_each` on SQLite, arrays read by
/// `UNNEST` on PostgreSQL (the fastest plain inserts each offers).
async fn baseline_bulk(backend: &str, url: &str, all: &[Vec<TelemetryBatch>]) -> f64 {
    let (create, insert) = match backend {
        "sqlite" => (
            "CREATE TABLE bench_bulk (device_id TEXT NOT NULL, boot_id TEXT NOT NULL, seq BIGINT NOT NULL,
             time_ms BIGINT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (device_id, boot_id, seq))",
            "INSERT INTO bench_bulk (device_id, boot_id, seq, time_ms, name, value)
             SELECT $1, $2, j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3 FROM json_each($3) j WHERE true
             ON CONFLICT DO NOTHING",
        ),
        _ => (
            "CREATE TABLE bench_bulk (device_id TEXT NOT NULL, boot_id TEXT NOT NULL, seq BIGINT NOT NULL,
             time_ms BIGINT NOT NULL, name TEXT NOT NULL, value DOUBLE PRECISION NOT NULL, PRIMARY KEY (device_id, boot_id, seq))",
            "INSERT INTO bench_bulk (device_id, boot_id, seq, time_ms, name, value)
             SELECT $1, $2, * FROM UNNEST($3::bigint[], $4::bigint[], $5::text[], $6::float8[])
             ON CONFLICT DO NOTHING",
        ),
    };
    let rounds = all.first().map(|b| b.len()).unwrap_or(0);
    let order: Vec<(usize, &TelemetryBatch)> = (0..rounds)
        .flat_map(|r| all.iter().enumerate().map(move |(d, b)| (d, &b[r])))
        .collect();
    let metric = |r: &Record| match &r.body {
        RecordBody::Metric { name, value } => Some((r.seq as i64, r.time_ms, name.clone(), *value)),
        _ => None,
    };
    match backend {
        "sqlite" => {
            use std::str::FromStr;
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .unwrap()
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
            let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
            sqlx::query(create).execute(&mut conn).await.unwrap();
            let started = Instant::now();
            for group in order.chunks(64) {
                let mut tx = conn.begin().await.unwrap();
                for (d, b) in group {
                    let rows: Vec<_> = b.records.iter().filter_map(metric).collect();
                    sqlx::query(insert)
                        .bind(format!("{d:024x}"))
                        .bind(b.boot_id.as_str())
                        .bind(serde_json::to_string(&rows).unwrap())
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
            started.elapsed().as_secs_f64()
        }
        _ => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(create).execute(&mut conn).await.unwrap();
            let started = Instant::now();
            for group in order.chunks(64) {
                let mut tx = conn.begin().await.unwrap();
                for (d, b) in group {
                    let rows: Vec<_> = b.records.iter().filter_map(metric).collect();
                    sqlx::query(insert)
                        .bind(format!("{d:024x}"))
                        .bind(b.boot_id.as_str())
                        .bind(rows.iter().map(|r| r.0).collect::<Vec<i64>>())
                        .bind(rows.iter().map(|r| r.1).collect::<Vec<i64>>())
                        .bind(rows.iter().map(|r| r.2.clone()).collect::<Vec<String>>())
                        .bind(rows.iter().map(|r| r.3).collect::<Vec<f64>>())
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
            started.elapsed().as_secs_f64()
        }
    }
}

fn device(id: &str, region: &str) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        public_key: format!("key-{id}"),
        enrollment: Enrollment::Accepted,
        hostname: None,
        tags: [("region".to_string(), region.to_string())].into(),
        inventory: Default::default(),
        inventory_hash: None,
        desired: Default::default(),
        reported: None,
        agent_version: None,
        cert_serial: None,
        cert_not_after: None,
        enrolled_via: None,
        created_at: 1,
        updated_at: 1,
        last_seen: None,
        version: 1,
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn query(backend: &str) {
    let n_devices = env_num("QUERY_DEVICES", 1000);
    let hours = env_num("QUERY_HOURS", 24) as i64;
    let runs = env_num("RUNS", 15) as usize;
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_url(backend, dir.path()).await;
    let store = Arc::new(SqlStore::connect(&url).await.unwrap());
    let regions = ["eu", "us", "ap", "sa"];
    let ids: Vec<String> = (0..n_devices).map(|d| format!("{:024x}", d + 1)).collect();
    let changes: Vec<Change> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Change::PutDevice {
            device: device(id, regions[i % regions.len()]),
            expected_version: None,
        })
        .collect();
    for chunk in changes.chunks(500) {
        assert!(store.apply(chunk, None).await.unwrap());
    }
    // Fill: each device's day of `cpu` at 10 s, through the store's write
    // path (rollups included), 64 device-hours per transaction.
    let end = now_ms() - 60_000;
    let start = end - hours * 3_600_000;
    let per_hour = 360i64;
    let started = Instant::now();
    let mut keys = Vec::new();
    for id in &ids {
        let boot = store.boot_key(id, "boot", start).await.unwrap();
        let series = store
            .create_series(id, &["cpu".to_string()], 500, start)
            .await
            .unwrap()[0]
            .1;
        keys.push((id.clone(), boot, series));
    }
    let mut total = 0u64;
    for h in 0..hours {
        let mut writes = Vec::new();
        for (d, (id, boot, series)) in keys.iter().enumerate() {
            let points = (0..per_hour)
                .map(|i| {
                    let n = h * per_hour + i;
                    PointWrite {
                        seq: n + 1,
                        time_ms: start + n * STEP_MS,
                        series_id: *series,
                        value: ((d as i64 * 37 + n * 11) % 1000) as f64 / 10.0,
                        labels: None,
                        clock: ClockQuality::Synced,
                    }
                })
                .collect::<Vec<_>>();
            total += points.len() as u64;
            writes.push(TelemetryWrite {
                device_id: id.clone(),
                boot_key: *boot,
                points,
                events: vec![],
                dropped: 0,
                had_records: true,
                received_at: end,
            });
            if writes.len() == 64 {
                store.write_telemetry(&writes).await.unwrap();
                writes.clear();
            }
        }
        if !writes.is_empty() {
            store.write_telemetry(&writes).await.unwrap();
        }
    }
    let fill = started.elapsed().as_secs_f64();
    println!(
        "query {backend}: filled {total} points ({n_devices} devices x {hours} h at 10 s) through the store write path in {fill:.1} s ({:.0} points/s)",
        total as f64 / fill
    );

    let state = AppState::for_tests(store.clone());
    let app = router(state);
    let m = drover_server::auth::mint_token();
    store
        .create_token(
            &TokenRecord {
                id: m.id.clone(),
                name: "bench".into(),
                role: Role::Viewer,
                secret_hash: m.secret_hash.clone(),
                created_at: now_ms(),
                created_by: None,
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
            },
            None,
        )
        .await
        .unwrap();
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let queries: Vec<(String, String)> = vec![
        (
            "avg(cpu), 1 h (raw)".into(),
            format!("/api/v1/metrics/query?q={}&since=1h", enc("avg(cpu)")),
        ),
        (
            "avg(cpu) by tag.region, 6 h (1m rollups)".into(),
            format!(
                "/api/v1/metrics/query?q={}&since=6h",
                enc("avg(cpu) by tag.region")
            ),
        ),
        (
            "max(cpu) where tag.region = eu, 24 h step 1h (1h rollups)".into(),
            format!(
                "/api/v1/metrics/query?q={}&since=24h&step=1h",
                enc("max(cpu) where tag.region = eu")
            ),
        ),
        (
            "p95(cpu) by tag.region, 24 h step 1h (1h rollups, sketches)".into(),
            format!(
                "/api/v1/metrics/query?q={}&since=24h&step=1h",
                enc("p95(cpu) by tag.region")
            ),
        ),
        (
            "p95(cpu) by tag.region, 6 h (1m rollups, sketches)".into(),
            format!(
                "/api/v1/metrics/query?q={}&since=6h",
                enc("p95(cpu) by tag.region")
            ),
        ),
        (
            "p95(cpu), 7 d (1h rollups, sketches)".into(),
            format!("/api/v1/metrics/query?q={}&since=7d", enc("p95(cpu)")),
        ),
        (
            "one device, 24 h of raw points".into(),
            format!("/api/v1/devices/{}/metrics?name=cpu&since=24h", ids[0]),
        ),
    ];
    for (label, uri) in queries {
        let mut times = Vec::with_capacity(runs);
        let mut size = 0;
        for _ in 0..runs {
            let req = Request::builder()
                .uri(&uri)
                .header(header::AUTHORIZATION, format!("Bearer {}", m.bearer))
                .body(Body::empty())
                .unwrap();
            let t = Instant::now();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 256 << 20)
                .await
                .unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            size = body.len();
        }
        times.sort_by(f64::total_cmp);
        println!(
            "query {backend}: {label}: p50 {:.1} ms, p95 {:.1} ms over {runs} runs ({size} bytes)",
            percentile(&times, 0.5),
            percentile(&times, 0.95)
        );
    }
    store.close().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let part = args.get(1).map(String::as_str).unwrap_or("all");
    let which = args.get(2).map(String::as_str).unwrap_or("both");
    let backends: Vec<&str> = match which {
        "sqlite" => vec!["sqlite"],
        "postgres" => vec!["postgres"],
        _ => vec!["sqlite", "postgres"],
    };
    for b in &backends {
        if part == "ingest" || part == "all" {
            ingest(b).await;
        }
        if part == "query" || part == "all" {
            query(b).await;
        }
    }
}
