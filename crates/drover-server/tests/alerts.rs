//! Alerts (docs/monitoring.md, "Alerts"), on every backend, with the
//! evaluator driven at chosen times: a metric rule pending then firing
//! after its `for` and resolving, an offline rule, a reboot-percentage
//! rule, acknowledgements and history through the API, rejected rules,
//! signed webhooks delivered to a real local receiver with retries and no
//! loss across a restart, and the fleet gauges of `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use drover_proto::alerts::WebhookPayload;
use drover_proto::api::{AuditOutcome, Role};
use drover_proto::telemetry::{ClockQuality, Priority, Record, RecordBody, TelemetryBatch};
use drover_server::alerts::{AlertSettings, Alerting, webhook};
use drover_server::api::{AppState, router};
use drover_server::auth::mint_token;
use drover_server::clock::now_ms;
use drover_server::devices::Devices;
use drover_server::store::alerts::{AlertState, AlertStore};
use drover_server::store::{
    Change, DeploymentRecord, DeviceRecord, Enrollment, GroupRecord, NewAudit, ReleaseRecord,
    ReleaseStore, SqlStore, Store, TelemetryStore, TokenRecord,
};
use drover_testkit::Backend;
use serde_json::{Value, json};
use tower::ServiceExt;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const SECRET: &str = "0123456789abcdef-test-secret";

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

fn alerting(store: Arc<SqlStore>) -> (Arc<Devices>, Alerting) {
    let (ca, _) = drover_server::pki::FleetCa::generate().unwrap();
    let devices = Arc::new(Devices::new(store, Arc::new(ca), Default::default()));
    let a = Alerting::new(devices.clone(), AlertSettings::default());
    (devices, a)
}

fn device(id: &str, last_seen: Option<i64>, version: Option<&str>) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        public_key: format!("key-{id}"),
        enrollment: Enrollment::Accepted,
        hostname: Some(format!("host-{id}")),
        tags: Default::default(),
        inventory: Default::default(),
        inventory_hash: None,
        desired: Default::default(),
        reported: None,
        agent_version: version.map(str::to_string),
        cert_serial: None,
        cert_not_after: None,
        enrolled_via: None,
        created_at: 0,
        updated_at: 0,
        last_seen,
        version: 0,
    }
}

async fn put(store: &SqlStore, d: DeviceRecord) {
    let ok = store
        .apply(
            &[Change::PutDevice {
                device: d,
                expected_version: None,
            }],
            None,
        )
        .await
        .unwrap();
    assert!(ok);
}

async fn token(store: &SqlStore, role: Role) -> String {
    let m = mint_token();
    store
        .create_token(
            &TokenRecord {
                id: m.id.clone(),
                name: format!("{role:?}").to_lowercase(),
                role,
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
    m.bearer
}

async fn call(
    app: &axum::Router,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let resp = app
        .clone()
        .oneshot(
            req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn cpu_batch(boot: &str, from_seq: u64, points: &[(i64, f64)]) -> TelemetryBatch {
    TelemetryBatch {
        boot_id: boot.into(),
        dropped: 0,
        records: points
            .iter()
            .enumerate()
            .map(|(i, (t, v))| Record {
                seq: from_seq + i as u64,
                time_ms: *t,
                mono_ms: i as u64,
                clock: ClockQuality::Synced,
                priority: Priority::Low,
                labels: Default::default(),
                body: RecordBody::Metric {
                    name: "cpu".into(),
                    value: *v,
                },
            })
            .collect(),
    }
}

async fn history(store: &SqlStore, id: i64) -> Vec<String> {
    store
        .alert_history(id)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.state)
        .collect()
}

#[tokio::test]
async fn a_metric_alert_fires_after_its_for_duration_and_resolves() {
    each_backend(|store, backend, _| async move {
        let (devices, alerting) = alerting(store.clone());
        let (hot, cool) = ("00000000000000000000bb01", "00000000000000000000bb02");
        put(&store, device(hot, Some(now_ms()), None)).await;
        put(&store, device(cool, Some(now_ms()), None)).await;
        // 30 minutes of cpu every 30 s: `hot` at 95 for 20 minutes then 20,
        // `cool` at 10 throughout.
        let t0 = now_ms() - 30 * MIN;
        let hot_points: Vec<(i64, f64)> = (0..60)
            .map(|i| (t0 + i * 30_000, if i < 40 { 95.0 } else { 20.0 }))
            .collect();
        let cool_points: Vec<(i64, f64)> = (0..60).map(|i| (t0 + i * 30_000, 10.0)).collect();
        devices
            .ingest_telemetry(hot, &cpu_batch("boot-h", 1, &hot_points))
            .await
            .unwrap();
        devices
            .ingest_telemetry(cool, &cpu_batch("boot-c", 1, &cool_points))
            .await
            .unwrap();

        let admin = token(&store, Role::Operator).await;
        let app = router(AppState::for_tests(store.clone()));
        let (status, rule) = call(
            &app,
            &admin,
            Method::POST,
            "/api/v1/alert-rules",
            Some(
                &json!({"name": "hot-cpu", "for": "10m", "condition": {"type": "metric",
                    "query": "p95(cpu) by device", "window": "5m", "op": ">", "threshold": 90}})
                .to_string(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{backend:?}: {rule}");
        assert_eq!(rule["for_ms"], 600_000);

        let r = alerting.evaluate_at(t0 + MIN).await.unwrap();
        assert_eq!((r.opened, r.fired), (1, 0), "{backend:?}: pending first");
        let open = store.open_alerts().await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].key, hot);
        assert_eq!(open[0].state, AlertState::Pending);
        let id = open[0].id;

        let r = alerting.evaluate_at(t0 + 6 * MIN).await.unwrap();
        assert_eq!(r.fired, 0, "{backend:?}: 5 minutes is not 10");
        let r = alerting.evaluate_at(t0 + 11 * MIN).await.unwrap();
        assert_eq!(r.fired, 1, "{backend:?}: fires once `for` has passed");
        let a = store.get_alert(id).await.unwrap().unwrap();
        assert_eq!(a.state, AlertState::Firing);
        assert_eq!(a.fired_at, Some(t0 + 11 * MIN));
        assert_eq!(a.value, Some(95.0), "{backend:?}: p95 of 95s is 95");
        let labels: BTreeMap<String, String> = serde_json::from_str(&a.labels).unwrap();
        assert_eq!(labels["device"], hot);

        // Still hot: nothing changes.
        let r = alerting.evaluate_at(t0 + 15 * MIN).await.unwrap();
        assert_eq!((r.opened, r.fired, r.resolved), (0, 0, 0));
        // From t0+20m the device runs at 20; the 5-minute window after
        // t0+26m holds only those.
        let r = alerting.evaluate_at(t0 + 26 * MIN).await.unwrap();
        assert_eq!(r.resolved, 1, "{backend:?}");
        let a = store.get_alert(id).await.unwrap().unwrap();
        assert_eq!(a.state, AlertState::Resolved);
        assert_eq!(a.resolved_at, Some(t0 + 26 * MIN));
        assert_eq!(
            history(&store, id).await,
            ["pending", "firing", "resolved"],
            "{backend:?}"
        );

        // The API shows it with its history, and filters by state.
        let (status, body) = call(
            &app,
            &admin,
            Method::GET,
            "/api/v1/alerts?state=resolved",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["alerts"].as_array().unwrap().len(), 1);
        let (_, body) = call(
            &app,
            &admin,
            Method::GET,
            "/api/v1/alerts?state=firing",
            None,
        )
        .await;
        assert!(body["alerts"].as_array().unwrap().is_empty());
        let (status, body) = call(
            &app,
            &admin,
            Method::GET,
            &format!("/api/v1/alerts/{id}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let states: Vec<&str> = body["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["pending", "firing", "resolved"]);
        assert_eq!(body["alert"]["rule_name"], "hot-cpu");
    })
    .await;
}

#[tokio::test]
async fn a_pending_alert_that_ends_before_its_for_never_fires() {
    each_backend(|store, backend, _| async move {
        let (devices, alerting) = alerting(store.clone());
        let d = "00000000000000000000bc01";
        put(&store, device(d, Some(now_ms()), None)).await;
        let t0 = now_ms() - 20 * MIN;
        // Hot for 3 minutes only.
        let points: Vec<(i64, f64)> = (0..40)
            .map(|i| (t0 + i * 30_000, if i < 6 { 99.0 } else { 5.0 }))
            .collect();
        devices
            .ingest_telemetry(d, &cpu_batch("boot", 1, &points))
            .await
            .unwrap();
        let admin = token(&store, Role::Operator).await;
        let app = router(AppState::for_tests(store.clone()));
        let (status, _) = call(
            &app,
            &admin,
            Method::POST,
            "/api/v1/alert-rules",
            Some(
                &json!({"name": "blip", "for": "10m", "condition": {"type": "metric",
                "query": "max(cpu)", "window": "1m", "threshold": 90}})
                .to_string(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let r = alerting.evaluate_at(t0 + MIN).await.unwrap();
        assert_eq!(r.opened, 1, "{backend:?}");
        let r = alerting.evaluate_at(t0 + 5 * MIN).await.unwrap();
        assert_eq!(r.dropped, 1, "{backend:?}");
        assert!(
            store.list_alerts(None, 10).await.unwrap().is_empty(),
            "{backend:?}: no history of a blip"
        );
    })
    .await;
}

#[tokio::test]
async fn the_offline_rule_fires_for_a_silent_device_and_resolves_when_it_is_heard_again() {
    each_backend(|store, backend, _| async move {
        let (_devices, alerting) = alerting(store.clone());
        let t = now_ms();
        let (silent, fine) = ("00000000000000000000cc01", "00000000000000000000cc02");
        put(&store, device(silent, Some(t - 20 * MIN), None)).await;
        put(&store, device(fine, Some(t - MIN), None)).await;
        let admin = token(&store, Role::Operator).await;
        let app = router(AppState::for_tests(store.clone()));
        let (status, body) = call(
            &app,
            &admin,
            Method::POST,
            "/api/v1/alert-rules",
            Some(
                &json!({"name": "offline", "condition": {"type": "offline", "silent_for": "15m"}})
                    .to_string(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");

        let r = alerting.evaluate_at(t).await.unwrap();
        assert_eq!(
            (r.opened, r.fired),
            (1, 1),
            "{backend:?}: no `for`: fires at once"
        );
        let firing = store
            .list_alerts(Some(AlertState::Firing), 10)
            .await
            .unwrap();
        assert_eq!(firing.len(), 1);
        assert_eq!(firing[0].key, silent);
        assert_eq!(
            firing[0].value,
            Some(1200.0),
            "{backend:?}: seconds of silence"
        );
        // Still silent a minute later: the same alert, not a new one.
        let r = alerting.evaluate_at(t + MIN).await.unwrap();
        assert_eq!((r.opened, r.fired, r.resolved), (0, 0, 0));

        store
            .touch_devices(&[(silent.to_string(), t + 2 * MIN)])
            .await
            .unwrap();
        let r = alerting.evaluate_at(t + 3 * MIN).await.unwrap();
        assert_eq!(r.resolved, 1, "{backend:?}");
        assert!(store.open_alerts().await.unwrap().is_empty());
        assert_eq!(history(&store, firing[0].id).await, ["firing", "resolved"]);
    })
    .await;
}

#[tokio::test]
async fn the_reboot_rule_counts_the_share_of_a_group_that_rebooted() {
    each_backend(|store, backend, _| async move {
        let (_devices, alerting) = alerting(store.clone());
        let t = now_ms();
        let ids: Vec<String> = (1..=4)
            .map(|i| format!("00000000000000000000dd0{i}"))
            .collect();
        for id in &ids {
            put(&store, device(id, Some(t), None)).await;
        }
        put(&store, device("00000000000000000000dd09", Some(t), None)).await;
        let group = GroupRecord {
            name: "edge".into(),
            query: None,
            members: ids.clone(),
            desired: Default::default(),
            created_at: t,
            updated_at: t,
            version: 0,
        };
        assert!(
            store
                .apply(
                    &[Change::PutGroup {
                        group,
                        expected_version: None
                    }],
                    None
                )
                .await
                .unwrap()
        );
        // dd01 rebooted 10 minutes ago; dd02 was first seen then (its first
        // boot: not a reboot); dd03 rebooted 2 hours ago; dd09 (not in the
        // group) rebooted too.
        store.boot_key(&ids[0], "b1", t - 3 * HOUR).await.unwrap();
        store.boot_key(&ids[0], "b2", t - 10 * MIN).await.unwrap();
        store.boot_key(&ids[1], "b1", t - 10 * MIN).await.unwrap();
        store.boot_key(&ids[2], "b1", t - 3 * HOUR).await.unwrap();
        store.boot_key(&ids[2], "b2", t - 2 * HOUR).await.unwrap();
        store
            .boot_key("00000000000000000000dd09", "b1", t - 3 * HOUR)
            .await
            .unwrap();
        store
            .boot_key("00000000000000000000dd09", "b2", t - 5 * MIN)
            .await
            .unwrap();

        let admin = token(&store, Role::Operator).await;
        let app = router(AppState::for_tests(store.clone()));
        let (status, body) = call(
            &app,
            &admin,
            Method::POST,
            "/api/v1/alert-rules",
            Some(
                &json!({"name": "reboots", "condition": {"type": "reboots", "group": "edge",
                "window": "1h", "op": ">", "threshold": 20}})
                .to_string(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, _) = call(
            &app,
            &admin,
            Method::POST,
            "/api/v1/alert-rules",
            Some(
                &json!({"name": "reboots-strict", "condition": {"type": "reboots", "group": "edge",
                "window": "1h", "op": ">", "threshold": 25}})
                .to_string(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);

        let r = alerting.evaluate_at(t).await.unwrap();
        assert_eq!(
            r.fired, 1,
            "{backend:?}: 1 of 4 is 25 %: above 20, not above 25"
        );
        let a = &store
            .list_alerts(Some(AlertState::Firing), 10)
            .await
            .unwrap()[0];
        assert_eq!(a.rule_name, "reboots");
        assert_eq!(a.key, "edge");
        assert_eq!(a.value, Some(25.0));
        let labels: BTreeMap<String, String> = serde_json::from_str(&a.labels).unwrap();
        assert_eq!(
            (labels["rebooted"].as_str(), labels["devices"].as_str()),
            ("1", "4")
        );
        // An hour later the reboot left the window.
        let r = alerting.evaluate_at(t + HOUR).await.unwrap();
        assert_eq!(r.resolved, 1, "{backend:?}");
    })
    .await;
}

#[tokio::test]
async fn an_alert_is_acknowledged_once_with_who_and_when_and_audited() {
    each_backend(|store, backend, _| async move {
        let (_devices, alerting) = alerting(store.clone());
        let t = now_ms();
        put(
            &store,
            device("00000000000000000000ee01", Some(t - HOUR), None),
        )
        .await;
        let operator = token(&store, Role::Operator).await;
        let viewer = token(&store, Role::Viewer).await;
        let app = router(AppState::for_tests(store.clone()));
        let (status, _) = call(
            &app,
            &operator,
            Method::POST,
            "/api/v1/alert-rules",
            Some(
                &json!({"name": "offline", "condition": {"type": "offline", "silent_for": "15m"}})
                    .to_string(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        alerting.evaluate_at(t).await.unwrap();
        let id = store.open_alerts().await.unwrap()[0].id;

        let (status, _) = call(
            &app,
            &viewer,
            Method::POST,
            &format!("/api/v1/alerts/{id}/ack"),
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{backend:?}: viewers cannot ack"
        );
        let (status, body) = call(
            &app,
            &operator,
            Method::POST,
            &format!("/api/v1/alerts/{id}/ack"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["acked_by"], "operator");
        let first_at = body["acked_at"].clone();
        assert!(first_at.is_string());
        let (_, again) = call(
            &app,
            &operator,
            Method::POST,
            &format!("/api/v1/alerts/{id}/ack"),
            None,
        )
        .await;
        assert_eq!(
            again["acked_at"], first_at,
            "{backend:?}: the first ack stays"
        );
        assert_eq!(history(&store, id).await, ["firing", "acked"]);
        let (status, _) = call(
            &app,
            &operator,
            Method::POST,
            "/api/v1/alerts/999999/ack",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let audit = store
            .list_audit(&drover_server::store::AuditQuery {
                action: Some("alerts.ack".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            audit
                .iter()
                .any(|a| a.entry.target.as_deref() == Some(&id.to_string())
                    && a.entry.outcome == AuditOutcome::Success)
        );
        // Viewers read.
        let (status, _) = call(
            &app,
            &viewer,
            Method::GET,
            &format!("/api/v1/alerts/{id}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = call(&app, &viewer, Method::GET, "/api/v1/alert-rules", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["rules"][0]["name"], "offline");
    })
    .await;
}

#[tokio::test]
async fn bad_rules_are_refused_with_what_to_change() {
    each_backend(|store, backend, _| async move {
        let operator = token(&store, Role::Operator).await;
        let viewer = token(&store, Role::Viewer).await;
        let app = router(AppState::for_tests(store.clone()));
        let post = |body: String| {
            let app = app.clone();
            let operator = operator.clone();
            async move { call(&app, &operator, Method::POST, "/api/v1/alert-rules", Some(&body)).await }
        };
        let (status, body) = post(json!({"name": "q", "condition": {"type": "metric",
            "query": "p95(cpu) bye device", "window": "5m", "threshold": 90}}).to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{backend:?}");
        assert_eq!(body["error"]["code"], "invalid_query");
        assert_eq!(body["error"]["column"], 10, "{body}");

        let (status, body) = post(json!({"name": "g", "condition": {"type": "offline",
            "group": "nope", "silent_for": "15m"}}).to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"]["message"].as_str().unwrap().contains("unknown group \"nope\""), "{body}");

        // JSON has no NaN: the literal is refused as JSON, a huge number too.
        let (status, body) = post(r#"{"name": "n", "condition": {"type": "metric", "query": "avg(cpu)", "window": "5m", "threshold": NaN}}"#.into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_json", "{body}");
        let (status, _) = post(r#"{"name": "n", "condition": {"type": "metric", "query": "avg(cpu)", "window": "5m", "threshold": 1e999}}"#.into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, body) = post(json!({"name": "w", "condition": {"type": "offline", "silent_for": "15m"},
            "webhooks": [{"url": "ftp://example.com/hook", "secret": SECRET}]}).to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"]["message"].as_str().unwrap().contains("must start with https:// or http://"), "{body}");
        let (status, body) = post(json!({"name": "w", "condition": {"type": "offline", "silent_for": "15m"},
            "webhooks": [{"url": "https://example.com/hook", "secret": "short"}]}).to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"]["message"].as_str().unwrap().contains("too short"), "{body}");
        let (status, body) = post(json!({"name": "p", "condition": {"type": "reboots", "window": "1h", "threshold": 150}}).to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"]["message"].as_str().unwrap().contains("percentage"), "{body}");
        let (status, body) = post(json!({"name": "d", "condition": {"type": "offline", "silent_for": "soon"}}).to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"]["message"].as_str().unwrap().starts_with("silent_for"), "{body}");

        let good = json!({"name": "ok", "condition": {"type": "offline", "silent_for": "15m"}}).to_string();
        let (status, _) = call(&app, &viewer, Method::POST, "/api/v1/alert-rules", Some(&good)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{backend:?}: viewers cannot create rules");
        assert_eq!(post(good.clone()).await.0, StatusCode::CREATED);
        let (status, body) = post(good).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(store.list_alert_rules().await.unwrap().len() == 1, "{backend:?}: only the good rule");
        let (status, _) = call(&app, &operator, Method::DELETE, "/api/v1/alert-rules/ok", None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(&app, &operator, Method::DELETE, "/api/v1/alert-rules/ok", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    })
    .await;
}

/// Requests a receiver got: headers and body.
type Requests = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A webhook receiver on loopback: records each request, answers with
/// the status in `status`.
struct Receiver {
    got: Requests,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(addr: SocketAddr, status: u16) -> Receiver {
        let got: Requests = Default::default();
        let code = Arc::new(AtomicU16::new(status));
        let (g, c) = (got.clone(), code.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (g, c) = (g.clone(), c.clone());
                async move {
                    g.lock().unwrap().push((headers, body.to_vec()));
                    StatusCode::from_u16(c.load(Ordering::SeqCst)).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            got,
            status: code,
            task,
        }
    }
}

fn verified(headers: &HeaderMap, body: &[u8], now_secs: i64) -> WebhookPayload {
    let ts = headers["x-drover-timestamp"].to_str().unwrap();
    let sig = headers["x-drover-signature"].to_str().unwrap();
    assert!(
        webhook::verify(SECRET.as_bytes(), ts, body, sig, now_secs, 300),
        "the signature verifies"
    );
    assert!(!webhook::verify(
        b"another-secret-of-16",
        ts,
        body,
        sig,
        now_secs,
        300
    ));
    serde_json::from_slice(body).unwrap()
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_survive_a_restart() {
    each_backend(|store, backend, url| async move {
        // A free port with nobody listening yet: the receiver is down.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (_devices, alerting) = alerting(store.clone());
        let t = now_ms();
        let d = "00000000000000000000ff01";
        put(&store, device(d, Some(t - HOUR), None)).await;
        let operator = token(&store, Role::Operator).await;
        let app = router(AppState::for_tests(store.clone()));
        let (status, body) = call(
            &app,
            &operator,
            Method::POST,
            "/api/v1/alert-rules",
            Some(
                &json!({"name": "offline", "condition": {"type": "offline", "silent_for": "15m"},
                "webhooks": [{"url": format!("http://{addr}/hook"), "secret": SECRET}]})
                .to_string(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert!(
            body["webhooks"][0].get("secret").is_none(),
            "secrets never come back"
        );

        alerting.evaluate_at(t).await.unwrap();
        let id = store.open_alerts().await.unwrap()[0].id;
        let r = alerting.deliver_due(t).await.unwrap();
        assert_eq!(
            (r.delivered, r.retried),
            (0, 1),
            "{backend:?}: nobody listens"
        );
        let q = store.alert_deliveries(id).await.unwrap();
        assert_eq!((q[0].state.as_str(), q[0].attempts), ("pending", 1));
        assert!(
            q[0].last_error.as_deref().unwrap().starts_with("no answer"),
            "{:?}",
            q[0].last_error
        );
        assert_eq!(q[0].next_attempt_at, t + 2_000, "first backoff");

        // The server restarts: a new store connection and a new evaluator.
        drop(alerting);
        drop(app);
        store.close().await;
        let store = Arc::new(SqlStore::connect(&url).await.unwrap());
        let (_devices, alerting) = self::alerting(store.clone());
        let receiver = Receiver::start(addr, 500).await;
        assert_eq!(
            alerting.deliver_due(t + 1_000).await.unwrap(),
            Default::default(),
            "not due yet"
        );
        let r = alerting.deliver_due(t + 2_000).await.unwrap();
        assert_eq!(r.retried, 1, "{backend:?}: a 500 is retried");
        receiver.status.store(200, Ordering::SeqCst);
        let r = alerting.deliver_due(t + 6_000).await.unwrap();
        assert_eq!(r.delivered, 1, "{backend:?}: after 2 s then 4 s");
        assert_eq!(
            alerting.deliver_due(t + HOUR).await.unwrap(),
            Default::default(),
            "sent once"
        );

        let got = receiver.got.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "{backend:?}: the 500 and the success");
        let first = verified(&got[0].0, &got[0].1, (t + 2_000) / 1000);
        let second = verified(&got[1].0, &got[1].1, (t + 6_000) / 1000);
        assert_eq!(
            first.notification_id, second.notification_id,
            "same id on a retry"
        );
        assert_eq!(second.event, "firing");
        assert_eq!(second.alert.id, id);
        assert_eq!(second.alert.key, d);
        assert_eq!(second.at_ms, t);
        assert_eq!(got[1].0["x-drover-event"], "firing");
        let q = store.alert_deliveries(id).await.unwrap();
        assert_eq!((q[0].state.as_str(), q[0].attempts), ("delivered", 3));

        // Resolved notifies too.
        store
            .touch_devices(&[(d.to_string(), t + MIN)])
            .await
            .unwrap();
        assert_eq!(alerting.evaluate_at(t + 2 * MIN).await.unwrap().resolved, 1);
        assert_eq!(
            alerting.deliver_due(t + 2 * MIN).await.unwrap().delivered,
            1
        );
        let got = receiver.got.lock().unwrap().clone();
        let third = verified(&got[2].0, &got[2].1, (t + 2 * MIN) / 1000);
        assert_eq!(third.event, "resolved");
        assert_eq!(third.alert.state, "resolved");
        assert_ne!(third.notification_id, second.notification_id);
        receiver.task.abort();
    })
    .await;
}

#[tokio::test]
async fn a_notification_is_given_up_after_its_attempts() {
    each_backend(|store, backend, _| async move {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (devices, _) = alerting(store.clone());
        let alerting = Alerting::new(
            devices,
            AlertSettings {
                max_attempts: 3,
                ..Default::default()
            },
        );
        let t = now_ms();
        put(
            &store,
            device("00000000000000000000fe01", Some(t - HOUR), None),
        )
        .await;
        let operator = token(&store, Role::Operator).await;
        let app = router(AppState::for_tests(store.clone()));
        let (status, _) = call(
            &app,
            &operator,
            Method::POST,
            "/api/v1/alert-rules",
            Some(
                &json!({"name": "offline", "condition": {"type": "offline", "silent_for": "15m"},
                "webhooks": [{"url": format!("http://{addr}/hook"), "secret": SECRET}]})
                .to_string(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        alerting.evaluate_at(t).await.unwrap();
        let mut failed = 0;
        for at in [t, t + HOUR, t + 2 * HOUR, t + 3 * HOUR] {
            failed += alerting.deliver_due(at).await.unwrap().failed;
        }
        assert_eq!(failed, 1, "{backend:?}");
        let id = store.open_alerts().await.unwrap()[0].id;
        let q = store.alert_deliveries(id).await.unwrap();
        assert_eq!((q[0].state.as_str(), q[0].attempts), ("failed", 3));
    })
    .await;
}

#[tokio::test]
async fn the_fleet_gauges_count_devices_versions_alerts_and_updates() {
    each_backend(|store, backend, _| async move {
        let (devices, alerting) = alerting(store.clone());
        let t = now_ms();
        put(&store, device("00000000000000000000ab01", Some(t - HOUR), Some("1.0.0"))).await;
        put(&store, device("00000000000000000000ab02", Some(t - HOUR), Some("1.0.0"))).await;
        put(&store, device("00000000000000000000ab03", Some(t), None)).await;
        let mut pending = device("00000000000000000000ab04", None, None);
        pending.enrollment = Enrollment::Pending;
        put(&store, pending).await;
        let audit = NewAudit {
            at: t,
            actor: "test".into(),
            actor_name: "test".into(),
            action: "test".into(),
            target: None,
            method: "-".into(),
            path: "-".into(),
            status: 201,
            outcome: AuditOutcome::Success,
            detail: json!({}),
        };
        store
            .create_release(
                &ReleaseRecord {
                    id: "app@1".into(),
                    name: "app".into(),
                    version: "1".into(),
                    device_types: vec![],
                    manifest: "{}".into(),
                    key_list: None,
                    created_at: t,
                    created_by: None,
                },
                &audit,
            )
            .await
            .unwrap();
        store
            .create_deployment(
                &DeploymentRecord {
                    id: "dep1".into(),
                    release_id: "app@1".into(),
                    target: "group:all".into(),
                    allow_downgrade: false,
                    created_at: t,
                    created_by: None,
                },
                &["00000000000000000000ab01".into(), "00000000000000000000ab02".into()],
                &audit,
            )
            .await
            .unwrap();
        let operator = token(&store, Role::Operator).await;
        let app = router(AppState::for_tests(store.clone()));
        let (status, _) = call(&app, &operator, Method::POST, "/api/v1/alert-rules", Some(
            &json!({"name": "fleet-offline", "condition": {"type": "offline", "silent_for": "15m"}}).to_string())).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(alerting.evaluate_at(t).await.unwrap().fired, 2);

        let mut published = Default::default();
        drover_server::telemetry::fleet::refresh(&devices, &mut published).await.unwrap();
        let text = drover_server::telemetry::prometheus().render();
        let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")))
                .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        };
        let dev = |e, c| value("drover_fleet_devices", &[("enrollment", e), ("connection", c)]);
        assert_eq!(dev("accepted", "offline"), Some(3.0), "{backend:?}:\n{text}");
        assert_eq!(dev("accepted", "online"), Some(0.0));
        assert_eq!(dev("pending", "offline"), Some(1.0));
        assert_eq!(value("drover_fleet_agent_versions", &[("version", "1.0.0")]), Some(2.0));
        assert_eq!(value("drover_fleet_agent_versions", &[("version", "unknown")]), Some(1.0));
        assert_eq!(value("drover_alerts_firing", &[("rule", "fleet-offline")]), Some(2.0));
        assert_eq!(value("drover_fleet_update_devices", &[("state", "pending")]), Some(2.0));

        // A rule gone: its gauge drops to 0 rather than staying stale.
        let (status, _) = call(&app, &operator, Method::DELETE, "/api/v1/alert-rules/fleet-offline", None).await;
        assert_eq!(status, StatusCode::OK);
        drover_server::telemetry::fleet::refresh(&devices, &mut published).await.unwrap();
        let text = drover_server::telemetry::prometheus().render();
        let firing = text
            .lines()
            .find(|l| l.starts_with("drover_alerts_firing{") && l.contains("fleet-offline"))
            .unwrap();
        assert!(firing.ends_with(" 0"), "{backend:?}: {firing}");
    })
    .await;
}
