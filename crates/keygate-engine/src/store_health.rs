//! Whether the store answers, as the verification path sees it.
//!
//! While the database is down, each read waits out the connection pool's timeout before it
//! fails (sqlx retries a refused connection until then). Without this, every verification of
//! a key past its cache TTL would wait that long before its stale copy is served. Instead,
//! once a read fails with "unavailable", verifications stop asking the store: a stale copy
//! is served and a cache miss answered "unavailable" at once. [`RETRY`] after the last
//! failure, the next verification that needs the store asks it again (one at a time); once
//! one gets an answer, all ask again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long after a failure the store is asked again.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

pub(crate) struct StoreHealth {
    started: Instant,
    /// Nanoseconds since `started` (plus one) until which verifications do not ask the
    /// store; 0 while it answers.
    quiet_until: AtomicU64,
    /// A verification is asking the store after a quiet time.
    probing: AtomicBool,
}

impl StoreHealth {
    pub fn new() -> StoreHealth {
        StoreHealth {
            started: Instant::now(),
            quiet_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// Never 0, so that 0 can mean "answers".
    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64 + 1
    }

    /// May this verification ask the store? Yes while it answers; no for [`RETRY`] after it
    /// failed; then yes for one verification at a time (until the returned permission is
    /// dropped, even if the verification is abandoned half way), until one gets an answer.
    pub fn may_ask(&self) -> Option<Asking<'_>> {
        let until = self.quiet_until.load(Ordering::Acquire);
        if until == 0 {
            return Some(Asking { probe: None });
        }
        // Only the verification that set `probing` may hold an `Asking` that clears it (not
        // `then_some`, which would build, and drop, one for every refused verification).
        if self.now() >= until && !self.probing.swap(true, Ordering::AcqRel) {
            Some(Asking {
                probe: Some(&self.probing),
            })
        } else {
            None
        }
    }

    /// A read failed because the store is unreachable.
    pub fn failed(&self) {
        let was = self
            .quiet_until
            .swap(self.now() + RETRY.as_nanos() as u64, Ordering::AcqRel);
        if was == 0 {
            tracing::warn!(
                "store unavailable: verifying from the cache (stale-if-error), 503 for keys not in it"
            );
        }
    }

    /// A read succeeded.
    pub fn answered(&self) {
        if self.quiet_until.load(Ordering::Acquire) != 0
            && self.quiet_until.swap(0, Ordering::AcqRel) != 0
        {
            tracing::info!("store reachable again");
        }
    }
}

/// Permission to ask the store; see [`StoreHealth::may_ask`].
pub(crate) struct Asking<'a> {
    /// Set when this verification is the one asking after a quiet time.
    probe: Option<&'a AtomicBool>,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Some(probing) = self.probe {
            probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ends the quiet time now.
    fn quiet_time_over(health: &StoreHealth) {
        health.quiet_until.store(health.now(), Ordering::Release);
    }

    #[test]
    fn quiet_after_a_failure_then_one_asks_until_an_answer() {
        let health = StoreHealth::new();
        let (one, two) = (health.may_ask(), health.may_ask());
        assert!(one.is_some() && two.is_some());
        drop((one, two));
        health.failed();
        assert!(health.may_ask().is_none(), "quiet right after a failure");
        // The quiet time is over: one verification asks, the others still do not.
        quiet_time_over(&health);
        let asking = health.may_ask();
        assert!(asking.is_some());
        assert!(health.may_ask().is_none());
        // It failed again: quiet again, then one may ask again.
        health.failed();
        drop(asking);
        assert!(health.may_ask().is_none());
        quiet_time_over(&health);
        let asking = health.may_ask();
        assert!(asking.is_some());
        // It got an answer: everyone asks.
        health.answered();
        drop(asking);
        let all = [health.may_ask(), health.may_ask(), health.may_ask()];
        assert!(all.iter().all(Option::is_some));
    }

    #[test]
    fn verifications_turned_away_do_not_end_the_retry() {
        let health = StoreHealth::new();
        health.failed();
        quiet_time_over(&health);
        let asking = health.may_ask();
        assert!(asking.is_some());
        for _ in 0..3 {
            assert!(health.may_ask().is_none(), "only one asks at a time");
        }
        drop(asking);
    }

    #[test]
    fn an_abandoned_retry_lets_the_next_one_ask() {
        let health = StoreHealth::new();
        health.failed();
        quiet_time_over(&health);
        let asking = health.may_ask();
        assert!(asking.is_some() && health.may_ask().is_none());
        // The verification was cancelled before the store answered.
        drop(asking);
        assert!(health.may_ask().is_some());
    }
}
