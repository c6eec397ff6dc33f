use std::sync::atomic::Ordering;

use keygate_core::ip::IpAllowlist;
use keygate_core::{ApiKeySecret, Environment, PermissionSet};
pub use keygate_store::KeyStatus;
use keygate_store::{KeyPatch, KeyRecord, Quota, RateLimit};
use serde_json::{json, Value};

use super::{known_shape, validate, Actor, Caller};
use crate::ids::new_id;
use crate::{now_ms, Engine, Error, Result};

/// Longest expiry and grace period accepted.
const MAX_EXPIRES_IN_SECONDS: i64 = 100 * 365 * 24 * 3600;
const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

/// `POST /v1/api-keys`, with JSON types already checked.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    pub account_id: Option<String>,
    pub name: String,
    pub environment: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub scope: Option<String>,
    pub ip_allowlist: Option<Vec<String>>,
    /// Unix milliseconds.
    pub expires_at: Option<i64>,
    pub expires_in: Option<i64>,
    pub rate_limit: Option<RateLimit>,
    pub quota: Option<Quota>,
    pub meta: Option<Value>,
}

/// `PATCH /v1/api-keys/{id}`. `Some(None)` clears a field.
#[derive(Clone, Debug, Default)]
pub struct KeyUpdate {
    pub name: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub scope: Option<String>,
    pub ip_allowlist: Option<Vec<String>>,
    pub expires_at: Option<Option<i64>>,
    pub expires_in: Option<i64>,
    pub rate_limit: Option<Option<RateLimit>>,
    pub quota: Option<Option<Quota>>,
    pub meta: Option<Value>,
}

/// `POST /v1/api-keys/{id}/rotate`'s options.
#[derive(Clone, Copy, Debug, Default)]
pub struct RotateOptions {
    /// How long the old key keeps working (0: revoked now).
    pub grace_seconds: Option<u64>,
    /// Revoke the old key earlier, once it has gone unused this long after the new key's
    /// first use. Needs a grace period, and at most as long.
    pub retire_when_idle_seconds: Option<u64>,
}

/// The result of a rotation: the new key (secret shown once) and the old one.
#[derive(Debug)]
pub struct Rotated {
    pub key: KeyRecord,
    pub secret: ApiKeySecret,
    pub previous: KeyRecord,
}

pub(super) fn permissions_of(
    permissions: Option<&[String]>,
    scope: Option<&str>,
) -> Result<Option<PermissionSet>> {
    match (permissions, scope) {
        (Some(_), Some(_)) => Err(Error::validation(
            "scope",
            "give either permissions or scope, not both",
        )),
        (Some(list), None) => PermissionSet::parse(list)
            .map(Some)
            .map_err(|e| Error::validation("permissions", e.to_string())),
        (None, Some(scope)) => PermissionSet::preset(scope).map(Some).ok_or_else(|| {
            Error::validation("scope", "scope must be one of all, read, write, webhooks")
        }),
        (None, None) => Ok(None),
    }
}

pub(super) fn allowlist_of(list: &[String]) -> Result<Vec<String>> {
    IpAllowlist::parse(list)
        .map(|l| l.to_strings())
        .map_err(|e| Error::validation("ip_allowlist", e.to_string()))
}

fn expiry_of(expires_at: Option<i64>, expires_in: Option<i64>, now: i64) -> Result<Option<i64>> {
    match (expires_at, expires_in) {
        (Some(_), Some(_)) => Err(Error::validation(
            "expires_in",
            "give either expires_at or expires_in, not both",
        )),
        (Some(at), None) if at <= now => Err(Error::validation(
            "expires_at",
            "expires_at must be in the future",
        )),
        (Some(at), None) => Ok(Some(at)),
        (None, Some(secs)) if !(1..=MAX_EXPIRES_IN_SECONDS).contains(&secs) => {
            Err(Error::validation(
                "expires_in",
                "expires_in must be between 1 second and 100 years",
            ))
        }
        (None, Some(secs)) => Ok(Some(now + secs * 1000)),
        (None, None) => Ok(None),
    }
}

fn check_rate_limit(limit: &RateLimit) -> Result<()> {
    if limit.requests == 0 || limit.per_seconds == 0 || limit.per_seconds > 31_536_000 {
        return Err(Error::validation(
            "rate_limit",
            "rate_limit needs requests >= 1 and per_seconds between 1 and 31536000",
        ));
    }
    Ok(())
}

fn check_quota(quota: &Quota) -> Result<()> {
    if quota.requests == 0 || quota.requests > i64::MAX as u64 {
        return Err(Error::validation(
            "quota",
            // The counters are signed 64-bit in both stores.
            "quota.requests must be between 1 and 9223372036854775807",
        ));
    }
    if let Some(refill) = quota.refill {
        if refill.amount == 0 || refill.every == 0 || refill.every > 366 * 86_400 {
            return Err(Error::validation(
                "quota",
                "quota.refill needs amount >= 1 and every between 1 second and 366 days",
            ));
        }
    }
    Ok(())
}

impl Caller {
    /// A self-service key may hand out only what it holds itself.
    fn may_grant(&self, permissions: &PermissionSet) -> Result<()> {
        match &self.actor {
            Actor::Key(key) if !key.permissions().covers(permissions) => Err(Error::Forbidden(
                "a key cannot grant a permission it does not hold itself".into(),
            )),
            Actor::Portal(p) if !p.allowed.covers(permissions) => Err(Error::Forbidden(
                "this page may not hand out that permission".into(),
            )),
            _ => Ok(()),
        }
    }

    /// A self-service key with an IP allowlist or an expiry cannot hand out a key that
    /// escapes them: new keys inherit them, and explicit values must stay within them.
    fn bound_allowlist(&self, requested: Option<Vec<String>>) -> Result<Vec<String>> {
        let requested = requested.as_deref().map(allowlist_of).transpose()?;
        let Actor::Key(key) = &self.actor else {
            return Ok(requested.unwrap_or_default());
        };
        let Some(list) = requested else {
            return Ok(key.ip_allowlist().to_strings());
        };
        let parsed = IpAllowlist::parse(&list)
            .map_err(|e| Error::validation("ip_allowlist", e.to_string()))?;
        if key.ip_allowlist().covers(&parsed) {
            Ok(list)
        } else {
            Err(Error::Forbidden(
                "a key cannot grant access from addresses outside its own IP allowlist".into(),
            ))
        }
    }

    /// `inherit`: a missing expiry takes the caller's own (create); otherwise asking for
    /// no expiry is refused (update).
    fn bound_expiry(&self, requested: Option<i64>, inherit: bool) -> Result<Option<i64>> {
        let Actor::Key(key) = &self.actor else {
            return Ok(requested);
        };
        match (key.expires_at(), requested) {
            (Some(own), None) if inherit => Ok(Some(own)),
            (Some(_), None) => Err(Error::Forbidden(
                "a key that expires cannot hand out a key that never does".into(),
            )),
            (Some(own), Some(asked)) if asked > own => Err(Error::Forbidden(
                "a key cannot hand out a key that outlives itself".into(),
            )),
            (_, asked) => Ok(asked),
        }
    }

    /// A test key must not mint live keys.
    fn may_use_environment(&self, env: Environment) -> Result<()> {
        match &self.actor {
            Actor::Key(key)
                if key.environment() == Environment::Test && env == Environment::Live =>
            {
                Err(Error::Forbidden(
                    "a test key cannot create live keys".into(),
                ))
            }
            _ => Ok(()),
        }
    }
}

impl Engine {
    pub async fn create_key(
        &self,
        caller: &Caller,
        new: NewKey,
    ) -> Result<(KeyRecord, ApiKeySecret)> {
        caller.require("api_keys", "create")?;
        let account_id = match (caller.own_account(), new.account_id) {
            (Some(own), Some(asked)) if own != asked => return Err(Error::NotFound("account")),
            (Some(own), _) => own.to_owned(),
            (None, Some(asked)) => asked,
            (None, None) => return Err(Error::validation("account_id", "account_id is required")),
        };
        known_shape(&account_id, "account")?;
        let account = self
            .store
            .get_account(&account_id)
            .await?
            .ok_or(Error::NotFound("account"))?;
        let now = now_ms();
        let environment = match new.environment.as_deref() {
            None => Environment::Live,
            Some(e) => Environment::parse(e).ok_or_else(|| {
                Error::validation("environment", "environment must be live or test")
            })?,
        };
        caller.may_use_environment(environment)?;
        let permissions =
            permissions_of(new.permissions.as_deref(), new.scope.as_deref())?.unwrap_or_default();
        caller.may_grant(&permissions)?;
        if let Some(l) = &new.rate_limit {
            check_rate_limit(l)?;
        }
        if let Some(q) = &new.quota {
            check_quota(q)?;
        }
        let meta = new.meta.unwrap_or_else(|| json!({}));
        validate::meta(&meta)?;
        let secret = self
            .format
            .generate(environment)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let record = KeyRecord {
            id: new_id("key")?,
            account_id: account.id.clone(),
            name: validate::name("name", &new.name)?,
            display_prefix: self.display_prefix(&secret)?,
            digest: self.pepper.digest(secret.expose().as_bytes()),
            environment,
            permissions: permissions.to_strings(),
            ip_allowlist: caller.bound_allowlist(new.ip_allowlist)?,
            rate_limit: new.rate_limit,
            quota: new.quota,
            quota_used: 0,
            meta,
            created_at: now,
            last_used_at: None,
            expires_at: self.plan_bounded_expiry(
                &account.plan,
                caller.bound_expiry(expiry_of(new.expires_at, new.expires_in, now)?, true)?,
                now,
            )?,
            revoked_at: None,
            rotated_from: None,
            recent_ips: Vec::new(),
            quota_refilled_at: None,
            leaked_at: None,
            retire_when_idle_ms: None,
        };
        let audit = caller.audit(
            "key.create",
            Some(&record.account_id),
            Some(&record.id),
            json!({"name": record.name, "environment": environment, "permissions": record.permissions}),
        )?;
        let cap = self.plans.max_keys(&account.plan);
        self.store.create_key(&record, cap, now, &audit).await?;
        self.invalidate(&record.digest);
        Ok((record, secret))
    }

    /// `requested` within the plan's `max_key_lifetime_days` from `born` (the key's
    /// creation): no expiry becomes the longest allowed, a later one is refused.
    fn plan_bounded_expiry(
        &self,
        plan: &str,
        requested: Option<i64>,
        born: i64,
    ) -> Result<Option<i64>> {
        let Some(max) = self.plans.max_key_lifetime_ms(plan) else {
            return Ok(requested);
        };
        let latest = born.saturating_add(max);
        match requested {
            Some(at) if at > latest => Err(Error::validation(
                "expires_at",
                format!(
                    "plan {plan} lets a key live at most {} days: expires_at must be no later than that",
                    max / 86_400_000
                ),
            )),
            Some(at) => Ok(Some(at)),
            None => Ok(Some(latest)),
        }
    }

    fn display_prefix(&self, secret: &ApiKeySecret) -> Result<String> {
        self.format
            .display_prefix(secret.expose())
            .ok_or_else(|| Error::Internal("generated key does not parse".into()))
    }

    /// A key visible to the caller, with usage not yet flushed merged in.
    pub async fn get_key(&self, caller: &Caller, id: &str) -> Result<KeyRecord> {
        caller.require("api_keys", "read")?;
        self.visible_key(caller, id).await
    }

    async fn visible_key(&self, caller: &Caller, id: &str) -> Result<KeyRecord> {
        known_shape(id, "API key")?;
        let record = self
            .scoped_key(caller, id)
            .await?
            .ok_or(Error::NotFound("API key"))?;
        Ok(self.with_shared_quota(self.with_live_usage(record)).await)
    }

    /// The key `id` as the caller may see it: a tenant's lookup is scoped to its account
    /// in the query, so another account's key is the same miss as an unknown one.
    pub(super) async fn scoped_key(&self, caller: &Caller, id: &str) -> Result<Option<KeyRecord>> {
        Ok(match caller.own_account() {
            Some(own) => self.store.get_account_key(own, id).await?,
            None => self.store.get_key(id).await?,
        })
    }

    /// With quotas shared through Redis, the quota as Redis holds it: every node's spending,
    /// flushed or not. Without Redis, or when it cannot answer or has no state for the key,
    /// the record as it is (the store's count plus this node's unflushed spending). Asked
    /// for one key at a time (get, usage, key info, rotate); lists show the node's view.
    async fn with_shared_quota(&self, mut record: KeyRecord) -> KeyRecord {
        let (Some(quota), Some(shared)) = (record.quota, self.shared_limiter.get()) else {
            return record;
        };
        match shared.quota_state(&record.id).await {
            Ok(Some(state)) => {
                record.quota_used = state.used;
                if quota.refill.is_some() {
                    record.quota_refilled_at = Some(state.refilled_at);
                }
            }
            Ok(None) => {}
            Err(e) => {
                self.metrics
                    .rate_limiter_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot read the shared quota; showing this node's count");
            }
        }
        record
    }

    pub(super) fn with_live_usage(&self, mut record: KeyRecord) -> KeyRecord {
        let cell = self.usage.cell(&record);
        let last = cell.last_used();
        if last > 0 {
            record.last_used_at = Some(record.last_used_at.map_or(last, |t| t.max(last)));
        }
        // With shared quotas, this node's count can dip below 0 when a refill Redis applied
        // gives back spending the store has not heard of yet.
        record.quota_used = cell.quota_used.load(Ordering::Acquire).max(0);
        record.recent_ips = cell.recent_ips();
        if record.quota.is_some_and(|q| q.refill.is_some()) {
            record.quota_refilled_at = Some(cell.refilled_at());
        }
        record
    }

    /// Every key the caller may see, unpaged: for summaries over all of them (the
    /// dashboard's permission catalog). Lists for people page with [`Engine::key_page`].
    pub async fn list_keys(
        &self,
        caller: &Caller,
        account_id: Option<&str>,
        status: Option<KeyStatus>,
    ) -> Result<Vec<KeyRecord>> {
        caller.require("api_keys", "read")?;
        let account_id = self.visible_account_filter(caller, account_id)?;
        let now = now_ms();
        Ok(self
            .store
            .list_keys(account_id)
            .await?
            .into_iter()
            .filter(|k| status.is_none_or(|s| KeyStatus::of(k, now) == s))
            .map(|k| self.with_live_usage(k))
            .collect())
    }

    pub async fn update_key(
        &self,
        caller: &Caller,
        id: &str,
        update: KeyUpdate,
    ) -> Result<KeyRecord> {
        caller.require("api_keys", "update")?;
        let current = self.visible_key(caller, id).await?;
        let now = now_ms();
        let permissions = permissions_of(update.permissions.as_deref(), update.scope.as_deref())?;
        if let Some(p) = &permissions {
            caller.may_grant(p)?;
        }
        let expires_at = match (update.expires_at, update.expires_in) {
            (Some(_), Some(_)) => {
                return Err(Error::validation(
                    "expires_in",
                    "give either expires_at or expires_in, not both",
                ))
            }
            (Some(at), None) => {
                let at = at
                    .map(|at| expiry_of(Some(at), None, now))
                    .transpose()?
                    .flatten();
                Some(caller.bound_expiry(at, false)?)
            }
            (None, Some(secs)) => {
                Some(caller.bound_expiry(expiry_of(None, Some(secs), now)?, false)?)
            }
            (None, None) => None,
        };
        if let Some(asked) = expires_at {
            // A key's life is capped from its creation; clearing the expiry is a longer one.
            let plan = self.plan_of(&current.account_id).await?;
            if self.plan_bounded_expiry(&plan, asked, current.created_at)? != asked {
                return Err(Error::validation(
                    "expires_at",
                    format!("plan {plan} lets no key live without an expiry"),
                ));
            }
        }
        if let Some(Some(l)) = &update.rate_limit {
            check_rate_limit(l)?;
        }
        if let Some(Some(q)) = &update.quota {
            check_quota(q)?;
        }
        if let Some(m) = &update.meta {
            validate::meta(m)?;
        }
        let patch = KeyPatch {
            name: update
                .name
                .as_deref()
                .map(|n| validate::name("name", n))
                .transpose()?,
            permissions: permissions.map(|p| p.to_strings()),
            ip_allowlist: update
                .ip_allowlist
                .map(|l| caller.bound_allowlist(Some(l)))
                .transpose()?,
            expires_at,
            rate_limit: update.rate_limit,
            quota: update.quota,
            // A new quota starts its refill clock now.
            quota_refilled_at: update.quota.map(|q| q.and_then(|q| q.refill).map(|_| now)),
            meta: update.meta,
        };
        let changed: Vec<&str> = [
            ("name", patch.name.is_some()),
            ("permissions", patch.permissions.is_some()),
            ("ip_allowlist", patch.ip_allowlist.is_some()),
            ("expires_at", patch.expires_at.is_some()),
            ("rate_limit", patch.rate_limit.is_some()),
            ("quota", patch.quota.is_some()),
            ("meta", patch.meta.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect();
        let audit = caller.audit(
            "key.update",
            Some(&current.account_id),
            Some(id),
            json!({"changed": changed, "permissions": patch.permissions}),
        )?;
        let updated = self.store.update_key(id, &patch, now, &audit).await?;
        self.invalidate(&updated.digest);
        if let Some(Some(at)) = patch.quota_refilled_at {
            self.usage.cell(&updated).restart_refill(at);
        }
        if let (Some(quota), Some(shared)) = (patch.quota, self.shared_limiter.get()) {
            // The change is committed: a Redis that cannot follow now is counted and logged,
            // not reported as a failed update (see `follow_quota_change`).
            if let Err(e) = shared
                .follow_quota_change(id, quota, patch.quota_refilled_at.flatten())
                .await
            {
                self.metrics
                    .rate_limiter_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "the shared quota did not follow a quota change");
            }
        }
        Ok(self.with_shared_quota(self.with_live_usage(updated)).await)
    }

    pub async fn revoke_key(&self, caller: &Caller, id: &str) -> Result<KeyRecord> {
        caller.require("api_keys", "delete")?;
        let current = self.visible_key(caller, id).await?;
        let audit = caller.audit("key.revoke", Some(&current.account_id), Some(id), json!({}))?;
        let revoked = self.store.revoke_key(id, now_ms(), &audit).await?;
        self.invalidate(&revoked.digest);
        Ok(self.with_live_usage(revoked))
    }

    /// The plan of account `account_id`.
    async fn plan_of(&self, account_id: &str) -> Result<String> {
        Ok(self
            .store
            .get_account(account_id)
            .await?
            .map(|a| a.plan)
            .unwrap_or_else(|| self.plans.default_plan().to_owned()))
    }

    /// A new key with the same settings; the old one is revoked now, or when
    /// `grace_seconds` have passed. Rotation does not count against the plan cap: it
    /// replaces a key.
    pub async fn rotate_key(
        &self,
        caller: &Caller,
        id: &str,
        grace_seconds: Option<u64>,
    ) -> Result<Rotated> {
        let options = RotateOptions {
            grace_seconds,
            retire_when_idle_seconds: None,
        };
        self.rotate_key_with(caller, id, options).await
    }

    /// [`Engine::rotate_key`] with every option.
    pub async fn rotate_key_with(
        &self,
        caller: &Caller,
        id: &str,
        options: RotateOptions,
    ) -> Result<Rotated> {
        caller.require("api_keys", "create")?;
        caller.require("api_keys", "delete")?;
        let grace = options.grace_seconds.unwrap_or(0);
        if grace > MAX_GRACE_SECONDS {
            return Err(Error::validation(
                "grace_period_seconds",
                format!("grace_period_seconds must be at most {MAX_GRACE_SECONDS} (30 days)"),
            ));
        }
        let retire_when_idle_ms = match options.retire_when_idle_seconds {
            None => None,
            Some(idle) if idle == 0 || idle > grace => {
                return Err(Error::validation(
                    "retire_when_idle_seconds",
                    "retire_when_idle_seconds needs a grace_period_seconds and must be between 1 and it",
                ))
            }
            Some(idle) => Some(idle as i64 * 1000),
        };
        let old = self.visible_key(caller, id).await?;
        // The new secret carries the old key's grants: the caller must hold them all.
        let granted =
            PermissionSet::parse(&old.permissions).map_err(|e| Error::Internal(e.to_string()))?;
        caller.may_grant(&granted)?;
        caller.may_use_environment(old.environment)?;
        let now = now_ms();
        if KeyStatus::of(&old, now) != KeyStatus::Active {
            return Err(Error::Conflict(
                "the key is revoked or expired and cannot be rotated".into(),
            ));
        }
        let secret = self
            .format
            .generate(old.environment)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let new = KeyRecord {
            id: new_id("key")?,
            display_prefix: self.display_prefix(&secret)?,
            digest: self.pepper.digest(secret.expose().as_bytes()),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
            rotated_from: Some(old.id.clone()),
            recent_ips: Vec::new(),
            leaked_at: None,
            retire_when_idle_ms: None,
            // The plan's lifetime cap counts from the new key's creation.
            expires_at: self.rotated_expiry(&old, now).await?,
            // The quota spent carries over: rotating is not a way to refill it.
            ..old.clone()
        };
        let revoke_old_at = now + (grace as i64) * 1000;
        let audit = caller.audit(
            "key.rotate",
            Some(&old.account_id),
            Some(id),
            json!({
                "new_key_id": new.id,
                "grace_period_seconds": grace,
                "retire_when_idle_seconds": options.retire_when_idle_seconds,
            }),
        )?;
        let previous = self
            .store
            .rotate_key(id, &new, revoke_old_at, retire_when_idle_ms, now, &audit)
            .await?;
        self.invalidate(&previous.digest);
        self.invalidate(&new.digest);
        Ok(Rotated {
            key: new,
            secret,
            previous: self.with_live_usage(previous),
        })
    }

    /// The old key's expiry, within the plan's lifetime cap counted from `now`.
    async fn rotated_expiry(&self, old: &KeyRecord, now: i64) -> Result<Option<i64>> {
        let plan = self.plan_of(&old.account_id).await?;
        let Some(max) = self.plans.max_key_lifetime_ms(&plan) else {
            return Ok(old.expires_at);
        };
        let latest = now.saturating_add(max);
        Ok(Some(old.expires_at.map_or(latest, |at| at.min(latest))))
    }

    /// The record of the key that authenticated the request (`GET /v1/api-key-info`).
    pub async fn key_info(&self, caller: &Caller) -> Result<KeyRecord> {
        match &caller.actor {
            Actor::Key(key) => self.visible_key(caller, key.id()).await,
            Actor::Admin | Actor::Portal(_) => Err(Error::Forbidden(
                "key info describes the API key that makes the request; the admin token is not a key".into(),
            )),
        }
    }
}
