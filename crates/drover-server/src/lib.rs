//! `drover server`: the control plane.
//!
//! Map of this crate (see docs/architecture.md for the whole system):
//! - [`server`] starts and stops everything: data dir lock, store, CA, TLS.
//! - [`api`] is the HTTP application: operator REST API, health, metrics.
//! - [`store`] is persistence behind the [`store::Store`] trait (SQLite, PostgreSQL).
//! - [`auth`] mints and checks operator API tokens.
//! - [`pki`] is the fleet CA, the server certificate and device certificates.
//! - [`devices`] is enrollment, control channels, presence and desired state.
//! - [`http`] is the accept loop (TLS, HTTP/1.1, graceful shutdown).

pub mod alerts;
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod clock;
pub mod config;
pub mod devices;
pub mod error;
pub use drover_fs as fsutil;
pub mod http;
pub mod pki;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::ServerConfig;
pub use server::{RunningServer, StartError, start};
