//! Idle retirement after rotation: a replaced key is revoked once it has gone unused for
//! its `retire_when_idle` time after its successor's first use, or at the end of the grace
//! period (its scheduled `revoked_at`), whichever comes first.
//!
//! A periodic check, not a per-request one: usage reaches the store in batches, so the
//! store's `last_used_at` (merged with this node's unflushed use) is what it judges by.
//! Several nodes may run it; the store revokes only a key not yet revoked, so one audits.

use std::sync::Arc;
use std::time::Duration;

use keygate_store::RetiringKey;
use serde_json::json;

use super::Caller;
use crate::{now_ms, Engine, Result};

/// The audit reason of a revocation by the idle check.
pub const IDLE_RETIREMENT_REASON: &str = "idle_after_rotation";

impl Engine {
    /// Revokes every replaced key that is idle long enough after its successor's first
    /// use; returns how many it revoked.
    pub async fn retire_idle_keys(&self) -> Result<usize> {
        let now = now_ms();
        let mut retired = 0;
        for candidate in self.store.retiring_keys(now).await? {
            if self.retire_if_idle(candidate, now).await? {
                retired += 1;
            }
        }
        Ok(retired)
    }

    async fn retire_if_idle(&self, candidate: RetiringKey, now: i64) -> Result<bool> {
        let RetiringKey {
            key,
            successor_id,
            successor_last_used_at,
            successor_used_at,
        } = candidate;
        let (Some(idle_ms), Some(successor_id)) = (key.retire_when_idle_ms, successor_id) else {
            return Ok(false);
        };
        let successor_used = successor_last_used_at
            .into_iter()
            .chain(self.usage.last_used_of(&successor_id))
            .max();
        let clock_start = match (successor_used_at, successor_used) {
            (Some(seen), _) => seen,
            (None, Some(used)) => {
                // First sight of the successor's use: the clock starts at that use.
                self.store.note_successor_used(&key.id, used).await?;
                used
            }
            (None, None) => return Ok(false),
        };
        let old_used = key
            .last_used_at
            .into_iter()
            .chain(self.usage.last_used_of(&key.id))
            .max()
            .unwrap_or(0);
        let idle_since = clock_start.max(old_used);
        if now - idle_since < idle_ms {
            return Ok(false);
        }
        let mut audit = Caller::admin(None).audit(
            "key.revoke",
            Some(&key.account_id),
            Some(&key.id),
            json!({
                "reason": IDLE_RETIREMENT_REASON,
                "successor_id": successor_id,
                "idle_seconds": idle_ms / 1000,
            }),
        )?;
        audit.actor = "system".to_owned();
        match self.store.retire_idle_key(&key.id, now, &audit).await? {
            Some(revoked) => {
                self.invalidate(&revoked.digest);
                tracing::info!(key_id = %revoked.id, "retired a replaced key idle after rotation");
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Starts the task that runs [`Engine::retire_idle_keys`] every `interval`. It ends
    /// after [`Engine::stop_background`] or when the engine is dropped.
    pub fn spawn_idle_retirer(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopping.wait_for(|stop| *stop) => return,
                }
                let Some(engine) = weak.upgrade() else { return };
                if let Err(e) = engine.retire_idle_keys().await {
                    tracing::warn!(error = %e, "idle retirement check failed; will retry");
                }
            }
        })
    }
}
