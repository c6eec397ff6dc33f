//! The webhook delivery worker: leases due deliveries from the store (several nodes share
//! the work, none sends a delivery another holds), sends each as a Standard Webhooks v1
//! request, and reports the outcome to the engine (retry schedule, failing endpoints). It
//! also runs the expiry scan (`key.expiring`, `key.expired`) when it holds the scan lease.
//!
//! Outbound requests: connect timeout 5 s, total 15 s, no redirects followed, no proxy
//! from the environment, at most 4 KiB of the answer read. Host names are resolved by a
//! resolver that drops loopback/private/link-local addresses (unless allowed), so a name
//! that resolves (or re-resolves) to one is never connected to.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use keygate_engine::manage::is_private_address;
use keygate_engine::Engine;
use keygate_store::{ClaimedDelivery, WebhookSecret};
use sha2::Sha256;

/// How long a claimed delivery is this node's: longer than an attempt can take (15 s).
const LEASE: Duration = Duration::from_secs(60);
/// Deliveries claimed at once (and sent concurrently).
const BATCH: u32 = 32;
/// Bytes of an answer read (then the connection is dropped).
const MAX_ANSWER_BYTES: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How the worker runs.
#[derive(Clone, Debug)]
pub struct WebhookWorkerConfig {
    /// How often due deliveries are looked for.
    pub poll_interval: Duration,
    /// How often the expiry scan runs (on one node at a time).
    pub scan_interval: Duration,
    /// This node's name in the scan lease.
    pub node_id: String,
}

/// The Standard Webhooks v1 signature of `body`: `v1,` and the base64 HMAC-SHA256, keyed
/// with the secret's base64-decoded bytes, of `id.timestamp.body`. `None` if the secret
/// is not `whsec_` + base64.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let encoded = secret.expose().strip_prefix("whsec_")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Resolves host names, dropping the addresses the SSRF guard refuses.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || !is_private_address(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "{host} resolves to no address a webhook may reach (loopback, private and \
                     link-local addresses need webhook_allow_private)"
                )
                .into());
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    fn new(allow_private: bool) -> reqwest::Result<Sender> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .user_agent(concat!("keygate-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender {
            client,
            allow_private,
        })
    }

    /// One attempt: `Ok(status)` for a 2xx answer, else the status (if any) and why.
    async fn send(&self, claimed: &ClaimedDelivery) -> Result<u16, (Option<u16>, String)> {
        let url = reqwest::Url::parse(&claimed.endpoint.url)
            .map_err(|_| (None, "the endpoint URL does not parse".to_owned()))?;
        // Literal addresses skip the resolver: check them here.
        let literal: Option<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(ip.into()),
            Some(url::Host::Ipv6(ip)) => Some(ip.into()),
            _ => None,
        };
        if !self.allow_private && literal.is_some_and(is_private_address) {
            return Err((
                None,
                "refused: the endpoint is a loopback, private or link-local address \
                 (webhook_allow_private is off)"
                    .to_owned(),
            ));
        }
        let body = crate::admin::webhook_event_body(&claimed.event);
        let timestamp = keygate_engine::now_ms() / 1000;
        let signature = sign(
            &claimed.endpoint.secret,
            &claimed.event.id,
            timestamp,
            &body,
        )
        .ok_or_else(|| {
            (
                None,
                "the endpoint's secret is not a whsec_ secret".to_owned(),
            )
        })?;
        let answer = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &claimed.event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| (None, describe(&e)))?;
        let status = answer.status();
        drain(answer).await;
        if status.is_success() {
            Ok(status.as_u16())
        } else if status.is_redirection() {
            Err((
                Some(status.as_u16()),
                format!("HTTP {status}: redirects are not followed"),
            ))
        } else {
            Err((Some(status.as_u16()), format!("HTTP {status}")))
        }
    }
}

/// Reads at most [`MAX_ANSWER_BYTES`] of an answer; the rest is never read.
async fn drain(mut answer: reqwest::Response) {
    let mut read = 0;
    while read < MAX_ANSWER_BYTES {
        match answer.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => return,
        }
    }
}

/// A transport error in words, without the URL (which may carry a token in its path).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {}", keygate_core::key::obscure(&cause, 300))
    }
}

/// Starts the worker; it stops when the engine's background tasks do.
pub fn spawn_webhook_worker(
    engine: Arc<Engine>,
    config: WebhookWorkerConfig,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let sender = Sender::new(engine.webhook_settings().allow_private)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(tokio::spawn(async move {
        let stopped = engine.stopped();
        tokio::pin!(stopped);
        let mut last_scan: Option<Instant> = None;
        let mut busy = false;
        loop {
            if !busy {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(config.poll_interval) => {}
                }
            }
            if last_scan.is_none_or(|t| t.elapsed() >= config.scan_interval) {
                last_scan = Some(Instant::now());
                match engine
                    .scan_webhook_expiry(&config.node_id, config.scan_interval.saturating_mul(2))
                    .await
                {
                    Ok(Some(n)) if n > 0 => {
                        tracing::info!(events = n, "expiry scan wrote webhook events")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "webhook expiry scan failed"),
                }
            }
            let claimed = match engine.claim_webhook_deliveries(LEASE, BATCH).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim webhook deliveries");
                    busy = false;
                    continue;
                }
            };
            busy = claimed.len() == BATCH as usize;
            let attempts = claimed.iter().map(|c| async {
                let result = sender.send(c).await;
                if let Err((_, why)) = &result {
                    tracing::info!(delivery = %c.delivery.id, endpoint = %c.endpoint.id, error = %why, "webhook attempt failed");
                }
                if let Err(e) = engine.finish_webhook_delivery(c, result).await {
                    // The lease runs out and the delivery is sent again: at least once.
                    tracing::warn!(delivery = %c.delivery.id, error = %e, "cannot record a webhook attempt");
                }
            });
            futures::future::join_all(attempts).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's own example (its reference libraries' test).
    #[test]
    fn signs_like_the_specification_example() {
        let secret = WebhookSecret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
        let signature = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            signature.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign(&WebhookSecret::new("nope".into()), "m", 1, b""), None);
    }
}
