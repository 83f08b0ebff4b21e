//! The login profile: server URL, token and trusted CA, stored with mode 0600
//! so later commands need no flags.
//!
//! Location: `--config FILE` / `DROVER_CONFIG`, else
//! `$XDG_CONFIG_HOME/drover/config.toml`, else `~/.config/drover/config.toml`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, CliResult};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub server: String,
    pub token: String,
    /// PEM of the CA that signed the server's certificate (the fleet CA).
    /// Kept inline so moving the file it came from breaks nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_pem: Option<String>,
}

pub fn default_path() -> CliResult<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("drover/config.toml"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            CliError::usage(
                "HOME is not set: pass --config FILE to say where the login profile lives",
            )
        })?;
    Ok(PathBuf::from(home).join(".config/drover/config.toml"))
}

pub fn load(path: &Path) -> CliResult<Option<Profile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CliError::failed(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    toml::from_str(&text).map(Some).map_err(|e| {
        CliError::usage(format!(
            "{} is not a valid drover profile ({e}); run `drover login` again to rewrite it",
            path.display()
        ))
    })
}

pub fn save(path: &Path, profile: &Profile) -> CliResult<()> {
    let text = toml::to_string(profile).map_err(|e| CliError::failed(e.to_string()))?;
    if let Some(dir) = path.parent() {
        drover_server::fsutil::ensure_dir(dir, 0o700)
            .map_err(|e| CliError::failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    drover_server::fsutil::write_atomic(path, text.as_bytes(), 0o600)
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))
}
