//! Interning: one shared copy of values that many cached keys hold alike (their grants,
//! their account id), so a million cached keys do not keep a million copies of `*.read`.
//!
//! Values are immutable, so sharing them between engines in one process is harmless; the
//! tables are process-wide so that every way of making a `CachedKey` (cache fills,
//! tokens' views, keygate-tower's described keys) shares them.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Entries kept at least before unused ones are dropped.
const MIN_PRUNE_AT: usize = 1024;

struct Table<T: ?Sized> {
    items: HashSet<Arc<T>>,
    /// Drop unused entries when `items` reaches this many.
    prune_at: usize,
}

/// A set of shared values. An entry nobody else holds any more is dropped when the table
/// has doubled since the last pass, so the table stays within twice the values in use.
pub(crate) struct Interner<T: ?Sized> {
    table: Mutex<Table<T>>,
}

impl<T: ?Sized + Eq + Hash> Interner<T> {
    pub fn new() -> Interner<T> {
        Interner {
            table: Mutex::new(Table {
                items: HashSet::new(),
                prune_at: MIN_PRUNE_AT,
            }),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table<T>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table().items.len()
    }
}

impl<T: ?Sized + Eq + Hash> Table<T> {
    fn insert(&mut self, made: Arc<T>) -> Arc<T> {
        if self.items.len() >= self.prune_at {
            self.items.retain(|item| Arc::strong_count(item) > 1);
            self.prune_at = (self.items.len() * 2).max(MIN_PRUNE_AT);
        }
        self.items.insert(made.clone());
        made
    }
}

impl<T: Eq + Hash> Interner<T> {
    /// The shared copy equal to `value` (`value` itself when there is none yet).
    pub fn intern(&self, value: T) -> Arc<T> {
        let mut table = self.table();
        match table.items.get(&value) {
            Some(found) => found.clone(),
            None => table.insert(Arc::new(value)),
        }
    }
}

impl Interner<str> {
    pub fn intern_str(&self, value: &str) -> Arc<str> {
        let mut table = self.table();
        match table.items.get(value) {
            Some(found) => found.clone(),
            None => table.insert(Arc::from(value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy_and_unused_ones_go() {
        let interner: Interner<str> = Interner::new();
        let a = interner.intern_str("acct_1");
        let b = interner.intern_str(&String::from("acct_1"));
        assert!(Arc::ptr_eq(&a, &b));
        // Many values, none held: the table prunes itself as it grows.
        for i in 0..10 * MIN_PRUNE_AT {
            interner.intern_str(&format!("acct_x{i}"));
        }
        assert!(interner.len() <= 2 * MIN_PRUNE_AT + 1, "{}", interner.len());
        // The held one survived every pass.
        assert!(Arc::ptr_eq(&a, &interner.intern_str("acct_1")));
    }
}
