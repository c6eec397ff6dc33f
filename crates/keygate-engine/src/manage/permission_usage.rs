//! The least-privilege report of one key: which permissions its allowed requests needed
//! over the last days, which grants went unused, and the narrowest grants that would have
//! allowed them all (core's [`keygate_core::least_privilege`]).

use std::collections::BTreeMap;

use keygate_core::least_privilege::{least_privilege, parse_used};
use keygate_core::PermissionSet;
use keygate_store::{KeyRecord, PermissionUse};

use super::Caller;
use crate::usage::HOUR_MS;
use crate::{now_ms, Engine, Error, Result};

const DAY_MS: i64 = 24 * HOUR_MS;
/// The window when none is asked for.
pub const DEFAULT_DAYS: u32 = 30;

/// A key's use of its permissions over the last `days` days (today included).
#[derive(Clone, Debug)]
pub struct PermissionUsageReport {
    pub key: KeyRecord,
    pub days: u32,
    /// Start of the window: midnight (UTC) `days - 1` days ago, unix ms.
    pub from: i64,
    pub granted: Vec<String>,
    /// By permission, most requests first.
    pub used: Vec<PermissionUse>,
    pub unused_grants: Vec<String>,
    pub suggested: Vec<String>,
}

impl Engine {
    /// The longest window a report may cover: the usage retention, in whole days (at least 1).
    pub fn permission_usage_max_days(&self) -> u32 {
        u32::try_from(self.usage_retention.as_secs() / 86_400)
            .unwrap_or(u32::MAX)
            .max(1)
    }

    /// The least-privilege report of a key the caller may see (as for its usage: the admin,
    /// or a self-service key with `api_keys.read` for its own account's keys). Counts not
    /// flushed yet on this node are included.
    pub async fn permission_usage(
        &self,
        caller: &Caller,
        id: &str,
        days: Option<u32>,
    ) -> Result<PermissionUsageReport> {
        let max = self.permission_usage_max_days();
        let days = days.unwrap_or(DEFAULT_DAYS.min(max));
        if !(1..=max).contains(&days) {
            return Err(Error::validation(
                "days",
                format!("days must be from 1 to {max} (the usage retention)"),
            ));
        }
        let key = self.get_key(caller, id).await?;
        let now = now_ms();
        let from = now - now.rem_euclid(DAY_MS) - i64::from(days - 1) * DAY_MS;
        let mut by_permission: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let stored = self.store.permission_usage(&key.id, from).await?;
        let unflushed = self.usage.cell(&key).unflushed_permissions();
        let rows = stored
            .into_iter()
            .map(|u| (u.permission, u.requests, u.last_used_at));
        let unflushed = unflushed
            .into_iter()
            .filter(|c| c.bucket >= from)
            .map(|c| (c.permission, c.count, c.last_used_at));
        for (permission, requests, last) in rows.chain(unflushed) {
            let entry = by_permission.entry(permission).or_default();
            entry.0 += requests;
            entry.1 = entry.1.max(last);
        }
        let mut used: Vec<PermissionUse> = by_permission
            .into_iter()
            .map(|(permission, (requests, last_used_at))| PermissionUse {
                permission,
                requests,
                last_used_at,
            })
            .collect();
        used.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then(a.permission.cmp(&b.permission))
        });
        let granted = PermissionSet::parse(&key.permissions)
            .map_err(|e| Error::Internal(format!("stored permissions of {}: {e}", key.id)))?;
        // Stored by this code as `Permission::to_string`; anything else is not a permission.
        let needed: Vec<_> = used
            .iter()
            .filter_map(|u| parse_used(&u.permission).ok())
            .collect();
        let report = least_privilege(&granted, &needed);
        Ok(PermissionUsageReport {
            granted: granted.to_strings(),
            unused_grants: report
                .unused_grants
                .iter()
                .map(ToString::to_string)
                .collect(),
            suggested: report.suggested.to_strings(),
            key,
            days,
            from,
            used,
        })
    }
}
