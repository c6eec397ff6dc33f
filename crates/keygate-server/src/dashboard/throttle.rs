//! Failed sign-ins per client address: after `LIMIT` failures within `WINDOW`, the address
//! gets a 429 page without its credential being checked, until the oldest failure ages out.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const LIMIT: usize = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most addresses tracked; past it, addresses with no recent failure are forgotten first.
const MAX_ADDRESSES: usize = 100_000;

#[derive(Default)]
pub struct SignInThrottle {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// Requests whose address is unknown share one bucket.
fn key(ip: Option<IpAddr>) -> IpAddr {
    ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

impl SignInThrottle {
    /// Seconds `ip` must wait before trying again, if it failed too often.
    pub fn blocked_for(&self, ip: Option<IpAddr>) -> Option<u64> {
        self.blocked_at(key(ip), Instant::now())
    }

    /// Counts one failed sign-in from `ip`.
    pub fn note_failure(&self, ip: Option<IpAddr>) {
        self.note_at(key(ip), Instant::now());
    }

    fn blocked_at(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get_mut(&ip)?;
        prune(list, now);
        if list.len() < LIMIT {
            return None;
        }
        let oldest = *list.front()?;
        let wait = WINDOW.saturating_sub(now.duration_since(oldest));
        Some(wait.as_secs().max(1))
    }

    fn note_at(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, list| {
                prune(list, now);
                !list.is_empty()
            });
            if map.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let list = map.entry(ip).or_default();
        prune(list, now);
        list.push_back(now);
        while list.len() > LIMIT {
            list.pop_front();
        }
    }
}

fn prune(list: &mut VecDeque<Instant>, now: Instant) {
    while list
        .front()
        .is_some_and(|t| now.duration_since(*t) >= WINDOW)
    {
        list.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_block_an_address_for_the_rest_of_the_minute() {
        let t = SignInThrottle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let start = Instant::now();
        for i in 0..LIMIT {
            assert_eq!(t.blocked_at(ip, start), None, "after {i}");
            t.note_at(ip, start);
        }
        assert_eq!(t.blocked_at(ip, start), Some(60));
        assert_eq!(t.blocked_at(other, start), None);
        let later = start + Duration::from_secs(45);
        assert_eq!(t.blocked_at(ip, later), Some(15));
        assert_eq!(t.blocked_at(ip, start + WINDOW), None);
    }
}
