//! Hostile and broken devices against an in-process server: every bad input
//! of the devices issue is refused with a reason, counted, and never
//! affects another device.

use std::sync::Arc;
use std::time::Duration;

use drover_agent::enroll::{EnrollError, request_certificate};
use drover_agent::identity::{Identity, ServerInfo, client_tls};
use drover_proto::device::{AgentMessage, PROTOCOL_VERSION, ServerMessage, decode_server, encode};
use drover_server::auth::mint_secret;
use drover_server::devices::DeviceSettings;
use drover_server::store::{Change, EnrollTokenRecord};
use drover_server::{RunningServer, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Env {
    server: RunningServer,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

async fn env(settings: DeviceSettings) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("data"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.devices = settings;
    let server = drover_server::start(cfg).await.unwrap();
    let ca_pem = std::fs::read_to_string(server.data_dir.join("ca.crt")).unwrap();
    Env {
        server,
        ca_pem,
        _dir: dir,
    }
}

fn fast() -> DeviceSettings {
    DeviceSettings {
        heartbeat_interval: Duration::from_secs(1),
        offline_after: Duration::from_secs(2),
        ..Default::default()
    }
}

impl Env {
    /// Stores an enrollment token; returns its secret.
    async fn token(&self, expires_at: Option<i64>, revoked_at: Option<i64>) -> String {
        let m = mint_secret("det_");
        let rec = EnrollTokenRecord {
            id: m.id,
            name: "t".into(),
            secret_hash: m.secret_hash,
            tags: Default::default(),
            uses_left: None,
            expires_at,
            created_at: 1,
            created_by: None,
            revoked_at,
            version: 1,
        };
        assert!(
            self.server
                .devices
                .store
                .apply(
                    &[Change::PutEnrollToken {
                        token: rec,
                        expected_version: None
                    }],
                    None
                )
                .await
                .unwrap()
        );
        m.bearer
    }

    async fn enroll(&self, secret: Option<String>) -> Result<Identity, EnrollError> {
        let key = rcgen::KeyPair::generate().unwrap();
        let r =
            request_certificate(&self.server.public_url, &self.ca_pem, &key, secret, None).await?;
        Ok(Identity {
            device_id: r.device_id,
            server: ServerInfo {
                url: self.server.public_url.clone(),
                ca_fingerprint: self.server.ca_fingerprint.clone(),
                cert_expires_at_ms: None,
                cert_received_at_ms: None,
            },
            key: Arc::new(key),
            cert_pem: r.certificate_pem.unwrap_or_default(),
            ca_pem: self.ca_pem.clone(),
        })
    }

    async fn device(&self) -> Identity {
        let t = self.token(None, None).await;
        self.enroll(Some(t)).await.unwrap()
    }

    fn metric(&self, needle: &str) -> f64 {
        let text = drover_server::telemetry::prometheus().render();
        text.lines()
            .filter(|l| l.starts_with(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens the control channel with `tls` from `bind`, without saying hello.
async fn open(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    bind: Option<std::net::IpAddr>,
) -> Result<Ws, String> {
    let stream = drover_agent::https::connect_tls(url, tls, bind).await?;
    let req = format!("{}/v1/device/connect", url.replace("https://", "wss://"))
        .into_client_request()
        .unwrap();
    tokio_tungstenite::client_async(req, stream)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                format!(
                    "{} {}",
                    r.status(),
                    String::from_utf8_lossy(r.body().as_deref().unwrap_or_default())
                )
            }
            other => other.to_string(),
        })
}

fn hello(id: &str, protocol_version: u32) -> Message {
    Message::Binary(
        encode(&AgentMessage::Hello {
            protocol_version,
            device_id: id.into(),
            agent_version: "test".into(),
            inventory_hash: None,
            applied_revision: None,
        })
        .into(),
    )
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

async fn expect_error(ws: &mut Ws, code: &str) {
    match next(ws).await {
        Some(ServerMessage::Error {
            code: c,
            fatal: true,
            ..
        }) if c == code => {}
        other => panic!("expected fatal error {code}, got {other:?}"),
    }
    assert!(
        next(ws).await.is_none(),
        "the connection closes after a fatal error"
    );
}

/// A device that says hello properly and gets its welcome.
async fn connected(env: &Env, id: &Identity) -> Ws {
    let mut ws = open(&env.server.public_url, id.tls().unwrap(), None)
        .await
        .unwrap();
    ws.send(hello(&id.device_id, PROTOCOL_VERSION))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut ws).await,
        Some(ServerMessage::Welcome { .. })
    ));
    ws
}

#[tokio::test]
async fn bad_enrollments_are_refused_with_reasons() {
    let env = env(fast()).await;
    let before = env.metric("drover_enrollment_refused_total");
    let expired = env.token(Some(1), None).await;
    let revoked = env.token(None, Some(1)).await;
    let good = env.token(None, None).await;
    let forged = format!("{}{}", &good[..good.len() - 4], "0000");
    for (secret, code) in [
        (expired, "enrollment_token_expired"),
        (revoked, "enrollment_token_revoked"),
        (forged, "invalid_enrollment_token"),
        ("det_nonsense".to_string(), "invalid_enrollment_token"),
    ] {
        match env.enroll(Some(secret)).await {
            Err(EnrollError::Refused { code: c, message }) => {
                assert_eq!(c, code);
                assert!(message.len() > 20, "{message}");
            }
            other => panic!(
                "expected refusal {code}, got {:?}",
                other.map(|i| i.device_id)
            ),
        }
    }
    assert!(
        env.metric("drover_enrollment_refused_total") >= before + 4.0,
        "refusals are counted"
    );

    // A CSR whose signature does not match its key: the requester does not
    // hold the key it asks a certificate for.
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = drover_agent::identity::csr_pem(&key).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|d: rustls_pki_types::CertificateSigningRequestDer| d.as_ref().to_vec())
        .unwrap();
    let mut tampered = der.clone();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x55;
    let b64 = drover_proto::base64url::encode(&tampered)
        .replace('-', "+")
        .replace('_', "/");
    let padded = format!("{b64}{}", "=".repeat((4 - b64.len() % 4) % 4));
    let tampered_pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{padded}\n-----END CERTIFICATE REQUEST-----\n"
    );
    let body = serde_json::json!({ "csr_pem": tampered_pem, "token": good }).to_string();
    let tls = client_tls(&env.ca_pem, None).unwrap();
    let (status, answer) = drover_agent::https::request(
        &env.server.public_url,
        tls.clone(),
        hyper::Method::POST,
        "/v1/enroll",
        Some(body.into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&answer));
    assert!(
        String::from_utf8_lossy(&answer).contains("signature"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Not JSON, unknown fields, no CSR at all.
    for body in [
        "{",
        r#"{"csr_pem":"x","extra":1}"#,
        r#"{"csr_pem":"not a csr"}"#,
    ] {
        let (status, _) = drover_agent::https::request(
            &env.server.public_url,
            tls.clone(),
            hyper::Method::POST,
            "/v1/enroll",
            Some(body.into()),
        )
        .await
        .unwrap();
        assert_eq!(status, 400, "{body}");
    }
    env.server.shutdown().await;
}

#[tokio::test]
async fn only_fleet_certificates_open_the_control_channel() {
    let env = env(fast()).await;
    // No client certificate: 401 with a reason.
    let err = open(
        &env.server.public_url,
        client_tls(&env.ca_pem, None).unwrap(),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("401") && err.contains("certificate_required"),
        "{err}"
    );
    // A certificate from another CA: TLS refuses it.
    let (other_ca, _) = drover_server::pki::FleetCa::generate().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr =
        drover_server::pki::Csr::parse(&drover_agent::identity::csr_pem(&key).unwrap()).unwrap();
    let foreign = other_ca
        .issue_device_cert(&csr, &csr.device_id(), Duration::from_secs(3600))
        .unwrap();
    let tls = client_tls(&env.ca_pem, Some((&foreign.pem, &key.serialize_pem()))).unwrap();
    assert!(
        open(&env.server.public_url, tls, None).await.is_err(),
        "a foreign certificate must not connect"
    );
    env.server.shutdown().await;
}

#[tokio::test]
async fn hostile_frames_close_only_the_offending_connection() {
    let env = env(fast()).await;
    let good = env.device().await;
    let bad = env.device().await;
    let mut good_ws = connected(&env, &good).await;

    // Claiming another device's id.
    let mut ws = open(&env.server.public_url, bad.tls().unwrap(), None)
        .await
        .unwrap();
    ws.send(hello(&good.device_id, PROTOCOL_VERSION))
        .await
        .unwrap();
    expect_error(&mut ws, "identity_mismatch").await;
    // An unknown protocol version.
    let mut ws = open(&env.server.public_url, bad.tls().unwrap(), None)
        .await
        .unwrap();
    ws.send(hello(&bad.device_id, 99)).await.unwrap();
    expect_error(&mut ws, "unsupported_protocol").await;
    // Something other than hello first.
    let mut ws = open(&env.server.public_url, bad.tls().unwrap(), None)
        .await
        .unwrap();
    ws.send(Message::Binary(encode(&AgentMessage::Heartbeat {}).into()))
        .await
        .unwrap();
    expect_error(&mut ws, "hello_expected").await;
    // Garbage, text frames, an oversized frame, a bad inventory.
    for frame in [
        Message::Binary(b"{not json".to_vec().into()),
        Message::Text("hello".into()),
        Message::Binary(
            encode(&AgentMessage::Inventory {
                full: true,
                set: [("bad\u{7}key".to_string(), "v".to_string())].into(),
                removed: vec![],
                hash: "h".into(),
            })
            .into(),
        ),
    ] {
        let mut ws = connected(&env, &bad).await;
        ws.send(frame).await.unwrap();
        // Skip the desired state pushed on connect; then the refusal.
        let mut refused = false;
        while let Some(m) = next(&mut ws).await {
            if matches!(m, ServerMessage::Error { fatal: true, .. }) {
                refused = true;
                break;
            }
        }
        assert!(refused, "a bad frame gets a fatal error");
    }
    let mut ws = connected(&env, &bad).await;
    let _ = ws
        .send(Message::Binary(vec![b' '; 200 * 1024].into()))
        .await;
    let started = std::time::Instant::now();
    let mut frames = 0;
    while next(&mut ws).await.is_some() {
        frames += 1;
        assert!(
            frames < 5,
            "the connection stays open after an oversized frame"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "an oversized frame ends the connection at once"
    );
    assert!(env.metric("drover_device_frames_refused_total") >= 6.0);

    // The well-behaved device is still connected and served.
    good_ws
        .send(Message::Binary(
            encode(&AgentMessage::Inventory {
                full: true,
                set: [("k".to_string(), "v".to_string())].into(),
                removed: vec![],
                hash: "h".into(),
            })
            .into(),
        ))
        .await
        .unwrap();
    let mut acked = false;
    while let Some(m) = next(&mut good_ws).await {
        if matches!(m, ServerMessage::InventoryAck { .. }) {
            acked = true;
            break;
        }
    }
    assert!(acked, "the good device is still served");
    assert!(env.server.devices.registry.is_online(&good.device_id));
    env.server.shutdown().await;
}

#[tokio::test]
async fn a_silent_device_goes_offline_and_a_flood_is_limited() {
    let env = env(DeviceSettings {
        connects_per_ip_per_sec: 5,
        ..fast()
    })
    .await;
    let dev = env.device().await;
    // Silent after hello: offline once `offline_after` (2 s) passes.
    let mut ws = connected(&env, &dev).await;
    assert!(env.server.devices.registry.is_online(&dev.device_id));
    assert!(
        next(&mut ws)
            .await
            .is_some_and(|m| matches!(m, ServerMessage::Desired { .. }))
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !env.server.devices.registry.is_online(&dev.device_id),
        "silent device still online"
    );

    // A burst of connects from one address: some are told to back off…
    let mut limited = 0;
    for _ in 0..40 {
        if let Err(e) = open(
            &env.server.public_url,
            dev.tls().unwrap(),
            Some("127.0.0.7".parse().unwrap()),
        )
        .await
            && e.contains("429")
        {
            limited += 1;
        }
    }
    assert!(limited >= 20, "only {limited} of 40 were limited");
    // …while other addresses are not affected.
    let ws = open(
        &env.server.public_url,
        dev.tls().unwrap(),
        Some("127.0.0.8".parse().unwrap()),
    )
    .await;
    assert!(ws.is_ok(), "{:?}", ws.err());
    env.server.shutdown().await;
}
