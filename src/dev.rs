//! `mayfly dev`: a complete broker on one machine with no external services. It
//! keeps everything in one directory: an embedded SQLite database, a dev CA with
//! SVIDs for a sample agent, sub-agent, orchestrator, admin and verifier, the
//! example policies, and the configuration that ties them together, then prints
//! the commands that walk a task's whole life. Not for production: the identities
//! are self-issued and every key sits in the directory.
use crate::api::oauth::metadata::WELL_KNOWN;
use crate::config::Config;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The example policy set (examples/policies), built into the binary so that
/// `mayfly dev` works from any directory.
const POLICIES: &[(&str, &str)] = &[
    (
        "schema.cedarschema",
        include_str!("../examples/policies/schema.cedarschema"),
    ),
    (
        "entities.json",
        include_str!("../examples/policies/entities.json"),
    ),
    (
        "guardrails.cedar",
        include_str!("../examples/policies/guardrails.cedar"),
    ),
    (
        "support.cedar",
        include_str!("../examples/policies/support.cedar"),
    ),
    (
        "coding.cedar",
        include_str!("../examples/policies/coding.cedar"),
    ),
    (
        "payments.cedar",
        include_str!("../examples/policies/payments.cedar"),
    ),
    (
        "cases.toml",
        include_str!("../examples/policies/cases.toml"),
    ),
];

const TRUST_DOMAIN: &str = "example.org";
/// The example policies are written for this environment.
const ENVIRONMENT: &str = "prod-eu";

/// The dev directory's layout.
#[derive(Debug, Clone)]
pub struct DevDir {
    pub root: PathBuf,
}

impl DevDir {
    pub fn certs(&self) -> PathBuf {
        self.root.join("certs")
    }
    pub fn policies(&self) -> PathBuf {
        self.root.join("policies")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("mayfly.toml")
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("mayfly.db")
    }
}

/// Writes what is missing (certificates and policies are kept across runs, so
/// tokens and tasks in the database stay valid), writes the configuration for
/// these addresses and loads it.
pub fn prepare(dir: &Path, grpc: SocketAddr, http: SocketAddr) -> anyhow::Result<(DevDir, Config)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let root = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    if root.to_str().is_none_or(|r| r.contains('?')) {
        anyhow::bail!(
            "--dir {}: the path must be UTF-8 without '?' (it goes into a sqlite:// URL)",
            root.display()
        );
    }
    let d = DevDir { root };
    // All of them, or a fresh set (one CA for every identity).
    let complete = std::iter::once("ca.pem".to_string())
        .chain(
            crate::identity::devcerts::DEV_IDENTITIES
                .iter()
                .flat_map(|(name, _)| [format!("{name}.crt"), format!("{name}.key")]),
        )
        .all(|f| d.certs().join(f).exists());
    if !complete {
        crate::identity::devcerts::write_dev_certs(&d.certs(), TRUST_DOMAIN)?;
    }
    if !d.policies().exists() {
        std::fs::create_dir_all(d.policies())
            .with_context(|| format!("creating {}", d.policies().display()))?;
        for (name, body) in POLICIES {
            let path = d.policies().join(name);
            std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    // The issuer is where the front door is: its metadata is then served at the
    // issuer's own well-known URL (RFC 8414 §3).
    let issuer = format!("https://{}", dialable(grpc));
    let config = format!(
        r#"# Written by `mayfly dev` on every start; edit the flags, not this file.
[server]
grpc_addr = "{grpc}"
http_addr = "{http}"
cert = "certs/broker.crt"
key = "certs/broker.key"
issuer = "{issuer}"

[database]
url = "sqlite://mayfly.db"

[[trust_domains]]
name = "{TRUST_DOMAIN}"
bundle = "certs/ca.pem"

[roles]
agent = ["spiffe://{TRUST_DOMAIN}/agent/*"]
orchestrator = ["spiffe://{TRUST_DOMAIN}/orchestrator/*"]
admin = ["spiffe://{TRUST_DOMAIN}/admin/*"]
verifier = ["spiffe://{TRUST_DOMAIN}/verifier/*"]

[policy]
dir = "policies"
environment = "{ENVIRONMENT}"
"#
    );
    std::fs::write(d.config(), &config)
        .with_context(|| format!("writing {}", d.config().display()))?;
    // The environment's MAYFLY_DATABASE_URL and addresses are for `serve`: dev
    // keeps its own database and the addresses it was given.
    let mut cfg = Config::parse(&config, &d.config().display().to_string())?;
    cfg.resolve_paths(&d.root);
    cfg.validate()?;
    Ok((d, cfg))
}

/// A word for a POSIX shell: as it is when it is plain, single-quoted otherwise.
fn sh(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The address clients dial: listening on every interface, they still dial a
/// name the broker's certificate carries.
fn dialable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// What to paste into a shell to try the broker: open a task, mint a token, see
/// it active, complete the task, see it dead. Every line is a real command.
pub fn walkthrough(d: &DevDir, exe: &Path, grpc: SocketAddr) -> String {
    let grpc = dialable(grpc);
    let certs = sh(&d.certs().display().to_string());
    let base = format!("https://{grpc}");
    let agent = format!("spiffe://{TRUST_DOMAIN}/agent/support-eu-1");
    let as_ = |who: &str| format!(r#""$M" --cert "$C/{who}.crt" --key "$C/{who}.key""#);
    let (orch, agent_, verifier, admin) = (
        as_("orchestrator"),
        as_("agent"),
        as_("verifier"),
        as_("admin"),
    );
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!(
        "export MAYFLY_BROKER=https://{grpc} MAYFLY_CA={certs}/ca.pem"
    ));
    line(format!("M={} C={certs}", sh(&exe.display().to_string())));
    line("# 1. The orchestrator opens a task for the support agent".into());
    line(format!(
        "TASK=$({orch} task start --agent {agent} --workflow support-triage \
         --objective 'answer ticket 4711' --scope 'crm-api customers/eu/* read' --duration 30m --field id)"
    ));
    line("# 2. The agent mints a token for one customer record, bound to its certificate".into());
    line(format!(
        r#"TOKEN=$({agent_} token mint --task "$TASK" --scope 'crm-api customers/eu/42 read' --ttl 2m --field token)"#
    ));
    line("# 3. The CRM's verifier checks it: active".into());
    line(format!(r#"{verifier} token introspect "$TOKEN""#));
    line("# 4. The orchestrator completes the task...".into());
    line(format!(r#"{orch} task complete "$TASK""#));
    line("# 5. ...and the token is dead: inactive, revoked with its task".into());
    line(format!(r#"{verifier} token introspect "$TOKEN""#));
    line("# The security team's view: the task's story, and the audit chain verified".into());
    line(format!(r#"{admin} audit task "$TASK""#));
    line(format!("{admin} audit verify"));
    line(format!(
        "# The same from any language: the OAuth front door, here with curl (metadata: {base}{WELL_KNOWN})"
    ));
    line(format!(
        r#"curl -sS --fail-with-body --cacert "$C/ca.pem" {base}{WELL_KNOWN}"#
    ));
    line(format!(
        "TASK=$({orch} task start --agent {agent} --workflow support-triage \
         --objective 'answer ticket 4712' --scope 'crm-api customers/eu/* read' --duration 30m --field id)"
    ));
    line(format!(
        r#"curl -sS --fail-with-body --cacert "$C/ca.pem" --cert "$C/agent.crt" --key "$C/agent.key" {base}/oauth/token -d grant_type=client_credentials -d task_id="$TASK" -d audience=crm-api -d scope=read:customers/eu/42 -d ttl_seconds=120"#
    ));
    s
}

/// The banner `mayfly dev` prints once the broker listens.
pub fn banner(d: &DevDir, exe: &Path, grpc: SocketAddr, http: SocketAddr) -> String {
    format!(
        "Mayfly dev broker: gRPC and OAuth https://{grpc} (mTLS), HTTP http://{http} (/readyz, /metrics, /.well-known/jwks.json)\n\
         OAuth metadata (RFC 8414): https://{dial}{WELL_KNOWN}\n\
         Everything is in {root}: SQLite database {db}, dev CA and SVIDs in {certs}, policies in {policies}.\n\
         Not for production: the identities are self-issued and their keys sit in that directory.\n\
         \n\
         Try it in another shell (bash or zsh):\n\
         \n\
         {walk}\n\
         Stop the broker with Ctrl-C; its state stays in {root} for the next run.\n",
        root = d.root.display(),
        db = d.database().display(),
        certs = d.certs().display(),
        policies = d.policies().display(),
        walk = walkthrough(d, exe, grpc),
        dial = dialable(grpc),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_when_they_need_it() {
        assert_eq!(sh("/tmp/mayfly-dev/certs"), "/tmp/mayfly-dev/certs");
        assert_eq!(sh("/tmp/my dir"), "'/tmp/my dir'");
        assert_eq!(sh("it's"), r"'it'\''s'");
        assert_eq!(sh("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(sh(""), "''");
    }

    #[test]
    fn the_walkthrough_names_this_broker_and_these_certificates() {
        let d = DevDir {
            root: PathBuf::from("/srv/dev dir"),
        };
        let w = walkthrough(
            &d,
            Path::new("/usr/bin/mayfly"),
            "127.0.0.1:9443".parse().unwrap(),
        );
        assert!(w.contains("MAYFLY_BROKER=https://127.0.0.1:9443"), "{w}");
        assert!(w.contains("C='/srv/dev dir/certs'"), "{w}");
        assert!(w.contains("M=/usr/bin/mayfly"), "{w}");
        let any = walkthrough(&d, Path::new("/m"), "0.0.0.0:8443".parse().unwrap());
        assert!(
            any.contains("MAYFLY_BROKER=https://127.0.0.1:8443"),
            "{any}"
        );
        // Every line is a comment or a command; none is a placeholder.
        assert!(!w.contains('<'), "{w}");
    }

    #[test]
    fn the_embedded_policies_are_a_valid_set() {
        let dir =
            std::env::temp_dir().join(format!("mayfly-dev-policies-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, body) in POLICIES {
            std::fs::write(dir.join(name), body).unwrap();
        }
        let loaded = crate::policy::CedarPolicy::load(&dir, ENVIRONMENT);
        std::fs::remove_dir_all(&dir).ok();
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    }
}
