//! Configuration: `keygate.toml`, overridden by `KEYGATE_*` environment variables,
//! overridden by flags. Secrets (admin token, pepper) come from the file or the
//! environment only: flags show up in `ps`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

/// `keygate serve` flags.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Configuration file [default: ./keygate.toml when it exists].
    #[arg(long, env = "KEYGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the admin/verify listener [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<String>,
    /// `sqlite://PATH` [default: sqlite://keygate.db].
    #[arg(long)]
    pub database_url: Option<String>,
    /// Key prefix [default: kg].
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Put the environment in keys (`kg_live_…`) [default: true].
    #[arg(long)]
    pub env_in_key: Option<bool>,
    /// Plan of new accounts [default: basic].
    #[arg(long)]
    pub default_plan: Option<String>,
}

#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Active keys allowed; absent means unlimited.
    pub max_keys: Option<u64>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub method: String,
    pub path: String,
    pub permission: String,
}

/// Everything `keygate serve` reads, after merging the three sources.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub database_url: String,
    pub admin_token: Option<String>,
    pub verify_token: Option<String>,
    pub pepper: Option<String>,
    pub key_prefix: String,
    pub env_in_key: bool,
    pub default_plan: String,
    pub plans: BTreeMap<String, PlanConfig>,
    pub routes: Vec<RouteConfig>,
    pub trusted_proxies: Vec<String>,
    pub body_limit_bytes: usize,
    pub cache_capacity: u64,
    pub cache_ttl_seconds: u64,
    pub negative_cache_ttl_seconds: u64,
    pub stale_if_error_seconds: u64,
    pub usage_flush_seconds: u64,
    pub usage_retention_days: u64,
    pub log: String,
    pub log_format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://keygate.db".into(),
            admin_token: None,
            verify_token: None,
            pepper: None,
            key_prefix: "kg".into(),
            env_in_key: true,
            default_plan: "basic".into(),
            plans: BTreeMap::new(),
            routes: Vec::new(),
            trusted_proxies: Vec::new(),
            body_limit_bytes: 64 * 1024,
            cache_capacity: 200_000,
            cache_ttl_seconds: 60,
            negative_cache_ttl_seconds: 10,
            stale_if_error_seconds: 300,
            usage_flush_seconds: 5,
            usage_retention_days: 90,
            log: "info".into(),
            log_format: "text".into(),
        }
    }
}

/// Where the environment comes from (a closure so tests can supply their own).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// File, then environment, then flags.
    pub fn load(args: &ServeArgs, env: Env<'_>) -> anyhow::Result<Config> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => {
                let default = PathBuf::from("keygate.toml");
                if default.exists() {
                    Self::from_file(&default)?
                } else {
                    Config::default()
                }
            }
        };
        config.apply_env(env)?;
        config.apply_flags(args);
        Ok(config)
    }

    fn from_file(path: &PathBuf) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("invalid configuration in {}", path.display()))
    }

    fn apply_env(&mut self, env: Env<'_>) -> anyhow::Result<()> {
        let set = |target: &mut String, name: &str| {
            if let Some(v) = env(name) {
                *target = v;
            }
        };
        set(&mut self.listen, "KEYGATE_LISTEN");
        set(&mut self.database_url, "KEYGATE_DATABASE_URL");
        set(&mut self.key_prefix, "KEYGATE_KEY_PREFIX");
        set(&mut self.default_plan, "KEYGATE_DEFAULT_PLAN");
        set(&mut self.log, "KEYGATE_LOG");
        set(&mut self.log_format, "KEYGATE_LOG_FORMAT");
        for (target, name) in [
            (&mut self.admin_token, "KEYGATE_ADMIN_TOKEN"),
            (&mut self.verify_token, "KEYGATE_VERIFY_TOKEN"),
            (&mut self.pepper, "KEYGATE_PEPPER"),
        ] {
            if let Some(v) = env(name) {
                *target = Some(v);
            }
        }
        if let Some(v) = env("KEYGATE_ENV_IN_KEY") {
            self.env_in_key = parse_bool(&v).context("KEYGATE_ENV_IN_KEY must be true or false")?;
        }
        if let Some(v) = env("KEYGATE_TRUSTED_PROXIES") {
            self.trusted_proxies = v
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        for (target, name) in [
            (&mut self.cache_ttl_seconds, "KEYGATE_CACHE_TTL_SECONDS"),
            (&mut self.usage_flush_seconds, "KEYGATE_USAGE_FLUSH_SECONDS"),
            (
                &mut self.negative_cache_ttl_seconds,
                "KEYGATE_NEGATIVE_CACHE_TTL_SECONDS",
            ),
        ] {
            if let Some(v) = env(name) {
                *target = v
                    .parse()
                    .with_context(|| format!("{name} must be a whole number of seconds"))?;
            }
        }
        Ok(())
    }

    fn apply_flags(&mut self, args: &ServeArgs) {
        if let Some(v) = &args.listen {
            self.listen = v.clone();
        }
        if let Some(v) = &args.database_url {
            self.database_url = v.clone();
        }
        if let Some(v) = &args.key_prefix {
            self.key_prefix = v.clone();
        }
        if let Some(v) = args.env_in_key {
            self.env_in_key = v;
        }
        if let Some(v) = &args.default_plan {
            self.default_plan = v.clone();
        }
    }

    /// The reference plans, with the file's plans added or overriding them.
    pub fn plans(&self) -> anyhow::Result<keygate_engine::Plans> {
        let mut caps = BTreeMap::from([
            ("basic".to_owned(), Some(2)),
            ("pro".to_owned(), Some(20)),
            ("unlimited".to_owned(), None),
        ]);
        for (name, plan) in &self.plans {
            caps.insert(name.clone(), plan.max_keys);
        }
        match keygate_engine::Plans::new(caps, self.default_plan.clone()) {
            Some(p) => Ok(p),
            None => bail!(
                "default plan {:?} is not a configured plan",
                self.default_plan
            ),
        }
    }

    pub fn route_table(&self) -> anyhow::Result<keygate_core::RouteTable> {
        let routes = self
            .routes
            .iter()
            .map(|r| {
                keygate_core::Route::new(&r.method, &r.path, &r.permission)
                    .with_context(|| format!("invalid route {} {}", r.method, r.path))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(keygate_core::RouteTable::new(routes))
    }

    pub fn trusted_proxies(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .iter()
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .with_context(|| {
                        format!("trusted_proxies: {s:?} is not an address or CIDR block")
                    })
            })
            .collect()
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\nkey_prefix = \"oim\"\nenv_in_key = false\ndefault_plan = \"pro\"\n[plans.team]\nmax_keys = 50\n[[routes]]\nmethod = \"POST\"\npath = \"/api/v1/invoices/{id}/send\"\npermission = \"invoices.send\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let none = |_: &str| None;
        let c = Config::load(&args, &none).unwrap();
        assert_eq!(
            (c.listen.as_str(), c.key_prefix.as_str(), c.env_in_key),
            ("127.0.0.1:1", "oim", false)
        );
        assert_eq!(c.plans().unwrap().max_keys("team"), Some(50));
        assert_eq!(c.plans().unwrap().max_keys("basic"), Some(2));
        assert_eq!(c.plans().unwrap().max_keys("unlimited"), None);
        assert!(c.route_table().is_ok());

        let env = |name: &str| match name {
            "KEYGATE_LISTEN" => Some("127.0.0.1:2".to_owned()),
            "KEYGATE_ENV_IN_KEY" => Some("true".to_owned()),
            _ => None,
        };
        let c = Config::load(&args, &env).unwrap();
        assert_eq!((c.listen.as_str(), c.env_in_key), ("127.0.0.1:2", true));

        let args = ServeArgs {
            listen: Some("127.0.0.1:3".into()),
            ..args
        };
        assert_eq!(Config::load(&args, &env).unwrap().listen, "127.0.0.1:3");
    }

    #[test]
    fn mistakes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(Config::load(&args, &|_| None).is_err());
        let bad_bool = |n: &str| (n == "KEYGATE_ENV_IN_KEY").then(|| "maybe".to_owned());
        assert!(Config::load(&ServeArgs::default(), &bad_bool).is_err());
        let c = Config {
            default_plan: "gold".into(),
            ..Config::default()
        };
        assert!(c.plans().is_err());
    }
}
