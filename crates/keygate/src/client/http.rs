//! The one request path every verb uses: build the URL, authenticate, send with a timeout,
//! read the JSON answer, and turn anything that is not a success into a [`Failure`] that
//! knows its exit code and how to report itself without leaking the admin token.

use std::error::Error as _;
use std::time::Duration;

use reqwest::header::ACCEPT;
use reqwest::{redirect, Client, Method, StatusCode, Url};
use serde_json::Value;

use super::output::{clean, print};
use super::{Connection, Done};

/// Whole-request timeout (connect, send, read the answer).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a verb did not succeed; each variant maps to one exit code.
#[derive(Debug)]
pub enum Failure {
    /// Exit 2: bad input caught before (or instead of) talking to the server.
    Usage(String),
    /// Exit 3 for a 4xx answer, 4 for anything else (5xx, redirect, unreadable success).
    Server {
        status: StatusCode,
        message: String,
        code: String,
        field: Option<String>,
        request_id: Option<String>,
        hint: Option<&'static str>,
    },
    /// Exit 4: no answer at all (refused, DNS, TLS, timeout).
    Unreachable { message: String, code: &'static str },
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Server { status, .. } if status.is_client_error() => 3,
            Failure::Server { .. } | Failure::Unreachable { .. } => 4,
        }
    }

    /// Writes `error: <message> (<code>)` (and any request id or hint) to stderr.
    pub fn report(&self) {
        match self {
            Failure::Usage(message) => eprintln!("error: {message} (usage_error)"),
            Failure::Unreachable { message, code } => eprintln!("error: {message} ({code})"),
            Failure::Server {
                message,
                code,
                field,
                request_id,
                hint,
                ..
            } => {
                match field {
                    Some(field) => eprintln!("error: {message} ({code}, field: {field})"),
                    None => eprintln!("error: {message} ({code})"),
                }
                if let Some(id) = request_id {
                    eprintln!("request id: {id}");
                }
                if let Some(hint) = hint {
                    eprintln!("hint: {hint}");
                }
            }
        }
    }

    /// A success status whose body is not what the contract promises.
    pub fn bad_response(status: StatusCode, what: &str) -> Failure {
        Failure::Server {
            status: if status.is_client_error() {
                // Never let a malformed answer masquerade as "you asked for something wrong".
                StatusCode::BAD_GATEWAY
            } else {
                status
            },
            message: format!("unexpected answer from the server: {what}"),
            code: "bad_response".to_owned(),
            field: None,
            request_id: None,
            hint: None,
        }
    }
}

/// A server answer: status, the parsed JSON (Null when the body was empty or not JSON) and
/// the raw text (printed verbatim, re-indented, by `--json`).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub raw: String,
    is_json: bool,
}

impl Reply {
    /// Prints the answer: the server's JSON with `--json`, else what `human` renders.
    pub fn emit(
        &self,
        conn: &Connection,
        human: impl FnOnce(&Value) -> Result<String, Failure>,
    ) -> Result<Done, Failure> {
        let text = if conn.json {
            super::output::pretty_json(&self.raw)
        } else {
            human(&self.body)?
        };
        print(&text);
        Ok(Done::Success)
    }

    /// The `data` array of a list answer.
    pub fn data(&self) -> Result<&Vec<Value>, Failure> {
        self.body
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| Failure::bad_response(self.status, "no \"data\" array in the list"))
    }

    fn into_failure(self, token_missing: bool) -> Failure {
        if self.status.is_success() {
            return Failure::bad_response(self.status, "the body is not JSON");
        }
        let text = |name: &str| self.body.get(name).and_then(Value::as_str).map(clean);
        let message = text("error").unwrap_or_else(|| {
            let raw = clean(self.raw.trim());
            let reason = self.status.canonical_reason().unwrap_or("error");
            match raw.chars().count() {
                0 => format!("HTTP {} {reason}", self.status.as_u16()),
                n if n > 200 => format!(
                    "HTTP {}: {}…",
                    self.status.as_u16(),
                    raw.chars().take(200).collect::<String>()
                ),
                _ => format!("HTTP {}: {raw}", self.status.as_u16()),
            }
        });
        let hint = match self.status {
            StatusCode::UNAUTHORIZED if token_missing => {
                Some("no admin token given: set KEYGATE_ADMIN_TOKEN (or --admin-token)")
            }
            _ => None,
        };
        Failure::Server {
            code: text("code").unwrap_or_else(|| format!("http_{}", self.status.as_u16())),
            field: text("field"),
            request_id: text("request_id"),
            hint,
            status: self.status,
            message,
        }
    }
}

/// The admin API at one base URL, with one HTTP client for the whole command.
pub struct Api {
    client: Client,
    base: Url,
    token: Option<String>,
}

impl Api {
    pub fn new(conn: &Connection) -> Result<Api, Failure> {
        let mut base = Url::parse(conn.url.trim())
            .map_err(|e| Failure::Usage(format!("invalid --url / KEYGATE_URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Failure::Usage(
                "--url / KEYGATE_URL must be an http:// or https:// URL".to_owned(),
            ));
        }
        base.set_query(None);
        base.set_fragment(None);
        let client = Client::builder()
            .timeout(TIMEOUT)
            // The admin API never redirects; following one could send the token elsewhere.
            .redirect(redirect::Policy::none())
            .user_agent(concat!("keygate-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::Unreachable {
                message: format!("cannot set up the HTTP client: {e}"),
                code: "client_error",
            })?;
        let token = conn.admin_token.clone().filter(|t| !t.trim().is_empty());
        Ok(Api {
            client,
            base,
            token,
        })
    }

    pub async fn get(&self, path: &[&str], query: &[(&str, &str)]) -> Result<Reply, Failure> {
        self.expect_success(self.call(Method::GET, path, query, None).await?)
    }

    pub async fn post(&self, path: &[&str], body: &Value) -> Result<Reply, Failure> {
        self.expect_success(self.call(Method::POST, path, &[], Some(body)).await?)
    }

    /// A 2xx answer with a JSON body, or the failure the answer describes.
    pub fn expect_success(&self, reply: Reply) -> Result<Reply, Failure> {
        if reply.status.is_success() && reply.is_json {
            Ok(reply)
        } else {
            Err(reply.into_failure(self.token.is_none()))
        }
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub async fn call(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, Failure> {
        let url = self.endpoint(path, query)?;
        let mut request = self
            .client
            .request(method, url)
            .header(ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let raw = response.text().await.map_err(|e| self.transport(e))?;
        let parsed = serde_json::from_str::<Value>(&raw).ok();
        Ok(Reply {
            status,
            is_json: parsed.is_some(),
            body: parsed.unwrap_or(Value::Null),
            raw,
        })
    }

    /// `base` + path segments (each percent-encoded) + query.
    fn endpoint(&self, path: &[&str], query: &[(&str, &str)]) -> Result<Url, Failure> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Failure::Usage("--url cannot be used as a base URL".to_owned()))?
            .pop_if_empty()
            .extend(path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// Describes a request that got no answer, naming the server but never the token.
    fn transport(&self, error: reqwest::Error) -> Failure {
        if error.is_builder() {
            // Typically a token with characters a header cannot carry; don't echo it.
            return Failure::Usage(
                "cannot build the request (check --url and the admin token)".to_owned(),
            );
        }
        let code = if error.is_timeout() {
            "timeout"
        } else if error.is_connect() {
            "unreachable"
        } else {
            "transport_error"
        };
        let mut server = self.base.clone();
        // Credentials in the URL are as secret as the token.
        let _ = server.set_username("");
        let _ = server.set_password(None);
        let error = error.without_url();
        let mut message = format!("cannot reach keygate at {server}: {error}");
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        if error.is_timeout() {
            message.push_str(&format!(" (no answer within {} s)", TIMEOUT.as_secs()));
        }
        Failure::Unreachable { message, code }
    }
}
