//! The `[update]` section of agent.toml (docs/agent.md, docs/updates.md).
//! Every field has a default; updates are refused (with reason
//! `no_trusted_keys`) until at least one release root key is known.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// This device's type; a release must name it in `device_types`.
    pub device_type: String,
    /// Trusted release root public keys (`ed25519:…`). Keys carried by the
    /// enrollment token are added to these (saved in DATA/release_roots.json).
    pub release_root_keys: Vec<String>,
    /// Download bandwidth cap in bytes per second (0: none).
    pub max_download_bytes_per_sec: u64,
    /// Space to keep free on the download volume beyond the payload, bytes.
    pub min_free_bytes: u64,
    /// Health check timeout when the release sets none, seconds.
    pub health_timeout_secs: u64,
    /// Health checks the device always adds to the release's own.
    pub health_checks: Vec<drover_release::HealthCheck>,
    /// Command that reboots the device (argv), used by `rootfs-ab`.
    pub reboot_command: Vec<String>,
    pub app: AppConfig,
    pub rootfs: RootfsConfig,
    pub script: ScriptConfig,
    pub agent: SelfUpdateConfig,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            device_type: format!("generic-{}", std::env::consts::ARCH),
            release_root_keys: Vec::new(),
            max_download_bytes_per_sec: 0,
            min_free_bytes: 64 << 20,
            health_timeout_secs: 120,
            health_checks: Vec::new(),
            reboot_command: vec!["/sbin/reboot".into()],
            app: AppConfig::default(),
            rootfs: RootfsConfig::default(),
            script: ScriptConfig::default(),
            agent: SelfUpdateConfig::default(),
        }
    }
}

/// `app` installer: `ROOT/<release name>/<version>/` plus a `current`
/// symlink switched atomically; the previous version stays for rollback.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    /// Default: `DATA/apps`.
    pub root: Option<PathBuf>,
    /// Run (argv) after each switch, with `DROVER_APP_NAME`,
    /// `DROVER_APP_VERSION`, `DROVER_APP_DIR`; exit 0 means started.
    pub restart_command: Vec<String>,
    pub restart_timeout_secs: Option<u64>,
}

/// Which bootloader interface `rootfs-ab` drives.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BootControlKind {
    /// A JSON file standing in for the bootloader environment (tests, demos).
    #[default]
    File,
    /// `grub-editenv` on the GRUB environment block.
    Grub,
    /// `fw_printenv` / `fw_setenv` (U-Boot).
    UBoot,
}

/// `rootfs-ab` installer: two slots, the inactive one is written, the
/// bootloader tries it for `max_boot_attempts` boots before falling back.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RootfsConfig {
    /// Block devices (or files) of slot A and slot B.
    pub slot_a: Option<PathBuf>,
    pub slot_b: Option<PathBuf>,
    pub boot_control: BootControlKind,
    /// For `file`: the environment file. Default `DATA/bootenv.json`.
    pub boot_env_file: Option<PathBuf>,
    /// For `grub`: the environment block. Default `/boot/grub/grubenv`.
    pub grub_env_file: Option<PathBuf>,
    pub max_boot_attempts: u32,
    /// For `grub`: the `grub-editenv` program. Default: `grub-editenv` in `PATH`.
    pub grub_editenv_command: Option<PathBuf>,
    /// For `u-boot`: the `fw_printenv` program. Default: `fw_printenv` in `PATH`.
    pub fw_printenv_command: Option<PathBuf>,
    /// For `u-boot`: the `fw_setenv` program. Default: `fw_setenv` in `PATH`.
    pub fw_setenv_command: Option<PathBuf>,
}

impl Default for RootfsConfig {
    fn default() -> Self {
        RootfsConfig {
            slot_a: None,
            slot_b: None,
            boot_control: BootControlKind::File,
            boot_env_file: None,
            grub_env_file: None,
            max_boot_attempts: 3,
            grub_editenv_command: None,
            fw_printenv_command: None,
            fw_setenv_command: None,
        }
    }
}

/// `script` installer: update modules are executables in `modules_dir`
/// speaking the protocol in docs/updates.md.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptConfig {
    /// Default: `DATA/modules`.
    pub modules_dir: Option<PathBuf>,
    pub step_timeout_secs: Option<u64>,
}

/// `agent` installer (self-update under `drover-agent supervise`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelfUpdateConfig {
    /// Where agent versions live. Default: `DATA/agent`.
    pub dir: Option<PathBuf>,
    /// Seconds a new agent has to reconnect and report healthy before the
    /// supervisor reverts to the previous binary. Default 120.
    pub healthy_within_secs: Option<u64>,
}
