//! The CLI's management verbs: a small HTTP client of a running keygate's admin API.
//!
//! `keygate accounts …`, `keygate keys …` and `keygate audit …` talk to the server named by `--url`
//! (`KEYGATE_URL`, default `http://127.0.0.1:8080`) with the operator's admin token
//! (`KEYGATE_ADMIN_TOKEN`; the `--admin-token` flag exists but shows up in `ps`). The admin
//! token is never printed. Output is a human table (or `field: value` lines for one object)
//! by default, or the server's JSON answer, pretty-printed, with `--json`.
//!
//! Secrets: the full key is printed only by `keys create` and `keys rotate`, once, on its own
//! labelled line. `keys verify` reads the key from standard input (first line, trimmed),
//! never from an argument, because arguments leak through `ps` and shell history.
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (`keys verify`: the key is valid) |
//! | 1 | `keys verify` ran and the key was refused (the refusal code is printed) |
//! | 2 | usage error (bad arguments, no key on standard input) |
//! | 3 | the server answered with a 4xx error (`error: <message> (<code>)` on stderr) |
//! | 4 | the server could not be reached, timed out (30 s) or answered 5xx |
//!
//! Lists read one page (`--limit`, server default 100) and say on stderr when more follow;
//! `--all` reads every page.
//!
//! Layout: [`http`] holds the one request/response/error path every verb uses, [`pages`]
//! the walk over a list's pages, [`output`] and [`table`] the rendering, [`parse`] the
//! argument checks, [`accounts`], [`keys`] and [`audit`] the verbs themselves.

mod accounts;
mod audit;
mod http;
mod keys;
mod output;
mod pages;
mod parse;
mod permission_usage;
mod table;

use std::fmt;
use std::process::ExitCode;

use clap::Args;

pub use accounts::AccountsCommand;
pub use audit::AuditCommand;
pub use keys::KeysCommand;

use http::Failure;

/// The exit-code table shown under every management verb's `--help`.
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0  success (verify: the key is valid)
  1  verify ran and the key was refused (the code is printed)
  2  usage error
  3  the server answered with a 4xx error
  4  the server could not be reached, timed out (30 s) or answered 5xx";

/// How to reach the server.
#[derive(Args, Clone)]
pub struct Connection {
    /// Base URL of the keygate admin API.
    #[arg(
        long,
        env = "KEYGATE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Admin token (prefer the environment variable: arguments show up in `ps`).
    #[arg(
        long,
        env = "KEYGATE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl fmt::Debug for Connection {
    // Hand-written so that a debug print can never leak the admin token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("json", &self.json)
            .finish()
    }
}

/// What a verb that did its job reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Done {
    /// Exit 0.
    Success,
    /// Exit 1: `keys verify` got an answer, and the answer is "no".
    Refused,
}

pub async fn run_accounts(conn: &Connection, cmd: AccountsCommand) -> ExitCode {
    finish(accounts::run(conn, cmd).await)
}

pub async fn run_audit(conn: &Connection, cmd: AuditCommand) -> ExitCode {
    finish(audit::run(conn, cmd).await)
}

pub async fn run_keys(conn: &Connection, cmd: KeysCommand) -> ExitCode {
    finish(keys::run(conn, cmd).await)
}

fn finish(result: Result<Done, Failure>) -> ExitCode {
    match result {
        Ok(Done::Success) => ExitCode::SUCCESS,
        Ok(Done::Refused) => ExitCode::from(1),
        Err(failure) => {
            failure.report();
            ExitCode::from(failure.exit_code())
        }
    }
}
