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

/// Threads that get counters of their own (the first to count; later ones share one).
const OWNED_SLOTS: usize = 16;

/// The counters every verification moves, once per thread slot (see [`slot`]).
#[derive(Default)]
#[repr(align(128))]
struct Hot {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// Observations per bucket (not cumulative); the last one counts those over every bound.
    latency_buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_ns: AtomicU64,
    cache_hits: AtomicU64,
}

/// This thread's slot: `Some(i)` for one of the first [`OWNED_SLOTS`] threads that count
/// (slot `i` of every `Metrics` is written by this thread alone), `None` for the others
/// (they share the last slot and add atomically). Slots are never reused, so two threads
/// never own the same one.
fn slot() -> Option<usize> {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SLOT.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed).min(OWNED_SLOTS));
        }
        Some(s.get()).filter(|i| *i < OWNED_SLOTS)
    })
}

/// Adds `n`: a plain load and store when this thread owns the counter (no locked
/// instruction, which costs more than the rest of a counter update on the hot path), an
/// atomic addition when threads share it.
fn add(counter: &AtomicU64, n: u64, owned: bool) {
    if owned {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    } else {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Every counter keygate exports. Those each verification moves are kept per thread and
/// summed when `/metrics` is read.
pub struct Metrics {
    hot: Box<[Hot]>,
    pub(crate) cache_misses: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) usage_flushes: AtomicU64,
    pub(crate) usage_flush_errors: AtomicU64,
    /// Keys written by usage flushes (a key's counts are one write per flush), including
    /// those a flush wrote before one of its transactions failed.
    pub(crate) usage_flushed_keys: AtomicU64,
    /// Time spent writing usage (a flush's transactions, not the pauses between them),
    /// microseconds.
    pub(crate) usage_flush_micros: AtomicU64,
    /// Unix ms of the last successful usage flush (0: none yet).
    pub(crate) usage_flushed_at: AtomicU64,
    pub(crate) rate_limiter_errors: AtomicU64,
    auth_throttled: AtomicU64,
}

fn index_of(outcome: Outcome) -> usize {
    Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            hot: (0..=OWNED_SLOTS).map(|_| Hot::default()).collect(),
            cache_misses: AtomicU64::default(),
            stale_served: AtomicU64::default(),
            store_errors: AtomicU64::default(),
            usage_flushes: AtomicU64::default(),
            usage_flush_errors: AtomicU64::default(),
            usage_flushed_keys: AtomicU64::default(),
            usage_flush_micros: AtomicU64::default(),
            usage_flushed_at: AtomicU64::default(),
            rate_limiter_errors: AtomicU64::default(),
            auth_throttled: AtomicU64::default(),
        }
    }
}

impl Metrics {
    /// This thread's counters, and whether it owns them.
    fn hot(&self) -> (&Hot, bool) {
        match slot() {
            Some(i) => (&self.hot[i], true),
            None => (&self.hot[OWNED_SLOTS], false),
        }
    }

    /// The sum over the thread slots of one hot counter.
    fn total(&self, counter: impl Fn(&Hot) -> &AtomicU64) -> u64 {
        self.hot
            .iter()
            .map(|h| counter(h).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Counts one verification answer (also those the HTTP edge gives without the engine,
    /// such as missing credentials).
    pub fn count_outcome(&self, outcome: Outcome) {
        let (hot, owned) = self.hot();
        add(&hot.outcomes[index_of(outcome)], 1, owned);
    }

    /// A verification answered from the cache.
    pub(crate) fn count_cache_hit(&self) {
        let (hot, owned) = self.hot();
        add(&hot.cache_hits, 1, owned);
    }

    /// The bucket and the sum (the count is the total of the buckets).
    pub(crate) fn observe_latency(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS
            .iter()
            .position(|bound| ns <= *bound)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        let (hot, owned) = self.hot();
        add(&hot.latency_buckets[bucket], 1, owned);
        // Most answers from memory measure 0 on the coarse clock (see `Engine::verify`).
        if ns != 0 {
            add(&hot.latency_sum_ns, ns, owned);
        }
    }

    /// Counts a request refused because its client failed to authenticate too often.
    pub fn count_auth_throttled(&self) {
        self.auth_throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    /// `usage_cells`: keys with usage counted in memory (bounded: idle cells are evicted
    /// after their counts are flushed).
    pub fn render(&self, cached_keys: u64, usage_cells: u64, now_ms: i64) -> String {
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
                self.total(|h| &h.outcomes[i])
            );
        }
        out.push_str(
            "# HELP keygate_verification_duration_seconds Time to verify a key in the engine.\n",
        );
        out.push_str("# TYPE keygate_verification_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BOUNDS.iter().enumerate() {
            cumulative += self.total(|h| &h.latency_buckets[i]);
            let _ = writeln!(
                out,
                "keygate_verification_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count: u64 = (0..=LATENCY_BOUNDS.len())
            .map(|i| self.total(|h| &h.latency_buckets[i]))
            .sum();
        let _ = writeln!(
            out,
            "keygate_verification_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "keygate_verification_duration_seconds_sum {}",
            self.total(|h| &h.latency_sum_ns) as f64 / 1e9
        );
        let _ = writeln!(out, "keygate_verification_duration_seconds_count {count}");
        let counters: [(&str, &str, u64); 9] = [
            (
                "keygate_cache_hits_total",
                "Verifications answered from the cache.",
                self.total(|h| &h.cache_hits),
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
                "keygate_usage_flushed_keys_total",
                "Keys whose usage a flush wrote to the store (the flush's rows grow with these).",
                get(&self.usage_flushed_keys),
            ),
            (
                "keygate_usage_flush_errors_total",
                "Failed usage flushes (retried).",
                get(&self.usage_flush_errors),
            ),
            (
                "keygate_rate_limiter_errors_total",
                "Redis errors of shared rate limits and quotas (answered per configuration).",
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
        let _ = writeln!(
            out,
            "# HELP keygate_usage_flush_seconds_total Time spent writing usage flushes.\n\
             # TYPE keygate_usage_flush_seconds_total counter\n\
             keygate_usage_flush_seconds_total {}",
            get(&self.usage_flush_micros) as f64 / 1e6
        );
        let flushed_at = get(&self.usage_flushed_at) as i64;
        let lag = if flushed_at == 0 {
            0.0
        } else {
            (now_ms - flushed_at).max(0) as f64 / 1000.0
        };
        let gauges: [(&str, &str, f64); 3] = [
            (
                "keygate_cache_keys",
                "Keys in the cache.",
                cached_keys as f64,
            ),
            (
                "keygate_usage_cells",
                "Keys whose usage is counted in memory (idle ones are evicted once flushed).",
                usage_cells as f64,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    #[test]
    fn counts_from_more_threads_than_slots_add_up() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let threads: Vec<_> = (0..2 * OWNED_SLOTS + 3)
            .map(|_| {
                let m = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.count_outcome(Outcome::Valid);
                        m.count_cache_hit();
                        m.observe_latency(Duration::ZERO);
                    }
                    m.observe_latency(Duration::from_millis(2));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = (2 * OWNED_SLOTS + 3) as f64;
        let text = metrics.render(0, 7, 0);
        assert_eq!(sample(&text, "keygate_usage_cells"), 7.0);
        assert_eq!(
            sample(&text, "keygate_verifications_total{outcome=\"valid\""),
            1000.0 * n
        );
        assert_eq!(sample(&text, "keygate_cache_hits_total"), 1000.0 * n);
        assert_eq!(
            sample(&text, "keygate_verification_duration_seconds_count"),
            1001.0 * n
        );
        assert_eq!(
            sample(
                &text,
                "keygate_verification_duration_seconds_bucket{le=\"0.000005\"}"
            ),
            1000.0 * n
        );
        let sum = sample(&text, "keygate_verification_duration_seconds_sum");
        assert!((sum - 0.002 * n).abs() < 1e-9, "{sum}");
    }
}
