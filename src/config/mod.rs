//! Settings: a TOML file, then `MAYFLY_*` environment overrides (`load`), then
//! `validate()` with messages that name the key and what is wrong (`validate`);
//! the sections' types here, `[limits]` in `limits`.
use crate::domain::IdPattern;
use crate::domain::retention::Retention;
use crate::identity::{Role, RoleMap};

mod limits;
mod load;
mod validate;

pub use limits::LimitsConfig;
pub use load::{ENV_DATABASE_URL, ENV_GRPC_ADDR, ENV_HTTP_ADDR};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    pub retention: RetentionConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub oauth: OauthConfig,
}

/// The OAuth front door, served on the mTLS port beside gRPC (`api::oauth`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OauthConfig {
    /// Where clients reach the mTLS port (`https://host:port`, maybe with a path
    /// prefix a proxy adds): the metadata's endpoints start with it. Unset, it is
    /// `server.issuer`.
    pub url: Option<String>,
    /// How often a client may poll a pending step-up approval (RFC 8628
    /// `interval`); sooner is answered `slow_down`.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for OauthConfig {
    fn default() -> Self {
        OauthConfig {
            url: None,
            poll_interval: default_poll(),
        }
    }
}

impl OauthConfig {
    /// The public base URL, without a trailing `/`.
    pub fn base_url<'a>(&'a self, issuer: &'a str) -> &'a str {
        self.url.as_deref().unwrap_or(issuer).trim_end_matches('/')
    }
}

fn default_poll() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How often committed audit events that arrived unsealed (an older
    /// broker's, during a rolling upgrade) are sealed into the
    /// hash chain: the most such an event waits before it is tamper-evident.
    /// Every other event is sealed as it commits.
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

/// How long what stopped mattering is kept, and how the pruner deletes it
/// (`domain::retention`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// How often the pruner looks for what is past its retention.
    #[serde(default = "default_prune_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Rows deleted per transaction.
    #[serde(default = "default_prune_batch")]
    pub batch: u32,
    /// Tokens, after they expire.
    #[serde(default = "default_keep_tokens", with = "humantime_serde")]
    pub tokens: Duration,
    /// Delegation offers never redeemed, after they lapse.
    #[serde(default = "default_keep_offers", with = "humantime_serde")]
    pub offers: Duration,
    /// Step-up approvals never used, after they lapse.
    #[serde(default = "default_keep_approvals", with = "humantime_serde")]
    pub approvals: Duration,
    /// Ended tasks, after they end (and once nothing of theirs is kept).
    #[serde(default = "default_keep_tasks", with = "humantime_serde")]
    pub tasks: Duration,
    /// Revocation events, after they happen: at least 25h (the longest token's
    /// life and a margin), so a verifier that resyncs misses no revocation of a
    /// token still valid.
    #[serde(default = "default_keep_revocations", with = "humantime_serde")]
    pub revocations: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            interval: default_prune_interval(),
            batch: default_prune_batch(),
            tokens: default_keep_tokens(),
            offers: default_keep_offers(),
            approvals: default_keep_approvals(),
            tasks: default_keep_tasks(),
            revocations: default_keep_revocations(),
        }
    }
}

impl RetentionConfig {
    pub fn retention(&self) -> Retention {
        Retention {
            tokens: self.tokens,
            offers: self.offers,
            approvals: self.approvals,
            tasks: self.tasks,
            revocations: self.revocations,
            batch: self.batch,
        }
    }
}

fn default_prune_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_prune_batch() -> u32 {
    Retention::default().batch
}
fn default_keep_tokens() -> Duration {
    Retention::default().tokens
}
fn default_keep_offers() -> Duration {
    Retention::default().offers
}
fn default_keep_approvals() -> Duration {
    Retention::default().approvals
}
fn default_keep_tasks() -> Duration {
    Retention::default().tasks
}
fn default_keep_revocations() -> Duration {
    Retention::default().revocations
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
    /// The `iss` claim of every token and the issuer identifier of the OAuth
    /// metadata (RFC 8414): an `https` URL without query or fragment.
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

impl Config {
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
