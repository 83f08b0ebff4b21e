//! Persistent state of the control plane behind one [`Store`] trait.
//!
//! Two backends share one implementation ([`sql::SqlStore`]): SQLite (the
//! embedded default) and PostgreSQL (for replicas at scale). Each has its own
//! migration set under `migrations/<backend>/`, applied at start. Every change
//! that must be audited takes its [`NewAudit`] and writes both in one
//! transaction, so the log never disagrees with the data.
//!
//! This module never formats times or builds HTTP answers: it speaks in Unix
//! milliseconds and plain records; the API layer turns them into documents.

pub mod alerts;
mod releases;
mod rules;
pub mod sql;
pub mod telemetry;

pub use alerts::AlertStore;
pub use releases::{
    ArtifactRecord, DeploymentDeviceRecord, DeploymentRecord, ReleaseRecord, ReleaseStore,
    UpdateStatusRecord,
};
pub use rules::{RuleSetRecord, RuleStore};
pub use telemetry::{TelemetrySettings, TelemetryStore};

use async_trait::async_trait;
use drover_proto::api::{AuditOutcome, Role};
pub use drover_proto::device::{ApplyStatus, Document};
use serde::{Deserialize, Serialize};

pub use sql::SqlStore;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Why a store call failed. `Unavailable` means nothing was written and the
/// same call may succeed later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the stored data is not what this server expects: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
                StoreError::Unavailable(e.to_string())
            }
            E::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
                StoreError::Conflict(format!("already exists ({})", db.message()))
            }
            E::Database(db) => match db.code().as_deref() {
                // PostgreSQL: connection exceptions (08xxx), shutdown and
                // "cannot connect now" (57P01..57P03), too many connections.
                Some(c) if c.starts_with("08") || c.starts_with("57P") || c == "53300" => {
                    StoreError::Unavailable(e.to_string())
                }
                // SQLite (numeric codes, shorter than a SQLSTATE): SQLITE_BUSY
                // and SQLITE_LOCKED with their extended codes (517,
                // BUSY_SNAPSHOT: a deferred transaction that read before
                // another connection wrote, refused without waiting),
                // SQLITE_FULL (disk full), SQLITE_CANTOPEN.
                Some(c)
                    if c.len() < 5
                        && c.parse::<i32>()
                            .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 13 | 14)) =>
                {
                    StoreError::Unavailable(e.to_string())
                }
                _ => StoreError::Database(e.to_string()),
            },
            E::ColumnDecode { .. } | E::Decode(_) | E::ColumnNotFound(_) => {
                StoreError::Corrupt(e.to_string())
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An operator API token as stored. The secret itself is never stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token secret.
    pub secret_hash: String,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// An audit entry to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAudit {
    pub at: i64,
    pub actor: String,
    pub actor_name: String,
    pub action: String,
    pub target: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub outcome: AuditOutcome,
    pub detail: serde_json::Value,
}

/// An audit entry as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub entry: NewAudit,
}

/// Which audit entries to read, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries with an id below this one (paging backwards).
    pub before: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub limit: u32,
}

/// Result of asking to revoke a token.
#[derive(Debug, Clone, PartialEq)]
pub enum RevokeOutcome {
    Revoked(TokenRecord),
    NotFound,
    AlreadyRevoked(TokenRecord),
    /// Refused: it is the last usable admin token and revoking it would lock
    /// every administrator out.
    LastAdmin,
}

/// Where a device stands in enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Enrollment {
    Pending,
    Accepted,
    Rejected,
    Revoked,
}

impl Enrollment {
    pub fn as_str(self) -> &'static str {
        match self {
            Enrollment::Pending => "pending",
            Enrollment::Accepted => "accepted",
            Enrollment::Rejected => "rejected",
            Enrollment::Revoked => "revoked",
        }
    }
}

impl std::str::FromStr for Enrollment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => Enrollment::Pending,
            "accepted" => Enrollment::Accepted,
            "rejected" => Enrollment::Rejected,
            "revoked" => Enrollment::Revoked,
            other => return Err(format!("unknown enrollment state {other:?}")),
        })
    }
}

/// What a device last reported about its desired configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reported {
    pub revision: String,
    pub status: ApplyStatus,
    pub config: Document,
    pub error: Option<String>,
    pub at: i64,
}

/// A device as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub id: String,
    /// Hex of the SubjectPublicKeyInfo DER.
    pub public_key: String,
    pub enrollment: Enrollment,
    pub hostname: Option<String>,
    pub tags: Document,
    pub inventory: Document,
    pub inventory_hash: Option<String>,
    /// Device-level desired configuration (groups add theirs).
    pub desired: Document,
    pub reported: Option<Reported>,
    pub agent_version: Option<String>,
    pub cert_serial: Option<String>,
    pub cert_not_after: Option<i64>,
    /// `token:<id>`, `preauthorized` or `operator`.
    pub enrolled_via: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_seen: Option<i64>,
    /// Bumped by every update; updates name the version they read.
    pub version: i64,
}

/// An enrollment token as stored (the secret itself never is).
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollTokenRecord {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    /// Tags given to every device enrolled with it.
    pub tags: Document,
    /// `None`: unlimited.
    pub uses_left: Option<i64>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub revoked_at: Option<i64>,
    pub version: i64,
}

/// A public key an operator allowed in advance.
#[derive(Debug, Clone, PartialEq)]
pub struct PreauthRecord {
    pub public_key: String,
    pub device_id: String,
    pub tags: Document,
    pub created_at: i64,
    pub created_by: Option<String>,
}

/// A device group: static members, a dynamic query, or both.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRecord {
    pub name: String,
    pub query: Option<String>,
    pub members: Vec<String>,
    pub desired: Document,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: i64,
}

#[allow(clippy::large_enum_variant)] // built a few at a time, never stored in bulk
/// One write in a [`Store::apply`] unit of work. `expected_version: None`
/// inserts (failing with [`StoreError::Conflict`] if the row exists);
/// `Some(v)` updates only if the stored row still has version `v`.
#[derive(Debug, Clone)]
pub enum Change {
    PutDevice {
        device: DeviceRecord,
        expected_version: Option<i64>,
    },
    PutEnrollToken {
        token: EnrollTokenRecord,
        expected_version: Option<i64>,
    },
    /// Uses up one use of an enrollment token, if it still has one and is
    /// neither revoked nor expired at `now` (no version check: concurrent
    /// enrollments with one token must not fight over its row).
    ConsumeEnrollToken {
        id: String,
        now: i64,
    },
    PutPreauth(PreauthRecord),
    DeletePreauth {
        public_key: String,
    },
    PutGroup {
        group: GroupRecord,
        expected_version: Option<i64>,
    },
    DeleteGroup {
        name: String,
    },
}

/// Everything the control plane keeps.
#[async_trait]
pub trait Store:
    ReleaseStore + TelemetryStore + RuleStore + AlertStore + Send + Sync + 'static
{
    fn backend(&self) -> Backend;

    /// Cheap round trip to the database, for `/healthz`.
    async fn ping(&self) -> StoreResult<()>;

    async fn get_meta(&self, key: &str) -> StoreResult<Option<String>>;
    async fn set_meta(&self, key: &str, value: &str) -> StoreResult<()>;

    async fn count_tokens(&self) -> StoreResult<i64>;
    /// Admin tokens that are neither revoked nor expired at `now`.
    async fn count_usable_admins(&self, now: i64) -> StoreResult<i64>;
    /// Stores a new token, and its audit entry when one is given, atomically.
    async fn create_token(&self, token: &TokenRecord, audit: Option<&NewAudit>) -> StoreResult<()>;
    async fn get_token(&self, id: &str) -> StoreResult<Option<TokenRecord>>;
    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>>;
    /// Revokes a token at `at` with its audit entry, atomically.
    /// `audit` is written only when the token is actually revoked; refusals
    /// are recorded by the API's audit layer.
    async fn revoke_token(&self, id: &str, at: i64, audit: &NewAudit)
    -> StoreResult<RevokeOutcome>;
    /// Records that a token was used (callers throttle this).
    async fn touch_token(&self, id: &str, at: i64) -> StoreResult<()>;

    async fn append_audit(&self, entry: &NewAudit) -> StoreResult<i64>;

    /// Applies `changes` and the audit entry in one transaction. Returns
    /// `false` (and writes nothing) when a version check failed: the caller
    /// re-reads and tries again.
    async fn apply(&self, changes: &[Change], audit: Option<&NewAudit>) -> StoreResult<bool>;
    async fn get_device(&self, id: &str) -> StoreResult<Option<DeviceRecord>>;
    async fn get_device_by_key(&self, public_key: &str) -> StoreResult<Option<DeviceRecord>>;
    async fn list_devices(&self) -> StoreResult<Vec<DeviceRecord>>;
    /// Records when devices were last heard from (batched, no version bump).
    async fn touch_devices(&self, seen: &[(String, i64)]) -> StoreResult<()>;
    async fn get_enroll_token(&self, id: &str) -> StoreResult<Option<EnrollTokenRecord>>;
    async fn list_enroll_tokens(&self) -> StoreResult<Vec<EnrollTokenRecord>>;
    async fn get_preauth(&self, public_key: &str) -> StoreResult<Option<PreauthRecord>>;
    async fn list_preauth(&self) -> StoreResult<Vec<PreauthRecord>>;
    async fn get_group(&self, name: &str) -> StoreResult<Option<GroupRecord>>;
    async fn list_groups(&self) -> StoreResult<Vec<GroupRecord>>;
    async fn list_audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>>;
}
