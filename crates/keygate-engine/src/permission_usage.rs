//! Which permission each allowed request needed, counted in the key's usage cell
//! ([`crate::usage::KeyUsage`]) and flushed with its usage: the least-privilege report's data.
//!
//! On the hot path this is one counter bump: each key interns the permissions it is used
//! with in a few slots, set once (the permission is cloned only then) and read without a
//! lock, so counting a request compares a couple of short names and adds one. A key used
//! with more distinct permissions than there are slots counts the rest under the cell's lock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use keygate_core::Permission;
use keygate_store::PermissionCount;

use crate::intern::Interner;

/// Distinct permissions counted lock-free per key.
const SLOTS: usize = 16;
/// Of which held in the cell itself; the rest are allocated when a key needs them (most
/// keys are used with one or two permissions, and a slot costs about 80 bytes).
const FIRST_SLOTS: usize = 2;
const DAY_MS: i64 = 24 * crate::usage::HOUR_MS;

/// Counts not yet flushed: (hour bucket, permission, count, last use).
pub(crate) type Pending = Vec<(i64, Permission, i64, i64)>;

/// The permissions slots hold, one copy each (most keys are used with the same few).
static PERMISSIONS: LazyLock<Interner<Permission>> = LazyLock::new(Interner::new);

#[derive(Debug)]
struct Slot {
    permission: Arc<Permission>,
    /// Allowed requests in the cell's current hour, not yet taken.
    count: AtomicI64,
    last_used: AtomicI64,
}

/// One key's per-permission counters for its current hour.
#[derive(Debug, Default)]
pub(crate) struct PermissionCounters {
    first: [OnceLock<Slot>; FIRST_SLOTS],
    more: OnceLock<Box<[OnceLock<Slot>; SLOTS - FIRST_SLOTS]>>,
}

impl PermissionCounters {
    /// The slots in use, in the order they were filled.
    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.first
            .iter()
            .chain(self.more.get().into_iter().flat_map(|more| more.iter()))
            .map_while(OnceLock::get)
    }

    /// Every slot, the ones beyond the first made now if need be.
    fn all_slots(&self) -> impl Iterator<Item = &OnceLock<Slot>> {
        let more = std::iter::once_with(|| self.more.get_or_init(Default::default));
        self.first.iter().chain(more.flat_map(|more| more.iter()))
    }

    /// Counts one allowed request that needed `permission` at `now`; false when every
    /// slot holds another permission (the caller then counts it under the lock).
    pub fn bump(&self, permission: &Permission, now: i64) -> bool {
        for cell in self.all_slots() {
            // A slot another thread filled with another permission meanwhile: try the next.
            let slot = cell.get_or_init(|| Slot {
                permission: PERMISSIONS.intern(permission.clone()),
                count: AtomicI64::new(0),
                last_used: AtomicI64::new(0),
            });
            if *slot.permission == *permission {
                // AcqRel: pairs with `take`'s swap, as the outcome counters do.
                slot.count.fetch_add(1, Ordering::AcqRel);
                if slot.last_used.load(Ordering::Relaxed) < now {
                    slot.last_used.fetch_max(now, Ordering::Relaxed);
                }
                return true;
            }
        }
        false
    }

    /// Moves the counts into `pending` under `hour` (call with the cell's lock).
    pub fn take(&self, hour: i64, pending: &mut Pending) {
        for slot in self.slots() {
            let count = slot.count.swap(0, Ordering::AcqRel);
            if count != 0 {
                let last = slot.last_used.load(Ordering::Relaxed);
                add(pending, hour, &slot.permission, count, last);
            }
        }
    }

    /// Is any count not yet taken?
    pub fn has_counts(&self) -> bool {
        self.slots().any(|s| s.count.load(Ordering::Acquire) != 0)
    }

    /// The counts not yet taken, as of `hour`.
    pub fn peek(&self, hour: i64) -> Pending {
        let mut out = Vec::new();
        for slot in self.slots() {
            let count = slot.count.load(Ordering::Acquire);
            if count != 0 {
                let last = slot.last_used.load(Ordering::Relaxed);
                out.push((hour, Permission::clone(&slot.permission), count, last));
            }
        }
        out
    }
}

/// Adds `count` requests at up to `last` to the (hour, permission) entry of `pending`.
pub(crate) fn add(
    pending: &mut Pending,
    hour: i64,
    permission: &Permission,
    count: i64,
    last: i64,
) {
    match pending
        .iter_mut()
        .find(|(h, p, _, _)| *h == hour && p == permission)
    {
        Some(entry) => {
            entry.2 += count;
            entry.3 = entry.3.max(last);
        }
        None => pending.push((hour, permission.clone(), count, last)),
    }
}

/// The store's rows for `pending`: by day, the permission as text.
pub(crate) fn to_rows(pending: &Pending) -> Vec<PermissionCount> {
    let mut rows: Vec<PermissionCount> = Vec::with_capacity(pending.len());
    for (hour, permission, count, last) in pending {
        let bucket = hour - hour.rem_euclid(DAY_MS);
        let permission = permission.to_string();
        match rows
            .iter_mut()
            .find(|r| r.bucket == bucket && r.permission == permission)
        {
            Some(row) => {
                row.count += count;
                row.last_used_at = row.last_used_at.max(*last);
            }
            None => rows.push(PermissionCount {
                bucket,
                permission,
                count: *count,
                last_used_at: *last,
            }),
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Permission {
        Permission::parse_concrete(s).unwrap()
    }

    #[test]
    fn permissions_are_interned_and_the_rest_overflow() {
        let c = PermissionCounters::default();
        for i in 0..SLOTS {
            assert!(c.bump(&p(&format!("r{i}.read")), 10 + i as i64));
        }
        assert!(c.bump(&p("r0.read"), 100));
        assert!(!c.bump(&p("other.read"), 5), "no slot left");
        assert_eq!(c.slots().count(), SLOTS);
        let mut pending = Pending::new();
        c.take(0, &mut pending);
        assert_eq!(pending.len(), SLOTS);
        assert_eq!(pending[0], (0, p("r0.read"), 2, 100));
        assert!(!c.has_counts());
        // Taken counts are not taken twice; the last use stays.
        c.take(0, &mut pending);
        assert_eq!(pending[0], (0, p("r0.read"), 2, 100));
    }

    #[test]
    fn a_key_used_with_few_permissions_keeps_only_the_first_slots() {
        let c = PermissionCounters::default();
        assert!(c.bump(&p("invoices.read"), 1));
        assert!(c.bump(&p("invoices.read"), 2));
        assert!(c.more.get().is_none());
        assert_eq!(c.slots().count(), 1);
        assert!(c.has_counts());
    }

    #[test]
    fn rows_are_per_day() {
        let h = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS;
        let pending = vec![
            (h, p("invoices.read"), 2, h + 5),
            (h + 3_600_000, p("invoices.read"), 1, h + 3_600_001),
            (h + DAY_MS, p("invoices.read"), 4, h + DAY_MS + 1),
        ];
        let rows = to_rows(&pending);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].bucket, rows[0].count, rows[0].last_used_at),
            (h, 3, h + 3_600_001)
        );
        assert_eq!(rows[1].count, 4);
    }
}
