//! Telemetry storage, rollups and queries (docs/monitoring.md), on every
//! backend: deduplication, original times, late points in rollups compared
//! with a recomputation from the raw points, rejections with reasons,
//! retention, a store reopened in the middle of an upload, and the metrics
//! API over several devices.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use drover_metricsql::Aggregate;
use drover_proto::api::Role;
use drover_proto::telemetry::{ClockQuality, Priority, Record, RecordBody, TelemetryBatch};
use drover_server::api::{AppState, router};
use drover_server::auth::mint_token;
use drover_server::clock::now_ms;
use drover_server::devices::Devices;
use drover_server::devices::telemetry::{Ingest, IngestError};
use drover_server::store::telemetry::{Agg, AggregateRead, Resolution, Sketch};
use drover_server::store::{
    Change, DeviceRecord, Enrollment, SqlStore, Store, TelemetrySettings, TelemetryStore,
    TokenRecord,
};
use drover_testkit::Backend;
use serde_json::Value;
use tower::ServiceExt;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

fn metric(seq: u64, time_ms: i64, name: &str, value: f64) -> Record {
    Record {
        seq,
        time_ms,
        mono_ms: seq * 10,
        clock: ClockQuality::Synced,
        priority: Priority::Low,
        labels: Default::default(),
        body: RecordBody::Metric {
            name: name.into(),
            value,
        },
    }
}

fn batch(boot: &str, records: Vec<Record>) -> TelemetryBatch {
    TelemetryBatch {
        boot_id: boot.into(),
        records,
        dropped: 0,
    }
}

fn devices(store: Arc<SqlStore>, settings: TelemetrySettings) -> Arc<Devices> {
    let (ca, _) = drover_server::pki::FleetCa::generate().unwrap();
    let mut d = Devices::new(store, Arc::new(ca), Default::default());
    d.telemetry = Ingest::new(settings);
    Arc::new(d)
}

async fn each_backend<F, Fut>(f: F)
where
    F: Fn(Arc<SqlStore>, Backend, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in Backend::ALL {
        let dir = tempfile::tempdir().unwrap();
        let url = backend.fresh_url(dir.path()).await;
        let store = Arc::new(SqlStore::connect(&url).await.unwrap());
        f(store, backend, url).await;
    }
}

async fn series_id(store: &SqlStore, device: &str, name: &str) -> i64 {
    store
        .device_series(device)
        .await
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{device} has no series {name}"))
        .1
}

/// Recomputes per-bucket aggregates from the stored raw points.
async fn from_raw(
    store: &SqlStore,
    series: i64,
    since: i64,
    until: i64,
    width: i64,
) -> BTreeMap<i64, (Agg, Vec<f64>)> {
    let mut out: BTreeMap<i64, (Agg, Vec<f64>)> = BTreeMap::new();
    for p in store
        .series_points(series, since, until, 1_000_000)
        .await
        .unwrap()
    {
        let e = out
            .entry(p.time_ms - p.time_ms.rem_euclid(width))
            .or_insert_with(|| (Agg::empty(false), Vec::new()));
        e.0.add(p.value);
        e.1.push(p.value);
    }
    out
}

fn exact_quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[(q * (v.len() - 1) as f64).floor() as usize]
}

#[tokio::test]
async fn a_resent_batch_is_stored_once_at_its_original_time() {
    each_backend(|store, backend, _| async move {
        let devs = devices(store.clone(), TelemetrySettings::default());
        let t0 = now_ms() - 2 * HOUR;
        let records: Vec<Record> = (1..=300)
            .map(|i| metric(i, t0 + i as i64 * 10_000, "cpu", i as f64))
            .collect();
        let b = batch("boot-a", records);
        let first = devs.ingest_telemetry("dev1", &b).await.unwrap();
        let again = devs.ingest_telemetry("dev1", &b).await.unwrap();
        assert_eq!(first.up_to_seq, 300, "{backend:?}");
        assert_eq!(
            again, first,
            "{backend:?}: a resent batch gets the same ack"
        );
        assert!(first.rejected.is_empty());
        let series = series_id(&store, "dev1", "cpu").await;
        let points = store
            .series_points(series, 0, i64::MAX, 10_000)
            .await
            .unwrap();
        assert_eq!(points.len(), 300, "{backend:?}: none duplicated");
        for (i, p) in points.iter().enumerate() {
            assert_eq!(
                p.time_ms,
                t0 + (i as i64 + 1) * 10_000,
                "original time kept"
            );
            assert_eq!(p.seq, i as i64 + 1);
            assert_eq!(p.boot_id, "boot-a");
            assert_eq!(p.clock, ClockQuality::Synced);
        }
        // The rollups counted every point once, too.
        let read = AggregateRead {
            groups: vec![vec![series]],
            resolution: Resolution::Minute,
            since_ms: 0,
            until_ms: i64::MAX / 2,
            step_ms: MIN,
            sketches: false,
        };
        let total: u64 = store.aggregate(&read).await.unwrap()[0]
            .iter()
            .map(|(_, a)| a.count)
            .sum();
        assert_eq!(total, 300, "{backend:?}");
        // The same seq in another boot is a different record.
        let other = batch("boot-b", vec![metric(1, t0, "cpu", 7.0)]);
        devs.ingest_telemetry("dev1", &other).await.unwrap();
        assert_eq!(
            store
                .series_points(series, 0, i64::MAX, 10_000)
                .await
                .unwrap()
                .len(),
            301
        );
    })
    .await;
}

#[tokio::test]
async fn late_and_out_of_order_points_update_rollups_like_a_recomputation() {
    each_backend(|store, backend, _| async move {
        let devs = devices(store.clone(), TelemetrySettings::default());
        let t0 = now_ms() - 5 * HOUR;
        // Three metrics, 5 hours at 10 s, values with some spread.
        let mut records: Vec<Record> = Vec::new();
        let mut seq = 0;
        for i in 0..1800i64 {
            for (name, scale) in [("cpu", 1.0), ("temp", -0.5), ("mem", 1e6)] {
                seq += 1;
                let v = ((i * 7919 + seq as i64 * 31) % 1000) as f64 * scale / 7.0;
                records.push(metric(seq, t0 + i * 10_000, name, v));
            }
        }
        // Arrive newest first, in batches, some of them twice: every older
        // batch lands in buckets that already have rollups.
        let chunks: Vec<Vec<Record>> = records.chunks(450).map(|c| c.to_vec()).collect();
        for (n, chunk) in chunks.iter().rev().enumerate() {
            let mut shuffled = chunk.clone();
            shuffled.reverse();
            let b = batch("boot", shuffled);
            let ack = devs.ingest_telemetry("dev-late", &b).await.unwrap();
            assert!(ack.rejected.is_empty(), "{backend:?}: {:?}", ack.rejected);
            if n % 3 == 0 {
                devs.ingest_telemetry("dev-late", &b).await.unwrap();
            }
        }
        for name in ["cpu", "temp", "mem"] {
            let series = series_id(&store, "dev-late", name).await;
            for (res, width) in [(Resolution::Minute, MIN), (Resolution::Hour, HOUR)] {
                let expected = from_raw(&store, series, 0, i64::MAX / 2, width).await;
                let read = AggregateRead {
                    groups: vec![vec![series]],
                    resolution: res,
                    since_ms: 0,
                    until_ms: i64::MAX / 2,
                    step_ms: width,
                    sketches: true,
                };
                let got = store.aggregate(&read).await.unwrap().remove(0);
                assert_eq!(
                    got.len(),
                    expected.len(),
                    "{backend:?} {name} {res:?}: bucket count"
                );
                for (bucket, agg) in &got {
                    let (want, values) = &expected[bucket];
                    assert_eq!(agg.count, want.count, "{backend:?} {name} {res:?} {bucket}");
                    assert_eq!(agg.min, want.min);
                    assert_eq!(agg.max, want.max);
                    assert!(
                        (agg.sum - want.sum).abs() <= 1e-9 * want.sum.abs().max(1.0),
                        "{} vs {}",
                        agg.sum,
                        want.sum
                    );
                    for (aggregate, q) in [(Aggregate::P50, 0.5), (Aggregate::P95, 0.95)] {
                        let exact = exact_quantile(values, q);
                        let est = agg.value(aggregate).unwrap();
                        assert!(
                            (est - exact).abs() <= 0.01 * exact.abs() + 1e-9,
                            "{backend:?} {name} {res:?} {q}: {est} vs {exact}"
                        );
                    }
                }
            }
        }
        // Grand total: every record exactly once.
        let series = series_id(&store, "dev-late", "cpu").await;
        assert_eq!(
            store
                .series_points(series, 0, i64::MAX, 100_000)
                .await
                .unwrap()
                .len(),
            1800
        );
    })
    .await;
}

#[tokio::test]
async fn bad_records_are_rejected_with_reasons_and_the_rest_stored() {
    each_backend(|store, backend, _| async move {
        let settings = TelemetrySettings {
            max_series_per_device: 3,
            ..Default::default()
        };
        let devs = devices(store.clone(), settings.clone());
        let now = now_ms();
        let b = batch(
            "boot",
            vec![
                metric(1, now, "cpu", 1.0),
                metric(2, now + settings.max_future_ms + HOUR, "cpu", 1.0),
                metric(3, now - settings.raw_retention_ms - HOUR, "cpu", 1.0),
                metric(4, 0, "cpu", 1.0),
                metric(5, now, "cpu", f64::NAN),
                metric(6, now, "cpu", f64::NEG_INFINITY),
                metric(7, now, "not ok", 1.0),
                metric(8, now, "mem", 1.0),
                metric(9, now, "disk", 1.0),
                metric(10, now, "fourth", 1.0),
                metric(11, now, "fifth", 1.0),
                metric(12, now, "mem", 2.0),
            ],
        );
        let ack = devs.ingest_telemetry("dev-bad", &b).await.unwrap();
        assert_eq!(ack.up_to_seq, 12, "rejected records are acknowledged too");
        let reasons: Vec<(u64, &str)> = ack
            .rejected
            .iter()
            .map(|r| (r.seq, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (2, "in_the_future"),
                (3, "too_old"),
                (4, "too_old"),
                (5, "not_a_number"),
                (6, "not_a_number"),
                (7, "bad_name"),
                (10, "cardinality_limit"),
                (11, "cardinality_limit"),
            ],
            "{backend:?}"
        );
        let mut names: Vec<String> = store
            .device_series("dev-bad")
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        names.sort();
        assert_eq!(names, ["cpu", "disk", "mem"]);
        let mem = series_id(&store, "dev-bad", "mem").await;
        assert_eq!(
            store
                .series_points(mem, 0, i64::MAX, 100)
                .await
                .unwrap()
                .len(),
            2
        );
        // Still at the limit in a later batch; known names still flow.
        let ack = devs
            .ingest_telemetry(
                "dev-bad",
                &batch(
                    "boot",
                    vec![metric(13, now, "sixth", 1.0), metric(14, now, "cpu", 2.0)],
                ),
            )
            .await
            .unwrap();
        assert_eq!(ack.rejected.len(), 1);
        assert_eq!(ack.rejected[0].reason, "cardinality_limit");
        // Another device has its own limit.
        let ack = devs
            .ingest_telemetry(
                "dev-other",
                &batch("boot", vec![metric(1, now, "fourth", 1.0)]),
            )
            .await
            .unwrap();
        assert!(ack.rejected.is_empty());
        // A batch over the protocol limit is refused whole.
        let huge = batch(
            "boot",
            (1..=drover_proto::telemetry::MAX_BATCH_RECORDS as u64 + 1)
                .map(|i| metric(100 + i, now, "cpu", 1.0))
                .collect(),
        );
        let err = devs.ingest_telemetry("dev-bad", &huge).await.unwrap_err();
        assert!(matches!(err, IngestError::Batch(_)), "{err}");
        assert!(err.to_string().contains("at most 500 records"), "{err}");
        let cpu = series_id(&store, "dev-bad", "cpu").await;
        assert_eq!(
            store
                .series_points(cpu, 0, i64::MAX, 1000)
                .await
                .unwrap()
                .len(),
            2,
            "nothing of the huge batch stored"
        );
    })
    .await;
}

#[tokio::test]
async fn dropped_counts_are_kept_per_device_and_not_counted_twice() {
    each_backend(|store, backend, _| async move {
        let devs = devices(store.clone(), TelemetrySettings::default());
        let now = now_ms();
        let mut b = batch("boot", vec![metric(1, now, "cpu", 1.0)]);
        b.dropped = 40;
        devs.ingest_telemetry("dev-d", &b).await.unwrap();
        devs.ingest_telemetry("dev-d", &b).await.unwrap();
        let mut empty = batch("boot", vec![]);
        empty.dropped = 2;
        let ack = devs.ingest_telemetry("dev-d", &empty).await.unwrap();
        assert_eq!(ack.up_to_seq, 0);
        let t = store.device_telemetry("dev-d").await.unwrap();
        assert_eq!(
            t.dropped_total, 42,
            "{backend:?}: the resent batch's drops are not added again"
        );
        assert_eq!(t.series, 1);
        assert!(t.last_batch_at.is_some());
    })
    .await;
}

#[tokio::test]
async fn events_are_stored_once_in_time_order() {
    each_backend(|store, backend, _| async move {
        let devs = devices(store.clone(), TelemetrySettings::default());
        let now = now_ms();
        let event = |seq: u64, t: i64, msg: &str| Record {
            body: RecordBody::Event {
                name: "service.crash".into(),
                severity: "critical".into(),
                message: msg.into(),
            },
            ..metric(seq, t, "x", 0.0)
        };
        let b = batch(
            "boot",
            vec![
                event(2, now - 1000, "second"),
                event(1, now - 2000, "first"),
                metric(3, now, "cpu", 1.0),
            ],
        );
        devs.ingest_telemetry("dev-e", &b).await.unwrap();
        devs.ingest_telemetry("dev-e", &b).await.unwrap();
        let events = store
            .device_events("dev-e", 0, i64::MAX, 100)
            .await
            .unwrap();
        let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["first", "second"], "{backend:?}");
        assert_eq!(events[0].severity, "critical");
    })
    .await;
}

#[tokio::test]
async fn a_store_reopened_mid_upload_ends_with_every_point_exactly_once() {
    each_backend(|store, backend, url| async move {
        let t0 = now_ms() - 3 * HOUR;
        let batches: Vec<TelemetryBatch> = (0..8u64)
            .map(|b| {
                batch(
                    "boot",
                    (1..=250)
                        .map(|i| {
                            metric(
                                b * 250 + i,
                                t0 + (b * 250 + i) as i64 * 1000,
                                "cpu",
                                (i % 17) as f64,
                            )
                        })
                        .collect(),
                )
            })
            .collect();
        {
            let devs = devices(store.clone(), TelemetrySettings::default());
            for b in &batches[..5] {
                devs.ingest_telemetry("dev-r", b).await.unwrap();
            }
            store.close().await;
            // The server "dies" here: what was acknowledged is committed.
            assert!(
                devs.ingest_telemetry("dev-r", &batches[5]).await.is_err(),
                "{backend:?}: a closed store acks nothing"
            );
        }
        let store = Arc::new(SqlStore::connect(&url).await.unwrap());
        let devs = devices(store.clone(), TelemetrySettings::default());
        // The device never got acks for batches 5.. and resends from 3 on
        // (an ack lost on the way as well).
        for b in &batches[3..] {
            let ack = devs.ingest_telemetry("dev-r", b).await.unwrap();
            assert_eq!(ack.up_to_seq, b.records.last().unwrap().seq);
        }
        let series = series_id(&store, "dev-r", "cpu").await;
        let points = store
            .series_points(series, 0, i64::MAX, 100_000)
            .await
            .unwrap();
        assert_eq!(points.len(), 2000, "{backend:?}");
        let seqs: Vec<i64> = points.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, (1..=2000).collect::<Vec<_>>());
        let read = AggregateRead {
            groups: vec![vec![series]],
            resolution: Resolution::Hour,
            since_ms: 0,
            until_ms: i64::MAX / 2,
            step_ms: HOUR,
            sketches: false,
        };
        let counted: u64 = store.aggregate(&read).await.unwrap()[0]
            .iter()
            .map(|(_, a)| a.count)
            .sum();
        assert_eq!(
            counted, 2000,
            "{backend:?}: rollups counted each point once"
        );
    })
    .await;
}

#[tokio::test]
async fn retention_removes_raw_points_before_rollups() {
    each_backend(|store, backend, _| async move {
        let devs = devices(store.clone(), TelemetrySettings::default());
        let now = now_ms();
        devs.ingest_telemetry(
            "dev-p",
            &batch(
                "boot",
                (1..=60)
                    .map(|i| metric(i, now - HOUR + i as i64 * 1000, "cpu", 1.0))
                    .collect(),
            ),
        )
        .await
        .unwrap();
        let series = series_id(&store, "dev-p", "cpu").await;
        let count = |res: Resolution, width: i64| {
            let store = store.clone();
            async move {
                let read = AggregateRead {
                    groups: vec![vec![series]],
                    resolution: res,
                    since_ms: 0,
                    until_ms: i64::MAX / 2,
                    step_ms: width,
                    sketches: false,
                };
                store.aggregate(&read).await.unwrap()[0]
                    .iter()
                    .map(|(_, a)| a.count)
                    .sum::<u64>()
            }
        };
        let r = devs.prune_telemetry(now).await.unwrap();
        assert_eq!(r.points, 0, "{backend:?}: nothing expired yet");
        let r = devs.prune_telemetry(now + 8 * 24 * HOUR).await.unwrap();
        assert_eq!(r.points, 60, "{backend:?}");
        assert_eq!(count(Resolution::Raw, 1000).await, 0);
        assert_eq!(
            count(Resolution::Minute, MIN).await,
            60,
            "1-minute rollups outlive raw points"
        );
        let r = devs.prune_telemetry(now + 31 * 24 * HOUR).await.unwrap();
        assert!(r.minute_rows >= 1);
        assert_eq!(count(Resolution::Minute, MIN).await, 0);
        assert_eq!(
            count(Resolution::Hour, HOUR).await,
            60,
            "1-hour rollups outlive both"
        );
        devs.prune_telemetry(now + 400 * 24 * HOUR).await.unwrap();
        assert_eq!(count(Resolution::Hour, HOUR).await, 0);
    })
    .await;
}

#[test]
fn sketches_stored_in_rollups_decode() {
    let mut s = Sketch::new();
    s.add(1.5);
    assert_eq!(Sketch::decode(&s.encode()).unwrap(), s);
}

// ---- the metrics API over several devices ----

fn device(id: &str, tags: &[(&str, &str)]) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        public_key: format!("key-{id}"),
        enrollment: Enrollment::Accepted,
        hostname: None,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
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

async fn get(app: &axum::Router, token: &str, uri: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn aggregates_by_tag_over_several_devices_and_history_in_order() {
    each_backend(|store, backend, _| async move {
        let state = AppState::for_tests(store.clone());
        let app = router(state.clone());
        let m = mint_token();
        store
            .create_token(
                &TokenRecord {
                    id: m.id.clone(),
                    name: "viewer".into(),
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
        let token = m.bearer;
        // Four devices: two in eu (cpu 10 and 30), one in us (cpu 50), one
        // without a region (cpu 70); one eu device is in a static group.
        let ids = [
            "00000000000000000000aa01",
            "00000000000000000000aa02",
            "00000000000000000000aa03",
            "00000000000000000000aa04",
        ];
        let tags: [&[(&str, &str)]; 4] = [
            &[("region", "eu")],
            &[("region", "eu")],
            &[("region", "us")],
            &[],
        ];
        let mut changes: Vec<Change> = ids
            .iter()
            .zip(tags)
            .map(|(id, t)| Change::PutDevice {
                device: device(id, t),
                expected_version: None,
            })
            .collect();
        changes.push(Change::PutGroup {
            group: drover_server::store::GroupRecord {
                name: "eu-gateways".into(),
                query: None,
                members: vec![ids[0].into()],
                desired: Default::default(),
                created_at: 1,
                updated_at: 1,
                version: 1,
            },
            expected_version: None,
        });
        assert!(store.apply(&changes, None).await.unwrap());
        let t0 = now_ms() - 30 * MIN;
        for (n, id) in ids.iter().enumerate() {
            let base = 10.0 + 20.0 * n as f64;
            // 10 minutes at 10 s; values base-1, base, base+1 repeating.
            let records = (0..60u64)
                .rev()
                .map(|i| {
                    metric(
                        i + 1,
                        t0 + i as i64 * 10_000,
                        "cpu",
                        base + (i % 3) as f64 - 1.0,
                    )
                })
                .collect();
            let ack = state
                .devices
                .ingest_telemetry(id, &batch("b", records))
                .await
                .unwrap();
            assert!(ack.rejected.is_empty());
        }
        let q = enc("avg(cpu) by tag.region");
        let (s, body) = get(
            &app,
            &token,
            &format!("/api/v1/metrics/query?q={q}&since=1h&step=1h"),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend:?}: {body}");
        assert_eq!(body["source"], "1h", "a 1 h step reads the 1 h rollups");
        assert_eq!(body["query"], "avg(cpu) by tag.region");
        let series = body["series"].as_array().unwrap();
        let by_group: BTreeMap<String, (u64, f64, u64)> = series
            .iter()
            .map(|s| {
                let buckets = s["buckets"].as_array().unwrap();
                let count: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
                let weighted: f64 = buckets
                    .iter()
                    .map(|b| b["value"].as_f64().unwrap() * b["count"].as_f64().unwrap())
                    .sum();
                (
                    s["group"].as_str().unwrap_or("(none)").to_string(),
                    (
                        s["devices"].as_u64().unwrap(),
                        weighted / count as f64,
                        count,
                    ),
                )
            })
            .collect();
        assert_eq!(by_group.len(), 3, "{body}");
        assert_eq!(by_group["eu"].0, 2);
        assert!((by_group["eu"].1 - 20.0).abs() < 1e-9, "{body}");
        assert_eq!(by_group["eu"].2, 120);
        assert!((by_group["us"].1 - 50.0).abs() < 1e-9);
        assert!((by_group["(none)"].1 - 70.0).abs() < 1e-9);

        // `where` with a group, 1-minute buckets, max.
        let q = enc(r#"max(cpu) where group = "eu-gateways""#);
        let (s, body) = get(
            &app,
            &token,
            &format!("/api/v1/metrics/query?q={q}&since=1h&step=1m"),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["matched_devices"], 1);
        let series = body["series"].as_array().unwrap();
        assert_eq!(series.len(), 1);
        let buckets = series[0]["buckets"].as_array().unwrap();
        assert!(buckets.len() >= 10 && buckets.len() <= 11, "{body}");
        // Values cycle 9, 10, 11: a bucket with three or more points has max 11.
        assert!(
            buckets
                .iter()
                .all(|b| b["value"] == 11.0 || b["count"].as_u64().unwrap() < 3),
            "{body}"
        );
        let points: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(points, 60, "{body}");
        let starts: Vec<i64> = buckets
            .iter()
            .map(|b| b["start_ms"].as_i64().unwrap())
            .collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]) && starts.iter().all(|s| s % MIN == 0));

        // p95 by device over the 1-minute rollups (a 6 h range).
        let q = enc("p95(cpu) by device where tag.region = eu");
        let (s, body) = get(
            &app,
            &token,
            &format!("/api/v1/metrics/query?q={q}&since=6h"),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["source"], "1m");
        let series = body["series"].as_array().unwrap();
        let groups: Vec<&str> = series
            .iter()
            .map(|s| s["group"].as_str().unwrap())
            .collect();
        assert_eq!(groups, [ids[0], ids[1]]);
        for (s, want) in series.iter().zip([11.0, 31.0]) {
            // Full minutes hold two each of base-1, base, base+1: p95 is base+1.
            let full: Vec<f64> = s["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["count"] == 6)
                .map(|b| b["value"].as_f64().unwrap())
                .collect();
            assert!(full.len() >= 9, "{body}");
            for v in full {
                assert!((v - want).abs() <= 0.01 * want, "{v} vs {want}");
            }
        }

        // Parse errors: 400 with the column and the reason.
        let q = enc("avg(cpu) by tag.region where tag.x == y");
        let (s, body) = get(&app, &token, &format!("/api/v1/metrics/query?q={q}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_query");
        assert_eq!(body["error"]["column"], 36, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("invalid query: column 36:"),
            "{body}"
        );
        let (s, body) = get(
            &app,
            &token,
            &format!("/api/v1/metrics/query?q={}", enc("median(cpu)")),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["column"], 1);
        assert!(
            body["error"]["reason"]
                .as_str()
                .unwrap()
                .contains("unknown aggregate"),
            "{body}"
        );
        let (s, body) = get(
            &app,
            &token,
            &format!(
                "/api/v1/metrics/query?q={}&since=6h&step=10s",
                enc("avg(cpu)")
            ),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("multiple of 1m"),
            "{body}"
        );

        // One device's history, in time order although sent newest first.
        let (s, body) = get(
            &app,
            &token,
            &format!("/api/v1/devices/{}/metrics?name=cpu&since=1h", ids[2]),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let times: Vec<i64> = body["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["time_ms"].as_i64().unwrap())
            .collect();
        assert_eq!(times, (0..60).map(|i| t0 + i * 10_000).collect::<Vec<_>>());
        assert_eq!(body["points"][0]["clock"], "synced");
        let (s, body) = get(&app, &token, &format!("/api/v1/devices/{}/metrics", ids[2])).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body["names"], serde_json::json!(["cpu"]));
        let (s, _) = get(
            &app,
            &token,
            "/api/v1/devices/00000000000000000000ffff/metrics?name=cpu",
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn values_and_labels_come_back_exactly() {
    each_backend(|store, backend, _| async move {
        let devs = devices(store.clone(), TelemetrySettings::default());
        let now = now_ms();
        let values = [
            0.1 + 0.2,
            1.0 / 3.0,
            -1e-300,
            1.7976931348623157e308,
            123456.789,
            -2.5,
            5e-324,
        ];
        let mut records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| metric(i as u64 + 1, now - 1000 + i as i64, "v", *v))
            .collect();
        records[0]
            .labels
            .insert("path".into(), "/var/\"log\"\\ü".into());
        devs.ingest_telemetry("dev-v", &batch("boot", records))
            .await
            .unwrap();
        let series = series_id(&store, "dev-v", "v").await;
        let points = store.series_points(series, 0, i64::MAX, 100).await.unwrap();
        let got: Vec<u64> = points.iter().map(|p| p.value.to_bits()).collect();
        let want: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "{backend:?}");
        assert_eq!(
            points[0].labels.as_deref(),
            Some(r#"{"path":"/var/\"log\"\\ü"}"#)
        );
    })
    .await;
}
