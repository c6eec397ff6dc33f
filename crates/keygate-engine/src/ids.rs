use keygate_core::key::random_hex;

use crate::{Error, Result};

/// An opaque id such as `key_3f9c0a…`: a type prefix and 96 random bits.
pub fn new_id(prefix: &str) -> Result<String> {
    let hex = random_hex(12).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(format!("{prefix}_{hex}"))
}
