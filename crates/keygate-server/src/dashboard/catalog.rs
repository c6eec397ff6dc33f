//! What the key forms' permission checklist offers.
//!
//! keygate sits in front of any API, so the checklist is built from what this deployment
//! knows about its own API, never from a built-in list: the operator's catalog
//! (`[permissions]` in `keygate.toml`), the route table's permissions, the permissions
//! existing keys hold, and the management resources keygate itself serves. Resource names
//! keep the spelling they were written in; two spellings of one resource (`invoice`,
//! `invoices`: see `keygate_core::permission::same_resource`) share one row, under the
//! first spelling met: the operator's, then the route table's or a key's.

use std::collections::{BTreeMap, BTreeSet};

use keygate_core::key::obscure;
use keygate_core::permission::{resource_name, same_resource, Part};
use keygate_core::Permission;

/// The actions every row offers.
pub(super) const ACTIONS: &[&str] = &["read", "create", "update", "delete"];
/// The self-service resources, offered last.
const MANAGEMENT_RESOURCES: &[&str] = &["api_keys", "accounts"];

/// The operator's resource catalog: the resources of the API behind keygate, each with the
/// actions it has beyond read, create, update and delete. Empty by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PermissionCatalog {
    rows: Vec<Row>,
}

/// Why a catalog entry is refused. The message shows the entry with anything key-shaped
/// hidden, as permission errors do (a key pasted into the wrong setting stays out of logs).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("{:?} is not a resource name: {reason}", obscure(.input, 64))]
    Resource { input: String, reason: &'static str },
    #[error("{:?} is not a resource.action permission: {reason}", obscure(.input, 64))]
    Action { input: String, reason: &'static str },
}

impl PermissionCatalog {
    /// `resources` are names (`orders`); `actions` are concrete `resource.action`
    /// permissions (`invoices.send`, `invoices:send`), whose resource is offered too.
    pub fn new<S: AsRef<str>>(resources: &[S], actions: &[S]) -> Result<Self, CatalogError> {
        let mut catalog = PermissionCatalog::default();
        for input in resources {
            let input = input.as_ref().trim();
            let resource = resource_name(input).map_err(|reason| CatalogError::Resource {
                input: input.to_owned(),
                reason: if input.contains(['.', ':']) {
                    "a resource has no action; list resource.action entries as actions"
                } else {
                    reason
                },
            })?;
            add(&mut catalog.rows, &resource, []);
        }
        for input in actions {
            let input = input.as_ref().trim();
            let refused = |reason| CatalogError::Action {
                input: input.to_owned(),
                reason,
            };
            let permission = Permission::parse_concrete(input).map_err(|e| refused(e.reason))?;
            let (Part::Name(resource), Part::Name(action)) =
                (&permission.resource, &permission.action)
            else {
                return Err(refused("expected resource.action"));
            };
            add(&mut catalog.rows, resource, [action.as_str()]);
        }
        Ok(catalog)
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Each resource with its actions beyond read, create, update and delete, in the
    /// order the operator wrote them.
    pub fn resources(&self) -> impl Iterator<Item = (&str, Vec<&str>)> {
        self.rows.iter().map(Row::view)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    resource: String,
    /// Actions beyond [`ACTIONS`].
    extra: BTreeSet<String>,
}

impl Row {
    fn view(&self) -> (&str, Vec<&str>) {
        (
            self.resource.as_str(),
            self.extra.iter().map(String::as_str).collect(),
        )
    }
}

/// Adds `resource` (and its `actions` beyond [`ACTIONS`]) to the row of the same resource,
/// or as a new last row.
fn add<'a>(rows: &mut Vec<Row>, resource: &str, actions: impl IntoIterator<Item = &'a str>) {
    let index = match rows
        .iter()
        .position(|r| same_resource(&r.resource, resource))
    {
        Some(i) => i,
        None => {
            rows.push(Row {
                resource: resource.to_owned(),
                extra: BTreeSet::new(),
            });
            rows.len() - 1
        }
    };
    rows[index].extra.extend(
        actions
            .into_iter()
            .filter(|a| !ACTIONS.contains(a))
            .map(str::to_owned),
    );
}

/// The rows of one form: the catalog's resources first, then those only the route table or
/// existing keys name (sorted), then the management resources.
pub(super) struct Checklist {
    rows: Vec<Row>,
}

impl Checklist {
    /// `known` are the permissions the route table requires and the grants existing keys
    /// hold; wildcards in them add nothing.
    pub(super) fn build<'a>(
        catalog: &PermissionCatalog,
        known: impl IntoIterator<Item = &'a Permission>,
    ) -> Checklist {
        let mut discovered: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for p in known {
            if let Part::Name(resource) = &p.resource {
                let actions = discovered.entry(resource.as_str()).or_default();
                if let Part::Name(action) = &p.action {
                    actions.insert(action.as_str());
                }
            }
        }
        let is_management = |r: &str| MANAGEMENT_RESOURCES.iter().any(|m| same_resource(m, r));
        let (management, ordinary): (Vec<_>, Vec<_>) =
            discovered.into_iter().partition(|(r, _)| is_management(r));
        let mut rows = catalog.rows.clone();
        for (resource, actions) in ordinary {
            add(&mut rows, resource, actions);
        }
        for resource in MANAGEMENT_RESOURCES {
            add(&mut rows, resource, []);
        }
        for (resource, actions) in management {
            add(&mut rows, resource, actions);
        }
        Checklist { rows }
    }

    /// Each row: the resource and its actions beyond read, create, update and delete.
    pub(super) fn rows(&self) -> impl Iterator<Item = (&str, Vec<&str>)> {
        self.rows.iter().map(Row::view)
    }

    /// Is `grant` (as stored) one of the checkboxes, spelled exactly so?
    pub(super) fn has_box(&self, grant: &str) -> bool {
        let Some((resource, action)) = grant.split_once('.') else {
            return false;
        };
        self.rows.iter().any(|row| {
            row.resource == resource
                && (action == "*" || ACTIONS.contains(&action) || row.extra.contains(action))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(checklist: &Checklist) -> Vec<(String, Vec<String>)> {
        checklist
            .rows()
            .map(|(r, extra)| (r.to_owned(), extra.into_iter().map(str::to_owned).collect()))
            .collect()
    }

    fn permissions(list: &[&str]) -> Vec<Permission> {
        keygate_core::PermissionSet::parse(list)
            .unwrap()
            .grants()
            .to_vec()
    }

    #[test]
    fn the_catalog_keeps_the_operators_order_and_spelling() {
        let catalog = PermissionCatalog::new(
            &["Shipments", "orders"],
            &[
                "orders.refund",
                "orders:cancel",
                "parcels.track",
                "orders.read",
            ],
        )
        .unwrap();
        let got: Vec<(&str, Vec<&str>)> = catalog.resources().collect();
        assert_eq!(
            got,
            vec![
                ("shipments", vec![]),
                ("orders", vec!["cancel", "refund"]),
                ("parcels", vec!["track"]),
            ]
        );
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        for (resources, actions) in [
            (&["orders", ""][..], &[][..]),
            (&["*"][..], &[][..]),
            (&["orders.read"][..], &[][..]),
            (&["order s"][..], &[][..]),
            (&[][..], &["orders"][..]),
            (&[][..], &["orders.*"][..]),
            (&[][..], &["*.send"][..]),
        ] {
            assert!(
                PermissionCatalog::new(resources, actions).is_err(),
                "{resources:?} {actions:?}"
            );
        }
        let e = PermissionCatalog::new(&["invoices.send"], &[]).unwrap_err();
        assert!(e.to_string().contains("actions"), "{e}");
        let key = format!("kg_live_{}", "ab12".repeat(16));
        let e = PermissionCatalog::new(&[key.as_str()], &[]).unwrap_err();
        assert!(!e.to_string().contains(&key[8..]), "{e}");
    }

    #[test]
    fn the_checklist_merges_catalog_routes_and_keys() {
        let catalog = PermissionCatalog::new(&["orders"], &["orders.refund"]).unwrap();
        let known = permissions(&[
            "order.export",
            "shipments.track",
            "parcels.*",
            "*.read",
            "api_key.read",
            "accounts.close",
        ]);
        let checklist = Checklist::build(&catalog, &known);
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            rows(&checklist),
            vec![
                ("orders".to_owned(), s(&["export", "refund"])),
                ("parcels".to_owned(), s(&[])),
                ("shipments".to_owned(), s(&["track"])),
                ("api_keys".to_owned(), s(&[])),
                ("accounts".to_owned(), s(&["close"])),
            ]
        );
        assert!(checklist.has_box("orders.refund"));
        assert!(checklist.has_box("orders.*"));
        assert!(checklist.has_box("shipments.track"));
        // Another spelling is kept as written, outside the boxes.
        assert!(!checklist.has_box("order.read"));
        assert!(!checklist.has_box("invoices.read"));
    }

    #[test]
    fn without_a_catalog_only_what_the_deployment_names() {
        let checklist = Checklist::build(&PermissionCatalog::default(), &[]);
        let names: Vec<String> = rows(&checklist).into_iter().map(|(r, _)| r).collect();
        assert_eq!(names, vec!["api_keys", "accounts"]);
    }
}
