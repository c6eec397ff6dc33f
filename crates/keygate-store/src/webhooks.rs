//! Lifecycle webhooks in the store: endpoints, the transactional outbox (events written in
//! the transaction of the change they report, with one delivery row per matching
//! endpoint), delivery leases for several nodes, and the expiry scan's bookkeeping.
//!
//! The outbox is fed from the audit trail: every management write inserts its audit event
//! through `insert_audit`, which also calls [`event_type_for_action`]; a mapped action gets
//! an event whose data is the key or account as the transaction left it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Account, AuditEvent, Cursor, KeyRecord, Quota, RateLimit, Result, StoreError};

/// Every event type an endpoint can subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "key.created",
    "key.updated",
    "key.rotated",
    "key.revoked",
    "key.expiring",
    "key.expired",
    "key.leaked",
    "key.quota_threshold",
    "account.updated",
];

/// The shares of a key's quota whose reaching is reported (`key.quota_threshold`).
pub const QUOTA_THRESHOLDS_PERCENT: [u32; 2] = [80, 100];

/// The thresholds (percent of `limit`) that spending from `before` to `after` reached.
pub(crate) fn quota_thresholds_crossed(limit: u64, before: i64, after: i64) -> Vec<u32> {
    let limit = i128::from(limit);
    QUOTA_THRESHOLDS_PERCENT
        .into_iter()
        .filter(|&pct| {
            // The first count at or above the share (rounded up).
            let at = (limit * i128::from(pct) + 99) / 100;
            i128::from(before) < at && i128::from(after) >= at
        })
        .collect()
}

/// `msg_…` of a `key.quota_threshold` event: one per key, quota period and threshold, so
/// the event is written once however often a flush sees the crossing.
pub(crate) fn quota_event_id(key_id: &str, period_started_at: i64, pct: u32) -> String {
    let tail = key_id.split_once('_').map_or(key_id, |(_, tail)| tail);
    format!("msg_quota_{tail}_{period_started_at}_{pct}")
}

/// The webhook event an audit action reports, if any.
pub fn event_type_for_action(action: &str) -> Option<&'static str> {
    Some(match action {
        "key.create" => "key.created",
        "key.update" => "key.updated",
        "key.rotate" => "key.rotated",
        "key.revoke" => "key.revoked",
        "key.leaked" => "key.leaked",
        "account.update" => "account.updated",
        _ => return None,
    })
}

/// An endpoint's signing secret (`whsec_` + base64). Kept as text because keygate signs
/// with it; never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    pub fn new(secret: String) -> Self {
        WebhookSecret(secret)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(redacted)")
    }
}

/// Where events are sent.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookEndpoint {
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    /// Subscribed event types; empty = every type.
    pub events: Vec<String>,
    /// Only this account's events; `None` = every account.
    pub account_id: Option<String>,
    pub secret: WebhookSecret,
    pub disabled_at: Option<i64>,
    pub disabled_reason: Option<String>,
    /// The first failed attempt since the last success.
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Changes to an endpoint; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub description: Option<Option<String>>,
    pub events: Option<Vec<String>>,
    /// `Some(true)` re-enables (and forgets past failures), `Some(false)` disables.
    pub enabled: Option<bool>,
}

/// What an event is about, as the change left it.
#[derive(Clone, Debug, PartialEq)]
pub enum EventSubject {
    Key(Box<KeyRecord>),
    Account(Account),
}

/// One outbox event.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookEvent {
    /// Also the `webhook-id` of every delivery of it.
    pub id: String,
    pub event_type: String,
    pub account_id: Option<String>,
    pub at: i64,
    pub subject: EventSubject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
    pub(crate) fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            other => return Err(StoreError::Corrupt(format!("delivery status {other:?}"))),
        })
    }
}

/// One event to one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_attempt_at: Option<i64>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
}

/// A delivery this node holds the lease of, with what it needs to send it.
#[derive(Clone, Debug)]
pub struct ClaimedDelivery {
    pub delivery: Delivery,
    pub event: WebhookEvent,
    pub endpoint: WebhookEndpoint,
}

/// How an attempt went.
#[derive(Clone, Debug)]
pub struct AttemptOutcome {
    pub at: i64,
    pub status_code: Option<i64>,
    /// `None`: delivered (a 2xx answer).
    pub error: Option<String>,
    /// After a failure: when to try again; `None` gives up (the delivery is `failed`).
    pub retry_at: Option<i64>,
}

/// The expiry scan's settings.
#[derive(Clone, Copy)]
pub struct ExpiryScan<'a> {
    pub now: i64,
    /// Lead times in days (`key.expiring`), any order.
    pub lead_days: &'a [u32],
    /// Keys expired longer ago than this are not reported as `key.expired`.
    pub expired_within_ms: i64,
    /// The lease: who runs the scan and until when the others skip it.
    pub holder: &'a str,
    pub lease_until: i64,
    /// New ids for the events, one per call.
    pub new_event_id: &'a (dyn Fn() -> Option<String> + Send + Sync),
}

/// Storage of webhook endpoints, the outbox and deliveries. Part of every [`crate::Store`].
#[async_trait]
pub trait WebhookStore: Send + Sync {
    async fn create_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        audit: &AuditEvent,
    ) -> Result<()>;
    async fn get_webhook_endpoint(&self, id: &str) -> Result<Option<WebhookEndpoint>>;
    /// At most `limit` endpoints after `after`, ordered by `(created_at, id)`.
    async fn query_webhook_endpoints(
        &self,
        after: Option<Cursor<'_>>,
        limit: u32,
    ) -> Result<Vec<WebhookEndpoint>>;
    /// `NotFound` if there is no such endpoint.
    async fn update_webhook_endpoint(
        &self,
        id: &str,
        patch: &EndpointPatch,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<WebhookEndpoint>;
    /// Deletes the endpoint and its deliveries. `NotFound` if there is no such endpoint.
    async fn delete_webhook_endpoint(&self, id: &str, audit: &AuditEvent) -> Result<()>;
    async fn set_webhook_secret(
        &self,
        id: &str,
        secret: &WebhookSecret,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<WebhookEndpoint>;
    /// Disables an endpoint (unless it is already) and records `audit`; returns whether
    /// this call disabled it.
    async fn disable_webhook_endpoint(
        &self,
        id: &str,
        reason: &str,
        audit: &AuditEvent,
    ) -> Result<bool>;

    /// Leases up to `limit` due deliveries until `lease_until`: no other node takes them
    /// meanwhile (`FOR UPDATE SKIP LOCKED` on PostgreSQL, `BEGIN IMMEDIATE` on SQLite).
    async fn claim_webhook_deliveries(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>>;
    /// Records an attempt, releases the lease, and tracks the endpoint's failing streak.
    /// Returns the endpoint's `failing_since` afterwards.
    async fn finish_webhook_delivery(
        &self,
        delivery_id: &str,
        endpoint_id: &str,
        outcome: &AttemptOutcome,
    ) -> Result<Option<i64>>;
    /// Deliveries of one endpoint after `after`, ordered by `(created_at, id)`.
    async fn query_webhook_deliveries(
        &self,
        endpoint_id: &str,
        after: Option<Cursor<'_>>,
        limit: u32,
    ) -> Result<Vec<Delivery>>;
    async fn get_webhook_delivery(&self, endpoint_id: &str, id: &str) -> Result<Option<Delivery>>;
    /// Makes a delivery due now (again). `NotFound` unless it belongs to `endpoint_id`.
    async fn retry_webhook_delivery(
        &self,
        endpoint_id: &str,
        delivery_id: &str,
        now: i64,
    ) -> Result<Delivery>;
    /// Deletes the events written before `before` (unix ms) none of whose deliveries is
    /// pending, with their deliveries; returns how many events went. An event still being
    /// delivered stays, however old.
    async fn prune_webhook_events(&self, before: i64) -> Result<u64>;
    /// If no other node holds the scan lease: writes `key.expiring` (once per key and lead
    /// time; a key first seen inside several lead times gets the shortest only) and
    /// `key.expired` events. Returns how many events it wrote, `None` without the lease.
    async fn scan_key_expiry(&self, scan: &ExpiryScan<'_>) -> Result<Option<u64>>;
}

/// How an event's subject is kept in the outbox: the record minus its digest and recent
/// addresses, enough to show it as the admin API does.
// Short-lived (one per event written or read): the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Snapshot {
    Key {
        id: String,
        account_id: String,
        name: String,
        display_prefix: String,
        environment: String,
        permissions: Vec<String>,
        ip_allowlist: Vec<String>,
        rate_limit: Option<RateLimit>,
        quota: Option<Quota>,
        quota_used: i64,
        quota_refilled_at: Option<i64>,
        meta: serde_json::Value,
        created_at: i64,
        last_used_at: Option<i64>,
        expires_at: Option<i64>,
        revoked_at: Option<i64>,
        rotated_from: Option<String>,
        // Added after the first events were written: older rows lack them.
        #[serde(default)]
        leaked_at: Option<i64>,
        #[serde(default)]
        retire_when_idle_ms: Option<i64>,
    },
    Account {
        id: String,
        name: String,
        plan: String,
        created_at: i64,
    },
}

pub(crate) fn subject_to_json(subject: &EventSubject) -> Result<String> {
    let snapshot = match subject.clone() {
        EventSubject::Key(k) => {
            let k = *k;
            Snapshot::Key {
                id: k.id,
                account_id: k.account_id,
                name: k.name,
                display_prefix: k.display_prefix,
                environment: k.environment.as_str().to_owned(),
                permissions: k.permissions,
                ip_allowlist: k.ip_allowlist,
                rate_limit: k.rate_limit,
                quota: k.quota,
                quota_used: k.quota_used,
                quota_refilled_at: k.quota_refilled_at,
                meta: k.meta,
                created_at: k.created_at,
                last_used_at: k.last_used_at,
                expires_at: k.expires_at,
                revoked_at: k.revoked_at,
                rotated_from: k.rotated_from,
                leaked_at: k.leaked_at,
                retire_when_idle_ms: k.retire_when_idle_ms,
            }
        }
        EventSubject::Account(a) => Snapshot::Account {
            id: a.id,
            name: a.name,
            plan: a.plan,
            created_at: a.created_at,
        },
    };
    crate::sql::to_json(&snapshot)
}

pub(crate) fn subject_from_json(text: &str) -> Result<EventSubject> {
    Ok(match crate::sql::from_json::<Snapshot>(text)? {
        Snapshot::Key {
            id,
            account_id,
            name,
            display_prefix,
            environment,
            permissions,
            ip_allowlist,
            rate_limit,
            quota,
            quota_used,
            quota_refilled_at,
            meta,
            created_at,
            last_used_at,
            expires_at,
            revoked_at,
            rotated_from,
            leaked_at,
            retire_when_idle_ms,
        } => EventSubject::Key(Box::new(KeyRecord {
            id,
            account_id,
            name,
            display_prefix,
            // Not kept in the outbox; nothing that renders an event reads it.
            digest: keygate_core::KeyDigest([0; 32]),
            environment: keygate_core::Environment::parse(&environment)
                .ok_or_else(|| StoreError::Corrupt(format!("environment {environment:?}")))?,
            permissions,
            ip_allowlist,
            rate_limit,
            quota,
            quota_used,
            quota_refilled_at,
            meta,
            created_at,
            last_used_at,
            expires_at,
            revoked_at,
            rotated_from,
            recent_ips: Vec::new(),
            leaked_at,
            retire_when_idle_ms,
        })),
        Snapshot::Account {
            id,
            name,
            plan,
            created_at,
        } => EventSubject::Account(Account {
            id,
            name,
            plan,
            created_at,
        }),
    })
}

/// `msg_…` from the audit event's id: unique, and the same if the event were written twice.
pub(crate) fn event_id_for_audit(audit_id: &str) -> String {
    let tail = audit_id.split_once('_').map_or(audit_id, |(_, tail)| tail);
    format!("msg_{tail}")
}

/// Implements [`WebhookStore`] for `$store` (`pool()`, `write()`), with `$skip_locked`
/// appended to the claim's `SELECT` (PostgreSQL: `FOR UPDATE SKIP LOCKED`).
macro_rules! webhook_sql {
    ($store:ident, $db:ty, $row:ty, $skip_locked:literal) => {
        pub(crate) mod webhook_sql {
            use async_trait::async_trait;
            use sqlx::{Row, Transaction};

            use super::$store;
            use crate::sql::{corrupt, db_error, from_json, to_json, KEY_COLUMNS};
            use crate::webhooks::{
                event_id_for_audit, event_type_for_action, subject_from_json, subject_to_json,
                AttemptOutcome, ClaimedDelivery, Delivery, DeliveryStatus, EndpointPatch,
                EventSubject, ExpiryScan, WebhookEndpoint, WebhookEvent, WebhookSecret,
                WebhookStore,
            };
            use crate::{AuditEvent, Cursor, Result, StoreError};

            type Tx = Transaction<'static, $db>;

            const ENDPOINT_COLUMNS: &str = "id, url, description, events, account_id, secret, \
                disabled_at, disabled_reason, failing_since, created_at, updated_at";
            const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.type AS event_type, d.endpoint_id, \
                d.status, d.attempts, d.next_attempt_at, d.last_attempt_at, d.last_status_code, \
                d.last_error, d.created_at";

            fn endpoint_from_row(row: &$row) -> Result<WebhookEndpoint> {
                Ok(WebhookEndpoint {
                    id: row.try_get("id").map_err(corrupt)?,
                    url: row.try_get("url").map_err(corrupt)?,
                    description: row.try_get("description").map_err(corrupt)?,
                    events: from_json(&row.try_get::<String, _>("events").map_err(corrupt)?)?,
                    account_id: row.try_get("account_id").map_err(corrupt)?,
                    secret: WebhookSecret::new(row.try_get("secret").map_err(corrupt)?),
                    disabled_at: row.try_get("disabled_at").map_err(corrupt)?,
                    disabled_reason: row.try_get("disabled_reason").map_err(corrupt)?,
                    failing_since: row.try_get("failing_since").map_err(corrupt)?,
                    created_at: row.try_get("created_at").map_err(corrupt)?,
                    updated_at: row.try_get("updated_at").map_err(corrupt)?,
                })
            }

            fn delivery_from_row(row: &$row) -> Result<Delivery> {
                Ok(Delivery {
                    id: row.try_get("id").map_err(corrupt)?,
                    event_id: row.try_get("event_id").map_err(corrupt)?,
                    event_type: row.try_get("event_type").map_err(corrupt)?,
                    endpoint_id: row.try_get("endpoint_id").map_err(corrupt)?,
                    status: DeliveryStatus::parse(&row.try_get::<String, _>("status").map_err(corrupt)?)?,
                    attempts: row.try_get("attempts").map_err(corrupt)?,
                    next_attempt_at: row.try_get("next_attempt_at").map_err(corrupt)?,
                    last_attempt_at: row.try_get("last_attempt_at").map_err(corrupt)?,
                    last_status_code: row.try_get("last_status_code").map_err(corrupt)?,
                    last_error: row.try_get("last_error").map_err(corrupt)?,
                    created_at: row.try_get("created_at").map_err(corrupt)?,
                })
            }

            /// Called for every audit event written with a change: writes the webhook event
            /// the action maps to, if any, in the same transaction.
            pub(crate) async fn record_event(tx: &mut Tx, audit: &AuditEvent) -> Result<()> {
                let Some(event_type) = event_type_for_action(&audit.action) else {
                    return Ok(());
                };
                let Some(target) = audit.target_id.as_deref() else {
                    return Ok(());
                };
                let subject = if event_type.starts_with("account.") {
                    sqlx::query("SELECT id, name, plan, created_at FROM accounts WHERE id = $1")
                        .bind(target)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(db_error)?
                        .as_ref()
                        .map(super::shared_sql::account_from_row)
                        .transpose()?
                        .map(EventSubject::Account)
                } else {
                    // A rotation reports the new key (its `rotated_from` names the old one).
                    let key_id = audit
                        .details
                        .get("new_key_id")
                        .and_then(|v| v.as_str())
                        .filter(|_| audit.action == "key.rotate")
                        .unwrap_or(target);
                    key_in(tx, key_id).await?.map(|k| EventSubject::Key(Box::new(k)))
                };
                let Some(subject) = subject else {
                    return Ok(());
                };
                let event = WebhookEvent {
                    id: event_id_for_audit(&audit.id),
                    event_type: event_type.to_owned(),
                    account_id: audit.account_id.clone(),
                    at: audit.at,
                    subject,
                };
                insert_event(tx, &event).await
            }

            /// Key `key_id` as it stands in `tx`.
            async fn key_in(tx: &mut Tx, key_id: &str) -> Result<Option<crate::KeyRecord>> {
                sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
                    .bind(key_id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_error)?
                    .as_ref()
                    .map(super::shared_sql::key_from_row)
                    .transpose()
            }

            /// A `key.quota_threshold` event for key `key_id` (as it stands in `tx`), unless
            /// this period's event for `pct` exists already.
            pub(crate) async fn record_quota_threshold(tx: &mut Tx, key_id: &str, pct: u32, now: i64) -> Result<()> {
                let Some(key) = key_in(tx, key_id).await? else {
                    return Ok(());
                };
                let period = key.quota_refilled_at.unwrap_or(key.created_at);
                let id = crate::webhooks::quota_event_id(&key.id, period, pct);
                let exists = sqlx::query("SELECT 1 FROM webhook_events WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_error)?
                    .is_some();
                if exists {
                    return Ok(());
                }
                let event = WebhookEvent {
                    id,
                    event_type: "key.quota_threshold".to_owned(),
                    account_id: Some(key.account_id.clone()),
                    at: now,
                    subject: EventSubject::Key(Box::new(key)),
                };
                insert_event(tx, &event).await
            }

            /// Writes `event` and a pending delivery to every enabled endpoint it matches.
            async fn insert_event(tx: &mut Tx, event: &WebhookEvent) -> Result<()> {
                let subject_id = match &event.subject {
                    EventSubject::Key(k) => &k.id,
                    EventSubject::Account(a) => &a.id,
                };
                sqlx::query(
                    "INSERT INTO webhook_events (id, type, account_id, subject_id, at, data) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&event.id)
                .bind(&event.event_type)
                .bind(&event.account_id)
                .bind(subject_id)
                .bind(event.at)
                .bind(subject_to_json(&event.subject)?)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
                // Delivery ids: `dlv_` + the event's random part + the endpoint's.
                let event_tail = event.id.split_once('_').map_or(event.id.as_str(), |(_, t)| t);
                sqlx::query(
                    "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status, attempts, \
                     next_attempt_at, created_at) \
                     SELECT CAST($1 AS TEXT) || SUBSTR(id, 5), $2, id, 'pending', 0, $3, $3 \
                     FROM webhook_endpoints WHERE disabled_at IS NULL \
                     AND (account_id IS NULL OR account_id = $4) \
                     AND (events = '[]' OR events LIKE $5)",
                )
                .bind(format!("dlv_{event_tail}_"))
                .bind(&event.id)
                .bind(event.at)
                .bind(&event.account_id)
                // Types are fixed names without LIKE wildcards; the quotes delimit them.
                .bind(format!("%\"{}\"%", event.event_type))
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
                Ok(())
            }

            async fn fetch_endpoint(tx: &mut Tx, id: &str) -> Result<WebhookEndpoint> {
                sqlx::query(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_error)?
                    .as_ref()
                    .map(endpoint_from_row)
                    .transpose()?
                    .ok_or(StoreError::NotFound)
            }

            async fn fetch_delivery(tx: &mut Tx, endpoint_id: &str, id: &str) -> Result<Delivery> {
                sqlx::query(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d \
                     JOIN webhook_events e ON e.id = d.event_id WHERE d.id = $1 AND d.endpoint_id = $2"
                ))
                .bind(id)
                .bind(endpoint_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_error)?
                .as_ref()
                .map(delivery_from_row)
                .transpose()?
                .ok_or(StoreError::NotFound)
            }

            #[async_trait]
            impl WebhookStore for $store {
                async fn create_webhook_endpoint(&self, ep: &WebhookEndpoint, audit: &AuditEvent) -> Result<()> {
                    let mut tx = self.write().await?;
                    sqlx::query(&format!(
                        "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                    ))
                    .bind(&ep.id)
                    .bind(&ep.url)
                    .bind(&ep.description)
                    .bind(to_json(&ep.events)?)
                    .bind(&ep.account_id)
                    .bind(ep.secret.expose())
                    .bind(ep.disabled_at)
                    .bind(&ep.disabled_reason)
                    .bind(ep.failing_since)
                    .bind(ep.created_at)
                    .bind(ep.updated_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    super::shared_sql::insert_audit(&mut tx, audit).await?;
                    tx.commit().await.map_err(db_error)
                }

                async fn get_webhook_endpoint(&self, id: &str) -> Result<Option<WebhookEndpoint>> {
                    sqlx::query(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(self.pool())
                        .await
                        .map_err(db_error)?
                        .as_ref()
                        .map(endpoint_from_row)
                        .transpose()
                }

                async fn query_webhook_endpoints(&self, after: Option<Cursor<'_>>, limit: u32) -> Result<Vec<WebhookEndpoint>> {
                    let (created_at, id) = after.map_or((i64::MIN, ""), |c| (c.created_at, c.id));
                    sqlx::query(&format!(
                        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
                         WHERE created_at > $1 OR (created_at = $1 AND id > $2) ORDER BY created_at, id LIMIT $3"
                    ))
                    .bind(created_at)
                    .bind(id)
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await
                    .map_err(db_error)?
                    .iter()
                    .map(endpoint_from_row)
                    .collect()
                }

                async fn update_webhook_endpoint(
                    &self,
                    id: &str,
                    patch: &EndpointPatch,
                    now: i64,
                    audit: &AuditEvent,
                ) -> Result<WebhookEndpoint> {
                    let mut tx = self.write().await?;
                    let mut ep = fetch_endpoint(&mut tx, id).await?;
                    if let Some(url) = &patch.url {
                        ep.url = url.clone();
                    }
                    if let Some(description) = &patch.description {
                        ep.description = description.clone();
                    }
                    if let Some(events) = &patch.events {
                        ep.events = events.clone();
                    }
                    match patch.enabled {
                        Some(true) => {
                            ep.disabled_at = None;
                            ep.disabled_reason = None;
                            ep.failing_since = None;
                        }
                        Some(false) if ep.disabled_at.is_none() => {
                            ep.disabled_at = Some(now);
                            ep.disabled_reason = Some("disabled by the operator".to_owned());
                        }
                        _ => {}
                    }
                    ep.updated_at = now;
                    sqlx::query(
                        "UPDATE webhook_endpoints SET url = $1, description = $2, events = $3, \
                         disabled_at = $4, disabled_reason = $5, failing_since = $6, updated_at = $7 WHERE id = $8",
                    )
                    .bind(&ep.url)
                    .bind(&ep.description)
                    .bind(to_json(&ep.events)?)
                    .bind(ep.disabled_at)
                    .bind(&ep.disabled_reason)
                    .bind(ep.failing_since)
                    .bind(ep.updated_at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    super::shared_sql::insert_audit(&mut tx, audit).await?;
                    tx.commit().await.map_err(db_error)?;
                    Ok(ep)
                }

                async fn delete_webhook_endpoint(&self, id: &str, audit: &AuditEvent) -> Result<()> {
                    let mut tx = self.write().await?;
                    // Explicit: SQLite enforces the cascade only with foreign keys on.
                    sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_error)?;
                    let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_error)?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    super::shared_sql::insert_audit(&mut tx, audit).await?;
                    tx.commit().await.map_err(db_error)
                }

                async fn set_webhook_secret(
                    &self,
                    id: &str,
                    secret: &WebhookSecret,
                    now: i64,
                    audit: &AuditEvent,
                ) -> Result<WebhookEndpoint> {
                    let mut tx = self.write().await?;
                    let done = sqlx::query("UPDATE webhook_endpoints SET secret = $1, updated_at = $2 WHERE id = $3")
                        .bind(secret.expose())
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_error)?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    let ep = fetch_endpoint(&mut tx, id).await?;
                    super::shared_sql::insert_audit(&mut tx, audit).await?;
                    tx.commit().await.map_err(db_error)?;
                    Ok(ep)
                }

                async fn disable_webhook_endpoint(&self, id: &str, reason: &str, audit: &AuditEvent) -> Result<bool> {
                    let mut tx = self.write().await?;
                    let done = sqlx::query(
                        "UPDATE webhook_endpoints SET disabled_at = $1, disabled_reason = $2, updated_at = $1 \
                         WHERE id = $3 AND disabled_at IS NULL",
                    )
                    .bind(audit.at)
                    .bind(reason)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    let disabled = done.rows_affected() == 1;
                    if disabled {
                        super::shared_sql::insert_audit(&mut tx, audit).await?;
                    }
                    tx.commit().await.map_err(db_error)?;
                    Ok(disabled)
                }

                async fn claim_webhook_deliveries(&self, now: i64, lease_until: i64, limit: u32) -> Result<Vec<ClaimedDelivery>> {
                    // A plain read first: an idle poll takes no write lock (SQLite has one).
                    let due: Option<String> = sqlx::query_scalar(
                        "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1 \
                         AND (leased_until IS NULL OR leased_until <= $1) LIMIT 1",
                    )
                    .bind(now)
                    .fetch_optional(self.pool())
                    .await
                    .map_err(db_error)?;
                    if due.is_none() {
                        return Ok(Vec::new());
                    }
                    let mut tx = self.write().await?;
                    let ids: Vec<String> = sqlx::query_scalar(&format!(
                        "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1 \
                         AND (leased_until IS NULL OR leased_until <= $1) \
                         ORDER BY next_attempt_at LIMIT $2{}",
                        $skip_locked
                    ))
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    let mut claimed = Vec::with_capacity(ids.len());
                    for id in &ids {
                        sqlx::query("UPDATE webhook_deliveries SET leased_until = $1 WHERE id = $2")
                            .bind(lease_until)
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_error)?;
                        let row = sqlx::query(&format!(
                            "SELECT {DELIVERY_COLUMNS}, e.account_id AS event_account_id, e.at AS event_at, \
                             e.data AS event_data FROM webhook_deliveries d \
                             JOIN webhook_events e ON e.id = d.event_id WHERE d.id = $1"
                        ))
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_error)?;
                        let delivery = delivery_from_row(&row)?;
                        let event = WebhookEvent {
                            id: delivery.event_id.clone(),
                            event_type: delivery.event_type.clone(),
                            account_id: row.try_get("event_account_id").map_err(corrupt)?,
                            at: row.try_get("event_at").map_err(corrupt)?,
                            subject: subject_from_json(&row.try_get::<String, _>("event_data").map_err(corrupt)?)?,
                        };
                        let endpoint = fetch_endpoint(&mut tx, &delivery.endpoint_id).await?;
                        claimed.push(ClaimedDelivery { delivery, event, endpoint });
                    }
                    tx.commit().await.map_err(db_error)?;
                    Ok(claimed)
                }

                async fn finish_webhook_delivery(
                    &self,
                    delivery_id: &str,
                    endpoint_id: &str,
                    outcome: &AttemptOutcome,
                ) -> Result<Option<i64>> {
                    let status = match (&outcome.error, outcome.retry_at) {
                        (None, _) => DeliveryStatus::Delivered,
                        (Some(_), Some(_)) => DeliveryStatus::Pending,
                        (Some(_), None) => DeliveryStatus::Failed,
                    };
                    let mut tx = self.write().await?;
                    sqlx::query(
                        "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, \
                         next_attempt_at = COALESCE($2, next_attempt_at), leased_until = NULL, \
                         last_attempt_at = $3, last_status_code = $4, last_error = $5 WHERE id = $6",
                    )
                    .bind(status.as_str())
                    .bind(outcome.retry_at)
                    .bind(outcome.at)
                    .bind(outcome.status_code)
                    .bind(&outcome.error)
                    .bind(delivery_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    let failing_since: Option<Option<i64>> = if outcome.error.is_none() {
                        sqlx::query_scalar(
                            "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 RETURNING failing_since",
                        )
                    } else {
                        sqlx::query_scalar(
                            "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $2) \
                             WHERE id = $1 RETURNING failing_since",
                        )
                    }
                    .bind(endpoint_id)
                    .bind(outcome.at)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    tx.commit().await.map_err(db_error)?;
                    Ok(failing_since.flatten())
                }

                async fn query_webhook_deliveries(
                    &self,
                    endpoint_id: &str,
                    after: Option<Cursor<'_>>,
                    limit: u32,
                ) -> Result<Vec<Delivery>> {
                    let (created_at, id) = after.map_or((i64::MIN, ""), |c| (c.created_at, c.id));
                    sqlx::query(&format!(
                        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d \
                         JOIN webhook_events e ON e.id = d.event_id WHERE d.endpoint_id = $1 \
                         AND (d.created_at > $2 OR (d.created_at = $2 AND d.id > $3)) \
                         ORDER BY d.created_at, d.id LIMIT $4"
                    ))
                    .bind(endpoint_id)
                    .bind(created_at)
                    .bind(id)
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await
                    .map_err(db_error)?
                    .iter()
                    .map(delivery_from_row)
                    .collect()
                }

                async fn get_webhook_delivery(&self, endpoint_id: &str, id: &str) -> Result<Option<Delivery>> {
                    sqlx::query(&format!(
                        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d \
                         JOIN webhook_events e ON e.id = d.event_id WHERE d.id = $1 AND d.endpoint_id = $2"
                    ))
                    .bind(id)
                    .bind(endpoint_id)
                    .fetch_optional(self.pool())
                    .await
                    .map_err(db_error)?
                    .as_ref()
                    .map(delivery_from_row)
                    .transpose()
                }

                async fn retry_webhook_delivery(&self, endpoint_id: &str, delivery_id: &str, now: i64) -> Result<Delivery> {
                    let mut tx = self.write().await?;
                    let done = sqlx::query(
                        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1 \
                         WHERE id = $2 AND endpoint_id = $3 AND (leased_until IS NULL OR leased_until <= $1)",
                    )
                    .bind(now)
                    .bind(delivery_id)
                    .bind(endpoint_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    // A delivery being sent right now is left to that attempt.
                    let delivery = fetch_delivery(&mut tx, endpoint_id, delivery_id).await?;
                    if done.rows_affected() == 0 && delivery.status != DeliveryStatus::Pending {
                        return Err(StoreError::NotFound);
                    }
                    tx.commit().await.map_err(db_error)?;
                    Ok(delivery)
                }

                async fn prune_webhook_events(&self, before: i64) -> Result<u64> {
                    // Deliveries go with their event (`ON DELETE CASCADE`).
                    let done = sqlx::query(
                        "DELETE FROM webhook_events WHERE at < $1 AND NOT EXISTS \
                         (SELECT 1 FROM webhook_deliveries d \
                          WHERE d.event_id = webhook_events.id AND d.status = 'pending')",
                    )
                    .bind(before)
                    .execute(self.pool())
                    .await
                    .map_err(db_error)?;
                    Ok(done.rows_affected())
                }

                async fn scan_key_expiry(&self, scan: &ExpiryScan<'_>) -> Result<Option<u64>> {
                    const DAY_MS: i64 = 86_400_000;
                    let mut tx = self.write().await?;
                    let leased = sqlx::query(
                        "INSERT INTO webhook_leases (name, holder, until) VALUES ('expiry_scan', $1, $2) \
                         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
                         WHERE webhook_leases.until <= $3 OR webhook_leases.holder = excluded.holder",
                    )
                    .bind(scan.holder)
                    .bind(scan.lease_until)
                    .bind(scan.now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    if leased.rows_affected() == 0 {
                        return Ok(None);
                    }
                    let mut leads: Vec<i64> = scan.lead_days.iter().map(|d| i64::from(*d)).filter(|d| *d > 0).collect();
                    leads.sort_unstable();
                    leads.dedup();
                    let horizon = scan.now + leads.last().copied().unwrap_or(0) * DAY_MS;
                    // Keys not revoked before they expire, expiring within the longest lead
                    // time or expired recently, without a notice for where they are now.
                    let keys = sqlx::query(&format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys WHERE expires_at IS NOT NULL \
                         AND expires_at > $1 AND expires_at <= $2 \
                         AND (revoked_at IS NULL OR revoked_at > expires_at) \
                         AND (revoked_at IS NULL OR revoked_at > $3) ORDER BY expires_at LIMIT 1000"
                    ))
                    .bind(scan.now - scan.expired_within_ms)
                    .bind(horizon)
                    .bind(scan.now)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_error)?
                    .iter()
                    .map(super::shared_sql::key_from_row)
                    .collect::<Result<Vec<_>>>()?;
                    let mut written = 0;
                    for key in keys {
                        let Some(expires_at) = key.expires_at else { continue };
                        let left = expires_at - scan.now;
                        // 0 stands for "expired"; otherwise the shortest lead time reached.
                        let (lead, event_type) = if left <= 0 {
                            (0, "key.expired")
                        } else {
                            match leads.iter().find(|d| left <= **d * DAY_MS) {
                                Some(d) => (*d, "key.expiring"),
                                None => continue,
                            }
                        };
                        let noted = sqlx::query(
                            "INSERT INTO webhook_expiry_notices (key_id, lead_days) VALUES ($1, $2) \
                             ON CONFLICT (key_id, lead_days) DO NOTHING",
                        )
                        .bind(&key.id)
                        .bind(lead)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_error)?;
                        if noted.rows_affected() == 0 {
                            continue;
                        }
                        // The longer lead times are passed: never report them later.
                        for longer in leads.iter().filter(|d| **d > lead && lead > 0) {
                            sqlx::query(
                                "INSERT INTO webhook_expiry_notices (key_id, lead_days) VALUES ($1, $2) \
                                 ON CONFLICT (key_id, lead_days) DO NOTHING",
                            )
                            .bind(&key.id)
                            .bind(*longer)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_error)?;
                        }
                        let Some(id) = (scan.new_event_id)() else {
                            return Err(StoreError::Unavailable("no randomness for an event id".into()));
                        };
                        let event = WebhookEvent {
                            id,
                            event_type: event_type.to_owned(),
                            account_id: Some(key.account_id.clone()),
                            at: scan.now,
                            subject: EventSubject::Key(Box::new(key)),
                        };
                        insert_event(&mut tx, &event).await?;
                        written += 1;
                    }
                    tx.commit().await.map_err(db_error)?;
                    Ok(Some(written))
                }
            }
        }
    };
}

pub(crate) use webhook_sql;

#[cfg(test)]
mod quota_tests {
    use super::quota_thresholds_crossed;

    #[test]
    fn each_threshold_is_reached_once_on_the_way_up() {
        assert_eq!(quota_thresholds_crossed(100, 0, 79), Vec::<u32>::new());
        assert_eq!(quota_thresholds_crossed(100, 79, 80), vec![80]);
        assert_eq!(quota_thresholds_crossed(100, 80, 99), Vec::<u32>::new());
        assert_eq!(quota_thresholds_crossed(100, 99, 100), vec![100]);
        assert_eq!(quota_thresholds_crossed(100, 10, 150), vec![80, 100]);
        assert_eq!(quota_thresholds_crossed(100, 100, 120), Vec::<u32>::new());
        // Rounded up: 80 % of 3 is the third request, 100 % too.
        assert_eq!(quota_thresholds_crossed(3, 2, 3), vec![80, 100]);
        assert_eq!(
            quota_thresholds_crossed(u64::MAX, 0, i64::MAX),
            Vec::<u32>::new()
        );
        // Going down (a refill) reaches nothing.
        assert_eq!(quota_thresholds_crossed(100, 100, 0), Vec::<u32>::new());
    }
}
