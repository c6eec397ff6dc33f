//! Short-lived tokens: `POST /v1/tokens` (a key trades itself for a signed token with a
//! narrower scope and a short life) and `GET /.well-known/jwks.json` (the public keys
//! that verify them, for services that check tokens offline).

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json as JsonOut;
use keygate_edge::authorize::{authorize, AuthorizeRequest, Credential, Target};
use keygate_edge::Authorization;
use keygate_engine::tokens::{looks_like_token, TokenRequest};
use keygate_engine::Error;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::openapi::{AuthErrors, BodyErrors, PermissionGrant, StoreErrors, ThrottleErrors};
use super::views;
use crate::edge::json::OptionalJson;
use crate::edge::request_ip;
use crate::{ApiError, AppState};

/// What the token may do and for how long (an empty body: everything the key may, for as
/// long as allowed).
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// The token's scope: permissions the key holds (all of them when left out). Asking
    /// for one the key does not hold is `403 insufficient_permissions`.
    #[schema(value_type = Option<Vec<PermissionGrant>>, min_items = 1, max_items = 256)]
    permissions: Option<Vec<String>>,
    /// Seconds the token lives; capped at `token_max_ttl_seconds` and at the key's own end.
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    ttl_seconds: Option<i64>,
    /// The `aud` claim: the service the token is meant for.
    #[schema(min_length = 1, max_length = 255)]
    audience: Option<String>,
}

/// A new token.
#[derive(Serialize, ToSchema)]
pub struct TokenAnswer {
    /// The token: a JWT signed with EdDSA (Ed25519), verifiable with `/.well-known/jwks.json`.
    token: String,
    /// When it stops working (RFC 3339).
    #[schema(format = DateTime)]
    expires_at: String,
    /// Its `jti`, also sent as `X-Keygate-Token-Id` wherever it is accepted.
    token_id: String,
    /// Its scope, space-separated (the `scope` claim).
    scope: String,
}

/// A JSON Web Key Set.
#[derive(Serialize, ToSchema)]
pub struct JwkSet {
    keys: Vec<JwkView>,
}

/// One Ed25519 public key (RFC 8037).
#[derive(Serialize, ToSchema)]
pub struct JwkView {
    /// `OKP`
    kty: String,
    /// `Ed25519`
    crv: String,
    /// The public key, base64url.
    x: String,
    kid: String,
    /// `sig`
    #[serde(rename = "use")]
    use_: String,
    /// `EdDSA`
    alg: String,
}

/// Trade the calling key for a short-lived token. The key authenticates itself (a token
/// cannot ask for another token).
#[utoipa::path(
    post,
    operation_id = "create_token",
    path = "/v1/tokens",
    tag = "tokens",
    security(("api_key" = []), ("api_key_header" = [])),
    request_body(content = Option<CreateToken>, description = "Optional: what the token may do and for how long"),
    responses((status = 201, description = "The token", body = TokenAnswer), AuthErrors, BodyErrors)
)]
pub async fn create(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let credential = keygate_edge::credentials::key_from_headers(&parts.headers)?;
    if credential.is_some_and(looks_like_token) {
        return Err(Error::Forbidden(
            "a token cannot be traded for another token; use the key".into(),
        )
        .into());
    }
    let client_ip = request_ip(&parts, &state);
    let authorization = authorize(
        &state.engine,
        &AuthorizeRequest {
            credential: Credential::Headers(&parts.headers),
            target: Target::AnyPermission,
            client_ip,
        },
    )
    .await;
    let identity = match authorization {
        Authorization::Allowed(identity) => identity,
        Authorization::Refused { error, .. } => return Err(error),
    };
    let OptionalJson(body) =
        OptionalJson::<CreateToken>::from_request(Request::from_parts(parts, body), &state).await?;
    let issued = state
        .engine
        .issue_token(
            &identity.key,
            &TokenRequest {
                permissions: body.permissions,
                // Below 1 is refused by the engine (as 0).
                ttl_seconds: body.ttl_seconds.map(|t| u64::try_from(t).unwrap_or(0)),
                audience: body.audience,
            },
        )
        .await?;
    let answer = TokenAnswer {
        expires_at: views::time(issued.claims.exp.saturating_mul(1000)),
        token_id: issued.claims.jti,
        scope: issued.claims.scope,
        token: issued.token,
    };
    let mut response = (StatusCode::CREATED, JsonOut(answer)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The public keys that verify keygate's tokens: the current signing key, and older ones
/// until the tokens they signed have expired. No authentication.
#[utoipa::path(
    get,
    operation_id = "get_jwks",
    path = "/.well-known/jwks.json",
    tag = "tokens",
    responses((status = 200, description = "The JSON Web Key Set", body = JwkSet), ThrottleErrors, StoreErrors)
)]
pub async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let keys = state
        .engine
        .jwks()
        .await?
        .into_iter()
        .map(|k| JwkView {
            kty: k.kty.into(),
            crv: k.crv.into(),
            x: k.x,
            kid: k.kid,
            use_: k.use_.into(),
            alg: k.alg.into(),
        })
        .collect();
    let mut response = JsonOut(JwkSet { keys }).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(response)
}
