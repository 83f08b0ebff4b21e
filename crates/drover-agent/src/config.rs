//! The agent's configuration file (TOML). Every field has a default, so an
//! empty file (or none) is valid; see docs/agent.md for the reference.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::inventory::InventoryConfig;

pub const DEFAULT_CONFIG: &str = "/etc/drover/agent.toml";
pub const DEFAULT_DATA: &str = "/var/lib/drover";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Keys, certificates and state. `--data` overrides it.
    pub data_dir: PathBuf,
    /// Where the applied desired configuration is written (JSON object), for
    /// local software to read. Default: `DATA/desired.json`.
    pub desired_state_file: Option<PathBuf>,
    /// Run after each new desired configuration is written; exit 0 means
    /// applied. It gets `DROVER_DESIRED_FILE` and `DROVER_REVISION`.
    pub apply_hook: Option<PathBuf>,
    pub apply_hook_timeout_secs: u64,
    /// First reconnect delay cap; doubles up to `reconnect_max_secs`.
    pub reconnect_min_ms: u64,
    pub reconnect_max_secs: u64,
    /// Renew the certificate when less than this fraction of its life is left.
    pub renew_at_fraction_left: f64,
    pub inventory: InventoryConfig,
    pub update: crate::update::config::UpdateConfig,
    pub telemetry: crate::telemetry::TelemetryConfig,
    pub rules: crate::rules::RulesConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            data_dir: PathBuf::from(DEFAULT_DATA),
            desired_state_file: None,
            apply_hook: None,
            apply_hook_timeout_secs: 60,
            reconnect_min_ms: 1000,
            reconnect_max_secs: 60,
            renew_at_fraction_left: 1.0 / 3.0,
            inventory: InventoryConfig::default(),
            update: crate::update::config::UpdateConfig::default(),
            telemetry: crate::telemetry::TelemetryConfig::default(),
            rules: crate::rules::RulesConfig::default(),
        }
    }
}

impl AgentConfig {
    /// Reads `path`; a missing file at the default location means defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<AgentConfig, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let cfg: AgentConfig =
                    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                cfg.inventory
                    .validate()
                    .map_err(|e| format!("{}: [inventory] {e}", path.display()))?;
                cfg.telemetry
                    .validate()
                    .map_err(|e| format!("{}: [telemetry] {e}", path.display()))?;
                cfg.rules
                    .validate()
                    .map_err(|e| format!("{}: [rules] {e}", path.display()))?;
                Ok(cfg)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(AgentConfig::default())
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn desired_file(&self) -> PathBuf {
        self.desired_state_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("desired.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults_and_typos_are_errors() {
        assert_eq!(
            toml::from_str::<AgentConfig>("").unwrap(),
            AgentConfig::default()
        );
        let c: AgentConfig =
            toml::from_str("apply_hook = \"/usr/bin/true\"\nreconnect_max_secs = 5").unwrap();
        assert_eq!(c.reconnect_max_secs, 5);
        assert!(toml::from_str::<AgentConfig>("aply_hook = \"x\"").is_err());
    }

    #[test]
    fn a_bad_telemetry_section_is_refused_with_what_to_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "[telemetry]\ninterval_secs = 2\nservices = [\"nginx\"]\n[[telemetry.log_patterns]]\nfile = \"/var/log/app.log\"\npattern = \"*ERROR*\"\nevent = \"app.error\"\n",
        )
        .unwrap();
        let c = AgentConfig::load(&path, true).unwrap();
        assert_eq!(c.telemetry.interval_secs, 2);
        assert_eq!(c.telemetry.log_patterns[0].severity, "warning");
        std::fs::write(&path, "[telemetry]\nmax_buffer_bytes = 100\n").unwrap();
        let e = AgentConfig::load(&path, true).unwrap_err();
        assert!(
            e.contains("[telemetry] max_buffer_bytes must be at least"),
            "{e}"
        );
        std::fs::write(&path, "[telemetry]\nintervall_secs = 5\n").unwrap();
        assert!(AgentConfig::load(&path, true).is_err(), "typos are errors");
    }
}
