//! Leaked-key reports: `POST /v1/leaks/github` (GitHub secret scanning's partner endpoint,
//! signed by GitHub, no admin token) and `POST /v1/leaks` (the admin token, for other
//! scanners and people). Both answer GitHub's feedback array, one label per token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::Json as JsonOut;
use keygate_engine::manage::{Caller, LeakAction, LeakSource, LeakVerdict};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::github_scanning::{GithubScanningKeys, SignatureError};
use super::openapi::{AuthErrors, BodyErrors, ScannerErrors};
use super::Auth;
use crate::edge::json::{body_bytes, Json};
use crate::{ApiError, AppState};

/// What leak reports do, and the keys GitHub's reports are checked with.
#[derive(Clone, Debug, Default)]
pub struct LeakConfig {
    /// `leak_action`: revoke a reported live key (default) or only mark and audit it.
    pub action: LeakAction,
    pub github_keys: Arc<GithubScanningKeys>,
}

/// Most tokens in one report.
const MAX_TOKENS: usize = 1000;

/// One match GitHub secret scanning found.
#[derive(Deserialize, ToSchema)]
pub struct GithubMatch {
    /// The token as found.
    token: String,
    /// The token type registered with GitHub.
    #[serde(rename = "type", default)]
    token_type: Option<String>,
    /// Where it was found.
    #[serde(default)]
    url: Option<String>,
    /// The kind of place (`content`, `commit`, `pull_request_description`, …).
    #[serde(default)]
    source: Option<String>,
}

/// `POST /v1/leaks`'s body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeakReport {
    /// The leaked keys, as found.
    #[schema(max_items = 1000)]
    keys: Vec<String>,
    /// The kind of place they were found (free text, kept in the audit log).
    source: Option<String>,
    /// Where they were found.
    url: Option<String>,
}

/// Whether this deployment issued the token.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum LeakLabel {
    /// A key this deployment issued (live, revoked or expired).
    TruePositive,
    /// Not a key this deployment issued.
    FalsePositive,
}

/// One token's feedback, in GitHub's format.
#[derive(Serialize, ToSchema)]
pub struct LeakFeedback {
    token_raw: String,
    token_type: String,
    label: LeakLabel,
}

/// Token type reported for `POST /v1/leaks` (and GitHub matches without one).
const KEYGATE_TOKEN_TYPE: &str = "keygate_api_key";

/// GitHub secret scanning's report of leaked keygate keys (partner program). Signed by
/// GitHub: `Github-Public-Key-Identifier` and `Github-Public-Key-Signature` (ECDSA P-256
/// SHA-256, base64 DER, over the raw body); no admin token. Each live key reported is
/// revoked (or only marked with `leak_action = "notify"`) and audited as `key.leaked`.
#[utoipa::path(
    post,
    operation_id = "report_github_leaks",
    path = "/v1/leaks/github",
    tag = "leaks",
    params(
        ("Github-Public-Key-Identifier" = String, Header, description = "The GitHub public key that signed the body"),
        ("Github-Public-Key-Signature" = String, Header, description = "Base64 DER ECDSA P-256 SHA-256 signature of the raw body"),
    ),
    request_body(content = Vec<GithubMatch>, description = "The matches GitHub found"),
    responses(
        (status = 200, description = "One label per token: `true_positive` for keys this deployment issued", body = Vec<LeakFeedback>),
        ScannerErrors, BodyErrors
    )
)]
pub async fn github(
    State(state): State<AppState>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let headers = request.headers().clone();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(key_id), Some(signature)) = (
        header("github-public-key-identifier"),
        header("github-public-key-signature"),
    ) else {
        return Err(ApiError::BadSignature);
    };
    let body = body_bytes(request, &state).await?;
    state
        .http
        .leaks
        .github_keys
        .verify(key_id, signature, &body)
        .await
        .map_err(|e| match e {
            SignatureError::KeysUnavailable(detail) => {
                tracing::warn!(%detail, "cannot check a GitHub secret scanning report");
                ApiError::SignatureKeysUnavailable
            }
            SignatureError::Malformed | SignatureError::UnknownKey | SignatureError::Invalid => {
                ApiError::BadSignature
            }
        })?;
    let matches: Vec<GithubMatch> = serde_json::from_slice(&body).map_err(|_| {
        ApiError::BadRequest("The body must be a JSON array of {token, type, url, source}")
    })?;
    if matches.len() > MAX_TOKENS {
        return Err(ApiError::BadRequest("At most 1000 tokens per report"));
    }
    // The signature stands in for the admin token.
    let caller = Caller::admin(None);
    let mut feedback = Vec::with_capacity(matches.len());
    for found in matches {
        let from = LeakSource {
            reporter: "github".to_owned(),
            token_type: found.token_type.clone(),
            url: found.url,
            source: found.source,
        };
        let verdict = state
            .engine
            .report_leak(&caller, &found.token, &from, state.http.leaks.action)
            .await?;
        feedback.push(LeakFeedback {
            token_raw: found.token,
            token_type: found
                .token_type
                .unwrap_or_else(|| KEYGATE_TOKEN_TYPE.to_owned()),
            label: label(verdict),
        });
    }
    Ok(JsonOut(feedback))
}

/// Report leaked keys (other scanners, people). Each live key is revoked (or only marked
/// with `leak_action = "notify"`) and audited as `key.leaked`; the answer labels each in
/// GitHub's feedback format. Admin token only.
#[utoipa::path(
    post,
    operation_id = "report_leaks",
    path = "/v1/leaks",
    tag = "leaks",
    security(("admin_token" = [])),
    request_body(content = LeakReport),
    responses(
        (status = 200, description = "One label per key: `true_positive` for keys this deployment issued", body = Vec<LeakFeedback>),
        AuthErrors, BodyErrors
    )
)]
pub async fn report(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Json(report): Json<LeakReport>,
) -> Result<impl IntoResponse, ApiError> {
    if report.keys.len() > MAX_TOKENS {
        return Err(
            keygate_engine::Error::validation("keys", "at most 1000 keys per report").into(),
        );
    }
    let from = LeakSource {
        reporter: "admin".to_owned(),
        token_type: None,
        url: report.url,
        source: report.source,
    };
    let mut feedback = Vec::with_capacity(report.keys.len());
    for key in report.keys {
        let verdict = state
            .engine
            .report_leak(&caller, &key, &from, state.http.leaks.action)
            .await?;
        feedback.push(LeakFeedback {
            token_raw: key,
            token_type: KEYGATE_TOKEN_TYPE.to_owned(),
            label: label(verdict),
        });
    }
    Ok(JsonOut(feedback))
}

fn label(verdict: LeakVerdict) -> LeakLabel {
    match verdict {
        LeakVerdict::Issued => LeakLabel::TruePositive,
        LeakVerdict::NotIssued => LeakLabel::FalsePositive,
    }
}
