//! Whether a pepper is the one a database's keys were made with. A wrong pepper would
//! refuse every key without saying why, so every process that verifies keys (the server,
//! the tower layer, `keygate import`) checks it before serving.

use keygate_core::Pepper;
use keygate_store::Store;

use crate::Result;

/// The setting that holds the check digest.
pub const PEPPER_CHECK_SETTING: &str = "pepper_check";
/// A fixed message whose digest tells whether the pepper is the one the keys were made with.
pub const PEPPER_CHECK_MESSAGE: &[u8] = b"keygate pepper check v1";

/// The check digest `pepper` gives.
pub fn pepper_check(pepper: &Pepper) -> String {
    pepper.digest(PEPPER_CHECK_MESSAGE).to_hex()
}

/// Records `pepper`'s check in a database that has none yet, then tells whether `pepper` is
/// the one recorded.
pub async fn pepper_matches(store: &dyn Store, pepper: &Pepper) -> Result<bool> {
    let check = pepper_check(pepper);
    store
        .insert_setting_if_absent(PEPPER_CHECK_SETTING, &check)
        .await?;
    Ok(store.get_setting(PEPPER_CHECK_SETTING).await?.as_deref() == Some(check.as_str()))
}
