use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The hot path's clocks: the kernel's coarse clocks, which cost a few nanoseconds to read
/// where the precise ones cost about 30 (a verification on a cache hit reads three). They
/// move once per scheduler tick (1–4 ms), which is plenty for what they measure: cache
/// ages (seconds), usage buckets (hours), `last_used_at`. Whether a key is revoked or
/// expired is decided with [`now_ms`].
#[cfg(target_os = "linux")]
mod coarse {
    use rustix::time::{clock_gettime, ClockId};

    pub fn monotonic_ns() -> u64 {
        let t = clock_gettime(ClockId::MonotonicCoarse);
        (t.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(t.tv_nsec as u64)
    }

    pub fn wall_ms() -> i64 {
        let t = clock_gettime(ClockId::RealtimeCoarse);
        (t.tv_sec as i64) * 1000 + (t.tv_nsec as i64) / 1_000_000
    }
}

#[cfg(not(target_os = "linux"))]
mod coarse {
    use std::sync::OnceLock;
    use std::time::Instant;

    pub fn monotonic_ns() -> u64 {
        static BASE: OnceLock<Instant> = OnceLock::new();
        BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    pub fn wall_ms() -> i64 {
        super::now_ms()
    }
}

/// Monotonic nanoseconds to one scheduler tick (the origin is arbitrary).
pub(crate) fn coarse_monotonic_ns() -> u64 {
    coarse::monotonic_ns()
}

/// Unix milliseconds to one scheduler tick.
pub(crate) fn coarse_now_ms() -> i64 {
    coarse::wall_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clocks_follow_the_precise_ones() {
        let (mono, wall) = (coarse_monotonic_ns(), coarse_now_ms());
        assert!((now_ms() - wall).abs() < 1000);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(coarse_monotonic_ns() >= mono + 30_000_000);
        assert!(coarse_now_ms() >= wall + 30);
        assert!((now_ms() - coarse_now_ms()).abs() < 1000);
    }
}
