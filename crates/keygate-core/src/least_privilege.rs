//! The least-privilege report: which of a key's grants its traffic used, and the narrowest
//! grant list that would have allowed every request it made.
//!
//! The suggestion lists the concrete permissions that were used (`invoices.read`), never a
//! wildcard the traffic did not need: even when every action a route table knows for a
//! resource was used, `invoices.*` is not suggested, because it would also allow actions
//! added later, which is what least privilege is meant to stop. A request that mapped to no
//! permission needs `*`, so a key that made one is suggested `*`.

use crate::permission::{Part, Permission, PermissionError, PermissionSet};

/// The permission a request that maps to no route needed: the full wildcard `*`.
pub static EVERYTHING: Permission = Permission {
    resource: Part::Any,
    action: Part::Any,
};

/// What a key's grants were used for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeastPrivilege {
    /// Grants that allowed none of the used permissions.
    pub unused_grants: Vec<Permission>,
    /// The narrowest grants that allow every used permission the key still holds, in the
    /// key's own spelling of each resource.
    pub suggested: PermissionSet,
}

/// Parses a used permission as [`Permission::to_string`] wrote it: a concrete permission
/// (`invoices.read`) or `*`.
pub fn parse_used(input: &str) -> Result<Permission, PermissionError> {
    if input == "*" {
        return Ok(EVERYTHING.clone());
    }
    Permission::parse_concrete(input)
}

/// The report for a key holding `granted` whose allowed requests needed `used`. A used
/// permission the key no longer holds (it was narrowed since) is not suggested: the
/// suggestion never grants beyond `granted`.
pub fn least_privilege(granted: &PermissionSet, used: &[Permission]) -> LeastPrivilege {
    let grants = granted.grants();
    let mut grant_used = vec![false; grants.len()];
    let mut needed = Vec::with_capacity(used.len());
    for permission in used {
        let mut spelling = None;
        for (i, grant) in grants.iter().enumerate() {
            if grant.covers(permission) {
                grant_used[i] = true;
                // The grant's resource spelling where it names one (`invoices.*` granted,
                // `invoice.read` used → `invoices.read`), so the list reads like the key's.
                spelling.get_or_insert(match (&grant.resource, &permission.resource) {
                    (Part::Name(mine), Part::Name(_)) => Permission {
                        resource: Part::Name(mine.clone()),
                        action: permission.action.clone(),
                    },
                    _ => permission.clone(),
                });
            }
        }
        needed.extend(spelling);
    }
    LeastPrivilege {
        unused_grants: grants
            .iter()
            .zip(grant_used)
            .filter(|(_, used)| !used)
            .map(|(g, _)| g.clone())
            .collect(),
        suggested: PermissionSet::normalised(needed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(inputs: &[&str]) -> PermissionSet {
        PermissionSet::parse(inputs).unwrap()
    }

    fn used(inputs: &[&str]) -> Vec<Permission> {
        inputs.iter().map(|s| parse_used(s).unwrap()).collect()
    }

    fn report(granted: &[&str], used_ones: &[&str]) -> (Vec<String>, Vec<String>) {
        let r = least_privilege(&set(granted), &used(used_ones));
        (
            r.unused_grants.iter().map(ToString::to_string).collect(),
            r.suggested.to_strings(),
        )
    }

    #[test]
    fn a_resource_wildcard_narrows_to_the_actions_used() {
        assert_eq!(
            report(&["invoices.*"], &["invoices.read"]),
            (vec![], vec!["invoices.read".into()])
        );
        // Every standard action used: still listed one by one, not `invoices.*`.
        assert_eq!(
            report(
                &["invoices.*"],
                &[
                    "invoices.read",
                    "invoices.create",
                    "invoices.update",
                    "invoices.delete"
                ]
            )
            .1,
            [
                "invoices.create",
                "invoices.delete",
                "invoices.read",
                "invoices.update"
            ]
        );
    }

    #[test]
    fn unused_grants_are_named() {
        assert_eq!(
            report(
                &["invoices.*", "clients.read", "webhooks.*"],
                &["invoice.read"]
            ),
            (
                vec!["clients.read".into(), "webhooks.*".into()],
                vec!["invoices.read".into()]
            )
        );
        assert_eq!(
            report(&["invoices.read"], &[]),
            (vec!["invoices.read".into()], vec![])
        );
    }

    #[test]
    fn the_keys_spelling_is_kept_and_spellings_are_merged() {
        assert_eq!(
            report(&["invoice.*"], &["invoices.read", "invoice.read"]).1,
            ["invoice.read"]
        );
        // An action wildcard has no resource spelling: the request's is used.
        assert_eq!(
            report(&["*.read"], &["customers.read", "invoices.read"]).1,
            ["customers.read", "invoices.read"]
        );
    }

    #[test]
    fn an_unmapped_request_needs_everything() {
        assert_eq!(
            report(&["*"], &["invoices.read", "*"]),
            (vec![], vec!["*".into()])
        );
        assert_eq!(report(&["*"], &["invoices.read"]).1, ["invoices.read"]);
        // `*` no longer held: not suggested.
        assert_eq!(report(&["invoices.*"], &["*"]).1, Vec::<String>::new());
    }

    #[test]
    fn permissions_no_longer_held_are_not_suggested() {
        assert_eq!(
            report(&["invoices.read"], &["invoices.read", "invoices.create"]).1,
            ["invoices.read"]
        );
    }

    #[test]
    fn used_permissions_round_trip_through_their_strings() {
        for s in ["*", "invoices.read", "api_keys.create"] {
            assert_eq!(parse_used(s).unwrap().to_string(), s);
        }
        for bad in ["invoices.*", "*.read", "read", "", "a.b.c"] {
            assert!(parse_used(bad).is_err(), "{bad}");
        }
    }

    fn arb_grant() -> impl Strategy<Value = String> {
        let resource = prop_oneof![
            Just("*"),
            Just("invoices"),
            Just("invoice"),
            Just("clients"),
            Just("webhooks"),
            Just("api_keys"),
        ];
        let action = prop_oneof![
            Just("*"),
            Just("read"),
            Just("create"),
            Just("update"),
            Just("write"),
            Just("send"),
        ];
        (resource, action).prop_map(|(r, a)| format!("{r}.{a}"))
    }

    fn arb_used() -> impl Strategy<Value = Permission> {
        let resource = prop_oneof![
            Just("invoices"),
            Just("invoice"),
            Just("clients"),
            Just("webhooks"),
            Just("api_keys"),
        ];
        let action = prop_oneof![
            Just("read"),
            Just("create"),
            Just("update"),
            Just("delete"),
            Just("send"),
        ];
        prop_oneof![
            1 => Just(EVERYTHING.clone()),
            12 => (resource, action).prop_map(|(r, a)| Permission::concrete(r, a).unwrap()),
        ]
    }

    proptest! {
        #[test]
        fn the_suggestion_allows_every_used_permission_and_never_more_than_granted(
            grants in proptest::collection::vec(arb_grant(), 0..5),
            used in proptest::collection::vec(arb_used(), 0..8),
        ) {
            let granted = PermissionSet::parse(&grants).unwrap();
            let r = least_privilege(&granted, &used);
            prop_assert!(granted.covers(&r.suggested), "{:?} beyond {:?}", r.suggested, granted);
            for u in &used {
                if granted.allows(u) {
                    prop_assert!(r.suggested.allows(u), "{} not allowed by {:?}", u, r.suggested);
                } else {
                    prop_assert!(!r.suggested.allows(u), "{} was not granted", u);
                }
            }
            // Narrowest: each suggested grant means exactly a used permission and is needed.
            for (i, s) in r.suggested.grants().iter().enumerate() {
                prop_assert!(used.iter().any(|u| s.covers(u) && u.covers(s)));
                let rest = PermissionSet::normalised(
                    r.suggested.grants().iter().enumerate().filter(|(j, _)| *j != i).map(|(_, g)| g.clone()).collect(),
                );
                prop_assert!(used.iter().any(|u| granted.allows(u) && !rest.allows(u)), "{} is not needed", s);
            }
            // A grant is unused exactly when it allowed no used permission.
            for g in granted.grants() {
                let unused = r.unused_grants.contains(g);
                prop_assert_eq!(unused, !used.iter().any(|u| g.covers(u)));
            }
        }
    }
}
