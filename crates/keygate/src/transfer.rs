//! `keygate export` and `keygate import`: an installation as JSON lines, to move it from one
//! database to another (SQLite to PostgreSQL) without re-issuing keys.
//!
//! The first line says what the file is: `{"format":"keygate-export","version":1,…}`. Then
//! one record a line, each with a `type`, in this order: `setting` (the pepper check and the
//! admin token digest), `account`, `key` (its HMAC digest, never the key), `audit` (oldest
//! first), `usage` (the hourly counts of one key); last an `end` line with the counts, so that
//! a cut-off file is refused. Keys imported from another system (`keygate import-keys`) add
//! `legacy_key` lines after the usage: each one's legacy hash while it is not upgraded yet. The file holds no secret; the pepper the digests were made with
//! is not in it, and the keys verify after the move only where keygate runs with that pepper.
//!
//! An import checks the whole file before it writes anything, then inserts the records as
//! they are; records whose id the database holds already are left alone, so an interrupted
//! import can be run again.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use keygate_core::{Environment, KeyDigest};
use keygate_store::{
    Account, AuditEvent, KeyRecord, LegacyKey, Quota, RateLimit, SeenIp, Store, UsageCount,
};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ServeArgs};
use crate::serve::{
    open_store, parse_pepper, pepper_path, redact_url, ADMIN_DIGEST_SETTING, PEPPER_CHECK_SETTING,
};

const FORMAT: &str = "keygate-export";
const VERSION: u32 = 1;
/// Records written per transaction on import (in statements of 500 rows): fewer, larger
/// transactions, as each commit waits for the disk.
const BATCH: usize = 10_000;
/// The settings that travel: both digests, neither a secret.
const SETTINGS: [&str; 2] = [PEPPER_CHECK_SETTING, ADMIN_DIGEST_SETTING];

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Write to this new file (mode 0600) instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub config: ServeArgs,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The file `keygate export` wrote (`-`: standard input).
    pub file: PathBuf,
    #[command(flatten)]
    pub config: ServeArgs,
}

// --- the file --------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    /// The keygate version that wrote the file.
    keygate: String,
    /// Unix milliseconds.
    exported_at: i64,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Setting(SettingLine),
    Account(AccountLine),
    Key(Box<KeyLine>),
    Audit(AuditLine),
    Usage(UsageLine),
    LegacyKey(LegacyKeyLine),
    End(Counts),
}

impl Line {
    /// Records come in this order; `end` is last.
    fn rank(&self) -> u8 {
        match self {
            Line::Setting(_) => 0,
            Line::Account(_) => 1,
            Line::Key(_) => 2,
            Line::Audit(_) => 3,
            Line::Usage(_) => 4,
            Line::LegacyKey(_) => 5,
            Line::End(_) => 6,
        }
    }
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SettingLine {
    name: String,
    value: String,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AccountLine {
    id: String,
    name: String,
    plan: String,
    created_at: i64,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct KeyLine {
    id: String,
    account_id: String,
    name: String,
    display_prefix: String,
    /// HMAC-SHA256(pepper, key), hex.
    digest: String,
    environment: String,
    permissions: Vec<String>,
    ip_allowlist: Vec<String>,
    rate_limit: Option<RateLimit>,
    quota: Option<Quota>,
    quota_used: i64,
    quota_refilled_at: Option<i64>,
    meta: serde_json::Value,
    created_at: i64,
    last_used_at: Option<i64>,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    rotated_from: Option<String>,
    recent_ips: Vec<SeenIp>,
    /// Absent in exports of versions before leak reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    leaked_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retire_when_idle_ms: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AuditLine {
    id: String,
    at: i64,
    account_id: Option<String>,
    actor: String,
    action: String,
    target_id: Option<String>,
    client_ip: Option<String>,
    details: serde_json::Value,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct UsageLine {
    key_id: String,
    counts: Vec<CountLine>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct CountLine {
    /// Start of the hour, unix milliseconds.
    bucket: i64,
    outcome: String,
    count: i64,
}

/// An imported key's legacy state: its legacy hash until the first verification upgrades it
/// (`hash` is then null).
#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LegacyKeyLine {
    key_id: String,
    scheme: String,
    lookup: String,
    hash: Option<String>,
    imported_at: i64,
    upgraded_at: Option<i64>,
}

impl From<LegacyKey> for LegacyKeyLine {
    fn from(l: LegacyKey) -> Self {
        LegacyKeyLine {
            key_id: l.key_id,
            scheme: l.scheme,
            lookup: l.lookup,
            hash: l.hash,
            imported_at: l.imported_at,
            upgraded_at: l.upgraded_at,
        }
    }
}

impl From<LegacyKeyLine> for LegacyKey {
    fn from(l: LegacyKeyLine) -> Self {
        LegacyKey {
            key_id: l.key_id,
            scheme: l.scheme,
            lookup: l.lookup,
            hash: l.hash,
            imported_at: l.imported_at,
            upgraded_at: l.upgraded_at,
        }
    }
}

/// How many records of each type; the `end` line.
#[derive(Serialize, Deserialize, Debug, Default, PartialEq, Eq, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Counts {
    settings: u64,
    accounts: u64,
    keys: u64,
    audit_events: u64,
    usage_counts: u64,
    /// Absent in exports made before keys could be imported.
    #[serde(default)]
    legacy_keys: u64,
}

impl From<&Account> for AccountLine {
    fn from(a: &Account) -> Self {
        AccountLine {
            id: a.id.clone(),
            name: a.name.clone(),
            plan: a.plan.clone(),
            created_at: a.created_at,
        }
    }
}

impl From<AccountLine> for Account {
    fn from(a: AccountLine) -> Self {
        Account {
            id: a.id,
            name: a.name,
            plan: a.plan,
            created_at: a.created_at,
        }
    }
}

impl From<&KeyRecord> for KeyLine {
    fn from(k: &KeyRecord) -> Self {
        KeyLine {
            id: k.id.clone(),
            account_id: k.account_id.clone(),
            name: k.name.clone(),
            display_prefix: k.display_prefix.clone(),
            digest: k.digest.to_hex(),
            environment: k.environment.as_str().to_owned(),
            permissions: k.permissions.clone(),
            ip_allowlist: k.ip_allowlist.clone(),
            rate_limit: k.rate_limit,
            quota: k.quota,
            quota_used: k.quota_used,
            quota_refilled_at: k.quota_refilled_at,
            meta: k.meta.clone(),
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            rotated_from: k.rotated_from.clone(),
            recent_ips: k.recent_ips.clone(),
            leaked_at: k.leaked_at,
            retire_when_idle_ms: k.retire_when_idle_ms,
        }
    }
}

impl KeyLine {
    fn into_record(self) -> anyhow::Result<KeyRecord> {
        let digest = KeyDigest::from_hex(&self.digest)
            .with_context(|| format!("key {}: the digest is not 64 hex characters", self.id))?;
        let environment = Environment::parse(&self.environment).with_context(|| {
            format!(
                "key {}: unknown environment {:?}",
                self.id, self.environment
            )
        })?;
        Ok(KeyRecord {
            id: self.id,
            account_id: self.account_id,
            name: self.name,
            display_prefix: self.display_prefix,
            digest,
            environment,
            permissions: self.permissions,
            ip_allowlist: self.ip_allowlist,
            rate_limit: self.rate_limit,
            quota: self.quota,
            quota_used: self.quota_used,
            quota_refilled_at: self.quota_refilled_at,
            meta: self.meta,
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            rotated_from: self.rotated_from,
            recent_ips: self.recent_ips,
            leaked_at: self.leaked_at,
            retire_when_idle_ms: self.retire_when_idle_ms,
        })
    }
}

impl From<&AuditEvent> for AuditLine {
    fn from(e: &AuditEvent) -> Self {
        AuditLine {
            id: e.id.clone(),
            at: e.at,
            account_id: e.account_id.clone(),
            actor: e.actor.clone(),
            action: e.action.clone(),
            target_id: e.target_id.clone(),
            client_ip: e.client_ip.clone(),
            details: e.details.clone(),
        }
    }
}

impl From<AuditLine> for AuditEvent {
    fn from(e: AuditLine) -> Self {
        AuditEvent {
            id: e.id,
            seq: 0,
            at: e.at,
            account_id: e.account_id,
            actor: e.actor,
            action: e.action,
            target_id: e.target_id,
            client_ip: e.client_ip,
            details: e.details,
        }
    }
}

// --- export ----------------------------------------------------------------------------------

pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config, &|name| std::env::var(name).ok())?;
    let store = open_store(&config.database_url, false).await?;
    let shown = redact_url(&config.database_url);
    let counts = match &args.output {
        Some(path) => {
            let file = create_private(path)?;
            let mut out = std::io::BufWriter::new(file);
            let counts = write_export(store.as_ref(), &mut out).await?;
            out.into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            counts
        }
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let counts = write_export(store.as_ref(), &mut out).await?;
            out.flush().context("cannot write to standard output")?;
            counts
        }
    };
    eprintln!(
        "exported {} accounts, {} keys, {} audit events, {} usage counts and {} imported keys' legacy states from {shown}",
        counts.accounts, counts.keys, counts.audit_events, counts.usage_counts, counts.legacy_keys
    );
    eprintln!(
        "the file holds key digests, never keys; they verify only with the same pepper, which is not in the file"
    );
    if config.pepper.is_none() {
        if let Some(path) = pepper_path(&config.database_url) {
            eprintln!(
                "this database's pepper is in {}: start keygate on the new database with KEYGATE_PEPPER=$(cat {})",
                path.display(),
                path.display()
            );
        }
    }
    Ok(())
}

/// A new file readable by its owner only.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))
}

fn write_line<T: Serialize>(out: &mut impl Write, value: &T) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value).context("cannot write the export")?;
    out.write_all(b"\n").context("cannot write the export")
}

async fn write_export(store: &dyn Store, out: &mut impl Write) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    write_line(
        out,
        &Header {
            format: FORMAT.to_owned(),
            version: VERSION,
            keygate: env!("CARGO_PKG_VERSION").to_owned(),
            exported_at: keygate_engine::now_ms(),
        },
    )?;
    for name in SETTINGS {
        if let Some(value) = store.get_setting(name).await? {
            let name = name.to_owned();
            write_line(out, &Line::Setting(SettingLine { name, value }))?;
            counts.settings += 1;
        }
    }
    for account in store.list_accounts().await? {
        write_line(out, &Line::Account(AccountLine::from(&account)))?;
        counts.accounts += 1;
    }
    let keys = store.list_keys(None).await?;
    for key in &keys {
        write_line(out, &Line::Key(Box::new(KeyLine::from(key))))?;
        counts.keys += 1;
    }
    let mut after = 0;
    loop {
        let page = store.audit_after(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for event in &page {
            write_line(out, &Line::Audit(AuditLine::from(event)))?;
            counts.audit_events += 1;
        }
    }
    for key in &keys {
        let counted = store.usage_counts(&key.id, i64::MIN, i64::MAX).await?;
        if counted.is_empty() {
            continue;
        }
        counts.usage_counts += counted.len() as u64;
        let counts = counted
            .into_iter()
            .map(|c| CountLine {
                bucket: c.bucket,
                outcome: c.outcome,
                count: c.count,
            })
            .collect();
        let key_id = key.id.clone();
        write_line(out, &Line::Usage(UsageLine { key_id, counts }))?;
    }
    for legacy in store.list_legacy_keys().await? {
        write_line(out, &Line::LegacyKey(legacy.into()))?;
        counts.legacy_keys += 1;
    }
    write_line(out, &Line::End(counts))?;
    Ok(counts)
}

// --- import ----------------------------------------------------------------------------------

/// Where the export is read from; read twice (checked, then written).
enum Source {
    File(PathBuf),
    Stdin(String),
}

impl Source {
    fn open(path: &Path) -> anyhow::Result<Source> {
        if path == Path::new("-") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
                .context("cannot read standard input")?;
            Ok(Source::Stdin(text))
        } else {
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok(Source::File(path.to_owned()))
        }
    }

    /// The records (numbered from line 2), after the header has been checked.
    fn records(&self) -> anyhow::Result<impl Iterator<Item = anyhow::Result<(usize, Line)>> + '_> {
        let reader: Box<dyn BufRead + '_> = match self {
            Source::File(path) => Box::new(std::io::BufReader::new(
                std::fs::File::open(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            )),
            Source::Stdin(text) => Box::new(text.as_bytes()),
        };
        let mut lines = reader.lines().enumerate();
        let header = match lines.next() {
            Some((_, line)) => line.context("cannot read the export")?,
            None => bail!("the file is empty: not a keygate export"),
        };
        let header: Header = serde_json::from_str(&header)
            .ok()
            .filter(|h: &Header| h.format == FORMAT)
            .context("the first line is not a keygate export header")?;
        if header.version != VERSION {
            bail!(
                "this is a version {} export; this keygate reads version {VERSION}",
                header.version
            );
        }
        Ok(lines.filter_map(|(i, line)| {
            let n = i + 1;
            let line = match line {
                Ok(line) if line.trim().is_empty() => return None,
                Ok(line) => line,
                Err(e) => {
                    return Some(Err(anyhow::Error::new(e).context("cannot read the export")))
                }
            };
            let record = serde_json::from_str::<Line>(&line)
                .with_context(|| format!("line {n} is not a keygate export record"));
            Some(record.map(|record| (n, record)))
        }))
    }
}

/// What the first reading found.
struct Checked {
    settings: Vec<(String, String)>,
    counts: Counts,
}

/// Reads the whole file without writing: every line parses, records come in order, keys
/// belong to accounts of the file and usage to its keys, and the `end` line matches.
fn check(source: &Source) -> anyhow::Result<Checked> {
    let mut seen = Counts::default();
    let mut settings = Vec::new();
    let mut accounts = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    let mut rank = 0;
    let mut end = None;
    for record in source.records()? {
        let (n, record) = record?;
        if end.is_some() {
            bail!("line {n}: records after the end line");
        }
        if record.rank() < rank {
            bail!("line {n}: records out of order (settings, accounts, keys, audit, usage)");
        }
        rank = record.rank();
        match record {
            Line::Setting(s) => {
                if !SETTINGS.contains(&s.name.as_str()) {
                    bail!("line {n}: unknown setting {:?}", s.name);
                }
                settings.push((s.name, s.value));
                seen.settings += 1;
            }
            Line::Account(a) => {
                accounts.insert(a.id);
                seen.accounts += 1;
            }
            Line::Key(k) => {
                if !accounts.contains(&k.account_id) {
                    bail!(
                        "line {n}: key {} of account {}, which the file does not hold",
                        k.id,
                        k.account_id
                    );
                }
                let id = k.id.clone();
                k.into_record().with_context(|| format!("line {n}"))?;
                keys.insert(id);
                seen.keys += 1;
            }
            Line::Audit(_) => seen.audit_events += 1,
            Line::Usage(u) => {
                if !keys.contains(&u.key_id) {
                    bail!(
                        "line {n}: usage of key {}, which the file does not hold",
                        u.key_id
                    );
                }
                seen.usage_counts += u.counts.len() as u64;
            }
            Line::LegacyKey(l) => {
                if !keys.contains(&l.key_id) {
                    bail!(
                        "line {n}: legacy hash of key {}, which the file does not hold",
                        l.key_id
                    );
                }
                seen.legacy_keys += 1;
            }
            Line::End(counts) => end = Some(counts),
        }
    }
    match end {
        None => bail!("the file stops before its end line: it was cut off; export again"),
        Some(end) if end != seen => {
            bail!("the end line counts {end:?} but the file holds {seen:?}")
        }
        Some(_) => Ok(Checked {
            settings,
            counts: seen,
        }),
    }
}

/// Refuses a pepper mismatch before anything is written: the file's keys against the
/// target's own, and against the configured pepper.
async fn check_pepper(
    config: &Config,
    store: &dyn Store,
    settings: &[(String, String)],
) -> anyhow::Result<()> {
    let exported = settings
        .iter()
        .find(|(name, _)| name == PEPPER_CHECK_SETTING)
        .map(|(_, value)| value.as_str());
    let Some(exported) = exported else {
        return Ok(());
    };
    if let Some(target) = store.get_setting(PEPPER_CHECK_SETTING).await? {
        if target != exported {
            bail!("this database was set up with another pepper than the exported keys were made with; import into a fresh database");
        }
    }
    if let Some(hex) = &config.pepper {
        let pepper = parse_pepper(hex)?;
        if keygate_engine::pepper_check(&pepper) != exported {
            bail!("KEYGATE_PEPPER is not the pepper the exported keys were made with: they would all be refused. Use the source installation's pepper");
        }
    }
    Ok(())
}

pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config, &|name| std::env::var(name).ok())?;
    let source = Source::open(&args.file)?;
    let checked = check(&source)?;
    let store = open_store(&config.database_url, true).await?;
    check_pepper(&config, store.as_ref(), &checked.settings).await?;

    let mut done = Counts::default();
    for (name, value) in &checked.settings {
        if store.insert_setting_if_absent(name, value).await? {
            done.settings += 1;
        } else if name == ADMIN_DIGEST_SETTING
            && store.get_setting(name).await?.as_deref() != Some(value)
        {
            eprintln!("note: this database has an admin token of its own; it is kept");
        }
    }
    let mut batch = Batch::default();
    for record in source.records()? {
        let (_, record) = record?;
        batch.push(store.as_ref(), record, &mut done).await?;
    }
    batch.flush(store.as_ref(), &mut done).await?;

    let total = checked.counts;
    eprintln!(
        "imported into {}: {} of {} accounts, {} of {} keys, {} of {} audit events, {} of {} usage counts, {} of {} legacy key states (the rest were there already)",
        redact_url(&config.database_url),
        done.accounts,
        total.accounts,
        done.keys,
        total.keys,
        done.audit_events,
        total.audit_events,
        done.usage_counts,
        total.usage_counts,
        done.legacy_keys,
        total.legacy_keys,
    );
    if config.pepper.is_none() {
        eprintln!("start keygate on this database with the pepper of the exported installation (KEYGATE_PEPPER): the keys verify only with it");
    }
    Ok(())
}

/// Records waiting to be written together (one type at a time, in file order).
#[derive(Default)]
struct Batch {
    accounts: Vec<Account>,
    keys: Vec<KeyRecord>,
    audit: Vec<AuditEvent>,
    legacy: Vec<LegacyKey>,
}

impl Batch {
    async fn push(
        &mut self,
        store: &dyn Store,
        record: Line,
        done: &mut Counts,
    ) -> anyhow::Result<()> {
        // Keys need their accounts, so a batch of one type is written before the next type.
        let pending_other = match &record {
            Line::Account(_) => !self.keys.is_empty() || !self.audit.is_empty(),
            Line::Key(_) => !self.accounts.is_empty() || !self.audit.is_empty(),
            Line::Audit(_) => !self.accounts.is_empty() || !self.keys.is_empty(),
            Line::LegacyKey(_) => {
                !self.accounts.is_empty() || !self.keys.is_empty() || !self.audit.is_empty()
            }
            _ => true,
        };
        if pending_other {
            self.flush(store, done).await?;
        }
        match record {
            Line::Account(a) => self.accounts.push(a.into()),
            Line::Key(k) => self.keys.push(k.into_record()?),
            Line::Audit(e) => self.audit.push(e.into()),
            Line::LegacyKey(l) => self.legacy.push(l.into()),
            Line::Usage(u) => {
                let counts: Vec<UsageCount> = u
                    .counts
                    .into_iter()
                    .map(|c| UsageCount {
                        bucket: c.bucket,
                        outcome: c.outcome,
                        count: c.count,
                    })
                    .collect();
                done.usage_counts += store.import_usage(&u.key_id, &counts).await?;
            }
            Line::Setting(_) | Line::End(_) => {}
        }
        if self.accounts.len() + self.keys.len() + self.audit.len() + self.legacy.len() >= BATCH {
            self.flush(store, done).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, store: &dyn Store, done: &mut Counts) -> anyhow::Result<()> {
        if !self.accounts.is_empty() {
            done.accounts += store.import_accounts(&self.accounts).await?;
            self.accounts.clear();
        }
        if !self.keys.is_empty() {
            done.keys += store
                .import_keys(&self.keys)
                .await
                .context("cannot import keys (a key with the same digest but another id?)")?;
            self.keys.clear();
        }
        if !self.audit.is_empty() {
            done.audit_events += store.import_audit(&self.audit).await?;
            self.audit.clear();
        }
        if !self.legacy.is_empty() {
            done.legacy_keys += store.import_legacy_states(&self.legacy).await?;
            self.legacy.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source::Stdin(text.to_owned())
    }

    const HEADER: &str =
        r#"{"format":"keygate-export","version":1,"keygate":"0.1.0","exported_at":0}"#;
    const ACCOUNT: &str =
        r#"{"type":"account","id":"acct_1","name":"A","plan":"pro","created_at":1}"#;
    const END_ONE_ACCOUNT: &str =
        r#"{"type":"end","settings":0,"accounts":1,"keys":0,"audit_events":0,"usage_counts":0}"#;

    fn error(text: &str) -> String {
        match check(&source(text)) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_complete_file_is_accepted() {
        let checked = check(&source(&format!(
            "{HEADER}\n{ACCOUNT}\n{END_ONE_ACCOUNT}\n"
        )))
        .unwrap();
        assert_eq!(checked.counts.accounts, 1);
    }

    #[test]
    fn bad_files_are_refused_before_anything_is_written() {
        assert!(error("").contains("empty"));
        assert!(error("{}\n").contains("header"));
        let v2 = HEADER.replace("\"version\":1", "\"version\":2");
        assert!(error(&format!("{v2}\n")).contains("version 2"));
        // Cut off: no end line.
        assert!(error(&format!("{HEADER}\n{ACCOUNT}\n")).contains("cut off"));
        // The end line does not match.
        let end = END_ONE_ACCOUNT.replace("\"accounts\":1", "\"accounts\":2");
        assert!(error(&format!("{HEADER}\n{ACCOUNT}\n{end}\n")).contains("end line"));
        // Unknown fields and types, secrets included.
        let extra = ACCOUNT.replace("}", r#","secret":"kg_live_x"}"#);
        assert!(error(&format!("{HEADER}\n{extra}\n{END_ONE_ACCOUNT}\n")).contains("line 2"));
        let key = r#"{"type":"key","id":"key_1","account_id":"acct_9","name":"k","display_prefix":"kg_live_0000","digest":"00","environment":"live","permissions":[],"ip_allowlist":[],"rate_limit":null,"quota":null,"quota_used":0,"quota_refilled_at":null,"meta":{},"created_at":1,"last_used_at":null,"expires_at":null,"revoked_at":null,"rotated_from":null,"recent_ips":[]}"#;
        assert!(error(&format!("{HEADER}\n{ACCOUNT}\n{key}\n")).contains("does not hold"));
        let key = key.replace("acct_9", "acct_1");
        assert!(error(&format!("{HEADER}\n{ACCOUNT}\n{key}\n")).contains("digest"));
        // Out of order: an account after a key.
        let digest = "ab".repeat(32);
        let key = key.replace("\"digest\":\"00\"", &format!("\"digest\":\"{digest}\""));
        let text = format!(
            "{HEADER}\n{ACCOUNT}\n{key}\n{}\n",
            ACCOUNT.replace("acct_1", "acct_2")
        );
        assert!(error(&text).contains("out of order"));
    }
}
