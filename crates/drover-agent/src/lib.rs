//! The Drover agent as a library: everything `drover-agent` does, so that
//! the fleet simulator (`drover sim`) runs the very same protocol code for
//! thousands of virtual devices in one process.
//!
//! Map:
//! - [`identity`]: the device key (generated here, never leaves), CSR,
//!   certificate, pinned fleet CA, TLS client configuration.
//! - [`enroll`]: `POST /v1/enroll` with a token, as pending, or pre-authorized.
//! - [`session`]: the control channel: hello, heartbeats, inventory,
//!   desired state, certificate renewal, reconnect with full-jitter backoff.
//! - [`apply`]: writes the desired configuration and runs the apply hook.
//! - [`inventory`]: what the device reports about itself.
//! - [`config`]: the configuration file, `/etc/drover/agent.toml`.
//! - [`update`]: the update engine (journaled state machine, resumable
//!   verified downloads, health checks, rollback) and the installers.
//! - [`telemetry`]: metrics and events, the offline buffer
//!   (`DATA/telemetry.redb`), batches and acks on the control channel.
//! - [`rules`]: rule sets from the desired state, evaluated on the device
//!   (processes, ports, files, metrics) with actions the local policy
//!   allows ([docs/rules.md](../../docs/rules.md)).
//! - [`supervisor`]: `drover-agent supervise`, which starts the agent and
//!   puts the previous binary back when a self-updated one fails its trial.
//!
//! This crate must never link server-side dependencies (the test script
//! checks with `cargo tree`), and never sends anything identifying another
//! device: the id is always derived from its own key.

pub mod apply;
pub mod backoff;
pub mod config;
pub mod enroll;
pub mod https;
pub mod identity;
pub mod inventory;
pub mod rules;
pub mod session;
pub mod state;
pub mod supervisor;
pub mod telemetry;
pub mod update;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
