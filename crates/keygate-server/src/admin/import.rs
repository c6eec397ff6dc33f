//! `POST /v1/api-keys/import`: keys from another system, as JSON lines (the admin only).
//! The engine checks every line before it writes any (`manage/import.rs`).

use axum::extract::{Request, State};
use axum::Json as JsonOut;
use keygate_engine::manage::ImportSummary;
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::{AuthErrors, BodyErrors};
use super::Auth;
use crate::edge::json::body_bytes;
use crate::{ApiError, AppState};

/// What an import did.
#[derive(Serialize, ToSchema)]
pub struct ImportedKeys {
    /// Keys in the file.
    keys: usize,
    /// Keys inserted now.
    imported: u64,
    /// Keys held already (the same file imported before); left as they are.
    already_present: u64,
}

impl From<ImportSummary> for ImportedKeys {
    fn from(s: ImportSummary) -> Self {
        ImportedKeys {
            keys: s.keys,
            imported: s.imported,
            already_present: s.already_present,
        }
    }
}

/// The body: JSON lines, as bytes. Documented as a binary upload because OpenAPI tools
/// (generated clients, schemathesis) know no `application/x-ndjson` body.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct JsonLines(Vec<u8>);

/// Import keys from another system, verified by their legacy hashes until first use.
///
/// One JSON object a line: `{account_id, name, hash, lookup_prefix?, permissions?, scope?,
/// environment?, ip_allowlist?, expires_at?, created_at?, meta?}`, `hash` being
/// `bcrypt:$2y$…` (with `lookup_prefix`), `sha256:<hex>`, `sha512:<hex>` or
/// `plaintext:<key>`. Every line is checked before anything is written; a 400 names the
/// line and field. Running the same file again imports nothing twice. Files larger than the
/// body limit: `keygate import-keys FILE` on the server's database.
#[utoipa::path(
    post,
    operation_id = "import_api_keys",
    path = "/v1/api-keys/import",
    tag = "api-keys",
    security(("admin_token" = [])),
    request_body(content = JsonLines, content_type = "application/octet-stream", description = "JSON lines, one key a line (any content type is read as such; `application/x-ndjson` is usual)"),
    responses((status = 200, description = "What was imported", body = ImportedKeys), AuthErrors, BodyErrors)
)]
pub async fn import_keys(
    State(state): State<AppState>,
    Auth(caller): Auth,
    request: Request,
) -> Result<JsonOut<ImportedKeys>, ApiError> {
    let bytes = body_bytes(request, &state).await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        ApiError::from(keygate_engine::Error::validation(
            "body",
            "the body must be UTF-8 text: JSON lines",
        ))
    })?;
    let summary = state.engine.import_keys(&caller, text).await?;
    Ok(JsonOut(summary.into()))
}
