//! Short-lived tokens (`POST /v1/tokens`): issued by a key, verified offline with the JWKS,
//! accepted by forward-auth and `/v1/verify`, and refused once expired, tampered with,
//! meant for another audience, or when their key is revoked or narrowed.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use keygate_engine::tokens::TokenSettings;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn, Answer, TestApp};

const READ_INVOICE: &str = "/api/v1/invoices/42";
const DELETE_INVOICE: &str = "/api/v1/invoices/42";

async fn setup(permissions: Value) -> (TestApp, String, String) {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    let (id, key) = app
        .create_key(&account, json!({ "permissions": permissions }))
        .await;
    (app, id, key)
}

async fn issue(app: &TestApp, key: &str, body: Value) -> Answer {
    app.call(Method::POST, "/v1/tokens", Some(key), Some(body))
        .await
}

async fn new_token(app: &TestApp, key: &str, body: Value) -> String {
    let a = issue(app, key, body).await;
    assert_eq!(a.status.as_u16(), 201, "{}", a.body);
    a.body["token"].as_str().unwrap().to_owned()
}

fn part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn a_token_passes_forward_auth_and_verify_with_its_own_scope() {
    let (app, key_id, key) = setup(json!(["invoices.*", "clients.read"])).await;
    let a = issue(
        &app,
        &key,
        json!({"permissions": ["invoices.read"], "ttl_seconds": 120}),
    )
    .await;
    assert_eq!(a.status.as_u16(), 201, "{}", a.body);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let token = a.body["token"].as_str().unwrap();
    let token_id = a.body["token_id"].as_str().unwrap();
    assert_eq!(a.body["scope"], "invoices.read");

    let header = part(token, 0);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "JWT");
    let claims = part(token, 1);
    assert_eq!(claims["sub"], key_id.as_str());
    assert_eq!(claims["env"], "live");
    assert_eq!(claims["scope"], "invoices.read");
    assert_eq!(claims["jti"], token_id);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        120
    );
    assert!(claims.get("aud").is_none());

    let jwks = app
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(jwks.status.as_u16(), 200);
    let keys = jwks.body["keys"].as_array().unwrap();
    assert!(keys.iter().any(|k| k["kid"] == header["kid"]
        && k["kty"] == "OKP"
        && k["crv"] == "Ed25519"
        && k["alg"] == "EdDSA"
        && k["use"] == "sig"
        && k["x"].as_str().is_some_and(|x| x.len() == 43)));

    let ok = app.forward_auth(Some(token), "GET", READ_INVOICE).await;
    assert_eq!(ok.status.as_u16(), 204, "{}", ok.body);
    assert_eq!(ok.header("x-keygate-key-id"), Some(key_id.as_str()));
    assert_eq!(ok.header("x-keygate-token-id"), Some(token_id));
    assert_eq!(ok.header("x-keygate-permissions"), Some("invoices.read"));

    // The key may delete invoices; the token may not.
    let key_delete = app.forward_auth(Some(&key), "DELETE", DELETE_INVOICE).await;
    assert_eq!(key_delete.status.as_u16(), 204);
    app.forward_auth(Some(token), "DELETE", DELETE_INVOICE)
        .await
        .assert_error(403, "insufficient_permissions");

    let v = app
        .verify(json!({"key": token, "method": "GET", "path": READ_INVOICE}))
        .await;
    assert_eq!(v.body["valid"], true, "{}", v.body);
    assert_eq!(v.body["key_id"], key_id.as_str());
    assert_eq!(v.body["token_id"], token_id);
    assert_eq!(v.body["permissions"], json!(["invoices.read"]));
    assert!(v.body["expires_at"].is_string());
    // A remote cache may keep the verdict, never past the token's end.
    let max_age: u64 = v
        .header("cache-control")
        .and_then(|c| c.strip_prefix("private, max-age="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(max_age <= 120, "{max_age}");
}

#[tokio::test]
async fn asking_for_more_than_the_key_holds_is_403_and_bad_input_400() {
    let (app, _, key) = setup(json!(["invoices.read"])).await;
    issue(&app, &key, json!({"permissions": ["invoices.delete"]}))
        .await
        .assert_error(403, "insufficient_permissions");
    issue(&app, &key, json!({"permissions": ["*"]}))
        .await
        .assert_error(403, "insufficient_permissions");
    issue(&app, &key, json!({"permissions": []}))
        .await
        .assert_error(400, "validation_error");
    issue(&app, &key, json!({"permissions": ["not a permission"]}))
        .await
        .assert_error(400, "validation_error");
    issue(&app, &key, json!({"ttl_seconds": 0}))
        .await
        .assert_error(400, "validation_error");
    issue(&app, &key, json!({"ttl_seconds": -5}))
        .await
        .assert_error(400, "validation_error");
    issue(&app, &key, json!({"audience": " "}))
        .await
        .assert_error(400, "validation_error");
    issue(&app, &key, json!({"lifetime": 5}))
        .await
        .assert_error(400, "validation_error");
    // No key, the admin token, a token: not a key that may trade itself.
    app.call(Method::POST, "/v1/tokens", None, Some(json!({})))
        .await
        .assert_error(401, "missing_credentials");
    let admin = app.admin_token.clone();
    assert_eq!(issue(&app, &admin, json!({})).await.status.as_u16(), 401);
    let token = new_token(&app, &key, json!({})).await;
    issue(&app, &token, json!({}))
        .await
        .assert_error(403, "forbidden");
    // An empty body: everything the key holds, for the longest allowed.
    let a = app.call(Method::POST, "/v1/tokens", Some(&key), None).await;
    assert_eq!(a.status.as_u16(), 201, "{}", a.body);
    let claims = part(a.body["token"].as_str().unwrap(), 1);
    assert_eq!(claims["scope"], "invoices.read");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
}

#[tokio::test]
async fn a_token_never_outlives_its_key() {
    let app = spawn().await;
    let account = app.create_account("Acme", "unlimited").await;
    let (_, key) = app
        .create_key(&account, json!({"scope": "read", "expires_in": 30}))
        .await;
    let token = new_token(&app, &key, json!({"ttl_seconds": 3000})).await;
    let claims = part(&token, 1);
    let life = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!((28..=30).contains(&life), "{life}");
    // The maximum caps what is asked.
    let (_, lasting) = app.create_key(&account, json!({"scope": "read"})).await;
    let token = new_token(&app, &lasting, json!({"ttl_seconds": 1_000_000})).await;
    let claims = part(&token, 1);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
}

#[tokio::test]
async fn expired_tampered_and_foreign_tokens_are_refused() {
    let (app, _, key) = setup(json!(["invoices.read"])).await;
    let short = new_token(&app, &key, json!({"ttl_seconds": 1})).await;
    assert_eq!(
        app.forward_auth(Some(&short), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );

    let good = new_token(&app, &key, json!({})).await;
    // The payload swapped for one claiming more: the signature no longer matches.
    let mut claims = part(&good, 1);
    claims["scope"] = json!("*");
    let pieces: Vec<&str> = good.split('.').collect();
    let widened = format!(
        "{}.{}.{}",
        pieces[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
        pieces[2]
    );
    app.forward_auth(Some(&widened), "GET", READ_INVOICE)
        .await
        .assert_error(401, "invalid_key");
    // One signature bit flipped.
    let mut signature = URL_SAFE_NO_PAD.decode(pieces[2]).unwrap();
    signature[10] ^= 1;
    let flipped = format!(
        "{}.{}.{}",
        pieces[0],
        pieces[1],
        URL_SAFE_NO_PAD.encode(signature)
    );
    app.forward_auth(Some(&flipped), "GET", READ_INVOICE)
        .await
        .assert_error(401, "invalid_key");
    // `alg: none` with no signature.
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"x"}"#),
        pieces[1]
    );
    app.forward_auth(Some(&unsigned), "GET", READ_INVOICE)
        .await
        .assert_error(401, "invalid_key");
    // Made for another service: this deployment expects no audience.
    let foreign = new_token(&app, &key, json!({"audience": "billing"})).await;
    app.forward_auth(Some(&foreign), "GET", READ_INVOICE)
        .await
        .assert_error(401, "invalid_key");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    app.forward_auth(Some(&short), "GET", READ_INVOICE)
        .await
        .assert_error(401, "invalid_key");
    assert_eq!(
        app.forward_auth(Some(&good), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );
}

#[tokio::test]
async fn an_expected_audience_is_required() {
    let app = spawn().await;
    app.engine.configure_tokens(TokenSettings {
        audience: Some("invoices-api".into()),
        ..TokenSettings::default()
    });
    let account = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&account, json!({"scope": "read"})).await;
    let meant = new_token(&app, &key, json!({"audience": "invoices-api"})).await;
    let other = new_token(&app, &key, json!({"audience": "billing"})).await;
    let none = new_token(&app, &key, json!({})).await;
    assert_eq!(
        app.forward_auth(Some(&meant), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );
    for refused in [other, none] {
        app.forward_auth(Some(&refused), "GET", READ_INVOICE)
            .await
            .assert_error(401, "invalid_key");
    }
}

#[tokio::test]
async fn revoking_the_key_refuses_its_tokens() {
    let (app, key_id, key) = setup(json!(["invoices.read"])).await;
    let token = new_token(&app, &key, json!({})).await;
    assert_eq!(
        app.forward_auth(Some(&token), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );
    let revoked = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{key_id}/revoke"),
            Some(json!({})),
        )
        .await;
    assert_eq!(revoked.status.as_u16(), 200, "{}", revoked.body);
    app.forward_auth(Some(&token), "GET", READ_INVOICE)
        .await
        .assert_error(401, "invalid_key");
    let v = app.verify(json!({"key": token})).await;
    assert_eq!(v.body["valid"], false);
}

#[tokio::test]
async fn narrowing_the_key_refuses_tokens_it_no_longer_covers() {
    let (app, key_id, key) = setup(json!(["invoices.*", "clients.read"])).await;
    let wide = new_token(&app, &key, json!({"permissions": ["invoices.*"]})).await;
    let narrow = new_token(&app, &key, json!({"permissions": ["invoices.read"]})).await;
    for t in [&wide, &narrow] {
        assert_eq!(
            app.forward_auth(Some(t), "GET", READ_INVOICE)
                .await
                .status
                .as_u16(),
            204
        );
    }
    let updated = app
        .admin(
            Method::PATCH,
            &format!("/v1/api-keys/{key_id}"),
            Some(json!({"permissions": ["invoices.read"]})),
        )
        .await;
    assert_eq!(updated.status.as_u16(), 200, "{}", updated.body);
    // `invoices.*` is no longer the key's: that token is dead, even for what the key still may.
    app.forward_auth(Some(&wide), "GET", READ_INVOICE)
        .await
        .assert_error(401, "invalid_key");
    assert_eq!(
        app.forward_auth(Some(&narrow), "GET", READ_INVOICE)
            .await
            .status
            .as_u16(),
        204
    );
}

#[tokio::test]
async fn tokens_are_refused_where_not_accepted() {
    let app = spawn().await;
    app.engine.configure_tokens(TokenSettings {
        accept: false,
        ..TokenSettings::default()
    });
    let account = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&account, json!({"scope": "read"})).await;
    let token = new_token(&app, &key, json!({})).await;
    app.forward_auth(Some(&token), "GET", READ_INVOICE)
        .await
        .assert_error(401, "malformed_key");
}

#[tokio::test]
async fn signing_keys_rotate_and_the_old_one_stays_published() {
    let app = spawn().await;
    app.engine.configure_tokens(TokenSettings {
        rotation: Duration::from_secs(1),
        ..TokenSettings::default()
    });
    let account = app.create_account("Acme", "unlimited").await;
    let (_, key) = app.create_key(&account, json!({"scope": "read"})).await;
    let first = new_token(&app, &key, json!({})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = new_token(&app, &key, json!({})).await;
    let (old, new) = (
        part(&first, 0)["kid"].clone(),
        part(&second, 0)["kid"].clone(),
    );
    assert_ne!(old, new);
    let jwks = app
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    let kids: Vec<&Value> = jwks.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert_eq!(kids, vec![&old, &new]);
    for t in [&first, &second] {
        assert_eq!(
            app.forward_auth(Some(t), "GET", READ_INVOICE)
                .await
                .status
                .as_u16(),
            204
        );
    }
    // Stored sealed: the private half is not the public one, nor the raw seed's length.
    let stored = app.store.signing_keys().await.unwrap();
    assert_eq!(stored.len(), 2);
    for record in stored {
        assert_ne!(record.private_key, record.public_key);
        assert!(URL_SAFE_NO_PAD.decode(&record.private_key).unwrap().len() > 32 + 12);
    }
}
