//! [`RuleStore`] on both backends (same SQL text, `$N` placeholders).

use async_trait::async_trait;
use sqlx::Row;

use super::{Pool, SqlStore};
use crate::store::{NewAudit, RuleSetRecord, RuleStore, StoreError, StoreResult};

const COLUMNS: &str = "scope, version, text, sha256, updated_at, updated_by";

macro_rules! rule_set_from_row {
    ($row:expr) => {{
        let row = $row;
        Ok::<_, StoreError>(RuleSetRecord {
            scope: row.try_get("scope")?,
            version: row.try_get("version")?,
            text: row.try_get("text")?,
            sha256: row.try_get("sha256")?,
            updated_at: row.try_get("updated_at")?,
            updated_by: row.try_get("updated_by")?,
        })
    }};
}

#[async_trait]
impl RuleStore for SqlStore {
    async fn put_rule_set(&self, r: &RuleSetRecord, audit: &NewAudit) -> StoreResult<()> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO rule_sets (scope, version, text, sha256, updated_at, updated_by)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (scope) DO UPDATE SET version = excluded.version, text = excluded.text,
                     sha256 = excluded.sha256, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
            )
            .bind(&r.scope)
            .bind(&r.version)
            .bind(&r.text)
            .bind(&r.sha256)
            .bind(r.updated_at)
            .bind(&r.updated_by)
            .execute(&mut *tx)
            .await?;
            insert_audit!(&mut *tx, audit)?;
            tx.commit().await
        })?;
        Ok(())
    }

    async fn get_rule_set(&self, scope: &str) -> StoreResult<Option<RuleSetRecord>> {
        let rows = fetch_all!(
            self,
            format!("SELECT {COLUMNS} FROM rule_sets WHERE scope = $1"),
            rule_set_from_row,
            scope
        )?;
        Ok(rows.into_iter().next())
    }

    async fn list_rule_sets(&self) -> StoreResult<Vec<RuleSetRecord>> {
        fetch_all!(
            self,
            format!("SELECT {COLUMNS} FROM rule_sets ORDER BY scope"),
            rule_set_from_row
        )
    }

    async fn delete_rule_set(&self, scope: &str, audit: &NewAudit) -> StoreResult<bool> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query("DELETE FROM rule_sets WHERE scope = $1")
                .bind(scope)
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
}
