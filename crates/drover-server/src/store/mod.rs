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

pub mod sql;

use async_trait::async_trait;
use drover_proto::api::{AuditOutcome, Role};

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
            E::Database(db) => match db.code().as_deref() {
                // PostgreSQL: connection exceptions (08xxx), shutdown and
                // "cannot connect now" (57P01..57P03), too many connections.
                Some(c) if c.starts_with("08") || c.starts_with("57P") || c == "53300" => {
                    StoreError::Unavailable(e.to_string())
                }
                // SQLite: SQLITE_BUSY / SQLITE_LOCKED after the busy timeout,
                // SQLITE_FULL (disk full), SQLITE_CANTOPEN.
                Some("5" | "6" | "13" | "14") => StoreError::Unavailable(e.to_string()),
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

/// Everything the control plane keeps.
#[async_trait]
pub trait Store: Send + Sync + 'static {
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
    async fn list_audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>>;
}
