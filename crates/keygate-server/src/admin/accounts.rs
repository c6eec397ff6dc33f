use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json as JsonOut;
use keygate_engine::manage::{AccountPatch, NewAccount};
use serde::Deserialize;
use utoipa::ToSchema;

use super::extract::Id;
use super::openapi::{AuthErrors, BodyErrors, RecordErrors};
use super::views::{self, AccountList, AccountWithKeys};
use super::Auth;
use crate::edge::json::Json;
use crate::{ApiError, AppState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    name: String,
    plan: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    name: Option<String>,
    plan: Option<String>,
}

async fn with_usage(
    state: &AppState,
    a: &keygate_store::Account,
) -> Result<serde_json::Value, ApiError> {
    let (active, cap) = state.engine.account_key_usage(a).await?;
    let mut v = views::account(a);
    v["active_keys"] = active.into();
    v["max_keys"] = cap.into();
    Ok(v)
}

/// Create an account (operator only).
#[utoipa::path(
    post,
    operation_id = "create_account",
    path = "/v1/accounts",
    tag = "accounts",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    request_body = CreateAccount,
    responses((status = 201, description = "The new account", body = AccountWithKeys), AuthErrors, BodyErrors)
)]
pub async fn create(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Json(body): Json<CreateAccount>,
) -> Result<impl IntoResponse, ApiError> {
    let account = state
        .engine
        .create_account(
            &caller,
            NewAccount {
                name: body.name,
                plan: body.plan,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        JsonOut(with_usage(&state, &account).await?),
    ))
}

/// List accounts (a self-service key sees its own).
#[utoipa::path(
    get,
    operation_id = "list_accounts",
    path = "/v1/accounts",
    tag = "accounts",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    responses((status = 200, description = "The accounts", body = AccountList), AuthErrors)
)]
pub async fn list(
    State(state): State<AppState>,
    Auth(caller): Auth,
) -> Result<impl IntoResponse, ApiError> {
    let accounts = state.engine.list_accounts(&caller).await?;
    Ok(JsonOut(views::list(
        accounts.iter().map(views::account).collect(),
    )))
}

/// Read an account.
#[utoipa::path(
    get,
    operation_id = "get_account",
    path = "/v1/accounts/{id}",
    tag = "accounts",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    params(("id" = String, Path, description = "The account's id")),
    responses((status = 200, description = "The account", body = AccountWithKeys), AuthErrors, RecordErrors)
)]
pub async fn get(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
) -> Result<impl IntoResponse, ApiError> {
    let account = state.engine.get_account(&caller, &id).await?;
    Ok(JsonOut(with_usage(&state, &account).await?))
}

/// Change an account's name or plan (operator only).
#[utoipa::path(
    patch,
    operation_id = "update_account",
    path = "/v1/accounts/{id}",
    tag = "accounts",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    params(("id" = String, Path, description = "The account's id")),
    request_body = UpdateAccount,
    responses((status = 200, description = "The changed account", body = AccountWithKeys), AuthErrors, RecordErrors, BodyErrors)
)]
pub async fn update(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
    Json(body): Json<UpdateAccount>,
) -> Result<impl IntoResponse, ApiError> {
    let account = state
        .engine
        .update_account(
            &caller,
            &id,
            AccountPatch {
                name: body.name,
                plan: body.plan,
            },
        )
        .await?;
    Ok(JsonOut(with_usage(&state, &account).await?))
}
