//! The SQL implementation of [`Store`] for SQLite and PostgreSQL.
//!
//! Both backends run the same statements: they use `$N` placeholders, which
//! SQLite and PostgreSQL both understand, and only portable SQL (`ON
//! CONFLICT`, `RETURNING`). The [`on_pool!`] macro expands each body once per
//! backend, so each runs natively typed with no `Any` driver in between.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use drover_proto::api::{AuditOutcome, Role};
use sqlx::Row;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{
    AuditQuery, AuditRecord, Backend, NewAudit, RevokeOutcome, Store, StoreError, StoreResult,
    TokenRecord,
};

/// How long a request waits for a database connection before it is told the
/// database is unavailable (instead of hanging).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the backend's pool (same code, both types).
macro_rules! on_pool {
    ($self:expr, $p:ident => $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// Inserts one audit entry on any executor of either backend, yielding its id.
macro_rules! insert_audit {
    ($exec:expr, $e:expr) => {{
        let e: &NewAudit = $e;
        sqlx::query(
            "INSERT INTO audit_log (at, actor, actor_name, action, target, method, path, status, outcome, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.actor_name)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.method)
        .bind(&e.path)
        .bind(i64::from(e.status))
        .bind(e.outcome.as_str())
        .bind(e.detail.to_string())
        .fetch_one($exec)
        .await
        .and_then(|row| row.try_get::<i64, _>(0))
    }};
}

/// Usable admin tokens other than `$1` at time `$2`.
const USABLE_ADMINS_SQL: &str = "SELECT COUNT(*) FROM api_tokens WHERE role = 'admin' AND id <> $1
     AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)";

const TOKEN_COLUMNS: &str =
    "id, name, role, secret_hash, created_at, created_by, expires_at, revoked_at, last_used_at";

macro_rules! token_from_row {
    ($row:expr) => {{
        let row = $row;
        let role: String = row.try_get("role")?;
        Ok::<_, StoreError>(TokenRecord {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            role: Role::from_str(&role).map_err(StoreError::Corrupt)?,
            secret_hash: row.try_get("secret_hash")?,
            created_at: row.try_get("created_at")?,
            created_by: row.try_get("created_by")?,
            expires_at: row.try_get("expires_at")?,
            revoked_at: row.try_get("revoked_at")?,
            last_used_at: row.try_get("last_used_at")?,
        })
    }};
}

/// A [`Store`] on SQLite or PostgreSQL, chosen by the database URL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: Pool,
}

fn migrator(backend: Backend) -> Migrator {
    let sql: &'static str = match backend {
        Backend::Sqlite => include_str!("../../migrations/sqlite/0001_foundation.sql"),
        Backend::Postgres => include_str!("../../migrations/postgres/0001_foundation.sql"),
    };
    Migrator {
        migrations: Cow::Owned(vec![Migration::new(
            1,
            Cow::Borrowed("foundation"),
            MigrationType::Simple,
            Cow::Borrowed(sql),
            false,
        )]),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

/// Hides the password of a database URL so it can be logged or shown.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _password)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

impl SqlStore {
    /// Connects to `url` (`sqlite:…` or `postgres://…`) and applies pending
    /// migrations. Fails with a message naming the (redacted) URL.
    pub async fn connect(url: &str) -> StoreResult<SqlStore> {
        let shown = redact_url(url);
        let pool = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL {shown}: {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(ACQUIRE_TIMEOUT);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(opts)
                .await
                .map_err(|e| StoreError::Unavailable(format!("cannot open {shown}: {e}")))?;
            Pool::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)
                .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL {shown}: {e}")))?
                .application_name("drover-server");
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(opts)
                .await
                .map_err(|e| StoreError::Unavailable(format!("cannot connect to {shown}: {e}")))?;
            Pool::Postgres(pool)
        } else {
            return Err(StoreError::Unavailable(format!(
                "unsupported database URL {shown}: use sqlite:PATH or postgres://USER@HOST/DB"
            )));
        };
        let store = SqlStore { pool };
        let migrator = migrator(store.backend());
        on_pool!(store, p => migrator.run(p).await).map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => StoreError::from(e),
            other => StoreError::Corrupt(format!("schema migration failed: {other}")),
        })?;
        Ok(store)
    }

    /// Closes every connection; later calls fail as unavailable.
    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        on_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    async fn get_meta(&self, key: &str) -> StoreResult<Option<String>> {
        let row = on_pool!(self, p => {
            sqlx::query("SELECT value FROM server_meta WHERE key = $1")
                .bind(key)
                .fetch_optional(p)
                .await?
                .map(|r| r.try_get::<String, _>(0))
                .transpose()
        })?;
        Ok(row)
    }

    async fn set_meta(&self, key: &str, value: &str) -> StoreResult<()> {
        on_pool!(self, p => {
            sqlx::query(
                "INSERT INTO server_meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value)
            .execute(p)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    async fn count_tokens(&self) -> StoreResult<i64> {
        let n = on_pool!(self, p => {
            sqlx::query("SELECT COUNT(*) FROM api_tokens").fetch_one(p).await?.try_get::<i64, _>(0)
        })?;
        Ok(n)
    }

    async fn count_usable_admins(&self, now: i64) -> StoreResult<i64> {
        let n = on_pool!(self, p => {
            sqlx::query(USABLE_ADMINS_SQL)
                .bind("")
                .bind(now)
                .fetch_one(p)
                .await?
                .try_get::<i64, _>(0)
        })?;
        Ok(n)
    }

    async fn create_token(&self, t: &TokenRecord, audit: Option<&NewAudit>) -> StoreResult<()> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO api_tokens (id, name, role, secret_hash, created_at, created_by, expires_at, revoked_at, last_used_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.role.as_str())
            .bind(&t.secret_hash)
            .bind(t.created_at)
            .bind(&t.created_by)
            .bind(t.expires_at)
            .bind(t.revoked_at)
            .bind(t.last_used_at)
            .execute(&mut *tx)
            .await?;
            if let Some(a) = audit {
                insert_audit!(&mut *tx, a)?;
            }
            tx.commit().await
        })?;
        Ok(())
    }

    async fn get_token(&self, id: &str) -> StoreResult<Option<TokenRecord>> {
        on_pool!(self, p => {
            let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"))
                .bind(id)
                .fetch_optional(p)
                .await?;
            match row {
                Some(row) => Ok(Some(token_from_row!(&row)?)),
                None => Ok(None),
            }
        })
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        on_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
            ))
            .fetch_all(p)
            .await?;
            rows.iter().map(|row| token_from_row!(row)).collect()
        })
    }

    async fn revoke_token(
        &self,
        id: &str,
        at: i64,
        audit: &NewAudit,
    ) -> StoreResult<RevokeOutcome> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            // Take the write lock first on SQLite, and lock the admin rows on
            // PostgreSQL, so two concurrent revocations cannot both pass the
            // last-admin check.
            let lock_sql = match self.backend() {
                Backend::Sqlite => "UPDATE server_meta SET value = value WHERE key = 'lock'",
                Backend::Postgres => "SELECT id FROM api_tokens WHERE role = 'admin' FOR UPDATE",
            };
            sqlx::query(lock_sql).execute(&mut *tx).await?;
            let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                return Ok(RevokeOutcome::NotFound);
            };
            let token = token_from_row!(&row)?;
            if token.revoked_at.is_some() {
                return Ok(RevokeOutcome::AlreadyRevoked(token));
            }
            if token.role == Role::Admin {
                let others: i64 = sqlx::query(USABLE_ADMINS_SQL)
                .bind(id)
                .bind(at)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
                if others == 0 {
                    return Ok(RevokeOutcome::LastAdmin);
                }
            }
            sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2")
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            insert_audit!(&mut *tx, audit)?;
            tx.commit().await?;
            Ok(RevokeOutcome::Revoked(TokenRecord { revoked_at: Some(at), ..token }))
        })
    }

    async fn touch_token(&self, id: &str, at: i64) -> StoreResult<()> {
        on_pool!(self, p => {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(at)
                .bind(id)
                .execute(p)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }

    async fn append_audit(&self, entry: &NewAudit) -> StoreResult<i64> {
        Ok(on_pool!(self, p => insert_audit!(p, entry))?)
    }

    async fn list_audit(&self, q: &AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        on_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT id, at, actor, actor_name, action, target, method, path, status, outcome, detail
                 FROM audit_log
                 WHERE ($1 IS NULL OR id < $1)
                   AND ($2 IS NULL OR actor = $2)
                   AND ($3 IS NULL OR action = $3)
                 ORDER BY id DESC LIMIT $4",
            )
            .bind(q.before)
            .bind(&q.actor)
            .bind(&q.action)
            .bind(i64::from(q.limit))
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|row| {
                    let outcome: String = row.try_get("outcome")?;
                    let detail: String = row.try_get("detail")?;
                    let status: i64 = row.try_get("status")?;
                    Ok(AuditRecord {
                        id: row.try_get("id")?,
                        entry: NewAudit {
                            at: row.try_get("at")?,
                            actor: row.try_get("actor")?,
                            actor_name: row.try_get("actor_name")?,
                            action: row.try_get("action")?,
                            target: row.try_get("target")?,
                            method: row.try_get("method")?,
                            path: row.try_get("path")?,
                            status: u16::try_from(status)
                                .map_err(|_| StoreError::Corrupt(format!("audit status {status}")))?,
                            outcome: AuditOutcome::from_str(&outcome).map_err(StoreError::Corrupt)?,
                            detail: serde_json::from_str(&detail)
                                .map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))?,
                        },
                    })
                })
                .collect()
        })
    }
}
