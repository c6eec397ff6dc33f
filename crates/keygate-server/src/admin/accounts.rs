use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json as JsonOut;
use keygate_engine::manage::{AccountFilter, AccountPatch, NewAccount};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::extract::{Id, Query};
use super::openapi::{AuthErrors, BodyErrors, Name, NameFilter, Plan, RecordErrors};
use super::views::{self, AccountList, AccountWithKeys};
use super::Auth;
use crate::edge::json::Json;
use crate::{ApiError, AppState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    #[schema(value_type = Name)]
    name: String,
    /// The default plan when absent.
    #[schema(value_type = Option<Plan>)]
    plan: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    #[schema(value_type = Option<Name>)]
    name: Option<String>,
    #[schema(value_type = Option<Plan>)]
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

/// `GET /v1/accounts`'s query parameters (documentation: the handler reads them by name).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AccountListQuery {
    /// Only accounts on this plan.
    plan: Option<String>,
    #[param(value_type = Option<NameFilter>, inline)]
    name: Option<String>,
    /// Page size, 1 to 1000 (100 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The previous page's `next_cursor`: the page starts after this account.
    starting_after: Option<String>,
}

/// `GET /v1/accounts`: a page of accounts, filtered by `plan` and `name` (a
/// case-insensitive substring).
#[utoipa::path(
    get,
    operation_id = "list_accounts",
    path = "/v1/accounts",
    tag = "accounts",
    security(("admin_token" = []), ("api_key" = []), ("api_key_header" = [])),
    params(AccountListQuery),
    responses((status = 200, description = "The accounts", body = AccountList), AuthErrors)
)]
pub async fn list(
    State(state): State<AppState>,
    Auth(caller): Auth,
    query: Query,
) -> Result<impl IntoResponse, ApiError> {
    let query = query.only(&["plan", "name", "limit", "starting_after"])?;
    let filter = AccountFilter {
        plan: query.get("plan").map(str::to_owned),
        name: query.get("name").map(str::to_owned),
    };
    let page = state
        .engine
        .account_page(&caller, &filter, &query.page()?)
        .await?;
    Ok(JsonOut(views::page(&page, |a| &a.id, views::account)))
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
