//! The update engine: the explicit state machine that takes a deployment
//! from the server's desired state to `committed`, `rolled_back` or
//! `failed`, journaling each state before acting on it
//! (docs/updates.md has the diagram and the reason codes).
//!
//! ```text
//! offer ─▶ downloading ─▶ verifying ─▶ installing ─▶ activating ─▶ health_check ─▶ committed
//!   │           │             │             │             │               │
//!   ▼           ▼             ▼             └─────────────┴───────┬───────┘
//! failed      failed        failed                          rolling_back ─▶ rolled_back
//!                                                                  │        (failed when
//!                                                                  ▼         nothing was
//!                                                           failed (rollback_failed)  activated)
//! ```
//!
//! [`Engine::step`] acts on the journaled state once and journals the next
//! one, so a kill -9 between any two steps (or inside one: every installer
//! step is idempotent) resumes where it stopped. [`UpdateHandle::spawn`]
//! runs the engine in its own task: the control channel only hands it
//! targets, acks and connection changes, and sends the statuses it
//! publishes, so a long download never delays a heartbeat.
//!
//! Policy for a second deployment: a new target replaces the current one
//! while nothing is installed yet (downloading, verifying: the old one is
//! reported `failed`/`superseded`); once installing began, the current
//! deployment is finished (committed or rolled back) first and the new one
//! starts after. The engine never installs anything the device's own root
//! keys did not vouch for.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_proto::device::{Document, UpdateState, UpdateStatus, UpdateTarget};
use drover_release::{
    HealthCheck, Manifest, Payload, PublicKey, SignedKeyList, SignedManifest, TrustedManifest,
};
use tokio::sync::{mpsc, watch};

use super::config::UpdateConfig;
use super::download::{self, ArtifactSource, DownloadError, DownloadOptions};
use super::installer::{Activation, InstallContext, InstallError, Installer};
use super::journal::{self, DownloadProgress, Installed, InstalledRelease, Journal};

/// Saved at enrollment from the token's `release_roots`.
pub const RELEASE_ROOTS_FILE: &str = "release_roots.json";
/// A restarted agent gets at least this long (or the whole timeout, when
/// shorter) to pass the health checks, even if the deadline passed while it
/// was down.
const RESUMED_HEALTH_GRACE: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// What the engine asks of whoever drives it after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Call `step` again.
    Continue,
    /// Nothing to do until a new target arrives.
    Idle,
    /// A download failed for a passing reason: try again after this long.
    RetryAfter(Duration),
    /// Reboot the device (the state is journaled).
    Reboot,
    /// Restart the agent (self-update; the state is journaled).
    RestartAgent,
}

/// The latest status and whether the server acknowledged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub status: UpdateStatus,
    pub acked: bool,
}

/// Everything an engine needs.
pub struct EngineParts {
    pub data_dir: PathBuf,
    pub config: UpdateConfig,
    pub installers: Vec<Box<dyn Installer>>,
    pub source: Arc<dyn ArtifactSource>,
    /// Whether the control channel is up (for the `reconnect` check).
    pub connected: watch::Receiver<bool>,
    /// Where `process` health checks look (`/proc`).
    pub proc_dir: PathBuf,
}

/// Root keys from the config plus those saved at enrollment.
pub fn load_roots(cfg: &UpdateConfig, data: &Path) -> Result<Vec<PublicKey>, String> {
    let mut texts = cfg.release_root_keys.clone();
    let path = data.join(RELEASE_ROOTS_FILE);
    match std::fs::read(&path) {
        Ok(b) => {
            let saved: Vec<String> = serde_json::from_slice(&b)
                .map_err(|e| format!("{} is damaged: {e}", path.display()))?;
            texts.extend(saved);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    let mut keys = Vec::new();
    for t in texts {
        let k = PublicKey::parse(&t).map_err(|e| format!("release root key: {e}"))?;
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    Ok(keys)
}

/// Adds `roots` to `DATA/release_roots.json` (enrollment).
pub fn save_roots(data: &Path, roots: &[String]) -> Result<(), String> {
    for r in roots {
        PublicKey::parse(r).map_err(|e| format!("the enrollment token's release root key: {e}"))?;
    }
    let path = data.join(RELEASE_ROOTS_FILE);
    let mut all: Vec<String> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for r in roots {
        if !all.contains(r) {
            all.push(r.clone());
        }
    }
    drover_fs::write_atomic(
        &path,
        &serde_json::to_vec_pretty(&all).expect("serializes"),
        0o600,
    )
    .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Renames a damaged `DATA/update/<name>` to `<name>.damaged-<ms>`.
fn set_aside(data: &Path, name: &str, error: &str) {
    let from = journal::update_dir(data).join(name);
    let to = journal::update_dir(data).join(format!("{name}.damaged-{}", crate::enroll::now_ms()));
    match std::fs::rename(&from, &to) {
        Ok(()) => {
            tracing::error!(%error, kept = %to.display(), "update journal damaged; set aside, starting afresh")
        }
        Err(e) => {
            tracing::error!(%error, rename_error = %e, "update journal damaged and cannot be set aside")
        }
    }
}

fn now_secs() -> i64 {
    crate::enroll::now_ms() / 1000
}

/// A step's failure: reason code and message.
type Failure = (&'static str, String);

pub struct Engine {
    data: PathBuf,
    cfg: UpdateConfig,
    roots: Vec<PublicKey>,
    installers: Arc<Vec<Box<dyn Installer>>>,
    source: Arc<dyn ArtifactSource>,
    connected: watch::Receiver<bool>,
    proc_dir: PathBuf,
    journal: Option<Journal>,
    installed: Installed,
    status_tx: watch::Sender<Option<Published>>,
    inventory: Arc<Mutex<Document>>,
    /// A target that waits for the current deployment to finish.
    queued: Option<UpdateTarget>,
}

impl Engine {
    /// Opens the engine from what `DATA/update` holds.
    pub fn open(parts: EngineParts) -> Result<Engine, String> {
        let roots = load_roots(&parts.config, &parts.data_dir)?;
        // A damaged journal must not stop the agent (the device would become
        // unmanageable): keep it aside for a human and start afresh.
        let journal = Journal::load(&parts.data_dir).unwrap_or_else(|e| {
            set_aside(&parts.data_dir, journal::JOURNAL_FILE, &e);
            None
        });
        let installed = Installed::load(&parts.data_dir).unwrap_or_else(|e| {
            set_aside(&parts.data_dir, journal::INSTALLED_FILE, &e);
            Installed::default()
        });
        let (status_tx, _) = watch::channel(None);
        let mut e = Engine {
            data: parts.data_dir,
            cfg: parts.config,
            roots,
            installers: Arc::new(parts.installers),
            source: parts.source,
            connected: parts.connected,
            proc_dir: parts.proc_dir,
            journal,
            installed,
            status_tx,
            inventory: Default::default(),
            queued: None,
        };
        if let Some(j) = &e.journal {
            tracing::info!(deployment = %j.deployment_id, release = %j.release, state = j.state.as_str(), "update journal found");
        }
        e.publish();
        Ok(e)
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    pub fn installed(&self) -> &Installed {
        &self.installed
    }

    /// The latest status, for the control channel.
    pub fn statuses(&self) -> watch::Receiver<Option<Published>> {
        self.status_tx.subscribe()
    }

    /// `update.*` inventory keys.
    pub fn inventory(&self) -> Document {
        self.inventory.lock().expect("inventory lock").clone()
    }

    fn update_dir(&self) -> PathBuf {
        journal::update_dir(&self.data)
    }

    fn work_dir(&self) -> PathBuf {
        self.update_dir().join("work")
    }

    fn publish(&mut self) {
        let mut inv = Document::new();
        for (name, r) in &self.installed.releases {
            inv.insert(format!("update.{name}.version"), r.version.clone());
            inv.insert(format!("update.{name}.sha256"), r.payload_sha256.join(","));
        }
        if let Some(j) = &self.journal {
            inv.insert("update.state".into(), j.state.as_str().into());
            inv.insert("update.deployment".into(), j.deployment_id.clone());
            self.status_tx.send_replace(Some(Published {
                status: j.status(),
                acked: j.acked,
            }));
        } else {
            inv.insert("update.state".into(), "idle".into());
        }
        *self.inventory.lock().expect("inventory lock") = inv;
    }

    /// Journals `f` applied to the current journal, then makes it current.
    fn transition(&mut self, f: impl FnOnce(&mut Journal)) -> Result<(), String> {
        let mut next = self.journal.clone().expect("a deployment is under way");
        let before = next.state;
        f(&mut next);
        next.save(&self.data)?;
        if before != next.state {
            tracing::info!(
                deployment = %next.deployment_id,
                release = %next.release,
                from = before.as_str(),
                to = next.state.as_str(),
                reason = next.reason.as_deref().unwrap_or(""),
                "update state"
            );
        }
        self.journal = Some(next);
        self.publish();
        Ok(())
    }

    /// A journal write failed: act on nothing, try again later.
    fn journal_failed(e: String) -> Step {
        tracing::error!(error = %e, "cannot write the update journal; retrying in 30 s");
        Step::RetryAfter(Duration::from_secs(30))
    }

    fn fail(&mut self, reason: &str, message: String) -> Step {
        tracing::warn!(reason, %message, "update failed");
        let reason = reason.to_string();
        match self.transition(|j| {
            j.state = UpdateState::Failed;
            j.reason = Some(reason);
            j.message = Some(message);
            j.acked = false;
        }) {
            Ok(()) => Step::Continue,
            Err(e) => Self::journal_failed(e),
        }
    }

    fn begin_rollback(&mut self, reason: &str, message: String) -> Step {
        tracing::warn!(reason, %message, "rolling back the update");
        let reason = reason.to_string();
        match self.transition(|j| {
            j.state = UpdateState::RollingBack;
            j.reason = Some(reason);
            j.message = Some(message);
            j.awaiting_restart = false;
        }) {
            Ok(()) => Step::Continue,
            Err(e) => Self::journal_failed(e),
        }
    }

    /// A server acknowledged a final status.
    pub fn ack(&mut self, deployment_id: &str, state: UpdateState) {
        let matches = self.journal.as_ref().is_some_and(|j| {
            j.deployment_id == deployment_id && j.state == state && state.is_final() && !j.acked
        });
        if matches && let Err(e) = self.transition(|j| j.acked = true) {
            tracing::warn!(error = %e, "cannot record the update ack");
        }
    }

    /// The desired state names `target`.
    pub fn offer(&mut self, target: UpdateTarget) {
        match &self.journal {
            Some(j) if j.deployment_id == target.deployment_id => {}
            Some(j) if !j.state.is_final() => {
                if matches!(
                    j.state,
                    UpdateState::Pending | UpdateState::Downloading | UpdateState::Verifying
                ) {
                    let msg = format!(
                        "deployment {} replaced it before anything was installed",
                        target.deployment_id
                    );
                    self.fail("superseded", msg);
                    self.cleanup();
                    self.start(target);
                } else {
                    tracing::info!(
                        deployment = %target.deployment_id,
                        "a new deployment waits for the current one to finish"
                    );
                    self.queued = Some(target);
                }
            }
            _ => self.start(target),
        }
    }

    fn installer(&self, kind: &str) -> Option<&dyn Installer> {
        self.installers
            .iter()
            .find(|i| i.kind() == kind)
            .map(|b| b.as_ref())
    }

    /// Installed version of release `name`: what this engine committed, or
    /// what an installer finds on the device.
    fn installed_version(&self, m: &Manifest) -> Option<String> {
        if let Some(r) = self.installed.releases.get(&m.name) {
            return Some(r.version.clone());
        }
        m.payloads
            .iter()
            .filter_map(|p| self.installer(&p.kind))
            .find_map(|i| i.installed_version(&m.name))
    }

    /// Every trust check of `drover_release::verify` on the journaled texts.
    fn verify(&self, j: &Journal) -> Result<TrustedManifest, Failure> {
        let signed =
            SignedManifest::from_json(&j.manifest).map_err(|e| ("manifest_malformed", e))?;
        let key_list = match &j.key_list {
            Some(text) => Some(serde_json::from_str::<SignedKeyList>(text).map_err(|e| {
                (
                    "key_list_untrusted",
                    format!("the release key list is malformed: {e}"),
                )
            })?),
            None => None,
        };
        let parsed = signed.parse_unverified().ok();
        let installed = parsed.as_ref().and_then(|m| self.installed_version(m));
        drover_release::verify(
            &signed,
            key_list.as_ref(),
            &drover_release::VerifyOptions {
                roots: &self.roots,
                device_type: &self.cfg.device_type,
                installed_version: installed.as_deref(),
                allow_downgrade: j.allow_downgrade,
                now: now_secs(),
                min_key_list_version: self.installed.key_list_version,
            },
        )
        .map_err(|e| (e.code(), e.to_string()))
    }

    fn start(&mut self, t: UpdateTarget) {
        let release = SignedManifest::from_json(&t.manifest)
            .and_then(|s| s.parse_unverified())
            .map(|m| format!("{}@{}", m.name, m.version))
            .unwrap_or_else(|_| "?@?".into());
        let now = crate::enroll::now_ms();
        let _ = std::fs::remove_dir_all(self.work_dir());
        let mut j = Journal {
            deployment_id: t.deployment_id.clone(),
            release,
            manifest: t.manifest,
            key_list: t.key_list,
            allow_downgrade: t.allow_downgrade,
            state: UpdateState::Downloading,
            reason: None,
            message: None,
            acked: false,
            previous_version: None,
            payload_index: 0,
            activated: false,
            awaiting_restart: false,
            health_deadline_ms: None,
            health_attempts: 0,
            download: None,
            delta_failed: Vec::new(),
            cleaned: false,
            started_at_ms: now,
            updated_at_ms: now,
        };
        tracing::info!(deployment = %j.deployment_id, release = %j.release, "new update target");
        match self.verify(&j) {
            Err((reason, message)) => {
                j.state = UpdateState::Failed;
                j.reason = Some(reason.into());
                j.message = Some(message);
                j.cleaned = true;
            }
            Ok(t) => {
                let m = &t.manifest;
                let installed = self.installed_version(m);
                if let Some(p) = m
                    .payloads
                    .iter()
                    .find(|p| self.installer(&p.kind).is_none())
                {
                    j.state = UpdateState::Failed;
                    j.reason = Some("unsupported_payload".into());
                    j.message = Some(format!(
                        "this agent has no installer for `{}` payloads (it has: {})",
                        p.kind,
                        self.installers
                            .iter()
                            .map(|i| i.kind())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    j.cleaned = true;
                } else if installed.as_deref() == Some(m.version.as_str()) {
                    j.state = UpdateState::Committed;
                    j.message = Some(format!("{} {} is already installed", m.name, m.version));
                    j.previous_version = installed;
                    j.cleaned = true;
                } else {
                    j.previous_version = installed;
                }
            }
        }
        if j.state.is_final() {
            tracing::info!(deployment = %j.deployment_id, state = j.state.as_str(), reason = j.reason.as_deref().unwrap_or(""), "update settled at once");
        }
        if let Err(e) = j.save(&self.data) {
            tracing::error!(error = %e, "cannot write the update journal; the target is retried when offered again");
            return;
        }
        self.journal = Some(j);
        self.publish();
    }

    fn manifest(j: &Journal) -> Result<Manifest, String> {
        SignedManifest::from_json(&j.manifest)?.parse_unverified()
    }

    /// Acts once on the journaled state. See the module docs.
    pub async fn step(&mut self) -> Step {
        let Some(j) = self.journal.clone() else {
            return match self.queued.take() {
                Some(t) => {
                    self.start(t);
                    Step::Continue
                }
                None => Step::Idle,
            };
        };
        if j.state.is_final() {
            if !j.cleaned {
                self.cleanup();
            }
            return match self.queued.take() {
                Some(t) if t.deployment_id != j.deployment_id => {
                    self.start(t);
                    Step::Continue
                }
                _ => Step::Idle,
            };
        }
        let m = match Self::manifest(&j) {
            Ok(m) => m,
            Err(e) if j.activated => return self.begin_rollback("manifest_malformed", e),
            Err(e) => return self.fail("manifest_malformed", e),
        };
        match j.state {
            UpdateState::Pending | UpdateState::Downloading => self.step_download(&j, &m).await,
            UpdateState::Verifying => self.step_verify(&j, &m).await,
            UpdateState::Installing => self.step_install(&j, &m).await,
            UpdateState::Activating => self.step_activate(&j, &m).await,
            UpdateState::HealthCheck => self.step_health(&j, &m).await,
            UpdateState::RollingBack => self.step_rollback(&j, &m).await,
            UpdateState::Committed | UpdateState::RolledBack | UpdateState::Failed => Step::Idle,
        }
    }

    async fn step_download(&mut self, j: &Journal, m: &Manifest) -> Step {
        let i = j.payload_index;
        if i >= m.payloads.len() {
            return match self.transition(|j| {
                j.state = UpdateState::Verifying;
                j.payload_index = 0;
                j.download = None;
            }) {
                Ok(()) => Step::Continue,
                Err(e) => Self::journal_failed(e),
            };
        }
        let p = m.payloads[i].clone();
        match self.fetch_payload(j, m, &p).await {
            Ok(()) => match self.transition(|j| {
                j.payload_index = i + 1;
                j.download = None;
            }) {
                Ok(()) => Step::Continue,
                Err(e) => Self::journal_failed(e),
            },
            Err(e) if e.retry => {
                let attempts = j.download.as_ref().map_or(0, |d| d.attempts) + 1;
                tracing::warn!(reason = e.reason, error = %e.message, attempts, "download failed; retrying");
                let delay = Duration::from_secs(5u64.saturating_mul(1 << attempts.min(6)).min(300));
                let msg = e.message.clone();
                let reason = e.reason;
                let done = std::fs::metadata(download::part_path(&self.update_dir(), &p.sha256))
                    .map_or(0, |md| md.len());
                let _ = self.transition(|j| {
                    let d = j.download.get_or_insert_with(DownloadProgress::default);
                    d.sha256 = p.sha256.clone();
                    d.bytes_total = p.size;
                    d.attempts = attempts;
                    d.bytes_done = done;
                    // Shown to operators while it keeps retrying.
                    j.message = Some(format!("{msg} ({reason}, attempt {attempts})"));
                });
                Step::RetryAfter(delay)
            }
            Err(e) => self.fail(e.reason, e.message),
        }
    }

    /// Fetches payload `p` into `DATA/update/<sha256>`: through its delta
    /// when the installed base matches, else whole.
    async fn fetch_payload(
        &mut self,
        j: &Journal,
        m: &Manifest,
        p: &Payload,
    ) -> Result<(), DownloadError> {
        let dir = self.update_dir();
        let done = download::artifact_path(&dir, &p.sha256);
        if std::fs::metadata(&done).is_ok_and(|md| md.len() == p.size) {
            return Ok(());
        }
        let opts = DownloadOptions {
            max_bytes_per_sec: self.cfg.max_download_bytes_per_sec,
            min_free_bytes: self.cfg.min_free_bytes,
            ..Default::default()
        };
        let total: u64 = m.payloads.iter().map(|p| p.size).sum::<u64>().max(1);
        let before: u64 = m.payloads[..j.payload_index].iter().map(|p| p.size).sum();
        if let Some(d) = &p.delta
            && !j.delta_failed.contains(&p.sha256)
            && let Some(base) = self
                .installer(&p.kind)
                .and_then(|i| i.installed_payload(&m.name))
        {
            let base_matches = tokio::task::spawn_blocking({
                let base = base.clone();
                move || download::hash_file(&base)
            })
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|(sha, _)| sha == d.base_sha256);
            if base_matches {
                let patch = {
                    let mut progress = self.progress_reporter(before, total, d.size);
                    download::download(
                        self.source.as_ref(),
                        &dir,
                        &d.sha256,
                        d.size,
                        &opts,
                        &mut progress,
                    )
                    .await
                };
                let applied = match patch {
                    Err(e) if e.retry => return Err(e),
                    Err(e) => Err(format!("{} ({})", e.message, e.reason)),
                    Ok(patch) => {
                        let out = dir.join(format!("{}.delta-out", p.sha256));
                        let (sha, size) = (p.sha256.clone(), p.size);
                        let (patch2, out2) = (patch.clone(), out.clone());
                        let r = tokio::task::spawn_blocking(move || {
                            drover_release::delta::apply(&base, &patch2, &out2, &sha, size)
                                .map_err(|e| e.to_string())
                        })
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r);
                        let _ = std::fs::remove_file(&patch);
                        r.and_then(|()| {
                            std::fs::rename(&out, &done)
                                .and_then(|_| std::fs::File::open(&dir)?.sync_all())
                                .map_err(|e| format!("cannot store the patched payload: {e}"))
                        })
                    }
                };
                match applied {
                    Ok(()) => {
                        tracing::info!(sha256 = %p.sha256, "payload rebuilt from its delta");
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the delta did not apply; fetching the full payload");
                        let sha = p.sha256.clone();
                        let _ = self.transition(|j| j.delta_failed.push(sha));
                    }
                }
            }
        }
        let mut progress = self.progress_reporter(before, total, p.size);
        download::download(
            self.source.as_ref(),
            &dir,
            &p.sha256,
            p.size,
            &opts,
            &mut progress,
        )
        .await
        .map(|_| ())
    }

    /// A callback publishing download progress at most every few seconds.
    fn progress_reporter(
        &self,
        before: u64,
        total: u64,
        _this: u64,
    ) -> impl FnMut(u64) + Send + use<> {
        let tx = self.status_tx.clone();
        let base = self.journal.as_ref().map(|j| j.status());
        let mut last: Option<Instant> = None;
        move |done: u64| {
            if last.is_some_and(|l| l.elapsed() < PROGRESS_EVERY) {
                return;
            }
            last = Some(Instant::now());
            if let Some(mut st) = base.clone() {
                st.progress = Some((((before + done).min(total) * 100) / total) as u8);
                tx.send_replace(Some(Published {
                    status: st,
                    acked: false,
                }));
            }
        }
    }

    async fn step_verify(&mut self, j: &Journal, m: &Manifest) -> Step {
        let trusted = match self.verify(j) {
            Ok(t) => t,
            Err((reason, msg)) => return self.fail(reason, msg),
        };
        let dir = self.update_dir();
        for p in &m.payloads {
            let path = download::artifact_path(&dir, &p.sha256);
            let hashed = tokio::task::spawn_blocking({
                let path = path.clone();
                move || download::hash_file(&path)
            })
            .await;
            match hashed {
                Ok(Ok((sha, size))) if sha == p.sha256 && size == p.size => {}
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(sha256 = %p.sha256, "a downloaded payload is gone; downloading again");
                    return match self.transition(|j| {
                        j.state = UpdateState::Downloading;
                        j.payload_index = 0;
                    }) {
                        Ok(()) => Step::Continue,
                        Err(e) => Self::journal_failed(e),
                    };
                }
                Ok(Ok((sha, size))) => {
                    let _ = std::fs::remove_file(&path);
                    return self.fail(
                        "hash_mismatch",
                        format!(
                            "payload {} on disk has SHA-256 {sha} and {size} bytes; the signed manifest says {} bytes; it was deleted",
                            p.sha256, p.size
                        ),
                    );
                }
                Ok(Err(e)) => {
                    return self.fail(
                        "io_error",
                        format!("cannot read payload {}: {e}", path.display()),
                    );
                }
                Err(e) => return self.fail("io_error", format!("hashing task failed: {e}")),
            }
        }
        if let Some(v) = trusted.key_list_version
            && v > self.installed.key_list_version
        {
            self.installed.key_list_version = v;
            if let Err(e) = self.installed.save(&self.data) {
                return Self::journal_failed(e);
            }
        }
        let previous = self.installed_version(m);
        match self.transition(|j| {
            j.state = UpdateState::Installing;
            j.payload_index = 0;
            j.previous_version = previous;
            j.message = None;
        }) {
            Ok(()) => Step::Continue,
            Err(e) => Self::journal_failed(e),
        }
    }

    /// Runs installer step `op` for payload `i` on a blocking thread.
    async fn run_installer<T: Send + 'static>(
        &self,
        m: &Manifest,
        i: usize,
        op: fn(&dyn Installer, &InstallContext<'_>) -> Result<T, InstallError>,
    ) -> Result<T, InstallError> {
        let installers = self.installers.clone();
        let m = m.clone();
        let dir = self.update_dir();
        let work = self.work_dir();
        let data = self.data.clone();
        tokio::task::spawn_blocking(move || {
            let p = &m.payloads[i];
            let inst = installers
                .iter()
                .find(|x| x.kind() == p.kind)
                .ok_or_else(|| {
                    InstallError::new(
                        "unsupported_payload",
                        format!("no installer for `{}` payloads", p.kind),
                    )
                })?;
            drover_fs::ensure_dir(&work, 0o700)
                .map_err(|e| InstallError::io("cannot create the work directory", &e))?;
            let payload_path = download::artifact_path(&dir, &p.sha256);
            let ctx = InstallContext {
                manifest: &m,
                payload: p,
                payload_path: &payload_path,
                work_dir: &work,
                data_dir: &data,
            };
            op(inst.as_ref(), &ctx)
        })
        .await
        .map_err(|e| InstallError::new("io_error", format!("installer task failed: {e}")))?
    }

    async fn step_install(&mut self, j: &Journal, m: &Manifest) -> Step {
        let i = j.payload_index;
        if i >= m.payloads.len() {
            // Journaled before `activate` runs: from here a rollback ends
            // as `rolled_back`.
            return match self.transition(|j| {
                j.state = UpdateState::Activating;
                j.payload_index = 0;
                j.activated = true;
                j.awaiting_restart = false;
            }) {
                Ok(()) => Step::Continue,
                Err(e) => Self::journal_failed(e),
            };
        }
        match self
            .run_installer(m, i, |inst, ctx| inst.install(ctx))
            .await
        {
            Ok(()) => match self.transition(|j| j.payload_index = i + 1) {
                Ok(()) => Step::Continue,
                Err(e) => Self::journal_failed(e),
            },
            Err(e) => self.begin_rollback(e.reason, e.message),
        }
    }

    async fn step_activate(&mut self, j: &Journal, m: &Manifest) -> Step {
        if j.awaiting_restart {
            // We are back after the reboot or restart the last step asked for.
            if let Err(e) = self.transition(|j| j.awaiting_restart = false) {
                return Self::journal_failed(e);
            }
        }
        let i = j.payload_index;
        if i < m.payloads.len() {
            return match self
                .run_installer(m, i, |inst, ctx| inst.activate(ctx))
                .await
            {
                Ok(a) => {
                    let restart = a != Activation::Done;
                    match self.transition(|j| {
                        j.payload_index = i + 1;
                        j.awaiting_restart = restart;
                    }) {
                        Ok(()) => match a {
                            Activation::Done => Step::Continue,
                            Activation::RebootRequired => Step::Reboot,
                            Activation::AgentRestartRequired => Step::RestartAgent,
                        },
                        Err(e) => Self::journal_failed(e),
                    }
                }
                Err(e) => self.begin_rollback(e.reason, e.message),
            };
        }
        if let Some(step) = self.confirm_all(m).await {
            return step;
        }
        let timeout = self.health_timeout(m);
        match self.transition(|j| {
            j.state = UpdateState::HealthCheck;
            j.health_deadline_ms = Some(crate::enroll::now_ms() + timeout.as_millis() as i64);
            j.health_attempts = 0;
        }) {
            Ok(()) => Step::Continue,
            Err(e) => Self::journal_failed(e),
        }
    }

    /// `confirm_activated` for every payload; `Some` (a rollback) when one
    /// is not running.
    async fn confirm_all(&mut self, m: &Manifest) -> Option<Step> {
        for i in 0..m.payloads.len() {
            match self
                .run_installer(m, i, |inst, ctx| inst.confirm_activated(ctx))
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    return Some(self.begin_rollback(
                        "boot_fallback",
                        format!(
                            "the new `{}` payload is not what runs after activation (the device fell back)",
                            m.payloads[i].kind
                        ),
                    ));
                }
                Err(e) => return Some(self.begin_rollback(e.reason, e.message)),
            }
        }
        None
    }

    fn health_timeout(&self, m: &Manifest) -> Duration {
        Duration::from_secs(
            m.health
                .as_ref()
                .map_or(self.cfg.health_timeout_secs, |h| h.timeout_secs)
                .max(1),
        )
    }

    fn health_checks(&self, m: &Manifest) -> Vec<HealthCheck> {
        let mut checks: Vec<HealthCheck> = m
            .health
            .as_ref()
            .map(|h| h.checks.clone())
            .unwrap_or_default();
        for c in &self.cfg.health_checks {
            if !checks.contains(c) {
                checks.push(c.clone());
            }
        }
        checks
    }

    async fn step_health(&mut self, j: &Journal, m: &Manifest) -> Step {
        if let Some(step) = self.confirm_all(m).await {
            return step;
        }
        let timeout = self.health_timeout(m);
        let deadline_ms = j
            .health_deadline_ms
            .unwrap_or_else(|| crate::enroll::now_ms() + timeout.as_millis() as i64);
        let mut left = Duration::from_millis((deadline_ms - crate::enroll::now_ms()).max(0) as u64);
        if j.health_attempts > 0 {
            // Resumed after a restart: the checks get a fair chance again.
            left = left.max(RESUMED_HEALTH_GRACE.min(timeout));
        }
        if let Err(e) = self.transition(|j| j.health_attempts += 1) {
            return Self::journal_failed(e);
        }
        let checks = self.health_checks(m);
        let result = super::health::run_until(
            &checks,
            Instant::now() + left,
            &self.connected,
            &self.proc_dir,
        )
        .await;
        if let Err(why) = result {
            return self
                .begin_rollback("health_check_failed", format!("health check failed: {why}"));
        }
        for i in 0..m.payloads.len() {
            if let Err(e) = self.run_installer(m, i, |inst, ctx| inst.commit(ctx)).await {
                let msg = format!("commit failed: {}", e.message);
                return self.begin_rollback(e.reason, msg);
            }
        }
        self.installed.releases.insert(
            m.name.clone(),
            InstalledRelease {
                version: m.version.clone(),
                payload_sha256: m.payloads.iter().map(|p| p.sha256.clone()).collect(),
                deployment_id: j.deployment_id.clone(),
                installed_at_ms: crate::enroll::now_ms(),
            },
        );
        if let Err(e) = self.installed.save(&self.data) {
            return Self::journal_failed(e);
        }
        match self.transition(|j| {
            j.state = UpdateState::Committed;
            j.reason = None;
            j.message = None;
            j.acked = false;
        }) {
            Ok(()) => Step::Continue,
            Err(e) => Self::journal_failed(e),
        }
    }

    async fn step_rollback(&mut self, j: &Journal, m: &Manifest) -> Step {
        if !j.awaiting_restart {
            for i in (0..m.payloads.len()).rev() {
                match self
                    .run_installer(m, i, |inst, ctx| inst.rollback(ctx))
                    .await
                {
                    Ok(Activation::Done) => {}
                    Ok(a) => {
                        return match self.transition(|j| j.awaiting_restart = true) {
                            Ok(()) if a == Activation::RebootRequired => Step::Reboot,
                            Ok(()) => Step::RestartAgent,
                            Err(e) => Self::journal_failed(e),
                        };
                    }
                    Err(e) => {
                        let first = j.reason.clone().unwrap_or_default();
                        return self.fail(
                            "rollback_failed",
                            format!(
                                "rolling back after `{first}` failed: {} ({}); {}",
                                e.message,
                                e.reason,
                                j.message.as_deref().unwrap_or("")
                            ),
                        );
                    }
                }
            }
        }
        let end = if j.activated {
            UpdateState::RolledBack
        } else {
            UpdateState::Failed
        };
        match self.transition(|j| {
            j.state = end;
            j.awaiting_restart = false;
            j.acked = false;
        }) {
            Ok(()) => Step::Continue,
            Err(e) => Self::journal_failed(e),
        }
    }

    /// Removes the deployment's downloads and work files (the delta base
    /// kept by installers stays).
    fn cleanup(&mut self) {
        let Some(j) = &self.journal else { return };
        let dir = self.update_dir();
        if let Ok(m) = Self::manifest(j) {
            for p in &m.payloads {
                let mut names = vec![p.sha256.clone()];
                if let Some(d) = &p.delta {
                    names.push(d.sha256.clone());
                }
                for n in names {
                    for path in [
                        download::artifact_path(&dir, &n),
                        download::part_path(&dir, &n),
                        dir.join(format!("{n}.delta-out")),
                    ] {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.work_dir());
        if let Err(e) = self.transition(|j| j.cleaned = true) {
            tracing::warn!(error = %e, "cannot record the update cleanup");
        }
    }
}

/// What the control channel sends the engine task.
#[derive(Debug)]
enum Command {
    Offer(UpdateTarget),
    Ack {
        deployment_id: String,
        state: UpdateState,
    },
}

/// The control channel's side of an engine running in its own task.
pub struct UpdateHandle {
    commands: mpsc::UnboundedSender<Command>,
    connected: watch::Sender<bool>,
    statuses: watch::Receiver<Option<Published>>,
    inventory: Arc<Mutex<Document>>,
    restart: watch::Receiver<bool>,
}

impl UpdateHandle {
    /// Opens the engine (`parts.connected` is replaced by the handle's own)
    /// and runs it in a task on the current runtime.
    pub fn spawn(
        mut parts: EngineParts,
        reboot_command: Vec<String>,
    ) -> Result<UpdateHandle, String> {
        let (connected_tx, connected_rx) = watch::channel(false);
        parts.connected = connected_rx;
        let engine = Engine::open(parts)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (restart_tx, restart_rx) = watch::channel(false);
        let handle = UpdateHandle {
            commands: tx,
            connected: connected_tx,
            statuses: engine.statuses(),
            inventory: engine.inventory.clone(),
            restart: restart_rx,
        };
        tokio::spawn(run(engine, rx, reboot_command, restart_tx));
        Ok(handle)
    }

    pub fn offer(&self, target: UpdateTarget) {
        let _ = self.commands.send(Command::Offer(target));
    }

    pub fn ack(&self, deployment_id: String, state: UpdateState) {
        let _ = self.commands.send(Command::Ack {
            deployment_id,
            state,
        });
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.send_replace(up);
    }

    /// The latest status; `changed()` fires on each new one.
    pub fn statuses(&self) -> watch::Receiver<Option<Published>> {
        self.statuses.clone()
    }

    /// `update.*` inventory keys.
    pub fn inventory(&self) -> Document {
        self.inventory.lock().expect("inventory lock").clone()
    }

    /// Turns true when the engine needs the agent process restarted
    /// (self-update); the state is journaled by then.
    pub fn restart_requested(&self) -> watch::Receiver<bool> {
        self.restart.clone()
    }
}

async fn run(
    mut engine: Engine,
    mut commands: mpsc::UnboundedReceiver<Command>,
    reboot_command: Vec<String>,
    restart: watch::Sender<bool>,
) {
    fn apply(engine: &mut Engine, c: Command) {
        match c {
            Command::Offer(t) => engine.offer(t),
            Command::Ack {
                deployment_id,
                state,
            } => engine.ack(&deployment_id, state),
        }
    }
    loop {
        while let Ok(c) = commands.try_recv() {
            apply(&mut engine, c);
        }
        let wait = match engine.step().await {
            Step::Continue => continue,
            Step::Idle => None,
            Step::RetryAfter(d) => Some(d),
            Step::Reboot => {
                run_reboot(&reboot_command).await;
                // The device should be going down; if it is not, carry on
                // (the installer then reports whether it fell back).
                Some(Duration::from_secs(300))
            }
            Step::RestartAgent => {
                restart.send_replace(true);
                Some(Duration::from_secs(300))
            }
        };
        let next = match wait {
            None => commands.recv().await,
            Some(d) => tokio::select! {
                c = commands.recv() => c,
                _ = tokio::time::sleep(d) => continue,
            },
        };
        match next {
            Some(c) => apply(&mut engine, c),
            None => return,
        }
    }
}

async fn run_reboot(argv: &[String]) {
    let Some((prog, args)) = argv.split_first() else {
        tracing::error!("an update needs a reboot but `[update].reboot_command` is empty");
        return;
    };
    tracing::warn!(command = ?argv, "rebooting to activate or roll back an update");
    match tokio::process::Command::new(prog).args(args).status().await {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::error!(status = %s, "the reboot command failed"),
        Err(e) => tracing::error!(error = %e, "cannot run the reboot command"),
    }
}
