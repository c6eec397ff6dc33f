use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json as JsonOut;
use keygate_engine::manage::{AccountFilter, AccountPatch, NewAccount};
use serde::Deserialize;

use super::extract::{Id, Query};
use super::views;
use super::Auth;
use crate::edge::json::Json;
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    name: String,
    plan: Option<String>,
}

#[derive(Deserialize)]
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

/// `GET /v1/accounts`: a page of accounts, filtered by `plan` and `name` (a
/// case-insensitive substring).
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

pub async fn get(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Id(id): Id,
) -> Result<impl IntoResponse, ApiError> {
    let account = state.engine.get_account(&caller, &id).await?;
    Ok(JsonOut(with_usage(&state, &account).await?))
}

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
