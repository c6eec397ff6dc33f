//! `keygate serve`: open the store, settle the secrets, start the engine and the HTTP
//! listener, and on SIGTERM or Ctrl-C stop accepting, finish requests and flush usage.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use keygate_core::{KeyFormat, Pepper};
use keygate_engine::{AdminToken, Engine, EngineConfig};
use keygate_server::{access_log, AppState, HttpConfig};
use keygate_store::postgres::PostgresStore;
use keygate_store::sqlite::SqliteStore;
use keygate_store::Store;
use tokio::net::TcpListener;

use crate::config::{Config, ServeArgs};

pub(crate) const ADMIN_DIGEST_SETTING: &str = "admin_token_digest";
pub(crate) use keygate_engine::PEPPER_CHECK_SETTING;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args, &|name| std::env::var(name).ok())?;
    // Held until `run` returns: dropping it writes out the lines still queued.
    let _log_writer = init_logging(&config)?;
    // Everything that can be wrong in the configuration is checked, and the port taken,
    // before anything is created: a failed first start must not use up the one-time print
    // of the admin token.
    let key_format =
        KeyFormat::new(&config.key_prefix, config.env_in_key).context("invalid key_prefix")?;
    let routes = config.route_table()?;
    let plans = config.plans()?;
    let trusted_proxies = config.trusted_proxies()?;
    let shared_limiter = config.shared_limiter()?;
    let failed_auth = config
        .failed_auth_limit()?
        .map(|limit| Arc::new(keygate_engine::FailureThrottle::new(limit)));
    let gateway = config.gateway()?;
    let edge = config.edge_limits()?;
    let permission_catalog = config.permissions.catalog()?;
    let leaks = config.leaks()?;
    let idle_retirement_interval = config.idle_retirement_interval()?;
    let webhook_settings = config.webhook_settings()?;
    check_admin_token(config.admin_token.as_deref())?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let gateway = match gateway {
        Some((listen, gateway_config)) => {
            let gateway_listener = TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen} (gateway)"))?;
            Some((gateway_listener, gateway_config))
        }
        None => None,
    };

    let store = open_store(&config.database_url, true).await?;
    let pepper = settle_pepper(&config, store.as_ref()).await?;
    let admin = settle_admin_token(&config, store.as_ref(), &pepper).await?;
    let engine = Engine::new(
        store,
        EngineConfig {
            key_format,
            pepper: pepper.clone(),
            routes,
            plans,
            cache_capacity: config.cache_capacity,
            cache_ttl: Duration::from_secs(config.cache_ttl_seconds.max(1)),
            negative_cache_ttl: Duration::from_secs(config.negative_cache_ttl_seconds),
            stale_if_error: Duration::from_secs(config.stale_if_error_seconds),
            usage_retention: Duration::from_secs(config.usage_retention_days.max(1) * 86_400),
        },
    );
    if let Some(limiter) = shared_limiter {
        engine.share_rate_limits(limiter);
    }
    engine.configure_webhooks(webhook_settings);
    let webhook_worker =
        keygate_server::spawn_webhook_worker(engine.clone(), config.webhook_worker())
            .context("cannot start the webhook worker")?;
    engine.configure_tokens(config.token_settings());
    // So the JWKS is never empty; a store hiccup here only delays it to the first token.
    if let Err(e) = engine.prepare_signing_key().await {
        tracing::warn!(error = %e, "cannot prepare the token signing key yet");
    }
    let flusher = engine.spawn_usage_flusher_within(
        Duration::from_secs(config.usage_flush_seconds.max(1)),
        std::num::NonZeroU32::new(config.usage_flush_max_keys_per_second),
    );
    // Ends with the other background tasks (`stop_background`).
    engine.spawn_idle_retirer(idle_retirement_interval);
    let change_listener = engine
        .spawn_change_listener()
        .await
        .context("cannot subscribe to key changes")?;
    let state = AppState {
        engine: engine.clone(),
        admin,
        verify_token: config
            .verify_token
            .as_deref()
            .map(|t| AdminToken::from_secret(&pepper, t)),
        http: Arc::new(HttpConfig {
            body_limit: config.body_limit_bytes,
            trusted_proxies,
            failed_auth,
            edge,
            permission_catalog,
            leaks,
            portal: config.portal()?,
            ..HttpConfig::default()
        }),
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, database = %redact_url(&config.database_url), "keygate listening");
    // One signal stops both listeners; each lets its requests in flight finish.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopping = engine.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        // Background tasks finish at their next pause (usage is flushed once more below)
        // and change streams end, so they do not hold the drain.
        stopping.stop_background();
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin = keygate_server::serve(listener, state.clone(), stopped(stop_rx.clone()));
    match gateway {
        Some((gateway_listener, gateway_config)) => {
            tracing::info!(
                addr = %gateway_listener.local_addr()?,
                upstream = gateway_config.upstream.as_str(),
                sandbox_upstream = gateway_config.sandbox_upstream.as_ref().map(|u| u.as_str()),
                "gateway listening"
            );
            let gateway = keygate_server::serve_gateway(
                gateway_listener,
                state,
                gateway_config,
                stopped(stop_rx),
            );
            tokio::try_join!(admin, gateway)?;
        }
        None => admin.await?,
    }
    // Let a flush in progress finish (aborting it could drop its batch), then flush the rest.
    engine.stop_background();
    if let Err(e) = flusher.await {
        tracing::error!(error = %e, "usage flusher ended abnormally");
    }
    if let Some(task) = change_listener {
        task.abort();
    }
    // An attempt cut short is sent again when its lease runs out (at least once).
    webhook_worker.abort();
    match engine.flush_usage().await {
        Ok(n) => tracing::info!(keys = n, "flushed usage; bye"),
        Err(e) => tracing::error!(error = %e, "could not flush usage at shutdown"),
    }
    Ok(())
}

/// Logs go to stderr through a buffered writer on its own thread: a request only formats
/// its access-log line and queues it; the lines are written in batches (one `write` per
/// burst, not per line). Nothing is dropped: a sink slower than the traffic slows the
/// queue down instead (`lossy(false)`). The access log is formatted by hand into batches
/// (`keygate_server::edge::access_log`) and queued on the same writer, so lines never
/// interleave.
fn init_logging(config: &Config) -> anyhow::Result<LogWriters> {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{},sqlx=warn", config.log))
        .context("invalid log filter (KEYGATE_LOG)")?;
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .thread_name("keygate-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer.clone());
    let (result, format) = match config.log_format.as_str() {
        "json" => (builder.json().try_init(), access_log::Format::Json),
        "text" => (builder.try_init(), access_log::Format::Text),
        other => bail!("log_format must be text or json, not {other:?}"),
    };
    result.map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))?;
    Ok(LogWriters {
        _access: access_log::install(writer, format),
        _queue: guard,
    })
}

/// Held while the process runs; dropping it writes out what is still queued: the access
/// log's batch into the queue first, then the queue (fields drop in declaration order).
struct LogWriters {
    _access: Option<access_log::Guard>,
    _queue: tracing_appender::non_blocking::WorkerGuard,
}

pub(crate) fn redact_url(url: &str) -> String {
    // postgres://user:password@host/db → postgres://user:***@host/db
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The store for `url`: `sqlite://PATH` (always migrated: one process owns the file) or
/// `postgres://…` (migrated when `migrate`).
pub async fn open_store(url: &str, migrate: bool) -> anyhow::Result<Arc<dyn Store>> {
    let shown = redact_url(url);
    if url.starts_with("sqlite:") {
        let store = SqliteStore::open(url)
            .await
            .with_context(|| format!("cannot open the database {shown}"))?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::open(url, migrate)
            .await
            .with_context(|| format!("cannot open the database {shown}"))?;
        Ok(Arc::new(store))
    } else {
        bail!("unsupported database URL {shown:?}: use sqlite://PATH or postgres://…")
    }
}

/// `keygate migrate`: apply the schema migrations and exit.
pub async fn migrate(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args, &|name| std::env::var(name).ok())?;
    let _log_writer = init_logging(&config)?;
    open_store(&config.database_url, true).await?;
    eprintln!("migrations applied to {}", redact_url(&config.database_url));
    Ok(())
}

/// `sqlite://data/keygate.db` → `data/keygate.pepper`.
pub(crate) fn pepper_path(database_url: &str) -> Option<PathBuf> {
    let path = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(Path::new(path).with_extension("pepper"))
}

const WRONG_PEPPER: &str = "the pepper is not the one this database's keys were made with; every key would be refused. Restore the original pepper (KEYGATE_PEPPER or the .pepper file beside the database)";

/// The configured pepper, or the one in the file beside the database (created 0600 on the
/// first start). Refuses to start with a pepper other than the one the keys were made with.
///
/// A generated pepper is written only once it is known to be accepted: just before the
/// database records its check, so a start that refuses leaves no new `.pepper` file behind
/// (issue 16), while a database never records a pepper that is not on disk.
pub(crate) async fn settle_pepper(config: &Config, store: &dyn Store) -> anyhow::Result<Pepper> {
    let (pepper, unsaved) = match &config.pepper {
        Some(p) => (parse_pepper(p)?, None),
        None => {
            let path = pepper_path(&config.database_url)
                .context("no pepper configured: set KEYGATE_PEPPER")?;
            match read_pepper_file(&path)? {
                Some(pepper) => (pepper, None),
                None => {
                    let (pepper, bytes) = Pepper::generate().context("cannot generate a pepper")?;
                    (pepper, Some((path, keygate_core::key::to_hex(&bytes))))
                }
            }
        }
    };
    let check = keygate_engine::pepper_check(&pepper);
    match store.get_setting(PEPPER_CHECK_SETTING).await? {
        Some(stored) if stored == check => return Ok(pepper),
        Some(_) => bail!(WRONG_PEPPER),
        None => {}
    }
    if let Some((path, hex)) = &unsaved {
        write_private(path, hex)?;
        tracing::info!(path = %path.display(), "generated a new pepper");
    }
    if !keygate_engine::pepper_matches(store, &pepper).await? {
        // Another node recorded its pepper first: ours is not the database's.
        if let Some((path, _)) = &unsaved {
            let _ = std::fs::remove_file(path);
        }
        bail!(WRONG_PEPPER);
    }
    Ok(pepper)
}

/// A configured pepper: hex, at least 32 bytes.
pub(crate) fn parse_pepper(hex: &str) -> anyhow::Result<Pepper> {
    let bytes = keygate_core::key::from_hex(hex.trim())
        .filter(|b| b.len() >= 32)
        .context("the pepper must be at least 64 hex characters (32 bytes), e.g. from `openssl rand -hex 32`")?;
    Ok(Pepper::new(bytes))
}

/// The pepper in the file at `path`, or `None` when there is no such file.
fn read_pepper_file(path: &Path) -> anyhow::Result<Option<Pepper>> {
    match std::fs::read_to_string(path) {
        Ok(hex) => {
            let bytes = keygate_core::key::from_hex(hex.trim())
                .filter(|b| b.len() >= 32)
                .with_context(|| format!("{} does not hold a pepper", path.display()))?;
            Ok(Some(Pepper::new(bytes)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A configured admin token must be long enough; checked with the rest of the
/// configuration, before the database or the pepper file is created.
fn check_admin_token(token: Option<&str>) -> anyhow::Result<()> {
    if token.is_some_and(|t| t.len() < 16) {
        bail!("the admin token must be at least 16 characters");
    }
    Ok(())
}

/// Writes a new file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// The configured admin token, or the stored digest, or a new token printed once.
async fn settle_admin_token(
    config: &Config,
    store: &dyn Store,
    pepper: &Pepper,
) -> anyhow::Result<AdminToken> {
    if let Some(token) = &config.admin_token {
        check_admin_token(Some(token))?;
        return Ok(AdminToken::from_secret(pepper, token));
    }
    if let Some(hex) = store.get_setting(ADMIN_DIGEST_SETTING).await? {
        let digest = keygate_core::KeyDigest::from_hex(&hex)
            .context("stored admin token digest is corrupt")?;
        return Ok(AdminToken::from_digest(digest));
    }
    let (token, admin) = AdminToken::generate(pepper)?;
    if store
        .insert_setting_if_absent(ADMIN_DIGEST_SETTING, &admin.digest().to_hex())
        .await?
    {
        // Printed once, on the terminal, never through the log.
        eprintln!(
            "\nkeygate admin token (shown only this once; keygate keeps only its digest):\n\n    {token}\n\nUse it as `Authorization: Bearer <token>` or KEYGATE_ADMIN_TOKEN for the CLI.\n"
        );
        Ok(admin)
    } else {
        let hex = store
            .get_setting(ADMIN_DIGEST_SETTING)
            .await?
            .unwrap_or_default();
        let digest = keygate_core::KeyDigest::from_hex(&hex)
            .context("stored admin token digest is corrupt")?;
        Ok(AdminToken::from_digest(digest))
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pepper_file_sits_beside_the_database() {
        assert_eq!(
            pepper_path("sqlite://data/k.db"),
            Some(PathBuf::from("data/k.pepper"))
        );
        assert_eq!(
            pepper_path("sqlite:keygate.db?mode=rwc"),
            Some(PathBuf::from("keygate.pepper"))
        );
        assert_eq!(pepper_path("sqlite::memory:"), None);
    }

    #[test]
    fn database_passwords_are_not_logged() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite://k.db"), "sqlite://k.db");
    }
}
