//! Alerts end to end with a real `drover server` process and the real
//! CLI (docs/monitoring.md, "Alerts"): a bad rule is refused with the
//! column of the query; a rule fires on an enrolled device through the
//! server's own evaluator task, its webhook reaches a local receiver with a
//! valid signature, `drover alerts list|ack|show` see it, the fleet gauges
//! of `/metrics` count it, and deleting the rule resolves it.
//!
//! The device is enrolled through the real enrollment endpoint; no agent
//! process runs (the rule watches reboots, which need none: 0 % of one
//! device is at least 0 %).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cli, enroll_token, failure, start_server, wait_for};
use drover_server::alerts::webhook;

const SECRET: &str = "e2e-webhook-secret-0123456789";

/// Requests the receiver got: headers (lowercase names) and body.
type Requests = Arc<Mutex<Vec<(HashMap<String, String>, Vec<u8>)>>>;

/// Reads one HTTP/1.1 request, records it and answers 200.
async fn receive(mut conn: tokio::net::TcpStream, got: Requests) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    got.lock()
        .unwrap()
        .push((headers, buf[head_end..head_end + len].to_vec()));
    let _ = conn
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
}

#[test]
fn an_alert_fires_notifies_is_acked_and_resolves_in_a_real_server() {
    // SAFETY: set before any other thread of this test binary (which has
    // only this test) starts: the runtime is built below.
    unsafe {
        std::env::set_var("DROVER_ALERT_EVALUATE_INTERVAL_SECS", "1");
        std::env::set_var("DROVER_FLEET_GAUGES_INTERVAL_SECS", "1");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), None, &[]);
    let cli = Cli::new();
    cli.login(&server, &server.admin_token());

    // A webhook receiver on loopback (plain HTTP/1.1, one request per connection).
    let got: Requests = Default::default();
    let addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let g = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let g = g.clone();
                tokio::spawn(async move { receive(conn, g).await });
            }
        });
        addr
    });

    // A bad query: refused with its column, nothing stored.
    let out = cli.run(&[
        "alerts",
        "rules",
        "create",
        "bad",
        "--query",
        "p95(cpu) bye device",
        "--threshold",
        "90",
    ]);
    let (code, err) = failure(&out);
    assert_ne!(code, 0);
    assert!(err.contains("column 10"), "{err}");
    let out = cli.run(&[
        "alerts",
        "rules",
        "create",
        "nohook",
        "--offline-after",
        "15m",
        "--webhook",
        "https://example.com/x",
    ]);
    let (_, err) = failure(&out);
    assert!(err.contains("--webhook-secret"), "{err}");

    // One accepted device, enrolled with a token.
    let token = enroll_token(&cli, &[]);
    let ca_pem = std::fs::read_to_string(server.ca()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let enrolled = rt
        .block_on(drover_agent::enroll::request_certificate(
            &server.url(),
            &ca_pem,
            &key,
            Some(
                drover_proto::device::EnrollmentToken::decode(&token)
                    .unwrap()
                    .secret,
            ),
            None,
        ))
        .unwrap();

    let hook = format!("http://{addr}/hook");
    let rule = cli.json(&[
        "alerts",
        "rules",
        "create",
        "any-reboots",
        "--reboots",
        "--window",
        "1h",
        "--op",
        ">=",
        "--threshold",
        "0",
        "--webhook",
        &hook,
        "--webhook-secret",
        SECRET,
    ]);
    assert_eq!(rule["name"], "any-reboots");
    assert!(rule["webhooks"][0].get("secret").is_none());
    let rules = cli.json(&["alerts", "rules", "list"]);
    assert_eq!(rules["rules"].as_array().unwrap().len(), 1);

    // The server's evaluator fires it; its delivery task notifies.
    let alert = wait_for("the alert to fire", Duration::from_secs(30), || {
        let list = cli.json(&["alerts", "list", "--state", "firing"]);
        list["alerts"].as_array().unwrap().first().cloned()
    });
    assert_eq!(alert["rule_name"], "any-reboots");
    assert_eq!(alert["value"], 0.0);
    assert_eq!(alert["labels"]["devices"], "1");
    let id = alert["id"].as_i64().unwrap().to_string();
    let (headers, body) = wait_for("the webhook", Duration::from_secs(30), || {
        got.lock().unwrap().first().cloned()
    });
    let ts = &headers["x-drover-timestamp"];
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(webhook::verify(
        SECRET.as_bytes(),
        ts,
        &body,
        &headers["x-drover-signature"],
        now_secs,
        300
    ));
    let payload: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["event"], "firing");
    assert_eq!(payload["alert"]["id"].to_string(), id);

    // The fleet gauges count the device and the firing alert.
    let metrics = wait_for("the fleet gauges", Duration::from_secs(30), || {
        let text = rt.block_on(metrics_text(&server.url(), &ca_pem));
        text.lines()
            .any(|l| l.starts_with("drover_alerts_firing{") && l.ends_with(" 1"))
            .then_some(text)
    });
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("drover_fleet_devices{")
                && l.contains("enrollment=\"accepted\"")
                && l.contains("connection=\"offline\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // Ack, then show the history.
    let acked = cli.json(&["alerts", "ack", &id]);
    assert_eq!(acked["acked_by"], "bootstrap-admin");
    let shown = cli.json(&["alerts", "show", &id]);
    let states: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["firing", "acked"]);
    assert_eq!(shown["notifications"][0]["state"], "delivered");
    let table = cli.run(&["alerts", "list"]);
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("firing (acked)"), "{table}");

    // Deleting the rule resolves its alert.
    let deleted = cli.json(&["alerts", "rules", "delete", "any-reboots"]);
    assert_eq!(deleted["name"], "any-reboots");
    let shown = cli.json(&["alerts", "show", &id]);
    assert_eq!(shown["alert"]["state"], "resolved");
    let out = cli.run(&["alerts", "show", "999999"]);
    let (code, err) = failure(&out);
    assert_ne!(code, 0);
    assert!(err.contains("no alert 999999"), "{err}");
    let _ = enrolled;
    server.stop();
}

/// `GET /metrics` over TLS with the fleet CA.
async fn metrics_text(url: &str, ca_pem: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
