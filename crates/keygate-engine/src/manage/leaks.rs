//! Leaked-key reports (a secret scanner's or an operator's): the key is looked up only when
//! the token has this deployment's format and checksum, then revoked (or only marked, with
//! `notify`), with a `key.leaked` audit event in the same transaction.

use keygate_store::KeyStatus;
use serde_json::json;

use super::{Actor, Caller};
use crate::{now_ms, Engine, Error, Result};

/// What a report of a live key does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeakAction {
    /// Revoke the key at once (the default).
    #[default]
    Revoke,
    /// Mark it leaked and audit; the key keeps working until someone revokes it.
    Notify,
}

impl LeakAction {
    pub fn parse(s: &str) -> Option<LeakAction> {
        match s {
            "revoke" => Some(LeakAction::Revoke),
            "notify" => Some(LeakAction::Notify),
            _ => None,
        }
    }
}

/// Where a reported token was found.
#[derive(Clone, Debug, Default)]
pub struct LeakSource {
    /// Who reports: `github` for GitHub secret scanning, `admin` for `POST /v1/leaks`.
    pub reporter: String,
    /// The scanner's token type or the operator's label.
    pub token_type: Option<String>,
    /// Where the token was seen (a commit, an issue, a paste).
    pub url: Option<String>,
    /// The kind of place (`content`, `commit`, `npm`, …).
    pub source: Option<String>,
}

/// The verdict on one reported token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakVerdict {
    /// This deployment issued the key (live, revoked or expired).
    Issued,
    /// Not a key this deployment issued (wrong format, bad checksum, unknown).
    NotIssued,
}

/// Longest `url`, `source` or token type kept in the audit log.
const MAX_DETAIL_CHARS: usize = 2048;

fn detail(text: &Option<String>) -> Option<String> {
    text.as_ref()
        .map(|t| t.chars().take(MAX_DETAIL_CHARS).collect())
}

impl Engine {
    /// Handles one reported token. Only the admin (the route checks the scanner's
    /// signature itself and calls with an admin caller) may report.
    pub async fn report_leak(
        &self,
        caller: &Caller,
        token: &str,
        from: &LeakSource,
        action: LeakAction,
    ) -> Result<LeakVerdict> {
        if !matches!(caller.actor, Actor::Admin) {
            return Err(Error::Forbidden(
                "only the admin token may report leaked keys".into(),
            ));
        }
        // Garbage never reaches the store: format and checksum first.
        if self.format.parse(token).is_err() {
            return Ok(LeakVerdict::NotIssued);
        }
        let digest = self.pepper.digest(token.as_bytes());
        let Some(key) = self.store.find_key_by_digest(&digest).await? else {
            return Ok(LeakVerdict::NotIssued);
        };
        let now = now_ms();
        let live = KeyStatus::of(&key, now) == KeyStatus::Active;
        let revoke = live && action == LeakAction::Revoke;
        let done = match (live, action) {
            (false, _) => "none",
            (true, LeakAction::Revoke) => "revoked",
            (true, LeakAction::Notify) => "notified",
        };
        let mut audit = caller.audit(
            "key.leaked",
            Some(&key.account_id),
            Some(&key.id),
            json!({
                "reporter": from.reporter,
                "token_type": detail(&from.token_type),
                "url": detail(&from.url),
                "source": detail(&from.source),
                "action": done,
            }),
        )?;
        if from.reporter != "admin" {
            audit.actor = format!("scanner:{}", from.reporter);
        }
        let marked = self.store.mark_leaked(&key.id, now, revoke, &audit).await?;
        self.invalidate(&marked.digest);
        if revoke {
            tracing::warn!(key_id = %marked.id, reporter = %from.reporter, "revoked a leaked key");
        } else {
            tracing::warn!(key_id = %marked.id, reporter = %from.reporter, action = done, "a leaked key was reported");
        }
        Ok(LeakVerdict::Issued)
    }
}
