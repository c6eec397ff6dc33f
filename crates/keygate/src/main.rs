//! `keygate`: the server (`keygate serve`) and the operator's CLI.

mod client;
mod config;
mod import_keys;
mod serve;
mod transfer;
mod webhook_config;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "keygate",
    version,
    about = "Self-hosted API keys for HTTP APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (embedded SQLite unless a postgres:// URL is configured).
    Serve(config::ServeArgs),
    /// Apply database schema migrations and exit (`serve` also applies them on start).
    Migrate(config::ServeArgs),
    /// Write the database as JSON lines: accounts, keys (digests, never keys), audit log, usage.
    Export(transfer::ExportArgs),
    /// Read a `keygate export` into the configured database (e.g. SQLite to PostgreSQL).
    Import(transfer::ImportArgs),
    /// Import keys from another system (JSON lines with bcrypt/SHA hashes or plaintext keys)
    /// into the configured database; they are upgraded to keygate's digest on first use.
    ImportKeys(import_keys::ImportKeysArgs),
    /// Manage accounts on a running server.
    Accounts {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::AccountsCommand,
    },
    /// Manage API keys on a running server.
    Keys {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::KeysCommand,
    },
    /// Read the audit log of a running server.
    Audit {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::AuditCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(4);
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => match serve::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Command::Migrate(args) => match serve::migrate(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Command::Export(args) => match transfer::export(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Command::ImportKeys(args) => match import_keys::import_keys(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Command::Import(args) => match transfer::import(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Command::Accounts { conn, command } => client::run_accounts(&conn, command).await,
            Command::Keys { conn, command } => client::run_keys(&conn, command).await,
            Command::Audit { conn, command } => client::run_audit(&conn, command).await,
        }
    })
}
