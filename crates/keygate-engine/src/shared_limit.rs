//! Rate limits shared by several nodes through Redis: the same GCRA as `ratelimit.rs`, run
//! as one Lua script so each check is atomic, timed by Redis's clock so nodes agree.
//! When Redis cannot answer, the limiter fails open (the request is not limited, the error
//! is counted) or closed (the verification answers "unavailable"), by configuration.

use std::sync::RwLock;
use std::time::Duration;

use keygate_store::RateLimit;
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
        let mut conn = self.connection().await?;
        let mut call = self.script.key(format!("keygate:rl:{key_id}"));
        call.arg(interval).arg(tolerance);
        let (allowed, remaining, reset, retry): (u64, u64, u64, u64) =
            tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn))
                .await
                .map_err(|_| "Redis did not answer in time".to_owned())?
                .map_err(|e| e.to_string())?;
        Ok(RateLimitStatus {
            limit: limit.requests,
            window_seconds: limit.per_seconds,
            remaining: remaining as u32,
            reset_seconds: micros(reset),
            retry_after_seconds: (allowed == 0).then(|| micros(retry).max(1)),
        })
    }
}
