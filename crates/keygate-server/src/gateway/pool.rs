//! The gateway's connections to one upstream: HTTP/1.1 keep-alive connections, each
//! carrying one exchange at a time, taken from an idle list (the most recently used first)
//! and put back once the answer has been read to its end. hyper-util's general-purpose
//! client did more per request than the gateway needs (a checkout raced against a lazy
//! connect, pool keys, the target rewritten to origin form, an extensions envelope): 6 % of
//! the gateway's instructions per request.
//!
//! Idle connections time out after a minute, and at most `max_idle` are kept: after a
//! burst, the least recently used beyond that are closed at once.
//!
//! A connection is put back only after a complete answer; one whose answer was cut (client
//! gone, upstream stalled) or that switched protocols is dropped, which closes it. A request
//! that a reused connection refused before writing a byte (the upstream closed it while it
//! sat idle) is sent again on another; one already written is never repeated.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Uri;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use super::proxy::ClientBody;
use super::Upstream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connections to one upstream.
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Upstream,
    connector: HttpsConnector<HttpConnector>,
    /// Oldest at the front; taken from and put back at the back.
    idle: Mutex<VecDeque<Idle>>,
    idle_timeout: Duration,
    /// Most idle connections kept: after a burst, the ones beyond are closed rather than
    /// held open (a socket and a task each) until they time out.
    max_idle: usize,
}

struct Idle {
    sender: SendRequest<ClientBody>,
    since: Instant,
}

/// A connection lent to one exchange; [`Lease::give_back`] once its answer has ended.
/// Dropped instead, the connection is closed.
pub struct Lease {
    sender: SendRequest<ClientBody>,
    pool: Arc<Inner>,
}

impl Lease {
    pub fn give_back(self) {
        // No room kept at all: dropped, the connection is closed.
        if self.pool.max_idle == 0 {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // The idle list is used from the back, so connections idle too long gather at the front.
        while idle
            .front()
            .is_some_and(|c| now.duration_since(c.since) > self.pool.idle_timeout)
        {
            idle.pop_front();
        }
        // Full: the least recently used one goes (dropped, it is closed).
        if idle.len() >= self.pool.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle {
            sender: self.sender,
            since: now,
        });
    }
}

impl Pool {
    pub fn new(
        upstream: Upstream,
        connector: HttpsConnector<HttpConnector>,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                upstream,
                connector,
                idle: Mutex::new(VecDeque::new()),
                idle_timeout,
                max_idle,
            }),
        }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.inner.upstream
    }

    /// Sends `request` (origin-form target, `Host` set) on an idle connection or a new one;
    /// the answer's head and the connection's lease.
    pub async fn send(
        &self,
        mut request: hyper::Request<ClientBody>,
    ) -> Result<(hyper::Response<Incoming>, Lease), BoxError> {
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            // A connection put back at its answer's end may still be finishing that exchange.
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err("upstream connection closed at once".into());
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        sender,
                        pool: self.inner.clone(),
                    };
                    return Ok((response, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: safe to send on another connection.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    fn take_idle(&self) -> Option<SendRequest<ClientBody>> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(connection) = idle.pop_back() {
            if !connection.sender.is_closed()
                && connection.since.elapsed() <= self.inner.idle_timeout
            {
                return Some(connection.sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<ClientBody>, BoxError> {
        let target: Uri = self.inner.upstream.origin.clone();
        let io = tower::ServiceExt::oneshot(self.inner.connector.clone(), target).await?;
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            // With upgrades: a WebSocket answer (`101`) hands the socket to the tunnel.
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}
