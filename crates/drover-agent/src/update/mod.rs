//! Software updates on the device (docs/updates.md).
//!
//! - [`installer`]: the `Installer` trait every payload type implements.
//! - [`config`]: the `[update]` section of agent.toml.

pub mod config;
pub mod installer;
