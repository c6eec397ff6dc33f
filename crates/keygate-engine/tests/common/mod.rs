//! Set-up shared by the engine's integration tests.
#![allow(dead_code)] // each test file uses what it needs

use std::sync::Arc;
use std::time::Duration;

use keygate_core::{KeyFormat, Pepper, RouteTable};
use keygate_engine::{Engine, EngineConfig, Plans};
use keygate_store::sqlite::SqliteStore;
use keygate_store::Store;

/// An engine with the reference plans, a 1 000-key cache and a 60 s cache TTL.
pub fn engine(store: Arc<dyn Store>) -> Arc<Engine> {
    engine_with_ttl(store, Duration::from_secs(60))
}

pub fn engine_with_ttl(store: Arc<dyn Store>, cache_ttl: Duration) -> Arc<Engine> {
    Engine::new(
        store,
        EngineConfig {
            key_format: KeyFormat::new("kg", true).unwrap(),
            pepper: Pepper::new(vec![7; 32]),
            routes: RouteTable::default(),
            plans: Plans::reference(),
            cache_capacity: 1000,
            cache_ttl,
            negative_cache_ttl: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(300),
            usage_retention: Duration::from_secs(86_400),
        },
    )
}

/// A fresh SQLite store in `dir`.
pub async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::open(&format!("sqlite://{}/k.db", dir.path().display()))
            .await
            .unwrap(),
    )
}
