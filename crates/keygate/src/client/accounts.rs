//! `keygate accounts create|list|get|update`.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::http::{Api, Failure};
use super::output::{fields, short_time, text};
use super::pages::{self, PageArgs, Paging};
use super::parse::parse_id;
use super::table::Table;
use super::{Connection, Done, EXIT_CODES};

/// Field order for one account.
const ACCOUNT_FIELDS: &[&str] = &[
    "id",
    "name",
    "plan",
    "created_at",
    "active_keys",
    "max_keys",
];

#[derive(Subcommand, Debug)]
pub enum AccountsCommand {
    /// Create an account (a customer business that owns keys).
    #[command(after_help = EXIT_CODES)]
    Create {
        /// Display name of the account.
        #[arg(long)]
        name: String,
        /// Plan capping its active keys (server default when omitted).
        #[arg(long)]
        plan: Option<String>,
    },
    /// List accounts, oldest first, a page at a time.
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// Show one account, with its active keys against its plan's cap.
    #[command(after_help = EXIT_CODES)]
    Get {
        #[arg(value_parser = parse_id)]
        id: String,
    },
    /// Rename an account or change its plan.
    #[command(after_help = EXIT_CODES)]
    Update {
        #[arg(value_parser = parse_id)]
        id: String,
        /// New display name.
        #[arg(long)]
        name: Option<String>,
        /// New plan.
        #[arg(long)]
        plan: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only accounts on this plan.
    #[arg(long)]
    plan: Option<String>,
    /// Only accounts whose name contains this (case-insensitive).
    #[arg(long)]
    name: Option<String>,
    /// Start after this account (the `next_cursor` of a previous page).
    #[arg(long, value_name = "ACCOUNT_ID", value_parser = parse_id)]
    starting_after: Option<String>,
    #[command(flatten)]
    pages: PageArgs,
}

pub async fn run(conn: &Connection, cmd: AccountsCommand) -> Result<Done, Failure> {
    let api = Api::new(conn)?;
    match cmd {
        AccountsCommand::Create { name, plan } => {
            let mut body = json!({ "name": name });
            if let Some(plan) = plan {
                body["plan"] = Value::String(plan);
            }
            let reply = api.post(&["v1", "accounts"], &body).await?;
            reply.emit(conn, |account| Ok(fields(account, ACCOUNT_FIELDS, &[])))
        }
        AccountsCommand::List(args) => {
            let query: Vec<(&str, String)> = [("plan", args.plan), ("name", args.name)]
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?)))
                .collect();
            let paging = Paging::by_id("accounts");
            let listing = pages::fetch(
                &api,
                &["v1", "accounts"],
                &query,
                &paging,
                &args.pages,
                args.starting_after,
            )
            .await?;
            listing.emit(conn, &paging, account_table)
        }
        AccountsCommand::Get { id } => {
            let reply = api.get(&["v1", "accounts", &id], &[]).await?;
            reply.emit(conn, |account| Ok(fields(account, ACCOUNT_FIELDS, &[])))
        }
        AccountsCommand::Update { id, name, plan } => {
            let mut body = serde_json::Map::new();
            if let Some(name) = name {
                body.insert("name".into(), Value::String(name));
            }
            if let Some(plan) = plan {
                body.insert("plan".into(), Value::String(plan));
            }
            if body.is_empty() {
                return Err(Failure::Usage(
                    "nothing to change: give --name and/or --plan".to_owned(),
                ));
            }
            let reply = api
                .call(
                    Method::PATCH,
                    &["v1", "accounts", &id],
                    &[],
                    Some(&Value::Object(body)),
                )
                .await?;
            let reply = api.expect_success(reply)?;
            reply.emit(conn, |account| Ok(fields(account, ACCOUNT_FIELDS, &[])))
        }
    }
}

fn account_table(accounts: &[Value]) -> String {
    let mut table = Table::new(&["ID", "NAME", "PLAN", "CREATED"]);
    for account in accounts {
        table.push(vec![
            text(&account["id"]),
            text(&account["name"]),
            text(&account["plan"]),
            short_time(&account["created_at"], "-"),
        ]);
    }
    table.render()
}
