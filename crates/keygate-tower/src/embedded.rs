//! Embedded mode: the layer opens the keygate database itself and verifies in process.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use keygate_core::{KeyFormat, Pepper, RouteTable};
use keygate_engine::{Engine, EngineConfig, Plans};
use keygate_store::postgres::PostgresStore;
use keygate_store::sqlite::SqliteStore;
use keygate_store::{Store, StoreError};

use crate::layer::KeygateLayer;

/// Why the layer could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the pepper must be at least 64 hex characters (32 bytes), as the keygate server has it (KEYGATE_PEPPER or the .pepper file beside the database)")]
    BadPepper,
    #[error("invalid key prefix: {0}")]
    BadKeyPrefix(String),
    #[error("unsupported database URL: use sqlite://PATH or postgres://…")]
    UnsupportedDatabaseUrl,
    #[error("cannot open the keygate database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start the engine: {0}")]
    Engine(#[from] keygate_engine::Error),
    #[error(
        "the pepper is not the one this database's keys were made with; every key would be refused"
    )]
    WrongPepper,
    #[error("invalid keygate server URL: use http://HOST:PORT or https://…")]
    BadServerUrl,
    #[error(
        "the keygate server refused the verify token (check KEYGATE_VERIFY_TOKEN on both sides)"
    )]
    BadVerifyToken,
    #[error("cannot reach the keygate server: {0}")]
    Unreachable(String),
    #[error("the operating system's random number generator is unavailable")]
    NoRandomness,
}

/// The settings of an embedded layer. The defaults are the keygate server's; set what your
/// server's `keygate.toml` changes (key prefix, routes, plans' rate limits).
#[must_use = "call .open() to start the layer"]
pub struct Embedded {
    database_url: String,
    pepper_hex: String,
    key_prefix: String,
    env_in_key: bool,
    routes: RouteTable,
    plans: Plans,
    trusted_proxies: Vec<IpNet>,
    cache_capacity: u64,
    cache_ttl: Duration,
    negative_cache_ttl: Duration,
    stale_if_error: Duration,
    usage_flush: Duration,
}

impl Embedded {
    pub(crate) fn new(database_url: &str, pepper_hex: &str) -> Embedded {
        Embedded {
            database_url: database_url.to_owned(),
            pepper_hex: pepper_hex.trim().to_owned(),
            key_prefix: "kg".to_owned(),
            env_in_key: true,
            routes: RouteTable::new(Vec::new()),
            plans: Plans::reference(),
            trusted_proxies: Vec::new(),
            cache_capacity: 200_000,
            cache_ttl: Duration::from_secs(60),
            negative_cache_ttl: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(300),
            usage_flush: Duration::from_secs(5),
        }
    }

    /// The key prefix and whether keys carry their environment (`key_prefix`, `env_in_key`).
    pub fn key_format(mut self, prefix: &str, env_in_key: bool) -> Embedded {
        prefix.clone_into(&mut self.key_prefix);
        self.env_in_key = env_in_key;
        self
    }

    /// The route table that names the permission each request needs (`[[routes]]`);
    /// unlisted routes need `<resource>.<action>` from the method and path, as on the server.
    pub fn routes(mut self, routes: RouteTable) -> Embedded {
        self.routes = routes;
        self
    }

    /// The plans, for their rate limits.
    pub fn plans(mut self, plans: Plans) -> Embedded {
        self.plans = plans;
        self
    }

    /// Peers whose `X-Forwarded-For` is believed (a load balancer in front of the service),
    /// for keys with an IP allowlist. The client address is read from axum's
    /// `ConnectInfo<SocketAddr>` (serve with `into_make_service_with_connect_info`).
    pub fn trusted_proxies(mut self, proxies: Vec<IpNet>) -> Embedded {
        self.trusted_proxies = proxies;
        self
    }

    /// The most keys kept in the cache (at least 1), and how long one is trusted without
    /// asking the database (a backstop: changes arrive by notification long before).
    pub fn cache(mut self, capacity: u64, ttl: Duration) -> Embedded {
        // The engine's cache keeps at least one key whatever it is given.
        self.cache_capacity = capacity;
        self.cache_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// How often usage counted in memory is written to the database.
    pub fn usage_flush_interval(mut self, interval: Duration) -> Embedded {
        self.usage_flush = interval.max(Duration::from_millis(100));
        self
    }

    /// Opens the database (applying pending migrations), checks the pepper against the one
    /// the keys were made with, and starts the background tasks: the usage flush and the
    /// change listener.
    pub async fn open(self) -> Result<KeygateLayer, OpenError> {
        let pepper = keygate_core::key::from_hex(&self.pepper_hex)
            .filter(|bytes| bytes.len() >= 32)
            .map(Pepper::new)
            .ok_or(OpenError::BadPepper)?;
        let key_format = KeyFormat::new(&self.key_prefix, self.env_in_key)
            .map_err(|e| OpenError::BadKeyPrefix(e.to_string()))?;
        let store = open_store(&self.database_url).await?;
        if !keygate_engine::pepper_matches(store.as_ref(), &pepper).await? {
            return Err(OpenError::WrongPepper);
        }
        let engine = Engine::new(
            store,
            EngineConfig {
                key_format,
                pepper,
                routes: self.routes,
                plans: self.plans,
                cache_capacity: self.cache_capacity,
                cache_ttl: self.cache_ttl,
                negative_cache_ttl: self.negative_cache_ttl,
                stale_if_error: self.stale_if_error,
                usage_retention: Duration::from_secs(90 * 86_400),
            },
        );
        let flusher = engine.spawn_usage_flusher(self.usage_flush);
        let listener = engine.spawn_change_listener().await?;
        Ok(KeygateLayer::new(
            engine,
            self.trusted_proxies,
            flusher,
            listener,
        ))
    }
}

async fn open_store(url: &str) -> Result<Arc<dyn Store>, OpenError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::open(url, true).await?))
    } else {
        Err(OpenError::UnsupportedDatabaseUrl)
    }
}
