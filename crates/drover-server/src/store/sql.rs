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
    AuditQuery, AuditRecord, Backend, Change, DeviceRecord, Document, EnrollTokenRecord,
    Enrollment, GroupRecord, NewAudit, PreauthRecord, RevokeOutcome, Store, StoreError,
    StoreResult, TokenRecord,
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

fn doc_json(doc: &Document) -> String {
    serde_json::to_string(doc).expect("documents serialize")
}

fn json_doc(text: &str, what: &str) -> Result<Document, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

const DEVICE_COLUMNS: &str = "id, public_key, enrollment, hostname, tags, inventory, inventory_hash, desired, reported, \
     agent_version, cert_serial, cert_not_after, enrolled_via, created_at, updated_at, last_seen, version";

macro_rules! device_from_row {
    ($row:expr) => {{
        let row = $row;
        let enrollment: String = row.try_get("enrollment")?;
        let reported: Option<String> = row.try_get("reported")?;
        Ok::<_, StoreError>(DeviceRecord {
            id: row.try_get("id")?,
            public_key: row.try_get("public_key")?,
            enrollment: Enrollment::from_str(&enrollment).map_err(StoreError::Corrupt)?,
            hostname: row.try_get("hostname")?,
            tags: json_doc(&row.try_get::<String, _>("tags")?, "device tags")?,
            inventory: json_doc(&row.try_get::<String, _>("inventory")?, "device inventory")?,
            inventory_hash: row.try_get("inventory_hash")?,
            desired: json_doc(&row.try_get::<String, _>("desired")?, "device desired")?,
            reported: reported
                .map(|r| serde_json::from_str(&r))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("device reported: {e}")))?,
            agent_version: row.try_get("agent_version")?,
            cert_serial: row.try_get("cert_serial")?,
            cert_not_after: row.try_get("cert_not_after")?,
            enrolled_via: row.try_get("enrolled_via")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            last_seen: row.try_get("last_seen")?,
            version: row.try_get("version")?,
        })
    }};
}

const ENROLL_TOKEN_COLUMNS: &str = "id, name, secret_hash, tags, uses_left, expires_at, created_at, created_by, revoked_at, version";

macro_rules! enroll_token_from_row {
    ($row:expr) => {{
        let row = $row;
        Ok::<_, StoreError>(EnrollTokenRecord {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            secret_hash: row.try_get("secret_hash")?,
            tags: json_doc(&row.try_get::<String, _>("tags")?, "token tags")?,
            uses_left: row.try_get("uses_left")?,
            expires_at: row.try_get("expires_at")?,
            created_at: row.try_get("created_at")?,
            created_by: row.try_get("created_by")?,
            revoked_at: row.try_get("revoked_at")?,
            version: row.try_get("version")?,
        })
    }};
}

macro_rules! preauth_from_row {
    ($row:expr) => {{
        let row = $row;
        Ok::<_, StoreError>(PreauthRecord {
            public_key: row.try_get("public_key")?,
            device_id: row.try_get("device_id")?,
            tags: json_doc(&row.try_get::<String, _>("tags")?, "preauthorized tags")?,
            created_at: row.try_get("created_at")?,
            created_by: row.try_get("created_by")?,
        })
    }};
}

const GROUP_COLUMNS: &str = "name, query, members, desired, created_at, updated_at, version";

macro_rules! group_from_row {
    ($row:expr) => {{
        let row = $row;
        let members: String = row.try_get("members")?;
        Ok::<_, StoreError>(GroupRecord {
            name: row.try_get("name")?,
            query: row.try_get("query")?,
            members: serde_json::from_str(&members)
                .map_err(|e| StoreError::Corrupt(format!("group members: {e}")))?,
            desired: json_doc(&row.try_get::<String, _>("desired")?, "group desired")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            version: row.try_get("version")?,
        })
    }};
}

/// Fetches rows with `$sql` and one optional text bind, decoding each with `$decode`.
macro_rules! fetch_all {
    ($self:expr, $sql:expr, $decode:ident $(, $bind:expr)?) => {
        on_pool!($self, p => {
            let sql: &str = &$sql;
            let rows = sqlx::query(sql)$(.bind($bind))?.fetch_all(p).await?;
            rows.iter().map(|row| $decode!(row)).collect::<StoreResult<Vec<_>>>()
        })
    };
}

/// Runs one [`Change`] inside a transaction; `Ok(false)` on a failed version check.
macro_rules! apply_change {
    ($tx:expr, $change:expr) => {{
        let rows = match $change {
            Change::PutDevice { device: d, expected_version } => {
                let reported = d.reported.as_ref().map(|r| serde_json::to_string(r).expect("serializes"));
                let q = match expected_version {
                    None => sqlx::query(
                        "INSERT INTO devices (id, public_key, enrollment, hostname, tags, inventory, inventory_hash, desired, reported,
                         agent_version, cert_serial, cert_not_after, enrolled_via, created_at, updated_at, last_seen, version)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, COALESCE($17, 0) + 1)",
                    ),
                    Some(_) => sqlx::query(
                        "UPDATE devices SET public_key = $2, enrollment = $3, hostname = $4, tags = $5, inventory = $6,
                         inventory_hash = $7, desired = $8, reported = $9, agent_version = $10, cert_serial = $11,
                         cert_not_after = $12, enrolled_via = $13, created_at = $14, updated_at = $15,
                         last_seen = COALESCE($16, last_seen), version = version + 1
                         WHERE id = $1 AND version = $17",
                    ),
                };
                q.bind(&d.id)
                    .bind(&d.public_key)
                    .bind(d.enrollment.as_str())
                    .bind(&d.hostname)
                    .bind(doc_json(&d.tags))
                    .bind(doc_json(&d.inventory))
                    .bind(&d.inventory_hash)
                    .bind(doc_json(&d.desired))
                    .bind(reported)
                    .bind(&d.agent_version)
                    .bind(&d.cert_serial)
                    .bind(d.cert_not_after)
                    .bind(&d.enrolled_via)
                    .bind(d.created_at)
                    .bind(d.updated_at)
                    .bind(d.last_seen)
                    .bind(*expected_version)
                    .execute(&mut *$tx)
                    .await?
                    .rows_affected()
            }
            Change::PutEnrollToken { token: t, expected_version } => {
                let q = match expected_version {
                    None => sqlx::query(
                        "INSERT INTO enroll_tokens (id, name, secret_hash, tags, uses_left, expires_at, created_at, created_by, revoked_at, version)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, COALESCE($10, 0) + 1)",
                    ),
                    Some(_) => sqlx::query(
                        "UPDATE enroll_tokens SET name = $2, secret_hash = $3, tags = $4, uses_left = $5, expires_at = $6,
                         created_at = $7, created_by = $8, revoked_at = $9, version = version + 1
                         WHERE id = $1 AND version = $10",
                    ),
                };
                q.bind(&t.id)
                    .bind(&t.name)
                    .bind(&t.secret_hash)
                    .bind(doc_json(&t.tags))
                    .bind(t.uses_left)
                    .bind(t.expires_at)
                    .bind(t.created_at)
                    .bind(&t.created_by)
                    .bind(t.revoked_at)
                    .bind(*expected_version)
                    .execute(&mut *$tx)
                    .await?
                    .rows_affected()
            }
            Change::ConsumeEnrollToken { id, now } => sqlx::query(
                "UPDATE enroll_tokens SET uses_left = uses_left - 1
                 WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)
                   AND (uses_left IS NULL OR uses_left > 0)",
            )
            .bind(id)
            .bind(*now)
            .execute(&mut *$tx)
            .await?
            .rows_affected(),
            Change::PutPreauth(r) => sqlx::query(
                "INSERT INTO preauthorized_keys (public_key, device_id, tags, created_at, created_by)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&r.public_key)
            .bind(&r.device_id)
            .bind(doc_json(&r.tags))
            .bind(r.created_at)
            .bind(&r.created_by)
            .execute(&mut *$tx)
            .await?
            .rows_affected(),
            Change::DeletePreauth { public_key } => sqlx::query("DELETE FROM preauthorized_keys WHERE public_key = $1")
                .bind(public_key)
                .execute(&mut *$tx)
                .await?
                .rows_affected(),
            Change::PutGroup { group: g, expected_version } => {
                let q = match expected_version {
                    None => sqlx::query(
                        "INSERT INTO device_groups (name, query, members, desired, created_at, updated_at, version)
                         VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, 0) + 1)",
                    ),
                    Some(_) => sqlx::query(
                        "UPDATE device_groups SET query = $2, members = $3, desired = $4, created_at = $5, updated_at = $6,
                         version = version + 1 WHERE name = $1 AND version = $7",
                    ),
                };
                q.bind(&g.name)
                    .bind(&g.query)
                    .bind(serde_json::to_string(&g.members).expect("serializes"))
                    .bind(doc_json(&g.desired))
                    .bind(g.created_at)
                    .bind(g.updated_at)
                    .bind(*expected_version)
                    .execute(&mut *$tx)
                    .await?
                    .rows_affected()
            }
            Change::DeleteGroup { name } => sqlx::query("DELETE FROM device_groups WHERE name = $1")
                .bind(name)
                .execute(&mut *$tx)
                .await?
                .rows_affected(),
        };
        rows == 1
    }};
}

/// A [`Store`] on SQLite or PostgreSQL, chosen by the database URL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: Pool,
}

/// The migration sets, in order: (version, description, SQLite, PostgreSQL).
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "foundation",
        include_str!("../../migrations/sqlite/0001_foundation.sql"),
        include_str!("../../migrations/postgres/0001_foundation.sql"),
    ),
    (
        2,
        "devices",
        include_str!("../../migrations/sqlite/0002_devices.sql"),
        include_str!("../../migrations/postgres/0002_devices.sql"),
    ),
    (
        3,
        "releases",
        include_str!("../../migrations/sqlite/0003_releases.sql"),
        include_str!("../../migrations/postgres/0003_releases.sql"),
    ),
    (
        4,
        "telemetry",
        include_str!("../../migrations/sqlite/0004_telemetry.sql"),
        include_str!("../../migrations/postgres/0004_telemetry.sql"),
    ),
    (
        5,
        "alerts",
        include_str!("../../migrations/sqlite/0005_alerts.sql"),
        include_str!("../../migrations/postgres/0005_alerts.sql"),
    ),
    (
        6,
        "rules",
        include_str!("../../migrations/sqlite/0006_rules.sql"),
        include_str!("../../migrations/postgres/0006_rules.sql"),
    ),
];

fn migrator(backend: Backend) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sqlite, postgres)| {
            let sql = match backend {
                Backend::Sqlite => *sqlite,
                Backend::Postgres => *postgres,
            };
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
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

    async fn apply(&self, changes: &[Change], audit: Option<&NewAudit>) -> StoreResult<bool> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for change in changes {
                if !apply_change!(tx, change) {
                    // Dropping the transaction rolls everything back.
                    return Ok(false);
                }
            }
            if let Some(a) = audit {
                insert_audit!(&mut *tx, a)?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    async fn get_device(&self, id: &str) -> StoreResult<Option<DeviceRecord>> {
        let rows = fetch_all!(
            self,
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"),
            device_from_row,
            id
        )?;
        Ok(rows.into_iter().next())
    }

    async fn get_device_by_key(&self, public_key: &str) -> StoreResult<Option<DeviceRecord>> {
        let rows = fetch_all!(
            self,
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE public_key = $1"),
            device_from_row,
            public_key
        )?;
        Ok(rows.into_iter().next())
    }

    async fn list_devices(&self) -> StoreResult<Vec<DeviceRecord>> {
        fetch_all!(
            self,
            format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"),
            device_from_row
        )
    }

    async fn touch_devices(&self, seen: &[(String, i64)]) -> StoreResult<()> {
        if seen.is_empty() {
            return Ok(());
        }
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for (id, at) in seen {
                sqlx::query("UPDATE devices SET last_seen = $2 WHERE id = $1 AND (last_seen IS NULL OR last_seen < $2)")
                    .bind(id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        })?;
        Ok(())
    }

    async fn get_enroll_token(&self, id: &str) -> StoreResult<Option<EnrollTokenRecord>> {
        let rows = fetch_all!(
            self,
            format!("SELECT {ENROLL_TOKEN_COLUMNS} FROM enroll_tokens WHERE id = $1"),
            enroll_token_from_row,
            id
        )?;
        Ok(rows.into_iter().next())
    }

    async fn list_enroll_tokens(&self) -> StoreResult<Vec<EnrollTokenRecord>> {
        fetch_all!(
            self,
            format!("SELECT {ENROLL_TOKEN_COLUMNS} FROM enroll_tokens ORDER BY created_at, id"),
            enroll_token_from_row
        )
    }

    async fn get_preauth(&self, public_key: &str) -> StoreResult<Option<PreauthRecord>> {
        let rows = fetch_all!(
            self,
            "SELECT public_key, device_id, tags, created_at, created_by FROM preauthorized_keys WHERE public_key = $1",
            preauth_from_row,
            public_key
        )?;
        Ok(rows.into_iter().next())
    }

    async fn list_preauth(&self) -> StoreResult<Vec<PreauthRecord>> {
        fetch_all!(
            self,
            "SELECT public_key, device_id, tags, created_at, created_by FROM preauthorized_keys ORDER BY created_at",
            preauth_from_row
        )
    }

    async fn get_group(&self, name: &str) -> StoreResult<Option<GroupRecord>> {
        let rows = fetch_all!(
            self,
            format!("SELECT {GROUP_COLUMNS} FROM device_groups WHERE name = $1"),
            group_from_row,
            name
        )?;
        Ok(rows.into_iter().next())
    }

    async fn list_groups(&self) -> StoreResult<Vec<GroupRecord>> {
        let mut groups: Vec<GroupRecord> = fetch_all!(
            self,
            format!("SELECT {GROUP_COLUMNS} FROM device_groups"),
            group_from_row
        )?;
        // Byte order, the same on every backend (collations differ), because
        // groups apply their documents in this order.
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(groups)
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

// After the macros above, which it uses.
mod alerts;
mod releases;
mod rules;
mod telemetry;
