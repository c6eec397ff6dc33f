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

impl Gcra {
    /// Has the limiter recovered fully by `now`, so that a fresh one would answer alike?
    pub(crate) fn is_at_rest(&self, now: u64) -> bool {
        self.tat.load(Ordering::Acquire) <= now
    }

    /// Would a request at `now` be refused? Seconds until it would not; takes nothing.
    pub fn blocked_for(&self, limit: RateLimit, now: u64) -> Option<u64> {
        let requests = limit.requests.max(1);
        let interval = ((limit.per_seconds.max(1) as u128 * NS) / requests as u128).max(1) as u64;
        let tolerance = interval.saturating_mul(requests as u64);
        let ahead = self
            .tat
            .load(Ordering::Relaxed)
            .max(now)
            .saturating_add(interval)
            - now;
        (ahead > tolerance).then(|| ceil_secs(ahead - tolerance).max(1))
    }
}

/// Failed authentications per client address: after `limit` failures, the address is
/// refused (429) until the bucket drains. Guessing keys costs the guesser, not the store.
pub struct FailureThrottle {
    limit: RateLimit,
    buckets: moka::sync::Cache<std::net::IpAddr, std::sync::Arc<Gcra>>,
    started: std::time::Instant,
}

impl std::fmt::Debug for FailureThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureThrottle")
            .field("limit", &self.limit)
            .finish()
    }
}

impl FailureThrottle {
    pub fn new(limit: RateLimit) -> FailureThrottle {
        FailureThrottle {
            limit,
            buckets: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(std::time::Duration::from_secs(
                    u64::from(limit.per_seconds.max(1)) * 2,
                ))
                .build(),
            started: std::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Seconds `ip` must wait, if it has failed too often.
    pub fn blocked_for(&self, ip: std::net::IpAddr) -> Option<u64> {
        self.buckets.get(&ip)?.blocked_for(self.limit, self.now())
    }

    /// Counts one failed authentication from `ip`.
    pub fn note_failure(&self, ip: std::net::IpAddr) {
        let bucket = self
            .buckets
            .get_with(ip, || std::sync::Arc::new(Gcra::default()));
        bucket.check(self.limit, self.now());
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
    fn failures_block_an_address_then_drain() {
        let t = FailureThrottle::new(RateLimit {
            requests: 3,
            per_seconds: 1,
        });
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let other: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(t.blocked_for(ip), None);
            t.note_failure(ip);
        }
        assert_eq!(t.blocked_for(ip), Some(1));
        assert_eq!(t.blocked_for(other), None);
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert_eq!(t.blocked_for(ip), None);
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
