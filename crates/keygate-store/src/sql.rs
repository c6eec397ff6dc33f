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

/// A `LIKE` pattern (with `ESCAPE '\'`) matching `text` anywhere in a lowercased column.
pub fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

pub const KEY_COLUMNS: &str = "id, account_id, name, display_prefix, digest, environment, \
    permissions, ip_allowlist, rate_limit, quota, quota_used, meta, created_at, last_used_at, \
    expires_at, revoked_at, rotated_from, recent_ips, quota_refilled_at, leaked_at, retire_when_idle_ms";

/// Rows per multi-row statement: 500 keys are 9 500 bound values, under SQLite's 32 766
/// and PostgreSQL's 65 535.
pub const ROWS_PER_STATEMENT: usize = 500;

/// Digests per change notification: PostgreSQL's payload holds 8 000 bytes, a digest in hex
/// and its comma 65.
pub const DIGESTS_PER_NOTIFICATION: usize = 100;

/// A flush's changes to one key's row, several updates of the same key merged.
pub struct KeyUsageRow<'a> {
    pub key_id: &'a str,
    pub last_used_at: i64,
    pub quota_used_delta: i64,
    pub quota_refilled_at: Option<i64>,
    pub recent_ips: Option<&'a Vec<crate::SeenIp>>,
}

impl<'a> From<&'a crate::UsageUpdate> for KeyUsageRow<'a> {
    fn from(u: &'a crate::UsageUpdate) -> Self {
        KeyUsageRow {
            key_id: &u.key_id,
            last_used_at: u.last_used_at,
            quota_used_delta: u.quota_used_delta,
            quota_refilled_at: u.quota_refilled_at,
            recent_ips: u.recent_ips.as_ref(),
        }
    }
}

impl<'a> KeyUsageRow<'a> {
    /// Merges a later update of the same key.
    pub fn add(&mut self, later: &'a crate::UsageUpdate) {
        self.last_used_at = self.last_used_at.max(later.last_used_at);
        self.quota_used_delta += later.quota_used_delta;
        self.quota_refilled_at = later.quota_refilled_at.max(self.quota_refilled_at);
        self.recent_ips = later.recent_ips.as_ref().or(self.recent_ips);
    }
}

/// Implements [`crate::Store`] for `$store`, which must have `pool()`, `write()` (a write
/// transaction) and a `DIALECT` constant.
macro_rules! sql_store {
    ($store:ident, $db:ty, $row:ty) => {
        mod shared_sql {
            use async_trait::async_trait;
            use keygate_core::{Environment, KeyDigest};
            use sqlx::{Row, Transaction};

            use super::$store;
            use crate::sql::{
                contains_pattern, corrupt, db_error, from_json, is_active, to_json, KeyUsageRow,
                DIGESTS_PER_NOTIFICATION, KEY_COLUMNS, ROWS_PER_STATEMENT,
            };
            use crate::{
                Account, AccountQuery, AuditEvent, Cursor, KeyPatch, KeyQuery, KeyRecord, KeyStatus,
                Result, Store, StoreError, UsageUpdate,
            };

            type Tx = Transaction<'static, $db>;

            crate::permission_usage::permission_usage_sql!($store, $db);

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

            pub(super) fn key_from_row(row: &$row) -> Result<KeyRecord> {
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
                    leaked_at: row.try_get("leaked_at").map_err(corrupt)?,
                    retire_when_idle_ms: row.try_get("retire_when_idle_ms").map_err(corrupt)?,
                })
            }

            pub(super) fn account_from_row(row: &$row) -> Result<Account> {
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

            /// Inserts the audit event of a change, and the webhook event it maps to (the
            /// transactional outbox, `webhooks.rs`).
            pub(super) async fn insert_audit(tx: &mut Tx, ev: &AuditEvent) -> Result<()> {
                insert_audits(tx, std::slice::from_ref(ev), "").await?;
                super::webhook_sql::record_event(tx, ev).await
            }

            /// Inserts audit events with multi-row statements, each followed by `on_conflict`
            /// (empty: a conflict is an error). Returns the rows inserted.
            async fn insert_audits(tx: &mut Tx, events: &[AuditEvent], on_conflict: &str) -> Result<u64> {
                let details = events.iter().map(|ev| to_json(&ev.details)).collect::<Result<Vec<_>>>()?;
                let mut inserted = 0;
                for (events, details) in events.chunks(ROWS_PER_STATEMENT).zip(details.chunks(ROWS_PER_STATEMENT)) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO audit_events (id, at, account_id, actor, action, target_id, client_ip, details) ",
                    );
                    q.push_values(events.iter().zip(details), |mut row, (ev, details)| {
                        row.push_bind(&ev.id)
                            .push_bind(ev.at)
                            .push_bind(&ev.account_id)
                            .push_bind(&ev.actor)
                            .push_bind(&ev.action)
                            .push_bind(&ev.target_id)
                            .push_bind(&ev.client_ip)
                            .push_bind(details);
                    });
                    q.push(on_conflict);
                    inserted += q.build().execute(&mut **tx).await.map_err(db_error)?.rows_affected();
                }
                Ok(inserted)
            }

            async fn insert_key(tx: &mut Tx, k: &KeyRecord) -> Result<()> {
                insert_keys(tx, std::slice::from_ref(k), "").await.map(|_| ())
            }

            /// Inserts `keys` with multi-row statements, each followed by `on_conflict`
            /// (empty: a conflict is an error). Returns the rows inserted.
            async fn insert_keys(tx: &mut Tx, keys: &[KeyRecord], on_conflict: &str) -> Result<u64> {
                // The JSON columns, encoded before the statement (binding cannot fail).
                let json = keys
                    .iter()
                    .map(|k| {
                        Ok([
                            Some(to_json(&k.permissions)?),
                            Some(to_json(&k.ip_allowlist)?),
                            k.rate_limit.as_ref().map(to_json).transpose()?,
                            k.quota.as_ref().map(to_json).transpose()?,
                            Some(to_json(&k.meta)?),
                            if k.recent_ips.is_empty() { None } else { Some(to_json(&k.recent_ips)?) },
                        ])
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut inserted = 0;
                for (keys, json) in keys.chunks(ROWS_PER_STATEMENT).zip(json.chunks(ROWS_PER_STATEMENT)) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(format!("INSERT INTO api_keys ({KEY_COLUMNS}) "));
                    q.push_values(keys.iter().zip(json), |mut row, (k, [permissions, allowlist, rate_limit, quota, meta, ips])| {
                        row.push_bind(&k.id)
                            .push_bind(&k.account_id)
                            .push_bind(&k.name)
                            .push_bind(&k.display_prefix)
                            .push_bind(&k.digest.0[..])
                            .push_bind(k.environment.as_str())
                            .push_bind(permissions)
                            .push_bind(allowlist)
                            .push_bind(rate_limit)
                            .push_bind(quota)
                            .push_bind(k.quota_used)
                            .push_bind(meta)
                            .push_bind(k.created_at)
                            .push_bind(k.last_used_at)
                            .push_bind(k.expires_at)
                            .push_bind(k.revoked_at)
                            .push_bind(&k.rotated_from)
                            .push_bind(ips)
                            .push_bind(k.quota_refilled_at)
                            .push_bind(k.leaked_at)
                            .push_bind(k.retire_when_idle_ms);
                    });
                    q.push(on_conflict);
                    inserted += q.build().execute(&mut **tx).await.map_err(db_error)?.rows_affected();
                }
                Ok(inserted)
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

            /// [`announce`] for many keys: one notification per hundred digests.
            async fn announce_all(tx: &mut Tx, digests: impl Iterator<Item = &KeyDigest>) -> Result<()> {
                let Some(sql) = $store::DIALECT.notify_key_change else {
                    return Ok(());
                };
                let digests: Vec<String> = digests.map(KeyDigest::to_hex).collect();
                for chunk in digests.chunks(DIGESTS_PER_NOTIFICATION) {
                    sqlx::query(sql)
                        .bind(chunk.join(","))
                        .execute(&mut **tx)
                        .await
                        .map_err(db_error)?;
                }
                Ok(())
            }

            /// Ends a list query (whose `WHERE` is open): the records after `after` in
            /// `(created_at, id)` order, at most `limit`.
            fn push_page(q: &mut sqlx::QueryBuilder<'_, $db>, after: Option<Cursor<'_>>, limit: u32) {
                if let Some(after) = after {
                    q.push(" AND (created_at > ")
                        .push_bind(after.created_at)
                        .push(" OR (created_at = ")
                        .push_bind(after.created_at)
                        .push(" AND id > ")
                        .push_bind(after.id.to_owned())
                        .push("))");
                }
                q.push(" ORDER BY created_at, id LIMIT ").push_bind(i64::from(limit));
            }

            fn push_name_contains(q: &mut sqlx::QueryBuilder<'_, $db>, text: Option<&str>) {
                if let Some(text) = text {
                    q.push(" AND LOWER(name) LIKE ")
                        .push_bind(contains_pattern(text))
                        .push(" ESCAPE '\\'");
                }
            }

            /// The status conditions mirror `keygate_core::policy::liveness`: a revocation
            /// at or before `now` wins, then an expiry at or before `now`.
            fn push_status(q: &mut sqlx::QueryBuilder<'_, $db>, status: KeyStatus, now: i64) {
                match status {
                    KeyStatus::Revoked => {
                        q.push(" AND revoked_at <= ").push_bind(now);
                    }
                    KeyStatus::Expired => {
                        q.push(" AND (revoked_at IS NULL OR revoked_at > ")
                            .push_bind(now)
                            .push(") AND expires_at <= ")
                            .push_bind(now);
                    }
                    KeyStatus::Active => {
                        q.push(" AND (revoked_at IS NULL OR revoked_at > ")
                            .push_bind(now)
                            .push(") AND (expires_at IS NULL OR expires_at > ")
                            .push_bind(now)
                            .push(")");
                    }
                }
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

            crate::hygiene::hygiene_sql!($store);
            crate::legacy::legacy_sql!($store, $db, $row);

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

                async fn signing_keys(&self) -> Result<Vec<crate::SigningKeyRecord>> {
                    let rows = sqlx::query(
                        "SELECT generation, kid, public_key, private_key, created_at \
                         FROM signing_keys ORDER BY generation",
                    )
                    .fetch_all(self.pool())
                    .await
                    .map_err(db_error)?;
                    rows.iter()
                        .map(|r| {
                            Ok(crate::SigningKeyRecord {
                                generation: r.try_get("generation").map_err(db_error)?,
                                kid: r.try_get("kid").map_err(db_error)?,
                                public_key: r.try_get("public_key").map_err(db_error)?,
                                private_key: r.try_get("private_key").map_err(db_error)?,
                                created_at: r.try_get("created_at").map_err(db_error)?,
                            })
                        })
                        .collect()
                }

                async fn insert_signing_key(&self, key: &crate::SigningKeyRecord) -> Result<bool> {
                    let done = sqlx::query(
                        "INSERT INTO signing_keys (generation, kid, public_key, private_key, created_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (generation) DO NOTHING",
                    )
                    .bind(key.generation)
                    .bind(&key.kid)
                    .bind(&key.public_key)
                    .bind(&key.private_key)
                    .bind(key.created_at)
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

                async fn query_accounts(&self, query: &AccountQuery<'_>) -> Result<Vec<Account>> {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT id, name, plan, created_at FROM accounts WHERE 1 = 1",
                    );
                    if let Some(id) = query.id {
                        q.push(" AND id = ").push_bind(id.to_owned());
                    }
                    if let Some(plan) = query.plan {
                        q.push(" AND plan = ").push_bind(plan.to_owned());
                    }
                    push_name_contains(&mut q, query.name_contains);
                    push_page(&mut q, query.after, query.limit);
                    q.build()
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

                async fn get_account_key(
                    &self,
                    account_id: &str,
                    id: &str,
                ) -> Result<Option<KeyRecord>> {
                    sqlx::query(&format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND account_id = $2"
                    ))
                    .bind(id)
                    .bind(account_id)
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

                async fn query_keys(&self, query: &KeyQuery<'_>) -> Result<Vec<KeyRecord>> {
                    let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys WHERE 1 = 1"
                    ));
                    if let Some(account_id) = query.account_id {
                        q.push(" AND account_id = ").push_bind(account_id.to_owned());
                    }
                    if let Some(environment) = query.environment {
                        q.push(" AND environment = ").push_bind(environment.as_str());
                    }
                    if let Some(status) = query.status {
                        push_status(&mut q, status, query.now);
                    }
                    push_name_contains(&mut q, query.name_contains);
                    push_page(&mut q, query.after, query.limit);
                    q.build()
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
                    retire_when_idle_ms: Option<i64>,
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
                    if retire_when_idle_ms.is_some() {
                        set_retire_when_idle(&mut tx, &mut old, retire_when_idle_ms).await?;
                    }
                    insert_key(&mut tx, new_key).await?;
                    insert_audit(&mut tx, audit).await?;
                    announce(&mut tx, &new_key.digest).await?;
                    tx.commit().await.map_err(db_error)?;
                    Ok(old)
                }

                async fn mark_leaked(&self, id: &str, at: i64, revoke: bool, audit: &AuditEvent) -> Result<KeyRecord> {
                    self.mark_leaked_sql(id, at, revoke, audit).await
                }

                async fn retiring_keys(&self, now: i64) -> Result<Vec<crate::RetiringKey>> {
                    self.retiring_keys_sql(now).await
                }

                async fn note_successor_used(&self, id: &str, at: i64) -> Result<()> {
                    self.note_successor_used_sql(id, at).await
                }

                async fn retire_idle_key(&self, id: &str, now: i64, audit: &AuditEvent) -> Result<Option<KeyRecord>> {
                    self.retire_idle_key_sql(id, now, audit).await
                }

                async fn record_usage(&self, batch: &[UsageUpdate]) -> Result<()> {
                    if batch.is_empty() {
                        return Ok(());
                    }
                    // One multi-row statement per 500 keys for the key columns and one per
                    // 500 counters, instead of a statement per key and per counter: a flush of
                    // many keys holds the write lock briefly.
                    // One row per key (a multi-row UPDATE sees each key once): the latest
                    // time, the sum of the deltas, the latest addresses and refill.
                    // In key id order, locked in that order below: every node then locks
                    // the rows they share in the same order, so two nodes' flushes wait for
                    // each other instead of deadlocking (the counters below are in key
                    // order too).
                    let mut merged = std::collections::BTreeMap::<&str, KeyUsageRow>::new();
                    for u in batch {
                        match merged.entry(u.key_id.as_str()) {
                            std::collections::btree_map::Entry::Occupied(mut row) => row.get_mut().add(u),
                            std::collections::btree_map::Entry::Vacant(slot) => {
                                slot.insert(KeyUsageRow::from(u));
                            }
                        }
                    }
                    let rows: Vec<KeyUsageRow> = merged.into_values().collect();
                    let ips = rows
                        .iter()
                        .map(|r| r.recent_ips.map(to_json).transpose())
                        .collect::<Result<Vec<_>>>()?;
                    let mut counts = std::collections::BTreeMap::<(&str, i64, &str), i64>::new();
                    for u in batch {
                        for c in &u.counts {
                            *counts.entry((&u.key_id, c.bucket, &c.outcome)).or_default() += c.count;
                        }
                    }
                    let counts: Vec<_> = counts.into_iter().collect();
                    let key_sql = format!(
                        "UPDATE api_keys SET last_used_at = NULLIF({g}(COALESCE(api_keys.last_used_at, 0), v.column2), 0), \
                         quota_used = {g}(0, api_keys.quota_used + v.column3), recent_ips = COALESCE(v.column4, api_keys.recent_ips), \
                         quota_refilled_at = COALESCE({g}(v.column5, api_keys.quota_refilled_at), v.column5, api_keys.quota_refilled_at) FROM (",
                        g = $store::DIALECT.greatest
                    );
                    let mut tx = self.usage_write().await?;
                    for (updates, ips) in rows.chunks(ROWS_PER_STATEMENT).zip(ips.chunks(ROWS_PER_STATEMENT)) {
                        if !$store::DIALECT.for_update.is_empty() {
                            // An UPDATE … FROM locks rows in its join's order, not the
                            // VALUES order.
                            let mut lock = sqlx::QueryBuilder::<$db>::new("SELECT id FROM api_keys WHERE id IN (");
                            let mut ids = lock.separated(", ");
                            for u in updates {
                                ids.push_bind(u.key_id);
                            }
                            lock.push(") ORDER BY id ").push($store::DIALECT.for_update);
                            lock.build().execute(&mut *tx).await.map_err(db_error)?;
                        }
                        let mut q = sqlx::QueryBuilder::<$db>::new(&key_sql);
                        // Typed, as PostgreSQL reads an untyped VALUES parameter as text.
                        q.push_values(updates.iter().zip(ips), |mut row, (u, ips)| {
                            row.push("CAST(").push_bind_unseparated(u.key_id).push_unseparated(" AS TEXT)");
                            row.push("CAST(").push_bind_unseparated(u.last_used_at).push_unseparated(" AS BIGINT)");
                            row.push("CAST(").push_bind_unseparated(u.quota_used_delta).push_unseparated(" AS BIGINT)");
                            row.push("CAST(").push_bind_unseparated(ips).push_unseparated(" AS TEXT)");
                            row.push("CAST(").push_bind_unseparated(u.quota_refilled_at).push_unseparated(" AS BIGINT)");
                        });
                        q.push(") AS v WHERE api_keys.id = v.column1");
                        if !updates.iter().any(|u| u.quota_used_delta > 0) {
                            q.build().execute(&mut *tx).await.map_err(db_error)?;
                            continue;
                        }
                        // Quota was spent: see which keys reached a reported share of theirs.
                        q.push(" RETURNING api_keys.id, api_keys.quota, api_keys.quota_used");
                        let mut returned = q
                            .build()
                            .fetch_all(&mut *tx)
                            .await
                            .map_err(db_error)?
                            .iter()
                            .map(|row| -> Result<(String, Option<String>, i64)> {
                                Ok((
                                    row.try_get("id").map_err(corrupt)?,
                                    row.try_get("quota").map_err(corrupt)?,
                                    row.try_get("quota_used").map_err(corrupt)?,
                                ))
                            })
                            .collect::<Result<Vec<_>>>()?;
                        // Events written in key order too (other nodes may write the same).
                        returned.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                        for (id, quota, after) in returned {
                            let (Some(quota), Ok(i)) = (quota, rows.binary_search_by(|r| r.key_id.cmp(id.as_str()))) else { continue };
                            let quota: crate::Quota = from_json(&quota)?;
                            let before = after - rows[i].quota_used_delta;
                            for pct in crate::webhooks::quota_thresholds_crossed(quota.requests, before, after) {
                                super::webhook_sql::record_quota_threshold(&mut tx, &id, pct, rows[i].last_used_at).await?;
                            }
                        }
                    }
                    for counts in counts.chunks(ROWS_PER_STATEMENT) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO usage_counts (key_id, bucket, outcome, count) ",
                        );
                        q.push_values(counts, |mut row, ((key_id, bucket, outcome), count)| {
                            row.push_bind(*key_id).push_bind(*bucket).push_bind(*outcome).push_bind(*count);
                        });
                        q.push(" ON CONFLICT (key_id, bucket, outcome) DO UPDATE SET count = usage_counts.count + excluded.count");
                        q.build().execute(&mut *tx).await.map_err(db_error)?;
                    }
                    write_permission_counts(&mut tx, batch).await?;
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
                    Ok(done.rows_affected() + prune_permission_usage(self, before).await?)
                }

                async fn permission_usage(&self, key_id: &str, from: i64) -> Result<Vec<crate::PermissionUse>> {
                    read_permission_usage(self, key_id, from).await
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
                    for chunk in accounts.chunks(ROWS_PER_STATEMENT) {
                        let mut q = sqlx::QueryBuilder::<$db>::new("INSERT INTO accounts (id, name, plan, created_at) ");
                        q.push_values(chunk, |mut row, a| {
                            row.push_bind(&a.id).push_bind(&a.name).push_bind(&a.plan).push_bind(a.created_at);
                        });
                        q.push(" ON CONFLICT (id) DO NOTHING");
                        inserted += q.build().execute(&mut *tx).await.map_err(db_error)?.rows_affected();
                    }
                    tx.commit().await.map_err(db_error)?;
                    Ok(inserted)
                }

                async fn import_keys(&self, keys: &[KeyRecord]) -> Result<u64> {
                    let mut tx = self.write().await?;
                    // A key already here (same id) is left as it is; another key with a digest
                    // already here is refused.
                    let inserted = insert_keys(&mut tx, keys, " ON CONFLICT (id) DO NOTHING").await?;
                    // New keys matter to other nodes only through their negative caches.
                    announce_all(&mut tx, keys.iter().map(|k| &k.digest)).await?;
                    tx.commit().await.map_err(db_error)?;
                    Ok(inserted)
                }

                async fn import_audit(&self, events: &[AuditEvent]) -> Result<u64> {
                    let mut tx = self.write().await?;
                    let inserted = insert_audits(&mut tx, events, " ON CONFLICT (id) DO NOTHING").await?;
                    tx.commit().await.map_err(db_error)?;
                    Ok(inserted)
                }

                async fn import_usage(&self, key_id: &str, counts: &[crate::UsageCount]) -> Result<u64> {
                    let mut tx = self.write().await?;
                    let mut inserted = 0;
                    for chunk in counts.chunks(ROWS_PER_STATEMENT) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO usage_counts (key_id, bucket, outcome, count) ",
                        );
                        q.push_values(chunk, |mut row, c| {
                            row.push_bind(key_id).push_bind(c.bucket).push_bind(&c.outcome).push_bind(c.count);
                        });
                        q.push(" ON CONFLICT (key_id, bucket, outcome) DO NOTHING");
                        inserted += q.build().execute(&mut *tx).await.map_err(db_error)?.rows_affected();
                    }
                    tx.commit().await.map_err(db_error)?;
                    Ok(inserted)
                }
            }
        }
    };
}

pub(crate) use sql_store;
