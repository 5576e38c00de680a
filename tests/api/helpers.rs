//! spawn_app: the real broker on ephemeral ports, real mTLS with rcgen-made SVIDs,
//! a fresh PostgreSQL database per test.
use mayfly::api::pb;
use mayfly::api::pb::admin_service_client::AdminServiceClient;
use mayfly::api::pb::task_service_client::TaskServiceClient;
use mayfly::api::pb::token_service_client::TokenServiceClient;
use mayfly::api::pb::verifier_service_client::VerifierServiceClient;
use mayfly::clock::ManualClock;
use mayfly::config::Config;
use mayfly::identity::devcerts::{DevCa, Issued, SvidSpec};
use mayfly::store::SqlStore;
use sqlx::Connection;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub const TD: &str = "example.org";
pub const AGENT: &str = "spiffe://example.org/agent/a1";
pub const AGENT2: &str = "spiffe://example.org/agent/a2";
pub const ORCH: &str = "spiffe://example.org/orchestrator/o1";
pub const ORCH2: &str = "spiffe://example.org/orchestrator/o2";
pub const ADMIN: &str = "spiffe://example.org/admin/s1";
pub const VERIFIER: &str = "spiffe://example.org/verifier/v1";

pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of one test, dropped (with its connections) when the test ends.
pub struct TestDb {
    pub url: String,
    name: String,
}

/// Creates an empty database.
pub async fn fresh_database() -> TestDb {
    let admin = admin_url();
    let name = format!("mayfly_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL (DATABASE_URL)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    TestDb {
        url: format!("{base}/{name}"),
        name,
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// The PKI of a test: a CA for example.org, files on disk for the broker.
pub struct Pki {
    pub ca: DevCa,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let ca = DevCa::new(TD).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        let server = ca
            .server("spiffe://example.org/mayfly/broker", &["localhost"])
            .unwrap();
        std::fs::write(dir.path().join("broker.crt"), &server.cert_pem).unwrap();
        std::fs::write(dir.path().join("broker.key"), &server.key_pem).unwrap();
        Pki { ca, dir }
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
}

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

pub struct TestApp {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub clock: ManualClock,
    pub pki: Arc<Pki>,
    pub db_url: String,
    _db: Option<TestDb>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_with(Arc::new(Pki::new()), Options::default()).await
}

pub async fn spawn_with(pki: Arc<Pki>, o: Options) -> TestApp {
    let (db_url, db) = match &o.db_url {
        Some(u) => (u.clone(), None),
        None => {
            let db = fresh_database().await;
            (db.url.clone(), Some(db))
        }
    };
    let cfg = Config::parse(&config_text(&pki, &db_url, &o), "test").unwrap();
    cfg.validate().unwrap();
    let clock = o.clock.clone().unwrap_or_default();
    let app = mayfly::app::build(cfg, Arc::new(clock.clone()))
        .await
        .expect("build app");
    let grpc = app.grpc_addr().unwrap();
    let http = app.http_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        grpc,
        http,
        clock,
        pki,
        db_url,
        _db: db,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    /// Stops the app and waits until it has shut down.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => h.await?,
            None => Ok(()),
        }
    }

    pub fn issue(&self, spec: &SvidSpec) -> Issued {
        self.pki.ca.issue(spec).unwrap()
    }

    pub async fn channel_with(
        &self,
        identity: Option<&Issued>,
    ) -> Result<Channel, tonic::transport::Error> {
        mtls_channel(self.grpc, &self.pki.ca, identity).await
    }

    /// A channel authenticated as a fresh, well-formed SVID for `spiffe_id`.
    pub async fn channel(&self, spiffe_id: &str) -> (Channel, Issued) {
        let id = self.pki.ca.svid(spiffe_id).unwrap();
        let ch = self.channel_with(Some(&id)).await.expect("connect");
        (ch, id)
    }

    pub async fn tasks(&self, id: &str) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(self.channel(id).await.0)
    }
    pub async fn tokens(&self, id: &str) -> (TokenServiceClient<Channel>, Issued) {
        let (ch, issued) = self.channel(id).await;
        (TokenServiceClient::new(ch), issued)
    }
    pub async fn admin(&self, id: &str) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel(id).await.0)
    }
    pub async fn verifier(&self, id: &str) -> VerifierServiceClient<Channel> {
        VerifierServiceClient::new(self.channel(id).await.0)
    }

    /// A store handle on the app's database, for checking what was persisted.
    pub async fn store(&self) -> SqlStore {
        SqlStore::postgres(&self.db_url, 2, Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// Opens a support task for AGENT with the default scopes.
    pub async fn open_task(&self, agent: &str, duration: u64) -> pb::Task {
        self.open_task_with(start_request(agent, duration)).await
    }

    /// Opens the task `req` describes, as the orchestrator.
    pub async fn open_task_with(&self, req: pb::StartTaskRequest) -> pb::Task {
        self.tasks(ORCH)
            .await
            .start_task(req)
            .await
            .expect("start task")
            .into_inner()
            .task
            .unwrap()
    }

    /// Reads a task as the orchestrator.
    pub async fn get_task(&self, id: &str) -> pb::Task {
        self.tasks(ORCH)
            .await
            .get_task(pb::GetTaskRequest { task_id: id.into() })
            .await
            .expect("get task")
            .into_inner()
            .task
            .unwrap()
    }

    /// Mints as `agent` on a fresh connection.
    pub async fn mint(
        &self,
        agent: &str,
        task: &str,
        resource: &str,
        ttl: u64,
    ) -> pb::MintTokenResponse {
        self.tokens(agent)
            .await
            .0
            .mint_token(mint_request(task, resource, ttl))
            .await
            .expect("mint")
            .into_inner()
    }

    /// Opens a revocation watch as the verifier.
    pub async fn watch(&self, after: u64) -> tonic::Streaming<pb::WatchRevocationsResponse> {
        self.verifier(VERIFIER)
            .await
            .watch_revocations(pb::WatchRevocationsRequest {
                after_sequence: after,
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner()
    }

    /// The tokens of a task, as the admin sees them.
    pub async fn task_tokens(&self, task: &str) -> Vec<pb::TokenInfo> {
        self.admin(ADMIN)
            .await
            .list_tokens(pb::ListTokensRequest {
                task_id: task.into(),
                ..Default::default()
            })
            .await
            .expect("list tokens")
            .into_inner()
            .tokens
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path).await
    }

    /// The audit events `actor` caused, oldest first, as stored.
    pub async fn audit_by(&self, actor: &str) -> Vec<AuditRow> {
        audit_by(&self.store().await, actor).await
    }
}

/// An audit event as stored, for checking what was recorded.
#[derive(Debug)]
pub struct AuditRow {
    pub action: String,
    pub outcome: String,
    pub task_id: Option<uuid::Uuid>,
    pub jti: Option<uuid::Uuid>,
    pub reason: Option<String>,
    pub detail: serde_json::Value,
}

/// The audit events `actor` caused, oldest first. (The store reads audit events by
/// task only; refusals of calls carry no task.)
pub async fn audit_by(store: &SqlStore, actor: &str) -> Vec<AuditRow> {
    use sqlx::Row;
    sqlx::query(
        "SELECT action, outcome, task_id, jti, reason, detail FROM audit_events
         WHERE actor = $1 ORDER BY id",
    )
    .bind(actor)
    .fetch_all(store.postgres_pool().expect("a PostgreSQL store"))
    .await
    .unwrap()
    .iter()
    .map(|r| AuditRow {
        action: r.get("action"),
        outcome: r.get("outcome"),
        task_id: r.get("task_id"),
        jti: r.get("jti"),
        reason: r.get("reason"),
        detail: r.get::<sqlx::types::Json<serde_json::Value>, _>("detail").0,
    })
    .collect()
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn scope(aud: &str, res: &str, action: &str) -> pb::Scope {
    pb::Scope {
        audience: aud.into(),
        resource: res.into(),
        action: action.into(),
    }
}

pub fn start_request(agent: &str, duration: u64) -> pb::StartTaskRequest {
    pb::StartTaskRequest {
        agent: agent.into(),
        workflow: "support".into(),
        objective: "answer ticket 4711 about an EU customer's invoice".into(),
        scopes: vec![
            scope("crm-api", "customers/eu/*", "read"),
            scope("tickets", "tickets/4711", "comment"),
        ],
        duration_seconds: duration,
    }
}

pub fn mint_request(task: &str, res: &str, ttl: u64) -> pb::MintTokenRequest {
    pb::MintTokenRequest {
        task_id: task.into(),
        scope: Some(scope("crm-api", res, "read")),
        ttl_seconds: ttl,
    }
}

pub fn revoke_request(target: pb::revocation_target::Target, reason: &str) -> pb::RevokeRequest {
    pb::RevokeRequest {
        target: Some(pb::RevocationTarget {
            target: Some(target),
        }),
        reason: reason.into(),
    }
}

/// Minimal HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Reads the next `n` events from a watch stream, skipping heartbeats (failing
/// after 10 s).
pub async fn next_events(
    stream: &mut tonic::Streaming<pb::WatchRevocationsResponse>,
    n: usize,
) -> Vec<pb::RevocationEvent> {
    let mut out = vec![];
    while out.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a revocation event within 10 s")
            .expect("stream ok")
            .expect("stream open");
        if let Some(pb::watch_revocations_response::Kind::Event(ev)) = msg.kind {
            out.push(ev);
        }
    }
    out
}

pub async fn introspect_active(app: &TestApp, token: &str) -> bool {
    app.verifier(VERIFIER)
        .await
        .introspect(pb::IntrospectRequest {
            token: token.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .active
}

/// `mayfly serve` as a child process on free ports, for what only a real process
/// shows: its log, signals, its exit.
pub struct Served {
    pub child: tokio::process::Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The log, read as it is written (a full pipe would stall the broker).
    log: tokio::task::JoinHandle<String>,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Served {
    /// Starts `mayfly serve --config <config>` and waits until `/readyz` answers
    /// 200; stderr (the log) is piped.
    pub async fn start(config: &std::path::Path) -> Served {
        Self::start_with(config, None).await
    }

    /// As [`Served::start`], with the process limited to `nofile` file
    /// descriptors (by prlimit(1)).
    pub async fn start_with(config: &std::path::Path, nofile: Option<u64>) -> Served {
        let (grpc, http) = (free_port(), free_port());
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = tokio::process::Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_mayfly"));
                c
            }
            None => tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly")),
        };
        let child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("MAYFLY_DATABASE_URL")
            .env("MAYFLY_GRPC_ADDR", grpc.to_string())
            .env("MAYFLY_HTTP_ADDR", http.to_string())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut child = child;
        let mut stderr = child.stderr.take().expect("piped stderr");
        let log = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            // Kept up to 8 MiB; past that it is read and dropped.
            let (mut kept, mut buf) = (Vec::new(), vec![0u8; 64 * 1024]);
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if kept.len() < 8 << 20 {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            String::from_utf8_lossy(&kept).into_owned()
        });
        let served = Served {
            child,
            grpc,
            http,
            log,
        };
        for _ in 0..200 {
            if !served.readyz().await.is_empty() {
                return served;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("mayfly serve did not become ready within 10s");
    }

    /// The body of `/readyz` when it answers 200, else empty.
    pub async fn readyz(&self) -> String {
        if tokio::net::TcpStream::connect(self.http).await.is_err() {
            return String::new();
        }
        match tokio::time::timeout(Duration::from_secs(2), http_get(self.http, "/readyz")).await {
            Ok((200, body)) => body,
            _ => String::new(),
        }
    }

    /// Sends `signal` (e.g. "HUP", "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal}");
    }

    /// SIGTERM, then the exit status and everything it logged.
    pub async fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        let (log, status) = tokio::time::timeout(Duration::from_secs(15), async {
            tokio::join!(self.log, self.child.wait())
        })
        .await
        .expect("mayfly serve exits after SIGTERM");
        (status.unwrap(), log.unwrap())
    }

    /// An mTLS channel to the process as `identity`.
    pub async fn channel(&self, ca: &DevCa, identity: &Issued) -> Channel {
        mtls_channel(self.grpc, ca, Some(identity)).await.unwrap()
    }

    /// A call as `identity` (none: no client certificate).
    pub async fn list_tasks_as(
        &self,
        ca: &DevCa,
        identity: Option<&Issued>,
    ) -> Result<pb::ListTasksResponse, tonic::Status> {
        let ch = mtls_channel(self.grpc, ca, identity)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect failed: {e}")))?;
        TaskServiceClient::new(ch)
            .list_tasks(pb::ListTasksRequest::default())
            .await
            .map(|r| r.into_inner())
    }
}

/// The value of one sample line of a Prometheus exposition (0 when absent).
pub fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A TCP proxy (in front of PostgreSQL, or of a broker) that the test can cut
/// (every connection through it is closed and new ones are closed at once, as
/// when the far end is down), black-hole (connections stay open and nothing goes
/// through, as when the far end's host or network is gone) and restore, counting
/// the bytes sent through it.
pub struct Proxy {
    pub addr: SocketAddr,
    state: tokio::sync::watch::Sender<Far>,
    /// Bytes from the near end to the far end.
    pub sent: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Far {
    Up,
    Down,
    Gone,
}

impl Proxy {
    /// In front of the PostgreSQL server of `DATABASE_URL`.
    pub async fn to_postgres() -> Proxy {
        let url = admin_url();
        let after = url
            .split_once('@')
            .map(|(_, r)| r)
            .unwrap_or("127.0.0.1:5432/");
        Self::to(after.split('/').next().unwrap().to_string()).await
    }

    /// In front of `upstream` (host:port).
    pub async fn to(upstream: String) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, _) = tokio::sync::watch::channel(Far::Up);
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (st, counter) = (state.clone(), sent.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut far = st.subscribe();
                let now = *far.borrow_and_update();
                match now {
                    Far::Down => continue, // closed at once
                    Far::Gone => {
                        // Held open, never answered, until the far end is back.
                        tokio::spawn(async move {
                            let _client = client;
                            let _ = far.wait_for(|f| *f == Far::Up).await;
                        });
                        continue;
                    }
                    Far::Up => {}
                }
                let (upstream, counter) = (upstream.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut sr, &mut cw);
                    let ended = tokio::select! {
                        f = far.wait_for(|f| *f != Far::Up) => f.map(|f| *f).ok(),
                        _ = up => None,
                        _ = down => None,
                    };
                    if ended == Some(Far::Gone) {
                        // Nothing goes through any more; the sockets stay open.
                        let _ = far.wait_for(|f| *f == Far::Up).await;
                    }
                });
            }
        });
        Proxy { addr, state, sent }
    }

    /// The database `db`, reached through this proxy.
    pub fn url_of(&self, db: &TestDb) -> String {
        let name = db.url.rsplit('/').next().unwrap();
        let user = admin_url()
            .split_once("://")
            .and_then(|(_, r)| r.split_once('@'))
            .map(|(u, _)| u.to_string())
            .unwrap_or("postgres".into());
        format!("postgres://{user}@{}/{name}", self.addr)
    }

    /// The far end is down: connections are closed.
    pub fn cut(&self) {
        self.state.send_replace(Far::Down);
    }

    /// The far end is gone: connections stay open and nothing answers.
    pub fn black_hole(&self) {
        self.state.send_replace(Far::Gone);
    }

    pub fn restore(&self) {
        self.state.send_replace(Far::Up);
    }

    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A broker whose database (a fresh one) it reaches through a [`Proxy`] the test
/// can cut; `o.db_url` is set here.
pub async fn spawn_behind_proxy(o: Options) -> (TestApp, Proxy, TestDb) {
    let direct = fresh_database().await;
    let proxy = Proxy::to_postgres().await;
    let o = Options {
        db_url: Some(proxy.url_of(&direct)),
        ..o
    };
    (spawn_with(Arc::new(Pki::new()), o).await, proxy, direct)
}

/// A channel to the broker at `addr` over TLS trusting `ca`, presenting
/// `identity` (none: no client certificate).
pub async fn mtls_channel(
    addr: SocketAddr,
    ca: &DevCa,
    identity: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Tokens stored in the database at `url`.
pub async fn tokens_stored(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM tokens")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}
