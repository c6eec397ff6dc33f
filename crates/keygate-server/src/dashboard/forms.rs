//! `application/x-www-form-urlencoded` bodies, and turning form fields into engine input.
//!
//! Fields may repeat (`permission=invoice.read&permission=client.read`), so a form is a
//! list of pairs rather than a struct.

use chrono::{NaiveDate, TimeZone, Utc};
use keygate_engine::Error;
use keygate_store::{Quota, RateLimit, Refill};

use keygate_edge::credentials::decode;

/// Longest value of one field we accept (the body limit bounds the whole).
const MAX_FIELD: usize = 16 * 1024;

#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        let text = String::from_utf8_lossy(body);
        Form(
            text.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k), decode(v))
                })
                .filter(|(_, v)| v.len() <= MAX_FIELD)
                .collect(),
        )
    }

    /// The first value of `name`, trimmed; `None` when missing or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Every non-blank value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
            .collect()
    }

    pub fn raw(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// Splits a free-text list on commas, spaces and line breaks.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What the access section of a key form asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// A preset scope: `all`, `read`, `write`, `webhooks`.
    Scope(String),
    /// Grants from the checklist and the free-text field.
    Permissions(Vec<String>),
}

pub const PRESETS: &[(&str, &str)] = &[
    ("all", "Everything, including webhooks, keys and accounts"),
    ("read", "Read every resource except webhooks"),
    (
        "write",
        "Read, create, update and delete every resource except webhooks",
    ),
    ("webhooks", "Webhook subscriptions only"),
];

pub fn access(form: &Form) -> Result<Access, Error> {
    match form.get("access").unwrap_or("custom") {
        "custom" => {
            let mut list: Vec<String> = form
                .all("permission")
                .into_iter()
                .map(str::to_owned)
                .collect();
            list.extend(split_list(form.raw("extra_permissions")));
            Ok(Access::Permissions(list))
        }
        scope if PRESETS.iter().any(|(p, _)| *p == scope) => Ok(Access::Scope(scope.to_owned())),
        _ => Err(Error::validation(
            "access",
            "choose a scope or custom permissions",
        )),
    }
}

/// Expiry choice: `None` = leave as is (edit only); `Some(None)` = never.
pub fn expiry(form: &Form, now_ms: i64) -> Result<Option<Option<i64>>, Error> {
    const DAY_MS: i64 = 86_400_000;
    match form.get("expiry").unwrap_or("never") {
        "keep" => Ok(None),
        "never" => Ok(Some(None)),
        "30" => Ok(Some(Some(now_ms + 30 * DAY_MS))),
        "90" => Ok(Some(Some(now_ms + 90 * DAY_MS))),
        "date" => {
            let text = form.get("expires_on").ok_or_else(|| {
                Error::validation("expires_on", "choose the date the key expires")
            })?;
            let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
                Error::validation("expires_on", "the expiry date must look like 2030-01-31")
            })?;
            let at = date
                .and_hms_opt(0, 0, 0)
                .map(|t| Utc.from_utc_datetime(&t).timestamp_millis())
                .ok_or_else(|| Error::validation("expires_on", "that date cannot be used"))?;
            if at <= now_ms {
                return Err(Error::validation(
                    "expires_on",
                    "the expiry date must be in the future",
                ));
            }
            Ok(Some(Some(at)))
        }
        _ => Err(Error::validation("expiry", "choose when the key expires")),
    }
}

/// The rate limit fields: blank requests means no limit.
pub fn rate_limit(form: &Form) -> Result<Option<RateLimit>, Error> {
    let Some(requests) = form.get("rate_requests") else {
        return Ok(None);
    };
    let requests: u32 = requests.parse().map_err(|_| {
        Error::validation(
            "rate_requests",
            "the rate limit must be a whole number of requests",
        )
    })?;
    let per_seconds: u32 = form
        .get("rate_per")
        .unwrap_or("60")
        .parse()
        .map_err(|_| Error::validation("rate_per", "choose the rate limit's period"))?;
    Ok(Some(RateLimit {
        requests,
        per_seconds,
    }))
}

/// The quota fields: blank requests means no quota, a blank refill amount no refill.
pub fn quota(form: &Form) -> Result<Option<Quota>, Error> {
    let refill_amount = form.get("quota_refill_amount");
    let Some(requests) = form.get("quota_requests") else {
        return match refill_amount {
            Some(_) => Err(Error::validation(
                "quota_requests",
                "a refill needs a quota: give the quota's number of requests",
            )),
            None => Ok(None),
        };
    };
    let requests = at_least_one(requests).ok_or_else(|| {
        Error::validation(
            "quota_requests",
            "the quota must be a whole number of requests, at least 1",
        )
    })?;
    let refill = match refill_amount {
        None => None,
        Some(amount) => Some(Refill {
            amount: at_least_one(amount).ok_or_else(|| {
                Error::validation(
                    "quota_refill_amount",
                    "the refill must be a whole number of requests, at least 1",
                )
            })?,
            every: form
                .get("quota_refill_every")
                .and_then(at_least_one)
                .ok_or_else(|| {
                    Error::validation("quota_refill_every", "choose how often the quota refills")
                })?,
        }),
    };
    Ok(Some(Quota { requests, refill }))
}

fn at_least_one(text: &str) -> Option<u64> {
    text.parse().ok().filter(|n| *n >= 1)
}

/// The IP allowlist textarea.
pub fn allowlist(form: &Form) -> Vec<String> {
    split_list(form.raw("ip_allowlist"))
}

/// Grace period of a rotation, in seconds (0: the old key stops now).
pub fn grace(form: &Form) -> Result<Option<u64>, Error> {
    match form.get("grace") {
        None | Some("0") => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| Error::validation("grace", "choose a grace period")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_encoded_fields() {
        let f = Form::parse(
            b"name=Zapier+Integration&permission=invoice.read&permission=client.%2A&x=&ip_allowlist=10.0.0.1%0D%0A10.0.0.0%2F8",
        );
        assert_eq!(f.get("name"), Some("Zapier Integration"));
        assert_eq!(f.all("permission"), vec!["invoice.read", "client.*"]);
        assert_eq!(f.get("x"), None);
        assert_eq!(allowlist(&f), vec!["10.0.0.1", "10.0.0.0/8"]);
        assert_eq!(
            access(&f).unwrap(),
            Access::Permissions(vec!["invoice.read".into(), "client.*".into()])
        );
        let f = Form::parse(b"access=read&permission=invoice.read");
        assert_eq!(access(&f).unwrap(), Access::Scope("read".into()));
        assert!(access(&Form::parse(b"access=root")).is_err());
    }

    #[test]
    fn expiry_choices() {
        let now = 1_700_000_000_000;
        assert_eq!(expiry(&Form::parse(b"expiry=keep"), now).unwrap(), None);
        assert_eq!(expiry(&Form::parse(b""), now).unwrap(), Some(None));
        assert_eq!(
            expiry(&Form::parse(b"expiry=30"), now).unwrap(),
            Some(Some(now + 30 * 86_400_000))
        );
        assert_eq!(
            expiry(&Form::parse(b"expiry=date&expires_on=2099-01-31"), now).unwrap(),
            Some(Some(4_073_500_800_000))
        );
        assert!(expiry(&Form::parse(b"expiry=date&expires_on=2001-01-31"), now).is_err());
        assert!(expiry(&Form::parse(b"expiry=date&expires_on=31.1.2099"), now).is_err());
        assert!(expiry(&Form::parse(b"expiry=date"), now).is_err());
    }

    #[test]
    fn rate_limit_and_grace() {
        assert_eq!(
            rate_limit(&Form::parse(b"rate_requests=&rate_per=60")).unwrap(),
            None
        );
        assert_eq!(
            rate_limit(&Form::parse(b"rate_requests=100&rate_per=3600")).unwrap(),
            Some(RateLimit {
                requests: 100,
                per_seconds: 3600
            })
        );
        assert!(rate_limit(&Form::parse(b"rate_requests=-1")).is_err());
        assert_eq!(grace(&Form::parse(b"grace=0")).unwrap(), None);
        assert_eq!(grace(&Form::parse(b"grace=3600")).unwrap(), Some(3600));
    }

    #[test]
    fn quota_fields() {
        let q = |body: &[u8]| quota(&Form::parse(body));
        assert_eq!(
            q(b"quota_requests=&quota_refill_every=86400").unwrap(),
            None
        );
        assert_eq!(
            q(b"quota_requests=5000&quota_refill_amount=&quota_refill_every=86400").unwrap(),
            Some(Quota {
                requests: 5000,
                refill: None
            })
        );
        assert_eq!(
            q(b"quota_requests=5000&quota_refill_amount=100&quota_refill_every=3600").unwrap(),
            Some(Quota {
                requests: 5000,
                refill: Some(Refill {
                    amount: 100,
                    every: 3600
                })
            })
        );
        let field = |body: &[u8]| match q(body) {
            Err(Error::Validation { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(b"quota_requests=0"), "quota_requests");
        assert_eq!(field(b"quota_requests=ten"), "quota_requests");
        assert_eq!(field(b"quota_requests=-5"), "quota_requests");
        assert_eq!(field(b"quota_refill_amount=10"), "quota_requests");
        assert_eq!(
            field(b"quota_requests=5&quota_refill_amount=0&quota_refill_every=60"),
            "quota_refill_amount"
        );
        assert_eq!(
            field(b"quota_requests=5&quota_refill_amount=1&quota_refill_every=soon"),
            "quota_refill_every"
        );
    }
}
