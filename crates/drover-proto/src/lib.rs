//! Drover's wire types, shared by the server, the CLI and the agent.
//!
//! This crate only describes documents: it does no I/O, holds no secrets and
//! must stay cheap to link into the on-device agent. The `openapi` feature
//! derives OpenAPI schemas for the server; the agent builds without it.

pub mod alerts;
pub mod api;
pub mod base64url;
pub mod device;
pub mod metrics;
pub mod telemetry;
pub mod url;

/// Version of the operator REST API served under `/api/v1`.
pub const API_VERSION: &str = "v1";
