//! Permission parsing and matching: `PermissionSet::parse`, presets, `allows`, `covers`,
//! and `Permission::parse_concrete`.
//!
//! Invariants (no escalation):
//! - parsing never panics; parsing is idempotent (`parse(to_strings(parse(x))) == parse(x)`)
//!   and every canonical grant prints in a form that parses back to itself;
//! - normalisation keeps meaning: the set allows a request exactly when one of the input
//!   grants alone allows it;
//! - coverage implies allowance: if A covers B and B allows R, A allows R (for R drawn from
//!   B's own grants, with wildcards filled by ordinary and restricted resource names);
//! - every set covers itself and its subsets; the empty set allows nothing;
//! - restricted resources (`webhook`, `api_key`, `account`, in any spelling) are reached
//!   only by `*` or by a grant naming them (singular or plural);
//! - a concrete permission is never a wildcard, and a route's required permission is
//!   allowed by a set iff the set's printed form says so.
#![no_main]

use keygate_core::permission::{is_restricted as restricted_name, same_resource, Part};
use keygate_core::{Permission, PermissionSet};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    a: Vec<String>,
    b: Vec<String>,
    requests: Vec<(String, String)>,
    presets: (u8, u8),
    raw: String,
}

const PRESETS: &[&str] = &["all", "read", "write", "webhooks"];
const FILL_RESOURCES: &[&str] = &[
    "invoice", "invoices", "webhook", "webhooks", "api_key", "api-keys", "account", "zz",
];
const FILL_ACTIONS: &[&str] = &["read", "create", "update", "delete", "send"];

fn parse(grants: &[String]) -> Option<PermissionSet> {
    PermissionSet::parse(grants).ok()
}

/// Concrete permissions a grant stands for: its names, or sample names for wildcards.
fn samples(g: &Permission) -> Vec<Permission> {
    let resources: Vec<String> = match &g.resource {
        Part::Name(n) => vec![n.to_string()],
        Part::Any => FILL_RESOURCES.iter().map(|s| s.to_string()).collect(),
    };
    let actions: Vec<String> = match &g.action {
        Part::Name(n) => vec![n.to_string()],
        Part::Any => FILL_ACTIONS.iter().map(|s| s.to_string()).collect(),
    };
    let mut out = Vec::new();
    for r in &resources {
        for a in &actions {
            if let Ok(p) = Permission::concrete(r, a) {
                out.push(p);
            }
        }
    }
    out
}

fn is_restricted(p: &Permission) -> bool {
    matches!(&p.resource, Part::Name(n) if restricted_name(n))
}

fn check_set(set: &PermissionSet, inputs: &[String], requests: &[Permission]) {
    // Idempotent, and each grant prints in a parseable, stable form.
    let printed = set.to_strings();
    let again = PermissionSet::parse(&printed).expect("canonical form parses");
    assert_eq!(&again, set, "not idempotent: {inputs:?} -> {printed:?}");
    for (g, s) in set.grants().iter().zip(&printed) {
        let one = PermissionSet::parse(&[s]).unwrap();
        assert_eq!(one.grants(), std::slice::from_ref(g), "{s} does not print itself");
    }
    assert!(set.covers(set), "a set covers itself: {printed:?}");
    assert!(set.covers(&PermissionSet::empty()));
    for req in requests {
        // Meaning kept: the set allows exactly what one input grant allows.
        let each = inputs
            .iter()
            .any(|i| PermissionSet::parse(&[i]).unwrap().allows(req));
        assert_eq!(set.allows(req), each, "{inputs:?} / {printed:?} on {req}");
        // Restricted resources need `*` or a grant naming them.
        if is_restricted(req) && set.allows(req) {
            assert!(
                set.allows_everything()
                    || set
                        .grants()
                        .iter()
                        .any(|g| matches!(
                            (&g.resource, &req.resource),
                            (Part::Name(a), Part::Name(b)) if same_resource(a, b)
                        )),
                "{printed:?} reaches restricted {req}"
            );
        }
    }
    for g in set.grants() {
        // A one-grant subset is covered by the whole set.
        let sub = PermissionSet::parse(&[g.to_string()]).unwrap();
        assert!(set.covers(&sub), "{printed:?} does not cover its own {g}");
    }
}

fuzz_target!(|input: Input| {
    let _ = PermissionSet::parse(&[&input.raw]);
    let _ = Permission::parse_concrete(&input.raw);
    if let Ok(p) = Permission::parse_concrete(&input.raw) {
        assert!(matches!(p.resource, Part::Name(_)) && matches!(p.action, Part::Name(_)));
        let s = p.to_string();
        assert_eq!(Permission::parse_concrete(&s).unwrap(), p);
    }
    let requests: Vec<Permission> = input
        .requests
        .iter()
        .filter_map(|(r, a)| Permission::concrete(r, a).ok())
        .take(16)
        .collect();
    let a_inputs: Vec<String> = input.a.iter().take(8).cloned().collect();
    let b_inputs: Vec<String> = input.b.iter().take(8).cloned().collect();
    let a = parse(&a_inputs);
    let b = parse(&b_inputs);
    let empty = PermissionSet::empty();
    for req in &requests {
        assert!(!empty.allows(req));
        assert!(PermissionSet::preset("all").unwrap().allows(req));
    }
    if let Some(a) = &a {
        check_set(a, &a_inputs, &requests);
    }
    if let Some(b) = &b {
        check_set(b, &b_inputs, &requests);
    }
    // Coverage implies allowance, for the requests given and for samples of B's grants.
    let preset_a = PermissionSet::preset(PRESETS[input.presets.0 as usize % PRESETS.len()]).unwrap();
    let preset_b = PermissionSet::preset(PRESETS[input.presets.1 as usize % PRESETS.len()]).unwrap();
    let sets: Vec<&PermissionSet> = [a.as_ref(), b.as_ref(), Some(&preset_a), Some(&preset_b)]
        .into_iter()
        .flatten()
        .collect();
    for x in &sets {
        for y in &sets {
            if !x.covers(y) {
                continue;
            }
            let mut probes: Vec<Permission> = requests.clone();
            for g in y.grants() {
                probes.extend(samples(g));
            }
            for req in &probes {
                if y.allows(req) {
                    assert!(
                        x.allows(req),
                        "{:?} covers {:?} but does not allow {req}",
                        x.to_strings(),
                        y.to_strings()
                    );
                }
            }
        }
    }
});
