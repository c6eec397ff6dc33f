//! Request → permission: the route table (`Route::new`, `RouteTable::required`) and path
//! normalisation (`normalise_path`).
//!
//! Invariants:
//! - nothing panics, whatever the method, path and table;
//! - normalised segments are never empty, `.` or `..`, and hold no `/` or `\`;
//! - normalisation is a fixed point: re-encoding the segments and mapping again gives the
//!   same segments and the same required permission;
//! - the query string and fragment never change what a path needs;
//! - the method's case never changes what a request needs;
//! - a path that does not percent-decode to UTF-8 is unmapped (needs `*`), whatever the
//!   table says: what cannot be read cannot be matched against a route;
//! - without a matching route, a method other than GET/HEAD/POST/PUT/PATCH/DELETE is
//!   unmapped, and the rule's resource is the first segment after `api` and a version.
#![no_main]

use keygate_core::request::normalise_path;
use keygate_core::{Required, Route, RouteTable};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<(u8, String, u8)>,
    method: u8,
    custom_method: String,
    path: String,
    query: String,
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*", ""];
const PERMISSIONS: &[&str] = &[
    "invoices.send",
    "analytics.read",
    "webhooks.read",
    "api_keys.create",
    "status.read",
];

/// Percent-encodes what would change the segmentation or the decoding.
fn reencode(segments: &[String]) -> String {
    if segments.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::new();
    for s in segments {
        out.push('/');
        for c in s.chars() {
            match c {
                '%' | '/' | '\\' | '?' | '#' => out.push_str(&format!("%{:02X}", c as u32)),
                c => out.push(c),
            }
        }
    }
    out
}

fn decodes(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let bytes = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            match path.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) => out.push(b),
                None => return false,
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).is_ok()
}

fuzz_target!(|input: Input| {
    let routes: Vec<Route> = input
        .routes
        .iter()
        .take(8)
        .filter_map(|(m, p, perm)| {
            Route::new(
                METHODS[*m as usize % METHODS.len()],
                p,
                PERMISSIONS[*perm as usize % PERMISSIONS.len()],
            )
            .ok()
        })
        .collect();
    let table = RouteTable::new(routes);
    let plain = RouteTable::default();
    let method = match input.method as usize % (METHODS.len() + 1) {
        i if i < METHODS.len() => METHODS[i].to_owned(),
        _ => input.custom_method.clone(),
    };
    let path = &input.path;

    let segments = normalise_path(path);
    for s in &segments {
        assert!(!s.is_empty() && s != "." && s != "..", "segment {s:?} of {path:?}");
        assert!(!s.contains('/') && !s.contains('\\'), "segment {s:?} of {path:?}");
    }
    let required = table.required(&method, path);
    let _ = plain.required(&method, path);

    // Undecodable: unmapped, whatever the table.
    if !decodes(path) {
        assert_eq!(required, Required::Unmapped, "undecodable {path:?} mapped");
        return;
    }
    // Fixed point.
    let canonical = reencode(&segments);
    assert_eq!(normalise_path(&canonical), segments, "{path:?} -> {canonical:?}");
    assert_eq!(
        table.required(&method, &canonical),
        required,
        "{path:?} and its normal form {canonical:?} differ"
    );
    // Queries and fragments do not matter.
    if !path.contains(['?', '#']) {
        let q = input.query.replace('#', "");
        assert_eq!(table.required(&method, &format!("{path}?{q}")), required);
        assert_eq!(table.required(&method, &format!("{path}#{q}")), required);
    }
    // Method case does not matter.
    assert_eq!(table.required(&method.to_ascii_lowercase(), path), required);
    // The rule alone: unusual methods are unmapped.
    let upper = method.to_ascii_uppercase();
    if !["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].contains(&upper.as_str()) {
        assert_eq!(plain.required(&method, path), Required::Unmapped);
    }
});
