//! keygate's storage layer: the [`Store`] trait every backend implements, the records it
//! keeps, and the SQLite backend.
//!
//! Invariants: the store never sees a secret (only digests); every management write and
//! its audit event commit in one transaction; plan caps are checked inside the transaction
//! that inserts the key, so they are exact under concurrency.

mod error;
mod hygiene;
mod legacy;
mod migrate;
mod model;
mod permission_usage;
pub mod postgres;
mod sessions;
mod signing_keys;
mod sql;
pub mod sqlite;
mod sqlite_usage;
mod webhooks;

use async_trait::async_trait;
use keygate_core::{Environment, KeyDigest};

pub use error::StoreError;
pub use hygiene::RetiringKey;
pub use legacy::{ImportedKey, LegacyKey, LegacyStore};
pub use model::{
    Account, AuditEvent, KeyPatch, KeyRecord, KeyStatus, PermissionCount, PermissionUse, Quota,
    RateLimit, Refill, SeenIp, UsageCount, UsageUpdate,
};
pub use signing_keys::SigningKeyRecord;

pub use sessions::{SessionRecord, SessionStore};
pub use webhooks::{
    event_type_for_action, AttemptOutcome, ClaimedDelivery, Delivery, DeliveryStatus,
    EndpointPatch, EventSubject, ExpiryScan, WebhookEndpoint, WebhookEvent, WebhookSecret,
    WebhookStore, EVENT_TYPES,
};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A change another node (or this one) committed, heard through the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The key with this digest changed: drop it from the cache.
    Key(KeyDigest),
    /// Changes may have been missed (the feed reconnected): drop everything.
    Resync,
}

/// Which audit events to list.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuditQuery<'a> {
    pub account_id: Option<&'a str>,
    pub target_id: Option<&'a str>,
    /// Only events with a sequence number below this (pagination).
    pub before: Option<i64>,
    /// Time range, unix milliseconds, `from <= at < to`.
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub limit: u32,
}

/// Where a page of a list starts: after the record created at `created_at` with id `id`.
/// Lists are ordered by `(created_at, id)`, so a page never repeats or skips a record
/// however many are created meanwhile (a new record sorts after every existing one).
#[derive(Clone, Copy, Debug)]
pub struct Cursor<'a> {
    pub created_at: i64,
    pub id: &'a str,
}

/// Which keys to list, oldest first.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyQuery<'a> {
    pub account_id: Option<&'a str>,
    /// Status judged at `now`.
    pub status: Option<KeyStatus>,
    pub now: i64,
    pub environment: Option<Environment>,
    /// A substring of the name, case-insensitive (on SQLite for ASCII letters only).
    pub name_contains: Option<&'a str>,
    pub after: Option<Cursor<'a>>,
    pub limit: u32,
}

/// Which accounts to list, oldest first.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccountQuery<'a> {
    /// Only this account (a tenant's own).
    pub id: Option<&'a str>,
    pub plan: Option<&'a str>,
    /// A substring of the name, case-insensitive (on SQLite for ASCII letters only).
    pub name_contains: Option<&'a str>,
    pub after: Option<Cursor<'a>>,
    pub limit: u32,
}

/// Everything keygate keeps. Times are unix milliseconds.
#[async_trait]
pub trait Store: SessionStore + WebhookStore + LegacyStore + Send + Sync + 'static {
    /// Key changes committed by every node, for backends shared by several nodes; `None`
    /// where this process is the only writer.
    async fn change_feed(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Change>>>;

    /// Is the database reachable? For `/readyz`.
    async fn ping(&self) -> Result<()>;

    async fn get_setting(&self, name: &str) -> Result<Option<String>>;
    /// Stores `value` unless `name` is set already; returns whether it stored it.
    async fn insert_setting_if_absent(&self, name: &str, value: &str) -> Result<bool>;

    /// Every token signing key, oldest generation first.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;
    /// Stores a signing key unless its generation exists already; returns whether it did.
    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> Result<bool>;

    async fn create_account(&self, account: &Account, audit: &AuditEvent) -> Result<()>;
    async fn get_account(&self, id: &str) -> Result<Option<Account>>;
    /// Every account, oldest first (exports; lists page with [`Store::query_accounts`]).
    async fn list_accounts(&self) -> Result<Vec<Account>>;
    /// At most `query.limit` accounts matching `query`, ordered by `(created_at, id)`.
    async fn query_accounts(&self, query: &AccountQuery<'_>) -> Result<Vec<Account>>;
    /// Changes name and/or plan. `NotFound` if there is no such account.
    async fn update_account(
        &self,
        id: &str,
        name: Option<&str>,
        plan: Option<&str>,
        audit: &AuditEvent,
    ) -> Result<Account>;

    /// Inserts `key` if its account has fewer than `max_active` active keys at `now`
    /// (`None`: no cap); `CapReached` otherwise. Exact under concurrency.
    async fn create_key(
        &self,
        key: &KeyRecord,
        max_active: Option<u64>,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<()>;
    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>>;
    /// The key `id` if it belongs to `account_id`. A tenant's lookups use this, so that
    /// another account's key and a key that does not exist take the same path (one
    /// indexed miss) and cannot be told apart by timing.
    async fn get_account_key(&self, account_id: &str, id: &str) -> Result<Option<KeyRecord>>;
    async fn find_key_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>>;
    /// Keys of one account (or all), oldest first (exports, counts; lists page with
    /// [`Store::query_keys`]).
    async fn list_keys(&self, account_id: Option<&str>) -> Result<Vec<KeyRecord>>;
    /// At most `query.limit` keys matching `query`, ordered by `(created_at, id)`.
    async fn query_keys(&self, query: &KeyQuery<'_>) -> Result<Vec<KeyRecord>>;
    /// Applies `patch` to a key that is neither revoked nor expired at `now`
    /// (`NotActive` otherwise: a revoked key stays revoked).
    async fn update_key(
        &self,
        id: &str,
        patch: &KeyPatch,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<KeyRecord>;
    /// Revokes at `at` (or keeps an earlier revocation). Idempotent.
    async fn revoke_key(&self, id: &str, at: i64, audit: &AuditEvent) -> Result<KeyRecord>;
    /// In one transaction: inserts `new_key` and schedules the revocation of `old_id` at
    /// `revoke_old_at`. `NotActive` if the old key is already revoked or expired at `now`.
    /// `retire_when_idle_ms`: also revoke the old key once it is that long unused after
    /// the new key's first use (see [`Store::retire_idle_key`]).
    async fn rotate_key(
        &self,
        old_id: &str,
        new_key: &KeyRecord,
        revoke_old_at: i64,
        retire_when_idle_ms: Option<i64>,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<KeyRecord>;

    // Key hygiene (`hygiene.rs`): leaked keys and idle retirement after rotation.

    /// Records a leak report: `leaked_at` (the first report's time is kept), the revocation
    /// at `at` when `revoke` (an earlier revocation stays) and `audit`, in one transaction.
    async fn mark_leaked(
        &self,
        id: &str,
        at: i64,
        revoke: bool,
        audit: &AuditEvent,
    ) -> Result<KeyRecord>;
    /// Keys replaced by rotation that wait for idle retirement and are not revoked at `now`.
    async fn retiring_keys(&self, now: i64) -> Result<Vec<RetiringKey>>;
    /// Starts the idle clock of the replaced key `id` at `at` (the first time its successor
    /// was seen used); a clock already started stays.
    async fn note_successor_used(&self, id: &str, at: i64) -> Result<()>;
    /// Revokes `id` at `now` with `audit` unless it is revoked by then already (so several
    /// nodes may run the check); the revoked key, or `None` when there was nothing to do.
    async fn retire_idle_key(
        &self,
        id: &str,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<Option<KeyRecord>>;

    /// Writes a batch of usage in one transaction.
    async fn record_usage(&self, batch: &[UsageUpdate]) -> Result<()>;
    /// Counts of one key with `from <= bucket < to`, oldest first.
    async fn usage_counts(&self, key_id: &str, from: i64, to: i64) -> Result<Vec<UsageCount>>;
    /// Deletes counts (and permission counts) older than `before`; returns how many rows went.
    async fn prune_usage(&self, before: i64) -> Result<u64>;
    /// Allowed requests of one key per permission in days from `from` on, by permission.
    async fn permission_usage(&self, key_id: &str, from: i64) -> Result<Vec<PermissionUse>>;
    /// Appends an audit event that goes with no other change (e.g. a failed sign-in).
    async fn append_audit(&self, event: &AuditEvent) -> Result<()>;
    /// Audit events matching `query`, newest first.
    async fn query_audit(&self, query: &AuditQuery<'_>) -> Result<Vec<AuditEvent>>;

    /// Audit events, newest first, at most `limit`, optionally before sequence `before`.
    async fn list_audit(
        &self,
        account_id: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>> {
        self.query_audit(&AuditQuery {
            account_id,
            before,
            limit,
            ..AuditQuery::default()
        })
        .await
    }

    // Moving an installation (`keygate export` / `keygate import`). Imports insert records
    // as they are (no audit event, no cap check) and leave alone those whose id is there
    // already, so an import can be run again; each returns how many it inserted.

    /// Every audit event with a sequence number above `after`, oldest first, at most `limit`.
    async fn audit_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEvent>>;
    async fn import_accounts(&self, accounts: &[Account]) -> Result<u64>;
    /// Keys whose accounts exist; a digest already held by another id is `Duplicate`.
    async fn import_keys(&self, keys: &[KeyRecord]) -> Result<u64>;
    /// Events get new sequence numbers, in the order given.
    async fn import_audit(&self, events: &[AuditEvent]) -> Result<u64>;
    /// Usage counts of one key; a count already there for the same hour and outcome stays.
    async fn import_usage(&self, key_id: &str, counts: &[UsageCount]) -> Result<u64>;
}
