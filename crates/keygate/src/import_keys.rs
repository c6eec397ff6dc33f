//! `keygate import-keys FILE`: keys from another system (JSON lines; see
//! `keygate_engine::manage::import`) written straight into the configured database, as
//! `keygate import` does: a file of any size, the whole of it checked before anything is
//! written. A running server learns of them within seconds (its "no imported keys" answer
//! is rechecked every 5 s; a credential it remembered as unknown, for the negative cache
//! TTL).

use std::path::PathBuf;

use anyhow::{bail, Context};
use keygate_engine::manage::import::{check_import, import_audit, write_import};
use keygate_engine::manage::ImportError;

use crate::config::{Config, ServeArgs};
use crate::serve::{open_store, redact_url, settle_pepper};

#[derive(clap::Args, Debug)]
pub struct ImportKeysArgs {
    /// JSON lines, one key a line (`-`: standard input).
    pub file: PathBuf,
    #[command(flatten)]
    pub config: ServeArgs,
}

pub async fn import_keys(args: ImportKeysArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config, &|name| std::env::var(name).ok())?;
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
            .context("cannot read standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let store = open_store(&config.database_url, true).await?;
    // Plaintext keys are digested with the database's pepper (made here on a new database,
    // as `keygate serve` would).
    let pepper = settle_pepper(&config, store.as_ref()).await?;
    let keys = match check_import(store.as_ref(), &pepper, &text, keygate_engine::now_ms()).await {
        Ok(keys) => keys,
        Err(ImportError::Lines { errors, more }) => {
            for e in &errors {
                eprintln!("{e}");
            }
            if more > 0 {
                eprintln!("… and {more} more");
            }
            if errors.is_empty() {
                bail!("{} holds no key", args.file.display());
            }
            bail!("nothing was imported: fix the lines above and run it again");
        }
        Err(ImportError::Failed(e)) => return Err(e.into()),
    };
    let audit = import_audit("cli".into(), None, &keys)?;
    let summary = write_import(store.as_ref(), &keys, &audit).await?;
    eprintln!(
        "imported {} of {} keys into {} ({} were there already)",
        summary.imported,
        summary.keys,
        redact_url(&config.database_url),
        summary.already_present
    );
    Ok(())
}
