//! The broker's config file, typed: [`Settings`] renders the TOML file the real
//! server reads (in-process or `mayfly serve --config`) and the policy directory it names.
use super::pki::Pki;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a test sets in the broker's config file; the rest is what every test
/// runs with (one example.org trust domain, the four roles by path, the test
/// policy set). Setters take typed values; [`Settings::render`] writes the file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `database.url`; none: the test's own fresh database (see `spawn_with`).
    database: Option<String>,
    connect_timeout: Duration,
    migrate: bool,
    /// Trust domains besides example.org: (name, bundle file).
    trust_domains: Vec<(String, PathBuf)>,
    sweep: Duration,
    key_heartbeat: Duration,
    watch_heartbeat: Duration,
    watch_poll: Duration,
    tls_reload: Duration,
    policy_reload: Duration,
    environment: String,
    policies: Policies,
    retention: Retention,
    limits: Limits,
    oauth_poll: Duration,
}

/// The policy directory the config names, written next to the PKI's files.
#[derive(Debug, Clone)]
enum Policies {
    /// tests/policies with the canonical schema, the support workflow's token
    /// budget set to `max_tokens`.
    Test { max_tokens: u32 },
    /// A copy of this directory.
    Copy(PathBuf),
}

/// The `[retention]` a test changes; none: the broker's default.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Retention {
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub offers: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub approvals: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub revocations: Option<Duration>,
}

/// The `[limits]` a test changes; none: the broker's default.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Limits {
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub first_request_timeout: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub log_summary_interval: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database: None,
            // Generous: on two cores, a fresh database is migrated while other
            // tests create theirs (tests of timeouts set their own).
            connect_timeout: Duration::from_secs(10),
            migrate: true,
            trust_domains: vec![],
            sweep: Duration::from_millis(50),
            key_heartbeat: Duration::from_secs(60),
            watch_heartbeat: Duration::from_secs(5),
            watch_poll: Duration::from_secs(1),
            tls_reload: Duration::from_secs(5),
            policy_reload: Duration::from_millis(100),
            environment: "test".into(),
            policies: Policies::Test { max_tokens: 5 },
            retention: Retention::default(),
            limits: Limits::default(),
            oauth_poll: Duration::from_secs(5),
        }
    }
}

impl Settings {
    pub fn new() -> Self {
        Self::default()
    }

    /// `database.url`: this database instead of a fresh one.
    pub fn database(mut self, url: &str) -> Self {
        self.database = Some(url.into());
        self
    }

    /// The database this config names, if one is set.
    pub fn database_url(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// `database.connect_timeout`: how long a call waits for a connection.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// `database.migrate = false`: the schema is someone else's to migrate.
    pub fn no_migrate(mut self) -> Self {
        self.migrate = false;
        self
    }

    /// Another `[[trust_domains]]` entry, besides example.org.
    pub fn trust_domain(mut self, name: &str, bundle: PathBuf) -> Self {
        self.trust_domains.push((name.into(), bundle));
        self
    }

    /// `tasks.sweep_interval`.
    pub fn sweep(mut self, d: Duration) -> Self {
        self.sweep = d;
        self
    }

    /// `keys.heartbeat`: how often the signing key's registration is renewed.
    pub fn key_heartbeat(mut self, d: Duration) -> Self {
        self.key_heartbeat = d;
        self
    }

    /// `revocation.heartbeat`.
    pub fn watch_heartbeat(mut self, d: Duration) -> Self {
        self.watch_heartbeat = d;
        self
    }

    /// `revocation.poll_interval`.
    pub fn watch_poll(mut self, d: Duration) -> Self {
        self.watch_poll = d;
        self
    }

    /// `server.reload_interval`: how often the TLS files are checked.
    pub fn tls_reload(mut self, d: Duration) -> Self {
        self.tls_reload = d;
        self
    }

    /// `policy.reload_interval`.
    pub fn policy_reload(mut self, d: Duration) -> Self {
        self.policy_reload = d;
        self
    }

    /// `policy.environment`.
    pub fn environment(mut self, env: &str) -> Self {
        self.environment = env.into();
        self
    }

    /// The support workflow's token budget in the test policy set.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.policies = Policies::Test { max_tokens: n };
        self
    }

    /// A copy of the policy directory `dir` instead of the test policy set.
    pub fn policies(mut self, dir: PathBuf) -> Self {
        self.policies = Policies::Copy(dir);
        self
    }

    /// `[retention]`.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// `[limits]`.
    /// `oauth.poll_interval`: how often a step-up approval may be polled.
    pub fn oauth_poll(mut self, d: Duration) -> Self {
        self.oauth_poll = d;
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The config file; writes the policy directory it names into `pki`'s
    /// directory.
    fn file(&self, pki: &Pki) -> File {
        let policies = match &self.policies {
            Policies::Copy(dir) => {
                let out = pki.dir.path().join("policies");
                copy_dir(dir, &out);
                out
            }
            Policies::Test { max_tokens } => write_policies(pki.dir.path(), *max_tokens),
        };
        let mut trust_domains = vec![TrustDomain {
            name: "example.org".into(),
            bundle: pki.path("ca.pem"),
        }];
        trust_domains.extend(self.trust_domains.iter().map(|(name, bundle)| TrustDomain {
            name: name.clone(),
            bundle: bundle.clone(),
        }));
        let role = |path: &str| vec![format!("spiffe://example.org/{path}/*")];
        File {
            server: Server {
                grpc_addr: "127.0.0.1:0",
                http_addr: "127.0.0.1:0",
                cert: pki.path("broker.crt"),
                key: pki.path("broker.key"),
                issuer: "https://mayfly.test",
                shutdown_grace: Duration::from_secs(5),
                reload_interval: self.tls_reload,
            },
            database: Database {
                url: self
                    .database
                    .clone()
                    .expect("Settings::database: the config names a database"),
                max_connections: 8,
                connect_timeout: self.connect_timeout,
                migrate: self.migrate,
            },
            trust_domains,
            roles: Roles {
                agent: role("agent"),
                orchestrator: role("orchestrator"),
                admin: role("admin"),
                verifier: role("verifier"),
            },
            tasks: Tasks {
                sweep_interval: self.sweep,
            },
            keys: Keys {
                heartbeat: self.key_heartbeat,
            },
            revocation: Revocation {
                heartbeat: self.watch_heartbeat,
                poll_interval: self.watch_poll,
            },
            policy: Policy {
                dir: policies,
                environment: self.environment.clone(),
                reload_interval: self.policy_reload,
            },
            retention: self.retention.clone(),
            limits: self.limits.clone(),
            oauth: Oauth {
                poll_interval: self.oauth_poll,
            },
        }
    }

    /// The config file's text; writes the policy directory it names into
    /// `pki`'s directory.
    pub fn render(&self, pki: &Pki) -> String {
        toml::to_string(&self.file(pki)).expect("the config renders as TOML")
    }

    /// The config file as a TOML table, for a test that breaks a key on purpose;
    /// see [`Settings::render`].
    pub fn table(&self, pki: &Pki) -> toml::Table {
        toml::Table::try_from(self.file(pki)).expect("the config renders as TOML")
    }

    /// Writes the config file to `mayfly.toml` in `pki`'s directory; its path.
    pub fn write(&self, pki: &Pki) -> PathBuf {
        let path = pki.path("mayfly.toml");
        std::fs::write(&path, self.render(pki)).unwrap();
        path
    }
}

/// The file's sections, named and ordered as the broker's `Config` reads them.
#[derive(Serialize)]
struct File {
    server: Server,
    database: Database,
    trust_domains: Vec<TrustDomain>,
    roles: Roles,
    tasks: Tasks,
    keys: Keys,
    revocation: Revocation,
    policy: Policy,
    retention: Retention,
    limits: Limits,
    oauth: Oauth,
}

#[derive(Serialize)]
struct Oauth {
    #[serde(with = "humantime_serde")]
    poll_interval: Duration,
}

#[derive(Serialize)]
struct Server {
    grpc_addr: &'static str,
    http_addr: &'static str,
    cert: PathBuf,
    key: PathBuf,
    issuer: &'static str,
    #[serde(with = "humantime_serde")]
    shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    reload_interval: Duration,
}

#[derive(Serialize)]
struct Database {
    url: String,
    max_connections: u32,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    migrate: bool,
}

#[derive(Serialize)]
struct TrustDomain {
    name: String,
    bundle: PathBuf,
}

#[derive(Serialize)]
struct Roles {
    agent: Vec<String>,
    orchestrator: Vec<String>,
    admin: Vec<String>,
    verifier: Vec<String>,
}

#[derive(Serialize)]
struct Tasks {
    #[serde(with = "humantime_serde")]
    sweep_interval: Duration,
}

#[derive(Serialize)]
struct Keys {
    #[serde(with = "humantime_serde")]
    heartbeat: Duration,
}

#[derive(Serialize)]
struct Revocation {
    #[serde(with = "humantime_serde")]
    heartbeat: Duration,
    #[serde(with = "humantime_serde")]
    poll_interval: Duration,
}

#[derive(Serialize)]
struct Policy {
    dir: PathBuf,
    environment: String,
    #[serde(with = "humantime_serde")]
    reload_interval: Duration,
}

/// Copies the files of `from` (one level) into a new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Writes the test policy set (tests/policies with the canonical schema) into
/// `dir/policies`, with the support workflow's token budget set to `max_tokens`.
pub fn write_policies(dir: &Path, max_tokens: u32) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.join("policies");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(
        root.join("examples/policies/schema.cedarschema"),
        out.join("schema.cedarschema"),
    )
    .unwrap();
    std::fs::copy(
        root.join("tests/policies/test.cedar"),
        out.join("test.cedar"),
    )
    .unwrap();
    let entities = std::fs::read_to_string(root.join("tests/policies/entities.json")).unwrap();
    std::fs::write(
        out.join("entities.json"),
        entities.replace("MAX_TOKENS", &max_tokens.to_string()),
    )
    .unwrap();
    out
}
