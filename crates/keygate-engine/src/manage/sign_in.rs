//! Audit events of the web dashboard's sign-in, which changes no record of its own.

use std::net::IpAddr;

use serde_json::json;

use super::{Actor, Caller};
use crate::ids::new_id;
use crate::{now_ms, Engine, Result};

impl Engine {
    /// A successful dashboard sign-in (`dashboard.sign_in`). A key's sign-in is logged in
    /// its account, with the key as target.
    pub async fn record_sign_in(&self, caller: &Caller) -> Result<()> {
        let (account, target) = match &caller.actor {
            Actor::Admin => (None, None),
            Actor::Portal(p) => (Some(p.account_id.as_str()), Some(p.session_id.as_str())),
            Actor::Key(k) => (Some(k.account_id()), Some(k.id())),
        };
        let event = caller.audit("dashboard.sign_in", account, target, json!({}))?;
        Ok(self.store.append_audit(&event).await?)
    }

    /// A refused dashboard sign-in from `client_ip` (`dashboard.sign_in_failed`), with the
    /// reason (`invalid_key`, `ip_not_allowed`, …). Never the credential that was tried.
    pub async fn record_failed_sign_in(
        &self,
        client_ip: Option<IpAddr>,
        reason: &str,
    ) -> Result<()> {
        let event = keygate_store::AuditEvent {
            id: new_id("evt")?,
            seq: 0,
            at: now_ms(),
            account_id: None,
            actor: "anonymous".to_owned(),
            action: "dashboard.sign_in_failed".to_owned(),
            target_id: None,
            client_ip: client_ip.map(|ip| ip.to_string()),
            details: json!({ "reason": reason }),
        };
        Ok(self.store.append_audit(&event).await?)
    }
}
