//! `keygate accounts create|list`.

use clap::Subcommand;
use serde_json::{json, Value};

use super::http::{Api, Failure};
use super::output::{fields, short_time, text};
use super::table::Table;
use super::{Connection, Done, EXIT_CODES};

/// Field order for one account.
const ACCOUNT_FIELDS: &[&str] = &["id", "name", "plan", "created_at"];

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
    /// List accounts.
    #[command(after_help = EXIT_CODES)]
    List,
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
        AccountsCommand::List => {
            let reply = api.get(&["v1", "accounts"], &[]).await?;
            reply.emit(conn, |_| {
                let mut table = Table::new(&["ID", "NAME", "PLAN", "CREATED"]);
                for account in reply.data()? {
                    table.push(vec![
                        text(&account["id"]),
                        text(&account["name"]),
                        text(&account["plan"]),
                        short_time(&account["created_at"], "-"),
                    ]);
                }
                Ok(table.render())
            })
        }
    }
}
