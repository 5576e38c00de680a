//! Settings: a TOML file, then `MAYFLY_*` environment overrides, then `validate()`
//! with messages that name the key and what is wrong.
use crate::domain::IdPattern;
use crate::identity::{Role, RoleMap};
use crate::store::DatabaseUrl;

mod limits;

pub use limits::LimitsConfig;
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A value that must never be printed (a database URL may carry a password).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {why}")]
    Read { path: String, why: String },
    #[error("config file {path}: {why}")]
    Parse { path: String, why: String },
    #[error("environment variable {var}: {why}")]
    Env { var: &'static str, why: String },
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    pub trust_domains: Vec<TrustDomainConfig>,
    pub roles: RolesConfig,
    #[serde(default)]
    pub tasks: TasksConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub revocation: RevocationConfig,
    pub policy: PolicyConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How often committed audit events are sealed into the hash chain: the most
    /// an event waits before it is tamper-evident.
    #[serde(default = "default_seal_interval", with = "humantime_serde")]
    pub seal_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            seal_interval: default_seal_interval(),
        }
    }
}

fn default_seal_interval() -> Duration {
    Duration::from_millis(100)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC (mTLS) listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address: JWKS, health, readiness.
    pub http_addr: SocketAddr,
    /// The broker's own certificate chain (PEM) and private key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The `iss` claim of every token.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// How long to wait for open streams to drain on shutdown.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How often the certificate, key and trust bundle files are checked for
    /// changes (SPIRE rotates them); changed, they are reloaded for new connections.
    #[serde(default = "default_tls_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(5)
}

fn default_issuer() -> String {
    "mayfly".into()
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: Option<Secret>,
    #[serde(default = "default_pool")]
    pub max_connections: u32,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Apply the migrations at start (true), or only check that the schema is
    /// current (false: another role owns it and runs `mayfly migrate`).
    #[serde(default = "default_true")]
    pub migrate: bool,
    /// How often a background probe checks that the store answers. Once it does
    /// not, calls fail fast (UNAVAILABLE) and the probe retries with backoff
    /// (from 50 ms up to this interval) until it does again.
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub probe_interval: Duration,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_true() -> bool {
    true
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_ref().map(|_| "***"))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("migrate", &self.migrate)
            .field("probe_interval", &self.probe_interval)
            .finish()
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: default_pool(),
            connect_timeout: default_connect_timeout(),
            migrate: true,
            probe_interval: default_probe_interval(),
        }
    }
}

fn default_pool() -> u32 {
    16
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustDomainConfig {
    pub name: String,
    /// PEM file with the trust domain's CA certificates.
    pub bundle: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesConfig {
    #[serde(default)]
    pub agent: Vec<IdPattern>,
    #[serde(default)]
    pub orchestrator: Vec<IdPattern>,
    #[serde(default)]
    pub admin: Vec<IdPattern>,
    #[serde(default)]
    pub verifier: Vec<IdPattern>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksConfig {
    /// How often the sweeper looks for tasks past their deadline.
    #[serde(default = "default_sweep", with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// How long a step-up approval waits for a decision and, once approved, for
    /// its one token (never past the task's deadline).
    #[serde(default = "default_approval_ttl", with = "humantime_serde")]
    pub approval_ttl: Duration,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            sweep_interval: default_sweep(),
            approval_ttl: default_approval_ttl(),
        }
    }
}

fn default_approval_ttl() -> Duration {
    crate::domain::DEFAULT_APPROVAL_TTL
}

fn default_sweep() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// How often the broker renews the registration of its signing key; a key stays
    /// published for two heartbeats plus the longest token TTL after its last renewal.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            heartbeat: default_heartbeat(),
        }
    }
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// How long a caught-up watch stream stays quiet before it sends a heartbeat;
    /// verifiers size their staleness bound from it.
    #[serde(default = "default_watch_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How often a watch stream re-reads the store without being woken: the safety
    /// net under LISTEN/NOTIFY, bounding how late a lost notification can make an
    /// event.
    #[serde(default = "default_watch_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        RevocationConfig {
            heartbeat: default_watch_heartbeat(),
            poll_interval: default_watch_poll(),
        }
    }
}

fn default_watch_heartbeat() -> Duration {
    Duration::from_secs(5)
}

fn default_watch_poll() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory with `schema.cedarschema`, `*.cedar` policies and `entities.json`.
    pub dir: PathBuf,
    /// Passed to every decision as `context.environment`.
    pub environment: String,
    /// How often the directory is checked for changes (SIGHUP reloads at once).
    #[serde(default = "default_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload() -> Duration {
    Duration::from_secs(2)
}

/// Environment overrides applied after the file.
pub const ENV_DATABASE_URL: &str = "MAYFLY_DATABASE_URL";
pub const ENV_GRPC_ADDR: &str = "MAYFLY_GRPC_ADDR";
pub const ENV_HTTP_ADDR: &str = "MAYFLY_HTTP_ADDR";

impl Config {
    /// Reads the file, applies the environment, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
        let mut cfg = Self::parse(&text, &path.display().to_string())?;
        // Relative paths in the file are relative to the file.
        if let Some(dir) = path.parent() {
            cfg.resolve_paths(dir);
        }
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: source.to_string(),
            why: e.to_string(),
        })
    }

    /// Makes relative paths (and a relative SQLite file) relative to `dir`.
    pub fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.server.cert);
        fix(&mut self.server.key);
        fix(&mut self.policy.dir);
        for td in &mut self.trust_domains {
            fix(&mut td.bundle);
        }
        // A SQLite file named in the file is relative to the file too.
        if let Some(url) = &self.database.url
            && let Ok(parsed @ DatabaseUrl::Sqlite(_)) = DatabaseUrl::parse(url.expose())
        {
            self.database.url = Some(Secret::new(parsed.relative_to(dir).to_url()));
        }
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(url) = get(ENV_DATABASE_URL) {
            self.database.url = Some(Secret::new(url));
        }
        let addr = |var: &'static str, v: String| {
            v.parse::<SocketAddr>().map_err(|e| ConfigError::Env {
                var,
                why: format!("{v:?} is not a socket address (host:port): {e}"),
            })
        };
        if let Some(v) = get(ENV_GRPC_ADDR) {
            self.server.grpc_addr = addr(ENV_GRPC_ADDR, v)?;
        }
        if let Some(v) = get(ENV_HTTP_ADDR) {
            self.server.http_addr = addr(ENV_HTTP_ADDR, v)?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.database.url {
            None => {
                return Err(invalid(
                    "database.url",
                    format!("is not set (set it in the file or with {ENV_DATABASE_URL})"),
                ));
            }
            Some(u) => {
                DatabaseUrl::parse(u.expose()).map_err(|why| invalid("database.url", why))?;
            }
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60))
            .contains(&self.database.probe_interval)
        {
            return Err(invalid(
                "database.probe_interval",
                "must be between 100ms and 60s",
            ));
        }
        self.limits.validate()?;
        if self.server.grpc_addr == self.server.http_addr && self.server.grpc_addr.port() != 0 {
            return Err(invalid(
                "server.http_addr",
                "must differ from server.grpc_addr",
            ));
        }
        if self.server.issuer.trim().is_empty() {
            return Err(invalid("server.issuer", "must not be empty"));
        }
        if self.trust_domains.is_empty() {
            return Err(invalid(
                "trust_domains",
                "at least one trust domain is required",
            ));
        }
        let mut seen = HashSet::new();
        for (i, td) in self.trust_domains.iter().enumerate() {
            let probe = format!("spiffe://{}/x", td.name);
            if let Err(e) = crate::domain::SpiffeId::parse(&probe) {
                return Err(invalid(format!("trust_domains[{i}].name"), e.to_string()));
            }
            if !seen.insert(td.name.as_str()) {
                return Err(invalid(
                    format!("trust_domains[{i}].name"),
                    format!("{:?} is listed twice", td.name),
                ));
            }
        }
        // An agent must never hold the admin or orchestrator role: refuse patterns
        // that could give one identity both.
        for (other, list) in [
            ("admin", &self.roles.admin),
            ("orchestrator", &self.roles.orchestrator),
        ] {
            for a in &self.roles.agent {
                if let Some(o) = list.iter().find(|o| a.overlaps(o)) {
                    return Err(invalid(
                        format!("roles.{other}"),
                        format!(
                            "{} can match the same SPIFFE ID as agent pattern {}; an agent must never hold the {other} role",
                            o.as_str(),
                            a.as_str()
                        ),
                    ));
                }
            }
        }
        if self.tasks.sweep_interval.is_zero() {
            return Err(invalid("tasks.sweep_interval", "must be greater than zero"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600))
            .contains(&self.tasks.approval_ttl)
        {
            return Err(invalid("tasks.approval_ttl", "must be between 1s and 24h"));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60))
            .contains(&self.audit.seal_interval)
        {
            return Err(invalid(
                "audit.seal_interval",
                "must be between 10ms and 60s",
            ));
        }
        if self.keys.heartbeat.is_zero() {
            return Err(invalid("keys.heartbeat", "must be greater than zero"));
        }
        if self.revocation.heartbeat < Duration::from_millis(10) {
            return Err(invalid("revocation.heartbeat", "must be at least 10ms"));
        }
        if self.revocation.poll_interval < Duration::from_millis(10) {
            return Err(invalid("revocation.poll_interval", "must be at least 10ms"));
        }
        if self.policy.environment.trim().is_empty() {
            return Err(invalid("policy.environment", "must not be empty"));
        }
        for (key, every) in [
            ("server.reload_interval", self.server.reload_interval),
            ("policy.reload_interval", self.policy.reload_interval),
        ] {
            if every.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
            if every > Duration::from_secs(86_400) {
                return Err(invalid(key, "must be at most 24h"));
            }
        }
        Ok(())
    }

    pub fn role_map(&self) -> RoleMap {
        let r = &self.roles;
        let mut entries = vec![];
        for (role, list) in [
            (Role::Agent, &r.agent),
            (Role::Orchestrator, &r.orchestrator),
            (Role::Admin, &r.admin),
            (Role::Verifier, &r.verifier),
        ] {
            entries.extend(list.iter().cloned().map(|p| (role, p)));
        }
        RoleMap::new(entries)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;
