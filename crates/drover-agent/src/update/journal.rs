//! The update journal: what the engine was doing, on disk, so that a kill -9
//! or a power cut at any point resumes or rolls back correctly.
//!
//! - `DATA/update/journal.json`: the one deployment the engine works on (or
//!   last finished): its signed manifest and key list as received, the
//!   state, per-state progress, the reason of a failure and whether the
//!   server acknowledged the final status.
//! - `DATA/update/installed.json`: what is installed (release name →
//!   version and payload hashes) and the newest release key list version
//!   ever accepted (so an old, revoked key list cannot be replayed).
//!
//! Both are written with [`drover_fs::write_atomic`] (temp file, fsync,
//! rename, fsync dir) **before** the engine acts on the state they record.
//! This module never decides anything; it only remembers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drover_proto::device::{UpdateState, UpdateStatus};
use serde::{Deserialize, Serialize};

pub const UPDATE_DIR: &str = "update";
pub const JOURNAL_FILE: &str = "journal.json";
pub const INSTALLED_FILE: &str = "installed.json";

/// `DATA/update`.
pub fn update_dir(data: &Path) -> PathBuf {
    data.join(UPDATE_DIR)
}

/// Download progress of the payload being fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadProgress {
    /// SHA-256 of the artifact being fetched (the payload or its delta).
    pub sha256: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Failed attempts so far (network, server errors).
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub deployment_id: String,
    /// `name@version`, for reports (`?@?` when the manifest is unreadable).
    pub release: String,
    /// The signed manifest envelope exactly as received (JSON text).
    pub manifest: String,
    /// The signed key list as received, if any.
    #[serde(default)]
    pub key_list: Option<String>,
    #[serde(default)]
    pub allow_downgrade: bool,
    pub state: UpdateState,
    /// Stable reason code of a failure or rollback.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// The server acknowledged the final status (stop resending it).
    #[serde(default)]
    pub acked: bool,
    /// Version of the release with this name that ran before (rollback
    /// target, reports); `None` for a first install.
    #[serde(default)]
    pub previous_version: Option<String>,
    /// Index of the payload the current state works on (states that go
    /// payload by payload: downloading, installing, activating).
    #[serde(default)]
    pub payload_index: usize,
    /// Activation began: a rollback ends as `rolled_back`, not `failed`.
    #[serde(default)]
    pub activated: bool,
    /// A reboot or agent restart was requested in the current state; on
    /// start the engine confirms instead of repeating the step.
    #[serde(default)]
    pub awaiting_restart: bool,
    /// Unix ms by which health checks must pass.
    #[serde(default)]
    pub health_deadline_ms: Option<i64>,
    /// How many times health checks ran (one more after each restart).
    #[serde(default)]
    pub health_attempts: u32,
    #[serde(default)]
    pub download: Option<DownloadProgress>,
    /// Payload hashes whose delta failed once: fetch the full payload.
    #[serde(default)]
    pub delta_failed: Vec<String>,
    /// Download and work files were removed after the final state.
    #[serde(default)]
    pub cleaned: bool,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Journal {
    /// The status report for the current state.
    pub fn status(&self) -> UpdateStatus {
        let progress = match (&self.state, &self.download) {
            (UpdateState::Downloading, Some(d)) if d.bytes_total > 0 => {
                Some(((d.bytes_done.min(d.bytes_total) * 100) / d.bytes_total) as u8)
            }
            _ => None,
        };
        UpdateStatus {
            deployment_id: self.deployment_id.chars().take(64).collect(),
            release: self.release.chars().take(200).collect(),
            state: self.state,
            progress,
            reason: self.reason.as_ref().map(|r| r.chars().take(64).collect()),
            message: self.message.as_ref().map(|m| truncate(m, 1000)),
        }
    }

    pub fn load(data: &Path) -> Result<Option<Journal>, String> {
        read_json(&update_dir(data).join(JOURNAL_FILE))
    }

    pub fn save(&mut self, data: &Path) -> Result<(), String> {
        self.updated_at_ms = crate::enroll::now_ms();
        write_json(&update_dir(data).join(JOURNAL_FILE), self)
    }
}

/// One installed release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledRelease {
    pub version: String,
    /// SHA-256 of each payload, in manifest order.
    pub payload_sha256: Vec<String>,
    pub deployment_id: String,
    pub installed_at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Installed {
    pub releases: BTreeMap<String, InstalledRelease>,
    /// Highest release key list version accepted (anti-rollback).
    pub key_list_version: u64,
}

impl Installed {
    pub fn load(data: &Path) -> Result<Installed, String> {
        Ok(read_json(&update_dir(data).join(INSTALLED_FILE))?.unwrap_or_default())
    }

    pub fn save(&self, data: &Path) -> Result<(), String> {
        write_json(&update_dir(data).join(INSTALLED_FILE), self)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "{} is damaged ({e}); move it away to let the agent start over",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        drover_fs::ensure_dir(dir, 0o700)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let bytes = serde_json::to_vec_pretty(value).expect("journal serializes");
    drover_fs::write_atomic(path, &bytes, 0o600)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_and_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), None);
        let mut j = Journal {
            deployment_id: "d1".into(),
            release: "app@1.0.0".into(),
            manifest: "{}".into(),
            key_list: None,
            allow_downgrade: false,
            state: UpdateState::Downloading,
            reason: None,
            message: Some("é".repeat(700)),
            acked: false,
            previous_version: None,
            payload_index: 0,
            activated: false,
            awaiting_restart: false,
            health_deadline_ms: None,
            health_attempts: 0,
            download: Some(DownloadProgress {
                sha256: "ab".into(),
                bytes_done: 50,
                bytes_total: 200,
                attempts: 0,
            }),
            delta_failed: vec![],
            cleaned: false,
            started_at_ms: 1,
            updated_at_ms: 1,
        };
        j.save(dir.path()).unwrap();
        let back = Journal::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, j);
        let st = back.status();
        assert_eq!(st.progress, Some(25));
        assert!(st.message.unwrap().len() <= 1004, "fits the protocol limit");
        std::fs::write(update_dir(dir.path()).join(JOURNAL_FILE), b"{").unwrap();
        assert!(
            Journal::load(dir.path())
                .unwrap_err()
                .contains("move it away")
        );
    }
}
