//! Field checks shared by the management operations.

use crate::{Error, Result};

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_META_BYTES: usize = 8 * 1024;

/// A trimmed, non-empty name without control characters.
pub fn name(field: &str, raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(Error::validation(
            field,
            format!("{field} must not be empty"),
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::validation(
            field,
            format!("{field} must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::validation(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(name.to_owned())
}

/// Metadata: a JSON object of bounded size.
pub fn meta(value: &serde_json::Value) -> Result<()> {
    if !value.is_object() {
        return Err(Error::validation("meta", "meta must be a JSON object"));
    }
    if value.to_string().len() > MAX_META_BYTES {
        return Err(Error::validation(
            "meta",
            format!("meta must be at most {MAX_META_BYTES} bytes"),
        ));
    }
    Ok(())
}
