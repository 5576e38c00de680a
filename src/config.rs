//! Settings: a TOML file, then `MAYFLY_*` environment overrides, then `validate()`
//! with messages that name the key and what is wrong.
use crate::domain::IdPattern;
use crate::identity::{Role, RoleMap};
use crate::store::DatabaseUrl;
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

/// What a client may cost the broker before (and after) it has proved who it is:
/// connections, handshakes, deadlines, HTTP/2 settings and message sizes. Every
/// listener is held to them. The defaults are what a broker facing an untrusted
/// network should run with; README "Hardening and limits" explains each.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open connections, all listeners together (each costs a file descriptor).
    /// Clamped at start to what the process's file descriptor limit leaves after
    /// the database pool and files. At the cap, a new connection evicts the
    /// oldest one that has not proved an identity (a handshake in progress, a
    /// connection without a valid SVID, any HTTP-port connection); if every
    /// connection has, the new one is closed at once.
    pub max_connections: usize,
    /// TLS handshakes in progress at once, counted from the ClientHello (a client
    /// that never sends one holds no handshake slot). At the cap, the oldest
    /// handshake in progress is dropped for the new one.
    pub max_handshakes: usize,
    /// From accepting the TCP connection to the end of the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// From the end of the handshake (or the TCP accept, on the HTTP port) to
    /// the first request; also how long a connection without a valid X.509-SVID
    /// may stay open with no call in flight.
    #[serde(with = "humantime_serde")]
    pub first_request_timeout: Duration,
    /// How long an authenticated connection may stay open with no call in flight.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/1 (the HTTP port): the time to receive a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// HTTP/2 keepalive: a PING after this long without frames; no answer within
    /// `keepalive_timeout` closes the connection.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// HTTP/2 streams (calls) in flight on one connection.
    pub max_concurrent_streams: u32,
    /// Request headers (HTTP/2 header list, HTTP/1 header block), in bytes.
    pub max_header_bytes: u32,
    /// Largest request message per gRPC service, in bytes. TaskService carries
    /// objectives and scope lists; the others tokens, IDs and short reasons.
    pub task_message_bytes: usize,
    pub token_message_bytes: usize,
    pub admin_message_bytes: usize,
    pub verifier_message_bytes: usize,
    /// Refused handshakes, refused and evicted connections are counted in
    /// metrics and summed up in one log line per interval, never logged one by one.
    #[serde(with = "humantime_serde")]
    pub log_summary_interval: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 4096,
            max_handshakes: 512,
            handshake_timeout: Duration::from_secs(5),
            first_request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            header_read_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 128,
            max_header_bytes: 16 * 1024,
            task_message_bytes: 64 * 1024,
            token_message_bytes: 16 * 1024,
            admin_message_bytes: 16 * 1024,
            verifier_message_bytes: 16 * 1024,
            log_summary_interval: Duration::from_secs(60),
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let l = self;
        for (key, n, min, max) in [
            ("limits.max_connections", l.max_connections, 16, 1_000_000),
            ("limits.max_handshakes", l.max_handshakes, 1, 100_000),
            (
                "limits.max_concurrent_streams",
                l.max_concurrent_streams as usize,
                1,
                10_000,
            ),
            (
                "limits.max_header_bytes",
                l.max_header_bytes as usize,
                4096,
                1 << 20,
            ),
            (
                "limits.task_message_bytes",
                l.task_message_bytes,
                1024,
                16 << 20,
            ),
            (
                "limits.token_message_bytes",
                l.token_message_bytes,
                1024,
                16 << 20,
            ),
            (
                "limits.admin_message_bytes",
                l.admin_message_bytes,
                1024,
                16 << 20,
            ),
            (
                "limits.verifier_message_bytes",
                l.verifier_message_bytes,
                1024,
                16 << 20,
            ),
        ] {
            if !(min..=max).contains(&n) {
                return Err(invalid(key, format!("must be between {min} and {max}")));
            }
        }
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        for (key, d, min, max) in [
            (
                "limits.handshake_timeout",
                l.handshake_timeout,
                ms(100),
                s(60),
            ),
            (
                "limits.first_request_timeout",
                l.first_request_timeout,
                ms(100),
                s(300),
            ),
            ("limits.idle_timeout", l.idle_timeout, s(1), s(86_400)),
            (
                "limits.header_read_timeout",
                l.header_read_timeout,
                ms(100),
                s(60),
            ),
            (
                "limits.keepalive_interval",
                l.keepalive_interval,
                s(1),
                s(3600),
            ),
            (
                "limits.keepalive_timeout",
                l.keepalive_timeout,
                ms(100),
                s(300),
            ),
            (
                "limits.log_summary_interval",
                l.log_summary_interval,
                s(1),
                s(3600),
            ),
        ] {
            if !(min..=max).contains(&d) {
                return Err(invalid(
                    key,
                    format!(
                        "must be between {} and {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                ));
            }
        }
        Ok(())
    }
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
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
grpc_addr = "127.0.0.1:8443"
http_addr = "127.0.0.1:8080"
cert = "broker.crt"
key = "broker.key"

[database]
url = "postgres://postgres@127.0.0.1/mayfly"

[[trust_domains]]
name = "example.org"
bundle = "ca.pem"

[roles]
agent = ["spiffe://example.org/agent/*"]

[policy]
dir = "policies"
environment = "prod-eu"
"#;

    fn err_of(text: &str) -> String {
        match Config::parse(text, "t.toml").and_then(|c| c.validate().map(|_| c)) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_file_loads() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        c.validate().unwrap();
        assert_eq!(c.policy.reload_interval, Duration::from_secs(2));
    }

    #[test]
    fn errors_name_the_key() {
        let e = err_of(&GOOD.replace("environment = \"prod-eu\"", "environment = \"\""));
        assert_eq!(e, "policy.environment: must not be empty");
        let e = err_of(&GOOD.replace("grpc_addr = \"127.0.0.1:8443\"", "grpc_addr = \"nope\""));
        assert!(e.contains("grpc_addr"), "{e}");
        let e = err_of(&GOOD.replace("[database]", "[database]\nbogus = 1"));
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = err_of(&GOOD.replace(
            "\"spiffe://example.org/agent/*\"]\n\n[policy]",
            "\"http://x\"]\n\n[policy]",
        ));
        assert!(e.contains("invalid SPIFFE ID pattern"), "{e}");
        let e = err_of(&GOOD.replace("url = \"postgres://postgres@127.0.0.1/mayfly\"", ""));
        assert!(e.starts_with("database.url: is not set"), "{e}");
        let e = err_of(&GOOD.replace(
            "agent = [\"spiffe://example.org/agent/*\"]\n",
            "agent = [\"spiffe://example.org/agent/*\"]\nadmin = [\"spiffe://example.org/**\"]\n",
        ));
        assert!(
            e.starts_with("roles.admin: spiffe://example.org/** can match"),
            "{e}"
        );
        let e = err_of(&GOOD.replace(
            "environment = \"prod-eu\"",
            "environment = \"prod-eu\"\nreload_interval = \"5 parsecs\"",
        ));
        assert!(e.contains("reload_interval"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file_and_bad_values_are_named() {
        let mut c = Config::parse(GOOD, "t.toml").unwrap();
        c.apply_env(|k| match k {
            ENV_GRPC_ADDR => Some("0.0.0.0:9443".into()),
            ENV_DATABASE_URL => Some("postgres://other/db".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.server.grpc_addr.port(), 9443);
        assert_eq!(
            c.database.url.as_ref().unwrap().expose(),
            "postgres://other/db"
        );
        let e = c
            .apply_env(|k| (k == ENV_HTTP_ADDR).then(|| "localhost".to_string()))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("environment variable MAYFLY_HTTP_ADDR"),
            "{e}"
        );
    }

    #[test]
    fn the_database_url_is_never_printed() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert!(!format!("{c:?}").contains("postgres://"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::testing::{any_text, matching, toml_string as quoted};
    use proptest::prelude::*;

    /// Every key of the file, by section, with the value the base document gives
    /// it (a complete, valid configuration).
    const KEYS: &[(&str, &str, &str)] = &[
        ("server", "grpc_addr", "\"127.0.0.1:8443\""),
        ("server", "http_addr", "\"127.0.0.1:8080\""),
        ("server", "cert", "\"broker.crt\""),
        ("server", "key", "\"broker.key\""),
        ("server", "issuer", "\"mayfly\""),
        ("server", "shutdown_grace", "\"10s\""),
        ("server", "reload_interval", "\"5s\""),
        (
            "database",
            "url",
            "\"postgres://postgres@127.0.0.1/mayfly\"",
        ),
        ("database", "max_connections", "16"),
        ("database", "connect_timeout", "\"5s\""),
        ("database", "migrate", "true"),
        ("database", "probe_interval", "\"1s\""),
        ("trust_domains", "name", "\"example.org\""),
        ("trust_domains", "bundle", "\"ca.pem\""),
        ("roles", "agent", "[\"spiffe://example.org/agent/*\"]"),
        (
            "roles",
            "orchestrator",
            "[\"spiffe://example.org/orchestrator/*\"]",
        ),
        ("roles", "admin", "[\"spiffe://example.org/admin/*\"]"),
        ("roles", "verifier", "[\"spiffe://example.org/verifier/*\"]"),
        ("tasks", "sweep_interval", "\"1s\""),
        ("tasks", "approval_ttl", "\"15m\""),
        ("keys", "heartbeat", "\"60s\""),
        ("revocation", "heartbeat", "\"5s\""),
        ("revocation", "poll_interval", "\"2s\""),
        ("policy", "dir", "\"policies\""),
        ("policy", "environment", "\"prod-eu\""),
        ("policy", "reload_interval", "\"2s\""),
        ("audit", "seal_interval", "\"100ms\""),
        ("limits", "max_connections", "4096"),
        ("limits", "max_handshakes", "512"),
        ("limits", "handshake_timeout", "\"5s\""),
        ("limits", "first_request_timeout", "\"5s\""),
        ("limits", "idle_timeout", "\"5m\""),
        ("limits", "header_read_timeout", "\"5s\""),
        ("limits", "keepalive_interval", "\"30s\""),
        ("limits", "keepalive_timeout", "\"10s\""),
        ("limits", "max_concurrent_streams", "128"),
        ("limits", "max_header_bytes", "16384"),
        ("limits", "task_message_bytes", "65536"),
        ("limits", "token_message_bytes", "16384"),
        ("limits", "admin_message_bytes", "16384"),
        ("limits", "verifier_message_bytes", "16384"),
        ("limits", "log_summary_interval", "\"60s\""),
    ];

    /// The base document with key `over.0` of [`KEYS`] set to the TOML text `over.1`.
    fn document(over: Option<(usize, &str)>) -> String {
        let mut out = String::new();
        let mut section = "";
        for (i, (sec, key, value)) in KEYS.iter().enumerate() {
            if *sec != section {
                out += &if *sec == "trust_domains" {
                    "\n[[trust_domains]]\n".to_string()
                } else {
                    format!("\n[{sec}]\n")
                };
                section = sec;
            }
            let value = match over {
                Some((j, v)) if j == i => v,
                _ => value,
            };
            out += &format!("{key} = {value}\n");
        }
        out
    }

    /// The base document, parsed once.
    static BASE: std::sync::LazyLock<Config> = std::sync::LazyLock::new(|| {
        Config::parse(&document(None), "mayfly.toml").expect("the base document parses")
    });

    fn load(text: &str) -> Result<Config, ConfigError> {
        let c = Config::parse(text, "mayfly.toml")?;
        c.validate()?;
        Ok(c)
    }

    /// Durations as humantime reads them, and near misses.
    fn duration_text() -> impl Strategy<Value = String> {
        matching("[0-9]{1,22} ?(ns|us|ms|s|sec|m|min|h|d|w|M|y|years|parsecs|)( [0-9]{1,3}(s|m))?")
    }

    fn address_text() -> impl Strategy<Value = String> {
        matching(
            "(127\\.0\\.0\\.1|0\\.0\\.0\\.0|\\[::1\\]|::1|localhost|999\\.1\\.1\\.1|\\[::ffff:1\\.2\\.3\\.4\\]|)(:[0-9]{0,6})?",
        )
    }

    fn pattern_text() -> impl Strategy<Value = String> {
        matching("(spiffe://|https://|)(example\\.org|Ex\\.org|\\*|)(/[a-z*]{0,3}){0,3}")
    }

    /// The text of one TOML value (on one line) of any type, or not TOML at all.
    fn toml_value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => duration_text().prop_map(|s| quoted(&s)),
            2 => address_text().prop_map(|s| quoted(&s)),
            2 => prop::collection::vec(pattern_text(), 0..3)
                .prop_map(|v| format!("[{}]", v.iter().map(|p| quoted(p)).collect::<Vec<_>>().join(", "))),
            2 => any_text().prop_map(|s| quoted(&s)),
            1 => matching("(postgres|postgresql|sqlite|mysql|)(:|://)[a-z:/@.?=]{0,16}").prop_map(|s| quoted(&s)),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => prop_oneof![Just(0i64), Just(-1), Just(1), Just(i64::from(u32::MAX) + 1)].prop_map(|n| n.to_string()),
            1 => any::<f64>().prop_map(|f| if f.is_finite() { format!("{f:?}") } else { "nan".into() }),
            1 => any::<bool>().prop_map(|b| b.to_string()),
            1 => Just("1979-05-27T07:32:00Z".to_string()),
            1 => Just("[]".to_string()),
            1 => Just("{ a = 1 }".to_string()),
            1 => Just("[1, \"2\"]".to_string()),
            // Not a value: the error is still on this key's line.
            1 => matching("[a-z0-9 =,.:+-]{0,12}"),
        ]
    }

    /// Where [`Config::validate`] wants each duration key, as (least, most).
    fn duration_range(section: &str, key: &str) -> Option<(Duration, Duration)> {
        let ms = Duration::from_millis;
        let day = Duration::from_secs(86_400);
        let positive = Duration::from_nanos(1);
        Some(match (section, key) {
            ("server", "shutdown_grace") | ("database", "connect_timeout") => {
                (Duration::ZERO, Duration::MAX)
            }
            ("server", "reload_interval") | ("policy", "reload_interval") => (positive, day),
            ("tasks", "sweep_interval") | ("keys", "heartbeat") => (positive, Duration::MAX),
            ("tasks", "approval_ttl") => (Duration::from_secs(1), day),
            ("revocation", "heartbeat") | ("revocation", "poll_interval") => {
                (ms(10), Duration::MAX)
            }
            ("audit", "seal_interval") => (ms(10), ms(60_000)),
            ("database", "probe_interval") => (ms(100), ms(60_000)),
            ("limits", "handshake_timeout") | ("limits", "header_read_timeout") => {
                (ms(100), ms(60_000))
            }
            ("limits", "first_request_timeout") => (ms(100), ms(300_000)),
            ("limits", "idle_timeout") => (ms(1000), day),
            ("limits", "keepalive_interval") => (ms(1000), ms(3_600_000)),
            ("limits", "keepalive_timeout") => (ms(100), ms(300_000)),
            ("limits", "log_summary_interval") => (ms(1000), ms(3_600_000)),
            _ => return None,
        })
    }

    fn duration_field<'c>(c: &'c mut Config, section: &str, key: &str) -> &'c mut Duration {
        match (section, key) {
            ("server", "shutdown_grace") => &mut c.server.shutdown_grace,
            ("server", "reload_interval") => &mut c.server.reload_interval,
            ("database", "connect_timeout") => &mut c.database.connect_timeout,
            ("tasks", "sweep_interval") => &mut c.tasks.sweep_interval,
            ("tasks", "approval_ttl") => &mut c.tasks.approval_ttl,
            ("keys", "heartbeat") => &mut c.keys.heartbeat,
            ("revocation", "heartbeat") => &mut c.revocation.heartbeat,
            ("revocation", "poll_interval") => &mut c.revocation.poll_interval,
            ("policy", "reload_interval") => &mut c.policy.reload_interval,
            ("audit", "seal_interval") => &mut c.audit.seal_interval,
            ("database", "probe_interval") => &mut c.database.probe_interval,
            ("limits", "handshake_timeout") => &mut c.limits.handshake_timeout,
            ("limits", "first_request_timeout") => &mut c.limits.first_request_timeout,
            ("limits", "idle_timeout") => &mut c.limits.idle_timeout,
            ("limits", "header_read_timeout") => &mut c.limits.header_read_timeout,
            ("limits", "keepalive_interval") => &mut c.limits.keepalive_interval,
            ("limits", "keepalive_timeout") => &mut c.limits.keepalive_timeout,
            ("limits", "log_summary_interval") => &mut c.limits.log_summary_interval,
            _ => unreachable!("{section}.{key} is not a duration"),
        }
    }

    #[test]
    fn the_base_document_of_the_properties_is_valid() {
        load(&document(None)).expect("the base document loads");
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_text_is_a_config_or_an_error_without_panicking(s in any_text()) {
            if let Ok(c) = Config::parse(&s, "mayfly.toml") {
                let _ = c.validate();
            }
        }

        #[test]
        fn any_value_of_any_key_loads_or_is_refused_naming_the_key(
            i in 0..KEYS.len(),
            value in toml_value(),
        ) {
            let (section, key, _) = KEYS[i];
            let text = document(Some((i, &value)));
            match load(&text) {
                Ok(_) => {}
                Err(ConfigError::Parse { why, .. }) => {
                    // toml shows the line of the value, which starts with its key.
                    prop_assert!(why.contains(&format!("{key} = ")), "{key} = {value}: {why}");
                }
                Err(ConfigError::Invalid { key: named, why }) => {
                    let expected = if section == "trust_domains" {
                        format!("trust_domains[0].{key}")
                    } else {
                        format!("{section}.{key}")
                    };
                    // A value may clash with another key's: then both are named.
                    prop_assert!(named == expected || why.contains(key),
                        "{key} = {value}: {named}: {why}");
                }
                Err(e) => prop_assert!(false, "{key} = {value}: {e}"),
            }
        }

        #[test]
        fn a_duration_is_accepted_exactly_within_its_keys_range(
            i in prop::sample::select(
                (0..KEYS.len()).filter(|&i| duration_range(KEYS[i].0, KEYS[i].1).is_some()).collect::<Vec<_>>(),
            ),
            nanos in prop_oneof![
                prop::sample::select(vec![0u64, 1, 9_999_999, 10_000_000, 10_000_001, 999_999_999, 1_000_000_000]),
                prop::sample::select(vec![60_000_000_000u64, 60_000_000_001, 86_400_000_000_000, 86_400_000_000_001]),
                0u64..100_000_000_000_000,
                any::<u64>(),
            ],
        ) {
            // The file's durations reach validate() through humantime_serde, which
            // the key-by-key property above drives; this one asks validate() alone.
            let (section, key, _) = KEYS[i];
            let d = Duration::from_nanos(nanos);
            let mut c = BASE.clone();
            *duration_field(&mut c, section, key) = d;
            let (least, most) = duration_range(section, key).expect("a duration key");
            match c.validate() {
                Ok(()) => prop_assert!((least..=most).contains(&d), "{section}.{key} = {d:?} was accepted"),
                Err(e) => {
                    prop_assert!(!(least..=most).contains(&d), "{section}.{key} = {d:?}: {e}");
                    let prefix = format!("{section}.{key}: ");
                    prop_assert!(e.to_string().starts_with(&prefix), "{section}.{key} = {d:?}: {e}");
                }
            }
        }

        #[test]
        fn a_socket_address_is_accepted_unless_both_ports_are_one(
            http in any::<bool>(),
            ip in prop::sample::select(vec!["127.0.0.1", "0.0.0.0", "[::1]", "[::]", "10.1.2.3"]),
            port in prop_oneof![Just(0u16), Just(8080), Just(8443), any::<u16>()],
        ) {
            let (i, other) = if http { (1, "127.0.0.1:8443") } else { (0, "127.0.0.1:8080") };
            let addr = format!("{ip}:{port}");
            let verdict = load(&document(Some((i, &quoted(&addr)))));
            if addr == other && port != 0 {
                let e = verdict.err().map(|e| e.to_string()).unwrap_or_default();
                prop_assert!(e.starts_with("server.http_addr: must differ from server.grpc_addr"), "{e}");
            } else {
                let c = verdict.map_err(|e| TestCaseError::fail(format!("{addr}: {e}")))?;
                let got = if http { c.server.http_addr } else { c.server.grpc_addr };
                prop_assert_eq!(got.to_string(), addr);
            }
        }

        #[test]
        fn an_environment_override_applies_or_is_refused_naming_the_variable(
            var in prop::sample::select(vec![ENV_DATABASE_URL, ENV_GRPC_ADDR, ENV_HTTP_ADDR]),
            value in prop_oneof![address_text(), any_text()],
        ) {
            let mut c = BASE.clone();
            match c.apply_env(|k| (k == var).then(|| value.clone())) {
                Ok(()) => {
                    let got = match var {
                        ENV_DATABASE_URL => c.database.url.as_ref().map(|u| u.expose().to_string()),
                        ENV_GRPC_ADDR => Some(c.server.grpc_addr.to_string()),
                        _ => Some(c.server.http_addr.to_string()),
                    };
                    let parsed = value.parse::<SocketAddr>().map(|a| a.to_string());
                    prop_assert!(got.as_deref() == Some(value.as_str()) || got == parsed.ok());
                }
                Err(e) => {
                    prop_assert!(var != ENV_DATABASE_URL);
                    let prefix = format!("environment variable {var}: ");
                    prop_assert!(e.to_string().starts_with(&prefix), "{e}");
                }
            }
        }

        #[test]
        fn any_toml_document_is_a_config_or_an_error_without_panicking(doc in toml_document()) {
            let text = toml::to_string(&doc).unwrap_or_default();
            if let Ok(c) = Config::parse(&text, "mayfly.toml") {
                let _ = c.validate();
                let mut c = c;
                c.resolve_paths(Path::new("/etc/mayfly"));
            }
        }
    }

    /// TOML tables shaped like the configuration: its sections and keys (and
    /// others), holding values of every type, the strings often ones its
    /// fields parse.
    fn toml_document() -> impl Strategy<Value = toml::Table> {
        use toml::Value;
        let string = prop_oneof![duration_text(), address_text(), pattern_text(), any_text()];
        let leaf = prop_oneof![
            4 => string.prop_map(Value::String),
            1 => any::<i64>().prop_map(Value::Integer),
            1 => any::<bool>().prop_map(Value::Boolean),
            1 => any::<f64>().prop_map(Value::Float),
        ];
        let value = leaf.prop_recursive(2, 8, 3, |inner| {
            prop::collection::vec(inner, 0..3).prop_map(Value::Array)
        });
        let keys: Vec<&'static str> = KEYS.iter().map(|(_, k, _)| *k).chain(["bogus"]).collect();
        let section = prop::collection::btree_map(prop::sample::select(keys), value, 0..6)
            .prop_map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<toml::Table>()
            });
        let names: Vec<&'static str> = KEYS.iter().map(|(s, _, _)| *s).chain(["bogus"]).collect();
        prop::collection::btree_map(
            prop::sample::select(names),
            prop_oneof![
                4 => section.clone().prop_map(Value::Table),
                1 => prop::collection::vec(section.prop_map(Value::Table), 0..3).prop_map(Value::Array),
            ],
            0..10,
        )
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
}
