//! The device protocol: enrollment documents, the enrollment token and the
//! control-channel messages (see docs/protocol.md).
//!
//! Control-channel messages travel one per binary WebSocket frame, encoded
//! as JSON. [`decode_agent`] and [`decode_server`] are the only way in: they
//! enforce [`MAX_FRAME_BYTES`] before parsing and reject unknown fields, so a
//! hostile peer can neither exhaust memory nor smuggle fields through.
//! Nothing here does I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version spoken on the control channel; a peer with another is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest control-channel frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Largest inventory a device may report, in entries.
pub const MAX_INVENTORY_ENTRIES: usize = 2048;

/// Largest desired configuration, in entries.
pub const MAX_CONFIG_ENTRIES: usize = 1024;

/// Flat key/value document (inventory, tags, desired configuration).
pub type Document = BTreeMap<String, String>;

/// `POST /v1/enroll` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// PKCS#10 certificate signing request (PEM) for the device's own key.
    pub csr_pem: String,
    /// The secret of an enrollment token (`det_…`), when the device has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// For the operator, while the device waits as pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EnrollStatus {
    /// The certificate is in the answer.
    Accepted,
    /// An operator must accept the device; ask again later with the same CSR.
    Pending,
}

/// `POST /v1/enroll` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub device_id: String,
    pub status: EnrollStatus,
    /// The device certificate (PEM), when accepted.
    pub certificate_pem: Option<String>,
    /// When that certificate expires (Unix ms), so the agent knows when to
    /// renew without parsing X.509.
    pub certificate_expires_at_ms: Option<i64>,
    /// Seconds to wait before asking again, when pending.
    pub retry_after_secs: Option<u64>,
}

/// What an operator hands to a device: everything it needs to enroll.
/// Printed as `drover-enroll-v1.<base64url(JSON)>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentToken {
    /// Server URL devices use.
    pub url: String,
    /// SHA-256 (hex) of the fleet CA certificate, which the agent pins.
    pub ca: String,
    /// The secret presented at enrollment (`det_<id>_<secret>`).
    pub secret: String,
    /// Release root public keys (`ed25519:…`) the device will trust for
    /// updates. Added by the operator's CLI (`drover enroll-tokens create
    /// --release-root`), never by the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub release_roots: Vec<String>,
}

const TOKEN_PREFIX: &str = "drover-enroll-v1.";

impl EnrollmentToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("token serializes");
        format!("{TOKEN_PREFIX}{}", crate::base64url::encode(&json))
    }

    pub fn decode(text: &str) -> Result<EnrollmentToken, String> {
        let body = text.trim().strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
            format!("an enrollment token starts with {TOKEN_PREFIX:?}; copy the whole token `drover enroll-tokens create` printed")
        })?;
        if body.len() > 4096 {
            return Err("the enrollment token is too long".into());
        }
        let json =
            crate::base64url::decode(body).ok_or("the enrollment token is damaged (bad base64)")?;
        let token: EnrollmentToken = serde_json::from_slice(&json)
            .map_err(|e| format!("the enrollment token is damaged: {e}"))?;
        if token.ca.len() != 64 || !token.ca.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the enrollment token's CA fingerprint is not a SHA-256 hex digest".into());
        }
        Ok(token)
    }
}

/// Whether the agent applied a desired configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ApplyStatus {
    Applied,
    Failed,
}

/// Device → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    /// First message on every connection.
    Hello {
        protocol_version: u32,
        /// Must be the id in the device's certificate.
        device_id: String,
        agent_version: String,
        /// Hash of the inventory the agent last had acknowledged.
        inventory_hash: Option<String>,
        /// Revision of the desired configuration last applied (or failed).
        applied_revision: Option<String>,
    },
    Heartbeat {},
    /// A full inventory (`full`) or the changes since the acknowledged one.
    Inventory {
        full: bool,
        set: Document,
        #[serde(default)]
        removed: Vec<String>,
        /// Hash of the complete inventory after this report.
        hash: String,
    },
    /// The outcome of applying a desired configuration.
    Reported {
        revision: String,
        status: ApplyStatus,
        config: Document,
        error: Option<String>,
    },
    /// Asks for a fresh certificate for the same key before the current one expires.
    RenewCertificate {
        csr_pem: String,
    },
    /// Progress or outcome of a deployment on this device. Sent at every
    /// state change and again after each reconnect until the server acks a
    /// final state ([`UpdateState::is_final`]) with [`ServerMessage::UpdateAck`].
    UpdateStatus(UpdateStatus),
    /// Buffered metric points and events (docs/monitoring.md).
    Telemetry(crate::telemetry::TelemetryBatch),
}

/// Where a device is in installing a release (docs/updates.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// The server set the target; the device has not reported yet.
    Pending,
    Downloading,
    Verifying,
    Installing,
    Activating,
    HealthCheck,
    Committed,
    RollingBack,
    RolledBack,
    /// Refused or failed before anything changed (bad signature, wrong
    /// device type, download failed…) or a rollback that could not finish.
    Failed,
}

impl UpdateState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            UpdateState::Committed | UpdateState::RolledBack | UpdateState::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Pending => "pending",
            UpdateState::Downloading => "downloading",
            UpdateState::Verifying => "verifying",
            UpdateState::Installing => "installing",
            UpdateState::Activating => "activating",
            UpdateState::HealthCheck => "health_check",
            UpdateState::Committed => "committed",
            UpdateState::RollingBack => "rolling_back",
            UpdateState::RolledBack => "rolled_back",
            UpdateState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<UpdateState> {
        ALL_UPDATE_STATES
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
    }
}

pub const ALL_UPDATE_STATES: [UpdateState; 10] = [
    UpdateState::Pending,
    UpdateState::Downloading,
    UpdateState::Verifying,
    UpdateState::Installing,
    UpdateState::Activating,
    UpdateState::HealthCheck,
    UpdateState::Committed,
    UpdateState::RollingBack,
    UpdateState::RolledBack,
    UpdateState::Failed,
];

/// Body of [`AgentMessage::UpdateStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateStatus {
    pub deployment_id: String,
    /// `name@version` of the release.
    pub release: String,
    pub state: UpdateState,
    /// Percent done within the state (downloading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// Stable reason code for failures and rollbacks (docs/updates.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail, at most 1 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The release a device should run, part of the desired state. The
/// manifest and key list are carried as the signed JSON texts; the device
/// verifies them against its own root keys (docs/updates.md), never trusting
/// the server for that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTarget {
    pub deployment_id: String,
    /// The signed manifest envelope (JSON text).
    pub manifest: String,
    /// The signed release key list (JSON text), if the release is signed by
    /// a release key rather than a root key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_list: Option<String>,
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// Largest rule set text in the desired state (docs/rules.md).
pub const MAX_RULES_TEXT_BYTES: usize = 32 * 1024;

/// The rule set a device should run, part of the desired state: the text
/// exactly as the operator stored it. The device parses and checks it
/// itself (docs/rules.md) and keeps its previous set if it is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSetTarget {
    /// `group:NAME` or `device:ID`: whose rule set this is.
    pub source: String,
    /// The `version` of the set, as the server read it.
    pub version: String,
    /// The rule set (TOML text).
    pub text: String,
}

/// Server → device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    Welcome {
        device_id: String,
        heartbeat_interval_secs: u64,
        /// Hash of the inventory the server holds, if any.
        inventory_hash: Option<String>,
        server_time_ms: i64,
    },
    /// Inventory stored; `hash` is now the acknowledged one.
    InventoryAck { hash: String },
    /// The configuration the device should converge to.
    Desired {
        revision: String,
        config: Document,
        /// The release to run, when a deployment targets the device.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        update: Option<UpdateTarget>,
        /// The rule set to run (docs/rules.md); absent: none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rules: Option<RuleSetTarget>,
    },
    /// A final [`UpdateStatus`] is stored; stop resending it.
    UpdateAck {
        deployment_id: String,
        state: UpdateState,
    },
    /// Telemetry stored up to a sequence number; delete it on the device.
    TelemetryAck(crate::telemetry::TelemetryAck),
    /// Reported state stored.
    ReportedAck { revision: String },
    Certificate {
        certificate_pem: String,
        expires_at_ms: i64,
    },
    /// The server refuses something; `fatal` ones close the connection.
    Error {
        code: String,
        message: String,
        fatal: bool,
    },
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    TooLarge(usize),
    Malformed(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge(n) => write!(
                f,
                "frame of {n} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
            ),
            DecodeError::Malformed(m) => write!(f, "malformed message: {m}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<T, DecodeError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(frame.len()));
    }
    serde_json::from_slice(frame).map_err(|e| DecodeError::Malformed(e.to_string()))
}

pub fn decode_agent(frame: &[u8]) -> Result<AgentMessage, DecodeError> {
    let msg: AgentMessage = decode(frame)?;
    match &msg {
        AgentMessage::Inventory { set, removed, .. }
            if set.len() + removed.len() > MAX_INVENTORY_ENTRIES =>
        {
            Err(DecodeError::Malformed(format!(
                "more than {MAX_INVENTORY_ENTRIES} inventory entries"
            )))
        }
        AgentMessage::UpdateStatus(u)
            if u.message.as_ref().is_some_and(|m| m.len() > 1024)
                || u.deployment_id.len() > 64
                || u.release.len() > 200
                || u.reason.as_ref().is_some_and(|r| r.len() > 64) =>
        {
            Err(DecodeError::Malformed(
                "update status fields too long (message 1 KiB, reason 64 B)".into(),
            ))
        }
        AgentMessage::Telemetry(b)
            if b.records.len() > crate::telemetry::MAX_BATCH_RECORDS || b.boot_id.len() > 64 =>
        {
            Err(DecodeError::Malformed(format!(
                "a telemetry batch holds at most {} records",
                crate::telemetry::MAX_BATCH_RECORDS
            )))
        }
        _ => Ok(msg),
    }
}

pub fn decode_server(frame: &[u8]) -> Result<ServerMessage, DecodeError> {
    let msg: ServerMessage = decode(frame)?;
    match &msg {
        ServerMessage::Desired { rules: Some(r), .. }
            if r.text.len() > MAX_RULES_TEXT_BYTES
                || r.version.len() > 64
                || r.source.len() > 200 =>
        {
            Err(DecodeError::Malformed(format!(
                "a rule set is at most {MAX_RULES_TEXT_BYTES} bytes with a version of at most 64"
            )))
        }
        _ => Ok(msg),
    }
}

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).expect("protocol messages always serialize")
}

/// Order-independent hash of a flat document: hex SHA-256 is computed by the
/// caller over this canonical JSON (a `BTreeMap` serializes sorted).
pub fn canonical_json(doc: &Document) -> Vec<u8> {
    serde_json::to_vec(doc).expect("documents serialize")
}

/// A device id from the SHA-256 of its public key (SubjectPublicKeyInfo
/// DER): the first 12 bytes in hex. The same key always yields the same id,
/// and an id cannot be claimed without the key.
pub fn device_id_from_spki_sha256(digest: &[u8]) -> String {
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` has the shape of a device id.
pub fn is_device_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_tokens_round_trip() {
        let t = EnrollmentToken {
            url: "https://fleet.example:8443".into(),
            ca: "ab".repeat(32),
            secret: "det_x_y".into(),
            release_roots: vec![],
        };
        let text = t.encode();
        assert!(text.starts_with("drover-enroll-v1."));
        assert_eq!(EnrollmentToken::decode(&text), Ok(t));
        assert!(EnrollmentToken::decode("drover-enroll-v1.@@@").is_err());
        assert!(
            EnrollmentToken::decode("hello")
                .unwrap_err()
                .contains("starts with")
        );
    }

    #[test]
    fn frames_round_trip_and_limits_hold() {
        let hello = AgentMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            device_id: "d".into(),
            agent_version: "0.1.0".into(),
            inventory_hash: None,
            applied_revision: Some("r1".into()),
        };
        assert_eq!(decode_agent(&encode(&hello)), Ok(hello));
        assert!(matches!(
            decode_agent(&vec![b' '; MAX_FRAME_BYTES + 1]),
            Err(DecodeError::TooLarge(_))
        ));
        assert!(matches!(
            decode_agent(br#"{"type":"heartbeat","extra":1}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_agent(br#"{"type":"launch_missiles"}"#),
            Err(DecodeError::Malformed(_))
        ));
        let big: Document = (0..=MAX_INVENTORY_ENTRIES)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        let inv = AgentMessage::Inventory {
            full: true,
            set: big,
            removed: vec![],
            hash: "h".into(),
        };
        assert!(decode_agent(&encode(&inv)).is_err());
        let status = AgentMessage::UpdateStatus(UpdateStatus {
            deployment_id: "dep_1".into(),
            release: "app@1.0.0".into(),
            state: UpdateState::RolledBack,
            progress: None,
            reason: Some("health_check_failed".into()),
            message: None,
        });
        assert_eq!(decode_agent(&encode(&status)), Ok(status));
        let batch = AgentMessage::Telemetry(crate::telemetry::TelemetryBatch {
            boot_id: "b".into(),
            records: vec![crate::telemetry::Record {
                seq: 1,
                time_ms: 5,
                mono_ms: 6,
                clock: crate::telemetry::ClockQuality::Synced,
                priority: crate::telemetry::Priority::Low,
                labels: Default::default(),
                body: crate::telemetry::RecordBody::Metric {
                    name: "cpu".into(),
                    value: 0.5,
                },
            }],
            dropped: 0,
        });
        assert_eq!(decode_agent(&encode(&batch)), Ok(batch));
        let desired = ServerMessage::Desired {
            revision: "r".into(),
            config: Document::new(),
            update: None,
            rules: Some(RuleSetTarget {
                source: "group:g".into(),
                version: "1".into(),
                text: "version = 1\n".into(),
            }),
        };
        assert_eq!(decode_server(&encode(&desired)), Ok(desired));
        let huge = ServerMessage::Desired {
            revision: "r".into(),
            config: Document::new(),
            update: None,
            rules: Some(RuleSetTarget {
                source: "group:g".into(),
                version: "1".into(),
                text: "#".repeat(MAX_RULES_TEXT_BYTES + 1),
            }),
        };
        assert!(decode_server(&encode(&huge)).is_err());
        let without = br#"{"type":"desired","revision":"r","config":{}}"#;
        assert!(matches!(
            decode_server(without),
            Ok(ServerMessage::Desired { rules: None, .. })
        ));
        let w = ServerMessage::Error {
            code: "revoked".into(),
            message: "m".into(),
            fatal: true,
        };
        assert_eq!(decode_server(&encode(&w)), Ok(w));
    }
}
