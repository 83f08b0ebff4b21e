//! Agent-side rules (docs/rules.md): a versioned rule set from the desired
//! state, evaluated on the device every `interval_secs`, hot-reloaded
//! without restarting the agent.
//!
//! - [`observe`]: processes, listening ports and files, from `/proc`.
//! - [`actions`]: kill, stop a service, run a command, block with nftables.
//!
//! [`RulesHandle::spawn`] runs the engine in its own task, like the update
//! engine; the control channel offers it the rule set of each desired
//! state, reports connection changes, sends the event batches it hands over
//! and passes back their acks.
//!
//! **Loading.** A new set is parsed with the same parser the server uses
//! (`drover-rules`) and checked against the processes only the device
//! knows (the agent, its parent, pid 1). A set that fails is refused as a
//! whole: the previous set stays active, and inventory `rules.error` says
//! which line and why. The active set is kept in `DATA/rules.json`, so it
//! applies from the next start on even before the server is reachable.
//!
//! **Events.** Every firing that has an `event` action, every outcome of a
//! destructive action and every load or refusal becomes a telemetry event.
//! The telemetry task has no way to take records from outside yet, so the
//! engine sends its own small batches on the control channel
//! (`AgentMessage::Telemetry`) under this boot's id, with sequence numbers
//! from a range telemetry never reaches ([`SEQ_BASE`] plus the boot time of
//! the agent's start, so a restarted agent never reuses one): kept in
//! memory (bounded; drops are counted in the batch like the telemetry
//! buffer does), oldest first, one batch in flight, deleted when
//! acknowledged. They do not survive an agent restart; see docs/rules.md.
//!
//! This module never runs an action the local policy (`[rules.policy]`)
//! does not allow, and never signals the agent, its parent or pid 1.

pub mod actions;
pub mod observe;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drover_proto::device::{AgentMessage, Document, RuleSetTarget};
use drover_proto::telemetry::{
    ClockQuality, MAX_EVENT_MESSAGE_BYTES, Priority, Record, RecordBody, TelemetryAck,
    TelemetryBatch,
};
use drover_rules::{Action, ActionKind, Condition, FileCheck, Policy, RuleSet, Severity};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use observe::{FileState, HashCache, Proc};

/// The `[rules]` section of agent.toml (reference in docs/agent.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Run rule sets at all.
    pub enabled: bool,
    /// Conditions are evaluated this often.
    pub interval_secs: u64,
    /// Executables and files larger than this are not hashed (a `sha256`
    /// matcher never matches them).
    pub max_hash_bytes: u64,
    /// Events kept in memory while they cannot be sent.
    pub max_pending_events: usize,
    /// Which destructive actions this device allows.
    pub policy: Policy,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            enabled: true,
            interval_secs: 2,
            max_hash_bytes: 64 * 1024 * 1024,
            max_pending_events: 1000,
            policy: Policy::default(),
        }
    }
}

impl RulesConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=3600).contains(&self.interval_secs) {
            return Err(format!(
                "interval_secs must be 1-3600, not {}",
                self.interval_secs
            ));
        }
        if self.max_pending_events < 10 {
            return Err("max_pending_events must be at least 10".into());
        }
        Ok(())
    }
}

/// What the engine needs.
pub struct RulesParts {
    /// Where `rules.json` is kept; `None` keeps the active set in memory.
    pub data_dir: Option<PathBuf>,
    pub config: RulesConfig,
    /// `/proc` and `/sys` (other folders in tests).
    pub proc_dir: PathBuf,
    pub sys_dir: PathBuf,
}

/// What the device reports about its rules (inventory `rules.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesStatus {
    /// The active set's version and source; `None`: no set is active.
    pub version: Option<String>,
    pub source: Option<String>,
    pub rules: usize,
    /// Why the last offered set was refused (cleared when one loads).
    pub error: Option<String>,
    /// `rule:action` for each action the local policy does not allow.
    pub denied: Vec<String>,
}

impl RulesStatus {
    pub fn inventory(&self) -> Document {
        let mut d = Document::new();
        if let (Some(v), Some(s)) = (&self.version, &self.source) {
            d.insert("rules.version".into(), v.clone());
            d.insert("rules.source".into(), s.clone());
            d.insert("rules.count".into(), self.rules.to_string());
        }
        if let Some(e) = &self.error {
            d.insert("rules.error".into(), truncate(e, 1024));
        }
        if !self.denied.is_empty() {
            d.insert(
                "rules.denied".into(),
                truncate(&self.denied.join(","), 1024),
            );
        }
        d
    }
}

/// Counts for tests and logs.
#[derive(Debug, Default)]
pub struct RulesStats {
    pub evaluations: AtomicU64,
    pub firings: AtomicU64,
    pub events_acked: AtomicU64,
}

/// What the control channel should do next for the rules.
#[derive(Debug)]
pub enum RulesOut {
    /// Send this batch of events.
    Send(AgentMessage),
    /// The status changed: report the inventory soon.
    Status,
}

/// The control channel's side of the rules engine.
pub struct RulesHandle {
    offers: mpsc::UnboundedSender<Option<RuleSetTarget>>,
    connected: watch::Sender<bool>,
    acks: mpsc::UnboundedSender<TelemetryAck>,
    batches: mpsc::Receiver<TelemetryBatch>,
    status: watch::Receiver<RulesStatus>,
    stream: String,
    pub stats: Arc<RulesStats>,
}

/// The active set as stored in `DATA/rules.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    source: String,
    version: String,
    text: String,
}

const FILE: &str = "rules.json";

/// Rule events are numbered from here up, within the boot's sequence space:
/// far above anything the telemetry buffer reaches, so the two never
/// collide and acks tell which one they are for.
pub const SEQ_BASE: u64 = 1 << 62;

impl RulesHandle {
    /// Loads the stored set (if any) and starts the engine on the current
    /// runtime.
    pub fn spawn(parts: RulesParts) -> RulesHandle {
        let (offer_tx, offer_rx) = mpsc::unbounded_channel();
        let (conn_tx, conn_rx) = watch::channel(false);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(1);
        let (status_tx, status_rx) = watch::channel(RulesStatus::default());
        let (result_tx, result_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(RulesStats::default());
        // This boot's id, as telemetry uses (a separate id would look like a
        // reboot to the server); a private one only where there is none.
        let stream = crate::telemetry::clock::boot_id()
            .unwrap_or_else(|_| format!("rules-{}", crate::enroll::now_ms()));
        // Milliseconds since boot at start, times 2^20: each start of the
        // agent gets fresh numbers for about a million events.
        let first_seq = SEQ_BASE + (crate::telemetry::clock::boottime_ms() << 20);
        let mut task = Task {
            collector: crate::telemetry::collect::Collector::new(
                &parts.proc_dir,
                &parts.sys_dir,
                &[],
            ),
            cfg: parts.config,
            proc_dir: parts.proc_dir,
            data_dir: parts.data_dir,
            active: None,
            status: status_tx,
            hashes: HashCache::default(),
            pending: VecDeque::new(),
            next_seq: first_seq,
            dropped: 0,
            in_flight: None,
            connected: false,
            stream: stream.clone(),
            out: out_tx,
            results: result_tx,
            nft_used: false,
            refused: None,
            stats: stats.clone(),
        };
        task.load_stored();
        tokio::spawn(task.run(offer_rx, conn_rx, ack_rx, result_rx));
        RulesHandle {
            offers: offer_tx,
            connected: conn_tx,
            acks: ack_tx,
            batches: out_rx,
            status: status_rx,
            stream,
            stats,
        }
    }

    /// The rule set of a desired state (`None`: no rules).
    pub fn offer(&self, target: Option<RuleSetTarget>) {
        let _ = self.offers.send(target);
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.send_replace(up);
    }

    /// Whether a telemetry ack is for the rules' events (their sequence
    /// range), not for the telemetry buffer's.
    pub fn owns(&self, ack: &TelemetryAck) -> bool {
        ack.boot_id == self.stream && ack.up_to_seq >= SEQ_BASE
    }

    pub fn ack(&self, ack: TelemetryAck) {
        let _ = self.acks.send(ack);
    }

    pub fn status(&self) -> RulesStatus {
        self.status.borrow().clone()
    }

    /// The `rules.*` inventory keys.
    pub fn inventory(&self) -> Document {
        self.status.borrow().inventory()
    }

    /// The next thing to send or report.
    pub async fn next(&mut self) -> RulesOut {
        tokio::select! {
            b = self.batches.recv() => match b {
                Some(b) => RulesOut::Send(AgentMessage::Telemetry(b)),
                None => std::future::pending().await,
            },
            r = self.status.changed() => match r {
                Ok(()) => {
                    self.status.borrow_and_update();
                    RulesOut::Status
                }
                Err(_) => std::future::pending().await,
            },
        }
    }
}

/// Per-rule memory between evaluations.
#[derive(Debug, Default)]
struct RuleState {
    /// The condition held at the last evaluation (edge detection).
    holds: bool,
    /// Processes (pid, start time) that matched last time.
    seen: HashSet<(u32, u64)>,
    samples: VecDeque<(Instant, f64)>,
    first_sample: Option<Instant>,
    baseline: Option<FileState>,
}

struct Active {
    set: RuleSet,
    source: String,
    text: String,
    states: Vec<RuleState>,
}

/// A rule whose condition just became true.
struct Firing {
    rule: usize,
    procs: Vec<Proc>,
    what: String,
}

struct Task {
    cfg: RulesConfig,
    proc_dir: PathBuf,
    data_dir: Option<PathBuf>,
    active: Option<Active>,
    status: watch::Sender<RulesStatus>,
    collector: crate::telemetry::collect::Collector,
    hashes: HashCache,
    pending: VecDeque<Record>,
    next_seq: u64,
    /// Events dropped for room and not yet reported in an acked batch.
    dropped: u64,
    /// (highest seq, dropped count carried, when) of the batch in flight.
    in_flight: Option<(u64, u64, Instant)>,
    connected: bool,
    stream: String,
    out: mpsc::Sender<TelemetryBatch>,
    results: mpsc::UnboundedSender<(String, ActionKind, actions::Outcome)>,
    /// A block was added since the last load: remove the table at the next.
    nft_used: bool,
    /// (source, text) of the last refused set, so it is refused once.
    refused: Option<(String, String)>,
    stats: Arc<RulesStats>,
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl Task {
    async fn run(
        mut self,
        mut offers: mpsc::UnboundedReceiver<Option<RuleSetTarget>>,
        mut connected: watch::Receiver<bool>,
        mut acks: mpsc::UnboundedReceiver<TelemetryAck>,
        mut results: mpsc::UnboundedReceiver<(String, ActionKind, actions::Outcome)>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(self.cfg.interval_secs.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.nft_used {
            actions::clear_blocks().await;
            self.nft_used = false;
        }
        loop {
            tokio::select! {
                _ = tick.tick() => self.evaluate(),
                o = offers.recv() => match o {
                    Some(t) => self.offer(t).await,
                    None => return,
                },
                r = connected.changed() => {
                    if r.is_err() {
                        return;
                    }
                    self.connected = *connected.borrow_and_update();
                    self.in_flight = None;
                }
                Some(a) = acks.recv() => self.on_ack(a),
                Some((rule, kind, outcome)) = results.recv() => self.outcome(&rule, kind, outcome),
            }
            self.flush();
        }
    }

    fn load_stored(&mut self) {
        let Some(dir) = &self.data_dir else { return };
        let Ok(bytes) = std::fs::read(dir.join(FILE)) else {
            return;
        };
        let stored: Stored = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "DATA/rules.json is damaged; no rule set is active until the server sends one");
                return;
            }
        };
        // Blocks of the previous run may still be in place.
        self.nft_used = true;
        self.install(RuleSetTarget {
            source: stored.source,
            version: stored.version,
            text: stored.text,
        });
    }

    /// A rule set from a desired state; the same one again changes nothing.
    async fn offer(&mut self, target: Option<RuleSetTarget>) {
        let Some(t) = target else {
            if let Some(a) = self.active.take() {
                tracing::info!(version = %a.set.version, "no rule set in the desired state: rules stopped");
                self.clear_blocks().await;
                if let Some(dir) = &self.data_dir {
                    let _ = std::fs::remove_file(dir.join(FILE));
                }
                self.event(
                    "rules.unloaded",
                    Severity::Info,
                    format!("rule set {} from {} removed", a.set.version, a.source),
                    BTreeMap::new(),
                );
            }
            self.refused = None;
            self.status.send_replace(RulesStatus::default());
            return;
        };
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.source == t.source && a.text == t.text)
            || self.refused.as_ref() == Some(&(t.source.clone(), t.text.clone()))
        {
            return;
        }
        if self.install(t) {
            self.clear_blocks().await;
        }
    }

    async fn clear_blocks(&mut self) {
        if self.nft_used {
            actions::clear_blocks().await;
            self.nft_used = false;
        }
    }

    /// Parses and checks `t`; makes it active or keeps the previous set.
    /// Returns whether it became active.
    fn install(&mut self, t: RuleSetTarget) -> bool {
        let checked = drover_rules::parse(&t.text).and_then(|set| {
            let needs_hash = set.rules.iter().any(|r| {
                r.actions.iter().any(|a| matches!(a, Action::Kill { .. }))
                    && r.condition
                        .process_match()
                        .is_some_and(|m| m.sha256.is_some())
            });
            let protected = observe::protected(&self.proc_dir, self.cfg.max_hash_bytes, needs_hash);
            drover_rules::check_protected(&set, &protected).map(|_| set)
        });
        let set = match checked {
            Ok(set) => set,
            Err(e) => {
                let keeps = match &self.active {
                    Some(a) => format!("version {} from {} stays active", a.set.version, a.source),
                    None => "no rule set is active".into(),
                };
                let message = format!(
                    "rule set version {} from {} refused: {e}; {keeps}",
                    t.version, t.source
                );
                tracing::warn!(%message, "rule set refused");
                self.refused = Some((t.source.clone(), t.text.clone()));
                let mut status = self.status.borrow().clone();
                status.error = Some(message.clone());
                self.status.send_replace(status);
                self.event("rules.refused", Severity::Warning, message, BTreeMap::new());
                return false;
            }
        };
        let denied: Vec<String> = set
            .denied(&self.cfg.policy)
            .into_iter()
            .map(|(r, k)| format!("{r}:{}", k.as_str()))
            .collect();
        if !denied.is_empty() {
            tracing::warn!(
                ?denied,
                "the local policy ([rules.policy] allow) does not allow some actions of the new rule set; they will be reported as denied"
            );
        }
        tracing::info!(version = %set.version, source = %t.source, rules = set.rules.len(), "rule set active");
        if let Some(dir) = &self.data_dir {
            let stored = Stored {
                source: t.source.clone(),
                version: set.version.clone(),
                text: t.text.clone(),
            };
            let bytes = serde_json::to_vec(&stored).expect("serializes");
            if let Err(e) = drover_fs::write_atomic(&dir.join(FILE), &bytes, 0o600) {
                tracing::error!(error = %e, "cannot store the active rule set; it applies until the agent stops");
            }
        }
        self.status.send_replace(RulesStatus {
            version: Some(set.version.clone()),
            source: Some(t.source.clone()),
            rules: set.rules.len(),
            error: None,
            denied,
        });
        self.refused = None;
        self.event(
            "rules.loaded",
            Severity::Info,
            format!(
                "rule set version {} from {} active ({} rules)",
                set.version,
                t.source,
                set.rules.len()
            ),
            BTreeMap::new(),
        );
        let states = set.rules.iter().map(|_| RuleState::default()).collect();
        self.active = Some(Active {
            set,
            source: t.source,
            text: t.text,
            states,
        });
        true
    }

    fn evaluate(&mut self) {
        let Some(active) = &mut self.active else {
            return;
        };
        self.stats.evaluations.fetch_add(1, Ordering::Relaxed);
        let conds = || active.set.rules.iter().map(|r| &r.condition);
        let procs = if conds().any(|c| c.process_match().is_some()) {
            observe::processes(&self.proc_dir)
        } else {
            Vec::new()
        };
        let ports = if conds().any(|c| matches!(c, Condition::PortListening { .. })) {
            observe::listening(&self.proc_dir)
        } else {
            HashSet::new()
        };
        let mut metrics = BTreeMap::new();
        if conds().any(|c| matches!(c, Condition::Metric { .. })) {
            for p in self
                .collector
                .sample(crate::telemetry::clock::boottime_ms())
            {
                metrics.entry(p.name).or_insert(p.value);
            }
        }
        let now = Instant::now();
        let interval = Duration::from_secs(self.cfg.interval_secs);
        let max_hash = self.cfg.max_hash_bytes;
        let proc_dir = self.proc_dir.clone();
        let hashes = &mut self.hashes;
        let mut fired = Vec::new();
        for (i, (rule, st)) in active
            .set
            .rules
            .iter()
            .zip(active.states.iter_mut())
            .enumerate()
        {
            let mut edge = |holds: bool, what: String, fired: &mut Vec<Firing>| {
                if holds && !st.holds {
                    fired.push(Firing {
                        rule: i,
                        procs: Vec::new(),
                        what,
                    });
                }
                st.holds = holds;
            };
            match &rule.condition {
                Condition::ProcessRunning { .. } => {
                    let m = rule.condition.process_match().expect("a process condition");
                    let matched: Vec<&Proc> = procs
                        .iter()
                        .filter(|p| {
                            m.matches(&p.comm, p.exe.as_deref(), || {
                                hashes.exe_sha256(&proc_dir, p, max_hash)
                            })
                        })
                        .collect();
                    let new: Vec<Proc> = matched
                        .iter()
                        .filter(|p| !st.seen.contains(&(p.pid, p.start)))
                        .map(|p| (*p).clone())
                        .collect();
                    st.seen = matched.iter().map(|p| (p.pid, p.start)).collect();
                    if !new.is_empty() {
                        let what = new
                            .iter()
                            .map(|p| format!("{} (pid {})", p.comm, p.pid))
                            .collect::<Vec<_>>()
                            .join(", ");
                        fired.push(Firing {
                            rule: i,
                            procs: new,
                            what: format!("running: {what}"),
                        });
                    }
                }
                Condition::ProcessMissing { .. } => {
                    let m = rule.condition.process_match().expect("a process condition");
                    let any = procs.iter().any(|p| {
                        m.matches(&p.comm, p.exe.as_deref(), || {
                            hashes.exe_sha256(&proc_dir, p, max_hash)
                        })
                    });
                    edge(!any, "no matching process runs".into(), &mut fired);
                }
                Condition::PortListening { port, protocol } => {
                    edge(
                        ports.contains(&(*protocol, *port)),
                        format!("something listens on {} port {port}", protocol.as_str()),
                        &mut fired,
                    );
                }
                Condition::Metric {
                    metric,
                    above,
                    below,
                    window_secs,
                } => {
                    let window = Duration::from_secs(*window_secs);
                    if let Some(v) = metrics.get(metric) {
                        st.samples.push_back((now, *v));
                        st.first_sample.get_or_insert(now);
                    }
                    while st
                        .samples
                        .front()
                        .is_some_and(|(t, _)| now.duration_since(*t) > window)
                    {
                        st.samples.pop_front();
                    }
                    let covered = st
                        .first_sample
                        .is_some_and(|t| now.duration_since(t) + interval >= window);
                    let n = st.samples.len();
                    let mean = st.samples.iter().map(|(_, v)| v).sum::<f64>() / n.max(1) as f64;
                    let holds = covered
                        && n > 0
                        && above.is_none_or(|a| mean > a)
                        && below.is_none_or(|b| mean < b);
                    let threshold = match (above, below) {
                        (Some(a), _) => format!("above {a}"),
                        (_, Some(b)) => format!("below {b}"),
                        _ => String::new(),
                    };
                    edge(
                        holds,
                        format!("{metric} averaged {mean:.2} over {window_secs} s ({threshold})"),
                        &mut fired,
                    );
                }
                Condition::FileChanged {
                    path,
                    checks,
                    sha256,
                } => {
                    let hash = sha256.is_some() || checks.contains(&FileCheck::Sha256);
                    let cur = observe::file_state(Path::new(path), hash, max_hash);
                    if let Some(want) = sha256 {
                        let differs = cur
                            .sha256
                            .as_deref()
                            .is_none_or(|h| !h.eq_ignore_ascii_case(want));
                        edge(
                            differs,
                            format!("{path} does not have the expected SHA-256"),
                            &mut fired,
                        );
                    } else {
                        match &st.baseline {
                            None => st.baseline = Some(cur),
                            Some(base) => {
                                let what = changes(base, &cur, checks);
                                if !what.is_empty() {
                                    fired.push(Firing {
                                        rule: i,
                                        procs: Vec::new(),
                                        what: format!("{path} changed: {}", what.join(", ")),
                                    });
                                    st.baseline = Some(cur);
                                }
                            }
                        }
                    }
                }
            }
        }
        for f in fired {
            self.fire(f);
        }
    }

    /// Runs a rule's actions (each as far as the policy allows).
    fn fire(&mut self, f: Firing) {
        let Some(active) = &self.active else { return };
        let rule = active.set.rules[f.rule].clone();
        let version = active.set.version.clone();
        self.stats.firings.fetch_add(1, Ordering::Relaxed);
        tracing::info!(rule = %rule.name, what = %f.what, "rule fired");
        let labels = |extra: &[(&str, &str)]| {
            let mut l = BTreeMap::from([
                ("rule".to_string(), rule.name.clone()),
                ("rules_version".to_string(), version.clone()),
            ]);
            for (k, v) in extra {
                l.insert((*k).to_string(), truncate(v, 256));
            }
            l
        };
        for action in &rule.actions {
            let kind = action.kind();
            if !self.cfg.policy.allows(kind) {
                self.outcome(
                    &rule.name,
                    kind,
                    actions::Outcome::denied(format!(
                        "the device's local policy does not allow {} ([rules.policy] allow in agent.toml); {}",
                        kind.as_str(),
                        f.what
                    )),
                );
                continue;
            }
            let results = self.results.clone();
            let name = rule.name.clone();
            match action {
                Action::Event {
                    name: event,
                    severity,
                    message,
                } => {
                    let event = event
                        .clone()
                        .unwrap_or_else(|| format!("rule.{}", rule.name));
                    let message = match message {
                        Some(m) => format!("{m} ({})", f.what),
                        None => format!("rule {} fired: {}", rule.name, f.what),
                    };
                    self.event(&event, *severity, message, labels(&[]));
                }
                Action::Kill { grace_secs } => {
                    for p in &f.procs {
                        let (results, name, proc_dir) =
                            (results.clone(), name.clone(), self.proc_dir.clone());
                        let (pid, start, comm) = (p.pid, p.start, p.comm.clone());
                        let grace = Duration::from_secs(*grace_secs);
                        tokio::spawn(async move {
                            let o = actions::kill(&proc_dir, pid, start, &comm, grace).await;
                            let _ = results.send((name, ActionKind::Kill, o));
                        });
                    }
                }
                Action::StopService { service } => {
                    let service = service.clone();
                    tokio::spawn(async move {
                        let o = actions::stop_service(&service).await;
                        let _ = results.send((name, ActionKind::StopService, o));
                    });
                }
                Action::RunCommand { argv, timeout_secs } => {
                    let argv = argv.clone();
                    let timeout = Duration::from_secs(*timeout_secs);
                    tokio::spawn(async move {
                        let o = actions::run_command(&argv, timeout).await;
                        let _ = results.send((name, ActionKind::RunCommand, o));
                    });
                }
                Action::Block {
                    address,
                    port,
                    protocol,
                    direction,
                } => {
                    self.nft_used = true;
                    let script = actions::nft_script(
                        &rule.name,
                        address.as_deref(),
                        *port,
                        *protocol,
                        *direction,
                    );
                    tokio::spawn(async move {
                        let o = actions::block(&script).await;
                        let _ = results.send((name, ActionKind::Block, o));
                    });
                }
            }
        }
    }

    /// A destructive action's outcome, as a `rules.action` event.
    fn outcome(&mut self, rule: &str, kind: ActionKind, o: actions::Outcome) {
        let severity = if o.result == "ok" {
            Severity::Info
        } else {
            Severity::Warning
        };
        tracing::info!(%rule, action = kind.as_str(), result = o.result, message = %o.message, "rule action");
        let version = self
            .active
            .as_ref()
            .map(|a| a.set.version.clone())
            .unwrap_or_default();
        let labels = BTreeMap::from([
            ("rule".to_string(), rule.to_string()),
            ("rules_version".to_string(), version),
            ("action".to_string(), kind.as_str().to_string()),
            ("result".to_string(), o.result.to_string()),
        ]);
        self.event("rules.action", severity, o.message, labels);
    }

    /// Queues an event for the server (bounded: the oldest go first).
    fn event(
        &mut self,
        name: &str,
        severity: Severity,
        message: String,
        labels: BTreeMap<String, String>,
    ) {
        let time_ms = crate::enroll::now_ms();
        let clock = if time_ms >= crate::telemetry::clock::MIN_PLAUSIBLE_MS {
            ClockQuality::Synced
        } else {
            ClockQuality::Unsynced
        };
        if self.pending.len() >= self.cfg.max_pending_events {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(Record {
            seq: self.next_seq,
            time_ms,
            mono_ms: crate::telemetry::clock::boottime_ms(),
            clock,
            priority: Priority::High,
            labels,
            body: RecordBody::Event {
                name: name.to_string(),
                severity: severity.as_str().to_string(),
                message: truncate(&message, MAX_EVENT_MESSAGE_BYTES),
            },
        });
        self.next_seq += 1;
    }

    /// Hands one batch to the channel when connected and none is in flight
    /// (or the one in flight went unanswered for 30 s).
    fn flush(&mut self) {
        // Only batches with records: an empty one would be acked with
        // seq 0, which could not be told from a telemetry ack.
        if !self.connected || self.pending.is_empty() {
            return;
        }
        if self
            .in_flight
            .is_some_and(|(_, _, at)| at.elapsed() < Duration::from_secs(30))
        {
            return;
        }
        let budget = drover_proto::device::MAX_FRAME_BYTES - 1024;
        let mut size = 0;
        let mut records = Vec::new();
        for r in self
            .pending
            .iter()
            .take(drover_proto::telemetry::MAX_BATCH_RECORDS)
        {
            let n = serde_json::to_vec(r).map_or(budget, |v| v.len() + 1);
            if size + n > budget && !records.is_empty() {
                break;
            }
            size += n;
            records.push(r.clone());
        }
        let up_to = records.last().map_or(0, |r| r.seq);
        let batch = TelemetryBatch {
            boot_id: self.stream.clone(),
            records,
            dropped: self.dropped,
        };
        if self.out.try_send(batch).is_ok() {
            self.in_flight = Some((up_to, self.dropped, Instant::now()));
        }
    }

    fn on_ack(&mut self, ack: TelemetryAck) {
        if ack.boot_id != self.stream || ack.up_to_seq < SEQ_BASE {
            return;
        }
        if !ack.rejected.is_empty() {
            tracing::warn!(first = %ack.rejected[0].reason, rejected = ack.rejected.len(), "the server refused rule events");
        }
        let mut n = 0;
        while self.pending.front().is_some_and(|r| r.seq <= ack.up_to_seq) {
            self.pending.pop_front();
            n += 1;
        }
        self.stats.events_acked.fetch_add(n, Ordering::Relaxed);
        if let Some((up_to, dropped, _)) = self.in_flight
            && up_to <= ack.up_to_seq
        {
            self.dropped = self.dropped.saturating_sub(dropped);
            self.in_flight = None;
        }
    }
}

/// Which of `checks` differ between two states of a file.
fn changes(a: &FileState, b: &FileState, checks: &[FileCheck]) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.exists != b.exists {
        out.push(if b.exists { "created" } else { "deleted" });
        return out;
    }
    for c in checks {
        let differs = match c {
            FileCheck::Mtime => a.mtime_ns != b.mtime_ns,
            FileCheck::Size => a.size != b.size,
            FileCheck::Sha256 => a.sha256 != b.sha256,
        };
        if differs {
            out.push(match c {
                FileCheck::Mtime => "mtime",
                FileCheck::Size => "size",
                FileCheck::Sha256 => "sha256",
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
