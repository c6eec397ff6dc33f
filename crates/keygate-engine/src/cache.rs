//! The key cache: digest → key record, with negative entries for unknown digests.
//!
//! A fill races with invalidations: a verification can read a key from the store just
//! before a revocation commits and insert it just after the revocation invalidated the
//! entry. Every invalidation bumps `epoch`; a fill that saw the epoch move drops what it
//! inserted, so a stale record is never served.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keygate_core::ip::IpAllowlist;
use keygate_core::{Environment, KeyDigest, PermissionSet};
use keygate_store::{KeyRecord, Quota, RateLimit};
use moka::sync::Cache;

use crate::usage::KeyUsage;

/// A key as the hot path needs it: parsed once, when it enters the cache.
#[derive(Debug)]
pub struct CachedKey {
    pub record: KeyRecord,
    pub permissions: PermissionSet,
    pub ip_allowlist: IpAllowlist,
    /// Usage and limiter state; shared by every cache generation of this key.
    pub(crate) usage: Arc<KeyUsage>,
    /// Stored data that no longer parses: the key is refused rather than trusted.
    pub(crate) corrupt: bool,
    /// When this copy was read from the store.
    pub(crate) fetched_at: std::time::Instant,
    /// The account plan's rate limit, for a key without its own.
    pub(crate) plan_rate_limit: Option<RateLimit>,
}

impl CachedKey {
    pub fn id(&self) -> &str {
        &self.record.id
    }

    pub fn account_id(&self) -> &str {
        &self.record.account_id
    }

    pub fn environment(&self) -> Environment {
        self.record.environment
    }

    /// The key's own rate limit, or its plan's.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.record.rate_limit.or(self.plan_rate_limit)
    }

    pub fn quota(&self) -> Option<Quota> {
        self.record.quota
    }
}

/// Digests are HMAC outputs: uniformly random and not chosen by a caller who lacks the
/// pepper, so their first 8 bytes are already a good hash. Saves a SipHash per lookup.
#[derive(Clone, Default)]
pub(crate) struct DigestHash;

pub(crate) struct DigestHasher(u64);

impl BuildHasher for DigestHash {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(buf);
        }
    }
}

pub(crate) struct KeyCache {
    keys: Cache<KeyDigest, Arc<CachedKey>, DigestHash>,
    unknown: Cache<KeyDigest, (), DigestHash>,
    epoch: AtomicU64,
}

/// A marker taken before reading the store; see the module comment.
pub(crate) struct FillTicket(u64);

pub(crate) enum Lookup {
    Hit(Arc<CachedKey>),
    Unknown,
    Miss,
}

impl KeyCache {
    /// Entries live `keep` (refresh age plus the stale-if-error bound); the engine decides
    /// when one is due for a refresh.
    pub fn new(capacity: u64, keep: Duration, negative_ttl: Duration) -> KeyCache {
        KeyCache {
            keys: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(keep)
                .build_with_hasher(DigestHash),
            unknown: Cache::builder()
                .max_capacity(capacity.clamp(1, 100_000))
                .time_to_live(negative_ttl)
                .build_with_hasher(DigestHash),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn get(&self, digest: &KeyDigest) -> Lookup {
        if let Some(key) = self.keys.get(digest) {
            return Lookup::Hit(key);
        }
        if self.unknown.contains_key(digest) {
            return Lookup::Unknown;
        }
        Lookup::Miss
    }

    pub fn ticket(&self) -> FillTicket {
        FillTicket(self.epoch.load(Ordering::SeqCst))
    }

    pub fn fill(&self, ticket: FillTicket, digest: KeyDigest, key: Option<Arc<CachedKey>>) {
        match key {
            Some(k) => self.keys.insert(digest, k),
            None => self.unknown.insert(digest, ()),
        }
        if self.epoch.load(Ordering::SeqCst) != ticket.0 {
            self.keys.invalidate(&digest);
            self.unknown.invalidate(&digest);
        }
    }

    /// Forgets `digest` on this node. Call after the change is committed.
    pub fn invalidate(&self, digest: &KeyDigest) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.keys.invalidate(digest);
        self.unknown.invalidate(digest);
    }

    /// Forgets everything (changes may have been missed).
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.keys.invalidate_all();
        self.unknown.invalidate_all();
    }

    pub fn entry_count(&self) -> u64 {
        self.keys.entry_count()
    }
}

impl CachedKey {
    pub(crate) fn from_record(
        record: KeyRecord,
        usage: Arc<KeyUsage>,
        plan_rate_limit: Option<RateLimit>,
    ) -> CachedKey {
        let permissions = PermissionSet::parse(&record.permissions);
        let ip_allowlist = IpAllowlist::parse(&record.ip_allowlist);
        let corrupt = permissions.is_err() || ip_allowlist.is_err();
        if corrupt {
            tracing::error!(key_id = %record.id, "stored permissions or allowlist do not parse; refusing the key");
        }
        CachedKey {
            record,
            permissions: permissions.unwrap_or_default(),
            ip_allowlist: ip_allowlist.unwrap_or_default(),
            usage,
            corrupt,
            fetched_at: std::time::Instant::now(),
            plan_rate_limit,
        }
    }
}
