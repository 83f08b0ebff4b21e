//! The update side of [`Devices`]: which release each device should run
//! (its newest deployment), folded into the desired state the control
//! channel pushes, and the progress devices report back.
//!
//! Targets are cached like groups: every connect needs them and a reconnect
//! storm must not turn into one query per device. The cache is dropped when
//! a deployment is created (with replicas: invalidated over NATS).

use std::collections::HashMap;
use std::sync::Arc;

use drover_proto::device::{ServerMessage, UpdateStatus, UpdateTarget};

use super::{Devices, Effective, effective};
use crate::store::{DeviceRecord, GroupRecord, StoreResult, UpdateStatusRecord};

/// Device id → the target it should run.
pub type Targets = HashMap<String, Arc<UpdateTarget>>;

impl Devices {
    /// Every device's target, from the cache or the database.
    pub async fn targets(&self) -> StoreResult<Arc<Targets>> {
        if let Some(t) = self
            .targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(t);
        }
        let pairs = self.store.device_targets().await?;
        let mut by_deployment: HashMap<String, Option<Arc<UpdateTarget>>> = HashMap::new();
        let mut targets = Targets::new();
        for (device, deployment) in pairs {
            if !by_deployment.contains_key(&deployment) {
                let target = self.load_target(&deployment).await?;
                by_deployment.insert(deployment.clone(), target.map(Arc::new));
            }
            if let Some(Some(t)) = by_deployment.get(&deployment) {
                targets.insert(device, t.clone());
            }
        }
        let targets = Arc::new(targets);
        *self.targets.write().unwrap_or_else(|p| p.into_inner()) = Some(targets.clone());
        Ok(targets)
    }

    async fn load_target(&self, deployment: &str) -> StoreResult<Option<UpdateTarget>> {
        let Some(d) = self.store.get_deployment(deployment).await? else {
            return Ok(None);
        };
        let Some(r) = self.store.get_release(&d.release_id).await? else {
            return Ok(None);
        };
        Ok(Some(UpdateTarget {
            deployment_id: d.id,
            manifest: r.manifest,
            key_list: r.key_list,
            allow_downgrade: d.allow_downgrade,
        }))
    }

    /// Forgets the cached targets; call after creating a deployment.
    pub fn targets_changed(&self) {
        *self.targets.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The effective desired state including the release to run. The
    /// revision covers the deployment, so a new deployment is pushed even
    /// when the configuration did not change.
    pub async fn effective_with_update(
        &self,
        device: &DeviceRecord,
        groups: &[GroupRecord],
        connection: &str,
    ) -> StoreResult<Effective> {
        let mut eff = effective(device, groups, connection);
        if let Some(t) = self.targets().await?.get(&device.id) {
            let digest =
                crate::auth::sha256_hex(format!("{}+{}", eff.revision, t.deployment_id).as_bytes());
            eff.revision = digest[..16].to_string();
            eff.update = Some((**t).clone());
        }
        Ok(eff)
    }

    /// Stores what a device reports about a deployment. A final state is
    /// acknowledged so the agent stops resending it; so is a report about a
    /// deployment the device is not part of (nothing is stored), which
    /// would otherwise be resent forever.
    pub async fn update_status(
        &self,
        device_id: &str,
        status: &UpdateStatus,
    ) -> StoreResult<Option<ServerMessage>> {
        metrics::counter!("drover_update_reports_total", "state" => status.state.as_str())
            .increment(1);
        let stored = self
            .store
            .record_update_status(&UpdateStatusRecord {
                deployment_id: &status.deployment_id,
                device_id,
                state: status.state,
                progress: status.progress.map(|p| p.min(100)),
                reason: status.reason.as_deref(),
                message: status.message.as_deref(),
                at: crate::clock::now_ms(),
            })
            .await?;
        if !stored {
            tracing::info!(deployment = %status.deployment_id, "update status for a deployment this device is not part of; ignored");
        } else if status.state.is_final() {
            tracing::info!(deployment = %status.deployment_id, state = status.state.as_str(), reason = ?status.reason, "update finished");
        } else {
            // Progress arrives every few seconds per downloading device.
            tracing::debug!(deployment = %status.deployment_id, state = status.state.as_str(), progress = ?status.progress, "update status");
        }
        Ok(
            (status.state.is_final() || !stored).then(|| ServerMessage::UpdateAck {
                deployment_id: status.deployment_id.clone(),
                state: status.state,
            }),
        )
    }
}
