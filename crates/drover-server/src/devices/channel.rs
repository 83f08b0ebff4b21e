//! One device's control channel, from the first frame to the last.
//!
//! Order on every connection: the device sends `hello` (within
//! [`HELLO_TIMEOUT`]), the server checks the protocol version and that the
//! claimed id is the certificate's, registers the connection (replacing an
//! older one), answers `welcome`, and pushes the desired configuration when
//! the device does not have it yet. Then frames flow both ways until the
//! device goes silent for `offline_after`, sends garbage, is revoked, or
//! the server shuts down. Nothing a device sends can affect another device:
//! every write names the id from the certificate.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use drover_proto::device::{
    AgentMessage, Document, PROTOCOL_VERSION, ServerMessage, decode_agent, encode,
};

use super::Devices;
use super::registry::{Conn, Outbound};
use crate::clock::now_ms;
use crate::pki::Csr;
use crate::store::Enrollment;
use crate::store::Reported;

/// A device must say hello this fast after the upgrade.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest inventory key and value accepted.
const MAX_KEY: usize = 128;
const MAX_VALUE: usize = 4096;

fn refuse(code: &'static str) {
    metrics::counter!("drover_device_frames_refused_total", "reason" => code).increment(1);
}

async fn send(ws: &mut WebSocket, msg: &ServerMessage) -> bool {
    ws.send(Message::Binary(encode(msg).into())).await.is_ok()
}

/// Sends a fatal error and closes.
async fn fail(ws: &mut WebSocket, code: &'static str, message: String) {
    refuse(code);
    tracing::info!(code, %message, "closing device connection");
    let _ = send(
        ws,
        &ServerMessage::Error {
            code: code.into(),
            message: message.clone(),
            fatal: true,
        },
    )
    .await;
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code: 1008,
            reason: code.into(),
        })))
        .await;
}

/// [`fail`] for the setup phase, which answers `None` when it refuses.
async fn refuse_setup<T>(ws: &mut WebSocket, code: &'static str, message: String) -> Option<T> {
    fail(ws, code, message).await;
    None
}

fn hash_of(inventory: &Document) -> String {
    crate::auth::sha256_hex(&drover_proto::device::canonical_json(inventory))
}

fn valid_entries<'a>(mut keys: impl Iterator<Item = (&'a String, Option<&'a String>)>) -> bool {
    keys.all(|(k, v)| {
        !k.is_empty()
            && k.len() <= MAX_KEY
            && !k.chars().any(char::is_control)
            && v.is_none_or(|v| v.len() <= MAX_VALUE)
    })
}

/// Runs the control channel of `device_id` (taken from its certificate).
///
/// The connect and disconnect phases are boxed: an async task keeps the
/// room of its largest state for its whole life, and only the small steady
/// state (`serve`) should stay allocated for an idle device.
pub async fn run(devices: Arc<Devices>, mut ws: WebSocket, device_id: String, serial: String) {
    let Some((conn, mut outbound)) = Box::pin(setup(&devices, &mut ws, &device_id)).await else {
        return;
    };
    serve(&devices, &mut ws, &conn, &mut outbound, &serial).await;
    Box::pin(teardown(&devices, &conn)).await;
}

/// Hello, registration, welcome and the first desired push. `None` when the
/// connection was refused (and already closed).
async fn setup(
    devices: &Arc<Devices>,
    ws: &mut WebSocket,
    device_id: &str,
) -> Option<(Arc<Conn>, tokio::sync::mpsc::Receiver<Outbound>)> {
    let device_id = device_id.to_string();
    // 1. Hello.
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, ws.recv()).await {
        Ok(Some(Ok(Message::Binary(b)))) => decode_agent(&b),
        Ok(Some(Ok(_))) => {
            return refuse_setup(
                ws,
                "bad_frame",
                "the control channel carries binary frames only".into(),
            )
            .await;
        }
        _ => {
            refuse("no_hello");
            return None;
        }
    };
    let (agent_version, agent_inventory_hash, applied_revision) = match hello {
        Ok(AgentMessage::Hello {
            protocol_version,
            device_id: claimed,
            agent_version,
            inventory_hash,
            applied_revision,
        }) => {
            if protocol_version != PROTOCOL_VERSION {
                return refuse_setup(
                    ws,
                    "unsupported_protocol",
                    format!("this server speaks protocol {PROTOCOL_VERSION}, the agent {protocol_version}: update the agent or the server"),
                )
                .await;
            }
            if claimed != device_id {
                return refuse_setup(
                    ws,
                    "identity_mismatch",
                    format!(
                        "the certificate belongs to device {device_id}, the hello claims {claimed}"
                    ),
                )
                .await;
            }
            (agent_version, inventory_hash, applied_revision)
        }
        Ok(_) => {
            return refuse_setup(
                ws,
                "hello_expected",
                "the first message must be hello".into(),
            )
            .await;
        }
        Err(e) => return refuse_setup(ws, "bad_frame", e.to_string()).await,
    };
    if agent_version.len() > 64 {
        return refuse_setup(
            ws,
            "bad_frame",
            "agent_version is longer than 64 characters".into(),
        )
        .await;
    }

    // 2. Register first, then re-read the device: a revocation that lands
    // in between finds the registered connection and closes it.
    let now = now_ms();
    let (conn, outbound) = devices.registry.register(&device_id, now);
    // A read, and a write only when the agent version changed: a reconnect
    // storm must not queue one write per device (last_seen is flushed in
    // batches from the registry).
    let loaded = match devices.store.get_device(&device_id).await {
        Ok(Some(d)) if d.agent_version.as_deref() != Some(agent_version.as_str()) => {
            devices
                .update_device(&device_id, |d| {
                    let changed = d.agent_version.as_deref() != Some(agent_version.as_str());
                    d.agent_version = Some(agent_version.clone());
                    changed
                })
                .await
        }
        other => other,
    };
    let refusal = match &loaded {
        Ok(Some(d)) if d.enrollment == Enrollment::Accepted => None,
        Ok(Some(d)) => Some((
            if d.enrollment == Enrollment::Rejected {
                "device_rejected"
            } else {
                "device_revoked"
            },
            format!("device {device_id} is {}", d.enrollment.as_str()),
        )),
        Ok(None) => Some(("unknown_device", format!("device {device_id} is not known"))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot load device");
            Some((
                "unavailable",
                "the server cannot reach its database; retry later".to_string(),
            ))
        }
    };
    let device = match (refusal, loaded) {
        (None, Ok(Some(d))) => d,
        (Some((code, message)), _) => {
            devices.registry.unregister(&conn);
            return refuse_setup(ws, code, message).await;
        }
        _ => unreachable!("no refusal means a loaded, accepted device"),
    };
    metrics::counter!("drover_device_connects_total").increment(1);
    tracing::info!(%agent_version, "device connected");
    let welcome = ServerMessage::Welcome {
        device_id: device_id.clone(),
        heartbeat_interval_secs: devices.settings.heartbeat_interval.as_secs().max(1),
        inventory_hash: device.inventory_hash.clone(),
        server_time_ms: now,
    };
    if send(ws, &welcome).await {
        // 3. Converge: push the desired configuration if the device lacks it.
        // The device's word on what it runs counts only if its last report
        // agrees; otherwise it is sent the desired state again, which it
        // applies (idempotently) and reports, so its status is never stale.
        let reported = device
            .reported
            .as_ref()
            .map(|r| (r.revision.as_str(), r.status));
        if reported
            == applied_revision
                .as_deref()
                .map(|r| (r, crate::store::ApplyStatus::Applied))
        {
            conn.mark_pushed(applied_revision.clone());
        }
        let eff = match devices.groups().await {
            Ok(groups) => devices.effective_full(&device, &groups, "online").await,
            Err(e) => Err(e),
        };
        match eff {
            Ok(eff) => {
                conn.push_desired_if_changed(&eff);
            }
            Err(e) => tracing::warn!(error = %e, "cannot compute desired state"),
        }
        tracing::debug!(?agent_inventory_hash, server_hash = ?device.inventory_hash, "inventory hashes");
        return Some((conn, outbound));
    }
    devices.registry.unregister(&conn);
    None
}

/// Unregisters and records when the device was last heard from.
async fn teardown(devices: &Devices, conn: &Conn) {
    // Written before unregistering, so that an empty registry means every
    // last_seen is stored (shutdown relies on it).
    if !devices.shutting_down.load(Ordering::SeqCst) {
        let seen = conn.last_seen.load(Ordering::Relaxed);
        if let Err(e) = devices
            .store
            .touch_devices(&[(conn.device_id.clone(), seen)])
            .await
        {
            tracing::warn!(error = %e, "cannot record last_seen");
        }
    }
    devices.registry.unregister(conn);
    tracing::info!("device disconnected");
}

/// The steady state: frames in, commands out, silence means offline.
async fn serve(
    devices: &Devices,
    ws: &mut WebSocket,
    conn: &Conn,
    outbound: &mut tokio::sync::mpsc::Receiver<Outbound>,
    serial: &str,
) {
    let offline_after = devices.settings.offline_after;
    // Silence is measured from the last frame the device sent, whatever the
    // server sends meanwhile.
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let frame = tokio::select! {
            f = ws.recv() => Ok(f),
            _ = tokio::time::sleep_until(last_heard + offline_after) => Err(()),
            msg = outbound.recv() => {
                match msg {
                    Some(msg) => {
                        if !send(ws, &msg).await { return; }
                        continue;
                    }
                    None => return,
                }
            }
            (code, message) = conn.close_requested() => return fail(ws, code, message).await,
        };
        let bytes = match frame {
            Err(_) => {
                metrics::counter!("drover_device_timeouts_total").increment(1);
                tracing::info!("device silent for {offline_after:?}: marking offline");
                let _ = ws
                    .send(Message::Close(Some(CloseFrame {
                        code: 1001,
                        reason: "silent".into(),
                    })))
                    .await;
                return;
            }
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Ok(Message::Binary(b)))) => {
                last_heard = tokio::time::Instant::now();
                b
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {
                last_heard = tokio::time::Instant::now();
                conn.last_seen.store(now_ms(), Ordering::Relaxed);
                continue;
            }
            Ok(Some(Ok(Message::Text(_)))) => {
                return fail(
                    ws,
                    "bad_frame",
                    "the control channel carries binary frames only".into(),
                )
                .await;
            }
        };
        conn.last_seen.store(now_ms(), Ordering::Relaxed);
        let msg = match decode_agent(&bytes) {
            Ok(m) => m,
            Err(e) => return fail(ws, "bad_frame", e.to_string()).await,
        };
        // Boxed: handling is rare next to waiting, and its state is large.
        let reply = match Box::pin(handle(devices, conn, msg, serial)).await {
            Ok(reply) => reply,
            Err((code, message)) => return fail(ws, code, message).await,
        };
        if let Some(reply) = reply
            && !send(ws, &reply).await
        {
            return;
        }
    }
}

type Refusal = (&'static str, String);

async fn handle(
    devices: &Devices,
    conn: &Conn,
    msg: AgentMessage,
    serial: &str,
) -> Result<Option<ServerMessage>, Refusal> {
    let id = conn.device_id.as_str();
    let unavailable = |e: crate::store::StoreError| {
        tracing::warn!(error = %e, "store error on the control channel");
        (
            "unavailable",
            "the server cannot reach its database; reconnect later".to_string(),
        )
    };
    match msg {
        AgentMessage::Heartbeat {} => Ok(None),
        AgentMessage::Telemetry(batch) => match devices.ingest_telemetry(id, &batch).await {
            Ok(ack) => Ok(Some(ServerMessage::TelemetryAck(ack))),
            Err(crate::devices::telemetry::IngestError::Batch(e)) => {
                Err(("bad_telemetry", e.to_string()))
            }
            Err(crate::devices::telemetry::IngestError::Store(e)) => Err(unavailable(e)),
        },
        AgentMessage::UpdateStatus(status) => devices
            .update_status(id, &status)
            .await
            .map_err(unavailable),
        AgentMessage::Hello { .. } => Err(("hello_repeated", "hello may only be sent once".into())),
        AgentMessage::Inventory {
            full,
            set,
            removed,
            hash: _,
        } => {
            if !valid_entries(
                set.iter()
                    .map(|(k, v)| (k, Some(v)))
                    .chain(removed.iter().map(|k| (k, None))),
            ) {
                return Err((
                    "bad_inventory",
                    format!(
                        "inventory keys must be 1-{MAX_KEY} printable characters and values at most {MAX_VALUE} bytes"
                    ),
                ));
            }
            let stored = devices
                .update_device(id, |d| {
                    let mut inv = if full {
                        Document::new()
                    } else {
                        d.inventory.clone()
                    };
                    for k in &removed {
                        inv.remove(k);
                    }
                    inv.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                    if inv.len() > drover_proto::device::MAX_INVENTORY_ENTRIES {
                        return false;
                    }
                    let h = hash_of(&inv);
                    let changed = d.inventory_hash.as_deref() != Some(h.as_str());
                    d.inventory = inv;
                    d.inventory_hash = Some(h);
                    changed
                })
                .await
                .map_err(unavailable)?;
            let hash = stored.and_then(|d| d.inventory_hash).unwrap_or_default();
            // Groups may select by inventory: what the device should run
            // can change with what it reports.
            if let Err(e) = devices.reconcile(Some(id)).await {
                tracing::warn!(error = %e, "cannot push desired state after an inventory change");
            }
            // The agent compares this with its own hash and sends a full
            // report when they differ (a delta against a stale base).
            Ok(Some(ServerMessage::InventoryAck { hash }))
        }
        AgentMessage::Reported {
            revision,
            status,
            config,
            error,
        } => {
            if revision.len() > 64 || config.len() > drover_proto::device::MAX_CONFIG_ENTRIES {
                return Err((
                    "bad_report",
                    "reported revision or configuration is too large".into(),
                ));
            }
            let error = error.map(|e| e.chars().take(2048).collect::<String>());
            let at = now_ms();
            devices
                .update_device(id, |d| {
                    d.reported = Some(Reported {
                        revision: revision.clone(),
                        status,
                        config: config.clone(),
                        error: error.clone(),
                        at,
                    });
                    true
                })
                .await
                .map_err(unavailable)?;
            tracing::info!(%revision, ?status, "device reported its configuration");
            Ok(Some(ServerMessage::ReportedAck { revision }))
        }
        AgentMessage::RenewCertificate { csr_pem } => {
            let csr = Csr::parse(&csr_pem).map_err(|m| ("bad_csr", m))?;
            if csr.device_id() != id {
                return Err((
                    "identity_mismatch",
                    "a renewal must be for the same key".into(),
                ));
            }
            let cert = devices
                .ca
                .issue_device_cert(&csr, id, devices.settings.cert_validity)
                .map_err(|e| ("unavailable", e.to_string()))?;
            devices
                .update_device(id, |d| {
                    d.cert_serial = Some(cert.serial.clone());
                    d.cert_not_after = Some(cert.not_after_ms);
                    true
                })
                .await
                .map_err(unavailable)?;
            metrics::counter!("drover_device_cert_renewals_total").increment(1);
            tracing::info!(old_serial = serial, new_serial = %cert.serial, "renewed device certificate");
            Ok(Some(ServerMessage::Certificate {
                certificate_pem: cert.pem,
                expires_at_ms: cert.not_after_ms,
            }))
        }
    }
}
