//! [`ReleaseStore`] on both backends (same SQL text, `$N` placeholders).

use async_trait::async_trait;
use drover_proto::device::UpdateState;
use sqlx::Row;

use super::{Pool, SqlStore};
use crate::store::{
    ArtifactRecord, DeploymentDeviceRecord, DeploymentRecord, NewAudit, ReleaseRecord,
    ReleaseStore, StoreError, StoreResult, UpdateStatusRecord,
};

const RELEASE_COLUMNS: &str =
    "id, name, version, device_types, manifest, key_list, created_at, created_by";

macro_rules! release_from_row {
    ($row:expr) => {{
        let row = $row;
        let types: String = row.try_get("device_types")?;
        Ok::<_, StoreError>(ReleaseRecord {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            version: row.try_get("version")?,
            device_types: serde_json::from_str(&types)
                .map_err(|e| StoreError::Corrupt(format!("release device types: {e}")))?,
            manifest: row.try_get("manifest")?,
            key_list: row.try_get("key_list")?,
            created_at: row.try_get("created_at")?,
            created_by: row.try_get("created_by")?,
        })
    }};
}

const DEPLOYMENT_COLUMNS: &str = "id, release_id, target, allow_downgrade, created_at, created_by";

macro_rules! deployment_from_row {
    ($row:expr) => {{
        let row = $row;
        Ok::<_, StoreError>(DeploymentRecord {
            id: row.try_get("id")?,
            release_id: row.try_get("release_id")?,
            target: row.try_get("target")?,
            allow_downgrade: row.try_get::<i64, _>("allow_downgrade")? != 0,
            created_at: row.try_get("created_at")?,
            created_by: row.try_get("created_by")?,
        })
    }};
}

macro_rules! deployment_device_from_row {
    ($row:expr) => {{
        let row = $row;
        let state: String = row.try_get("state")?;
        Ok::<_, StoreError>(DeploymentDeviceRecord {
            deployment_id: row.try_get("deployment_id")?,
            device_id: row.try_get("device_id")?,
            state: UpdateState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("update state {state:?}")))?,
            progress: row
                .try_get::<Option<i64>, _>("progress")?
                .map(|p| p.clamp(0, 100) as u8),
            reason: row.try_get("reason")?,
            message: row.try_get("message")?,
            updated_at: row.try_get("updated_at")?,
        })
    }};
}

#[async_trait]
impl ReleaseStore for SqlStore {
    async fn put_artifact(&self, a: &ArtifactRecord) -> StoreResult<bool> {
        let n = on_pool!(self, p => {
            sqlx::query(
                "INSERT INTO artifacts (sha256, size, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(&a.sha256)
            .bind(a.size)
            .bind(a.created_at)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    async fn get_artifact(&self, sha256: &str) -> StoreResult<Option<ArtifactRecord>> {
        on_pool!(self, p => {
            let row = sqlx::query("SELECT sha256, size, created_at FROM artifacts WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(p)
                .await?;
            match row {
                Some(r) => Ok(Some(ArtifactRecord {
                    sha256: r.try_get("sha256")?,
                    size: r.try_get("size")?,
                    created_at: r.try_get("created_at")?,
                })),
                None => Ok(None),
            }
        })
    }

    async fn create_release(&self, r: &ReleaseRecord, audit: &NewAudit) -> StoreResult<bool> {
        let types = serde_json::to_string(&r.device_types).expect("serializes");
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "INSERT INTO releases (id, name, version, device_types, manifest, key_list, created_at, created_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&r.id)
            .bind(&r.name)
            .bind(&r.version)
            .bind(&types)
            .bind(&r.manifest)
            .bind(&r.key_list)
            .bind(r.created_at)
            .bind(&r.created_by)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Ok(false);
            }
            insert_audit!(&mut *tx, audit)?;
            tx.commit().await?;
            Ok(true)
        })
    }

    async fn get_release(&self, id: &str) -> StoreResult<Option<ReleaseRecord>> {
        let rows = fetch_all!(
            self,
            format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE id = $1"),
            release_from_row,
            id
        )?;
        Ok(rows.into_iter().next())
    }

    async fn list_releases(&self) -> StoreResult<Vec<ReleaseRecord>> {
        fetch_all!(
            self,
            format!("SELECT {RELEASE_COLUMNS} FROM releases ORDER BY name, created_at"),
            release_from_row
        )
    }

    async fn create_deployment(
        &self,
        d: &DeploymentRecord,
        devices: &[String],
        audit: &NewAudit,
    ) -> StoreResult<()> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO deployments (id, release_id, target, allow_downgrade, created_at, created_by)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&d.id)
            .bind(&d.release_id)
            .bind(&d.target)
            .bind(i64::from(d.allow_downgrade))
            .bind(d.created_at)
            .bind(&d.created_by)
            .execute(&mut *tx)
            .await?;
            for device in devices {
                sqlx::query(
                    "INSERT INTO deployment_devices (deployment_id, device_id, state, updated_at)
                     VALUES ($1, $2, 'pending', $3)",
                )
                .bind(&d.id)
                .bind(device)
                .bind(d.created_at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO device_targets (device_id, deployment_id, set_at) VALUES ($1, $2, $3)
                     ON CONFLICT (device_id) DO UPDATE SET deployment_id = excluded.deployment_id, set_at = excluded.set_at",
                )
                .bind(device)
                .bind(&d.id)
                .bind(d.created_at)
                .execute(&mut *tx)
                .await?;
            }
            insert_audit!(&mut *tx, audit)?;
            tx.commit().await
        })?;
        Ok(())
    }

    async fn get_deployment(&self, id: &str) -> StoreResult<Option<DeploymentRecord>> {
        let rows = fetch_all!(
            self,
            format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1"),
            deployment_from_row,
            id
        )?;
        Ok(rows.into_iter().next())
    }

    async fn list_deployments(&self, limit: u32) -> StoreResult<Vec<DeploymentRecord>> {
        on_pool!(self, p => {
            let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY created_at DESC, id LIMIT $1");
            let rows = sqlx::query(&sql).bind(i64::from(limit)).fetch_all(p).await?;
            rows.iter().map(|row| deployment_from_row!(row)).collect::<StoreResult<Vec<_>>>()
        })
    }

    async fn deployment_devices(&self, id: &str) -> StoreResult<Vec<DeploymentDeviceRecord>> {
        fetch_all!(
            self,
            "SELECT deployment_id, device_id, state, progress, reason, message, updated_at
             FROM deployment_devices WHERE deployment_id = $1 ORDER BY device_id",
            deployment_device_from_row,
            id
        )
    }

    async fn device_targets(&self) -> StoreResult<Vec<(String, String)>> {
        on_pool!(self, p => {
            let rows = sqlx::query("SELECT device_id, deployment_id FROM device_targets")
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("device_id")?, r.try_get("deployment_id")?)))
                .collect::<StoreResult<Vec<_>>>()
        })
    }

    async fn record_update_status(&self, s: &UpdateStatusRecord<'_>) -> StoreResult<bool> {
        let n = on_pool!(self, p => {
            sqlx::query(
                "UPDATE deployment_devices SET state = $3, progress = $4, reason = $5, message = $6, updated_at = $7
                 WHERE deployment_id = $1 AND device_id = $2",
            )
            .bind(s.deployment_id)
            .bind(s.device_id)
            .bind(s.state.as_str())
            .bind(s.progress.map(i64::from))
            .bind(s.reason)
            .bind(s.message)
            .bind(s.at)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }
}
