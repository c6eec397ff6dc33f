//! How long the usage flusher waits between flushes.
//!
//! A flush writes one row set per key used since the previous flush, however many times
//! each was used: the store's write load grows with the keys in use, not with the
//! verifications. An optional budget (keys written per second) bounds it also when very
//! many keys are in use, by waiting longer after a large flush.

use std::num::NonZeroU32;
use std::time::Duration;

/// The pause after a flush that wrote `written` keys: `interval`, or longer when a budget
/// of `max_keys_per_second` would otherwise be exceeded.
pub(crate) fn pause_after_flush(
    interval: Duration,
    written: usize,
    max_keys_per_second: Option<NonZeroU32>,
) -> Duration {
    let Some(budget) = max_keys_per_second else {
        return interval;
    };
    let needed = Duration::from_secs_f64(written as f64 / f64::from(budget.get()));
    // An hour at most: usage older than its hour bucket still lands in its own bucket, but
    // an operator's dashboard should not wait longer than that.
    interval
        .max(needed)
        .min(Duration::from_secs(3600).max(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(n: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(n)
    }

    #[test]
    fn without_a_budget_the_interval_is_kept() {
        let five = Duration::from_secs(5);
        assert_eq!(pause_after_flush(five, 10_000_000, None), five);
    }

    #[test]
    fn a_flush_within_the_budget_keeps_the_interval() {
        let five = Duration::from_secs(5);
        assert_eq!(pause_after_flush(five, 5_000, budget(1_000)), five);
        assert_eq!(pause_after_flush(five, 0, budget(1)), five);
    }

    #[test]
    fn a_larger_flush_waits_until_its_writes_fit_the_budget() {
        let five = Duration::from_secs(5);
        assert_eq!(
            pause_after_flush(five, 20_000, budget(1_000)),
            Duration::from_secs(20)
        );
        assert_eq!(
            pause_after_flush(five, 10_000_000, budget(1)),
            Duration::from_secs(3600)
        );
    }
}
