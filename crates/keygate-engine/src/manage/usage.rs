//! Usage analytics of one key: verifications per hour or day and outcome.

use std::collections::BTreeMap;

use keygate_store::KeyRecord;

use super::Caller;
use crate::usage::HOUR_MS;
use crate::{now_ms, Engine, Error, Result};

const DAY_MS: i64 = 24 * HOUR_MS;
/// Most buckets one answer holds.
const MAX_BUCKETS: i64 = 2_000;

/// The size of a bucket in a usage answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
}

impl Granularity {
    pub fn parse(s: &str) -> Option<Granularity> {
        match s {
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    fn millis(self) -> i64 {
        match self {
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }
}

/// Counts by outcome detail (`valid`, `rate_limited`, `invalid_key_revoked`, …) in one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageBucket {
    pub start: i64,
    pub counts: BTreeMap<String, i64>,
}

impl UsageBucket {
    pub fn valid(&self) -> i64 {
        self.counts.get("valid").copied().unwrap_or(0)
    }

    pub fn refused(&self) -> i64 {
        self.counts.values().sum::<i64>() - self.valid()
    }
}

/// A key's usage over a range: every bucket of the range, empty ones included.
#[derive(Clone, Debug)]
pub struct UsageReport {
    pub key: KeyRecord,
    pub granularity: Granularity,
    pub from: i64,
    pub to: i64,
    pub buckets: Vec<UsageBucket>,
    pub totals: BTreeMap<String, i64>,
}

impl Engine {
    /// Usage of a key the caller may see. `from`/`to` (unix ms) default to the last 24
    /// hours (hourly) or 30 days (daily), aligned to whole buckets (UTC).
    pub async fn key_usage(
        &self,
        caller: &Caller,
        id: &str,
        from: Option<i64>,
        to: Option<i64>,
        granularity: Granularity,
    ) -> Result<UsageReport> {
        let key = self.get_key(caller, id).await?;
        let step = granularity.millis();
        let align = |t: i64| t - t.rem_euclid(step);
        let to = align(to.unwrap_or_else(now_ms) + step - 1);
        let default_span = match granularity {
            Granularity::Hour => 24 * HOUR_MS,
            Granularity::Day => 30 * DAY_MS,
        };
        let from = align(from.unwrap_or(to - default_span));
        if from >= to {
            return Err(Error::validation("from", "from must be before to"));
        }
        if (to - from) / step > MAX_BUCKETS {
            return Err(Error::validation(
                "from",
                format!("the range holds more than {MAX_BUCKETS} buckets; choose a shorter range or granularity=day"),
            ));
        }
        let mut stored = self.store.usage_counts(&key.id, from, to).await?;
        let cell = self.usage.cell(&key);
        stored.extend(cell.unflushed_counts(from, to));
        let mut buckets: Vec<UsageBucket> = (0..(to - from) / step)
            .map(|i| UsageBucket {
                start: from + i * step,
                counts: BTreeMap::new(),
            })
            .collect();
        let mut totals = BTreeMap::new();
        for c in stored {
            let index = ((c.bucket - from) / step) as usize;
            if let Some(b) = buckets.get_mut(index) {
                *b.counts.entry(c.outcome.clone()).or_insert(0) += c.count;
                *totals.entry(c.outcome).or_insert(0) += c.count;
            }
        }
        Ok(UsageReport {
            key,
            granularity,
            from,
            to,
            buckets,
            totals,
        })
    }
}
