//! deploy/: the static check passes, and the container's entrypoint starts. The real
//! `mayfly` binary runs with the image's ENTRYPOINT and CMD (read from
//! deploy/Dockerfile) against deploy/mayfly.toml (the compose setup) and
//! deploy/kubernetes/mayfly.toml (the SPIRE setup), with the paths the container
//! mounts pointed at fresh `mayfly dev-certs` output and the shipped policies, and
//! MAYFLY_DATABASE_URL at a fresh database, as the container gets them.
use crate::support::{copy_dir, fresh_database, http_get, mint_request, scope};
use mayfly::api::pb;
use mayfly::api::pb::task_service_client::TaskServiceClient;
use mayfly::api::pb::token_service_client::TokenServiceClient;
use mayfly::api::pb::verifier_service_client::VerifierServiceClient;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// How long a broker may take to answer /readyz (migrations on a fresh database,
/// on a busy machine).
const READY_WITHIN: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn the_deploy_check_passes() {
    let check = repo().join("deploy/check");
    let out = std::process::Command::new(&check)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("run {} (python3 with PyYAML): {e}", check.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "deploy/check failed ({}):\n{stdout}{stderr}",
        out.status
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// ENTRYPOINT and CMD (exec form) of the Dockerfile's last stage: what the
/// container runs.
fn image_command() -> Vec<String> {
    let dockerfile = read(&repo().join("deploy/Dockerfile"));
    let (mut entrypoint, mut cmd) = (None, None);
    let parse = |json: &str| -> Vec<String> {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not an exec-form array {json}: {e}"))
    };
    for line in dockerfile.lines().map(str::trim) {
        if line.starts_with("FROM ") {
            (entrypoint, cmd) = (None, None);
        } else if let Some(json) = line.strip_prefix("ENTRYPOINT ") {
            entrypoint = Some(parse(json));
        } else if let Some(json) = line.strip_prefix("CMD ") {
            cmd = Some(parse(json));
        }
    }
    let entrypoint = entrypoint.expect("the final stage has an ENTRYPOINT");
    assert_eq!(
        entrypoint,
        ["/usr/local/bin/mayfly"],
        "the image runs the binary"
    );
    cmd.expect("the final stage has a CMD")
}

/// Rewrites the paths in a container config (`server.cert`, `server.key`, every
/// `trust_domains.bundle`, `policy.dir`) through `mounts` (container path → host
/// path, a file or a directory), as the container's mounts would resolve them.
/// Every path must lie in a mount and exist there.
fn resolve_mounts(config: &str, mounts: &[(&str, PathBuf)]) -> String {
    let mut table: toml::Table = toml::from_str(config).expect("the config is TOML");
    let resolve = |key: &str, value: Option<&mut toml::Value>| {
        let value = value.unwrap_or_else(|| panic!("{key} is missing"));
        let inside = value
            .as_str()
            .unwrap_or_else(|| panic!("{key} is not a string"))
            .to_string();
        let host = mounts
            .iter()
            .find_map(|(container, host)| {
                if inside == *container {
                    Some(host.clone())
                } else {
                    inside
                        .strip_prefix(&format!("{container}/"))
                        .map(|rest| host.join(rest))
                }
            })
            .unwrap_or_else(|| panic!("{key} = {inside:?} lies in nothing the container mounts"));
        assert!(
            host.exists(),
            "{key} = {inside:?}: the mount holds no such file ({} is missing)",
            host.display()
        );
        *value = toml::Value::String(host.display().to_string());
    };
    let server = table.get_mut("server").expect("[server]");
    resolve("server.cert", server.get_mut("cert"));
    resolve("server.key", server.get_mut("key"));
    let tds = table
        .get_mut("trust_domains")
        .and_then(|t| t.as_array_mut())
        .expect("[[trust_domains]]");
    for (i, td) in tds.iter_mut().enumerate() {
        resolve(&format!("trust_domains[{i}].bundle"), td.get_mut("bundle"));
    }
    let policy = table.get_mut("policy").expect("[policy]");
    resolve("policy.dir", policy.get_mut("dir"));
    toml::to_string(&table).expect("serialize the config")
}

/// Writes dev certificates with the binary itself, as compose's `certs` service does.
async fn dev_certs(dir: &Path) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .arg("dev-certs")
        .arg(dir)
        .output()
        .await
        .expect("run mayfly dev-certs");
    assert!(
        out.status.success(),
        "mayfly dev-certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// `mayfly` started as the container starts it, its log collected.
struct Container {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
    grpc: SocketAddr,
    http: SocketAddr,
}

impl Container {
    /// Runs the image's CMD with its config path replaced by `config`; the
    /// database URL and the listen addresses come from the environment, as the
    /// container's do. Returns once /readyz answers 200.
    async fn start(config: &Path, database_url: &str) -> Container {
        let image_config = "/etc/mayfly/mayfly.toml";
        let cmd = image_command();
        assert!(
            cmd.iter().any(|a| a == image_config),
            "CMD {cmd:?} names {image_config}"
        );
        let args = cmd.iter().map(|a| {
            if a == image_config {
                config.as_os_str().to_owned()
            } else {
                a.into()
            }
        });
        let (grpc, http) = (free_addr(), free_addr());
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
            .args(args)
            .env("MAYFLY_DATABASE_URL", database_url)
            .env("MAYFLY_GRPC_ADDR", grpc.to_string())
            .env("MAYFLY_HTTP_ADDR", http.to_string())
            .env("MAYFLY_LOG", "info")
            .env_remove("MAYFLY_CONFIG")
            .env_remove("MAYFLY_LOG_FORMAT")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mayfly serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let mut c = Container {
            child,
            log,
            grpc,
            http,
        };
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!(
                    "mayfly (the image's CMD) exited with {status} before it was ready:\n{}",
                    c.log()
                );
            }
            if let Some((200, _)) = c.get("/readyz").await {
                return c;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "mayfly (the image's CMD) did not answer /readyz within {READY_WITHIN:?}:\n{}",
                    c.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// GET `path` on the HTTP port: None while nothing listens or no answer comes.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        tokio::net::TcpStream::connect(self.http).await.ok()?;
        tokio::time::timeout(Duration::from_secs(5), http_get(self.http, path))
            .await
            .ok()
    }

    /// GET `path`, which must answer 200: its body.
    async fn get_ok(&self, path: &str) -> String {
        match self.get(path).await {
            Some((200, body)) => body,
            other => panic!("GET {path}: {other:?}\n{}", self.log()),
        }
    }

    /// An mTLS channel as the dev identity `name` (`<name>.crt`/`.key` in `certs`).
    async fn channel(&self, certs: &Path, name: &str) -> Channel {
        let file = |f: String| std::fs::read(certs.join(&f)).expect("read a dev certificate");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(file("ca.pem".into())))
            .identity(Identity::from_pem(
                file(format!("{name}.crt")),
                file(format!("{name}.key")),
            ))
            .domain_name("localhost");
        Channel::from_shared(format!("https://{}", self.grpc))
            .expect("a URI")
            .tls_config(tls)
            .expect("TLS config")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect as {name}: {e}\n{}", self.log()))
    }

    /// SIGTERM, as `docker stop` and Kubernetes send it: the broker drains and
    /// exits 0.
    async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within 20s of SIGTERM:\n{}", self.log()))
            .expect("wait for mayfly");
        assert!(
            status.success(),
            "exit {status} after SIGTERM:\n{}",
            self.log()
        );
    }
}

/// Checks what a started broker serves on HTTP: health, readiness with the
/// policies loaded, Prometheus metrics and a JWKS with `keys` keys.
async fn check_http(c: &Container, keys: usize) {
    assert_eq!(c.get_ok("/healthz").await, "ok");
    let ready = c.get_ok("/readyz").await;
    assert!(
        ready.starts_with("ready") && ready.contains("policies"),
        "{ready}"
    );
    let metrics = c.get_ok("/metrics").await;
    assert!(metrics.contains("mayfly_active_tasks"), "{metrics}");
    let jwks: serde_json::Value =
        serde_json::from_str(&c.get_ok("/.well-known/jwks.json").await).expect("JWKS is JSON");
    let published = jwks["keys"].as_array().map(Vec::len);
    assert_eq!(published, Some(keys), "{jwks}");
}

#[tokio::test]
async fn two_brokers_start_from_the_compose_config_and_share_one_database() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let certs = tmp.path().join("certs");
    dev_certs(&certs).await;
    // compose.yaml's mounts: the certs volume and ../examples/policies.
    let config = resolve_mounts(
        &read(&repo().join("deploy/mayfly.toml")),
        &[
            ("/etc/mayfly/certs", certs.clone()),
            ("/etc/mayfly/policies", repo().join("examples/policies")),
        ],
    );
    let config_path = tmp.path().join("mayfly.toml");
    std::fs::write(&config_path, config).expect("write the config");
    let db = fresh_database().await;

    let one = Container::start(&config_path, &db.url).await;
    let two = Container::start(&config_path, &db.url).await;
    // Each replica registers its signing key in the shared store; both publish both.
    check_http(&one, 2).await;
    check_http(&two, 2).await;

    // The dev identities hold the roles the container config gives them: a task
    // opened on one broker mints on the other and introspects on the first.
    let task = TaskServiceClient::new(one.channel(&certs, "orchestrator").await)
        .start_task(pb::StartTaskRequest {
            agent: "spiffe://example.org/agent/support-eu-1".into(),
            workflow: "support-triage".into(),
            objective: "answer ticket 4711".into(),
            scopes: vec![scope("crm-api", "customers/eu/*", "read")],
            duration_seconds: 600,
        })
        .await
        .unwrap_or_else(|e| panic!("start a task on mayfly-1: {e}"))
        .into_inner()
        .task
        .expect("the task");
    let minted = TokenServiceClient::new(two.channel(&certs, "agent").await)
        .mint_token(mint_request(&task.id, "customers/eu/42", 60))
        .await
        .unwrap_or_else(|e| panic!("mint on mayfly-2: {e}"))
        .into_inner();
    let active = VerifierServiceClient::new(one.channel(&certs, "verifier").await)
        .introspect(pb::IntrospectRequest {
            token: minted.token,
        })
        .await
        .unwrap_or_else(|e| panic!("introspect on mayfly-1: {e}"))
        .into_inner()
        .active;
    assert!(active, "a token minted on mayfly-2 is active on mayfly-1");

    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn the_broker_starts_from_the_kubernetes_config_with_spiffe_helper_files() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let certs = tmp.path().join("certs");
    dev_certs(&certs).await;
    // The pod's mounts: the files spiffe-helper writes into the emptyDir (here a
    // dev SVID in their place) and the mayfly-policies ConfigMap.
    let policies = tmp.path().join("policies");
    copy_dir(&repo().join("deploy/kubernetes/policies"), &policies);
    let config = resolve_mounts(
        &read(&repo().join("deploy/kubernetes/mayfly.toml")),
        &[
            ("/run/spire/certs/svid.pem", certs.join("broker.crt")),
            ("/run/spire/certs/svid_key.pem", certs.join("broker.key")),
            ("/run/spire/certs/bundle.pem", certs.join("ca.pem")),
            ("/etc/mayfly/policies", policies),
        ],
    );
    let config_path = tmp.path().join("mayfly.toml");
    std::fs::write(&config_path, config).expect("write the config");
    let db = fresh_database().await;

    let broker = Container::start(&config_path, &db.url).await;
    check_http(&broker, 1).await;
    let tasks = TaskServiceClient::new(broker.channel(&certs, "orchestrator").await)
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_or_else(|e| panic!("list tasks as the orchestrator: {e}"))
        .into_inner();
    assert!(tasks.tasks.is_empty());
    broker.stop().await;
}
