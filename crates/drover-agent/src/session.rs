//! The control channel from the device's side.
//!
//! [`Agent::run`] keeps one channel up for as long as it runs: connect
//! (mTLS, WebSocket), `hello`, then converge: send the inventory (full the
//! first time, only changes after), apply each desired configuration and
//! report the outcome, heartbeat, renew the certificate before it expires.
//! When the channel drops it waits a full-jitter backoff and reconnects. It
//! stops only when told to, or when the server says this device may not
//! connect at all (revoked, rejected).
//!
//! Updates: the release target in each desired state goes to the update
//! engine ([`crate::update::engine::UpdateHandle`]), which runs in its own
//! task; the channel forwards its statuses (each new one, and the latest
//! again after every reconnect until the server acks a final one), its
//! `update.*` inventory keys and the connection state. Without an engine
//! (simulated devices) targets are answered `failed` / `updates_disabled`.
//!
//! Telemetry works the same way ([`crate::telemetry::TelemetryHandle`]):
//! the channel tells the telemetry task when a connection is up or down,
//! sends the batches it hands over, and passes each `telemetry_ack` back.
//! Without it (simulated devices) no telemetry is sent.
//!
//! Rules too ([`crate::rules::RulesHandle`], docs/rules.md): each desired
//! state's rule set is offered to the rules engine; the channel sends the
//! event batches it hands over, routes acks of its stream to it, and sends
//! the inventory (`rules.*` keys) soon after its status changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::device::{
    AgentMessage, ApplyStatus, Document, MAX_FRAME_BYTES, PROTOCOL_VERSION, ServerMessage,
    UpdateState, UpdateStatus, UpdateTarget, decode_server, encode,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::apply::Applier;
use crate::backoff::Backoff;
use crate::enroll::now_ms;
use crate::identity::{self, Identity};
use crate::state::AgentState;
use crate::update::engine::{Published, UpdateHandle};

/// Where the inventory comes from.
#[derive(Clone)]
pub enum InventorySource {
    /// Collect from the system (real devices).
    System(crate::inventory::InventoryConfig),
    /// A fixed document (simulated devices).
    Fixed(Document),
}

/// Keeps an inventory within what one frame and the server accept,
/// dropping the last keys and saying how many were dropped.
pub fn bounded(mut doc: Document) -> Document {
    const BUDGET: usize = MAX_FRAME_BYTES - 4 * 1024;
    let limit = drover_proto::device::MAX_INVENTORY_ENTRIES - 1;
    let mut dropped = 0;
    while doc.len() > limit || drover_proto::device::canonical_json(&doc).len() > BUDGET {
        doc.pop_last();
        dropped += 1;
    }
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "inventory too large for one report; dropped the last keys"
        );
        doc.insert("agent.inventory_truncated".into(), dropped.to_string());
    }
    doc
}

impl InventorySource {
    async fn collect_raw(&self) -> Document {
        match self {
            InventorySource::Fixed(d) => d.clone(),
            InventorySource::System(cfg) => {
                let cfg = cfg.clone();
                tokio::task::spawn_blocking(move || {
                    crate::inventory::collect(
                        &cfg,
                        &crate::inventory::SystemPaths::default(),
                        crate::AGENT_VERSION,
                    )
                })
                .await
                .unwrap_or_default()
            }
        }
    }
}

/// Why the agent stopped for good.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// Asked to stop (signal, test).
    Requested,
    /// The server will never accept this device again (`code`).
    Refused { code: String, message: String },
}

/// How one connection ended.
#[derive(Debug)]
enum SessionEnd {
    /// Worth reconnecting; the bool says it was up long enough to reset backoff.
    Retry(String, bool),
    Stop(Stop),
}

/// Codes after which reconnecting cannot help.
const FATAL_CODES: &[&str] = &[
    "device_revoked",
    "device_rejected",
    "unknown_device",
    "identity_mismatch",
    "unsupported_protocol",
];

pub struct Agent {
    pub identity: Identity,
    pub applier: Applier,
    pub inventory: InventorySource,
    pub inventory_interval: Duration,
    pub state: AgentState,
    /// Data directory to persist state and certificates in; `None` keeps
    /// everything in memory (simulated devices).
    pub persist: Option<PathBuf>,
    /// Source address to connect from (the simulator spreads devices over
    /// 127.0.0.0/8).
    pub bind: Option<std::net::IpAddr>,
    pub backoff: Backoff,
    pub renew_at_fraction_left: f64,
    /// Counts of what happened, for the simulator and tests.
    pub stats: Arc<Stats>,
    /// The update engine; `None` refuses updates (`updates_disabled`).
    pub update: Option<UpdateHandle>,
    /// The telemetry task; `None` sends no telemetry.
    pub telemetry: Option<crate::telemetry::TelemetryHandle>,
    /// The rules engine; `None` ignores rule sets.
    pub rules: Option<crate::rules::RulesHandle>,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub connects: std::sync::atomic::AtomicU64,
    pub connected: std::sync::atomic::AtomicBool,
    pub failures: std::sync::atomic::AtomicU64,
    pub applied: std::sync::atomic::AtomicU64,
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn inventory_hash(doc: &Document) -> String {
    identity::sha256_hex(&drover_proto::device::canonical_json(doc))
}

/// The answer to a target when this agent runs no update engine.
fn updates_disabled(t: &UpdateTarget) -> AgentMessage {
    let release = drover_release::SignedManifest::from_json(&t.manifest)
        .and_then(|s| s.parse_unverified())
        .map(|m| format!("{}@{}", m.name, m.version))
        .unwrap_or_else(|_| "?@?".into());
    AgentMessage::UpdateStatus(UpdateStatus {
        deployment_id: t.deployment_id.chars().take(64).collect(),
        release,
        state: UpdateState::Failed,
        progress: None,
        reason: Some("updates_disabled".into()),
        message: Some("this agent runs without an update engine".into()),
    })
}

/// The latest update status when it still needs sending.
fn unacked(p: &Option<Published>) -> Option<AgentMessage> {
    match p {
        Some(p) if !(p.acked && p.status.state.is_final()) => {
            Some(AgentMessage::UpdateStatus(p.status.clone()))
        }
        _ => None,
    }
}

impl Agent {
    fn persist_state(&self) {
        if let Some(dir) = &self.persist
            && let Err(e) = self.state.save(dir)
        {
            tracing::error!(error = %e, "cannot save agent state");
        }
    }

    /// Runs until `stop` turns true or the server refuses the device.
    pub async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Stop {
        loop {
            let mut inner = stop.clone();
            let end = tokio::select! {
                end = self.session(&mut inner) => end,
                _ = stopped(&mut stop) => SessionEnd::Stop(Stop::Requested),
            };
            self.stats
                .connected
                .store(false, std::sync::atomic::Ordering::Relaxed);
            if let Some(u) = &self.update {
                u.set_connected(false);
            }
            if let Some(t) = &mut self.telemetry {
                t.disconnected();
            }
            if let Some(r) = &self.rules {
                r.set_connected(false);
            }
            match end {
                SessionEnd::Stop(s) => return s,
                SessionEnd::Retry(why, was_up) => {
                    if was_up {
                        self.backoff.reset();
                    }
                    self.stats
                        .failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let delay = self.backoff.next_delay();
                    tracing::info!(reason = %why, ?delay, "control channel down; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped(&mut stop) => return Stop::Requested,
                    }
                }
            }
        }
    }

    async fn session(&mut self, stop: &mut watch::Receiver<bool>) -> SessionEnd {
        let tls = match self.identity.tls() {
            Ok(t) => t,
            Err(e) => {
                return SessionEnd::Stop(Stop::Refused {
                    code: "bad_identity".into(),
                    message: e,
                });
            }
        };
        let stream =
            match crate::https::connect_tls(&self.identity.server.url, tls, self.bind).await {
                Ok(s) => s,
                Err(e) => return SessionEnd::Retry(e, false),
            };
        let (host, port) = crate::https::host_port(&self.identity.server.url).unwrap_or_default();
        let request = match format!("wss://{host}:{port}/v1/device/connect").into_client_request() {
            Ok(r) => r,
            Err(e) => return SessionEnd::Retry(e.to_string(), false),
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let mut ws = match tokio_tungstenite::client_async_with_config(
            request,
            stream,
            Some(config),
        )
        .await
        {
            Ok((ws, _)) => ws,
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().unwrap_or_default();
                let (code, message) =
                    match serde_json::from_slice::<drover_proto::api::ErrorBody>(body) {
                        Ok(b) => (b.error.code, b.error.message),
                        Err(_) => (
                            "http_error".to_string(),
                            format!("the server answered {}", resp.status()),
                        ),
                    };
                if FATAL_CODES.contains(&code.as_str()) {
                    return SessionEnd::Stop(Stop::Refused { code, message });
                }
                return SessionEnd::Retry(format!("{code}: {message}"), false);
            }
            Err(e) => return SessionEnd::Retry(format!("WebSocket handshake failed: {e}"), false),
        };
        self.stats
            .connects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let connected_at = Instant::now();
        let hello = AgentMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            device_id: self.identity.device_id.clone(),
            agent_version: crate::AGENT_VERSION.into(),
            inventory_hash: self.state.inventory_acked_hash.clone(),
            applied_revision: self.state.applied_revision.clone(),
        };
        if let Err(e) = ws.send(Message::Binary(encode(&hello).into())).await {
            return SessionEnd::Retry(format!("cannot send hello: {e}"), false);
        }
        let welcome = match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => decode_server(&b),
            Ok(other) => return SessionEnd::Retry(format!("no welcome: {other:?}"), false),
            Err(_) => return SessionEnd::Retry("no welcome within 15 s".into(), false),
        };
        let (heartbeat, server_inventory_hash) = match welcome {
            Ok(ServerMessage::Welcome {
                heartbeat_interval_secs,
                inventory_hash,
                ..
            }) => (
                Duration::from_secs(heartbeat_interval_secs.clamp(1, 3600)),
                inventory_hash,
            ),
            Ok(ServerMessage::Error { code, message, .. }) => {
                if FATAL_CODES.contains(&code.as_str()) {
                    return SessionEnd::Stop(Stop::Refused { code, message });
                }
                return SessionEnd::Retry(format!("{code}: {message}"), false);
            }
            other => return SessionEnd::Retry(format!("expected welcome, got {other:?}"), false),
        };
        self.stats
            .connected
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(device_id = %self.identity.device_id, "control channel up");
        let mut statuses = self.update.as_ref().map(|u| {
            u.set_connected(true);
            u.statuses()
        });
        if let Some(t) = &mut self.telemetry {
            t.connected();
        }
        if let Some(r) = &self.rules {
            r.set_connected(true);
        }
        // The latest update status again, until a final one is acked.
        // (The watch guard must be dropped before awaiting: it is not Send.)
        let pending = statuses
            .as_mut()
            .and_then(|rx| unacked(&rx.borrow_and_update()));
        if let Some(msg) = pending
            && let Err(e) = ws.send(Message::Binary(encode(&msg).into())).await
        {
            return SessionEnd::Retry(format!("cannot send the update status: {e}"), false);
        }

        // The inventory sent and not yet acknowledged, with its hash.
        let mut in_flight: Option<(String, Document)> = None;
        let current = self.collect_inventory().await;
        let current_hash = inventory_hash(&current);
        if server_inventory_hash.as_deref() == Some(current_hash.as_str()) {
            self.state.inventory_acked_hash = Some(current_hash);
            self.state.inventory_acked = current;
            self.persist_state();
        } else if let Some(msg) =
            self.inventory_message(&current, server_inventory_hash.as_deref(), &mut in_flight)
            && let Err(e) = ws.send(Message::Binary(encode(&msg).into())).await
        {
            return SessionEnd::Retry(format!("cannot send inventory: {e}"), false);
        }

        let mut beat = tokio::time::interval(heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        let mut inventory_tick = tokio::time::interval(self.inventory_interval);
        inventory_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        inventory_tick.tick().await;
        let mut last_heard = Instant::now();
        let mut renewal_asked = false;
        let was_up = |t: Instant| t.elapsed() > Duration::from_secs(30);

        loop {
            tokio::select! {
                frame = ws.next() => {
                    let bytes = match frame {
                        Some(Ok(Message::Binary(b))) => b,
                        Some(Ok(Message::Pong(_) | Message::Ping(_))) => { last_heard = Instant::now(); continue; }
                        Some(Ok(Message::Close(c))) => return SessionEnd::Retry(format!("server closed: {c:?}"), was_up(connected_at)),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return SessionEnd::Retry(format!("read failed: {e}"), was_up(connected_at)),
                        None => return SessionEnd::Retry("connection closed".into(), was_up(connected_at)),
                    };
                    last_heard = Instant::now();
                    let msg = match decode_server(&bytes) {
                        Ok(m) => m,
                        Err(e) => return SessionEnd::Retry(format!("bad frame from server: {e}"), was_up(connected_at)),
                    };
                    match self.handle(msg, &mut in_flight).await {
                        Ok(replies) => {
                            for reply in replies {
                                if let Err(e) = ws.send(Message::Binary(encode(&reply).into())).await {
                                    return SessionEnd::Retry(format!("send failed: {e}"), was_up(connected_at));
                                }
                            }
                        }
                        // A refusal right after connecting must not reset the
                        // backoff, or a bad message would loop fast.
                        Err(SessionEnd::Retry(why, _)) => return SessionEnd::Retry(why, was_up(connected_at)),
                        Err(end) => return end,
                    }
                }
                _ = beat.tick() => {
                    if last_heard.elapsed() > heartbeat * 3 {
                        return SessionEnd::Retry("server silent".into(), was_up(connected_at));
                    }
                    let mut out = vec![Message::Binary(encode(&AgentMessage::Heartbeat {}).into()), Message::Ping(Vec::new().into())];
                    if !renewal_asked && self.renewal_due() {
                        match identity::csr_pem(&self.identity.key) {
                            Ok(csr_pem) => {
                                tracing::info!("certificate nearing expiry: asking for a new one");
                                out.push(Message::Binary(encode(&AgentMessage::RenewCertificate { csr_pem }).into()));
                                renewal_asked = true;
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot build a renewal CSR"),
                        }
                    }
                    for m in out {
                        if let Err(e) = ws.send(m).await {
                            return SessionEnd::Retry(format!("send failed: {e}"), was_up(connected_at));
                        }
                    }
                }
                changed = async {
                    match &mut statuses {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if !changed {
                        // The engine task is gone; nothing more to forward.
                        statuses = None;
                        continue;
                    }
                    let msg = statuses.as_mut().and_then(|rx| unacked(&rx.borrow_and_update()));
                    let finished = matches!(&msg, Some(AgentMessage::UpdateStatus(u)) if u.state.is_final());
                    if let Some(msg) = msg
                        && let Err(e) = ws.send(Message::Binary(encode(&msg).into())).await
                    {
                        return SessionEnd::Retry(format!("send failed: {e}"), was_up(connected_at));
                    }
                    if finished {
                        // What the device runs changed: report the
                        // `update.*` inventory keys now, not at the next tick.
                        inventory_tick.reset_immediately();
                    }
                }
                batch = async {
                    match &mut self.telemetry {
                        Some(t) => t.next_batch().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = ws.send(Message::Binary(encode(&batch).into())).await {
                        return SessionEnd::Retry(format!("send failed: {e}"), was_up(connected_at));
                    }
                }
                out = async {
                    match &mut self.rules {
                        Some(r) => r.next().await,
                        None => std::future::pending().await,
                    }
                } => match out {
                    crate::rules::RulesOut::Send(msg) => {
                        if let Err(e) = ws.send(Message::Binary(encode(&msg).into())).await {
                            return SessionEnd::Retry(format!("send failed: {e}"), was_up(connected_at));
                        }
                    }
                    // The active rule set changed: report `rules.*` now.
                    crate::rules::RulesOut::Status => inventory_tick.reset_immediately(),
                },
                _ = inventory_tick.tick() => {
                    let current = self.collect_inventory().await;
                    let acked = self.state.inventory_acked_hash.clone();
                    if acked.as_deref() != Some(inventory_hash(&current).as_str())
                        && let Some(msg) = self.inventory_message(&current, acked.as_deref(), &mut in_flight)
                        && let Err(e) = ws.send(Message::Binary(encode(&msg).into())).await
                    {
                        return SessionEnd::Retry(format!("send failed: {e}"), was_up(connected_at));
                    }
                }
                _ = stopped(stop) => {
                    let _ = ws.close(None).await;
                    return SessionEnd::Stop(Stop::Requested);
                }
            }
        }
    }

    /// The device's inventory plus the update engine's `update.*` keys.
    async fn collect_inventory(&self) -> Document {
        let mut doc = self.inventory.collect_raw().await;
        if let Some(u) = &self.update {
            doc.extend(u.inventory());
        }
        if let Some(r) = &self.rules {
            doc.extend(r.inventory());
        }
        bounded(doc)
    }

    /// A full report, or only the changes when the server holds exactly
    /// the inventory we last had acknowledged.
    fn inventory_message(
        &self,
        current: &Document,
        server_hash: Option<&str>,
        in_flight: &mut Option<(String, Document)>,
    ) -> Option<AgentMessage> {
        let hash = inventory_hash(current);
        *in_flight = Some((hash.clone(), current.clone()));
        let base_matches =
            server_hash.is_some() && server_hash == self.state.inventory_acked_hash.as_deref();
        if base_matches {
            let mut delta = crate::inventory::diff(&self.state.inventory_acked, current);
            // Volatile keys (uptime) are left out of diffs; send them along
            // with any change so both sides hold exactly the same document.
            for k in crate::inventory::VOLATILE_KEYS {
                if let Some(v) = current.get(*k)
                    && self.state.inventory_acked.get(*k) != Some(v)
                {
                    delta.set.insert((*k).to_string(), v.clone());
                }
            }
            if delta.set.is_empty() && delta.removed.is_empty() {
                return None;
            }
            // A delta larger than a frame or the entry limit: a full report
            // (which `bounded` keeps within both) is smaller anyway.
            let entries = delta.set.len() + delta.removed.len();
            let size = delta
                .set
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>()
                + delta.removed.iter().map(|k| k.len() + 4).sum::<usize>();
            if entries >= drover_proto::device::MAX_INVENTORY_ENTRIES
                || size > MAX_FRAME_BYTES - 4 * 1024
            {
                return Some(AgentMessage::Inventory {
                    full: true,
                    set: current.clone(),
                    removed: vec![],
                    hash,
                });
            }
            Some(AgentMessage::Inventory {
                full: false,
                set: delta.set,
                removed: delta.removed,
                hash,
            })
        } else {
            Some(AgentMessage::Inventory {
                full: true,
                set: current.clone(),
                removed: vec![],
                hash,
            })
        }
    }

    fn renewal_due(&self) -> bool {
        let (Some(expires), Some(received)) = (
            self.identity.server.cert_expires_at_ms,
            self.identity.server.cert_received_at_ms,
        ) else {
            return false;
        };
        let life = (expires - received).max(1) as f64;
        let left = (expires - now_ms()) as f64;
        left < life * self.renew_at_fraction_left
    }

    async fn handle(
        &mut self,
        msg: ServerMessage,
        in_flight: &mut Option<(String, Document)>,
    ) -> Result<Vec<AgentMessage>, SessionEnd> {
        match msg {
            ServerMessage::Desired {
                revision,
                config,
                update,
                rules,
            } => {
                if let Some(r) = &self.rules {
                    r.offer(rules);
                }
                let mut out = Vec::new();
                if let Some(t) = update {
                    match &self.update {
                        Some(u) => u.offer(t),
                        None => out.push(updates_disabled(&t)),
                    }
                }
                tracing::info!(%revision, keys = config.len(), "applying desired configuration");
                let result = self
                    .applier
                    .apply(&revision, &config, &self.state.applied_config)
                    .await;
                let (status, error) = match result {
                    Ok(()) => (ApplyStatus::Applied, None),
                    Err(e) => {
                        tracing::warn!(%revision, error = %e, "desired configuration not applied");
                        (ApplyStatus::Failed, Some(e))
                    }
                };
                self.state.applied_status = Some(status);
                self.state.applied_error = error.clone();
                if status == ApplyStatus::Applied {
                    // Only a revision that took effect counts as applied: a
                    // failed one is offered again on the next connection.
                    self.state.applied_revision = Some(revision.clone());
                    self.state.applied_config = config.clone();
                    self.stats
                        .applied
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.persist_state();
                let reported = if status == ApplyStatus::Applied {
                    config
                } else {
                    self.state.applied_config.clone()
                };
                out.insert(
                    0,
                    AgentMessage::Reported {
                        revision,
                        status,
                        config: reported,
                        error,
                    },
                );
                Ok(out)
            }
            ServerMessage::InventoryAck { hash } => {
                match in_flight.take() {
                    Some((sent_hash, doc)) if sent_hash == hash => {
                        self.state.inventory_acked_hash = Some(hash);
                        self.state.inventory_acked = doc;
                        self.persist_state();
                        Ok(vec![])
                    }
                    Some((_, doc)) => {
                        // The server applied a delta to another base: resend in full.
                        let h = inventory_hash(&doc);
                        *in_flight = Some((h.clone(), doc.clone()));
                        Ok(vec![AgentMessage::Inventory {
                            full: true,
                            set: doc,
                            removed: vec![],
                            hash: h,
                        }])
                    }
                    None => Ok(vec![]),
                }
            }
            ServerMessage::Certificate {
                certificate_pem,
                expires_at_ms,
            } => {
                if let Err(e) = identity::client_tls(
                    &self.identity.ca_pem,
                    Some((&certificate_pem, &self.identity.key.serialize_pem())),
                ) {
                    tracing::warn!(error = %e, "the renewed certificate is not usable; keeping the old one");
                    return Ok(vec![]);
                }
                self.identity.cert_pem = certificate_pem;
                self.identity.server.cert_expires_at_ms = Some(expires_at_ms);
                self.identity.server.cert_received_at_ms = Some(now_ms());
                if let Some(dir) = &self.persist {
                    // Certificate first, then the facts about it.
                    let ok = drover_fs::write_atomic(
                        &dir.join(identity::CERT_FILE),
                        self.identity.cert_pem.as_bytes(),
                        0o644,
                    )
                    .map_err(|e| e.to_string())
                    .and_then(|_| identity::save_server(dir, &self.identity.server));
                    if let Err(e) = ok {
                        tracing::error!(error = %e, "cannot store the renewed certificate");
                    }
                }
                tracing::info!("certificate renewed");
                Ok(vec![])
            }
            ServerMessage::UpdateAck {
                deployment_id,
                state,
            } => {
                if let Some(u) = &self.update {
                    u.ack(deployment_id, state);
                }
                Ok(vec![])
            }
            ServerMessage::TelemetryAck(ack) => {
                if let Some(r) = self.rules.as_ref().filter(|r| r.owns(&ack)) {
                    r.ack(ack);
                } else if let Some(t) = &self.telemetry {
                    t.ack(ack);
                }
                Ok(vec![])
            }
            ServerMessage::Error {
                code,
                message,
                fatal,
            } => {
                tracing::warn!(%code, %message, fatal, "server reported an error");
                if FATAL_CODES.contains(&code.as_str()) {
                    return Err(SessionEnd::Stop(Stop::Refused { code, message }));
                }
                if fatal {
                    return Err(SessionEnd::Retry(format!("{code}: {message}"), true));
                }
                Ok(vec![])
            }
            ServerMessage::ReportedAck { .. } | ServerMessage::Welcome { .. } => Ok(vec![]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(acked: Option<&Document>) -> Agent {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut state = AgentState::default();
        if let Some(doc) = acked {
            state.inventory_acked = doc.clone();
            state.inventory_acked_hash = Some(inventory_hash(doc));
        }
        Agent {
            identity: Identity {
                device_id: identity::device_id(&key),
                server: identity::ServerInfo {
                    url: "https://127.0.0.1:1".into(),
                    ca_fingerprint: String::new(),
                    cert_expires_at_ms: Some(1_000),
                    cert_received_at_ms: Some(0),
                },
                key: Arc::new(key),
                cert_pem: String::new(),
                ca_pem: String::new(),
            },
            applier: Applier::Simulated,
            inventory: InventorySource::Fixed(Document::new()),
            inventory_interval: Duration::from_secs(60),
            state,
            persist: None,
            bind: None,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(1)),
            renew_at_fraction_left: 1.0 / 3.0,
            stats: Default::default(),
            update: None,
            telemetry: None,
            rules: None,
        }
    }

    fn doc(pairs: &[(&str, &str)]) -> Document {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_changes_are_sent_when_the_server_holds_the_acknowledged_inventory() {
        let old = doc(&[
            ("arch", "x86_64"),
            ("os.id", "debian"),
            ("uptime_secs", "10"),
        ]);
        let new = doc(&[
            ("arch", "x86_64"),
            ("kernel.release", "6.1"),
            ("uptime_secs", "20"),
        ]);
        let a = agent(Some(&old));
        let mut in_flight = None;
        let acked = a.state.inventory_acked_hash.clone();
        match a.inventory_message(&new, acked.as_deref(), &mut in_flight) {
            Some(AgentMessage::Inventory {
                full: false,
                set,
                removed,
                hash,
            }) => {
                assert_eq!(
                    set,
                    doc(&[("kernel.release", "6.1"), ("uptime_secs", "20")]),
                    "changes and the volatile uptime"
                );
                assert_eq!(removed, vec!["os.id".to_string()]);
                assert_eq!(
                    hash,
                    inventory_hash(&new),
                    "the hash is of the whole new inventory"
                );
            }
            other => panic!("expected a delta, got {other:?}"),
        }
        // The server holds something else (or nothing): a full report.
        match a.inventory_message(&new, Some("other"), &mut in_flight) {
            Some(AgentMessage::Inventory {
                full: true, set, ..
            }) => assert_eq!(set, new),
            other => panic!("expected a full report, got {other:?}"),
        }
        match agent(None).inventory_message(&new, None, &mut in_flight) {
            Some(AgentMessage::Inventory { full: true, .. }) => {}
            other => panic!("first report must be full, got {other:?}"),
        }
        // Nothing changed: nothing to send.
        assert!(
            a.inventory_message(&old, acked.as_deref(), &mut in_flight)
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_nack_of_a_delta_triggers_a_full_report_and_an_ack_is_remembered() {
        let old = doc(&[("a", "1")]);
        let new = doc(&[("a", "2")]);
        let mut a = agent(Some(&old));
        let mut in_flight = Some((inventory_hash(&new), new.clone()));
        // The server ended with another hash: resend everything.
        let reply = a
            .handle(
                ServerMessage::InventoryAck {
                    hash: "different".into(),
                },
                &mut in_flight,
            )
            .await;
        assert!(matches!(
            reply.as_deref(),
            Ok([AgentMessage::Inventory { full: true, .. }])
        ));
        let reply = a
            .handle(
                ServerMessage::InventoryAck {
                    hash: inventory_hash(&new),
                },
                &mut in_flight,
            )
            .await;
        assert!(matches!(reply.as_deref(), Ok([])));
        assert_eq!(a.state.inventory_acked, new);
    }

    #[tokio::test]
    async fn desired_configurations_are_applied_and_reported() {
        let mut a = agent(None);
        let mut none = None;
        let good = doc(&[("ntp", "pool")]);
        let reply = a
            .handle(
                ServerMessage::Desired {
                    revision: "r1".into(),
                    config: good.clone(),
                    update: None,
                    rules: None,
                },
                &mut none,
            )
            .await;
        assert!(
            matches!(reply.as_deref(), Ok([AgentMessage::Reported { revision, status: ApplyStatus::Applied, config, .. }]) if revision == "r1" && *config == good)
        );
        let bad = doc(&[("sim.fail_apply", "true")]);
        let reply = a
            .handle(
                ServerMessage::Desired {
                    revision: "r2".into(),
                    config: bad,
                    update: None,
                    rules: None,
                },
                &mut none,
            )
            .await;
        match reply.as_deref() {
            Ok(
                [
                    AgentMessage::Reported {
                        status: ApplyStatus::Failed,
                        config,
                        error,
                        ..
                    },
                ],
            ) => {
                assert_eq!(
                    *config, good,
                    "a failed apply reports what is still in effect"
                );
                assert!(error.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert!(
            a.renewal_due(),
            "a certificate past its expiry is due for renewal"
        );
        let stop = a
            .handle(
                ServerMessage::Error {
                    code: "device_revoked".into(),
                    message: "m".into(),
                    fatal: true,
                },
                &mut none,
            )
            .await;
        assert!(matches!(stop, Err(SessionEnd::Stop(Stop::Refused { .. }))));
    }

    #[tokio::test]
    async fn update_targets_without_an_engine_are_answered_updates_disabled() {
        let mut a = agent(None);
        let mut none = None;
        let target = UpdateTarget {
            deployment_id: "dep-1".into(),
            manifest: "{}".into(),
            key_list: None,
            allow_downgrade: false,
        };
        let reply = a
            .handle(
                ServerMessage::Desired {
                    revision: "r1".into(),
                    config: Document::new(),
                    update: Some(target),
                    rules: None,
                },
                &mut none,
            )
            .await;
        match reply.as_deref() {
            Ok([AgentMessage::Reported { .. }, AgentMessage::UpdateStatus(s)]) => {
                assert_eq!(s.deployment_id, "dep-1");
                assert_eq!(s.state, UpdateState::Failed);
                assert_eq!(s.reason.as_deref(), Some("updates_disabled"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn update_statuses_are_resent_until_a_final_one_is_acked() {
        let status = |state| UpdateStatus {
            deployment_id: "d".into(),
            release: "a@1.0.0".into(),
            state,
            progress: None,
            reason: None,
            message: None,
        };
        let p = |state, acked| {
            Some(Published {
                status: status(state),
                acked,
            })
        };
        assert!(unacked(&None).is_none());
        assert!(unacked(&p(UpdateState::Downloading, false)).is_some());
        assert!(unacked(&p(UpdateState::Committed, false)).is_some());
        assert!(unacked(&p(UpdateState::Committed, true)).is_none());
    }
}
