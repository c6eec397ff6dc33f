//! Management operations: accounts, keys, audit log. Each checks who is asking, validates,
//! writes through the store (change + audit event in one transaction) and invalidates the
//! cache before it returns.

mod accounts;
pub mod import;
mod keys;
mod leaks;
mod pages;
mod permission_usage;
pub mod portal;
mod retire;
mod sign_in;
mod usage;
pub mod validate;
mod webhooks;

use std::net::IpAddr;
use std::sync::Arc;

use keygate_core::{Outcome, Permission};
use keygate_store::{AuditEvent, AuditQuery};
use serde_json::Value;

use crate::cache::CachedKey;
use crate::ids::new_id;
use crate::{now_ms, Engine, Error, Result};

pub use accounts::{AccountPatch, NewAccount};
pub use import::{ImportError, ImportSummary, LineError};
pub use keys::{KeyStatus, KeyUpdate, NewKey, RotateOptions, Rotated};
pub use leaks::{LeakAction, LeakSource, LeakVerdict};
pub use pages::{AccountFilter, KeyFilter, Page, PageRequest, DEFAULT_LIMIT, MAX_LIMIT};
pub use permission_usage::{PermissionUsageReport, DEFAULT_DAYS as DEFAULT_PERMISSION_USAGE_DAYS};
pub use retire::IDLE_RETIREMENT_REASON;
pub use usage::{Granularity, UsageBucket, UsageReport};
pub use webhooks::{
    is_private_address, NewWebhookEndpoint, WebhookEndpointUpdate, WebhookSettings,
};

/// Who is asking.
#[derive(Clone, Debug)]
pub enum Actor {
    /// The operator, with the admin token: every account.
    Admin,
    /// A self-service key: its own account, within its own permissions.
    Key(Arc<CachedKey>),
    /// A customer on the hosted API Keys page: one account's keys, within the grant.
    Portal(Arc<portal::PortalGrant>),
}

/// The actor and where the request came from (for the audit log).
#[derive(Clone, Debug)]
pub struct Caller {
    pub actor: Actor,
    pub client_ip: Option<IpAddr>,
}

/// Ids are ours: `acct_`/`key_` and hex. Anything else cannot name a record, so it is
/// answered as unknown without asking the store (which may reject odd bytes loudly).
pub(crate) fn known_shape(id: &str, what: &'static str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::NotFound(what))
    }
}

impl Caller {
    pub fn admin(client_ip: Option<IpAddr>) -> Caller {
        Caller {
            actor: Actor::Admin,
            client_ip,
        }
    }

    fn actor_label(&self) -> String {
        match &self.actor {
            Actor::Admin => "admin".to_owned(),
            Actor::Key(k) => format!("key:{}", k.id()),
            Actor::Portal(p) => format!("portal:{}", p.session_id),
        }
    }

    /// The account a self-service key is confined to; `None` for the admin.
    fn own_account(&self) -> Option<&str> {
        match &self.actor {
            Actor::Admin => None,
            Actor::Key(k) => Some(k.account_id()),
            Actor::Portal(p) => Some(&p.account_id),
        }
    }

    /// Refuses a key that lacks `resource.action`. The admin may do anything.
    fn require(&self, resource: &str, action: &str) -> Result<()> {
        let key = match &self.actor {
            Actor::Admin => return Ok(()),
            // The portal reads its account's keys, and makes and revokes them as far as
            // its link allows (a rotation needs both; the page also checks which of
            // rotate and revoke it was).
            Actor::Portal(grant) => {
                use portal::PortalAction::{Create, Revoke, Rotate};
                let allowed = match (resource, action) {
                    ("api_keys", "read") => true,
                    ("api_keys", "create") => grant.may(Create) || grant.may(Rotate),
                    ("api_keys", "delete") => grant.may(Revoke) || grant.may(Rotate),
                    _ => false,
                };
                return if allowed {
                    Ok(())
                } else {
                    Err(Error::Refused(Outcome::InsufficientPermissions))
                };
            }
            Actor::Key(key) => key,
        };
        let needed =
            Permission::concrete(resource, action).map_err(|e| Error::Internal(e.to_string()))?;
        if key.permissions().allows(&needed) {
            // For the least-privilege report: the key used this permission.
            key.usage.count_permission(&needed, now_ms());
            Ok(())
        } else {
            Err(Error::Refused(Outcome::InsufficientPermissions))
        }
    }

    /// Refuses a record of another account as if it did not exist.
    fn can_see(&self, account_id: &str, what: &'static str) -> Result<()> {
        match self.own_account() {
            Some(own) if own != account_id => Err(Error::NotFound(what)),
            _ => Ok(()),
        }
    }

    fn audit(
        &self,
        action: &str,
        account_id: Option<&str>,
        target_id: Option<&str>,
        details: Value,
    ) -> Result<AuditEvent> {
        Ok(AuditEvent {
            id: new_id("evt")?,
            seq: 0,
            at: now_ms(),
            account_id: account_id.map(str::to_owned),
            actor: self.actor_label(),
            action: action.to_owned(),
            target_id: target_id.map(str::to_owned),
            client_ip: self.client_ip.map(|ip| ip.to_string()),
            details,
        })
    }
}

impl Engine {
    /// Audit events of one account (or all, for the admin), newest first.
    pub async fn audit_log(
        &self,
        caller: &Caller,
        account_id: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>> {
        let query = AuditQuery {
            account_id,
            before,
            limit,
            ..AuditQuery::default()
        };
        self.audit_events(caller, query).await
    }

    /// Audit events matching `query`, newest first; a self-service key sees its own
    /// account's only.
    pub async fn audit_events(
        &self,
        caller: &Caller,
        mut query: AuditQuery<'_>,
    ) -> Result<Vec<AuditEvent>> {
        caller.require("api_keys", "read")?;
        query.account_id = self.visible_account_filter(caller, query.account_id)?;
        query.limit = query.limit.clamp(1, 1000);
        Ok(self.store.query_audit(&query).await?)
    }

    /// Records a failed authentication (a wrong admin token, a failed dashboard sign-in)
    /// in the audit log. Never fails the request: a store error is logged.
    pub async fn record_auth_failure(&self, action: &str, client_ip: Option<IpAddr>) {
        let caller = Caller {
            actor: Actor::Admin,
            client_ip,
        };
        let event = match caller.audit(action, None, None, serde_json::json!({})) {
            Ok(mut e) => {
                e.actor = "anonymous".to_owned();
                e
            }
            Err(_) => return,
        };
        if let Err(e) = self.store.append_audit(&event).await {
            tracing::warn!(error = %e, "could not record a failed authentication");
        }
    }
}
