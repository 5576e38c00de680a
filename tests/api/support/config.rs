//! The broker's config file and policy directory, as the tests write them.
use super::pki::Pki;
use mayfly::clock::ManualClock;
use std::path::PathBuf;

pub struct Options {
    pub db_url: Option<String>,
    pub extra_trust_domains: Vec<(String, PathBuf)>,
    pub max_tokens: u32,
    pub sweep: &'static str,
    pub connect_timeout: &'static str,
    /// A policy directory to copy instead of tests/policies.
    pub policies: Option<PathBuf>,
    /// `policy.environment`.
    pub environment: &'static str,
    /// `revocation.heartbeat` and `revocation.poll_interval`.
    pub watch_heartbeat: &'static str,
    pub watch_poll: &'static str,
    /// Share another app's clock (replicas must agree on the time: a token
    /// minted by one must not be "not yet valid" on another).
    pub clock: Option<ManualClock>,
    /// `database.migrate`.
    pub migrate: bool,
    /// `server.reload_interval`.
    pub tls_reload: &'static str,
    /// Lines of the `[limits]` section.
    pub limits: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            db_url: None,
            extra_trust_domains: vec![],
            max_tokens: 5,
            sweep: "50ms",
            connect_timeout: "2s",
            policies: None,
            environment: "test",
            watch_heartbeat: "5s",
            watch_poll: "1s",
            clock: None,
            migrate: true,
            tls_reload: "5s",
            limits: String::new(),
        }
    }
}

/// Copies the files of `from` (one level) into a new directory `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
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
pub fn write_policies(dir: &std::path::Path, max_tokens: u32) -> PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
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

pub fn config_text(pki: &Pki, db_url: &str, o: &Options) -> String {
    let policies = match &o.policies {
        Some(dir) => {
            let out = pki.dir.path().join("policies");
            copy_dir(dir, &out);
            out
        }
        None => write_policies(pki.dir.path(), o.max_tokens),
    };
    let mut extra = String::new();
    for (name, path) in &o.extra_trust_domains {
        extra.push_str(&format!(
            "\n[[trust_domains]]\nname = \"{name}\"\nbundle = \"{}\"\n",
            path.display()
        ));
    }
    format!(
        r#"
[server]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
issuer = "https://mayfly.test"
shutdown_grace = "5s"
reload_interval = "{tls_reload}"

[database]
url = "{db_url}"
max_connections = 8
connect_timeout = "{ct}"
migrate = {migrate}

[[trust_domains]]
name = "example.org"
bundle = "{ca}"
{extra}
[roles]
agent = ["spiffe://example.org/agent/*"]
orchestrator = ["spiffe://example.org/orchestrator/*"]
admin = ["spiffe://example.org/admin/*"]
verifier = ["spiffe://example.org/verifier/*"]

[tasks]
sweep_interval = "{sweep}"

[keys]
heartbeat = "60s"

[revocation]
heartbeat = "{watch_heartbeat}"
poll_interval = "{watch_poll}"

[policy]
dir = "{policies}"
environment = "{environment}"
reload_interval = "100ms"

[limits]
{limits}
"#,
        cert = pki.path("broker.crt").display(),
        key = pki.path("broker.key").display(),
        ca = pki.path("ca.pem").display(),
        ct = o.connect_timeout,
        migrate = o.migrate,
        tls_reload = o.tls_reload,
        sweep = o.sweep,
        policies = policies.display(),
        environment = o.environment,
        watch_heartbeat = o.watch_heartbeat,
        watch_poll = o.watch_poll,
        limits = o.limits,
    )
}
