//! Records and store calls for agent-side rule sets (docs/rules.md): one
//! text per group or device, stored as the operator sent it once the
//! server's parser accepted it. Which set a device runs is decided in
//! `devices::rules`, not here.

use async_trait::async_trait;

use super::{NewAudit, StoreResult};

/// A stored rule set.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSetRecord {
    /// `group:NAME` or `device:ID`.
    pub scope: String,
    /// The set's `version`, as the parser read it.
    pub version: String,
    /// The TOML text exactly as uploaded.
    pub text: String,
    /// Hex SHA-256 of `text`.
    pub sha256: String,
    pub updated_at: i64,
    /// Name of the token that stored it.
    pub updated_by: Option<String>,
}

#[async_trait]
pub trait RuleStore {
    /// Stores (or replaces) the rule set of `record.scope` with its audit
    /// entry, in one transaction.
    async fn put_rule_set(&self, record: &RuleSetRecord, audit: &NewAudit) -> StoreResult<()>;
    async fn get_rule_set(&self, scope: &str) -> StoreResult<Option<RuleSetRecord>>;
    /// Every stored rule set, by scope.
    async fn list_rule_sets(&self) -> StoreResult<Vec<RuleSetRecord>>;
    /// Deletes the rule set of `scope` with its audit entry; `false` (and
    /// nothing written) if there was none.
    async fn delete_rule_set(&self, scope: &str, audit: &NewAudit) -> StoreResult<bool>;
}
