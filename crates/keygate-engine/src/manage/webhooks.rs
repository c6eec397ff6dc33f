//! Webhook endpoints (operator only), their deliveries, and what the delivery worker asks
//! of the engine: leases on due deliveries, the retry schedule, disabling an endpoint that
//! keeps failing, and the expiry scan. Sending is the server's (`keygate-server/src/webhooks`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::Engine as _;
use keygate_store::{
    AttemptOutcome, ClaimedDelivery, Cursor, Delivery, EndpointPatch, ExpiryScan, WebhookEndpoint,
    WebhookSecret, EVENT_TYPES,
};
use serde_json::json;

use super::pages::{Page, PageRequest};
use super::{known_shape, validate, Caller};
use crate::ids::new_id;
use crate::{now_ms, Engine, Error, Result};

/// How webhooks behave (`webhook_*` settings).
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Allow endpoints on loopback, private, link-local and unique-local addresses (the
    /// SSRF guard off; for tests and trusted networks).
    pub allow_private: bool,
    /// The first retry's delay (before jitter); each further retry doubles it.
    pub retry_base: Duration,
    /// The longest delay between two attempts.
    pub retry_max_delay: Duration,
    /// How long a delivery is retried before it is marked failed.
    pub retry_for: Duration,
    /// An endpoint failing this long without a success is disabled.
    pub disable_after: Duration,
    /// `key.expiring` lead times, in days before `expires_at`.
    pub expiring_days: Vec<u32>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            allow_private: false,
            retry_base: Duration::from_secs(10),
            retry_max_delay: Duration::from_secs(3600),
            retry_for: Duration::from_secs(24 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            expiring_days: vec![30, 7, 1],
        }
    }
}

/// `POST /v1/webhook-endpoints`.
#[derive(Clone, Debug, Default)]
pub struct NewWebhookEndpoint {
    pub url: String,
    /// `None`: every event type.
    pub events: Option<Vec<String>>,
    pub account_id: Option<String>,
    pub description: Option<String>,
}

/// `PATCH /v1/webhook-endpoints/{id}`.
#[derive(Clone, Debug, Default)]
pub struct WebhookEndpointUpdate {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    /// `Some(None)` clears it.
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
}

pub const MAX_URL_CHARS: usize = 2048;
/// Random bytes in a signing secret (Standard Webhooks: 24 to 64).
const SECRET_BYTES: usize = 32;

/// Addresses a webhook must not reach unless `allow_private`: loopback, private,
/// link-local, unique-local, CGNAT, unspecified, broadcast and multicast.
pub fn is_private_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => private_v4(v4),
            None => private_v6(v6),
        },
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// A new signing secret: `whsec_` and the base64 of 32 random bytes.
fn new_secret() -> Result<WebhookSecret> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::getrandom(&mut bytes).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(WebhookSecret::new(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )))
}

fn refuse_private() -> Error {
    Error::validation(
        "url",
        "url points to a loopback, private or link-local address; \
         set webhook_allow_private = true (KEYGATE_WEBHOOK_ALLOW_PRIVATE) to allow it",
    )
}

impl WebhookSettings {
    /// An endpoint URL: absolute http(s), with a host, no credentials; a literal address
    /// must be public unless `allow_private` (host names are checked when sending).
    pub fn checked_url(&self, raw: &str) -> Result<String> {
        let raw = raw.trim();
        if raw.chars().count() > MAX_URL_CHARS {
            return Err(Error::validation(
                "url",
                format!("url must be at most {MAX_URL_CHARS} characters"),
            ));
        }
        let url = url::Url::parse(raw)
            .map_err(|_| Error::validation("url", "url must be an absolute http(s) URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::validation("url", "url must use http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::validation(
                "url",
                "url must not contain credentials; the signature authenticates keygate",
            ));
        }
        let ip = match url.host() {
            None => return Err(Error::validation("url", "url must name a host")),
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
        };
        if ip.is_some_and(is_private_address) && !self.allow_private {
            return Err(refuse_private());
        }
        Ok(url.to_string())
    }

    /// The delay before retry number `attempts` (1 = the first retry): the base doubled
    /// per attempt, capped, then between half and all of it (jitter spreads retries of an
    /// endpoint that came back).
    pub fn retry_delay(&self, attempts: i64) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let full = self
            .retry_base
            .saturating_mul(1u32 << doublings)
            .min(self.retry_max_delay);
        let mut random = [0u8; 8];
        // Without randomness the full delay is still a valid schedule.
        let fraction = match getrandom::getrandom(&mut random) {
            Ok(()) => (u64::from_le_bytes(random) >> 11) as f64 / (1u64 << 53) as f64,
            Err(_) => 1.0,
        };
        full / 2 + full.mul_f64(fraction / 2.0)
    }
}

/// Subscribed types; `["*"]` (or leaving `events` out) is every type, stored as none.
fn checked_events(events: Vec<String>) -> Result<Vec<String>> {
    if events.is_empty() {
        return Err(Error::validation(
            "events",
            "events must name at least one event type, or [\"*\"] for every type",
        ));
    }
    if events.iter().any(|e| e == "*") {
        return Ok(Vec::new());
    }
    let mut checked: Vec<String> = Vec::with_capacity(events.len());
    for event in events {
        if !EVENT_TYPES.contains(&event.as_str()) {
            return Err(Error::validation(
                "events",
                format!(
                    "unknown event type {:?}; known types: {}",
                    keygate_core::key::obscure(&event, 64),
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
        if !checked.contains(&event) {
            checked.push(event);
        }
    }
    Ok(checked)
}

fn checked_description(raw: &str) -> Result<String> {
    validate::name("description", raw)
}

/// Store "not found" as the record the caller named.
fn not_found(what: &'static str) -> impl Fn(keygate_store::StoreError) -> Error {
    move |e| match Error::from(e) {
        Error::NotFound(_) => Error::NotFound(what),
        other => other,
    }
}

impl Caller {
    /// Webhook endpoints are the operator's: a self-service key, whatever its
    /// permissions, may not manage them.
    fn require_operator_for_webhooks(&self) -> Result<()> {
        match self.own_account() {
            None => Ok(()),
            Some(_) => Err(Error::Forbidden(
                "only the operator (admin token) can manage webhook endpoints".into(),
            )),
        }
    }
}

impl Engine {
    /// The webhook settings (defaults until [`Engine::configure_webhooks`]).
    pub fn webhook_settings(&self) -> &WebhookSettings {
        self.webhooks.get_or_init(WebhookSettings::default)
    }

    /// Sets the webhook settings (once, at start).
    pub fn configure_webhooks(&self, settings: WebhookSettings) {
        if self.webhooks.set(settings).is_err() {
            tracing::warn!("webhook settings are set already; keeping the first");
        }
    }

    pub async fn create_webhook_endpoint(
        &self,
        caller: &Caller,
        new: NewWebhookEndpoint,
    ) -> Result<WebhookEndpoint> {
        caller.require_operator_for_webhooks()?;
        let url = self.webhook_settings().checked_url(&new.url)?;
        let events = new
            .events
            .map(checked_events)
            .transpose()?
            .unwrap_or_default();
        let description = new
            .description
            .as_deref()
            .map(checked_description)
            .transpose()?;
        if let Some(account_id) = new.account_id.as_deref() {
            known_shape(account_id, "account")?;
            if self.store.get_account(account_id).await?.is_none() {
                return Err(Error::NotFound("account"));
            }
        }
        let now = now_ms();
        let endpoint = WebhookEndpoint {
            id: new_id("whe")?,
            url,
            description,
            events,
            account_id: new.account_id,
            secret: new_secret()?,
            disabled_at: None,
            disabled_reason: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        let audit = caller.audit(
            "webhook_endpoint.create",
            endpoint.account_id.as_deref(),
            Some(&endpoint.id),
            json!({"url": endpoint.url, "events": endpoint.events}),
        )?;
        self.store
            .create_webhook_endpoint(&endpoint, &audit)
            .await?;
        Ok(endpoint)
    }

    pub async fn webhook_endpoint(&self, caller: &Caller, id: &str) -> Result<WebhookEndpoint> {
        caller.require_operator_for_webhooks()?;
        known_shape(id, "webhook endpoint")?;
        self.store
            .get_webhook_endpoint(id)
            .await?
            .ok_or(Error::NotFound("webhook endpoint"))
    }

    pub async fn webhook_endpoint_page(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<WebhookEndpoint>> {
        caller.require_operator_for_webhooks()?;
        let limit = page.limit()?;
        let after = match page.cursor_id()? {
            None => None,
            Some(id) => Some(Cursor {
                created_at: self
                    .store
                    .get_webhook_endpoint(id)
                    .await?
                    .ok_or_else(super::pages::unknown_cursor)?
                    .created_at,
                id,
            }),
        };
        let rows = self.store.query_webhook_endpoints(after, limit + 1).await?;
        Ok(Page::from_rows(rows, limit))
    }

    pub async fn update_webhook_endpoint(
        &self,
        caller: &Caller,
        id: &str,
        update: WebhookEndpointUpdate,
    ) -> Result<WebhookEndpoint> {
        caller.require_operator_for_webhooks()?;
        known_shape(id, "webhook endpoint")?;
        let patch = EndpointPatch {
            url: update
                .url
                .as_deref()
                .map(|u| self.webhook_settings().checked_url(u))
                .transpose()?,
            description: update
                .description
                .map(|d| d.as_deref().map(checked_description).transpose())
                .transpose()?,
            events: update.events.map(checked_events).transpose()?,
            enabled: update.enabled,
        };
        let audit = caller.audit(
            "webhook_endpoint.update",
            None,
            Some(id),
            json!({"url": patch.url, "events": patch.events, "enabled": patch.enabled}),
        )?;
        self.store
            .update_webhook_endpoint(id, &patch, now_ms(), &audit)
            .await
            .map_err(not_found("webhook endpoint"))
    }

    pub async fn delete_webhook_endpoint(&self, caller: &Caller, id: &str) -> Result<()> {
        caller.require_operator_for_webhooks()?;
        known_shape(id, "webhook endpoint")?;
        let audit = caller.audit("webhook_endpoint.delete", None, Some(id), json!({}))?;
        self.store
            .delete_webhook_endpoint(id, &audit)
            .await
            .map_err(not_found("webhook endpoint"))
    }

    /// A new signing secret; the old one stops signing at once.
    pub async fn rotate_webhook_secret(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<WebhookEndpoint> {
        caller.require_operator_for_webhooks()?;
        known_shape(id, "webhook endpoint")?;
        let audit = caller.audit("webhook_endpoint.rotate_secret", None, Some(id), json!({}))?;
        self.store
            .set_webhook_secret(id, &new_secret()?, now_ms(), &audit)
            .await
            .map_err(not_found("webhook endpoint"))
    }

    /// A page of one endpoint's deliveries, oldest first.
    pub async fn webhook_delivery_page(
        &self,
        caller: &Caller,
        endpoint_id: &str,
        page: &PageRequest,
    ) -> Result<Page<Delivery>> {
        let endpoint = self.webhook_endpoint(caller, endpoint_id).await?;
        let limit = page.limit()?;
        let after = match page.cursor_id()? {
            None => None,
            Some(id) => Some(Cursor {
                created_at: self
                    .store
                    .get_webhook_delivery(&endpoint.id, id)
                    .await?
                    .ok_or_else(super::pages::unknown_cursor)?
                    .created_at,
                id,
            }),
        };
        let rows = self
            .store
            .query_webhook_deliveries(&endpoint.id, after, limit + 1)
            .await?;
        Ok(Page::from_rows(rows, limit))
    }

    /// Makes a delivery due now, whatever its status.
    pub async fn retry_webhook_delivery(
        &self,
        caller: &Caller,
        endpoint_id: &str,
        delivery_id: &str,
    ) -> Result<Delivery> {
        let endpoint = self.webhook_endpoint(caller, endpoint_id).await?;
        known_shape(delivery_id, "delivery")?;
        self.store
            .retry_webhook_delivery(&endpoint.id, delivery_id, now_ms())
            .await
            .map_err(not_found("delivery"))
    }

    /// Leases up to `limit` due deliveries for `lease` (longer than one attempt can take).
    pub async fn claim_webhook_deliveries(
        &self,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>> {
        let now = now_ms();
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        Ok(self
            .store
            .claim_webhook_deliveries(now, now.saturating_add(lease_ms), limit)
            .await?)
    }

    /// Records an attempt: `Ok(status)` for a 2xx answer, `Err((status, error))` otherwise.
    /// A failure is retried on the backoff schedule until `retry_for` after the event (the
    /// last attempt exactly then), then the delivery is failed; an endpoint without a
    /// success for `disable_after` is disabled with an `endpoint.disabled` audit event.
    pub async fn finish_webhook_delivery(
        &self,
        claimed: &ClaimedDelivery,
        result: std::result::Result<u16, (Option<u16>, String)>,
    ) -> Result<()> {
        let settings = self.webhook_settings();
        let now = now_ms();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let outcome = match result {
            Ok(status) => AttemptOutcome {
                at: now,
                status_code: Some(i64::from(status)),
                error: None,
                retry_at: None,
            },
            Err((status, error)) => {
                let give_up_at = claimed
                    .delivery
                    .created_at
                    .saturating_add(ms(settings.retry_for));
                let delay = ms(settings.retry_delay(claimed.delivery.attempts + 1));
                AttemptOutcome {
                    at: now,
                    status_code: status.map(i64::from),
                    error: Some(error),
                    retry_at: (now < give_up_at).then(|| now.saturating_add(delay).min(give_up_at)),
                }
            }
        };
        let endpoint = &claimed.endpoint;
        let failing_since = self
            .store
            .finish_webhook_delivery(&claimed.delivery.id, &endpoint.id, &outcome)
            .await?;
        if let Some(since) = failing_since {
            if now.saturating_sub(since) >= ms(settings.disable_after) {
                let caller = Caller::admin(None);
                let mut audit = caller.audit(
                    "endpoint.disabled",
                    endpoint.account_id.as_deref(),
                    Some(&endpoint.id),
                    json!({"url": endpoint.url, "failing_since_ms": since}),
                )?;
                audit.actor = "system".to_owned();
                let reason = "no successful delivery for too long";
                if self
                    .store
                    .disable_webhook_endpoint(&endpoint.id, reason, &audit)
                    .await?
                {
                    tracing::warn!(endpoint = %endpoint.id, "webhook endpoint disabled after failing");
                }
            }
        }
        Ok(())
    }

    /// Runs the expiry scan if no other node holds its lease (held for `lease`).
    /// Returns the events written, `None` when another node holds the lease.
    pub async fn scan_webhook_expiry(&self, holder: &str, lease: Duration) -> Result<Option<u64>> {
        let now = now_ms();
        let new_event_id = || new_id("msg").ok();
        let scan = ExpiryScan {
            now,
            lead_days: &self.webhook_settings().expiring_days,
            expired_within_ms: 7 * 86_400_000,
            holder,
            lease_until: now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)),
            new_event_id: &new_event_id,
        };
        Ok(self.store.scan_key_expiry(&scan).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_recognised() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private_address(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "203.0.113.7", "2001:db8::1", "2606:4700::1111"] {
            assert!(!is_private_address(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_checked() {
        let strict = WebhookSettings::default();
        assert!(strict.checked_url("https://hooks.example.com/k").is_ok());
        for bad in [
            "ftp://example.com/",
            "not a url",
            "http://user:pw@example.com/",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://169.254.169.254/latest",
        ] {
            assert!(
                matches!(strict.checked_url(bad), Err(Error::Validation { field, .. }) if field == "url"),
                "{bad}"
            );
        }
        let open = WebhookSettings {
            allow_private: true,
            ..WebhookSettings::default()
        };
        assert!(open.checked_url("http://127.0.0.1:8080/").is_ok());
    }

    #[test]
    fn retries_back_off_with_jitter() {
        let s = WebhookSettings::default();
        let first = s.retry_delay(1);
        assert!(first >= Duration::from_secs(5) && first <= Duration::from_secs(10));
        let fifth = s.retry_delay(5);
        assert!(fifth >= Duration::from_secs(80) && fifth <= Duration::from_secs(160));
        assert!(s.retry_delay(40) <= s.retry_max_delay);
    }
}
