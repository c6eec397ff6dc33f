//! Path and query extractors whose failures answer in our JSON error shape.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use keygate_engine::manage::PageRequest;
use keygate_engine::Error;

use crate::{ApiError, AppState};

/// The `{id}` of a path. An undecodable id is an unknown id.
pub struct Id(pub String);

impl FromRequestParts<AppState> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| Id(p.0))
            .map_err(|_| Error::NotFound("record").into())
    }
}

/// Query parameters by name (the last of repeated ones wins). Unknown names are refused so
/// that a typo does not silently list everything.
pub struct Query(HashMap<String, String>);

impl Query {
    /// A text parameter; empty is the same as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.typed(name).filter(|v| !v.is_empty())
    }

    /// A parameter with a type (number, time, one of a list): empty is a value, and not a
    /// valid one, so `?status=` is refused rather than read as "any status".
    pub fn typed(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn only(self, allowed: &[&str]) -> Result<Self, ApiError> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(Error::validation(
                k,
                format!(
                    "unknown query parameter {k:?}; allowed: {}",
                    allowed.join(", ")
                ),
            )
            .into()),
            None => Ok(self),
        }
    }

    /// `limit` and `starting_after`, for the engine to check.
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        Ok(PageRequest {
            limit: self.number::<i64>("limit")?,
            starting_after: self.get("starting_after").map(str::to_owned),
        })
    }

    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.typed(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| Error::validation(name, format!("{name} must be a number")).into())
            })
            .transpose()
    }
}

impl FromRequestParts<AppState> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let map = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (
                    keygate_edge::credentials::decode(k),
                    keygate_edge::credentials::decode(v),
                )
            })
            .collect();
        Ok(Query(map))
    }
}
