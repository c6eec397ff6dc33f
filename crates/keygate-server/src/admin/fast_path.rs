//! The verification endpoints in front of the router. Forward-auth (`/v1/auth`,
//! `/v1/auth/…`) and `POST /v1/verify` are most of the traffic a keygate node sees; they
//! skip the router's matching and its per-request service clones and go straight to their
//! handlers, inside the same request context (`edge::middleware::in_context`) as every
//! other request. Everything else goes to the router unchanged.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::FutureExt;

use super::verify;
use crate::edge::middleware::in_context;
use crate::{ApiError, AppState};

/// The admin listener's service: the fast path, then the router.
#[derive(Clone)]
pub struct FastPath {
    state: AppState,
    router: Router,
}

impl FastPath {
    pub fn new(state: AppState, router: Router) -> FastPath {
        FastPath { state, router }
    }
}

/// Which handler answers `request` without the router, if any.
fn route(request: &Request) -> Option<Fast> {
    let path = request.uri().path();
    if path == "/v1/auth" || path.starts_with("/v1/auth/") {
        return Some(Fast::ForwardAuth);
    }
    (path == "/v1/verify" && request.method() == Method::POST).then_some(Fast::Verify)
}

enum Fast {
    ForwardAuth,
    Verify,
}

impl tower::Service<Request> for FastPath {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(fast) = route(&request) else {
            return Box::pin(tower::ServiceExt::oneshot(self.router.clone(), request));
        };
        let state = self.state.clone();
        Box::pin(async move {
            let answer = in_context(&state, request, |request| async {
                let handler = async {
                    match fast {
                        Fast::ForwardAuth => {
                            verify::forward_auth(State(state.clone()), request).await
                        }
                        // The router's body limit, which this path does not pass through.
                        Fast::Verify => {
                            let limit = DefaultBodyLimit::max(state.http.body_limit);
                            verify::verify
                                .layer(limit)
                                .call(request, state.clone())
                                .await
                        }
                    }
                };
                // As the router's CatchPanicLayer: a bug answers 500, the connection lives.
                AssertUnwindSafe(handler)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| ApiError::Internal.into_response())
            })
            .await;
            Ok(answer)
        })
    }
}
