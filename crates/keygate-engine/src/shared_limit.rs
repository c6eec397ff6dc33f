//! Rate limits and quotas shared by several nodes through Redis. Rate limits: the same GCRA
//! as `ratelimit.rs`; quotas: the count spent and the refill clock of `usage.rs`. Each check
//! is one Lua script, so it is atomic, timed by Redis's clock so nodes agree. When Redis
//! cannot answer, the limiter fails open (the request is not limited by Redis, the error is
//! counted) or closed (the verification answers "unavailable"), by configuration.

use std::sync::RwLock;
use std::time::Duration;

use keygate_store::{Quota, RateLimit};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::ratelimit::RateLimitStatus;

/// How long a limiter call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// GCRA over microseconds. KEYS[1]: the bucket; ARGV: interval, tolerance (µs).
/// Returns {allowed (0/1), remaining, reset µs, retry-after µs}.
const SCRIPT: &str = r#"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > tolerance then
  return {0, 0, tat - now, ahead - tolerance}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor(ahead / 1000) + 1000)
return {1, math.floor((tolerance - ahead) / interval), ahead, 0}
"#;

/// One quota spend. KEYS[1]: the key's quota state, a hash {used, refilled_at (unix ms)}.
/// ARGV: requests, refill amount (0: none), refill period (ms), then the seed used and
/// refilled_at (both empty: do not seed), and how long idle state is kept (ms).
/// Returns {-1} when there is no state and no seed, else {allowed (0/1), used, given back by
/// a refill, refilled_at}. Refills are due whole periods after refilled_at, as in `usage.rs`.
const QUOTA_SCRIPT: &str = r#"
local state = redis.call('HMGET', KEYS[1], 'used', 'refilled_at')
local used = tonumber(state[1])
local at = tonumber(state[2])
if used == nil then
  if ARGV[4] == '' then return {-1} end
  used = tonumber(ARGV[4])
  at = tonumber(ARGV[5])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if at == nil then at = now end
local limit = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local every = tonumber(ARGV[3])
local back = 0
if amount > 0 and every > 0 and now - at >= every then
  local periods = math.floor((now - at) / every)
  back = math.min(used, periods * amount)
  used = used - back
  at = at + periods * every
end
local allowed = 0
if used < limit then
  used = used + 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'used', used, 'refilled_at', at)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {allowed, used, back, at}
"#;

/// After an admin changed a key's quota. KEYS[1]: the key's quota state. ARGV[1]: `drop`
/// (the quota was removed) or the time the refill clock restarts (unix ms) or empty.
const QUOTA_CHANGE_SCRIPT: &str = r#"
if ARGV[1] == 'drop' then
  return redis.call('DEL', KEYS[1])
end
if ARGV[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'refilled_at', ARGV[1])
end
return 0
"#;

/// How long Redis keeps the quota state of a key nobody uses. After that the next spend seeds
/// it again from the store, which by then holds every node's flushed spending.
const QUOTA_IDLE_MS: u64 = 24 * 3600 * 1000;

/// Where Redis keeps a key's quota state.
fn quota_key(key_id: &str) -> String {
    format!("keygate:quota:{key_id}")
}

/// What a key's quota stood at, to start Redis's state from (unix ms for `refilled_at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QuotaState {
    pub used: i64,
    pub refilled_at: i64,
}

/// Redis's answer to one quota spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QuotaAnswer {
    /// Redis has no state for the key (new, expired, or lost in a restart): ask again with
    /// a seed.
    NeedsSeed,
    Spent {
        allowed: bool,
        /// What a refill gave back in this call (0: none).
        given_back: i64,
        /// The quota as it stands after this call.
        state: QuotaState,
    },
}

/// What to do when Redis cannot be asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimiterFailure {
    /// Let the request through (counted in `keygate_rate_limiter_errors_total`).
    Open,
    /// Refuse the verification as unavailable (503).
    Closed,
}

/// A rate limiter shared through Redis.
pub struct SharedLimiter {
    client: redis::Client,
    connection: RwLock<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
    script: redis::Script,
    quota_script: redis::Script,
    quota_change_script: redis::Script,
    pub(crate) on_failure: LimiterFailure,
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("on_failure", &self.on_failure)
            .finish()
    }
}

fn micros(d: u64) -> u64 {
    d.div_ceil(1_000_000)
}

impl SharedLimiter {
    /// A limiter for the Redis at `url` (`redis://host:port/db`). Connects on first use, so
    /// keygate starts even while Redis is down.
    pub fn new(url: &str, on_failure: LimiterFailure) -> Result<SharedLimiter, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
        Ok(SharedLimiter {
            client,
            connection: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            script: redis::Script::new(SCRIPT),
            quota_script: redis::Script::new(QUOTA_SCRIPT),
            quota_change_script: redis::Script::new(QUOTA_CHANGE_SCRIPT),
            on_failure,
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        if let Some(c) = self
            .connection
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(c.clone());
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self
            .connection
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(1);
        let manager = tokio::time::timeout(
            CALL_TIMEOUT * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| "timed out connecting to Redis".to_owned())?
        .map_err(|e| e.to_string())?;
        *self.connection.write().unwrap_or_else(|p| p.into_inner()) = Some(manager.clone());
        Ok(manager)
    }

    /// Takes one request from `key_id`'s bucket.
    pub async fn check(&self, key_id: &str, limit: RateLimit) -> Result<RateLimitStatus, String> {
        let requests = u64::from(limit.requests.max(1));
        let interval = (u64::from(limit.per_seconds.max(1)) * 1_000_000 / requests).max(1);
        let tolerance = interval * requests;
        let mut call = self.script.key(format!("keygate:rl:{key_id}"));
        call.arg(interval).arg(tolerance);
        let (allowed, remaining, reset, retry): (u64, u64, u64, u64) = self.run(&call).await?;
        Ok(RateLimitStatus {
            limit: limit.requests,
            window_seconds: limit.per_seconds,
            remaining: remaining as u32,
            reset_seconds: micros(reset),
            retry_after_seconds: (allowed == 0).then(|| micros(retry).max(1)),
        })
    }

    /// Spends one request of `key_id`'s quota, after the refills due by Redis's clock.
    /// `seed` starts the state when Redis has none; without one such a call answers
    /// [`QuotaAnswer::NeedsSeed`].
    pub(crate) async fn spend_quota(
        &self,
        key_id: &str,
        quota: Quota,
        seed: Option<QuotaState>,
    ) -> Result<QuotaAnswer, String> {
        let (amount, every_ms) = quota
            .refill
            .map_or((0, 0), |r| (r.amount, r.every.saturating_mul(1000)));
        let mut call = self.quota_script.key(quota_key(key_id));
        call.arg(quota.requests).arg(amount).arg(every_ms);
        match seed {
            Some(seed) => call.arg(seed.used.max(0)).arg(seed.refilled_at),
            None => call.arg("").arg(""),
        };
        call.arg(QUOTA_IDLE_MS);
        let answer: Vec<i64> = self.run(&call).await?;
        match answer[..] {
            [-1] => Ok(QuotaAnswer::NeedsSeed),
            [allowed, used, given_back, refilled_at] => Ok(QuotaAnswer::Spent {
                allowed: allowed == 1,
                given_back,
                state: QuotaState { used, refilled_at },
            }),
            _ => Err(format!("unexpected quota answer from Redis: {answer:?}")),
        }
    }

    /// The quota state Redis holds for `key_id`, if any (refills not yet applied).
    pub(crate) async fn quota_state(&self, key_id: &str) -> Result<Option<QuotaState>, String> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(quota_key(key_id)).arg("used").arg("refilled_at");
        let fields: (Option<i64>, Option<i64>) =
            tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut conn))
                .await
                .map_err(|_| "Redis did not answer in time".to_owned())?
                .map_err(|e| e.to_string())?;
        Ok(match fields {
            (Some(used), Some(refilled_at)) => Some(QuotaState { used, refilled_at }),
            _ => None,
        })
    }

    /// Makes Redis follow an admin's change of a key's quota: a removed quota drops the
    /// state; a refill clock restarted at `refill_restarted_at` restarts there too. A changed
    /// `requests` needs nothing: every spend passes the limit it checks against.
    pub(crate) async fn follow_quota_change(
        &self,
        key_id: &str,
        quota: Option<Quota>,
        refill_restarted_at: Option<i64>,
    ) -> Result<(), String> {
        let mut call = self.quota_change_script.key(quota_key(key_id));
        match (quota, refill_restarted_at) {
            (None, _) => call.arg("drop"),
            (Some(_), Some(at)) => call.arg(at),
            (Some(_), None) => call.arg(""),
        };
        let _: i64 = self.run(&call).await?;
        Ok(())
    }

    /// Runs a script within [`CALL_TIMEOUT`].
    async fn run<T: redis::FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut conn = self.connection().await?;
        tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn))
            .await
            .map_err(|_| "Redis did not answer in time".to_owned())?
            .map_err(|e| e.to_string())
    }
}
