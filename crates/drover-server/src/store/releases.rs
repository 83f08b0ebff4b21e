//! Records and store calls for releases, artifacts and deployments
//! (docs/updates.md). Artifact bytes live in the object store; the
//! database records which artifacts are complete.

use async_trait::async_trait;
use drover_proto::device::UpdateState;

use super::{NewAudit, StoreResult};

/// A stored artifact: complete and hash-checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactRecord {
    pub sha256: String,
    pub size: i64,
    pub created_at: i64,
}

/// A published release. `manifest` and `key_list` are the signed JSON texts
/// exactly as uploaded; devices verify them, the server only parses them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseRecord {
    /// `name@version`.
    pub id: String,
    pub name: String,
    pub version: String,
    pub device_types: Vec<String>,
    pub manifest: String,
    pub key_list: Option<String>,
    pub created_at: i64,
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentRecord {
    pub id: String,
    pub release_id: String,
    /// `device:<id>,…` or `group:<name>`.
    pub target: String,
    pub allow_downgrade: bool,
    pub created_at: i64,
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentDeviceRecord {
    pub deployment_id: String,
    pub device_id: String,
    pub state: UpdateState,
    pub progress: Option<u8>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub updated_at: i64,
}

/// What a device reported about a deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStatusRecord<'a> {
    pub deployment_id: &'a str,
    pub device_id: &'a str,
    pub state: UpdateState,
    pub progress: Option<u8>,
    pub reason: Option<&'a str>,
    pub message: Option<&'a str>,
    pub at: i64,
}

#[async_trait]
pub trait ReleaseStore {
    /// Records a complete artifact; `false` if it was already recorded.
    async fn put_artifact(&self, artifact: &ArtifactRecord) -> StoreResult<bool>;
    async fn get_artifact(&self, sha256: &str) -> StoreResult<Option<ArtifactRecord>>;

    /// Stores a release with its audit entry; `false` (nothing written) if
    /// a release with that id exists.
    async fn create_release(&self, release: &ReleaseRecord, audit: &NewAudit) -> StoreResult<bool>;
    async fn get_release(&self, id: &str) -> StoreResult<Option<ReleaseRecord>>;
    async fn list_releases(&self) -> StoreResult<Vec<ReleaseRecord>>;

    /// Stores a deployment, makes it the target of `devices` (each starts
    /// `pending`) and writes the audit entry, in one transaction.
    async fn create_deployment(
        &self,
        deployment: &DeploymentRecord,
        devices: &[String],
        audit: &NewAudit,
    ) -> StoreResult<()>;
    async fn get_deployment(&self, id: &str) -> StoreResult<Option<DeploymentRecord>>;
    /// Newest first.
    async fn list_deployments(&self, limit: u32) -> StoreResult<Vec<DeploymentRecord>>;
    async fn deployment_devices(&self, id: &str) -> StoreResult<Vec<DeploymentDeviceRecord>>;
    /// (device id, deployment id) for every device that has a target.
    async fn device_targets(&self) -> StoreResult<Vec<(String, String)>>;
    /// Records a device's report; `false` if the device is not part of the
    /// deployment (nothing written).
    async fn record_update_status(&self, status: &UpdateStatusRecord<'_>) -> StoreResult<bool>;
}
