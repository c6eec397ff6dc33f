//! Importing keys from another system (`keygate import-keys`, `POST /v1/api-keys/import`):
//! JSON lines `{account_id, name, hash, lookup_prefix?, permissions?, scope?, environment?,
//! ip_allowlist?, expires_at?, created_at?, meta?}`, every line checked before anything is
//! written. A key's id is derived from its legacy hash (for a plaintext key from keygate's
//! digest of it), so running the same file again inserts nothing, also after keys were
//! upgraded on first use.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime};
use keygate_core::legacy::{
    imported_key_id, placeholder_digest, valid_lookup_prefix, LegacyHash, MAX_LOOKUP_PREFIX,
    MIN_LOOKUP_PREFIX,
};
use keygate_core::{Environment, KeyDigest, Pepper};
use keygate_store::{AuditEvent, ImportedKey, KeyRecord, LegacyKey, Store};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use super::keys::{allowlist_of, permissions_of};
use super::{validate, Actor, Caller};
use crate::ids::new_id;
use crate::{now_ms, Engine, Error, Result};

/// Line errors kept (and reported) at most; the rest are counted.
const MAX_LINE_ERRORS: usize = 100;
const FIELDS: [&str; 11] = [
    "account_id",
    "name",
    "hash",
    "lookup_prefix",
    "permissions",
    "scope",
    "environment",
    "ip_allowlist",
    "expires_at",
    "created_at",
    "meta",
];

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportSummary {
    /// Keys in the file.
    pub keys: usize,
    /// Keys inserted now.
    pub imported: u64,
    /// Keys the database held already (an earlier run of the same file).
    pub already_present: u64,
}

/// One wrong field of one line (1-based), as shown to the operator. Never repeats a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {field}: {message}")]
pub struct LineError {
    pub line: usize,
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is wrong; nothing was written. At most [`MAX_LINE_ERRORS`], in line order;
    /// `more` counts the others.
    #[error("{} line errors", .errors.len() + .more)]
    Lines { errors: Vec<LineError>, more: usize },
    #[error(transparent)]
    Failed(#[from] Error),
}

impl From<keygate_store::StoreError> for ImportError {
    fn from(e: keygate_store::StoreError) -> Self {
        ImportError::Failed(e.into())
    }
}

impl ImportError {
    /// As one validation error (the HTTP answer): the first line's field, every line in
    /// the message.
    fn into_error(self) -> Error {
        match self {
            ImportError::Failed(e) => e,
            ImportError::Lines { errors, more } => {
                let field = errors
                    .first()
                    .map_or("body", |e| e.field.as_str())
                    .to_owned();
                let mut message = errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                if more > 0 {
                    message.push_str(&format!("; and {more} more"));
                }
                if errors.is_empty() {
                    message = "the file holds no key".into();
                }
                Error::Validation { field, message }
            }
        }
    }
}

/// Checks every line of `text` against `store` (accounts exist, no key held twice) and
/// returns the keys to write; nothing is written.
pub async fn check_import(
    store: &dyn Store,
    pepper: &Pepper,
    text: &str,
    now: i64,
) -> std::result::Result<Vec<ImportedKey>, ImportError> {
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    let mut more = 0;
    let mut note = |e: LineError, errors: &mut Vec<LineError>| {
        if errors.len() < MAX_LINE_ERRORS {
            errors.push(e);
        } else {
            more += 1;
        }
    };
    // Id → line, to refuse the same key twice in one file.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut accounts: HashMap<String, bool> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let key = match parse_line(raw, pepper, now) {
            Ok(key) => key,
            Err((field, message)) => {
                note(
                    LineError {
                        line,
                        field,
                        message,
                    },
                    &mut errors,
                );
                continue;
            }
        };
        let fail = |field: &str, message: String| LineError {
            line,
            field: field.to_owned(),
            message,
        };
        let account_id = key.record.account_id.clone();
        let exists = match accounts.get(&account_id) {
            Some(known) => *known,
            None => {
                let known = super::known_shape(&account_id, "account").is_ok()
                    && store.get_account(&account_id).await?.is_some();
                accounts.insert(account_id.clone(), known);
                known
            }
        };
        if !exists {
            note(fail("account_id", "no such account".into()), &mut errors);
            continue;
        }
        if let Some(first) = seen.insert(key.record.id.clone(), line) {
            note(
                fail("hash", format!("the same key as line {first}")),
                &mut errors,
            );
            continue;
        }
        if key.legacy.scheme == "plaintext" {
            if let Some(held) = store.find_key_by_digest(&key.record.digest).await? {
                if held.id != key.record.id {
                    note(
                        fail("hash", format!("this key is held by {} already", held.id)),
                        &mut errors,
                    );
                    continue;
                }
            }
        }
        keys.push(key);
    }
    if !errors.is_empty() || keys.is_empty() {
        return Err(ImportError::Lines { errors, more });
    }
    Ok(keys)
}

/// The audit event of an import (one for the whole file).
pub fn import_audit(
    actor: String,
    client_ip: Option<String>,
    keys: &[ImportedKey],
) -> Result<AuditEvent> {
    let mut schemes: HashMap<&str, usize> = HashMap::new();
    for k in keys {
        *schemes.entry(k.legacy.scheme.as_str()).or_default() += 1;
    }
    Ok(AuditEvent {
        id: new_id("evt")?,
        seq: 0,
        at: now_ms(),
        account_id: None,
        actor,
        action: "key.import".into(),
        target_id: None,
        client_ip,
        details: json!({"keys": keys.len(), "schemes": schemes}),
    })
}

/// Writes checked keys; keys already there (by id) are left as they are.
pub async fn write_import(
    store: &dyn Store,
    keys: &[ImportedKey],
    audit: &AuditEvent,
) -> Result<ImportSummary> {
    let imported = store.import_legacy_keys(keys, audit).await?;
    Ok(ImportSummary {
        keys: keys.len(),
        imported,
        already_present: keys.len() as u64 - imported,
    })
}

impl Engine {
    /// `POST /v1/api-keys/import` (the admin only).
    pub async fn import_keys(&self, caller: &Caller, text: &str) -> Result<ImportSummary> {
        if !matches!(caller.actor, Actor::Admin) {
            return Err(Error::Forbidden(
                "importing keys needs the admin token".into(),
            ));
        }
        let keys = check_import(self.store.as_ref(), &self.pepper, text, now_ms())
            .await
            .map_err(ImportError::into_error)?;
        let audit = import_audit(
            caller.actor_label(),
            caller.client_ip.map(|ip| ip.to_string()),
            &keys,
        )?;
        let summary = write_import(self.store.as_ref(), &keys, &audit).await?;
        self.legacy.note_present();
        // A credential tried before its import may be remembered as unknown.
        self.cache.invalidate_unknown();
        Ok(summary)
    }
}

type FieldError = (String, String);

fn field_error(field: &str, message: impl Into<String>) -> FieldError {
    (field.to_owned(), message.into())
}

/// One line as a key to insert, or the first wrong field.
fn parse_line(
    raw: &str,
    pepper: &Pepper,
    now: i64,
) -> std::result::Result<ImportedKey, FieldError> {
    let mut object: Map<String, Value> = match serde_json::from_str(raw) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(field_error("line", "each line must be a JSON object")),
        Err(e) => {
            return Err(field_error(
                "line",
                format!(
                    "not JSON: {}",
                    keygate_core::key::obscure(&e.to_string(), 120)
                ),
            ))
        }
    };
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(field_error(
            unknown,
            format!("unknown field; the fields are {}", FIELDS.join(", ")),
        ));
    }
    let account_id: String = required(&mut object, "account_id")?;
    let name = validate::name("name", &required::<String>(&mut object, "name")?)
        .map_err(to_field_error)?;
    let hash_text: String = required(&mut object, "hash")?;
    let hash = LegacyHash::parse(&hash_text).map_err(|e| field_error("hash", e.to_string()))?;
    let lookup_prefix: Option<String> = optional(&mut object, "lookup_prefix")?;
    if let Some(prefix) = &lookup_prefix {
        if !valid_lookup_prefix(prefix) {
            return Err(field_error(
                "lookup_prefix",
                format!("lookup_prefix must be {MIN_LOOKUP_PREFIX} to {MAX_LOOKUP_PREFIX} visible ASCII characters: the key's first characters"),
            ));
        }
    }
    let permissions: Option<Vec<String>> = optional(&mut object, "permissions")?;
    let scope: Option<String> = optional(&mut object, "scope")?;
    let permissions = permissions_of(permissions.as_deref(), scope.as_deref())
        .map_err(to_field_error)?
        .unwrap_or_default();
    let environment = match optional::<String>(&mut object, "environment")? {
        None => Environment::Live,
        Some(e) => Environment::parse(&e)
            .ok_or_else(|| field_error("environment", "environment must be live or test"))?,
    };
    let ip_allowlist = match optional::<Vec<String>>(&mut object, "ip_allowlist")? {
        None => Vec::new(),
        Some(list) => allowlist_of(&list).map_err(to_field_error)?,
    };
    let expires_at = optional_time(&mut object, "expires_at")?;
    let created_at = optional_time(&mut object, "created_at")?.unwrap_or(now);
    let meta = optional::<Value>(&mut object, "meta")?.unwrap_or_else(|| json!({}));
    validate::meta(&meta).map_err(to_field_error)?;

    let (id, digest, stored, lookup) = match &hash {
        LegacyHash::Bcrypt(h) => {
            let prefix = lookup_prefix.clone().ok_or_else(|| {
                field_error(
                    "lookup_prefix",
                    "a bcrypt hash needs the lookup_prefix it is found under",
                )
            })?;
            let identity = format!("bcrypt:{h}");
            (
                imported_key_id(identity.as_bytes()),
                placeholder_digest(&identity),
                Some(h.clone()),
                prefix,
            )
        }
        LegacyHash::Sha256(h) | LegacyHash::Sha512(h) => {
            let identity = format!("{}:{h}", hash.scheme().as_str());
            (
                imported_key_id(identity.as_bytes()),
                placeholder_digest(&identity),
                Some(h.clone()),
                h.clone(),
            )
        }
        LegacyHash::Plaintext(key) => {
            if lookup_prefix
                .as_ref()
                .is_some_and(|p| !key.starts_with(p.as_str()))
            {
                return Err(field_error(
                    "lookup_prefix",
                    "lookup_prefix must be the key's first characters",
                ));
            }
            let digest: KeyDigest = pepper.digest(key.as_bytes());
            (imported_key_id(&digest.0), digest, None, String::new())
        }
    };
    let record = KeyRecord {
        id: id.clone(),
        account_id,
        name,
        display_prefix: lookup_prefix.unwrap_or_else(|| "legacy".into()),
        digest,
        environment,
        permissions: permissions.to_strings(),
        ip_allowlist,
        rate_limit: None,
        quota: None,
        quota_used: 0,
        meta,
        created_at,
        last_used_at: None,
        expires_at,
        revoked_at: None,
        rotated_from: None,
        recent_ips: Vec::new(),
        quota_refilled_at: None,
        leaked_at: None,
        retire_when_idle_ms: None,
    };
    let upgraded = stored.is_none();
    let legacy = LegacyKey {
        key_id: id,
        scheme: hash.scheme().as_str().to_owned(),
        lookup,
        hash: stored,
        imported_at: now,
        upgraded_at: upgraded.then_some(now),
    };
    Ok(ImportedKey { record, legacy })
}

fn to_field_error(e: Error) -> FieldError {
    match e {
        Error::Validation { field, message } => (field, message),
        other => ("line".into(), other.to_string()),
    }
}

fn optional<T: DeserializeOwned>(
    object: &mut Map<String, Value>,
    field: &str,
) -> std::result::Result<Option<T>, FieldError> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| field_error(field, format!("wrong type: {e}"))),
    }
}

fn required<T: DeserializeOwned>(
    object: &mut Map<String, Value>,
    field: &str,
) -> std::result::Result<T, FieldError> {
    optional(object, field)?.ok_or_else(|| field_error(field, format!("{field} is required")))
}

/// Unix milliseconds, an RFC 3339 time, or `YYYY-MM-DD HH:MM:SS` in UTC (a SQL datetime).
fn optional_time(
    object: &mut Map<String, Value>,
    field: &str,
) -> std::result::Result<Option<i64>, FieldError> {
    let bad = || {
        field_error(
            field,
            format!(
                "{field} must be unix milliseconds, an RFC 3339 time or YYYY-MM-DD HH:MM:SS (UTC)"
            ),
        )
    };
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().filter(|ms| *ms >= 0).map(Some).ok_or_else(bad),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(&s)
            .map(|t| t.timestamp_millis())
            .or_else(|_| {
                NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S")
                    .map(|t| t.and_utc().timestamp_millis())
            })
            .map(Some)
            .map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}
