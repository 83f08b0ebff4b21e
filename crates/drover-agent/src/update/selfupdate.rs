//! The `agent` installer: self-update of `drover-agent`, guarded by the
//! supervisor ([`crate::supervisor`], `drover-agent supervise`).
//!
//! Layout of the agent folder (`[update.agent] dir`, default `DATA/agent`):
//!
//! | path | what |
//! |---|---|
//! | `versions/<version>/drover-agent` | each installed agent binary, mode 0755 |
//! | `current` | symlink to `versions/<version>`: what the supervisor starts (absent: the supervisor's own executable) |
//! | `previous` | symlink to the version that ran before the last switch |
//! | `trial.json` | a new version is on trial: version, previous version, deadline |
//! | `healthy.json` | written by the new agent once reconnected and healthy ([`mark_healthy`]) |
//! | `reverted.json` | written by the supervisor when it put the previous version back ([`take_revert_report`]) |
//!
//! Links are switched atomically (new link, rename, fsync the folder). This
//! module must never remove the binary `current` or `previous` points to.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::UpdateConfig;
use super::installer::{Activation, InstallContext, InstallError, Installer};
use super::script::{RunError, run_bounded, stderr_tail};

/// The binary's file name inside a version folder.
pub const BINARY: &str = "drover-agent";
pub const TRIAL_FILE: &str = "trial.json";
pub const HEALTHY_FILE: &str = "healthy.json";
pub const REVERTED_FILE: &str = "reverted.json";
/// Default time a new agent has to report healthy.
pub const DEFAULT_HEALTHY_WITHIN_SECS: u64 = 120;
/// The trial window exceeds the release's health check timeout by this
/// much, so the checks can finish and the commit land before it ends.
pub const TRIAL_MARGIN_SECS: u64 = 60;
/// Set by the supervisor in its child's environment.
pub const SUPERVISED_ENV: &str = "DROVER_AGENT_SUPERVISED";
const VERSION_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A new version on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub version: String,
    /// The version to go back to; `None`: the supervisor's own executable.
    pub previous: Option<String>,
    /// The new agent must report healthy this long after the supervisor
    /// starts it (each start gets the full window).
    pub healthy_within_secs: u64,
    /// Unix seconds: the activation time plus the window, for people and
    /// reports (the supervisor measures the window with a monotonic clock).
    pub deadline_unix_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Healthy {
    version: String,
}

/// What the supervisor did when a new agent failed its trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevertReport {
    /// The version that failed.
    pub version: String,
    /// The version put back (`None`: the supervisor's own executable).
    pub restored: Option<String>,
    /// `agent_crashed` or `agent_not_healthy`.
    pub reason: String,
    /// How the failed agent ended, e.g. `exit status: 1`.
    pub exit_status: Option<String>,
    pub at_unix_secs: u64,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(value).expect("serializes");
    drover_fs::write_atomic(path, &body, 0o644)
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The binary of `version`.
pub fn version_binary(dir: &Path, version: &str) -> PathBuf {
    dir.join("versions").join(version).join(BINARY)
}

fn link_version(dir: &Path, name: &str) -> Option<String> {
    let target = std::fs::read_link(dir.join(name)).ok()?;
    Some(target.file_name()?.to_str()?.to_string())
}

/// The version `current` points to.
pub fn current_version(dir: &Path) -> Option<String> {
    link_version(dir, "current")
}

/// The version `previous` points to.
pub fn previous_version(dir: &Path) -> Option<String> {
    link_version(dir, "previous")
}

/// Points link `name` (`current` or `previous`) at `versions/<version>`
/// atomically, or removes it for `None`.
pub fn switch_link(dir: &Path, name: &str, version: Option<&str>) -> std::io::Result<()> {
    let link = dir.join(name);
    match version {
        None => remove_if_exists(&link)?,
        Some(v) => {
            let tmp = dir.join(format!(".{name}.tmp"));
            remove_if_exists(&tmp)?;
            std::os::unix::fs::symlink(Path::new("versions").join(v), &tmp)?;
            std::fs::rename(&tmp, &link)?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

pub fn read_trial(dir: &Path) -> Option<Trial> {
    read_json(&dir.join(TRIAL_FILE))
}

pub fn write_trial(dir: &Path, trial: &Trial) -> std::io::Result<()> {
    write_json(&dir.join(TRIAL_FILE), trial)
}

/// Called by the new agent once it reconnected and its health checks
/// passed: the supervisor stops watching the trial.
pub fn mark_healthy(dir: &Path, version: &str) -> std::io::Result<()> {
    write_json(
        &dir.join(HEALTHY_FILE),
        &Healthy {
            version: version.to_string(),
        },
    )
}

/// Whether `version` has reported healthy.
pub fn is_healthy(dir: &Path, version: &str) -> bool {
    read_json::<Healthy>(&dir.join(HEALTHY_FILE)).is_some_and(|h| h.version == version)
}

/// The supervisor's report of a failed self-update, removed once taken:
/// the (old) agent calls this at start and reports the failure.
pub fn take_revert_report(dir: &Path) -> Option<RevertReport> {
    let path = dir.join(REVERTED_FILE);
    let report = read_json(&path);
    let _ = std::fs::remove_file(&path);
    report
}

/// The supervisor's report, left in place.
pub fn peek_revert_report(dir: &Path) -> Option<RevertReport> {
    read_json(&dir.join(REVERTED_FILE))
}

/// Puts the previous version back after a failed trial: the report first,
/// then `current`, then the trial ends. Repeating it after a crash
/// completes it.
pub fn revert(
    dir: &Path,
    trial: &Trial,
    reason: &str,
    exit_status: Option<String>,
) -> std::io::Result<RevertReport> {
    let path = dir.join(REVERTED_FILE);
    let report = match read_json::<RevertReport>(&path) {
        Some(r) if r.version == trial.version => r,
        _ => {
            let r = RevertReport {
                version: trial.version.clone(),
                restored: trial.previous.clone(),
                reason: reason.to_string(),
                exit_status,
                at_unix_secs: now_unix(),
            };
            write_json(&path, &r)?;
            r
        }
    };
    if current_version(dir).as_deref() == Some(trial.version.as_str()) {
        switch_link(dir, "current", trial.previous.as_deref())?;
    }
    remove_if_exists(&dir.join(TRIAL_FILE))?;
    remove_if_exists(&dir.join(HEALTHY_FILE))?;
    Ok(report)
}

/// Completes a revert a crash interrupted (report written, trial still
/// there).
pub fn finish_interrupted_revert(dir: &Path) -> std::io::Result<()> {
    if let (Some(trial), Some(report)) = (
        read_trial(dir),
        read_json::<RevertReport>(&dir.join(REVERTED_FILE)),
    ) && report.version == trial.version
    {
        revert(dir, &trial, &report.reason, report.exit_status)?;
    }
    Ok(())
}

pub struct SelfUpdateInstaller {
    pub dir: PathBuf,
    /// The least trial window (`[update.agent] healthy_within_secs`).
    pub healthy_within_secs: u64,
    /// Health check timeout when a release sets none
    /// (`[update] health_timeout_secs`).
    pub health_timeout_secs: u64,
    /// The version of the running agent ([`crate::AGENT_VERSION`]).
    pub running_version: String,
    /// Whether this agent runs under `drover-agent supervise`; a self-update
    /// is refused otherwise, since nothing would start the new binary or
    /// revert it.
    pub supervised: bool,
    /// Run `NEW --version` before accepting a binary.
    pub check_version: bool,
}

impl SelfUpdateInstaller {
    pub fn new(cfg: &UpdateConfig, data_dir: &Path) -> SelfUpdateInstaller {
        SelfUpdateInstaller {
            dir: cfg
                .agent
                .dir
                .clone()
                .unwrap_or_else(|| data_dir.join("agent")),
            healthy_within_secs: cfg
                .agent
                .healthy_within_secs
                .unwrap_or(DEFAULT_HEALTHY_WITHIN_SECS)
                .max(1),
            health_timeout_secs: cfg.health_timeout_secs,
            running_version: crate::AGENT_VERSION.to_string(),
            supervised: std::env::var_os(SUPERVISED_ENV).is_some(),
            check_version: true,
        }
    }

    /// How long the new agent has: the configured window, but at least
    /// the release's health checks plus [`TRIAL_MARGIN_SECS`], since the
    /// trial ends with the commit that follows them.
    pub fn trial_window_secs(&self, manifest: &drover_release::Manifest) -> u64 {
        let health = manifest
            .health
            .as_ref()
            .map_or(self.health_timeout_secs, |h| h.timeout_secs);
        self.healthy_within_secs
            .max(health.saturating_add(TRIAL_MARGIN_SECS))
    }

    fn io(&self, what: &str, e: &std::io::Error) -> InstallError {
        InstallError::io(&format!("{what} in {}", self.dir.display()), e)
    }

    fn check_binary(&self, path: &Path, version: &str) -> Result<(), InstallError> {
        let invalid = |m: String| InstallError::new("agent_binary_invalid", m);
        let mut cmd = Command::new(path);
        cmd.arg("--version");
        match run_bounded(cmd, VERSION_CHECK_TIMEOUT) {
            Ok(done) if done.status.success() => {
                let out = String::from_utf8_lossy(&done.stdout);
                if out.split_whitespace().any(|w| w == version) {
                    Ok(())
                } else {
                    Err(invalid(format!(
                        "the new agent says {:?} to --version, not version {version}: the release version must be the binary's own",
                        out.trim()
                    )))
                }
            }
            Ok(done) => Err(invalid(format!(
                "the new agent exited with {} on --version: {}",
                done.status,
                stderr_tail(&done.stderr)
            ))),
            Err(RunError::TimedOut { .. }) => Err(invalid(format!(
                "the new agent did not answer --version within {VERSION_CHECK_TIMEOUT:?}"
            ))),
            Err(RunError::Spawn(e)) => Err(invalid(format!(
                "the new agent cannot be started ({e}): wrong architecture or C library?"
            ))),
            Err(RunError::Io(e)) => Err(invalid(format!("the new agent on --version: {e}"))),
        }
    }
}

impl Installer for SelfUpdateInstaller {
    fn kind(&self) -> &'static str {
        "agent"
    }

    fn install(&self, ctx: &InstallContext<'_>) -> Result<(), InstallError> {
        if !self.supervised {
            return Err(InstallError::new(
                "agent_not_supervised",
                "this agent does not run under `drover-agent supervise`, so nothing would start a new agent or revert a bad one: run the service as `drover-agent supervise` (docs/updates.md)",
            ));
        }
        let version = ctx.manifest.version.as_str();
        let data = std::fs::read(ctx.payload_path).map_err(|e| {
            InstallError::io(&format!("cannot read {}", ctx.payload_path.display()), &e)
        })?;
        if !data.starts_with(b"\x7fELF") {
            return Err(InstallError::new(
                "agent_binary_invalid",
                "the agent payload is not an ELF executable",
            ));
        }
        let vdir = self.dir.join("versions").join(version);
        drover_fs::ensure_dir(&vdir, 0o755).map_err(|e| self.io("cannot create versions/", &e))?;
        let bin = vdir.join(BINARY);
        drover_fs::write_atomic(&bin, &data, 0o755)
            .map_err(|e| self.io("cannot write the new agent", &e))?;
        if self.check_version
            && let Err(e) = self.check_binary(&bin, version)
        {
            if current_version(&self.dir).as_deref() != Some(version)
                && previous_version(&self.dir).as_deref() != Some(version)
            {
                let _ = std::fs::remove_dir_all(&vdir);
            }
            return Err(e);
        }
        Ok(())
    }

    fn activate(&self, ctx: &InstallContext<'_>) -> Result<Activation, InstallError> {
        let version = ctx.manifest.version.as_str();
        if self.running_version == version {
            return Ok(Activation::Done);
        }
        if !version_binary(&self.dir, version).is_file() {
            return Err(InstallError::new(
                "agent_binary_invalid",
                format!("versions/{version}/{BINARY} is missing: install must run first"),
            ));
        }
        let current = current_version(&self.dir);
        let previous = if current.as_deref() == Some(version) {
            // Switched already (a crash after the switch): keep the record.
            read_trial(&self.dir)
                .map(|t| t.previous)
                .unwrap_or_else(|| previous_version(&self.dir))
        } else {
            current
        };
        // Trial first: a crash before the switch leaves the old agent
        // running, a crash after it leaves a guarded trial.
        let window = self.trial_window_secs(ctx.manifest);
        write_trial(
            &self.dir,
            &Trial {
                version: version.to_string(),
                previous: previous.clone(),
                healthy_within_secs: window,
                deadline_unix_secs: now_unix() + window,
            },
        )
        .map_err(|e| self.io("cannot write trial.json", &e))?;
        remove_if_exists(&self.dir.join(HEALTHY_FILE))
            .map_err(|e| self.io("cannot remove healthy.json", &e))?;
        switch_link(&self.dir, "previous", previous.as_deref())
            .map_err(|e| self.io("cannot switch `previous`", &e))?;
        switch_link(&self.dir, "current", Some(version))
            .map_err(|e| self.io("cannot switch `current`", &e))?;
        Ok(Activation::AgentRestartRequired)
    }

    /// Whether the new agent runs. When the supervisor reverted it, its
    /// report becomes the error (`agent_crashed` / `agent_not_healthy`).
    fn confirm_activated(&self, ctx: &InstallContext<'_>) -> Result<bool, InstallError> {
        let version = ctx.manifest.version.as_str();
        if self.running_version == version {
            return Ok(true);
        }
        match peek_revert_report(&self.dir) {
            Some(r) if r.version == version => {
                let reason = if r.reason == "agent_not_healthy" {
                    "agent_not_healthy"
                } else {
                    "agent_crashed"
                };
                Err(InstallError::new(
                    reason,
                    format!(
                        "the supervisor reverted agent {version} to {}: {} ({})",
                        r.restored.as_deref().unwrap_or("the built-in agent"),
                        if reason == "agent_crashed" {
                            "it exited during its trial"
                        } else {
                            "it did not report healthy in time"
                        },
                        r.exit_status.as_deref().unwrap_or("no exit status")
                    ),
                ))
            }
            _ => Ok(false),
        }
    }

    fn commit(&self, ctx: &InstallContext<'_>) -> Result<(), InstallError> {
        let version = ctx.manifest.version.as_str();
        if self.running_version != version {
            return Err(InstallError::new(
                "agent_version_mismatch",
                format!(
                    "refusing to commit agent {version}: agent {} is running",
                    self.running_version
                ),
            ));
        }
        mark_healthy(&self.dir, version).map_err(|e| self.io("cannot write healthy.json", &e))?;
        remove_if_exists(&self.dir.join(TRIAL_FILE))
            .map_err(|e| self.io("cannot remove trial.json", &e))?;
        remove_if_exists(&self.dir.join(HEALTHY_FILE))
            .map_err(|e| self.io("cannot remove healthy.json", &e))?;
        let keep = [current_version(&self.dir), previous_version(&self.dir)];
        if let Ok(entries) = std::fs::read_dir(self.dir.join("versions")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.iter().any(|k| k.as_deref() == Some(name.as_str()))
                    && let Err(e) = std::fs::remove_dir_all(entry.path())
                {
                    tracing::warn!(version = %name, error = %e, "cannot remove an old agent version");
                }
            }
        }
        Ok(())
    }

    fn rollback(&self, ctx: &InstallContext<'_>) -> Result<Activation, InstallError> {
        let version = ctx.manifest.version.as_str();
        if current_version(&self.dir).as_deref() == Some(version) {
            let back = match read_trial(&self.dir) {
                Some(t) if t.version == version => t.previous,
                _ => previous_version(&self.dir),
            };
            switch_link(&self.dir, "current", back.as_deref())
                .map_err(|e| self.io("cannot switch `current` back", &e))?;
        }
        if read_trial(&self.dir).is_some_and(|t| t.version == version) {
            remove_if_exists(&self.dir.join(TRIAL_FILE))
                .map_err(|e| self.io("cannot remove trial.json", &e))?;
            remove_if_exists(&self.dir.join(HEALTHY_FILE))
                .map_err(|e| self.io("cannot remove healthy.json", &e))?;
        }
        if peek_revert_report(&self.dir).is_some_and(|r| r.version == version) {
            // Reported through confirm_activated; rolled back now.
            take_revert_report(&self.dir);
        }
        Ok(if self.running_version == version {
            Activation::AgentRestartRequired
        } else {
            Activation::Done
        })
    }

    fn installed_version(&self, _name: &str) -> Option<String> {
        Some(self.running_version.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_release::{Manifest, Payload};
    use std::os::unix::fs::PermissionsExt;

    struct Fixture {
        dir: tempfile::TempDir,
        manifest: Manifest,
        payload: PathBuf,
        work: PathBuf,
    }

    impl Fixture {
        fn new(version: &str, payload: &[u8]) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("payload");
            std::fs::write(&path, payload).unwrap();
            let work = dir.path().join("work");
            std::fs::create_dir(&work).unwrap();
            Fixture {
                manifest: Manifest {
                    format: 1,
                    name: "drover-agent".into(),
                    version: version.into(),
                    device_types: vec!["gw".into()],
                    created_at: 1_800_000_000,
                    expires_at: None,
                    payloads: vec![Payload {
                        kind: "agent".into(),
                        sha256: drover_release::sha256_hex(payload),
                        size: payload.len() as u64,
                        module: None,
                        delta: None,
                    }],
                    health: None,
                    provenance: None,
                },
                payload: path,
                work,
                dir,
            }
        }

        fn installer(&self, running: &str) -> SelfUpdateInstaller {
            SelfUpdateInstaller {
                dir: self.dir.path().join("agent"),
                healthy_within_secs: 30,
                health_timeout_secs: 120,
                running_version: running.into(),
                supervised: true,
                check_version: true,
            }
        }

        fn ctx(&self) -> InstallContext<'_> {
            InstallContext {
                manifest: &self.manifest,
                payload: &self.manifest.payloads[0],
                payload_path: &self.payload,
                work_dir: &self.work,
                data_dir: self.dir.path(),
            }
        }

        /// An installed "old" version that `current` points to.
        fn with_current(&self, version: &str) -> PathBuf {
            let agent = self.dir.path().join("agent");
            let bin = version_binary(&agent, version);
            std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
            std::fs::write(&bin, b"#!/bin/sh\n").unwrap();
            switch_link(&agent, "current", Some(version)).unwrap();
            agent
        }
    }

    #[test]
    fn a_payload_that_is_not_an_elf_binary_is_refused() {
        let f = Fixture::new("2.0.0", b"#!/bin/sh\necho 2.0.0\n");
        let e = f.installer("1.0.0").install(&f.ctx()).unwrap_err();
        assert_eq!(e.reason, "agent_binary_invalid");
        assert!(!version_binary(&f.dir.path().join("agent"), "2.0.0").exists());
    }

    #[test]
    fn a_binary_whose_version_differs_from_the_release_is_refused_and_removed() {
        // A real ELF executable that answers --version with something else.
        let t = std::fs::read("/bin/true").unwrap();
        let f = Fixture::new("2.0.0", &t);
        let e = f.installer("1.0.0").install(&f.ctx()).unwrap_err();
        assert_eq!(e.reason, "agent_binary_invalid");
        assert!(e.message.contains("not version 2.0.0"), "{e}");
        assert!(
            !f.dir.path().join("agent/versions/2.0.0").exists(),
            "the refused binary is not kept"
        );
    }

    #[test]
    fn an_unsupervised_agent_refuses_self_updates() {
        let t = std::fs::read("/bin/true").unwrap();
        let f = Fixture::new("2.0.0", &t);
        let mut i = f.installer("1.0.0");
        i.supervised = false;
        assert_eq!(
            i.install(&f.ctx()).unwrap_err().reason,
            "agent_not_supervised"
        );
    }

    #[test]
    fn activation_switches_current_starts_a_trial_and_rollback_undoes_it() {
        let t = std::fs::read("/bin/true").unwrap();
        let f = Fixture::new("2.0.0", &t);
        let agent = f.with_current("1.0.0");
        let mut old = f.installer("1.0.0");
        old.check_version = false;
        old.install(&f.ctx()).unwrap();
        let bin = version_binary(&agent, "2.0.0");
        assert_eq!(
            std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            current_version(&agent).as_deref(),
            Some("1.0.0"),
            "install does not switch"
        );
        assert_eq!(
            old.activate(&f.ctx()).unwrap(),
            Activation::AgentRestartRequired
        );
        assert_eq!(
            old.activate(&f.ctx()).unwrap(),
            Activation::AgentRestartRequired,
            "idempotent"
        );
        assert_eq!(current_version(&agent).as_deref(), Some("2.0.0"));
        assert_eq!(previous_version(&agent).as_deref(), Some("1.0.0"));
        let trial = read_trial(&agent).unwrap();
        assert_eq!(
            (trial.version.as_str(), trial.previous.as_deref()),
            ("2.0.0", Some("1.0.0"))
        );
        assert!(!old.confirm_activated(&f.ctx()).unwrap());
        // The new agent came up but its health checks failed.
        let new = f.installer("2.0.0");
        assert!(new.confirm_activated(&f.ctx()).unwrap());
        assert_eq!(
            new.rollback(&f.ctx()).unwrap(),
            Activation::AgentRestartRequired
        );
        assert_eq!(current_version(&agent).as_deref(), Some("1.0.0"));
        assert!(read_trial(&agent).is_none());
        assert_eq!(old.rollback(&f.ctx()).unwrap(), Activation::Done);
        assert_eq!(current_version(&agent).as_deref(), Some("1.0.0"));
    }

    #[test]
    fn commit_ends_the_trial_and_keeps_only_current_and_previous() {
        let t = std::fs::read("/bin/true").unwrap();
        let f = Fixture::new("3.0.0", &t);
        let agent = f.with_current("1.0.0");
        f.with_current("2.0.0");
        let mut old = f.installer("2.0.0");
        old.check_version = false;
        old.install(&f.ctx()).unwrap();
        old.activate(&f.ctx()).unwrap();
        assert!(
            old.commit(&f.ctx()).is_err(),
            "the old agent cannot commit the new one"
        );
        let new = f.installer("3.0.0");
        new.commit(&f.ctx()).unwrap();
        assert!(read_trial(&agent).is_none());
        assert!(!agent.join(HEALTHY_FILE).exists());
        let mut left: Vec<String> = std::fs::read_dir(agent.join("versions"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["2.0.0", "3.0.0"]);
        assert_eq!(
            new.installed_version("drover-agent").as_deref(),
            Some("3.0.0")
        );
    }

    #[test]
    fn a_revert_restores_previous_and_leaves_a_report_taken_once() {
        let f = Fixture::new("2.0.0", b"");
        let agent = f.with_current("2.0.0");
        let trial = Trial {
            version: "2.0.0".into(),
            previous: None,
            healthy_within_secs: 5,
            deadline_unix_secs: 0,
        };
        write_trial(&agent, &trial).unwrap();
        let r = revert(
            &agent,
            &trial,
            "agent_crashed",
            Some("exit status: 1".into()),
        )
        .unwrap();
        assert_eq!(r.restored, None);
        assert_eq!(
            current_version(&agent),
            None,
            "no previous: the supervisor's own binary"
        );
        assert!(read_trial(&agent).is_none());
        let e = f
            .installer("1.0.0")
            .confirm_activated(&f.ctx())
            .unwrap_err();
        assert_eq!(e.reason, "agent_crashed");
        assert!(e.message.contains("exit status: 1"), "{e}");
        let taken = take_revert_report(&agent).unwrap();
        assert_eq!(
            (taken.version.as_str(), taken.reason.as_str()),
            ("2.0.0", "agent_crashed")
        );
        assert!(take_revert_report(&agent).is_none());
    }
}
