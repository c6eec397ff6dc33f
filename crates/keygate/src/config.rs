//! Configuration: `keygate.toml`, overridden by `KEYGATE_*` environment variables,
//! overridden by flags. Secrets (admin token, pepper) come from the file or the
//! environment only: flags show up in `ps`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

/// `keygate serve` flags.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Configuration file [default: ./keygate.toml when it exists].
    #[arg(long, env = "KEYGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the admin/verify listener [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<String>,
    /// `sqlite://PATH` [default: sqlite://keygate.db].
    #[arg(long)]
    pub database_url: Option<String>,
    /// Key prefix [default: kg].
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Put the environment in keys (`kg_live_…`) [default: true].
    #[arg(long)]
    pub env_in_key: Option<bool>,
    /// Plan of new accounts [default: basic].
    #[arg(long)]
    pub default_plan: Option<String>,
    /// Gateway mode: the API to forward verified requests to (`http[s]://host:port[/base]`).
    #[arg(long)]
    pub upstream: Option<String>,
    /// Gateway mode: where requests with test keys go.
    #[arg(long)]
    pub sandbox_upstream: Option<String>,
    /// Gateway mode: a PEM file of CA certificates trusted for https upstreams, besides
    /// the system's.
    #[arg(long)]
    pub upstream_ca_file: Option<String>,
    /// Address of the gateway listener [default: 127.0.0.1:8081 when an upstream is set].
    #[arg(long)]
    pub gateway_listen: Option<String>,
    /// Both listeners: seconds a client may take to send a request's headers, from
    /// connecting or from the previous answer [default: 10].
    #[arg(long)]
    pub client_header_timeout_seconds: Option<u64>,
    /// Both listeners: seconds an HTTP/2 connection (or an answered HTTP/1 one) may sit
    /// with nothing moving [default: 120].
    #[arg(long)]
    pub client_idle_timeout_seconds: Option<u64>,
    /// Both listeners: seconds a client may stop reading an answer before its connection
    /// is dropped [default: 30].
    #[arg(long)]
    pub client_send_timeout_seconds: Option<u64>,
}

#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Active keys allowed; absent means unlimited.
    pub max_keys: Option<u64>,
    /// The rate limit of the plan's keys that have none of their own.
    pub rate_limit: Option<keygate_store::RateLimit>,
    /// Longest life of the plan's new (and rotated) keys, in days; absent means no cap.
    pub max_key_lifetime_days: Option<u32>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub method: String,
    pub path: String,
    pub permission: String,
}

// --- The dashboard's permission catalog (`[permissions]`) -----------------------------

/// `[permissions]`: the resources of the API behind keygate, offered in the dashboard's
/// permission checklist besides those the route table and existing keys name.
#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PermissionsConfig {
    /// Resource names (`orders`), each offered with read, create, update and delete.
    pub resources: Vec<String>,
    /// Further concrete permissions (`invoices.send`), each offered on its resource.
    pub actions: Vec<String>,
}

impl PermissionsConfig {
    /// `KEYGATE_PERMISSION_RESOURCES` and `KEYGATE_PERMISSION_ACTIONS`, comma-separated,
    /// replace the file's lists.
    fn apply_env(&mut self, env: Env<'_>) {
        for (target, name) in [
            (&mut self.resources, "KEYGATE_PERMISSION_RESOURCES"),
            (&mut self.actions, "KEYGATE_PERMISSION_ACTIONS"),
        ] {
            if let Some(v) = env(name) {
                *target = comma_list(&v);
            }
        }
    }

    /// The checked catalog; a bad entry stops the start, naming the setting.
    pub fn catalog(&self) -> anyhow::Result<keygate_server::PermissionCatalog> {
        keygate_server::PermissionCatalog::new(&self.resources, &self.actions).map_err(|e| {
            let setting = match e {
                keygate_server::CatalogError::Resource { .. } => {
                    "permissions.resources (KEYGATE_PERMISSION_RESOURCES)"
                }
                keygate_server::CatalogError::Action { .. } => {
                    "permissions.actions (KEYGATE_PERMISSION_ACTIONS)"
                }
            };
            anyhow::anyhow!("invalid {setting}: {e}")
        })
    }
}

// ---------------------------------------------------------------------------------------

/// Everything `keygate serve` reads, after merging the three sources.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub database_url: String,
    pub admin_token: Option<String>,
    pub verify_token: Option<String>,
    pub pepper: Option<String>,
    pub key_prefix: String,
    pub env_in_key: bool,
    pub default_plan: String,
    pub plans: BTreeMap<String, PlanConfig>,
    pub routes: Vec<RouteConfig>,
    pub trusted_proxies: Vec<String>,
    pub body_limit_bytes: usize,
    pub cache_capacity: u64,
    pub cache_ttl_seconds: u64,
    pub negative_cache_ttl_seconds: u64,
    pub stale_if_error_seconds: u64,
    pub usage_flush_seconds: u64,
    /// Keys a usage flush may write per second on average (0: no budget); a larger flush
    /// is followed by a longer pause.
    pub usage_flush_max_keys_per_second: u32,
    pub usage_retention_days: u64,
    /// Failed authentications allowed per client address, `REQUESTS/SECONDS`, or `off`.
    pub failed_auth_limit: String,
    /// Shares rate limits and quotas between nodes through this Redis (`redis://host:port/db`).
    pub redis_url: Option<String>,
    /// When Redis cannot answer: `open` (no shared limit; quotas per node) or `closed` (503).
    pub rate_limit_failure: String,
    pub log: String,
    pub log_format: String,
    pub upstream: Option<String>,
    pub sandbox_upstream: Option<String>,
    /// PEM CA certificates trusted for https upstreams besides the system's.
    pub upstream_ca_file: Option<String>,
    pub gateway_listen: Option<String>,
    pub upstream_timeout_seconds: u64,
    /// Idle keep-alive connections the gateway keeps per upstream (0: none, each answer's
    /// connection is closed).
    pub upstream_max_idle_connections: usize,
    pub gateway_key_info_path: String,
    /// Both listeners: to send a request's headers (first request and keep-alive).
    pub client_header_timeout_seconds: u64,
    /// Both listeners: a connection with nothing moving and no request in flight.
    pub client_idle_timeout_seconds: u64,
    /// Both listeners: a client that takes no answer bytes for this long is dropped.
    pub client_send_timeout_seconds: u64,
    /// The dashboard's permission catalog.
    pub permissions: PermissionsConfig,
    /// What a leak report does to a live key: `revoke` or `notify` (mark and audit only).
    pub leak_action: String,
    /// GitHub secret scanning's public keys (GitHub's `meta/public_keys` format).
    pub github_scanning_keys_url: String,
    /// How often replaced keys waiting for idle retirement are checked.
    pub idle_retirement_check_seconds: u64,
    // Lifecycle webhooks (`webhook_config.rs`).
    /// Lets endpoints reach loopback and private addresses (the SSRF guard off).
    pub webhook_allow_private: bool,
    /// The first retry's delay before jitter; doubled per retry.
    pub webhook_retry_base_ms: u64,
    /// The longest delay between two attempts.
    pub webhook_retry_max_seconds: u64,
    /// How long a delivery is retried before it is marked failed.
    pub webhook_retry_for_seconds: u64,
    /// An endpoint without a successful delivery for this long is disabled.
    pub webhook_disable_after_seconds: u64,
    /// How often the delivery worker looks for due deliveries.
    pub webhook_poll_ms: u64,
    /// How often the expiry scan (`key.expiring`, `key.expired`) runs.
    pub webhook_scan_seconds: u64,
    /// `key.expiring` lead times, days before `expires_at`.
    pub webhook_expiring_days: Vec<u32>,
    /// The origin portal links start with (`https://keys.example.com`); by default the
    /// scheme and host a `POST /v1/portal-sessions` came to.
    pub public_url: Option<String>,
    /// The customer portal's branding: product name, accent colour (`#rrggbb`), support link.
    pub portal_product_name: Option<String>,
    pub portal_accent_color: Option<String>,
    pub portal_support_url: Option<String>,
    /// CSP `frame-ancestors` sources allowed to embed the portal; unset: none may.
    pub portal_frame_ancestors: Option<String>,
    /// Whether the edges accept short-lived tokens (`POST /v1/tokens`) as credentials.
    pub accept_tokens: bool,
    /// The longest life of a short-lived token.
    pub token_max_ttl_seconds: u64,
    /// How long one token signing key signs before a new one takes over.
    pub token_signing_key_rotation_days: u64,
    /// The `aud` a token must carry to be accepted here; unset: tokens without `aud` only.
    pub token_audience: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://keygate.db".into(),
            admin_token: None,
            verify_token: None,
            pepper: None,
            key_prefix: "kg".into(),
            env_in_key: true,
            default_plan: "basic".into(),
            plans: BTreeMap::new(),
            routes: Vec::new(),
            trusted_proxies: Vec::new(),
            body_limit_bytes: 64 * 1024,
            cache_capacity: 200_000,
            cache_ttl_seconds: 60,
            negative_cache_ttl_seconds: 10,
            stale_if_error_seconds: 300,
            usage_flush_seconds: 5,
            usage_flush_max_keys_per_second: 0,
            usage_retention_days: 90,
            failed_auth_limit: "100/60".into(),
            redis_url: None,
            rate_limit_failure: "open".into(),
            log: "info".into(),
            log_format: "text".into(),
            upstream: None,
            sandbox_upstream: None,
            upstream_ca_file: None,
            gateway_listen: None,
            upstream_timeout_seconds: 30,
            upstream_max_idle_connections: keygate_server::GatewayConfig::DEFAULT_UPSTREAM_MAX_IDLE,
            gateway_key_info_path: "/v1/api-key-info".into(),
            client_header_timeout_seconds: 10,
            client_idle_timeout_seconds: 120,
            client_send_timeout_seconds: 30,
            permissions: PermissionsConfig::default(),
            leak_action: "revoke".into(),
            github_scanning_keys_url: keygate_server::GithubScanningKeys::DEFAULT_URL.into(),
            idle_retirement_check_seconds: 30,
            webhook_allow_private: false,
            webhook_retry_base_ms: 10_000,
            webhook_retry_max_seconds: 3600,
            webhook_retry_for_seconds: 86_400,
            webhook_disable_after_seconds: 5 * 86_400,
            webhook_poll_ms: 1000,
            webhook_scan_seconds: 60,
            webhook_expiring_days: vec![30, 7, 1],
            public_url: None,
            portal_product_name: None,
            portal_accent_color: None,
            portal_support_url: None,
            portal_frame_ancestors: None,
            accept_tokens: true,
            token_max_ttl_seconds: 3600,
            token_signing_key_rotation_days: 30,
            token_audience: None,
        }
    }
}

/// Where the environment comes from (a closure so tests can supply their own).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Sets `target` from variable `name` when it is set; a value that is not a whole number
/// is refused, naming the variable (and `unit`, e.g. " of seconds").
fn read_whole_number<T: std::str::FromStr>(
    target: &mut T,
    env: Env<'_>,
    name: &str,
    unit: &str,
) -> anyhow::Result<()>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    if let Some(v) = env(name) {
        *target = v
            .parse()
            .with_context(|| format!("{name} must be a whole number{unit}"))?;
    }
    Ok(())
}

impl Config {
    /// File, then environment, then flags.
    pub fn load(args: &ServeArgs, env: Env<'_>) -> anyhow::Result<Config> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => {
                let default = PathBuf::from("keygate.toml");
                if default.exists() {
                    Self::from_file(&default)?
                } else {
                    Config::default()
                }
            }
        };
        config.apply_env(env)?;
        config.apply_flags(args);
        // Refused rather than rounded up: a cache of one key would send nearly every
        // verification to the database, which no one asking for 0 can have meant.
        if config.cache_capacity == 0 {
            bail!(
                "cache_capacity (KEYGATE_CACHE_CAPACITY) must be at least 1: verifications \
                 are answered from the key cache"
            );
        }
        Ok(config)
    }

    fn from_file(path: &PathBuf) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("invalid configuration in {}", path.display()))
    }

    fn apply_env(&mut self, env: Env<'_>) -> anyhow::Result<()> {
        let set = |target: &mut String, name: &str| {
            if let Some(v) = env(name) {
                *target = v;
            }
        };
        set(&mut self.listen, "KEYGATE_LISTEN");
        set(&mut self.database_url, "KEYGATE_DATABASE_URL");
        set(&mut self.key_prefix, "KEYGATE_KEY_PREFIX");
        set(&mut self.default_plan, "KEYGATE_DEFAULT_PLAN");
        set(&mut self.log, "KEYGATE_LOG");
        set(&mut self.failed_auth_limit, "KEYGATE_FAILED_AUTH_LIMIT");
        set(&mut self.rate_limit_failure, "KEYGATE_RATE_LIMIT_FAILURE");
        set(&mut self.leak_action, "KEYGATE_LEAK_ACTION");
        set(
            &mut self.github_scanning_keys_url,
            "KEYGATE_GITHUB_SCANNING_KEYS_URL",
        );
        if let Some(v) = env("KEYGATE_REDIS_URL") {
            self.redis_url = Some(v);
        }
        set(&mut self.log_format, "KEYGATE_LOG_FORMAT");
        for (target, name) in [
            (&mut self.upstream, "KEYGATE_UPSTREAM"),
            (&mut self.sandbox_upstream, "KEYGATE_SANDBOX_UPSTREAM"),
            (&mut self.upstream_ca_file, "KEYGATE_UPSTREAM_CA_FILE"),
            (&mut self.gateway_listen, "KEYGATE_GATEWAY_LISTEN"),
            (&mut self.admin_token, "KEYGATE_ADMIN_TOKEN"),
            (&mut self.verify_token, "KEYGATE_VERIFY_TOKEN"),
            (&mut self.pepper, "KEYGATE_PEPPER"),
            (&mut self.public_url, "KEYGATE_PUBLIC_URL"),
            (&mut self.portal_product_name, "KEYGATE_PORTAL_PRODUCT_NAME"),
            (&mut self.portal_accent_color, "KEYGATE_PORTAL_ACCENT_COLOR"),
            (&mut self.portal_support_url, "KEYGATE_PORTAL_SUPPORT_URL"),
            (
                &mut self.portal_frame_ancestors,
                "KEYGATE_PORTAL_FRAME_ANCESTORS",
            ),
        ] {
            if let Some(v) = env(name) {
                *target = Some(v);
            }
        }
        if let Some(v) = env("KEYGATE_ENV_IN_KEY") {
            self.env_in_key = parse_bool(&v).context("KEYGATE_ENV_IN_KEY must be true or false")?;
        }
        if let Some(v) = env("KEYGATE_TRUSTED_PROXIES") {
            self.trusted_proxies = comma_list(&v);
        }
        self.permissions.apply_env(env);
        self.apply_webhook_env(env)?;
        for (target, name) in [
            (&mut self.cache_ttl_seconds, "KEYGATE_CACHE_TTL_SECONDS"),
            (&mut self.usage_flush_seconds, "KEYGATE_USAGE_FLUSH_SECONDS"),
            (
                &mut self.stale_if_error_seconds,
                "KEYGATE_STALE_IF_ERROR_SECONDS",
            ),
            (
                &mut self.idle_retirement_check_seconds,
                "KEYGATE_IDLE_RETIREMENT_CHECK_SECONDS",
            ),
            (
                &mut self.upstream_timeout_seconds,
                "KEYGATE_UPSTREAM_TIMEOUT_SECONDS",
            ),
            (
                &mut self.negative_cache_ttl_seconds,
                "KEYGATE_NEGATIVE_CACHE_TTL_SECONDS",
            ),
            (
                &mut self.client_header_timeout_seconds,
                "KEYGATE_CLIENT_HEADER_TIMEOUT_SECONDS",
            ),
            (
                &mut self.client_idle_timeout_seconds,
                "KEYGATE_CLIENT_IDLE_TIMEOUT_SECONDS",
            ),
            (
                &mut self.client_send_timeout_seconds,
                "KEYGATE_CLIENT_SEND_TIMEOUT_SECONDS",
            ),
        ] {
            read_whole_number(target, env, name, " of seconds")?;
        }
        read_whole_number(
            &mut self.upstream_max_idle_connections,
            env,
            "KEYGATE_UPSTREAM_MAX_IDLE_CONNECTIONS",
            " of connections",
        )?;
        read_whole_number(
            &mut self.cache_capacity,
            env,
            "KEYGATE_CACHE_CAPACITY",
            " of keys",
        )?;
        read_whole_number(
            &mut self.usage_retention_days,
            env,
            "KEYGATE_USAGE_RETENTION_DAYS",
            " of days",
        )?;
        read_whole_number(
            &mut self.usage_flush_max_keys_per_second,
            env,
            "KEYGATE_USAGE_FLUSH_MAX_KEYS_PER_SECOND",
            "",
        )?;
        self.apply_token_env(env)
    }

    /// The short-lived token settings' variables.
    fn apply_token_env(&mut self, env: Env<'_>) -> anyhow::Result<()> {
        if let Some(v) = env("KEYGATE_ACCEPT_TOKENS") {
            self.accept_tokens =
                parse_bool(&v).context("KEYGATE_ACCEPT_TOKENS must be true or false")?;
        }
        for (target, name) in [
            (
                &mut self.token_max_ttl_seconds,
                "KEYGATE_TOKEN_MAX_TTL_SECONDS",
            ),
            (
                &mut self.token_signing_key_rotation_days,
                "KEYGATE_TOKEN_SIGNING_KEY_ROTATION_DAYS",
            ),
        ] {
            read_whole_number(target, env, name, "")?;
        }
        if let Some(v) = env("KEYGATE_TOKEN_AUDIENCE") {
            self.token_audience = Some(v).filter(|a| !a.trim().is_empty());
        }
        Ok(())
    }

    /// The engine's token settings (a zero maximum or period is taken as the smallest).
    pub fn token_settings(&self) -> keygate_engine::tokens::TokenSettings {
        keygate_engine::tokens::TokenSettings {
            accept: self.accept_tokens,
            max_ttl: Duration::from_secs(self.token_max_ttl_seconds.max(1)),
            rotation: Duration::from_secs(self.token_signing_key_rotation_days.max(1) * 86_400),
            audience: self.token_audience.clone(),
        }
    }

    fn apply_flags(&mut self, args: &ServeArgs) {
        if let Some(v) = &args.listen {
            self.listen = v.clone();
        }
        if let Some(v) = &args.database_url {
            self.database_url = v.clone();
        }
        if let Some(v) = &args.key_prefix {
            self.key_prefix = v.clone();
        }
        if let Some(v) = args.env_in_key {
            self.env_in_key = v;
        }
        if let Some(v) = &args.default_plan {
            self.default_plan = v.clone();
        }
        for (target, flag) in [
            (&mut self.upstream, &args.upstream),
            (&mut self.sandbox_upstream, &args.sandbox_upstream),
            (&mut self.upstream_ca_file, &args.upstream_ca_file),
            (&mut self.gateway_listen, &args.gateway_listen),
        ] {
            if let Some(v) = flag {
                *target = Some(v.clone());
            }
        }
        for (target, flag) in [
            (
                &mut self.client_header_timeout_seconds,
                args.client_header_timeout_seconds,
            ),
            (
                &mut self.client_idle_timeout_seconds,
                args.client_idle_timeout_seconds,
            ),
            (
                &mut self.client_send_timeout_seconds,
                args.client_send_timeout_seconds,
            ),
        ] {
            if let Some(v) = flag {
                *target = v;
            }
        }
    }

    /// The connection limits of both listeners (admin and gateway): the defaults of
    /// `EdgeLimits` with the `client_*` settings. The upstream has its own timeout.
    pub fn edge_limits(&self) -> anyhow::Result<keygate_server::EdgeLimits> {
        let seconds = |value: u64, name: &str| {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
            Ok(std::time::Duration::from_secs(value))
        };
        let header = seconds(
            self.client_header_timeout_seconds,
            "client_header_timeout_seconds",
        )?;
        Ok(keygate_server::EdgeLimits {
            first_request_timeout: header,
            header_read_timeout: header,
            idle_timeout: seconds(
                self.client_idle_timeout_seconds,
                "client_idle_timeout_seconds",
            )?,
            send_timeout: seconds(
                self.client_send_timeout_seconds,
                "client_send_timeout_seconds",
            )?,
            ..keygate_server::EdgeLimits::default()
        })
    }

    /// The gateway listener's address and configuration, or `None` without an upstream.
    pub fn gateway(&self) -> anyhow::Result<Option<(String, keygate_server::GatewayConfig)>> {
        let Some(upstream) = &self.upstream else {
            if self.sandbox_upstream.is_some()
                || self.gateway_listen.is_some()
                || self.upstream_ca_file.is_some()
            {
                bail!("sandbox_upstream, upstream_ca_file and gateway_listen need an upstream (KEYGATE_UPSTREAM or --upstream)");
            }
            return Ok(None);
        };
        let mut config = keygate_server::GatewayConfig::new(
            upstream,
            self.sandbox_upstream.as_deref(),
            std::time::Duration::from_secs(self.upstream_timeout_seconds),
            &self.gateway_key_info_path,
            self.upstream_ca_file.as_deref().map(std::path::Path::new),
        )
        .map_err(|e| anyhow::anyhow!("invalid gateway configuration: {e}"))?;
        config.upstream_max_idle = self.upstream_max_idle_connections;
        let listen = self
            .gateway_listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:8081".to_owned());
        Ok(Some((listen, config)))
    }

    /// The reference plans, with the file's plans added or overriding them.
    pub fn plans(&self) -> anyhow::Result<keygate_engine::Plans> {
        let mut caps = BTreeMap::from([
            ("basic".to_owned(), Some(2)),
            ("pro".to_owned(), Some(20)),
            ("unlimited".to_owned(), None),
        ]);
        for (name, plan) in &self.plans {
            caps.insert(name.clone(), plan.max_keys);
        }
        let mut plans = match keygate_engine::Plans::new(caps, self.default_plan.clone()) {
            Some(p) => p,
            None => bail!(
                "default plan {:?} is not a configured plan",
                self.default_plan
            ),
        };
        for (name, plan) in &self.plans {
            if let Some(limit) = plan.rate_limit {
                if limit.requests == 0 || limit.per_seconds == 0 {
                    bail!("plans.{name}.rate_limit needs requests and per_seconds of at least 1");
                }
                plans = plans.with_rate_limit(name, limit);
            }
            match plan.max_key_lifetime_days {
                Some(0) => bail!("plans.{name}.max_key_lifetime_days must be at least 1"),
                Some(days) => plans = plans.with_max_key_lifetime(name, days),
                None => {}
            }
        }
        Ok(plans)
    }

    /// What leak reports do, and where GitHub's signing keys are fetched from.
    pub fn leaks(&self) -> anyhow::Result<keygate_server::LeakConfig> {
        let action =
            keygate_engine::manage::LeakAction::parse(&self.leak_action).with_context(|| {
                format!(
                    "leak_action must be revoke or notify, not {:?}",
                    self.leak_action
                )
            })?;
        let url = &self.github_scanning_keys_url;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            bail!("github_scanning_keys_url must be an http(s) URL, not {url:?}");
        }
        Ok(keygate_server::LeakConfig {
            action,
            github_keys: std::sync::Arc::new(keygate_server::GithubScanningKeys::new(
                url,
                keygate_server::GithubScanningKeys::REFETCH_AFTER,
            )),
        })
    }

    /// The pause between two idle-retirement checks.
    pub fn idle_retirement_interval(&self) -> anyhow::Result<std::time::Duration> {
        if self.idle_retirement_check_seconds == 0 {
            bail!("idle_retirement_check_seconds must be at least 1");
        }
        Ok(std::time::Duration::from_secs(
            self.idle_retirement_check_seconds,
        ))
    }

    /// The shared rate limiter, when `redis_url` is set.
    pub fn shared_limiter(&self) -> anyhow::Result<Option<keygate_engine::SharedLimiter>> {
        let on_failure = match self.rate_limit_failure.as_str() {
            "open" => keygate_engine::LimiterFailure::Open,
            "closed" => keygate_engine::LimiterFailure::Closed,
            other => bail!("rate_limit_failure must be open or closed, not {other:?}"),
        };
        self.redis_url
            .as_deref()
            .map(|url| {
                keygate_engine::SharedLimiter::new(url, on_failure).map_err(anyhow::Error::msg)
            })
            .transpose()
    }

    /// The customer portal's settings, checked; a bad one stops the start, naming it.
    pub fn portal(&self) -> anyhow::Result<keygate_server::PortalConfig> {
        let is_http_url = |u: &str| {
            (u.starts_with("https://") || u.starts_with("http://"))
                && !u.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        if let Some(url) = &self.public_url {
            if !is_http_url(url) || url.trim_end_matches('/').matches('/').count() > 2 {
                bail!("public_url (KEYGATE_PUBLIC_URL) must be an origin such as https://keys.example.com, not {url:?}");
            }
        }
        if let Some(url) = &self.portal_support_url {
            if !is_http_url(url) {
                bail!("portal_support_url (KEYGATE_PORTAL_SUPPORT_URL) must be an http(s) URL, not {url:?}");
            }
        }
        if let Some(colour) = &self.portal_accent_color {
            if !keygate_server::valid_accent_color(colour) {
                bail!("portal_accent_color (KEYGATE_PORTAL_ACCENT_COLOR) must look like #2453c7, not {colour:?}");
            }
        }
        if let Some(sources) = &self.portal_frame_ancestors {
            if sources.trim().is_empty()
                || sources
                    .chars()
                    .any(|c| c == ';' || c == ',' || c.is_control())
            {
                bail!("portal_frame_ancestors (KEYGATE_PORTAL_FRAME_ANCESTORS) must be CSP sources separated by spaces, not {sources:?}");
            }
        }
        Ok(keygate_server::PortalConfig {
            public_url: self.public_url.clone(),
            product_name: self.portal_product_name.clone(),
            accent_color: self.portal_accent_color.clone(),
            support_url: self.portal_support_url.clone(),
            frame_ancestors: self.portal_frame_ancestors.clone(),
        })
    }

    /// `failed_auth_limit` as a rate limit; `None` when off.
    pub fn failed_auth_limit(&self) -> anyhow::Result<Option<keygate_store::RateLimit>> {
        let text = self.failed_auth_limit.trim();
        if text.eq_ignore_ascii_case("off") || text == "0" {
            return Ok(None);
        }
        let parsed = text.split_once('/').and_then(|(r, s)| {
            Some(keygate_store::RateLimit {
                requests: r.trim().parse().ok().filter(|n| *n > 0)?,
                per_seconds: s.trim().parse().ok().filter(|n| *n > 0)?,
            })
        });
        match parsed {
            Some(limit) => Ok(Some(limit)),
            None => bail!("failed_auth_limit must look like 100/60 (failures per seconds) or off, not {text:?}"),
        }
    }

    pub fn route_table(&self) -> anyhow::Result<keygate_core::RouteTable> {
        let routes = self
            .routes
            .iter()
            .map(|r| {
                keygate_core::Route::new(&r.method, &r.path, &r.permission)
                    .with_context(|| format!("invalid route {} {}", r.method, r.path))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(keygate_core::RouteTable::new(routes))
    }

    pub fn trusted_proxies(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .iter()
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .with_context(|| {
                        format!("trusted_proxies: {s:?} is not an address or CIDR block")
                    })
            })
            .collect()
    }
}

/// `a, b,c` → `["a", "b", "c"]`.
pub(crate) fn comma_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\nkey_prefix = \"oim\"\nenv_in_key = false\ndefault_plan = \"pro\"\n[plans.team]\nmax_keys = 50\nrate_limit = { requests = 10, per_seconds = 1 }\n[[routes]]\nmethod = \"POST\"\npath = \"/api/v1/invoices/{id}/send\"\npermission = \"invoices.send\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let none = |_: &str| None;
        let c = Config::load(&args, &none).unwrap();
        assert_eq!(
            (c.listen.as_str(), c.key_prefix.as_str(), c.env_in_key),
            ("127.0.0.1:1", "oim", false)
        );
        assert_eq!(c.plans().unwrap().max_keys("team"), Some(50));
        assert_eq!(c.plans().unwrap().max_keys("basic"), Some(2));
        assert_eq!(c.plans().unwrap().max_keys("unlimited"), None);
        assert_eq!(
            c.plans().unwrap().rate_limit("team"),
            Some(keygate_store::RateLimit {
                requests: 10,
                per_seconds: 1
            })
        );
        assert_eq!(
            c.failed_auth_limit().unwrap(),
            Some(keygate_store::RateLimit {
                requests: 100,
                per_seconds: 60
            })
        );
        assert!(c.route_table().is_ok());

        let env = |name: &str| match name {
            "KEYGATE_LISTEN" => Some("127.0.0.1:2".to_owned()),
            "KEYGATE_ENV_IN_KEY" => Some("true".to_owned()),
            "KEYGATE_CACHE_CAPACITY" => Some("5000".to_owned()),
            _ => None,
        };
        let c = Config::load(&args, &env).unwrap();
        assert_eq!((c.listen.as_str(), c.env_in_key), ("127.0.0.1:2", true));
        assert_eq!(c.cache_capacity, 5000);
        let bad_capacity =
            |name: &str| (name == "KEYGATE_CACHE_CAPACITY").then(|| "lots".to_owned());
        let error = Config::load(&args, &bad_capacity).unwrap_err();
        assert!(
            format!("{error:#}").contains("KEYGATE_CACHE_CAPACITY must be a whole number"),
            "{error:#}"
        );
        let no_capacity = |name: &str| (name == "KEYGATE_CACHE_CAPACITY").then(|| "0".to_owned());
        let error = Config::load(&args, &no_capacity).unwrap_err();
        assert!(
            format!("{error:#}").contains("KEYGATE_CACHE_CAPACITY) must be at least 1"),
            "{error:#}"
        );

        let args = ServeArgs {
            listen: Some("127.0.0.1:3".into()),
            ..args
        };
        assert_eq!(Config::load(&args, &env).unwrap().listen, "127.0.0.1:3");
    }

    /// Every variable the README's settings tables name changes the configuration (or is
    /// refused when its value does not fit): a documented variable that nothing reads
    /// would silently leave the default in place.
    #[test]
    fn every_documented_variable_is_read() {
        let readme = include_str!("../../../README.md");
        let mut documented: Vec<&str> = readme
            .lines()
            .filter(|line| line.starts_with("| `"))
            .flat_map(|line| line.split('`'))
            .filter(|word| word.starts_with("KEYGATE_"))
            .collect();
        documented.sort_unstable();
        documented.dedup();
        assert!(documented.len() > 40, "README tables not found");
        let args = ServeArgs::default();
        let default = Config::load(&args, &|_: &str| None).unwrap();
        let candidates = [
            "7",
            "true",
            "1/1",
            "closed",
            "json",
            "10.0.0.0/8",
            "127.0.0.1:9",
            "http://127.0.0.1:9",
            "#123456",
        ];
        let unread: Vec<&str> = documented
            .iter()
            .copied()
            .filter(|&name| {
                candidates.iter().all(|value| {
                    let env = |n: &str| (n == name).then(|| value.to_string());
                    matches!(Config::load(&args, &env), Ok(c) if c == default)
                })
            })
            .collect();
        assert!(unread.is_empty(), "documented but never read: {unread:?}");
    }

    #[test]
    fn leak_and_key_lifetime_settings_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(
            &path,
            "leak_action = \"notify\"\ngithub_scanning_keys_url = \"http://127.0.0.1:9/keys\"\nidle_retirement_check_seconds = 5\n[plans.team]\nmax_key_lifetime_days = 90\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let none = |_: &str| None;
        let defaults = Config::load(&ServeArgs::default(), &none).unwrap();
        let leaks = defaults.leaks().unwrap();
        assert_eq!(leaks.action, keygate_engine::manage::LeakAction::Revoke);
        assert_eq!(
            leaks.github_keys.url(),
            "https://api.github.com/meta/public_keys/secret_scanning"
        );
        assert_eq!(defaults.idle_retirement_interval().unwrap().as_secs(), 30);

        let c = Config::load(&args, &none).unwrap();
        let leaks = c.leaks().unwrap();
        assert_eq!(leaks.action, keygate_engine::manage::LeakAction::Notify);
        assert_eq!(leaks.github_keys.url(), "http://127.0.0.1:9/keys");
        assert_eq!(c.idle_retirement_interval().unwrap().as_secs(), 5);
        let plans = c.plans().unwrap();
        assert_eq!(plans.max_key_lifetime_ms("team"), Some(90 * 86_400_000));
        assert_eq!(plans.max_key_lifetime_ms("pro"), None);

        let env = |name: &str| match name {
            "KEYGATE_LEAK_ACTION" => Some("revoke".to_owned()),
            "KEYGATE_GITHUB_SCANNING_KEYS_URL" => Some("https://keys.example/list".to_owned()),
            "KEYGATE_IDLE_RETIREMENT_CHECK_SECONDS" => Some("7".to_owned()),
            _ => None,
        };
        let c = Config::load(&args, &env).unwrap();
        let leaks = c.leaks().unwrap();
        assert_eq!(leaks.action, keygate_engine::manage::LeakAction::Revoke);
        assert_eq!(leaks.github_keys.url(), "https://keys.example/list");
        assert_eq!(c.idle_retirement_interval().unwrap().as_secs(), 7);

        for bad in [
            Config {
                leak_action: "delete".into(),
                ..Config::default()
            },
            Config {
                github_scanning_keys_url: "ftp://x".into(),
                ..Config::default()
            },
        ] {
            assert!(bad.leaks().is_err());
        }
        let zero = Config {
            idle_retirement_check_seconds: 0,
            ..Config::default()
        };
        assert!(zero.idle_retirement_interval().is_err());
        let mut no_life = Config::default();
        no_life.plans.insert(
            "team".into(),
            PlanConfig {
                max_key_lifetime_days: Some(0),
                ..PlanConfig::default()
            },
        );
        assert!(no_life.plans().is_err());
    }

    #[test]
    fn mistakes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(Config::load(&args, &|_| None).is_err());
        let bad_bool = |n: &str| (n == "KEYGATE_ENV_IN_KEY").then(|| "maybe".to_owned());
        assert!(Config::load(&ServeArgs::default(), &bad_bool).is_err());
        let c = Config {
            default_plan: "gold".into(),
            ..Config::default()
        };
        assert!(c.plans().is_err());
    }

    #[test]
    fn gateway_settings() {
        let none = |_: &str| None;
        assert!(Config::load(&ServeArgs::default(), &none)
            .unwrap()
            .gateway()
            .unwrap()
            .is_none());
        let env = |name: &str| match name {
            "KEYGATE_UPSTREAM" => Some("http://127.0.0.1:3000/base/".to_owned()),
            "KEYGATE_UPSTREAM_TIMEOUT_SECONDS" => Some("5".to_owned()),
            _ => None,
        };
        let args = ServeArgs {
            sandbox_upstream: Some("http://127.0.0.1:3001".into()),
            ..Default::default()
        };
        let (listen, gw) = Config::load(&args, &env)
            .unwrap()
            .gateway()
            .unwrap()
            .unwrap();
        assert_eq!(listen, "127.0.0.1:8081");
        assert_eq!(gw.upstream.as_str(), "http://127.0.0.1:3000/base");
        assert_eq!(
            gw.sandbox_upstream.as_ref().map(|u| u.as_str()),
            Some("http://127.0.0.1:3001")
        );
        assert_eq!(gw.timeout, std::time::Duration::from_secs(5));
        assert_eq!(gw.key_info_path, "/v1/api-key-info");
        assert_eq!(
            gw.upstream_max_idle,
            keygate_server::GatewayConfig::DEFAULT_UPSTREAM_MAX_IDLE
        );
        let capped = |name: &str| match name {
            "KEYGATE_UPSTREAM_MAX_IDLE_CONNECTIONS" => Some("8".to_owned()),
            other => env(other),
        };
        let (_, gw) = Config::load(&args, &capped)
            .unwrap()
            .gateway()
            .unwrap()
            .unwrap();
        assert_eq!(gw.upstream_max_idle, 8);

        for bad in [
            "ws://api.example.com",
            "ftp://x",
            "not a url",
            "http://u:p@h:1",
        ] {
            let c = Config {
                upstream: Some(bad.into()),
                ..Config::default()
            };
            assert!(c.gateway().is_err(), "{bad}");
        }
        let orphan = Config {
            sandbox_upstream: Some("http://127.0.0.1:3001".into()),
            ..Config::default()
        };
        assert!(orphan.gateway().is_err());
        let bad_path = Config {
            upstream: Some("http://127.0.0.1:3000".into()),
            gateway_key_info_path: "v1/info".into(),
            ..Config::default()
        };
        assert!(bad_path.gateway().is_err());
    }

    #[test]
    fn upstream_ca_file_from_file_environment_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["upstream.test".to_owned()]).unwrap();
        let pem = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, ca.cert.pem()).unwrap();
            path.display().to_string()
        };
        let (in_file, in_env, in_flag) = (pem("file.pem"), pem("env.pem"), pem("flag.pem"));
        let toml = dir.path().join("keygate.toml");
        std::fs::write(
            &toml,
            format!(
                "upstream = \"https://upstream.test:8443/api\"\nupstream_ca_file = {in_file:?}\n"
            ),
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(toml),
            ..Default::default()
        };
        let ca_file_of = |args: &ServeArgs, env: Env<'_>| {
            let (_, gw) = Config::load(args, env).unwrap().gateway().unwrap().unwrap();
            assert_eq!(gw.upstream.as_str(), "https://upstream.test:8443/api");
            gw.upstream_ca_file.unwrap().display().to_string()
        };
        assert_eq!(ca_file_of(&args, &|_| None), in_file);
        let env_value = in_env.clone();
        let env = move |n: &str| (n == "KEYGATE_UPSTREAM_CA_FILE").then(|| env_value.clone());
        assert_eq!(ca_file_of(&args, &env), in_env);
        let args = ServeArgs {
            upstream_ca_file: Some(in_flag.clone()),
            ..args
        };
        assert_eq!(ca_file_of(&args, &env), in_flag);

        // A file that cannot be read stops the start (the kinds of bad file: gateway tests).
        let missing = Config {
            upstream: Some("https://upstream.test".into()),
            upstream_ca_file: Some(dir.path().join("missing.pem").display().to_string()),
            ..Config::default()
        };
        let e = format!("{:#}", missing.gateway().unwrap_err());
        assert!(
            e.contains("upstream_ca_file") && e.contains("cannot be read"),
            "{e}"
        );
        // Without an upstream the setting is a mistake, not silently ignored.
        let orphan = Config {
            upstream_ca_file: Some(in_file),
            ..Config::default()
        };
        assert!(orphan.gateway().is_err());
    }

    #[test]
    fn client_timeouts_from_file_environment_and_flags() {
        use std::time::Duration;
        let none = |_: &str| None;
        let edge = Config::load(&ServeArgs::default(), &none)
            .unwrap()
            .edge_limits()
            .unwrap();
        let defaults = keygate_server::EdgeLimits::default();
        assert_eq!(
            (
                edge.header_read_timeout,
                edge.idle_timeout,
                edge.send_timeout
            ),
            (
                defaults.header_read_timeout,
                defaults.idle_timeout,
                defaults.send_timeout
            )
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(
            &path,
            "client_header_timeout_seconds = 3\nclient_idle_timeout_seconds = 40\nclient_send_timeout_seconds = 7\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let edge = Config::load(&args, &none).unwrap().edge_limits().unwrap();
        assert_eq!(edge.first_request_timeout, Duration::from_secs(3));
        assert_eq!(edge.header_read_timeout, Duration::from_secs(3));
        assert_eq!(edge.idle_timeout, Duration::from_secs(40));
        assert_eq!(edge.send_timeout, Duration::from_secs(7));
        // The upstream's timeout is its own.
        assert_eq!(edge.request_timeout, defaults.request_timeout);

        let env = |name: &str| match name {
            "KEYGATE_CLIENT_HEADER_TIMEOUT_SECONDS" => Some("4".to_owned()),
            "KEYGATE_CLIENT_IDLE_TIMEOUT_SECONDS" => Some("50".to_owned()),
            "KEYGATE_CLIENT_SEND_TIMEOUT_SECONDS" => Some("8".to_owned()),
            _ => None,
        };
        let edge = Config::load(&args, &env).unwrap().edge_limits().unwrap();
        assert_eq!(
            (
                edge.header_read_timeout,
                edge.idle_timeout,
                edge.send_timeout
            ),
            (
                Duration::from_secs(4),
                Duration::from_secs(50),
                Duration::from_secs(8)
            )
        );

        let args = ServeArgs {
            client_header_timeout_seconds: Some(5),
            client_idle_timeout_seconds: Some(60),
            client_send_timeout_seconds: Some(9),
            ..args
        };
        let edge = Config::load(&args, &env).unwrap().edge_limits().unwrap();
        assert_eq!(
            (
                edge.header_read_timeout,
                edge.idle_timeout,
                edge.send_timeout
            ),
            (
                Duration::from_secs(5),
                Duration::from_secs(60),
                Duration::from_secs(9)
            )
        );

        let zero = Config {
            client_send_timeout_seconds: 0,
            ..Config::default()
        };
        let e = zero.edge_limits().unwrap_err().to_string();
        assert!(e.contains("client_send_timeout_seconds"), "{e}");
        let word =
            |n: &str| (n == "KEYGATE_CLIENT_IDLE_TIMEOUT_SECONDS").then(|| "soon".to_owned());
        assert!(Config::load(&ServeArgs::default(), &word).is_err());
    }

    #[test]
    fn portal_settings_from_file_and_environment_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(
            &path,
            "public_url = \"https://keys.example.com\"\nportal_product_name = \"Invoicely\"\nportal_accent_color = \"#0a7d55\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let env = |name: &str| match name {
            "KEYGATE_PORTAL_SUPPORT_URL" => Some("https://help.example.com".to_owned()),
            "KEYGATE_PORTAL_FRAME_ANCESTORS" => Some("https://app.example.com".to_owned()),
            "KEYGATE_PUBLIC_URL" => Some("https://portal.example.com".to_owned()),
            _ => None,
        };
        let portal = Config::load(&args, &env).unwrap().portal().unwrap();
        assert_eq!(
            portal.public_url.as_deref(),
            Some("https://portal.example.com")
        );
        assert_eq!(portal.product_name.as_deref(), Some("Invoicely"));
        assert_eq!(portal.accent_color.as_deref(), Some("#0a7d55"));
        assert_eq!(
            portal.support_url.as_deref(),
            Some("https://help.example.com")
        );
        assert_eq!(
            portal.frame_ancestors.as_deref(),
            Some("https://app.example.com")
        );
        for (name, bad, says) in [
            (
                "KEYGATE_PORTAL_ACCENT_COLOR",
                "red; } body { x",
                "portal_accent_color",
            ),
            (
                "KEYGATE_PUBLIC_URL",
                "https://keys.example.com/portal",
                "public_url",
            ),
            ("KEYGATE_PUBLIC_URL", "keys.example.com", "public_url"),
            (
                "KEYGATE_PORTAL_SUPPORT_URL",
                "javascript:alert(1)",
                "portal_support_url",
            ),
            (
                "KEYGATE_PORTAL_FRAME_ANCESTORS",
                "'self'; script-src *",
                "portal_frame_ancestors",
            ),
        ] {
            let env = |n: &str| (n == name).then(|| bad.to_owned());
            let e = Config::load(&args, &env).unwrap().portal().unwrap_err();
            assert!(e.to_string().contains(says), "{name}={bad}: {e}");
        }
    }

    #[test]
    fn permission_catalog_from_file_and_environment() {
        let none = |_: &str| None;
        let c = Config::load(&ServeArgs::default(), &none).unwrap();
        assert!(
            c.permissions.catalog().unwrap().is_empty(),
            "no built-in resources"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(
            &path,
            "[permissions]\nresources = [\"orders\", \"Shipments\"]\nactions = [\"orders.refund\", \"parcels:track\"]\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let rows = |c: &Config| -> Vec<(String, Vec<String>)> {
            c.permissions
                .catalog()
                .unwrap()
                .resources()
                .map(|(r, a)| (r.to_owned(), a.into_iter().map(str::to_owned).collect()))
                .collect()
        };
        let c = Config::load(&args, &none).unwrap();
        assert_eq!(
            rows(&c),
            vec![
                ("orders".to_owned(), vec!["refund".to_owned()]),
                ("shipments".to_owned(), vec![]),
                ("parcels".to_owned(), vec!["track".to_owned()]),
            ]
        );

        // The environment replaces the file's lists.
        let env = |name: &str| match name {
            "KEYGATE_PERMISSION_RESOURCES" => Some(" invoices, clients ,".to_owned()),
            _ => None,
        };
        let c = Config::load(&args, &env).unwrap();
        assert_eq!(
            rows(&c),
            vec![
                ("invoices".to_owned(), vec![]),
                ("clients".to_owned(), vec![]),
                ("orders".to_owned(), vec!["refund".to_owned()]),
                ("parcels".to_owned(), vec!["track".to_owned()]),
            ]
        );

        // A bad name is an error naming the setting.
        let bad = |name: &'static str, value: &'static str| {
            let env = move |n: &str| (n == name).then(|| value.to_owned());
            let c = Config::load(&ServeArgs::default(), &env).unwrap();
            format!("{:#}", c.permissions.catalog().unwrap_err())
        };
        let e = bad("KEYGATE_PERMISSION_RESOURCES", "orders,sales orders");
        assert!(
            e.contains("permissions.resources") && e.contains("sales orders"),
            "{e}"
        );
        let e = bad("KEYGATE_PERMISSION_RESOURCES", "invoices.send");
        assert!(e.contains("permissions.resources"), "{e}");
        let e = bad("KEYGATE_PERMISSION_ACTIONS", "orders.*");
        assert!(e.contains("permissions.actions"), "{e}");
        let e = bad("KEYGATE_PERMISSION_ACTIONS", "refund");
        assert!(e.contains("permissions.actions"), "{e}");
        // An unknown key in the table is refused like any other.
        std::fs::write(
            dir.path().join("typo.toml"),
            "[permissions]\nresource = [\"orders\"]\n",
        )
        .unwrap();
        let typo = ServeArgs {
            config: Some(dir.path().join("typo.toml")),
            ..Default::default()
        };
        assert!(Config::load(&typo, &none).is_err());
    }

    #[test]
    fn the_invoicing_example_configuration_is_valid() {
        let text = include_str!("../../../examples/invoices-api/keygate.toml");
        let c: Config = toml::from_str(text).unwrap();
        let catalog = c.permissions.catalog().unwrap();
        let resources: Vec<&str> = catalog.resources().map(|(r, _)| r).collect();
        assert_eq!(
            resources,
            ["invoices", "clients", "quotations", "products", "webhooks"]
        );
        assert!(c.route_table().is_ok());
    }
}
