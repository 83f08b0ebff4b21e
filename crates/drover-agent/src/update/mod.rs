//! Software updates on the device (docs/updates.md).
//!
//! - [`installer`]: the `Installer` trait every payload type implements.
//! - [`config`]: the `[update]` section of agent.toml.
//! - [`journal`]: the on-disk journal and the record of installed releases.
//! - [`download`]: resumable, verified artifact downloads.
//! - [`health`]: health checks after activation.
//! - [`engine`]: the state machine, and the handle the control channel uses.
//! - [`app`]: the `app` installer.
//! - [`rootfs`] and [`boot`]: the `rootfs-ab` installer and the bootloader
//!   interface it drives (GRUB env, U-Boot env, or a file for tests).
//! - [`script`]: update modules, user executables that install a payload.
//! - [`selfupdate`]: the `agent` installer; `crate::supervisor` guards it.
//!
//! Nothing here installs a payload that the device's own release root keys
//! did not vouch for, and nothing touches the running version before
//! activation.

use std::path::Path;

pub mod app;
pub mod boot;
pub mod config;
pub mod download;
pub mod engine;
pub mod health;
pub mod installer;
pub mod journal;
pub mod rootfs;
pub mod script;
pub mod selfupdate;

use config::UpdateConfig;
use installer::Installer;

/// The installers this agent has, one per payload type. A payload type
/// without one is refused with reason `unsupported_payload`.
pub fn installers(cfg: &UpdateConfig, data_dir: &Path) -> Vec<Box<dyn Installer>> {
    vec![
        Box::new(app::AppInstaller::new(cfg, data_dir)),
        Box::new(rootfs::RootfsInstaller::new(&cfg.rootfs, data_dir)),
        Box::new(script::ScriptInstaller::new(
            &cfg.script,
            data_dir,
            &cfg.device_type,
        )),
        Box::new(selfupdate::SelfUpdateInstaller::new(cfg, data_dir)),
    ]
}
