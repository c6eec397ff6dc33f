//! Which permission an HTTP request needs: from the method and the path, or from the route
//! table where a path does not fit the rule.
//!
//! Rule: the resource is the first path segment after an optional `api` and version
//! (`/api/v1/invoices/42` → `invoices`); the action comes from the method (GET/HEAD → read,
//! POST → create, PUT/PATCH → update, DELETE → delete). Paths are decoded and normalised
//! first (`%2e%2e`, `..`, `//`, `\`) so that what we check is what an upstream would serve.
//! A request the rule cannot map needs the full wildcard `*`: unknown means denied.

use std::borrow::Cow;

use smallvec::SmallVec;

use crate::name::Name;
use crate::permission::{resource_name, Part, Permission, PermissionError};

/// What a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Required {
    /// One concrete permission.
    Permission(Permission),
    /// The request maps to no permission (no resource in the path, an unusual method):
    /// only a key holding `*` may make it.
    Unmapped,
}

/// One route table entry: `POST /api/v1/invoices/{id}/send` needs `invoices.send`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `None` matches every method.
    method: Option<String>,
    segments: Vec<Segment>,
    permission: Permission,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}` or `*`: one segment.
    Any,
    /// `{*name}` or `**` at the end: the rest of the path.
    Rest,
}

/// A route table entry that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRoute {
    #[error("route path {0:?} must start with '/' and may end with one rest pattern")]
    Path(String),
    #[error("route method {0:?} is not an HTTP method")]
    Method(String),
    #[error(transparent)]
    Permission(#[from] PermissionError),
}

impl Route {
    pub fn new(method: &str, path: &str, permission: &str) -> Result<Route, BadRoute> {
        let method = match method.trim() {
            "" | "*" => None,
            m if m.bytes().all(|b| b.is_ascii_alphabetic()) => Some(m.to_ascii_uppercase()),
            m => return Err(BadRoute::Method(m.to_owned())),
        };
        if !path.starts_with('/') {
            return Err(BadRoute::Path(path.to_owned()));
        }
        let raw: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let last = i + 1 == raw.len();
            let seg = if *s == "**" || (s.starts_with("{*") && s.ends_with('}')) {
                if !last {
                    return Err(BadRoute::Path(path.to_owned()));
                }
                Segment::Rest
            } else if *s == "*" || (s.starts_with('{') && s.ends_with('}')) {
                Segment::Any
            } else {
                Segment::Literal((*s).to_owned())
            };
            segments.push(seg);
        }
        Ok(Route {
            method,
            segments,
            permission: Permission::parse_concrete(permission)?,
        })
    }

    /// Can this route not match a path whose first segment is `first`, whatever its
    /// method and other segments? True when the route starts with another literal.
    fn excludes_first(&self, first: Option<&str>) -> bool {
        matches!(self.segments.first(), Some(Segment::Literal(l)) if first != Some(l.as_str()))
    }

    fn matches(&self, method: &str, segments: &[&str]) -> bool {
        if let Some(m) = &self.method {
            if !m.eq_ignore_ascii_case(method) {
                return false;
            }
        }
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::Any if i < segments.len() => {}
                Segment::Literal(l) if segments.get(i) == Some(&l.as_str()) => {}
                _ => return false,
            }
            i += 1;
        }
        i == segments.len()
    }
}

/// Routes checked in order; the first match wins, the rule applies when none matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable(Vec<Route>);

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        RouteTable(routes)
    }

    /// The permissions the routes name, in table order (e.g. `invoices.send`).
    pub fn permissions(&self) -> impl Iterator<Item = &Permission> {
        self.0.iter().map(|r| &r.permission)
    }

    /// The permission `method path` needs. `path` may carry a query string. A path that
    /// does not percent-decode to UTF-8 is unmapped, whatever the table says: it cannot be
    /// matched against a route (it is not the root path `/`).
    pub fn required(&self, method: &str, path: &str) -> Required {
        // Nearly every request: a path with nothing to normalise, that no route can match.
        if let Some(required) = self.required_plain(method, path) {
            return required;
        }
        self.required_normalised(method, path)
    }

    /// [`RouteTable::required`] read straight from the path's bytes in one pass: a path
    /// with nothing to normalise (see [`PlainPath`]) whose first segment no route's first
    /// segment names. `None` otherwise: then only the general path can tell.
    fn required_plain(&self, method: &str, path: &str) -> Option<Required> {
        let plain = PlainPath::of(path)?;
        if !self.0.iter().all(|route| route.excludes_first(plain.first)) {
            return None;
        }
        Some(rule(method, plain.resource))
    }

    /// The general path: decode, resolve, match the routes, else the rule.
    fn required_normalised(&self, method: &str, path: &str) -> Required {
        // Borrowed segments on the stack and a permission whose names are inline, so no
        // allocation unless the path has escapes or is unusually deep.
        let Some(decoded) = decoded_path(path) else {
            return Required::Unmapped;
        };
        let segments = segments_of(&decoded);
        if let Some(route) = self.0.iter().find(|r| r.matches(method, &segments)) {
            return Required::Permission(route.permission.clone());
        }
        let resource = segments
            .iter()
            .enumerate()
            .find(|(i, s)| (*i != 0 || **s != "api") && !is_version(s))
            .map(|(_, s)| *s);
        rule(method, resource)
    }
}

/// The method + path rule: `resource` (the path's first segment after an optional `api`
/// and version) with the method's action; unmapped without either, or when the segment is
/// not a valid resource name.
fn rule(method: &str, resource: Option<&str>) -> Required {
    let (Some(action), Some(resource)) = (action_of(method), resource) else {
        return Required::Unmapped;
    };
    match resource_name(resource) {
        Ok(resource) => Required::Permission(Permission {
            resource: Part::Name(resource),
            action: Part::Name(action.clone()),
        }),
        Err(_) => Required::Unmapped,
    }
}

/// The action a method implies: GET/HEAD → read, POST → create, PUT/PATCH → update,
/// DELETE → delete; any other method maps to none.
fn action_of(method: &str) -> Option<&'static Name> {
    // Made once: checking and lowercasing the action on every request cost as much as the
    // resource's name.
    static ACTIONS: [(&str, Name); 6] = [
        ("GET", Name::from_static("read")),
        ("HEAD", Name::from_static("read")),
        ("POST", Name::from_static("create")),
        ("PUT", Name::from_static("update")),
        ("PATCH", Name::from_static("update")),
        ("DELETE", Name::from_static("delete")),
    ];
    ACTIONS
        .iter()
        .find(|(m, _)| m.eq_ignore_ascii_case(method))
        .map(|(_, action)| action)
}

/// A path that normalising would not change beyond dropping empty segments: no
/// percent-escape, no backslash and no segment that starts with `.` (so no `.` or `..`),
/// before its query or fragment. Its segments are then the path's own, so the rule's
/// resource is read from them as they come, without collecting them.
struct PlainPath<'a> {
    /// The first segment (`None`: the root path).
    first: Option<&'a str>,
    /// The rule's resource: the first segment after an optional `api` and version.
    resource: Option<&'a str>,
}

impl<'a> PlainPath<'a> {
    /// `None` when `path` needs decoding or resolving.
    fn of(path: &'a str) -> Option<PlainPath<'a>> {
        let bytes = path.as_bytes();
        let mut plain = PlainPath {
            first: None,
            resource: None,
        };
        let (mut start, mut index) = (0, 0);
        for i in 0..=bytes.len() {
            let byte = bytes.get(i).copied();
            match byte {
                Some(b'%' | b'\\') => return None,
                Some(b'.') if i == start => return None,
                Some(b'/' | b'?' | b'#') | None => {
                    if i > start {
                        // Cut at ASCII bytes, so on character boundaries.
                        let segment = path.get(start..i)?;
                        if index == 0 {
                            plain.first = Some(segment);
                        }
                        if plain.resource.is_none()
                            && (index != 0 || segment != "api")
                            && !is_version(segment)
                        {
                            plain.resource = Some(segment);
                        }
                        index += 1;
                    }
                    if byte != Some(b'/') {
                        break;
                    }
                    start = i + 1;
                }
                Some(_) => {}
            }
        }
        Some(plain)
    }
}

fn is_version(segment: &str) -> bool {
    let Some(rest) = segment.strip_prefix('v') else {
        return false;
    };
    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Decodes percent-escapes, then resolves `.` and `..` and drops empty segments, the way an
/// upstream server would before routing. Undecodable input yields no segments; see
/// [`try_normalise_path`] to tell it from the root path.
pub fn normalise_path(path: &str) -> Vec<String> {
    try_normalise_path(path).unwrap_or_default()
}

/// [`normalise_path`], or `None` when the path does not percent-decode to UTF-8.
pub fn try_normalise_path(path: &str) -> Option<Vec<String>> {
    let decoded = decoded_path(path)?;
    Some(
        segments_of(&decoded)
            .into_iter()
            .map(str::to_owned)
            .collect(),
    )
}

/// The path part of `path` (no query or fragment), percent-decoded; `None` when it does not
/// decode to UTF-8.
fn decoded_path(path: &str) -> Option<Cow<'_, str>> {
    // By byte (both are ASCII, so the cut is on a character boundary): splitting on a
    // set of chars decodes every character of the path.
    let end = path
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    percent_decode(&path[..end])
}

/// Segments a path may have before they no longer fit on the stack.
const STACK_SEGMENTS: usize = 16;

/// The segments of a decoded path with `.`, `..` and empty ones resolved, borrowed from it.
fn segments_of(decoded: &str) -> SmallVec<[&str; STACK_SEGMENTS]> {
    // A path without backslashes (nearly all) is split on '/' alone, which searches bytes
    // (memchr); a set of separators would decode every character of the path.
    if decoded.contains('\\') {
        resolved(decoded.split(['/', '\\']))
    } else {
        resolved(decoded.split('/'))
    }
}

/// `segments` with `.`, `..` and empty ones resolved.
fn resolved<'a>(segments: impl Iterator<Item = &'a str>) -> SmallVec<[&'a str; STACK_SEGMENTS]> {
    let mut out = SmallVec::new();
    for segment in segments {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            segment => out.push(segment),
        }
    }
    out
}

/// `s` with its percent-escapes decoded; borrowed when it has none.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn need(p: &str) -> Required {
        Required::Permission(Permission::parse_concrete(p).unwrap())
    }

    #[test]
    fn method_and_path_give_the_permission() {
        let t = RouteTable::default();
        assert_eq!(
            t.required("GET", "/api/v1/invoices/42"),
            need("invoices.read")
        );
        assert_eq!(
            t.required("HEAD", "/api/v1/invoices"),
            need("invoices.read")
        );
        assert_eq!(
            t.required("POST", "/api/v1/clients"),
            need("clients.create")
        );
        assert_eq!(t.required("PUT", "/v2/clients/1"), need("clients.update"));
        assert_eq!(t.required("PATCH", "/clients/1"), need("clients.update"));
        assert_eq!(
            t.required("DELETE", "/api/v1/products/9?x=1"),
            need("products.delete")
        );
        assert_eq!(t.required("GET", "/api/v1/webhooks"), need("webhooks.read"));
    }

    #[test]
    fn unmappable_requests_need_everything() {
        let t = RouteTable::default();
        assert_eq!(t.required("GET", "/"), Required::Unmapped);
        assert_eq!(t.required("GET", "/api/v1"), Required::Unmapped);
        assert_eq!(
            t.required("OPTIONS", "/api/v1/invoices"),
            Required::Unmapped
        );
        assert_eq!(t.required("GET", "/favicon.ico"), Required::Unmapped);
        assert_eq!(t.required("GET", "/%ff"), Required::Unmapped);
    }

    #[test]
    fn paths_are_normalised_before_mapping() {
        let t = RouteTable::default();
        assert_eq!(
            t.required("GET", "/api/v1/invoices/../webhooks"),
            need("webhooks.read")
        );
        assert_eq!(
            t.required("GET", "/api/v1/invoices/%2e%2e/webhooks"),
            need("webhooks.read")
        );
        assert_eq!(
            t.required("GET", "//api//v1//%69nvoices"),
            need("invoices.read")
        );
        assert_eq!(
            t.required("GET", "/api/v1/x/..\\..\\webhooks"),
            need("webhooks.read")
        );
    }

    #[test]
    fn the_route_table_overrides_the_rule() {
        let t = RouteTable::new(vec![
            Route::new("POST", "/api/v1/invoices/{id}/send", "invoices.send").unwrap(),
            Route::new("*", "/reports/**", "analytics.read").unwrap(),
        ]);
        assert_eq!(
            t.required("POST", "/api/v1/invoices/42/send"),
            need("invoices.send")
        );
        assert_eq!(
            t.required("post", "/api/v1/invoices/42/send/"),
            need("invoices.send")
        );
        assert_eq!(
            t.required("GET", "/api/v1/invoices/42/send"),
            need("invoices.read")
        );
        assert_eq!(t.required("DELETE", "/reports/a/b"), need("analytics.read"));
        assert_eq!(
            t.required("POST", "/api/v1/invoices/42/send/x"),
            need("invoices.create")
        );
    }

    /// Found by the `routes` fuzz target: an undecodable path normalised to no segments,
    /// which is the root path, so a route for `/` matched it. `GET /%ff/../admin` needed
    /// the root route's permission while an upstream resolving `..` serves `/admin`.
    #[test]
    fn undecodable_paths_do_not_match_the_root_route() {
        let t = RouteTable::new(vec![Route::new("GET", "/", "status.read").unwrap()]);
        assert_eq!(t.required("GET", "/"), need("status.read"));
        assert_eq!(t.required("GET", "/?x=1"), need("status.read"));
        for path in ["/%ff", "/%ff/../admin", "|%r", "/%c3%28", "/%", "/api/%zz"] {
            assert_eq!(t.required("GET", path), Required::Unmapped, "{path}");
        }
        assert_eq!(try_normalise_path("/%ff"), None);
        assert_eq!(try_normalise_path("/"), Some(vec![]));
        assert_eq!(normalise_path("/%ff"), Vec::<String>::new());
    }

    #[test]
    fn bad_routes_are_refused() {
        assert!(Route::new("GET", "no-slash", "a.read").is_err());
        assert!(Route::new("GET", "/a/**/b", "a.read").is_err());
        assert!(Route::new("G T", "/a", "a.read").is_err());
        assert!(Route::new("GET", "/a", "a.*").is_err());
        assert!(Route::new("GET", "/a", "all").is_err());
    }

    /// The tables the fast path is compared under: none, and routes of each kind (a
    /// literal first segment, a parameter first, a rest pattern, the root path).
    fn tables() -> Vec<RouteTable> {
        let route = |m, p, perm| Route::new(m, p, perm).unwrap();
        vec![
            RouteTable::default(),
            RouteTable::new(vec![
                route("POST", "/api/v1/invoices/{id}/send", "invoices.send"),
                route("*", "/reports/**", "analytics.read"),
                route("GET", "/Invoices", "billing.read"),
            ]),
            RouteTable::new(vec![route("*", "/{tenant}/status", "status.read")]),
            RouteTable::new(vec![route("GET", "/", "status.read")]),
            RouteTable::new(vec![route("*", "/**", "everything.read")]),
        ]
    }

    #[test]
    fn plain_paths_take_the_fast_path() {
        let t = RouteTable::default();
        for path in [
            "/api/v1/invoices/42",
            "/api/v1/invoices?x=%zz&y=..",
            "//clients//1/",
            "/v2/clients/a.b",
            "/",
            "",
        ] {
            assert!(t.required_plain("GET", path).is_some(), "{path}");
        }
        for path in [
            "/api/%69nvoices",
            "/a/../b",
            "/./a",
            "/a\\b",
            "/.well-known/x",
        ] {
            assert!(t.required_plain("GET", path).is_none(), "{path}");
        }
        let routes = &tables()[1];
        assert!(routes
            .required_plain("GET", "/api/v1/invoices/42")
            .is_none());
        assert!(routes.required_plain("GET", "/clients/1").is_some());
        assert!(tables()[2].required_plain("GET", "/clients/1").is_none());
    }

    #[test]
    fn the_rules_actions_are_the_permissions_own() {
        for (method, action) in [
            ("GET", "read"),
            ("head", "read"),
            ("POST", "create"),
            ("Put", "update"),
            ("PATCH", "update"),
            ("DELETE", "delete"),
        ] {
            assert_eq!(
                rule(method, Some("Invoices")),
                Required::Permission(Permission::concrete("Invoices", action).unwrap())
            );
        }
    }

    /// Path segments chosen to hit every case the two paths treat apart: escapes (valid,
    /// undecodable, of dots and slashes), dot segments, backslashes, `api` and versions,
    /// names valid and not, and the routes' literals.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "", ".", "..", "...", ".x", "x.", "api", "API", "v1", "v2.0", "v", "vx",
                "invoices", "Invoices", "reports", "send", "status", "42", "_x", "-x",
                "a b", "é", "%2e", "%2E%2e", "%69nvoices", "%2f", "%ff", "%", "%z", "a\\b",
                "..\\", "\\", "x?y", "?", "#f", "a#b?c", "?x=%zz&y=/../",
            ])
            .prop_map(str::to_owned),
            1 => "[a-zA-Z0-9._%\\\\?#-]{0,6}",
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (
                prop::sample::select(vec!["", "/", "//"]),
                prop::collection::vec(segment(), 0..7),
                prop::sample::select(vec!["/", "//"]),
                prop::sample::select(vec!["", "/"]),
            )
                .prop_map(|(lead, segments, separator, tail)| {
                    format!("{lead}{}{tail}", segments.join(separator))
                }),
            1 => "\\PC{0,40}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whenever the fast path answers, it answers what the general path does, under
        /// every table.
        #[test]
        fn the_fast_path_agrees_with_the_general_path(
            method in prop::sample::select(vec!["GET", "get", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", ""]),
            path in path(),
        ) {
            for table in tables() {
                let general = table.required_normalised(method, &path);
                if let Some(fast) = table.required_plain(method, &path) {
                    prop_assert_eq!(&fast, &general, "{} {:?}", method, path);
                }
                prop_assert_eq!(table.required(method, &path), general);
            }
        }
    }

    proptest! {
        #[test]
        fn mapping_never_panics(method in "[A-Za-z]{0,8}", path in "\\PC{0,60}") {
            let _ = RouteTable::default().required(&method, &path);
        }

        #[test]
        fn no_dot_segment_survives(path in "(/(\\.|\\.\\.|%2e|%2E%2e|[a-z]{1,3})){0,8}") {
            for seg in normalise_path(&path) {
                prop_assert!(seg != "." && seg != "..");
            }
        }
    }
}
