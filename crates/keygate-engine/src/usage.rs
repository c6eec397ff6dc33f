//! Usage counted in memory on the hot path and written in batches: `last_used_at`, the
//! quota spent, verifications per hour and outcome, and the latest client addresses. A
//! crash loses at most one flush interval of usage, never a key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use keygate_core::Outcome;
use keygate_store::{KeyRecord, Quota, Refill, SeenIp, Store, UsageCount, UsageUpdate};

use crate::ratelimit::Gcra;
use crate::Result;

/// Milliseconds in one usage bucket.
pub const HOUR_MS: i64 = 3_600_000;
/// Client addresses remembered per key.
pub const RECENT_IPS: usize = 10;

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
#[derive(Debug)]
pub struct KeyUsage {
    key_id: String,
    last_used: AtomicI64,
    /// Quota spent, including what is not yet flushed.
    pub(crate) quota_used: AtomicI64,
    /// What the store already has of `quota_used`.
    flushed_quota: AtomicI64,
    /// When the quota last refilled (unix ms), and whether that is not flushed yet.
    quota_refilled_at: AtomicI64,
    refill_dirty: AtomicBool,
    dirty: AtomicBool,
    pending: Mutex<Pending>,
    pub(crate) limiter: Gcra,
}

impl KeyUsage {
    pub fn new(record: &KeyRecord) -> KeyUsage {
        KeyUsage {
            key_id: record.id.clone(),
            last_used: AtomicI64::new(0),
            quota_used: AtomicI64::new(record.quota_used),
            flushed_quota: AtomicI64::new(record.quota_used),
            quota_refilled_at: AtomicI64::new(
                record.quota_refilled_at.unwrap_or(record.created_at),
            ),
            refill_dirty: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            pending: Mutex::new(Pending {
                recent_ips: record
                    .recent_ips
                    .iter()
                    .filter_map(|s| Some((s.ip.parse().ok()?, s.last_seen)))
                    .collect(),
                ..Pending::default()
            }),
            limiter: Gcra::default(),
        }
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
        lock(&self.pending)
            .counts
            .iter()
            .filter(|(b, _, _)| (from..to).contains(b))
            .map(|(bucket, outcome, count)| UsageCount {
                bucket: *bucket,
                outcome: (*outcome).to_owned(),
                count: *count,
            })
            .collect()
    }

    pub(crate) fn recent_ips(&self) -> Vec<SeenIp> {
        seen(&lock(&self.pending).recent_ips)
    }

    fn record(&self, outcome: Outcome, ip: Option<IpAddr>, now: i64) {
        let bucket = now - now.rem_euclid(HOUR_MS);
        let detail = outcome.detail();
        let mut p = lock(&self.pending);
        match p
            .counts
            .iter_mut()
            .find(|(b, o, _)| *b == bucket && *o == detail)
        {
            Some(entry) => entry.2 += 1,
            None => p.counts.push((bucket, detail, 1)),
        }
        if let Some(ip) = ip {
            match p.recent_ips.iter().position(|s| s.0 == ip) {
                // Already the newest: only the time moves; written with the next change.
                Some(0) => p.recent_ips[0].1 = now,
                found => {
                    if let Some(i) = found {
                        p.recent_ips.remove(i);
                    }
                    p.recent_ips.insert(0, (ip, now));
                    p.recent_ips.truncate(RECENT_IPS);
                    p.ips_changed = true;
                }
            }
        }
    }
}

/// Keys used since the last flush, and the usage state of every key seen.
#[derive(Default)]
pub(crate) struct UsageRecorder {
    dirty: Mutex<Vec<Arc<KeyUsage>>>,
    cells: Mutex<HashMap<String, Arc<KeyUsage>>>,
}

impl UsageRecorder {
    /// The usage cell of a key, created from the stored state on first sight. Called on
    /// cache fills and management reads, not per request.
    pub fn cell(&self, record: &KeyRecord) -> Arc<KeyUsage> {
        lock(&self.cells)
            .entry(record.id.clone())
            .or_insert_with(|| Arc::new(KeyUsage::new(record)))
            .clone()
    }

    /// Counts one verification of a known key; a valid one also moves `last_used_at`.
    pub fn record(&self, usage: &Arc<KeyUsage>, outcome: Outcome, ip: Option<IpAddr>, now: i64) {
        if outcome.is_valid() {
            usage.last_used.fetch_max(now, Ordering::Relaxed);
        }
        usage.record(outcome, ip, now);
        if !usage.dirty.swap(true, Ordering::AcqRel) {
            lock(&self.dirty).push(usage.clone());
        }
    }

    pub async fn flush(&self, store: &dyn Store) -> Result<usize> {
        let pending = std::mem::take(&mut *lock(&self.dirty));
        if pending.is_empty() {
            return Ok(0);
        }
        let mut taken = Vec::with_capacity(pending.len());
        let mut updates = Vec::with_capacity(pending.len());
        for u in &pending {
            u.dirty.store(false, Ordering::Release);
            let used = u.quota_used.load(Ordering::Acquire);
            let mut p = lock(&u.pending);
            let counts = std::mem::take(&mut p.counts);
            let ips_changed = std::mem::take(&mut p.ips_changed);
            let refilled = u.refill_dirty.swap(false, Ordering::AcqRel);
            updates.push(UsageUpdate {
                key_id: u.key_id.clone(),
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
            });
            taken.push((used, counts, ips_changed, refilled));
        }
        match store.record_usage(&updates).await {
            Ok(()) => {
                for (u, (used, _, _, _)) in pending.iter().zip(&taken) {
                    u.flushed_quota.store(*used, Ordering::Release);
                }
                Ok(updates.len())
            }
            Err(e) => {
                // Put the counts back: the next flush retries with them.
                for (u, (_, counts, ips_changed, refilled)) in pending.iter().zip(taken) {
                    if refilled {
                        u.refill_dirty.store(true, Ordering::Release);
                    }
                    let mut p = lock(&u.pending);
                    for (bucket, outcome, count) in counts {
                        match p
                            .counts
                            .iter_mut()
                            .find(|(b, o, _)| *b == bucket && *o == outcome)
                        {
                            Some(entry) => entry.2 += count,
                            None => p.counts.push((bucket, outcome, count)),
                        }
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
