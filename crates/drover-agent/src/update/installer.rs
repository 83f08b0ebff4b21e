//! The contract every installer (`app`, `rootfs-ab`, `script`, `agent`)
//! implements. The update engine ([`super::engine`]) journals its state
//! before calling each step, so after a kill -9 or power loss it calls the
//! same step again: **every method must be idempotent** and must never
//! damage the running version before `activate`.
//!
//! Order: `install` → `activate` → (restart/reboot maybe) →
//! `confirm_activated` → health checks → `commit`; on any failure after
//! `install` began, `rollback` (also idempotent, also after a crash).

use std::path::{Path, PathBuf};

use drover_release::{Manifest, Payload};

/// What an installer step needs to know.
#[derive(Debug, Clone)]
pub struct InstallContext<'a> {
    pub manifest: &'a Manifest,
    pub payload: &'a Payload,
    /// The full, hash-verified payload on disk.
    pub payload_path: &'a Path,
    /// Scratch folder for this deployment; survives agent restarts and is
    /// removed after the final state is reported.
    pub work_dir: &'a Path,
    /// The agent's data folder.
    pub data_dir: &'a Path,
}

/// Result of `activate` / `rollback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The new (or, after rollback, the old) version runs now.
    Done,
    /// The device must reboot to run it; the engine reboots (through the
    /// configured reboot command) after journaling, and continues with
    /// `confirm_activated` when the agent starts again.
    RebootRequired,
    /// The agent itself must restart (self-update): the engine exits the
    /// process after journaling and the supervisor starts the new binary.
    AgentRestartRequired,
}

/// Why a step failed: a stable reason code (docs/updates.md) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallError {
    pub reason: &'static str,
    pub message: String,
}

impl InstallError {
    pub fn new(reason: &'static str, message: impl Into<String>) -> InstallError {
        InstallError {
            reason,
            message: message.into(),
        }
    }

    /// An I/O error, classified: a full disk is `disk_full`.
    pub fn io(what: &str, e: &std::io::Error) -> InstallError {
        let reason = if e.raw_os_error() == Some(28) {
            "disk_full"
        } else {
            "io_error"
        };
        InstallError::new(reason, format!("{what}: {e}"))
    }
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.reason)
    }
}

impl std::error::Error for InstallError {}

/// One way of installing a payload type. Methods block (file and process
/// work); the engine runs them on a blocking thread.
pub trait Installer: Send + Sync {
    /// The payload type it installs (`app`, `rootfs-ab`, `script`, `agent`).
    fn kind(&self) -> &'static str;

    /// Writes the new version beside the running one.
    fn install(&self, ctx: &InstallContext<'_>) -> Result<(), InstallError>;

    /// Switches to the new version.
    fn activate(&self, ctx: &InstallContext<'_>) -> Result<Activation, InstallError>;

    /// After activation (and any restart or reboot): whether the new
    /// version is what runs now. `false` means the device fell back (for
    /// example the bootloader gave up on the new slot): the engine then
    /// rolls back and reports `boot_fallback`.
    fn confirm_activated(&self, ctx: &InstallContext<'_>) -> Result<bool, InstallError>;

    /// Makes the new version permanent.
    fn commit(&self, ctx: &InstallContext<'_>) -> Result<(), InstallError>;

    /// Returns to the version that ran before `install`.
    fn rollback(&self, ctx: &InstallContext<'_>) -> Result<Activation, InstallError>;

    /// Installed version of the release `name`, if this installer knows it.
    fn installed_version(&self, _name: &str) -> Option<String> {
        None
    }

    /// The installed payload file of release `name`, kept as a delta base.
    fn installed_payload(&self, _name: &str) -> Option<PathBuf> {
        None
    }
}
