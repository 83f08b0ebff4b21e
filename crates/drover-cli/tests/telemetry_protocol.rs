//! Telemetry over the real control channel (docs/monitoring.md): a device
//! with a real certificate sends `telemetry` frames to an in-process server
//! and gets `telemetry_ack`s; resends after lost acks, reconnects and a
//! server restart store every point exactly once at its original time;
//! bad records are refused with reasons; oversized batches close the
//! channel with a reason.

use std::sync::Arc;
use std::time::Duration;

use drover_agent::enroll::request_certificate;
use drover_agent::identity::{Identity, ServerInfo};
use drover_proto::device::{AgentMessage, PROTOCOL_VERSION, ServerMessage, decode_server, encode};
use drover_proto::telemetry::{
    ClockQuality, Priority, Record, RecordBody, TelemetryAck, TelemetryBatch,
};
use drover_server::auth::mint_secret;
use drover_server::clock::now_ms;
use drover_server::devices::DeviceSettings;
use drover_server::store::{Change, EnrollTokenRecord};
use drover_server::{RunningServer, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn start(data: &std::path::Path) -> RunningServer {
    let mut cfg = ServerConfig::new(data.to_path_buf());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.devices = DeviceSettings {
        heartbeat_interval: Duration::from_secs(1),
        offline_after: Duration::from_secs(5),
        ..Default::default()
    };
    drover_server::start(cfg).await.unwrap()
}

/// Enrolls a fresh device with a one-off token.
async fn enroll(server: &RunningServer) -> Identity {
    let m = mint_secret("det_");
    let rec = EnrollTokenRecord {
        id: m.id,
        name: "t".into(),
        secret_hash: m.secret_hash,
        tags: Default::default(),
        uses_left: None,
        expires_at: None,
        created_at: 1,
        created_by: None,
        revoked_at: None,
        version: 1,
    };
    let change = Change::PutEnrollToken {
        token: rec,
        expected_version: None,
    };
    assert!(server.devices.store.apply(&[change], None).await.unwrap());
    let ca_pem = std::fs::read_to_string(server.data_dir.join("ca.crt")).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let r = request_certificate(&server.public_url, &ca_pem, &key, Some(m.bearer), None)
        .await
        .unwrap();
    Identity {
        device_id: r.device_id,
        server: ServerInfo {
            url: server.public_url.clone(),
            ca_fingerprint: server.ca_fingerprint.clone(),
            cert_expires_at_ms: None,
            cert_received_at_ms: None,
        },
        key: Arc::new(key),
        cert_pem: r.certificate_pem.unwrap_or_default(),
        ca_pem,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens the control channel to `url`, says hello and waits for the welcome.
async fn connect(url: &str, id: &Identity) -> Ws {
    let stream = drover_agent::https::connect_tls(url, id.tls().unwrap(), None)
        .await
        .unwrap();
    let req = format!("{}/v1/device/connect", url.replace("https://", "wss://"))
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    let hello = AgentMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        device_id: id.device_id.clone(),
        agent_version: "test".into(),
        inventory_hash: None,
        applied_revision: None,
    };
    ws.send(Message::Binary(encode(&hello).into()))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut ws).await,
        Some(ServerMessage::Welcome { .. })
    ));
    ws
}

/// The next protocol message, skipping control frames.
async fn next(ws: &mut Ws) -> Option<ServerMessage> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??
        {
            Ok(Message::Binary(b)) => return decode_server(&b).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// The next error, skipping desired-state pushes and other messages.
async fn error(ws: &mut Ws) -> Option<(String, String, bool)> {
    loop {
        match next(ws).await? {
            ServerMessage::Error {
                code,
                message,
                fatal,
            } => return Some((code, message, fatal)),
            _ => continue,
        }
    }
}

/// The next telemetry ack, skipping desired-state pushes and other messages.
async fn ack(ws: &mut Ws) -> TelemetryAck {
    loop {
        match next(ws).await {
            Some(ServerMessage::TelemetryAck(a)) => return a,
            Some(ServerMessage::Error { code, message, .. }) => panic!("error {code}: {message}"),
            Some(_) => continue,
            None => panic!("the channel closed before the ack"),
        }
    }
}

async fn send(ws: &mut Ws, batch: &TelemetryBatch) {
    ws.send(Message::Binary(
        encode(&AgentMessage::Telemetry(batch.clone())).into(),
    ))
    .await
    .unwrap();
}

fn metric(seq: u64, time_ms: i64, name: &str, value: f64) -> Record {
    Record {
        seq,
        time_ms,
        mono_ms: seq * 1000,
        clock: ClockQuality::Synced,
        priority: Priority::Low,
        labels: Default::default(),
        body: RecordBody::Metric {
            name: name.into(),
            value,
        },
    }
}

/// `n` batches of 200 `cpu` points at 10 s, starting `hours_ago`.
fn backlog(boot: &str, n: u64, hours_ago: i64) -> Vec<TelemetryBatch> {
    let t0 = now_ms() - hours_ago * 3_600_000;
    (0..n)
        .map(|b| TelemetryBatch {
            boot_id: boot.into(),
            records: (1..=200)
                .map(|i| {
                    let seq = b * 200 + i;
                    metric(seq, t0 + seq as i64 * 10_000, "cpu", (seq % 100) as f64)
                })
                .collect(),
            dropped: 0,
        })
        .collect()
}

/// Every stored `cpu` point of the device: (time, seq).
async fn stored(server: &RunningServer, device: &str) -> Vec<(i64, i64)> {
    let store = &server.devices.store;
    let Some((_, series)) = store
        .device_series(device)
        .await
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "cpu")
    else {
        return vec![];
    };
    store
        .series_points(series, 0, i64::MAX, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.time_ms, p.seq))
        .collect()
}

#[tokio::test]
async fn telemetry_frames_are_stored_acknowledged_and_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data")).await;
    let id = enroll(&server).await;
    let mut ws = connect(&server.public_url, &id).await;
    let now = now_ms();
    let mut labelled = metric(4, now - 3_000, "temp", 41.5);
    labelled.labels.insert("sensor".into(), "cpu0".into());
    let batch = TelemetryBatch {
        boot_id: "boot-1".into(),
        records: vec![
            metric(1, now - 5_000, "cpu", 12.5),
            metric(2, now + 3_600_000, "cpu", 1.0),
            metric(3, 0, "cpu", 1.0),
            labelled,
            metric(5, now - 1_000, "bad name", 1.0),
            Record {
                body: RecordBody::Event {
                    name: "service.crash".into(),
                    severity: "critical".into(),
                    message: "nginx exited with 139".into(),
                },
                ..metric(6, now - 2_000, "x", 0.0)
            },
        ],
        dropped: 7,
    };
    send(&mut ws, &batch).await;
    let a = ack(&mut ws).await;
    assert_eq!(a.boot_id, "boot-1");
    assert_eq!(a.up_to_seq, 6);
    let reasons: Vec<(u64, &str)> = a
        .rejected
        .iter()
        .map(|r| (r.seq, r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [(2, "in_the_future"), (3, "too_old"), (5, "bad_name")]
    );
    // The ack was lost: the device sends the same batch again.
    send(&mut ws, &batch).await;
    assert_eq!(ack(&mut ws).await, a);
    assert_eq!(stored(&server, &id.device_id).await, [(now - 5_000, 1)]);
    let store = &server.devices.store;
    let events = store
        .device_events(&id.device_id, 0, i64::MAX, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].message, "nginx exited with 139");
    let t = store.device_telemetry(&id.device_id).await.unwrap();
    assert_eq!(t.dropped_total, 7, "the drop count is kept once");
    assert_eq!(t.series, 2);
    server.shutdown().await;
}

#[tokio::test]
async fn backlog_after_reconnects_and_a_server_restart_is_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data).await;
    let id = enroll(&server).await;
    // Six hours offline: 10 batches of backlog, oldest first.
    let batches = backlog("boot-9", 10, 6);
    let mut ws = connect(&server.public_url, &id).await;
    for b in &batches[..3] {
        send(&mut ws, b).await;
        assert_eq!(ack(&mut ws).await.up_to_seq, b.records.last().unwrap().seq);
    }
    // The fourth goes out and the connection drops before the ack.
    send(&mut ws, &batches[3]).await;
    drop(ws);
    let mut ws = connect(&server.public_url, &id).await;
    for b in &batches[3..6] {
        send(&mut ws, b).await;
        ack(&mut ws).await;
    }
    // The server restarts in the middle of the upload.
    send(&mut ws, &batches[6]).await;
    server.shutdown().await;
    drop(ws);
    let server = start(&data).await;
    let mut ws = connect(&server.public_url, &id).await;
    // Unsure what the old server stored, the device resends from batch 5.
    for b in &batches[5..] {
        send(&mut ws, b).await;
        assert_eq!(ack(&mut ws).await.up_to_seq, b.records.last().unwrap().seq);
    }
    let points = stored(&server, &id.device_id).await;
    assert_eq!(points.len(), 2000, "none lost, none duplicated");
    let expected: Vec<(i64, i64)> = batches
        .iter()
        .flat_map(|b| b.records.iter().map(|r| (r.time_ms, r.seq as i64)))
        .collect();
    assert_eq!(points, expected, "in order, at the original times");
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_or_malformed_batches_close_the_channel_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data")).await;
    let id = enroll(&server).await;
    let now = now_ms();
    // More records than a batch may hold: refused by the frame decoder.
    let mut ws = connect(&server.public_url, &id).await;
    let huge = TelemetryBatch {
        boot_id: "b".into(),
        // Small records, so the frame stays under the 64 KiB frame limit
        // and the record count is what is refused.
        records: (1..=501)
            .map(|i| Record {
                mono_ms: 0,
                ..metric(i, 0, "c", 1.0)
            })
            .collect(),
        dropped: 0,
    };
    send(&mut ws, &huge).await;
    let (code, message, fatal) = error(&mut ws).await.expect("an error before the close");
    assert_eq!(code, "bad_frame");
    assert!(fatal);
    assert!(message.contains("at most 500 records"), "{message}");
    assert!(next(&mut ws).await.is_none(), "the channel closes");
    // A boot id that is not one.
    let mut ws = connect(&server.public_url, &id).await;
    let bad = TelemetryBatch {
        boot_id: "not a boot id".into(),
        records: vec![metric(1, now, "cpu", 1.0)],
        dropped: 0,
    };
    send(&mut ws, &bad).await;
    let (code, message, fatal) = error(&mut ws).await.expect("an error before the close");
    assert_eq!(code, "bad_telemetry");
    assert!(fatal);
    assert!(message.contains("boot id"), "{message}");
    assert!(stored(&server, &id.device_id).await.is_empty());
    server.shutdown().await;
}
