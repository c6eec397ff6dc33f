//! keygate's verification engine and management operations.
//!
//! Invariants:
//! - The hot path (a cache hit) never writes the database: usage is counted in memory and
//!   flushed in batches by [`Engine::flush_usage`].
//! - Every change to a key goes through this crate, which invalidates the cache entry on
//!   this node before the change call returns. The edges never call the store directly.
//! - A cache fill that raced with an invalidation is dropped, never served (see `cache.rs`).

mod admin;
mod announce;
mod cache;
mod clock;
mod config;
mod error;
mod ids;
mod intern;
mod legacy;
pub mod manage;
mod metrics;
mod pepper_check;
mod permission_usage;
mod ratelimit;
pub mod sessions;
mod shared_limit;
mod store_health;
pub mod tokens;
mod usage;
mod usage_pace;
mod verify;

use std::sync::Arc;

use keygate_core::{KeyFormat, Pepper, RouteTable};
use keygate_store::Store;

pub use admin::AdminToken;
pub use announce::{Announcement, Numbered, ResyncReason};
pub use cache::CachedKey;
pub use clock::now_ms;
pub use config::{EngineConfig, Plans};
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use pepper_check::{pepper_check, pepper_matches, PEPPER_CHECK_MESSAGE, PEPPER_CHECK_SETTING};
pub use ratelimit::{FailureThrottle, RateLimitStatus};
pub use shared_limit::{LimiterFailure, SharedLimiter};
pub use verify::{Verdict, VerifyRequest};

/// The engine: one per process, shared by every edge.
pub struct Engine {
    store: Arc<dyn Store>,
    format: KeyFormat,
    pepper: Pepper,
    routes: RouteTable,
    plans: Plans,
    cache: cache::KeyCache,
    cache_ttl: std::time::Duration,
    stale_if_error: std::time::Duration,
    usage_retention: std::time::Duration,
    /// When usage older than the retention was last deleted (unix ms).
    last_prune: std::sync::atomic::AtomicI64,
    usage: usage::UsageRecorder,
    metrics: Metrics,
    /// Whether verifications may ask the store (not while it is down).
    store_health: store_health::StoreHealth,
    /// Rate limits and quotas shared with other nodes; per node when unset.
    shared_limiter: std::sync::OnceLock<SharedLimiter>,
    started: std::time::Instant,
    /// Tells background tasks to finish what they are doing and stop.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Key changes told to caches outside this process, by key id.
    announcer: Arc<announce::Announcer>,
    /// Webhook settings, set once at start (`manage/webhooks.rs`).
    webhooks: std::sync::OnceLock<manage::WebhookSettings>,
    /// Imported keys' legacy hashes: whether any exist, the bcrypt bound.
    legacy: legacy::LegacyVerifier,
    /// Short-lived tokens: signing keys, settings, verified tokens.
    tokens: tokens::Tokens,
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, config: EngineConfig) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            format: config.key_format,
            pepper: config.pepper,
            routes: config.routes,
            plans: config.plans,
            cache: cache::KeyCache::new(config.cache_capacity, config.negative_cache_ttl),
            cache_ttl: config.cache_ttl,
            stale_if_error: config.stale_if_error,
            usage_retention: config.usage_retention,
            last_prune: std::sync::atomic::AtomicI64::new(0),
            usage: usage::UsageRecorder::default(),
            metrics: Metrics::default(),
            store_health: store_health::StoreHealth::new(),
            shared_limiter: std::sync::OnceLock::new(),
            started: std::time::Instant::now(),
            stopping: tokio::sync::watch::channel(false).0,
            announcer: Arc::new(announce::Announcer::new()),
            webhooks: std::sync::OnceLock::new(),
            legacy: legacy::LegacyVerifier::default(),
            tokens: tokens::Tokens::new(),
        })
    }

    pub fn key_format(&self) -> &KeyFormat {
        &self.format
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    pub fn plans(&self) -> &Plans {
        &self.plans
    }

    pub fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    /// Shares rate limits and quotas with other nodes through Redis from now on (set once,
    /// at start).
    pub fn share_rate_limits(&self, limiter: SharedLimiter) {
        if self.shared_limiter.set(limiter).is_err() {
            tracing::warn!("a shared rate limiter is set already; keeping the first");
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The Prometheus text for `/metrics`.
    pub fn render_metrics(&self) -> String {
        let mut out = self.metrics.render(
            self.cache.entry_count(),
            self.usage.cell_count() as u64,
            now_ms(),
        );
        self.legacy.metrics.render(&mut out);
        out
    }

    /// Is the store reachable?
    pub async fn ready(&self) -> Result<()> {
        Ok(self.store.ping().await?)
    }

    /// Writes the usage counted since the last flush, all of it at once. Called at shutdown
    /// (the background task paces its flushes: [`Engine::spawn_usage_flusher`]). Once an
    /// hour it also deletes counts, and webhook events no longer being delivered, older
    /// than the retention.
    pub async fn flush_usage(&self) -> Result<usize> {
        self.flush_usage_paced(usage::Pace::AtOnce).await
    }

    async fn flush_usage_paced(&self, pace: usage::Pace) -> Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        let flushed = self.usage.flush(self.store.as_ref(), pace).await;
        // Keys written before a failed transaction are in the store: counted either way.
        self.metrics
            .usage_flush_micros
            .fetch_add(flushed.busy.as_micros() as u64, Relaxed);
        self.metrics
            .usage_flushed_keys
            .fetch_add(flushed.written as u64, Relaxed);
        let written = match flushed.error {
            None => {
                self.metrics.usage_flushes.fetch_add(1, Relaxed);
                self.metrics
                    .usage_flushed_at
                    .store(now_ms() as u64, Relaxed);
                // Counts are in the store now: idle cells can go.
                self.usage.evict_idle(self.monotonic_ns());
                flushed.written
            }
            Some(e) => {
                self.metrics.usage_flush_errors.fetch_add(1, Relaxed);
                return Err(e);
            }
        };
        let now = now_ms();
        let last = self.last_prune.load(std::sync::atomic::Ordering::Relaxed);
        if now - last >= usage::HOUR_MS {
            self.last_prune
                .store(now, std::sync::atomic::Ordering::Relaxed);
            let cutoff = now - self.usage_retention.as_millis() as i64;
            let pruned = self.store.prune_usage(cutoff).await?;
            if pruned > 0 {
                tracing::info!(rows = pruned, "deleted usage counts past the retention");
            }
            // Webhook events and their deliveries are kept as long as usage.
            let pruned = self.store.prune_webhook_events(cutoff).await?;
            if pruned > 0 {
                tracing::info!(
                    events = pruned,
                    "deleted delivered webhook events past the retention"
                );
            }
        }
        Ok(written)
    }

    /// Starts the task that flushes usage every `interval`. It ends after
    /// [`Engine::stop_background`] (finishing a flush in progress) or when the engine is
    /// dropped.
    pub fn spawn_usage_flusher(
        self: &Arc<Self>,
        interval: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_usage_flusher_within(interval, None)
    }

    /// As [`Engine::spawn_usage_flusher`], and when `max_keys_per_second` is given, a flush
    /// that wrote `n` keys is followed by a pause of at least `n / max_keys_per_second`: the
    /// store's usage writes stay under that budget however many keys are in use, and a
    /// longer pause only means more counts per write (they add up in memory meanwhile).
    pub fn spawn_usage_flusher_within(
        self: &Arc<Self>,
        interval: std::time::Duration,
        max_keys_per_second: Option<std::num::NonZeroU32>,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            let mut pause = interval;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopping.wait_for(|stop| *stop) => return,
                }
                let Some(engine) = weak.upgrade() else { return };
                let started = std::time::Instant::now();
                let written = match engine.flush_usage_paced(usage::Pace::YieldToRequests).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "usage flush failed; will retry");
                        0
                    }
                };
                pause = usage_pace::pause_after_flush(interval, written, max_keys_per_second)
                    .saturating_sub(started.elapsed());
            }
        })
    }

    /// Asks the background tasks to stop at their next pause (and long-lived answers such
    /// as the change stream to end).
    pub fn stop_background(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`Engine::stop_background`] was called.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    }

    /// Listens for key changes committed by other nodes (PostgreSQL) and drops them from
    /// this node's cache. `None` when the store has no other writers.
    pub async fn spawn_change_listener(
        self: &Arc<Self>,
    ) -> Result<Option<tokio::task::JoinHandle<()>>> {
        let Some(mut feed) = self.store.change_feed().await? else {
            return Ok(None);
        };
        announce::Announcer::spawn_resolver(&self.announcer, self.store.clone());
        let weak = Arc::downgrade(self);
        Ok(Some(tokio::spawn(async move {
            while let Some(change) = feed.recv().await {
                let Some(engine) = weak.upgrade() else { return };
                match change {
                    keygate_store::Change::Key(digest) => engine.cache.invalidate(&digest),
                    keygate_store::Change::Resync => {
                        // Heard through the database: it answers again (the feed
                        // reconnects only then), so verifications may ask it at once.
                        engine.store_health.answered();
                        engine.cache.invalidate_all();
                    }
                }
                // After this node's cache dropped it: a remote cache that asks again on
                // hearing it gets the new state from this node.
                engine.announcer.heard(change);
            }
        })))
    }

    /// Key changes for caches outside this process (`GET /v1/key-changes`): the number of
    /// the last announcement, and a receiver of every later one, numbered without gaps.
    /// Heard only while [`Engine::spawn_change_listener`] runs.
    pub fn subscribe_key_changes(&self) -> (u64, tokio::sync::broadcast::Receiver<Numbered>) {
        self.announcer.subscribe()
    }

    /// The number of the last key-change announcement.
    pub fn key_changes_head(&self) -> u64 {
        self.announcer.head()
    }

    /// How long a cached key is trusted without asking the store.
    pub fn cache_ttl(&self) -> std::time::Duration {
        self.cache_ttl
    }

    fn monotonic_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }
}
