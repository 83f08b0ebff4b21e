//! The release manifest (format 1) and its signed envelope. The manifest is
//! JSON; the envelope carries its exact bytes as a string so signatures are
//! checked over what was signed, byte for byte.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::keys::{KeyPair, Signature};

/// Largest signed manifest accepted, in bytes (it travels in a control frame).
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024;
/// Payloads per release.
pub const MAX_PAYLOADS: usize = 1;
/// Largest payload, in bytes (64 GiB: rootfs images).
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 30;

/// Installer types a payload may name.
pub const PAYLOAD_TYPES: &[&str] = &["app", "rootfs-ab", "script", "agent"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always 1 for now.
    pub format: u32,
    /// Release name: the software it carries, e.g. `kiosk-app`. Versions are
    /// compared only between releases of the same name.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// Device types it may be installed on (the agent's `device_type`).
    pub device_types: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; devices refuse the release afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    pub payloads: Vec<Payload>,
    /// Health checks after activation (the device's own config adds more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// Installer: `app`, `rootfs-ab`, `script` or `agent`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Lower-case hex SHA-256 of the full payload.
    pub sha256: String,
    pub size: u64,
    /// For `script`: the update module (an executable on the device, in the
    /// agent's modules folder) that installs this payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// A smaller patch that turns an installed payload into this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<PayloadDelta>,
}

/// A zstd patch-from artifact: `zstd --patch-from=BASE` of this payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadDelta {
    /// Version of the release the base payload belongs to.
    pub base_version: String,
    /// SHA-256 of the base payload the patch applies to.
    pub base_sha256: String,
    /// SHA-256 and size of the patch artifact itself.
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Every check must pass within this many seconds of activation.
    pub timeout_secs: u64,
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthCheck {
    /// The agent reconnects to the server after activation.
    Reconnect {},
    /// The command exits 0 (argv, no shell).
    Command { argv: Vec<String> },
    /// A process with this name (comm) is running.
    Process { name: String },
    /// A local URL answers with a 2xx status (or `status`).
    Http {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// SHA-256 of the SBOM file given to `drover release build --sbom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbom_sha256: Option<String>,
    /// Other `key=value` pairs from `--provenance`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// The manifest's JSON bytes (as a string) and signatures over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    pub manifest: String,
    pub signatures: Vec<Signature>,
}

impl SignedManifest {
    /// Serializes `manifest` and signs the bytes with `key`.
    pub fn sign(manifest: &Manifest, key: &KeyPair) -> Result<SignedManifest, String> {
        manifest.validate()?;
        let text = serde_json::to_string(manifest).expect("manifest serializes");
        let sig = key.sign(text.as_bytes());
        Ok(SignedManifest {
            manifest: text,
            signatures: vec![sig],
        })
    }

    /// Parses the manifest **without** checking signatures: for display and
    /// for the server, which stores but never trusts it. Devices use
    /// [`crate::verify`].
    pub fn parse_unverified(&self) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_str(&self.manifest)
            .map_err(|e| format!("the release manifest is malformed: {e}"))?;
        m.validate()?;
        Ok(m)
    }

    /// The envelope as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("envelope serializes")
    }

    /// Parses an envelope, refusing anything over [`MAX_MANIFEST_BYTES`].
    pub fn from_json(text: &str) -> Result<SignedManifest, String> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(format!(
                "a signed manifest is at most {MAX_MANIFEST_BYTES} bytes; this one is {}",
                text.len()
            ));
        }
        serde_json::from_str(text).map_err(|e| format!("the signed manifest is malformed: {e}"))
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.starts_with('.')
}

impl Manifest {
    pub fn semver(&self) -> Result<semver::Version, String> {
        semver::Version::parse(&self.version).map_err(|e| {
            format!(
                "version {:?} is not a semantic version (like 1.4.2): {e}",
                self.version
            )
        })
    }

    /// Shape checks every reader makes (signatures aside).
    pub fn validate(&self) -> Result<(), String> {
        if self.format != 1 {
            return Err(format!(
                "manifest format {} is not supported (this version reads format 1)",
                self.format
            ));
        }
        if !valid_name(&self.name) {
            return Err(format!(
                "release name {:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        self.semver()?;
        if self.device_types.is_empty() || self.device_types.len() > 64 {
            return Err("a release names 1 to 64 device types".into());
        }
        if let Some(t) = self.device_types.iter().find(|t| !valid_name(t)) {
            return Err(format!(
                "device type {t:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
            ));
        }
        if self.payloads.is_empty() || self.payloads.len() > MAX_PAYLOADS {
            return Err(format!(
                "a release carries 1 to {MAX_PAYLOADS} payload(s); it has {}",
                self.payloads.len()
            ));
        }
        for p in &self.payloads {
            if !PAYLOAD_TYPES.contains(&p.kind.as_str()) {
                return Err(format!(
                    "payload type {:?} is unknown; use one of {}",
                    p.kind,
                    PAYLOAD_TYPES.join(", ")
                ));
            }
            if !crate::is_sha256_hex(&p.sha256) {
                return Err("a payload's sha256 must be 64 lower-case hex digits".into());
            }
            if p.size > MAX_PAYLOAD_BYTES {
                return Err(format!("a payload is at most {MAX_PAYLOAD_BYTES} bytes"));
            }
            match (&p.kind[..], &p.module) {
                ("script", None) => {
                    return Err(
                        "a `script` payload names its update module (`script:MODULE:PATH`)".into(),
                    );
                }
                ("script", Some(m)) if !valid_name(m) => {
                    return Err(format!("update module name {m:?} is not a plain file name"));
                }
                ("script", Some(_)) => {}
                (_, Some(_)) => return Err("only `script` payloads name a module".into()),
                _ => {}
            }
            if let Some(d) = &p.delta {
                if p.kind != "app" {
                    return Err("deltas are made for `app` payloads only".into());
                }
                if !crate::is_sha256_hex(&d.base_sha256) || !crate::is_sha256_hex(&d.sha256) {
                    return Err("a delta's hashes must be 64 lower-case hex digits".into());
                }
                semver::Version::parse(&d.base_version)
                    .map_err(|e| format!("delta base version {:?}: {e}", d.base_version))?;
            }
        }
        if let Some(h) = &self.health {
            if h.timeout_secs == 0 || h.timeout_secs > 24 * 3600 {
                return Err("a health check timeout is 1 s to 24 h".into());
            }
            if h.checks.len() > 32 {
                return Err("at most 32 health checks".into());
            }
            for c in &h.checks {
                match c {
                    HealthCheck::Command { argv } if argv.is_empty() => {
                        return Err("a command health check needs a program".into());
                    }
                    HealthCheck::Http { url, .. } if !url.starts_with("http://") => {
                        return Err(format!(
                            "health check URL {url:?} must be a local http:// URL"
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Manifest {
        Manifest {
            format: 1,
            name: "kiosk-app".into(),
            version: "1.2.0".into(),
            device_types: vec!["rpi4".into()],
            created_at: 1_800_000_000,
            expires_at: None,
            payloads: vec![Payload {
                kind: "app".into(),
                sha256: "ab".repeat(32),
                size: 10,
                module: None,
                delta: None,
            }],
            health: Some(HealthConfig {
                timeout_secs: 30,
                checks: vec![HealthCheck::Reconnect {}],
            }),
            provenance: Some(Provenance {
                commit: Some("abc".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn manifests_validate_their_shape() {
        sample().validate().unwrap();
        let mut m = sample();
        m.version = "1.2".into();
        assert!(m.validate().unwrap_err().contains("semantic version"));
        let mut m = sample();
        m.payloads[0].kind = "exe".into();
        assert!(m.validate().unwrap_err().contains("unknown"));
        let mut m = sample();
        m.device_types.clear();
        assert!(m.validate().is_err());
        let mut m = sample();
        m.payloads[0].kind = "script".into();
        assert!(m.validate().unwrap_err().contains("module"));
        let mut m = sample();
        m.name = "../x".into();
        assert!(m.validate().is_err());
    }

    #[test]
    fn envelopes_round_trip() {
        let key = KeyPair::generate(crate::keys::KeyRole::Release).unwrap();
        let s = SignedManifest::sign(&sample(), &key).unwrap();
        let again = SignedManifest::from_json(&s.to_json()).unwrap();
        assert_eq!(again, s);
        assert_eq!(again.parse_unverified().unwrap(), sample());
        assert!(SignedManifest::from_json(&" ".repeat(MAX_MANIFEST_BYTES + 1)).is_err());
    }
}
