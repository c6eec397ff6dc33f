//! `keygate keys create|list|get|update|usage|permission-usage|revoke|rotate|verify`.

use std::io::{BufRead, IsTerminal, Read};

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::http::{Api, Failure};
use super::output::{fields, short_time, text};
use super::pages::{self, PageArgs, Paging};
use super::parse::{parse_id, parse_meta, parse_rate, parse_time};
use super::table::Table;
use super::{Connection, Done, EXIT_CODES};

/// Field order for one key object.
const KEY_FIELDS: &[&str] = &[
    "id",
    "account_id",
    "name",
    "display_prefix",
    "environment",
    "status",
    "permissions",
    "ip_allowlist",
    "created_at",
    "last_used_at",
    "expires_at",
    "revoked_at",
    "rate_limit",
    "quota",
    "meta",
];

/// Field order for a verification answer.
const VERIFY_FIELDS: &[&str] = &[
    "valid",
    "code",
    "error",
    "key_id",
    "account_id",
    "environment",
    "permissions",
];

const VERIFY_HELP: &str = "\
The key is read from standard input (first line), never from an argument, because
arguments leak through `ps` and shell history:
  keygate keys verify --permission invoices.read < key.txt

Exit codes:
  0  the key is valid
  1  the key was refused (the code is printed, e.g. invalid_key)
  2  usage error (e.g. nothing on standard input)
  3  the server answered with a 4xx error
  4  the server could not be reached, timed out (30 s) or answered 5xx";

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once and never again.
    #[command(after_help = EXIT_CODES)]
    Create(CreateArgs),
    /// List keys (display prefixes only, never secrets), oldest first, a page at a time.
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// Show one key.
    #[command(after_help = EXIT_CODES)]
    Get {
        #[arg(value_parser = parse_id)]
        id: String,
    },
    /// Change a key: name, permissions, allowed addresses, expiry, rate limit, quota.
    #[command(after_help = EXIT_CODES)]
    Update(UpdateArgs),
    /// A key's usage: counts by outcome per hour or day, last use, recent addresses.
    #[command(after_help = EXIT_CODES)]
    Usage {
        #[arg(value_parser = parse_id)]
        id: String,
        /// Start of the period (RFC 3339; server default: 24 hours or 30 days ago).
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        from: Option<String>,
        /// End of the period (RFC 3339; default: now).
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        to: Option<String>,
        /// Bucket size (server default: hour).
        #[arg(long, value_enum)]
        granularity: Option<Granularity>,
    },
    /// Which permissions a key's allowed requests needed over the last days, its unused
    /// grants, and the narrowest permission list that would have allowed them all.
    #[command(after_help = EXIT_CODES)]
    PermissionUsage {
        #[arg(value_parser = parse_id)]
        id: String,
        /// Days to look back, today included (server default: 30; at most the retention).
        #[arg(long, value_name = "N")]
        days: Option<u32>,
    },
    /// Revoke a key, immediately and permanently.
    #[command(after_help = EXIT_CODES)]
    Revoke {
        #[arg(value_parser = parse_id)]
        id: String,
    },
    /// Replace a key by a new one with the same settings; the new secret is printed once.
    #[command(after_help = EXIT_CODES)]
    Rotate {
        #[arg(value_parser = parse_id)]
        id: String,
        /// Keep the old key working this many seconds (default: revoke it now).
        #[arg(long, value_name = "SECONDS")]
        grace_period: Option<u64>,
        /// Revoke the old key earlier, once unused this many seconds after the new key's
        /// first use (needs --grace-period, at most as long).
        #[arg(long, value_name = "SECONDS")]
        retire_when_idle: Option<u64>,
    },
    /// Check a key (read from standard input) as a protected API would.
    #[command(after_help = VERIFY_HELP)]
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Account that owns the key.
    #[arg(long, value_name = "ACCOUNT_ID", value_parser = parse_id)]
    account: String,
    /// Name of the key (what it is for).
    #[arg(long)]
    name: String,
    /// Environment (server default: live).
    #[arg(long, value_enum)]
    env: Option<Env>,
    /// Preset permission set.
    #[arg(long, value_enum, conflicts_with = "permissions")]
    scope: Option<Scope>,
    /// A permission such as invoices.read or invoices.* (repeatable).
    #[arg(long = "permission", value_name = "PERMISSION")]
    permissions: Vec<String>,
    /// Allowed client address or CIDR (repeatable; none = any address).
    #[arg(long = "ip", value_name = "ADDR_OR_CIDR")]
    ips: Vec<String>,
    /// Expire the key this many seconds from now.
    #[arg(long, value_name = "SECONDS", conflicts_with = "expires_at",
          value_parser = clap::value_parser!(u64).range(1..))]
    expires_in: Option<u64>,
    /// Expire the key at this time (RFC 3339, e.g. 2030-01-31T00:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    expires_at: Option<String>,
    /// Rate limit as REQUESTS/SECONDS, e.g. 100/60.
    #[arg(long, value_name = "REQUESTS/SECONDS", value_parser = parse_rate)]
    rate_limit: Option<(u64, u64)>,
    /// Usage quota: total requests the key may make.
    #[arg(long, value_name = "N")]
    quota: Option<u64>,
    /// Metadata entry (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this account's keys.
    #[arg(long, value_name = "ACCOUNT_ID", value_parser = parse_id)]
    account: Option<String>,
    /// Only keys with this status.
    #[arg(long, value_enum)]
    status: Option<Status>,
    /// Only keys of this environment.
    #[arg(long, value_enum)]
    env: Option<Env>,
    /// Only keys whose name contains this (case-insensitive).
    #[arg(long)]
    name: Option<String>,
    /// Start after this key (the `next_cursor` of a previous page).
    #[arg(long, value_name = "KEY_ID", value_parser = parse_id)]
    starting_after: Option<String>,
    #[command(flatten)]
    pages: PageArgs,
}

/// The fields of `PATCH /v1/api-keys/{id}`; what is not given stays as it is.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[arg(value_parser = parse_id)]
    id: String,
    /// New name.
    #[arg(long)]
    name: Option<String>,
    /// Replace the permissions (comma-separated or repeated), e.g. invoices.read,orders.*.
    #[arg(long = "permissions", visible_alias = "permission", value_name = "PERMISSION",
          value_delimiter = ',', num_args = 1.., conflicts_with = "scope")]
    permissions: Option<Vec<String>>,
    /// Replace the permissions by a preset set.
    #[arg(long, value_enum)]
    scope: Option<Scope>,
    /// Replace the allowed client addresses or CIDRs (comma-separated or repeated).
    #[arg(long = "allowed-ips", visible_alias = "ip", value_name = "ADDR_OR_CIDR",
          value_delimiter = ',', num_args = 1.., conflicts_with = "any_ip")]
    allowed_ips: Option<Vec<String>>,
    /// Clear the allowlist: any address may use the key.
    #[arg(long)]
    any_ip: bool,
    /// Expire the key at this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time,
          conflicts_with_all = ["expires_in", "no_expiry"])]
    expires_at: Option<String>,
    /// Expire the key this many seconds from now.
    #[arg(long, value_name = "SECONDS", conflicts_with = "no_expiry",
          value_parser = clap::value_parser!(u64).range(1..))]
    expires_in: Option<u64>,
    /// Remove the expiry.
    #[arg(long)]
    no_expiry: bool,
    /// Rate limit as REQUESTS/SECONDS, e.g. 100/60.
    #[arg(long, value_name = "REQUESTS/SECONDS", value_parser = parse_rate,
          conflicts_with = "no_rate_limit")]
    rate_limit: Option<(u64, u64)>,
    /// Remove the rate limit.
    #[arg(long)]
    no_rate_limit: bool,
    /// Usage quota: total requests the key may make (starts counting afresh).
    #[arg(long, value_name = "N", conflicts_with = "no_quota")]
    quota: Option<u64>,
    /// Remove the quota.
    #[arg(long)]
    no_quota: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Permission the request needs, e.g. invoices.read.
    #[arg(long, conflicts_with_all = ["method", "path"])]
    permission: Option<String>,
    /// HTTP method of the request to check (with --path).
    #[arg(long, requires = "path")]
    method: Option<String>,
    /// URL path of the request to check, e.g. /api/v1/invoices/42 (method default: GET).
    #[arg(long)]
    path: Option<String>,
    /// Client IP address to check against the key's allowlist.
    #[arg(long)]
    ip: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Env {
    Live,
    Test,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Scope {
    All,
    Read,
    Write,
    Webhooks,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Granularity {
    Hour,
    Day,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Status {
    Active,
    Revoked,
    Expired,
}

/// The name clap shows for a value, which is also the name the API uses.
fn wire<T: ValueEnum>(value: T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

pub async fn run(conn: &Connection, cmd: KeysCommand) -> Result<Done, Failure> {
    // Read the key before anything else, so a usage error needs no server.
    let verify_key = match &cmd {
        KeysCommand::Verify(_) => Some(read_key()?),
        _ => None,
    };
    let api = Api::new(conn)?;
    match cmd {
        KeysCommand::Create(args) => {
            let reply = api.post(&["v1", "api-keys"], &args.body()).await?;
            reply.emit(conn, |key| with_secret(key, fields(key, KEY_FIELDS, &[])))
        }
        KeysCommand::List(args) => {
            let filters = [
                ("account_id", args.account),
                ("status", args.status.map(wire)),
                ("environment", args.env.map(wire)),
                ("name", args.name),
            ];
            let query: Vec<(&str, String)> = filters
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?)))
                .collect();
            let paging = Paging::by_id("keys");
            let listing = pages::fetch(
                &api,
                &["v1", "api-keys"],
                &query,
                &paging,
                &args.pages,
                args.starting_after,
            )
            .await?;
            listing.emit(conn, &paging, key_table)
        }
        KeysCommand::Update(args) => {
            let body = args.body()?;
            let reply = api
                .call(
                    Method::PATCH,
                    &["v1", "api-keys", &args.id],
                    &[],
                    Some(&body),
                )
                .await?;
            let reply = api.expect_success(reply)?;
            reply.emit(conn, |key| Ok(fields(key, KEY_FIELDS, &[])))
        }
        KeysCommand::Usage {
            id,
            from,
            to,
            granularity,
        } => {
            let options = [
                ("from", from),
                ("to", to),
                ("granularity", granularity.map(wire)),
            ];
            let query: Vec<(&str, String)> = options
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?)))
                .collect();
            let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let reply = api.get(&["v1", "api-keys", &id, "usage"], &pairs).await?;
            reply.emit(conn, |usage| Ok(usage_report(usage, reply.data()?)))
        }
        KeysCommand::PermissionUsage { id, days } => {
            let days = days.map(|d| d.to_string());
            let query: Vec<(&str, &str)> = days.iter().map(|d| ("days", d.as_str())).collect();
            let reply = api
                .get(&["v1", "api-keys", &id, "permission-usage"], &query)
                .await?;
            reply.emit(conn, |r| Ok(super::permission_usage::report(r)))
        }
        KeysCommand::Get { id } => {
            let reply = api.get(&["v1", "api-keys", &id], &[]).await?;
            reply.emit(conn, |key| Ok(fields(key, KEY_FIELDS, &[])))
        }
        KeysCommand::Revoke { id } => {
            let reply = api
                .post(&["v1", "api-keys", &id, "revoke"], &json!({}))
                .await?;
            reply.emit(conn, |key| Ok(fields(key, KEY_FIELDS, &[])))
        }
        KeysCommand::Rotate {
            id,
            grace_period,
            retire_when_idle,
        } => {
            let mut body = json!({});
            if let Some(seconds) = grace_period {
                body["grace_period_seconds"] = seconds.into();
            }
            if let Some(seconds) = retire_when_idle {
                body["retire_when_idle_seconds"] = seconds.into();
            }
            let reply = api.post(&["v1", "api-keys", &id, "rotate"], &body).await?;
            reply.emit(conn, |key| {
                let mut out = fields(key, KEY_FIELDS, &["previous"]);
                if let Some(previous) = key.get("previous").filter(|p| p.is_object()) {
                    out.push_str(&format!("\nprevious key: {}\n", previous_summary(previous)));
                }
                with_secret(key, out)
            })
        }
        KeysCommand::Verify(args) => {
            let key = verify_key.unwrap_or_default();
            verify(&api, conn, args.body(key)).await
        }
    }
}

impl CreateArgs {
    /// The create body, with absent options left out.
    fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("account_id".into(), self.account.clone().into());
        body.insert("name".into(), self.name.clone().into());
        if let Some(env) = self.env {
            body.insert("environment".into(), wire(env).into());
        }
        if let Some(scope) = self.scope {
            body.insert("scope".into(), wire(scope).into());
        }
        if !self.permissions.is_empty() {
            body.insert("permissions".into(), json!(self.permissions));
        }
        if !self.ips.is_empty() {
            body.insert("ip_allowlist".into(), json!(self.ips));
        }
        if let Some(seconds) = self.expires_in {
            body.insert("expires_in".into(), seconds.into());
        }
        if let Some(at) = &self.expires_at {
            body.insert("expires_at".into(), at.clone().into());
        }
        if let Some((requests, per_seconds)) = self.rate_limit {
            body.insert(
                "rate_limit".into(),
                json!({ "requests": requests, "per_seconds": per_seconds }),
            );
        }
        if let Some(requests) = self.quota {
            body.insert("quota".into(), json!({ "requests": requests }));
        }
        if !self.meta.is_empty() {
            let meta: Map<String, Value> = self
                .meta
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            body.insert("meta".into(), meta.into());
        }
        Value::Object(body)
    }
}

impl UpdateArgs {
    /// The PATCH body; at least one change, or a usage error before any request.
    fn body(&self) -> Result<Value, Failure> {
        let mut body = Map::new();
        if let Some(name) = &self.name {
            body.insert("name".into(), name.clone().into());
        }
        if let Some(permissions) = &self.permissions {
            body.insert("permissions".into(), json!(permissions));
        }
        if let Some(scope) = self.scope {
            body.insert("scope".into(), wire(scope).into());
        }
        if let Some(ips) = &self.allowed_ips {
            body.insert("ip_allowlist".into(), json!(ips));
        }
        if self.any_ip {
            body.insert("ip_allowlist".into(), json!([]));
        }
        if let Some(at) = &self.expires_at {
            body.insert("expires_at".into(), at.clone().into());
        }
        if let Some(seconds) = self.expires_in {
            body.insert("expires_in".into(), seconds.into());
        }
        if self.no_expiry {
            body.insert("expires_at".into(), Value::Null);
        }
        if let Some((requests, per_seconds)) = self.rate_limit {
            body.insert(
                "rate_limit".into(),
                json!({ "requests": requests, "per_seconds": per_seconds }),
            );
        }
        if self.no_rate_limit {
            body.insert("rate_limit".into(), Value::Null);
        }
        if let Some(requests) = self.quota {
            body.insert("quota".into(), json!({ "requests": requests }));
        }
        if self.no_quota {
            body.insert("quota".into(), Value::Null);
        }
        if body.is_empty() {
            return Err(Failure::Usage(
                "nothing to change: give at least one of --name, --permissions, --scope, \
                 --allowed-ips, --any-ip, --expires-at, --expires-in, --no-expiry, \
                 --rate-limit, --no-rate-limit, --quota, --no-quota"
                    .to_owned(),
            ));
        }
        Ok(Value::Object(body))
    }
}

impl VerifyArgs {
    fn body(self, key: String) -> Value {
        let mut body = Map::new();
        body.insert("key".into(), key.into());
        let optional = [
            ("permission", self.permission),
            ("method", self.method.map(|m| m.to_ascii_uppercase())),
            ("path", self.path),
            ("ip", self.ip),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                body.insert(name.into(), value.into());
            }
        }
        Value::Object(body)
    }
}

/// POST /v1/verify. A verdict ("valid": true/false) is a result, not an error; it is
/// accepted from a 4xx answer too, in case the server mirrors the refusal in its status.
async fn verify(api: &Api, conn: &Connection, body: Value) -> Result<Done, Failure> {
    let reply = api
        .call(Method::POST, &["v1", "verify"], &[], Some(&body))
        .await?;
    let verdict = reply.body.get("valid").and_then(Value::as_bool);
    let answered = reply.status.is_success() || reply.status.is_client_error();
    match verdict {
        Some(valid) if answered => {
            reply.emit(conn, |answer| Ok(fields(answer, VERIFY_FIELDS, &[])))?;
            Ok(if valid && reply.status.is_success() {
                Done::Success
            } else {
                Done::Refused
            })
        }
        _ => {
            let reply = api.expect_success(reply)?;
            Err(Failure::bad_response(
                reply.status,
                "no \"valid\" in the verify answer",
            ))
        }
    }
}

/// Appends the one-time secret on its own labelled line, with the warning above it.
fn with_secret(key: &Value, mut out: String) -> Result<String, Failure> {
    let secret = key.get("key").and_then(Value::as_str).ok_or_else(|| {
        Failure::bad_response(
            reqwest::StatusCode::CREATED,
            "no \"key\" (secret) in the answer",
        )
    })?;
    out.push_str("\nWARNING: store this secret now; it will not be shown again.\n");
    out.push_str(&format!("API key secret: {secret}\n"));
    Ok(out)
}

fn previous_summary(previous: &Value) -> String {
    let status = text(&previous["status"]);
    let revoked_at = &previous["revoked_at"];
    // With a grace period the old key stays active and `revoked_at` is in the future.
    if status == "active" && !revoked_at.is_null() {
        return format!(
            "{} (active until {})",
            text(&previous["id"]),
            text(revoked_at)
        );
    }
    let mut summary = format!("{} ({status}", text(&previous["id"]));
    if !revoked_at.is_null() {
        summary.push_str(&format!(", revoked_at {}", text(revoked_at)));
    }
    summary.push(')');
    summary
}

/// Field order of a usage report's summary.
const USAGE_FIELDS: &[&str] = &[
    "key_id",
    "granularity",
    "from",
    "to",
    "last_used_at",
    "quota",
    "totals",
    "recent_ips",
];

/// The summary, then the buckets that saw any verification.
fn usage_report(usage: &Value, buckets: &[Value]) -> String {
    let mut out = fields(usage, USAGE_FIELDS, &["data"]);
    let mut table = Table::new(&["START", "VALID", "REFUSED", "OUTCOMES"]);
    let mut any = false;
    for bucket in buckets {
        let count = |name: &str| bucket[name].as_i64().unwrap_or(0);
        if count("valid") == 0 && count("refused") == 0 {
            continue;
        }
        any = true;
        table.push(vec![
            short_time(&bucket["start"], "-"),
            count("valid").to_string(),
            count("refused").to_string(),
            text(&bucket["outcomes"]),
        ]);
    }
    out.push('\n');
    if any {
        out.push_str(&table.render());
    } else {
        out.push_str("no verifications in this period\n");
    }
    out
}

fn key_table(keys: &[Value]) -> String {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "PREFIX",
        "ENV",
        "STATUS",
        "PERMISSIONS",
        "CREATED",
        "LAST USED",
        "EXPIRES",
    ]);
    for key in keys {
        let permissions = match &key["permissions"] {
            Value::Array(list) if !list.is_empty() => {
                list.iter().map(text).collect::<Vec<_>>().join(",")
            }
            Value::Array(_) => "(none)".to_owned(),
            other => text(other),
        };
        table.push(vec![
            text(&key["id"]),
            text(&key["name"]),
            text(&key["display_prefix"]),
            text(&key["environment"]),
            text(&key["status"]),
            permissions,
            short_time(&key["created_at"], "-"),
            short_time(&key["last_used_at"], "never"),
            short_time(&key["expires_at"], "never"),
        ]);
    }
    table.render()
}

/// The key to verify: the first line of standard input, trimmed.
fn read_key() -> Result<String, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("API key (input is echoed; prefer piping it in): ");
    }
    let mut line = String::new();
    // A key is under 100 bytes; never slurp an unbounded stream.
    stdin
        .lock()
        .take(8192)
        .read_line(&mut line)
        .map_err(|e| Failure::Usage(format!("cannot read the key from standard input: {e}")))?;
    let key = line.trim();
    if key.is_empty() {
        return Err(Failure::Usage(
            "no key on standard input (pipe it in: keygate keys verify < key.txt)".to_owned(),
        ));
    }
    Ok(key.to_owned())
}
