//! Per-key rate limits with GCRA (a token bucket in one number): `requests` per
//! `per_seconds`, bursts up to `requests`. State is one atomic per key; no lock.

use std::sync::atomic::{AtomicU64, Ordering};

use keygate_store::RateLimit;

/// What the `RateLimit` / `Retry-After` headers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitStatus {
    pub limit: u32,
    pub window_seconds: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_seconds: u64,
    /// Set when refused: seconds until one request is allowed.
    pub retry_after_seconds: Option<u64>,
}

/// The theoretical arrival time of the next request, in engine nanoseconds.
#[derive(Debug, Default)]
pub struct Gcra {
    tat: AtomicU64,
}

const NS: u128 = 1_000_000_000;

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(NS as u64)
}

impl Gcra {
    /// Takes one request at `now` (nanoseconds on a monotonic clock).
    pub fn check(&self, limit: RateLimit, now: u64) -> RateLimitStatus {
        let requests = limit.requests.max(1);
        let interval = ((limit.per_seconds.max(1) as u128 * NS) / requests as u128).max(1) as u64;
        let tolerance = interval.saturating_mul(requests as u64);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now).saturating_add(interval);
            let ahead = new_tat - now;
            if ahead > tolerance {
                let in_use = tat.max(now) - now;
                return RateLimitStatus {
                    limit: limit.requests,
                    window_seconds: limit.per_seconds,
                    remaining: 0,
                    reset_seconds: ceil_secs(in_use),
                    retry_after_seconds: Some(ceil_secs(ahead - tolerance).max(1)),
                };
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return RateLimitStatus {
                        limit: limit.requests,
                        window_seconds: limit.per_seconds,
                        remaining: ((tolerance - ahead) / interval) as u32,
                        reset_seconds: ceil_secs(ahead),
                        retry_after_seconds: None,
                    }
                }
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn allows_the_burst_then_refuses_then_recovers() {
        let g = Gcra::default();
        let limit = RateLimit {
            requests: 3,
            per_seconds: 60,
        };
        let now = 100 * SEC;
        let remaining: Vec<u32> = (0..3).map(|_| g.check(limit, now).remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = g.check(limit, now);
        assert_eq!(refused.retry_after_seconds, Some(20));
        assert_eq!(refused.remaining, 0);
        // One interval (20 s) later, one more request fits.
        assert!(g.check(limit, now + 20 * SEC).retry_after_seconds.is_none());
        assert!(g.check(limit, now + 20 * SEC).retry_after_seconds.is_some());
    }

    #[test]
    fn refusals_do_not_consume() {
        let g = Gcra::default();
        let limit = RateLimit {
            requests: 1,
            per_seconds: 1,
        };
        assert!(g.check(limit, SEC).retry_after_seconds.is_none());
        for _ in 0..10 {
            assert!(g.check(limit, SEC).retry_after_seconds.is_some());
        }
        assert!(g.check(limit, 2 * SEC).retry_after_seconds.is_none());
    }
}
