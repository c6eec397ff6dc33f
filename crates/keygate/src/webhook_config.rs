//! The `webhook_*` settings (file keys and their `KEYGATE_WEBHOOK_*` variables), kept
//! apart from `config.rs` so the lifecycle-webhook feature reads as one piece.

use std::time::Duration;

use anyhow::Context;
use keygate_engine::manage::WebhookSettings;

use crate::config::{Config, Env};

impl Config {
    /// `KEYGATE_WEBHOOK_*` over the file's `webhook_*` keys.
    pub(crate) fn apply_webhook_env(&mut self, env: Env<'_>) -> anyhow::Result<()> {
        if let Some(v) = env("KEYGATE_WEBHOOK_ALLOW_PRIVATE") {
            self.webhook_allow_private = crate::config::parse_bool(&v)
                .context("KEYGATE_WEBHOOK_ALLOW_PRIVATE must be true or false")?;
        }
        for (target, name) in [
            (
                &mut self.webhook_retry_base_ms,
                "KEYGATE_WEBHOOK_RETRY_BASE_MS",
            ),
            (
                &mut self.webhook_retry_max_seconds,
                "KEYGATE_WEBHOOK_RETRY_MAX_SECONDS",
            ),
            (
                &mut self.webhook_retry_for_seconds,
                "KEYGATE_WEBHOOK_RETRY_FOR_SECONDS",
            ),
            (
                &mut self.webhook_disable_after_seconds,
                "KEYGATE_WEBHOOK_DISABLE_AFTER_SECONDS",
            ),
            (&mut self.webhook_poll_ms, "KEYGATE_WEBHOOK_POLL_MS"),
            (
                &mut self.webhook_scan_seconds,
                "KEYGATE_WEBHOOK_SCAN_SECONDS",
            ),
        ] {
            if let Some(v) = env(name) {
                *target = v
                    .parse()
                    .with_context(|| format!("{name} must be a whole number"))?;
            }
        }
        if let Some(v) = env("KEYGATE_WEBHOOK_EXPIRING_DAYS") {
            self.webhook_expiring_days = crate::config::comma_list(&v)
                .iter()
                .map(|d| d.parse())
                .collect::<Result<_, _>>()
                .context(
                    "KEYGATE_WEBHOOK_EXPIRING_DAYS must be whole numbers of days, comma-separated",
                )?;
        }
        Ok(())
    }

    /// The engine's webhook settings.
    pub fn webhook_settings(&self) -> anyhow::Result<WebhookSettings> {
        if self.webhook_expiring_days.contains(&0) {
            anyhow::bail!("webhook_expiring_days: lead times are at least 1 day");
        }
        Ok(WebhookSettings {
            allow_private: self.webhook_allow_private,
            retry_base: Duration::from_millis(self.webhook_retry_base_ms.max(1)),
            retry_max_delay: Duration::from_secs(self.webhook_retry_max_seconds.max(1)),
            retry_for: Duration::from_secs(self.webhook_retry_for_seconds),
            disable_after: Duration::from_secs(self.webhook_disable_after_seconds),
            expiring_days: self.webhook_expiring_days.clone(),
        })
    }

    /// How the delivery worker runs.
    pub fn webhook_worker(&self) -> keygate_server::WebhookWorkerConfig {
        keygate_server::WebhookWorkerConfig {
            poll_interval: Duration::from_millis(self.webhook_poll_ms.max(10)),
            scan_interval: Duration::from_secs(self.webhook_scan_seconds.max(1)),
            node_id: format!(
                "{}-{}",
                std::process::id(),
                keygate_core::key::random_hex(6).unwrap_or_default()
            ),
        }
    }
}
