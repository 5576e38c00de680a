//! The database a URL names, parsed once: PostgreSQL (replicas share it) or an
//! embedded SQLite file. A URL may carry a password: messages show [`redacted`].
use std::path::{Path, PathBuf};

/// Which store a `database.url` names.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `postgres://…` or `postgresql://…`, as given.
    Postgres(String),
    /// The file of `sqlite://path` (or `sqlite:path`), without its query.
    Sqlite(PathBuf),
}

/// Printed redacted: a PostgreSQL URL may carry a password.
impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Postgres(u) => write!(f, "Postgres({})", redacted(u)),
            DatabaseUrl::Sqlite(p) => write!(f, "Sqlite({})", p.display()),
        }
    }
}

/// What a database URL must be.
pub const DATABASE_URL_FORMS: &str = "must be a postgres:// URL (PostgreSQL) or a sqlite:// URL naming a file (embedded SQLite; not :memory: or a file: URI, which would lose every token's record on restart)";

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, &'static str> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_string()));
        }
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or(DATABASE_URL_FORMS)?;
        let path = rest.split('?').next().unwrap_or_default();
        // `file:` URIs (SQLite opens names as URIs) could name an in-memory database.
        if path.is_empty() || path == ":memory:" || path.starts_with("file:") {
            return Err(DATABASE_URL_FORMS);
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    }

    /// A relative SQLite file made relative to `dir` (the config file's).
    pub fn relative_to(self, dir: &Path) -> Self {
        match self {
            DatabaseUrl::Sqlite(p) if p.is_relative() => DatabaseUrl::Sqlite(dir.join(p)),
            other => other,
        }
    }

    /// The URL again (for a SQLite file, `sqlite://` and its path).
    pub fn to_url(&self) -> String {
        match self {
            DatabaseUrl::Postgres(u) => u.clone(),
            DatabaseUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
        }
    }
}

/// A database URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL (a key=value DSN, say): it may hold a password anywhere.
        return "<database URL, not shown: not a URL>".into();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let mut out = match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => format!("{scheme}://{rest}"),
    };
    if let Some(q) = query {
        let kept: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_names_postgresql_or_a_sqlite_file_and_nothing_else() {
        for url in ["postgres://u@db/m", "postgresql://db/m?sslmode=require"] {
            assert_eq!(
                DatabaseUrl::parse(url),
                Ok(DatabaseUrl::Postgres(url.into()))
            );
        }
        for (url, path) in [
            ("sqlite://mayfly.db", "mayfly.db"),
            ("sqlite:///var/lib/m.db?mode=rwc", "/var/lib/m.db"),
            ("sqlite:m.db", "m.db"),
        ] {
            assert_eq!(
                DatabaseUrl::parse(url),
                Ok(DatabaseUrl::Sqlite(path.into()))
            );
        }
        for bad in [
            "",
            "mysql://db/m",
            "host=db password=x",
            "sqlite://",
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite:file:m.db?mode=memory",
        ] {
            assert_eq!(DatabaseUrl::parse(bad), Err(DATABASE_URL_FORMS), "{bad}");
        }
        assert!(
            !format!("{:?}", DatabaseUrl::parse("postgres://u:hunter2@db/m")).contains("hunter2")
        );
        let dir = Path::new("/etc/mayfly");
        assert_eq!(
            DatabaseUrl::parse("sqlite://m.db")
                .unwrap()
                .relative_to(dir)
                .to_url(),
            "sqlite:///etc/mayfly/m.db"
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///v/m.db")
                .unwrap()
                .relative_to(dir)
                .to_url(),
            "sqlite:///v/m.db"
        );
    }

    #[test]
    fn no_password_survives_redaction() {
        for (url, shown) in [
            ("postgres://u:hunter2@db:5432/m", "postgres://***@db:5432/m"),
            (
                "postgres://db/m?password=hunter2&sslmode=require",
                "postgres://db/m?password=***&sslmode=require",
            ),
            (
                "postgres://u@db/m?PASSWORD=hunter2",
                "postgres://***@db/m?PASSWORD=***",
            ),
            (
                "host=db password=hunter2",
                "<database URL, not shown: not a URL>",
            ),
            ("sqlite:///var/lib/mayfly.db", "sqlite:///var/lib/mayfly.db"),
        ] {
            assert_eq!(redacted(url), shown);
            assert!(!redacted(url).contains("hunter2"));
        }
    }
}
