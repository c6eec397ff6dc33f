//! The verification hot path: parse → digest → cache (store on a miss) → policy → rate
//! limit → quota → usage. On a cache hit nothing here waits on I/O.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_core::key::MAX_KEY_LEN;
use keygate_core::least_privilege::EVERYTHING;
use keygate_core::policy::{decide, KeyPolicy, RequestFacts};
use keygate_core::{InvalidReason, KeyDigest, Outcome, Required};

use crate::cache::{CachedKey, Lookup};
use crate::ratelimit::RateLimitStatus;
use crate::shared_limit::QuotaAnswer;
use crate::{clock, now_ms, Engine, Error, Result};

/// One verification question.
#[derive(Clone, Debug, Default)]
pub struct VerifyRequest<'a> {
    /// The credential as sent. May be anything: it is parsed before it is trusted.
    pub key: &'a str,
    /// `None`: only "is this key valid?".
    pub required: Option<&'a Required>,
    pub client_ip: Option<IpAddr>,
}

/// The answer: an outcome, and the key when one was found.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub outcome: Outcome,
    pub key: Option<Arc<CachedKey>>,
    /// Set for keys with a rate limit, whatever the outcome.
    pub rate_limit: Option<RateLimitStatus>,
}

impl Verdict {
    pub(crate) fn refused(outcome: Outcome) -> Verdict {
        Verdict {
            outcome,
            key: None,
            rate_limit: None,
        }
    }
}

/// What [`Engine::verify`] can tell from memory.
enum Memory {
    Answer(Verdict),
    /// A fresh cached key whose rate limit or quota is shared through Redis.
    AskLimiter(Arc<CachedKey>),
    /// Not cached or not fresh: the store must be asked (with the stale copy, if any).
    AskStore(KeyDigest, Option<Arc<CachedKey>>),
    /// Not cached, not in keygate's key format, and imported keys may exist (`legacy.rs`).
    AskImported(KeyDigest),
}

impl Engine {
    /// Verifies a credential. `Err` only when the store is needed and cannot answer: the
    /// caller must then not claim the key is invalid (answer 503).
    ///
    /// Time on a cache hit: the coarse monotonic clock dates the request (cache ages) and
    /// times it for the latency histogram, to one scheduler tick: an answer from memory
    /// takes well under a microsecond, so it almost always counts as 0 s, and one in a few
    /// thousand as one tick, which keeps the histogram's sum right on average and shows
    /// real stalls (a preempted thread). Waits on the store or on a shared rate limiter
    /// are timed with the precise clock and counted instead.
    pub async fn verify(&self, request: &VerifyRequest<'_>) -> Result<Verdict> {
        let started = clock::coarse_monotonic_ns();
        let mut waited = Duration::ZERO;
        // Most verifications are answered from memory without an await. The other paths
        // are boxed: their state would otherwise make this future, which is moved on every
        // call, kilobytes larger.
        let verdict = match self.answer_from_memory(request, started) {
            Memory::Answer(verdict) => Ok(verdict),
            Memory::AskLimiter(key) => Box::pin(self.check_shared(key, request, &mut waited)).await,
            Memory::AskStore(digest, stale) => {
                Box::pin(self.answer_from_store(digest, stale, request, &mut waited)).await
            }
            Memory::AskImported(digest) => {
                Box::pin(self.answer_imported(digest, request, &mut waited)).await
            }
        };
        self.observe(started, waited, &verdict);
        verdict
    }

    /// [`Engine::verify`] when memory answers at once (a fresh cached key, a digest known
    /// to be unknown, a string that is not a key): the same verdict, counted the same way,
    /// without a future to build and poll. `None` when the store or a shared rate limiter
    /// must be asked; nothing has been counted then, and the caller asks [`Engine::verify`].
    pub fn verify_from_memory(&self, request: &VerifyRequest<'_>) -> Option<Verdict> {
        // With limits shared through Redis a fresh hit may still have to wait, which is
        // known only once the hit was counted: `verify` answers those.
        if self.shared_limiter.get().is_some() {
            return None;
        }
        let started = clock::coarse_monotonic_ns();
        let Memory::Answer(verdict) = self.answer_from_memory(request, started) else {
            return None;
        };
        let verdict = Ok(verdict);
        self.observe(started, Duration::ZERO, &verdict);
        verdict.ok()
    }

    /// Counts one verification in the metrics: its latency and outcome.
    fn observe(&self, started: u64, waited: Duration, verdict: &Result<Verdict>) {
        let elapsed = if waited.is_zero() {
            Duration::from_nanos(clock::coarse_monotonic_ns().saturating_sub(started))
        } else {
            waited
        };
        self.metrics.observe_latency(elapsed);
        match verdict {
            Ok(v) => self.metrics.count_outcome(v.outcome),
            Err(_) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The answer when memory has it: a fresh cached key (unless its rate limit or quota is
    /// shared through Redis), a digest known to be unknown, a string that is not a key.
    fn answer_from_memory(&self, request: &VerifyRequest<'_>, started: u64) -> Memory {
        if request.key.len() > MAX_KEY_LEN {
            return Memory::Answer(Verdict::refused(Outcome::MalformedKey));
        }
        let digest = self.pepper.digest(request.key.as_bytes());
        match self.cache.get(&digest, started) {
            Lookup::Hit(key) if started.saturating_sub(key.fetched_at) <= self.cache_ttl_ns() => {
                self.metrics.count_cache_hit();
                match self.check_now(key, request) {
                    Ok(verdict) => Memory::Answer(verdict),
                    Err(key) => Memory::AskLimiter(key),
                }
            }
            Lookup::Unknown => {
                self.metrics.count_cache_hit();
                Memory::Answer(Verdict::refused(Outcome::InvalidKey(
                    InvalidReason::Unknown,
                )))
            }
            Lookup::Hit(key) => Memory::AskStore(digest, Some(key)),
            // Only a key that parsed is ever cached (a digest is a hash of the very string
            // that was parsed), so the shape and checksum are checked only here, before
            // anything unknown can reach the store; other strings only while the store
            // may hold imported keys, which need not be in keygate's format.
            Lookup::Miss => match self.format.parse(request.key) {
                Ok(_) => Memory::AskStore(digest, None),
                Err(_) if self.legacy.may_exist(started) => Memory::AskImported(digest),
                Err(_) => Memory::Answer(Verdict::refused(Outcome::MalformedKey)),
            },
        }
    }

    async fn answer_from_store(
        &self,
        digest: KeyDigest,
        stale: Option<Arc<CachedKey>>,
        request: &VerifyRequest<'_>,
        waited: &mut Duration,
    ) -> Result<Verdict> {
        let asked = Instant::now();
        let mut found = self.lookup(digest, stale).await;
        if matches!(found, Ok(None)) {
            found = self.imported_after_miss(digest, request.key).await;
        }
        *waited += asked.elapsed();
        self.judge_found(found?, request, waited).await
    }

    /// The verdict for what the store answered: unknown, or a key to judge.
    pub(crate) async fn judge_found(
        &self,
        found: Option<Arc<CachedKey>>,
        request: &VerifyRequest<'_>,
        waited: &mut Duration,
    ) -> Result<Verdict> {
        let Some(key) = found else {
            return Ok(Verdict::refused(Outcome::InvalidKey(
                InvalidReason::Unknown,
            )));
        };
        match self.check_now(key, request) {
            Ok(verdict) => Ok(verdict),
            Err(key) => self.check_shared(key, request, waited).await,
        }
    }

    pub(crate) fn cache_ttl_ns(&self) -> u64 {
        u64::try_from(self.cache_ttl.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The key behind a digest the cache could not answer for (`stale`: a cached copy older
    /// than the cache TTL), from the store. If the store cannot answer, the copy is served
    /// while it is younger than TTL + stale-if-error, and after that the answer is
    /// "unavailable".
    pub(crate) async fn lookup(
        &self,
        digest: KeyDigest,
        stale: Option<Arc<CachedKey>>,
    ) -> Result<Option<Arc<CachedKey>>> {
        self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
        let Some(_asking) = self.store_health.may_ask() else {
            return self.stale_or_unavailable(stale, "the store failed moments ago".into());
        };
        let ticket = self.cache.ticket();
        let record = match self.store.find_key_by_digest(&digest).await {
            Ok(record) => {
                self.store_health.answered();
                record
            }
            Err(e) => {
                if matches!(e, keygate_store::StoreError::Unavailable(_)) {
                    self.store_health.failed();
                }
                return self.stale_or_unavailable(stale, e.to_string());
            }
        };
        let key = match record {
            Some(r) => Some(self.cached_key(r).await?),
            None => None,
        };
        self.cache.fill(ticket, digest, key.clone());
        Ok(key)
    }

    /// A stored key as the cache keeps it, with its usage cell and plan rate limit.
    pub(crate) async fn cached_key(
        &self,
        record: keygate_store::KeyRecord,
    ) -> Result<Arc<CachedKey>> {
        let plan_rate_limit = self.plan_rate_limit(&record).await?;
        let usage = self.usage.cell(&record);
        usage.reconcile(&record);
        Ok(Arc::new(CachedKey::from_record(
            record,
            usage,
            plan_rate_limit,
        )))
    }

    /// When the store cannot answer: the cached copy while it is younger than TTL +
    /// stale-if-error, else "unavailable" (never "invalid": the key may well be valid).
    fn stale_or_unavailable(
        &self,
        stale: Option<Arc<CachedKey>>,
        error: String,
    ) -> Result<Option<Arc<CachedKey>>> {
        match stale {
            Some(key)
                if Duration::from_nanos(
                    clock::coarse_monotonic_ns().saturating_sub(key.fetched_at),
                ) <= self.cache_ttl + self.stale_if_error =>
            {
                self.metrics.stale_served.fetch_add(1, Ordering::Relaxed);
                Ok(Some(key))
            }
            _ => Err(Error::Unavailable(error)),
        }
    }

    /// The default rate limit of the key's account plan, when plans have any and the key
    /// has none of its own (one more store read, on cache fills only).
    async fn plan_rate_limit(
        &self,
        record: &keygate_store::KeyRecord,
    ) -> Result<Option<keygate_store::RateLimit>> {
        if record.rate_limit.is_some() || !self.plans.has_rate_limits() {
            return Ok(None);
        }
        let account = self
            .store
            .get_account(&record.account_id)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(account.and_then(|a| self.plans.rate_limit(&a.plan)))
    }

    /// Liveness, IP allowlist and permission, at `now` (coarse); revocation and expiry
    /// are decided with the precise clock, read only for a key that has either.
    fn policy(&self, key: &CachedKey, request: &VerifyRequest<'_>, now: i64) -> Outcome {
        if key.corrupt() {
            return Outcome::InvalidKey(InvalidReason::Unknown);
        }
        let policy = KeyPolicy {
            permissions: key.permissions(),
            ip_allowlist: key.ip_allowlist(),
            revoked_at: key.revoked_at(),
            expires_at: key.expires_at(),
        };
        let facts = RequestFacts {
            required: request.required,
            client_ip: request.client_ip,
        };
        let timed = key.revoked_at().is_some() || key.expires_at().is_some();
        decide(&policy, &facts, if timed { now_ms() } else { now })
    }

    /// The verdict for a known key, without waiting; `Err(key)` when its rate limit or
    /// quota is shared through Redis and must be asked ([`Engine::check_shared`]). A key
    /// with neither never waits on Redis.
    pub(crate) fn check_now(
        &self,
        key: Arc<CachedKey>,
        request: &VerifyRequest<'_>,
    ) -> std::result::Result<Verdict, Arc<CachedKey>> {
        // Usage (hour buckets, last use, quota refills) is dated with the coarse clock.
        let now = clock::coarse_now_ms();
        let mut outcome = self.policy(&key, request, now);
        let mut rate_limit = None;
        if outcome == Outcome::Valid {
            if self.shared_limiter.get().is_some()
                && (key.rate_limit().is_some() || key.quota().is_some())
            {
                return Err(key);
            }
            if let Some(limit) = key.rate_limit() {
                let status = key.usage.limiter.check(limit, self.monotonic_ns());
                if status.retry_after_seconds.is_some() {
                    outcome = Outcome::RateLimited;
                }
                rate_limit = Some(status);
            }
            if outcome == Outcome::Valid {
                if let Some(quota) = key.quota() {
                    if !key.usage.try_spend(quota, now) {
                        outcome = Outcome::UsageExceeded;
                    }
                }
            }
        }
        Ok(self.finish(key, request, outcome, rate_limit, now))
    }

    /// [`Engine::check_now`] for a key whose rate limit or quota is shared through Redis.
    pub(crate) async fn check_shared(
        &self,
        key: Arc<CachedKey>,
        request: &VerifyRequest<'_>,
        waited: &mut Duration,
    ) -> Result<Verdict> {
        let now = clock::coarse_now_ms();
        let mut outcome = self.policy(&key, request, now);
        let mut rate_limit = None;
        let Some(shared) = self.shared_limiter.get() else {
            return Ok(self.finish(key, request, outcome, rate_limit, now));
        };
        // Set when Redis just failed (open) for the rate limit: the quota then does not wait
        // on it a second time.
        let mut failed_open = false;
        if let (Outcome::Valid, Some(limit)) = (outcome, key.rate_limit()) {
            let asked = Instant::now();
            let status = self.take_shared_rate_limit(shared, &key, limit).await;
            *waited += asked.elapsed();
            let status = status?;
            if status.is_some_and(|s| s.retry_after_seconds.is_some()) {
                outcome = Outcome::RateLimited;
            }
            failed_open = status.is_none();
            rate_limit = status;
        }
        if let (Outcome::Valid, Some(quota)) = (outcome, key.quota()) {
            let spent = if failed_open {
                key.usage.try_spend(quota, now)
            } else {
                let asked = Instant::now();
                let spent = self.spend_shared_quota(shared, &key, quota, now).await;
                *waited += asked.elapsed();
                spent?
            };
            if !spent {
                outcome = Outcome::UsageExceeded;
            }
        }
        Ok(self.finish(key, request, outcome, rate_limit, now))
    }

    /// Usage, and the verdict.
    fn finish(
        &self,
        key: Arc<CachedKey>,
        request: &VerifyRequest<'_>,
        outcome: Outcome,
        rate_limit: Option<RateLimitStatus>,
        now: i64,
    ) -> Verdict {
        // The permission an allowed request needed, for the least-privilege report.
        let used = match (outcome, request.required) {
            (Outcome::Valid, Some(Required::Permission(p))) => Some(p),
            (Outcome::Valid, Some(Required::Unmapped)) => Some(&EVERYTHING),
            _ => None,
        };
        self.usage
            .record(&key.usage, outcome, used, request.client_ip, now);
        if matches!(outcome, Outcome::InvalidKey(_)) {
            // Refused as invalid: say nothing more about the key to the caller.
            return Verdict::refused(outcome);
        }
        Verdict {
            outcome,
            key: Some(key),
            rate_limit,
        }
    }

    /// One request from the key's rate limit when limits are shared through Redis. `None`
    /// when the shared limiter failed open.
    async fn take_shared_rate_limit(
        &self,
        shared: &crate::SharedLimiter,
        key: &CachedKey,
        limit: keygate_store::RateLimit,
    ) -> Result<Option<crate::RateLimitStatus>> {
        match shared.check(key.id(), limit).await {
            Ok(status) => Ok(Some(status)),
            Err(e) => {
                self.metrics
                    .rate_limiter_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "shared rate limiter unavailable");
                match shared.on_failure {
                    crate::LimiterFailure::Open => Ok(None),
                    crate::LimiterFailure::Closed => {
                        Err(Error::Unavailable(format!("rate limiter: {e}")))
                    }
                }
            }
        }
    }

    /// Spends one request of the key's quota in Redis, so that all nodes together never
    /// accept more than the quota (plus its refills); false when it is spent. When Redis has
    /// no state for the key it is seeded from the store (a restarted Redis does not hand out
    /// a fresh quota). When Redis cannot answer: fail closed answers "unavailable", fail
    /// open spends from this node's own count, as without Redis.
    async fn spend_shared_quota(
        &self,
        shared: &crate::SharedLimiter,
        key: &CachedKey,
        quota: keygate_store::Quota,
        now: i64,
    ) -> Result<bool> {
        let mut answer = shared.spend_quota(key.id(), quota, None).await;
        if answer == Ok(QuotaAnswer::NeedsSeed) {
            self.refresh_quota_from_store(key).await;
            let seed = key.usage.quota_state();
            answer = shared.spend_quota(key.id(), quota, Some(seed)).await;
        }
        let error = match answer {
            Ok(QuotaAnswer::Spent {
                allowed,
                given_back,
                state,
            }) => {
                key.usage
                    .follow_shared_spend(allowed, given_back, state.refilled_at);
                return Ok(allowed);
            }
            Ok(QuotaAnswer::NeedsSeed) => "Redis did not keep the quota it was given".to_owned(),
            Err(e) => e,
        };
        self.metrics
            .rate_limiter_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %error, "shared quota unavailable");
        match shared.on_failure {
            crate::LimiterFailure::Open => Ok(key.usage.try_spend(quota, now)),
            crate::LimiterFailure::Closed => Err(Error::Unavailable(format!("quota: {error}"))),
        }
    }

    /// Brings the key's usage cell up to what the store holds (every node's flushed
    /// spending), to seed Redis with. Best effort: while the store is failing, the cell's
    /// own count is the seed.
    async fn refresh_quota_from_store(&self, key: &CachedKey) {
        let Some(_asking) = self.store_health.may_ask() else {
            return;
        };
        match self.store.get_key(key.id()).await {
            Ok(record) => {
                self.store_health.answered();
                if let Some(record) = record {
                    key.usage.reconcile(&record);
                }
            }
            Err(e) => {
                if matches!(e, keygate_store::StoreError::Unavailable(_)) {
                    self.store_health.failed();
                }
                tracing::warn!(error = %e, "cannot read the stored quota to seed Redis with");
            }
        }
    }

    /// Forgets a key on this node. Every change path calls this after committing.
    pub(crate) fn invalidate(&self, digest: &KeyDigest) {
        self.cache.invalidate(digest);
    }

    /// Keys in the cache now (for metrics).
    pub fn cached_keys(&self) -> u64 {
        self.cache.entry_count()
    }
}
