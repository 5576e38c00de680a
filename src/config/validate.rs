//! `Config::validate`: every setting checked after the file and the environment,
//! each refusal naming the key and what is wrong.
use super::{Config, ConfigError, ENV_DATABASE_URL, invalid};
use crate::store::DatabaseUrl;
use std::collections::HashSet;
use std::time::Duration;

impl Config {
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
        https_url("server.issuer", &self.server.issuer)?;
        if let Some(url) = &self.oauth.url {
            https_url("oauth.url", url)?;
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.oauth.poll_interval) {
            return Err(invalid("oauth.poll_interval", "must be between 1s and 60s"));
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
        self.retention.validate()?;
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
}

/// The longest any retention may be: ten years.
const LONGEST_RETENTION: Duration = Duration::from_secs(3650 * 86_400);

impl super::RetentionConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        use crate::domain::retention::{
            MIN_LAPSED_RETENTION, MIN_REVOCATION_HISTORY, MIN_TOKEN_RETENTION,
        };
        let hours = |d: Duration| d.as_secs().div_ceil(3600);
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&self.interval) {
            return Err(invalid("retention.interval", "must be between 1s and 24h"));
        }
        if !(1..=1000).contains(&self.batch) {
            return Err(invalid("retention.batch", "must be between 1 and 1000"));
        }
        for (key, keep, least, why) in [
            (
                "retention.tokens",
                self.tokens,
                MIN_TOKEN_RETENTION,
                ": no verifier still accepts a token pruned, nor does a revocation still mark it",
            ),
            ("retention.offers", self.offers, MIN_LAPSED_RETENTION, ""),
            (
                "retention.approvals",
                self.approvals,
                MIN_LAPSED_RETENTION,
                "",
            ),
            (
                "retention.revocations",
                self.revocations,
                MIN_REVOCATION_HISTORY,
                ": revocation events are kept longer than the longest token (24h) lives, so a verifier that resyncs learns every revocation of every token still valid",
            ),
        ] {
            if !(least..=LONGEST_RETENTION).contains(&keep) {
                return Err(invalid(
                    key,
                    format!("must be between {}h and 3650d{why}", hours(least)),
                ));
            }
        }
        let least = self.retention().min_tasks();
        if !(least..=LONGEST_RETENTION).contains(&self.tasks) {
            return Err(invalid(
                "retention.tasks",
                format!(
                    "must be between {}h (the longest of retention.tokens, offers and approvals, plus 24h: a task is kept while anything of it is) and 3650d",
                    hours(least)
                ),
            ));
        }
        Ok(())
    }
}

/// RFC 8414 §2: an issuer identifier (and so every endpoint under it) is an
/// `https` URL with a host and no query or fragment.
fn https_url(key: &str, value: &str) -> Result<(), ConfigError> {
    let shown = crate::domain::text::quote(value);
    let url =
        url::Url::parse(value).map_err(|e| invalid(key, format!("{shown} is not a URL: {e}")))?;
    if url.scheme() != "https" {
        return Err(invalid(
            key,
            format!("{shown} must be an https URL (RFC 8414)"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(key, format!("{shown} has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            key,
            format!("{shown} must have no query or fragment"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(key, format!("{shown} must carry no credentials")));
    }
    Ok(())
}
