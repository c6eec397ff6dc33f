//! The OpenAPI document served at `/openapi.json`, written by hand from the routes.

use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

fn op(summary: &str, tag: &str, ok: &str) -> Value {
    json!({
        "summary": summary,
        "tags": [tag],
        "security": [{"bearer": []}],
        "responses": {
            ok: {"description": "Success"},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
            "429": {"$ref": "#/components/responses/Error"},
            "503": {"$ref": "#/components/responses/Error"}
        }
    })
}

pub async fn document() -> impl IntoResponse {
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "keygate", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Self-hosted API keys: issue, verify, scope, rotate, revoke."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema": {
                "type": "object", "required": ["error", "code", "request_id"],
                "properties": {"error": {"type": "string"}, "code": {"type": "string"},
                               "request_id": {"type": "string"}, "field": {"type": "string"}}}}}}}
        },
        "paths": {
            "/v1/accounts": {"get": op("List accounts, a page at a time (limit, starting_after; plan, name)", "accounts", "200"), "post": op("Create an account", "accounts", "201")},
            "/v1/accounts/{id}": {"get": op("Read an account", "accounts", "200"), "patch": op("Change an account's name or plan", "accounts", "200")},
            "/v1/api-keys": {"get": op("List keys, a page at a time (limit, starting_after; account_id, status, environment, name), never the secret", "api-keys", "200"), "post": op("Create a key (the secret is in this answer only)", "api-keys", "201")},
            "/v1/api-keys/{id}": {"get": op("Read a key", "api-keys", "200"), "patch": op("Update a key", "api-keys", "200")},
            "/v1/api-keys/{id}/revoke": {"post": op("Revoke a key, permanently", "api-keys", "200")},
            "/v1/api-keys/{id}/rotate": {"post": op("Replace a key (optional grace period)", "api-keys", "201")},
            "/v1/api-keys/{id}/usage": {"get": op("A key's usage", "api-keys", "200")},
            "/v1/audit-log": {"get": op("Lifecycle events", "audit", "200")},
            "/v1/api-key-info": {"get": op("The calling key's own record", "verification", "200")},
            "/v1/verify": {"post": op("Verify a key for a service", "verification", "200")},
            "/v1/auth": {"get": op("Forward-auth for proxies", "verification", "204")},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Up"}}}},
            "/readyz": {"get": {"summary": "Readiness (store reachable)", "responses": {"200": {"description": "Ready"}}}}
        }
    }))
}
