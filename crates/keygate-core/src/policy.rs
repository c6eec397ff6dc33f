//! The stateless part of a verification: given a key's record and a request, which outcome?
//! Rate limits and quotas need state and live in the engine; they run after this says valid.

use std::net::IpAddr;

use crate::ip::IpAllowlist;
use crate::outcome::{InvalidReason, Outcome};
use crate::permission::PermissionSet;
use crate::request::Required;

/// What the policy needs to know of a key.
#[derive(Clone, Debug)]
pub struct KeyPolicy<'a> {
    pub permissions: &'a PermissionSet,
    pub ip_allowlist: &'a IpAllowlist,
    /// Unix milliseconds; a revocation may be scheduled (rotation grace period).
    pub revoked_at: Option<i64>,
    pub expires_at: Option<i64>,
}

/// What the policy needs to know of the request.
#[derive(Clone, Debug, Default)]
pub struct RequestFacts<'a> {
    /// `None`: the caller only asks whether the key is valid.
    pub required: Option<&'a Required>,
    /// `None`: unknown client address; a key with an allowlist is then refused.
    pub client_ip: Option<IpAddr>,
}

/// Is the key live at `now` (unix milliseconds)? Revocation wins over expiry.
pub fn liveness(
    revoked_at: Option<i64>,
    expires_at: Option<i64>,
    now: i64,
) -> Result<(), InvalidReason> {
    if revoked_at.is_some_and(|t| t <= now) {
        return Err(InvalidReason::Revoked);
    }
    if expires_at.is_some_and(|t| t <= now) {
        return Err(InvalidReason::Expired);
    }
    Ok(())
}

/// Checks in the SPEC order: liveness, IP allowlist, permission.
pub fn decide(key: &KeyPolicy<'_>, request: &RequestFacts<'_>, now: i64) -> Outcome {
    if let Err(reason) = liveness(key.revoked_at, key.expires_at, now) {
        return Outcome::InvalidKey(reason);
    }
    if !key.ip_allowlist.is_empty() {
        match request.client_ip {
            Some(ip) if key.ip_allowlist.allows(ip) => {}
            _ => return Outcome::IpNotAllowed,
        }
    }
    let allowed = match request.required {
        None => true,
        Some(Required::Permission(p)) => key.permissions.allows(p),
        Some(Required::Unmapped) => key.permissions.allows_everything(),
    };
    if !allowed {
        return Outcome::InsufficientPermissions;
    }
    Outcome::Valid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RouteTable;

    fn facts<'a>(required: Option<&'a Required>, ip: &str) -> RequestFacts<'a> {
        RequestFacts {
            required,
            client_ip: Some(ip.parse().unwrap()),
        }
    }

    #[test]
    fn checks_run_in_order() {
        let perms = PermissionSet::parse(&["invoices.read"]).unwrap();
        let allow = IpAllowlist::parse(&["10.0.0.0/8"]).unwrap();
        let read = RouteTable::default().required("GET", "/api/v1/invoices/1");
        let create = RouteTable::default().required("POST", "/api/v1/invoices");
        let key = |revoked_at, expires_at| KeyPolicy {
            permissions: &perms,
            ip_allowlist: &allow,
            revoked_at,
            expires_at,
        };
        let now = 1_000;
        assert_eq!(
            decide(&key(None, None), &facts(Some(&read), "10.1.1.1"), now),
            Outcome::Valid
        );
        assert_eq!(
            decide(&key(None, None), &facts(Some(&create), "10.1.1.1"), now),
            Outcome::InsufficientPermissions
        );
        assert_eq!(
            decide(&key(None, None), &facts(Some(&create), "192.0.2.1"), now),
            Outcome::IpNotAllowed
        );
        assert_eq!(
            decide(&key(None, Some(now)), &facts(Some(&read), "192.0.2.1"), now),
            Outcome::InvalidKey(InvalidReason::Expired)
        );
        assert_eq!(
            decide(&key(Some(now), Some(now)), &facts(None, "10.1.1.1"), now),
            Outcome::InvalidKey(InvalidReason::Revoked)
        );
        // A revocation scheduled for later (rotation grace) leaves the key working until then.
        assert_eq!(
            decide(&key(Some(now + 1), None), &facts(None, "10.1.1.1"), now),
            Outcome::Valid
        );
        assert_eq!(
            decide(&key(None, None), &RequestFacts::default(), now),
            Outcome::IpNotAllowed
        );
        assert_eq!(
            decide(
                &key(None, None),
                &facts(Some(&Required::Unmapped), "10.0.0.1"),
                now
            ),
            Outcome::InsufficientPermissions
        );
    }
}
