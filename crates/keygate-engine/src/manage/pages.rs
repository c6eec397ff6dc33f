//! Pages of the key and account lists: `limit` (1–1000, default 100) and `starting_after`
//! (the id of the last record of the previous page), in `(created_at, id)` order.
//!
//! The cursor is a record id rather than an opaque token so that it can be read, logged
//! and typed; it must name a record the caller can see, so a tenant cannot probe another
//! account's ids through it (such an id is refused exactly like an unknown one).

use keygate_core::Environment;
use keygate_store::{Account, AccountQuery, Cursor, KeyQuery, KeyRecord, KeyStatus};

use super::{known_shape, validate, Caller};
use crate::{now_ms, Engine, Error, Result};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// What a caller asked for, not yet checked.
#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    pub limit: Option<i64>,
    pub starting_after: Option<String>,
}

/// One page of a list.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// More records follow the last one of this page.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// `rows` were fetched with one more than `limit`: that extra row only says there is more.
    pub(super) fn from_rows(mut rows: Vec<T>, limit: u32) -> Page<T> {
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Page {
            items: rows,
            has_more,
        }
    }

    /// The `starting_after` of the next page, when there is one.
    pub fn next_cursor<'a>(&'a self, id: impl Fn(&'a T) -> &'a str) -> Option<&'a str> {
        self.items.last().filter(|_| self.has_more).map(id)
    }
}

/// Filters of the key list (`GET /v1/api-keys`).
#[derive(Clone, Debug, Default)]
pub struct KeyFilter {
    pub account_id: Option<String>,
    pub status: Option<KeyStatus>,
    pub environment: Option<Environment>,
    /// A substring of the name, case-insensitive.
    pub name: Option<String>,
}

/// Filters of the account list (`GET /v1/accounts`).
#[derive(Clone, Debug, Default)]
pub struct AccountFilter {
    pub plan: Option<String>,
    /// A substring of the name, case-insensitive.
    pub name: Option<String>,
}

impl PageRequest {
    pub fn limit(&self) -> Result<u32> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=i64::from(MAX_LIMIT)).contains(&n) => Ok(n as u32),
            Some(_) => Err(Error::validation(
                "limit",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            )),
        }
    }

    /// The cursor's id, checked for shape (an id that cannot exist is unknown).
    pub(super) fn cursor_id(&self) -> Result<Option<&str>> {
        match self.starting_after.as_deref() {
            None => Ok(None),
            Some(id) => known_shape(id, "record")
                .map(|()| Some(id))
                .map_err(|_| unknown_cursor()),
        }
    }
}

pub(super) fn unknown_cursor() -> Error {
    Error::validation(
        "starting_after",
        "starting_after must be the id of a record in this list",
    )
}

fn name_filter(name: Option<&str>) -> Result<Option<&str>> {
    name.map(|n| validate::name("name", n).map(|_| n.trim()))
        .transpose()
}

impl Engine {
    /// A page of the keys the caller may see; a self-service key sees its own account's only.
    pub async fn key_page(
        &self,
        caller: &Caller,
        filter: &KeyFilter,
        page: &PageRequest,
    ) -> Result<Page<KeyRecord>> {
        caller.require("api_keys", "read")?;
        let limit = page.limit()?;
        let account_id = self.visible_account_filter(caller, filter.account_id.as_deref())?;
        let after = match page.cursor_id()? {
            None => None,
            Some(id) => {
                let key = self
                    .scoped_key(caller, id)
                    .await?
                    .ok_or_else(unknown_cursor)?;
                Some(Cursor {
                    created_at: key.created_at,
                    id,
                })
            }
        };
        let query = KeyQuery {
            account_id,
            status: filter.status,
            now: now_ms(),
            environment: filter.environment,
            name_contains: name_filter(filter.name.as_deref())?,
            after,
            limit: limit + 1,
        };
        let rows = self.store.query_keys(&query).await?;
        let mut page = Page::from_rows(rows, limit);
        page.items = page
            .items
            .into_iter()
            .map(|k| self.with_live_usage(k))
            .collect();
        Ok(page)
    }

    /// A page of the accounts the caller may see; a self-service key sees its own only.
    pub async fn account_page(
        &self,
        caller: &Caller,
        filter: &AccountFilter,
        page: &PageRequest,
    ) -> Result<Page<Account>> {
        caller.require("accounts", "read")?;
        let limit = page.limit()?;
        let after = match page.cursor_id()? {
            None => None,
            Some(id) => {
                caller
                    .can_see(id, "account")
                    .map_err(|_| unknown_cursor())?;
                let account = self
                    .store
                    .get_account(id)
                    .await?
                    .ok_or_else(unknown_cursor)?;
                Some(Cursor {
                    created_at: account.created_at,
                    id,
                })
            }
        };
        let query = AccountQuery {
            id: caller.own_account(),
            plan: filter.plan.as_deref(),
            name_contains: name_filter(filter.name.as_deref())?,
            after,
            limit: limit + 1,
        };
        let rows = self.store.query_accounts(&query).await?;
        Ok(Page::from_rows(rows, limit))
    }

    /// The account a key list is confined to: the asked one (checked), or the caller's own.
    pub(super) fn visible_account_filter<'a>(
        &self,
        caller: &'a Caller,
        asked: Option<&'a str>,
    ) -> Result<Option<&'a str>> {
        if let Some(id) = asked {
            known_shape(id, "account")?;
        }
        match (caller.own_account(), asked) {
            (Some(own), Some(asked)) if own != asked => Err(Error::NotFound("account")),
            (Some(own), _) => Ok(Some(own)),
            (None, asked) => Ok(asked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        let with = |limit| PageRequest {
            limit,
            starting_after: None,
        };
        assert_eq!(with(None).limit().ok(), Some(DEFAULT_LIMIT));
        assert_eq!(with(Some(1)).limit().ok(), Some(1));
        assert_eq!(with(Some(1000)).limit().ok(), Some(1000));
        for bad in [0, -1, 1001, i64::MAX] {
            assert!(
                matches!(with(Some(bad)).limit(), Err(Error::Validation { field, .. }) if field == "limit"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_page_knows_whether_more_follow() {
        let page = Page::from_rows(vec!["a", "b", "c"], 2);
        assert_eq!(page.items, vec!["a", "b"]);
        assert_eq!(page.next_cursor(|s| s), Some("b"));
        let last = Page::from_rows(vec!["a", "b"], 2);
        assert!(!last.has_more);
        assert_eq!(last.next_cursor(|s| s), None);
    }
}
