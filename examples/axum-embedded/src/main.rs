//! A small invoices API whose callers are checked by keygate, in process.
//!
//! It accepts the keys of the keygate server that shares its database:
//! `KEYGATE_DATABASE_URL` and `KEYGATE_PEPPER` take the same values as that server's.
//! It listens on `LISTEN` (default `127.0.0.1:3000`).
//!
//! - `GET /api/v1/invoices` needs `invoices.read`, `POST /api/v1/invoices` needs
//!   `invoices.create` (from the method and path, as keygate's forward-auth decides);
//! - `GET /whoami` takes any valid key and answers its identity as JSON.

use std::net::SocketAddr;

use axum::routing::get;
use axum::{Json, Router};
use keygate_tower::{Caller, KeygateLayer};
use serde_json::{json, Value};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let database_url = std::env::var("KEYGATE_DATABASE_URL")
        .map_err(|_| "set KEYGATE_DATABASE_URL to the keygate server's database")?;
    let pepper = std::env::var("KEYGATE_PEPPER")
        .map_err(|_| "set KEYGATE_PEPPER to the keygate server's pepper")?;
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());

    let keygate = KeygateLayer::embedded(&database_url, &pepper)
        .open()
        .await?;
    let app = Router::new()
        .route("/api/v1/invoices", get(list_invoices).post(create_invoice))
        .layer(keygate.clone())
        .merge(Router::new().route("/whoami", get(whoami).layer(keygate.any_key())));

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("axum-embedded listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    keygate.shutdown().await;
    Ok(())
}

async fn list_invoices(Caller(caller): Caller) -> Json<Value> {
    Json(json!({"account_id": caller.account_id(), "invoices": []}))
}

async fn create_invoice(Caller(caller): Caller) -> (axum::http::StatusCode, Json<Value>) {
    (
        axum::http::StatusCode::CREATED,
        Json(json!({"account_id": caller.account_id(), "id": "inv_1"})),
    )
}

async fn whoami(Caller(caller): Caller) -> Json<Value> {
    Json(json!({
        "key_id": caller.key_id(),
        "account_id": caller.account_id(),
        "environment": caller.environment().as_str(),
        "permissions": caller.permissions(),
    }))
}
