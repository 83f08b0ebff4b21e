//! Operator REST API documents (`/api/v1`).
//!
//! Request types reject unknown fields so that a typo in a script is an error
//! instead of a silently ignored option. Times are RFC 3339 strings in UTC.

use serde::{Deserialize, Serialize};

/// What an API token may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only access to fleet state and the audit log.
    Viewer,
    /// May change fleet state (devices, groups, deployments).
    Operator,
    /// Everything, including API tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// True when a caller holding `self` may use something that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected one of viewer, operator, admin"
            )),
        }
    }
}

/// The single error shape of every API failure: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `forbidden`, `invalid_request`.
    pub code: String,
    /// One sentence for a human: what was wrong and what to do.
    pub message: String,
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Human label, 1–64 characters of letters, digits, `-`, `_`, `.`, `@` or space.
    pub name: String,
    pub role: Role,
    /// Lifetime in seconds; absent means the token does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// An API token as listed: never contains the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    /// Token id of the creator; absent for the bootstrap admin token.
    pub created_by: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
}

/// Answer to `POST /api/v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer token. Store it now: the server keeps only its hash.
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// Answer to `GET /api/v1/whoami`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    pub server_version: String,
}

/// How a recorded call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    /// The change was applied.
    Success,
    /// The caller's role did not allow it.
    Denied,
    /// The request was refused (bad input, conflict, server error); nothing changed.
    Failed,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Failed => "failed",
        }
    }
}

impl std::str::FromStr for AuditOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "success" => Ok(AuditOutcome::Success),
            "denied" => Ok(AuditOutcome::Denied),
            "failed" => Ok(AuditOutcome::Failed),
            other => Err(format!("unknown audit outcome {other:?}")),
        }
    }
}

/// One audit log entry: who did what, when, and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Increasing id; pass it as `before` to page backwards.
    pub id: i64,
    pub at: String,
    /// Token id of the caller.
    pub actor: String,
    /// Token name of the caller at the time of the call.
    pub actor_name: String,
    /// What was attempted, e.g. `tokens.create`.
    pub action: String,
    /// The object acted on, e.g. a token id, when there is one.
    pub target: Option<String>,
    pub method: String,
    pub path: String,
    /// HTTP status of the answer.
    pub status: u16,
    pub outcome: AuditOutcome,
    /// Extra facts about the change (never secrets).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

/// Answer to `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: String,
    /// `ok` or why the database is not usable.
    pub database: String,
    pub version: String,
}

/// A flat key/value document (tags, inventory, configuration).
pub type Document = std::collections::BTreeMap<String, String>;

/// Body of `POST /api/v1/enroll-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollToken {
    /// A label, like API token names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tags every device enrolled with this token gets.
    #[serde(default)]
    pub tags: Document,
    /// How many devices may enroll with it; absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
    /// Lifetime in seconds; absent means it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollTokenInfo {
    pub id: String,
    pub name: String,
    pub tags: Document,
    pub uses_left: Option<i64>,
    pub expires_at: Option<String>,
    pub created_at: String,
    pub created_by: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedEnrollToken {
    #[serde(flatten)]
    pub info: EnrollTokenInfo,
    /// Give this to `drover-agent enroll --token`; shown only now.
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollTokenList {
    pub tokens: Vec<EnrollTokenInfo>,
}

/// A device in lists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceSummary {
    pub id: String,
    pub hostname: Option<String>,
    /// `pending`, `accepted`, `rejected` or `revoked`.
    pub enrollment: String,
    /// `online` or `offline`.
    pub connection: String,
    pub tags: Document,
    pub agent_version: Option<String>,
    pub last_seen: Option<String>,
    /// Whether the device reported the configuration it should have.
    pub in_sync: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceList {
    pub devices: Vec<DeviceSummary>,
}

/// One key where desired and reported configuration differ.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Drift {
    pub key: String,
    pub desired: Option<String>,
    pub reported: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DesiredView {
    pub revision: String,
    pub config: Document,
    /// Groups contributing to it, in the order they apply (the device's own
    /// document applies last).
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportedView {
    pub revision: String,
    /// `applied` or `failed`.
    pub status: String,
    pub config: Document,
    pub error: Option<String>,
    pub at: String,
}

/// `GET /api/v1/devices/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub summary: DeviceSummary,
    pub inventory: Document,
    /// The device's own desired document (groups add theirs).
    pub device_desired: Document,
    pub desired: DesiredView,
    pub reported: Option<ReportedView>,
    pub drift: Vec<Drift>,
    pub enrolled_via: Option<String>,
    pub certificate_expires_at: Option<String>,
    pub created_at: String,
}

/// Body of `POST /api/v1/devices/{id}/tags`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TagChange {
    #[serde(default)]
    pub set: Document,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Body of `PUT …/desired`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetDesired {
    pub config: Document,
}

/// Body of `POST /api/v1/devices/preauthorize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Preauthorize {
    /// The device's public key (PEM `PUBLIC KEY`).
    pub public_key_pem: String,
    #[serde(default)]
    pub tags: Document,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PreauthorizedKey {
    /// The id the device will have.
    pub device_id: String,
    pub tags: Document,
    pub created_at: String,
}

/// Body of `POST /api/v1/groups`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub name: String,
    /// Dynamic membership (see docs/query.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Static members.
    #[serde(default)]
    pub devices: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupInfo {
    pub name: String,
    pub query: Option<String>,
    pub static_members: Vec<String>,
    /// Current members (static and by query), evaluated now.
    pub members: Vec<String>,
    pub desired: Document,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupList {
    pub groups: Vec<GroupInfo>,
}

/// `POST /api/v1/releases`: a release signed offline by `drover release
/// build`. The server checks its shape and that every artifact is stored,
/// but never trusts it: devices verify signatures with their own root keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateRelease {
    /// The signed manifest envelope `{"manifest": "<json>", "signatures": [...]}`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub manifest: serde_json::Value,
    /// The root-signed release key list, when a release key signed it.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub key_list: Option<serde_json::Value>,
}

/// One payload of a release, as listed by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleasePayload {
    #[serde(rename = "type")]
    pub kind: String,
    pub sha256: String,
    pub size: u64,
    /// SHA-256 of a delta patch, if the release carries one.
    pub delta_sha256: Option<String>,
    pub delta_base_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseInfo {
    /// `name@version`.
    pub id: String,
    pub name: String,
    pub version: String,
    pub device_types: Vec<String>,
    pub payloads: Vec<ReleasePayload>,
    /// Ids of the keys whose signatures the manifest carries (not checked
    /// by the server).
    pub signed_by: Vec<String>,
    /// Commit, build and SBOM digest from the manifest.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub provenance: serde_json::Value,
    pub created_at: String,
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseList {
    pub releases: Vec<ReleaseInfo>,
}

/// Answer to `PUT /api/v1/artifacts/{sha256}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArtifactInfo {
    pub sha256: String,
    pub size: u64,
    /// False when the artifact was already stored.
    pub created: bool,
}

/// `POST /api/v1/deployments`: set a release as the target of devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    /// Release id, `name@version`.
    pub release: String,
    /// Device ids.
    #[serde(default)]
    pub devices: Vec<String>,
    /// A group: its members now (static and query) are targeted.
    #[serde(default)]
    pub group: Option<String>,
    /// Let devices install a version older than the one they run.
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// One device in a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentDevice {
    pub device_id: String,
    pub state: crate::device::UpdateState,
    pub progress: Option<u8>,
    /// Reason code of a failure or rollback (docs/updates.md).
    pub reason: Option<String>,
    pub message: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentInfo {
    pub id: String,
    pub release: String,
    /// `device:<id>,…` or `group:<name>`.
    pub target: String,
    pub allow_downgrade: bool,
    pub created_at: String,
    pub created_by: Option<String>,
    /// Devices per state.
    pub counts: std::collections::BTreeMap<String, u64>,
    /// Every device with its state (only in `GET /api/v1/deployments/{id}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeploymentDevice>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentInfo>,
}
