//! Usage counted in memory on the hot path and written in batches: `last_used_at` and the
//! quota counter. A crash loses at most one flush interval of usage, never a key.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use keygate_store::{Store, UsageUpdate};

use crate::ratelimit::Gcra;
use crate::Result;

/// Per-key counters and limiter state.
#[derive(Debug)]
pub struct KeyUsage {
    key_id: String,
    last_used: AtomicI64,
    /// Quota spent, including what is not yet flushed.
    pub(crate) quota_used: AtomicI64,
    /// What the store already has of `quota_used`.
    flushed_quota: AtomicI64,
    dirty: AtomicBool,
    pub(crate) limiter: Gcra,
}

impl KeyUsage {
    pub fn new(key_id: String, stored_quota_used: i64) -> KeyUsage {
        KeyUsage {
            key_id,
            last_used: AtomicI64::new(0),
            quota_used: AtomicI64::new(stored_quota_used),
            flushed_quota: AtomicI64::new(stored_quota_used),
            dirty: AtomicBool::new(false),
            limiter: Gcra::default(),
        }
    }

    /// When the key was last used on this node (unix ms; 0: not since start).
    pub fn last_used(&self) -> i64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Spends one unit of a quota of `limit`; false when it is spent. Exact on one node.
    pub fn try_spend(&self, limit: u64) -> bool {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.quota_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < limit).then_some(used + 1)
            })
            .is_ok()
    }
}

/// Keys used since the last flush, and the usage state of every key seen.
#[derive(Default)]
pub(crate) struct UsageRecorder {
    dirty: Mutex<Vec<Arc<KeyUsage>>>,
    cells: Mutex<std::collections::HashMap<String, Arc<KeyUsage>>>,
}

impl UsageRecorder {
    /// The usage cell of a key, created from the stored count on first sight. Called on
    /// cache fills only, not per request.
    pub fn cell(&self, key_id: &str, stored_quota_used: i64) -> Arc<KeyUsage> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells
            .entry(key_id.to_owned())
            .or_insert_with(|| Arc::new(KeyUsage::new(key_id.to_owned(), stored_quota_used)))
            .clone()
    }

    /// Notes a use at `now`. Takes the lock only when the key was clean.
    pub fn touch(&self, usage: &Arc<KeyUsage>, now: i64) {
        usage.last_used.fetch_max(now, Ordering::Relaxed);
        if !usage.dirty.swap(true, Ordering::AcqRel) {
            self.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(usage.clone());
        }
    }

    pub async fn flush(&self, store: &dyn Store) -> Result<usize> {
        let pending = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return Ok(0);
        }
        let batch: Vec<(UsageUpdate, i64)> = pending
            .iter()
            .map(|u| {
                u.dirty.store(false, Ordering::Release);
                let used = u.quota_used.load(Ordering::Acquire);
                let update = UsageUpdate {
                    key_id: u.key_id.clone(),
                    last_used_at: u.last_used.load(Ordering::Relaxed),
                    quota_used_delta: used - u.flushed_quota.load(Ordering::Acquire),
                };
                (update, used)
            })
            .collect();
        let updates: Vec<UsageUpdate> = batch.iter().map(|(u, _)| u.clone()).collect();
        match store.record_usage(&updates).await {
            Ok(()) => {
                for (u, (_, used)) in pending.iter().zip(&batch) {
                    u.flushed_quota.store(*used, Ordering::Release);
                }
                Ok(updates.len())
            }
            Err(e) => {
                // Put them back: the next flush retries with the counts it then sees.
                for u in &pending {
                    if !u.dirty.swap(true, Ordering::AcqRel) {
                        self.dirty
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(u.clone());
                    }
                }
                Err(e.into())
            }
        }
    }
}
