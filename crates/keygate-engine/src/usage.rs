//! Usage counted in memory on the hot path and written in batches: `last_used_at`, the
//! quota spent, verifications per hour and outcome, and the latest client addresses. A
//! crash loses at most one flush interval of usage, never a key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use keygate_core::{Outcome, Permission};
use keygate_store::{KeyRecord, Quota, Refill, SeenIp, Store, UsageCount, UsageUpdate};

use crate::permission_usage::{self, PermissionCounters};
use crate::ratelimit::Gcra;
use crate::Result;

/// Milliseconds in one usage bucket.
pub const HOUR_MS: i64 = 3_600_000;
/// Client addresses remembered per key.
pub const RECENT_IPS: usize = 10;
/// Outcomes counted per key (`Outcome::ALL`).
const OUTCOMES: usize = Outcome::ALL.len();

/// Where `outcome` is in `Outcome::ALL`.
pub(crate) fn outcome_index(outcome: Outcome) -> usize {
    Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0)
}

/// An IPv4 address as a non-zero number (0 stands for "not an IPv4 address").
fn v4_code(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => (1 << 32) | u64::from(u32::from(a)),
        IpAddr::V6(_) => 0,
    }
}

/// Adds `count` to the (bucket, outcome) entry of `counts`.
fn add(counts: &mut Vec<(i64, &'static str, i64)>, bucket: i64, outcome: &'static str, count: i64) {
    match counts
        .iter_mut()
        .find(|(b, o, _)| *b == bucket && *o == outcome)
    {
        Some(entry) => entry.2 += count,
        None => counts.push((bucket, outcome, count)),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What was counted for one key since the last flush.
#[derive(Debug, Default)]
struct Pending {
    /// (hour bucket, outcome detail) → count.
    counts: Vec<(i64, &'static str, i64)>,
    /// Newest first; `changed` says whether it differs from what was flushed.
    recent_ips: Vec<(IpAddr, i64)>,
    ips_changed: bool,
    /// Allowed requests by hour and the permission they needed.
    permissions: permission_usage::Pending,
}

fn seen(ips: &[(IpAddr, i64)]) -> Vec<SeenIp> {
    ips.iter()
        .map(|(ip, at)| SeenIp {
            ip: ip.to_string(),
            last_seen: *at,
        })
        .collect()
}

/// Per-key counters and limiter state.
///
/// Most verifications change only atomics here: the count of their outcome in the current
/// hour and, when they come from the same IPv4 address as the one before, that address's
/// time. A new hour, a new address or an IPv6 address take the lock.
///
/// The fields a verification reads or writes come first (`repr(C)`): most verifications
/// touch one or two cache lines of the cell.
#[derive(Debug)]
#[repr(C)]
pub struct KeyUsage {
    /// Recorded since the last eviction pass ([`UsageRecorder::evict_idle`]).
    touched: AtomicBool,
    dirty: AtomicBool,
    refill_dirty: AtomicBool,
    last_used: AtomicI64,
    /// The hour (bucket start, unix ms) that `hour_counts` count for; 0 before any.
    hour: AtomicI64,
    /// Verifications in `hour` by outcome (`Outcome::ALL` order, `valid` first), not yet
    /// flushed. A count racing the change of hour may land in the new hour.
    hour_counts: [AtomicI64; OUTCOMES],
    /// The newest of `pending.recent_ips` as [`v4_code`] (0: none or IPv6), and the time
    /// it was last seen on the lock-free path (folded into `recent_ips` under the lock).
    newest_v4: AtomicU64,
    newest_seen: AtomicI64,
    pub(crate) limiter: Gcra,
    /// Quota spent, including what is not yet flushed.
    pub(crate) quota_used: AtomicI64,
    /// What the store already has of `quota_used`.
    flushed_quota: AtomicI64,
    /// When the quota last refilled (unix ms); whether that is flushed is `refill_dirty`.
    quota_refilled_at: AtomicI64,
    /// Allowed requests in `hour` by the permission they needed; made on first such request.
    permissions: OnceLock<Box<PermissionCounters>>,
    /// Shared with the key's cache entries and the recorder's index.
    key_id: Arc<str>,
    pending: Mutex<Pending>,
}

impl KeyUsage {
    pub fn new(record: &KeyRecord) -> KeyUsage {
        KeyUsage::with_id(record, Arc::from(record.id.as_str()))
    }

    fn with_id(record: &KeyRecord, key_id: Arc<str>) -> KeyUsage {
        let recent_ips: Vec<(IpAddr, i64)> = record
            .recent_ips
            .iter()
            .filter_map(|s| Some((s.ip.parse().ok()?, s.last_seen)))
            .collect();
        let (newest_v4, newest_seen) = recent_ips
            .first()
            .map_or((0, 0), |(ip, at)| (v4_code(*ip), *at));
        KeyUsage {
            key_id,
            last_used: AtomicI64::new(0),
            hour: AtomicI64::new(0),
            hour_counts: Default::default(),
            permissions: OnceLock::new(),
            newest_v4: AtomicU64::new(newest_v4),
            newest_seen: AtomicI64::new(newest_seen),
            quota_used: AtomicI64::new(record.quota_used),
            flushed_quota: AtomicI64::new(record.quota_used),
            quota_refilled_at: AtomicI64::new(
                record.quota_refilled_at.unwrap_or(record.created_at),
            ),
            refill_dirty: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            touched: AtomicBool::new(true),
            pending: Mutex::new(Pending {
                recent_ips,
                ..Pending::default()
            }),
            limiter: Gcra::default(),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// When the key was last used successfully on this node (unix ms; 0: not since start).
    pub fn last_used(&self) -> i64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Spends one unit of `quota` at `now`, after giving back what refills are due; false
    /// when it is spent. Exact on one node.
    pub fn try_spend(&self, quota: Quota, now: i64) -> bool {
        if let Some(refill) = quota.refill {
            self.refill(refill, now);
        }
        let limit = i64::try_from(quota.requests).unwrap_or(i64::MAX);
        self.quota_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < limit).then_some(used + 1)
            })
            .is_ok()
    }

    fn refill(&self, refill: Refill, now: i64) {
        let every = i64::try_from(refill.every.saturating_mul(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let amount = i64::try_from(refill.amount).unwrap_or(i64::MAX);
        let at = self.quota_refilled_at.load(Ordering::Acquire);
        let periods = (now - at) / every;
        if periods <= 0 {
            return;
        }
        // One thread wins the period; the others see the new time and give back nothing.
        if self
            .quota_refilled_at
            .compare_exchange(
                at,
                at + periods * every,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            let back = periods.saturating_mul(amount);
            let _ = self
                .quota_used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    Some(used.saturating_sub(back).max(0))
                });
            self.refill_dirty.store(true, Ordering::Release);
        }
    }

    /// Takes in what the store says after a fresh read: other nodes' spending arrives this
    /// way (this node's unflushed spending is kept on top).
    pub(crate) fn reconcile(&self, record: &KeyRecord) {
        let stored = record.quota_used;
        let flushed = self.flushed_quota.swap(stored, Ordering::AcqRel);
        let _ = self
            .quota_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(stored + (used - flushed))
            });
        if let Some(at) = record.quota_refilled_at {
            self.quota_refilled_at.fetch_max(at, Ordering::AcqRel);
        }
    }

    /// Takes in Redis's answer to a spend of this key's quota (quotas shared between nodes).
    /// `quota_used` then moves by this node's own share only (+1 when allowed, minus what
    /// a refill Redis applied in this call gave back), so the flush adds to the store what
    /// this node changed and nodes never count one another's spending twice.
    pub(crate) fn follow_shared_spend(&self, allowed: bool, given_back: i64, refilled_at: i64) {
        let change = i64::from(allowed) - given_back;
        if change != 0 {
            self.quota_used.fetch_add(change, Ordering::AcqRel);
        }
        if self
            .quota_refilled_at
            .fetch_max(refilled_at, Ordering::AcqRel)
            < refilled_at
        {
            self.refill_dirty.store(true, Ordering::Release);
        }
    }

    /// Where the quota stands as far as this node knows: the store's count when last read,
    /// with this node's unflushed spending on top, and the refill clock.
    pub(crate) fn quota_state(&self) -> crate::shared_limit::QuotaState {
        crate::shared_limit::QuotaState {
            used: self.quota_used.load(Ordering::Acquire).max(0),
            refilled_at: self.refilled_at(),
        }
    }

    /// Restarts the refill clock (a new quota was set).
    pub(crate) fn restart_refill(&self, at: i64) {
        self.quota_refilled_at.store(at, Ordering::Release);
    }

    /// When the quota last refilled (or its refill clock started).
    pub(crate) fn refilled_at(&self) -> i64 {
        self.quota_refilled_at.load(Ordering::Acquire)
    }

    /// Counts not yet flushed with `from <= bucket < to`.
    pub(crate) fn unflushed_counts(&self, from: i64, to: i64) -> Vec<UsageCount> {
        let p = lock(&self.pending);
        let hour = self.hour.load(Ordering::Acquire);
        let current = self
            .hour_counts
            .iter()
            .enumerate()
            .map(|(i, c)| (hour, Outcome::ALL[i].detail(), c.load(Ordering::Acquire)));
        p.counts
            .iter()
            .copied()
            .chain(current)
            .filter(|(b, _, count)| *count != 0 && (from..to).contains(b))
            .map(|(bucket, outcome, count)| UsageCount {
                bucket,
                outcome: outcome.to_owned(),
                count,
            })
            .collect()
    }

    /// Permission counts not yet flushed, by day.
    pub(crate) fn unflushed_permissions(&self) -> Vec<keygate_store::PermissionCount> {
        let p = lock(&self.pending);
        let mut all = p.permissions.clone();
        if let Some(counters) = self.permissions.get() {
            all.extend(counters.peek(self.hour.load(Ordering::Acquire)));
        }
        permission_usage::to_rows(&all)
    }

    pub(crate) fn recent_ips(&self) -> Vec<SeenIp> {
        let mut p = lock(&self.pending);
        self.fold_newest_seen(&mut p);
        seen(&p.recent_ips)
    }

    /// Is everything counted here already in the store (nothing to flush)?
    fn is_flushed(&self) -> bool {
        if self.dirty.load(Ordering::Acquire)
            || self.refill_dirty.load(Ordering::Acquire)
            || self.quota_used.load(Ordering::Acquire) != self.flushed_quota.load(Ordering::Acquire)
            || self
                .hour_counts
                .iter()
                .any(|c| c.load(Ordering::Acquire) != 0)
            || self.permissions.get().is_some_and(|c| c.has_counts())
        {
            return false;
        }
        let p = lock(&self.pending);
        p.counts.is_empty() && p.permissions.is_empty() && !p.ips_changed
    }

    /// Moves what `hour_counts` hold into `p.counts` under `hour` (call with the lock).
    fn take_hour_counts(&self, p: &mut Pending, hour: i64) {
        for (i, counter) in self.hour_counts.iter().enumerate() {
            let count = counter.swap(0, Ordering::AcqRel);
            if count != 0 {
                add(&mut p.counts, hour, Outcome::ALL[i].detail(), count);
            }
        }
        if let Some(counters) = self.permissions.get() {
            counters.take(hour, &mut p.permissions);
        }
    }

    /// Gives the newest address the time the lock-free path saw it (call with the lock).
    fn fold_newest_seen(&self, p: &mut Pending) {
        let seen = self.newest_seen.load(Ordering::Relaxed);
        if let Some(first) = p.recent_ips.first_mut() {
            first.1 = first.1.max(seen);
        }
    }

    /// Counts one verification; `used`: the permission an allowed request needed.
    fn record(&self, outcome: Outcome, used: Option<&Permission>, ip: Option<IpAddr>, now: i64) {
        let bucket = now - now.rem_euclid(HOUR_MS);
        let index = outcome_index(outcome);
        // AcqRel: pairs with `take_hour_counts`'s swap, so that a count the flush does not
        // take is followed by a `dirty` check that sees the flush's reset (`UsageRecorder`).
        if self.hour.load(Ordering::Acquire) == bucket {
            self.hour_counts[index].fetch_add(1, Ordering::AcqRel);
            if let Some(permission) = used {
                if !self.permission_counters().bump(permission, now) {
                    let mut p = lock(&self.pending);
                    permission_usage::add(&mut p.permissions, bucket, permission, 1, now);
                }
            }
        } else {
            let mut p = lock(&self.pending);
            let hour = self.hour.load(Ordering::Acquire);
            if bucket > hour {
                // A new hour: what the counters hold belongs to the one before.
                self.take_hour_counts(&mut p, hour);
                self.hour.store(bucket, Ordering::Release);
            }
            if bucket >= hour {
                self.hour_counts[index].fetch_add(1, Ordering::AcqRel);
            } else {
                // An earlier hour (the clock went back): counted as such.
                add(&mut p.counts, bucket, outcome.detail(), 1);
            }
            if let Some(permission) = used {
                if bucket < hour || !self.permission_counters().bump(permission, now) {
                    permission_usage::add(&mut p.permissions, bucket, permission, 1, now);
                }
            }
        }
        if let Some(ip) = ip {
            self.record_ip(ip, now);
        }
    }

    /// Counts a management call of a self-service key that needed `permission` (checked by
    /// the engine, not by verification). The verification that authenticated the call
    /// queued this cell for the next flush; should a flush slip in between, the count waits
    /// in the cell (which is then not evicted) for the key's next use.
    pub(crate) fn count_permission(&self, permission: &Permission, now: i64) {
        let bucket = now - now.rem_euclid(HOUR_MS);
        if self.hour.load(Ordering::Acquire) == bucket
            && self.permission_counters().bump(permission, now)
        {
            return;
        }
        let mut p = lock(&self.pending);
        permission_usage::add(&mut p.permissions, bucket, permission, 1, now);
    }

    fn permission_counters(&self) -> &PermissionCounters {
        self.permissions.get_or_init(Box::default)
    }

    fn record_ip(&self, ip: IpAddr, now: i64) {
        let code = v4_code(ip);
        if code != 0 && self.newest_v4.load(Ordering::Acquire) == code {
            // Already the newest: only the time moves; written with the next change.
            if self.newest_seen.load(Ordering::Relaxed) < now {
                self.newest_seen.fetch_max(now, Ordering::Relaxed);
            }
            return;
        }
        let mut p = lock(&self.pending);
        self.fold_newest_seen(&mut p);
        match p.recent_ips.iter().position(|s| s.0 == ip) {
            Some(0) => p.recent_ips[0].1 = p.recent_ips[0].1.max(now),
            found => {
                if let Some(i) = found {
                    p.recent_ips.remove(i);
                }
                // Most keys are used from one address: room for one, not the default four.
                if p.recent_ips.capacity() == 0 {
                    p.recent_ips.reserve_exact(1);
                }
                p.recent_ips.insert(0, (ip, now));
                p.recent_ips.truncate(RECENT_IPS);
                p.ips_changed = true;
            }
        }
        self.newest_seen.store(p.recent_ips[0].1, Ordering::Relaxed);
        self.newest_v4
            .store(v4_code(p.recent_ips[0].0), Ordering::Release);
    }
}

/// Keys used since the last flush, and the usage state of every key in use: a cell nobody
/// else holds and idle since the previous eviction pass is dropped ([`Self::evict_idle`]),
/// so a node that sees many distinct keys does not keep a cell for each forever.
#[derive(Default)]
pub(crate) struct UsageRecorder {
    dirty: Mutex<Vec<Arc<KeyUsage>>>,
    /// By key id (the cell's own `key_id`, shared).
    cells: Mutex<HashMap<Arc<str>, Arc<KeyUsage>>>,
}

impl UsageRecorder {
    /// The usage cell of a key, created from the stored state on first sight. Called on
    /// cache fills and management reads, not per request.
    pub fn cell(&self, record: &KeyRecord) -> Arc<KeyUsage> {
        let mut cells = lock(&self.cells);
        if let Some(cell) = cells.get(record.id.as_str()) {
            return cell.clone();
        }
        let id: Arc<str> = Arc::from(record.id.as_str());
        let cell = Arc::new(KeyUsage::with_id(record, id.clone()));
        cells.insert(id, cell.clone());
        cell
    }

    /// Counts one verification of a known key; a valid one also moves `last_used_at`.
    /// `used`: the permission an allowed request needed (`*` for one no route maps).
    pub fn record(
        &self,
        usage: &Arc<KeyUsage>,
        outcome: Outcome,
        used: Option<&Permission>,
        ip: Option<IpAddr>,
        now: i64,
    ) {
        // Plain loads first: under load the time rarely moves within a millisecond and the
        // key is already marked, so most calls write neither atomic.
        if !usage.touched.load(Ordering::Relaxed) {
            usage.touched.store(true, Ordering::Relaxed);
        }
        if outcome.is_valid() && usage.last_used.load(Ordering::Relaxed) < now {
            usage.last_used.fetch_max(now, Ordering::Relaxed);
        }
        usage.record(outcome, used, ip, now);
        // `flush` clears the mark before it takes the counts, so a count made after that
        // take sees the mark cleared (see `KeyUsage::record` and `flush`).
        if !usage.dirty.load(Ordering::Acquire) && !usage.dirty.swap(true, Ordering::AcqRel) {
            lock(&self.dirty).push(usage.clone());
        }
    }

    /// Drops the cells that are idle: held by nothing else (no cache entry, no flush in
    /// progress), not recorded to since the previous pass, with every count flushed and the
    /// rate limiter at rest at `now_ns`. Run after each flush, so a cell goes after one idle
    /// flush interval. A dropped cell is made again from the stored record on next use,
    /// which then holds everything it held. Returns how many cells were dropped.
    pub fn evict_idle(&self, now_ns: u64) -> usize {
        let mut cells = lock(&self.cells);
        let before = cells.len();
        cells.retain(|_, cell| {
            // Cleared on every cell, so that the next pass sees only newer use.
            let touched = cell.touched.swap(false, Ordering::AcqRel);
            // Under the `cells` lock a cell held only here cannot be handed out meanwhile.
            Arc::strong_count(cell) > 1
                || touched
                || !cell.limiter.is_at_rest(now_ns)
                || !cell.is_flushed()
        });
        before - cells.len()
    }

    /// The last valid use of key `id` this node counted, flushed or not; `None` when it
    /// has no cell or no use. Looks without making a cell.
    pub fn last_used_of(&self, id: &str) -> Option<i64> {
        lock(&self.cells)
            .get(id)
            .map(|cell| cell.last_used())
            .filter(|&t| t > 0)
    }

    /// How many usage cells are kept.
    pub fn cell_count(&self) -> usize {
        lock(&self.cells).len()
    }

    /// Writes the usage counted since the last flush, [`KEYS_PER_WRITE`] keys per store
    /// transaction, with `pace` between them. A transaction that fails stops the flush: its
    /// keys and those not tried yet keep their counts for the next flush (the transactions
    /// before it are in the store).
    pub async fn flush(&self, store: &dyn Store, pace: Pace) -> Flushed {
        self.flush_in(store, pace, KEYS_PER_WRITE).await
    }

    /// [`Self::flush`] with `keys_per_write` keys per transaction.
    async fn flush_in(&self, store: &dyn Store, pace: Pace, keys_per_write: usize) -> Flushed {
        let pending = std::mem::take(&mut *lock(&self.dirty));
        let mut flushed = Flushed::default();
        let mut chunks = pending.chunks(keys_per_write.max(1)).peekable();
        while let Some(chunk) = chunks.next() {
            let started = std::time::Instant::now();
            let result = self.write_chunk(store, chunk).await;
            let took = started.elapsed();
            flushed.busy += took;
            if let Err(e) = result {
                // Still marked dirty (their marks were not cleared): queued again as they are.
                lock(&self.dirty).extend(chunks.flatten().cloned());
                flushed.error = Some(e);
                break;
            }
            flushed.written += chunk.len();
            if chunks.peek().is_some() {
                pace.pause().await;
            }
        }
        flushed
    }

    /// Writes one transaction's worth of keys; on failure their counts are put back and
    /// they are queued for the next flush.
    async fn write_chunk(&self, store: &dyn Store, chunk: &[Arc<KeyUsage>]) -> Result<()> {
        let mut taken = Vec::with_capacity(chunk.len());
        let mut updates = Vec::with_capacity(chunk.len());
        for u in chunk {
            // Cleared with a swap before the counters are taken: a verification whose count
            // is not taken below then sees the mark cleared and queues the key again, and
            // everything a verification did before a count that is taken (quota spent, last
            // use) is seen by the loads after the take.
            u.dirty.swap(false, Ordering::AcqRel);
            let mut p = lock(&u.pending);
            u.take_hour_counts(&mut p, u.hour.load(Ordering::Acquire));
            u.fold_newest_seen(&mut p);
            let used = u.quota_used.load(Ordering::Acquire);
            let counts = std::mem::take(&mut p.counts);
            let permissions = std::mem::take(&mut p.permissions);
            let ips_changed = std::mem::take(&mut p.ips_changed);
            let refilled = u.refill_dirty.swap(false, Ordering::AcqRel);
            updates.push(UsageUpdate {
                key_id: u.key_id.to_string(),
                last_used_at: u.last_used.load(Ordering::Relaxed),
                quota_used_delta: used - u.flushed_quota.load(Ordering::Acquire),
                quota_refilled_at: refilled.then(|| u.quota_refilled_at.load(Ordering::Acquire)),
                counts: counts
                    .iter()
                    .map(|(bucket, outcome, count)| UsageCount {
                        bucket: *bucket,
                        outcome: (*outcome).to_owned(),
                        count: *count,
                    })
                    .collect(),
                recent_ips: ips_changed.then(|| seen(&p.recent_ips)),
                permissions: permission_usage::to_rows(&permissions),
            });
            taken.push((used, counts, permissions, ips_changed, refilled));
        }
        match store.record_usage(&updates).await {
            Ok(()) => {
                for (u, (used, _, _, _, _)) in chunk.iter().zip(&taken) {
                    u.flushed_quota.store(*used, Ordering::Release);
                }
                Ok(())
            }
            Err(e) => {
                // Put the counts back: the next flush retries with them.
                for (u, (_, counts, permissions, ips_changed, refilled)) in chunk.iter().zip(taken)
                {
                    if refilled {
                        u.refill_dirty.store(true, Ordering::Release);
                    }
                    let mut p = lock(&u.pending);
                    for (bucket, outcome, count) in counts {
                        add(&mut p.counts, bucket, outcome, count);
                    }
                    for (hour, permission, count, last) in permissions {
                        permission_usage::add(&mut p.permissions, hour, &permission, count, last);
                    }
                    p.ips_changed |= ips_changed;
                    drop(p);
                    if !u.dirty.swap(true, Ordering::AcqRel) {
                        lock(&self.dirty).push(u.clone());
                    }
                }
                Err(e.into())
            }
        }
    }
}

/// Keys a flush writes per store transaction. A flush of many keys is then many short
/// transactions instead of one long one: a request that needs the CPU, or the database,
/// while a flush runs waits for one such transaction at most (a fraction of a millisecond),
/// not for the whole flush.
pub(crate) const KEYS_PER_WRITE: usize = 128;

/// What a flush did.
#[derive(Debug, Default)]
pub(crate) struct Flushed {
    /// Keys written.
    pub written: usize,
    /// Time spent writing (the pauses between transactions not counted).
    pub busy: std::time::Duration,
    /// What stopped the flush; the keys it did not write wait for the next one.
    pub error: Option<crate::Error>,
}

/// What a flush does between two of its transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Nothing: everything is written as fast as the store takes it (shutdown, tests).
    AtOnce,
    /// Lets the requests waiting for this thread run first (the flush is one task among
    /// them on the runtime's workers).
    YieldToRequests,
}

impl Pace {
    async fn pause(self) {
        if self == Pace::YieldToRequests {
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::InvalidReason;

    fn usage() -> KeyUsage {
        KeyUsage::new(&crate::cache::tests::record(1))
    }

    fn counts(u: &KeyUsage) -> Vec<(i64, String, i64)> {
        let mut c: Vec<_> = u
            .unflushed_counts(0, i64::MAX)
            .into_iter()
            .map(|c| (c.bucket, c.outcome, c.count))
            .collect();
        c.sort();
        c
    }

    const H: i64 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS;

    #[test]
    fn counts_by_hour_and_outcome_across_hours() {
        let u = usage();
        u.record(Outcome::Valid, None, None, H + 5);
        u.record(Outcome::Valid, None, None, H + 6);
        u.record(Outcome::RateLimited, None, None, H + 7);
        u.record(Outcome::Valid, None, None, H + HOUR_MS + 1);
        // A clock that went back: counted in its own hour.
        u.record(
            Outcome::InvalidKey(InvalidReason::Revoked),
            None,
            None,
            H + 9,
        );
        assert_eq!(
            counts(&u),
            vec![
                (H, "invalid_key_revoked".into(), 1),
                (H, "rate_limited".into(), 1),
                (H, "valid".into(), 2),
                (H + HOUR_MS, "valid".into(), 1),
            ]
        );
        let mut p = lock(&u.pending);
        u.take_hour_counts(&mut p, u.hour.load(Ordering::Acquire));
        drop(p);
        // Nothing lost or doubled by taking the current hour's counters.
        assert_eq!(counts(&u).iter().map(|c| c.2).sum::<i64>(), 5);
        u.record(Outcome::Valid, None, None, H + HOUR_MS + 2);
        assert_eq!(counts(&u).iter().map(|c| c.2).sum::<i64>(), 6);
    }

    #[test]
    fn recent_addresses_newest_first_with_their_last_time() {
        let u = usage();
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let c: IpAddr = "198.51.100.1".parse().unwrap();
        u.record(Outcome::Valid, None, Some(a), H + 1);
        u.record(Outcome::Valid, None, Some(a), H + 2); // lock-free: only the time moves
        let seen = u.recent_ips();
        assert_eq!(
            (seen.len(), seen[0].ip.as_str(), seen[0].last_seen),
            (1, "203.0.113.7", H + 2)
        );
        u.record(Outcome::Valid, None, Some(b), H + 3);
        u.record(Outcome::Valid, None, Some(b), H + 4);
        u.record(Outcome::Valid, None, Some(c), H + 5);
        u.record(Outcome::Valid, None, Some(c), H + 6);
        u.record(Outcome::Valid, None, Some(a), H + 7);
        u.record(Outcome::Valid, None, Some(a), H + 8);
        let seen: Vec<(String, i64)> = u
            .recent_ips()
            .into_iter()
            .map(|s| (s.ip, s.last_seen))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("203.0.113.7".into(), H + 8),
                ("198.51.100.1".into(), H + 6),
                ("2001:db8::1".into(), H + 4),
            ]
        );
        for i in 0..20u8 {
            u.record(
                Outcome::Valid,
                None,
                Some(IpAddr::from([10, 0, 0, i])),
                H + 10,
            );
        }
        assert_eq!(u.recent_ips().len(), RECENT_IPS);
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let u = Arc::new(usage());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let u = u.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        // Two of the threads move into the next hour half way through.
                        let hour = if t % 2 == 0 && i >= 5_000 {
                            H + HOUR_MS
                        } else {
                            H
                        };
                        u.record(Outcome::Valid, None, None, hour + 1);
                        if i % 1000 == 0 {
                            let mut p = lock(&u.pending);
                            u.take_hour_counts(&mut p, u.hour.load(Ordering::Acquire));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counts(&u).iter().map(|c| c.2).sum::<i64>(), 40_000);
    }

    async fn sqlite_store(dir: &tempfile::TempDir) -> keygate_store::sqlite::SqliteStore {
        let url = format!("sqlite://{}", dir.path().join("usage.db").display());
        keygate_store::sqlite::SqliteStore::open(&url)
            .await
            .unwrap()
    }

    /// A connection of its own to [`sqlite_store`]'s file, for what the store does not do.
    async fn raw_sqlite(dir: &tempfile::TempDir) -> sqlx::SqlitePool {
        let url = format!("sqlite://{}", dir.path().join("usage.db").display());
        sqlx::SqlitePool::connect(&url).await.unwrap()
    }

    /// Flushes everything at once; fails the test on a store error.
    async fn flush_all(recorder: &UsageRecorder, store: &dyn Store) -> usize {
        let flushed = recorder.flush(store, Pace::AtOnce).await;
        assert!(flushed.error.is_none(), "{:?}", flushed.error);
        flushed.written
    }

    fn record_with_id(id: String) -> KeyRecord {
        KeyRecord {
            id,
            ..crate::cache::tests::record(1)
        }
    }

    async fn valid_count(store: &dyn Store, key_id: &str) -> i64 {
        store
            .usage_counts(key_id, 0, i64::MAX)
            .await
            .unwrap()
            .iter()
            .filter(|c| c.outcome == "valid")
            .map(|c| c.count)
            .sum()
    }

    /// Issue 16: a cell per distinct key was kept forever. Idle cells go once their counts
    /// are flushed; held, unflushed and recently used ones stay; nothing counted is lost.
    #[tokio::test]
    async fn idle_cells_are_evicted_after_their_counts_are_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("usage.db").display());
        let store = keygate_store::sqlite::SqliteStore::open(&url)
            .await
            .unwrap();
        let recorder = UsageRecorder::default();
        const KEYS: usize = 100_000;
        for i in 0..KEYS {
            let cell = recorder.cell(&record_with_id(format!("key_{i}")));
            recorder.record(&cell, Outcome::Valid, None, None, H + 1);
        }
        // Held like a cache entry holds it.
        let held = recorder.cell(&record_with_id("key_0".into()));
        assert_eq!(recorder.cell_count(), KEYS);
        assert_eq!(flush_all(&recorder, &store).await, KEYS);
        // Used within this interval: kept by the first pass, dropped by the next.
        assert_eq!(recorder.evict_idle(0), 0);
        // Counted but not flushed yet: kept.
        let unflushed = recorder.cell(&record_with_id("key_1".into()));
        recorder.record(&unflushed, Outcome::Valid, None, None, H + 2);
        drop(unflushed);
        let evicted = recorder.evict_idle(0);
        assert_eq!(evicted, KEYS - 2);
        assert_eq!(
            recorder.cell_count(),
            2,
            "only the held and the unflushed cell"
        );
        // Counts made after eviction, on a cell made again, are flushed exactly.
        let again = recorder.cell(&record_with_id("key_7".into()));
        for _ in 0..3 {
            recorder.record(&again, Outcome::Valid, None, None, H + 3);
        }
        recorder.record(&held, Outcome::Valid, None, None, H + 3);
        flush_all(&recorder, &store).await;
        assert_eq!(valid_count(&store, "key_7").await, 1 + 3);
        assert_eq!(valid_count(&store, "key_0").await, 1 + 1);
        assert_eq!(valid_count(&store, "key_1").await, 1 + 1);
        assert_eq!(valid_count(&store, "key_99999").await, 1);
        drop((again, held));
        recorder.evict_idle(0);
        recorder.evict_idle(0);
        assert_eq!(recorder.cell_count(), 0);
    }

    /// The least-privilege report's counts: per permission of an allowed request, in the
    /// current hour's slots, across an hour change, past the lock-free slots, and written by
    /// the usage flush (by day), after which nothing is left to flush.
    #[tokio::test]
    async fn permissions_of_allowed_requests_are_counted_and_flushed_by_day() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("usage.db").display());
        let store = keygate_store::sqlite::SqliteStore::open(&url)
            .await
            .unwrap();
        let recorder = UsageRecorder::default();
        let cell = recorder.cell(&record_with_id("key_p".into()));
        let p = |s: &str| Permission::parse_concrete(s).unwrap();
        for t in 1..=3 {
            recorder.record(
                &cell,
                Outcome::Valid,
                Some(&p("invoices.read")),
                None,
                H + t,
            );
        }
        recorder.record(&cell, Outcome::Valid, None, None, H + 4);
        let next = H + HOUR_MS;
        recorder.record(
            &cell,
            Outcome::Valid,
            Some(&p("invoices.send")),
            None,
            next + 1,
        );
        for i in 0..20 {
            let permission = p(&format!("r{i}.read"));
            recorder.record(&cell, Outcome::Valid, Some(&permission), None, next + 2);
        }
        recorder.record(
            &cell,
            Outcome::Valid,
            Some(&p("invoices.read")),
            None,
            next + 5,
        );
        let pending = cell.unflushed_permissions();
        assert_eq!(pending.len(), 22, "{pending:?}");
        let read = pending
            .iter()
            .find(|c| c.permission == "invoices.read")
            .unwrap();
        assert_eq!((read.count, read.last_used_at), (4, next + 5));

        flush_all(&recorder, &store).await;
        let stored = store.permission_usage("key_p", 0).await.unwrap();
        assert_eq!(stored.len(), 22);
        assert_eq!(stored.iter().map(|u| u.requests).sum::<i64>(), 4 + 1 + 20);
        let read = stored
            .iter()
            .find(|u| u.permission == "invoices.read")
            .unwrap();
        assert_eq!((read.requests, read.last_used_at), (4, next + 5));
        assert!(cell.unflushed_permissions().is_empty());
        assert!(cell.is_flushed());
        // The next flush adds to the same day's rows.
        recorder.record(
            &cell,
            Outcome::Valid,
            Some(&p("invoices.read")),
            None,
            next + 9,
        );
        flush_all(&recorder, &store).await;
        let stored = store.permission_usage("key_p", 0).await.unwrap();
        let read = stored
            .iter()
            .find(|u| u.permission == "invoices.read")
            .unwrap();
        assert_eq!((read.requests, read.last_used_at), (5, next + 9));
    }

    /// A flush of many keys in transactions of a few keys writes what one transaction
    /// would: every count, `last_used_at` and the quota spent land, and nothing is left.
    #[tokio::test]
    async fn a_flush_in_small_transactions_writes_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        let recorder = UsageRecorder::default();
        let event = |n: usize| keygate_store::AuditEvent {
            id: format!("evt_{n}"),
            seq: 0,
            at: 0,
            account_id: None,
            actor: "admin".into(),
            action: "key.create".into(),
            target_id: None,
            client_ip: None,
            details: serde_json::json!({}),
        };
        let account = keygate_store::Account {
            id: "acct_1".into(),
            name: "a".into(),
            plan: "free".into(),
            created_at: 0,
        };
        store.create_account(&account, &event(0)).await.unwrap();
        const KEYS: usize = 23;
        let mut cells = Vec::new();
        for i in 0..KEYS {
            let mut digest = [0; 32];
            digest[0] = i as u8;
            let record = KeyRecord {
                digest: keygate_core::KeyDigest(digest),
                ..record_with_id(format!("key_{i:02}"))
            };
            store
                .create_key(&record, None, 0, &event(i + 1))
                .await
                .unwrap();
            let cell = recorder.cell(&record);
            for t in 0..=i as i64 {
                let quota = Quota {
                    requests: 1_000,
                    refill: None,
                };
                assert!(cell.try_spend(quota, H + t));
                recorder.record(&cell, Outcome::Valid, None, None, H + t);
            }
            cells.push(cell);
        }
        let flushed = recorder.flush_in(&store, Pace::YieldToRequests, 5).await;
        assert!(flushed.error.is_none(), "{:?}", flushed.error);
        assert_eq!(flushed.written, KEYS);
        for (i, cell) in cells.iter().enumerate() {
            let id = format!("key_{i:02}");
            assert_eq!(valid_count(&store, &id).await, i as i64 + 1, "{id}");
            let stored = store.get_key(&id).await.unwrap().unwrap();
            assert_eq!(stored.last_used_at, Some(H + i as i64), "{id}");
            assert_eq!(stored.quota_used, i as i64 + 1, "{id}");
            assert!(cell.is_flushed(), "{id}");
        }
        assert_eq!(recorder.flush_in(&store, Pace::AtOnce, 5).await.written, 0);
    }

    /// A transaction that fails stops the flush: the ones before it landed, its keys and
    /// the keys after it keep their counts (and take new ones), and the next flush writes
    /// them exactly once.
    #[tokio::test]
    async fn a_failed_transaction_keeps_its_counts_and_the_rest_for_the_next_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        let recorder = UsageRecorder::default();
        const KEYS: usize = 10;
        let cells: Vec<_> = (0..KEYS)
            .map(|i| recorder.cell(&record_with_id(format!("key_{i}"))))
            .collect();
        for cell in &cells {
            recorder.record(cell, Outcome::Valid, None, None, H + 1);
        }
        // A real failure inside SQLite: the counts of key_4 cannot be written.
        let raw = raw_sqlite(&dir).await;
        sqlx::query(
            "CREATE TRIGGER refuse_key_4 BEFORE INSERT ON usage_counts \
             WHEN NEW.key_id = 'key_4' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&raw)
        .await
        .unwrap();
        // Transactions of 3: [0 1 2] lands, [3 4 5] fails, [6 7 8] [9] are not tried.
        let flushed = recorder.flush_in(&store, Pace::YieldToRequests, 3).await;
        assert!(flushed.error.is_some());
        assert_eq!(flushed.written, 3);
        for (i, cell) in cells.iter().enumerate() {
            let expected = i64::from(i < 3);
            assert_eq!(valid_count(&store, &format!("key_{i}")).await, expected);
            assert_eq!(cell.is_flushed(), i < 3, "key_{i}");
        }
        // Counted meanwhile, on a written key, a failed one and one not tried.
        for i in [0, 4, 7] {
            recorder.record(&cells[i], Outcome::Valid, None, None, H + 2);
        }
        sqlx::query("DROP TRIGGER refuse_key_4")
            .execute(&raw)
            .await
            .unwrap();
        let flushed = recorder.flush_in(&store, Pace::YieldToRequests, 3).await;
        assert!(flushed.error.is_none(), "{:?}", flushed.error);
        assert_eq!(flushed.written, KEYS - 2, "every key but key_1 and key_2");
        for (i, cell) in cells.iter().enumerate() {
            let expected = 1 + i64::from([0, 4, 7].contains(&i));
            assert_eq!(
                valid_count(&store, &format!("key_{i}")).await,
                expected,
                "key_{i}"
            );
            assert!(cell.is_flushed(), "key_{i}");
        }
    }

    /// A cell whose rate limiter is still catching up stays, so dropping it cannot reset
    /// the key's limit.
    #[test]
    fn a_cell_with_a_busy_limiter_is_kept() {
        let recorder = UsageRecorder::default();
        let cell = recorder.cell(&record_with_id("key_rl".into()));
        let limit = keygate_store::RateLimit {
            requests: 1,
            per_seconds: 60,
        };
        cell.limiter.check(limit, 1_000);
        drop(cell);
        recorder.evict_idle(2_000);
        assert_eq!(recorder.evict_idle(2_000), 0);
        assert_eq!(recorder.evict_idle(120 * 1_000_000_000), 1);
    }
}
