use std::collections::BTreeMap;
use std::time::Duration;

use keygate_core::{KeyFormat, Pepper, RouteTable};
use keygate_store::RateLimit;

/// Plans and how many active keys each allows (`None`: unlimited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plans {
    caps: BTreeMap<String, Option<u64>>,
    rate_limits: BTreeMap<String, RateLimit>,
    /// Longest life of a new key, per plan (milliseconds).
    max_key_lifetimes: BTreeMap<String, i64>,
    default_plan: String,
}

impl Plans {
    /// `default_plan` must be one of `caps`.
    pub fn new(caps: BTreeMap<String, Option<u64>>, default_plan: String) -> Option<Plans> {
        caps.contains_key(&default_plan).then_some(Plans {
            caps,
            rate_limits: BTreeMap::new(),
            max_key_lifetimes: BTreeMap::new(),
            default_plan,
        })
    }

    /// The reference plans: basic 2, pro 20, unlimited.
    pub fn reference() -> Plans {
        let caps = BTreeMap::from([
            ("basic".to_owned(), Some(2)),
            ("pro".to_owned(), Some(20)),
            ("unlimited".to_owned(), None),
        ]);
        Plans {
            caps,
            rate_limits: BTreeMap::new(),
            max_key_lifetimes: BTreeMap::new(),
            default_plan: "basic".to_owned(),
        }
    }

    /// Sets the rate limit keys of `plan` get when they have none of their own.
    pub fn with_rate_limit(mut self, plan: &str, limit: RateLimit) -> Plans {
        self.rate_limits.insert(plan.to_owned(), limit);
        self
    }

    /// The default rate limit of `plan`'s keys.
    pub fn rate_limit(&self, plan: &str) -> Option<RateLimit> {
        self.rate_limits.get(plan).copied()
    }

    /// Caps the life of `plan`'s new keys at `days` (new and rotated keys expire by then).
    pub fn with_max_key_lifetime(mut self, plan: &str, days: u32) -> Plans {
        self.max_key_lifetimes
            .insert(plan.to_owned(), i64::from(days) * 86_400_000);
        self
    }

    /// The longest life of `plan`'s new keys in milliseconds; a plan no longer configured
    /// falls back to the default plan's.
    pub fn max_key_lifetime_ms(&self, plan: &str) -> Option<i64> {
        let plan = if self.caps.contains_key(plan) {
            plan
        } else {
            &self.default_plan
        };
        self.max_key_lifetimes.get(plan).copied()
    }

    pub fn has_rate_limits(&self) -> bool {
        !self.rate_limits.is_empty()
    }

    pub fn default_plan(&self) -> &str {
        &self.default_plan
    }

    pub fn exists(&self, plan: &str) -> bool {
        self.caps.contains_key(plan)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.caps.keys().map(String::as_str)
    }

    /// The cap of `plan`; a plan no longer configured falls back to the default plan's.
    pub fn max_keys(&self, plan: &str) -> Option<u64> {
        match self.caps.get(plan) {
            Some(cap) => *cap,
            None => self.caps.get(&self.default_plan).copied().flatten(),
        }
    }
}

/// What the engine needs to run.
pub struct EngineConfig {
    pub key_format: KeyFormat,
    pub pepper: Pepper,
    pub routes: RouteTable,
    pub plans: Plans,
    /// Most keys kept in the cache.
    pub cache_capacity: u64,
    /// How long a cached key is trusted without asking the store again (a backstop: changes
    /// made through this node invalidate at once, other nodes' arrive by notification).
    pub cache_ttl: Duration,
    /// How much longer a cached key may still be served while the store cannot be reached.
    pub stale_if_error: Duration,
    /// How long hourly usage counts are kept.
    pub usage_retention: Duration,
    /// How long an unknown key is remembered as unknown.
    pub negative_cache_ttl: Duration,
}
