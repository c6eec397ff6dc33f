//! keygate's shared HTTP edge kit, used by every entry point that judges a request: the
//! admin listener's `/v1/verify`, forward-auth and key info, the gateway, the dashboard's
//! sign-in, and the `keygate-tower` layer.
//!
//! - [`authorize`]: the one authorize path. A request (method, path, headers or a key,
//!   client address) in, an [`Authorization`] out: the verified identity to pass on, or the
//!   refusal with its status, code, headers and body. [`authorize_now`] is the same
//!   judgement without a future when the engine answers from memory.
//! - [`ApiError`]: the one mapping from a failure to an HTTP answer. JSON bodies, the
//!   dashboard's HTML pages and the connection layer's own answers (414, 431, 408…) are all
//!   rendered from [`ApiError::answer`].
//! - [`credentials`]: where a request carries its key, and where it must not (the URL).
//! - [`client_ip`]: the client address behind trusted proxies.
//! - [`request_id`]: the id every answer carries.
//!
//! Invariants: nothing here logs a credential or a query string; the edge never talks to
//! the store except through the engine.

pub mod authorize;
pub mod client_ip;
pub mod credentials;
pub mod error;
pub mod request_id;

pub use authorize::{
    authenticate, authorize, authorize_now, identity_headers, rate_limit_headers, Authorization,
    Credential, Identity, Target,
};
pub use error::{ApiError, AuthFailed, EdgeOutcome, ErrorAnswer};
