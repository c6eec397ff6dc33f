//! A token on the verification path. Signature, expiry, audience and scope are checked
//! from memory (the signature once per token: a verified token is remembered by its
//! SHA-256); then the parent key is judged through the engine's own cache, so a revoked,
//! expired or narrowed key refuses its tokens, its IP allowlist applies, and the request
//! counts against its rate limit, quota and usage.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use keygate_core::{Environment, InvalidReason, KeyDigest, Outcome, PermissionSet, Required};
use sha2::Digest as _;

use super::{jwt, VerifiedToken, MAX_PARENTS, RELOAD_EVERY};
use crate::cache::{CachedKey, Lookup};
use crate::{clock, now_ms, Engine, Result, Verdict, VerifyRequest};

/// Why a token is refused before its key is looked at.
const UNKNOWN: Outcome = Outcome::InvalidKey(InvalidReason::Unknown);

impl Engine {
    /// Verifies a token (a credential for which [`Engine::accepts_token`] holds) like
    /// [`Engine::verify`] verifies a key. The verdict's key is the token's view of its
    /// parent: the parent's id, account and limits, the token's scope as permissions, the
    /// earlier of the two ends as expiry, and the token id.
    pub async fn verify_token(&self, request: &VerifyRequest<'_>) -> Result<Verdict> {
        let started = clock::coarse_monotonic_ns();
        let verdict = self.judge_token(request).await;
        self.metrics.observe_latency(Duration::from_nanos(
            clock::coarse_monotonic_ns().saturating_sub(started),
        ));
        match &verdict {
            Ok(v) => self.metrics.count_outcome(v.outcome),
            Err(_) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        verdict
    }

    async fn judge_token(&self, request: &VerifyRequest<'_>) -> Result<Verdict> {
        let Some(token) = self.verified_token(request.key).await? else {
            return Ok(Verdict::refused(UNKNOWN));
        };
        if now_ms() >= token.expires_at {
            return Ok(Verdict::refused(Outcome::InvalidKey(
                InvalidReason::Expired,
            )));
        }
        if token.claims.aud != self.token_settings().audience {
            return Ok(Verdict::refused(UNKNOWN));
        }
        let in_scope = match request.required {
            None => true,
            Some(Required::Permission(p)) => token.scope.allows(p),
            Some(Required::Unmapped) => token.scope.allows_everything(),
        };
        if !in_scope {
            return Ok(Verdict::refused(Outcome::InsufficientPermissions));
        }
        let Some(digest) = self.parent_digest(&token.claims.sub).await? else {
            return Ok(Verdict::refused(UNKNOWN));
        };
        let now = clock::coarse_monotonic_ns();
        let parent = match self.cache.get(&digest, now) {
            Lookup::Hit(key) if now.saturating_sub(key.fetched_at) <= self.cache_ttl_ns() => {
                self.metrics.count_cache_hit();
                Some(key)
            }
            Lookup::Hit(stale) => self.lookup(digest, Some(stale)).await?,
            Lookup::Unknown => None,
            Lookup::Miss => self.lookup(digest, None).await?,
        };
        let Some(parent) = parent else {
            return Ok(Verdict::refused(UNKNOWN));
        };
        if parent.id() != token.claims.sub
            || parent.account_id() != token.claims.acct
            || Environment::parse(&token.claims.env) != Some(parent.environment())
        {
            return Ok(Verdict::refused(UNKNOWN));
        }
        // Narrowed since the token was made: the token no longer stands for its key.
        if !parent.permissions().covers(&token.scope) {
            return Ok(Verdict::refused(Outcome::InvalidKey(
                InvalidReason::Revoked,
            )));
        }
        let view = Arc::new(token_view(&parent, &token));
        match self.check_now(view, request) {
            Ok(verdict) => Ok(verdict),
            Err(view) => {
                let mut waited = Duration::ZERO;
                self.check_shared(view, request, &mut waited).await
            }
        }
    }

    /// The token's claims if its signature is one of this deployment's signing keys (a
    /// `kid` not known yet reloads the ring, at most once a second). `None`: not a valid
    /// token.
    async fn verified_token(&self, token: &str) -> Result<Option<Arc<VerifiedToken>>> {
        let fingerprint: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.tokens.verified.get(&fingerprint) {
            return Ok(Some(known));
        }
        let Some(unverified) = jwt::parse(token) else {
            return Ok(None);
        };
        let mut ring = self.tokens.ring();
        if ring.find(&unverified.kid).is_none() && self.tokens.age() >= RELOAD_EVERY {
            ring = self.reload_ring().await?;
        }
        let Some(key) = ring.find(&unverified.kid) else {
            return Ok(None);
        };
        let Some(claims) = unverified.verify(&key.public) else {
            return Ok(None);
        };
        let Ok(scope) = PermissionSet::parse(&claims.scope.split(' ').collect::<Vec<_>>()) else {
            return Ok(None);
        };
        let verified = Arc::new(VerifiedToken {
            expires_at: claims.exp.saturating_mul(1000),
            claims,
            scope,
        });
        self.tokens.verified.insert(fingerprint, verified.clone());
        Ok(Some(verified))
    }

    /// The digest of the key with id `key_id`: from memory, else one store read.
    async fn parent_digest(&self, key_id: &str) -> Result<Option<KeyDigest>> {
        let known = self
            .tokens
            .parents
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key_id)
            .copied();
        if known.is_some() {
            return Ok(known);
        }
        let Some(record) = self.store.get_key(key_id).await? else {
            return Ok(None);
        };
        let mut parents = self
            .tokens
            .parents
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if parents.len() >= MAX_PARENTS {
            parents.clear();
        }
        parents.insert(key_id.into(), record.digest);
        Ok(Some(record.digest))
    }
}

/// The parent as the token presents it: the token's scope, the earlier end, the token id.
/// It shares the parent's usage cell, so limits, quota and counts are the key's.
fn token_view(parent: &CachedKey, token: &VerifiedToken) -> CachedKey {
    parent.token_view(
        token.scope.clone(),
        token.expires_at,
        token.claims.jti.as_str(),
    )
}
