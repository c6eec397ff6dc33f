//! Portal sessions: the hosted API Keys page a business sends its customer to. The
//! business's backend (admin token) asks for a link; its single-use code, opened once,
//! becomes a portal session confined to one account, the actions and the permissions the
//! link allowed. The session acts as [`Actor::Portal`]; its audit actor is
//! `portal:<session id>`.

use std::sync::Arc;

use keygate_core::PermissionSet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{known_shape, Actor, Caller};
use crate::sessions::{Lifetime, NewSession, Session};
use crate::{Engine, Error, Result};

/// The stored kinds: a link not yet opened, and the session it became.
pub const LINK_KIND: &str = "portal_link";
pub const SESSION_KIND: &str = "portal";
/// A link lasts this long unless asked otherwise…
pub const DEFAULT_LINK_SECONDS: i64 = 300;
/// …and at most this long.
pub const MAX_LINK_SECONDS: i64 = 3600;
/// An opened portal session ends after 30 minutes idle, 2 hours in any case.
pub const SESSION_LIFETIME: Lifetime = Lifetime {
    idle_ms: 30 * 60 * 1000,
    absolute_ms: 2 * 3600 * 1000,
};
const RETURN_URL_MAX: usize = 2048;

/// What a portal session may do besides reading the account's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortalAction {
    Create,
    Rotate,
    Revoke,
}

impl PortalAction {
    pub const ALL: [PortalAction; 3] = [
        PortalAction::Create,
        PortalAction::Rotate,
        PortalAction::Revoke,
    ];

    fn parse(s: &str) -> Option<PortalAction> {
        PortalAction::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PortalAction::Create => "create",
            PortalAction::Rotate => "rotate",
            PortalAction::Revoke => "revoke",
        }
    }
}

/// What a portal session is allowed: one account, some actions, some permissions to hand out.
#[derive(Debug)]
pub struct PortalGrant {
    /// The public id (`ps_…`), as the audit log names it.
    pub session_id: String,
    pub account_id: String,
    /// What keys made here may hold (the presets and permissions the customer may pick).
    pub allowed_scopes: Vec<String>,
    pub allowed: PermissionSet,
    pub actions: Vec<PortalAction>,
    /// Where "Back to <product>" goes.
    pub return_url: Option<String>,
}

impl PortalGrant {
    pub fn may(&self, action: PortalAction) -> bool {
        self.actions.contains(&action)
    }

    /// The grant a stored portal session (or link) carries.
    pub fn of(session: &Session) -> Result<PortalGrant> {
        let corrupt = || Error::Internal("portal session data does not parse".into());
        let account_id = session.account_id.clone().ok_or_else(corrupt)?;
        let data: PortalData =
            serde_json::from_value(session.data.clone()).map_err(|_| corrupt())?;
        let allowed = PermissionSet::parse(&data.allowed_scopes).map_err(|_| corrupt())?;
        Ok(PortalGrant {
            session_id: session.id.clone(),
            account_id,
            allowed_scopes: data.allowed_scopes,
            allowed,
            actions: data.actions,
            return_url: data.return_url,
        })
    }

    /// The engine caller this grant acts as.
    pub fn caller(self: &Arc<Self>, client_ip: Option<std::net::IpAddr>) -> Caller {
        Caller {
            actor: Actor::Portal(self.clone()),
            client_ip,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct PortalData {
    return_url: Option<String>,
    allowed_scopes: Vec<String>,
    actions: Vec<PortalAction>,
}

/// `POST /v1/portal-sessions`.
#[derive(Clone, Debug, Default)]
pub struct NewPortalLink {
    pub account_id: String,
    pub return_url: Option<String>,
    pub expires_in: Option<i64>,
    pub allowed_scopes: Option<Vec<String>>,
    pub actions: Option<Vec<String>>,
}

/// A new portal link: `code` goes into the URL once and is kept only as a digest.
pub struct PortalLink {
    pub id: String,
    pub code: String,
    pub expires_at: i64,
}

fn return_url(url: Option<String>) -> Result<Option<String>> {
    let Some(url) = url else { return Ok(None) };
    let bad = || {
        Error::validation(
            "return_url",
            "return_url must be an absolute http or https URL of at most 2048 characters",
        )
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let host_ok = rest
        .split(['/', '?', '#'])
        .next()
        .is_some_and(|host| !host.is_empty());
    let clean = url.chars().count() <= RETURN_URL_MAX
        && !url.chars().any(|c| c.is_control() || c.is_whitespace());
    if host_ok && clean {
        Ok(Some(url))
    } else {
        Err(bad())
    }
}

fn actions(asked: Option<Vec<String>>) -> Result<Vec<PortalAction>> {
    let Some(asked) = asked else {
        return Ok(PortalAction::ALL.to_vec());
    };
    let mut out = Vec::new();
    for a in &asked {
        let action = PortalAction::parse(a).ok_or_else(|| {
            Error::validation("actions", "actions may hold only create, rotate and revoke")
        })?;
        if !out.contains(&action) {
            out.push(action);
        }
    }
    Ok(out)
}

impl Engine {
    /// Makes a single-use portal link for one account (admin only).
    pub async fn create_portal_link(
        &self,
        caller: &Caller,
        new: NewPortalLink,
    ) -> Result<PortalLink> {
        if !matches!(caller.actor, Actor::Admin) {
            return Err(Error::Forbidden(
                "portal sessions are made with the admin token".into(),
            ));
        }
        let expires_in = new.expires_in.unwrap_or(DEFAULT_LINK_SECONDS);
        if !(1..=MAX_LINK_SECONDS).contains(&expires_in) {
            return Err(Error::validation(
                "expires_in",
                format!("expires_in must be between 1 and {MAX_LINK_SECONDS} seconds"),
            ));
        }
        // Plans set no permission limit, so by default the customer may pick any.
        let allowed_scopes = new.allowed_scopes.unwrap_or_else(|| vec!["all".to_owned()]);
        if allowed_scopes.is_empty() {
            return Err(Error::validation(
                "allowed_scopes",
                "allowed_scopes needs at least one preset or permission",
            ));
        }
        PermissionSet::parse(&allowed_scopes)
            .map_err(|e| Error::validation("allowed_scopes", e.to_string()))?;
        let actions = actions(new.actions)?;
        let return_url = return_url(new.return_url)?;
        known_shape(&new.account_id, "account")?;
        let account = self
            .store
            .get_account(&new.account_id)
            .await?
            .ok_or(Error::NotFound("account"))?;
        let data = serde_json::to_value(PortalData {
            return_url,
            allowed_scopes,
            actions,
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        let link_ms = expires_in * 1000;
        let (code, record) = self
            .start_session(NewSession {
                kind: LINK_KIND,
                id_prefix: "ps",
                id: None,
                account_id: Some(account.id.clone()),
                data: data.clone(),
                lifetime: Lifetime {
                    idle_ms: link_ms,
                    absolute_ms: link_ms,
                },
            })
            .await?;
        let audit = caller.audit(
            "portal_session.create",
            Some(&account.id),
            Some(&record.id),
            json!({"expires_at": record.expires_at, "allowed_scopes": data["allowed_scopes"], "actions": data["actions"]}),
        )?;
        self.store.append_audit(&audit).await?;
        Ok(PortalLink {
            id: record.id,
            code,
            expires_at: record.expires_at,
        })
    }

    /// Opens a portal link: its code is used up and a portal session starts (secret for
    /// the cookie, and its grant). `None` for a used, expired or unknown code.
    pub async fn open_portal_link(
        &self,
        code: &str,
        client_ip: Option<std::net::IpAddr>,
    ) -> Result<Option<(String, Arc<PortalGrant>)>> {
        let Some(link) = self.take_session(code, LINK_KIND).await? else {
            return Ok(None);
        };
        let (secret, session) = self
            .start_session(NewSession {
                kind: SESSION_KIND,
                id_prefix: "ps",
                id: Some(link.id.clone()),
                account_id: link.account_id.clone(),
                data: link.data.clone(),
                lifetime: SESSION_LIFETIME,
            })
            .await?;
        let grant = Arc::new(PortalGrant::of(&session)?);
        self.audit_portal_session("portal_session.open", &grant, client_ip)
            .await?;
        Ok(Some((secret, grant)))
    }

    /// Ends a portal session at its customer's request (sign-out): its secret opens
    /// nothing afterwards. Audited as `portal_session.close` by the session itself.
    pub async fn close_portal_session(
        &self,
        secret: &str,
        grant: &Arc<PortalGrant>,
        client_ip: Option<std::net::IpAddr>,
    ) -> Result<()> {
        self.end_session(secret).await?;
        self.audit_portal_session("portal_session.close", grant, client_ip)
            .await
    }

    /// Audits `action` on a portal session, by the session itself, in its account.
    async fn audit_portal_session(
        &self,
        action: &str,
        grant: &Arc<PortalGrant>,
        client_ip: Option<std::net::IpAddr>,
    ) -> Result<()> {
        let event = grant.caller(client_ip).audit(
            action,
            Some(&grant.account_id),
            Some(&grant.session_id),
            Value::Object(Default::default()),
        )?;
        self.store.append_audit(&event).await?;
        Ok(())
    }
}
