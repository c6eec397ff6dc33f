//! keygate as a [tower] layer: a Rust service checks its callers' API keys in process, against
//! the database a keygate server manages, with no second process on the request path, or
//! by asking a keygate server with a local cache (remote mode).
//!
//! **Embedded mode** ([`KeygateLayer::embedded`]): the layer opens the same database (an
//! SQLite file or a PostgreSQL URL, plus the pepper)
//! and judges every request with keygate's own engine and cache, through the same
//! authorize path as the server's forward-auth: the same outcomes, status codes and JSON
//! errors, the same route table deciding which permission a request needs. Keys are
//! issued, rotated and revoked on the keygate server (admin API, CLI, dashboard); the
//! layer hears about changes through the database: PostgreSQL's notifications (what
//! keygate nodes use between themselves) or SQLite's change table, polled every 250 ms.
//!
//! An allowed request reaches the inner service with an [`Identity`] in its extensions; a
//! refused one is answered by the layer (401, 403, 429, 503 with keygate's JSON error body).
//! Usage (last used, quotas, hourly counts) is counted in memory and written in batches,
//! like the server does; call [`KeygateLayer::shutdown`] when the service stops to write
//! what is still pending.
//!
//! On a cache hit the request is judged inside [`KeygateService`]'s `call`, with no future
//! of its own and no allocation but the [`Identity`] put in the request's extensions; the
//! service's [`ResponseFuture`] is the inner service's future. A request whose key must be
//! read from the database (or, remote, asked of the server) waits in a boxed future.
//!
//! **Remote mode** ([`KeygateLayer::remote`]): when the service cannot open the database,
//! the layer asks a keygate server (`POST /v1/verify` with its verify token) and keeps the
//! valid verdicts the server lets it reuse (keys without rate limit or quota, which the
//! server need not count), kept by an HMAC of the key, never the key. The server's change
//! stream (`GET /v1/key-changes`) drops them as keys change; while the stream is down they
//! are kept for a second at most. The [`Identity`] of a remote verdict holds what
//! `/v1/verify` says: key id, account id, environment, permissions and meta.
//!
//! # Examples
//!
//! ```no_run
//! use axum::{routing::get, Extension, Router};
//! use keygate_tower::{Identity, KeygateLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The database and pepper of the keygate server that issues the keys.
//! let pepper = std::env::var("KEYGATE_PEPPER")?;
//! let keygate = KeygateLayer::embedded("sqlite://keygate.db", &pepper)
//!     .open()
//!     .await?;
//!
//! let app = Router::new()
//!     .route(
//!         "/api/v1/invoices",
//!         get(|Extension(caller): Extension<Identity>| async move {
//!             format!("invoices of {}", caller.account_id())
//!         }),
//!     )
//!     .layer(keygate.clone());
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! keygate.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod embedded;
mod layer;
mod remote;

pub use embedded::{Embedded, OpenError};
pub use keygate_edge::Identity;
pub use layer::{Caller, KeygateLayer, KeygateService, ResponseFuture};
pub use remote::Remote;
