//! Permissions: `resource.action` grants, their accepted spellings and how they match.
//!
//! Accepted input, kept as written except for what the SPEC rewrites:
//! - `invoices.read`, `invoices:read` (ordermonk style, kept as `invoices.read`), any case
//!   (kept in lowercase: names are case-insensitive and stored that way);
//! - wildcards `*` (everything), `invoices.*` (every action on one resource), `*.read`
//!   (one action on every ordinary resource);
//! - the presets `all`, `read`, `write`, `webhooks` (online-invoice-maker's scope table);
//! - the action alias `write` (`products:write` = create + update + delete).
//!
//! Resource names keep the operator's spelling (a key created with `invoices.read` is
//! listed and forwarded as `invoices.read`), but they are compared in singular form with
//! `-` and `_` alike, so `invoice.read` and `invoices.read` allow the same requests. Keys
//! stored before 0.2 hold the singular spelling; it keeps working because of that matching.
//!
//! Restricted resources (`webhook`, `api_key`, `account`) are reached only by a grant that
//! names them or by `*`: a resource wildcard such as `*.read` does not cover them. That is
//! how the `read` and `write` presets leave out webhooks (as the reference table says), and
//! why a `write` key cannot mint new keys unless it is given `api_keys.*` explicitly.

use std::fmt;

pub use crate::name::Name;

/// Resources that resource wildcards (`*.read`) do not reach.
pub const RESTRICTED_RESOURCES: &[&str] = &["webhook", "api_key", "account"];
/// Longest resource or action name.
pub const MAX_NAME_LEN: usize = 64;
/// Most grants one key may hold.
pub const MAX_GRANTS: usize = 256;

/// One side of a grant: a name, or any.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Any,
    Name(Name),
}

/// A grant as written (lowercase, `.`-separated), or a concrete permission a request needs.
/// Derived equality compares spellings; [`Permission::covers`] compares meaning.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    pub resource: Part,
    pub action: Part,
}

/// Why an input is not a permission. Carries the input; its message shows it with key
/// material hidden (a key pasted into a permission field must not come back in an answer).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid permission {:?}: {reason}", crate::key::obscure(.input, 64))]
pub struct PermissionError {
    pub input: String,
    pub reason: &'static str,
}

impl Permission {
    /// A concrete permission (`resource.action`, both names), as a request requires.
    pub fn concrete(resource: &str, action: &str) -> Result<Permission, PermissionError> {
        // Formatted only on error: this runs for every request the rules map.
        let err = |reason| PermissionError {
            input: format!("{resource}.{action}"),
            reason,
        };
        Ok(Permission {
            resource: Part::Name(resource_name(resource).map_err(err)?),
            action: Part::Name(name(action).map_err(err)?),
        })
    }

    /// Parses one concrete permission such as `invoices.send`; wildcards and presets are
    /// refused (a route needs one definite permission).
    pub fn parse_concrete(input: &str) -> Result<Permission, PermissionError> {
        let (resource, action) = split(input).ok_or_else(|| PermissionError {
            input: input.to_owned(),
            reason: "expected resource.action",
        })?;
        // `write` in any case: canonical_action lowercases, so `invoices.Write` would
        // otherwise become the concrete action `write`, which `invoices.write` refuses.
        if resource == "*" || action == "*" || action.eq_ignore_ascii_case("write") {
            return Err(PermissionError {
                input: input.to_owned(),
                reason: "a required permission cannot be a wildcard",
            });
        }
        Permission::concrete(resource, action)
    }

    fn is_everything(&self) -> bool {
        self.resource == Part::Any && self.action == Part::Any
    }

    /// Does this grant allow the concrete permission `required`?
    pub fn allows(&self, required: &Permission) -> bool {
        self.covers(required)
    }

    /// Is every permission that `other` grants also granted by `self`? Used to stop a key
    /// from handing out more than it holds.
    pub fn covers(&self, other: &Permission) -> bool {
        if self.is_everything() {
            return true;
        }
        let resource_ok = match (&self.resource, &other.resource) {
            (Part::Name(a), Part::Name(b)) => same_names(a.as_bytes(), b.as_bytes()),
            // `*.x` covers named resources except the restricted ones.
            (Part::Any, Part::Name(b)) => !restricted(b.as_bytes()),
            (Part::Any, Part::Any) => true,
            (Part::Name(_), Part::Any) => false,
        };
        let action_ok = match (&self.action, &other.action) {
            (Part::Any, _) => true,
            (Part::Name(a), Part::Name(b)) => a == b,
            (Part::Name(_), Part::Any) => false,
        };
        // `*.read` does not cover `*` even though both have a wildcard resource.
        resource_ok && action_ok && !other.is_everything()
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn text(part: &Part) -> &str {
            match part {
                Part::Any => "*",
                Part::Name(n) => n.as_str(),
            }
        }
        match (&self.resource, &self.action) {
            (Part::Any, Part::Any) => f.write_str("*"),
            (r, a) => write!(f, "{}.{}", text(r), text(a)),
        }
    }
}

/// A key's grants: sorted, without duplicates or covered entries. Of two grants that
/// differ only in the resource's spelling (`invoice.read`, `invoices.read`) the first in
/// sort order is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PermissionSet(Vec<Permission>);

impl PermissionSet {
    pub fn empty() -> Self {
        PermissionSet(Vec::new())
    }

    /// Parses and normalises a list of grants. Idempotent: parsing the output of
    /// [`PermissionSet::to_strings`] gives the same set.
    pub fn parse<S: AsRef<str>>(inputs: &[S]) -> Result<Self, PermissionError> {
        let mut grants = Vec::new();
        for input in inputs {
            grants.extend(parse_grant(input.as_ref())?);
        }
        if grants.len() > MAX_GRANTS {
            return Err(PermissionError {
                input: format!("{} grants", grants.len()),
                reason: "too many permissions",
            });
        }
        Ok(Self::from_grants(grants))
    }

    /// The grants of a preset scope (`all`, `read`, `write`, `webhooks`).
    pub fn preset(name: &str) -> Option<Self> {
        preset_grants(name).map(Self::from_grants)
    }

    /// The set of `grants` as given (already parsed), normalised like [`PermissionSet::parse`].
    pub fn normalised(grants: Vec<Permission>) -> Self {
        Self::from_grants(grants)
    }

    fn from_grants(mut grants: Vec<Permission>) -> Self {
        grants.sort();
        grants.dedup();
        // Drop grants that another grant already covers, so the set reads simply; of two
        // equivalent spellings (each covers the other) keep the earlier one.
        let dropped = |i: usize, g: &Permission| {
            grants
                .iter()
                .enumerate()
                .any(|(j, other)| j != i && other.covers(g) && (j < i || !g.covers(other)))
        };
        let kept: Vec<Permission> = grants
            .iter()
            .enumerate()
            .filter(|(i, g)| !dropped(*i, g))
            .map(|(_, g)| g.clone())
            .collect();
        PermissionSet(kept)
    }

    pub fn grants(&self) -> &[Permission] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// Does any grant allow `required`?
    pub fn allows(&self, required: &Permission) -> bool {
        self.0.iter().any(|g| g.allows(required))
    }

    /// Does this set hold everything, the full wildcard `*`?
    pub fn allows_everything(&self) -> bool {
        self.0.iter().any(Permission::is_everything)
    }

    /// Is every grant of `other` covered by a grant of `self`?
    pub fn covers(&self, other: &PermissionSet) -> bool {
        other
            .0
            .iter()
            .all(|g| self.allows_everything() || self.0.iter().any(|mine| mine.covers(g)))
    }
}

/// Is `resource` (in any spelling) one that resource wildcards do not reach?
pub fn is_restricted(resource: &str) -> bool {
    restricted(resource.as_bytes())
}

fn restricted(resource: &[u8]) -> bool {
    RESTRICTED_RESOURCES
        .iter()
        .any(|restricted| same_names(restricted.as_bytes(), resource))
}

fn preset_grants(name: &str) -> Option<Vec<Permission>> {
    let every = |action: &str| Permission {
        resource: Part::Any,
        action: Part::Name(Name::lowercase(action)),
    };
    Some(match name {
        "all" | "*" | "*.*" | "*:*" => vec![Permission {
            resource: Part::Any,
            action: Part::Any,
        }],
        "read" => vec![every("read")],
        "write" => ["read", "create", "update", "delete"]
            .into_iter()
            .map(every)
            .collect(),
        "webhooks" => vec![Permission {
            resource: Part::Name(Name::lowercase("webhook")),
            action: Part::Any,
        }],
        _ => return None,
    })
}

fn split(input: &str) -> Option<(&str, &str)> {
    let sep = if input.contains('.') { '.' } else { ':' };
    let (r, a) = input.split_once(sep)?;
    if a.contains('.') || a.contains(':') || r.contains(':') {
        return None;
    }
    Some((r, a))
}

fn parse_grant(raw: &str) -> Result<Vec<Permission>, PermissionError> {
    let input = raw.trim().to_ascii_lowercase();
    let err = |reason| PermissionError {
        input: raw.to_owned(),
        reason,
    };
    if let Some(grants) = preset_grants(&input) {
        return Ok(grants);
    }
    let (resource, action) = split(&input).ok_or_else(|| {
        err("expected resource.action, resource:action, a wildcard, or a preset (all, read, write, webhooks)")
    })?;
    let resource = if resource == "*" {
        Part::Any
    } else {
        Part::Name(resource_name(resource).map_err(err)?)
    };
    let actions: Vec<Part> = match action {
        "*" => vec![Part::Any],
        // ordermonk's `products:write` means create, update and delete.
        "write" => ["create", "update", "delete"]
            .iter()
            .map(|a| Part::Name(Name::lowercase(a)))
            .collect(),
        a => vec![Part::Name(name(a).map_err(err)?)],
    };
    Ok(actions
        .into_iter()
        .map(|action| Permission {
            resource: resource.clone(),
            action,
        })
        .collect())
}

/// A resource or action name in lowercase, when `text` is one (in any case): a letter, then
/// letters, digits, `_` and `-`, at most [`MAX_NAME_LEN`] bytes. Checked before the name
/// is made, so an overlong input is not copied.
fn name(text: &str) -> Result<Name, &'static str> {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err("empty resource or action");
    }
    if bytes.len() > MAX_NAME_LEN {
        return Err("resource or action longer than 64 characters");
    }
    if !bytes[0].is_ascii_alphabetic() {
        return Err("names start with a letter");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
    {
        return Err("names use only a-z, 0-9, '_' and '-'");
    }
    Ok(Name::lowercase(text))
}

/// A resource name as written, in lowercase, once it is known to be valid. Its spelling is
/// kept; matching goes through [`same_resource`].
pub fn resource_name(text: &str) -> Result<Name, &'static str> {
    name(text)
}

/// Do two (lowercase) resource names name the same resource? Compared in singular form with
/// `-` and `_` alike: `invoices` = `invoice`, `api-keys` = `api_key`. Allocation-free, as
/// it runs for every grant on every verification.
pub fn same_resource(a: &str, b: &str) -> bool {
    same_names(a.as_bytes(), b.as_bytes())
}

/// [`same_resource`] on the names' bytes ([`Name::as_bytes`] needs no UTF-8 check).
fn same_names(a: &[u8], b: &[u8]) -> bool {
    let (a_stem, a_tail) = singular_parts(a);
    let (b_stem, b_tail) = singular_parts(b);
    let unify = |c: &u8| if *c == b'-' { b'_' } else { *c };
    let a_bytes = a_stem.iter().chain(a_tail).map(unify);
    let b_bytes = b_stem.iter().chain(b_tail).map(unify);
    a_bytes.eq(b_bytes)
}

/// A plain English singular, good enough that a URL's plural and a grant's singular meet:
/// `invoices` → `invoice`, `categories` → `category`, `taxes` → `tax`, `status` stays.
/// Only the last word of a snake_case name changes (`api_keys` → `api_key`).
pub fn singular(word: &str) -> String {
    let (stem, tail) = singular_parts(word.as_bytes());
    // Only ASCII suffixes are cut, so the stem ends on a character boundary.
    format!("{}{}", &word[..stem.len()], String::from_utf8_lossy(tail))
}

/// The singular of `word` as a prefix of it and a suffix to append (`categories` →
/// (`categor`, `y`)), so that comparing needs no allocation. ASCII suffixes only, so a
/// prefix of a UTF-8 word stays on a character boundary.
fn singular_parts(w: &[u8]) -> (&[u8], &'static [u8]) {
    let strip = |n: usize| &w[..w.len() - n];
    if w.len() > 3 && w.ends_with(b"ies") {
        return (strip(3), b"y");
    }
    for suffix in [&b"sses"[..], b"shes", b"ches", b"xes", b"zes", b"uses"] {
        if w.len() > suffix.len() && w.ends_with(suffix) {
            return (strip(2), b"");
        }
    }
    if w.ends_with(b"ss") || w.ends_with(b"us") || w.ends_with(b"is") {
        return (w, b"");
    }
    if w.len() > 1 && w.ends_with(b"s") {
        return (strip(1), b"");
    }
    (w, b"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(inputs: &[&str]) -> PermissionSet {
        PermissionSet::parse(inputs).unwrap()
    }

    fn need(p: &str) -> Permission {
        Permission::parse_concrete(p).unwrap()
    }

    #[test]
    fn spellings_are_kept_except_the_separator_and_presets() {
        assert_eq!(set(&["invoices:read"]).to_strings(), ["invoices.read"]);
        assert_eq!(set(&["orders:read"]).to_strings(), ["orders.read"]);
        assert_eq!(
            set(&["invoices.read", "clients.*"]).to_strings(),
            ["clients.*", "invoices.read"]
        );
        assert_eq!(set(&["invoice.read"]).to_strings(), ["invoice.read"]);
        assert_eq!(set(&["Invoices.Read"]).to_strings(), ["invoices.read"]);
        assert_eq!(set(&["api-keys.*"]).to_strings(), ["api-keys.*"]);
        assert_eq!(
            set(&["products:write"]).to_strings(),
            ["products.create", "products.delete", "products.update"]
        );
        assert_eq!(set(&["*.*"]).to_strings(), ["*"]);
        assert_eq!(
            set(&["clients.*", "client.read"]).to_strings(),
            ["clients.*"]
        );
        // Two spellings of one grant: one is kept (the first in sort order).
        assert_eq!(
            set(&["invoices.read", "invoice.read"]).to_strings(),
            ["invoice.read"]
        );
    }

    #[test]
    fn plural_and_singular_grants_allow_both_spellings() {
        for grant in ["invoices.read", "invoice.read", "invoices:read"] {
            for required in ["invoices.read", "invoice.read"] {
                assert!(
                    set(&[grant]).allows(&need(required)),
                    "{grant} / {required}"
                );
            }
        }
        assert!(set(&["api-keys.*"]).allows(&need("api_keys.create")));
        assert!(set(&["api_key.*"]).allows(&need("api-keys.create")));
        assert!(!set(&["*.read"]).allows(&need("api-keys.read")));
        assert!(!set(&["*.read"]).allows(&need("webhook.read")));
        assert!(set(&["categories.read"]).allows(&need("category.read")));
        assert!(!set(&["invoices.read"]).allows(&need("invoicing.read")));
    }

    #[test]
    fn singular_and_plural_name_the_same_resource() {
        for (a, b) in [
            ("invoices", "invoice"),
            ("categories", "category"),
            ("taxes", "tax"),
            ("addresses", "address"),
            ("statuses", "status"),
            ("api_keys", "api_key"),
        ] {
            assert_eq!(singular(a), singular(b), "{a} vs {b}");
        }
        assert!(set(&["invoice.read"]).allows(&need("invoices.read")));
    }

    #[test]
    fn reference_examples_match() {
        // invoicing-admin-api-auth: `*`, `client.*`, `invoice.read`.
        assert!(set(&["*"]).allows(&need("webhooks.delete")));
        assert!(set(&["client.*"]).allows(&need("clients.delete")));
        assert!(!set(&["client.*"]).allows(&need("invoices.read")));
        assert!(set(&["invoice.read"]).allows(&need("invoices.read")));
        assert!(!set(&["invoice.read"]).allows(&need("invoices.create")));
    }

    #[test]
    fn presets_follow_the_reference_table() {
        let read = PermissionSet::preset("read").unwrap();
        assert!(read.allows(&need("invoices.read")));
        assert!(read.allows(&need("customers.read")));
        assert!(!read.allows(&need("invoices.create")));
        assert!(!read.allows(&need("webhooks.read")));
        let write = PermissionSet::preset("write").unwrap();
        for p in [
            "invoices.read",
            "invoices.create",
            "quotations.update",
            "customers.delete",
        ] {
            assert!(write.allows(&need(p)), "{p}");
        }
        assert!(!write.allows(&need("webhooks.create")));
        assert!(!write.allows(&need("api_keys.create")));
        let hooks = PermissionSet::preset("webhooks").unwrap();
        assert!(hooks.allows(&need("webhooks.create")));
        assert!(!hooks.allows(&need("invoices.read")));
        let all = PermissionSet::preset("all").unwrap();
        assert!(all.allows(&need("webhooks.delete")));
        assert!(all.allows(&need("api_keys.create")));
    }

    #[test]
    fn no_permissions_means_none() {
        assert!(!PermissionSet::empty().allows(&need("invoices.read")));
    }

    #[test]
    fn bad_inputs_are_refused() {
        for bad in [
            "",
            "invoices",
            "invoices.",
            ".read",
            "a.b.c",
            "a:b.c",
            "inv oices.read",
            "1nvoices.read",
            "invoices.re@d",
            "ïnvoices.read",
        ] {
            assert!(PermissionSet::parse(&[bad]).is_err(), "{bad:?} accepted");
        }
        assert!(PermissionSet::parse(&[format!("{}.read", "a".repeat(65))]).is_err());
    }

    /// Found by the secret-hygiene test: the 400 answer to a key pasted as a permission
    /// echoed the whole key.
    #[test]
    fn a_key_given_as_a_permission_is_not_echoed() {
        let key = crate::KeyFormat::new("kg", true)
            .unwrap()
            .generate(crate::Environment::Live)
            .unwrap();
        let key = key.expose();
        let message = PermissionSet::parse(&[key]).unwrap_err().to_string();
        assert!(!message.contains(&key[8..24]), "{message}");
        assert!(
            message.starts_with("invalid permission \"kg_live_…\""),
            "{message}"
        );
        let message = Permission::parse_concrete(&format!("{key}.read"))
            .unwrap_err()
            .to_string();
        assert!(!message.contains(&key[8..24]), "{message}");
        let typo = PermissionSet::parse(&["invoices.re@d"])
            .unwrap_err()
            .to_string();
        assert!(typo.contains("invoices.re@d"), "{typo}");
    }

    /// Found by the `permissions` fuzz target (round trip of a concrete permission):
    /// `c.Write` parsed as the concrete `c.write`, whose printed form then did not parse.
    #[test]
    fn the_write_alias_is_refused_as_a_required_permission_in_any_case() {
        for bad in ["c.write", "c.Write", "C:WRITE", "invoices.wRiTe"] {
            assert!(Permission::parse_concrete(bad).is_err(), "{bad}");
        }
        let p = Permission::parse_concrete("Invoices.Send").unwrap();
        assert_eq!(Permission::parse_concrete(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn coverage_stops_escalation() {
        assert!(set(&["*"]).covers(&set(&["webhooks.*", "api_keys.*"])));
        assert!(set(&["invoices.*"]).covers(&set(&["invoices.read"])));
        assert!(!set(&["invoices.read"]).covers(&set(&["invoices.*"])));
        assert!(!set(&["*.read"]).covers(&set(&["*"])));
        assert!(!set(&["*.read"]).covers(&set(&["webhooks.read"])));
        assert!(set(&["*.read"]).covers(&set(&["invoices.read"])));
        assert!(!set(&["api_keys.*"]).covers(&set(&["invoices.read"])));
    }

    fn arb_part() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            Just("invoices".to_owned()),
            Just("invoice".to_owned()),
            Just("webhooks".to_owned()),
            Just("api_keys".to_owned()),
            "[a-z]{1,6}",
        ]
    }

    fn arb_action() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            Just("read".to_owned()),
            Just("create".to_owned()),
            Just("write".to_owned()),
            "[a-z]{1,5}",
        ]
    }

    fn arb_grant() -> impl Strategy<Value = String> {
        prop_oneof![
            (arb_part(), arb_action(), any::<bool>()).prop_map(|(r, a, colon)| if colon {
                format!("{r}:{a}")
            } else {
                format!("{r}.{a}")
            }),
            Just("all".to_owned()),
            Just("read".to_owned()),
            Just("write".to_owned()),
            Just("webhooks".to_owned()),
        ]
    }

    fn arb_required() -> impl Strategy<Value = Permission> {
        (
            "[a-z]{1,6}|invoices|webhooks|api_keys",
            "read|create|update|delete|[a-z]{1,5}",
        )
            .prop_map(|(r, a)| Permission::concrete(&r, &a).unwrap())
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent(grants in proptest::collection::vec(arb_grant(), 0..6)) {
            let once = PermissionSet::parse(&grants).unwrap();
            let twice = PermissionSet::parse(&once.to_strings()).unwrap();
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn everything_allows_everything(req in arb_required()) {
            prop_assert!(set(&["*"]).allows(&req));
        }

        #[test]
        fn resource_wildcard_allows_exactly_its_resource(req in arb_required(), r in "[a-z]{1,6}|invoices") {
            let grant = set(&[format!("{r}.*").as_str()]);
            let same = matches!(&req.resource, Part::Name(n) if singular(n) == singular(&r));
            prop_assert_eq!(grant.allows(&req), same);
        }

        #[test]
        fn action_wildcard_allows_exactly_its_action_outside_restricted(req in arb_required(), a in "read|create|[a-z]{1,5}") {
            prop_assume!(a != "write");
            let grant = set(&[format!("*.{a}").as_str()]);
            let restricted = matches!(&req.resource, Part::Name(n) if is_restricted(n));
            prop_assert_eq!(grant.allows(&req), req.action == Part::Name(Name::lowercase(&a)) && !restricted);
        }

        #[test]
        fn coverage_implies_allowance(a in proptest::collection::vec(arb_grant(), 0..4), b in proptest::collection::vec(arb_grant(), 0..4), req in arb_required()) {
            let a = PermissionSet::parse(&a).unwrap();
            let b = PermissionSet::parse(&b).unwrap();
            if a.covers(&b) && b.allows(&req) {
                prop_assert!(a.allows(&req));
            }
        }

        #[test]
        fn normalisation_keeps_meaning(grants in proptest::collection::vec(arb_grant(), 0..5), req in arb_required()) {
            // Dropping covered grants must not change what the set allows.
            let set = PermissionSet::parse(&grants).unwrap();
            let each = grants.iter().any(|g| PermissionSet::parse(&[g]).unwrap().allows(&req));
            prop_assert_eq!(set.allows(&req), each);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = PermissionSet::parse(&[s]);
        }
    }
}
