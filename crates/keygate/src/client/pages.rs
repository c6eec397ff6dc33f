//! Lists a page at a time: `--limit`, `--all`, and the note on stderr when more follow.
//!
//! Keys and accounts page with `starting_after` / `next_cursor`; the audit log with
//! `before` / `next_before`. Both are "pass this value back to get what follows", so one
//! walker serves them.

use clap::Args;
use serde_json::{json, Value};

use super::http::{Api, Failure, Reply};
use super::output::{pretty_json, print};
use super::{Connection, Done};

/// How far a list command reads.
#[derive(Args, Debug, Clone, Default)]
pub struct PageArgs {
    /// Records per page, 1-1000 (server default: 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,
    /// Fetch every page, not only the first.
    #[arg(long)]
    all: bool,
}

/// A list endpoint's paging parameters.
pub struct Paging {
    /// The query parameter that asks for what follows (`starting_after`, `before`).
    pub cursor_param: &'static str,
    /// The answer field naming it (`next_cursor`, `next_before`); null on the last page.
    pub next_field: &'static str,
    /// What the records are, for the note ("keys", "events").
    pub noun: &'static str,
}

impl Paging {
    /// Keys and accounts: `starting_after=<id>`, answered with `next_cursor`.
    pub fn by_id(noun: &'static str) -> Paging {
        Paging {
            cursor_param: "starting_after",
            next_field: "next_cursor",
            noun,
        }
    }
}

/// What a list command read: the records and, when it stopped early, where to go on.
pub struct Listing {
    /// The one answer, when only one page was read (printed verbatim by `--json`).
    single: Option<Reply>,
    pub records: Vec<Value>,
    /// The cursor of the next page, when more follow.
    pub next: Option<String>,
}

/// Reads the first page of `path` (or, with `--all`, every page) with `query` as filters
/// and `start` as the first cursor.
pub async fn fetch(
    api: &Api,
    path: &[&str],
    query: &[(&str, String)],
    paging: &Paging,
    args: &PageArgs,
    start: Option<String>,
) -> Result<Listing, Failure> {
    let mut records = Vec::new();
    let mut cursor = start;
    let mut pages = 0usize;
    loop {
        let mut params: Vec<(&str, String)> = query.to_vec();
        if let Some(limit) = args.limit {
            params.push(("limit", limit.to_string()));
        }
        if let Some(c) = &cursor {
            params.push((paging.cursor_param, c.clone()));
        }
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = api.get(path, &pairs).await?;
        records.extend(reply.data()?.iter().cloned());
        let next = match reply.body.get(paging.next_field) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        pages += 1;
        if !args.all || next.is_none() {
            return Ok(Listing {
                single: (pages == 1).then_some(reply),
                records,
                next,
            });
        }
        if next == cursor {
            return Err(Failure::bad_response(
                reply.status,
                "the server repeated its cursor; stopping",
            ));
        }
        cursor = next;
    }
}

impl Listing {
    /// Prints the records (the server's JSON with `--json`; with `--all` over several pages,
    /// one `{"data": [...]}` of them all) and, when more follow, a note on stderr.
    pub fn emit(
        &self,
        conn: &Connection,
        paging: &Paging,
        human: impl FnOnce(&[Value]) -> String,
    ) -> Result<Done, Failure> {
        let text = match (&self.single, conn.json) {
            (Some(reply), true) => pretty_json(&reply.raw),
            (None, true) => pretty_json(&json!({ "data": self.records }).to_string()),
            (_, false) => human(&self.records),
        };
        print(&text);
        if let Some(next) = &self.next {
            eprintln!(
                "note: more {} follow; pass --all for every page, or --{} {next} for the next one",
                paging.noun,
                paging.cursor_param.replace('_', "-"),
            );
        }
        Ok(Done::Success)
    }
}
