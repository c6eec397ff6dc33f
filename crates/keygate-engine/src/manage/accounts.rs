use keygate_store::Account;
use serde_json::json;

use super::{validate, Caller};
use crate::ids::new_id;
use crate::{now_ms, Engine, Error, Result};

/// `POST /v1/accounts`.
#[derive(Clone, Debug, Default)]
pub struct NewAccount {
    pub name: String,
    pub plan: Option<String>,
}

/// `PATCH /v1/accounts/{id}`.
#[derive(Clone, Debug, Default)]
pub struct AccountPatch {
    pub name: Option<String>,
    pub plan: Option<String>,
}

impl Engine {
    fn checked_plan(&self, plan: &str) -> Result<String> {
        if self.plans.exists(plan) {
            Ok(plan.to_owned())
        } else {
            let known: Vec<&str> = self.plans.names().collect();
            Err(Error::validation(
                "plan",
                format!(
                    "unknown plan {plan:?}; configured plans: {}",
                    known.join(", ")
                ),
            ))
        }
    }

    pub async fn create_account(&self, caller: &Caller, new: NewAccount) -> Result<Account> {
        if caller.own_account().is_some() {
            return Err(Error::Forbidden(
                "only the operator can create accounts".into(),
            ));
        }
        let account = Account {
            id: new_id("acct")?,
            name: validate::name("name", &new.name)?,
            plan: self.checked_plan(new.plan.as_deref().unwrap_or(self.plans.default_plan()))?,
            created_at: now_ms(),
        };
        let audit = caller.audit(
            "account.create",
            Some(&account.id),
            Some(&account.id),
            json!({"name": account.name, "plan": account.plan}),
        )?;
        self.store.create_account(&account, &audit).await?;
        Ok(account)
    }

    pub async fn get_account(&self, caller: &Caller, id: &str) -> Result<Account> {
        caller.require("accounts", "read")?;
        super::known_shape(id, "account")?;
        caller.can_see(id, "account")?;
        self.store
            .get_account(id)
            .await?
            .ok_or(Error::NotFound("account"))
    }

    pub async fn update_account(
        &self,
        caller: &Caller,
        id: &str,
        patch: AccountPatch,
    ) -> Result<Account> {
        super::known_shape(id, "account")?;
        caller.can_see(id, "account")?;
        if caller.own_account().is_some() {
            return Err(Error::Forbidden(
                "only the operator can change accounts".into(),
            ));
        }
        let name = patch
            .name
            .as_deref()
            .map(|n| validate::name("name", n))
            .transpose()?;
        let plan = patch
            .plan
            .as_deref()
            .map(|p| self.checked_plan(p))
            .transpose()?;
        let audit = caller.audit(
            "account.update",
            Some(id),
            Some(id),
            json!({"name": name, "plan": plan}),
        )?;
        let account = self
            .store
            .update_account(id, name.as_deref(), plan.as_deref(), &audit)
            .await
            .map_err(|e| match Error::from(e) {
                Error::NotFound(_) => Error::NotFound("account"),
                other => other,
            })?;
        if plan.is_some() {
            // Keys cached with the old plan's defaults must be read again.
            self.cache.invalidate_all();
            self.announcer.announce(crate::Announcement::Resync(
                crate::ResyncReason::PlanChanged,
            ));
        }
        Ok(account)
    }

    /// Active keys and the cap, for "3 of 20 keys used".
    pub async fn account_key_usage(&self, account: &Account) -> Result<(u64, Option<u64>)> {
        let now = now_ms();
        let active = self
            .store
            .list_keys(Some(&account.id))
            .await?
            .iter()
            .filter(|k| keygate_core::policy::liveness(k.revoked_at, k.expires_at, now).is_ok())
            .count() as u64;
        Ok((active, self.plans.max_keys(&account.plan)))
    }
}
