//! Reading the settings: the TOML file, paths relative to it, then the `MAYFLY_*`
//! environment overrides, then `validate()`.
use super::{Config, ConfigError, Secret};
use crate::store::DatabaseUrl;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
}
