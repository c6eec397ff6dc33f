//! The embedded SQLite backend: WAL mode, `synchronous=FULL` (an acknowledged write survives
//! a crash), writes in `BEGIN IMMEDIATE` transactions (SQLite's single writer makes plan
//! caps exact).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keygate_core::{Environment, KeyDigest};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::migrate::SQLITE as MIGRATIONS;
use crate::{Account, AuditEvent, KeyPatch, KeyRecord, Result, Store, StoreError, UsageUpdate};

const KEY_COLUMNS: &str = "id, account_id, name, display_prefix, digest, environment, \
    permissions, ip_allowlist, rate_limit, quota, quota_used, meta, created_at, last_used_at, \
    expires_at, revoked_at, rotated_from";

/// keygate's store in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path` or `sqlite:path`)
    /// and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // Several processes opening a new file at once race to switch it to WAL; SQLite
        // answers "database is locked" at once instead of waiting. Retry briefly.
        let mut attempt = 0;
        let pool = loop {
            let result = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options.clone())
                .await;
            match result {
                Err(sqlx::Error::Database(e)) if attempt < 50 && e.message().contains("locked") => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * attempt.min(10))).await;
                }
                other => break other.map_err(db_error)?,
            }
        };
        let store = SqliteStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations this binary knows and the database lacks.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        for m in MIGRATIONS {
            let mut tx = self.write().await?;
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?")
                    .bind(m.version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(m.sql)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, strftime('%s','now') * 1000)")
                .bind(m.version)
                .bind(m.name)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            tracing::info!(version = m.version, name = m.name, "applied migration");
        }
        Ok(())
    }

    /// A write transaction that holds SQLite's write lock from its first statement, so a
    /// read-then-write cannot fail half way on a lock upgrade.
    async fn write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)
    }

    async fn fetch_key(tx: &mut Transaction<'static, Sqlite>, id: &str) -> Result<KeyRecord> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_error)?
            .ok_or(StoreError::NotFound)?;
        key_from_row(&row)
    }
}

fn db_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(ref d) if d.is_unique_violation() => StoreError::Duplicate,
        sqlx::Error::Database(d) => StoreError::Backend(d.message().to_owned()),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Backend(other.to_string()),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn key_from_row(row: &SqliteRow) -> Result<KeyRecord> {
    let get = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    let digest: Vec<u8> = row.try_get("digest").map_err(get)?;
    let environment: String = row.try_get("environment").map_err(get)?;
    let opt_json = |col: &str| -> Result<Option<String>> { row.try_get(col).map_err(get) };
    Ok(KeyRecord {
        id: row.try_get("id").map_err(get)?,
        account_id: row.try_get("account_id").map_err(get)?,
        name: row.try_get("name").map_err(get)?,
        display_prefix: row.try_get("display_prefix").map_err(get)?,
        digest: KeyDigest(
            digest
                .try_into()
                .map_err(|_| StoreError::Corrupt("digest is not 32 bytes".into()))?,
        ),
        environment: Environment::parse(&environment)
            .ok_or_else(|| StoreError::Corrupt(format!("environment {environment:?}")))?,
        permissions: from_json(&row.try_get::<String, _>("permissions").map_err(get)?)?,
        ip_allowlist: from_json(&row.try_get::<String, _>("ip_allowlist").map_err(get)?)?,
        rate_limit: opt_json("rate_limit")?.map(|s| from_json(&s)).transpose()?,
        quota: opt_json("quota")?.map(|s| from_json(&s)).transpose()?,
        quota_used: row.try_get("quota_used").map_err(get)?,
        meta: from_json(&row.try_get::<String, _>("meta").map_err(get)?)?,
        created_at: row.try_get("created_at").map_err(get)?,
        last_used_at: row.try_get("last_used_at").map_err(get)?,
        expires_at: row.try_get("expires_at").map_err(get)?,
        revoked_at: row.try_get("revoked_at").map_err(get)?,
        rotated_from: row.try_get("rotated_from").map_err(get)?,
    })
}

fn account_from_row(row: &SqliteRow) -> Result<Account> {
    let get = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    Ok(Account {
        id: row.try_get("id").map_err(get)?,
        name: row.try_get("name").map_err(get)?,
        plan: row.try_get("plan").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
    })
}

fn audit_from_row(row: &SqliteRow) -> Result<AuditEvent> {
    let get = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    Ok(AuditEvent {
        id: row.try_get("id").map_err(get)?,
        seq: row.try_get("seq").map_err(get)?,
        at: row.try_get("at").map_err(get)?,
        account_id: row.try_get("account_id").map_err(get)?,
        actor: row.try_get("actor").map_err(get)?,
        action: row.try_get("action").map_err(get)?,
        target_id: row.try_get("target_id").map_err(get)?,
        client_ip: row.try_get("client_ip").map_err(get)?,
        details: from_json(&row.try_get::<String, _>("details").map_err(get)?)?,
    })
}

async fn insert_audit(tx: &mut Transaction<'static, Sqlite>, ev: &AuditEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (id, at, account_id, actor, action, target_id, client_ip, details) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&ev.id)
    .bind(ev.at)
    .bind(&ev.account_id)
    .bind(&ev.actor)
    .bind(&ev.action)
    .bind(&ev.target_id)
    .bind(&ev.client_ip)
    .bind(to_json(&ev.details)?)
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

async fn insert_key(tx: &mut Transaction<'static, Sqlite>, k: &KeyRecord) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&k.id)
    .bind(&k.account_id)
    .bind(&k.name)
    .bind(&k.display_prefix)
    .bind(&k.digest.0[..])
    .bind(k.environment.as_str())
    .bind(to_json(&k.permissions)?)
    .bind(to_json(&k.ip_allowlist)?)
    .bind(k.rate_limit.as_ref().map(to_json).transpose()?)
    .bind(k.quota.as_ref().map(to_json).transpose()?)
    .bind(k.quota_used)
    .bind(to_json(&k.meta)?)
    .bind(k.created_at)
    .bind(k.last_used_at)
    .bind(k.expires_at)
    .bind(k.revoked_at)
    .bind(&k.rotated_from)
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

fn is_active(k: &KeyRecord, now: i64) -> bool {
    keygate_core::policy::liveness(k.revoked_at, k.expires_at, now).is_ok()
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn get_setting(&self, name: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM settings WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)
    }

    async fn insert_setting_if_absent(&self, name: &str, value: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn create_account(&self, a: &Account, audit: &AuditEvent) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO accounts (id, name, plan, created_at) VALUES (?, ?, ?, ?)")
            .bind(&a.id)
            .bind(&a.name)
            .bind(&a.plan)
            .bind(a.created_at)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn get_account(&self, id: &str) -> Result<Option<Account>> {
        sqlx::query("SELECT id, name, plan, created_at FROM accounts WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .as_ref()
            .map(account_from_row)
            .transpose()
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        sqlx::query("SELECT id, name, plan, created_at FROM accounts ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?
            .iter()
            .map(account_from_row)
            .collect()
    }

    async fn update_account(
        &self,
        id: &str,
        name: Option<&str>,
        plan: Option<&str>,
        audit: &AuditEvent,
    ) -> Result<Account> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE accounts SET name = COALESCE(?, name), plan = COALESCE(?, plan) WHERE id = ?",
        )
        .bind(name)
        .bind(plan)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(&mut tx, audit).await?;
        let row = sqlx::query("SELECT id, name, plan, created_at FROM accounts WHERE id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        let account = account_from_row(&row)?;
        tx.commit().await.map_err(db_error)?;
        Ok(account)
    }

    async fn create_key(
        &self,
        key: &KeyRecord,
        max_active: Option<u64>,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        if let Some(cap) = max_active {
            let active: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM api_keys WHERE account_id = ? \
                 AND (revoked_at IS NULL OR revoked_at > ?) AND (expires_at IS NULL OR expires_at > ?)",
            )
            .bind(&key.account_id)
            .bind(now)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
            if active as u64 >= cap {
                return Err(StoreError::CapReached);
            }
        }
        insert_key(&mut tx, key).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .as_ref()
            .map(key_from_row)
            .transpose()
    }

    async fn find_key_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE digest = ?"
        ))
        .bind(&digest.0[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn list_keys(&self, account_id: Option<&str>) -> Result<Vec<KeyRecord>> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE (?1 IS NULL OR account_id = ?1) ORDER BY created_at, id"
        ))
        .bind(account_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?
        .iter()
        .map(key_from_row)
        .collect()
    }

    async fn update_key(
        &self,
        id: &str,
        patch: &KeyPatch,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<KeyRecord> {
        let mut tx = self.write().await?;
        let mut key = Self::fetch_key(&mut tx, id).await?;
        if !is_active(&key, now) {
            return Err(StoreError::NotActive);
        }
        if let Some(v) = &patch.name {
            key.name = v.clone();
        }
        if let Some(v) = &patch.permissions {
            key.permissions = v.clone();
        }
        if let Some(v) = &patch.ip_allowlist {
            key.ip_allowlist = v.clone();
        }
        if let Some(v) = patch.expires_at {
            key.expires_at = v;
        }
        if let Some(v) = patch.rate_limit {
            key.rate_limit = v;
        }
        if let Some(v) = patch.quota {
            key.quota = v;
        }
        if let Some(v) = &patch.meta {
            key.meta = v.clone();
        }
        sqlx::query(
            "UPDATE api_keys SET name = ?, permissions = ?, ip_allowlist = ?, expires_at = ?, \
             rate_limit = ?, quota = ?, meta = ? WHERE id = ?",
        )
        .bind(&key.name)
        .bind(to_json(&key.permissions)?)
        .bind(to_json(&key.ip_allowlist)?)
        .bind(key.expires_at)
        .bind(key.rate_limit.as_ref().map(to_json).transpose()?)
        .bind(key.quota.as_ref().map(to_json).transpose()?)
        .bind(to_json(&key.meta)?)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(key)
    }

    async fn revoke_key(&self, id: &str, at: i64, audit: &AuditEvent) -> Result<KeyRecord> {
        let mut tx = self.write().await?;
        let mut key = Self::fetch_key(&mut tx, id).await?;
        let revoked_at = key.revoked_at.map_or(at, |t| t.min(at));
        if key.revoked_at != Some(revoked_at) {
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ?")
                .bind(revoked_at)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            key.revoked_at = Some(revoked_at);
            insert_audit(&mut tx, audit).await?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(key)
    }

    async fn rotate_key(
        &self,
        old_id: &str,
        new_key: &KeyRecord,
        revoke_old_at: i64,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<KeyRecord> {
        let mut tx = self.write().await?;
        let mut old = Self::fetch_key(&mut tx, old_id).await?;
        if !is_active(&old, now) {
            return Err(StoreError::NotActive);
        }
        let revoked_at = old
            .revoked_at
            .map_or(revoke_old_at, |t| t.min(revoke_old_at));
        sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ?")
            .bind(revoked_at)
            .bind(old_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        old.revoked_at = Some(revoked_at);
        insert_key(&mut tx, new_key).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(old)
    }

    async fn record_usage(&self, batch: &[UsageUpdate]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for u in batch {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?), \
                 quota_used = quota_used + ? WHERE id = ?",
            )
            .bind(u.last_used_at)
            .bind(u.quota_used_delta)
            .bind(&u.key_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn list_audit(
        &self,
        account_id: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>> {
        sqlx::query(
            "SELECT seq, id, at, account_id, actor, action, target_id, client_ip, details FROM audit_events \
             WHERE (?1 IS NULL OR account_id = ?1) AND (?2 IS NULL OR seq < ?2) ORDER BY seq DESC LIMIT ?3",
        )
        .bind(account_id)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?
        .iter()
        .map(audit_from_row)
        .collect()
    }
}
