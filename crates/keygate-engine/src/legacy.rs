//! Verifying keys imported from another system (`keygate import-keys`), on the cache-miss
//! path only: a credential outside keygate's key format, while imported keys exist, is
//! looked up by keygate's own digest (a key upgraded earlier, or imported as plaintext),
//! then as a legacy key through its lookup prefix (bcrypt) or its SHA digest. The first
//! success replaces the legacy hash with keygate's digest of the presented key, so every
//! later verification is an ordinary cache hit.
//!
//! bcrypt is slow on purpose: its checks run on the blocking pool, a few at a time
//! (a semaphore), with a bounded queue; past it the answer is "unavailable" (503), so a
//! burst of wrong keys against a legacy prefix costs a bounded amount of CPU. Wrong keys are
//! remembered like unknown keys (the negative cache) and count as failed authentications
//! for the edge's throttle.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_core::legacy::{LegacyLookups, LegacyScheme};
use keygate_core::{KeyDigest, Outcome};
use keygate_store::{LegacyKey, StoreError};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::cache::CachedKey;
use crate::ids::new_id;
use crate::verify::{Verdict, VerifyRequest};
use crate::{clock, now_ms, Engine, Error, Result};

/// Verifications waiting for or running bcrypt checks, at most; more answer "unavailable".
const MAX_QUEUED: usize = 64;
/// How long "this database holds no imported key" is believed before the store is asked
/// again (another node or the CLI may have imported some meanwhile).
const ABSENT_RECHECK: Duration = Duration::from_secs(5);

const UNKNOWN: u8 = 0;
const ABSENT: u8 = 1;
const PRESENT: u8 = 2;

/// The legacy verifier's state: whether imported keys exist, and the bcrypt bound.
pub(crate) struct LegacyVerifier {
    /// `UNKNOWN`, `ABSENT` (as of `checked_at`) or `PRESENT` (for good: imported keys are
    /// never deleted).
    state: AtomicU8,
    /// Coarse monotonic ns of the last look at the store.
    checked_at: AtomicU64,
    bcrypt_permits: Arc<Semaphore>,
    queued: AtomicUsize,
    pub(crate) metrics: LegacyMetrics,
}

impl Default for LegacyVerifier {
    fn default() -> Self {
        // Half the cores (at least one): bcrypt never takes the whole machine.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        LegacyVerifier {
            state: AtomicU8::new(UNKNOWN),
            checked_at: AtomicU64::new(0),
            bcrypt_permits: Arc::new(Semaphore::new((cores / 2).max(1))),
            queued: AtomicUsize::new(0),
            metrics: LegacyMetrics::default(),
        }
    }
}

impl LegacyVerifier {
    /// May a credential outside keygate's format be an imported key? False only while the
    /// store was seen without imported keys less than [`ABSENT_RECHECK`] ago.
    pub(crate) fn may_exist(&self, now: u64) -> bool {
        self.state.load(Ordering::Relaxed) != ABSENT
            || now.saturating_sub(self.checked_at.load(Ordering::Relaxed))
                > ABSENT_RECHECK.as_nanos() as u64
    }

    /// Imported keys exist from now on (after an import on this node).
    pub(crate) fn note_present(&self) {
        self.state.store(PRESENT, Ordering::Relaxed);
    }
}

/// `keygate_legacy_verifications_total{scheme, result}`, upgrades and refusals for load.
#[derive(Default)]
pub(crate) struct LegacyMetrics {
    /// [scheme: bcrypt, sha256, sha512][result: match, mismatch]
    checks: [[AtomicU64; 2]; 3],
    upgrades: AtomicU64,
    busy: AtomicU64,
}

impl LegacyMetrics {
    fn count_check(&self, scheme: LegacyScheme, matched: bool) {
        let row = match scheme {
            LegacyScheme::Bcrypt => 0,
            LegacyScheme::Sha256 => 1,
            LegacyScheme::Sha512 | LegacyScheme::Plaintext => 2,
        };
        self.checks[row][usize::from(!matched)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn render(&self, out: &mut String) {
        out.push_str("# HELP keygate_legacy_verifications_total Legacy hash checks of imported keys, by scheme and result.\n");
        out.push_str("# TYPE keygate_legacy_verifications_total counter\n");
        for (row, scheme) in ["bcrypt", "sha256", "sha512"].iter().enumerate() {
            for (col, result) in ["match", "mismatch"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "keygate_legacy_verifications_total{{scheme=\"{scheme}\",result=\"{result}\"}} {}",
                    self.checks[row][col].load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP keygate_legacy_upgrades_total Imported keys whose legacy hash was replaced by keygate's digest on first use.\n");
        out.push_str("# TYPE keygate_legacy_upgrades_total counter\n");
        let _ = writeln!(
            out,
            "keygate_legacy_upgrades_total {}",
            self.upgrades.load(Ordering::Relaxed)
        );
        out.push_str("# HELP keygate_legacy_busy_total Verifications answered unavailable because too many bcrypt checks were waiting.\n");
        out.push_str("# TYPE keygate_legacy_busy_total counter\n");
        let _ = writeln!(
            out,
            "keygate_legacy_busy_total {}",
            self.busy.load(Ordering::Relaxed)
        );
    }
}

/// Counts a verification waiting for bcrypt until dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the store knows of a credential outside keygate's format.
enum Imported {
    /// The database holds no imported key: the credential is just malformed.
    NoneExist,
    Unknown,
    Key(Arc<CachedKey>),
}

impl Engine {
    /// The verdict for a credential outside keygate's format, on a cache miss.
    pub(crate) async fn answer_imported(
        &self,
        digest: KeyDigest,
        request: &VerifyRequest<'_>,
        waited: &mut Duration,
    ) -> Result<Verdict> {
        let asked = Instant::now();
        let found = self.find_imported(digest, request.key).await;
        *waited += asked.elapsed();
        match found? {
            Imported::NoneExist => Ok(Verdict::refused(Outcome::MalformedKey)),
            Imported::Unknown => self.judge_found(None, request, waited).await,
            Imported::Key(key) => self.judge_found(Some(key), request, waited).await,
        }
    }

    async fn find_imported(&self, digest: KeyDigest, credential: &str) -> Result<Imported> {
        if !self.imported_keys_exist().await? {
            return Ok(Imported::NoneExist);
        }
        self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
        let Some(_asking) = self.store_health.may_ask() else {
            return Err(Error::Unavailable("the store failed moments ago".into()));
        };
        let ticket = self.cache.ticket();
        // Upgraded earlier (its cache entry expired or was evicted) or imported as plaintext.
        if let Some(key) = self.fetch_key_by_digest(&digest).await? {
            self.cache.fill(ticket, digest, Some(key.clone()));
            return Ok(Imported::Key(key));
        }
        self.find_legacy(ticket, digest, credential).await
    }

    /// A credential in keygate's format that the store does not know may still be an
    /// imported key with its legacy hash (the old system's keys may look like ours).
    pub(crate) async fn imported_after_miss(
        &self,
        digest: KeyDigest,
        credential: &str,
    ) -> Result<Option<Arc<CachedKey>>> {
        if !self.legacy.may_exist(clock::coarse_monotonic_ns())
            || !self.imported_keys_exist().await?
        {
            return Ok(None);
        }
        let ticket = self.cache.ticket();
        match self.find_legacy(ticket, digest, credential).await? {
            Imported::Key(key) => Ok(Some(key)),
            Imported::NoneExist | Imported::Unknown => Ok(None),
        }
    }

    /// The imported key whose legacy hash `credential` matches, upgraded; `ticket` was
    /// taken before the store was asked for `digest`.
    async fn find_legacy(
        &self,
        ticket: crate::cache::FillTicket,
        digest: KeyDigest,
        credential: &str,
    ) -> Result<Imported> {
        let lookups = LegacyLookups::of(credential);
        let candidates = self.healthy(self.store.legacy_candidates(&lookups).await)?;
        let Some(matched) = self.matching_legacy(candidates, credential).await? else {
            self.cache.fill(ticket, digest, None);
            return Ok(Imported::Unknown);
        };
        self.upgrade(&matched, &digest).await?;
        let ticket = self.cache.ticket();
        let key = self.fetch_key_by_digest(&digest).await?;
        self.cache.fill(ticket, digest, key.clone());
        Ok(key.map_or(Imported::Unknown, Imported::Key))
    }

    /// Whether the store holds imported keys, asking it when the last answer was "none"
    /// and is older than [`ABSENT_RECHECK`] (one verification asks; the others meanwhile
    /// keep the old answer).
    async fn imported_keys_exist(&self) -> Result<bool> {
        let legacy = &self.legacy;
        let state = legacy.state.load(Ordering::Relaxed);
        if state == PRESENT {
            return Ok(true);
        }
        let now = clock::coarse_monotonic_ns();
        let checked = legacy.checked_at.load(Ordering::Relaxed);
        let due =
            state == UNKNOWN || now.saturating_sub(checked) > ABSENT_RECHECK.as_nanos() as u64;
        if !due
            || legacy
                .checked_at
                .compare_exchange(checked, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(state == UNKNOWN);
        }
        let present = match self.store.has_legacy_keys().await {
            Ok(present) => present,
            Err(e) => {
                // Ask again on the next credential.
                legacy.checked_at.store(checked, Ordering::Relaxed);
                return Err(self.store_failed(e));
            }
        };
        legacy
            .state
            .store(if present { PRESENT } else { ABSENT }, Ordering::Relaxed);
        Ok(present)
    }

    /// The key with keygate digest `digest`, ready for the cache.
    async fn fetch_key_by_digest(&self, digest: &KeyDigest) -> Result<Option<Arc<CachedKey>>> {
        let record = self.healthy(self.store.find_key_by_digest(digest).await)?;
        match record {
            Some(r) => Ok(Some(self.cached_key(r).await?)),
            None => Ok(None),
        }
    }

    /// The first candidate whose legacy hash the credential matches. SHA candidates were
    /// found by the credential's own digest (compared again here, in constant time); bcrypt
    /// ones share its lookup prefix and are checked one by one off the async workers.
    async fn matching_legacy(
        &self,
        candidates: Vec<LegacyKey>,
        credential: &str,
    ) -> Result<Option<LegacyKey>> {
        let legacy = &self.legacy;
        let (bcrypt, digests): (Vec<LegacyKey>, Vec<LegacyKey>) = candidates
            .into_iter()
            .filter(|c| c.hash.is_some())
            .partition(|c| c.scheme == LegacyScheme::Bcrypt.as_str());
        if !digests.is_empty() {
            let lookups = LegacyLookups::of(credential);
            for candidate in digests {
                let (scheme, own) = match LegacyScheme::parse(&candidate.scheme) {
                    Some(LegacyScheme::Sha256) => (LegacyScheme::Sha256, &lookups.sha256),
                    Some(LegacyScheme::Sha512) => (LegacyScheme::Sha512, &lookups.sha512),
                    _ => continue,
                };
                let stored = candidate.hash.as_deref().unwrap_or_default();
                let matched: bool = stored.as_bytes().ct_eq(own.as_bytes()).into();
                legacy.metrics.count_check(scheme, matched);
                if matched {
                    return Ok(Some(candidate));
                }
            }
        }
        if bcrypt.is_empty() {
            return Ok(None);
        }
        if legacy.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            legacy.queued.fetch_sub(1, Ordering::Relaxed);
            legacy.metrics.busy.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Unavailable(
                "too many imported-key checks at once".into(),
            ));
        }
        let _queued = Queued(&legacy.queued);
        let permit = legacy
            .bcrypt_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let credential = credential.to_owned();
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut results = Vec::with_capacity(bcrypt.len());
            for candidate in bcrypt {
                let hash = candidate.hash.as_deref().unwrap_or_default();
                // A hash that does not parse (checked on import) matches nothing.
                let matched = bcrypt::verify(credential.as_bytes(), hash).unwrap_or(false);
                results.push(matched);
                if matched {
                    return (results, Some(candidate));
                }
            }
            (results, None)
        })
        .await
        .map_err(|e| Error::Internal(format!("bcrypt check: {e}")))?;
        let (results, matched) = checked;
        for result in results {
            legacy.metrics.count_check(LegacyScheme::Bcrypt, result);
        }
        Ok(matched)
    }

    /// Replaces `legacy`'s hash with keygate's digest of the credential that matched it
    /// (a no-op when a concurrent verification did it first), audited as `key.upgrade`.
    async fn upgrade(&self, legacy: &LegacyKey, digest: &KeyDigest) -> Result<()> {
        let now = now_ms();
        let account_id = self
            .healthy(self.store.get_key(&legacy.key_id).await)?
            .map(|k| k.account_id);
        let audit = keygate_store::AuditEvent {
            id: new_id("evt")?,
            seq: 0,
            at: now,
            account_id,
            actor: format!("key:{}", legacy.key_id),
            action: "key.upgrade".into(),
            target_id: Some(legacy.key_id.clone()),
            client_ip: None,
            details: json!({"from": legacy.scheme}),
        };
        let result = self
            .store
            .upgrade_legacy_key(&legacy.key_id, digest, now, &audit)
            .await;
        match result {
            Ok(true) => {
                self.legacy.metrics.upgrades.fetch_add(1, Ordering::Relaxed);
                self.invalidate(digest);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(StoreError::Duplicate) => {
                // Another key holds this digest already (the same key imported twice under
                // different hashes): keep the legacy hash; the other key answers.
                tracing::warn!(key_id = %legacy.key_id, "an imported key matches a key held already; not upgraded");
                Ok(())
            }
            Err(e) => Err(self.store_failed(e)),
        }
    }

    /// A store answer, noting a failure for the store health.
    fn healthy<T>(&self, result: keygate_store::Result<T>) -> Result<T> {
        match result {
            Ok(v) => {
                self.store_health.answered();
                Ok(v)
            }
            Err(e) => Err(self.store_failed(e)),
        }
    }

    fn store_failed(&self, e: StoreError) -> Error {
        if matches!(e, StoreError::Unavailable(_)) {
            self.store_health.failed();
        }
        Error::Unavailable(e.to_string())
    }
}
