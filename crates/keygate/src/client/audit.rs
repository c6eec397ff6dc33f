//! `keygate audit list`: the audit log, newest first, a page at a time.

use clap::{Args, Subcommand};
use serde_json::Value;

use super::http::{Api, Failure};
use super::output::{short_time, text};
use super::pages::{self, PageArgs, Paging};
use super::parse::{parse_id, parse_time};
use super::table::Table;
use super::{Connection, Done, EXIT_CODES};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List lifecycle events (who created, changed, rotated, revoked what, when, from where).
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this account's events.
    #[arg(long, value_name = "ACCOUNT_ID", value_parser = parse_id)]
    account: Option<String>,
    /// Only events about this record (a key or account id).
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    target: Option<String>,
    /// Only events at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    from: Option<String>,
    /// Only events before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    to: Option<String>,
    /// Only events older than this sequence number (the `next_before` of a previous page).
    #[arg(long, value_name = "SEQ")]
    before: Option<u64>,
    #[command(flatten)]
    pages: PageArgs,
}

pub async fn run(conn: &Connection, cmd: AuditCommand) -> Result<Done, Failure> {
    let api = Api::new(conn)?;
    match cmd {
        AuditCommand::List(args) => {
            let filters = [
                ("account_id", args.account),
                ("target_id", args.target),
                ("from", args.from),
                ("to", args.to),
            ];
            let query: Vec<(&str, String)> = filters
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?)))
                .collect();
            let paging = Paging {
                cursor_param: "before",
                next_field: "next_before",
                noun: "events",
            };
            let listing = pages::fetch(
                &api,
                &["v1", "audit-log"],
                &query,
                &paging,
                &args.pages,
                args.before.map(|b| b.to_string()),
            )
            .await?;
            listing.emit(conn, &paging, event_table)
        }
    }
}

fn event_table(events: &[Value]) -> String {
    let mut table = Table::new(&["AT", "ACTION", "ACTOR", "ACCOUNT", "TARGET", "CLIENT IP"]);
    for event in events {
        table.push(vec![
            short_time(&event["at"], "-"),
            text(&event["action"]),
            text(&event["actor"]),
            text(&event["account_id"]),
            text(&event["target_id"]),
            text(&event["client_ip"]),
        ]);
    }
    table.render()
}
