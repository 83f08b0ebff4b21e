//! What the agent remembers between connections and restarts: the last
//! desired configuration it applied and the last inventory the server
//! acknowledged. Written atomically (`DATA/state.json`) before the agent
//! acts on it, so a kill -9 at any point leaves a consistent file.

use std::path::Path;

use drover_proto::device::{ApplyStatus, Document};
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    pub applied_revision: Option<String>,
    pub applied_status: Option<ApplyStatus>,
    pub applied_config: Document,
    pub applied_error: Option<String>,
    /// Hash of the inventory the server last acknowledged.
    pub inventory_acked_hash: Option<String>,
    pub inventory_acked: Document,
}

impl AgentState {
    pub fn load(data: &Path) -> Result<AgentState, String> {
        match std::fs::read(data.join(STATE_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: {e}", data.join(STATE_FILE).display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(e) => Err(format!(
                "cannot read {}: {e}",
                data.join(STATE_FILE).display()
            )),
        }
    }

    pub fn save(&self, data: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).expect("serializes");
        drover_fs::write_atomic(&data.join(STATE_FILE), &bytes, 0o600)
            .map_err(|e| format!("cannot write {STATE_FILE}: {e}"))
    }
}
