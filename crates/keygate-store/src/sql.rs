//! The SQL shared by the SQLite and PostgreSQL backends, written once.
//!
//! Queries use `$N` placeholders, which both databases accept. Where the dialects differ
//! (how a write transaction locks, `MAX` vs `GREATEST`, change notifications) the backend
//! passes a [`Dialect`]. The `Store` implementation is a macro instantiated per backend, so
//! each gets concrete sqlx types without a wall of generic bounds.

use crate::{KeyRecord, Result, StoreError};

/// What differs between the SQL dialects.
pub struct Dialect {
    /// Appended to the `SELECT` of a row about to be changed (`FOR UPDATE` on PostgreSQL;
    /// SQLite's `BEGIN IMMEDIATE` already serialises writers).
    pub for_update: &'static str,
    /// Locks an account row so concurrent creates count keys one after another.
    pub lock_account: Option<&'static str>,
    /// The two-argument maximum function.
    pub greatest: &'static str,
    /// Announces a key change to other nodes (argument: the digest in hex), inside the
    /// changing transaction so it is delivered exactly when the change commits.
    pub notify_key_change: Option<&'static str>,
    /// Serialises concurrent migration runs (several nodes starting at once).
    pub migration_lock: Option<&'static str>,
}

pub fn db_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(ref d) if d.is_unique_violation() => StoreError::Duplicate,
        sqlx::Error::Database(ref d) if is_unavailable_code(d.code().as_deref()) => {
            StoreError::Unavailable(d.message().to_owned())
        }
        sqlx::Error::Database(d) => StoreError::Backend(d.message().to_owned()),
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// PostgreSQL codes for "the server is going away or not accepting work" (class 57, 08)
/// and SQLite's busy/locked (5, 6).
fn is_unavailable_code(code: Option<&str>) -> bool {
    match code {
        Some(c) => c.starts_with("57") || c.starts_with("08") || c == "5" || c == "6",
        None => false,
    }
}

pub fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn corrupt(e: sqlx::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn is_active(k: &KeyRecord, now: i64) -> bool {
    keygate_core::policy::liveness(k.revoked_at, k.expires_at, now).is_ok()
}

pub const KEY_COLUMNS: &str = "id, account_id, name, display_prefix, digest, environment, \
    permissions, ip_allowlist, rate_limit, quota, quota_used, meta, created_at, last_used_at, \
    expires_at, revoked_at, rotated_from, recent_ips, quota_refilled_at";

/// Implements [`crate::Store`] for `$store`, which must have `pool()`, `write()` (a write
/// transaction) and a `DIALECT` constant.
macro_rules! sql_store {
    ($store:ident, $db:ty, $row:ty) => {
        mod shared_sql {
            use async_trait::async_trait;
            use keygate_core::{Environment, KeyDigest};
            use sqlx::{Row, Transaction};

            use super::$store;
            use crate::sql::{corrupt, db_error, from_json, is_active, to_json, KEY_COLUMNS};
            use crate::{
                Account, AuditEvent, KeyPatch, KeyRecord, Result, Store, StoreError,
                UsageUpdate,
            };

            type Tx = Transaction<'static, $db>;

            impl $store {
                /// Applies, in one transaction, the migrations this binary knows and the
                /// database lacks.
                pub async fn migrate(&self) -> Result<()> {
                    let mut tx = self.write().await?;
                    if let Some(lock) = $store::DIALECT.migration_lock {
                        sqlx::query(lock).execute(&mut *tx).await.map_err(db_error)?;
                    }
                    sqlx::query(
                        "CREATE TABLE IF NOT EXISTS schema_migrations \
                         (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
                    )
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    for m in $store::MIGRATIONS {
                        let done: Option<i64> =
                            sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                                .bind(m.version)
                                .fetch_optional(&mut *tx)
                                .await
                                .map_err(db_error)?;
                        if done.is_some() {
                            continue;
                        }
                        sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(db_error)?;
                        sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                            .bind(m.version)
                            .bind(m.name)
                            .bind(crate::sql::now_ms())
                            .execute(&mut *tx)
                            .await
                            .map_err(db_error)?;
                        tracing::info!(version = m.version, name = m.name, "applied migration");
                    }
                    tx.commit().await.map_err(db_error)
                }
            }

            fn key_from_row(row: &$row) -> Result<KeyRecord> {
                let digest: Vec<u8> = row.try_get("digest").map_err(corrupt)?;
                let environment: String = row.try_get("environment").map_err(corrupt)?;
                let text = |col: &str| -> Result<String> { row.try_get(col).map_err(corrupt) };
                let opt_text =
                    |col: &str| -> Result<Option<String>> { row.try_get(col).map_err(corrupt) };
                Ok(KeyRecord {
                    id: text("id")?,
                    account_id: text("account_id")?,
                    name: text("name")?,
                    display_prefix: text("display_prefix")?,
                    digest: KeyDigest(
                        digest
                            .try_into()
                            .map_err(|_| StoreError::Corrupt("digest is not 32 bytes".into()))?,
                    ),
                    environment: Environment::parse(&environment).ok_or_else(|| {
                        StoreError::Corrupt(format!("environment {environment:?}"))
                    })?,
                    permissions: from_json(&text("permissions")?)?,
                    ip_allowlist: from_json(&text("ip_allowlist")?)?,
                    rate_limit: opt_text("rate_limit")?.map(|s| from_json(&s)).transpose()?,
                    quota: opt_text("quota")?.map(|s| from_json(&s)).transpose()?,
                    quota_used: row.try_get("quota_used").map_err(corrupt)?,
                    meta: from_json(&text("meta")?)?,
                    created_at: row.try_get("created_at").map_err(corrupt)?,
                    last_used_at: row.try_get("last_used_at").map_err(corrupt)?,
                    expires_at: row.try_get("expires_at").map_err(corrupt)?,
                    revoked_at: row.try_get("revoked_at").map_err(corrupt)?,
                    rotated_from: opt_text("rotated_from")?,
                    recent_ips: opt_text("recent_ips")?
                        .map(|s| from_json(&s))
                        .transpose()?
                        .unwrap_or_default(),
                    quota_refilled_at: row.try_get("quota_refilled_at").map_err(corrupt)?,
                })
            }

            fn account_from_row(row: &$row) -> Result<Account> {
                Ok(Account {
                    id: row.try_get("id").map_err(corrupt)?,
                    name: row.try_get("name").map_err(corrupt)?,
                    plan: row.try_get("plan").map_err(corrupt)?,
                    created_at: row.try_get("created_at").map_err(corrupt)?,
                })
            }

            fn audit_from_row(row: &$row) -> Result<AuditEvent> {
                Ok(AuditEvent {
                    id: row.try_get("id").map_err(corrupt)?,
                    seq: row.try_get("seq").map_err(corrupt)?,
                    at: row.try_get("at").map_err(corrupt)?,
                    account_id: row.try_get("account_id").map_err(corrupt)?,
                    actor: row.try_get("actor").map_err(corrupt)?,
                    action: row.try_get("action").map_err(corrupt)?,
                    target_id: row.try_get("target_id").map_err(corrupt)?,
                    client_ip: row.try_get("client_ip").map_err(corrupt)?,
                    details: from_json(&row.try_get::<String, _>("details").map_err(corrupt)?)?,
                })
            }

            async fn insert_audit(tx: &mut Tx, ev: &AuditEvent) -> Result<()> {
                sqlx::query(
                    "INSERT INTO audit_events (id, at, account_id, actor, action, target_id, client_ip, details) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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

            async fn insert_key(tx: &mut Tx, k: &KeyRecord) -> Result<()> {
                sqlx::query(&format!(
                    "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
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
                .bind(if k.recent_ips.is_empty() { None } else { Some(to_json(&k.recent_ips)?) })
                .bind(k.quota_refilled_at)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
                Ok(())
            }

            /// Reads a key about to be changed, locking its row where the dialect must.
            async fn fetch_key_for_update(tx: &mut Tx, id: &str) -> Result<KeyRecord> {
                let sql = format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1{}",
                    $store::DIALECT.for_update
                );
                let row = sqlx::query(&sql)
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_error)?
                    .ok_or(StoreError::NotFound)?;
                key_from_row(&row)
            }

            /// Whether `sql` (selecting `id` by `$1`) finds a row: imports skip rows already there.
            async fn exists(tx: &mut Tx, sql: &str, id: &str) -> Result<bool> {
                let found: Option<String> = sqlx::query_scalar(sql)
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_error)?;
                Ok(found.is_some())
            }

            /// Tells other nodes that the key behind `digest` changed (delivered at commit).
            async fn announce(tx: &mut Tx, digest: &KeyDigest) -> Result<()> {
                if let Some(sql) = $store::DIALECT.notify_key_change {
                    sqlx::query(sql)
                        .bind(digest.to_hex())
                        .execute(&mut **tx)
                        .await
                        .map_err(db_error)?;
                }
                Ok(())
            }

            async fn set_revoked_at(tx: &mut Tx, key: &mut KeyRecord, at: i64) -> Result<()> {
                sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2")
                    .bind(at)
                    .bind(&key.id)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_error)?;
                key.revoked_at = Some(at);
                announce(tx, &key.digest).await
            }

            #[async_trait]
            impl Store for $store {
                async fn change_feed(&self) -> Result<Option<tokio::sync::mpsc::Receiver<crate::Change>>> {
                    $store::change_feed(self).await
                }

                async fn ping(&self) -> Result<()> {
                    sqlx::query("SELECT 1").execute(self.pool()).await.map_err(db_error)?;
                    Ok(())
                }

                async fn get_setting(&self, name: &str) -> Result<Option<String>> {
                    sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                        .bind(name)
                        .fetch_optional(self.pool())
                        .await
                        .map_err(db_error)
                }

                async fn insert_setting_if_absent(&self, name: &str, value: &str) -> Result<bool> {
                    let done = sqlx::query(
                        "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(name)
                    .bind(value)
                    .execute(self.pool())
                    .await
                    .map_err(db_error)?;
                    Ok(done.rows_affected() == 1)
                }

                async fn create_account(&self, a: &Account, audit: &AuditEvent) -> Result<()> {
                    let mut tx = self.write().await?;
                    sqlx::query("INSERT INTO accounts (id, name, plan, created_at) VALUES ($1, $2, $3, $4)")
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
                    sqlx::query("SELECT id, name, plan, created_at FROM accounts WHERE id = $1")
                        .bind(id)
                        .fetch_optional(self.pool())
                        .await
                        .map_err(db_error)?
                        .as_ref()
                        .map(account_from_row)
                        .transpose()
                }

                async fn list_accounts(&self) -> Result<Vec<Account>> {
                    sqlx::query("SELECT id, name, plan, created_at FROM accounts ORDER BY created_at, id")
                        .fetch_all(self.pool())
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
                    let row = sqlx::query(
                        "UPDATE accounts SET name = COALESCE($1, name), plan = COALESCE($2, plan) \
                         WHERE id = $3 RETURNING id, name, plan, created_at",
                    )
                    .bind(name)
                    .bind(plan)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?
                    .ok_or(StoreError::NotFound)?;
                    let account = account_from_row(&row)?;
                    insert_audit(&mut tx, audit).await?;
                    // A plan change can change every key's defaults: nodes drop their caches.
                    if let Some(sql) = $store::DIALECT.notify_key_change {
                        sqlx::query(sql).bind("*").execute(&mut *tx).await.map_err(db_error)?;
                    }
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
                        if let Some(lock) = $store::DIALECT.lock_account {
                            sqlx::query(lock)
                                .bind(&key.account_id)
                                .execute(&mut *tx)
                                .await
                                .map_err(db_error)?;
                        }
                        let active: i64 = sqlx::query_scalar(
                            "SELECT COUNT(*) FROM api_keys WHERE account_id = $1 \
                             AND (revoked_at IS NULL OR revoked_at > $2) AND (expires_at IS NULL OR expires_at > $2)",
                        )
                        .bind(&key.account_id)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_error)?;
                        if u64::try_from(active).unwrap_or(0) >= cap {
                            return Err(StoreError::CapReached);
                        }
                    }
                    insert_key(&mut tx, key).await?;
                    insert_audit(&mut tx, audit).await?;
                    announce(&mut tx, &key.digest).await?;
                    tx.commit().await.map_err(db_error)
                }

                async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
                    sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(self.pool())
                        .await
                        .map_err(db_error)?
                        .as_ref()
                        .map(key_from_row)
                        .transpose()
                }

                async fn find_key_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>> {
                    sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE digest = $1"))
                        .bind(&digest.0[..])
                        .fetch_optional(self.pool())
                        .await
                        .map_err(db_error)?
                        .as_ref()
                        .map(key_from_row)
                        .transpose()
                }

                async fn list_keys(&self, account_id: Option<&str>) -> Result<Vec<KeyRecord>> {
                    sqlx::query(&format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys WHERE ($1 IS NULL OR account_id = $1) ORDER BY created_at, id"
                    ))
                    .bind(account_id)
                    .fetch_all(self.pool())
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
                    let mut key = fetch_key_for_update(&mut tx, id).await?;
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
                    if let Some(v) = patch.quota_refilled_at {
                        key.quota_refilled_at = v;
                    }
                    if let Some(v) = &patch.meta {
                        key.meta = v.clone();
                    }
                    sqlx::query(
                        "UPDATE api_keys SET name = $1, permissions = $2, ip_allowlist = $3, expires_at = $4, \
                         rate_limit = $5, quota = $6, meta = $7, quota_refilled_at = $9 WHERE id = $8",
                    )
                    .bind(&key.name)
                    .bind(to_json(&key.permissions)?)
                    .bind(to_json(&key.ip_allowlist)?)
                    .bind(key.expires_at)
                    .bind(key.rate_limit.as_ref().map(to_json).transpose()?)
                    .bind(key.quota.as_ref().map(to_json).transpose()?)
                    .bind(to_json(&key.meta)?)
                    .bind(id)
                    .bind(key.quota_refilled_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    insert_audit(&mut tx, audit).await?;
                    announce(&mut tx, &key.digest).await?;
                    tx.commit().await.map_err(db_error)?;
                    Ok(key)
                }

                async fn revoke_key(&self, id: &str, at: i64, audit: &AuditEvent) -> Result<KeyRecord> {
                    let mut tx = self.write().await?;
                    let mut key = fetch_key_for_update(&mut tx, id).await?;
                    let revoked_at = key.revoked_at.map_or(at, |t| t.min(at));
                    if key.revoked_at != Some(revoked_at) {
                        set_revoked_at(&mut tx, &mut key, revoked_at).await?;
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
                    let mut old = fetch_key_for_update(&mut tx, old_id).await?;
                    if !is_active(&old, now) {
                        return Err(StoreError::NotActive);
                    }
                    let revoked_at = old.revoked_at.map_or(revoke_old_at, |t| t.min(revoke_old_at));
                    set_revoked_at(&mut tx, &mut old, revoked_at).await?;
                    insert_key(&mut tx, new_key).await?;
                    insert_audit(&mut tx, audit).await?;
                    announce(&mut tx, &new_key.digest).await?;
                    tx.commit().await.map_err(db_error)?;
                    Ok(old)
                }

                async fn record_usage(&self, batch: &[UsageUpdate]) -> Result<()> {
                    if batch.is_empty() {
                        return Ok(());
                    }
                    let key_sql = format!(
                        "UPDATE api_keys SET last_used_at = NULLIF({g}(COALESCE(last_used_at, 0), $1), 0), \
                         quota_used = {g}(0, quota_used + $2), recent_ips = COALESCE($3, recent_ips), \
                         quota_refilled_at = COALESCE($5, quota_refilled_at) WHERE id = $4",
                        g = $store::DIALECT.greatest
                    );
                    let mut tx = self.write().await?;
                    for u in batch {
                        let ips = u.recent_ips.as_ref().map(to_json).transpose()?;
                        sqlx::query(&key_sql)
                            .bind(u.last_used_at)
                            .bind(u.quota_used_delta)
                            .bind(ips)
                            .bind(&u.key_id)
                            .bind(u.quota_refilled_at)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_error)?;
                        for c in &u.counts {
                            sqlx::query(
                                "INSERT INTO usage_counts (key_id, bucket, outcome, count) VALUES ($1, $2, $3, $4) \
                                 ON CONFLICT (key_id, bucket, outcome) DO UPDATE SET count = usage_counts.count + excluded.count",
                            )
                            .bind(&u.key_id)
                            .bind(c.bucket)
                            .bind(&c.outcome)
                            .bind(c.count)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_error)?;
                        }
                    }
                    tx.commit().await.map_err(db_error)
                }

                async fn usage_counts(&self, key_id: &str, from: i64, to: i64) -> Result<Vec<crate::UsageCount>> {
                    let rows = sqlx::query(
                        "SELECT bucket, outcome, count FROM usage_counts \
                         WHERE key_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket, outcome",
                    )
                    .bind(key_id)
                    .bind(from)
                    .bind(to)
                    .fetch_all(self.pool())
                    .await
                    .map_err(db_error)?;
                    rows.iter()
                        .map(|row| {
                            Ok(crate::UsageCount {
                                bucket: row.try_get("bucket").map_err(corrupt)?,
                                outcome: row.try_get("outcome").map_err(corrupt)?,
                                count: row.try_get("count").map_err(corrupt)?,
                            })
                        })
                        .collect()
                }

                async fn prune_usage(&self, before: i64) -> Result<u64> {
                    let done = sqlx::query("DELETE FROM usage_counts WHERE bucket < $1")
                        .bind(before)
                        .execute(self.pool())
                        .await
                        .map_err(db_error)?;
                    Ok(done.rows_affected())
                }

                async fn append_audit(&self, event: &AuditEvent) -> Result<()> {
                    let mut tx = self.write().await?;
                    insert_audit(&mut tx, event).await?;
                    tx.commit().await.map_err(db_error)
                }

                async fn query_audit(&self, q: &crate::AuditQuery<'_>) -> Result<Vec<AuditEvent>> {
                    sqlx::query(
                        "SELECT seq, id, at, account_id, actor, action, target_id, client_ip, details FROM audit_events \
                         WHERE ($1 IS NULL OR account_id = $1) AND ($2 IS NULL OR target_id = $2) \
                         AND ($3 IS NULL OR seq < $3) AND ($4 IS NULL OR at >= $4) AND ($5 IS NULL OR at < $5) \
                         ORDER BY seq DESC LIMIT $6",
                    )
                    .bind(q.account_id)
                    .bind(q.target_id)
                    .bind(q.before)
                    .bind(q.from)
                    .bind(q.to)
                    .bind(i64::from(q.limit))
                    .fetch_all(self.pool())
                    .await
                    .map_err(db_error)?
                    .iter()
                    .map(audit_from_row)
                    .collect()
                }

                async fn audit_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEvent>> {
                    sqlx::query(
                        "SELECT seq, id, at, account_id, actor, action, target_id, client_ip, details FROM audit_events \
                         WHERE seq > $1 ORDER BY seq LIMIT $2",
                    )
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await
                    .map_err(db_error)?
                    .iter()
                    .map(audit_from_row)
                    .collect()
                }

                async fn import_accounts(&self, accounts: &[Account]) -> Result<u64> {
                    let mut tx = self.write().await?;
                    let mut inserted = 0;
                    for a in accounts {
                        let done = sqlx::query(
                            "INSERT INTO accounts (id, name, plan, created_at) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (id) DO NOTHING",
                        )
                        .bind(&a.id)
                        .bind(&a.name)
                        .bind(&a.plan)
                        .bind(a.created_at)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_error)?;
                        inserted += done.rows_affected();
                    }
                    tx.commit().await.map_err(db_error)?;
                    Ok(inserted)
                }

                async fn import_keys(&self, keys: &[KeyRecord]) -> Result<u64> {
                    let mut tx = self.write().await?;
                    let mut inserted = 0;
                    for k in keys {
                        if !exists(&mut tx, "SELECT id FROM api_keys WHERE id = $1", &k.id).await? {
                            insert_key(&mut tx, k).await?;
                            announce(&mut tx, &k.digest).await?;
                            inserted += 1;
                        }
                    }
                    tx.commit().await.map_err(db_error)?;
                    Ok(inserted)
                }

                async fn import_audit(&self, events: &[AuditEvent]) -> Result<u64> {
                    let mut tx = self.write().await?;
                    let mut inserted = 0;
                    for ev in events {
                        if !exists(&mut tx, "SELECT id FROM audit_events WHERE id = $1", &ev.id).await? {
                            insert_audit(&mut tx, ev).await?;
                            inserted += 1;
                        }
                    }
                    tx.commit().await.map_err(db_error)?;
                    Ok(inserted)
                }

                async fn import_usage(&self, key_id: &str, counts: &[crate::UsageCount]) -> Result<u64> {
                    let mut tx = self.write().await?;
                    let mut inserted = 0;
                    for c in counts {
                        let done = sqlx::query(
                            "INSERT INTO usage_counts (key_id, bucket, outcome, count) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (key_id, bucket, outcome) DO NOTHING",
                        )
                        .bind(key_id)
                        .bind(c.bucket)
                        .bind(&c.outcome)
                        .bind(c.count)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_error)?;
                        inserted += done.rows_affected();
                    }
                    tx.commit().await.map_err(db_error)?;
                    Ok(inserted)
                }
            }
        }
    };
}

pub(crate) use sql_store;
