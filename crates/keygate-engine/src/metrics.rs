//! Prometheus metrics, counted with atomics on the hot path and rendered as text on
//! scrape. Labels are bounded: outcomes and fixed names, never key ids or secrets.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keygate_core::Outcome;

/// Upper bounds of the verification latency histogram, in seconds.
const LATENCY_BOUNDS: [f64; 14] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.1, 1.0,
];
/// The same bounds in nanoseconds, for the hot path (no float conversion per request).
const LATENCY_BOUNDS_NS: [u64; 14] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
    1_000_000_000,
];

/// Every counter keygate exports.
#[derive(Default)]
pub struct Metrics {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// Observations per bucket (not cumulative); the last one counts those over every bound.
    latency_buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_ns: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) usage_flushes: AtomicU64,
    pub(crate) usage_flush_errors: AtomicU64,
    /// Unix ms of the last successful usage flush (0: none yet).
    pub(crate) usage_flushed_at: AtomicU64,
    pub(crate) rate_limiter_errors: AtomicU64,
    auth_throttled: AtomicU64,
}

fn index_of(outcome: Outcome) -> usize {
    Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0)
}

impl Metrics {
    /// Counts one verification answer (also those the HTTP edge gives without the engine,
    /// such as missing credentials).
    pub fn count_outcome(&self, outcome: Outcome) {
        self.outcomes[index_of(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// At most two atomic additions per verification: its bucket and the sum (the count
    /// is the total of the buckets).
    pub(crate) fn observe_latency(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS
            .iter()
            .position(|bound| ns <= *bound)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        // Most answers from memory measure 0 on the coarse clock (see `Engine::verify`).
        if ns != 0 {
            self.latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Counts a request refused because its client failed to authenticate too often.
    pub fn count_auth_throttled(&self) {
        self.auth_throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, cached_keys: u64, now_ms: i64) -> String {
        let mut out = String::with_capacity(4096);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP keygate_verifications_total Verifications by outcome.\n");
        out.push_str("# TYPE keygate_verifications_total counter\n");
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "keygate_verifications_total{{outcome=\"{}\",code=\"{}\"}} {}",
                outcome.detail(),
                outcome.code(),
                get(&self.outcomes[i])
            );
        }
        out.push_str(
            "# HELP keygate_verification_duration_seconds Time to verify a key in the engine.\n",
        );
        out.push_str("# TYPE keygate_verification_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BOUNDS.iter().enumerate() {
            cumulative += get(&self.latency_buckets[i]);
            let _ = writeln!(
                out,
                "keygate_verification_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count: u64 = self.latency_buckets.iter().map(get).sum();
        let _ = writeln!(
            out,
            "keygate_verification_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "keygate_verification_duration_seconds_sum {}",
            get(&self.latency_sum_ns) as f64 / 1e9
        );
        let _ = writeln!(out, "keygate_verification_duration_seconds_count {count}");
        let counters: [(&str, &str, u64); 8] = [
            (
                "keygate_cache_hits_total",
                "Verifications answered from the cache.",
                get(&self.cache_hits),
            ),
            (
                "keygate_cache_misses_total",
                "Verifications that asked the store.",
                get(&self.cache_misses),
            ),
            (
                "keygate_cache_stale_served_total",
                "Cached keys served past their TTL because the store was unreachable.",
                get(&self.stale_served),
            ),
            (
                "keygate_store_errors_total",
                "Store errors on the verification path.",
                get(&self.store_errors),
            ),
            (
                "keygate_usage_flushes_total",
                "Successful usage flushes.",
                get(&self.usage_flushes),
            ),
            (
                "keygate_usage_flush_errors_total",
                "Failed usage flushes (retried).",
                get(&self.usage_flush_errors),
            ),
            (
                "keygate_rate_limiter_errors_total",
                "Shared rate limiter errors (answered per configuration).",
                get(&self.rate_limiter_errors),
            ),
            (
                "keygate_auth_throttled_total",
                "Requests refused after too many failed authentications from one address.",
                get(&self.auth_throttled),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let flushed_at = get(&self.usage_flushed_at) as i64;
        let lag = if flushed_at == 0 {
            0.0
        } else {
            (now_ms - flushed_at).max(0) as f64 / 1000.0
        };
        let gauges: [(&str, &str, f64); 2] = [
            (
                "keygate_cache_keys",
                "Keys in the cache.",
                cached_keys as f64,
            ),
            (
                "keygate_usage_flush_lag_seconds",
                "Seconds since the last successful usage flush.",
                lag,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
