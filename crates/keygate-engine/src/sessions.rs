//! Browser sessions (dashboard, portal) kept in the store, so any node can continue one
//! and a restart ends none. The browser holds a random secret; the store holds its
//! SHA-256 digest (the secret has 256 random bits, so a plain hash cannot be reversed).

use std::sync::atomic::{AtomicI64, Ordering};

use keygate_core::key::random_hex;
use keygate_store::SessionRecord;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ids::new_id;
use crate::{now_ms, Engine, Error, Result};

pub use keygate_store::SessionRecord as Session;

/// How often a node deletes expired sessions (on the next session it starts).
const PRUNE_EVERY_MS: i64 = 60_000;
static LAST_PRUNE: AtomicI64 = AtomicI64::new(0);

/// An idle session's expiry moves only when this much of its idle time is used, so a
/// burst of page loads writes once.
const TOUCH_AFTER_MS: i64 = 60_000;

/// The digest the store keeps of a session secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// 256 random bits in hex: a session cookie, a link code, a CSRF token.
pub fn new_secret() -> Result<String> {
    random_hex(32).map_err(|e| Error::Internal(e.to_string()))
}

/// How long a new session lasts.
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    /// Ends after this long without a request…
    pub idle_ms: i64,
    /// …and after this long in any case.
    pub absolute_ms: i64,
}

/// What a new session is.
pub struct NewSession<'a> {
    pub kind: &'a str,
    /// Prefix of its public id (`sess`, `ps`).
    pub id_prefix: &'a str,
    /// The public id to keep (a portal session keeps its link's); a new one when `None`.
    pub id: Option<String>,
    pub account_id: Option<String>,
    pub data: Value,
    pub lifetime: Lifetime,
}

impl Engine {
    /// Starts a session; returns the secret for the browser and the stored record.
    pub async fn start_session(&self, new: NewSession<'_>) -> Result<(String, Session)> {
        let now = now_ms();
        self.prune_sessions(now).await;
        let secret = new_secret()?;
        let ends_at = now.saturating_add(new.lifetime.absolute_ms);
        let record = SessionRecord {
            digest: digest(&secret),
            id: match new.id {
                Some(id) => id,
                None => new_id(new.id_prefix)?,
            },
            kind: new.kind.to_owned(),
            account_id: new.account_id,
            csrf: new_secret()?,
            data: new.data,
            created_at: now,
            expires_at: now.saturating_add(new.lifetime.idle_ms).min(ends_at),
            ends_at,
        };
        self.store.insert_session(&record).await?;
        Ok((secret, record))
    }

    /// The live session of kind `kind` whose secret is `secret`; moves its idle expiry.
    pub async fn session(&self, secret: &str, kind: &str, idle_ms: i64) -> Result<Option<Session>> {
        let now = now_ms();
        let Some(mut record) = self.store.get_session(&digest(secret), kind, now).await? else {
            return Ok(None);
        };
        let wanted = now.saturating_add(idle_ms).min(record.ends_at);
        if wanted - record.expires_at >= TOUCH_AFTER_MS {
            self.store.touch_session(&record.digest, wanted).await?;
            record.expires_at = wanted;
        }
        Ok(Some(record))
    }

    /// Takes a live session out of the store: exactly one caller gets it.
    pub async fn take_session(&self, secret: &str, kind: &str) -> Result<Option<Session>> {
        Ok(self
            .store
            .take_session(&digest(secret), kind, now_ms())
            .await?)
    }

    pub async fn set_session_data(&self, session: &Session, data: &Value) -> Result<()> {
        Ok(self
            .store
            .update_session_data(&session.digest, data)
            .await?)
    }

    pub async fn end_session(&self, secret: &str) -> Result<()> {
        Ok(self.store.delete_session(&digest(secret)).await?)
    }

    /// Deletes expired sessions, once a minute at most per process; a failure only waits
    /// for the next time.
    async fn prune_sessions(&self, now: i64) {
        let last = LAST_PRUNE.load(Ordering::Relaxed);
        if now - last < PRUNE_EVERY_MS
            || LAST_PRUNE
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        match self.store.prune_sessions(now).await {
            Ok(n) if n > 0 => tracing::debug!(sessions = n, "pruned expired sessions"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not prune expired sessions"),
        }
    }
}
