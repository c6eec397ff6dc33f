//! A small invoicing API kept in memory: the kind of existing API keygate's gateway sits
//! in front of. Used by the gateway and nginx tests, the README demo and the benchmark.
//!
//! - `/api/v1/{invoices,clients,quotations,products,webhooks}`: list (`GET`), create
//!   (`POST`), and per id get (`GET`), update (`PUT`/`PATCH`, fields merged) and delete
//!   (`DELETE`). `POST /api/v1/invoices/{id}/send` marks an invoice sent.
//! - `ANY /api/v1/echo[/…]`: answers with the method, path, query and every request header
//!   it received (to see what a proxy forwards).
//! - `POST /api/v1/uploads` counts the body's bytes without keeping them;
//!   `GET /api/v1/downloads/{bytes}` streams that many bytes (large-body tests).
//!
//! It has no authentication of its own: that is the gateway's job. Every answer carries
//! `X-Upstream: <name>` so a test can tell a live upstream from a sandbox one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};

/// The resources the API serves.
pub const RESOURCES: &[&str] = &["invoices", "clients", "quotations", "products", "webhooks"];

/// Largest download `GET /api/v1/downloads/{bytes}` serves (1 GiB).
const MAX_DOWNLOAD: u64 = 1 << 30;
/// Largest JSON body accepted by create and update.
const MAX_JSON: usize = 256 * 1024;

#[derive(Default)]
struct Data {
    next_id: u64,
    tables: BTreeMap<&'static str, BTreeMap<u64, Map<String, Value>>>,
}

#[derive(Clone)]
struct AppState {
    name: HeaderValue,
    data: Arc<Mutex<Data>>,
}

impl AppState {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The API, named `invoices-api` in its `X-Upstream` header.
pub fn app() -> Router {
    app_named("invoices-api")
}

/// The API with `name` in every answer's `X-Upstream` header (e.g. `live`, `sandbox`).
pub fn app_named(name: &str) -> Router {
    let state = AppState {
        name: HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("invoices-api")),
        data: Arc::new(Mutex::new(seed())),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/echo", any(echo))
        .route("/api/v1/echo/{*rest}", any(echo))
        .route("/api/v1/uploads", post(upload))
        .route("/api/v1/downloads/{bytes}", get(download))
        .route("/api/v1/invoices/{id}/send", post(send_invoice))
        .route("/api/v1/{resource}", get(list).post(create))
        .route(
            "/api/v1/{resource}/{id}",
            get(read).put(update).patch(update).delete(remove),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "No such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            name_answers,
        ))
        .with_state(state)
}

/// Serves the API named `name` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, name: &str) -> std::io::Result<()> {
    axum::serve(listener, app_named(name)).await
}

fn seed() -> Data {
    let mut data = Data::default();
    let rows: &[(&'static str, Value)] = &[
        (
            "clients",
            json!({"name": "Globex Corporation", "email": "billing@globex.example"}),
        ),
        (
            "clients",
            json!({"name": "Initech", "email": "ap@initech.example"}),
        ),
        (
            "products",
            json!({"name": "Consulting hour", "price": "120.00"}),
        ),
        (
            "invoices",
            json!({"number": "INV-0001", "client_id": 1, "total": "1200.00", "status": "draft"}),
        ),
        (
            "invoices",
            json!({"number": "INV-0002", "client_id": 2, "total": "480.00", "status": "sent"}),
        ),
        (
            "quotations",
            json!({"number": "Q-0001", "client_id": 1, "total": "3600.00"}),
        ),
    ];
    for name in RESOURCES {
        data.tables.insert(name, BTreeMap::new());
    }
    for (table, row) in rows {
        if let Value::Object(fields) = row.clone() {
            insert(&mut data, table, fields);
        }
    }
    data
}

fn insert(data: &mut Data, table: &str, mut fields: Map<String, Value>) -> Option<Value> {
    data.next_id += 1;
    let id = data.next_id;
    fields.insert("id".into(), json!(id));
    let rows = data.tables.get_mut(table)?;
    rows.insert(id, fields.clone());
    Some(Value::Object(fields))
}

async fn name_answers(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert("x-upstream", state.name.clone());
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn table(resource: &str) -> Option<&'static str> {
    RESOURCES.iter().copied().find(|r| *r == resource)
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Not found")
}

async fn list(State(state): State<AppState>, Path(resource): Path<String>) -> Response {
    let Some(table) = table(&resource) else {
        return not_found();
    };
    let data = state.data();
    let rows: Vec<&Map<String, Value>> = data
        .tables
        .get(table)
        .map(|t| t.values().collect())
        .unwrap_or_default();
    Json(json!({ "data": rows })).into_response()
}

async fn read(
    State(state): State<AppState>,
    Path((resource, id)): Path<(String, u64)>,
) -> Response {
    let Some(table) = table(&resource) else {
        return not_found();
    };
    match state.data().tables.get(table).and_then(|t| t.get(&id)) {
        Some(row) => Json(json!({ "data": row })).into_response(),
        None => not_found(),
    }
}

/// A JSON object from the request body, or the error answer.
async fn object_body(body: Body) -> Result<Map<String, Value>, Response> {
    let bytes = axum::body::to_bytes(body, MAX_JSON)
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, "Body too large"))?;
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(fields)) => Ok(fields),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "The body must be a JSON object",
        )),
    }
}

async fn create(
    State(state): State<AppState>,
    Path(resource): Path<String>,
    body: Body,
) -> Response {
    let Some(table) = table(&resource) else {
        return not_found();
    };
    let fields = match object_body(body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match insert(&mut state.data(), table, fields) {
        Some(row) => (StatusCode::CREATED, Json(json!({ "data": row }))).into_response(),
        None => not_found(),
    }
}

async fn update(
    State(state): State<AppState>,
    Path((resource, id)): Path<(String, u64)>,
    body: Body,
) -> Response {
    let Some(table) = table(&resource) else {
        return not_found();
    };
    let fields = match object_body(body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut data = state.data();
    let Some(row) = data.tables.get_mut(table).and_then(|t| t.get_mut(&id)) else {
        return not_found();
    };
    for (k, v) in fields {
        if k != "id" {
            row.insert(k, v);
        }
    }
    Json(json!({ "data": row })).into_response()
}

async fn remove(
    State(state): State<AppState>,
    Path((resource, id)): Path<(String, u64)>,
) -> Response {
    let Some(table) = table(&resource) else {
        return not_found();
    };
    match state
        .data()
        .tables
        .get_mut(table)
        .and_then(|t| t.remove(&id))
    {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => not_found(),
    }
}

async fn send_invoice(State(state): State<AppState>, Path(id): Path<u64>) -> Response {
    let mut data = state.data();
    let Some(row) = data.tables.get_mut("invoices").and_then(|t| t.get_mut(&id)) else {
        return not_found();
    };
    row.insert("status".into(), json!("sent"));
    Json(json!({ "data": row })).into_response()
}

/// What this upstream received: method, path, query, every header (in order, repeated
/// names kept) and the body's length.
async fn echo(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers: Vec<[String; 2]> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            [
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ]
        })
        .collect();
    let body_bytes = count_bytes(body).await;
    Json(json!({
        "upstream": state.name.to_str().unwrap_or(""),
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
    }))
    .into_response()
}

/// Reads a body to its end, keeping only its length. `None` if the body broke off.
async fn count_bytes(mut body: Body) -> Option<u64> {
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    total += data.len() as u64;
                }
            }
            Err(_) => return None,
        }
    }
    Some(total)
}

async fn upload(body: Body) -> Response {
    match count_bytes(body).await {
        Some(n) => Json(json!({ "bytes": n })).into_response(),
        None => error(StatusCode::BAD_REQUEST, "The body broke off"),
    }
}

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

async fn download(Path(bytes): Path<u64>) -> Response {
    if bytes > MAX_DOWNLOAD {
        return error(StatusCode::BAD_REQUEST, "At most 1 GiB");
    }
    let chunk = CHUNK.len() as u64;
    let chunks = bytes.div_ceil(chunk);
    let stream = futures_util::stream::iter((0..chunks).map(move |i| {
        let n = (bytes - i * chunk).min(chunk) as usize;
        Ok::<_, Infallible>(Bytes::from_static(&CHUNK[..n]))
    }));
    let mut response = Body::from_stream(stream).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}
