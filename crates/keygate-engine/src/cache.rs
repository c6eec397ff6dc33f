//! The key cache: digest → key record, with negative entries for unknown digests.
//!
//! A fill races with invalidations: a verification can read a key from the store just
//! before a revocation commits and insert it just after the revocation invalidated the
//! entry. Every invalidation bumps `epoch`; a fill that sees the epoch moved since it asked
//! the store stores nothing, so a stale record is never served.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use keygate_core::ip::IpAllowlist;
use keygate_core::{Environment, KeyDigest, PermissionSet};
use keygate_store::{KeyRecord, Quota, RateLimit};

use crate::intern::Interner;
use crate::usage::KeyUsage;

/// What a key may do, parsed once: its permissions and IP allowlist as stored and parsed.
/// Many keys hold the same grants (presets), so equal ones are shared ([`crate::intern`]).
#[derive(Debug)]
pub(crate) struct Grants {
    permission_strings: Vec<String>,
    /// `permission_strings` joined with `,` (forward-auth's `X-Keygate-Permissions`), made
    /// once per shared set instead of once per request; `Bytes` so that a header value
    /// shares it without copying.
    permissions_joined: Bytes,
    allowlist_strings: Vec<String>,
    permissions: PermissionSet,
    ip_allowlist: IpAllowlist,
    /// Stored data that no longer parses: the key is refused rather than trusted.
    corrupt: bool,
}

impl PartialEq for Grants {
    fn eq(&self, other: &Grants) -> bool {
        self.permission_strings == other.permission_strings
            && self.allowlist_strings == other.allowlist_strings
    }
}

impl Eq for Grants {}

impl std::hash::Hash for Grants {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.permission_strings.hash(state);
        self.allowlist_strings.hash(state);
    }
}

static GRANTS: LazyLock<Interner<Grants>> = LazyLock::new(Interner::new);
static ACCOUNTS: LazyLock<Interner<str>> = LazyLock::new(Interner::new);
static EMPTY_META: LazyLock<serde_json::Value> =
    LazyLock::new(|| serde_json::Value::Object(serde_json::Map::new()));

impl Grants {
    /// The shared grants for these stored strings (`key_id`: for the log line when they do
    /// not parse).
    fn shared(permissions: Vec<String>, ip_allowlist: Vec<String>, key_id: &str) -> Arc<Grants> {
        let parsed_permissions = PermissionSet::parse(&permissions);
        let parsed_allowlist = IpAllowlist::parse(&ip_allowlist);
        let corrupt = parsed_permissions.is_err() || parsed_allowlist.is_err();
        if corrupt {
            tracing::error!(key_id = %key_id, "stored permissions or allowlist do not parse; refusing the key");
        }
        let grants = Grants::new(
            permissions,
            ip_allowlist,
            parsed_permissions.unwrap_or_default(),
            parsed_allowlist.unwrap_or_default(),
            corrupt,
        );
        GRANTS.intern(grants)
    }

    fn new(
        permission_strings: Vec<String>,
        allowlist_strings: Vec<String>,
        permissions: PermissionSet,
        ip_allowlist: IpAllowlist,
        corrupt: bool,
    ) -> Grants {
        Grants {
            permissions_joined: Bytes::from(permission_strings.join(",")),
            permission_strings,
            allowlist_strings,
            permissions,
            ip_allowlist,
            corrupt,
        }
    }
}

/// A key's rate limit (its own or its plan's) and quota.
#[derive(Clone, Debug)]
struct Limits {
    rate_limit: Option<RateLimit>,
    quota: Option<Quota>,
}

impl Limits {
    fn of(rate_limit: Option<RateLimit>, quota: Option<Quota>) -> Option<Box<Limits>> {
        (rate_limit.is_some() || quota.is_some()).then(|| Box::new(Limits { rate_limit, quota }))
    }
}

/// A key as the hot path needs it: parsed once, when it enters the cache, and holding only
/// what verification, limits, usage and the identity answers read (not the key's name,
/// recent addresses or other management fields: 1 M cached keys must fit in about 1 GB).
///
/// The fields every hit reads come first (`repr(C)`), so that they share cache lines with
/// the `Arc`'s counts, which a hit writes anyway.
#[derive(Debug)]
#[repr(C)]
pub struct CachedKey {
    /// When this copy was read from the store ([`crate::clock::coarse_monotonic_ns`]).
    pub(crate) fetched_at: u64,
    revoked_at: Option<i64>,
    expires_at: Option<i64>,
    /// `None` for a key with neither a rate limit nor a quota (most keys).
    limits: Option<Box<Limits>>,
    grants: Arc<Grants>,
    /// Usage and limiter state; shared by every cache generation of this key. Holds the
    /// key's id.
    pub(crate) usage: Arc<KeyUsage>,
    environment: Environment,
    account_id: Arc<str>,
    display_prefix: Box<str>,
    /// `None` for an empty object (most keys).
    meta: Option<Box<serde_json::Value>>,
    /// Set on the view of a key that a short-lived token presents (`tokens/verify.rs`):
    /// the token's `jti`. Never set on a cached key.
    token_id: Option<Box<str>>,
}

impl CachedKey {
    pub fn id(&self) -> &str {
        self.usage.key_id()
    }

    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The start of the key as shown to people (`kg_live_1a2b3c4d`).
    pub fn display_prefix(&self) -> &str {
        &self.display_prefix
    }

    /// The key's own rate limit, or its plan's.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.limits.as_ref().and_then(|l| l.rate_limit)
    }

    pub fn quota(&self) -> Option<Quota> {
        self.limits.as_ref().and_then(|l| l.quota)
    }

    /// The permissions as stored (canonical strings).
    pub fn permission_strings(&self) -> &[String] {
        &self.grants.permission_strings
    }

    /// The permissions as stored, joined with `,` (shared by every key with these grants).
    pub fn permissions_joined(&self) -> &Bytes {
        &self.grants.permissions_joined
    }

    pub fn permissions(&self) -> &PermissionSet {
        &self.grants.permissions
    }

    /// The IP allowlist as stored (canonical addresses and blocks).
    pub fn allowlist_strings(&self) -> &[String] {
        &self.grants.allowlist_strings
    }

    pub fn ip_allowlist(&self) -> &IpAllowlist {
        &self.grants.ip_allowlist
    }

    /// Stored data that no longer parses: the key is refused rather than trusted.
    pub(crate) fn corrupt(&self) -> bool {
        self.grants.corrupt
    }

    pub fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }

    /// May lie in the future: a rotation's grace period.
    pub fn revoked_at(&self) -> Option<i64> {
        self.revoked_at
    }

    /// The JSON object the operator attached.
    pub fn meta(&self) -> &serde_json::Value {
        self.meta.as_deref().unwrap_or(&EMPTY_META)
    }

    /// The token's id (`jti`) when this is a short-lived token's view of its key.
    pub fn token_id(&self) -> Option<&str> {
        self.token_id.as_deref()
    }
}

/// Digests are HMAC outputs: uniformly random and not chosen by a caller who lacks the
/// pepper, so 8 of their bytes are already a good hash. Saves a SipHash per lookup.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Slot(KeyDigest);

impl std::hash::Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0 .0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

#[derive(Clone, Copy, Default)]
struct DigestHash;

struct DigestHasher(u64);

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
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (see `Slot`); this keeps any other input well mixed.
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(buf);
        }
    }
}

/// Entries looked at to choose one to evict from a full shard.
const EVICTION_SAMPLE: usize = 8;
/// Most shards; each has its own lock.
const MAX_SHARDS: usize = 64;

/// A cached key and its usage cell, which every hit reads and writes. With both addresses
/// in the map's bucket, a hit fetches the key's memory and the cell's at the same time,
/// rather than the cell's only once the key's has arrived (with many keys cached, each is
/// a cache miss: the floor makes two, the bucket's control bytes and the bucket).
struct Entry {
    key: Arc<CachedKey>,
    usage: Arc<KeyUsage>,
}

impl Entry {
    fn new(key: Arc<CachedKey>) -> Entry {
        Entry {
            usage: key.usage.clone(),
            key,
        }
    }

    /// The key, after starting to fetch the lines of the key and of its usage cell that a
    /// verification reads. Plain loads, made before the atomic increment of the key's
    /// count, which waits for them: the two misses overlap instead of following each other.
    fn hit(&self) -> Arc<CachedKey> {
        std::hint::black_box((self.key.fetched_at, self.usage.last_used()));
        self.key.clone()
    }
}

/// One part of the cache: known keys and unknown digests (with when they were found
/// unknown), behind one lock.
#[derive(Default)]
struct Shard {
    keys: HashMap<Slot, Entry, DigestHash>,
    /// Digest → when it was found unknown (coarse monotonic ns).
    unknown: HashMap<Slot, u64, DigestHash>,
}

/// Keeps a shard's lock on a cache line of its own, so that two cores reading different
/// shards do not write to the same line.
#[repr(align(128))]
struct Padded(RwLock<Shard>);

/// The key cache: digest → key, sharded `HashMap`s behind `RwLock`s, bounded per shard.
///
/// A hit is one read lock, one probe and an `Arc` clone: no clock, no bookkeeping (the
/// engine decides with the time it already has whether an entry is fresh). A full shard
/// evicts, among a few entries, the one read from the store longest ago. Entries are never
/// served past what the engine allows (TTL, stale-if-error); they stay until evicted,
/// replaced or invalidated, so memory is bounded by the capacity, not by time.
pub(crate) struct KeyCache {
    shards: Box<[Padded]>,
    /// `shards.len() - 1` (a power of two minus one).
    mask: usize,
    keys_per_shard: usize,
    unknown_per_shard: usize,
    negative_ttl_ns: u64,
    epoch: AtomicU64,
}

/// A marker taken before reading the store; see the module comment.
pub(crate) struct FillTicket(u64);

pub(crate) enum Lookup {
    Hit(Arc<CachedKey>),
    Unknown,
    Miss,
}

fn read(shard: &Padded) -> RwLockReadGuard<'_, Shard> {
    shard.0.read().unwrap_or_else(|p| p.into_inner())
}

fn write(shard: &Padded) -> RwLockWriteGuard<'_, Shard> {
    shard.0.write().unwrap_or_else(|p| p.into_inner())
}

/// Makes room for one more entry in `map` (at most `cap`): the one stored longest ago among
/// a few goes (`stored_at`: coarse monotonic ns).
fn make_room<V>(map: &mut HashMap<Slot, V, DigestHash>, cap: usize, stored_at: impl Fn(&V) -> u64) {
    while map.len() >= cap.max(1) {
        let victim = map
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, v)| stored_at(v))
            .map(|(k, _)| *k);
        match victim {
            Some(k) => map.remove(&k),
            None => return,
        };
    }
}

impl KeyCache {
    /// At most about `capacity` keys and as many unknown digests (up to 100 000), the
    /// latter remembered for `negative_ttl`.
    pub fn new(capacity: u64, negative_ttl: Duration) -> KeyCache {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        // About 1 000 entries per shard at least: small caches keep their exact bound.
        let shards = (capacity / 1024)
            .clamp(1, MAX_SHARDS)
            .next_power_of_two()
            .min(MAX_SHARDS);
        let unknown = capacity.clamp(1, 100_000);
        KeyCache {
            shards: (0..shards)
                .map(|_| Padded(RwLock::new(Shard::default())))
                .collect(),
            mask: shards - 1,
            keys_per_shard: capacity.div_ceil(shards),
            unknown_per_shard: unknown.div_ceil(shards),
            negative_ttl_ns: u64::try_from(negative_ttl.as_nanos()).unwrap_or(u64::MAX),
            epoch: AtomicU64::new(0),
        }
    }

    fn shard(&self, digest: &KeyDigest) -> &Padded {
        // Byte 8 onwards: independent of the bytes the in-shard hash uses.
        &self.shards[usize::from(digest.0[8]) & self.mask]
    }

    /// What the cache knows of `digest` at `now` (coarse monotonic ns). An unknown digest
    /// older than the negative TTL is a miss; whether a key is fresh enough is for the
    /// caller to decide.
    pub fn get(&self, digest: &KeyDigest, now: u64) -> Lookup {
        let shard = read(self.shard(digest));
        let slot = Slot(*digest);
        if let Some(entry) = shard.keys.get(&slot) {
            return Lookup::Hit(entry.hit());
        }
        match shard.unknown.get(&slot) {
            Some(at) if now.saturating_sub(*at) <= self.negative_ttl_ns => Lookup::Unknown,
            _ => Lookup::Miss,
        }
    }

    pub fn ticket(&self) -> FillTicket {
        FillTicket(self.epoch.load(Ordering::SeqCst))
    }

    /// Stores what the store answered, unless an invalidation came after `ticket` was
    /// taken. The epoch is compared under the shard's write lock and `invalidate` bumps it
    /// before taking that lock, so either this fill sees the new epoch and stores nothing,
    /// or the invalidation removes the entry after it: a stale fill is never visible once
    /// `invalidate` has returned.
    pub fn fill(&self, ticket: FillTicket, digest: KeyDigest, key: Option<Arc<CachedKey>>) {
        let now = crate::clock::coarse_monotonic_ns();
        let mut shard = write(self.shard(&digest));
        if self.epoch.load(Ordering::SeqCst) != ticket.0 {
            return;
        }
        let shard = &mut *shard;
        let slot = Slot(digest);
        match key {
            Some(k) => {
                shard.unknown.remove(&slot);
                if !shard.keys.contains_key(&slot) {
                    make_room(&mut shard.keys, self.keys_per_shard, |e| e.key.fetched_at);
                }
                shard.keys.insert(slot, Entry::new(k));
            }
            None => {
                shard.keys.remove(&slot);
                if self.negative_ttl_ns == 0 {
                    // Negative caching is off (the coarse clock would otherwise keep an
                    // entry for up to one tick).
                    return;
                }
                if !shard.unknown.contains_key(&slot) {
                    make_room(&mut shard.unknown, self.unknown_per_shard, |at| *at);
                }
                shard.unknown.insert(slot, now);
            }
        }
    }

    /// Forgets `digest` on this node. Call after the change is committed.
    pub fn invalidate(&self, digest: &KeyDigest) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut shard = write(self.shard(digest));
        let slot = Slot(*digest);
        shard.keys.remove(&slot);
        shard.unknown.remove(&slot);
    }

    /// Forgets every digest remembered as unknown (keys were imported: one of them may be
    /// a credential tried before).
    pub fn invalidate_unknown(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for shard in self.shards.iter() {
            write(shard).unknown = HashMap::default();
        }
    }

    /// Forgets everything (changes may have been missed).
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for shard in self.shards.iter() {
            let mut shard = write(shard);
            shard.keys = HashMap::default();
            shard.unknown = HashMap::default();
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.shards.iter().map(|s| read(s).keys.len() as u64).sum()
    }
}

impl CachedKey {
    /// A key as a keygate server described it in a `/v1/verify` answer, for a cache outside
    /// the server (keygate-tower's remote mode): `record` holds what the answer says (id,
    /// account, environment, permissions, expiry, meta) and leaves the rest empty.
    pub fn described(record: KeyRecord) -> CachedKey {
        let usage = Arc::new(KeyUsage::new(&record));
        CachedKey::from_record(record, usage, None)
    }

    /// This described key as a short-lived token with id `token_id` presents it (the
    /// server's `/v1/verify` answer names the token).
    pub fn presented_by_token(mut self, token_id: &str) -> CachedKey {
        self.token_id = Some(token_id.into());
        self
    }

    pub(crate) fn from_record(
        record: KeyRecord,
        usage: Arc<KeyUsage>,
        plan_rate_limit: Option<RateLimit>,
    ) -> CachedKey {
        let meta = match record.meta {
            serde_json::Value::Object(map) if map.is_empty() => None,
            meta => Some(Box::new(meta)),
        };
        CachedKey {
            fetched_at: crate::clock::coarse_monotonic_ns(),
            revoked_at: record.revoked_at,
            expires_at: record.expires_at,
            limits: Limits::of(record.rate_limit.or(plan_rate_limit), record.quota),
            grants: Grants::shared(record.permissions, record.ip_allowlist, &record.id),
            usage,
            environment: record.environment,
            account_id: ACCOUNTS.intern_str(&record.account_id),
            display_prefix: record.display_prefix.into_boxed_str(),
            meta,
            token_id: None,
        }
    }

    /// This key as a short-lived token presents it: the token's `permissions` (scope,
    /// stored and parsed), the earlier of the two ends, the token's id. It shares the key's
    /// usage cell, so limits, quota and counts are the key's.
    pub(crate) fn token_view(
        &self,
        permissions: PermissionSet,
        expires_at: i64,
        token_id: &str,
    ) -> CachedKey {
        let grants = Grants::new(
            permissions.to_strings(),
            self.grants.allowlist_strings.clone(),
            permissions,
            self.grants.ip_allowlist.clone(),
            self.grants.corrupt,
        );
        CachedKey {
            fetched_at: self.fetched_at,
            revoked_at: self.revoked_at,
            expires_at: Some(
                self.expires_at
                    .map_or(expires_at, |end| end.min(expires_at)),
            ),
            limits: self.limits.clone(),
            grants: GRANTS.intern(grants),
            usage: self.usage.clone(),
            environment: self.environment,
            account_id: self.account_id.clone(),
            display_prefix: self.display_prefix.clone(),
            meta: self.meta.clone(),
            token_id: Some(token_id.into()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use keygate_core::Environment;

    pub(crate) fn record(i: u8) -> KeyRecord {
        KeyRecord {
            id: format!("key_{i}"),
            account_id: "acct_1".into(),
            name: "k".into(),
            display_prefix: "kg_live_00000000".into(),
            digest: digest(i),
            environment: Environment::Live,
            permissions: vec!["*.read".into()],
            ip_allowlist: vec![],
            rate_limit: None,
            quota: None,
            quota_used: 0,
            quota_refilled_at: None,
            meta: serde_json::json!({}),
            created_at: 0,
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
            rotated_from: None,
            recent_ips: vec![],
            leaked_at: None,
            retire_when_idle_ms: None,
        }
    }

    fn digest(i: u8) -> KeyDigest {
        // Spread over the bytes the shard and the hash use, like an HMAC output.
        let mut d = [i; 32];
        d[0] = i.wrapping_mul(151);
        d[8] = i.wrapping_mul(97);
        KeyDigest(d)
    }

    fn key(i: u8) -> Arc<CachedKey> {
        let r = record(i);
        let usage = Arc::new(KeyUsage::new(&r));
        Arc::new(CachedKey::from_record(r, usage, None))
    }

    fn now() -> u64 {
        crate::clock::coarse_monotonic_ns()
    }

    #[test]
    fn hits_unknowns_and_misses() {
        let cache = KeyCache::new(100, Duration::from_secs(10));
        assert!(matches!(cache.get(&digest(1), now()), Lookup::Miss));
        cache.fill(cache.ticket(), digest(1), Some(key(1)));
        cache.fill(cache.ticket(), digest(2), None);
        assert!(matches!(cache.get(&digest(1), now()), Lookup::Hit(k) if k.id() == "key_1"));
        assert!(matches!(cache.get(&digest(2), now()), Lookup::Unknown));
        // An unknown digest is forgotten after the negative TTL.
        let later = now() + Duration::from_secs(11).as_nanos() as u64;
        assert!(matches!(cache.get(&digest(2), later), Lookup::Miss));
        // A key found later replaces its negative entry.
        cache.fill(cache.ticket(), digest(2), Some(key(2)));
        assert!(matches!(cache.get(&digest(2), now()), Lookup::Hit(_)));
        assert_eq!(cache.entry_count(), 2);
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_not_stored() {
        let cache = KeyCache::new(100, Duration::from_secs(10));
        cache.fill(cache.ticket(), digest(1), Some(key(1)));
        let ticket = cache.ticket();
        // The store is read (the key as it was), then the key is revoked and invalidated,
        // then the fill arrives.
        cache.invalidate(&digest(1));
        cache.fill(ticket, digest(1), Some(key(1)));
        assert!(matches!(cache.get(&digest(1), now()), Lookup::Miss));
        let ticket = cache.ticket();
        cache.invalidate_all();
        cache.fill(ticket, digest(3), None);
        assert!(matches!(cache.get(&digest(3), now()), Lookup::Miss));
        // A fill with a fresh ticket is stored.
        cache.fill(cache.ticket(), digest(1), Some(key(1)));
        assert!(matches!(cache.get(&digest(1), now()), Lookup::Hit(_)));
    }

    #[test]
    fn fills_and_invalidations_from_many_threads_never_leave_a_stale_entry() {
        // Each round: a filler takes a ticket ("reads the store") and fills while another
        // thread invalidates the same digest. Whatever the interleaving, once both are
        // done the entry must not be there: either the fill saw the epoch move, or the
        // invalidation came after the fill and removed it.
        let cache = Arc::new(KeyCache::new(1000, Duration::from_secs(10)));
        for round in 0..2000u32 {
            let d = digest((round % 200) as u8);
            let ticket = cache.ticket();
            let c = cache.clone();
            let invalidator = std::thread::spawn(move || c.invalidate(&d));
            cache.fill(ticket, d, Some(key(1)));
            invalidator.join().unwrap();
            assert!(
                matches!(cache.get(&d, now()), Lookup::Miss),
                "round {round}"
            );
        }
    }

    #[test]
    fn the_capacity_bounds_the_entries() {
        let cache = KeyCache::new(50, Duration::from_secs(10));
        for i in 0..=255u8 {
            cache.fill(cache.ticket(), digest(i), Some(key(i)));
            cache.fill(cache.ticket(), digest(i).with_last(1), None);
        }
        assert!(cache.entry_count() <= 50, "{}", cache.entry_count());
        let unknown: usize = cache.shards.iter().map(|s| read(s).unknown.len()).sum();
        assert!(unknown <= 50, "{unknown}");
        // The newest fill is still there.
        assert!(matches!(cache.get(&digest(255), now()), Lookup::Hit(_)));
        let big = KeyCache::new(200_000, Duration::from_secs(10));
        assert_eq!(big.shards.len(), MAX_SHARDS);
        assert!(big.keys_per_shard * MAX_SHARDS >= 200_000);
    }

    /// Issue 13: 1 M cached keys must fit in about 1 GB. Keys with the same grants and
    /// account share one copy of them; the cached copy is small and keeps no management
    /// fields; what the identity answers need is still there.
    #[test]
    fn cached_keys_are_small_and_share_their_grants() {
        let a = key(1);
        let b = key(2);
        assert!(Arc::ptr_eq(&a.grants, &b.grants));
        assert!(Arc::ptr_eq(&a.account_id, &b.account_id));
        assert!(
            std::mem::size_of::<CachedKey>() <= 160,
            "{}",
            std::mem::size_of::<CachedKey>()
        );
        assert!(a.meta.is_none(), "an empty meta takes no allocation");
        assert_eq!(a.meta(), &serde_json::json!({}));
        assert_eq!(a.permission_strings(), ["*.read"]);
        assert_eq!((a.id(), a.account_id()), ("key_1", "acct_1"));
        // Different grants are not shared, and a meta is kept as given.
        let mut r = record(3);
        r.permissions = vec!["invoices.read".into()];
        r.meta = serde_json::json!({"team": "billing"});
        let usage = Arc::new(KeyUsage::new(&r));
        let c = CachedKey::from_record(r, usage, None);
        assert!(!Arc::ptr_eq(&a.grants, &c.grants));
        assert_eq!(c.meta()["team"], "billing");
        assert!(c
            .permissions()
            .allows(&keygate_core::Permission::parse_concrete("invoices.read").unwrap()));
    }

    #[test]
    fn without_a_negative_ttl_unknown_digests_are_not_kept() {
        let cache = KeyCache::new(100, Duration::ZERO);
        cache.fill(cache.ticket(), digest(1), None);
        assert!(matches!(cache.get(&digest(1), now()), Lookup::Miss));
    }

    trait WithLast {
        fn with_last(self, b: u8) -> KeyDigest;
    }

    impl WithLast for KeyDigest {
        fn with_last(mut self, b: u8) -> KeyDigest {
            self.0[31] ^= b;
            self.0[1] ^= 0x55;
            self
        }
    }
}
