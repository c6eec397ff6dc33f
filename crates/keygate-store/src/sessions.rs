//! Browser sessions in the store, so that every node sees them and they survive restarts:
//! dashboard and portal sessions, and portal links not yet opened. The store keeps a
//! SHA-256 digest of the secret (cookie value, link code), never the secret.

use async_trait::async_trait;

use crate::Result;

/// One session or unopened portal link.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    /// SHA-256 of the secret the browser holds.
    pub digest: [u8; 32],
    /// The public id, for the audit log (`sess_…`, `ps_…`).
    pub id: String,
    /// `dashboard`, `portal` or `portal_link`.
    pub kind: String,
    /// The account a portal session (or a key's dashboard session) is confined to.
    pub account_id: Option<String>,
    /// The session's CSRF token.
    pub csrf: String,
    /// What else the session carries (who it acts as, portal limits, a notice), as JSON.
    pub data: serde_json::Value,
    pub created_at: i64,
    /// When it ends unless used again (idle timeout, never past `ends_at`).
    pub expires_at: i64,
    /// When it ends in any case.
    pub ends_at: i64,
}

/// The sessions table. Every `Store` is one.
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn insert_session(&self, session: &SessionRecord) -> Result<()>;
    /// The session with `digest` and `kind` if it has not expired at `now`.
    async fn get_session(
        &self,
        digest: &[u8; 32],
        kind: &str,
        now: i64,
    ) -> Result<Option<SessionRecord>>;
    /// Removes and returns the session with `digest` and `kind` if it has not expired at
    /// `now`: of several nodes taking it at once, exactly one gets it (single-use links).
    async fn take_session(
        &self,
        digest: &[u8; 32],
        kind: &str,
        now: i64,
    ) -> Result<Option<SessionRecord>>;
    /// Moves the idle expiry (never past `ends_at`).
    async fn touch_session(&self, digest: &[u8; 32], expires_at: i64) -> Result<()>;
    /// Replaces the session's `data`.
    async fn update_session_data(&self, digest: &[u8; 32], data: &serde_json::Value) -> Result<()>;
    async fn delete_session(&self, digest: &[u8; 32]) -> Result<()>;
    /// Deletes every session expired at `now`; returns how many went.
    async fn prune_sessions(&self, now: i64) -> Result<u64>;
}

const COLUMNS: &str = "digest, id, kind, account_id, csrf, data, created_at, expires_at, ends_at";

pub(crate) fn select(filter: &str) -> String {
    format!("SELECT {COLUMNS} FROM sessions WHERE {filter}")
}

pub(crate) fn take(filter: &str) -> String {
    format!("DELETE FROM sessions WHERE {filter} RETURNING {COLUMNS}")
}

pub(crate) const INSERT: &str = "INSERT INTO sessions (digest, id, kind, account_id, csrf, data, \
    created_at, expires_at, ends_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub(crate) const LIVE: &str = "digest = $1 AND kind = $2 AND expires_at > $3";

/// Implements [`SessionStore`] for `$store` (with `pool()`), in both SQL dialects.
macro_rules! session_sql {
    ($store:ident, $db:ty, $row:ty) => {
        mod session_sql {
            use async_trait::async_trait;
            use sqlx::Row;

            use super::$store;
            use crate::sessions::{select, take, SessionRecord, SessionStore, INSERT, LIVE};
            use crate::sql::{corrupt, db_error, from_json, to_json};
            use crate::{Result, StoreError};

            fn from_row(row: &$row) -> Result<SessionRecord> {
                let digest: Vec<u8> = row.try_get("digest").map_err(corrupt)?;
                Ok(SessionRecord {
                    digest: digest
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("session digest is not 32 bytes".into()))?,
                    id: row.try_get("id").map_err(corrupt)?,
                    kind: row.try_get("kind").map_err(corrupt)?,
                    account_id: row.try_get("account_id").map_err(corrupt)?,
                    csrf: row.try_get("csrf").map_err(corrupt)?,
                    data: from_json(&row.try_get::<String, _>("data").map_err(corrupt)?)?,
                    created_at: row.try_get("created_at").map_err(corrupt)?,
                    expires_at: row.try_get("expires_at").map_err(corrupt)?,
                    ends_at: row.try_get("ends_at").map_err(corrupt)?,
                })
            }

            #[async_trait]
            impl SessionStore for $store {
                async fn insert_session(&self, s: &SessionRecord) -> Result<()> {
                    sqlx::query(INSERT)
                        .bind(&s.digest[..])
                        .bind(&s.id)
                        .bind(&s.kind)
                        .bind(&s.account_id)
                        .bind(&s.csrf)
                        .bind(to_json(&s.data)?)
                        .bind(s.created_at)
                        .bind(s.expires_at)
                        .bind(s.ends_at)
                        .execute(self.pool())
                        .await
                        .map_err(db_error)?;
                    Ok(())
                }

                async fn get_session(&self, digest: &[u8; 32], kind: &str, now: i64) -> Result<Option<SessionRecord>> {
                    let row = sqlx::query(&select(LIVE))
                        .bind(&digest[..])
                        .bind(kind)
                        .bind(now)
                        .fetch_optional(self.pool())
                        .await
                        .map_err(db_error)?;
                    row.as_ref().map(from_row).transpose()
                }

                async fn take_session(&self, digest: &[u8; 32], kind: &str, now: i64) -> Result<Option<SessionRecord>> {
                    let row = sqlx::query(&take(LIVE))
                        .bind(&digest[..])
                        .bind(kind)
                        .bind(now)
                        .fetch_optional(self.pool())
                        .await
                        .map_err(db_error)?;
                    row.as_ref().map(from_row).transpose()
                }

                async fn touch_session(&self, digest: &[u8; 32], expires_at: i64) -> Result<()> {
                    sqlx::query(
                        "UPDATE sessions SET expires_at = CASE WHEN $2 < ends_at THEN $2 ELSE ends_at END \
                         WHERE digest = $1",
                    )
                    .bind(&digest[..])
                    .bind(expires_at)
                    .execute(self.pool())
                    .await
                    .map_err(db_error)?;
                    Ok(())
                }

                async fn update_session_data(&self, digest: &[u8; 32], data: &serde_json::Value) -> Result<()> {
                    sqlx::query("UPDATE sessions SET data = $2 WHERE digest = $1")
                        .bind(&digest[..])
                        .bind(to_json(data)?)
                        .execute(self.pool())
                        .await
                        .map_err(db_error)?;
                    Ok(())
                }

                async fn delete_session(&self, digest: &[u8; 32]) -> Result<()> {
                    sqlx::query("DELETE FROM sessions WHERE digest = $1")
                        .bind(&digest[..])
                        .execute(self.pool())
                        .await
                        .map_err(db_error)?;
                    Ok(())
                }

                async fn prune_sessions(&self, now: i64) -> Result<u64> {
                    let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                        .bind(now)
                        .execute(self.pool())
                        .await
                        .map_err(db_error)?;
                    Ok(done.rows_affected())
                }
            }
        }
    };
}

pub(crate) use session_sql;
